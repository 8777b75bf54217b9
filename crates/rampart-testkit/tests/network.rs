//! Tenant networking through the real controller and agents (simulated cluster: agents on fake
//! hosts whose data plane is `rampart_net::exec::FakeNet`). The privileged tests with real
//! packets are in `crates/rampart/tests/network_e2e.rs` and `crates/rampart-net/tests`.

use std::collections::BTreeSet;
use std::time::Duration;

use http::Method;
use rampart_api::network::{FloatingIp, NodeNetworkReport, Port, Reachability, SecurityGroup, Subnet, Vpc};
use rampart_api::{Client, ClientError, List, ScopeRef};
use rampart_net::desired::names;
use rampart_net::nft::Family;
use rampart_testkit::{Backend, ClusterOptions, TestAgent, TestCluster, backends};
use serde_json::{Value, json};
use uuid::Uuid;

async fn cluster(backend: Backend, agents: usize) -> TestCluster {
    TestCluster::start(ClusterOptions {
        agents,
        backend,
        configure: Box::new(|c| {
            c.network.external_cidr = Some("203.0.113.0/24".into());
            c.network.external_gateway = Some("203.0.113.1".into());
        }),
        ..Default::default()
    })
    .await
}

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
    let r = c.send(method, path, body.as_ref()).await?;
    if r.status() == http::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    let text = r.text().await.unwrap();
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn post<T: serde::de::DeserializeOwned>(c: &Client, path: &str, body: Value) -> T {
    c.post(path, &body)
        .await
        .unwrap_or_else(|e| panic!("POST {path} {body}: {e}"))
}

