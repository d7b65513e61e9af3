//! Types shared by the four resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Agency identifier codes (mã định danh, QCVN 102:2016): dot-separated groups of digits and
/// capital letters, such as `000.00.12.H53`.
pub const AGENCY_CODE_PATTERN: &str = r"^[0-9A-Z]+(\.[0-9A-Z]+)*$";

/// PostgreSQL identifiers the operator creates or names: lower case, so they never need quoting.
pub const SQL_IDENTIFIER_PATTERN: &str = r"^[a-z_][a-z0-9_]{0,62}$";

/// A government agency named in a spec: a provincial department, a district people's committee,
/// ... The registered agencies themselves are `Agency` objects (see `super::agency`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Agency")]
pub struct AgencyRef {
    /// Agency identifier code (mã định danh) in the QCVN 102:2016 form, e.g. `000.00.12.H53`.
    #[schemars(
        length(min = 1, max = 35),
        regex(pattern = r"^[0-9A-Z]+(\.[0-9A-Z]+)*$")
    )]
    pub code: String,
    /// The agency's name, e.g. `Department of Health`.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
}

/// A reference to a namespaced object by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedName {
    /// Namespace of the object.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub namespace: String,
    /// Name of the object.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
}
