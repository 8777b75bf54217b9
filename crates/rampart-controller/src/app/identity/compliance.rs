//! The security-compliance policy (password, lockout, MFA and session rules): read by
//! security readers, replaced by security admins.

use rampart_api::SecurityCompliance;
use rampart_common::Error;
use rampart_db::identity;
use rampart_iam::authz::action;

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

pub const GET_COMPLIANCE: Operation = Operation::new("security_compliance.get", "security_compliance");

/// The policy in force (read afresh, not from the cache).
pub async fn get_compliance(state: &AppState, principal: &Principal) -> Result<SecurityCompliance, Error> {
    principal.require_system(state, action::SECURITY_READ)?;
    let mut conn = state.db.conn().await?;
    Ok(identity::load_compliance(&mut conn).await?)
}

pub const PUT_COMPLIANCE: Operation = Operation::new("security_compliance.update", "security_compliance");

/// Replace the policy; every controller sharing the database sees it within seconds.
pub async fn put_compliance(
    state: &AppState,
    principal: &Principal,
    req: SecurityCompliance,
) -> Result<SecurityCompliance, Error> {
    principal.require_system(state, action::SECURITY_MANAGE)?;
    rampart_iam::policy::validate(&req)?;
    let mut conn = state.db.conn().await?;
    identity::store_compliance(&mut conn, &req).await?;
    state.refresh_compliance();
    tracing::warn!(by = %principal.user.name, policy = ?req, "security-compliance policy changed");
    Ok(req)
}
