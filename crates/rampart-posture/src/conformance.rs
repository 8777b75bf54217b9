//! Live conformance (issue 18): the clause catalogue read from `docs/conformance.md` (one row
//! per requirement, with the tests that prove it), how the outcomes of a clause's live probes
//! combine into its status, and the TLS wire messages the transport probes send. The probes
//! themselves run in the controller against the running cloud; this module is pure.

use serde::{Deserialize, Serialize};

/// One row of the conformance matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clause {
    pub id: String,
    pub requirement: String,
    pub mechanism: String,
    /// Test names quoted in the row (`spec_…`), which prove the mechanism in the suite.
    pub tests: Vec<String>,
    /// The matrix's own status column (`met`, `partial: …`, `planned`).
    pub documented: String,
}

/// Reads the rows of the matrix table: `| id | requirement | mechanism | tests | status |`.
/// Lines that are not rows of a clause (header, rule, prose) are skipped.
pub fn parse_matrix(markdown: &str) -> Vec<Clause> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells = split_row(line)?;
            let [id, requirement, mechanism, tests, status] = cells.as_slice() else {
                return None;
            };
            if !is_clause_id(id) {
                return None;
            }
            Some(Clause {
                id: id.to_string(),
                requirement: requirement.to_string(),
                mechanism: mechanism.to_string(),
                tests: quoted_tests(tests),
                documented: status.to_string(),
            })
        })
        .collect()
}

/// The cells of a Markdown table row. A `|` inside backticks is text, not a separator.
fn split_row(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    for c in inner.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    Some(cells)
}

/// `9.1-1a`, `12.3.4-1`, `10.1`, `15-2`, and the grouped rows `12.2-1, 12.2-2` and
/// `14.1-1 – 14.2-3`: a digit first, then no more than a few words of ids.
fn is_clause_id(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.len() <= 24
        && s.chars().all(|c| c.is_ascii_alphanumeric() || ".-, –".contains(c))
}

fn quoted_tests(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| t.starts_with("spec_") || t.contains("::spec_") || is_test_ident(t))
        .map(str::to_string)
        .collect()
}

fn is_test_ident(s: &str) -> bool {
    !s.is_empty()
        && s.contains('_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What one live probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    NotApplicable,
}

/// A clause's status from its probes: `fail` if any failed, `pass` if at least one passed and
/// none failed, `not_applicable` if every probe said so, `not_probed` without probes.
pub fn clause_status(outcomes: &[Outcome]) -> &'static str {
    if outcomes.is_empty() {
        "not_probed"
    } else if outcomes.contains(&Outcome::Fail) {
        "fail"
    } else if outcomes.contains(&Outcome::Pass) {
        "pass"
    } else {
        "not_applicable"
    }
}

/// The judgements of the live probes: pure functions of the facts a probe gathered, so each
/// is shown to fail on the facts of a cloud without its mechanism (unit tests below).
pub mod judge {
    use super::Outcome;

    pub type Verdict = (Outcome, String);

    fn verdict(ok: bool, evidence: String) -> Verdict {
        (if ok { Outcome::Pass } else { Outcome::Fail }, evidence)
    }

    /// 9.2-2: at least 8 characters and 2 of the 4 classes.
    pub fn password_policy(min_length: u32, min_classes: u32) -> Verdict {
        verdict(
            min_length >= 8 && min_classes >= 2,
            format!("password_min_length {min_length} (≥ 8), password_min_char_classes {min_classes} (≥ 2)"),
        )
    }

    /// 9.2-3: every stored password hash is argon2id. `schemes`: (scheme, users).
    pub fn password_hashes(schemes: &[(String, i64)]) -> Verdict {
        let total: i64 = schemes.iter().map(|(_, n)| n).sum();
        let other: i64 = schemes.iter().filter(|(s, _)| s != "argon2id").map(|(_, n)| n).sum();
        verdict(
            other == 0 && total > 0,
            format!("{total} password hashes, {other} not argon2id"),
        )
    }

    /// 13.2-6: a bounded number of failures locks the account for a while.
    pub fn lockout(attempts: u32, duration_s: u64) -> Verdict {
        verdict(
            (1..=10).contains(&attempts) && duration_s > 0,
            format!("locked after {attempts} failed logins (1..=10) for {duration_s} s (> 0)"),
        )
    }

