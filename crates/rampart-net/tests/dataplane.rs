//! Privileged data-plane tests: the real driver builds VPC namespaces, bridges and nft tables,
//! "VMs" are namespaces on the far end of each port's veth, and every assertion is about real
//! packets. Run as root; without root each test prints SKIP (or fails under
//! RAMPART_TEST_REQUIRE_ROOT=1).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rampart_net::desired::NodeNetwork;
use rampart_net::model::short_id;
use rampart_net::plan::describe;
use rampart_net::testing::VpcBuilder;
use serde_json::json;

/// A VPC with one subnet whose local ports are veths into fresh "VM" namespaces.
struct Lab {
    node: Node,
    b: VpcBuilder,
    subnet: uuid::Uuid,
    vms: Vec<(uuid::Uuid, Netns)>,
}

impl Lab {
    fn new(cidr_vpc: &str, cidr_subnet: &str) -> Lab {
        let mut b = VpcBuilder::new(random_seed(), cidr_vpc);
        let subnet = b.subnet(cidr_subnet, false);
        Lab {
            node: Node::new(),
            b,
            subnet,
            vms: vec![],
        }
    }

    fn vm(&mut self, groups: &[uuid::Uuid], tags: &[(&str, &str)]) -> uuid::Uuid {
        self.vm_with(groups, tags, |_| {})
    }

    fn vm_with(
        &mut self,
        groups: &[uuid::Uuid],
        tags: &[(&str, &str)],
        tweak: impl FnOnce(&mut rampart_net::model::PortCreate),
    ) -> uuid::Uuid {
        let p = self.b.port_with(self.subnet, groups, tags, tweak);
        let ns = Netns::new("vm");
        self.b.bind_veth(p, &ns.0);
        self.vms.push((p, ns));
        p
    }

    fn desired(&self) -> NodeNetwork {
        NodeNetwork {
            external: None,
            vpcs: vec![self.b.net.clone()],
        }
    }

    /// Applies, then configures every VM (address, default route) as its guest would.
    fn up(&self) {
        self.node.apply(&self.desired());
        let s = self.b.net.subnets.iter().find(|s| s.id == self.subnet).unwrap();
        for (p, ns) in &self.vms {
            let (ok, out) = ns.exec("ip -j addr show dev eth0");
            assert!(ok, "{out}");
            if !out.contains("\"inet\"") {
                ns.configure(self.b.ip_of(*p), s.cidr.prefix_len(), Some(s.gateway));
            }
        }
    }

    fn ns(&self, port: uuid::Uuid) -> &Netns {
        &self.vms.iter().find(|(p, _)| *p == port).unwrap().1
    }

    fn ip(&self, port: uuid::Uuid) -> std::net::Ipv4Addr {
        self.b.ip_of(port)
    }
}

#[test]
fn spec_10_3_4_intra_group_allowed_inter_group_denied_until_a_rule_allows() {
    if !root_or_skip("spec_10_3_4") {
        return;
    }
    let mut lab = Lab::new("10.10.0.0/16", "10.10.1.0/24");
    let a = lab.b.group("a");
    let bg = lab.b.group("b");
    let a1 = lab.vm(&[a], &[]);
    let a2 = lab.vm(&[a], &[]);
    let b1 = lab.vm(&[bg], &[]);
    lab.up();
    let _srv_a2 = lab.ns(a2).serve(80);
    let _srv_b1 = lab.ns(b1).serve(80);
    assert!(lab.ns(a1).ping(lab.ip(a2)), "same group must pass (10.3-4)");
    assert!(lab.ns(a1).can_connect(lab.ip(a2), 80));
    assert!(!lab.ns(a1).ping(lab.ip(b1)), "other group must be refused by default");
    assert!(!lab.ns(a1).can_connect(lab.ip(b1), 80));
    assert!(
        lab.node
            .counter(&lab.b.net.vpc.id, &format!("port_{}_drop_in", short_id(&b1)))
            >= 1
    );
    // Configurable: group b admits tcp/80 from group a.
    lab.b.rule(
        bg,
        json!({"direction":"ingress","protocol":"tcp","port_min":80,"port_max":80,"remote_group":a}),
    );
    let (steps, _) = lab.node.apply(&lab.desired());
    assert_eq!(steps.len(), 1, "{}", describe(&steps));
    assert!(lab.ns(a1).can_connect(lab.ip(b1), 80), "rule must open tcp/80");
    assert!(!lab.ns(a1).ping(lab.ip(b1)), "icmp is still refused");
    assert!(!lab.ns(b1).can_connect(lab.ip(a2), 80), "the rule is one-way");
    assert!(lab.node.pending(&lab.desired()).is_empty());
}

