//! Golden tests of the standard formats (spec 13.4-4): one fixed record, each exporter's exact
//! output, plus the escaping rules each format has.

use rampart_audit::checkpoint::{Checkpoint, CheckpointBody, CheckpointKind};
use rampart_audit::formats::{
    Activity, Product, SyslogOptions, checkpoint_to_rfc5424, sd_escape, to_cadf, to_cef, to_ocsf, to_rfc5424,
};
use rampart_audit::hash::Hash;
use rampart_audit::record::{Actor, AuditRecord, AuditResult, AuthMethod, ChainHead, NewRecord, Target, seal};
use time::macros::datetime;

fn product() -> Product {
    Product {
        vendor: "Rampart".into(),
        name: "Rampart".into(),
        version: "0.1.0".into(),
    }
}

fn record() -> AuditRecord {
    let mut n = NewRecord::new(
        datetime!(2026-11-29 04:17:41.123 UTC),
        Actor::user(
            "7d0c7f6e-7a51-4c1b-9a55-0d3c1f7b2a10",
            "alice",
            "default",
            AuthMethod::PasswordTotp,
        ),
        "instance.create",
        Target::new(
            "instance",
            Some("0b7e1f0e-3c55-4f7e-8d2a-6a7d8c1e9f00".into()),
            Some("4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e".into()),
        ),
        AuditResult::failure(409, "conflict"),
    )
    .source_ip("192.0.2.10")
    .user_agent("rampart-cli/0.1 (x=1|y\\z)")
    .request_id("5c3a8f6e-2d1b-4e7f-9a0c-1b2d3e4f5a6b")
    .duration_ms(42)
    .detail("name", "web=1]");
    n.id = "a3bb189e-8bf9-3888-9912-ace4e6543002".parse().unwrap();
    seal(&ChainHead::GENESIS, n).unwrap()
}

const HASH: &str = "HASH";

/// Keys sorted at every level: the exporters' key order depends on whether some other crate in
/// the build turns on serde_json's `preserve_order`, and the golden files must not.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn golden(s: &str, r: &AuditRecord) -> String {
    s.replace(&r.hash.to_hex(), HASH)
}

/// Compares with `tests/golden/<name>`, which holds `actual` and a newline; `REGENERATE=1`
/// rewrites the file (then review the diff: the golden files are the format contract).
#[track_caller]
fn check_golden(name: &str, actual: &str) {
    rampart_common::testing::golden(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name),
        &format!("{actual}\n"),
    );
}

#[test]
fn spec_13_4_4_ocsf_api_activity_golden() {
    let r = record();
    let v = to_ocsf(&r, &product());
    check_golden(
        "ocsf.json",
        &golden(&serde_json::to_string_pretty(&sorted(v.clone())).unwrap(), &r),
    );
    assert_eq!(v["class_uid"], 6003);
    assert_eq!(v["type_uid"], 600301);
    assert_eq!(v["time"], 1_795_925_861_123_i64);
}

#[test]
fn spec_13_4_4_cadf_event_golden() {
    let r = record();
    let v = to_cadf(&r, &product());
    check_golden(
        "cadf.json",
        &golden(&serde_json::to_string_pretty(&sorted(v.clone())).unwrap(), &r),
    );
    for required in [
        "typeURI",
        "id",
        "eventType",
        "eventTime",
        "action",
        "outcome",
        "initiator",
        "target",
        "observer",
    ] {
        assert!(v.get(required).is_some(), "CADF requires {required}");
    }
}

#[test]
fn spec_13_4_4_cef_line_golden_with_escaping() {
    let r = record();
    check_golden("cef.txt", &golden(&to_cef(&r, &product()), &r));
    let mut p = product();
    p.name = "Ram|part\\".into();
    let line = to_cef(&r, &p);
    assert!(line.starts_with("CEF:0|Rampart|Ram\\|part\\\\|0.1.0|"), "{line}");
    assert!(
        line.contains("requestClientApplication=rampart-cli/0.1 (x\\=1|y\\\\z)"),
        "{line}"
    );
}

