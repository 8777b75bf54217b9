//! Keys and certificates through the API against a SoftHSM2 token (spec 12.4, 13.3, 12.3.1,
//! 13.1.1-2): customer keys and their lifecycle, cryptographic operations with their own error
//! codes, rotation (on demand and by the reconciler on a movable clock), tenant isolation,
//! key-operation audit records free of secrets, and certificates (tenant CSRs, CRL, import with
//! a chain check, revocation of an agent certificate).
//!
//! Without SoftHSM2 these tests print a note and return; `RAMPART_TEST_REQUIRE_HSM=1` (CI)
//! makes that a failure.

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_api::{
    Certificate, CertificateImport, CertificateIssue, CertificateKind, CertificateStatus, Client, ClientError, Context,
    DataKeyRequest, DecryptRequest, EncryptRequest, Key, KeyCreate, KeyStateView, KeyUpdate, List, NodeState, Project,
    ReEncryptRequest, ScopeRef,
};
use rampart_common::Sensitive;
use rampart_common::time::ManualClock;
use rampart_testkit::{ClusterOptions, TestCluster};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const PASSWORD: &str = "Cormorant-lantern-71";

async fn cluster() -> Option<(TestCluster, Arc<ManualClock>)> {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let c = TestCluster::start(ClusterOptions {
        clock: Some(clock.clone()),
        configure: Box::new(|config| config.kms.maintenance_interval_s = 1),
        ..Default::default()
    })
    .await;
    if !c.has_hsm() {
        // (testutil failed already under RAMPART_TEST_REQUIRE_HSM=1.)
        rampart_common::testing::skip(rampart_kms::testutil::SKIP_NO_SOFTHSM);
        c.shutdown().await;
        return None;
    }
    Some((c, clock))
}

fn in_project(p: Uuid) -> ScopeRef {
    ScopeRef {
        project: Some(p),
        ..Default::default()
    }
}

/// A user holding `role` on `project`, logged in.
async fn user(c: &TestCluster, name: &str, grants: &[(&str, Uuid)]) -> Client {
    let grants: Vec<(&str, ScopeRef)> = grants.iter().map(|(r, p)| (*r, in_project(*p))).collect();
    c.create_user(name, PASSWORD, &grants).await;
    c.anon.login_as(name, PASSWORD).await.expect("login").0
}

async fn project(c: &TestCluster, name: &str) -> Uuid {
    let p: Project = c
        .admin
        .post("/v1/projects", &serde_json::json!({ "name": name }))
        .await
        .expect("create project");
    p.id
}

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    let e = r.expect_err("the call must be refused");
    (
        e.status().map(|s| s.as_u16()).unwrap_or_default(),
        e.code().unwrap_or_default().to_string(),
    )
}

fn ctx(pairs: &[(&str, &str)]) -> Option<Context> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn enc(plaintext: &[u8], context: Option<Context>) -> EncryptRequest {
    EncryptRequest {
        plaintext: Sensitive::new(STANDARD.encode(plaintext)),
        context,
    }
}

fn dec(ciphertext: &str, context: Option<Context>) -> DecryptRequest {
    DecryptRequest {
        ciphertext: ciphertext.to_string(),
        context,
    }
}

fn plain(r: &rampart_api::DecryptResponse) -> Vec<u8> {
    STANDARD.decode(r.plaintext.expose()).expect("base64 plaintext")
}

async fn new_key(admin: &Client, project: Uuid, name: &str, rotation_period_days: Option<u32>) -> Key {
    admin
        .create_key(
            project,
            &KeyCreate {
                name: name.into(),
                algorithm: Some("aes-256-gcm".into()),
                rotation_period_days,
            },
        )
        .await
        .expect("create key")
}

