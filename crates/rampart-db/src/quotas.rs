//! Per-project quotas: a project's own limits (NULL: the configured default) and what it uses.

use rampart_common::quota::{QuotaConfig, Resource};
use rampart_common::time::to_ms;
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Result;

/// A project's own limits; `None` takes the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides(pub [Option<u32>; 8]);

impl Overrides {
    pub fn get(&self, r: Resource) -> Option<u32> {
        self.0[index(r)]
    }

    pub fn set(&mut self, r: Resource, v: Option<u32>) {
        self.0[index(r)] = v;
    }

    /// The limits in force: own ones over `defaults`.
    pub fn effective(&self, defaults: &QuotaConfig) -> QuotaConfig {
        let mut q = *defaults;
        for r in Resource::ALL {
            if let Some(v) = self.get(r) {
                q.set(r, v);
            }
        }
        q
    }
}

fn index(r: Resource) -> usize {
    Resource::ALL
        .iter()
        .position(|x| *x == r)
        .expect("every resource is in ALL")
}

pub async fn overrides(conn: &mut AnyConnection, project: Uuid) -> Result<Overrides> {
    type Row = (
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT images, instances, vpcs, ports, keys, certificates, volumes, volume_gib FROM project_quotas \
         WHERE project_id = $1",
    )
    .bind(project.to_string())
    .fetch_optional(conn)
    .await?;
    let Some((a, b, c, d, e, f, g, h)) = row else {
        return Ok(Overrides::default());
    };
    let v = |x: Option<i64>| x.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32);
    Ok(Overrides([v(a), v(b), v(c), v(d), v(e), v(f), v(g), v(h)]))
}

pub async fn set_overrides(conn: &mut AnyConnection, project: Uuid, o: &Overrides, now: OffsetDateTime) -> Result<()> {
    let v = |r| o.get(r).map(i64::from);
    sqlx::query(
        "INSERT INTO project_quotas (project_id, images, instances, vpcs, ports, keys, certificates, volumes, \
         volume_gib, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (project_id) DO UPDATE SET images = excluded.images, instances = excluded.instances, \
         vpcs = excluded.vpcs, ports = excluded.ports, keys = excluded.keys, certificates = excluded.certificates, \
         volumes = excluded.volumes, volume_gib = excluded.volume_gib, updated_at = excluded.updated_at",
    )
    .bind(project.to_string())
    .bind(v(Resource::Images))
    .bind(v(Resource::Instances))
    .bind(v(Resource::Vpcs))
    .bind(v(Resource::Ports))
    .bind(v(Resource::Keys))
    .bind(v(Resource::Certificates))
    .bind(v(Resource::Volumes))
    .bind(v(Resource::VolumeGib))
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// How much of `resource` the project holds: what it cannot get back by itself counts
/// (rejected images and destroyed keys do not; revoked certificates do not, nor does the
/// project's issuing CA, which the platform makes).
pub async fn usage(conn: &mut AnyConnection, project: Uuid, resource: Resource) -> Result<u64> {
    let sql = match resource {
        Resource::Images => "SELECT COUNT(*) FROM images WHERE project_id = $1 AND status <> 'rejected'",
        Resource::Instances => "SELECT COUNT(*) FROM instances WHERE project_id = $1",
        Resource::Vpcs => "SELECT COUNT(*) FROM vpcs WHERE project_id = $1",
        Resource::Ports => "SELECT COUNT(*) FROM ports WHERE project_id = $1",
        Resource::Keys => "SELECT COUNT(*) FROM kms_keys WHERE project_id = $1 AND state <> 'destroyed'",
        Resource::Certificates => {
            "SELECT COUNT(*) FROM certificates WHERE project_id = $1 AND revoked_at IS NULL AND kind <> 'ca'"
        }
        // A volume being wiped still holds its space: only `deleted` ones are free.
        Resource::Volumes => "SELECT COUNT(*) FROM volumes WHERE project_id = $1 AND status <> 'deleted'",
        // SUM is NUMERIC on PostgreSQL, which the Any driver cannot read: cast it.
        Resource::VolumeGib => {
            "SELECT CAST(COALESCE(SUM(size_gib), 0) AS BIGINT) FROM volumes WHERE project_id = $1 AND status <> 'deleted'"
        }
    };
    let n: i64 = sqlx::query_scalar(sql)
        .bind(project.to_string())
        .fetch_one(conn)
        .await?;
    Ok(n.max(0) as u64)
}
