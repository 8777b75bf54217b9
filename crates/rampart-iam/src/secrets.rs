//! Random secrets from the operating system and their stored form.
//!
//! API tokens and join-token secrets carry 256 bits of entropy, so a plain SHA-256 is the right
//! stored form (no salt or stretching needed, lookups stay an index probe); comparisons of
//! secrets against stored hashes are constant-time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rampart_common::Sensitive;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of API tokens, so secret scanners can recognise a leaked one.
pub const API_TOKEN_PREFIX: &str = "rpt_";

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("operating system random source");
    b
}

/// 32 random bytes, base64url.
pub fn random_secret() -> Sensitive {
    Sensitive::new(URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// A new API token.
pub fn new_api_token() -> Sensitive {
    Sensitive::new(format!("{API_TOKEN_PREFIX}{}", random_secret().expose()))
}

/// Stored form of a high-entropy secret: SHA-256, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time check of `secret` against its stored hash.
pub fn verify_secret(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// The CSRF token of a cookie session: a one-way function of the session token, so the server
/// needs no state to check it, and a page that learns it cannot recover the session cookie.
pub fn csrf_token(session_token: &str) -> String {
    hash_secret(&format!("rampart-csrf-v1\0{session_token}"))
}

/// Constant-time check of a presented CSRF token against the session's.
pub fn verify_csrf_token(session_token: &str, presented: &str) -> bool {
    csrf_token(session_token).as_bytes().ct_eq(presented.as_bytes()).into()
}

/// A password a person can type: `groups` groups of 5 characters from an alphabet without
/// look-alikes, joined by '-'; about 5.9 bits per character.
pub fn random_password(groups: usize) -> Sensitive {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut out = String::with_capacity(groups * 6);
    let mut i = 0;
    while i < groups * 5 {
        let b = random_bytes::<1>()[0];
        // Rejection sampling keeps the distribution uniform.
        if (b as usize) < 256 - 256 % ALPHABET.len() {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            i += 1;
        }
    }
    Sensitive::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_13_3_7_secrets_are_random_and_hashed() {
        let a = new_api_token();
        let b = new_api_token();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(API_TOKEN_PREFIX));
        assert_eq!(a.expose().len(), 4 + 43);
        let h = hash_secret(a.expose());
        assert!(verify_secret(a.expose(), &h));
        assert!(!verify_secret(b.expose(), &h));
        assert!(!h.contains(a.expose()));
    }

    #[test]
    fn random_passwords_have_every_class_often_and_right_shape() {
        let p = random_password(5);
        assert_eq!(p.expose().len(), 29);
        assert_eq!(p.expose().matches('-').count(), 4);
    }
}
