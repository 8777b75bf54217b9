//! Keeping secrets out of audit records and logs (spec 13.4-7, 13.3-4).
//!
//! Two layers, both applied by [`crate::record::seal`] before a record is hashed, so nothing
//! sensitive ever reaches the store, an export or the log manager:
//!
//! * by **name**: a member of `details` whose name contains a sensitive word (password, token,
//!   secret, totp, private key, plaintext, …, in any case and with `_`, `-`, `.` or camelCase
//!   between words) keeps its name but its value becomes `"[redacted]"`;
//! * by **shape**: any string that looks like a credential whatever its name (PEM private key,
//!   `Bearer …`/`Basic …` authorisation values, JWTs, `otpauth://` URIs, URLs with a password)
//!   is replaced as well. Free-text fields of the record (user agent) go through the same check.
//!
//! Redaction is deliberately over-eager: a false positive costs an auditor one field, a false
//! negative leaks a credential into a store that must keep it for 180 days.

use serde_json::{Map, Value};

pub const REDACTED: &str = "[redacted]";

/// Words that make a member name sensitive when they appear as a whole word of it.
const SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "totp",
    "otp",
    "plaintext",
    "cookie",
    "authorization",
    "credential",
    "credentials",
    "pin",
    "seed",
    "pkcs8",
    "privatekey",
    "apikey",
];

/// Word pairs that are sensitive together (`private_key`, `api-key`, `keyMaterial`, `data_key`).
const SENSITIVE_PAIRS: &[(&str, &str)] = &[
    ("private", "key"),
    ("api", "key"),
    ("access", "key"),
    ("secret", "key"),
    ("session", "key"),
    ("data", "key"),
    ("key", "material"),
    ("client", "secret"),
    ("recovery", "code"),
    ("recovery", "codes"),
    ("join", "token"),
];

/// Splits a member name into lowercase words at `_ - . space` and lower→upper case changes.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if matches!(c, '_' | '-' | '.' | ' ' | '/' | ':') {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Last words that make a name describe a secret rather than hold one (`token_id`,
/// `password_min_length`, `token_expiration_s`): policy values an auditor must see.
const METADATA_SUFFIXES: &[&str] = &[
    "id",
    "ids",
    "uid",
    "name",
    "names",
    "type",
    "kind",
    "length",
    "len",
    "min",
    "max",
    "count",
    "days",
    "seconds",
    "s",
    "ms",
    "age",
    "classes",
    "policy",
    "expiration",
    "expires",
    "expiry",
    "at",
    "version",
    "versions",
    "required",
    "enabled",
    "rules",
    "roles",
    "algorithm",
    "format",
    "period",
    "size",
    "status",
];

/// Whether a member called `name` must not have its value recorded.
pub fn is_sensitive_name(name: &str) -> bool {
    let w = words(name);
    if w.len() > 1 && w.last().is_some_and(|l| METADATA_SUFFIXES.contains(&l.as_str())) {
        return false;
    }
    let joined: String = w.concat();
    if SENSITIVE_WORDS.iter().any(|s| w.iter().any(|x| x == s)) {
        return true;
    }
    // Names written without separators (`privatekey`, `clientsecret`, `newpassword`).
    if [
        "password",
        "passphrase",
        "secret",
        "token",
        "privatekey",
        "apikey",
        "plaintext",
        "totp",
    ]
    .iter()
    .any(|s| joined.contains(s))
    {
        return true;
    }
    w.windows(2)
        .any(|p| SENSITIVE_PAIRS.iter().any(|(a, b)| p[0] == *a && p[1] == *b))
}

