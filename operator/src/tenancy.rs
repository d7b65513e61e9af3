//! The tenancy rules that depend on the platform authority's Agency register: who owns a
//! namespace, the code and level its databases must carry, where a restore may come from and
//! where a grant may deliver. Pure: callers pass the Agencies they read.

use crate::api::common::NamespacedName;
use crate::api::{Agency, SectorDatabaseSpec};
use crate::validate::Violation;

/// Namespaces no grant ever delivers into, whatever the register says: the cluster's own.
const SYSTEM_NAMESPACE_PREFIXES: &[&str] = &["kube-"];
const SYSTEM_NAMESPACES: &[&str] = &["default"];

/// The Agency that owns `namespace`, or why there is none. A namespace listed by two Agencies
/// is owned by neither: a register mistake must not hand one agency's namespace to another.
pub fn owner<'a>(agencies: &'a [Agency], namespace: &str) -> Result<&'a Agency, String> {
    let claims: Vec<&Agency> = agencies
        .iter()
        .filter(|a| a.spec.namespaces.iter().any(|n| n == namespace))
        .collect();
    match claims.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "namespace {namespace:?} is not registered to any Agency; the platform authority registers agencies and their namespaces"
        )),
        many => Err(format!(
            "namespace {namespace:?} is listed by more than one Agency ({}); it is served once exactly one lists it",
            many.iter()
                .map(|a| a.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn violation(field: &str, message: String) -> Violation {
    Violation {
        field: field.into(),
        message,
    }
}

/// A SectorDatabase `name` in `namespace` is served only for the Agency that owns the namespace,
/// with that Agency's code, at or above the level approved for it.
pub fn admit_database(
    agencies: &[Agency],
    namespace: &str,
    name: &str,
    spec: &SectorDatabaseSpec,
) -> Result<(), Vec<Violation>> {
    let agency =
        owner(agencies, namespace).map_err(|why| vec![violation("metadata.namespace", why)])?;
    let mut found = Vec::new();
    if spec.agency.code != agency.spec.code {
        found.push(violation(
            "spec.agency.code",
            format!(
                "{:?} is not the code of the agency that owns this namespace ({:?})",
                spec.agency.code, agency.spec.code
            ),
        ));
    }
    let approved = agency.spec.approved_level(name);
    if spec.security_level < approved {
        found.push(violation(
            "spec.securityLevel",
            format!(
                "{} is below the level {approved} approved for this database; an agency may ask for more, never for less",
                spec.security_level
            ),
        ));
    }
    for (key, level) in &agency.spec.approved_levels {
        if !(1..=5).contains(level) {
            found.push(violation(
                "metadata.namespace",
                format!(
                    "Agency {:?} approves level {level} for {key:?}, outside 1 to 5",
                    agency.spec.code
                ),
            ));
        }
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

/// Whether `target` (namespace, name) may start from `source`'s backups: always within one
/// namespace, across namespaces only where the target's Agency lists the pair.
pub fn restore_allowed(
    agencies: &[Agency],
    target: &NamespacedName,
    source: &NamespacedName,
) -> bool {
    if source.namespace == target.namespace {
        return true;
    }
    owner(agencies, &target.namespace).is_ok_and(|agency| {
        agency
            .spec
            .restore_sources
            .iter()
            .any(|allowed| &allowed.source == source && &allowed.target == target)
    })
}

/// Why a grant may not deliver into `namespace` for the agency `code`, if it may not: the
/// namespace must be a registered agency's, that agency's code must be the consumer's, and it
/// is never the operator's or the cluster's own.
pub fn consumer_refusal(
    agencies: &[Agency],
    namespace: &str,
    code: &str,
    operator_namespace: &str,
) -> Option<String> {
    if namespace == operator_namespace
        || SYSTEM_NAMESPACES.contains(&namespace)
        || SYSTEM_NAMESPACE_PREFIXES
            .iter()
            .any(|prefix| namespace.starts_with(prefix))
    {
        return Some(format!(
            "spec.consumer.namespace: {namespace:?} is a system namespace; grants deliver only into agency namespaces"
        ));
    }
    match owner(agencies, namespace) {
        Err(why) => Some(format!("spec.consumer.namespace: {why}")),
        Ok(agency) if agency.spec.code != code => Some(format!(
            "spec.consumer.agency.code: {code:?} is not the code of the agency that owns namespace {namespace:?} ({:?})",
            agency.spec.code
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(name: &str, code: &str, namespaces: &[&str], levels: serde_json::Value) -> Agency {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "Agency", "metadata": {"name": name},
            "spec": {"code": code, "name": name, "namespaces": namespaces, "approvedLevels": levels,
                     "restoreSources": [{"source": {"namespace": "old", "name": "a"}, "target": {"namespace": "so-y-te", "name": "b"}}]}
        }))
        .unwrap()
    }

    fn spec(code: &str, level: i32) -> SectorDatabaseSpec {
        serde_json::from_value(serde_json::json!({
            "agency": {"code": code, "name": "x"}, "sector": "Health", "classification": "Shared",
            "securityLevel": level, "storage": {"size": "1Gi"}, "database": {"name": "d", "owner": "app"}
        }))
        .unwrap()
    }

    fn register() -> Vec<Agency> {
        vec![
            agency(
                "health",
                "000.00.12.H53",
                &["so-y-te"],
                serde_json::json!({"default": 2, "records": 3}),
            ),
            agency(
                "labour",
                "000.00.20.H53",
                &["so-lao-dong"],
                serde_json::json!({}),
            ),
        ]
    }

    fn fields(result: Result<(), Vec<Violation>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_database_is_served_only_in_a_registered_namespace_with_its_agency_code() {
        let agencies = register();
        assert_eq!(
            admit_database(&agencies, "so-y-te", "d", &spec("000.00.12.H53", 2)),
            Ok(())
        );
        assert_eq!(
            fields(admit_database(
                &agencies,
                "elsewhere",
                "d",
                &spec("000.00.12.H53", 2)
            )),
            ["metadata.namespace"]
        );
        assert_eq!(
            fields(admit_database(
                &agencies,
                "so-y-te",
                "d",
                &spec("000.00.20.H53", 2)
            )),
            ["spec.agency.code"]
        );
    }

    #[test]
    fn a_level_below_the_approved_one_is_refused_per_database_or_by_default() {
        let agencies = register();
        assert_eq!(
            fields(admit_database(
                &agencies,
                "so-y-te",
                "records",
                &spec("000.00.12.H53", 2)
            )),
            ["spec.securityLevel"]
        );
        assert_eq!(
            admit_database(&agencies, "so-y-te", "records", &spec("000.00.12.H53", 4)),
            Ok(())
        );
        assert_eq!(
            fields(admit_database(
                &agencies,
                "so-y-te",
                "other",
                &spec("000.00.12.H53", 1)
            )),
            ["spec.securityLevel"]
        );
        assert_eq!(
            admit_database(&agencies, "so-lao-dong", "x", &spec("000.00.20.H53", 1)),
            Ok(())
        );
    }

    #[test]
    fn a_namespace_two_agencies_claim_belongs_to_neither() {
        let mut agencies = register();
        agencies.push(agency(
            "rogue",
            "000.00.99.H53",
            &["so-y-te"],
            serde_json::json!({}),
        ));
        let why = owner(&agencies, "so-y-te").unwrap_err();
        assert!(why.contains("health") && why.contains("rogue"), "{why}");
    }

    #[test]
    fn restores_cross_namespaces_only_where_the_target_agency_lists_the_pair() {
        let agencies = register();
        let at = |namespace: &str, name: &str| NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        };
        assert!(restore_allowed(
            &agencies,
            &at("so-y-te", "b"),
            &at("so-y-te", "z")
        ));
        assert!(restore_allowed(
            &agencies,
            &at("so-y-te", "b"),
            &at("old", "a")
        ));
        assert!(!restore_allowed(
            &agencies,
            &at("so-y-te", "c"),
            &at("old", "a")
        ));
        assert!(!restore_allowed(
            &agencies,
            &at("so-lao-dong", "b"),
            &at("so-y-te", "b")
        ));
    }

    #[test]
    fn grants_deliver_only_into_the_consumer_agency_s_own_namespace() {
        let agencies = register();
        assert_eq!(
            consumer_refusal(&agencies, "so-lao-dong", "000.00.20.H53", "sectordb-system"),
            None
        );
        for namespace in ["kube-system", "default", "sectordb-system", "unregistered"] {
            assert!(
                consumer_refusal(&agencies, namespace, "000.00.20.H53", "sectordb-system")
                    .is_some(),
                "{namespace}"
            );
        }
        let wrong_code =
            consumer_refusal(&agencies, "so-y-te", "000.00.20.H53", "sectordb-system").unwrap();
        assert!(
            wrong_code.starts_with("spec.consumer.agency.code"),
            "{wrong_code}"
        );
    }
}