#[test]
fn spec_10_5_ip_mac_binding_drops_spoofed_source_mac_and_arp_poisoning() {
    if !root_or_skip("spec_10_5") {
        return;
    }
    let mut lab = Lab::new("10.20.0.0/16", "10.20.1.0/24");
    let g = lab.b.group("all");
    let v1 = lab.vm(&[g], &[]);
    let v2 = lab.vm(&[g], &[]);
    let v3 = lab.vm(&[g], &[]);
    lab.up();
    let vpc = lab.b.net.vpc.id;
    let (n1, ip2, ip3) = (lab.ns(v1), lab.ip(v2), lab.ip(v3));
    assert!(n1.ping(ip3), "baseline");
    // Spoofed source IP.
    must(&format!("ip -n {} addr add 10.20.1.99/24 dev eth0", n1.0));
    assert!(
        !n1.exec(&format!("ping -c1 -W1 -I 10.20.1.99 {ip3}")).0,
        "spoofed source must be dropped"
    );
    assert!(lab.node.counter(&vpc, "drop_ip_spoof") >= 1);
    must(&format!("ip -n {} addr del 10.20.1.99/24 dev eth0", n1.0));
    // Changed MAC.
    must(&format!("ip -n {} link set eth0 address 02:aa:bb:cc:dd:ee", n1.0));
    must(&format!("ip -n {} neigh flush all", lab.ns(v3).0));
    assert!(!n1.ping(ip3), "changed MAC must be dropped");
    assert!(lab.node.counter(&vpc, "drop_mac_spoof") >= 1);
    let mac1 = lab.b.net.ports.iter().find(|p| p.id == v1).unwrap().mac;
    must(&format!("ip -n {} link set eth0 address {mac1}", n1.0));
    assert!(n1.ping(ip3), "restored MAC passes again");
    // Gratuitous ARP claiming v2's address: v3's neighbour entry must keep v2's MAC.
    let mac2 = lab.b.net.ports.iter().find(|p| p.id == v2).unwrap().mac;
    assert!(lab.ns(v3).ping(ip2));
    // The attacker owns its guest: it may send ARP from any address.
    must(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_nonlocal_bind=1",
        n1.0
    ));
    n1.exec(&format!("busybox arping -U -c 3 -w 2 -I eth0 -s {ip2} {ip2}"));
    n1.exec(&format!("busybox arping -c 2 -w 2 -I eth0 -s {ip2} {ip3}"));
    let neigh = lab.ns(v3).exec(&format!("ip neigh show {ip2}")).1;
    assert!(neigh.contains(&mac2.to_string()), "ARP cache poisoned: {neigh}");
    assert!(lab.node.counter(&vpc, "drop_arp_spoof") >= 1);

    // Negative control: the same attack against a port without port security works, so the
    // test above can fail.
    let mut open = Lab::new("10.21.0.0/16", "10.21.1.0/24");
    let o1 = open.vm_with(&[], &[], |r| r.port_security = Some(false));
    let o2 = open.vm_with(&[], &[], |r| r.port_security = Some(false));
    let o3 = open.vm_with(&[], &[], |r| r.port_security = Some(false));
    open.up();
    let (ip2, ip3) = (open.ip(o2), open.ip(o3));
    assert!(open.ns(o3).ping(ip2));
    must(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.ip_nonlocal_bind=1",
        open.ns(o1).0
    ));
    open.ns(o1)
        .exec(&format!("busybox arping -U -c 3 -w 2 -I eth0 -s {ip2} {ip2}"));
    open.ns(o1)
        .exec(&format!("busybox arping -c 2 -w 2 -I eth0 -s {ip2} {ip3}"));
    let mac1 = open.b.net.ports.iter().find(|p| p.id == o1).unwrap().mac;
    let neigh = open.ns(o3).exec(&format!("ip neigh show {ip2}")).1;
    assert!(
        neigh.contains(&mac1.to_string()),
        "control: without port security the poisoning works: {neigh}"
    );
    must(&format!("ip -n {} addr add 10.21.1.99/24 dev eth0", open.ns(o1).0));
    assert!(
        open.ns(o1).exec(&format!("ping -c1 -W1 -I 10.21.1.99 {ip3}")).0,
        "control: spoofing works"
    );
}

