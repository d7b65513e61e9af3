//! The rules the OpenAPI schema cannot state, checked by the operator on every reconcile. The
//! cross-field ones are CEL rules in the CRDs as well; they are repeated here because apiservers
//! older than 1.25 ignore CEL, and a spec that breaks them must still be reported as
//! `Ready=False, reason=InvalidSpec`, naming the field.

use std::collections::BTreeSet;
use std::fmt;

use crate::api::connection::SharingMode;
use crate::api::database::{PinnedSpec, TlsMode};
use crate::api::{BackupPolicySpec, DataSharingConnectionSpec, SectorDatabaseSpec};
use crate::{parameters, quantity};

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON path of the offending field, e.g. `spec.tls.mode`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins violations into one message for a condition or an Event.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn violation(field: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation {
        field: field.into(),
        message: message.into(),
    }
}

/// Names PostgreSQL reserves for itself.
const RESERVED_DATABASES: &[&str] = &["postgres", "template0", "template1"];
const RESERVED_ROLES: &[&str] = &["postgres", "public", "none", "current_user", "session_user"];

/// Checks a SectorDatabase spec; `pinned` holds what the operator accepted before, if anything.
pub fn database(
    spec: &SectorDatabaseSpec,
    pinned: Option<&PinnedSpec>,
) -> Result<(), Vec<Violation>> {
    let mut found = Vec::new();
    if !(1..=5).contains(&spec.security_level) {
        found.push(violation("spec.securityLevel", "must be between 1 and 5"));
    }
    if !(1..=5).contains(&spec.instances) {
        found.push(violation("spec.instances", "must be between 1 and 5"));
    }
    if spec.security_level >= 2 && spec.tls.mode == TlsMode::Optional {
        found.push(violation(
            "spec.tls.mode",
            format!(
                "Optional (plain connections) is allowed only at securityLevel 1, not {}",
                spec.security_level
            ),
        ));
    }
    for (name, value) in &spec.postgres.parameters {
        let field = format!("spec.postgres.parameters.{name}");
        match parameters::kind(name).map(|kind| parameters::check(kind, value)) {
            None => found.push(violation(
                field,
                "is not on the allow-list of parameters an agency may set",
            )),
            Some(Err(why)) => found.push(violation(field, format!("{value:?} {why}"))),
            Some(Ok(())) => {}
        }
    }
    let size = quantity::bytes(&spec.storage.size.0);
    match size {
        None => found.push(violation(
            "spec.storage.size",
            format!(
                "{:?} is not a storage quantity such as 10Gi",
                spec.storage.size.0
            ),
        )),
        Some(bytes) if bytes < 1024f64.powi(2) => {
            found.push(violation("spec.storage.size", "must be at least 1Mi"))
        }
        Some(_) => {}
    }
    if RESERVED_DATABASES.contains(&spec.database.name.as_str()) {
        found.push(violation(
            "spec.database.name",
            format!("{:?} is reserved by PostgreSQL", spec.database.name),
        ));
    }
    if RESERVED_ROLES.contains(&spec.database.owner.as_str())
        || spec.database.owner.starts_with("pg_")
    {
        found.push(violation(
            "spec.database.owner",
            format!("{:?} is reserved by PostgreSQL", spec.database.owner),
        ));
    }
    if let Some(sharing) = &spec.sharing {
        found.extend(datasets(sharing));
    }
    if let Some(pinned) = pinned {
        if spec.database != pinned.database {
            found.push(violation(
                "spec.database",
                format!(
                    "is immutable: it was name={:?}, owner={:?}",
                    pinned.database.name, pinned.database.owner
                ),
            ));
        }
        if spec.bootstrap != pinned.bootstrap {
            found.push(violation(
                "spec.bootstrap",
                "is immutable once the database exists",
            ));
        }
        if let (Some(now), Some(before)) = (size, quantity::bytes(&pinned.storage_size.0)) {
            if now < before {
                found.push(violation(
                    "spec.storage.size",
                    format!(
                        "may grow but never shrink: {} is smaller than {}",
                        spec.storage.size.0, pinned.storage_size.0
                    ),
                ));
            }
        }
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

fn datasets(sharing: &crate::api::database::SharingSpec) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut names = BTreeSet::new();
    for (i, dataset) in sharing.datasets.iter().enumerate() {
        if !names.insert(dataset.name.as_str()) {
            found.push(violation(
                format!("spec.sharing.datasets[{i}].name"),
                format!("{:?} is declared twice", dataset.name),
            ));
        }
        let mut tables = BTreeSet::new();
        for (j, table) in dataset.tables.iter().enumerate() {
            let path = format!("spec.sharing.datasets[{i}].tables[{j}]");
            if !tables.insert((table.schema.as_str(), table.name.as_str())) {
                found.push(violation(
                    path.clone(),
                    format!("{}.{} is listed twice", table.schema, table.name),
                ));
            }
            if table.columns.is_empty() {
                found.push(violation(
                    format!("{path}.columns"),
                    "must name at least one column",
                ));
            }
            let mut columns = BTreeSet::new();
            for column in &table.columns {
                if !columns.insert(column.as_str()) {
                    found.push(violation(
                        format!("{path}.columns"),
                        format!("{column:?} is listed twice"),
                    ));
                }
            }
        }
    }
    found
}

/// Checks a DataSharingConnection spec on its own (references to other objects are checked by
/// the controller, which reports them as `Denied`).
pub fn connection(spec: &DataSharingConnectionSpec) -> Result<(), Vec<Violation>> {
    let mut found = Vec::new();
    match (spec.mode, &spec.replicate_into) {
        (SharingMode::Replicate, None) => found.push(violation(
            "spec.replicateInto",
            "is required when mode is Replicate",
        )),
        (SharingMode::ReadOnly, Some(_)) => found.push(violation(
            "spec.replicateInto",
            "is allowed only when mode is Replicate",
        )),
        _ => {}
    }
    let purpose = spec.purpose.trim().chars().count();
    if !(10..=500).contains(&purpose) {
        found.push(violation("spec.purpose", "must be 10 to 500 characters"));
    }
    if spec.legal_basis.trim().is_empty() {
        found.push(violation(
            "spec.legalBasis",
            "must name the legal text that allows the sharing",
        ));
    }
    if !(1..=100).contains(&spec.connection_limit) {
        found.push(violation(
            "spec.connectionLimit",
            "must be between 1 and 100",
        ));
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

/// Checks a BackupPolicy spec.
pub fn policy(spec: &BackupPolicySpec) -> Result<(), Vec<Violation>> {
    let mut found = Vec::new();
    let mut schedules = vec![("spec.schedule.full", Some(&spec.schedule.full))];
    schedules.push((
        "spec.schedule.differential",
        spec.schedule.differential.as_ref(),
    ));
    schedules.push((
        "spec.verification.schedule",
        spec.verification.as_ref().map(|v| &v.schedule),
    ));
    for (field, cron) in schedules {
        if let Some(cron) = cron {
            if let Err(message) = parse_cron(cron) {
                found.push(violation(field, message));
            }
        }
    }
    if jiff::tz::TimeZone::get(&spec.schedule.time_zone).is_err() {
        found.push(violation(
            "spec.schedule.timeZone",
            format!("{:?} is not an IANA time zone", spec.schedule.time_zone),
        ));
    }
    if spec.repositories.is_empty() || spec.repositories.len() > 4 {
        found.push(violation(
            "spec.repositories",
            "must list 1 to 4 repositories",
        ));
    }
    let mut names = BTreeSet::new();
    for (i, repo) in spec.repositories.iter().enumerate() {
        if !names.insert(repo.name.as_str()) {
            found.push(violation(
                format!("spec.repositories[{i}].name"),
                format!("{:?} is used twice", repo.name),
            ));
        }
        match (&repo.max_lag, i) {
            (Some(_), 0) => found.push(violation(
                "spec.repositories[0].maxLag",
                "the first repository is the primary; maxLag applies to mirrors only",
            )),
            (Some(lag), _) if parse_duration(lag).is_none() => found.push(violation(
                format!("spec.repositories[{i}].maxLag"),
                format!("{lag:?} is not a duration such as 30m or 1h"),
            )),
            _ => {}
        }
        if !repo.s3.endpoint.starts_with("https://") {
            found.push(violation(
                format!("spec.repositories[{i}].s3.endpoint"),
                "must be an https:// URL",
            ));
        }
        let mut secrets = vec![("credentialsSecret", &repo.s3.credentials_secret.name)];
        secrets.extend(repo.s3.ca_secret.as_ref().map(|ca| ("caSecret", &ca.name)));
        for (field, name) in secrets {
            found.extend(operator_secret(
                &format!("spec.repositories[{i}].s3.{field}.name"),
                name,
            ));
        }
    }
    if let Some(encryption) = &spec.encryption {
        found.extend(operator_secret(
            "spec.encryption.keySecret.name",
            &encryption.key_secret.name,
        ));
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

/// The operator's own Secrets (its CA and anything else it names `sectordb-...`) are never a
/// policy's: their contents would be copied into the databases' backup configuration.
const OPERATOR_SECRET_PREFIX: &str = "sectordb-";

fn operator_secret(field: &str, name: &str) -> Option<Violation> {
    name.starts_with(OPERATOR_SECRET_PREFIX).then(|| {
        violation(
            field,
            format!("{name:?} is one of the operator's own Secrets ({OPERATOR_SECRET_PREFIX}*); name a Secret made for this policy"),
        )
    })
}

/// Parses a five-field cron expression.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    if expression.split_whitespace().count() != 5 {
        return Err(format!(
            "{expression:?} must have five fields: minute hour day-of-month month day-of-week"
        ));
    }
    expression
        .parse::<croner::Cron>()
        .map_err(|e| format!("{expression:?} is not a cron expression: {e}"))
}

/// Parses durations such as `90s`, `30m`, `1h30m` or `2d` into seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && !text.is_empty()).then_some(total)
}
