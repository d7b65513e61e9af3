//! The Agency controller: reports whether each registered agency's namespaces are its alone, and
//! how many SectorDatabases they hold. It writes nothing but the Agency's status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::names::AGENCY as CONTROLLER;
use super::{Context, Result, announce, now, report_undecodable, write_status};
use crate::api::agency::AgencyStatus;
use crate::api::{Agency, SectorDatabase};
use crate::conditions::{Want, settle};
use crate::tenancy;

/// The status an Agency should have, given the whole register and the databases' namespaces.
/// Pure.
pub fn desired_status(
    agency: &Agency,
    register: &[Agency],
    database_namespaces: &[String],
    now: &Time,
) -> AgencyStatus {
    let conflicts: Vec<String> = agency
        .spec
        .namespaces
        .iter()
        .filter_map(|ns| tenancy::owner(register, ns).err())
        .collect();
    let ready = if conflicts.is_empty() {
        Want::new(
            "Ready",
            true,
            "Registered",
            "every namespace listed is this agency's alone",
        )
    } else {
        Want::new("Ready", false, "NamespaceConflict", conflicts.join("; "))
    };
    let previous = agency.status.clone().unwrap_or_default();
    let databases = database_namespaces
        .iter()
        .filter(|ns| agency.spec.namespaces.contains(ns))
        .count();
    AgencyStatus {
        observed_generation: agency.metadata.generation,
        conditions: settle(
            vec![ready],
            &previous.conditions,
            agency.metadata.generation,
            now,
        ),
        databases: i32::try_from(databases).unwrap_or(i32::MAX),
    }
}

async fn reconcile(guard: Arc<DeserializeGuard<Agency>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let api: Api<Agency> = Api::all(ctx.client.clone());
    let agency = match &guard.0 {
        Ok(agency) => agency,
        Err(invalid) => return report_undecodable(&ctx, CONTROLLER, &api, invalid, None).await,
    };
    let register = super::agencies(&ctx).await?;
    let namespaces: Vec<String> = Api::<DeserializeGuard<SectorDatabase>>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|db| db.metadata.namespace)
        .collect();
    let status = desired_status(agency, &register, &namespaces, &now());
    write_status(&ctx, CONTROLLER, &api, agency, &status).await?;
    let previous = agency
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = status.conditions.first() {
        announce(&ctx, agency, previous, ready).await;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<Agency>> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    // A database's arrival or departure changes its agency's count. A conflict another Agency's
    // change creates or ends shows at the next periodic look.
    let databases: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    let by_database = controller.store();
    controller
        .watches(databases, watcher::Config::default(), move |db| {
            let namespace = db.namespace().unwrap_or_default();
            by_database
                .state()
                .into_iter()
                .filter(|a| {
                    a.0.as_ref()
                        .is_ok_and(|a| a.spec.namespaces.contains(&namespace))
                })
                .map(|a| ObjectRef::from_obj(&*a))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            super::counting_failures(CONTROLLER, reconcile),
            super::error_policy(CONTROLLER),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(name: &str, namespaces: &[&str]) -> Agency {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "Agency",
            "metadata": {"name": name, "generation": 2},
            "spec": {"code": "H53", "name": name, "namespaces": namespaces}
        }))
        .unwrap()
    }

    #[test]
    fn an_agency_counts_its_databases_and_reports_a_namespace_another_also_lists() {
        let health = agency("health", &["so-y-te", "so-y-te-2"]);
        let rogue = agency("rogue", &["so-y-te-2"]);
        let dbs = ["so-y-te".to_string(), "so-y-te".into(), "other".into()];
        let alone = desired_status(&health, std::slice::from_ref(&health), &dbs, &now());
        assert_eq!(alone.databases, 2);
        assert_eq!(alone.observed_generation, Some(2));
        assert_eq!(
            (
                alone.conditions[0].status.as_str(),
                alone.conditions[0].reason.as_str()
            ),
            ("True", "Registered")
        );
        let contested = desired_status(&health, &[health.clone(), rogue], &dbs, &now());
        assert_eq!(contested.conditions[0].reason, "NamespaceConflict");
        assert!(contested.conditions[0].message.contains("so-y-te-2"));
    }
}
