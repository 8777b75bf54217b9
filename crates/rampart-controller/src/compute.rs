//! Compute logic shared by the routes, the agent protocol and the reconcilers: the compute
//! section of a node's desired state, placement, what agents report about their VMs, and the
//! evaluation of threshold alarms.

use std::collections::{BTreeMap, BTreeSet};

use rampart_api::agent::AgentStatus;
use rampart_api::compute::{
    ComputeStatus, DesiredImage, DesiredInstance, DesiredPort, GuestDoc, ImageRole, ImageSignatureDoc, InstanceCreate,
    NodeCompute, ObservedPower, PowerState, SignaturePolicy, TrustedKeyDoc,
};
use rampart_common::Error;
use rampart_common::error::ErrorChain;
use rampart_common::time::{from_ms, to_ms};
use rampart_compute::alarm::{self, AlarmRule, Comparison, TimeWindow};
use rampart_compute::image::SIGNATURE_FORMAT;
use rampart_compute::webhook::WebhookPolicy;
use rampart_db::compute::{self as db, InstanceRow};
use rampart_db::network as netdb;
use rampart_db::nodes;
use rampart_net::desired::PortDevice;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::AppState;

/// Console output kept per instance.
pub const CONSOLE_MAX_BYTES: usize = 64 * 1024;

pub fn json_list<T: serde::de::DeserializeOwned>(s: &str) -> Vec<T> {
    serde_json::from_str(s).unwrap_or_default()
}

/// The project's image signature policy (default `require`).
pub async fn policy(conn: &mut rampart_db::Conn, project: Uuid) -> rampart_db::Result<SignaturePolicy> {
    Ok(db::signature_policy(conn, project)
        .await?
        .and_then(|p| SignaturePolicy::parse(&p))
        .unwrap_or_default())
}

fn signature_doc(sha256: &str, key_id: Option<&str>, signature: Option<&str>) -> Option<ImageSignatureDoc> {
    Some(ImageSignatureDoc {
        format: SIGNATURE_FORMAT.into(),
        hash_method: "sha256".into(),
        digest: sha256.into(),
        key_type: "ed25519".into(),
        key_id: key_id?.into(),
        signature: signature?.into(),
    })
}

fn desired_image(role: ImageRole, i: &db::ImageRow) -> Option<DesiredImage> {
    let sha = i.sha256.as_deref()?;
    Some(DesiredImage {
        role,
        image_id: i.id,
        sha256: sha.into(),
        size: i.size_bytes.unwrap_or(0).max(0) as u64,
        signature: signature_doc(sha, i.signing_key_id.as_deref(), i.signature.as_deref()),
    })
}

