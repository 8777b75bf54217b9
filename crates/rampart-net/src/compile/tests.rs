use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::desired::{ExternalNetwork, NodeNetwork};
use crate::exec::{FakeNet, NetDriver, reconcile};
use crate::nft::{NftOp, render_ops};
use crate::plan::{Step, describe, plan};
use crate::testing::VpcBuilder;

pub(crate) struct Scenario {
    pub b: VpcBuilder,
    pub web: uuid::Uuid,
    pub db: uuid::Uuid,
    pub w1: uuid::Uuid,
    pub w2: uuid::Uuid,
    pub d1: uuid::Uuid,
    pub remote: uuid::Uuid,
}

/// Two groups (web, db), db accepts 5432 from web, three local ports and one on another node,
/// two policies, a floating IP, an address pair and a connection limit.
pub(crate) fn scenario() -> Scenario {
    let mut b = VpcBuilder::new(0xabc, "10.10.0.0/16");
    let s = b.subnet("10.10.1.0/24", true);
    let web = b.group("web");
    let db = b.group("db");
    b.rule(
        db,
        json!({"direction":"ingress","protocol":"tcp","port_min":5432,"port_max":5432,"remote_group":web}),
    );
    b.rule(
        web,
        json!({"direction":"ingress","protocol":"tcp","port_min":80,"port_max":80,"remote_cidr":"0.0.0.0/0"}),
    );
    let w1 = b.port(s, &[web], &[("role", "web")]);
    let w2 = b.port(s, &[web], &[("role", "web"), ("env", "ops")]);
    let d1 = b.port_with(s, &[db], &[("role", "db")], |r| {
        r.max_connections = Some(3);
        r.allowed_address_pairs = vec![crate::model::AddressPair {
            ip: "10.10.1.200".parse().unwrap(),
            mac: None,
        }];
    });
    let remote = b.port(s, &[web], &[("role", "web")]);
    b.bind_veth(w1, "vm-w1");
    b.bind_veth(w2, "vm-w2");
    b.bind_tap(d1);
    b.policy(json!({"name":"no-udp-to-db","from":{"role":"web"},"to":{"role":"db"},"protocol":"udp","action":"deny"}));
    b.policy(json!({"name":"ops-ssh","from":{"env":"ops"},"to":{},"protocol":"tcp","ports":[22],"action":"allow"}));
    b.floating_ip("203.0.113.10", w1);
    b.net.router_external_ip = Some("203.0.113.2".parse().unwrap());
    Scenario {
        b,
        web,
        db,
        w1,
        w2,
        d1,
        remote,
    }
}

pub(crate) fn cfg() -> NetNodeConfig {
    NetNodeConfig {
        netns_prefix: "rp-".into(),
        run_dir: "/run/rampart/net".into(),
        underlay: None,
    }
}

fn external() -> ExternalNetwork {
    ExternalNetwork {
        cidr: "203.0.113.0/24".parse().unwrap(),
        gateway: Some("203.0.113.1".parse().unwrap()),
    }
}

fn node(net: &VpcNetwork) -> NodeNetwork {
    NodeNetwork {
        external: Some(external()),
        vpcs: vec![net.clone()],
    }
}

/// Compares with `tests/golden/<name>`; `REGENERATE=1` rewrites the file.
#[track_caller]
fn golden(name: &str, actual: &str) {
    rampart_common::testing::golden(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name),
        actual,
    );
}

#[test]
fn spec_11_3_golden_vpc_ruleset() {
    let sc = scenario();
    let c = compile_vpc(&cfg(), Some(&external()), &sc.b.net).unwrap();
    golden("web_db.nft", &c.ruleset.render());
    golden(
        "web_db_plan.txt",
        &describe(&plan(&cfg(), &node(&sc.b.net), &Default::default()).unwrap()),
    );
    let d = c.dnsmasq.unwrap();
    golden(
        "web_db_dnsmasq.conf",
        &format!("{}---- dhcp-hosts\n{}", d.conf, d.hosts),
    );
}

