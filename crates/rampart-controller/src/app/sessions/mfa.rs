//! A user's second factor: TOTP enrolment and its confirmation, recovery codes.

use rampart_api::{RecoveryCodes, TotpConfirm, TotpEnrollment};
use rampart_common::Error;
use rampart_db::identity;
use rampart_iam::{secrets, totp};

use super::verify::{count_failure, own_user, totp_context};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub const TOTP_ENROLL: Operation = Operation::new("auth.mfa.enroll", "user");

/// Start TOTP enrolment: a new secret, active once confirmed with a code.
pub async fn totp_enroll(state: &AppState, principal: &Principal) -> Result<TotpEnrollment, Error> {
    let user = own_user(state, principal).await?;
    if user.mfa_enrolled() {
        return Err(Error::conflict(
            "a TOTP second factor is already enrolled; an administrator can reset it",
        ));
    }
    let secret = totp::new_secret();
    let account = format!("{}@{}", user.name, principal.user.domain);
    let uri = totp::otpauth_uri(secret.expose(), &account)
        .ok_or_else(|| Error::internal("building the otpauth URI", "invalid secret"))?;
    let sealed = state.credkey.seal(secret.expose(), &totp_context(user.id));
    let mut conn = state.db.conn().await?;
    identity::set_totp_pending(&mut conn, user.id, Some(&sealed)).await?;
    tracing::info!(user = %user.name, "TOTP enrolment started");
    Ok(TotpEnrollment {
        secret,
        otpauth_uri: uri,
    })
}

pub const TOTP_CONFIRM: Operation = Operation::new("auth.mfa.confirm", "user");

/// Confirm TOTP enrolment with a current code; the sessions opened before end.
pub async fn totp_confirm(state: &AppState, principal: &Principal, req: TotpConfirm) -> Result<(), Error> {
    let user = own_user(state, principal).await?;
    let Some(sealed) = &user.totp_pending_secret else {
        return Err(Error::conflict(
            "no TOTP enrolment in progress: POST /v1/auth/mfa/totp first",
        ));
    };
    let secret = state
        .credkey
        .open(sealed, &totp_context(user.id))
        .map_err(|e| Error::internal("opening a TOTP secret", e))?;
    let now = state.now();
    // A new secret has had no code used yet: the last step of a removed one does not apply
    // (an account re-enrolled within a minute of a reset would be refused otherwise).
    let Some(step) = totp::verify(
        secret.expose(),
        req.code.expose(),
        now.unix_timestamp().max(0) as u64,
        0,
    ) else {
        let policy = state.compliance().await?;
        count_failure(
            state,
            &policy,
            &user,
            principal.client_ip,
            "wrong TOTP code at enrolment",
        )
        .await?;
        return Err(Error::InvalidCredentials);
    };
    let mut tx = state.db.begin().await?;
    identity::confirm_totp(&mut tx, user.id, step as i64).await?;
    // Sessions opened before the second factor existed end here.
    identity::revoke_user_tokens(&mut tx, user.id, now).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %user.name, "TOTP second factor enrolled");
    Ok(())
}

pub const RECOVERY_CODES: Operation = Operation::new("auth.recovery_codes.create", "user");

/// New one-time recovery codes (replacing any earlier ones).
pub async fn recovery_codes(state: &AppState, principal: &Principal) -> Result<RecoveryCodes, Error> {
    let user = own_user(state, principal).await?;
    if !user.mfa_enrolled() {
        return Err(Error::conflict("enrol a TOTP second factor first"));
    }
    let codes = totp::new_recovery_codes();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| secrets::hash_secret(&totp::normalise_recovery_code(c.expose())))
        .collect();
    let mut conn = state.db.conn().await?;
    identity::replace_recovery_codes(&mut conn, user.id, &hashes, state.now()).await?;
    tracing::info!(user = %user.name, "recovery codes issued");
    Ok(RecoveryCodes { codes })
}