/// The compute section of `node`'s document: every instance placed there and not being
/// deleted (a deleted instance is absent, so the node destroys it).
pub async fn node_compute(conn: &mut rampart_db::Conn, node: Uuid) -> rampart_db::Result<NodeCompute> {
    let mut out = NodeCompute::default();
    let mut policies: BTreeMap<Uuid, (SignaturePolicy, Vec<TrustedKeyDoc>)> = BTreeMap::new();
    for inst in db::instances_on_node(conn, node).await? {
        if inst.status == "deleting" {
            continue;
        }
        let Some(image) = db::image_by_id(conn, inst.image_id).await? else {
            continue;
        };
        let Some(flavor) = db::find_flavor(conn, &inst.flavor_id.to_string()).await? else {
            continue;
        };
        let mut images = Vec::new();
        if image.disk_format == "kernel" {
            images.extend(desired_image(ImageRole::Kernel, &image));
            if let Some(rd) = image.ramdisk_image_id
                && let Some(rd) = db::image_by_id(conn, rd).await?
            {
                images.extend(desired_image(ImageRole::Initrd, &rd));
            }
        } else {
            images.extend(desired_image(ImageRole::Disk, &image));
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = policies.entry(inst.project_id) {
            let p = policy(conn, inst.project_id).await?;
            let keys = db::trusted_keys(conn, inst.project_id)
                .await?
                .into_iter()
                .map(|(key_id, public_key)| TrustedKeyDoc { key_id, public_key })
                .collect();
            slot.insert((p, keys));
        }
        let (signature_policy, trusted_keys) = policies[&inst.project_id].clone();
        out.instances.push(DesiredInstance {
            id: inst.id,
            project_id: inst.project_id,
            name: inst.name.clone(),
            power: PowerState::parse(&inst.desired_power).unwrap_or(PowerState::Stopped),
            boot_seq: inst.boot_seq,
            vcpus: flavor.vcpus.max(1) as u32,
            memory_mib: flavor.memory_mib.max(32) as u64,
            images,
            kernel_cmdline_extra: image.kernel_cmdline.clone().unwrap_or_default(),
            signature_policy,
            trusted_keys,
            ports: desired_ports(conn, inst.project_id, inst.id).await?,
            guest: GuestDoc {
                hostname: inst.name.clone(),
                user: inst.login_user.clone(),
                ssh_authorized_keys: json_list(&inst.ssh_keys),
                password_hash: inst.password_hash.clone(),
            },
        });
    }
    Ok(out)
}

/// The NICs of an instance for its node: each port's tap (named as the network driver names
/// the port's device) and MAC. The node fills in the VPC namespace, whose name is its own
/// setting.
async fn desired_ports(
    conn: &mut rampart_db::Conn,
    project: Uuid,
    instance: Uuid,
) -> rampart_db::Result<Vec<DesiredPort>> {
    let mut out = Vec::new();
    for (id, _) in db::instance_ports(conn, instance).await? {
        if let Some(p) = netdb::get_port(conn, project, id).await? {
            out.push(DesiredPort {
                port_id: id,
                tap: rampart_net::desired::names::port_dev(&id),
                mac: p.port.mac.to_string(),
                ip: Some(p.port.ip.to_string()),
                netns: None,
            });
        }
    }
    Ok(out)
}

/// 409 `port_in_use`.
pub fn port_in_use(message: impl Into<String>) -> Error {
    Error::coded(http::StatusCode::CONFLICT, "port_in_use", message)
}

/// The NICs an instance asks for, checked before it is placed.
pub struct NicPlan {
    /// Existing ports to plug in, in order.
    ports: Vec<Uuid>,
    /// Subnets to make a port on, after them.
    subnets: Vec<rampart_net::model::Subnet>,
    /// Groups of the ports made from subnets.
    new_port_groups: Vec<Uuid>,
    /// Every group of the VM's ports (what the scheduler spreads, and the instance shows).
    pub groups: Vec<Uuid>,
}

/// Checks `ports` and `networks` of an instance request: ports of this project (404
/// otherwise) that no instance or node uses (409 `port_in_use`), subnets of this project, all
/// in one VPC (its QEMU joins that VPC's namespace). Ports made from subnets get the request's
/// security groups, or the project's group `default` (made with the default rules of 10.3-4
/// when missing).
pub async fn plan_nics(
    tx: &mut rampart_db::Conn,
    project: Uuid,
    req: &InstanceCreate,
    now: OffsetDateTime,
) -> Result<NicPlan, Error> {
    let known = netdb::group_ids(tx, project).await?;
    if let Some(g) = req.security_groups.iter().find(|g| !known.contains(g)) {
        return Err(Error::field(
            "security_groups",
            format!("no security group {g} in this project"),
        ));
    }
    if !req.security_groups.is_empty() && !req.ports.is_empty() && req.networks.is_empty() {
        return Err(Error::field(
            "security_groups",
            "security_groups apply to the ports made from networks; an existing port keeps its groups \
             (change them with PATCH /v1/projects/{p}/ports/{id})",
        ));
    }
    let mut groups: BTreeSet<Uuid> = req.security_groups.iter().copied().collect();
    let mut vpcs = BTreeSet::new();
    for id in &req.ports {
        let row = netdb::get_port(tx, project, *id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no port {id} in this project")))?;
        if let Some(i) = db::port_instance(tx, *id).await? {
            return Err(port_in_use(format!("port {id} is already plugged into instance {i}")));
        }
        if row.node.is_some() {
            return Err(port_in_use(format!(
                "port {id} is bound to a node already (DELETE its binding first)"
            )));
        }
        vpcs.insert(row.port.vpc);
        groups.extend(row.port.security_groups.iter().copied());
    }
    let mut subnets = Vec::new();
    for id in &req.networks {
        let s = netdb::get_subnet(tx, project, *id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no subnet {id} in this project")))?;
        vpcs.insert(s.vpc);
        subnets.push(s);
    }
    if vpcs.len() > 1 {
        return Err(Error::field(
            "ports",
            "the ports and networks of one instance must be in one VPC",
        ));
    }
    let new_port_groups = if subnets.is_empty() || !req.security_groups.is_empty() {
        req.security_groups.clone()
    } else {
        vec![default_group(tx, project, now).await?]
    };
    groups.extend(new_port_groups.iter().copied());
    Ok(NicPlan {
        ports: req.ports.clone(),
        subnets,
        new_port_groups,
        groups: groups.into_iter().collect(),
    })
}

/// The project's security group named `default`, made when missing.
async fn default_group(tx: &mut rampart_db::Conn, project: Uuid, now: OffsetDateTime) -> Result<Uuid, Error> {
    if let Some(g) = netdb::groups(tx, project, None)
        .await?
        .into_iter()
        .find(|g| g.name == "default")
    {
        return Ok(g.id);
    }
    let g = rampart_net::model::SecurityGroupCreate {
        name: "default".into(),
        description: Some("made for instances launched without security groups".into()),
    }
    .into_group(Uuid::new_v4(), [Uuid::new_v4(), Uuid::new_v4()])?;
    netdb::insert_group(tx, project, &g, now).await?;
    tracing::info!(group = %g.id, project = %project, "default security group created");
    Ok(g.id)
}

/// Makes the ports of `networks`, binds every port to `node` as a tap and records it as the
/// instance's; returns the port ids in NIC order. Same transaction as the instance.
pub async fn plug_nics(
    tx: &mut rampart_db::Conn,
    project: Uuid,
    instance: Uuid,
    node: Uuid,
    plan: NicPlan,
    now: OffsetDateTime,
) -> Result<Vec<Uuid>, Error> {
    let mut ids: Vec<(Uuid, bool)> = plan.ports.iter().map(|p| (*p, false)).collect();
    let groups = netdb::group_ids(tx, project).await?;
    for subnet in &plan.subnets {
        let existing: Vec<rampart_net::model::Port> = netdb::ports_of_vpc(tx, subnet.vpc)
            .await?
            .into_iter()
            .map(|r| r.port)
            .collect();
        let port = rampart_net::model::PortCreate {
            subnet: subnet.id,
            security_groups: plan.new_port_groups.clone(),
            tags: Default::default(),
            allowed_address_pairs: vec![],
            port_security: None,
            max_connections: None,
            ip: None,
            mac: None,
        }
        .into_port(Uuid::new_v4(), subnet, &existing, |g| groups.contains(g))?;
        netdb::insert_port(tx, project, &port, now).await?;
        ids.push((port.id, true));
    }
    for (pos, (id, auto)) in ids.iter().enumerate() {
        netdb::bind_port(tx, *id, Some((node, &PortDevice::Tap)), now).await?;
        db::attach_port(tx, instance, *id, pos as i64, *auto).await?;
    }
    Ok(ids.into_iter().map(|(id, _)| id).collect())
}

/// Unplugs the instance's ports: the ports it made are deleted, the others unbound (they
/// stay, free for another instance).
pub async fn unplug_nics(tx: &mut rampart_db::Conn, instance: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    for (id, auto) in db::detach_ports(tx, instance).await? {
        if auto {
            netdb::delete_port(tx, id).await?;
        } else {
            netdb::bind_port(tx, id, None, now).await?;
        }
    }
    Ok(())
}

/// Picks a ready node that can run VMs for a new instance of `flavor_memory_mib`, spreading the
/// members of its security groups over nodes (spec 10.3-3): fewest members of its groups first,
/// then fewest instances, then the name. With `anti_affinity`, only nodes with no member of its
/// groups qualify.
pub async fn schedule(
    conn: &mut rampart_db::Conn,
    groups: &[Uuid],
    anti_affinity: bool,
    memory_mib: u64,
) -> Result<Uuid, Error> {
    let candidates = db::schedulable_nodes(conn).await?;
    if candidates.is_empty() {
        return Err(Error::Unavailable(
            "no ready node can run VMs now (see GET /v1/nodes: a node needs QEMU, root and cgroups)".into(),
        ));
    }
    let placements = db::placements(conn).await?;
    let wanted: BTreeSet<Uuid> = groups.iter().copied().collect();
    let mut best: Option<((usize, usize, String), Uuid)> = None;
    for (id, name) in candidates {
        let here: Vec<&(Uuid, String)> = placements.iter().filter(|(n, _)| *n == id).collect();
        let members = here
            .iter()
            .filter(|(_, g)| json_list::<Uuid>(g).iter().any(|g| wanted.contains(g)))
            .count();
        if anti_affinity && members > 0 {
            continue;
        }
        if let Some(n) = nodes::get(conn, id).await?
            && let Some(host) = n.host
        {
            // Guests plus QEMU's overhead must fit in the host's memory.
            let used: u64 = here.len() as u64 * 512;
            if host.memory_bytes > 0 && (used + memory_mib) << 20 > host.memory_bytes {
                continue;
            }
        }
        let key = (members, here.len(), name);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, id));
        }
    }
    best.map(|(_, id)| id).ok_or_else(|| {
        if anti_affinity {
            Error::Unavailable(
                "anti-affinity: every node that can run VMs already runs a member of these security groups".into(),
            )
        } else {
            Error::Unavailable("no node has room for this flavor".into())
        }
    })
}

