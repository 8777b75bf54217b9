//! Per-project quotas: read by anyone who sees the project, set by system admins.

use rampart_api::{ProjectQuotas, QuotaSet, QuotaValues};
use rampart_common::Error;
use rampart_common::quota::{MAX_LIMIT, QuotaConfig, Resource};
use rampart_db::quotas::{self as db, Overrides};
use rampart_iam::authz::action;
use uuid::Uuid;

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::state::AppState;

fn values(f: impl Fn(Resource) -> u64) -> QuotaValues {
    QuotaValues {
        images: f(Resource::Images),
        instances: f(Resource::Instances),
        vpcs: f(Resource::Vpcs),
        ports: f(Resource::Ports),
        keys: f(Resource::Keys),
        certificates: f(Resource::Certificates),
        volumes: f(Resource::Volumes),
        volume_gib: f(Resource::VolumeGib),
    }
}

fn own(o: &Overrides) -> QuotaSet {
    QuotaSet {
        images: o.get(Resource::Images),
        instances: o.get(Resource::Instances),
        vpcs: o.get(Resource::Vpcs),
        ports: o.get(Resource::Ports),
        keys: o.get(Resource::Keys),
        certificates: o.get(Resource::Certificates),
        volumes: o.get(Resource::Volumes),
        volume_gib: o.get(Resource::VolumeGib),
    }
}

async fn view(state: &AppState, project: Uuid) -> Result<ProjectQuotas, Error> {
    let mut conn = state.db.conn().await?;
    let o = db::overrides(&mut conn, project).await?;
    let limits: QuotaConfig = o.effective(&state.config.quotas);
    let mut used = [0u64; Resource::ALL.len()];
    for (i, r) in Resource::ALL.into_iter().enumerate() {
        used[i] = db::usage(&mut conn, project, r).await?;
    }
    let at = |r: Resource| used[Resource::ALL.iter().position(|x| *x == r).unwrap_or(0)];
    Ok(ProjectQuotas {
        project_id: project,
        limits: values(|r| u64::from(limits.limit(r))),
        used: values(at),
        own: own(&o),
    })
}

pub const GET_QUOTAS: Operation = Operation::new("quota.list", "quota");

/// The project's quotas: limits in force, usage, and its own limits.
pub async fn get_quotas(state: &AppState, principal: &Principal, project: Uuid) -> Result<ProjectQuotas, Error> {
    principal.project(state, project, action::PROJECT_READ).await?;
    view(state, project).await
}

/// The project's own limits from `req`: 400 for one above the maximum.
fn overrides(req: &QuotaSet) -> Result<Overrides, Error> {
    let mut o = Overrides::default();
    for (r, v) in [
        (Resource::Images, req.images),
        (Resource::Instances, req.instances),
        (Resource::Vpcs, req.vpcs),
        (Resource::Ports, req.ports),
        (Resource::Keys, req.keys),
        (Resource::Certificates, req.certificates),
        (Resource::Volumes, req.volumes),
        (Resource::VolumeGib, req.volume_gib),
    ] {
        if v.is_some_and(|v| v > MAX_LIMIT) {
            return Err(Error::field(
                r.as_str(),
                format!("{} must be at most {MAX_LIMIT}", r.as_str()),
            ));
        }
        o.set(r, v);
    }
    Ok(o)
}

pub const PUT_QUOTAS: Operation = Operation::new("quota.update", "quota");

/// Set the project's own limits (system admins); a field left out or `null` takes the
/// configured default. Lowering a limit below the usage deletes nothing: new resources are
/// refused (409 `quota_exceeded`) until the usage is under it again.
pub async fn put_quotas(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    req: QuotaSet,
) -> Result<ProjectQuotas, Error> {
    principal.require_system(state, action::SYSTEM_MANAGE)?;
    {
        let mut conn = state.db.conn().await?;
        if rampart_db::identity::project_by_id(&mut conn, project).await?.is_none() {
            return Err(Error::not_found("no such project"));
        }
    }
    let o = overrides(&req)?;
    {
        let mut conn = state.db.conn().await?;
        db::set_overrides(&mut conn, project, &o, state.now()).await?;
    }
    tracing::info!(%project, quotas = ?req, by = %principal.user.name, "project quotas set");
    view(state, project).await
}