    /// 13.2-2: administrators need a second factor.
    pub fn admin_mfa(required: &[String], admin_roles: &[&str]) -> Verdict {
        let missing: Vec<&str> = admin_roles
            .iter()
            .filter(|r| !required.iter().any(|q| q == *r))
            .copied()
            .collect();
        verdict(
            missing.is_empty(),
            if missing.is_empty() {
                format!("MFA required for {}", required.join(", "))
            } else {
                format!("no MFA required for {}", missing.join(", "))
            },
        )
    }

    /// 13.2-4: tokens expire, and an idle one dies sooner.
    pub fn token_lifetime(expiration_s: u64, idle_timeout_s: u64) -> Verdict {
        verdict(
            expiration_s > 0 && expiration_s <= 24 * 3600 && idle_timeout_s > 0,
            format!("tokens live {expiration_s} s (≤ 86400), idle timeout {idle_timeout_s} s (> 0)"),
        )
    }

    /// 13.1.2-4 and 13.1.2-5: no reuse of recent passwords; a first password is changed.
    pub fn password_lifecycle(unique_last: u32, change_at_first_use: bool) -> Verdict {
        verdict(
            unique_last >= 1 && change_at_first_use,
            format!("last {unique_last} passwords refused (≥ 1), change at first use {change_at_first_use}"),
        )
    }

    /// 13.4-6: operation and security records kept at least 180 days.
    pub fn retention(operation_days: u32, security_days: u32) -> Verdict {
        verdict(
            operation_days >= 180 && security_days >= 180,
            format!("operation records {operation_days} days, security records {security_days} days (≥ 180)"),
        )
    }

    /// 13.4-5 and 9.1-2: records leave the host for a remote log server, and get there.
    pub fn forwarding(enabled: bool, address: &str, degraded: bool, pending: u64) -> Verdict {
        if !enabled {
            return (
                Outcome::Fail,
                "no remote log server: audit forwarding is off (PUT /v1/audit/forwarding)".into(),
            );
        }
        verdict(
            !degraded,
            format!(
                "forwarding to {address}: {}, {pending} records queued",
                if degraded { "degraded" } else { "delivering" }
            ),
        )
    }

    /// 12.1-1: every image that can boot carries a verified signature.
    pub fn images_signed(active: i64, unverified: i64) -> Verdict {
        if active == 0 {
            return (Outcome::NotApplicable, "no active image".into());
        }
        verdict(
            unverified == 0,
            format!("{active} active images, {unverified} without a verified signature"),
        )
    }

    /// 12.3.2-2: tenant volumes are encrypted, and no type allows otherwise.
    pub fn volumes_encrypted(live: i64, plain: i64, plain_types: &[String]) -> Verdict {
        verdict(
            plain == 0 && plain_types.is_empty(),
            format!(
                "{live} volumes, {plain} unencrypted; types allowing plaintext: {}",
                if plain_types.is_empty() {
                    "none".to_string()
                } else {
                    plain_types.join(", ")
                }
            ),
        )
    }

    /// 9.1-1e: a path's permission bits grant nothing to group or others.
    pub fn private_mode(path: &str, mode: u32) -> Verdict {
        verdict(
            mode & 0o077 == 0,
            format!("{path} mode {:04o} (no group or other access)", mode & 0o7777),
        )
    }
}

/// TLS records the transport probes send and read: a probe speaks the protocol at the byte
/// level, so it can offer what no well-behaved client library would (TLS 1.1, CBC suites only).
pub mod tls_wire {
    /// RC4, 3DES and CBC suites: a server that answers any of them with a ServerHello accepts
    /// a cipher the spec calls weak (9.3-2).
    pub const WEAK_SUITES: [u16; 14] = [
        0x0005, // TLS_RSA_WITH_RC4_128_SHA
        0xc011, // TLS_ECDHE_RSA_WITH_RC4_128_SHA
        0xc007, // TLS_ECDHE_ECDSA_WITH_RC4_128_SHA
        0x000a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
        0xc012, // TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA
        0xc008, // TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA
        0x002f, // TLS_RSA_WITH_AES_128_CBC_SHA
        0x0035, // TLS_RSA_WITH_AES_256_CBC_SHA
        0x003c, // TLS_RSA_WITH_AES_128_CBC_SHA256
        0xc013, // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
        0xc014, // TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA
        0xc027, // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256
        0xc009, // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA
        0xc023, // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256
    ];
    /// ECDHE with AES-GCM or ChaCha20-Poly1305: the control hello that must be answered.
    pub const AEAD_SUITES: [u16; 6] = [0xc02b, 0xc02c, 0xcca9, 0xc02f, 0xc030, 0xcca8];