#[test]
fn spec_9_1_1c_vpc_namespaces_get_hardened_sysctls_and_the_root_namespace_is_untouched() {
    if !root_or_skip("spec_9_1_1c") {
        return;
    }
    let before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let mut lab = Lab::new("10.30.0.0/16", "10.30.1.0/24");
    let s2 = lab.b.subnet("10.30.2.0/24", false);
    let g = lab.b.group("g");
    let v1 = lab.vm(&[g], &[]);
    let p2 = lab.b.port(s2, &[g], &[]);
    let n2 = Netns::new("vm");
    lab.b.bind_veth(p2, &n2.0);
    lab.up();
    n2.configure(lab.ip(p2), 24, Some("10.30.2.1".parse().unwrap()));
    let _srv = n2.serve(8080);
    assert!(
        lab.ns(v1).can_connect(lab.ip(p2), 8080),
        "routed between subnets inside the VPC namespace"
    );
    // What Rampart sets where it routes: forwarding on, and the hardened parameters of 9.1-1c
    // (no redirects sent or taken, no replies to broadcast pings), read back from the kernel.
    let vpc_ns = lab.node.vpc_ns(&lab.b.net.vpc.id);
    let wanted = rampart_net::compile::vpc_sysctls();
    assert_eq!(wanted["net.ipv4.ip_forward"], "1");
    for (key, value) in [
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.icmp_echo_ignore_broadcasts", "1"),
    ] {
        assert_eq!(wanted[key], value, "{key} in the VPC namespace's sysctls");
    }
    for (key, value) in &wanted {
        assert_eq!(
            must(&format!("ip netns exec {vpc_ns} sysctl -n {key}")).trim(),
            value,
            "{key} in {vpc_ns}"
        );
    }
    // And Rampart leaves the root namespace's forwarding as the host had it.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        before
    );
}

fn udhcpc(ns: &Netns) -> String {
    must(&format!("ip -n {} link set eth0 up", ns.0));
    ns.exec("busybox udhcpc -i eth0 -n -q -f -t 3 -T 1 -s /bin/true").1
}

fn rogue_dhcp(ns: &Netns, range: &str) {
    let (ok, out) = ns.exec(&format!(
        "dnsmasq --port=0 --interface=eth0 --bind-interfaces --dhcp-range={range},1h --dhcp-authoritative \
         --pid-file=/tmp/rogue-{0}.pid --dhcp-leasefile=/tmp/rogue-{0}.leases",
        ns.0
    ));
    assert!(ok, "rogue dnsmasq: {out}");
}

/// Sends one UDP datagram from `sport` in `from` to `to_ip:dport` where `to` listens; true when
/// it arrived.
fn udp_arrives(from: &Netns, to: &Netns, to_ip: std::net::Ipv4Addr, sport: u16, dport: u16) -> bool {
    let rx = to.run(move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", dport)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    });
    from.run(move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", sport)).unwrap();
        s.send_to(b"offer", (to_ip, dport)).unwrap();
    });
    let mut buf = [0u8; 16];
    rx.recv_from(&mut buf).is_ok()
}

