//! Per-project quotas: how many images, instances, VPCs, ports, keys, certificates and volumes
//! (and volume GiB) one project may hold. Defaults come from `[quotas]`; a system admin sets a project's own limits
//! (`PUT /v1/projects/{id}/quotas`). Going over is 409 `quota_exceeded`: the request is well
//! formed, it conflicts with the project's current state (like AWS `LimitExceeded`).

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Images,
    Instances,
    Vpcs,
    Ports,
    Keys,
    Certificates,
    /// Volumes not `deleted` (the volumes issue).
    Volumes,
    /// GiB of those volumes together.
    VolumeGib,
}

impl Resource {
    pub const ALL: [Resource; 8] = [
        Resource::Images,
        Resource::Instances,
        Resource::Vpcs,
        Resource::Ports,
        Resource::Keys,
        Resource::Certificates,
        Resource::Volumes,
        Resource::VolumeGib,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Images => "images",
            Resource::Instances => "instances",
            Resource::Vpcs => "vpcs",
            Resource::Ports => "ports",
            Resource::Keys => "keys",
            Resource::Certificates => "certificates",
            Resource::Volumes => "volumes",
            Resource::VolumeGib => "volume_gib",
        }
    }
}

/// Largest limit an admin may set: a quota is a safety bound, not a billing counter.
pub const MAX_LIMIT: u32 = 1_000_000;

/// `[quotas]`: the limits of every project without limits of its own.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub images: u32,
    pub instances: u32,
    pub vpcs: u32,
    pub ports: u32,
    pub keys: u32,
    pub certificates: u32,
    /// Volumes not `deleted` (a volume being wiped still counts).
    pub volumes: u32,
    /// GiB of those volumes together.
    pub volume_gib: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            images: 100,
            instances: 50,
            vpcs: 10,
            ports: 250,
            keys: 100,
            certificates: 200,
            volumes: 20,
            volume_gib: 1000,
        }
    }
}

impl QuotaConfig {
    pub fn limit(&self, r: Resource) -> u32 {
        match r {
            Resource::Images => self.images,
            Resource::Instances => self.instances,
            Resource::Vpcs => self.vpcs,
            Resource::Ports => self.ports,
            Resource::Keys => self.keys,
            Resource::Certificates => self.certificates,
            Resource::Volumes => self.volumes,
            Resource::VolumeGib => self.volume_gib,
        }
    }

    pub fn set(&mut self, r: Resource, v: u32) {
        match r {
            Resource::Images => self.images = v,
            Resource::Instances => self.instances = v,
            Resource::Vpcs => self.vpcs = v,
            Resource::Ports => self.ports = v,
            Resource::Keys => self.keys = v,
            Resource::Certificates => self.certificates = v,
            Resource::Volumes => self.volumes = v,
            Resource::VolumeGib => self.volume_gib = v,
        }
    }

    /// The first limit above [`MAX_LIMIT`], if any.
    pub fn too_large(&self) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| self.limit(*r) > MAX_LIMIT)
    }
}

/// Whether a project holding `used` of `resource` may add `adding` more under `limit`.
pub fn check(resource: Resource, used: u64, adding: u64, limit: u32) -> Result<(), Error> {
    if used.saturating_add(adding) <= u64::from(limit) {
        return Ok(());
    }
    Err(Error::coded(
        http::StatusCode::CONFLICT,
        "quota_exceeded",
        format!(
            "the project's quota of {limit} {} is used up ({used} in use); delete some or ask a system admin to raise it (PUT /v1/projects/{{id}}/quotas)",
            resource.as_str()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_admit_up_to_the_limit_and_refuse_beyond_with_409() {
        assert!(check(Resource::Vpcs, 0, 1, 1).is_ok());
        let e = check(Resource::Vpcs, 1, 1, 1).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::CONFLICT);
        assert_eq!(e.code(), "quota_exceeded");
        assert!(e.to_string().contains("quota of 1 vpcs"), "{e}");
        assert!(check(Resource::Ports, 5, 3, 8).is_ok());
        assert!(check(Resource::Ports, 5, 4, 8).is_err());
        assert!(check(Resource::Keys, 0, 1, 0).is_err(), "0 forbids");
        let mut q = QuotaConfig::default();
        assert_eq!(q.too_large(), None);
        q.set(Resource::Certificates, MAX_LIMIT + 1);
        assert_eq!(q.too_large(), Some(Resource::Certificates));
    }
}