/// The error code and `details.reason` of a failed call.
fn reason(e: &ClientError) -> (u16, String, String) {
    match e {
        ClientError::Api { status, body } => (
            status.as_u16(),
            body.error.code.clone(),
            body.error
                .details
                .as_ref()
                .and_then(|d| d.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        other => panic!("not an API error: {other}"),
    }
}

/// A VPC with one subnet and two groups in the admin project.
struct Net {
    p: Uuid,
    vpc: Vpc,
    subnet: Subnet,
    web: SecurityGroup,
    db: SecurityGroup,
}

async fn net(c: &TestCluster) -> Net {
    let p = c.admin_project().await;
    let vpc: Vpc = post(
        &c.admin,
        &format!("/v1/projects/{p}/vpcs"),
        json!({"name":"prod","cidr":"10.10.0.0/16"}),
    )
    .await;
    let subnet: Subnet = post(
        &c.admin,
        &format!("/v1/projects/{p}/subnets"),
        json!({"vpc": vpc.id, "name":"web","cidr":"10.10.1.0/24"}),
    )
    .await;
    let web: SecurityGroup = post(
        &c.admin,
        &format!("/v1/projects/{p}/security-groups"),
        json!({"name":"web"}),
    )
    .await;
    let db: SecurityGroup = post(
        &c.admin,
        &format!("/v1/projects/{p}/security-groups"),
        json!({"name":"db"}),
    )
    .await;
    Net {
        p,
        vpc,
        subnet,
        web,
        db,
    }
}

async fn port(c: &TestCluster, n: &Net, body: Value) -> Port {
    let mut body = body;
    body["subnet"] = json!(n.subnet.id);
    post(&c.admin, &format!("/v1/projects/{}/ports", n.p), body).await
}

async fn bind(c: &TestCluster, n: &Net, port: &Port, agent: &TestAgent, peer: &str) -> Port {
    let v = call(
        &c.admin,
        Method::PUT,
        &format!("/v1/projects/{}/ports/{}/binding", n.p, port.id),
        Some(json!({"node": agent.node_id, "device": {"kind":"veth","peer_netns": peer,"peer_name":"eth0"}})),
    )
    .await
    .expect("bind");
    serde_json::from_value(v).unwrap()
}

async fn node_generation(c: &TestCluster, node: Uuid) -> (i64, i64) {
    let n = c
        .admin
        .nodes()
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|n| n.id == node)
        .unwrap();
    (n.generation, n.applied_generation)
}

/// Waits until the agent reports the node's current generation applied without errors.
async fn converged(c: &TestCluster, node: Uuid) -> NodeNetworkReport {
    TestCluster::wait_for("network applied", Duration::from_secs(15), || async {
        let (g, _) = node_generation(c, node).await;
        let r: NodeNetworkReport = c.admin.get(&format!("/v1/nodes/{node}/network")).await.ok()?;
        (r.status.applied_generation == g && r.status.errors.is_empty()).then_some(r)
    })
    .await
}

fn fw_set(agent: &TestAgent, vpc: Uuid, set: &str) -> BTreeSet<String> {
    let state = agent.host.net.state.lock().unwrap();
    let ns = format!("rp-vpc-{}", vpc.simple());
    state
        .namespaces
        .get(&ns)
        .and_then(|n| n.nft.tables.get(&(Family::Inet, names::TABLE_FW.to_string())))
        .and_then(|t| t.sets.get(set))
        .map(|(_, e)| e.clone())
        .unwrap_or_default()
}

fn has_ns(agent: &TestAgent, vpc: Uuid) -> bool {
    agent
        .host
        .net
        .state
        .lock()
        .unwrap()
        .namespaces
        .contains_key(&format!("rp-vpc-{}", vpc.simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_4_network_api_validates_with_clear_codes_and_changes_nothing() {
    let c = cluster(Backend::Sqlite, 0).await;
    let n = net(&c).await;
    let p = n.p;
    let vpcs = format!("/v1/projects/{p}/vpcs");
    let subnets = format!("/v1/projects/{p}/subnets");
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            &vpcs,
            json!({"name":"x","cidr":"10.0.0.1/16"}),
            400,
            "validation_failed",
            "cidr_not_network_address",
        ),
        (
            &vpcs,
            json!({"name":"x","cidr":"10.0.0.0/30"}),
            400,
            "validation_failed",
            "cidr_size",
        ),
        (
            &vpcs,
            json!({"name":"Bad Name","cidr":"10.0.0.0/16"}),
            400,
            "validation_failed",
            "",
        ),
        (
            &vpcs,
            json!({"name":"x","cidr":"10.0.0.0/16","colour":"red"}),
            400,
            "invalid_request",
            "",
        ),
        (&vpcs, json!({"name":"prod","cidr":"10.20.0.0/16"}), 409, "conflict", ""),
        (
            &subnets,
            json!({"vpc": n.vpc.id, "name":"db","cidr":"10.10.0.0/20"}),
            400,
            "validation_failed",
            "subnet_overlap",
        ),
        (
            &subnets,
            json!({"vpc": n.vpc.id, "name":"db","cidr":"10.11.0.0/24"}),
            400,
            "validation_failed",
            "subnet_outside_vpc",
        ),
        (
            &subnets,
            json!({"vpc": n.vpc.id, "name":"db","cidr":"10.10.2.0/24","gateway":"10.10.3.1"}),
            400,
            "validation_failed",
            "gateway_outside_subnet",
        ),
        (
            &subnets,
            json!({"vpc": Uuid::new_v4(), "name":"db","cidr":"10.10.2.0/24"}),
            400,
            "validation_failed",
            "unknown_vpc",
        ),
    ];
    let ports = format!("/v1/projects/{p}/ports");
    let rules = format!("/v1/projects/{p}/security-groups/{}/rules", n.db.id);
    let more: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            &ports,
            json!({"subnet": n.subnet.id, "ip":"10.10.2.5"}),
            400,
            "validation_failed",
            "ip_outside_subnet",
        ),
        (
            &ports,
            json!({"subnet": n.subnet.id, "ip":"10.10.1.1"}),
            400,
            "validation_failed",
            "ip_reserved",
        ),
        (
            &ports,
            json!({"subnet": n.subnet.id, "security_groups":[Uuid::new_v4()]}),
            400,
            "validation_failed",
            "unknown_security_group",
        ),
        (
            &ports,
            json!({"subnet": n.subnet.id, "security_groups":[n.web.id], "port_security": false}),
            400,
            "validation_failed",
            "security_groups_need_port_security",
        ),
        (
            &ports,
            json!({"subnet": n.subnet.id, "max_connections": 0}),
            400,
            "validation_failed",
            "max_connections_out_of_range",
        ),
        (
            &ports,
            json!({"subnet": n.subnet.id, "tags": {"Role":"db"}}),
            400,
            "validation_failed",
            "invalid_tag_key",
        ),
        (
            &rules,
            json!({"direction":"ingress","protocol":"tcp","port_min":90,"port_max":80}),
            400,
            "validation_failed",
            "port_range_inverted",
        ),
        (
            &rules,
            json!({"direction":"ingress","protocol":"icmp","port_min":8}),
            400,
            "validation_failed",
            "ports_require_tcp_or_udp",
        ),
        (
            &rules,
            json!({"direction":"ingress","protocol":"tcp","remote_group": Uuid::new_v4()}),
            400,
            "validation_failed",
            "unknown_security_group",
        ),
        (
            &rules,
            json!({"direction":"sideways","protocol":"tcp"}),
            400,
            "invalid_request",
            "",
        ),
    ];
    for (path, body, status, code, why) in cases.into_iter().chain(more) {
        let e = c.admin.post::<_, Value>(path, &body).await.unwrap_err();
        let (s, got_code, got_reason) = reason(&e);
        assert_eq!((s, got_code.as_str()), (status, code), "{path} {body}: {e}");
        if !why.is_empty() {
            assert_eq!(got_reason, why, "{path} {body}");
        }
    }
    // Nothing of that was stored.
    let v: List<Vpc> = c.admin.get(&vpcs).await.unwrap();
    assert_eq!(v.items.len(), 1);
    let s: List<Subnet> = c.admin.get(&subnets).await.unwrap();
    assert_eq!(s.items.len(), 1);
    let pl: List<Port> = c.admin.get(&ports).await.unwrap();
    assert!(pl.items.is_empty());
    let g: SecurityGroup = c
        .admin
        .get(&format!("/v1/projects/{p}/security-groups/{}", n.db.id))
        .await
        .unwrap();
    assert_eq!(g.rules.len(), 2, "only the default rules");

    // IPAM: addresses in order from the first after the gateway, MACs locally administered.
    let a = port(&c, &n, json!({})).await;
    let b = port(&c, &n, json!({})).await;
    assert_eq!(
        (a.ip.to_string(), b.ip.to_string()),
        ("10.10.1.2".into(), "10.10.1.3".into())
    );
    assert_ne!(a.mac, b.mac);
    assert!(a.mac.is_local_unicast());
    let e = c
        .admin
        .post::<_, Value>(&ports, &json!({"subnet": n.subnet.id, "ip": "10.10.1.2"}))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, 409, "an address in use");
    // Referenced objects cannot go.
    let e = call(
        &c.admin,
        Method::DELETE,
        &format!("/v1/projects/{p}/vpcs/{}", n.vpc.id),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e).0, 409);
    let e = call(
        &c.admin,
        Method::DELETE,
        &format!("/v1/projects/{p}/subnets/{}", n.subnet.id),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e).0, 409);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_3_1_groups_have_default_rules_and_project_roles_decide_who_may_change_them() {
    let c = cluster(Backend::Sqlite, 0).await;
    let n = net(&c).await;
    let p = n.p;
    // 10.3-4: a new group admits its own members and lets everything out.
    assert_eq!(n.web.rules.len(), 2);
    let (ingress, egress) = (&n.web.rules[0], &n.web.rules[1]);
    assert_eq!(serde_json::to_value(ingress.direction).unwrap(), "ingress");
    assert_eq!(ingress.remote_group, Some(n.web.id));
    assert_eq!(serde_json::to_value(egress.direction).unwrap(), "egress");
    assert_eq!((egress.remote_group, egress.remote_cidr), (None, None));

    let project_scope = ScopeRef {
        project: Some(p),
        ..Default::default()
    };
    c.create_user(
        "netreader",
        "Tulip-Harbor-Quartz-42",
        &[("reader", project_scope.clone())],
    )
    .await;
    c.create_user("netmember", "Violet-Canyon-Ember-42", &[("member", project_scope)])
        .await;
    c.create_user("stranger", "Copper-Meadow-Lantern-42", &[]).await;
    let (reader, _) = c.anon.login_as("netreader", "Tulip-Harbor-Quartz-42").await.unwrap();
    let (member, _) = c.anon.login_as("netmember", "Violet-Canyon-Ember-42").await.unwrap();
    let (stranger, _) = c.anon.login_as("stranger", "Copper-Meadow-Lantern-42").await.unwrap();
    let groups = format!("/v1/projects/{p}/security-groups");
    let body = json!({"name":"app"});

    let listed: List<SecurityGroup> = reader.get(&groups).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    assert_eq!(
        reason(&reader.post::<_, Value>(&groups, &body).await.unwrap_err()).0,
        403
    );
    assert_eq!(reason(&stranger.get::<Value>(&groups).await.unwrap_err()).0, 404);
    assert_eq!(
        reason(&stranger.post::<_, Value>(&groups, &body).await.unwrap_err()).0,
        404
    );
    let created: SecurityGroup = member.post(&groups, &body).await.unwrap();
    assert_eq!(created.rules.len(), 2);
    // A member may add rules but not plug ports into hosts.
    let rule: Value = member
        .post(
            &format!("{groups}/{}/rules", n.db.id),
            &json!({"direction":"ingress","protocol":"tcp","port_min":5432,"port_max":5432,"remote_group": n.web.id}),
        )
        .await
        .unwrap();
    assert_eq!(rule["remote_group"], json!(n.web.id));
    let pt = port(&c, &n, json!({"security_groups":[n.db.id]})).await;
    let e = call(
        &member,
        Method::PUT,
        &format!("/v1/projects/{p}/ports/{}/binding", pt.id),
        Some(json!({"node": Uuid::new_v4(), "device": {"kind":"tap"}})),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e).0, 403, "binding is an operator's act");
    // A group in use or named by another group's rule cannot go.
    let e = call(&member, Method::DELETE, &format!("{groups}/{}", n.web.id), None)
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, 409);
    call(&member, Method::DELETE, &format!("{groups}/{}", created.id), None)
        .await
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_3_3_changes_republish_every_node_holding_the_vpc_and_agents_apply_them() {
    for backend in backends().await {
        let c = cluster(backend, 3).await;
        c.wait_for_ready_nodes(3).await;
        let n = net(&c).await;
        let p = n.p;
        let (a0, a1, a2) = (&c.agents[0], &c.agents[1], &c.agents[2]);
        let web1 = port(&c, &n, json!({"security_groups":[n.web.id], "tags": {"role":"web"}})).await;
        let db1 = port(
            &c,
            &n,
            json!({"security_groups":[n.db.id], "tags": {"role":"db"}, "max_connections": 3}),
        )
        .await;
        // db admits web: node-1 (db only) then needs web's member set, which is how a
        // membership on node-0 reaches it.
        call(
            &c.admin,
            Method::POST,
            &format!("/v1/projects/{p}/security-groups/{}/rules", n.db.id),
            Some(json!({"direction":"ingress","protocol":"tcp","port_min":5432,"port_max":5432,"remote_group": n.web.id})),
        )
        .await
        .unwrap();
        let (g2_before, _) = node_generation(&c, a2.node_id).await;
        bind(&c, &n, &web1, a0, "vm-web1").await;
        bind(&c, &n, &db1, a1, "vm-db1").await;
        converged(&c, a0.node_id).await;
        converged(&c, a1.node_id).await;
        // Each node got the whole VPC: its own port as a device, the other's in the sets.
        assert!(has_ns(a0, n.vpc.id) && has_ns(a1, n.vpc.id), "{backend:?}");
        assert!(!has_ns(a2, n.vpc.id), "a node without ports of the VPC builds nothing");
        assert_eq!(
            node_generation(&c, a2.node_id).await.0,
            g2_before,
            "and is not republished"
        );
        let web_set = format!("sg_{}", &n.web.id.simple().to_string()[20..]);
        assert_eq!(
            fw_set(a1, n.vpc.id, &web_set),
            BTreeSet::from([web1.ip.to_string()]),
            "node-1 knows node-0's web member (10.3-3)"
        );
        {
            let st = a0.host.net.state.lock().unwrap();
            let ns = &st.namespaces[&format!("rp-vpc-{}", n.vpc.id.simple())];
            let dev = names::port_dev(&web1.id);
            assert!(
                ns.links.contains_key(&dev),
                "port device on node-0: {:?}",
                ns.links.keys()
            );
            assert!(!ns.links.contains_key(&names::port_dev(&db1.id)));
            assert_eq!(
                ns.links[&dev].master.as_deref(),
                Some(names::bridge(&n.subnet.id).as_str())
            );
            assert!(ns.dnsmasq.is_some(), "platform DHCP for the subnet");
        }

        // A second web port on node-1 changes node-0's sets too: both generations move.
        let (g0, _) = node_generation(&c, a0.node_id).await;
        let (g1, _) = node_generation(&c, a1.node_id).await;
        let web2 = port(&c, &n, json!({"security_groups":[n.web.id]})).await;
        bind(&c, &n, &web2, a1, "vm-web2").await;
        assert!(node_generation(&c, a0.node_id).await.0 > g0);
        assert!(node_generation(&c, a1.node_id).await.0 > g1);
        converged(&c, a0.node_id).await;
        assert_eq!(
            fw_set(a0, n.vpc.id, &web_set),
            BTreeSet::from([web1.ip.to_string(), web2.ip.to_string()]),
            "a membership change on node-1 reaches node-0"
        );

        // A retag reaches every holder as set elements (10.9-1).
        let pol: Value = post(
            &c.admin,
            &format!("/v1/projects/{p}/segmentation-policies"),
            json!({"name":"web-to-db","from":{"role":"web"},"to":{"role":"db"},"protocol":"tcp","ports":[5432],"action":"allow"}),
        )
        .await;
        let pol_id: Uuid = serde_json::from_value(pol["id"].clone()).unwrap();
        let from_set = format!("pol_{}_from", &pol_id.simple().to_string()[20..]);
        converged(&c, a1.node_id).await;
        assert_eq!(fw_set(a1, n.vpc.id, &from_set), BTreeSet::from([web1.ip.to_string()]));
        let applied_before = a1.host.net.applied.lock().unwrap().len();
        call(
            &c.admin,
            Method::PATCH,
            &format!("/v1/projects/{p}/ports/{}", web2.id),
            Some(json!({"tags": {"role":"web"}})),
        )
        .await
        .unwrap();
        converged(&c, a1.node_id).await;
        assert_eq!(
            fw_set(a1, n.vpc.id, &from_set),
            BTreeSet::from([web1.ip.to_string(), web2.ip.to_string()])
        );
        let steps: Vec<_> = a1.host.net.applied.lock().unwrap()[applied_before..].to_vec();
        assert!(
            steps.iter().all(|s| match s {
                rampart_net::plan::Step::Nft { ops, .. } => ops.iter().all(|o| o.is_element_update()),
                _ => false,
            }) && !steps.is_empty(),
            "a retag is element updates only: {}",
            rampart_net::plan::describe(&steps)
        );

        // Unbinding and deleting leave nothing behind on the node.
        call(
            &c.admin,
            Method::DELETE,
            &format!("/v1/projects/{p}/ports/{}/binding", web1.id),
            None,
        )
        .await
        .unwrap();
        converged(&c, a0.node_id).await;
        assert!(!has_ns(a0, n.vpc.id), "node-0 lost its last port of the VPC");
        for pt in [&web1, &web2, &db1] {
            call(
                &c.admin,
                Method::DELETE,
                &format!("/v1/projects/{p}/ports/{}", pt.id),
                None,
            )
            .await
            .unwrap();
        }
        converged(&c, a1.node_id).await;
        assert!(!has_ns(a1, n.vpc.id));
        assert!(a1.host.net.state.lock().unwrap().namespaces.is_empty());
        call(
            &c.admin,
            Method::DELETE,
            &format!("/v1/projects/{p}/vpcs/{}", n.vpc.id),
            None,
        )
        .await
        .unwrap();
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_repairs_drift_and_reports_counters_flows_and_errors() {
    let c = cluster(Backend::Sqlite, 1).await;
    c.wait_for_ready_nodes(1).await;
    let n = net(&c).await;
    let p = n.p;
    let a = &c.agents[0];
    let web1 = port(&c, &n, json!({"security_groups":[n.web.id], "tags": {"role":"web"}})).await;
    let web2 = port(&c, &n, json!({"security_groups":[n.web.id]})).await;
    bind(&c, &n, &web1, a, "vm1").await;
    bind(&c, &n, &web2, a, "vm2").await;
    converged(&c, a.node_id).await;
    // Someone deletes the VPC namespace behind the agent's back: the drift timer (2 s here)
    // rebuilds it without a new generation.
    let ns = format!("rp-vpc-{}", n.vpc.id.simple());
    a.host.net.state.lock().unwrap().namespaces.remove(&ns);
    TestCluster::wait_for("drift repaired", Duration::from_secs(10), || async {
        has_ns(a, n.vpc.id).then_some(())
    })
    .await;

    // Counters and flow-log elements the data path would write reach the API.
    {
        let mut st = a.host.net.state.lock().unwrap();
        let t = st
            .namespaces
            .get_mut(&ns)
            .unwrap()
            .nft
            .tables
            .get_mut(&(Family::Inet, names::TABLE_FW.to_string()))
            .unwrap();
        t.element_counters.insert(
            names::FLOWS_ALLOWED.into(),
            [(format!("{} . {} . tcp . 80", web1.ip, web2.ip), 3)].into(),
        );
        t.element_counters.insert(
            names::FLOWS_DENIED.into(),
            [(format!("{} . {} . icmp . 0", web2.ip, "198.51.100.7"), 2)].into(),
        );
        // In the guard table, where the compiler declares it: a counter the desired state does
        // not declare is deleted by the next drift pass.
        st.namespaces
            .get_mut(&ns)
            .unwrap()
            .nft
            .tables
            .get_mut(&(Family::Bridge, names::TABLE_GUARD.to_string()))
            .unwrap()
            .counters
            .insert("drop_ip_spoof".into(), (5, 300));
    }
    let graph: Value = TestCluster::wait_for("flows reported", Duration::from_secs(10), || async {
        let g: Value = c.admin.get(&format!("/v1/projects/{p}/flows")).await.ok()?;
        (g["edges"].as_array()?.len() == 2).then_some(g)
    })
    .await;
    let edges = graph["edges"].as_array().unwrap();
    let allowed = edges.iter().find(|e| e["verdict"] == "allowed").unwrap();
    assert_eq!(
        (
            allowed["from"].as_str(),
            allowed["to"].as_str(),
            allowed["port"].as_u64(),
            allowed["count"].as_u64()
        ),
        (
            Some(web1.id.to_string().as_str()),
            Some(web2.id.to_string().as_str()),
            Some(80),
            Some(3)
        ),
        "edges name the ports: {graph}"
    );
    let denied = edges.iter().find(|e| e["verdict"] == "denied").unwrap();
    assert_eq!(denied["to"], "198.51.100.7");
    let tagged = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == json!(web1.id))
        .unwrap();
    assert_eq!(tagged["tags"]["role"], "web");
    let dot = c
        .admin
        .send::<()>(Method::GET, &format!("/v1/projects/{p}/flows?format=dot"), None)
        .await
        .unwrap();
    assert!(
        dot.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/vnd.graphviz")
    );
    let dot = dot.text().await.unwrap();
    assert!(
        dot.starts_with("digraph flows {") && dot.contains("tcp/80 x3 allowed"),
        "{dot}"
    );
    let report: NodeNetworkReport = c.admin.get(&format!("/v1/nodes/{}/network", a.node_id)).await.unwrap();
    assert_eq!(report.status.vpcs[0].counters.get("drop_ip_spoof"), Some(&5));

    // A device the host refuses: the error is reported, the generation is not acknowledged
    // as applied, and the next pass after the host recovers converges.
    let web3 = port(&c, &n, json!({})).await;
    let dev3 = names::port_dev(&web3.id);
    a.host.net.refuse.lock().unwrap().insert(dev3.clone());
    bind(&c, &n, &web3, a, "vm3").await;
    let (g, _) = node_generation(&c, a.node_id).await;
    let r: NodeNetworkReport = TestCluster::wait_for("error reported", Duration::from_secs(10), || async {
        let r: NodeNetworkReport = c.admin.get(&format!("/v1/nodes/{}/network", a.node_id)).await.ok()?;
        (!r.status.errors.is_empty()).then_some(r)
    })
    .await;
    assert!(
        r.status.errors.iter().any(|e| e.contains(&dev3)),
        "{:?}",
        r.status.errors
    );
    assert!(r.status.applied_generation < g);
    assert!(
        node_generation(&c, a.node_id).await.1 < g,
        "the node's applied generation stays behind"
    );
    a.host.net.refuse.lock().unwrap().clear();
    converged(&c, a.node_id).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_9_1_reachability_api_names_the_deciding_rule_and_refuses_bad_questions() {
    let c = cluster(Backend::Sqlite, 0).await;
    let n = net(&c).await;
    let p = n.p;
    let rule: Value = post(
        &c.admin,
        &format!("/v1/projects/{p}/security-groups/{}/rules", n.db.id),
        json!({"direction":"ingress","protocol":"tcp","port_min":5432,"port_max":5432,"remote_group": n.web.id}),
    )
    .await;
    let w = port(&c, &n, json!({"security_groups":[n.web.id]})).await;
    let d = port(&c, &n, json!({"security_groups":[n.db.id]})).await;
    let ask = |from: Uuid, to: Uuid, q: &str| format!("/v1/projects/{p}/reachability?from={from}&to={to}&{q}");
    let r: Reachability = c.admin.get(&ask(w.id, d.id, "protocol=tcp&port=5432")).await.unwrap();
    assert!(r.allowed);
    assert_eq!(
        r.because.last().unwrap(),
        &format!("security_group_rule:{}", rule["id"].as_str().unwrap())
    );
    let r: Reachability = c.admin.get(&ask(w.id, d.id, "protocol=tcp&port=22")).await.unwrap();
    assert_eq!(
        (r.allowed, r.because),
        (false, vec![format!("ingress_default_deny:{}", d.id)])
    );
    let r: Reachability = c.admin.get(&ask(d.id, w.id, "protocol=icmp")).await.unwrap();
    assert!(!r.allowed, "web admits only its own members");
    for (q, why) in [
        ("protocol=any", "protocol_any"),
        ("protocol=tcp", "port_required"),
        ("protocol=icmp&port=3", "ports_require_tcp_or_udp"),
    ] {
        let e = c.admin.get::<Value>(&ask(w.id, d.id, q)).await.unwrap_err();
        assert_eq!(reason(&e).2, why, "{q}");
    }
    // A port of another VPC: different_vpc; an unknown one: 404.
    let other: Vpc = post(
        &c.admin,
        &format!("/v1/projects/{p}/vpcs"),
        json!({"name":"other","cidr":"10.10.0.0/16"}),
    )
    .await;
    let os: Subnet = post(
        &c.admin,
        &format!("/v1/projects/{p}/subnets"),
        json!({"vpc": other.id, "name":"s","cidr":"10.10.1.0/24"}),
    )
    .await;
    let op: Port = post(&c.admin, &format!("/v1/projects/{p}/ports"), json!({"subnet": os.id})).await;
    assert_eq!(op.ip, w.ip, "the same addresses in two VPCs");
    let e = c
        .admin
        .get::<Value>(&ask(w.id, op.id, "protocol=icmp"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).2, "different_vpc");
    let e = c
        .admin
        .get::<Value>(&ask(w.id, Uuid::new_v4(), "protocol=icmp"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_4_floating_ips_need_an_external_vpc_and_come_from_the_pool() {
    let c = cluster(Backend::Sqlite, 1).await;
    let n = net(&c).await;
    let p = n.p;
    let pt = port(&c, &n, json!({"security_groups":[n.web.id]})).await;
    let fips = format!("/v1/projects/{p}/floating-ips");
    let e = c
        .admin
        .post::<_, Value>(&fips, &json!({"port": pt.id}))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).2, "vpc_not_external", "secure by default: no outside access");
    let v: Value = call(
        &c.admin,
        Method::PATCH,
        &format!("/v1/projects/{p}/vpcs/{}", n.vpc.id),
        Some(json!({"external": true})),
    )
    .await
    .unwrap();
    assert_eq!(v["router_external_ip"], "203.0.113.2", "the gateway .1 is reserved");
    let f: FloatingIp = c.admin.post(&fips, &json!({"port": pt.id})).await.unwrap();
    assert_eq!(f.address.to_string(), "203.0.113.3");
    let e = c
        .admin
        .post::<_, Value>(&fips, &json!({"port": pt.id}))
        .await
        .unwrap_err();
    assert_eq!(reason(&e).0, 409, "one floating IP per port");
    let e = call(
        &c.admin,
        Method::PATCH,
        &format!("/v1/projects/{p}/vpcs/{}", n.vpc.id),
        Some(json!({"external": false})),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&e).0, 409, "not while a floating IP points in");
    call(
        &c.admin,
        Method::PATCH,
        &format!("{fips}/{}", f.id),
        Some(json!({"port": null})),
    )
    .await
    .unwrap();
    call(&c.admin, Method::DELETE, &format!("{fips}/{}", f.id), None)
        .await
        .unwrap();

    // Without an external network configured, nothing is reachable from outside.
    let c2 = TestCluster::start(ClusterOptions::default()).await;
    let p2 = c2.admin_project().await;
    let e = c2
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{p2}/vpcs"),
            &json!({"name":"x","cidr":"10.0.0.0/16","external":true}),
        )
        .await
        .unwrap_err();
    assert_eq!(reason(&e).2, "no_external_network");
    c2.shutdown().await;
    c.shutdown().await;
}
