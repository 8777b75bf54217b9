//! Passwords: argon2id hashes in PHC strings (spec 9.2-3, 13.1.2-2) and the strength policy
//! (spec 9.2-2, 13.1.2-1). Policy failures name each rule broken and never echo the password.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::Serialize;

/// OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;
/// Longer inputs are refused before hashing, so nobody can make us hash megabytes.
pub const MAX_LENGTH: usize = 1024;

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed")]
    Hash,
}

/// Hashes a password with a fresh random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// Checks a password against a stored PHC string; any malformed hash is a mismatch.
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_LENGTH {
        return false;
    }
    match PasswordHash::new(stored) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash computed once per process to spend the same time on unknown users as on known ones,
/// so response times do not reveal which user names exist.
pub fn verify_dummy(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("dummy password for timing").expect("hash"));
    let _ = verify(password, stored);
}

/// The password strength rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub min_length: usize,
    /// How many of upper case, lower case, digit and special characters must appear.
    pub min_char_classes: usize,
    /// Minimum zxcvbn score (0 to 4).
    pub min_strength: u8,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_length: 12,
            min_char_classes: 2,
            min_strength: 3,
        }
    }
}

/// One broken rule, as reported in `details.rules` of a 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: &'static str,
    pub message: String,
}

pub fn char_classes(password: &str) -> usize {
    let upper = password.chars().any(|c| c.is_uppercase());
    let lower = password.chars().any(|c| c.is_lowercase());
    let digit = password.chars().any(|c| c.is_ascii_digit());
    let special = password.chars().any(|c| !c.is_alphanumeric());
    [upper, lower, digit, special].iter().filter(|b| **b).count()
}

impl Policy {
    /// Every rule `password` breaks for user `username`; `user_inputs` (name, email...) make
    /// the strength estimate penalise passwords built from them.
    pub fn check_full(&self, password: &str, username: &str, user_inputs: &[&str]) -> Vec<Violation> {
        let mut v = self.check(password, username);
        if password.len() <= MAX_LENGTH && self.min_strength > 0 {
            let score = zxcvbn::zxcvbn(password, user_inputs).score() as u8;
            if score < self.min_strength {
                v.push(Violation {
                    rule: "min_strength",
                    message: format!(
                        "too easy to guess (strength {score} of 4, at least {} needed)",
                        self.min_strength
                    ),
                });
            }
        }
        v
    }

    /// The character rules only (length, classes, user name).
    pub fn check(&self, password: &str, username: &str) -> Vec<Violation> {
        let mut v = Vec::new();
        let length = password.chars().count();
        if length < self.min_length {
            v.push(Violation {
                rule: "min_length",
                message: format!("at least {} characters", self.min_length),
            });
        }
        if password.len() > MAX_LENGTH {
            v.push(Violation {
                rule: "max_length",
                message: format!("at most {MAX_LENGTH} bytes"),
            });
        }
        if char_classes(password) < self.min_char_classes {
            v.push(Violation {
                rule: "min_char_classes",
                message: format!(
                    "characters of at least {} of the classes upper case, lower case, digit, special",
                    self.min_char_classes
                ),
            });
        }
        if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
            v.push(Violation {
                rule: "not_username",
                message: "must not contain the user name".into(),
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_9_2_3_argon2id_with_owasp_parameters_and_salt() {
        let a = hash("correct horse battery staple").unwrap();
        let b = hash("correct horse battery staple").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery staple", &a));
        assert!(!verify("correct horse battery stapler", &a));
        assert!(!verify("x", "not a hash"));
        assert!(!verify(&"x".repeat(MAX_LENGTH + 1), &a));
    }

    #[test]
    fn spec_9_2_2_length_and_two_of_four_classes() {
        let p = Policy::default();
        let rules = |pw: &str| p.check(pw, "alice").into_iter().map(|v| v.rule).collect::<Vec<_>>();
        assert_eq!(rules("short1A"), ["min_length"]);
        assert_eq!(rules("alllowercaseletters"), ["min_char_classes"]);
        assert!(rules("lowercase and spaces").is_empty());
        assert!(rules("Upper-and-lower").is_empty());
        assert_eq!(rules("my name is Alice!"), ["not_username"]);
        let eight = Policy {
            min_length: 8,
            min_char_classes: 2,
            min_strength: 0,
        };
        assert!(eight.check("abcdef1!", "bob").is_empty());
        assert_eq!(eight.check("abcdefg", "bob").len(), 2);
    }

    #[test]
    fn violations_never_echo_the_password() {
        let pw = "Sekr1t-canary";
        let strict = Policy {
            min_length: 64,
            min_char_classes: 4,
            min_strength: 4,
        };
        for v in strict.check_full(pw, "x", &["x"]) {
            assert!(!v.message.contains(pw));
        }
    }
}

#[cfg(test)]
mod strength_tests {
    use super::*;

    #[test]
    fn spec_13_1_2_1_strength_score_uses_the_users_own_words() {
        let p = Policy::default();
        let rules = |pw: &str, inputs: &[&str]| {
            p.check_full(pw, "jdoe", inputs)
                .into_iter()
                .map(|v| v.rule)
                .collect::<Vec<_>>()
        };
        for weak in ["P@ssw0rd2026", "Qwerty123456!", "Abcd1234abcd"] {
            assert!(rules(weak, &[]).contains(&"min_strength"), "{weak} passes as strong");
        }
        assert!(rules("wombat-lantern-ossify-quartz", &[]).is_empty());
        // Built from the user's own details: weak for that user.
        assert!(rules("Vandersloot1987!", &[]).is_empty(), "strong for a stranger");
        assert!(
            rules("Vandersloot1987!", &["vandersloot"]).contains(&"min_strength"),
            "weak for Ms Vandersloot"
        );
    }
}