#[test]
fn spec_13_4_4_rfc5424_line_golden_with_sd_escaping() {
    let r = record();
    let opts = SyslogOptions {
        hostname: "controller-1".into(),
        procid: Some(4242),
        ..SyslogOptions::default()
    };
    check_golden("rfc5424.txt", &golden(&to_rfc5424(&r, &opts), &r));
    assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
    // PRI: facility 13 (log audit) * 8 + severity 4 (warning, a failure).
    assert!(
        to_rfc5424(&r, &opts)
            .starts_with("<108>1 2026-11-29T04:17:41.123Z controller-1 rampart 4242 instance.create [audit@32473 ")
    );
}

#[test]
fn spec_13_4_4_rfc5424_message_body_is_the_rehashable_record() {
    let r = record();
    let line = to_rfc5424(&r, &SyslogOptions::default());
    let msg = line.split("] ").last().unwrap().trim_start_matches('\u{feff}');
    let back: AuditRecord = serde_json::from_str(msg).unwrap();
    assert_eq!(back, r);
    assert_eq!(rampart_audit::record::compute_hash(&back).unwrap(), r.hash);
}

#[test]
fn spec_13_4_4_checkpoint_syslog_line_carries_the_signature() {
    let (signer, _) = rampart_audit::checkpoint::Ed25519Signer::generate().unwrap();
    let body = CheckpointBody {
        version: 1,
        seq: 7,
        kind: CheckpointKind::Periodic,
        tree_size: 1,
        root: Hash::sha256(&[b"x"]),
        last_hash: Hash::sha256(&[b"y"]),
        compact_range: vec![Hash::sha256(&[b"x"])],
        time: datetime!(2026-11-29 04:17:41 UTC),
        key_id: rampart_audit::checkpoint::CheckpointSigner::key_id(&signer).to_string(),
        prev: Hash::ZERO,
    };
    let cp = Checkpoint::sign(body, &signer).unwrap();
    let line = checkpoint_to_rfc5424(&cp, &SyslogOptions::default());
    assert!(line.starts_with("<109>1 2026-11-29T04:17:41.000Z - rampart - audit.checkpoint [checkpoint@32473 seq=\"7\" kind=\"periodic\" tree_size=\"1\""), "{line}");
    assert!(line.contains(&format!("signature=\"{}\"", cp.signature)));
    let msg = line.split("] ").last().unwrap();
    let back: Checkpoint = serde_json::from_str(msg).unwrap();
    assert_eq!(back, cp);
}

#[test]
fn spec_13_4_4_activity_mapping() {
    assert_eq!(Activity::of("instance.create"), Activity::Create);
    assert_eq!(Activity::of("audit.events.list"), Activity::Read);
    assert_eq!(Activity::of("key.rotate"), Activity::Update);
    assert_eq!(Activity::of("security_group.delete"), Activity::Delete);
    assert_eq!(Activity::of("auth.login"), Activity::Other);
    let mut r = record();
    r.operation = "auth.login".into();
    assert_eq!(to_cadf(&r, &product())["action"], "authenticate/login");
    assert_eq!(to_ocsf(&r, &product())["severity_id"], 3, "failed logins rank higher");
}

#[test]
fn spec_13_4_4_pending_write_ahead_record_in_each_format() {
    let mut r = record();
    r.result = AuditResult::pending();
    let ocsf = to_ocsf(&r, &product());
    assert_eq!(
        (ocsf["status_id"].as_u64(), ocsf["status"].as_str()),
        (Some(0), Some("Unknown"))
    );
    assert!(ocsf.get("status_code").is_none(), "no HTTP status yet: {ocsf}");
    assert!(ocsf["api"]["response"].get("code").is_none());
    let cadf = to_cadf(&r, &product());
    assert_eq!(cadf["outcome"], "pending", "CADF's own outcome value");
    assert!(cadf.get("reason").and_then(|v| v.get("reasonCode")).is_none());
    assert!(to_cef(&r, &product()).contains("outcome=pending"));
    let line = to_rfc5424(&r, &SyslogOptions::default());
    assert!(
        line.contains("outcome=\"pending\"") && !line.contains("status=\""),
        "{line}"
    );
}
