//! DataSharingConnection: the platform authority's grant of one agency's access to a dataset
//! another agency declared shareable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::AgencyRef;

/// A least-privilege, time-bounded, revocable grant. Lives in the provider's namespace.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sectordb.io",
    version = "v1alpha1",
    kind = "DataSharingConnection",
    namespaced,
    cel,
    status = "DataSharingConnectionStatus",
    shortname = "dsc",
    category = "sectordb",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider.database"}"#,
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.consumer.namespace"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Valid Until","type":"string","jsonPath":".spec.validUntil"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.replication.lagSeconds","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("(self.mode == 'Replicate') == has(self.replicateInto)")
        .message("spec.replicateInto: required when mode is Replicate, and only then")
        .field_path(".replicateInto")
)]
#[serde(rename_all = "camelCase")]
pub struct DataSharingConnectionSpec {
    /// The providing database and the dataset it declared shareable.
    pub provider: ProviderRef,
    /// The agency that receives access.
    pub consumer: Consumer,
    /// ReadOnly: a PostgreSQL role with column-level SELECT and a Secret. Replicate: a
    /// publication on the provider and a subscription in the consumer's database.
    #[serde(default)]
    pub mode: SharingMode,
    /// Replicate only: the consumer's SectorDatabase that receives the rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_into: Option<ReplicateInto>,
    /// Why the consumer needs the data.
    #[schemars(length(min = 10, max = 500))]
    pub purpose: String,
    /// The legal text that allows the sharing, e.g. `Decree 47/2020/ND-CP, art. 22`.
    #[schemars(length(min = 1, max = 500))]
    pub legal_basis: String,
    /// Access ends at this instant (RFC 3339).
    pub valid_until: Time,
    /// True revokes access now and keeps the object.
    #[serde(default)]
    pub suspended: bool,
    /// Most concurrent sessions the consumer may open.
    #[serde(default = "default_connection_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub connection_limit: i32,
}

fn default_connection_limit() -> i32 {
    5
}

/// The providing side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// A SectorDatabase in this namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub database: String,
    /// A dataset that database declares in `spec.sharing.datasets`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub dataset: String,
}

/// The consuming side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// The consuming agency.
    pub agency: AgencyRef,
    /// The consumer's namespace, where the credentials Secret is delivered.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub namespace: String,
    /// Name of the delivered Secret; derived from the connection's name when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    )]
    pub secret_name: Option<String>,
}

/// How the consumer gets the data.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum SharingMode {
    #[default]
    ReadOnly,
    Replicate,
}

/// The consumer database that receives replicated rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicateInto {
    /// A SectorDatabase in the consumer namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub database: String,
}

/// Observed state of a DataSharingConnection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSharingConnectionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Active, Suspended, Expired, Denied or Revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ConnectionPhase>,
    /// Ready and Granted conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The PostgreSQL role that holds the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// When access was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    /// When access was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
    /// When access ends (`spec.validUntil`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The tables and columns granted, e.g. `public.t(a,b)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_objects: Vec<String>,
    /// The delivered credentials Secret (ReadOnly mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// The publication, subscription and lag (Replicate mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
}

/// Where granted rows are replicated to, and how far behind the copy is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    /// The publication on the provider (named like the role).
    pub publication: String,
    /// The subscription in the consumer's database (named like the role).
    pub subscription: String,
    /// The consumer's SectorDatabase, as `namespace/name`.
    pub target: String,
    /// True while the provider streams changes to the subscription.
    pub streaming: bool,
    /// Whole seconds between a commit on the provider and its replay in the consumer's
    /// database, as the provider last measured it; 0 when caught up.
    #[schemars(range(min = 0))]
    pub lag_seconds: i64,
}

/// Phase of a DataSharingConnection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConnectionPhase {
    Pending,
    Active,
    Suspended,
    Expired,
    Denied,
    Revoked,
}

/// A Secret by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}
