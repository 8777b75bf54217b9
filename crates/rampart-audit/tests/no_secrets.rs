//! No sensitive data in the audit trail (spec 13.4-7, 13.3-4): canary secrets are handed to the
//! record builder the way careless handlers would (details named after secrets, credential
//! shapes in free text), then the store dump, every export format and the forwarded syslog
//! stream are written to files and scanned. The scanner itself is shown to find the canaries
//! when they are present, so zero hits means something.

mod common;

use common::*;
use rampart_audit::canary::{new_canary, scan_paths};
use rampart_audit::formats::{Format, Product, SyslogOptions, export_line};
use rampart_audit::record::AuditRow;
use rampart_audit::store::{AuditStore, MemoryStore};
use serde_json::json;

#[tokio::test]
async fn spec_13_4_7_canaries_never_reach_records_exports_or_syslog() {
    let password = new_canary("password");
    let token = new_canary("token");
    let totp = new_canary("totp");
    let key = new_canary("key");
    let store = MemoryStore::new();
    let (_, clock) = manual_clock();
    let log = audit_log(store.clone(), signer(), clock.clone(), 3).await;
    let leaky = [
        event(&clock, 1)
            .detail("password", password.as_str())
            .detail("new_password", password.as_str()),
        event(&clock, 2).detail(
            "request",
            json!({"user": {"name": "bob", "Password": password, "totp": totp}}),
        ),
        event(&clock, 3)
            .detail("headers", json!({"Authorization": format!("Bearer {token}")}))
            .user_agent(format!("Bearer {token}")),
        event(&clock, 4)
            .detail("key", json!({"private_key": key, "plaintext": key}))
            .detail(
                "note",
                format!("-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----"),
            ),
        event(&clock, 5).detail("db_url", format!("postgres://rampart:{password}@db/rampart")),
        event(&clock, 6).detail("keys", json!([{"api_key": token}, {"client_secret": token}])),
    ];
    for e in leaky {
        log.append(e).await.unwrap();
    }
    log.checkpoint_now().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rows = store.read(0, 100).await.unwrap();
    let records: Vec<_> = rows.into_iter().map(|r| r.unwrap()).collect();
    let mut dump = String::new();
    for r in &records {
        dump.push_str(&format!("{:?}\n", AuditRow::from_record(r)));
        dump.push_str(&serde_json::to_string(r).unwrap());
        dump.push('\n');
    }
    write_all(&dir.path().join("store.dump"), dump.as_bytes());
    for (name, format) in [
        ("export.ocsf", Format::Ocsf),
        ("export.cadf", Format::Cadf),
        ("export.cef", Format::Cef),
        ("export.syslog", Format::Syslog),
    ] {
        let lines: Vec<String> = records
            .iter()
            .map(|r| export_line(r, format, &Product::default(), &SyslogOptions::default()))
            .collect();
        write_all(&dir.path().join(name), lines.join("\n").as_bytes());
    }
    let q = rampart_audit::queue::PersistentQueue::open(&dir.path().join("queue"), Default::default()).unwrap();
    let sent = rampart_audit::forward::pump(&store, &q, &SyslogOptions::default(), 100)
        .await
        .unwrap();
    assert_eq!(sent, 8, "6 records and 2 checkpoints queued for the log manager");

    let canaries = [password.as_str(), token.as_str(), totp.as_str(), key.as_str()];
    let hits = scan_paths(&[dir.path()], &canaries).unwrap();
    assert!(hits.is_empty(), "secrets leaked: {hits:?}");

    // The same scan does see a canary that is there.
    write_all(
        &dir.path().join("control.log"),
        format!("x={}", hex::encode(&token)).as_bytes(),
    );
    let hits = scan_paths(&[dir.path()], &canaries).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].canary, hits[0].encoding), (1, "hex"));
}