#[test]
fn spec_10_7_rogue_dhcp_server_in_a_vm_never_leases_platform_dhcp_does() {
    if !root_or_skip("spec_10_7") {
        return;
    }
    let mut lab = Lab::new("10.40.0.0/16", "10.40.1.0/24");
    let g = lab.b.group("g");
    // The client's group admits DHCP client traffic from the whole subnet, so only the
    // quarantine can stop a rogue's datagram.
    lab.b.rule(
        g,
        json!({"direction":"ingress","protocol":"udp","port_min":68,"port_max":68,"remote_cidr":"10.40.1.0/24"}),
    );
    let rogue = lab.vm(&[g], &[]);
    let client_port = lab.b.port(lab.subnet, &[g], &[]);
    let client = Netns::new("vm");
    lab.b.bind_veth(client_port, &client.0);
    let open = lab.vm_with(&[], &[], |r| r.port_security = Some(false));
    lab.up();
    let vpc = lab.b.net.vpc.id;
    rogue_dhcp(lab.ns(rogue), "10.40.1.150,10.40.1.160");
    let out = udhcpc(&client);
    assert!(!out.contains("obtained"), "rogue server leased an address: {out}");
    // The client's broadcast DISCOVER never reaches other VMs.
    assert!(lab.node.counter(&vpc, "drop_flood") >= 1);
    // DHCP server traffic (udp sport 67) from a VM port is dropped even when unicast, while
    // the same datagram from another port passes; a port without port security (control)
    // gets it through, so the check can fail.
    lab.ns(rogue)
        .exec(&format!("sh -c 'kill $(cat /tmp/rogue-{}.pid)'", lab.ns(rogue).0));
    std::thread::sleep(Duration::from_millis(100));
    client.configure(lab.ip(client_port), 24, None);
    assert!(
        !udp_arrives(lab.ns(rogue), &client, lab.ip(client_port), 67, 68),
        "DHCP server traffic passed"
    );
    assert!(lab.node.counter(&vpc, "drop_dhcp_server") >= 1);
    assert!(
        udp_arrives(lab.ns(rogue), &client, lab.ip(client_port), 1067, 68),
        "ordinary UDP must pass"
    );
    assert!(
        udp_arrives(lab.ns(open), &client, lab.ip(client_port), 67, 68),
        "control: unguarded port"
    );
    must(&format!("ip -n {0} addr flush dev eth0", client.0));

    // Platform DHCP: dnsmasq in the VPC namespace with the port's static lease.
    lab.b.net.subnets[0].dhcp = true;
    lab.node.apply(&lab.desired());
    let out = udhcpc(&client);
    let want = format!("lease of {} obtained from 10.40.1.1", lab.ip(client_port));
    assert!(out.contains(&want), "platform lease expected ({want}): {out}");
    assert!(lab.node.pending(&lab.desired()).is_empty());
    let _ = std::fs::remove_file(format!("/tmp/rogue-{}.leases", lab.ns(rogue).0));
    let _ = std::fs::remove_file(format!("/tmp/rogue-{}.pid", lab.ns(rogue).0));
}

#[test]
fn spec_10_8_port_limited_to_n_connections_accepts_exactly_n_neighbour_unaffected() {
    if !root_or_skip("spec_10_8") {
        return;
    }
    let mut lab = Lab::new("10.70.0.0/16", "10.70.1.0/24");
    let g = lab.b.group("g");
    let client = lab.vm(&[g], &[]);
    let target = lab.vm_with(&[g], &[], |r| r.max_connections = Some(3));
    let neighbour = lab.vm(&[g], &[]);
    lab.up();
    must(&format!(
        "ip netns exec {} conntrack -F",
        lab.node.vpc_ns(&lab.b.net.vpc.id)
    ));
    let _s1 = lab.ns(target).serve(9000);
    let _s2 = lab.ns(neighbour).serve(9000);
    let held = lab
        .ns(client)
        .connect_many(lab.ip(target), 9000, 6, Duration::from_millis(400));
    assert_eq!(held.len(), 3, "limited port");
    let held_n = lab
        .ns(client)
        .connect_many(lab.ip(neighbour), 9000, 6, Duration::from_millis(400));
    assert_eq!(held_n.len(), 6, "neighbour unaffected");
    let drops = lab
        .node
        .counter(&lab.b.net.vpc.id, &format!("port_{}_ct_drop", short_id(&target)));
    assert!(drops >= 3, "drop counter exposes the exceeded allowance: {drops}");
    // Closing connections gives the allowance back.
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    must(&format!(
        "ip netns exec {} conntrack -F",
        lab.node.vpc_ns(&lab.b.net.vpc.id)
    ));
    let again = lab
        .ns(client)
        .connect_many(lab.ip(target), 9000, 4, Duration::from_millis(400));
    assert_eq!(again.len(), 3);
}

