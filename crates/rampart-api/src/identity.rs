//! Identity resources of `/v1`: domains, projects, users, groups, roles, role assignments,
//! the security-compliance policy, MFA and application credentials.

use rampart_common::Sensitive;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// The built-in roles (13.1.1-2). `system-admin`, `security-admin` and `auditor` are held at
/// system scope, `domain-admin` on a domain, the others on a project.
pub const BUILTIN_ROLES: &[(&str, &str)] = &[
    (
        "system-admin",
        "Operates the cloud: nodes, domains, projects, users; cannot read audit retention settings, change them, or use tenant keys",
    ),
    (
        "security-admin",
        "Owns security policy: security compliance, unlocking accounts, audit reading and retention",
    ),
    ("auditor", "Reads the audit trail and verifies it; changes nothing else"),
    (
        "domain-admin",
        "Administers the projects, users and groups of one domain",
    ),
    (
        "project-admin",
        "Administers one project: its resources and who has roles on it",
    ),
    ("member", "Creates and uses the resources of a project"),
    ("reader", "Reads the resources of a project"),
    ("key-admin", "Manages the lifecycle of a project's keys"),
    ("key-user", "Uses a project's keys for cryptographic operations"),
];

pub fn is_builtin_role(name: &str) -> bool {
    BUILTIN_ROLES.iter().any(|(n, _)| *n == name)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Domain {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub enabled: bool,
    /// Source addresses allowed to use accounts of this domain (empty: no restriction here).
    pub allowed_source_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainCreate {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub allowed_source_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainUpdate {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub allowed_source_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    pub name: String,
    /// Domain name or id (default `default`).
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub description: String,
    pub enabled: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<OffsetDateTime>,
    pub allowed_source_cidrs: Vec<String>,
    pub password_change_required: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub password_expires_at: Option<OffsetDateTime>,
    /// Set while the account is locked after failed logins.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub locked_until: Option<OffsetDateTime>,
    pub mfa_enrolled: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_login_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub name: String,
    /// Domain name or id (default `default`).
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub password: Option<Sensitive>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<OffsetDateTime>,
    #[serde(default)]
    pub allowed_source_cidrs: Option<Vec<String>>,
    /// Default: `change_password_upon_first_use` of the security-compliance policy.
    #[serde(default)]
    pub password_change_required: Option<bool>,
}

/// A PATCH: absent fields stay; `null` clears `valid_from`/`valid_until`/`email`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, with = "double_option_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<Option<OffsetDateTime>>,
    #[serde(default, with = "double_option_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<Option<OffsetDateTime>>,
    #[serde(default)]
    pub allowed_source_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub password_change_required: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().and_then(|x| x.as_ref()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Ok(Some(Option::<String>::deserialize(d)?))
    }
}

mod double_option_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(v: &Option<Option<OffsetDateTime>>, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::option::serialize(&v.and_then(|x| x), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<OffsetDateTime>>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "time::serde::rfc3339::option")] Option<OffsetDateTime>);
        Ok(Some(W::deserialize(d)?.0))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    /// The new password; the user must change it at next login unless
    /// `password_change_required` is false.
    pub password: Sensitive,
    #[serde(default)]
    pub password_change_required: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Group {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupCreate {
    pub name: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdate {
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: String,
    pub builtin: bool,
    /// Built-in roles this role grants (a custom role is a bundle of built-in roles).
    pub implies: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleCreate {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub implies: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleUpdate {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub implies: Option<Vec<String>>,
}

/// Where a role applies: exactly one of the three.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignmentCreate {
    #[serde(default)]
    pub user: Option<Uuid>,
    #[serde(default)]
    pub group: Option<Uuid>,
    pub role: String,
    pub scope: ScopeRef,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RoleAssignment {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Uuid>,
    pub role: String,
    pub scope: ScopeRef,
}

/// The password, lockout, MFA and session policy (`GET/PUT /v1/security-compliance`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityCompliance {
    /// Consecutive failures that lock an account (0: never lock).
    pub lockout_failure_attempts: u32,
    pub lockout_duration_s: u64,
    /// Failed authentications one source address may make within `source_failure_window_s`
    /// before its further attempts are refused unchecked (429), whatever account they name: one
    /// client cannot lock every account (0: no per-source limit).
    pub source_failure_limit: u32,
    pub source_failure_window_s: u64,
    /// At least 8.
    pub password_min_length: u32,
    /// Of upper case, lower case, digit, special: 2 to 4.
    pub password_min_char_classes: u32,
    /// Minimum zxcvbn score, 0 to 4, computed with the user's name and email as inputs.
    pub password_min_strength: u8,
    /// Operator deny-lists (one password per line), re-read when they change.
    pub password_deny_list_files: Vec<String>,
    /// A new password may not equal any of the last N (0: off).
    pub unique_last_password_count: u32,
    /// Days before a password may be changed again (not for required changes).
    pub minimum_password_age_days: u32,
    /// Days a password lives (0: never expires).
    pub password_expires_days: u32,
    /// The token response warns this many days before expiry.
    pub password_expiry_warning_days: u32,
    /// Accounts an admin creates or resets must change their password at first login.
    pub change_password_upon_first_use: bool,
    /// Holders of these roles must use a second factor.
    pub mfa_required_roles: Vec<String>,
    pub token_expiration_s: u64,
    /// A token unused for this long dies (0: no idle limit).
    pub token_idle_timeout_s: u64,
    /// Source addresses allowed to authenticate at all (empty: any).
    pub allowed_source_cidrs: Vec<String>,
}

impl Default for SecurityCompliance {
    fn default() -> Self {
        SecurityCompliance {
            lockout_failure_attempts: 5,
            lockout_duration_s: 1800,
            source_failure_limit: 30,
            source_failure_window_s: 900,
            password_min_length: 12,
            password_min_char_classes: 2,
            password_min_strength: 3,
            password_deny_list_files: vec![],
            unique_last_password_count: 5,
            minimum_password_age_days: 0,
            password_expires_days: 0,
            password_expiry_warning_days: 14,
            change_password_upon_first_use: true,
            mfa_required_roles: vec![
                "system-admin".into(),
                "security-admin".into(),
                "domain-admin".into(),
                // Reads the whole trail: who did what, from where (issue 13).
                "auditor".into(),
            ],
            token_expiration_s: 3600,
            token_idle_timeout_s: 1800,
            allowed_source_cidrs: vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TotpEnrollment {
    /// Base32 secret, shown once.
    pub secret: Sensitive,
    pub otpauth_uri: Sensitive,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirm {
    pub code: Sensitive,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    /// One-time codes usable instead of a TOTP code; shown once.
    pub codes: Vec<Sensitive>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplicationCredentialCreate {
    pub name: String,
    /// Project name or id; the credential acts only there.
    pub project: String,
    /// Subset of the user's roles on the project (default: all of them, as of now).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Your current password. A credential outlives the session that makes it, so making one
    /// needs a fresh proof of the password (and of the second factor, below): either a session
    /// opened in the last five minutes, or these fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sensitive>,
    /// A current TOTP code or recovery code, when the account has a second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<Sensitive>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplicationCredential {
    pub id: Uuid,
    pub name: String,
    pub project_id: Uuid,
    pub roles: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// Only in the creation response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Sensitive>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplicationCredentialLogin {
    pub id: Uuid,
    pub secret: Sensitive,
}
