//! The DataSharingConnection controller. In this version it decides whether a grant would be
//! allowed (deny by default) and reports it; no PostgreSQL role is created yet, so a connection
//! never becomes Active.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::{Context, Result, announce, now, report_undecodable, write_status};
use crate::api::connection::{ConnectionPhase, DataSharingConnectionStatus};
use crate::api::{DataSharingConnection, SectorDatabase};
use crate::conditions::{Want, settle, status_of};
use crate::validate;

pub const CONTROLLER: &str = "connection";

/// What the controller read about the objects a connection names.
pub struct Facts<'a> {
    pub provider: Option<&'a SectorDatabase>,
    pub consumer_namespace_exists: bool,
    pub now: &'a Time,
}

/// The status a connection should have, and when to look again. Pure.
pub fn desired_status(
    conn: &DataSharingConnection,
    facts: &Facts,
) -> (DataSharingConnectionStatus, Action) {
    let spec = &conn.spec;
    let until = &spec.valid_until;
    let (phase, reason, message, action) = if let Err(violations) = validate::connection(spec) {
        (
            ConnectionPhase::Denied,
            "InvalidSpec",
            validate::describe(&violations),
            Action::await_change(),
        )
    } else if spec.suspended {
        (
            ConnectionPhase::Suspended,
            "Suspended",
            "spec.suspended is true: no access".into(),
            Action::await_change(),
        )
    } else if until.0 <= facts.now.0 {
        (
            ConnectionPhase::Expired,
            "Expired",
            format!("spec.validUntil {} has passed", until.0),
            Action::await_change(),
        )
    } else {
        let (phase, reason, message) = eligibility(conn, facts);
        // Look again at the expiry instant at the latest, so a lapsed grant is noticed on time.
        let left = until.0.duration_since(facts.now.0).unsigned_abs();
        let recheck = if reason == "ConsumerNamespaceNotFound" {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(3600)
        };
        (phase, reason, message, Action::requeue(left.min(recheck)))
    };
    let previous = conn.status.clone().unwrap_or_default();
    let generation = conn.metadata.generation;
    let wanted = vec![
        Want::new("Ready", false, reason, message.clone()),
        Want::new("Granted", false, reason, message),
    ];
    let status = DataSharingConnectionStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: settle(wanted, &previous.conditions, generation, facts.now),
        expires_at: Some(until.clone()),
        ..previous
    };
    (status, action)
}

/// Deny by default: the provider must exist in this namespace, declare the dataset, and the
/// consumer's namespace must exist. A provider that is not Ready leaves the connection Pending.
fn eligibility(
    conn: &DataSharingConnection,
    facts: &Facts,
) -> (ConnectionPhase, &'static str, String) {
    let wanted = &conn.spec.provider;
    let Some(provider) = facts.provider else {
        return (
            ConnectionPhase::Pending,
            "ProviderNotFound",
            format!(
                "spec.provider.database: no SectorDatabase {:?} in this namespace",
                wanted.database
            ),
        );
    };
    let declared = provider
        .spec
        .sharing
        .iter()
        .flat_map(|s| &s.datasets)
        .any(|d| d.name == wanted.dataset);
    if !declared {
        return (
            ConnectionPhase::Denied,
            "DatasetNotDeclared",
            format!(
                "spec.provider.dataset: {:?} does not declare a dataset {:?}",
                wanted.database, wanted.dataset
            ),
        );
    }
    if !facts.consumer_namespace_exists {
        return (
            ConnectionPhase::Denied,
            "ConsumerNamespaceNotFound",
            format!(
                "spec.consumer.namespace: namespace {:?} does not exist",
                conn.spec.consumer.namespace
            ),
        );
    }
    let provider_ready = provider
        .status
        .as_ref()
        .and_then(|s| status_of(&s.conditions, "Ready"))
        == Some("True");
    if !provider_ready {
        return (
            ConnectionPhase::Pending,
            "ProviderNotReady",
            format!(
                "waiting for SectorDatabase {:?} to be Ready before granting access",
                wanted.database
            ),
        );
    }
    (
        ConnectionPhase::Pending,
        "GrantNotSupported",
        "the grant is allowed, but this operator version does not create sharing roles yet".into(),
    )
}

