//! Identity logic shared by the routes: the security-compliance policy, role expansion into
//! an authorization subject, credential checks with lockout, and the password rules.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rampart_api::SecurityCompliance;
use rampart_common::Error;
use rampart_db::identity::{self, Holder, Scope, User};
use rampart_db::{groups, meta};
use rampart_iam::authz::{PROJECT_ROLES, SYSTEM_ROLES, Subject};
use rampart_iam::password::{self, Violation};
use rampart_iam::{net, secrets, totp};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::AppState;

const COMPLIANCE_KEY: &str = "security_compliance";

/// The stored policy, or the defaults.
pub async fn load_compliance(conn: &mut rampart_db::Conn) -> Result<SecurityCompliance, Error> {
    Ok(match meta::get(conn, COMPLIANCE_KEY).await? {
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| Error::internal("reading the security-compliance policy", e))?
        }
        None => SecurityCompliance::default(),
    })
}

pub async fn store_compliance(conn: &mut rampart_db::Conn, p: &SecurityCompliance) -> Result<(), Error> {
    let json = serde_json::to_string(p).map_err(|e| Error::internal("encoding the security-compliance policy", e))?;
    meta::set(conn, COMPLIANCE_KEY, &json).await?;
    Ok(())
}

/// A role assignment expanded to built-in roles (custom roles are bundles of them).
pub async fn expanded_assignments(conn: &mut rampart_db::Conn, user_id: Uuid) -> Result<Vec<(Scope, String)>, Error> {
    let assignments = identity::role_assignments(conn, user_id).await?;
    let custom = groups::roles(conn).await?;
    let mut out: Vec<(Scope, String)> = Vec::new();
    for a in assignments {
        if rampart_api::is_builtin_role(&a.role) {
            out.push((a.scope, a.role));
        } else if let Some(c) = custom.iter().find(|c| c.name == a.role) {
            out.extend(c.implies.iter().map(|r| (a.scope, r.clone())));
        }
    }
    out.sort_by(|a, b| (a.0.parts(), &a.1).cmp(&(b.0.parts(), &b.1)));
    out.dedup();
    Ok(out)
}

/// The authorization subject of a session: all the user's roles, narrowed to one project for
/// a project-scoped token, and to the credential's roles for an application credential.
pub fn subject(
    user_id: Uuid,
    expanded: &[(Scope, String)],
    project: Option<Uuid>,
    only_roles: Option<&[String]>,
) -> Subject {
    let mut s = Subject {
        user_id,
        ..Default::default()
    };
    for (scope, role) in expanded {
        match scope {
            Scope::System if SYSTEM_ROLES.contains(&role.as_str()) => s.system_roles.push(role.clone()),
            Scope::Domain(d) if role == "domain-admin" => s.domain_admin_of.push(*d),
            Scope::Project(p) if PROJECT_ROLES.contains(&role.as_str()) => {
                if project.is_some_and(|only| only != *p) {
                    continue;
                }
                match only_roles {
                    None => s.project_roles.push((*p, role.clone())),
                    // A credential carries the roles it names that the holder's role includes.
                    Some(wanted) => s.project_roles.extend(
                        wanted
                            .iter()
                            .filter(|w| implied_roles(role).contains(&w.as_str()))
                            .map(|w| (*p, w.clone())),
                    ),
                }
            }
            _ => {}
        }
    }
    if only_roles.is_some() {
        // An application credential acts inside its project only.
        s.system_roles.clear();
        s.domain_admin_of.clear();
    }
    s.system_roles.dedup();
    s.project_roles.sort();
    s.project_roles.dedup();
    s
}

/// A project role and the roles it includes (project-admin ⊃ member ⊃ reader).
pub fn implied_roles(role: &str) -> &'static [&'static str] {
    match role {
        "project-admin" => &["project-admin", "member", "reader"],
        "member" => &["member", "reader"],
        "reader" => &["reader"],
        "key-admin" => &["key-admin"],
        "key-user" => &["key-user"],
        _ => &[],
    }
}

/// Role names for a token response: those that apply to the session.
pub fn role_names(s: &Subject) -> Vec<String> {
    let mut names: BTreeSet<String> = s.system_roles.iter().cloned().collect();
    if !s.domain_admin_of.is_empty() {
        names.insert("domain-admin".into());
    }
    names.extend(s.project_roles.iter().map(|(_, r)| r.clone()));
    names.into_iter().collect()
}

/// Whether the policy wants a second factor from this user.
pub fn mfa_required(policy: &SecurityCompliance, expanded: &[(Scope, String)]) -> bool {
    expanded.iter().any(|(_, r)| policy.mfa_required_roles.contains(r))
}

/// Whether the client may authenticate from `ip`: the global, domain and user ranges must all
/// allow it.
pub fn source_allowed(policy: &SecurityCompliance, domain_cidrs: &[String], user: &User, ip: IpAddr) -> bool {
    [
        &policy.allowed_source_cidrs,
        &domain_cidrs.to_vec(),
        &user.allowed_source_cidrs,
    ]
    .iter()
    .all(|list| {
        net::parse_cidrs("allowed_source_cidrs", list)
            .map(|r| net::allowed(&r, ip))
            .unwrap_or(false)
    })
}

