//! Users: administered by their domain's admins (system admins everywhere), each action on an
//! account also bound by the grant rules (`crate::grants::require_act_on`).

use rampart_api::{List, PasswordReset, User, UserCreate, UserUpdate};
use rampart_common::page::{PageRequest, finish_page};
use rampart_common::{Error, names};
use rampart_db::identity;
use rampart_iam::authz::{Target, action};
use rampart_iam::rules;
use uuid::Uuid;

use super::{check_cidrs, check_text, domain_by_key, user, user_view};
use crate::app::sessions::password::{password_violations, policy_violation};
use crate::app::sessions::verify::hash_password;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::grants;
use crate::state::AppState;

pub const LIST_USERS: Operation = Operation::new("user.list", "user");

/// Users the caller may administer (all for system readers, a domain's for its admins) and
/// itself; only `domain`'s when given.
pub async fn list_users(
    state: &AppState,
    principal: &Principal,
    domain: Option<&str>,
    page: PageRequest,
) -> Result<List<User>, Error> {
    let policy = state.compliance().await?;
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let domain = match domain {
        Some(k) => Some(domain_by_key(state, principal, &mut conn, Some(k)).await?.id),
        None => None,
    };
    let mut items = Vec::new();
    let mut after = page.after.clone();
    loop {
        let rows = identity::list_users(&mut conn, domain, after.as_deref(), page.limit + 1).await?;
        let exhausted = rows.len() <= page.limit as usize;
        after = rows.last().map(|u| u.id.to_string());
        items.extend(rows.into_iter().filter(|u| {
            u.id == principal.user.id || principal.can_in_domain(state, action::IDENTITY_READ, u.domain_id)
        }));
        if items.len() > page.limit as usize || exhausted {
            break;
        }
    }
    let (items, next) = finish_page(items, page.limit, |u| u.id.to_string());
    Ok(List {
        items: items.iter().map(|u| user_view(u, &policy, now)).collect(),
        next,
    })
}

/// 400 unless a validity window ends after it starts.
fn check_window(from: Option<time::OffsetDateTime>, until: Option<time::OffsetDateTime>) -> Result<(), Error> {
    match (from, until) {
        (Some(f), Some(u)) if f >= u => Err(Error::field("valid_until", "valid_until must be after valid_from")),
        _ => Ok(()),
    }
}

pub const CREATE_USER: Operation = Operation::new("user.create", "user");

/// Create a user (system-admin, or domain-admin of its domain). Unless told otherwise the
/// user must change the given password at first login.
pub async fn create_user(state: &AppState, principal: &Principal, req: UserCreate) -> Result<User, Error> {
    principal.require_somewhere(state, action::IDENTITY_MANAGE)?;
    names::validate_name("name", &req.name)?;
    check_text("description", &req.description, 1024)?;
    check_text("email", &req.email, 254)?;
    check_cidrs("allowed_source_cidrs", &req.allowed_source_cidrs)?;
    check_window(req.valid_from, req.valid_until)?;
    let policy = state.compliance().await?;
    let now = state.now();
    let mut conn = state.db.conn().await?;
    let d = domain_by_key(state, principal, &mut conn, req.domain.as_deref()).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, d.id, "domain")?;
    drop(conn);
    let mut user = identity::User {
        id: Uuid::new_v4(),
        domain_id: d.id,
        name: req.name.clone(),
        email: req.email.clone(),
        description: req.description.clone().unwrap_or_default(),
        enabled: req.enabled.unwrap_or(true),
        password_change_required: req
            .password_change_required
            .unwrap_or(policy.change_password_upon_first_use),
        valid_from: req.valid_from,
        valid_until: req.valid_until,
        allowed_source_cidrs: req.allowed_source_cidrs.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(pw) = &req.password {
        let v = password_violations(state, &policy, &user, pw.expose(), false).await?;
        if !v.is_empty() {
            return Err(policy_violation(v));
        }
        user.password_hash = Some(hash_password(pw.expose()).await?);
        user.password_changed_at = Some(now);
    }
    let mut conn = state.db.begin().await?;
    identity::create_user(&mut conn, &user, now).await?;
    rampart_db::Db::commit(conn).await?;
    tracing::info!(user = %user.name, domain = %d.name, by = %principal.user.name, "user created");
    Ok(user_view(&user, &policy, now))
}

pub const GET_USER: Operation = Operation::new("user.get", "user").target("id");

/// One user.
pub async fn get_user(state: &AppState, principal: &Principal, id: Uuid) -> Result<User, Error> {
    let u = user(state, principal, id).await?;
    let policy = state.compliance().await?;
    Ok(user_view(&u, &policy, state.now()))
}

/// Applies the fields of `req` that are given.
fn apply_update(u: &mut identity::User, req: &UserUpdate) {
    if let Some(v) = &req.email {
        u.email = v.clone();
    }
    if let Some(v) = &req.description {
        u.description = v.clone();
    }
    if let Some(v) = req.enabled {
        u.enabled = v;
    }
    if let Some(v) = req.valid_from {
        u.valid_from = v;
    }
    if let Some(v) = req.valid_until {
        u.valid_until = v;
    }
}

pub const UPDATE_USER: Operation = Operation::new("user.update", "user").target("id");