async fn reconcile(
    guard: Arc<DeserializeGuard<DataSharingConnection>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = guard.namespace().unwrap_or_default();
    let api: Api<DataSharingConnection> = Api::namespaced(ctx.client.clone(), &namespace);
    let conn = match &guard.0 {
        Ok(conn) => conn,
        Err(invalid) => {
            return report_undecodable(&ctx, CONTROLLER, &api, invalid, Some("Denied")).await;
        }
    };
    let databases: Api<SectorDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
    let provider = databases.get_opt(&conn.spec.provider.database).await?;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let consumer_namespace_exists = namespaces
        .get_opt(&conn.spec.consumer.namespace)
        .await?
        .is_some();
    let now = now();
    let facts = Facts {
        provider: provider.as_ref(),
        consumer_namespace_exists,
        now: &now,
    };
    let (status, action) = desired_status(conn, &facts);
    write_status(&ctx, CONTROLLER, &api, conn, &status).await?;
    let previous = conn
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = status.conditions.iter().find(|c| c.type_ == "Ready") {
        announce(&ctx, conn, previous, ready).await;
    }
    Ok(action)
}

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<DataSharingConnection>> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let connections = controller.store();
    // A provider's change (declared datasets, readiness) re-evaluates every connection on it.
    let databases: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    controller
        .watches(databases, watcher::Config::default(), move |db| {
            let (namespace, name) = (db.namespace(), db.name_any());
            connections
                .state()
                .into_iter()
                .filter(|c| {
                    c.namespace() == namespace
                        && c.0.as_ref().is_ok_and(|c| c.spec.provider.database == name)
                })
                .map(|c| ObjectRef::from_obj(&*c))
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

    fn conn(valid_until: &str, suspended: bool) -> DataSharingConnection {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "DataSharingConnection",
            "metadata": {"name": "c", "namespace": "so-y-te", "generation": 1},
            "spec": {
                "provider": {"database": "health-records", "dataset": "vaccinations"},
                "consumer": {"agency": {"code": "000.00.20.H53", "name": "Labour"}, "namespace": "so-lao-dong"},
                "purpose": "Verify eligibility for support", "legalBasis": "Decree 47/2020/ND-CP",
                "validUntil": valid_until, "suspended": suspended
            }
        }))
        .unwrap()
    }

    fn provider(datasets: serde_json::Value, ready: bool) -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "health-records", "namespace": "so-y-te"},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Shared",
                     "securityLevel": 3, "storage": {"size": "1Gi"}, "database": {"name": "h", "owner": "app"},
                     "sharing": {"datasets": datasets}},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": "r",
                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn vaccinations() -> serde_json::Value {
        json!([{"name": "vaccinations", "tables": [{"schema": "public", "name": "v", "columns": ["id"]}]}])
    }

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    fn outcome(
        conn: &DataSharingConnection,
        provider: Option<&SectorDatabase>,
        ns: bool,
    ) -> (ConnectionPhase, String, Action) {
        let now = at("2026-11-23T00:00:00Z");
        let (status, action) = desired_status(
            conn,
            &Facts {
                provider,
                consumer_namespace_exists: ns,
                now: &now,
            },
        );
        (
            status.phase.unwrap(),
            status.conditions[0].reason.clone(),
            action,
        )
    }

    #[test]
    fn undeclared_dataset_is_denied() {
        let p = provider(json!([]), true);
        let (phase, reason, _) = outcome(&conn("2027-01-01T00:00:00Z", false), Some(&p), true);
        assert_eq!(
            (phase, reason.as_str()),
            (ConnectionPhase::Denied, "DatasetNotDeclared")
        );
    }

    #[test]
    fn missing_consumer_namespace_is_denied() {
        let p = provider(vaccinations(), true);
        let (phase, reason, _) = outcome(&conn("2027-01-01T00:00:00Z", false), Some(&p), false);
        assert_eq!(
            (phase, reason.as_str()),
            (ConnectionPhase::Denied, "ConsumerNamespaceNotFound")
        );
    }

    #[test]
    fn provider_not_ready_keeps_the_connection_pending() {
        let p = provider(vaccinations(), false);
        let (phase, reason, _) = outcome(&conn("2027-01-01T00:00:00Z", false), Some(&p), true);
        assert_eq!(
            (phase, reason.as_str()),
            (ConnectionPhase::Pending, "ProviderNotReady")
        );
        let (phase, reason, _) = outcome(&conn("2027-01-01T00:00:00Z", false), None, true);
        assert_eq!(
            (phase, reason.as_str()),
            (ConnectionPhase::Pending, "ProviderNotFound")
        );
    }

    #[test]
    fn past_valid_until_is_expired_and_suspended_is_suspended() {
        let p = provider(vaccinations(), true);
        assert_eq!(
            outcome(&conn("2026-01-01T00:00:00Z", false), Some(&p), true).0,
            ConnectionPhase::Expired
        );
        assert_eq!(
            outcome(&conn("2027-01-01T00:00:00Z", true), Some(&p), true).0,
            ConnectionPhase::Suspended
        );
    }

    #[test]
    fn an_expiring_connection_is_rechecked_at_its_expiry() {
        let p = provider(vaccinations(), false);
        let (_, _, action) = outcome(&conn("2026-11-23T00:00:20Z", false), Some(&p), true);
        assert_eq!(action, Action::requeue(Duration::from_secs(20)));
    }
}