/// Whether the account may be used at `now` (its validity window).
pub fn within_validity(user: &User, now: OffsetDateTime) -> bool {
    user.valid_from.is_none_or(|f| now >= f) && user.valid_until.is_none_or(|u| now < u)
}

pub fn password_expires_at(policy: &SecurityCompliance, user: &User) -> Option<OffsetDateTime> {
    if policy.password_expires_days == 0 {
        return None;
    }
    user.password_changed_at
        .map(|t| t + time::Duration::days(policy.password_expires_days as i64))
}

/// Runs argon2 off the async threads.
pub async fn verify_password(password: &str, stored: Option<String>) -> Result<bool, Error> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || match stored {
        Some(hash) => password::verify(&password, &hash),
        None => {
            password::verify_dummy(&password);
            false
        }
    })
    .await
    .map_err(|e| Error::internal("verifying a password", e))
}

pub async fn hash_password(password: &str) -> Result<String, Error> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| Error::internal("hashing a password", e))?
        .map_err(|e| Error::internal("hashing a password", e))
}

fn lockout_event(user: &User, policy: &SecurityCompliance, until: OffsetDateTime) {
    tracing::warn!(user = %user.name, until = %rampart_common::time::rfc3339(until), attempts = policy.lockout_failure_attempts, "account locked after consecutive failures");
    let mut details = serde_json::Map::new();
    details.insert("locked_until".into(), rampart_common::time::rfc3339(until).into());
    details.insert("attempts".into(), policy.lockout_failure_attempts.into());
    crate::audit::note(|s| {
        s.events.push((
            "auth.lockout".into(),
            rampart_audit::record::Target::new("user", Some(user.id.to_string()), None),
            rampart_audit::record::AuditResult::success(200),
            details,
        ))
    });
}

fn source_window(policy: &SecurityCompliance) -> std::time::Duration {
    std::time::Duration::from_secs(policy.source_failure_window_s)
}

/// 429 before anything is checked when `ip` made too many failed attempts lately (per-source
/// throttle beside per-account lockout, spec 13.2-6).
pub fn check_source(state: &AppState, policy: &SecurityCompliance, ip: IpAddr) -> Result<(), Error> {
    match state.login_throttle.check(
        ip,
        policy.source_failure_limit,
        source_window(policy),
        std::time::Instant::now(),
    ) {
        None => Ok(()),
        Some(wait) => {
            tracing::warn!(ip = %ip, "authentication refused: too many failures from this source");
            crate::audit::note_detail("reason", "source_throttled");
            Err(Error::RateLimited {
                retry_after_s: wait.as_secs().max(1),
            })
        }
    }
}

/// Counts a failed authentication from `ip` toward its per-source limit.
pub fn source_failed(state: &AppState, policy: &SecurityCompliance, ip: IpAddr) {
    state.login_throttle.record_failure(
        ip,
        policy.source_failure_limit,
        source_window(policy),
        std::time::Instant::now(),
    );
}

/// One authentication attempt on a known account, reserved before its secret is checked
/// (`identity::reserve_attempt`): it counts as a failure until it ends otherwise, so a burst
/// of parallel guesses evaluates at most `lockout_failure_attempts` secrets and a lock reached
/// during the burst refuses everything after it. Dropped unfinished, it stays a failure.
pub struct Attempt {
    user: User,
    ip: IpAddr,
}

impl Attempt {
    /// Reserves an attempt; `None` while the account is locked or its remaining attempts are
    /// all in flight (the caller answers exactly as for a wrong secret).
    pub async fn reserve(
        state: &AppState,
        policy: &SecurityCompliance,
        user: &User,
        ip: IpAddr,
    ) -> Result<Option<Attempt>, Error> {
        let mut conn = state.db.conn().await?;
        let ok = identity::reserve_attempt(&mut conn, user.id, policy.lockout_failure_attempts, state.now()).await?;
        Ok(ok.then(|| Attempt { user: user.clone(), ip }))
    }

    /// The secret was wrong: counts toward the lockout (locking the account at the threshold)
    /// and toward the source's limit.
    pub async fn fail(self, state: &AppState, policy: &SecurityCompliance, reason: &str) -> Result<(), Error> {
        let until = state.now() + time::Duration::seconds(policy.lockout_duration_s as i64);
        let mut conn = state.db.conn().await?;
        let locked = identity::fail_attempt(&mut conn, self.user.id, policy.lockout_failure_attempts, until).await?;
        tracing::warn!(user = %self.user.name, reason, "authentication failed");
        source_failed(state, policy, self.ip);
        if locked {
            lockout_event(&self.user, policy, until);
        }
        Ok(())
    }