fn observed_status(p: ObservedPower, desired: &str, current: &str) -> Option<&'static str> {
    Some(match p {
        ObservedPower::Running | ObservedPower::Paused => "running",
        ObservedPower::Failed => "failed",
        ObservedPower::Crashed | ObservedPower::Panicked => "crashed",
        ObservedPower::Stopped if desired == "stopped" => "stopped",
        ObservedPower::Stopped | ObservedPower::Starting => {
            if current == "running" || current == "stopped" {
                return None;
            }
            "creating"
        }
    })
}

/// Applies what an agent reports about its VMs: node capability, instance status, events,
/// metrics, console; and forgets deleted instances the node no longer has.
pub async fn record_status(state: &AppState, node: Uuid, s: &AgentStatus, generation: i64) -> Result<(), Error> {
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let Some(c) = &s.compute else {
        return Ok(());
    };
    check_report(c)?;
    db::set_node_compute(&mut conn, node, c.available, c.accel.as_deref(), &c.reason, now).await?;
    let rows: BTreeMap<Uuid, InstanceRow> = db::instances_on_node(&mut conn, node)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut reported = BTreeSet::new();
    for r in &c.instances {
        reported.insert(r.id);
        let Some(row) = rows.get(&r.id) else {
            continue;
        };
        for e in &r.events {
            let detail = serde_json::to_string(&e.detail).unwrap_or_else(|_| "{}".into());
            db::insert_event(&mut conn, r.id, from_ms(e.at_ms), &e.kind, &detail).await?;
            let (code, message) = (
                e.detail.get("code").and_then(|v| v.as_str()).unwrap_or(""),
                e.detail.get("message").and_then(|v| v.as_str()).unwrap_or(""),
            );
            match e.kind.as_str() {
                // The audit record of the refused boot (operation instance.boot, failure).
                "image_signature_invalid" | "start_failed" | "crashed" | "guest_panicked" => tracing::warn!(
                    target: "rampart::audit",
                    operation = "instance.boot",
                    outcome = "failure",
                    event = %e.kind,
                    code,
                    message,
                    instance = %r.id,
                    project = %row.project_id,
                    node = %node,
                    "instance event"
                ),
                _ => {
                    tracing::info!(target: "rampart::audit", operation = "instance.power", event = %e.kind, instance = %r.id, project = %row.project_id, node = %node, "instance event")
                }
            }
        }
        if let Some(m) = &r.metrics {
            db::insert_metrics(
                &mut conn,
                r.id,
                &db::MetricsRow {
                    at_ms: m.at_ms,
                    cpu_percent: m.cpu_percent,
                    memory_bytes: m.memory_bytes.min(i64::MAX as u64) as i64,
                    disk_read_bps: m.disk_read_bps,
                    disk_write_bps: m.disk_write_bps,
                    disk_write_iops: m.disk_write_iops,
                    net_rx_bps: m.net_rx_bps,
                    net_tx_bps: m.net_tx_bps,
                },
            )
            .await?;
        }
        if let Some(out) = &r.console {
            let mut start = out.len().saturating_sub(CONSOLE_MAX_BYTES);
            while !out.is_char_boundary(start) {
                start += 1;
            }
            db::set_console(&mut conn, r.id, &out[start..], now).await?;
        }
        if row.status == "deleting" {
            continue;
        }
        if let Some(status) = observed_status(r.power, &row.desired_power, &row.status) {
            let launched = (status == "running" && row.status != "running").then_some(now);
            let changed = db::record_observed(
                &mut conn,
                r.id,
                r.boot_seq,
                db::Observed {
                    status,
                    failure_code: r.error.as_ref().map(|e| e.code.as_str()),
                    failure_message: r.error.as_ref().map(|e| e.message.as_str()),
                    vm_uid: r.uid.map(i64::from),
                    launched_at: launched,
                },
                now,
            )
            .await?;
            if changed && status != row.status {
                tracing::info!(instance = %r.id, from = %row.status, to = status, node = %node, "instance status");
            }
        }
    }
    // A deleted instance is gone once the node applied a document without it and no longer
    // reports it.
    if s.applied_generation >= generation {
        for row in rows.values() {
            if row.status == "deleting" && !reported.contains(&row.id) {
                db::delete_instance(&mut conn, row.id).await?;
                tracing::info!(instance = %row.id, node = %node, "instance deleted");
            }
        }
    }
    Ok(())
}

