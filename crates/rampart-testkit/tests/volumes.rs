//! Volumes through the controller's API (issue 15), with a fake node that speaks the agent
//! protocol over real mTLS (enrolled with a join token, reporting pools and volume states as
//! the real agent does): the life cycle `creating → available → in-use → deleting → wiping →
//! deleted` with a verified wipe report (12.3.4-1/3), the passphrase route (12.3.2-2),
//! per-volume grants decided by Cedar (12.3.3), quotas and refusals.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_api::agent::{AgentStatus, JoinRequest, NodeConfig};
use rampart_api::compute::ComputeStatus;
use rampart_api::storage::{
    DesiredPresence, ObservedVolume, PoolHealthState, PoolReport, StorageStatus, VolumeReport, WipeMethod, WipeReport,
};
use rampart_api::{Client, ClientError, HostFacts, JoinTokenCreate, NodeState, ScopeRef};
use rampart_testkit::{Backend, ClusterOptions, TestCluster};
use serde_json::{Value, json};
use uuid::Uuid;

const GIB: u64 = 1 << 30;

/// A node that is only its agent protocol: it reports what the test tells it to.
struct FakeNode {
    id: Uuid,
    client: Client,
    status: Arc<Mutex<AgentStatus>>,
    /// One report at a time, as a real agent sends them.
    sending: Arc<tokio::sync::Mutex<()>>,
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

impl FakeNode {
    /// Enrols through a join token, reports a `local` pool with `free_gib` free and compute
    /// available, and keeps reporting every 300 ms (its heartbeat).
    async fn enrol(c: &TestCluster, name: &str, free_gib: u64) -> FakeNode {
        let token = c
            .admin
            .create_join_token(&JoinTokenCreate {
                node_name: Some(name.into()),
                ttl_s: None,
            })
            .await
            .unwrap();
        let (key_pem, csr) = rampart_kms::ca::node_key_and_csr().unwrap();
        let joined = c
            .anon
            .agent_join(&JoinRequest {
                token: token.token,
                csr,
                name: name.into(),
            })
            .await
            .unwrap();
        let identity = (
            rampart_api::tls::certs_from_pem(joined.certificate.as_bytes()).unwrap(),
            rampart_api::tls::key_from_pem(key_pem.as_bytes()).unwrap(),
        );
        let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), Some(identity)).unwrap();
        let client = Client::new(&c.controller.url(), tls).unwrap();
        let status = Arc::new(Mutex::new(AgentStatus {
            applied_generation: 0,
            agent_version: "fake".into(),
            host: HostFacts::default(),
            errors: vec![],
            compute: Some(ComputeStatus {
                available: true,
                accel: Some("tcg".into()),
                reason: String::new(),
                instances: vec![],
            }),
            network: None,
            storage: Some(StorageStatus {
                pools: vec![PoolReport {
                    name: "local".into(),
                    backend: "local".into(),
                    total_bytes: 2 * free_gib * GIB,
                    free_bytes: free_gib * GIB,
                    volumes: 0,
                    redundancy: "none".into(),
                    copies: 1,
                    health: PoolHealthState::Ok,
                    problems: vec![],
                }],
                volumes: vec![],
                snapshots: vec![],
            }),
        }));
        let sending = Arc::new(tokio::sync::Mutex::new(()));
        let (c2, s2, l2) = (client.clone(), status.clone(), sending.clone());
        let beat = tokio::spawn(async move {
            loop {
                {
                    // Read under the send lock, so that a report never overtakes a newer one.
                    let _one = l2.lock().await;
                    let s = s2.lock().unwrap().clone();
                    let _ = c2.agent_status(&s).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let node = FakeNode {
            id: joined.node_id,
            client,
            status,
            sending,
            beat,
        };
        node.report().await;
        TestCluster::wait_for("the fake node ready", Duration::from_secs(10), || async {
            let nodes = c.admin.nodes().await.ok()?;
            nodes
                .items
                .iter()
                .any(|n| n.id == node.id && n.state == NodeState::Ready)
                .then_some(())
        })
        .await;
        node
    }

    /// Sends the current status now (and waits for the controller to take it).
    async fn report(&self) {
        let _one = self.sending.lock().await;
        let s = self.status.lock().unwrap().clone();
        self.client.agent_status(&s).await.expect("status report");
    }

    /// Sets what the node observes of volume `id`, then reports it.
    async fn observe(&self, id: Uuid, state: ObservedVolume, wipe: Option<WipeReport>) {
        self.observe_at(id, state, wipe, None).await
    }

    /// [`FakeNode::observe`] with the percent done of a long create or wipe.
    async fn observe_at(&self, id: Uuid, state: ObservedVolume, wipe: Option<WipeReport>, progress: Option<u8>) {
        {
            let mut s = self.status.lock().unwrap();
            let storage = s.storage.as_mut().unwrap();
            storage.volumes.retain(|v| v.id != id);
            storage.volumes.push(VolumeReport {
                id,
                state,
                size_bytes: 0,
                allocated_bytes: 0,
                progress,
                error: None,
                wipe_report: wipe,
            });
        }
        self.report().await;
    }

    /// Sets what the node observes of snapshot `id`, then reports it.
    async fn observe_snapshot(&self, id: Uuid, state: ObservedVolume, wipe: Option<WipeReport>) {
        {
            let mut s = self.status.lock().unwrap();
            let storage = s.storage.as_mut().unwrap();
            storage.snapshots.retain(|v| v.id != id);
            storage.snapshots.push(VolumeReport {
                id,
                state,
                size_bytes: 0,
                allocated_bytes: 0,
                progress: None,
                error: None,
                wipe_report: wipe,
            });
        }
        self.report().await;
    }

    async fn document(&self) -> NodeConfig {
        self.client.agent_config(0).await.unwrap().expect("a document")
    }
}

fn wipe_report(volume: Uuid, verified: bool) -> WipeReport {
    WipeReport {
        volume,
        method: WipeMethod::CryptoEraseAndZero,
        verified,
        bytes: 4 << 20,
        started_at: time::OffsetDateTime::now_utc(),
        finished_at: time::OffsetDateTime::now_utc(),
        requested_by: "admin@default".into(),
    }
}

async fn cluster(
    backend: Backend,
    configure: impl FnOnce(&mut rampart_common::config::Config) + Send + 'static,
) -> TestCluster {
    let c = TestCluster::start(ClusterOptions {
        backend,
        configure: Box::new(configure),
        ..Default::default()
    })
    .await;
    if !c.has_hsm() {
        // (testutil failed already under RAMPART_TEST_REQUIRE_HSM=1.)
        rampart_common::testing::skip(rampart_kms::testutil::SKIP_NO_SOFTHSM);
    }
    c
}

async fn put(client: &Client, path: &str, body: &Value) -> Result<Value, ClientError> {
    let r = client.send(http::Method::PUT, path, Some(body)).await?;
    Ok(r.json().await.unwrap_or(Value::Null))
}

async fn del(client: &Client, path: &str) -> Result<Value, ClientError> {
    let r = client.send::<()>(http::Method::DELETE, path, None).await?;
    Ok(r.json().await.unwrap_or(Value::Null))
}

fn vol_path(project: Uuid) -> String {
    format!("/v1/projects/{project}/volumes")
}

async fn volume(client: &Client, project: Uuid, id: &str) -> Result<Value, ClientError> {
    client.get(&format!("{}/{id}", vol_path(project))).await
}

async fn wait_volume(c: &TestCluster, project: Uuid, id: &str, want: &str) -> Value {
    TestCluster::wait_for(&format!("volume {want}"), Duration::from_secs(10), || async {
        let v = volume(&c.admin, project, id).await.ok()?;
        (v["status"] == want).then_some(v)
    })
    .await
}

/// A new project of the default domain and a client of a new user who is its
/// `project-admin` (the admin may not grant roles to itself).
async fn new_project(c: &TestCluster, prefix: &str) -> (Uuid, Client) {
    let suffix = &Uuid::new_v4().simple().to_string()[..6];
    let p: rampart_api::Project = c
        .admin
        .post("/v1/projects", &json!({"name": format!("{prefix}-{suffix}")}))
        .await
        .unwrap();
    let scope = ScopeRef {
        project: Some(p.id),
        ..Default::default()
    };
    let name = format!("{prefix}-admin-{suffix}");
    c.create_user(&name, "Plover-saffron-31", &[("project-admin", scope)])
        .await;
    (p.id, c.login_user(&name, "Plover-saffron-31").await)
}

/// Polls `client` until volume `id` of `project` is `want`.
async fn wait_volume_as(client: &Client, project: Uuid, id: &str, want: &str) -> Value {
    TestCluster::wait_for(&format!("volume {want}"), Duration::from_secs(10), || async {
        let v = volume(client, project, id).await.ok()?;
        (v["status"] == want).then_some(v)
    })
    .await
}

fn code(e: &ClientError) -> (u16, &str) {
    (e.status().map(|s| s.as_u16()).unwrap_or(0), e.code().unwrap_or(""))
}

/// A raw disk image (signature policy off) and a flavor, for instances on the fake node.
async fn image_and_flavor(c: &TestCluster, project: Uuid) -> (String, String) {
    put(
        &c.admin,
        &format!("/v1/projects/{project}/compute-settings"),
        &json!({"image_signature_policy": "off"}),
    )
    .await
    .unwrap();
    let img: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/images"),
            &json!({"name": "disk", "disk_format": "raw"}),
        )
        .await
        .unwrap();
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let resp = http
        .put(format!(
            "{}/v1/projects/{project}/images/{}/data",
            c.controller.url(),
            img["id"].as_str().unwrap()
        ))
        .bearer_auth(c.admin.token().unwrap().expose())
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 1 << 20])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let f: Value = c
        .admin
        .post(
            "/v1/flavors",
            &json!({"name": format!("vol-{}", &Uuid::new_v4().simple().to_string()[..8]), "vcpus": 1, "memory_mib": 256, "root_disk_gib": 1}),
        )
        .await
        .unwrap();
    (
        img["id"].as_str().unwrap().to_string(),
        f["name"].as_str().unwrap().to_string(),
    )
}