/// Flips one bit in the middle of a base64 envelope (inside the ciphertext body).
fn tamper(ciphertext: &str) -> String {
    let mut bytes = STANDARD.decode(ciphertext).expect("base64 envelope");
    let i = bytes.len() - 20;
    bytes[i] ^= 0x01;
    STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_4_1_encrypt_decrypt_data_key_and_re_encrypt_through_the_api() {
    let Some((c, _clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "kadmin", &[("key-admin", p)]).await;
    let usr = user(&c, "kuser", &[("key-user", p)]).await;

    let key = new_key(&admin, p, "orders", None).await;
    assert_eq!(key.state, KeyStateView::Enabled);
    assert_eq!((key.primary_version, key.algorithm.as_str()), (1, "aes-256-gcm"));
    let listed = usr.list_keys(p).await.unwrap();
    assert_eq!(listed.items.iter().map(|k| k.id).collect::<Vec<_>>(), vec![key.id]);
    assert_eq!(usr.get_key(p, key.id).await.unwrap().name, "orders");
    let text = serde_json::to_string(&listed).unwrap();
    assert!(!text.contains("wrapped") && !text.contains("material"), "{text}");
    // Same name twice in the project: conflict.
    let (status, _) = refused(
        admin
            .create_key(
                p,
                &KeyCreate {
                    name: "orders".into(),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!(status, 409);

    let context = ctx(&[("table", "orders"), ("row", "42")]);
    let ct = usr
        .encrypt(p, key.id, &enc(b"card 4111 1111", context.clone()))
        .await
        .unwrap();
    assert_eq!(ct.key_version, 1);
    let again = usr
        .encrypt(p, key.id, &enc(b"card 4111 1111", context.clone()))
        .await
        .unwrap();
    assert_ne!(ct.ciphertext, again.ciphertext, "fresh nonce per encryption");
    let pt = usr
        .decrypt(p, key.id, &dec(&ct.ciphertext, context.clone()))
        .await
        .unwrap();
    assert_eq!(plain(&pt), b"card 4111 1111");

    // Bad input: each has its own code.
    let (s, code) = refused(
        usr.decrypt(p, key.id, &dec(&ct.ciphertext, ctx(&[("table", "users")])))
            .await,
    );
    assert_eq!((s, code.as_str()), (400, "context_mismatch"));
    let (s, code) = refused(usr.decrypt(p, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!((s, code.as_str()), (400, "context_mismatch"));
    let (s, code) = refused(
        usr.decrypt(p, key.id, &dec(&tamper(&ct.ciphertext), context.clone()))
            .await,
    );
    assert_eq!((s, code.as_str()), (400, "invalid_ciphertext"));
    let (s, code) = refused(
        usr.decrypt(p, key.id, &dec("bm90IGFuIGVudmVsb3Bl", context.clone()))
            .await,
    );
    assert_eq!((s, code.as_str()), (400, "invalid_ciphertext"));
    let other = new_key(&admin, p, "other", None).await;
    let (s, code) = refused(usr.decrypt(p, other.id, &dec(&ct.ciphertext, context.clone())).await);
    assert_eq!((s, code.as_str()), (400, "key_mismatch"));

    // Envelope encryption: the data key decrypts back from its ciphertext.
    let dk = usr
        .generate_data_key(
            p,
            key.id,
            &DataKeyRequest {
                context: context.clone(),
                bytes: Some(32),
            },
        )
        .await
        .unwrap();
    let dk_plain = STANDARD.decode(dk.plaintext.expose()).unwrap();
    assert_eq!(dk_plain.len(), 32);
    let back = usr
        .decrypt(p, key.id, &dec(&dk.ciphertext, context.clone()))
        .await
        .unwrap();
    assert_eq!(plain(&back), dk_plain);
    let (s, code) = refused(
        usr.generate_data_key(
            p,
            key.id,
            &DataKeyRequest {
                context: None,
                bytes: Some(8),
            },
        )
        .await,
    );
    assert_eq!((s, code.as_str()), (400, "validation_failed"));

    // Re-encrypt under another key of the project: no plaintext in the answer.
    let re = usr
        .re_encrypt(
            p,
            key.id,
            &ReEncryptRequest {
                ciphertext: ct.ciphertext.clone(),
                context: context.clone(),
                target_key: Some(other.id),
                target_context: ctx(&[("moved", "yes")]),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (re.key_id, re.source_key_id, re.source_key_version),
        (other.id, key.id, 1)
    );
    let moved = usr
        .decrypt(p, other.id, &dec(&re.ciphertext, ctx(&[("moved", "yes")])))
        .await
        .unwrap();
    assert_eq!(plain(&moved), b"card 4111 1111");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_8_old_version_decrypts_after_rotation_until_the_minimum_passes_it() {
    let Some((c, _clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "kadmin", &[("key-admin", p)]).await;
    let usr = user(&c, "kuser", &[("key-user", p)]).await;
    let key = new_key(&admin, p, "ledger", None).await;
    let v1 = usr.encrypt(p, key.id, &enc(b"entry one", None)).await.unwrap();

    let rotated = admin.key_action(p, key.id, "rotate").await.unwrap();
    assert_eq!(rotated.primary_version, 2);
    assert_eq!(rotated.versions.len(), 2);
    let v2 = usr.encrypt(p, key.id, &enc(b"entry two", None)).await.unwrap();
    assert_eq!(v2.key_version, 2);
    let old = usr.decrypt(p, key.id, &dec(&v1.ciphertext, None)).await.unwrap();
    assert_eq!((plain(&old), old.key_version), (b"entry one".to_vec(), 1));
    // Re-encrypt moves the old ciphertext to the primary version.
    let re = usr
        .re_encrypt(
            p,
            key.id,
            &ReEncryptRequest {
                ciphertext: v1.ciphertext.clone(),
                context: None,
                target_key: None,
                target_context: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((re.key_version, re.source_key_version), (2, 1));

    let updated = admin
        .update_key(
            p,
            key.id,
            &KeyUpdate {
                rotation_period_days: None,
                min_decryption_version: Some(2),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.min_decryption_version, 2);
    let (s, code) = refused(usr.decrypt(p, key.id, &dec(&v1.ciphertext, None)).await);
    assert_eq!((s, code.as_str()), (400, "version_below_minimum"));
    assert_eq!(
        plain(&usr.decrypt(p, key.id, &dec(&re.ciphertext, None)).await.unwrap()),
        b"entry one"
    );
    assert_eq!(
        plain(&usr.decrypt(p, key.id, &dec(&v2.ciphertext, None)).await.unwrap()),
        b"entry two"
    );
    let (s, _) = refused(
        admin
            .update_key(
                p,
                key.id,
                &KeyUpdate {
                    rotation_period_days: None,
                    min_decryption_version: Some(3),
                },
            )
            .await,
    );
    assert_eq!(s, 400, "the minimum cannot pass the primary version");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_1_disabled_and_pending_deletion_keys_refuse_use_with_their_own_codes() {
    let Some((c, _clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "kadmin", &[("key-admin", p)]).await;
    let usr = user(&c, "kuser", &[("key-user", p)]).await;
    let key = new_key(&admin, p, "vault", None).await;
    let ct = usr.encrypt(p, key.id, &enc(b"payload", None)).await.unwrap();

    assert_eq!(
        admin.key_action(p, key.id, "disable").await.unwrap().state,
        KeyStateView::Disabled
    );
    let (s, code) = refused(usr.encrypt(p, key.id, &enc(b"x", None)).await);
    assert_eq!((s, code.as_str()), (409, "key_disabled"));
    let (s, code) = refused(usr.decrypt(p, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!((s, code.as_str()), (409, "key_disabled"));
    admin.key_action(p, key.id, "enable").await.unwrap();
    usr.decrypt(p, key.id, &dec(&ct.ciphertext, None)).await.unwrap();

    for days in [0, 6, 31] {
        let (s, code) = refused(admin.schedule_key_deletion(p, key.id, Some(days)).await);
        assert_eq!((s, code.as_str()), (400, "validation_failed"), "{days} days");
    }
    let pending = admin.schedule_key_deletion(p, key.id, Some(7)).await.unwrap();
    assert_eq!(pending.state, KeyStateView::PendingDeletion);
    assert!(pending.deletion_at.is_some());
    let (s, code) = refused(usr.decrypt(p, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!((s, code.as_str()), (409, "key_pending_deletion"));
    let (s, code) = refused(admin.key_action(p, key.id, "rotate").await);
    assert_eq!((s, code.as_str()), (409, "key_pending_deletion"));
    let cancelled = admin.key_action(p, key.id, "cancel-deletion").await.unwrap();
    assert_eq!(
        cancelled.state,
        KeyStateView::Disabled,
        "cancel leaves the key disabled"
    );
    admin.key_action(p, key.id, "enable").await.unwrap();
    usr.decrypt(p, key.id, &dec(&ct.ciphertext, None)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_3_reconciler_rotates_by_period_and_destroys_after_the_window_on_a_movable_clock() {
    let Some((c, clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "kadmin", &[("key-admin", p)]).await;
    let usr = user(&c, "kuser", &[("key-user", p)]).await;
    let key = new_key(&admin, p, "auto", Some(30)).await;
    assert!(key.next_rotation_at.is_some());
    let doomed = new_key(&admin, p, "doomed", None).await;
    let day0 = usr.encrypt(p, key.id, &enc(b"day zero", None)).await.unwrap();
    let doomed_ct = usr.encrypt(p, doomed.id, &enc(b"gone", None)).await.unwrap();
    admin.schedule_key_deletion(p, doomed.id, Some(7)).await.unwrap();

    clock.advance(Duration::days(31));
    // Sessions expired with the jump: log in again.
    let admin = c.anon.login_as("kadmin", PASSWORD).await.unwrap().0;
    let usr = c.anon.login_as("kuser", PASSWORD).await.unwrap().0;
    let rotated = TestCluster::wait_for("automatic rotation", std::time::Duration::from_secs(20), || async {
        let k = admin.get_key(p, key.id).await.ok()?;
        (k.primary_version == 2).then_some(k)
    })
    .await;
    assert_eq!(rotated.versions.len(), 2);
    let destroyed = TestCluster::wait_for("destruction", std::time::Duration::from_secs(20), || async {
        let k = admin.get_key(p, doomed.id).await.ok()?;
        (k.state == KeyStateView::Destroyed).then_some(k)
    })
    .await;
    assert!(destroyed.versions.iter().all(|v| v.destroyed), "{destroyed:?}");
    let (s, code) = refused(usr.decrypt(p, doomed.id, &dec(&doomed_ct.ciphertext, None)).await);
    assert_eq!((s, code.as_str()), (409, "key_destroyed"));
    // Not rotated again before the next period, and day-0 data still decrypts.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(admin.get_key(p, key.id).await.unwrap().primary_version, 2);
    let old = usr.decrypt(p, key.id, &dec(&day0.ciphertext, None)).await.unwrap();
    assert_eq!(plain(&old), b"day zero");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_only_the_projects_key_roles_use_its_keys() {
    let Some((c, _clock)) = cluster().await else { return };
    let a = c.admin_project().await;
    let b = project(&c, "beta").await;
    let admin_a = user(&c, "kadmin-a", &[("key-admin", a)]).await;
    let user_a = user(&c, "kuser-a", &[("key-user", a)]).await;
    let user_b = user(&c, "kuser-b", &[("key-user", b)]).await;
    let admin_b = user(&c, "kadmin-b", &[("key-admin", b)]).await;
    let member_a = user(&c, "member-a", &[("member", a)]).await;
    let key = new_key(&admin_a, a, "secret", None).await;
    let ct = user_a.encrypt(a, key.id, &enc(b"tenant a data", None)).await.unwrap();

    // Another project's key roles, a plain member and the system admin cannot even see it.
    for (who, client) in [
        ("key-user of B", &user_b),
        ("key-admin of B", &admin_b),
        ("member of A", &member_a),
    ] {
        let (s, _) = refused(client.decrypt(a, key.id, &dec(&ct.ciphertext, None)).await);
        assert_eq!(s, 404, "{who} decrypt");
        let (s, _) = refused(client.get_key(a, key.id).await);
        assert_eq!(s, 404, "{who} get");
        let (s, _) = refused(client.list_keys(a).await);
        assert_eq!(s, 404, "{who} list");
    }
    let (s, _) = refused(c.admin.decrypt(a, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!(s, 404, "the system admin cannot decrypt tenant data (13.1.1-2)");
    let (s, _) = refused(c.admin.list_keys(a).await);
    assert_eq!(s, 404);
    // The key id under the caller's own project: not found either.
    let (s, _) = refused(user_b.decrypt(b, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!(s, 404);
    // Separation inside the project: the key admin does not use keys, the key user does not manage them.
    let (s, _) = refused(admin_a.decrypt(a, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!(s, 403);
    let (s, _) = refused(admin_a.encrypt(a, key.id, &enc(b"x", None)).await);
    assert_eq!(s, 403);
    let (s, _) = refused(user_a.key_action(a, key.id, "rotate").await);
    assert_eq!(s, 403);
    let (s, _) = refused(user_a.key_action(a, key.id, "disable").await);
    assert_eq!(s, 403);
    let (s, _) = refused(
        user_a
            .create_key(
                a,
                &KeyCreate {
                    name: "mine".into(),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!(s, 403);
    // Re-encrypt cannot target a key of another project.
    let key_b = new_key(&admin_b, b, "b-key", None).await;
    let (s, _) = refused(
        user_a
            .re_encrypt(
                a,
                key.id,
                &ReEncryptRequest {
                    ciphertext: ct.ciphertext.clone(),
                    context: None,
                    target_key: Some(key_b.id),
                    target_context: None,
                },
            )
            .await,
    );
    assert_eq!(s, 404);
    c.shutdown().await;
}

/// Everything written through `tracing`, for the audit check.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn secret_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        STANDARD.encode(secret).into_bytes(),
        hex::encode(secret).into_bytes(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_4_key_operation_audit_records_and_the_database_hold_no_secret() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let Some((c, _clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "kadmin", &[("key-admin", p)]).await;
    let usr = user(&c, "kuser", &[("key-user", p)]).await;
    let key = new_key(&admin, p, "audited", None).await;
    let canary = b"canary-7f3a9c-plaintext-never-logged";
    let context = ctx(&[("purpose", "audit-check")]);
    let ct = usr.encrypt(p, key.id, &enc(canary, context.clone())).await.unwrap();
    usr.decrypt(p, key.id, &dec(&ct.ciphertext, context.clone()))
        .await
        .unwrap();
    let (_, code) = refused(usr.decrypt(p, key.id, &dec(&ct.ciphertext, None)).await);
    assert_eq!(code, "context_mismatch");
    let dk = usr
        .generate_data_key(
            p,
            key.id,
            &DataKeyRequest {
                context: context.clone(),
                bytes: None,
            },
        )
        .await
        .unwrap();
    let data_key = STANDARD.decode(dk.plaintext.expose()).unwrap();
    admin.key_action(p, key.id, "rotate").await.unwrap();

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("rampart::audit")).collect();
    let has = |op: &str, outcome: &str| {
        audit.iter().any(|l| {
            l.contains(&format!("operation=key.{op} "))
                && l.contains(&format!("outcome=\"{outcome}\""))
                && l.contains(&key.id.to_string())
        })
    };
    for (op, outcome) in [
        ("create", "success"),
        ("encrypt", "success"),
        ("decrypt", "success"),
        ("decrypt", "failure"),
        ("generate_data_key", "success"),
        ("rotate", "success"),
    ] {
        assert!(
            has(op, outcome),
            "no audit record of {op} {outcome}:\n{}",
            audit.join("\n")
        );
    }
    let failure = audit
        .iter()
        .find(|l| l.contains("outcome=\"failure\""))
        .expect("failure record");
    assert!(failure.contains("context_mismatch"), "{failure}");
    assert!(
        audit.iter().any(|l| l.contains("audit-check") && l.contains("kuser")),
        "records carry the context and the actor"
    );
    for secret in [canary.as_slice(), data_key.as_slice()] {
        for form in secret_forms(secret) {
            assert!(
                !contains(log.as_bytes(), &form),
                "a secret reached the log: {}",
                String::from_utf8_lossy(&form)
            );
        }
    }
    // The database (and its write-ahead log) holds neither the plaintext nor the data key.
    if let Some(path) = c.db.sqlite_path() {
        let mut files = vec![path.clone()];
        files.push(path.with_extension("db-wal"));
        let mut scanned = 0;
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else { continue };
            scanned += bytes.len();
            for secret in [canary.as_slice(), data_key.as_slice()] {
                for form in secret_forms(secret) {
                    assert!(!contains(&bytes, &form), "a secret is in {}", f.display());
                }
            }
        }
        assert!(scanned > 0);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_4_audit_trail_record_of_a_key_operation_has_version_and_context_not_data() {
    let Some((c, _clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "trail-admin", &[("key-admin", p)]).await;
    let usr = user(&c, "trail-user", &[("key-user", p)]).await;
    let key = new_key(&admin, p, "trailed", None).await;
    admin.key_action(p, key.id, "rotate").await.unwrap();
    let canary = b"canary-5e1b-trail-plaintext";
    let context = ctx(&[("tenant", "acme"), ("purpose", "trail-check")]);
    let ct = usr.encrypt(p, key.id, &enc(canary, context.clone())).await.unwrap();
    assert_eq!(ct.key_version, 2);
    let back = usr
        .decrypt(p, key.id, &dec(&ct.ciphertext, context.clone()))
        .await
        .unwrap();
    assert_eq!(plain(&back), canary);
    // Auditors read the trail; like every system reader they see the tenant's context as the
    // digest of what the record holds (13.1.1-2), and the key by its id.
    c.create_user(
        "trail-auditor",
        PASSWORD,
        &[(
            "auditor",
            ScopeRef {
                system: Some(true),
                ..Default::default()
            },
        )],
    )
    .await;
    let auditor = c.login_user("trail-auditor", PASSWORD).await;
    for op in ["key.encrypt", "key.decrypt"] {
        // `result=success`: the completion record, not a write-ahead intent of the call.
        let page: serde_json::Value = auditor
            .get(&format!("/v1/audit/events?operation={op}&result=success"))
            .await
            .unwrap();
        let record = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["target"]["id"] == key.id.to_string().as_str())
            .unwrap_or_else(|| panic!("no {op} record: {page:#}"));
        let details = &record["details"];
        assert_eq!(details["key_version"], 2, "{op}: {record:#}");
        assert_eq!(
            details["encryption_context_sha256"],
            rampart_audit::redact::digest(&serde_json::json!({"tenant": "acme", "purpose": "trail-check"})),
            "{op}: {record:#}"
        );
        let text = record.to_string();
        assert!(!text.contains(&ct.ciphertext), "{op}: the ciphertext is in the record");
        for form in secret_forms(canary) {
            assert!(
                !contains(text.as_bytes(), &form),
                "{op}: the plaintext is in the record: {}",
                String::from_utf8_lossy(&form)
            );
        }
    }
    c.shutdown().await;
}

fn csr(name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_2_tenant_csr_is_issued_listed_with_expiry_revoked_and_in_the_crl() {
    let Some((c, _clock)) = cluster().await else { return };
    let a = c.admin_project().await;
    let b = project(&c, "beta").await;
    let admin_a = user(&c, "kadmin-a", &[("key-admin", a)]).await;
    let user_a = user(&c, "kuser-a", &[("key-user", a)]).await;
    let admin_b = user(&c, "kadmin-b", &[("key-admin", b)]).await;

    let app = format!("app.{a}.rampart.internal");
    let issued = admin_a
        .issue_certificate(&CertificateIssue {
            project: a,
            csr: csr(&app),
            names: None,
            days: Some(30),
            usages: None,
        })
        .await
        .unwrap();
    assert_eq!(issued.project_id, Some(a));
    assert_eq!(issued.issuer_ca.as_deref(), Some("tenant"));
    assert_eq!(issued.names, vec![app.clone()]);
    assert!(
        (29..=30).contains(&issued.expires_in_days),
        "{}",
        issued.expires_in_days
    );
    assert_eq!(
        issued.status,
        CertificateStatus::Expiring,
        "30 days is inside the 30-day warning"
    );
    assert!(
        issued
            .certificate
            .as_deref()
            .unwrap_or_default()
            .contains("BEGIN CERTIFICATE")
    );
    let (s, code) = refused(
        admin_a
            .issue_certificate(&CertificateIssue {
                project: a,
                csr: "not a csr".into(),
                names: None,
                days: None,
                usages: None,
            })
            .await,
    );
    assert_eq!((s, code.as_str()), (400, "validation_failed"));
    // The key user reads the project's certificates but does not issue; other projects see nothing.
    let (s, _) = refused(
        user_a
            .issue_certificate(&CertificateIssue {
                project: a,
                csr: csr(&format!("x.{a}.rampart.internal")),
                names: None,
                days: None,
                usages: None,
            })
            .await,
    );
    assert_eq!(s, 403);
    // The project's certificates: the one issued, and the project's issuing CA.
    let mine = user_a.certificates(Some(a)).await.unwrap();
    let of_kind =
        |kind: CertificateKind| -> Vec<Uuid> { mine.items.iter().filter(|x| x.kind == kind).map(|x| x.id).collect() };
    assert_eq!(of_kind(CertificateKind::Tenant), vec![issued.id]);
    assert_eq!(of_kind(CertificateKind::Ca).len(), 1, "{mine:?}");
    assert_eq!(mine.items.len(), 2);
    let (s, _) = refused(admin_b.certificates(Some(a)).await);
    assert_eq!(s, 404);
    let (s, _) = refused(admin_b.certificate(issued.id).await);
    assert_eq!(s, 404);
    let (s, _) = refused(admin_b.revoke_certificate(issued.id, None).await);
    assert_eq!(s, 404);
    let (s, _) = refused(admin_a.certificates(None).await);
    assert_eq!(s, 403, "only system roles list every certificate");
    // The system reader sees all of them with expiry: the CAs, the API server, the tenant's.
    let all: List<Certificate> = c.admin.certificates(None).await.unwrap();
    for kind in ["ca", "server", "tenant"] {
        assert!(
            all.items.iter().any(|x| serde_json::to_value(x.kind).unwrap() == kind),
            "no {kind} certificate in {:?}",
            all.items.iter().map(|x| x.kind).collect::<Vec<_>>()
        );
    }

    let crl_before = c.anon.crl(true).await.unwrap();
    let revoked = admin_a
        .revoke_certificate(issued.id, Some("key_compromise"))
        .await
        .unwrap();
    assert_eq!(revoked.status, CertificateStatus::Revoked);
    let (s, code) = refused(admin_a.revoke_certificate(issued.id, None).await);
    assert_eq!((s, code.as_str()), (409, "certificate_already_revoked"));
    let crl = c.anon.crl(true).await.unwrap();
    let serials = |der: &[u8]| -> Vec<String> {
        let (_, parsed) = x509_parser::parse_x509_crl(der).expect("a DER CRL");
        parsed
            .iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect()
    };
    assert!(!serials(&crl_before).contains(&issued.serial));
    assert!(
        serials(&crl).contains(&issued.serial),
        "the CRL lists the revoked serial"
    );
    // The infrastructure CRL does not list tenant certificates.
    assert!(!serials(&c.anon.crl(false).await.unwrap()).contains(&issued.serial));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_2_a_project_gets_certificates_only_for_its_own_names() {
    let Some((c, _clock)) = cluster().await else { return };
    let a = project(&c, "proj-a").await;
    let b = project(&c, "proj-b").await;
    let admin_a = user(&c, "ca-admin-a", &[("key-admin", a)]).await;
    let issue = |names: Vec<String>, usages: Option<Vec<rampart_api::CertificateUsage>>| CertificateIssue {
        project: a,
        csr: csr(&names[0]),
        names: Some(names),
        days: Some(30),
        usages,
    };
    for foreign in [
        "billing.proj-b.internal".to_string(),
        "billing.proj-b.default.rampart.internal".to_string(),
        format!("billing.{b}.rampart.internal"),
        "*.proj-b.example.com".to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ] {
        let (s, code) = refused(admin_a.issue_certificate(&issue(vec![foreign.clone()], None)).await);
        assert_eq!((s, code.as_str()), (422, "certificate_name_not_allowed"), "{foreign}");
    }
    // Its own zones, by name and by id.
    let own = vec![
        "api.proj-a.default.rampart.internal".to_string(),
        format!("db.{a}.rampart.internal"),
    ];
    let cert = admin_a.issue_certificate(&issue(own.clone(), None)).await.unwrap();
    assert_eq!(cert.names, own);
    // A wildcard serves, it does not identify a client.
    let wild = vec!["*.web.proj-a.default.rampart.internal".to_string()];
    let (s, code) = refused(admin_a.issue_certificate(&issue(wild.clone(), None)).await);
    assert_eq!((s, code.as_str()), (422, "certificate_name_not_allowed"));
    let server = admin_a
        .issue_certificate(&issue(wild, Some(vec![rampart_api::CertificateUsage::ServerAuth])))
        .await
        .unwrap();
    let der = rampart_kms::ca::pem_to_der(server.certificate.as_deref().unwrap()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    c.shutdown().await;
}

fn pem_blocks(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN CERTIFICATE"))
        .map(|b| format!("{}\n", b.trim_start()))
        .collect()
}

/// `openssl verify` of `leaf` under `intermediate` with `root` as the only trust anchor.
fn openssl_verify(dir: &std::path::Path, root: &str, intermediate: &str, leaf: &str) -> (bool, String) {
    let name = Uuid::new_v4().simple().to_string();
    let file = |what: &str, pem: &str| {
        let p = dir.join(format!("{name}-{what}.pem"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    let (r, i, l) = (file("root", root), file("ca", intermediate), file("leaf", leaf));
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&r)
        .arg("-untrusted")
        .arg(&i)
        .arg(&l)
        .output()
        .expect("openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_2_issued_chain_has_the_projects_name_constrained_ca_and_validates_with_openssl() {
    let Some((c, _clock)) = cluster().await else { return };
    let a = project(&c, "chain-a").await;
    let b = project(&c, "chain-b").await;
    let admin = user(&c, "chain-admin", &[("key-admin", a), ("key-admin", b)]).await;
    let issue = |project: Uuid, name: String| CertificateIssue {
        project,
        csr: csr(&name),
        names: Some(vec![name]),
        days: Some(30),
        usages: Some(vec![rampart_api::CertificateUsage::ServerAuth]),
    };
    let a1 = admin
        .issue_certificate(&issue(a, "www.chain-a.default.rampart.internal".into()))
        .await
        .unwrap();
    let a2 = admin
        .issue_certificate(&issue(a, format!("db.{a}.rampart.internal")))
        .await
        .unwrap();
    let b1 = admin
        .issue_certificate(&issue(b, "www.chain-b.default.rampart.internal".into()))
        .await
        .unwrap();
    let chain = |x: &Certificate| pem_blocks(x.chain.as_deref().expect("a chain"));
    let (ca, cb) = (chain(&a1), chain(&b1));
    assert_eq!((ca.len(), cb.len()), (2, 2), "project CA, then tenant CA: {ca:?}");
    assert_eq!(chain(&a2), ca, "one issuing CA per project, made once");
    assert_ne!(ca[0], cb[0], "each project has its own issuing CA");
    assert_eq!(ca[1], cb[1], "both under the tenant CA");
    let der = |pem: &str| rampart_kms::ca::pem_to_der(pem).unwrap();
    let (ia, ib) = (der(&ca[0]), der(&cb[0]));
    let (_, pa) = x509_parser::parse_x509_certificate(&ia).unwrap();
    let (_, pb) = x509_parser::parse_x509_certificate(&ib).unwrap();
    let nc = pa.name_constraints().unwrap().expect("name constraints");
    assert!(nc.critical);
    let dns: Vec<String> = nc
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .map(|s| match s.base {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        dns,
        vec![
            format!("{a}.rampart.internal"),
            "chain-a.default.rampart.internal".to_string()
        ]
    );
    let ips: Vec<Vec<u8>> = nc
        .value
        .excluded_subtrees
        .iter()
        .flatten()
        .map(|s| match s.base {
            x509_parser::extensions::GeneralName::IPAddress(ip) => ip.to_vec(),
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ips,
        vec![vec![0u8; 8], vec![0u8; 32]],
        "every IPv4 and IPv6 address excluded"
    );
    let bc = pa.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0), "{bc:?}");
    assert_ne!(pa.subject().to_string(), pb.subject().to_string());
    let leaf_issuer = |x: &Certificate| {
        let d = der(x.certificate.as_deref().unwrap());
        let (_, p) = x509_parser::parse_x509_certificate(&d).unwrap();
        p.issuer().to_string()
    };
    assert_eq!(leaf_issuer(&a1), pa.subject().to_string());
    assert_eq!(leaf_issuer(&b1), pb.subject().to_string());
    // The project CA is in the project's inventory, as a CA.
    let listed = admin.certificates(Some(a)).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|x| x.kind == CertificateKind::Ca && x.sha256 == rampart_api::tls::sha256_hex(&ia)),
        "{listed:?}"
    );

    // A real validator: A's leaf under A's CA verifies; B's leaf does not verify under A's CA.
    let dir = tempfile::tempdir().unwrap();
    let leaf = |x: &Certificate| x.certificate.clone().unwrap();
    let (ok, out) = openssl_verify(dir.path(), &ca[1], &ca[0], &leaf(&a1));
    assert!(ok, "{out}");
    let (ok, out) = openssl_verify(dir.path(), &ca[1], &cb[0], &leaf(&b1));
    assert!(ok, "{out}");
    let (ok, out) = openssl_verify(dir.path(), &ca[1], &ca[0], &leaf(&b1));
    assert!(!ok, "B's leaf under A's CA: {out}");
    c.shutdown().await;
}

struct TestCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn test_ca(name: &str) -> TestCa {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(365);
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        cert,
        issuer: rcgen::Issuer::new(params, key),
    }
}

fn leaf(ca: &TestCa, name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(90);
    params.signed_by(&key, &ca.issuer).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_3_2_import_checks_the_chain_and_takes_no_private_key() {
    let Some((c, _clock)) = cluster().await else { return };
    let p = c.admin_project().await;
    let admin = user(&c, "kadmin", &[("key-admin", p)]).await;
    let ca = test_ca("Third Party Root");
    let stranger = test_ca("Somebody Else");
    let cert = leaf(&ca, "shop.example.test");

    let imported = admin
        .import_certificate(&CertificateImport {
            project: Some(p),
            certificate: cert.clone(),
            chain: Some(ca.cert.pem()),
        })
        .await
        .unwrap();
    assert_eq!(imported.chain_trust.as_deref(), Some("supplied_root"));
    assert_eq!(imported.names, vec!["shop.example.test".to_string()]);
    assert!((88..=90).contains(&imported.expires_in_days));

    // No issuer, the wrong issuer, a private key, garbage: refused.
    let other = leaf(&ca, "other.example.test");
    for (why, certificate, chain) in [
        ("no chain", other.clone(), None),
        ("wrong issuer", other.clone(), Some(stranger.cert.pem())),
    ] {
        let (s, code) = refused(
            admin
                .import_certificate(&CertificateImport {
                    project: Some(p),
                    certificate,
                    chain,
                })
                .await,
        );
        assert_eq!((s, code.as_str()), (400, "invalid_certificate_chain"), "{why}");
    }
    let with_key = format!(
        "{other}\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
        ca.cert.pem()
    );
    let (s, code) = refused(
        admin
            .import_certificate(&CertificateImport {
                project: Some(p),
                certificate: with_key,
                chain: None,
            })
            .await,
    );
    assert_eq!((s, code.as_str()), (400, "validation_failed"));
    // The same certificate twice is a conflict.
    let (s, _) = refused(
        admin
            .import_certificate(&CertificateImport {
                project: Some(p),
                certificate: cert,
                chain: Some(ca.cert.pem()),
            })
            .await,
    );
    assert_eq!(s, 409);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_12_3_1_a_revoked_agent_certificate_is_refused_at_once() {
    let Some((mut c, clock)) = cluster().await else { return };
    c.add_agent("node-r").await;
    c.wait_for_ready_nodes(1).await;
    let all: List<Certificate> = c.admin.certificates(None).await.unwrap();
    let agent_cert = all
        .items
        .iter()
        .find(|x| serde_json::to_value(x.kind).unwrap() == "agent" && x.status != CertificateStatus::Revoked)
        .expect("the agent's certificate is in the inventory")
        .clone();
    let revoked = c
        .admin
        .revoke_certificate(agent_cert.id, Some("key_compromise"))
        .await
        .unwrap();
    assert_eq!(revoked.status, CertificateStatus::Revoked);
    // Past the heartbeat timeout on the controller's clock: an accepted heartbeat (every real
    // second) would bring the node back to ready within the wait below; refused ones cannot.
    clock.advance(Duration::seconds(10));
    c.wait_for_node_state("node-r", NodeState::Unreachable, std::time::Duration::from_secs(10))
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let nodes = c.admin.nodes().await.unwrap();
    assert!(
        nodes
            .items
            .iter()
            .any(|n| n.name == "node-r" && n.state == NodeState::Unreachable),
        "the agent with a revoked certificate got back in"
    );
    let crl = c.anon.crl(false).await.unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    assert!(
        parsed
            .iter_revoked_certificates()
            .any(|r| hex::encode(r.raw_serial()) == agent_cert.serial)
    );
    c.shutdown().await;
}

/// A controller whose HSM cannot be opened still serves the API (key operations fail closed),
/// but says so: `/v1/health` is `degraded` with the reason and `/readyz` answers 503, so a load
/// balancer sends key traffic to a controller that can serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_14_2_3_health_and_readyz_report_an_unusable_hsm() {
    let c = TestCluster::start(ClusterOptions {
        configure: Box::new(|config| {
            config.kms.hsm = rampart_common::config::HsmKind::Pkcs11;
            config.kms.module = "/nonexistent/libsofthsm2.so".into();
            config.kms.required = false;
        }),
        ..Default::default()
    })
    .await;
    let h = c.admin.health().await.expect("health answers");
    assert_eq!(h.status, "degraded", "{h:?}");
    assert!(h.reason.as_deref().unwrap_or("").contains("HSM"), "{h:?}");
    let ready = match c.admin.send::<()>(http::Method::GET, "/readyz", None).await {
        Ok(r) => r.status(),
        Err(e) => e.status().expect("an HTTP answer from /readyz"),
    };
    assert_eq!(ready, 503);
}
