//! Live conformance (issue 18, spec 15-3): every clause of the conformance matrix with its
//! mechanism and tests, and for the clauses that have one, a live probe run against this
//! running cloud: the transport probes speak TLS at the byte level to this controller's own
//! listener, the others read the configuration, the database and the HSM as they are now.
//! Probes only read; the call itself is audited like any other.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart_api::conformance::{ClauseConformance, ConformanceReport, ProbeResult};
use rampart_common::Error;
use rampart_posture::conformance::judge::{self, Verdict};
use rampart_posture::conformance::tls_wire::{self, Answer};
use rampart_posture::conformance::{Outcome, clause_status, parse_matrix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::note_detail;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

/// The matrix the report follows, as built into this binary.
const MATRIX: &str = include_str!("../../../../docs/conformance.md");

/// A live probe, and the clauses it gives evidence for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Tls11Refused,
    WeakSuitesRefused,
    PlainHttpRefused,
    PasswordPolicy,
    PasswordHashes,
    Lockout,
    AdminMfa,
    TokenLifetime,
    PasswordLifecycle,
    AuditChain,
    Retention,
    Forwarding,
    HsmCustody,
    DataDirPrivate,
    ImagesSigned,
    VolumesEncrypted,
}

const PROBES: &[(Probe, &str, &[&str])] = &[
    (Probe::Tls11Refused, "tls_1_1_refused", &["9.3-4", "13.2-3", "12.3.1"]),
    (
        Probe::WeakSuitesRefused,
        "weak_cipher_suites_refused",
        &["9.3-2", "12.4-2"],
    ),
    (Probe::PlainHttpRefused, "plain_http_refused", &["9.3-4"]),
    (Probe::PasswordPolicy, "password_policy", &["9.2-2", "13.1.2-1"]),
    (
        Probe::PasswordHashes,
        "password_hashes_argon2id",
        &["9.2-3", "13.1.2-2"],
    ),
    (Probe::Lockout, "lockout_after_failed_logins", &["13.2-6"]),
    (Probe::AdminMfa, "admins_need_mfa", &["13.2-2"]),
    (Probe::TokenLifetime, "token_lifetime_bounded", &["13.2-4"]),
    (
        Probe::PasswordLifecycle,
        "password_reuse_and_first_change",
        &["13.1.2-4", "13.1.2-5"],
    ),
    (Probe::AuditChain, "audit_trail_verifies", &["13.4-1", "9.2-5"]),
    (Probe::Retention, "audit_retention", &["13.4-6"]),
    (Probe::Forwarding, "audit_forwarding_delivers", &["13.4-5", "9.1-2"]),
    (Probe::HsmCustody, "root_keys_in_hsm", &["13.3-9", "12.4-3", "13.3-6"]),
    (Probe::DataDirPrivate, "data_dir_private", &["9.1-1e"]),
    (Probe::ImagesSigned, "active_images_signed", &["12.1-1"]),
    (Probe::VolumesEncrypted, "volumes_encrypted", &["12.3.2 – 12.3.5"]),
];

/// Each probe's own bound: a probe that hangs reports a failure, not a stalled report.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub const GET_CONFORMANCE: Operation = Operation::new("conformance.get", "conformance").sensitive_read();