    /// A ClientHello record for `version` (`[3, 2]` is TLS 1.1, `[3, 3]` TLS 1.2) offering
    /// `suites`. With `tls12_extensions` it carries what a TLS 1.2 client needs for an ECDHE
    /// handshake (groups, point formats, signature schemes, extended master secret, secure
    /// renegotiation), so that only the suites can be the reason for a refusal.
    pub fn client_hello(version: [u8; 2], suites: &[u16], tls12_extensions: bool) -> Vec<u8> {
        let mut hello = version.to_vec();
        hello.extend([0x42; 32]);
        hello.push(0);
        hello.extend(((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            hello.extend(s.to_be_bytes());
        }
        hello.extend([1, 0]);
        if tls12_extensions {
            let mut ext = Vec::new();
            let mut add = |kind: u16, body: &[u8]| {
                ext.extend(kind.to_be_bytes());
                ext.extend((body.len() as u16).to_be_bytes());
                ext.extend(body);
            };
            add(0x000a, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
            add(0x000b, &[1, 0]);
            add(
                0x000d,
                &[
                    0, 12, 0x04, 0x03, 0x05, 0x03, 0x08, 0x04, 0x08, 0x05, 0x04, 0x01, 0x08, 0x07,
                ],
            );
            add(0x0017, &[]);
            add(0xff01, &[0]);
            hello.extend((ext.len() as u16).to_be_bytes());
            hello.extend(ext);
        }
        let mut handshake = vec![0x01];
        handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend(hello);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    /// How a server answered a ClientHello.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Answer {
        /// A ServerHello choosing this suite.
        Accepted(u16),
        /// A fatal alert with this description (40 handshake_failure, 70 protocol_version).
        Alert(u8),
        /// The connection closed without a TLS answer.
        Closed,
        /// Bytes that are neither: an HTTP answer to a TLS hello would land here.
        Other(Vec<u8>),
    }

    pub fn parse_answer(reply: &[u8]) -> Answer {
        match reply {
            [] => Answer::Closed,
            [0x15, _, _, _, _, 2, alert, ..] => Answer::Alert(*alert),
            [0x16, _, _, _, _, 2, rest @ ..] if rest.len() > 3 + 2 + 32 => {
                let sid = rest[3 + 2 + 32] as usize;
                let at = 3 + 2 + 32 + 1 + sid;
                match rest.get(at..at + 2) {
                    Some(s) => Answer::Accepted(u16::from_be_bytes([s[0], s[1]])),
                    None => Answer::Other(reply.to_vec()),
                }
            }
            _ => Answer::Other(reply.iter().take(32).copied().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tls_wire::{Answer, parse_answer};
    use super::*;

    const MATRIX: &str = "\
# Conformance matrix

| id | requirement | mechanism in Rampart | tests | status |
|---|---|---|---|---|
| 9.2-3 | salted hash | argon2id `m=19456` | `spec_9_2_3_argon2id_with_owasp_parameters_and_salt` | met |
| 9.3-4 | HTTPS | rustls; `a|b` in code | `spec_9_3_4_tls_1_1_handshake_is_refused`, `spec_9_3_4_plain_http_gets_no_http_answer` (root) | met |
| 9.1-3 | trusted boot | | | planned |
Prose with | pipes | that is not a row.
";

    #[test]
    fn spec_15_3_matrix_rows_become_clauses_with_their_tests() {
        let rows = parse_matrix(MATRIX);
        let ids: Vec<&str> = rows.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["9.2-3", "9.3-4", "9.1-3"]);
        assert_eq!(rows[0].tests, ["spec_9_2_3_argon2id_with_owasp_parameters_and_salt"]);
        assert_eq!(rows[1].mechanism, "rustls; `a|b` in code", "a pipe in code is text");
        assert_eq!(
            rows[1].tests,
            [
                "spec_9_3_4_tls_1_1_handshake_is_refused",
                "spec_9_3_4_plain_http_gets_no_http_answer"
            ]
        );
        assert_eq!(rows[2].documented, "planned");
        assert!(rows[2].tests.is_empty());
    }

    #[test]
    fn spec_15_3_the_real_matrix_has_every_clause_once() {
        let rows = parse_matrix(include_str!("../../../docs/conformance.md"));
        assert!(rows.len() >= 80, "{} rows", rows.len());
        let mut ids: Vec<&str> = rows.iter().map(|c| c.id.as_str()).collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "a clause appears twice");
        assert!(rows.iter().any(|c| c.id == "9.3-4" && !c.tests.is_empty()));
    }

    #[test]
    fn spec_15_3_a_clause_fails_if_any_probe_fails() {
        use Outcome::*;
        assert_eq!(clause_status(&[]), "not_probed");
        assert_eq!(clause_status(&[Pass, Fail]), "fail");
        assert_eq!(clause_status(&[Pass, NotApplicable]), "pass");
        assert_eq!(clause_status(&[NotApplicable]), "not_applicable");
    }

    /// Each judgement fails on the facts of a cloud without its mechanism.
    #[test]
    fn spec_15_3_each_probe_judgement_fails_without_its_mechanism() {
        use super::judge::*;
        let fails = |v: Verdict| v.0 == Outcome::Fail;
        let passes = |v: Verdict| v.0 == Outcome::Pass;
        assert!(passes(password_policy(12, 2)) && fails(password_policy(6, 2)) && fails(password_policy(12, 1)));
        let argon = vec![("argon2id".to_string(), 3)];
        assert!(passes(password_hashes(&argon)));
        assert!(fails(password_hashes(&[("argon2id".into(), 3), ("other".into(), 1)])));
        assert!(fails(password_hashes(&[])), "no hash at all proves nothing");
        assert!(passes(lockout(5, 900)) && fails(lockout(0, 900)) && fails(lockout(5, 0)) && fails(lockout(50, 900)));
        let roles = ["system-admin", "security-admin"];
        assert!(passes(admin_mfa(
            &["system-admin".into(), "security-admin".into(), "auditor".into()],
            &roles
        )));
        let v = admin_mfa(&["auditor".into()], &roles);
        assert!(v.1.contains("system-admin"), "{}", v.1);
        assert!(fails(v));
        assert!(passes(token_lifetime(3600, 900)) && fails(token_lifetime(0, 900)) && fails(token_lifetime(3600, 0)));
        assert!(
            passes(password_lifecycle(5, true))
                && fails(password_lifecycle(0, true))
                && fails(password_lifecycle(5, false))
        );
        assert!(passes(retention(180, 365)) && fails(retention(30, 365)));
        assert!(fails(forwarding(false, "", false, 0)) && fails(forwarding(true, "x:6514", true, 9)));
        assert!(passes(forwarding(true, "x:6514", false, 0)));
        assert_eq!(images_signed(0, 0).0, Outcome::NotApplicable);
        assert!(passes(images_signed(2, 0)) && fails(images_signed(2, 1)));
        assert!(passes(volumes_encrypted(3, 0, &[])) && fails(volumes_encrypted(3, 1, &[])));
        assert!(fails(volumes_encrypted(0, 0, &["plain".into()])));
        assert!(
            passes(private_mode("/d", 0o40700))
                && fails(private_mode("/d", 0o40755))
                && fails(private_mode("/f", 0o640))
        );
    }

    #[test]
    fn spec_9_3_2_server_answers_are_told_apart() {
        assert_eq!(parse_answer(&[]), Answer::Closed);
        assert_eq!(parse_answer(&[0x15, 3, 3, 0, 2, 2, 40]), Answer::Alert(40));
        let mut hello = vec![0x16, 3, 3, 0, 0x4a, 2, 0, 0, 0x46, 3, 3];
        hello.extend([7; 32]);
        hello.push(0);
        hello.extend([0xc0, 0x2b, 0]);
        assert_eq!(parse_answer(&hello), Answer::Accepted(0xc02b));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 400 Bad Request\r\n"),
            Answer::Other(_)
        ));
        let record = super::tls_wire::client_hello([3, 2], &[0xc02b], false);
        assert_eq!(&record[..3], &[0x16, 3, 1]);
        assert_eq!(record[5], 1, "a ClientHello");
    }
}
