//! Volume types (`/v1/volume-types`: everyone reads them, system admins make and remove them;
//! the built-in `default` is encrypted and stays), the storage pools nodes report
//! (`GET /v1/storage/pools`, system readers), and a project's leave for unencrypted types
//! (`/v1/projects/{p}/volume-settings`, project admins; refused by default, 12.3.2-2).

use rampart_api::List;
use rampart_api::storage::{PoolReport, Qos, StoragePool, VolumeSettings, VolumeType};
use rampart_common::{Error, names};
use rampart_db::volumes::{self as db, VolumeTypeRow};
use rampart_iam::authz::action;
use uuid::Uuid;

use crate::auth::Principal;
use crate::state::AppState;

use crate::audit::operations::Operation;

pub fn type_view(t: VolumeTypeRow) -> VolumeType {
    VolumeType {
        qos: serde_json::from_str::<Qos>(&t.qos).unwrap_or_default(),
        name: t.name,
        encrypted: t.encrypted,
        multi_attach: t.multi_attach,
    }
}

pub const LIST_TYPES: Operation = Operation::new("volume_type.list", "volume_type");

pub async fn list_types(state: &AppState) -> Result<List<VolumeType>, Error> {
    let mut conn = state.db.conn().await?;
    let items = db::list_types(&mut conn).await?.into_iter().map(type_view).collect();
    Ok(List { items, next: None })
}

pub const CREATE_TYPE: Operation = Operation::new("volume_type.create", "volume_type");

pub async fn create_type(state: &AppState, principal: &Principal, t: VolumeType) -> Result<VolumeType, Error> {
    principal.require_system(state, action::SYSTEM_MANAGE)?;
    names::validate_name("name", &t.name)?;
    t.qos.validate()?;
    let row = VolumeTypeRow {
        name: t.name.clone(),
        encrypted: t.encrypted,
        multi_attach: t.multi_attach,
        qos: serde_json::to_string(&t.qos).map_err(|e| Error::internal("encoding a QoS", e))?,
    };
    let mut conn = state.db.conn().await?;
    db::insert_type(&mut conn, &row, state.now()).await?;
    tracing::info!(name = %t.name, encrypted = t.encrypted, by = %principal.user.name, "volume type created");
    Ok(type_view(row))
}

pub const DELETE_TYPE: Operation = Operation::new("volume_type.delete", "volume_type").target("name");

pub async fn delete_type(state: &AppState, principal: &Principal, name: &str) -> Result<(), Error> {
    principal.require_system(state, action::SYSTEM_MANAGE)?;
    if name == "default" {
        return Err(Error::conflict("the built-in type default cannot be deleted"));
    }
    let mut conn = state.db.conn().await?;
    if !db::delete_type(&mut conn, name).await? {
        return Err(Error::not_found("no such volume type"));
    }
    tracing::info!(%name, by = %principal.user.name, "volume type deleted");
    Ok(())
}

/// The type a new volume takes (`default` when none is named): 404-free, a bad name is 400.
pub async fn resolve_type(conn: &mut rampart_db::Conn, name: Option<&str>) -> Result<VolumeTypeRow, Error> {
    let name = name.unwrap_or("default");
    db::get_type(conn, name).await?.ok_or_else(|| {
        Error::field(
            "volume_type",
            format!("no volume type named {name:?} (see GET /v1/volume-types)"),
        )
    })
}

pub const POOLS: Operation = Operation::new("pool.list", "pool");

pub async fn pools(state: &AppState, principal: &Principal) -> Result<List<StoragePool>, Error> {
    principal.require_system(state, action::SYSTEM_READ)?;
    let mut conn = state.db.conn().await?;
    let mut items = Vec::new();
    for (node, node_name, _, report) in db::pools(&mut conn).await? {
        if let Ok(status) = serde_json::from_str::<PoolReport>(&report) {
            items.push(StoragePool {
                node,
                node_name,
                status,
            });
        }
    }
    Ok(List { items, next: None })
}

pub const SETTINGS: Operation = Operation::new("volume_settings.get", "volume_settings");

pub async fn settings(state: &AppState, principal: &Principal, project: Uuid) -> Result<VolumeSettings, Error> {
    principal.project(state, project, action::PROJECT_READ).await?;
    let mut conn = state.db.conn().await?;
    Ok(VolumeSettings {
        allow_unencrypted: db::allow_unencrypted(&mut conn, project).await?,
    })
}

pub const SET_SETTINGS: Operation = Operation::new("volume_settings.update", "volume_settings");

pub async fn set_settings(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    s: VolumeSettings,
) -> Result<VolumeSettings, Error> {
    principal.project(state, project, action::PROJECT_ADMIN).await?;
    let mut conn = state.db.conn().await?;
    db::set_allow_unencrypted(&mut conn, project, s.allow_unencrypted, state.now()).await?;
    crate::audit::note_detail("allow_unencrypted", s.allow_unencrypted);
    tracing::info!(%project, allow_unencrypted = s.allow_unencrypted, by = %principal.user.name, "volume settings changed");
    Ok(s)
}
