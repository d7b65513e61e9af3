//! The BackupPolicy controller. In this version it validates the policy and counts the databases
//! it selects; it runs no backups yet, so a policy is never Ready and no database is healthy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::ListParams;
use kube::core::{DeserializeGuard, Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::{Context, Result, announce, now, report_undecodable, write_status};
use crate::api::policy::{BackupPolicyStatus, DatabaseSelector};
use crate::api::{BackupPolicy, SectorDatabase};
use crate::conditions::{Want, settle};
use crate::validate;

pub const CONTROLLER: &str = "policy";

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

/// The status a policy should have. Pure.
pub fn desired_status(policy: &BackupPolicy, selected: i32, now: &Time) -> BackupPolicyStatus {
    let want = match validate::policy(&policy.spec) {
        Err(violations) => Want::new(
            "Ready",
            false,
            "InvalidSpec",
            validate::describe(&violations),
        ),
        Ok(()) => Want::new(
            "Ready",
            false,
            "BackupsNotRunning",
            format!(
                "{selected} databases selected; this operator version does not run backups yet"
            ),
        ),
    };
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    BackupPolicyStatus {
        observed_generation: generation,
        conditions: settle(vec![want], &previous.conditions, generation, now),
        selected_databases: Some(selected),
        healthy_databases: Some(0),
        ..previous
    }
}

async fn reconcile(
    guard: Arc<DeserializeGuard<BackupPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let api: Api<BackupPolicy> = Api::all(ctx.client.clone());
    let policy = match &guard.0 {
        Ok(policy) => policy,
        Err(invalid) => return report_undecodable(&ctx, CONTROLLER, &api, invalid, None).await,
    };
    let namespaces: BTreeMap<String, BTreeMap<String, String>> =
        Api::<Namespace>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect();
    let databases = Api::<DeserializeGuard<SectorDatabase>>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let no_labels = BTreeMap::new();
    let selected = databases
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|db| {
            let labels = db
                .namespace()
                .and_then(|ns| namespaces.get(&ns))
                .unwrap_or(&no_labels);
            selects(&policy.spec.database_selector, labels, db)
        })
        .count();
    let status = desired_status(policy, i32::try_from(selected).unwrap_or(i32::MAX), &now());
    write_status(&ctx, CONTROLLER, &api, policy, &status).await?;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = status.conditions.first() {
        announce(&ctx, policy, previous, ready).await;
    }
    // Namespace labels are not watched; a periodic look keeps the count true when they change.
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<BackupPolicy>> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let policies = controller.store();
    // Any database change may change what every policy selects.
    let databases: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    controller
        .watches(databases, watcher::Config::default(), move |_| {
            policies
                .state()
                .into_iter()
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, super::error_policy(CONTROLLER), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db(level: i32, labels: serde_json::Value) -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "d", "namespace": "n", "labels": labels},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
                     "securityLevel": level, "storage": {"size": "1Gi"}, "database": {"name": "h", "owner": "app"}}
        }))
        .unwrap()
    }

    fn selector(value: serde_json::Value) -> DatabaseSelector {
        serde_json::from_value(value).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_selects_nothing() {
        assert!(!selects(
            &selector(json!({})),
            &labels(&[]),
            &db(3, json!({}))
        ));
    }

    #[test]
    fn namespace_selector_and_levels_both_apply() {
        let s = selector(
            json!({"namespaceSelector": {"matchLabels": {"sectordb.io/backup": "standard"}}, "securityLevels": [3]}),
        );
        let standard = labels(&[("sectordb.io/backup", "standard")]);
        assert!(selects(&s, &standard, &db(3, json!({}))));
        assert!(!selects(&s, &standard, &db(2, json!({}))));
        assert!(!selects(&s, &labels(&[]), &db(3, json!({}))));
    }

    #[test]
    fn database_label_selector_applies() {
        let s = selector(
            json!({"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]}}),
        );
        assert!(selects(&s, &labels(&[]), &db(1, json!({"tier": "gold"}))));
        assert!(!selects(
            &s,
            &labels(&[]),
            &db(1, json!({"tier": "bronze"}))
        ));
    }
}
