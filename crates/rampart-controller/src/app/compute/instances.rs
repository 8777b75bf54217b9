//! Instances: launch (validated, placed, published to its node in one transaction), listing,
//! deletion, power actions, and what their nodes report (console, events).

use axum::http::StatusCode;
use rampart_api::List;
use rampart_api::compute::{Console, Failure, Instance, InstanceCreate, InstanceEvent, InstanceStatus, PowerState};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::quota::Resource;
use rampart_common::{Error, names};
use rampart_compute::configdrive;
use rampart_db::compute::{self as db, ImageRow, InstanceRow};
use uuid::Uuid;

use super::records::{self, InstanceLists, list_column, to_column};
use super::{images, nics, scheduling};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub(super) fn instance_view(i: InstanceRow) -> Instance {
    let lists = InstanceLists::of(&i);
    Instance {
        id: i.id,
        project_id: i.project_id,
        name: i.name,
        image_id: i.image_id,
        flavor_id: i.flavor_id,
        node_id: i.node_id,
        status: InstanceStatus::parse(&i.status).unwrap_or(InstanceStatus::Creating),
        desired_power: PowerState::parse(&i.desired_power).unwrap_or(PowerState::Stopped),
        failure: i.failure_code.map(|code| Failure {
            code,
            message: i.failure_message.unwrap_or_default(),
        }),
        user: i.login_user,
        ssh_keys: lists.ssh_keys,
        password_set: i.password_hash.is_some(),
        security_groups: lists.security_groups,
        ports: lists.ports,
        networks: lists.networks,
        tags: lists.tags,
        anti_affinity: i.anti_affinity,
        ha: i.ha_priority.map(|p| rampart_api::compute::HaPolicy {
            enabled: true,
            priority: p.clamp(0, 100) as u8,
        }),
        vm_uid: i.vm_uid.map(|u| u as u32),
        launched_at: i.launched_at,
        created_at: i.created_at,
    }
}

/// NICs of one VM (ports plus networks).
const MAX_NICS: usize = 8;

fn check_instance(req: &InstanceCreate) -> Result<(), Error> {
    names::validate_name("name", &req.name)?;
    if req.ports.len() + req.networks.len() > MAX_NICS {
        return Err(Error::field(
            "ports",
            format!("at most {MAX_NICS} ports and networks together"),
        ));
    }
    if req.ports.iter().collect::<std::collections::BTreeSet<_>>().len() != req.ports.len() {
        return Err(Error::field("ports", "a port is named twice"));
    }
    if req.volumes.len() > 16
        || req.volumes.iter().collect::<std::collections::BTreeSet<_>>().len() != req.volumes.len()
    {
        return Err(Error::field("volumes", "at most 16 volumes, each named once"));
    }
    if req.ssh_keys.len() > 32 {
        return Err(Error::field("ssh_keys", "at most 32 keys"));
    }
    if req.security_groups.len() > 16 {
        return Err(Error::field("security_groups", "at most 16 security groups"));
    }
    if req.tags.len() > 50
        || req.tags.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > 64
                || v.len() > 256
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                || v.chars().any(char::is_control)
        })
    {
        return Err(Error::field(
            "tags",
            "at most 50 tags; keys of 1..64 letters, digits and ._-/; values up to 256 printable characters",
        ));
    }
    if let Some(p) = &req.password {
        let n = p.expose().chars().count();
        if !(8..=256).contains(&n) || p.expose().chars().any(char::is_control) {
            return Err(Error::field(
                "password",
                "the password must be 8 to 256 printable characters",
            ));
        }
    }
    Ok(())
}

/// The guest's login user, checked with its keys and host name by the guest config renderer
/// (the one the node uses, so what it would refuse is refused here).
fn check_guest(req: &InstanceCreate) -> Result<String, Error> {
    let user = req.user.clone().unwrap_or_else(|| "rampart".into());
    configdrive::render(&configdrive::GuestConfig {
        instance_id: Uuid::nil(),
        hostname: req.name.clone(),
        user: user.clone(),
        ssh_authorized_keys: req.ssh_keys.clone(),
        password_hash: None,
        nics: vec![],
    })
    .map_err(|e| match e {
        configdrive::ConfigDriveError::Invalid { field, reason } => Error::field(
            if field == "ssh_authorized_keys" {
                "ssh_keys"
            } else {
                field
            },
            reason,
        ),
        other => Error::internal("checking the guest configuration", other),
    })?;
    Ok(user)
}

/// The guest password's hash, computed off the async workers (it is slow by design).
async fn password_hash(req: &InstanceCreate) -> Result<Option<String>, Error> {
    let Some(p) = &req.password else {
        return Ok(None);
    };
    let p = p.clone();
    Ok(Some(
        tokio::task::spawn_blocking(move || configdrive::hash_guest_password(&p))
            .await
            .map_err(|e| Error::internal("hashing a guest password", e))?
            .map_err(|e| Error::internal("hashing a guest password", e))?,
    ))
}