#[test]
fn spec_10_5_guard_binds_every_local_port_with_its_pairs() {
    let sc = scenario();
    let c = compile_vpc(&cfg(), Some(&external()), &sc.b.net).unwrap();
    let guard = &c.ruleset.tables[0];
    let set = |n: &str| &guard.sets.iter().find(|s| s.name == n).unwrap().elements;
    let d1 = sc.b.net.ports.iter().find(|p| p.id == sc.d1).unwrap();
    let dev = names::port_dev(&sc.d1);
    assert!(set("bind_ip4").contains(&format!("\"{dev}\" . {} . 10.10.1.200", d1.mac)));
    assert!(set("bind_ip4").contains(&format!("\"{dev}\" . {} . {}", d1.mac, d1.ip)));
    // The remote port is bound on its own node, not here.
    assert!(!set("vm_ports").contains(&format!("\"{}\"", names::port_dev(&sc.remote))));
    assert_eq!(set("vm_ports").len(), 3);
}

#[test]
fn spec_10_3_3_remote_members_are_in_group_sets() {
    let sc = scenario();
    let c = compile_vpc(&cfg(), Some(&external()), &sc.b.net).unwrap();
    let fw = &c.ruleset.tables[1];
    let web = fw
        .sets
        .iter()
        .find(|s| s.name == format!("sg_{}", short_id(&sc.web)))
        .unwrap();
    assert!(web.elements.contains(&sc.b.ip_of(sc.remote).to_string()));
    assert_eq!(web.elements.len(), 3);
    let db = fw
        .sets
        .iter()
        .find(|s| s.name == format!("sg_{}", short_id(&sc.db)))
        .unwrap();
    assert_eq!(db.elements.len(), 2, "port address and its pair");
}

