//! Checking a person's secrets with every account rule of spec 13.2: the per-source throttle,
//! allowed sources, the lockout (an attempt is reserved before a secret is checked), the
//! enabled flag, the validity window and the second factor. Every refusal is the same
//! `invalid_credentials` and costs the same argon2 work.

use std::net::IpAddr;

use rampart_api::SecurityCompliance;
use rampart_common::{Error, Sensitive};
use rampart_db::identity::{self, User};
use rampart_iam::authz::{Target, action};
use rampart_iam::lockout::Lockout;
use rampart_iam::rules::{source_allowed, within_validity};
use rampart_iam::{password, secrets, totp};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

/// Runs argon2 off the async threads; without a stored hash it does the same work and fails,
/// so an unknown account answers as slowly as a known one.
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

/// The context a TOTP secret is sealed under (a sealed secret moved to another user opens no more).
pub fn totp_context(user_id: Uuid) -> String {
    format!("totp:{user_id}")
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
        let lockout = Lockout::from_policy(policy);
        let mut conn = state.db.conn().await?;
        let ok = identity::reserve_attempt(&mut conn, user.id, lockout.threshold, state.now()).await?;
        Ok(ok.then(|| Attempt { user: user.clone(), ip }))
    }

    /// The secret was wrong: counts toward the lockout (locking the account at the threshold)
    /// and toward the source's limit.
    pub async fn fail(self, state: &AppState, policy: &SecurityCompliance, reason: &str) -> Result<(), Error> {
        let lockout = Lockout::from_policy(policy);
        let until = lockout.until(state.now());
        let mut conn = state.db.conn().await?;
        let locked = identity::fail_attempt(&mut conn, self.user.id, lockout.threshold, until).await?;
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
    let lockout = Lockout::from_policy(policy);
    let until = lockout.until(state.now());
    let mut conn = state.db.conn().await?;
    let locked = identity::record_failure(&mut conn, user.id, lockout.threshold, until).await?;
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

/// A user and the domain's allowed ranges, for a login attempt.
pub struct Candidate {
    pub user: User,
    pub domain_name: String,
    pub domain_cidrs: Vec<String>,
}

async fn find_candidate(state: &AppState, username: &str, domain: Option<&str>) -> Result<Option<Candidate>, Error> {
    let mut conn = state.db.conn().await?;
    let Some(d) = identity::find_domain(&mut conn, domain.unwrap_or("default"))
        .await?
        .filter(|d| d.enabled)
    else {
        return Ok(None);
    };
    Ok(identity::find_user(&mut conn, d.id, username)
        .await?
        .map(|user| Candidate {
            user,
            domain_name: d.name,
            domain_cidrs: d.allowed_source_cidrs,
        }))
}

/// Refuses like a wrong secret, after the same argon2 work, counting toward the source's limit.
async fn refuse(
    state: &AppState,
    policy: &SecurityCompliance,
    ip: IpAddr,
    secret: &str,
    reason: &str,
) -> Result<Error, Error> {
    verify_password(secret, None).await?;
    crate::audit::note_detail("reason", reason);
    source_failed(state, policy, ip);
    Ok(Error::InvalidCredentials)
}

/// Checks a user's password with every account rule of spec 13.2: per-source throttle,
/// allowed sources, lockout (an attempt is reserved before the password is checked), enabled,
/// validity window. Every failure is the same `invalid_credentials` and costs the same argon2
/// work; wrong passwords of a known account count toward its lockout. On success the attempt
/// is still open: the caller ends it (`succeed`, `fail` on a wrong second factor, `release`).
pub async fn check_user_password(
    state: &AppState,
    username: &str,
    domain: Option<&str>,
    password: &str,
    ip: IpAddr,
) -> Result<(Candidate, Attempt), Error> {
    let policy = state.compliance().await?;
    let now = state.now();
    check_source(state, &policy, ip)?;
    let Some(c) = find_candidate(state, username, domain).await? else {
        // The name is not logged nor recorded: people type passwords into user fields.
        tracing::info!("authentication failed: unknown user");
        return Err(refuse(state, &policy, ip, password, "unknown_user").await?);
    };
    crate::audit::note_login_actor(
        c.user.id,
        &c.user.name,
        &c.domain_name,
        rampart_audit::AuthMethod::Password,
    );
    // A source the account may never log in from cannot lock it either: an operator who
    // narrows an administrator's sources makes it impossible to lock out from elsewhere.
    if !source_allowed(&policy, &c.domain_cidrs, &c.user.allowed_source_cidrs, ip) {
        tracing::warn!(user = %c.user.name, ip = %ip, "authentication refused: source address not allowed");
        return Err(refuse(state, &policy, ip, password, "source_address_not_allowed").await?);
    }
    let Some(attempt) = Attempt::reserve(state, &policy, &c.user, ip).await? else {
        // No count while locked: the lock does not grow with an attacker's guesses.
        tracing::warn!(user = %c.user.name, "authentication refused: account locked");
        return Err(refuse(state, &policy, ip, password, "locked").await?);
    };
    let ok = verify_password(password, c.user.password_hash.clone()).await?;
    if !ok {
        crate::audit::note_detail("reason", "wrong_password");
        attempt.fail(state, &policy, "wrong password").await?;
        return Err(Error::InvalidCredentials);
    }
    let refusal = if !c.user.enabled {
        Some("user disabled")
    } else if !within_validity(c.user.valid_from, c.user.valid_until, now) {
        Some("outside the account's validity window")
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(user = %c.user.name, ip = %ip, reason, "authentication refused");
        crate::audit::note_detail("reason", reason.replace(' ', "_").replace('\'', ""));
        attempt.release(state).await?;
        return Err(Error::InvalidCredentials);
    }
    Ok((c, attempt))
}

/// The second factor of an account that has one, within an open attempt: `mfa_required`
/// (attempt released) without a code, `invalid_credentials` (attempt failed) with a wrong one.
pub async fn require_second_factor(
    state: &AppState,
    policy: &SecurityCompliance,
    user: &User,
    attempt: Attempt,
    code: Option<&Sensitive>,
    what: &str,
) -> Result<Attempt, Error> {
    let Some(code) = code else {
        crate::audit::note_detail("reason", "second_factor_missing");
        attempt.release(state).await?;
        return Err(Error::Unauthorized {
            code: "mfa_required",
            message: format!(
                "this account has a second factor: {what} needs `totp` (a current code or a recovery code)"
            ),
        });
    };
    if !check_second_factor(state, user, code.expose()).await? {
        crate::audit::note_detail("reason", "wrong_second_factor");
        attempt.fail(state, policy, "wrong second factor").await?;
        return Err(Error::InvalidCredentials);
    }
    Ok(attempt)
}

/// How recent a login must be to count as a fresh proof of the owner's secrets.
const FRESH_LOGIN_S: i64 = 300;

/// A fresh proof that the owner is present, for what outlives the session (an application
/// credential): a session opened in the last five minutes with every factor the account has,
/// or the password (and a second-factor code) given again with the call. A stolen older
/// token alone is not enough; a wrong password counts toward the lockout as at login.
pub async fn reauthenticate(
    state: &AppState,
    principal: &Principal,
    user: &User,
    password: Option<&Sensitive>,
    totp: Option<&Sensitive>,
) -> Result<(), Error> {
    let fresh = principal.application_credential.is_none()
        && state.now() - principal.authenticated_at <= time::Duration::seconds(FRESH_LOGIN_S)
        && (principal.mfa || !user.mfa_enrolled());
    if fresh && password.is_none() {
        return Ok(());
    }
    let Some(password) = password else {
        return Err(Error::Unauthorized {
            code: "reauthentication_required",
            message: format!(
                "this session is older than {FRESH_LOGIN_S} s: send `password` (and `totp` if you have a second factor), or log in again"
            ),
        });
    };
    let policy = state.compliance().await?;
    check_source(state, &policy, principal.client_ip)?;
    let Some(attempt) = Attempt::reserve(state, &policy, user, principal.client_ip).await? else {
        verify_password(password.expose(), None).await?;
        crate::audit::note_detail("reason", "locked");
        return Err(Error::InvalidCredentials);
    };
    if !verify_password(password.expose(), user.password_hash.clone()).await? {
        crate::audit::note_detail("reason", "wrong_password");
        attempt
            .fail(state, &policy, "wrong password at re-authentication")
            .await?;
        return Err(Error::InvalidCredentials);
    }
    let attempt = if user.mfa_enrolled() {
        require_second_factor(state, &policy, user, attempt, totp, "re-authentication").await?
    } else {
        attempt
    };
    attempt.succeed(state).await
}

/// The caller's own account, for what it does to itself (`self.manage`).
pub async fn own_user(state: &AppState, principal: &Principal) -> Result<User, Error> {
    principal.require(state, action::SELF_MANAGE, Target::User(principal.user.id))?;
    let mut conn = state.db.conn().await?;
    identity::user_by_id(&mut conn, principal.user.id)
        .await?
        .ok_or_else(|| Error::not_found("no such user"))
}
