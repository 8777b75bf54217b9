//! High availability of protected instances (spec 14.1-3) on the simulated cluster
//! (controller + agents on the fake hypervisor, real mTLS): admission control, recovery of a
//! lost node's protected instances on another node with the same ports, self fencing of a
//! node cut off from the controller, and a returning node that keeps no stale copy.

use std::time::Duration;

use http::StatusCode;
use rampart_api::Client;
use rampart_compute::image::{Digest, SigningKey};
use rampart_testkit::{ClusterOptions, TestCluster};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Two nodes, 1 s heartbeats, unreachable after 3 s, fence after 3 s, restart 1 s later.
async fn cluster(agents: usize) -> TestCluster {
    let c = TestCluster::start(ClusterOptions {
        agents,
        configure: Box::new(|c| {
            c.ha.fence_after_s = 3;
            c.ha.fence_margin_s = 1;
        }),
        ..Default::default()
    })
    .await;
    c.wait_for_ready_nodes(agents).await;
    c
}

fn sha(bytes: &[u8]) -> Digest {
    rampart_compute::image::sha256_reader(bytes).unwrap().0
}

async fn put_data(c: &TestCluster, client: &Client, project: Uuid, image: &Value, data: &[u8]) {
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let resp = http
        .put(format!(
            "{}/v1/projects/{project}/images/{}/data",
            c.controller.url(),
            image["id"].as_str().unwrap()
        ))
        .bearer_auth(client.token().unwrap().expose())
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A signed kernel + initrd in the admin project; returns the kernel's id.
async fn demo_images(c: &TestCluster, project: Uuid) -> String {
    let key = SigningKey::generate().unwrap();
    let _: Value = c
        .admin
        .post(
            "/v1/signing-keys",
            &json!({"name": "release", "public_key": key.public_key().to_text()}),
        )
        .await
        .unwrap();
    let mut kernel = None;
    for (name, format, data) in [
        ("demo-initrd", "initrd", &b"initrd"[..]),
        ("demo-kernel", "kernel", b"kernel"),
    ] {
        let sig = key.sign_digest(&sha(data));
        let mut body =
            json!({"name": name, "disk_format": format, "signature": sig.signature, "signing_key": sig.key_id});
        if format == "kernel" {
            body["ramdisk_image"] = json!("demo-initrd");
        }
        let img: Value = c
            .admin
            .post(&format!("/v1/projects/{project}/images"), &body)
            .await
            .unwrap();
        put_data(c, &c.admin, project, &img, data).await;
        kernel = Some(img["id"].as_str().unwrap().to_string());
    }
    kernel.unwrap()
}

async fn flavor(c: &TestCluster, memory_mib: u64) -> String {
    let name = format!("f-{}", &Uuid::new_v4().to_string()[..8]);
    let _: Value = c
        .admin
        .post(
            "/v1/flavors",
            &json!({"name": name, "vcpus": 1, "memory_mib": memory_mib, "root_disk_gib": 1}),
        )
        .await
        .unwrap();
    name
}

async fn subnet(c: &TestCluster, project: Uuid) -> Value {
    let vpc: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/vpcs"),
            &json!({"name": "v", "cidr": "10.90.0.0/16"}),
        )
        .await
        .unwrap();
    c.admin
        .post(
            &format!("/v1/projects/{project}/subnets"),
            &json!({"vpc": vpc["id"], "name": "s", "cidr": "10.90.1.0/24", "dhcp": true}),
        )
        .await
        .unwrap()
}

async fn instance(c: &TestCluster, project: Uuid, id: &str) -> Value {
    c.admin
        .get(&format!("/v1/projects/{project}/instances/{id}"))
        .await
        .unwrap()
}

async fn events(c: &TestCluster, project: Uuid, id: &str) -> Vec<(String, Value)> {
    let v: Value = c
        .admin
        .get(&format!("/v1/projects/{project}/instances/{id}/events"))
        .await
        .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_string(), e["detail"].clone()))
        .collect()
}

async fn wait_running_on(c: &TestCluster, project: Uuid, id: &str, node: Uuid) -> Value {
    TestCluster::wait_for(&format!("instance running on {node}"), WAIT, || async {
        let i = instance(c, project, id).await;
        (i["status"] == "running" && i["node_id"] == node.to_string()).then_some(i)
    })
    .await
}

fn agent_index(c: &TestCluster, node: &Value) -> usize {
    c.agents
        .iter()
        .position(|a| a.node_id.to_string() == node.as_str().unwrap())
        .expect("placed on one of the agents")
}

