//! BackupPolicy: the platform authority's backup rules, cluster-scoped.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Scheduled, encrypted, continuously archived backups of the databases it selects, kept in the
/// provincial data center and mirrored off-site.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sectordb.io",
    version = "v1alpha1",
    kind = "BackupPolicy",
    cel,
    status = "BackupPolicyStatus",
    shortname = "bp",
    category = "sectordb",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selectedDatabases"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".status.healthyDatabases"}"#,
    printcolumn = r#"{"name":"Last Run","type":"date","jsonPath":".status.lastRun"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("self.repositories.all(r, self.repositories.exists_one(s, s.name == r.name))")
        .message("spec.repositories: names must be unique")
        .field_path(".repositories"),
    validation = Rule::new("!has(self.repositories[0].maxLag)")
        .message("spec.repositories[0].maxLag: the first repository is the primary; maxLag applies to mirrors only")
        .field_path(".repositories")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// Which SectorDatabases the policy covers. An empty selector selects none.
    pub database_selector: DatabaseSelector,
    /// When backups run.
    pub schedule: BackupSchedule,
    /// Continuous WAL archiving, for point-in-time recovery.
    #[serde(default = "default_true")]
    pub wal_archiving: bool,
    /// How many backups to keep.
    pub retention: Retention,
    /// Where backups go. The first is the primary repository pgBackRest writes; the others are
    /// off-site mirrors of it kept by the operator.
    #[schemars(length(min = 1, max = 4))]
    pub repositories: Vec<Repository>,
    /// Client-side encryption of every repository; required at security level 3 and above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Restore drills that prove the backups work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

fn default_true() -> bool {
    true
}

/// Which databases a policy covers: those matching every selector given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSelector {
    /// Labels of the agency namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Labels of the SectorDatabases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Only databases at these security levels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5), inner(range(min = 1, max = 5)))]
    pub security_levels: Vec<i32>,
}

/// Backup schedule, cron syntax (minute hour day-of-month month day-of-week).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSchedule {
    /// When full backups run, e.g. `0 1 * * 0`.
    #[schemars(length(min = 9, max = 100))]
    pub full: String,
    /// When differential backups run, e.g. `0 1 * * 1-6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 100))]
    pub differential: Option<String>,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "Asia/Ho_Chi_Minh".into()
}

/// Retention, counted in backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Full backups to keep.
    #[schemars(range(min = 1, max = 9999))]
    pub full_backups: i32,
    /// Differential backups to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9999))]
    pub differential_backups: Option<i32>,
}

/// One backup destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// Repository name, unique in the policy.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// ProvincialDataCenter (trung tâm dữ liệu tỉnh), GovernmentDataCenter (trung tâm dữ liệu
    /// Chính phủ, off-site) or Other.
    pub role: RepositoryRole,
    /// The S3-compatible object storage.
    pub s3: S3Storage,
    /// Mirrors only: past this lag (e.g. `1h`, `30m`) the mirror is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub max_lag: Option<String>,
}

/// The data center a repository stands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RepositoryRole {
    ProvincialDataCenter,
    GovernmentDataCenter,
    Other,
}

/// An S3-compatible bucket reached over TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Endpoint URL; must be https.
    #[schemars(
        length(min = 9, max = 512),
        regex(pattern = r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/?$")
    )]
    pub endpoint: String,
    /// Bucket name.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    )]
    pub bucket: String,
    /// Region the bucket lives in.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub region: String,
    /// Prefix inside the bucket under which this policy's repository lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^[A-Za-z0-9._/-]*$"))]
    pub path_prefix: Option<String>,
    /// Path (the endpoint's host names every bucket) or Host (virtual-hosted buckets).
    #[serde(default)]
    pub uri_style: UriStyle,
    /// Access keys: a Secret in the operator's namespace.
    pub credentials_secret: CredentialsSecret,
    /// CA bundle that signs the endpoint's certificate: a Secret in the operator's namespace.
    /// The system trust store when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKey>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// S3 addressing style.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum UriStyle {
    #[default]
    Path,
    Host,
}

/// A Secret holding S3 access keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecret {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the access key id.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id_key: String,
    /// Key of the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// A key of a Secret in the operator's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Repository encryption (pgBackRest aes-256-cbc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// The passphrase: a Secret in the operator's namespace.
    pub key_secret: PassphraseSecret,
}

/// The Secret key that holds the encryption passphrase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassphraseSecret {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_passphrase_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_passphrase_key() -> String {
    "passphrase".into()
}

/// Restore drills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// When to restore the latest backup into a scratch instance and check it (cron syntax).
    #[schemars(length(min = 9, max = 100))]
    pub schedule: String,
}

/// Observed state of a BackupPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Ready condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Databases the policy selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_databases: Option<i32>,
    /// Selected databases whose latest backup succeeded in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_databases: Option<i32>,
    /// When a scheduled backup last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// When the next scheduled backup runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// The latest restore drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<VerificationResult>,
    /// State of each off-site mirror.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorStatus>,
}

/// The outcome of a restore drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationResult {
    /// When it finished.
    pub time: Time,
    /// The database whose backup was restored (namespace/name).
    pub database: String,
    /// Whether the restored copy passed its checks.
    pub succeeded: bool,
    /// How long the restore took.
    #[schemars(range(min = 0))]
    pub restore_seconds: i64,
}

/// State of one mirror repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStatus {
    /// Repository name.
    pub name: String,
    /// 0 after a complete pass; while passes fail, seconds since the last complete one (since
    /// lastSynced when the operator restarted meanwhile).
    #[schemars(range(min = 0))]
    pub lag_seconds: i64,
    /// Since when the mirror has held everything the primary held: moved by a pass that copied
    /// something, left by a pass that found nothing new (lagSeconds 0 says the latest pass
    /// confirmed it) or that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synced: Option<Time>,
    /// Whether the lag is within `maxLag`.
    pub healthy: bool,
    /// Why the last pass did not complete (an unreachable data center, objects that changed in
    /// the primary after they were mirrored); empty after a complete pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
