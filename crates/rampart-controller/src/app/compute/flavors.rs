//! Flavors: the sizes instances are launched with (system admins manage them, everyone reads).

use rampart_api::List;
use rampart_api::compute::{Flavor, FlavorCreate};
use rampart_common::page::{PageParams, finish_page};
use rampart_common::{Error, names};
use rampart_db::compute::{self as db, FlavorRow};
use uuid::Uuid;

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

fn flavor_view(f: FlavorRow) -> Flavor {
    Flavor {
        id: f.id,
        name: f.name,
        vcpus: f.vcpus as u32,
        memory_mib: f.memory_mib as u64,
        root_disk_gib: f.root_disk_gib as u64,
    }
}

pub const LIST: Operation = Operation::new("flavor.list", "flavor");

/// A page of flavors, by name (every authenticated caller may read them).
pub async fn list(state: &AppState, page: &PageParams) -> Result<List<Flavor>, Error> {
    let page = page.validate()?;
    let mut conn = state.db.conn().await?;
    let rows = db::list_flavors(&mut conn, page.after.as_deref(), page.limit + 1).await?;
    let (items, next) = finish_page(rows, page.limit, |f| f.name.clone());
    Ok(List {
        items: items.into_iter().map(flavor_view).collect(),
        next,
    })
}

fn check(req: &FlavorCreate) -> Result<(), Error> {
    names::validate_name("name", &req.name)?;
    if !(1..=64).contains(&req.vcpus) {
        return Err(Error::field("vcpus", "vcpus must be 1..=64"));
    }
    if !(64..=1 << 20).contains(&req.memory_mib) {
        return Err(Error::field("memory_mib", "memory_mib must be 64..=1048576"));
    }
    if req.root_disk_gib > 65_536 {
        return Err(Error::field("root_disk_gib", "root_disk_gib must be at most 65536"));
    }
    Ok(())
}

pub const CREATE: Operation = Operation::new("flavor.create", "flavor");

/// Create a flavor (system admins).
pub async fn create(state: &AppState, principal: &Principal, req: FlavorCreate) -> Result<Flavor, Error> {
    principal.require_system(state, "system.manage")?;
    check(&req)?;
    let row = FlavorRow {
        id: Uuid::new_v4(),
        name: req.name,
        vcpus: req.vcpus.into(),
        memory_mib: req.memory_mib as i64,
        root_disk_gib: req.root_disk_gib as i64,
    };
    let mut conn = state.db.conn().await?;
    db::insert_flavor(&mut conn, &row, state.now()).await?;
    tracing::info!(flavor = %row.name, by = %principal.user.name, "flavor created");
    Ok(flavor_view(row))
}

pub const DELETE: Operation = Operation::new("flavor.delete", "flavor").target("id");

/// Delete a flavor no instance uses (system admins).
pub async fn delete(state: &AppState, principal: &Principal, id: Uuid) -> Result<(), Error> {
    principal.require_system(state, "system.manage")?;
    let mut conn = state.db.conn().await?;
    if !db::delete_flavor(&mut conn, id).await? {
        return Err(Error::not_found("no such flavor"));
    }
    Ok(())
}
