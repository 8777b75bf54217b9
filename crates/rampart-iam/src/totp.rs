//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of skew) and recovery
//! codes. A code is accepted once: its time step must be above the last step used.

use rampart_common::Sensitive;
use totp_rs::{Builder, Secret};

pub const ISSUER: &str = "Rampart";

/// A new random 160-bit secret, base32.
pub fn new_secret() -> Sensitive {
    let bytes = crate::secrets::random_bytes::<20>();
    Sensitive::new(Secret::from(bytes.to_vec()).to_base32())
}

fn totp(secret_b32: &str, account: &str) -> Option<totp_rs::Totp> {
    let secret = Secret::try_from_base32(secret_b32).ok()?;
    Builder::new()
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
        .ok()
}

/// `otpauth://totp/...` for authenticator apps.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Option<Sensitive> {
    totp(secret_b32, account)?.to_url().ok().map(Sensitive::new)
}

/// The time step `code` belongs to, if it is valid at `unix_time` and newer than `last_step`.
pub fn verify(secret_b32: &str, code: &str, unix_time: u64, last_step: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = totp(secret_b32, "x")?.check(code, unix_time)?;
    (step > last_step).then_some(step)
}

/// The code of `unix_time` (for tests and the CLI's self-check).
pub fn code_at(secret_b32: &str, unix_time: u64) -> Option<String> {
    Some(totp(secret_b32, "x")?.generate(unix_time).to_string())
}

/// Ten one-time recovery codes of 80 random bits each (`xxxx-xxxx-xxxx-xxxx`, base32).
pub fn new_recovery_codes() -> Vec<Sensitive> {
    (0..10)
        .map(|_| {
            let b32 = Secret::from(crate::secrets::random_bytes::<10>().to_vec())
                .to_base32()
                .to_lowercase();
            Sensitive::new(format!(
                "{}-{}-{}-{}",
                &b32[0..4],
                &b32[4..8],
                &b32[8..12],
                &b32[12..16]
            ))
        })
        .collect()
}

/// Recovery codes are compared without separators and case.
pub fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_2_2_rfc6238_codes_are_accepted_once() {
        let s = new_secret();
        assert_eq!(s.expose().len(), 32);
        let t = 1_764_390_000;
        let code = code_at(s.expose(), t).unwrap();
        let step = verify(s.expose(), &code, t, 0).expect("valid code");
        assert_eq!(step, t / 30);
        assert!(verify(s.expose(), &code, t, step).is_none(), "replay refused");
        // One step of skew either way.
        assert!(verify(s.expose(), &code, t + 30, 0).is_some());
        assert!(verify(s.expose(), &code, t + 90, 0).is_none());
        assert!(verify(s.expose(), "12345", t, 0).is_none());
        assert!(verify(s.expose(), "abcdef", t, 0).is_none());
        let uri = otpauth_uri(s.expose(), "admin@default").unwrap();
        assert!(
            uri.expose().starts_with("otpauth://totp/Rampart:admin%40default?"),
            "{}",
            uri.expose()
        );
    }

    #[test]
    fn rfc6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890", T = 59 s, 8 digits: 94287082;
        // with 6 digits the last six: 287082.
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        assert_eq!(code_at(&secret, 59).unwrap(), "287082");
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        let set: std::collections::HashSet<_> = codes.iter().map(|c| c.expose().to_string()).collect();
        assert_eq!(set.len(), 10);
        assert_eq!(normalise_recovery_code("ABCD-efgh-1234-5678"), "abcdefgh12345678");
    }
}
