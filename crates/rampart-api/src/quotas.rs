//! Per-project quotas (`/v1/projects/{project}/quotas`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A project's own limits (`PUT`, system admins). A field left out or `null` takes the
/// configured default (`[quotas]`); 0 forbids the resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSet {
    #[serde(default)]
    pub images: Option<u32>,
    #[serde(default)]
    pub instances: Option<u32>,
    #[serde(default)]
    pub vpcs: Option<u32>,
    #[serde(default)]
    pub ports: Option<u32>,
    #[serde(default)]
    pub keys: Option<u32>,
    #[serde(default)]
    pub certificates: Option<u32>,
    /// Volumes not deleted (one being wiped still counts).
    #[serde(default)]
    pub volumes: Option<u32>,
    /// GiB of those volumes together.
    #[serde(default)]
    pub volume_gib: Option<u32>,
}

/// One number per resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaValues {
    pub images: u64,
    pub instances: u64,
    pub vpcs: u64,
    pub ports: u64,
    pub keys: u64,
    pub certificates: u64,
    pub volumes: u64,
    pub volume_gib: u64,
}

/// The quotas of a project: the limits in force, what it uses, and its own limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectQuotas {
    pub project_id: Uuid,
    pub limits: QuotaValues,
    pub used: QuotaValues,
    /// The project's own limits (`null`: the default).
    pub own: QuotaSet,
}