fn check_report(c: &ComputeStatus) -> Result<(), Error> {
    let too_big = c.instances.len() > 10_000
        || c.reason.len() > 4096
        || c.instances.iter().any(|i| {
            i.events.len() > 1000
                || i.console.as_ref().is_some_and(|s| s.len() > 1 << 20)
                || i.error.as_ref().is_some_and(|e| e.message.len() > 4096)
        });
    if too_big {
        return Err(Error::field("compute", "the compute report is too large"));
    }
    Ok(())
}

/// The alarm rule of a stored alarm.
pub fn rule_of(a: &db::AlarmRow) -> Result<AlarmRule, Error> {
    let comparison: Comparison = serde_json::from_value(serde_json::Value::String(a.comparison.clone()))
        .map_err(|_| Error::internal("reading an alarm", "bad comparison"))?;
    let windows: Vec<TimeWindow> = serde_json::from_str(&a.windows).unwrap_or_default();
    Ok(AlarmRule {
        metric: a.metric.clone(),
        comparison,
        threshold: a.threshold,
        period_s: a.period_s.max(1) as u64,
        periods: a.periods.max(1) as u32,
        datapoints: a.datapoints.max(1) as u32,
        windows,
    })
}

fn metric_value(m: &db::MetricsRow, name: &str) -> Option<f64> {
    Some(match name {
        "cpu_percent" => m.cpu_percent,
        "memory_bytes" => m.memory_bytes as f64,
        "disk_read_bps" => m.disk_read_bps,
        "disk_write_bps" => m.disk_write_bps,
        "disk_write_iops" => m.disk_write_iops,
        "net_rx_bps" => m.net_rx_bps,
        "net_tx_bps" => m.net_tx_bps,
        _ => return None,
    })
}

