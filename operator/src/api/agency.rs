//! Agency: the platform authority's register of tenants. Cluster-scoped, so an agency can never
//! write its own entry: which namespaces it owns, the code its databases must carry, and the
//! security levels approved for them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::NamespacedName;

/// The key of `spec.approvedLevels` that applies to every database without an entry of its own.
pub const DEFAULT_LEVEL_KEY: &str = "default";

/// A registered agency (sở, ban, ngành; UBND huyện) and what the platform authority approved
/// for it. The operator serves SectorDatabases only in the namespaces an Agency lists.
#[derive(CustomResource, JsonSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sectordb.io",
    version = "v1alpha1",
    kind = "Agency",
    plural = "agencies",
    shortname = "agency",
    category = "sectordb",
    status = "AgencyStatus",
    printcolumn = r#"{"name":"Code","type":"string","jsonPath":".spec.code"}"#,
    printcolumn = r#"{"name":"Name","type":"string","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Databases","type":"integer","jsonPath":".status.databases"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgencySpec {
    /// Agency identifier code (mã định danh, QCVN 102:2016), e.g. `000.00.12.H53`. Every
    /// SectorDatabase in the agency's namespaces must carry it in `spec.agency.code`.
    #[schemars(
        length(min = 1, max = 35),
        regex(pattern = r"^[0-9A-Z]+(\.[0-9A-Z]+)*$")
    )]
    pub code: String,
    /// The agency's name, e.g. `Department of Health`.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// The namespaces this agency owns. A namespace belongs to at most one Agency; nothing is
    /// served in a namespace no Agency lists.
    #[schemars(
        length(min = 1, max = 32),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
        )
    )]
    pub namespaces: Vec<String>,
    /// The person responsible for the agency's data (the plans ask each agency to name one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steward: Option<Steward>,
    /// The security level approved for each database, by SectorDatabase name, or `default` for
    /// the rest. A database may ask for a higher level, never for a lower one. No entry means
    /// no floor beyond level 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 256,
        "additionalProperties" = {"type": "integer", "format": "int32", "minimum": 1, "maximum": 5}
    ))]
    pub approved_levels: BTreeMap<String, i32>,
    /// Whether this agency may publish datasets as open data.
    #[serde(default)]
    pub open_data: bool,
    /// Restores across namespaces the platform authority allows: a SectorDatabase `target` in
    /// one of this agency's namespaces may start from the backups of `source`. Without an entry
    /// here, a database restores only from databases of its own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub restore_sources: Vec<RestoreSource>,
}

/// Observed state of an Agency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgencyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready: every namespace listed is this Agency's alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// SectorDatabases in the agency's namespaces.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub databases: i32,
}

/// The agency's data steward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Steward {
    /// Full name.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// Work e-mail address.
    #[schemars(length(min = 3, max = 254), regex(pattern = r"^[^@\s]+@[^@\s]+$"))]
    pub email: String,
}

/// One allowed cross-namespace restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// The database whose backups may be restored (it may be deleted).
    pub source: NamespacedName,
    /// The SectorDatabase that may restore them; its namespace must be one of this agency's.
    pub target: NamespacedName,
}

impl AgencySpec {
    /// The lowest level a database of this name may ask for.
    pub fn approved_level(&self, database: &str) -> i32 {
        self.approved_levels
            .get(database)
            .or_else(|| self.approved_levels.get(DEFAULT_LEVEL_KEY))
            .copied()
            .unwrap_or(1)
    }
}
