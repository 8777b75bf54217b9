//! Application credentials: a user's own secrets for programs, each bound to one project and
//! carrying some of the roles the user holds there.

use rampart_api::{ApplicationCredential, ApplicationCredentialCreate, List};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, Sensitive, names};
use rampart_db::credentials::{self, AppCredential};
use rampart_db::identity;
use rampart_iam::{rules, secrets};
use uuid::Uuid;

use super::verify::{hash_password, own_user, reauthenticate};
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::role_expansion::expanded_assignments;
use crate::state::AppState;

/// The API view; the secret only when it was just made.
pub fn credential_view(c: &AppCredential, secret: Option<Sensitive>) -> ApplicationCredential {
    ApplicationCredential {
        id: c.id,
        name: c.name.clone(),
        project_id: c.project_id,
        roles: c.roles.clone(),
        expires_at: c.expires_at,
        secret,
    }
}

/// The roles a new credential carries: those asked for, if the caller holds them all on the
/// project; all it holds there otherwise.
fn credential_roles(asked: Option<Vec<String>>, held: Vec<String>) -> Result<Vec<String>, Error> {
    match asked {
        Some(r) if r.iter().all(|x| held.contains(x)) && !r.is_empty() => Ok(r),
        Some(_) => Err(Error::forbidden(
            "an application credential can only carry roles you hold on the project",
        )),
        None => Ok(held),
    }
}

pub const CREATE_CREDENTIAL: Operation = Operation::new("application_credential.create", "application_credential");

/// Create an application credential for yourself (a fresh proof of your secrets required);
/// its secret is shown once.
pub async fn create_credential(
    state: &AppState,
    principal: &Principal,
    req: ApplicationCredentialCreate,
) -> Result<ApplicationCredential, Error> {
    let user = own_user(state, principal).await?;
    if principal.application_credential.is_some() {
        return Err(Error::forbidden(
            "an application credential cannot create application credentials",
        ));
    }
    names::validate_name("name", &req.name)?;
    let now = state.now();
    if req.expires_at.is_some_and(|e| e <= now) {
        return Err(Error::field("expires_at", "expires_at must be in the future"));
    }
    reauthenticate(state, principal, &user, req.password.as_ref(), req.totp.as_ref()).await?;
    let mut conn = state.db.conn().await?;
    let project = identity::find_project(&mut conn, user.domain_id, &req.project)
        .await?
        .ok_or_else(|| Error::not_found("no such project, or no role on it"))?;
    let expanded = expanded_assignments(&mut conn, user.id).await?;
    // The roles held on the project, with those they include (a member may delegate reader).
    let held = rules::delegable_roles(&rules::subject(user.id, &expanded, Some(project.id), None));
    if held.is_empty() {
        return Err(Error::not_found("no such project, or no role on it"));
    }
    let roles = credential_roles(req.roles, held)?;
    let secret = secrets::random_secret();
    let cred = AppCredential {
        id: Uuid::new_v4(),
        user_id: user.id,
        project_id: project.id,
        name: req.name,
        secret_hash: hash_password(secret.expose()).await?,
        roles,
        expires_at: req.expires_at,
        created_at: now,
        last_used_at: None,
    };
    credentials::create(&mut conn, &cred).await?;
    tracing::info!(user = %user.name, credential = %cred.id, "application credential created");
    Ok(credential_view(&cred, Some(secret)))
}

pub const LIST_CREDENTIALS: Operation = Operation::new("application_credential.list", "application_credential");

/// Your application credentials.
pub async fn list_credentials(
    state: &AppState,
    principal: &Principal,
    page: PageParams,
) -> Result<List<ApplicationCredential>, Error> {
    let user = own_user(state, principal).await?;
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = credentials::list_for_user(&mut conn, user.id, page.after.as_deref(), page.limit + 1).await?;
    let (rows, next) = finish_page(rows, page.limit, |c| c.id.to_string());
    Ok(List {
        items: rows.iter().map(|c| credential_view(c, None)).collect(),
        next,
    })
}

pub const CREDENTIAL: Operation = Operation::new("application_credential.get", "application_credential").target("id");

/// One of your application credentials (404 for anyone else's).
pub async fn credential(state: &AppState, principal: &Principal, id: Uuid) -> Result<AppCredential, Error> {
    let user = own_user(state, principal).await?;
    let mut conn = state.db.conn().await?;
    match credentials::get(&mut conn, id).await? {
        Some(c) if c.user_id == user.id => Ok(c),
        _ => Err(Error::not_found("no such application credential")),
    }
}

pub const DELETE_CREDENTIAL: Operation =
    Operation::new("application_credential.delete", "application_credential").target("id");

/// Delete one of your application credentials; its tokens die with it.
pub async fn delete_credential(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let c = credential(state, principal, id).await?;
    let mut tx = state.db.begin().await?;
    identity::revoke_credential_tokens(&mut tx, c.id, state.now()).await?;
    credentials::delete(&mut tx, c.id).await?;
    rampart_db::Db::commit(tx).await?;
    tracing::info!(user = %principal.user.name, credential = %c.id, "application credential deleted");
    Ok(())
}
