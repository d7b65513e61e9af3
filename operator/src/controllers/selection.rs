//! Which databases a BackupPolicy selects; which databases an event of a policy concerns and
//! which policies an event of a database concerns: the controllers wake only those, from what
//! the watches already delivered, with no API call per event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::api::policy::DatabaseSelector;
use crate::api::{BackupPolicy, SectorDatabase};

/// Whether a label selector matches; a selector that cannot be read matches nothing.
fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Whether a policy's selector picks a database in a namespace with `namespace_labels`. A
/// selector with neither `namespaceSelector` nor `selector` picks none.
pub fn selects(
    selector: &DatabaseSelector,
    namespace_labels: &BTreeMap<String, String>,
    db: &SectorDatabase,
) -> bool {
    if selector.namespace_selector.is_none() && selector.selector.is_none() {
        return false;
    }
    selector
        .namespace_selector
        .as_ref()
        .is_none_or(|s| matches(s, namespace_labels))
        && selector
            .selector
            .as_ref()
            .is_none_or(|s| matches(s, db.labels()))
        && (selector.security_levels.is_empty()
            || selector.security_levels.contains(&db.spec.security_level))
}

/// The namespaces' labels as their watch last delivered them (policies select by them).
#[derive(Clone, Default)]
pub struct NamespaceLabels(Arc<RwLock<HashMap<String, BTreeMap<String, String>>>>);

impl NamespaceLabels {
    /// Records a namespace as a watch event shows it.
    pub fn record(&self, namespace: &Namespace) {
        if let Ok(mut map) = self.0.write() {
            map.insert(namespace.name_any(), namespace.labels().clone());
        }
    }

    /// The labels of `namespace`, once its watch has delivered it.
    pub fn get(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.0.read().ok()?.get(namespace).cloned()
    }
}

/// Whether a change of `policy` may change what `db` should do: the policy selects it, or
/// selected it (the database's status names the policy), or the namespace's labels are not
/// known yet (then it is woken rather than missed).
pub fn concerns(
    policy: &BackupPolicy,
    namespace_labels: Option<&BTreeMap<String, String>>,
    db: &SectorDatabase,
) -> bool {
    let named = db
        .status
        .as_ref()
        .and_then(|s| s.backup.as_ref()?.policy.as_deref())
        == Some(policy.name_any().as_str());
    named
        || namespace_labels.is_none_or(|labels| selects(&policy.spec.database_selector, labels, db))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy() -> BackupPolicy {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "p"},
            "spec": {"databaseSelector": {"namespaceSelector": {"matchLabels": {"backup": "p"}}},
                     "schedule": {"full": "0 1 * * 0"}, "retention": {"fullBackups": 2},
                     "repositories": [{"name": "r", "role": "ProvincialDataCenter", "s3": {
                        "endpoint": "https://10.0.0.1", "bucket": "b", "credentialsSecret": {"name": "s"}}}]}
        }))
        .unwrap()
    }

    fn db(status: serde_json::Value) -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "d", "namespace": "n"},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
                     "securityLevel": 3, "storage": {"size": "1Gi"}, "database": {"name": "h", "owner": "app"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn a_policy_event_concerns_the_databases_it_selects_or_selected_and_no_others() {
        let selected = BTreeMap::from([("backup".to_string(), "p".to_string())]);
        let other = BTreeMap::from([("backup".to_string(), "q".to_string())]);
        let p = policy();
        assert!(concerns(&p, Some(&selected), &db(json!({}))));
        assert!(!concerns(&p, Some(&other), &db(json!({}))));
        assert!(
            concerns(&p, Some(&other), &db(json!({"backup": {"policy": "p"}}))),
            "a database the policy no longer selects hears that it left"
        );
        assert!(!concerns(
            &p,
            Some(&other),
            &db(json!({"backup": {"policy": "q"}}))
        ));
        assert!(
            concerns(&p, None, &db(json!({}))),
            "unknown namespace: woken"
        );
    }
}
