//! Passwords: the rules a new one must meet, and a user changing their own (which works
//! without a token: first use, an expired password).

use std::net::IpAddr;

use rampart_api::{PasswordChange, SecurityCompliance};
use rampart_common::Error;
use rampart_db::identity::{self, User};
use rampart_db::meta;
use rampart_iam::password::{self, Violation};
use rampart_iam::rules;

use super::verify::{check_user_password, hash_password, require_second_factor};
use crate::audit::operations::Operation;
use crate::bootstrap::{BOOTSTRAP_ADMIN_KEY, BOOTSTRAP_SECURITY_KEY, PASSWORD_FILE, SECURITY_PASSWORD_FILE};
use crate::state::AppState;

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

pub const CHANGE_PASSWORD: Operation = Operation::new("auth.password.change", "user");

/// Change your password with the current one (and the second factor when the account has
/// one); every token and application credential of the account is revoked.
pub async fn change_password(state: &AppState, ip: IpAddr, req: PasswordChange) -> Result<(), Error> {
    let (c, attempt) = check_user_password(
        state,
        &req.username,
        req.domain.as_deref(),
        req.current_password.expose(),
        ip,
    )
    .await?;
    let user = c.user;
    let policy = state.compliance().await?;
    let now = state.now();
    // With a second factor, the password alone does not change the password: a phished
    // password must not lock the owner out of their account.
    let attempt = if user.mfa_enrolled() {
        require_second_factor(state, &policy, &user, attempt, req.totp.as_ref(), "a password change").await?
    } else {
        attempt
    };
    let mut violations = password_violations(state, &policy, &user, req.new_password.expose(), true).await?;
    if req.new_password.expose() == req.current_password.expose() {
        violations.push(Violation {
            rule: "not_current",
            message: "must differ from the current password".into(),
        });
    }
    let forced = rules::password_change_due(&policy, user.password_change_required, user.password_changed_at, now);
    violations.extend(rules::minimum_age_violation(
        &policy,
        user.password_changed_at,
        forced,
        now,
    ));
    if !violations.is_empty() {
        attempt.release(state).await?;
        return Err(policy_violation(violations));
    }
    attempt.succeed(state).await?;
    let hash = hash_password(req.new_password.expose()).await?;
    let mut tx = state.db.begin().await?;
    identity::set_password(&mut tx, user.id, &hash, false, now).await?;
    let revoked = identity::revoke_user_tokens(&mut tx, user.id, now).await?;
    let bootstrap = [
        (meta::get(&mut tx, BOOTSTRAP_ADMIN_KEY).await?, PASSWORD_FILE),
        (
            meta::get(&mut tx, BOOTSTRAP_SECURITY_KEY).await?,
            SECURITY_PASSWORD_FILE,
        ),
    ];
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %user.name, revoked_tokens = revoked, "password changed");
    for (id, name) in bootstrap {
        if id.as_deref() != Some(user.id.to_string().as_str()) {
            continue;
        }
        // The one-time password is spent: do not leave it lying around.
        let file = state.data_dir.join(name);
        match std::fs::remove_file(&file) {
            Ok(()) => tracing::info!(path = %file.display(), "removed the spent bootstrap password file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %file.display(), error = %e, "cannot remove the bootstrap password file"),
        }
    }
    Ok(())
}