/// One pass of the alarm evaluator (leader only): each enabled alarm whose period has passed
/// since its last evaluation is evaluated over its instance's metrics; a state change is
/// recorded as a transition, logged as an audit event and sent to the alarm's webhooks.
pub async fn evaluate_alarms(state: &AppState) -> Result<(), Error> {
    let now = state.now();
    let now_ms = to_ms(now);
    let mut conn = state.db.conn().await?;
    for a in db::enabled_alarms(&mut conn).await? {
        if a.last_evaluated_at.is_some_and(|t| now_ms - t < a.period_s * 1000) {
            continue;
        }
        let rule = rule_of(&a)?;
        let span = a.period_s * 1000 * a.periods;
        let points: Vec<alarm::Datapoint> = db::metrics(&mut conn, a.instance_id, now_ms - span, 100_000)
            .await?
            .iter()
            .filter_map(|m| metric_value(m, &a.metric).map(|value| alarm::Datapoint { at_ms: m.at_ms, value }))
            .collect();
        let e = alarm::evaluate(&rule, &points, now_ms);
        db::mark_evaluated(&mut conn, a.id, now_ms).await?;
        let to = match e.state {
            alarm::AlarmState::Ok => "OK",
            alarm::AlarmState::Alarm => "ALARM",
            alarm::AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        };
        if to == a.state {
            continue;
        }
        let reason = format!(
            "{} of the last {} periods of {} s breached {} {} (need {}); {} had data",
            e.breaching, a.periods, a.period_s, a.comparison, a.threshold, a.datapoints, e.present
        );
        // Write-ahead: the audit record exists before the new state does; if it cannot be
        // written the state stays and the next pass tries again.
        state
            .audit
            .append_system(
                rampart_audit::record::NewRecord::new(
                    now,
                    rampart_audit::record::Actor::system("alarms"),
                    "alarm.transition",
                    rampart_audit::record::Target::new("alarm", Some(a.id.to_string()), Some(a.project_id.to_string())),
                    rampart_audit::record::AuditResult::success(200),
                )
                .detail("name", a.name.clone())
                .detail("instance", a.instance_id.to_string())
                .detail("metric", a.metric.clone())
                .detail("from", a.state.clone())
                .detail("to", to)
                .detail("reason", reason.clone()),
            )
            .await?;
        if db::transition_alarm(&mut conn, a.id, &a.state, to, &reason, now).await? {
            tracing::warn!(
                target: "rampart::audit",
                operation = "alarm.transition",
                alarm = %a.id,
                name = %a.name,
                project = %a.project_id,
                instance = %a.instance_id,
                from = %a.state,
                to,
                reason = %reason,
                "alarm state changed"
            );
            let hooks: Vec<String> = json_list(&a.webhooks);
            if !hooks.is_empty() {
                let body = serde_json::json!({
                    "alarm": a.id, "name": a.name, "project": a.project_id, "instance": a.instance_id,
                    "metric": a.metric, "from": a.state, "to": to, "reason": reason,
                    "at": rampart_common::time::rfc3339(now),
                });
                match webhook_policy(&state.config.compute) {
                    Ok(policy) => {
                        tokio::spawn(send_webhooks(hooks, policy, system_roots(), body));
                    }
                    Err(e) => tracing::error!(error = %e, "alarm webhooks not sent"),
                }
            }
        }
    }
    Ok(())
}

