//! Compute through the API on the simulated cluster (controller + agents on the fake
//! hypervisor, real mTLS): signed images, flavors, the instance life cycle as the node applies
//! it, the image verified on the node before every boot, and project isolation.

use std::time::Duration;

use http::StatusCode;
use rampart_api::{Client, ClientError, ScopeRef};
use rampart_compute::image::{Digest, SigningKey};
use rampart_testkit::{ClusterOptions, TestCluster};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn cluster(agents: usize) -> TestCluster {
    let c = TestCluster::start(ClusterOptions {
        agents,
        ..Default::default()
    })
    .await;
    c.wait_for_ready_nodes(agents).await;
    c
}

fn sha(bytes: &[u8]) -> Digest {
    rampart_compute::image::sha256_reader(bytes).unwrap().0
}

/// Uploads raw bytes as an image's data (the typed client speaks JSON only).
async fn put_data(c: &TestCluster, client: &Client, project: Uuid, image: Uuid, data: &[u8]) -> (StatusCode, Value) {
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let resp = http
        .put(format!(
            "{}/v1/projects/{project}/images/{image}/data",
            c.controller.url()
        ))
        .bearer_auth(client.token().unwrap().expose())
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn trust(c: &TestCluster, key: &SigningKey, name: &str) -> Value {
    c.admin
        .post(
            "/v1/signing-keys",
            &json!({"name": name, "public_key": key.public_key().to_text()}),
        )
        .await
        .unwrap()
}

/// Registers an image signed over `signed` and uploads `uploaded`.
#[allow(clippy::too_many_arguments)]
async fn image(
    c: &TestCluster,
    client: &Client,
    project: Uuid,
    name: &str,
    format: &str,
    extra: Value,
    key: &SigningKey,
    signed: &[u8],
    uploaded: &[u8],
) -> (Value, StatusCode, Value) {
    let sig = key.sign_digest(&sha(signed));
    let mut body = json!({
        "name": name, "disk_format": format, "signature": sig.signature, "signing_key": sig.key_id,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let created: Value = client
        .post(&format!("/v1/projects/{project}/images"), &body)
        .await
        .unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let (status, after) = put_data(c, client, project, id, uploaded).await;
    (created, status, after)
}

async fn flavor(c: &TestCluster) -> Value {
    c.admin
        .post(
            "/v1/flavors",
            &json!({"name": format!("f-{}", &Uuid::new_v4().to_string()[..8]), "vcpus": 1, "memory_mib": 256, "root_disk_gib": 1}),
        )
        .await
        .unwrap()
}

/// A cluster without agents whose admin project trusts a fresh key `release`.
async fn trusting_project() -> (TestCluster, Uuid, SigningKey) {
    let c = cluster(0).await;
    let project = c.admin_project().await;
    let key = SigningKey::generate().unwrap();
    trust(&c, &key, "release").await;
    (c, project, key)
}

/// What a boot needs: a one-node cluster whose admin project holds the signed demo images
/// (trusted key `release`) and a flavor. Returns the cluster, the project, the kernel image
/// and the flavor.
async fn bootable() -> (TestCluster, Uuid, Uuid, Value) {
    bootable_on(1).await
}

async fn bootable_on(nodes: usize) -> (TestCluster, Uuid, Uuid, Value) {
    let c = cluster(nodes).await;
    let project = c.admin_project().await;
    let key = SigningKey::generate().unwrap();
    trust(&c, &key, "release").await;
    let kernel = demo_images(&c, project, &key).await;
    let f = flavor(&c).await;
    (c, project, kernel, f)
}

/// A kernel and its initrd, both signed by `key` and uploaded; returns the kernel image's id.
async fn demo_images(c: &TestCluster, project: Uuid, key: &SigningKey) -> Uuid {
    let (rd, s, _) = image(
        c,
        &c.admin,
        project,
        "demo-initrd",
        "initrd",
        json!({}),
        key,
        b"initrd bytes",
        b"initrd bytes",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (k, s, after) = image(
        c,
        &c.admin,
        project,
        "demo-kernel",
        "kernel",
        json!({"ramdisk_image": rd["id"]}),
        key,
        b"kernel bytes",
        b"kernel bytes",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{after}");
    assert_eq!(after["status"], "active");
    assert_eq!(after["signature_verified"], true);
    k["id"].as_str().unwrap().parse().unwrap()
}

/// A VPC `name` of 10.`n`.0.0/16 with one DHCP subnet 10.`n`.1.0/24; returns the subnet.
async fn vpc_with_subnet(c: &TestCluster, project: Uuid, name: &str, n: u8) -> Value {
    let p = |rest: &str| format!("/v1/projects/{project}/{rest}");
    let vpc: Value = c
        .admin
        .post(&p("vpcs"), &json!({"name": name, "cidr": format!("10.{n}.0.0/16")}))
        .await
        .unwrap();
    c.admin
        .post(
            &p("subnets"),
            &json!({"vpc": vpc["id"], "name": format!("{name}-s"), "cidr": format!("10.{n}.1.0/24"), "dhcp": true}),
        )
        .await
        .unwrap()
}

async fn instance(c: &TestCluster, project: Uuid, id: Uuid) -> Value {
    c.admin
        .get(&format!("/v1/projects/{project}/instances/{id}"))
        .await
        .unwrap()
}

async fn wait_status(c: &TestCluster, project: Uuid, id: Uuid, want: &str) -> Value {
    TestCluster::wait_for(&format!("instance {want}"), WAIT, || async {
        let i = instance(c, project, id).await;
        (i["status"] == want).then_some(i)
    })
    .await
}

async fn events(c: &TestCluster, project: Uuid, id: Uuid) -> Vec<String> {
    let v: Value = c
        .admin
        .get(&format!("/v1/projects/{project}/instances/{id}/events"))
        .await
        .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn code(e: &ClientError) -> Option<&str> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_signed_image_boots_and_the_instance_follows_its_power_actions() {
    let (c, project, kernel, f) = bootable().await;

    let created: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "web-1", "image": kernel.to_string(), "flavor": f["name"],
                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test"],
                    "password": "Guest-pass-2026"}),
        )
        .await
        .unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created["password_set"], true);
    assert!(
        !created.to_string().contains("Guest-pass-2026"),
        "the password never comes back"
    );
    let running = wait_status(&c, project, id, "running").await;
    assert_eq!(running["node_id"], c.agents[0].node_id.to_string());

    // The node booted the staged, verified kernel and initrd as a non-root uid.
    let fake = &c.agents[0].vms;
    let vm = fake.vm(id).expect("the node started the VM");
    assert_ne!(vm.uid, 0);
    assert_eq!(running["vm_uid"], vm.uid);
    assert_eq!(fake.starts(), 1);
    match &vm.spec.boot {
        rampart_compute::qemu::Boot::Kernel { kernel, initrd, .. } => {
            assert_eq!(std::fs::read(kernel).unwrap(), b"kernel bytes");
            assert_eq!(std::fs::read(initrd.as_ref().unwrap()).unwrap(), b"initrd bytes");
        }
        other => panic!("kernel boot expected, got {other:?}"),
    }
    let listed: Value = c.admin.get(&format!("/v1/projects/{project}/instances")).await.unwrap();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id.to_string())
    );

    let act = |a: &'static str| {
        let path = format!("/v1/projects/{project}/instances/{id}/{a}");
        let admin = c.admin.clone();
        async move { admin.post::<_, Value>(&path, &json!({})).await.unwrap() }
    };
    act("stop").await;
    wait_status(&c, project, id, "stopped").await;
    assert_eq!(fake.vm(id).unwrap().state, rampart_compute::driver::PowerState::Stopped);
    act("start").await;
    wait_status(&c, project, id, "running").await;
    assert_eq!(fake.starts(), 2, "a start is a new boot");
    act("reboot").await;
    TestCluster::wait_for("reboot", WAIT, || async { (fake.starts() == 3).then_some(()) }).await;
    wait_status(&c, project, id, "running").await;
    let ev = events(&c, project, id).await;
    assert!(ev.iter().filter(|k| *k == "started").count() >= 3, "{ev:?}");
    assert!(ev.iter().any(|k| k == "stopped"), "{ev:?}");
    // The trail names each action and its instance (13.4-1), not a guess from the URL.
    let trail: Value = c
        .admin
        .get("/v1/audit/events?operation=instance.*&result=success&limit=100")
        .await
        .unwrap();
    for a in ["instance.stop", "instance.start", "instance.reboot"] {
        assert!(
            trail["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["operation"] == a && r["target"]["id"] == id.to_string()),
            "no {a} record for the instance: {trail:#}"
        );
    }

    // A VM that dies by itself becomes `crashed` and is not restarted by the node.
    fake.crash(id);
    wait_status(&c, project, id, "crashed").await;
    assert!(events(&c, project, id).await.iter().any(|k| k == "crashed"));
    assert_eq!(fake.starts(), 3);
    act("start").await;
    wait_status(&c, project, id, "running").await;
    assert_eq!(fake.starts(), 4);

    // Delete: the node destroys the VM, then the instance is gone.
    c.admin
        .send::<()>(
            http::Method::DELETE,
            &format!("/v1/projects/{project}/instances/{id}"),
            None,
        )
        .await
        .unwrap();
    TestCluster::wait_for("VM destroyed", WAIT, || async { fake.vm(id).is_none().then_some(()) }).await;
    TestCluster::wait_for("instance gone", WAIT, || async {
        let r = c
            .admin
            .get::<Value>(&format!("/v1/projects/{project}/instances/{id}"))
            .await;
        matches!(r, Err(ref e) if code(e) == Some("not_found")).then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_tampered_or_untrusted_upload_is_refused_with_image_signature_invalid() {
    let (c, project, key) = trusting_project().await;

    // Signed over other bytes than those uploaded.
    let (created, s, body) = image(
        &c,
        &c.admin,
        project,
        "tampered",
        "raw",
        json!({}),
        &key,
        b"the signed disk",
        b"the signed disk, then modified",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "policy_violation");
    assert_eq!(body["error"]["details"]["code"], "image_signature_invalid");
    let after: Value = c
        .admin
        .get(&format!(
            "/v1/projects/{project}/images/{}",
            created["id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(after["status"], "rejected");

    // Signed by a key nobody trusts.
    let rogue = SigningKey::generate().unwrap();
    let (_, s, body) = image(
        &c,
        &c.admin,
        project,
        "untrusted",
        "raw",
        json!({}),
        &rogue,
        b"disk",
        b"disk",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["details"]["code"], "image_signature_invalid");

    // A rejected image cannot be launched.
    let f = flavor(&c).await;
    let e = c
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "nope", "image": "tampered", "flavor": f["name"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("validation_failed"), "{e}");
    c.shutdown().await;
}

/// A 1 MiB qcow2 made by the real `qemu-img` with extra `create` arguments.
fn qcow2(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let p = dir.join(name);
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .args(args)
        .arg(&p)
        .arg("1M")
        .output()
        .expect("qemu-img (apt-get install qemu-utils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_images_naming_host_files_or_another_format_are_refused_with_image_format_invalid() {
    let (c, project, key) = trusting_project().await;
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("data.raw");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        // `-u`: the header names /etc/shadow; qemu-img does not open it.
        (
            "backing",
            "qcow2",
            qcow2(dir.path(), "b.qcow2", &["-u", "-b", "/etc/shadow", "-F", "raw"]),
        ),
        (
            "data-file",
            "qcow2",
            qcow2(
                dir.path(),
                "d.qcow2",
                &["-o", &format!("data_file={}", data_file.display())],
            ),
        ),
        ("qcow2-as-raw", "raw", qcow2(dir.path(), "r.qcow2", &[])),
        (
            "vmdk-as-kernel",
            "kernel",
            b"# Disk DescriptorFile\nRW 8 FLAT \"/etc/shadow\" 0\n".to_vec(),
        ),
        ("raw-as-qcow2", "qcow2", vec![0u8; 65536]),
    ];
    for (name, format, bytes) in &cases {
        // Correctly signed: only the format check can refuse them.
        let (created, s, body) = image(&c, &c.admin, project, name, format, json!({}), &key, bytes, bytes).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert_eq!(body["error"]["code"], "image_format_invalid", "{name}: {body}");
        let after: Value = c
            .admin
            .get(&format!(
                "/v1/projects/{project}/images/{}",
                created["id"].as_str().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(after["status"], "rejected", "{name}");
    }
    // A clean qcow2 and a plain raw disk are accepted.
    let clean = qcow2(dir.path(), "clean.qcow2", &[]);
    let (_, s, body) = image(&c, &c.admin, project, "clean", "qcow2", json!({}), &key, &clean, &clean).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let raw = vec![0u8; 65536];
    let (_, s, body) = image(&c, &c.admin, project, "plain", "raw", json!({}), &key, &raw, &raw).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    c.shutdown().await;
}

/// A disk image boots as what it was uploaded as: the node renders a qcow2 disk with the
/// qcow2 driver and `"backing": null`, a raw one with the raw driver (golden argv).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_a_qcow2_disk_image_is_opened_as_qcow2_golden_argv() {
    let c = cluster(1).await;
    let project = c.admin_project().await;
    let key = SigningKey::generate().unwrap();
    trust(&c, &key, "release").await;
    let dir = tempfile::tempdir().unwrap();
    let f = flavor(&c).await;
    let disk = qcow2(dir.path(), "disk.qcow2", &[]);
    let raw = vec![0u8; 65536];
    let mut argv = String::new();
    for (name, format, bytes) in [("disk-q", "qcow2", &disk), ("disk-r", "raw", &raw)] {
        let (img, s, body) = image(&c, &c.admin, project, name, format, json!({}), &key, bytes, bytes).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let created: Value = c
            .admin
            .post(
                &format!("/v1/projects/{project}/instances"),
                &json!({"name": format!("vm-{format}"), "image": img["id"], "flavor": f["name"]}),
            )
            .await
            .unwrap();
        let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
        wait_status(&c, project, id, "running").await;
        let vm = c.agents[0].vms.vm(id).expect("the node started the VM");
        assert_eq!(vm.spec.boot, rampart_compute::qemu::Boot::Disk);
        assert_eq!(
            vm.spec.disks[0].format.to_string(),
            format,
            "the document's format reaches the drive"
        );
        assert_eq!(&std::fs::read(&vm.spec.disks[0].path).unwrap(), bytes);
        let mut spec = vm.spec.clone();
        // The host paths and ids of this run, made stable for the golden file.
        spec.id = Uuid::nil();
        let vm_dir = std::path::PathBuf::from("/run/rampart/vms/00000000-0000-0000-0000-000000000000");
        spec.disks[0].path = vm_dir.join("root.img");
        spec.config_drive = spec.config_drive.as_ref().map(|_| vm_dir.join("cidata.iso"));
        spec.serial_log = vm_dir.join("console.log");
        spec.qmp_socket = vm_dir.join("qmp.sock");
        spec.memory_mib = 256;
        for a in rampart_compute::qemu::render_argv(&spec).unwrap() {
            argv.push_str(&a);
            argv.push('\n');
        }
        argv.push('\n');
    }
    rampart_common::testing::golden(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/qcow2-and-raw-disk-instances.argv"),
        &argv,
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_a_kernel_cannot_name_a_rejected_ramdisk_and_a_rejected_name_is_free_again() {
    let (c, project, key) = trusting_project().await;
    // An initrd whose upload is refused (signed over other bytes).
    let (rd, s, _) = image(
        &c,
        &c.admin,
        project,
        "rd",
        "initrd",
        json!({}),
        &key,
        b"signed",
        b"uploaded",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let sig = key.sign_digest(&sha(b"kernel bytes"));
    let e = c
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{project}/images"),
            &json!({"name": "k", "disk_format": "kernel", "ramdisk_image": rd["id"],
                    "signature": sig.signature, "signing_key": sig.key_id}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY), "{e}");
    assert_eq!(code(&e), Some("image_unavailable"), "{e}");
    // A queued (never uploaded) initrd is no better.
    let queued: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/images"),
            &json!({"name": "rd-queued", "disk_format": "initrd"}),
        )
        .await
        .unwrap();
    let e = c
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{project}/images"),
            &json!({"name": "k", "disk_format": "kernel", "ramdisk_image": queued["id"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("image_unavailable"), "{e}");

    // The rejected upload does not hold its name: the good initrd takes it, and the kernel
    // naming it boots.
    let (rd2, s, body) = image(
        &c,
        &c.admin,
        project,
        "rd",
        "initrd",
        json!({}),
        &key,
        b"initrd",
        b"initrd",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_ne!(rd2["id"], rd["id"]);
    let (_, s, body) = image(
        &c,
        &c.admin,
        project,
        "k",
        "kernel",
        json!({"ramdisk_image": "rd"}),
        &key,
        b"kernel bytes",
        b"kernel bytes",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_image_tampered_after_upload_is_refused_on_the_node_before_any_start() {
    let c = cluster(1).await;
    let project = c.admin_project().await;
    let key = SigningKey::generate().unwrap();
    trust(&c, &key, "release").await;
    let kernel = demo_images(&c, project, &key).await;
    // Someone with access to the controller's image store swaps the kernel's bytes.
    let blob = c.data_dir.path().join("images").join(sha(b"kernel bytes").to_string());
    assert!(blob.exists(), "{}", blob.display());
    std::fs::write(&blob, b"kernel bytes with a backdoor").unwrap();

    let f = flavor(&c).await;
    let created: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "victim", "image": kernel.to_string(), "flavor": f["name"]}),
        )
        .await
        .unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let failed = wait_status(&c, project, id, "failed").await;
    assert_eq!(failed["failure"]["code"], "image_signature_invalid", "{failed}");
    assert_eq!(c.agents[0].vms.starts(), 0, "no VM process was started");
    assert!(c.agents[0].vms.vm(id).is_none());
    assert!(
        events(&c, project, id)
            .await
            .iter()
            .any(|k| k == "image_signature_invalid")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_5_instances_and_images_of_another_project_are_invisible() {
    let (c, project, kernel, f) = bootable().await;
    let created: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "private", "image": kernel.to_string(), "flavor": f["name"]}),
        )
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let other: rampart_api::Project = c
        .admin
        .post(
            "/v1/projects",
            &rampart_api::ProjectCreate {
                name: "tenant-b".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.create_user(
        "bob",
        "Gannet-quarry-73",
        &[(
            "member",
            ScopeRef {
                project: Some(other.id),
                ..Default::default()
            },
        )],
    )
    .await;
    let (bob, _) = c.anon.login_as("bob", "Gannet-quarry-73").await.unwrap();
    for path in [
        format!("/v1/projects/{project}/instances/{id}"),
        format!("/v1/projects/{project}/instances/{id}/console"),
        format!("/v1/projects/{project}/images/{kernel}"),
        format!("/v1/projects/{project}/instances"),
    ] {
        let e = bob.get::<Value>(&path).await.unwrap_err();
        assert!(matches!(code(&e), Some("not_found" | "forbidden")), "{path}: {e}");
    }
    let e = bob
        .post::<_, Value>(&format!("/v1/projects/{project}/instances/{id}/stop"), &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(code(&e), Some("not_found" | "forbidden")), "{e}");
    // Bob cannot launch the other project's image in his own project either.
    let e = bob
        .post::<_, Value>(
            &format!("/v1/projects/{}/instances", other.id),
            &json!({"name": "steal", "image": kernel.to_string(), "flavor": f["name"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("validation_failed"), "{e}");
    let mine: Value = bob.get(&format!("/v1/projects/{}/instances", other.id)).await.unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 0);
    c.shutdown().await;
}

async fn alarm_state(c: &TestCluster, project: Uuid, alarm: &str) -> String {
    let a: Value = c
        .admin
        .get(&format!("/v1/projects/{project}/alarms/{alarm}"))
        .await
        .unwrap();
    a["state"].as_str().unwrap().to_string()
}

async fn wait_alarm(c: &TestCluster, project: Uuid, alarm: &str, want: &str) {
    // Period 2 s, 2 of 3 periods: a transition needs about 4–6 s of data plus a heartbeat.
    TestCluster::wait_for(&format!("alarm {want}"), Duration::from_secs(60), || async {
        (alarm_state(c, project, alarm).await == want).then_some(())
    })
    .await
}

/// The node samples its running VMs and reports rates with each heartbeat (spec 12.1-5); the
/// controller serves them at `GET …/metrics` and evaluates alarms on them (12.1-6): injected CPU
/// load takes the alarm OK → ALARM, removing it takes it back to OK, and every transition is
/// in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_6_alarm_fires_on_injected_cpu_load() {
    let (c, project, kernel, f) = bootable().await;
    let created: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "busy", "image": kernel.to_string(), "flavor": f["name"]}),
        )
        .await
        .unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    wait_status(&c, project, id, "running").await;
    let fake = &c.agents[0].vms;

    // Metrics: an idle guest holding a quarter of its 256 MiB, writing 1 MiB/s to its disk.
    fake.set_load(
        id,
        rampart_compute::driver::FakeLoad {
            cpu_percent: 5.0,
            memory_bytes: 64 << 20,
            disk_write_bps: 1 << 20,
        },
    );
    let metrics_path = format!("/v1/projects/{project}/instances/{id}/metrics");
    let m: Value = TestCluster::wait_for("metrics", WAIT, || async {
        let m: Value = c.admin.get(&metrics_path).await.unwrap();
        (m["series"].as_array().unwrap().len() >= 2).then_some(m)
    })
    .await;
    let latest = &m["latest"];
    assert_eq!(latest["memory_bytes"], 64 << 20, "{m}");
    let cpu = latest["cpu_percent"].as_f64().unwrap();
    assert!((cpu - 5.0).abs() < 0.5, "{m}");
    let bps = latest["disk_write_bps"].as_f64().unwrap();
    assert!((bps / f64::from(1 << 20) - 1.0).abs() < 0.1, "within 10 %: {m}");
    // The operators' Prometheus scrape shows the same instance; a project member may not scrape.
    let scrape = c
        .admin
        .send::<()>(http::Method::GET, "/v1/metrics", None)
        .await
        .unwrap();
    assert!(
        scrape.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = scrape.text().await.unwrap();
    let line = format!(
        "rampart_instance_memory_bytes{{instance=\"{id}\",project=\"{project}\"}} {}",
        64 << 20
    );
    assert!(
        text.contains("# TYPE rampart_instance_cpu_percent gauge") && text.contains(&line),
        "{text}"
    );
    c.create_user("tenant-user", "Amber-otter-5120", &[]).await;
    let member = c.anon.login_as("tenant-user", "Amber-otter-5120").await.unwrap().0;
    let refused = member
        .send::<()>(http::Method::GET, "/v1/metrics", None)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
    let a = m["series"].as_array().unwrap();
    assert!(
        a[0]["at"].as_str().unwrap() < a[a.len() - 1]["at"].as_str().unwrap(),
        "oldest first"
    );

    let alarm: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/alarms"),
            &json!({"name": "cpu-high", "instance": id, "metric": "cpu_percent", "comparison": ">",
                    "threshold": 80, "period_s": 2, "periods": 3, "datapoints": 2}),
        )
        .await
        .unwrap();
    assert_eq!(alarm["state"], "INSUFFICIENT_DATA");
    let alarm_id = alarm["id"].as_str().unwrap().to_string();
    wait_alarm(&c, project, &alarm_id, "OK").await;

    let busy = rampart_compute::driver::FakeLoad {
        cpu_percent: 190.0,
        memory_bytes: 64 << 20,
        disk_write_bps: 0,
    };
    fake.set_load(id, busy);
    wait_alarm(&c, project, &alarm_id, "ALARM").await;
    let m: Value = c.admin.get(&metrics_path).await.unwrap();
    assert!(m["latest"]["cpu_percent"].as_f64().unwrap() > 150.0, "{m}");

    fake.set_load(
        id,
        rampart_compute::driver::FakeLoad {
            cpu_percent: 0.0,
            ..busy
        },
    );
    wait_alarm(&c, project, &alarm_id, "OK").await;

    let history: Value = c
        .admin
        .get(&format!("/v1/projects/{project}/alarms/{alarm_id}/history"))
        .await
        .unwrap();
    let steps: Vec<(String, String)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["from"].as_str().unwrap().into(), t["to"].as_str().unwrap().into()))
        .collect();
    let want =
        [("INSUFFICIENT_DATA", "OK"), ("OK", "ALARM"), ("ALARM", "OK")].map(|(a, b)| (a.to_string(), b.to_string()));
    assert!(
        steps.windows(3).any(|w| w == want),
        "OK → ALARM → OK in the history: {steps:?}"
    );

    // Each transition is an audit record, readable by an auditor.
    let system = ScopeRef {
        system: Some(true),
        ..Default::default()
    };
    c.create_user("alarm-auditor", "Heron-lantern-58", &[("auditor", system)])
        .await;
    let (auditor, _) = c.login_with_mfa("alarm-auditor", "Heron-lantern-58").await;
    let page: Value = auditor
        .get("/v1/audit/events?limit=1000&operation=alarm.transition")
        .await
        .unwrap();
    let audited: Vec<(String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"]["id"] == alarm_id.as_str())
        .map(|r| {
            assert_eq!(r["target"]["project"], project.to_string());
            (
                r["details"]["from"].as_str().unwrap().into(),
                r["details"]["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(audited.windows(3).any(|w| w == want), "{audited:?}");

    // Stopped: no more samples, so the alarm runs out of data.
    c.admin
        .post::<_, Value>(&format!("/v1/projects/{project}/instances/{id}/stop"), &json!({}))
        .await
        .unwrap();
    wait_alarm(&c, project, &alarm_id, "INSUFFICIENT_DATA").await;
    c.shutdown().await;
}

/// VM ports (issue 7 with issue 6, spec 10.3-2: a VM joins its security groups when it is
/// created). `networks` makes a port on the subnet with the instance's groups (or the
/// project's `default` group); `ports` plugs existing free ports in. Both are bound to the
/// instance's node as taps in the same transaction, reach the node as NICs with the port's MAC,
/// belong to the instance (409 `port_in_use` for anyone else), and are released with it: the
/// port it made is deleted, the one it was given is unbound and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_3_2_instance_ports_are_bound_as_taps_and_released_with_the_instance() {
    let (c, project, kernel, f) = bootable().await;
    let p = |rest: &str| format!("/v1/projects/{project}/{rest}");
    let subnet = vpc_with_subnet(&c, project, "v", 80).await;
    let subnet2 = vpc_with_subnet(&c, project, "v2", 81).await;
    let given: Value = c
        .admin
        .post(&p("ports"), &json!({"subnet": subnet["id"]}))
        .await
        .unwrap();
    let launch = |extra: Value| {
        let mut b = json!({"name": "vm", "image": kernel.to_string(), "flavor": f["name"]});
        if let (Some(m), Value::Object(e)) = (b.as_object_mut(), extra) {
            m.extend(e);
        }
        b
    };

    // Refusals: an unknown port or subnet is 404, two VPCs 400, an unknown group 400.
    for (extra, want) in [
        (json!({"ports": [Uuid::new_v4()]}), "not_found"),
        (json!({"networks": [Uuid::new_v4()]}), "not_found"),
        (
            json!({"ports": [given["id"]], "networks": [subnet2["id"]]}),
            "validation_failed",
        ),
        (
            json!({"networks": [subnet["id"]], "security_groups": [Uuid::new_v4()]}),
            "validation_failed",
        ),
    ] {
        let e = c
            .admin
            .post::<_, Value>(&p("instances"), &launch(extra.clone()))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(want), "{extra}: {e}");
    }

    let created: Value = c
        .admin
        .post(
            &p("instances"),
            &launch(json!({"ports": [given["id"]], "networks": [subnet["id"]]})),
        )
        .await
        .unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let ports: Vec<Uuid> = serde_json::from_value(created["ports"].clone()).unwrap();
    assert_eq!(ports.len(), 2, "{created}");
    assert_eq!(ports[0].to_string(), given["id"].as_str().unwrap(), "given ports first");
    assert_eq!(created["networks"], json!([subnet["id"]]));
    let made: Value = c.admin.get(&p(&format!("ports/{}", ports[1]))).await.unwrap();
    let groups: Value = c.admin.get(&p("security-groups")).await.unwrap();
    let default = groups["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "default")
        .expect("a default group made for the instance");
    assert_eq!(made["security_groups"], json!([default["id"]]));
    let node = c.agents[0].node_id.to_string();
    for port in &ports {
        let v: Value = c.admin.get(&p(&format!("ports/{port}"))).await.unwrap();
        assert_eq!(v["binding"]["node"], node, "{v}");
        assert_eq!(v["binding"]["device"], json!({"kind": "tap"}), "{v}");
    }
    let running = wait_status(&c, project, id, "running").await;
    assert_eq!(running["ports"], created["ports"]);
    // The node got both NICs, each on the port's tap with the port's MAC.
    let vm = c.agents[0].vms.vm(id).expect("started");
    let nics: Vec<(String, String)> = vm.spec.nics.iter().map(|n| (n.tap.clone(), n.mac.clone())).collect();
    let want: Vec<(String, String)> = ports
        .iter()
        .zip([&given, &made])
        .map(|(id, port)| {
            (
                rampart_net::desired::names::port_dev(id),
                port["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(nics, want);

    // The ports are the instance's: not for another instance, not to delete or rebind.
    let e = c
        .admin
        .post::<_, Value>(&p("instances"), &launch(json!({"ports": [ports[1]]})))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("port_in_use"), "{e}");
    assert_eq!(e.status(), Some(StatusCode::CONFLICT));
    for (method, path) in [
        (http::Method::DELETE, p(&format!("ports/{}", ports[0]))),
        (http::Method::DELETE, p(&format!("ports/{}/binding", ports[0]))),
    ] {
        let e = c.admin.send::<()>(method, &path, None).await.unwrap_err();
        assert_eq!(code(&e), Some("port_in_use"), "{path}: {e}");
    }

    // Deleting the instance releases them.
    let r = c
        .admin
        .send::<()>(http::Method::DELETE, &p(&format!("instances/{id}")), None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let kept: Value = c.admin.get(&p(&format!("ports/{}", ports[0]))).await.unwrap();
    assert_eq!(kept["binding"], Value::Null, "the given port stays, unbound: {kept}");
    let e = c
        .admin
        .get::<Value>(&p(&format!("ports/{}", ports[1])))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("not_found"), "the port made for the instance is gone");
    TestCluster::wait_for("instance gone", WAIT, || async {
        c.admin
            .get::<Value>(&p(&format!("instances/{id}")))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(c.agents[0].vms.vm(id).is_none());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_10_3_3_members_of_a_security_group_are_spread_over_nodes() {
    let (c, project, kernel, f) = bootable_on(2).await;
    let p = |rest: &str| format!("/v1/projects/{project}/{rest}");
    let subnet = vpc_with_subnet(&c, project, "v", 82).await;
    let group: Value = c
        .admin
        .post(&p("security-groups"), &json!({"name": "web"}))
        .await
        .unwrap();
    let launch = |name: &str, anti_affinity: bool| {
        json!({"name": name, "image": kernel.to_string(), "flavor": f["name"],
               "networks": [subnet["id"]], "security_groups": [group["id"]],
               "anti_affinity": anti_affinity})
    };
    let first: Value = c.admin.post(&p("instances"), &launch("web-1", false)).await.unwrap();
    let second: Value = c.admin.post(&p("instances"), &launch("web-2", false)).await.unwrap();
    assert!(first["node_id"].is_string(), "{first}");
    assert_ne!(
        first["node_id"], second["node_id"],
        "two members of one group on two nodes"
    );
    // Both nodes hold a member now: a third one on request of anti-affinity has nowhere to go.
    let e = c
        .admin
        .post::<_, Value>(&p("instances"), &launch("web-3", true))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{e}");
    assert!(e.to_string().contains("anti-affinity"), "{e}");
    // Without it (soft spreading), the member goes to a node that already has one.
    let third: Value = c.admin.post(&p("instances"), &launch("web-3", false)).await.unwrap();
    assert!(third["node_id"].is_string(), "{third}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_1_1_instance_create_refuses_a_kernel_whose_ramdisk_is_not_verified() {
    let (c, project, key) = trusting_project().await;
    let settings = format!("/v1/projects/{project}/compute-settings");
    put_json(&c.admin, &settings, &json!({"image_signature_policy": "warn"}))
        .await
        .unwrap();
    // Under `warn` an unsigned initrd becomes active, unverified; the kernel is signed.
    let created: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/images"),
            &json!({"name": "rd-unsigned", "disk_format": "initrd"}),
        )
        .await
        .unwrap();
    let rd: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let (s, body) = put_data(&c, &c.admin, project, rd, b"initrd bytes").await;
    assert_eq!((s, &body["status"]), (StatusCode::OK, &json!("active")), "{body}");
    let (_, s, body) = image(
        &c,
        &c.admin,
        project,
        "k",
        "kernel",
        json!({"ramdisk_image": "rd-unsigned"}),
        &key,
        b"kernel bytes",
        b"kernel bytes",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Back to `require`: the node would refuse the initrd, so the API does first.
    put_json(&c.admin, &settings, &json!({"image_signature_policy": "require"}))
        .await
        .unwrap();
    let f = flavor(&c).await;
    let e = c
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "vm", "image": "k", "flavor": f["name"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::UNPROCESSABLE_ENTITY), "{e}");
    assert_eq!(code(&e), Some("image_unavailable"), "{e}");
    c.shutdown().await;
}

async fn put_json(client: &Client, path: &str, body: &Value) -> Result<Value, ClientError> {
    Ok(client
        .send(http::Method::PUT, path, Some(body))
        .await?
        .json()
        .await
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_per_project_limits_are_set_by_the_system_admin_and_refuse_with_409() {
    let c = cluster(0).await;
    let project = c.admin_project().await;
    let member_scope = ScopeRef {
        project: Some(project),
        ..Default::default()
    };
    c.create_user("quota-member", "Harbor-lantern-5521", &[("member", member_scope)])
        .await;
    let member = c.anon.login_as("quota-member", "Harbor-lantern-5521").await.unwrap().0;
    let path = format!("/v1/projects/{project}/quotas");

    let before: Value = member.get(&path).await.unwrap();
    assert_eq!(before["limits"]["vpcs"], 10, "the configured default: {before}");
    assert_eq!(before["own"]["vpcs"], Value::Null);
    let e = put_json(&member, &path, &json!({"vpcs": 100})).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "{e}");
    let e = put_json(&c.admin, &path, &json!({"vpcs": 2_000_000}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("validation_failed"), "{e}");

    let set = put_json(&c.admin, &path, &json!({"images": 1, "vpcs": 1}))
        .await
        .unwrap();
    assert_eq!(set["limits"]["images"], 1);
    assert_eq!(set["limits"]["instances"], 50, "left out: the default");

    let img = |name: &str| json!({"name": name, "disk_format": "raw"});
    member
        .post::<_, Value>(&format!("/v1/projects/{project}/images"), &img("q1"))
        .await
        .unwrap();
    let e = member
        .post::<_, Value>(&format!("/v1/projects/{project}/images"), &img("q2"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT), "{e}");
    assert_eq!(code(&e), Some("quota_exceeded"), "{e}");

    let vpc = |name: &str| json!({"name": name, "cidr": "10.90.0.0/16"});
    member
        .post::<_, Value>(&format!("/v1/projects/{project}/vpcs"), &vpc("q1"))
        .await
        .unwrap();
    let e = member
        .post::<_, Value>(&format!("/v1/projects/{project}/vpcs"), &vpc("q2"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("quota_exceeded"), "{e}");

    let after: Value = member.get(&path).await.unwrap();
    assert_eq!(after["used"]["images"], 1, "{after}");
    assert_eq!(after["used"]["vpcs"], 1, "{after}");
    // Back to the defaults: the second VPC fits again.
    put_json(&c.admin, &path, &json!({})).await.unwrap();
    member
        .post::<_, Value>(&format!("/v1/projects/{project}/vpcs"), &vpc("q2"))
        .await
        .unwrap();
    c.shutdown().await;
}
