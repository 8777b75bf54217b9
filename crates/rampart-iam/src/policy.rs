//! The security-compliance settings of the identity service (names after Keystone's
//! `[security_compliance]`). The identity capability stores them in the database and serves
//! `GET/PUT /v1/security-compliance`; these are the defaults.

use serde::{Deserialize, Serialize};

use crate::password::Policy;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityCompliance {
    pub password_min_length: usize,
    pub password_min_char_classes: usize,
    /// Lifetime of an API token.
    pub token_expiration_s: u64,
}

impl Default for SecurityCompliance {
    fn default() -> Self {
        SecurityCompliance {
            password_min_length: 12,
            password_min_char_classes: 2,
            token_expiration_s: 3600,
        }
    }
}

impl SecurityCompliance {
    pub fn password_policy(&self) -> Policy {
        Policy {
            min_length: self.password_min_length.max(8),
            min_char_classes: self.password_min_char_classes.max(2),
        }
    }
}