/// The webhook rules of the configuration (12.1-6).
pub fn webhook_policy(c: &rampart_common::config::ComputeConfig) -> Result<WebhookPolicy, Error> {
    WebhookPolicy::new(&c.alarm_webhook_prefixes, &c.alarm_webhook_allowed_networks)
        .map_err(|e| Error::internal("reading the webhook configuration", e))
}

/// The system's CA bundle, which public webhook receivers are signed by.
fn system_roots() -> Vec<u8> {
    std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default()
}

/// Posts a transition to each webhook (HTTPS, trusting `roots_pem`, 10 s), once; failures are
/// logged. Each URL is checked against the policy again at send time, its host resolved once
/// and every address checked; the connection goes to that address and no redirect is followed,
/// so neither DNS nor the receiver can send the controller anywhere else.
pub async fn send_webhooks(hooks: Vec<String>, policy: WebhookPolicy, roots_pem: Vec<u8>, body: serde_json::Value) {
    for url in hooks {
        match deliver(&policy, &roots_pem, &url, &body).await {
            Ok(status) => tracing::info!(url = %url, status, "alarm webhook delivered"),
            Err(e) => tracing::warn!(url = %url, error = %e, "alarm webhook not delivered"),
        }
    }
}

async fn deliver(policy: &WebhookPolicy, roots_pem: &[u8], url: &str, body: &serde_json::Value) -> Result<u16, String> {
    let dest = policy.resolve(url).await.map_err(|e| e.to_string())?;
    let tls = rampart_api::tls::client_config(roots_pem, None).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&dest.host, dest.addr)
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ErrorChain(&e).to_string())?;
    let resp = client
        .post(dest.url)
        .json(body)
        .send()
        .await
        .map_err(|e| ErrorChain(&e).to_string())?;
    let status = resp.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("the receiver answered {status} (redirects are not followed)"))
    }
}