#[test]
fn spec_10_9_1_retag_is_only_set_element_updates() {
    let sc = scenario();
    let fake = FakeNet::default();
    let mut desired = node(&sc.b.net);
    let (_, r) = reconcile(&fake, &cfg(), &desired).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Retag w1 from web to db: its address moves between the policy sets.
    let p = desired.vpcs[0].ports.iter_mut().find(|p| p.id == sc.w1).unwrap();
    p.tags.insert("role".into(), "db".into());
    let steps = plan(&cfg(), &desired, &fake.observe(&cfg()).unwrap()).unwrap();
    assert_eq!(steps.len(), 1, "{}", describe(&steps));
    let Step::Nft { ops, .. } = &steps[0] else {
        panic!("{steps:?}")
    };
    assert!(ops.iter().all(NftOp::is_element_update), "{}", render_ops(ops));
    let text = render_ops(ops);
    assert!(text.contains("pol_"), "{text}");
    // Group membership too.
    let p = desired.vpcs[0].ports.iter_mut().find(|p| p.id == sc.w2).unwrap();
    p.security_groups = vec![sc.web, sc.db];
    fake.apply(&cfg(), &steps);
    let steps = plan(&cfg(), &desired, &fake.observe(&cfg()).unwrap()).unwrap();
    let Step::Nft { ops, .. } = &steps[0] else {
        panic!("{steps:?}")
    };
    // w2's own chains now jump to both groups (a rule change on w2 only); everyone else's
    // view of the db group changes by elements.
    let flushed: Vec<&str> = ops
        .iter()
        .filter_map(|o| match o {
            NftOp::FlushChain { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let w2 = short_id(&sc.w2);
    assert_eq!(
        flushed,
        [format!("port_{w2}_out"), format!("port_{w2}_in")],
        "{}",
        render_ops(ops)
    );
}

#[test]
fn spec_10_8_adding_a_port_leaves_other_port_chains_alone() {
    let mut sc = scenario();
    let fake = FakeNet::default();
    reconcile(&fake, &cfg(), &node(&sc.b.net)).unwrap();
    let s = sc.b.net.subnets[0].id;
    let p = sc.b.port(s, &[sc.web], &[]);
    sc.b.bind_veth(p, "vm-new");
    let steps = plan(&cfg(), &node(&sc.b.net), &fake.observe(&cfg()).unwrap()).unwrap();
    let nft: Vec<&NftOp> = steps
        .iter()
        .flat_map(|s| match s {
            Step::Nft { ops, .. } => ops.iter().collect(),
            _ => vec![],
        })
        .collect();
    let d1 = short_id(&sc.d1);
    for op in &nft {
        if let NftOp::FlushChain { name, .. } | NftOp::DeleteChain { name, .. } = op {
            panic!("chain {name} rewritten by an unrelated port add");
        }
        if let NftOp::AddRule { chain, .. } = op {
            assert!(!chain.contains(&d1), "the connection-limit chain of d1 was rewritten");
        }
    }
    assert!(
        nft.iter()
            .any(|o| matches!(o, NftOp::AddChain { name, .. } if *name == format!("port_{}_in", short_id(&p))))
    );
}

#[test]
fn plan_after_apply_is_empty_and_removal_cleans_up() {
    let sc = scenario();
    let fake = FakeNet::default();
    let desired = node(&sc.b.net);
    let (first, r) = reconcile(&fake, &cfg(), &desired).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(!first.is_empty());
    let again = plan(&cfg(), &desired, &fake.observe(&cfg()).unwrap()).unwrap();
    assert!(again.is_empty(), "not idempotent:\n{}", describe(&again));
    // Remove a port: its device goes, its tracked connections are flushed.
    let mut less = desired.clone();
    less.vpcs[0].local_ports.retain(|l| l.port != sc.w2);
    let steps = plan(&cfg(), &less, &fake.observe(&cfg()).unwrap()).unwrap();
    let text = describe(&steps);
    assert!(
        text.contains(&format!("link del {}", names::port_dev(&sc.w2))),
        "{text}"
    );
    assert!(text.contains(&format!("conntrack -D {}", sc.b.ip_of(sc.w2))), "{text}");
    fake.apply(&cfg(), &steps);
    // Remove the VPC: its namespace and the external namespace go.
    let steps = plan(&cfg(), &NodeNetwork::default(), &fake.observe(&cfg()).unwrap()).unwrap();
    let (_, r) = (steps.clone(), fake.apply(&cfg(), &steps));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(
        fake.observe(&cfg()).unwrap().namespaces.is_empty(),
        "{}",
        describe(&steps)
    );
}

#[test]
fn inconsistent_documents_are_refused_whole() {
    let sc = scenario();
    let mut net = sc.b.net.clone();
    net.ports[0].ip = "10.99.0.1".parse().unwrap();
    assert!(matches!(
        compile_vpc(&cfg(), None, &net),
        Err(NetError::Inconsistent(_))
    ));
    let mut net = sc.b.net.clone();
    net.ports[0].security_groups.push(uuid::Uuid::new_v4());
    assert!(matches!(
        compile_vpc(&cfg(), None, &net),
        Err(NetError::Inconsistent(_))
    ));
    let mut net = sc.b.net.clone();
    let dup = net.local_ports[0].clone();
    net.local_ports.push(dup);
    assert!(matches!(
        compile_vpc(&cfg(), None, &net),
        Err(NetError::Inconsistent(_))
    ));
}

#[test]
fn spec_10_4_no_uplink_means_no_nat_table_and_no_route() {
    let mut sc = scenario();
    sc.b.net.router_external_ip = None;
    let c = compile_vpc(&cfg(), Some(&external()), &sc.b.net).unwrap();
    assert_eq!(c.ruleset.tables.len(), 2);
    assert!(c.namespace.links.iter().all(|l| l.name != names::QG));
    assert_eq!(c.namespace.default_route, None);
    assert!(c.ext_links.is_empty());
}