    /// The secret was right but the attempt goes no further (disabled account, second factor
    /// still to come, a refused new password): it no longer counts either way.
    pub async fn release(self, state: &AppState) -> Result<(), Error> {
        let mut conn = state.db.conn().await?;
        identity::release_attempt(&mut conn, self.user.id).await?;
        Ok(())
    }

    /// Every secret was right: the failure count restarts. Refused (`invalid_credentials`) when
    /// a parallel failure locked the account while this attempt was being checked.
    pub async fn succeed(self, state: &AppState) -> Result<(), Error> {
        let mut conn = state.db.conn().await?;
        if identity::succeed_attempt(&mut conn, self.user.id, state.now()).await? {
            Ok(())
        } else {
            tracing::warn!(user = %self.user.name, "authentication refused: the account locked meanwhile");
            crate::audit::note_detail("reason", "locked");
            Err(Error::InvalidCredentials)
        }
    }
}

/// Counts a failed authentication that no attempt was reserved for (a wrong code while
/// confirming a second-factor enrolment) against the lockout policy and the source's limit.
pub async fn count_failure(
    state: &AppState,
    policy: &SecurityCompliance,
    user: &User,
    ip: IpAddr,
    reason: &str,
) -> Result<(), Error> {
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let until = now + time::Duration::seconds(policy.lockout_duration_s as i64);
    let locked = identity::record_failure(&mut conn, user.id, policy.lockout_failure_attempts, until).await?;
    tracing::warn!(user = %user.name, reason, "authentication failed");
    source_failed(state, policy, ip);
    if locked {
        lockout_event(user, policy, until);
    }
    Ok(())
}

/// Checks a second factor: a TOTP code (accepted once) or an unused recovery code.
pub async fn check_second_factor(state: &AppState, user: &User, code: &str) -> Result<bool, Error> {
    let now = state.now();
    let Some(sealed) = &user.totp_secret else {
        return Ok(false);
    };
    let secret = state
        .credkey
        .open(sealed, &totp_context(user.id))
        .map_err(|e| Error::internal("opening a TOTP secret", e))?;
    let mut conn = state.db.conn().await?;
    if let Some(step) = totp::verify(
        secret.expose(),
        code,
        now.unix_timestamp().max(0) as u64,
        user.totp_last_counter.max(0) as u64,
    ) {
        // The conditional update makes two concurrent logins with one code impossible.
        return Ok(identity::use_totp_step(&mut conn, user.id, step as i64).await?);
    }
    let normalised = totp::normalise_recovery_code(code);
    if normalised.len() == 16 {
        let used = identity::use_recovery_code(&mut conn, user.id, &secrets::hash_secret(&normalised), now).await?;
        if used {
            tracing::warn!(user = %user.name, "a recovery code was used");
        }
        return Ok(used);
    }
    Ok(false)
}

pub fn totp_context(user_id: Uuid) -> String {
    format!("totp:{user_id}")
}

/// Every rule a new password breaks: strength, deny-lists, and (for a user's own change)
/// reuse of the last N passwords.
pub async fn password_violations(
    state: &AppState,
    policy: &SecurityCompliance,
    user: &User,
    new_password: &str,
    check_history: bool,
) -> Result<Vec<Violation>, Error> {
    let rules = rampart_iam::policy::password_policy(policy);
    let mut inputs: Vec<&str> = vec![&user.name];
    if let Some(e) = &user.email {
        inputs.push(e);
    }
    let mut v = rules.check_full(new_password, &user.name, &inputs);
    if state
        .deny_lists
        .find(new_password, &policy.password_deny_list_files)
        .is_some()
    {
        v.push(Violation {
            rule: "deny_list",
            message: "is on a list of common or forbidden passwords".into(),
        });
    }
    if check_history && policy.unique_last_password_count > 0 {
        let mut conn = state.db.conn().await?;
        let history = identity::password_history(&mut conn, user.id, policy.unique_last_password_count).await?;
        drop(conn);
        let pw = new_password.to_string();
        let reused = tokio::task::spawn_blocking(move || history.iter().any(|h| password::verify(&pw, h)))
            .await
            .map_err(|e| Error::internal("checking password history", e))?;
        if reused {
            v.push(Violation {
                rule: "history",
                message: format!(
                    "must differ from the last {} passwords",
                    policy.unique_last_password_count
                ),
            });
        }
    }
    Ok(v)
}

pub fn policy_violation(violations: Vec<Violation>) -> Error {
    Error::PolicyViolation {
        message: "the new password does not meet the password policy".into(),
        details: Some(serde_json::json!({ "rules": violations })),
    }
}

/// Which holder a user id or group id is, for assignment routes.
pub fn holder(user: Option<Uuid>, group: Option<Uuid>) -> Result<Holder, Error> {
    match (user, group) {
        (Some(u), None) => Ok(Holder::User(u)),
        (None, Some(g)) => Ok(Holder::Group(g)),
        _ => Err(Error::validation("give exactly one of `user` and `group`")),
    }
}
