//! SectorBackup: one backup of a SectorDatabase, as the operator runs it. The operator creates
//! one for each backup the schedule or an on-demand request asks for, runs pgBackRest for it in
//! the primary's pod without waiting, and records here how it went. A SectorBackup is a record,
//! not the backup: deleting it removes nothing from a repository, and the database's
//! `status.backup` is read from the repository itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A backup of the SectorDatabase `spec.database` in the same namespace.
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sectordb.io",
    version = "v1alpha1",
    kind = "SectorBackup",
    namespaced,
    status = "SectorBackupStatus",
    shortname = "sbk",
    category = "sectordb",
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".spec.database"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Label","type":"string","jsonPath":".status.label"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SectorBackupSpec {
    /// The SectorDatabase backed up.
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// The BackupPolicy whose schedule or request this backup serves.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,
    /// full or diff, as pgBackRest names them.
    #[serde(rename = "type")]
    pub kind: BackupType,
    /// The schedule slot this backup is for, when the schedule asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Time>,
    /// The `sectordb.io/backup-request` value this backup is for, when a request asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub request: Option<String>,
}

/// pgBackRest's backup types the operator runs; a full one outranks a differential one due at
/// the same time.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum BackupType {
    #[serde(rename = "diff")]
    Differential,
    #[serde(rename = "full")]
    Full,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Differential => "diff",
        }
    }
}

/// How a backup went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SectorBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// When pgBackRest was started for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// pgBackRest's label of the backup, once the repository holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its size in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// The repositories it was written to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// What failed, or what pgBackRest reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a backup stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackupPhase {
    /// pgBackRest runs in the primary's pod.
    Running,
    /// The repository holds the backup (`status.label`).
    Completed,
    /// pgBackRest failed, or the pod it ran in went away; `status.message` says which.
    Failed,
}