#[test]
fn spec_10_2_same_cidr_in_two_vpcs_stays_apart_and_8021q_frames_are_dropped() {
    if !root_or_skip("spec_10_2") {
        return;
    }
    let mut a = Lab::new("10.50.0.0/16", "10.50.1.0/24");
    let ga = a.b.group("g");
    let a1 = a.vm(&[ga], &[]);
    let a2 = a.vm(&[ga], &[]);
    // VPC B on the same node with the very same addresses.
    let mut b = VpcBuilder::new(random_seed(), "10.50.0.0/16");
    let sb = b.subnet("10.50.1.0/24", false);
    let gb = b.group("g");
    let (b1, b2) = (b.port(sb, &[gb], &[]), b.port(sb, &[gb], &[]));
    let (nb1, nb2) = (Netns::new("vm"), Netns::new("vm"));
    b.bind_veth(b1, &nb1.0);
    b.bind_veth(b2, &nb2.0);
    assert_eq!((a.ip(a1), a.ip(a2)), (b.ip_of(b1), b.ip_of(b2)));
    let doc = NodeNetwork {
        external: None,
        vpcs: vec![a.b.net.clone(), b.net.clone()],
    };
    a.node.apply(&doc);
    for (ns, ip) in [
        (a.ns(a1), a.ip(a1)),
        (a.ns(a2), a.ip(a2)),
        (&nb1, b.ip_of(b1)),
        (&nb2, b.ip_of(b2)),
    ] {
        ns.configure(ip, 24, None);
    }
    let _sa = a.ns(a2).serve(7000);
    let _sb = nb2.serve(7001);
    let ip2 = a.ip(a2);
    assert!(a.ns(a1).can_connect(ip2, 7000));
    assert!(!a.ns(a1).can_connect(ip2, 7001), "VPC A reached VPC B");
    assert!(nb1.can_connect(ip2, 7001));
    assert!(!nb1.can_connect(ip2, 7000), "VPC B reached VPC A");
    assert!(a.node.pending(&doc).is_empty());

    // 802.1Q-tagged frames (VID 20, inner ARP) from a VM port are dropped, not switched.
    let py = r#"import socket,struct
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(("eth0",0))
src=bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":",""))
for _ in range(3): s.send(b"\xff"*6+src+struct.pack("!HHH",0x8100,20,0x0806)+b"\x00"*28)"#;
    let (ok, out) = a.ns(a1).exec(&format!("python3 -c '{py}'"));
    assert!(ok, "raw frame send: {out}");
    assert!(a.node.counter(&a.b.net.vpc.id, "drop_vlan") >= 3);
}