/// The live conformance report (auditors and security administrators).
pub async fn report(state: &AppState, principal: &Principal) -> Result<ConformanceReport, Error> {
    principal.require_system(state, "audit.read")?;
    let started = Instant::now();
    let mut results: Vec<(Probe, ProbeResult)> = Vec::new();
    for &(probe, name, _) in PROBES {
        let (outcome, evidence) = match tokio::time::timeout(PROBE_TIMEOUT, run(state, probe)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => (Outcome::Fail, format!("the probe could not run: {e}")),
            Err(_) => (Outcome::Fail, format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        };
        results.push((
            probe,
            ProbeResult {
                name: name.into(),
                status: outcome_name(outcome).into(),
                evidence,
            },
        ));
    }
    let mut clauses = Vec::new();
    for row in parse_matrix(MATRIX) {
        let probes: Vec<ProbeResult> = PROBES
            .iter()
            .filter(|(_, _, ids)| ids.contains(&row.id.as_str()))
            .filter_map(|(p, _, _)| results.iter().find(|(q, _)| q == p).map(|(_, r)| r.clone()))
            .collect();
        let outcomes: Vec<Outcome> = probes.iter().map(|r| outcome_of(&r.status)).collect();
        let evidence = if probes.is_empty() {
            format!("documented: {}", row.documented)
        } else {
            probes
                .iter()
                .map(|r| format!("{}: {}", r.name, r.evidence))
                .collect::<Vec<_>>()
                .join("; ")
        };
        clauses.push(ClauseConformance {
            id: row.id,
            requirement: row.requirement,
            status: clause_status(&outcomes).into(),
            probe: !probes.is_empty(),
            evidence,
            tests: row.tests,
            probes,
        });
    }
    let count = |s: &str| clauses.iter().filter(|c| c.status == s).count() as u32;
    let report = ConformanceReport {
        probed: clauses.iter().filter(|c| c.probe).count() as u32,
        passed: count("pass"),
        failed: count("fail"),
        clauses,
        generated_at: state.now(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    note_detail("probed", report.probed);
    note_detail("passed", report.passed);
    note_detail("failed", report.failed);
    Ok(report)
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::NotApplicable => "not_applicable",
    }
}

fn outcome_of(s: &str) -> Outcome {
    match s {
        "pass" => Outcome::Pass,
        "not_applicable" => Outcome::NotApplicable,
        _ => Outcome::Fail,
    }
}

async fn run(state: &AppState, probe: Probe) -> Result<Verdict, Error> {
    let policy = || state.compliance();
    Ok(match probe {
        Probe::Tls11Refused => {
            let addr = listener(state)?;
            match exchange(addr, &tls_wire::client_hello([3, 2], &tls_wire::AEAD_SUITES, false)).await? {
                Answer::Alert(a) => (
                    Outcome::Pass,
                    format!("{addr}: a TLS 1.1 ClientHello got fatal alert {a}"),
                ),
                other => (Outcome::Fail, format!("{addr}: a TLS 1.1 ClientHello got {other:?}")),
            }
        }
        Probe::WeakSuitesRefused => {
            let addr = listener(state)?;
            let weak = exchange(addr, &tls_wire::client_hello([3, 3], &tls_wire::WEAK_SUITES, true)).await?;
            let strong = exchange(addr, &tls_wire::client_hello([3, 3], &tls_wire::AEAD_SUITES, true)).await?;
            match (weak, strong) {
                (Answer::Alert(a), Answer::Accepted(s)) => (
                    Outcome::Pass,
                    format!("{addr}: RC4/3DES/CBC suites only → alert {a}; AEAD suites → {s:#06x}"),
                ),
                (w, s) => (
                    Outcome::Fail,
                    format!("{addr}: weak suites only → {w:?}; AEAD suites → {s:?}"),
                ),
            }
        }
        Probe::PlainHttpRefused => {
            let addr = listener(state)?;
            match exchange(addr, b"GET /v1/health HTTP/1.1\r\nHost: probe\r\n\r\n").await? {
                Answer::Other(bytes) if bytes.starts_with(b"HTTP/") => {
                    (Outcome::Fail, format!("{addr}: plain HTTP got an HTTP answer"))
                }
                other => (
                    Outcome::Pass,
                    format!("{addr}: plain HTTP got no HTTP answer ({})", short(&other)),
                ),
            }
        }
        Probe::PasswordPolicy => {
            let p = policy().await?;
            judge::password_policy(p.password_min_length, p.password_min_char_classes)
        }
        Probe::PasswordHashes => {
            let mut conn = state.db.conn().await?;
            judge::password_hashes(&rampart_db::conformance::password_schemes(&mut conn).await?)
        }
        Probe::Lockout => {
            let p = policy().await?;
            judge::lockout(p.lockout_failure_attempts, p.lockout_duration_s)
        }
        Probe::AdminMfa => judge::admin_mfa(&policy().await?.mfa_required_roles, &["system-admin", "security-admin"]),
        Probe::TokenLifetime => {
            let p = policy().await?;
            judge::token_lifetime(p.token_expiration_s, p.token_idle_timeout_s)
        }
        Probe::PasswordLifecycle => {
            let p = policy().await?;
            judge::password_lifecycle(p.unique_last_password_count, p.change_password_upon_first_use)
        }
        Probe::AuditChain => {
            let keys = {
                let mut conn = state.db.conn().await?;
                rampart_db::audit::keys(&mut conn).await?
            };
            let r = rampart_audit::store::verify_store(&state.audit.store, &keys, Default::default())
                .await
                .map_err(|e| e.into_public())?;
            let problems = r.problems.len() as u64 + r.problems_omitted;
            (
                if r.ok { Outcome::Pass } else { Outcome::Fail },
                format!(
                    "{} records checked (hashes, chain, Merkle roots, checkpoint signatures), {problems} problems",
                    r.checked
                ),
            )
        }
        Probe::Retention => {
            let mut conn = state.db.conn().await?;
            let r = rampart_db::audit::retention(&mut conn).await?;
            judge::retention(r.operation_days, r.security_days)
        }
        Probe::Forwarding => {
            let s = crate::audit::load_forwarding(&state.db).await?;
            let f = state.audit.forwarding_state();
            judge::forwarding(s.enabled, &s.address, f.degraded, f.pending)
        }
        Probe::HsmCustody => hsm_custody(state).await?,
        Probe::DataDirPrivate => data_dir_private(state),
        Probe::ImagesSigned => {
            let mut conn = state.db.conn().await?;
            let (active, unverified) = rampart_db::conformance::image_signatures(&mut conn).await?;
            judge::images_signed(active, unverified)
        }
        Probe::VolumesEncrypted => {
            let mut conn = state.db.conn().await?;
            let (live, plain) = rampart_db::conformance::volume_encryption(&mut conn).await?;
            let types = rampart_db::conformance::unencrypted_volume_types(&mut conn).await?;
            judge::volumes_encrypted(live, plain, &types)
        }
    })
}

fn listener(state: &AppState) -> Result<SocketAddr, Error> {
    state
        .listen_addrs
        .first()
        .copied()
        .ok_or_else(|| Error::Unavailable("this controller has no API listener to probe".into()))
}

/// Sends `bytes` on a new connection and reads the first answer (empty when the server
/// closes without one).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Answer, Error> {
    let io = |e: std::io::Error| Error::Unavailable(format!("probe connection to {addr}: {e}"));
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    s.write_all(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 512];
    let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) | Err(_) => 0,
    };
    Ok(tls_wire::parse_answer(&buf[..n]))
}