/// The image an instance boots: active, not an initrd, and a kernel's ramdisk still usable.
async fn boot_image(tx: &mut rampart_db::Conn, project: Uuid, key: &str) -> Result<ImageRow, Error> {
    let image = db::find_image(tx, project, key)
        .await?
        .ok_or_else(|| Error::field("image", "no image of that id or name in this project"))?;
    if image.status != "active" {
        return Err(Error::field(
            "image",
            format!("the image is {}, not active", image.status),
        ));
    }
    if image.disk_format == "initrd" {
        return Err(Error::field(
            "image",
            "an initrd does not boot by itself: give its kernel image",
        ));
    }
    if let Some(rd) = image.ramdisk_image_id {
        let r = db::image_by_id(tx, rd)
            .await?
            .filter(|r| r.project_id == project)
            .ok_or_else(|| {
                Error::coded(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "image_unavailable",
                    "the kernel's ramdisk image no longer exists",
                )
            })?;
        images::usable_ramdisk(&r, records::policy(tx, project).await?)?;
    }
    Ok(image)
}

pub const CREATE: Operation = Operation::new("instance.create", "instance");

/// Launch an instance: validated, placed on a ready node (members of a security group spread
/// over nodes), and published to that node in one transaction.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    req: InstanceCreate,
) -> Result<Instance, Error> {
    principal.project(state, project, "project.write").await?;
    check_instance(&req)?;
    let user = check_guest(&req)?;
    let ha_priority = crate::app::ha::check_policy(req.ha)?;
    let password_hash = password_hash(&req).await?;
    // The volumes pin the instance to their node.
    let pinned = crate::app::volumes::attach::check_for_new_instance(state, principal, project, &req.volumes).await?;
    let mut tx = state.db.begin().await?;
    let image = boot_image(&mut tx, project, &req.image).await?;
    let flavor = db::find_flavor(&mut tx, &req.flavor)
        .await?
        .ok_or_else(|| Error::field("flavor", "no flavor of that id or name"))?;
    crate::quota::enforce(state, &mut tx, project, Resource::Instances, 1).await?;
    // `networks` make a port each.
    crate::quota::enforce(state, &mut tx, project, Resource::Ports, req.networks.len() as u64).await?;
    let nics = nics::plan_nics(&mut tx, project, &req, state.now()).await?;
    let node = match pinned {
        Some(n) if db::schedulable_nodes(&mut tx).await?.iter().any(|(id, _)| *id == n) => n,
        Some(_) => {
            return Err(Error::Unavailable(
                "the node holding the volumes cannot run VMs now (see GET /v1/nodes)".into(),
            ));
        }
        None => scheduling::schedule(&mut tx, &nics.groups, req.anti_affinity, flavor.memory_mib as u64, None).await?,
    };
    crate::app::ha::admit(
        &mut tx,
        &state.config,
        node,
        flavor.memory_mib as u64,
        ha_priority.is_some(),
    )
    .await?;
    let start = req.start.unwrap_or(true);
    let row = InstanceRow {
        id: Uuid::new_v4(),
        project_id: project,
        name: req.name.clone(),
        image_id: image.id,
        flavor_id: flavor.id,
        node_id: Some(node),
        status: if start { "creating" } else { "stopped" }.into(),
        desired_power: if start { "running" } else { "stopped" }.into(),
        boot_seq: 1,
        failure_code: None,
        failure_message: None,
        password_hash,
        login_user: user,
        ssh_keys: list_column(&req.ssh_keys),
        tags: to_column(&req.tags, "{}"),
        security_groups: list_column(&nics.groups),
        ports: "[]".into(),
        networks: list_column(&req.networks),
        anti_affinity: req.anti_affinity,
        ha_priority,
        vm_uid: None,
        launched_at: None,
        created_at: state.now(),
    };
    let before = crate::app::network::desired::nodes_of_project(&mut tx, project).await?;
    db::insert_instance(&mut tx, &row).await?;
    let ports = nics::plug_nics(&mut tx, project, row.id, node, nics, state.now()).await?;
    db::set_instance_ports(&mut tx, row.id, &list_column(&ports)).await?;
    crate::app::volumes::attach::attach_to_new_instance(&mut tx, &row, &req.volumes, state.now()).await?;
    let row = db::instance(&mut tx, row.id)
        .await?
        .ok_or_else(|| Error::internal("creating an instance", "row vanished"))?;
    // The node's document (its VMs and their taps) and those of every node holding the VPCs
    // (whose sets now name the new addresses), in the same transaction.
    let mut all = crate::app::network::desired::nodes_of_project(&mut tx, project).await?;
    all.extend(before);
    crate::publish::nodes(&mut tx, &state.config, &all).await?;
    crate::publish::node(&state.config, &mut tx, node).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(instance = %row.id, name = %row.name, project = %project, node = %node, ports = ?ports, by = %principal.user.name, "instance created");
    Ok(instance_view(row))
}

pub const LIST: Operation = Operation::new("instance.list", "instance");

/// A page of the project's instances, by name.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    page: &PageParams,
) -> Result<List<Instance>, Error> {
    principal.project(state, project, "project.read").await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_instances(&mut conn, project, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |i| i.name.clone());
    Ok(List {
        items: items.into_iter().map(instance_view).collect(),
        next,
    })
}