/// Change a user. Disabling it, an expired window or a forced password change end its
/// sessions and application credentials.
pub async fn update_user(state: &AppState, principal: &Principal, id: Uuid, req: UserUpdate) -> Result<User, Error> {
    let mut u = user(state, principal, id).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, u.domain_id, "user")?;
    if u.id != principal.user.id {
        grants::require_act_on(state, principal, u.id).await?;
    }
    check_text("description", &req.description, 1024)?;
    check_text("email", &req.email.clone().flatten(), 254)?;
    check_cidrs("allowed_source_cidrs", &req.allowed_source_cidrs)?;
    if u.id == principal.user.id && (req.enabled == Some(false) || req.allowed_source_cidrs.is_some()) {
        return Err(Error::conflict(
            "you cannot disable yourself or change your own allowed sources",
        ));
    }
    apply_update(&mut u, &req);
    check_window(u.valid_from, u.valid_until)?;
    if let Some(v) = req.allowed_source_cidrs {
        u.allowed_source_cidrs = v;
    }
    if let Some(v) = req.password_change_required {
        u.password_change_required = v;
    }
    let now = state.now();
    let mut tx = state.db.begin().await?;
    identity::update_user_profile(&mut tx, &u).await?;
    if !u.enabled
        || !rules::within_validity(u.valid_from, u.valid_until, now)
        || req.password_change_required == Some(true)
    {
        identity::revoke_user_tokens(&mut tx, u.id, now).await?;
    }
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %u.name, by = %principal.user.name, "user updated");
    let policy = state.compliance().await?;
    Ok(user_view(&u, &policy, now))
}

pub const DELETE_USER: Operation = Operation::new("user.delete", "user").target("id");

/// Delete a user (not yourself).
pub async fn delete_user(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let u = user(state, principal, id).await?;
    principal.require_in_domain(state, action::IDENTITY_MANAGE, u.domain_id, "user")?;
    if u.id == principal.user.id {
        return Err(Error::conflict("you cannot delete yourself"));
    }
    grants::require_act_on(state, principal, u.id).await?;
    let mut conn = state.db.conn().await?;
    identity::delete_user(&mut conn, id).await?;
    tracing::info!(user = %u.name, by = %principal.user.name, "user deleted");
    Ok(())
}

pub const UNLOCK_USER: Operation = Operation::new("user.unlock", "user").target("id");

/// Unlock an account locked after failed logins.
pub async fn unlock_user(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let u = user(state, principal, id).await?;
    principal.require_in_domain(state, action::USER_UNLOCK, u.domain_id, "user")?;
    // The security admin owns the lockout policy and unlocks any account (unlocking gives the
    // caller nothing of the account); everyone else only accounts they outrank.
    if !principal.can(state, action::SECURITY_MANAGE, Target::System) {
        grants::require_act_on(state, principal, u.id).await?;
    }
    let mut conn = state.db.conn().await?;
    identity::unlock(&mut conn, id).await?;
    tracing::warn!(user = %u.name, by = %principal.user.name, "account unlocked");
    Ok(())
}

pub const RESET_PASSWORD: Operation = Operation::new("user.reset_password", "user").target("id");

/// Set a new password for a user (who must change it at next login unless told otherwise);
/// unlocks the account and ends its sessions.
pub async fn reset_password(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    req: PasswordReset,
) -> Result<(), Error> {
    let u = user(state, principal, id).await?;
    principal.require_in_domain(state, action::USER_RESET_PASSWORD, u.domain_id, "user")?;
    if u.id == principal.user.id {
        return Err(Error::conflict("change your own password with POST /v1/auth/password"));
    }
    grants::require_act_on(state, principal, u.id).await?;
    let policy = state.compliance().await?;
    let v = password_violations(state, &policy, &u, req.password.expose(), false).await?;
    if !v.is_empty() {
        return Err(policy_violation(v));
    }
    let hash = hash_password(req.password.expose()).await?;
    let now = state.now();
    let must_change = req
        .password_change_required
        .unwrap_or(policy.change_password_upon_first_use);
    let mut tx = state.db.begin().await?;
    identity::set_password(&mut tx, u.id, &hash, must_change, now).await?;
    identity::unlock(&mut tx, u.id).await?;
    identity::revoke_user_tokens(&mut tx, u.id, now).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::warn!(user = %u.name, by = %principal.user.name, "password reset by an administrator");
    Ok(())
}

pub const RESET_MFA: Operation = Operation::new("user.mfa", "user").target("id");

/// Remove a user's second factor (for a lost device); the user enrols again at next login.
pub async fn reset_mfa(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let u = user(state, principal, id).await?;
    principal.require_in_domain(state, action::USER_RESET_PASSWORD, u.domain_id, "user")?;
    if u.id == principal.user.id {
        return Err(Error::conflict("another administrator must reset your second factor"));
    }
    grants::require_act_on(state, principal, u.id).await?;
    let mut tx = state.db.begin().await?;
    identity::remove_totp(&mut tx, u.id).await?;
    identity::revoke_user_tokens(&mut tx, u.id, state.now()).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::warn!(user = %u.name, by = %principal.user.name, "second factor removed by an administrator");
    Ok(())
}