#[test]
fn spec_10_9_1_retag_changes_policy_within_a_second_with_set_updates_only() {
    if !root_or_skip("spec_10_9_1") {
        return;
    }
    let mut lab = Lab::new("10.80.0.0/16", "10.80.1.0/24");
    let g = lab.b.group("g");
    let web = lab.vm(&[g], &[("role", "web")]);
    let db = lab.vm(&[g], &[("role", "db")]);
    let x = lab.vm(&[g], &[("role", "batch")]);
    lab.b
        .policy(json!({"name":"no-web-to-db","from":{"role":"web"},"to":{"role":"db"},"protocol":"tcp","ports":[5432],"action":"deny"}));
    lab.up();
    let _srv = lab.ns(db).serve(5432);
    let ipdb = lab.ip(db);
    assert!(
        !lab.ns(web).can_connect(ipdb, 5432),
        "policy denies web→db even inside one group"
    );
    assert!(lab.ns(x).can_connect(ipdb, 5432));
    let vpc_ns = lab.node.vpc_ns(&lab.b.net.vpc.id);
    let rules_before = must(&format!(
        "ip netns exec {vpc_ns} nft -a list table inet rampart_fw | grep -v elements"
    ));

    lab.b
        .net
        .ports
        .iter_mut()
        .find(|p| p.id == x)
        .unwrap()
        .tags
        .insert("role".into(), "web".into());
    let started = Instant::now();
    let steps = lab.node.pending(&lab.desired());
    match &steps[..] {
        [rampart_net::plan::Step::Nft { ops, .. }] => {
            assert!(ops.iter().all(rampart_net::nft::NftOp::is_element_update), "{ops:?}")
        }
        other => panic!("retag must be one nft element update: {}", describe(other)),
    }
    lab.node.apply(&lab.desired());
    let mut denied = false;
    while started.elapsed() < Duration::from_secs(1) {
        if !lab.ns(x).can_connect(ipdb, 5432) {
            denied = true;
            break;
        }
    }
    assert!(denied, "retag not enforced within a second");
    let rules_after = must(&format!(
        "ip netns exec {vpc_ns} nft -a list table inet rampart_fw | grep -v elements"
    ));
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("packets "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(&rules_before),
        strip(&rules_after),
        "rules or their handles changed"
    );
}

#[test]
fn spec_10_4_outside_reaches_only_floating_ips_on_allowed_ports_and_egress_is_snat() {
    if !root_or_skip("spec_10_4") {
        return;
    }
    let mut lab = Lab::new("10.60.0.0/16", "10.60.1.0/24");
    let g = lab.b.group("g");
    lab.b.rule(
        g,
        json!({"direction":"ingress","protocol":"tcp","port_min":80,"port_max":80,"remote_cidr":"0.0.0.0/0"}),
    );
    let v1 = lab.vm(&[g], &[]);
    let v2 = lab.vm(&[g], &[]);
    lab.b.floating_ip("203.0.113.10", v1);
    lab.b.net.router_external_ip = Some("203.0.113.2".parse().unwrap());
    let mut doc = lab.desired();
    doc.external = Some(external());
    lab.node.apply(&doc);
    for (p, ns) in &lab.vms {
        ns.configure(lab.b.ip_of(*p), 24, Some("10.60.1.1".parse().unwrap()));
    }
    let ext = lab.node.cfg.ext_netns();
    let out = Netns::new("out");
    must(&format!(
        "ip link add o{0} netns {ext} type veth peer name eth0 netns {1} && ip -n {ext} link set o{0} master brext up",
        unique(),
        out.0
    ));
    out.configure("203.0.113.50".parse().unwrap(), 24, None);
    let _s80 = lab.ns(v1).serve(80);
    let _s22 = lab.ns(v1).serve(22);
    let fip = "203.0.113.10".parse().unwrap();
    assert!(out.can_connect(fip, 80), "floating IP, allowed port");
    assert!(!out.can_connect(fip, 22), "floating IP, port not allowed by the group");
    must(&format!("ip -n {} route add 10.60.0.0/16 via 203.0.113.2", out.0));
    assert!(!out.can_connect(lab.ip(v1), 80), "private address reached from outside");
    assert!(!out.can_connect(lab.ip(v2), 80));
    must(&format!("ip -n {} route del 10.60.0.0/16", out.0));
    // Egress: SNAT to the floating IP for v1, to the router address for v2.
    let srv = out.serve(8080);
    let c1 = lab
        .ns(v1)
        .connect_many("203.0.113.50".parse().unwrap(), 8080, 1, Duration::from_secs(1));
    let c2 = lab
        .ns(v2)
        .connect_many("203.0.113.50".parse().unwrap(), 8080, 1, Duration::from_secs(1));
    assert_eq!((c1.len(), c2.len()), (1, 1));
    std::thread::sleep(Duration::from_millis(100));
    let peers: Vec<String> = srv
        .held
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.peer_addr().unwrap().ip().to_string())
        .collect();
    assert!(
        peers.contains(&"203.0.113.10".to_string()) && peers.contains(&"203.0.113.2".to_string()),
        "{peers:?}"
    );
    // The foreign device in the external namespace is left alone.
    assert!(
        lab.node.pending(&doc).is_empty(),
        "{}",
        describe(&lab.node.pending(&doc))
    );
}