pub const GET: Operation = Operation::new("instance.get", "instance").target("id");

/// One instance.
pub async fn get(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<Instance, Error> {
    Ok(instance_view(
        super::instance(state, principal, project, id, "project.read").await?,
    ))
}

pub const DELETE: Operation = Operation::new("instance.delete", "instance").target("id");

/// Delete an instance: its ports are unplugged at once and its node told to destroy it; the
/// row goes when the node confirms (at once if it has no node).
pub async fn delete(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<Instance, Error> {
    let row = super::instance(state, principal, project, id, "project.write").await?;
    let mut tx = state.db.begin().await?;
    let before = crate::app::network::desired::nodes_of_project(&mut tx, project).await?;
    // Unplugged at once: the node removes the taps with the VM, in the same document.
    nics::unplug_nics(&mut tx, id, state.now()).await?;
    // Its volumes are free again (the node destroys the VM with the same document).
    crate::app::volumes::attach::release_instance(&mut tx, id, state.now()).await?;
    match row.node_id {
        Some(node) => {
            db::mark_deleting(&mut tx, id, state.now()).await?;
            crate::publish::node(&state.config, &mut tx, node).await?;
        }
        None => db::delete_instance(&mut tx, id).await?,
    }
    let mut all = crate::app::network::desired::nodes_of_project(&mut tx, project).await?;
    all.extend(before);
    crate::publish::nodes(&mut tx, &state.config, &all).await?;
    let after = db::instance(&mut tx, id).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(instance = %id, by = %principal.user.name, "instance deletion requested");
    let mut view = instance_view(row);
    view.status = after
        .map(|a| InstanceStatus::parse(&a.status).unwrap_or(InstanceStatus::Deleting))
        .unwrap_or(InstanceStatus::Deleting);
    Ok(view)
}

/// A power action on an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Start,
    Stop,
    /// A stop and a new boot (so the image is verified again).
    Reboot,
}

/// What an action asks of the instance: its desired power, whether it boots anew (the boot
/// sequence moves), and the status it shows meanwhile. Starting a crashed, failed or stopped
/// instance boots it anew.
fn power_plan(action: PowerAction, status: &str) -> (&'static str, bool, Option<&'static str>) {
    match action {
        PowerAction::Start => {
            let again = matches!(status, "crashed" | "failed" | "stopped");
            ("running", again, again.then_some("creating"))
        }
        PowerAction::Stop => ("stopped", false, None),
        PowerAction::Reboot => ("running", true, Some("creating")),
    }
}

pub const POWER: Operation = Operation::new("instance.{action}", "instance").target("id");

/// Start, stop or reboot an instance (published to its node).
pub async fn power(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    action: PowerAction,
) -> Result<Instance, Error> {
    let row = super::instance(state, principal, project, id, "project.write").await?;
    if row.status == "deleting" {
        return Err(Error::conflict("the instance is being deleted"));
    }
    let Some(node) = row.node_id else {
        return Err(Error::conflict("the instance has no node (it was removed); delete it"));
    };
    let (power, bump, status) = power_plan(action, &row.status);
    let mut tx = state.db.begin().await?;
    db::set_desired_power(&mut tx, id, power, bump, status, state.now()).await?;
    crate::publish::node(&state.config, &mut tx, node).await?;
    let after = db::instance(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("no such instance"))?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(instance = %id, action = ?action, by = %principal.user.name, "instance power action");
    Ok(instance_view(after))
}

pub const CONSOLE: Operation = Operation::new("instance.console.get", "instance").target("id");

/// The tail of the instance's serial console (what its node last reported).
pub async fn console(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<Console, Error> {
    super::instance(state, principal, project, id, "project.read").await?;
    let mut conn = state.db.conn().await?;
    Ok(match db::console(&mut conn, id).await? {
        Some((output, at)) => Console {
            output,
            updated_at: Some(at),
        },
        None => Console {
            output: String::new(),
            updated_at: None,
        },
    })
}

pub const EVENTS: Operation = Operation::new("event.list", "event").target("id");

/// The instance's events, oldest first.
pub async fn events(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
) -> Result<List<InstanceEvent>, Error> {
    super::instance(state, principal, project, id, "project.read").await?;
    let mut conn = state.db.conn().await?;
    let items = db::events(&mut conn, id, 1000)
        .await?
        .into_iter()
        .map(|(at, kind, detail)| InstanceEvent {
            kind,
            at,
            detail: records::event_detail(&detail),
        })
        .collect();
    Ok(List { items, next: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_a_stopped_or_crashed_instance_boots_it_anew() {
        for s in ["crashed", "failed", "stopped"] {
            assert_eq!(power_plan(PowerAction::Start, s), ("running", true, Some("creating")));
        }
        assert_eq!(power_plan(PowerAction::Start, "running"), ("running", false, None));
        assert_eq!(power_plan(PowerAction::Stop, "running"), ("stopped", false, None));
        assert_eq!(
            power_plan(PowerAction::Reboot, "running"),
            ("running", true, Some("creating"))
        );
    }
}