/// Drops metrics older than `compute.metrics_retention_s`.
pub async fn prune_metrics(state: &AppState) -> Result<(), Error> {
    let cutoff = to_ms(state.now()) - state.config.compute.metrics_retention_s as i64 * 1000;
    let mut conn = state.db.conn().await?;
    let n = db::prune_metrics(&mut conn, cutoff).await?;
    if n > 0 {
        tracing::debug!(rows = n, "pruned instance metrics");
    }
    Ok(())
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    /// Whether anything connects to `listener` within a short wait.
    async fn connected(listener: &tokio::net::TcpListener) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn spec_12_1_6_webhooks_never_reach_an_unlisted_internal_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = serde_json::json!({"alarm": "x"});
        let prefixes = vec![
            "https://hooks.example.com".to_string(),
            format!("https://127.0.0.1:{port}/"),
        ];
        let closed = WebhookPolicy::new(&prefixes, &[]).unwrap();
        for url in [
            // The user-info trick and a direct loopback URL under an allowed prefix.
            format!("https://hooks.example.com@127.0.0.1:{port}/"),
            format!("https://127.0.0.1:{port}/hook"),
        ] {
            send_webhooks(vec![url.clone()], closed.clone(), system_roots(), body.clone()).await;
            assert!(!connected(&listener).await, "{url} reached 127.0.0.1:{port}");
        }
        // Listed by the operator, the same loopback receiver is reached: the check above could
        // have seen a connection.
        let open = WebhookPolicy::new(&prefixes, &["127.0.0.0/8".into()]).unwrap();
        let send = tokio::spawn(send_webhooks(
            vec![format!("https://127.0.0.1:{port}/hook")],
            open,
            system_roots(),
            body,
        ));
        assert!(connected(&listener).await, "the listed receiver was not reached");
        send.abort();
    }
}
