//! Per-volume grants (12.3.3): `PUT /v1/projects/{p}/volumes/{id}/access` replaces the list
//! (project admins, Cedar's `volume.access`), `GET` shows it (`volume.read`). Each grant names
//! one user or group of the project's domain (by name or id; an unknown one is 422) and the
//! actions it allows. Empty list: the project roles decide alone.

use std::collections::BTreeSet;

use rampart_api::storage::{VolumeAccess, VolumeAction, VolumeGrant};
use rampart_common::Error;
use rampart_db::volumes::{self as db, GrantRow};
use rampart_db::{groups, identity};
use rampart_iam::authz::action;
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

use crate::audit::operations::Operation;

/// Most grants on one volume.
const MAX_GRANTS: usize = 100;

fn unknown(what: &str, name: &str) -> Error {
    Error::PolicyViolation {
        message: format!("no {what} {name:?} in the project's domain"),
        details: Some(serde_json::json!({ "field": "grants", what: name })),
    }
}

async fn resolve_user(conn: &mut rampart_db::Conn, domain: Uuid, key: &str) -> Result<Uuid, Error> {
    let user = match Uuid::try_parse(key) {
        Ok(id) => identity::user_by_id(conn, id).await?,
        Err(_) => identity::find_user(conn, domain, key).await?,
    };
    user.filter(|u| u.domain_id == domain)
        .map(|u| u.id)
        .ok_or_else(|| unknown("user", key))
}

async fn resolve_group(conn: &mut rampart_db::Conn, domain: Uuid, key: &str) -> Result<Uuid, Error> {
    if let Ok(id) = Uuid::try_parse(key) {
        return groups::get(conn, id)
            .await?
            .filter(|g| g.domain_id == domain)
            .map(|g| g.id)
            .ok_or_else(|| unknown("group", key));
    }
    let mut after: Option<String> = None;
    loop {
        let page = groups::list(conn, Some(domain), after.as_deref(), 500).await?;
        if let Some(g) = page.iter().find(|g| g.name == key) {
            return Ok(g.id);
        }
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.id.to_string()),
            _ => return Err(unknown("group", key)),
        }
    }
}

fn action_name(a: VolumeAction) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub const GET_ACCESS: Operation = Operation::new("volume.access.get", "volume").target("id");

/// The volume's grants, naming users and groups by id.
pub async fn get(state: &AppState, principal: &Principal, project: Uuid, key: &str) -> Result<VolumeAccess, Error> {
    let row = super::volume(state, principal, project, key, action::VOLUME_READ).await?;
    let mut conn = state.db.conn().await?;
    let grants = db::grants(&mut conn, row.id)
        .await?
        .into_iter()
        .map(|g| {
            let actions: Vec<VolumeAction> = serde_json::from_str(&g.actions).unwrap_or_default();
            let id = Some(g.principal_id.to_string());
            VolumeGrant {
                user: (g.kind == "user").then(|| id.clone()).flatten(),
                group: (g.kind == "group").then_some(id).flatten(),
                actions,
            }
        })
        .collect();
    Ok(VolumeAccess { grants })
}

pub const PUT_ACCESS: Operation = Operation::new("volume.access", "volume").target("id");

/// Replaces the volume's grants.
pub async fn put(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    key: &str,
    req: VolumeAccess,
) -> Result<VolumeAccess, Error> {
    let row = super::volume(state, principal, project, key, action::VOLUME_ACCESS).await?;
    if req.grants.len() > MAX_GRANTS {
        return Err(Error::field("grants", format!("at most {MAX_GRANTS} grants")));
    }
    let domain = principal.project(state, project, action::PROJECT_READ).await?.domain_id;
    let mut conn = state.db.conn().await?;
    let mut rows = Vec::new();
    for g in &req.grants {
        let (kind, id) = match (&g.user, &g.group) {
            (Some(u), None) => ("user", resolve_user(&mut conn, domain, u).await?),
            (None, Some(gr)) => ("group", resolve_group(&mut conn, domain, gr).await?),
            _ => return Err(Error::field("grants", "each grant names exactly one of user and group")),
        };
        if g.actions.is_empty() {
            return Err(Error::field("grants", "each grant allows at least one action"));
        }
        let actions: BTreeSet<String> = g.actions.iter().map(|a| action_name(*a)).collect();
        rows.push(GrantRow {
            kind: kind.into(),
            principal_id: id,
            actions: serde_json::to_string(&actions).map_err(|e| Error::internal("encoding grants", e))?,
        });
    }
    drop(conn);
    let mut tx = state.db.begin().await?;
    db::replace_grants(&mut tx, row.id, &rows).await?;
    rampart_db::Db::commit(tx).await?;
    crate::audit::note_detail("grants", rows.len());
    tracing::info!(volume = %row.id, grants = rows.len(), by = %principal.user.name, "volume access changed");
    get(state, principal, project, &row.id.to_string()).await
}