async fn life_cycle(backend: Backend) {
    let c = cluster(backend, |_| {}).await;
    if !c.has_hsm() {
        return;
    }
    let project = c.admin_project().await;
    let node = FakeNode::enrol(&c, "store-1", 100).await;
    let other = FakeNode::enrol(&c, "store-2", 10).await;

    // Created on the node with the most room, encrypted by default, `creating`.
    let created: Value = c
        .admin
        .post(&vol_path(project), &json!({"name": "data", "size_gib": 10}))
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let vid: Uuid = id.parse().unwrap();
    assert_eq!(created["status"], "creating");
    assert_eq!(created["encrypted"], true);
    assert_eq!(created["volume_type"], "default");
    assert_eq!(created["node"], node.id.to_string());
    let doc = node.document().await;
    let desired = doc
        .storage
        .volumes
        .iter()
        .find(|v| v.id == vid)
        .expect("published to its node");
    assert_eq!(
        (desired.presence, desired.size_bytes, desired.encrypted),
        (DesiredPresence::Present, 10 * GIB, true)
    );
    assert!(
        other.document().await.storage.volumes.is_empty(),
        "only its node holds it"
    );

    // The node made it: available.
    node.observe(vid, ObservedVolume::Ready, None).await;
    wait_volume(&c, project, &id, "available").await;

    // Its passphrase goes to its node only (12.3.2-2).
    let pass = node.client.agent_volume_passphrase(vid).await.unwrap();
    let secret = pass.passphrase.expose().as_bytes().to_vec();
    assert!(secret.len() >= 40, "32 random bytes, base64");
    assert_eq!(
        node.client
            .agent_volume_passphrase(vid)
            .await
            .unwrap()
            .passphrase
            .expose(),
        pass.passphrase.expose()
    );
    let e = other.client.agent_volume_passphrase(vid).await.unwrap_err();
    assert_eq!(code(&e).0, 404);

    // Attached at instance create: the instance lands on the volume's node, the volume is in use.
    let (image, flavor) = image_and_flavor(&c, project).await;
    let inst: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "db-1", "image": image, "flavor": flavor, "volumes": [vid], "start": false}),
        )
        .await
        .unwrap();
    let inst_id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["node_id"], node.id.to_string());
    let v = volume(&c.admin, project, &id).await.unwrap();
    assert_eq!(v["status"], "in-use");
    assert_eq!(v["attachments"][0]["instance"], inst_id);
    let doc = node.document().await;
    let i = doc
        .compute
        .instances
        .iter()
        .find(|i| i.id.to_string() == inst_id)
        .unwrap();
    assert_eq!(i.volumes.len(), 1);
    assert_eq!(i.volumes[0].volume_id, vid);

    // In use: not deleted (409 volume_in_use).
    let e = del(&c.admin, &format!("{}/{id}", vol_path(project))).await.unwrap_err();
    assert_eq!(code(&e), (409, "volume_in_use"));
    // Nor grown: the node cannot grow a file a running QEMU holds.
    let e = c
        .admin
        .post::<_, Value>(&format!("{}/{id}/extend", vol_path(project)), &json!({"size_gib": 2}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "volume_in_use"));

    // Detach, attach again through the instance, detach.
    let detach = format!("/v1/projects/{project}/instances/{inst_id}/volumes/{id}");
    let v: Value = del(&c.admin, &detach).await.unwrap();
    assert_eq!(v["status"], "available");
    assert!(node.document().await.compute.instances[0].volumes.is_empty());
    let v: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances/{inst_id}/volumes"),
            &json!({"volume": "data"}),
        )
        .await
        .unwrap();
    assert_eq!(v["status"], "in-use");
    let _: Value = del(&c.admin, &detach).await.unwrap();

    // Delete: deleting, published as `wiped` with who asked.
    let v: Value = del(&c.admin, &format!("{}/{id}", vol_path(project))).await.unwrap();
    assert_eq!(v["status"], "deleting");
    let doc = node.document().await;
    let desired = doc.storage.volumes.iter().find(|v| v.id == vid).unwrap();
    assert_eq!(desired.presence, DesiredPresence::Wiped);
    assert_eq!(desired.requested_by.as_deref(), Some("admin@default"));
    let e = c
        .admin
        .get::<Value>(&format!("{}/{id}/wipe-report", vol_path(project)))
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 404, "no report before the wipe");

    // Wiping; the controller restarts mid-wipe and keeps the state.
    node.observe(vid, ObservedVolume::Wiping, None).await;
    wait_volume(&c, project, &id, "wiping").await;
    let c = c.restart_controller(|_| {}).await;
    assert_eq!(volume(&c.admin, project, &id).await.unwrap()["status"], "wiping");
    assert_eq!(
        node.document()
            .await
            .storage
            .volumes
            .iter()
            .find(|v| v.id == vid)
            .unwrap()
            .presence,
        DesiredPresence::Wiped
    );

    // A verified wipe report: deleted, the report served and in the trail, gone from the node.
    node.observe(vid, ObservedVolume::Wiped, Some(wipe_report(vid, true)))
        .await;
    let v = wait_volume(&c, project, &id, "deleted").await;
    assert!(v["attachments"].as_array().unwrap().is_empty());
    let report: Value = c
        .admin
        .get(&format!("{}/{id}/wipe-report", vol_path(project)))
        .await
        .unwrap();
    assert_eq!(
        (report["volume"].as_str(), report["verified"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    assert_eq!(report["method"], "crypto_erase_and_zero");
    assert!(node.document().await.storage.volumes.iter().all(|v| v.id != vid));
    let trail: Value = c.admin.get("/v1/audit/events?operation=volume.wipe").await.unwrap();
    let rec = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"]["id"] == id)
        .expect("volume.wipe in the trail");
    assert_eq!(rec["details"]["report"]["verified"], true);
    assert_eq!(rec["details"]["requested_by"], "admin@default");
    // The name is free again; the deleted volume is no longer listed.
    let list: Value = c.admin.get(&vol_path(project)).await.unwrap();
    assert!(list["items"].as_array().unwrap().iter().all(|v| v["id"] != id));

    // Deleted: no passphrase for anyone.
    let e = node.client.agent_volume_passphrase(vid).await.unwrap_err();
    assert_eq!(code(&e).0, 404);

    // The passphrase went out in the trail's record of its release, never in it.
    let releases: Value = c
        .admin
        .get("/v1/audit/events?operation=volume.passphrase.release")
        .await
        .unwrap();
    let releases = releases["items"].as_array().unwrap();
    assert!(
        releases
            .iter()
            .any(|r| r["target"]["id"] == id && r["actor"]["id"] == node.id.to_string())
    );
    let everything: Value = c.admin.get("/v1/audit/events?limit=1000").await.unwrap();
    rampart_common::testing::assert_no_secret(everything.to_string().as_bytes(), std::slice::from_ref(&secret));
    let doc = serde_json::to_string(&node.document().await).unwrap();
    rampart_common::testing::assert_no_secret(doc.as_bytes(), &[secret]);
    drop((node, other));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_4_3_volume_life_cycle_ends_deleted_only_after_a_verified_wipe() {
    for backend in rampart_testkit::backends().await {
        life_cycle(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_4_1_an_unverified_wipe_never_deletes_the_volume() {
    let c = cluster(Backend::Sqlite, |_| {}).await;
    if !c.has_hsm() {
        return;
    }
    let project = c.admin_project().await;
    let node = FakeNode::enrol(&c, "store-1", 100).await;
    let v: Value = c
        .admin
        .post(&vol_path(project), &json!({"name": "scratch", "size_gib": 1}))
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let vid: Uuid = id.parse().unwrap();
    node.observe(vid, ObservedVolume::Ready, None).await;
    wait_volume(&c, project, &id, "available").await;
    let _: Value = del(&c.admin, &format!("{}/{id}", vol_path(project))).await.unwrap();
    node.observe(vid, ObservedVolume::Wiping, None).await;
    wait_volume(&c, project, &id, "wiping").await;
    // The node's progress shows (the CLI's bar).
    node.observe_at(vid, ObservedVolume::Wiping, None, Some(40)).await;
    assert_eq!(volume(&c.admin, project, &id).await.unwrap()["progress"], 40);

    // "Wiped" with a report that did not verify: error wipe_unverified, still to be wiped.
    node.observe(vid, ObservedVolume::Wiped, Some(wipe_report(vid, false)))
        .await;
    let v = wait_volume(&c, project, &id, "error").await;
    assert_eq!(v["error"]["code"], "wipe_unverified");
    let desired = node.document().await.storage.volumes;
    assert_eq!(
        desired.iter().find(|d| d.id == vid).unwrap().presence,
        DesiredPresence::Wiped
    );
    let e = c
        .admin
        .get::<Value>(&format!("{}/{id}/wipe-report", vol_path(project)))
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 404);
    // A report about another volume proves nothing either.
    node.observe(vid, ObservedVolume::Wiped, Some(wipe_report(Uuid::new_v4(), true)))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(volume(&c.admin, project, &id).await.unwrap()["status"], "error");
    // Nor does it come back into service.
    let e = c
        .admin
        .post::<_, Value>(&format!("{}/{id}/extend", vol_path(project)), &json!({"size_gib": 2}))
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 409);
    // The node's retry verifies: deleted.
    node.observe(vid, ObservedVolume::Wiped, Some(wipe_report(vid, true)))
        .await;
    wait_volume(&c, project, &id, "deleted").await;
    drop(node);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_2_2_volume_requests_are_checked_and_unencrypted_types_need_the_projects_leave() {
    let c = cluster(Backend::Sqlite, |config| {
        config.quotas.volumes = 2;
        config.quotas.volume_gib = 30;
    })
    .await;
    if !c.has_hsm() {
        return;
    }
    let project = c.admin_project().await;
    let path = vol_path(project);

    // No node reports a pool: 503 storage_unavailable, nothing made.
    let e = c
        .admin
        .post::<_, Value>(&path, &json!({"name": "a", "size_gib": 1}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (503, "storage_unavailable"));
    let node = FakeNode::enrol(&c, "store-1", 20).await;

    let refuse = |body: Value| {
        let (admin, path) = (c.admin.clone(), path.clone());
        async move { admin.post::<_, Value>(&path, &body).await.unwrap_err() }
    };
    assert_eq!(
        code(&refuse(json!({"name": "a", "size_gib": 0})).await),
        (400, "validation_failed")
    );
    assert_eq!(
        code(&refuse(json!({"name": "Bad", "size_gib": 1})).await),
        (400, "validation_failed")
    );
    assert_eq!(
        code(&refuse(json!({"name": "a", "size_gib": 1, "volume_type": "gold"})).await),
        (400, "validation_failed")
    );
    assert_eq!(
        code(&refuse(json!({"name": "a", "size_gib": 1, "colour": "red"})).await).0,
        400
    );
    // Larger than the whole quota: 413; larger than the pool: 507.
    assert_eq!(
        code(&refuse(json!({"name": "a", "size_gib": 31})).await),
        (413, "quota_exceeded")
    );
    assert_eq!(
        code(&refuse(json!({"name": "a", "size_gib": 25})).await),
        (507, "insufficient_storage")
    );
    assert!(
        c.admin.get::<Value>(&path).await.unwrap()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An unencrypted type: refused until the project allows it (12.3.2-2).
    let _: Value = c
        .admin
        .post("/v1/volume-types", &json!({"name": "plain", "encrypted": false}))
        .await
        .unwrap();
    let types: Value = c.admin.get("/v1/volume-types").await.unwrap();
    assert!(
        types["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "default" && t["encrypted"] == true)
    );
    let e = refuse(json!({"name": "a", "size_gib": 1, "volume_type": "plain"})).await;
    assert_eq!(code(&e), (422, "policy_violation"));
    put(
        &c.admin,
        &format!("/v1/projects/{project}/volume-settings"),
        &json!({"allow_unencrypted": true}),
    )
    .await
    .unwrap();
    let plain: Value = c
        .admin
        .post(&path, &json!({"name": "a", "size_gib": 10, "volume_type": "plain"}))
        .await
        .unwrap();
    assert_eq!(plain["encrypted"], false);
    // An unencrypted volume has no passphrase.
    let e = node
        .client
        .agent_volume_passphrase(plain["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 404);

    // Quotas: 409 once the GiB or the count is used up.
    let _: Value = c
        .admin
        .post(&path, &json!({"name": "b", "size_gib": 10}))
        .await
        .unwrap();
    let e = refuse(json!({"name": "c", "size_gib": 1})).await;
    assert_eq!(code(&e), (409, "quota_exceeded"));
    assert!(e.to_string().contains("2 volumes"), "{e}");
    let b = c.admin.get::<Value>(&format!("{path}/b")).await.unwrap();
    node.observe(b["id"].as_str().unwrap().parse().unwrap(), ObservedVolume::Ready, None)
        .await;
    wait_volume(&c, project, "b", "available").await;
    let e = c
        .admin
        .post::<_, Value>(&format!("{path}/b/extend"), &json!({"size_gib": 21}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "quota_exceeded"));
    let e = c
        .admin
        .post::<_, Value>(&format!("{path}/b/extend"), &json!({"size_gib": 5}))
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 400, "a volume only grows");
    let grown: Value = c
        .admin
        .post(&format!("{path}/b/extend"), &json!({"size_gib": 20}))
        .await
        .unwrap();
    assert_eq!(grown["size_gib"], 20);
    let doc = node.document().await;
    assert_eq!(
        doc.storage
            .volumes
            .iter()
            .find(|v| v.id.to_string() == b["id"])
            .unwrap()
            .size_bytes,
        20 * GIB
    );
    // The type in use stays; the built-in one always stays.
    let e = del(&c.admin, "/v1/volume-types/plain").await.unwrap_err();
    assert_eq!(code(&e).0, 409);
    let e = del(&c.admin, "/v1/volume-types/default").await.unwrap_err();
    assert_eq!(code(&e).0, 409);

    // The pools, as the node reported them.
    let pools: Value = c.admin.get("/v1/storage/pools").await.unwrap();
    let pool = &pools["items"][0];
    assert_eq!(
        (pool["node_name"].as_str(), pool["backend"].as_str()),
        (Some("store-1"), Some("local"))
    );
    assert_eq!(pool["free_bytes"], 20 * GIB);
    drop(node);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_3_grants_narrow_a_volume_to_named_members_and_other_projects_see_nothing() {
    let c = cluster(Backend::Sqlite, |_| {}).await;
    if !c.has_hsm() {
        return;
    }
    let project = c.admin_project().await;
    let _node = FakeNode::enrol(&c, "store-1", 100).await;
    let path = vol_path(project);
    let member = |p: Uuid| {
        vec![(
            "member",
            ScopeRef {
                project: Some(p),
                ..Default::default()
            },
        )]
    };
    c.create_user("alice", "Kestrel-tundra-41", &member(project)).await;
    c.create_user("bob", "Osprey-glacier-52", &member(project)).await;
    let alice = c.login_user("alice", "Kestrel-tundra-41").await;
    let bob = c.login_user("bob", "Osprey-glacier-52").await;
    let v: Value = c
        .admin
        .post(&path, &json!({"name": "ledger", "size_gib": 1}))
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap().to_string();

    // No grants: the project roles decide; both members see it.
    assert!(volume(&alice, project, &id).await.is_ok());
    assert!(volume(&bob, project, &id).await.is_ok());
    // Members do not change grants.
    let e = put(
        &alice,
        &format!("{path}/{id}/access"),
        &json!({"grants": [{"user": "alice", "actions": ["read"]}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e).0, 403);
    // Unknown principals are refused.
    let e = put(
        &c.admin,
        &format!("{path}/{id}/access"),
        &json!({"grants": [{"user": "nobody", "actions": ["read"]}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), (422, "policy_violation"));
    let e = put(
        &c.admin,
        &format!("{path}/{id}/access"),
        &json!({"grants": [{"group": "nogroup", "actions": ["read"]}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), (422, "policy_violation"));

    // Alice may read and attach; Bob is left out.
    let access: Value = put(
        &c.admin,
        &format!("{path}/{id}/access"),
        &json!({"grants": [{"user": "alice", "actions": ["read", "attach"]}]}),
    )
    .await
    .unwrap();
    assert_eq!(access["grants"].as_array().unwrap().len(), 1);
    assert!(volume(&alice, project, &id).await.is_ok());
    assert_eq!(code(&volume(&bob, project, &id).await.unwrap_err()).0, 404);
    let listed: Value = bob.get(&path).await.unwrap();
    assert!(listed["items"].as_array().unwrap().iter().all(|v| v["id"] != id));
    let e = del(&alice, &format!("{path}/{id}")).await.unwrap_err();
    assert_eq!(code(&e).0, 403, "alice may see it but not delete it");
    assert_eq!(code(&del(&bob, &format!("{path}/{id}")).await.unwrap_err()).0, 404);
    // Project admins keep every right.
    assert!(volume(&c.admin, project, &id).await.is_ok());

    // Another project's member sees nothing (404), whatever it names.
    let other: Value = c
        .admin
        .post("/v1/projects", &json!({"name": "elsewhere"}))
        .await
        .unwrap();
    let other_id: Uuid = other["id"].as_str().unwrap().parse().unwrap();
    c.create_user("carol", "Heron-canyon-63", &member(other_id)).await;
    let carol = c.login_user("carol", "Heron-canyon-63").await;
    assert_eq!(code(&volume(&carol, project, &id).await.unwrap_err()).0, 404);
    assert_eq!(code(&volume(&carol, other_id, &id).await.unwrap_err()).0, 404);
    let e = carol
        .post::<_, Value>(&format!("{path}/{id}/extend"), &json!({"size_gib": 2}))
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_3_attaching_needs_the_volume_on_the_instances_node() {
    let c = cluster(Backend::Sqlite, |_| {}).await;
    if !c.has_hsm() {
        return;
    }
    let project = c.admin_project().await;
    let big = FakeNode::enrol(&c, "store-1", 100).await;
    let path = vol_path(project);
    let a: Value = c.admin.post(&path, &json!({"name": "a", "size_gib": 1})).await.unwrap();
    let small = FakeNode::enrol(&c, "store-2", 200).await;
    let b: Value = c.admin.post(&path, &json!({"name": "b", "size_gib": 1})).await.unwrap();
    assert_eq!(
        (a["node"].as_str(), b["node"].as_str()),
        (Some(big.id.to_string().as_str()), Some(small.id.to_string().as_str()))
    );
    for (v, n) in [(&a, &big), (&b, &small)] {
        n.observe(v["id"].as_str().unwrap().parse().unwrap(), ObservedVolume::Ready, None)
            .await;
        wait_volume(&c, project, v["id"].as_str().unwrap(), "available").await;
    }
    let (image, flavor) = image_and_flavor(&c, project).await;
    let e = c
        .admin
        .post::<_, Value>(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "x", "image": image, "flavor": flavor, "volumes": [a["id"], b["id"]], "start": false}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "volumes_on_different_nodes"));
    let inst: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "x", "image": image, "flavor": flavor, "volumes": [a["id"]], "start": false}),
        )
        .await
        .unwrap();
    let attach = format!(
        "/v1/projects/{project}/instances/{}/volumes",
        inst["id"].as_str().unwrap()
    );
    let e = c
        .admin
        .post::<_, Value>(&attach, &json!({"volume": "b"}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "volume_on_another_node"));
    // Deleting the instance frees its volume.
    let _: Value = del(
        &c.admin,
        &format!("/v1/projects/{project}/instances/{}", inst["id"].as_str().unwrap()),
    )
    .await
    .unwrap();
    wait_volume(&c, project, a["id"].as_str().unwrap(), "available").await;
    drop((big, small));
    c.shutdown().await;
}

async fn snapshots(backend: Backend) {
    let c = cluster(backend, |_| {}).await;
    if !c.has_hsm() {
        return;
    }
    let project = c.admin_project().await;
    let node = FakeNode::enrol(&c, "snap-1", 100).await;
    let src: Value = c
        .admin
        .post(&vol_path(project), &json!({"name": "src", "size_gib": 2}))
        .await
        .unwrap();
    let src_id: Uuid = src["id"].as_str().unwrap().parse().unwrap();
    node.observe(src_id, ObservedVolume::Ready, None).await;
    wait_volume(&c, project, "src", "available").await;
    let snaps = format!("{}/src/snapshots", vol_path(project));

    // A snapshot: `creating`, published to the volume's node.
    let e = c
        .admin
        .post::<_, Value>(&snaps, &json!({"name": "Bad Name"}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "validation_failed"));
    let snap: Value = c.admin.post(&snaps, &json!({"name": "s1"})).await.unwrap();
    assert_eq!(
        (snap["status"].as_str(), snap["size_gib"].as_u64()),
        (Some("creating"), Some(2))
    );
    assert_eq!(snap["volume"], src_id.to_string());
    let sid: Uuid = snap["id"].as_str().unwrap().parse().unwrap();
    let doc = node.document().await;
    let d = doc.storage.snapshots.iter().find(|s| s.id == sid).expect("published");
    assert_eq!((d.volume_id, d.presence), (src_id, DesiredPresence::Present));
    // While the node copies the volume, nothing else opens it.
    let e = c
        .admin
        .post::<_, Value>(&format!("{}/src/extend", vol_path(project)), &json!({"size_gib": 3}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "snapshot_in_progress"));
    let e = c
        .admin
        .post::<_, Value>(&snaps, &json!({"name": "s1"}))
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 409, "names are unique in the project");

    node.observe_snapshot(sid, ObservedVolume::Ready, None).await;
    TestCluster::wait_for("snapshot available", Duration::from_secs(10), || async {
        let s: Value = c.admin.get(&format!("{snaps}/s1")).await.ok()?;
        (s["status"] == "available").then_some(())
    })
    .await;
    let list: Value = c.admin.get(&snaps).await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // A volume from it: at least its size, of this project only, on its node, and it opens
    // with the same passphrase as the snapshot's volume (a copy keeps the key), wrapped anew.
    let e = c
        .admin
        .post::<_, Value>(
            &vol_path(project),
            &json!({"name": "copy", "size_gib": 1, "snapshot": sid}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "validation_failed"));
    let (other, outsider) = new_project(&c, "snapother").await;
    let e = outsider
        .post::<_, Value>(
            &vol_path(other),
            &json!({"name": "steal", "size_gib": 2, "snapshot": sid}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e).0, 404, "another project's snapshot is not found");
    let copy: Value = c
        .admin
        .post(
            &vol_path(project),
            &json!({"name": "copy", "size_gib": 3, "snapshot": "s1"}),
        )
        .await
        .unwrap();
    let copy_id: Uuid = copy["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(copy["source_snapshot"], sid.to_string());
    assert_eq!(
        (copy["encrypted"].as_bool(), copy["node"].as_str()),
        (Some(true), Some(node.id.to_string().as_str()))
    );
    let doc = node.document().await;
    let d = doc.storage.volumes.iter().find(|v| v.id == copy_id).unwrap();
    assert_eq!(
        d.source,
        Some(rampart_api::storage::VolumeSource::Snapshot { snapshot_id: sid })
    );
    let a = node.client.agent_volume_passphrase(src_id).await.unwrap();
    let b = node.client.agent_volume_passphrase(copy_id).await.unwrap();
    assert_eq!(a.passphrase.expose(), b.passphrase.expose());
    // The snapshot stays while a volume is being made from it.
    let e = del(&c.admin, &format!("{snaps}/s1")).await.unwrap_err();
    assert_eq!(code(&e), (409, "snapshot_in_use"));
    node.observe(copy_id, ObservedVolume::Ready, None).await;
    wait_volume(&c, project, "copy", "available").await;

    // A volume with snapshots does not go (they open with its key).
    let e = del(&c.admin, &format!("{}/src", vol_path(project))).await.unwrap_err();
    assert_eq!(code(&e), (409, "volume_has_snapshots"));

    // An attached volume is not snapshotted (the node cannot copy a file QEMU holds); the
    // instance's deletion detaches it: `available` again.
    let (image, flavor) = image_and_flavor(&c, project).await;
    let inst: Value = c
        .admin
        .post(
            &format!("/v1/projects/{project}/instances"),
            &json!({"name": "snap-vm", "image": image, "flavor": flavor, "volumes": [copy_id], "start": false}),
        )
        .await
        .unwrap();
    let e = c
        .admin
        .post::<_, Value>(
            &format!("{}/copy/snapshots", vol_path(project)),
            &json!({"name": "live"}),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "volume_in_use"));
    del(
        &c.admin,
        &format!("/v1/projects/{project}/instances/{}", inst["id"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let v = wait_volume(&c, project, "copy", "available").await;
    assert!(v["attachments"].as_array().unwrap().is_empty());

    // Delete: `deleting`, published `wiped` with who asked; a verified wipe deletes it, the
    // report is served and in the trail.
    let s: Value = del(&c.admin, &format!("{snaps}/s1")).await.unwrap();
    assert_eq!(s["status"], "deleting");
    let doc = node.document().await;
    let d = doc.storage.snapshots.iter().find(|s| s.id == sid).unwrap();
    assert_eq!(
        (d.presence, d.requested_by.as_deref()),
        (DesiredPresence::Wiped, Some("admin@default"))
    );
    node.observe_snapshot(sid, ObservedVolume::Wiped, Some(wipe_report(sid, false)))
        .await;
    TestCluster::wait_for("snapshot error", Duration::from_secs(10), || async {
        let s: Value = c.admin.get(&format!("{snaps}/{sid}")).await.ok()?;
        (s["status"] == "error").then_some(())
    })
    .await;
    let s: Value = c.admin.get(&format!("{snaps}/{sid}")).await.unwrap();
    assert_eq!(
        s["error"]["code"], "wipe_unverified",
        "an unverified wipe never deletes"
    );
    node.observe_snapshot(sid, ObservedVolume::Wiped, Some(wipe_report(sid, true)))
        .await;
    TestCluster::wait_for("snapshot deleted", Duration::from_secs(10), || async {
        let s: Value = c.admin.get(&format!("{snaps}/{sid}")).await.ok()?;
        (s["status"] == "deleted").then_some(())
    })
    .await;
    let report: Value = c.admin.get(&format!("{snaps}/{sid}/wipe-report")).await.unwrap();
    assert_eq!(
        (report["verified"].as_bool(), report["volume"].as_str()),
        (Some(true), Some(sid.to_string().as_str()))
    );
    assert!(node.document().await.storage.snapshots.iter().all(|s| s.id != sid));
    let trail: Value = c
        .admin
        .get("/v1/audit/events?operation=volume.snapshot.wipe")
        .await
        .unwrap();
    assert!(
        trail["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["target"]["id"] == sid.to_string()),
        "volume.snapshot.wipe in the trail"
    );
    let trail: Value = c
        .admin
        .get("/v1/audit/events?operation=volume.snapshot.create")
        .await
        .unwrap();
    assert!(
        trail["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["details"]["snapshot"] == sid.to_string()),
        "volume.snapshot.create in the trail, naming the snapshot: {trail}"
    );
    // Now the volume may go.
    let v: Value = del(&c.admin, &format!("{}/src", vol_path(project))).await.unwrap();
    assert_eq!(v["status"], "deleting");
    drop(node);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_4_1_snapshots_are_made_on_the_volumes_node_copied_within_the_project_and_wiped_verified() {
    for backend in rampart_testkit::backends().await {
        snapshots(backend).await;
    }
}

async fn quotas_and_cleanup(backend: Backend) {
    let c = cluster(backend, |_| {}).await;
    if !c.has_hsm() {
        return;
    }
    let (pid, user) = new_project(&c, "volq").await;
    let node = FakeNode::enrol(&c, "quota-1", 100).await;
    // The project's own volume limits replace the `[quotas]` defaults.
    let q = put(
        &c.admin,
        &format!("/v1/projects/{}/quotas", pid),
        &json!({"volumes": 1, "volume_gib": 5}),
    )
    .await
    .unwrap();
    assert_eq!(
        (q["limits"]["volumes"].as_u64(), q["limits"]["volume_gib"].as_u64()),
        (Some(1), Some(5))
    );
    assert_eq!(q["own"]["volume_gib"], 5);
    let e = user
        .post::<_, Value>(&vol_path(pid), &json!({"name": "big", "size_gib": 6}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (413, "quota_exceeded"));
    let v: Value = user
        .post(&vol_path(pid), &json!({"name": "one", "size_gib": 4}))
        .await
        .unwrap();
    let e = user
        .post::<_, Value>(&vol_path(pid), &json!({"name": "two", "size_gib": 1}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "quota_exceeded"));
    assert!(e.to_string().contains("quota of 1 volumes"), "{e}");
    let q: Value = user.get(&format!("/v1/projects/{}/quotas", pid)).await.unwrap();
    assert_eq!(
        (q["used"]["volumes"].as_u64(), q["used"]["volume_gib"].as_u64()),
        (Some(1), Some(4))
    );
    let vid: Uuid = v["id"].as_str().unwrap().parse().unwrap();
    node.observe(vid, ObservedVolume::Ready, None).await;
    wait_volume_as(&user, pid, "one", "available").await;
    let e = user
        .post::<_, Value>(&format!("{}/one/extend", vol_path(pid)), &json!({"size_gib": 6}))
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "quota_exceeded"));

    // A project holding a volume (even one being wiped) is not deleted.
    let e = del(&c.admin, &format!("/v1/projects/{}", pid)).await.unwrap_err();
    assert_eq!(code(&e), (409, "project_has_volumes"));
    del(&user, &format!("{}/one", vol_path(pid))).await.unwrap();
    let e = del(&c.admin, &format!("/v1/projects/{}", pid)).await.unwrap_err();
    assert_eq!(
        code(&e),
        (409, "project_has_volumes"),
        "a wipe under way still holds data"
    );
    node.observe(vid, ObservedVolume::Wiped, Some(wipe_report(vid, true)))
        .await;
    wait_volume_as(&user, pid, &vid.to_string(), "deleted").await;
    // Wiped: volumes no longer hold the project (its service-managed key still does).
    let e = del(&c.admin, &format!("/v1/projects/{}", pid)).await.unwrap_err();
    assert_eq!(code(&e), (409, "project_has_keys"));
    drop(node);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_4_3_volume_quotas_per_project_and_a_project_with_volumes_is_not_deleted() {
    for backend in rampart_testkit::backends().await {
        quotas_and_cleanup(backend).await;
    }
}
