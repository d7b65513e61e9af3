//! SectorDatabase: a TLS-only, audited PostgreSQL database for one agency's sector.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{AgencyRef, NamespacedName};

/// What an agency asks for: a PostgreSQL database for its sector, at its approved
/// information-security level.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sectordb.io",
    version = "v1alpha1",
    kind = "SectorDatabase",
    namespaced,
    cel,
    status = "SectorDatabaseStatus",
    shortname = "sdb",
    category = "sectordb",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Level","type":"integer","jsonPath":".spec.securityLevel"}"#,
    printcolumn = r#"{"name":"Sector","type":"string","jsonPath":".spec.sector"}"#,
    printcolumn = r#"{"name":"Agency","type":"string","priority":1,"jsonPath":".spec.agency.code"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("self.securityLevel < 2 || !has(self.tls) || !has(self.tls.mode) || self.tls.mode == 'Required'")
        .message("spec.tls.mode: plain connections (Optional) are allowed only at securityLevel 1")
        .field_path(".tls.mode"),
    validation = Rule::new("has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)")
        .message("spec.bootstrap is immutable")
        .field_path(".bootstrap")
)]
#[serde(rename_all = "camelCase")]
pub struct SectorDatabaseSpec {
    /// The agency that owns this database.
    pub agency: AgencyRef,
    /// The sector (lĩnh vực) the data belongs to.
    pub sector: Sector,
    /// Open (dữ liệu mở), Shared (dùng chung) or Specialized (chuyên ngành) data.
    pub classification: Classification,
    /// Approved information-security level (cấp độ an toàn hệ thống thông tin), 1 to 5. It selects
    /// the security profile the database must satisfy.
    #[schemars(range(min = 1, max = 5))]
    pub security_level: i32,
    /// PostgreSQL version and server parameters.
    #[serde(default)]
    pub postgres: PostgresSpec,
    /// Client connection security.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Number of PostgreSQL instances: one primary, the rest read-only streaming replicas.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 5))]
    pub instances: i32,
    /// Persistent storage of each instance. The size may grow, never shrink.
    pub storage: StorageSpec,
    /// CPU and memory for each PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The application database and its owner role. Immutable once created.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.database is immutable"))]
    pub database: DatabaseSpec,
    /// Datasets this agency declares shareable: the only things a DataSharingConnection may name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<SharingSpec>,
    /// Start from a backup instead of an empty database. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// What happens to volumes and backups when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_instances() -> i32 {
    1
}

/// The sectors of the provincial data catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Sector {
    Agriculture,
    IndustryTradeEnergy,
    CultureTourism,
    LabourSocial,
    NaturalResourcesEnvironment,
    EducationTraining,
    Transport,
    Construction,
    Health,
    Finance,
    Justice,
    HomeAffairs,
    Other,
}

/// Data classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Classification {
    Open,
    Shared,
    Specialized,
}

/// PostgreSQL version and parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// PostgreSQL major version.
    #[serde(default)]
    pub version: PostgresVersion,
    /// postgresql.conf parameters. Only parameters on the operator's allow-list are accepted; the
    /// rest are set by the security profile.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    pub parameters: BTreeMap<String, String>,
}

/// Supported PostgreSQL major versions.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PostgresVersion {
    #[default]
    #[serde(rename = "15")]
    V15,
}

/// Client connection security.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Required: only TLS connections (hostssl, scram-sha-256). Optional: plain connections are
    /// also accepted, allowed only at securityLevel 1.
    #[serde(default)]
    pub mode: TlsMode,
}

/// Whether plain (non-TLS) client connections are accepted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum TlsMode {
    #[default]
    Required,
    Optional,
}

/// Persistent storage of each instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    cel,
    validation = Rule::new("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0")
        .message("spec.storage.size may grow but never shrink")
        .field_path(".size")
)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size of each instance, e.g. `10Gi`.
    pub size: Quantity,
    /// StorageClass of the volumes; the cluster's default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The application database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Name of the database inside PostgreSQL (lower-case identifier).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub name: String,
    /// Role that owns the database; the app Secret carries its credentials.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub owner: String,
}

/// What this agency declares shareable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharingSpec {
    /// Named datasets; names are unique.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub datasets: Vec<Dataset>,
}

/// A named set of tables and columns another agency may be granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    /// Dataset name, referenced by DataSharingConnection `spec.provider.dataset`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// Tables and the columns of each that may be shared.
    #[schemars(length(min = 1, max = 64))]
    pub tables: Vec<SharedTable>,
}

/// A table and the columns of it that may be shared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedTable {
    /// Schema of the table.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub schema: String,
    /// Table name.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub name: String,
    /// Columns that may be shared; a grant names a subset of them.
    #[schemars(
        length(min = 1, max = 256),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))
    )]
    pub columns: Vec<String>,
}

/// Where a new database starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// Restore another database's backups (point in time when `targetTime` is set).
    pub from_backup: FromBackup,
}