async fn audited(c: &TestCluster, operation: &str) -> usize {
    let v: Value = c
        .admin
        .get(&format!("/v1/audit/events?operation={operation}"))
        .await
        .unwrap();
    v["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_1_3_admission_control_refuses_protection_it_cannot_keep_with_409_ha_capacity() {
    let c = cluster(2).await;
    let project = c.admin_project().await;
    let kernel = demo_images(&c, project).await;
    // The fake hosts have 32 GiB each: one 20 GiB protected instance can restart on the other
    // node, a second one cannot (whichever node is lost).
    let big = flavor(&c, 20 * 1024).await;
    let launch = |name: &str, ha: Value| json!({"name": name, "image": kernel, "flavor": big, "ha": ha});
    let path = format!("/v1/projects/{project}/instances");
    let first: Value = c
        .admin
        .post(&path, &launch("one", json!({"enabled": true, "priority": 10})))
        .await
        .unwrap();
    assert_eq!(first["ha"], json!({"enabled": true, "priority": 10}));
    let e = c
        .admin
        .post::<_, Value>(&path, &launch("two", json!({"enabled": true})))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT), "{e}");
    assert_eq!(e.code(), Some("ha_capacity"), "{e}");
    // An unprotected one that would eat the reserve is refused too; a small one fits.
    let e = c
        .admin
        .post::<_, Value>(&path, &launch("three", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ha_capacity"), "{e}");
    let small = flavor(&c, 256).await;
    let ok: Value = c
        .admin
        .post(&path, &json!({"name": "four", "image": kernel, "flavor": small}))
        .await
        .unwrap();
    assert!(ok.get("ha").is_none(), "{ok}");
    // A priority out of range is a validation error.
    let e = c
        .admin
        .post::<_, Value>(
            &path,
            &json!({"name": "five", "image": kernel, "flavor": small, "ha": {"enabled": true, "priority": 101}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_REQUEST), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_1_3_a_single_node_cannot_protect_an_instance() {
    let c = cluster(1).await;
    let project = c.admin_project().await;
    let kernel = demo_images(&c, project).await;
    let f = flavor(&c, 256).await;
    let e = c
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "solo", "image": kernel, "flavor": f, "ha": {"enabled": true}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ha_capacity"), "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_1_3_a_lost_nodes_protected_instance_restarts_elsewhere_with_its_ports_and_the_node_returns_without_it()
{
    let mut c = cluster(2).await;
    let project = c.admin_project().await;
    let kernel = demo_images(&c, project).await;
    let f = flavor(&c, 256).await;
    let s = subnet(&c, project).await;
    let path = format!("/v1/projects/{project}/instances");
    let created: Value = c
        .admin
        .post(
            &path,
            &json!({"name": "web", "image": kernel, "flavor": f, "networks": [s["id"]], "ha": {"enabled": true, "priority": 90}}),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let uuid: Uuid = id.parse().unwrap();
    let lost = agent_index(&c, &created["node_id"]);
    let survivor = c.agents[1 - lost].node_id;
    wait_running_on(&c, project, &id, c.agents[lost].node_id).await;
    let port_id = created["ports"][0].as_str().unwrap().to_string();
    let port_before: Value = c
        .admin
        .get(&format!("/v1/projects/{project}/ports/{port_id}"))
        .await
        .unwrap();

    // The node's agent dies (its VM is left running on the hypervisor, as QEMU outlives a
    // killed agent).
    let agent = c.agents.remove(lost);
    let (name, vms) = (agent.name.clone(), agent.vms.clone());
    let lost_at = std::time::Instant::now();
    let dir = agent.stop().await;
    assert!(vms.vm(uuid).is_some());

    let moved = wait_running_on(&c, project, &id, survivor).await;
    let recovery = lost_at.elapsed();
    eprintln!("vm_recovery_s {:.1}", recovery.as_secs_f64());
    // Heartbeat timeout 3 s, fence 3 s + margin 1 s after the last heartbeat, then a boot.
    assert!(
        recovery >= Duration::from_secs(3),
        "restarted before the node's fence: {recovery:?}"
    );
    assert_eq!(moved["ports"], created["ports"], "same ports");
    assert_eq!(moved["ha"], json!({"enabled": true, "priority": 90}));
    let port_after: Value = c
        .admin
        .get(&format!("/v1/projects/{project}/ports/{port_id}"))
        .await
        .unwrap();
    assert_eq!(port_after["ip"], port_before["ip"]);
    assert_eq!(port_after["mac"], port_before["mac"]);
    assert_eq!(port_after["binding"]["node"], survivor.to_string());
    let survivor_vms = &c.agents[0].vms;
    let vm = survivor_vms.vm(uuid).expect("running on the survivor");
    assert_eq!(vm.spec.nics[0].mac, port_before["mac"].as_str().unwrap());
    let kinds: Vec<String> = events(&c, project, &id).await.into_iter().map(|(k, _)| k).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(
        pos("node_lost") < pos("fenced") && pos("fenced") < pos("restarted"),
        "{kinds:?}"
    );
    let restarted = events(&c, project, &id)
        .await
        .into_iter()
        .find(|(k, _)| k == "restarted")
        .unwrap()
        .1;
    assert_eq!(restarted["node"], c.agents[0].name, "{restarted}");
    for op in [
        "ha.node_lost",
        "ha.instance_node_lost",
        "ha.node_fenced",
        "ha.instance_restarted",
    ] {
        assert!(audited(&c, op).await > 0, "no audit record {op}");
    }

    // The lost node comes back on the same hypervisor, its stale copy still there: its lease
    // ran out while it was away, so it kills the copy and boots nothing from its ledger; the
    // controller's document no longer names the instance.
    let back = c.start_agent_on(&name, dir, None, vms.clone()).await.unwrap();
    c.agents.push(back);
    c.wait_for_ready_nodes(2).await;
    TestCluster::wait_for("the stale copy gone", WAIT, || async {
        vms.vm(uuid).is_none().then_some(())
    })
    .await;
    // And it stays gone: one copy only, on the survivor.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(vms.vm(uuid).is_none(), "the returning node booted the instance again");
    assert!(c.agents[0].vms.vm(uuid).is_some());
    let i = instance(&c, project, &id).await;
    assert_eq!(i["node_id"], survivor.to_string());
    assert_eq!(i["status"], "running");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_1_3_a_node_cut_off_from_the_controller_fences_its_protected_vms_and_boots_them_again_once_confirmed() {
    let c = cluster(2).await;
    let project = c.admin_project().await;
    let kernel = demo_images(&c, project).await;
    let f = flavor(&c, 256).await;
    let path = format!("/v1/projects/{project}/instances");
    let ha: Value = c
        .admin
        .post(
            &path,
            &json!({"name": "ha", "image": kernel, "flavor": f, "ha": {"enabled": true}}),
        )
        .await
        .unwrap();
    let plain: Value = c
        .admin
        .post(&path, &json!({"name": "plain", "image": kernel, "flavor": f}))
        .await
        .unwrap();
    let (ha_id, plain_id) = (
        ha["id"].as_str().unwrap().to_string(),
        plain["id"].as_str().unwrap().to_string(),
    );
    let ha_node = agent_index(&c, &ha["node_id"]);
    let plain_node = agent_index(&c, &plain["node_id"]);
    wait_running_on(&c, project, &ha_id, c.agents[ha_node].node_id).await;
    wait_running_on(&c, project, &plain_id, c.agents[plain_node].node_id).await;
    let (ha_vms, plain_vms) = (c.agents[ha_node].vms.clone(), c.agents[plain_node].vms.clone());
    let (ha_uuid, plain_uuid): (Uuid, Uuid) = (ha_id.parse().unwrap(), plain_id.parse().unwrap());
    let starts = ha_vms.starts();

    // The controller is gone for 6 s: every agent loses its lease after 3 s. The protected VM
    // is killed by its own node, the unprotected one keeps running.
    let watcher = {
        let vms = ha_vms.clone();
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            while vms.vm(ha_uuid).is_some() && t.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            t.elapsed()
        })
    };
    let c = c.restart_controller_after(Duration::from_secs(6), |_| {}).await;
    let fenced_after = watcher.await.unwrap();
    eprintln!(
        "fenced {:.1} s after the controller went away",
        fenced_after.as_secs_f64()
    );
    assert!(
        fenced_after < Duration::from_secs(6),
        "the node did not fence itself while cut off"
    );
    assert!(plain_vms.vm(plain_uuid).is_some(), "an unprotected VM is not fenced");

    // Back in touch: the node reports the fence, the controller boots it again there (a new
    // boot sequence); one copy only.
    let again = TestCluster::wait_for("the protected instance running again", WAIT, || async {
        let i = instance(&c, project, &ha_id).await;
        (i["status"] == "running" && ha_vms.vm(ha_uuid).is_some()).then_some(i)
    })
    .await;
    assert_eq!(
        again["node_id"], ha["node_id"],
        "the node came back before its instance moved"
    );
    assert_eq!(ha_vms.starts(), starts + 1);
    let kinds: Vec<String> = events(&c, project, &ha_id).await.into_iter().map(|(k, _)| k).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .rposition(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(pos("fenced") < pos("restarted"), "{kinds:?}");
    let copies = c.agents.iter().filter(|a| a.vms.vm(ha_uuid).is_some()).count();
    assert_eq!(copies, 1);
    c.shutdown().await;
}