#[test]
fn restart_reapplies_identically_without_cutting_flows_and_delete_leaves_nothing() {
    if !root_or_skip("hygiene") {
        return;
    }
    let mut lab = Lab::new("10.90.0.0/16", "10.90.1.0/24");
    lab.b.net.subnets[0].dhcp = true;
    let g = lab.b.group("g");
    let v1 = lab.vm(&[g], &[]);
    let v2 = lab.vm_with(&[g], &[], |r| r.max_connections = Some(10));
    lab.up();
    let vpc_ns = lab.node.vpc_ns(&lab.b.net.vpc.id);
    let _srv = lab.ns(v2).serve(5000);
    let mut conn = lab.ns(v1).connect_many(lab.ip(v2), 5000, 1, Duration::from_secs(1));
    assert!(still_open(&mut conn[0]));
    let listing = || must(&format!("ip netns exec {vpc_ns} nft list ruleset | grep -v 'packets '"));
    let before = listing();
    // A restarted agent (fresh driver, same document) finds nothing to do.
    let fresh = Node {
        cfg: lab.node.cfg.clone(),
        driver: Default::default(),
        run_dir: common::tempfile_dir::Dir(std::env::temp_dir().join("rampart-unused")),
    };
    let (steps, _) = fresh.apply(&lab.desired());
    std::mem::forget(fresh);
    assert!(steps.is_empty(), "{}", describe(&steps));
    assert_eq!(before, listing());
    // Drift (a chain flushed behind our back) converges on the next pass; flows survive.
    must(&format!(
        "ip netns exec {vpc_ns} nft flush chain inet rampart_fw forward"
    ));
    let (steps, _) = lab.node.apply(&lab.desired());
    assert_eq!(steps.len(), 1, "{}", describe(&steps));
    assert_eq!(before, listing());
    assert!(still_open(&mut conn[0]), "re-apply cut an established connection");
    let dnsmasq_pid = std::fs::read_to_string(lab.node.cfg.run_dir.join(&vpc_ns).join("dnsmasq.pid")).unwrap();
    // Delete the VPC: no namespace, no process, no files remain.
    lab.node.apply(&NodeNetwork::default());
    let listed = must("ip netns list");
    assert!(!listed.contains(&lab.node.cfg.netns_prefix), "{listed}");
    // A zombie waiting for this sandbox's init to reap it is dead too.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", dnsmasq_pid.trim())).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "dnsmasq survived: {stat}");
    assert!(!lab.node.cfg.run_dir.join(&vpc_ns).exists());
    // Namespace teardown is asynchronous in the kernel: give the veth pair a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.ns(v1).exec("ip link show eth0").0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !lab.ns(v1).exec("ip link show eth0").0,
        "the VM end of the port survived the VPC"
    );
}