/// Whether a string value has the shape of a credential, whatever it is called.
pub fn looks_like_secret(s: &str) -> bool {
    let t = s.trim_start();
    let lower_head: String = t.chars().take(16).flat_map(char::to_lowercase).collect();
    if lower_head.starts_with("bearer ") || lower_head.starts_with("basic ") || lower_head.starts_with("otpauth:") {
        return true;
    }
    if s.contains("PRIVATE KEY-----") {
        return true;
    }
    // A JWT: three base64url segments, the first one a JSON header (`eyJ`).
    if t.starts_with("eyJ") && t.split('.').count() == 3 && t.len() > 30 {
        return true;
    }
    // URL userinfo with a password: scheme://user:pass@host
    if let Some(i) = s.find("://") {
        let rest = &s[i + 3..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@')
            && authority[..at].contains(':')
        {
            return true;
        }
    }
    false
}

/// Returns a free-text field fit for a record: shape-redacted, control characters replaced by
/// spaces (they would forge line breaks in line-based exports), at most `max_chars` characters.
pub fn scrub_text(s: &str, max_chars: usize) -> String {
    if looks_like_secret(s) {
        return REDACTED.to_string();
    }
    s.chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Redacts a JSON value in place; returns how many values were replaced.
pub fn redact_value(v: &mut Value) -> usize {
    match v {
        Value::Object(map) => redact_map(map),
        Value::Array(items) => items.iter_mut().map(redact_value).sum(),
        Value::String(s) if looks_like_secret(s) => {
            *s = REDACTED.to_string();
            1
        }
        _ => 0,
    }
}

pub fn redact_map(map: &mut Map<String, Value>) -> usize {
    let mut n = 0;
    for (k, v) in map.iter_mut() {
        if is_sensitive_name(k) {
            // A flag cannot carry a secret; a number can (a TOTP code, a PIN).
            if !matches!(v, Value::Null | Value::Bool(_)) && v.as_str() != Some(REDACTED) {
                *v = Value::String(REDACTED.to_string());
                n += 1;
            }
        } else {
            n += redact_value(v);
        }
    }
    n
}

/// Maximum nesting of `details`; deeper values become the string `"[truncated]"`.
pub const MAX_DETAILS_DEPTH: usize = 8;
/// Maximum length of any string inside `details`.
pub const MAX_DETAILS_STRING: usize = 1024;

/// Maximum members of any object or array inside `details`; the rest are dropped.
pub const MAX_DETAILS_MEMBERS: usize = 64;
/// Maximum length of a member name inside `details`.
pub const MAX_DETAILS_KEY: usize = 128;
/// Maximum size of a record's `details` as JSON. Records are kept for months (13.4-1) and a
/// full disk stops the API, so what a request can put into one is bounded whatever the route.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// Set in `details` when members were dropped to respect [`MAX_DETAILS_BYTES`].
pub const TRUNCATED_MARK: &str = "details_truncated";

/// Prepares `details` for a record: redaction, then every number that canonical JSON cannot
/// carry exactly (fractions, integers beyond ±2^53−1) becomes its decimal string, long strings
/// and names are cut, deep nesting and long lists are truncated, and the whole is kept within
/// [`MAX_DETAILS_BYTES`] (whole members are dropped, in order, and [`TRUNCATED_MARK`] set), so
/// sealing can never fail on caller data and no caller can write a large record.
pub fn normalise_details(mut details: Map<String, Value>) -> Map<String, Value> {
    redact_map(&mut details);
    let mut root = Value::Object(details);
    normalise(&mut root, 0);
    let Value::Object(details) = root else {
        unreachable!("normalise keeps an object an object")
    };
    if json_len(&Value::Object(details.clone())) <= MAX_DETAILS_BYTES {
        return details;
    }
    // Room for the mark itself: `,"details_truncated":true`.
    let budget = MAX_DETAILS_BYTES - TRUNCATED_MARK.len() - 8;
    let mut kept = Map::new();
    let mut used = 2;
    for (k, v) in details {
        let len = json_len(&Value::String(k.clone())) + 1 + json_len(&v) + 1;
        if used + len <= budget {
            used += len;
            kept.insert(k, v);
        }
    }
    kept.insert(TRUNCATED_MARK.into(), Value::Bool(true));
    kept
}

fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

fn normalise(v: &mut Value, depth: usize) {
    if depth > MAX_DETAILS_DEPTH && matches!(v, Value::Object(_) | Value::Array(_)) {
        *v = Value::String("[truncated]".into());
        return;
    }
    match v {
        Value::Number(n) => {
            let safe = n.as_i64().is_some_and(|i| {
                (-crate::canonical::MAX_SAFE_INTEGER..=crate::canonical::MAX_SAFE_INTEGER).contains(&i)
            });
            if !safe {
                *v = Value::String(n.to_string());
            }
        }
        Value::String(s) if s.chars().count() > MAX_DETAILS_STRING => {
            *s = s.chars().take(MAX_DETAILS_STRING).collect();
        }
        Value::Array(items) => {
            items.truncate(MAX_DETAILS_MEMBERS);
            items.iter_mut().for_each(|i| normalise(i, depth + 1))
        }
        Value::Object(map) => {
            let members = std::mem::take(map);
            for (k, mut v) in members.into_iter().take(MAX_DETAILS_MEMBERS) {
                normalise(&mut v, depth + 1);
                let k = if k.chars().count() > MAX_DETAILS_KEY {
                    k.chars().take(MAX_DETAILS_KEY).collect()
                } else {
                    k
                };
                map.insert(k, v);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_13_4_7_sensitive_names_are_recognised_in_every_spelling() {
        for name in [
            "password",
            "new_password",
            "currentPassword",
            "X-Auth-Token",
            "token",
            "api_key",
            "apiKey",
            "private_key",
            "privateKeyPem",
            "client_secret",
            "totp",
            "totp_code",
            "plaintext",
            "key_material",
            "Authorization",
            "cookie",
            "mfa_secret",
            "join_token",
            "data_key",
            "recovery_codes",
            "passphrase",
            "clientsecret",
        ] {
            assert!(is_sensitive_name(name), "{name} should be sensitive");
        }
        for name in [
            "name",
            "project",
            "key_id",
            "algorithm",
            "username",
            "cidr",
            "spinning",
            "description",
            "key_version",
            "token_expiration_s",
            "password_min_length",
            "mfa_required_roles",
            "password_expires_days",
        ] {
            assert!(!is_sensitive_name(name), "{name} should be kept");
        }
    }

    #[test]
    fn spec_13_4_7_redaction_masks_nested_values_and_credential_shapes() {
        let mut v = json!({
            "name": "web-1",
            "user": {"name": "alice", "password": "hunter2-canary", "roles": ["member"]},
            "keys": [{"key_id": "k1", "private_key": {"pem": "x"}}],
            "header": "Bearer abc.def.ghi",
            "note": "-----BEGIN PRIVATE KEY-----\nMIIE...",
            "db": "postgres://rampart:s3cret@db/rampart",
            "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
            "otp": null,
            "totp_code": 123456,
            "change_password_upon_first_use": true,
        });
        let n = redact_value(&mut v);
        assert_eq!(
            v,
            json!({
                "name": "web-1",
                "user": {"name": "alice", "password": REDACTED, "roles": ["member"]},
                "keys": [{"key_id": "k1", "private_key": REDACTED}],
                "header": REDACTED,
                "note": REDACTED,
                "db": REDACTED,
                "jwt": REDACTED,
                "otp": null,
                "totp_code": REDACTED,
                "change_password_upon_first_use": true,
            })
        );
        assert_eq!(n, 7);
        assert!(!v.to_string().contains("hunter2-canary"));
    }

    #[test]
    fn spec_13_4_7_free_text_is_scrubbed_and_bounded() {
        assert_eq!(scrub_text("curl/8.1\r\nX-Forged: 1", 100), "curl/8.1  X-Forged: 1");
        assert_eq!(scrub_text("Basic dXNlcjpwYXNz", 100), REDACTED);
        assert_eq!(scrub_text(&"a".repeat(600), 512).len(), 512);
    }

    #[test]
    fn spec_13_4_1_details_of_any_request_are_bounded_in_size() {
        // What a flooding caller sent: 5000 context members of 1000 bytes (~5 MB).
        let big: Map<String, Value> = (0..5000)
            .map(|i| (format!("k{i:05}{}", "x".repeat(300)), Value::String("v".repeat(1000))))
            .collect();
        let mut details = Map::new();
        details.insert("key_version".into(), 3.into());
        details.insert("encryption_context".into(), Value::Object(big));
        details.insert("list".into(), Value::Array(vec![Value::from(1); 10_000]));
        let out = normalise_details(details);
        let len = serde_json::to_vec(&out).unwrap().len();
        assert!(len <= MAX_DETAILS_BYTES, "{len} bytes");
        assert_eq!(out["key_version"], 3, "small members survive");
        assert_eq!(out[TRUNCATED_MARK], true);
        // Within the bound nothing is dropped or marked.
        let mut small = Map::new();
        small.insert("list".into(), Value::Array(vec![Value::from(1); 100]));
        small.insert("k".repeat(200), "v".into());
        let out = normalise_details(small);
        assert_eq!(out["list"].as_array().unwrap().len(), MAX_DETAILS_MEMBERS);
        assert!(out.keys().all(|k| k.chars().count() <= MAX_DETAILS_KEY));
        assert!(out.get(TRUNCATED_MARK).is_none());
    }

    #[test]
    fn spec_13_4_1_details_are_normalised_for_canonical_json() {
        let d = json!({"ratio": 0.5, "big": 18446744073709551615_u64, "ok": 7, "s": "x".repeat(2000),
                       "deep": [[[[[[[[[[1]]]]]]]]]]});
        let out = normalise_details(d.as_object().unwrap().clone());
        assert_eq!(out["ratio"], json!("0.5"));
        assert_eq!(out["big"], json!("18446744073709551615"));
        assert_eq!(out["ok"], json!(7));
        assert_eq!(out["s"].as_str().unwrap().len(), MAX_DETAILS_STRING);
        assert!(out["deep"].to_string().contains("[truncated]"));
        crate::canonical::to_canonical(&Value::Object(out)).expect("always canonicalisable");
    }
}

/// Detail members that name a tenant's encryption context.
const CONTEXT_FIELDS: &[&str] = &["encryption_context"];
/// Detail members and target kinds that name a tenant's key.
const KEY_ID_FIELDS: &[&str] = &["key_id", "source_key_id", "target_key_id"];

/// `sha256:` and the hex SHA-256 of a value's canonical JSON: what system readers see in place
/// of a tenant's encryption context or key id.
pub fn digest(v: &Value) -> String {
    let bytes = crate::canonical::to_canonical(v).unwrap_or_else(|_| v.to_string().into_bytes());
    format!("sha256:{}", crate::hash::Hash::sha256(&[&bytes]).to_hex())
}

/// The view of a record for readers at system scope (spec 13.1.1-2: no system role learns a
/// tenant's data): an encryption context becomes its SHA-256 digest (`encryption_context_sha256`,
/// still comparable between records), and with `hide_key_ids` the tenant's key ids become
/// digests too. Only the view changes: the stored record, its hash and the chain are untouched
/// (`rampart audit verify` and exports read the store).
pub fn for_system_readers(rec: &mut crate::record::AuditRecord, hide_key_ids: bool) {
    for f in CONTEXT_FIELDS {
        if let Some(v) = rec.details.remove(*f) {
            rec.details.insert(format!("{f}_sha256"), Value::String(digest(&v)));
        }
    }
    if hide_key_ids {
        for f in KEY_ID_FIELDS {
            if let Some(v) = rec.details.get_mut(*f) {
                *v = Value::String(digest(v));
            }
        }
        if rec.target.kind == "key"
            && let Some(id) = rec.target.id.as_mut()
        {
            *id = digest(&Value::String(id.clone()));
        }
    }
}

#[cfg(test)]
mod system_reader_tests {
    use super::*;
    use crate::record::{Actor, AuditResult, ChainHead, NewRecord, Target, seal};

    #[test]
    fn spec_13_1_1_2_system_readers_see_digests_not_tenant_contexts_or_key_ids() {
        let key = "3f2b1c0d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let rec = NewRecord::new(
            time::OffsetDateTime::UNIX_EPOCH,
            Actor::anonymous(),
            "key.encrypt",
            Target::new("key", Some(key.into()), Some("p".into())),
            AuditResult::success(200),
        )
        .detail("encryption_context", serde_json::json!({"tenant": "acme-payroll"}))
        .detail("key_version", 2);
        let sealed = seal(&ChainHead::GENESIS, rec).unwrap();
        let mut auditor = sealed.clone();
        for_system_readers(&mut auditor, false);
        let text = serde_json::to_string(&auditor).unwrap();
        assert!(!text.contains("acme-payroll"), "{text}");
        assert!(text.contains("encryption_context_sha256"));
        assert_eq!(auditor.target.id.as_deref(), Some(key), "auditors keep key ids");
        let mut admin = sealed.clone();
        for_system_readers(&mut admin, true);
        let text = serde_json::to_string(&admin).unwrap();
        assert!(!text.contains(key) && !text.contains("acme-payroll"), "{text}");
        assert_eq!(admin.details["key_version"], 2);
        // The same context gives the same digest: records stay comparable.
        assert_eq!(
            admin.details["encryption_context_sha256"],
            auditor.details["encryption_context_sha256"]
        );
        assert_eq!(sealed.hash, admin.hash, "the stored record is untouched");
    }
}