/// A restore source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FromBackup {
    /// The BackupPolicy whose repositories hold the backups.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub policy: String,
    /// The database whose backups are restored.
    pub database: NamespacedName,
    /// Recover up to this instant (RFC 3339); the latest backup and all archived WAL when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<Time>,
    /// The policy's repository to restore from, by name: a mirror when the primary's data
    /// center is unreachable. The primary (the first repository) when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub repository: Option<String>,
}

/// What deleting a SectorDatabase does to its data: Retain keeps the volumes and the backups;
/// Delete removes the volumes (after a final full backup when a BackupPolicy covers the database).
// Variants carry no doc comments: schemars would turn them into a `oneOf`, which is not a
// structural schema.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// Observed state of a SectorDatabase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SectorDatabaseStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary: Pending, Provisioning, Ready, Degraded, Failed or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DatabasePhase>,
    /// Ready, Progressing, Degraded, Compliant and BackedUp conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// How clients reach the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Names of the Secrets the operator wrote in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretNames>,
    /// Desired and ready instance counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstanceCounts>,
    /// How the database measures up to the security profile of its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<Compliance>,
    /// Backup state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupState>,
    /// Where the data came from, for a database that started from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreState>,
    /// Spec values fixed when the operator first accepted this object. Later specs are checked
    /// against them, so immutability holds even where the apiserver does not run CEL rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<PinnedSpec>,
}

/// Phase of a SectorDatabase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DatabasePhase {
    Pending,
    Provisioning,
    Ready,
    Degraded,
    Failed,
    Deleting,
}

/// Client endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_write: Option<Endpoint>,
    /// The read-only replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<Endpoint>,
}

/// A Service clients connect to, by DNS name and by ClusterIP (for clusters without DNS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Service DNS name.
    pub host: String,
    /// Service ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// TCP port.
    pub port: i32,
}

/// Secret names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNames {
    /// Credentials of the database owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The CA certificate that signs the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// Instance counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceCounts {
    /// Instances asked for.
    pub desired: i32,
    /// Instances accepting connections.
    pub ready: i32,
}

/// Compliance with the security profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compliance {
    /// The security level evaluated.
    pub level: i32,
    /// Name of the security profile applied.
    pub profile: String,
    /// One entry per rule of the profile that applies at this level.
    #[serde(default)]
    pub findings: Vec<Finding>,
}

/// The verdict on one rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Rule identifier.
    pub rule: String,
    /// Whether the rule is met.
    pub satisfied: bool,
    /// What was found.
    pub message: String,
}

/// Backup state of a database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupState {
    /// The BackupPolicy that covers this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The latest backup that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<BackupRecord>,
    /// Earliest instant the database can be restored to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_from: Option<Time>,
    /// Latest instant the database can be restored to: the last WAL archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverable_until: Option<Time>,
    /// The pgBackRest stanza of this database, once created in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stanza: Option<String>,
    /// How many backups the primary repository holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backups: Option<i32>,
    /// The latest schedule slot a backup was run for; a slot missed while the operator was down
    /// is run once, not once per missed slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled: Option<Time>,
    /// The `sectordb.io/backup-request` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// The SectorBackup whose backup runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The latest restore drill of this database's backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillRecord>,
    /// The latest `verification.schedule` slot a drill was run for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_slot: Option<Time>,
    /// The `sectordb.io/drill-request` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_request: Option<String>,
}

/// A restore drill: the latest backup restored into a scratch instance and checked there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillRecord {
    /// When it finished.
    pub time: Time,
    /// The backup restored.
    pub label: String,
    /// Whether the copy restored, started, passed `pg_amcheck` and had the row counts taken when
    /// the backup completed.
    pub succeeded: bool,
    /// From the start of the restore until the copy was promoted.
    #[schemars(range(min = 0))]
    pub restore_seconds: i64,
    /// What was checked, or what failed.
    pub message: String,
}

/// A completed restore (`spec.bootstrap.fromBackup`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreState {
    /// The pgBackRest stanza restored from.
    pub stanza: String,
    /// The point in time recovered to; the end of the archived WAL when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<Time>,
    /// When the restored database was promoted and taken over by this SectorDatabase.
    pub completed_at: Time,
}

/// One completed backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// pgBackRest's label of the backup, e.g. `20261130-031138F`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When it completed.
    pub time: Time,
    /// full, diff or incr.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in the repository.
    #[schemars(range(min = 0))]
    pub size_bytes: i64,
    /// Repositories that hold it.
    #[serde(default)]
    pub repos: Vec<String>,
}

/// Values that may not change after the operator first accepted the object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinnedSpec {
    /// `spec.database` when first accepted.
    pub database: DatabaseSpec,
    /// The largest `spec.storage.size` accepted so far.
    pub storage_size: Quantity,
    /// `spec.bootstrap` when first accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
}