fn short(a: &Answer) -> String {
    match a {
        Answer::Alert(x) => format!("TLS alert {x}"),
        Answer::Closed => "connection closed".into(),
        Answer::Accepted(s) => format!("ServerHello {s:#06x}"),
        Answer::Other(b) => format!("{} bytes that are not HTTP", b.len()),
    }
}

/// 13.3-9: keys are served by a PKCS#11 HSM, and a project's root keys there are sensitive
/// and cannot be extracted (asked of the token, not of our configuration).
async fn hsm_custody(state: &AppState) -> Result<Verdict, Error> {
    let Some(hsm) = state.kms.pkcs11.clone() else {
        return Ok((
            Outcome::Fail,
            format!("keys are not served by a PKCS#11 HSM ({})", state.kms.description),
        ));
    };
    let project = {
        let mut conn = state.db.conn().await?;
        rampart_db::identity::list_projects(&mut conn, None, None, 1)
            .await?
            .into_iter()
            .next()
            .map(|p| p.id)
    };
    let Some(project) = project else {
        return Ok((
            Outcome::Pass,
            format!("PKCS#11 token {}; no project yet", hsm.token_label()),
        ));
    };
    let report = tokio::task::spawn_blocking(move || hsm.root_key_report(project))
        .await
        .map_err(|e| Error::internal("HSM probe", e))?
        .map_err(|e| Error::Unavailable(format!("reading root key attributes: {e}")))?;
    let weak: Vec<String> = report
        .iter()
        .filter(|k| !k.sensitive || k.extractable || k.value_returned)
        .map(|k| k.label.clone())
        .collect();
    Ok((
        if weak.is_empty() && !report.is_empty() {
            Outcome::Pass
        } else {
            Outcome::Fail
        },
        format!(
            "PKCS#11 token: {} root keys of project {project}, {} not sensitive, extractable or readable",
            report.len(),
            weak.len()
        ),
    ))
}

/// 9.1-1e: the data directory and the secrets in it are private to the service.
fn data_dir_private(state: &AppState) -> Verdict {
    use std::os::unix::fs::PermissionsExt;
    let dir = &state.data_dir;
    let mut checked = Vec::new();
    let mut paths = vec![dir.clone()];
    // Directories, and the files that hold secrets (certificates are public).
    let secret = |p: &std::path::Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        ["key", "pin", "password", ".db"].iter().any(|m| name.contains(m))
    };
    for sub in ["tls", "hsm"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            paths.push(dir.join(sub));
            paths.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && secret(p)));
        }
    }
    paths.extend(
        ["rampart.db", "bootstrap-admin-password"]
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.exists()),
    );
    for p in &paths {
        let Ok(meta) = std::fs::metadata(p) else { continue };
        let v = judge::private_mode(&p.display().to_string(), meta.permissions().mode());
        if v.0 == Outcome::Fail {
            return v;
        }
        checked.push(p);
    }
    (
        Outcome::Pass,
        format!(
            "{} paths under {} grant nothing to group or others",
            checked.len(),
            dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe whose clause id is not a row of the matrix would never be reported.
    #[test]
    fn spec_15_3_every_probe_names_clauses_of_the_matrix() {
        let ids: Vec<String> = parse_matrix(MATRIX).into_iter().map(|c| c.id).collect();
        for (_, name, clauses) in PROBES {
            for c in *clauses {
                assert!(
                    ids.iter().any(|i| i == c),
                    "probe {name}: clause {c} is not in docs/conformance.md"
                );
            }
        }
    }
}