/// xorshift64*: deterministic from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[test]
fn spec_10_9_1_reachability_analysis_agrees_with_real_packets() {
    if !root_or_skip("reachability") {
        return;
    }
    let seed = random_seed();
    eprintln!("reachability seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut lab = Lab::new("10.100.0.0/16", "10.100.1.0/24");
    let groups: Vec<uuid::Uuid> = (0..3).map(|i| lab.b.empty_group(&format!("g{i}"))).collect();
    let ports: Vec<uuid::Uuid> = (0..4).map(|_| lab.vm(&[], &[])).collect();
    lab.up();
    let _servers: Vec<_> = ports
        .iter()
        .flat_map(|p| [lab.ns(*p).serve(80), lab.ns(*p).serve(443)])
        .collect();
    let ips: Vec<String> = ports.iter().map(|p| lab.ip(*p).to_string()).collect();
    let mut checked = (0, 0);
    for round in 0..10 {
        // A fresh random world over the same ports.
        for g in lab.b.net.security_groups.iter_mut() {
            g.rules.clear();
        }
        for gi in 0..groups.len() {
            for _ in 0..rng.below(4) {
                let protocol = *rng.pick(&["tcp", "tcp", "tcp", "any", "udp", "icmp"]);
                let mut body = json!({"direction": *rng.pick(&["ingress", "egress"]), "protocol": protocol});
                if protocol == "tcp" || protocol == "udp" {
                    match rng.below(4) {
                        0 => {}
                        1 => (body["port_min"], body["port_max"]) = (json!(80), json!(80)),
                        2 => (body["port_min"], body["port_max"]) = (json!(443), json!(443)),
                        _ => (body["port_min"], body["port_max"]) = (json!(1), json!(100)),
                    }
                }
                match rng.below(4) {
                    0 => {}
                    1 => body["remote_group"] = json!(groups[rng.below(3) as usize]),
                    2 => body["remote_cidr"] = json!(format!("{}/32", rng.pick(&ips))),
                    _ => body["remote_cidr"] = json!(*rng.pick(&["10.100.1.0/24", "0.0.0.0/0", "10.100.1.0/31"])),
                }
                lab.b.rule(groups[gi], body);
            }
        }
        for p in lab.b.net.ports.iter_mut() {
            p.security_groups = groups.iter().copied().filter(|_| rng.below(2) == 0).collect();
            p.tags = [("role".to_string(), rng.pick(&["a", "b", "c"]).to_string())].into();
        }
        lab.b.net.policies.clear();
        for i in 0..rng.below(3) {
            let sel = |r: &mut Rng| match r.below(3) {
                0 => json!({}),
                _ => json!({"role": *r.pick(&["a", "b"])}),
            };
            let mut body = json!({"name": format!("p{i}"), "from": sel(&mut rng), "to": sel(&mut rng),
                "protocol": *rng.pick(&["tcp", "any"]), "action": *rng.pick(&["allow", "deny"])});
            if body["protocol"] == "tcp" && rng.below(2) == 0 {
                body["ports"] = json!([*rng.pick(&[80, 443])]);
            }
            lab.b.policy(body);
        }
        lab.node.apply(&lab.desired());

        let mut probes = Vec::new();
        for &from in &ports {
            for &to in &ports {
                if from == to {
                    continue;
                }
                for dport in [80u16, 443] {
                    let predicted = rampart_net::reach::reachable(
                        &lab.b.net,
                        &from,
                        &to,
                        rampart_net::model::Protocol::Tcp,
                        Some(dport),
                    )
                    .unwrap();
                    let ns_path = format!("/run/netns/{}", lab.ns(from).0);
                    let ip = lab.ip(to);
                    let handle = std::thread::spawn(move || {
                        use std::os::fd::AsFd;
                        let f = std::fs::File::open(ns_path).unwrap();
                        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                        std::net::TcpStream::connect_timeout(&(ip, dport).into(), Duration::from_millis(500)).is_ok()
                    });
                    probes.push((from, to, dport, predicted, handle));
                }
            }
        }
        for (from, to, dport, predicted, handle) in probes {
            let real = handle.join().unwrap();
            assert_eq!(
                predicted.allowed,
                real,
                "round {round} seed {seed:#x}: {from} → {to}:{dport} analysis says {predicted:?}, packets say {real}\nstate: {}",
                serde_json::to_string_pretty(&lab.b.net).unwrap()
            );
            if real {
                checked.0 += 1;
            } else {
                checked.1 += 1;
            }
        }
    }
    eprintln!(
        "reachability: {} allowed and {} denied probes agreed",
        checked.0, checked.1
    );
    assert!(
        checked.0 > 0 && checked.1 > 0,
        "the random worlds must exercise both verdicts"
    );
}
