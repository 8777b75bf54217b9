//! Trusted image signing keys (global or per project) and the project's image signature
//! policy: both change what nodes verify at boot, so both republish the nodes that run the
//! project's instances.

use std::collections::BTreeMap;

use rampart_api::compute::{ComputeSettings, SigningKey, SigningKeyCreate};
use rampart_common::{Error, names};
use rampart_compute::image;
use rampart_db::compute::{self as db, SigningKeyRow};
use rampart_iam::authz::Target;
use uuid::Uuid;

use super::records;
use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

fn key_view(k: SigningKeyRow) -> SigningKey {
    SigningKey {
        id: k.id,
        name: k.name,
        project_id: k.project_id,
        key_id: k.key_id,
        public_key: k.public_key,
        created_at: k.created_at,
    }
}

/// Who may manage a key: project admins for a project's key, system admins for a global one.
async fn require_manage(state: &AppState, principal: &Principal, project: Option<Uuid>) -> Result<(), Error> {
    match project {
        Some(p) => {
            principal.project(state, p, "project.admin").await?;
            Ok(())
        }
        None => principal.require_system(state, "system.manage"),
    }
}

pub const CREATE: Operation = Operation::new("signing_key.create", "signing_key");

/// Trust an Ed25519 image signing key.
pub async fn create(state: &AppState, principal: &Principal, req: SigningKeyCreate) -> Result<SigningKey, Error> {
    require_manage(state, principal, req.project).await?;
    names::validate_name("name", &req.name)?;
    if req.public_key.len() > 4096 {
        return Err(Error::field("public_key", "public_key is too long"));
    }
    let pk = image::PublicKey::parse(&req.public_key)
        .map_err(|e| Error::field("public_key", format!("not an Ed25519 public key: {e}")))?;
    let row = SigningKeyRow {
        id: Uuid::new_v4(),
        project_id: req.project,
        name: req.name,
        key_id: pk.key_id(),
        public_key: pk.to_text(),
        created_at: state.now(),
        revoked_at: None,
    };
    let mut tx = state.db.begin().await?;
    db::insert_signing_key(&mut tx, &row).await?;
    republish_project(state, &mut tx, row.project_id).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(key = %row.key_id, name = %row.name, project = ?row.project_id, by = %principal.user.name, "signing key trusted");
    Ok(key_view(row))
}

/// A global key is visible to everyone; a project's key to those who may read the project or
/// its domain's identities.
fn key_visible(state: &AppState, principal: &Principal, k: &SigningKeyRow, domains: &BTreeMap<Uuid, Uuid>) -> bool {
    match k.project_id {
        None => true,
        Some(p) => domains.get(&p).is_some_and(|d| {
            principal.can(state, "project.read", Target::Project { id: p, domain: *d })
                || principal.can_in_domain(state, "identity.read", *d)
        }),
    }
}

async fn project_domains(state: &AppState, keys: &[SigningKeyRow]) -> Result<BTreeMap<Uuid, Uuid>, Error> {
    let mut conn = state.db.conn().await?;
    let mut out = BTreeMap::new();
    for p in keys.iter().filter_map(|k| k.project_id) {
        if let Some(proj) = rampart_db::identity::project_by_id(&mut conn, p).await? {
            out.insert(p, proj.domain_id);
        }
    }
    Ok(out)
}

pub const LIST: Operation = Operation::new("signing_key.list", "signing_key").sensitive_read();

/// The keys the caller may see.
pub async fn list(state: &AppState, principal: &Principal) -> Result<Vec<SigningKey>, Error> {
    let mut conn = state.db.conn().await?;
    let keys = db::list_signing_keys(&mut conn).await?;
    drop(conn);
    let domains = project_domains(state, &keys).await?;
    Ok(keys
        .into_iter()
        .filter(|k| key_visible(state, principal, k, &domains))
        .map(key_view)
        .collect())
}

/// The key `id`: 404 when the caller may not see it, 403 when it may see but not manage it.
async fn lookup_for_manage(state: &AppState, principal: &Principal, id: Uuid) -> Result<SigningKeyRow, Error> {
    let mut conn = state.db.conn().await?;
    let key = db::get_signing_key(&mut conn, id).await?;
    drop(conn);
    let Some(key) = key else {
        return Err(Error::not_found("no such signing key"));
    };
    let domains = project_domains(state, std::slice::from_ref(&key)).await?;
    if !key_visible(state, principal, &key, &domains) {
        return Err(Error::not_found("no such signing key"));
    }
    require_manage(state, principal, key.project_id).await?;
    Ok(key)
}

pub const REVOKE: Operation = Operation::new("signing_key.delete", "signing_key").target("id");

/// Stop trusting a key.
pub async fn revoke(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    let key = lookup_for_manage(state, principal, id).await?;
    let mut tx = state.db.begin().await?;
    db::revoke_signing_key(&mut tx, id, state.now()).await?;
    republish_project(state, &mut tx, key.project_id).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::info!(key = %key.key_id, by = %principal.user.name, "signing key revoked");
    Ok(())
}

/// Re-renders the nodes that run instances of `project` (all nodes for a global change).
async fn republish_project(state: &AppState, tx: &mut rampart_db::Conn, project: Option<Uuid>) -> Result<(), Error> {
    for (node, _) in rampart_db::nodes::all_ids(tx).await? {
        let on_node = db::instances_on_node(tx, node).await?;
        if project.is_none_or(|p| on_node.iter().any(|i| i.project_id == p)) {
            crate::publish::node(&state.config, tx, node).await?;
        }
    }
    Ok(())
}

pub const SETTINGS: Operation = Operation::new("compute_setting.list", "compute_setting");

/// The project's compute settings.
pub async fn settings(state: &AppState, principal: &Principal, project: Uuid) -> Result<ComputeSettings, Error> {
    principal.project(state, project, "project.read").await?;
    let mut conn = state.db.conn().await?;
    Ok(ComputeSettings {
        image_signature_policy: records::policy(&mut conn, project).await?,
    })
}

pub const SET_SETTINGS: Operation = Operation::new("compute_setting.update", "compute_setting");

/// Set the project's image signature policy (project admins).
pub async fn set_settings(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    req: ComputeSettings,
) -> Result<ComputeSettings, Error> {
    principal.project(state, project, "project.admin").await?;
    let mut tx = state.db.begin().await?;
    db::set_signature_policy(&mut tx, project, req.image_signature_policy.as_str(), state.now()).await?;
    republish_project(state, &mut tx, Some(project)).await?;
    rampart_db::Db::commit(tx).await?;
    state.notify_node_changes();
    tracing::warn!(target: "rampart::audit", operation = "compute.settings", project = %project, policy = req.image_signature_policy.as_str(), by = %principal.user.name, "image signature policy set");
    Ok(req)
}
