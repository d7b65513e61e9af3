//! The SectorDatabase controller. In this version it validates the spec, pins the immutable
//! fields and reports compliance; no PostgreSQL is provisioned yet, so a database is never Ready.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::{Context, Result, announce, now, report_undecodable, write_status};
use crate::api::SectorDatabase;
use crate::api::database::{DatabasePhase, InstanceCounts, PinnedSpec, SectorDatabaseStatus};
use crate::conditions::{Want, settle};
use crate::profile::{Observed, SecurityProfile};
use crate::validate;

pub const CONTROLLER: &str = "database";

/// The status a database should have, from its spec and what was observed. Pure.
pub fn desired_status(
    db: &SectorDatabase,
    profile: &SecurityProfile,
    observed: &Observed,
    now: &Time,
) -> SectorDatabaseStatus {
    let previous = db.status.clone().unwrap_or_default();
    let generation = db.metadata.generation;
    let compliance = profile.evaluate(&db.spec, observed);
    let unmet: Vec<&str> = compliance
        .findings
        .iter()
        .filter(|f| !f.satisfied)
        .map(|f| f.rule.as_str())
        .collect();
    let compliant = if unmet.is_empty() {
        Want::new(
            "Compliant",
            true,
            "ProfileSatisfied",
            format!("every rule of level {} is met", db.spec.security_level),
        )
    } else {
        Want::new(
            "Compliant",
            false,
            "ProfileNotSatisfied",
            format!("unmet rules: {}", unmet.join(", ")),
        )
    };
    let (phase, pinned, wanted) = match validate::database(&db.spec, previous.pinned.as_ref()) {
        Err(violations) => {
            let message = validate::describe(&violations);
            (
                DatabasePhase::Failed,
                previous.pinned.clone(),
                vec![
                    Want::new("Ready", false, "InvalidSpec", message.clone()),
                    Want::new("Progressing", false, "InvalidSpec", message),
                    compliant,
                ],
            )
        }
        Ok(()) => {
            let message = "no PostgreSQL instance runs for this database: this operator version validates \
                           SectorDatabases but does not provision them yet";
            (
                DatabasePhase::Pending,
                Some(pin(db, previous.pinned.as_ref())),
                vec![
                    Want::new("Ready", false, "NotProvisioned", message),
                    Want::new("Progressing", false, "NotProvisioned", message),
                    compliant,
                ],
            )
        }
    };
    SectorDatabaseStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: settle(wanted, &previous.conditions, generation, now),
        instances: Some(InstanceCounts {
            desired: db.spec.instances,
            ready: 0,
        }),
        compliance: Some(compliance),
        pinned,
        ..previous
    }
}

/// The immutable values of a valid spec; the storage size only ever moves up.
fn pin(db: &SectorDatabase, before: Option<&PinnedSpec>) -> PinnedSpec {
    match before {
        Some(before) => PinnedSpec {
            storage_size: db.spec.storage.size.clone(),
            ..before.clone()
        },
        None => PinnedSpec {
            database: db.spec.database.clone(),
            storage_size: db.spec.storage.size.clone(),
            bootstrap: db.spec.bootstrap.clone(),
        },
    }
}

async fn reconcile(
    guard: Arc<DeserializeGuard<SectorDatabase>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let namespace = guard.namespace().unwrap_or_default();
    let api: Api<SectorDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
    let db = match &guard.0 {
        Ok(db) => db,
        Err(invalid) => {
            return report_undecodable(&ctx, CONTROLLER, &api, invalid, Some("Failed")).await;
        }
    };
    let status = desired_status(db, &ctx.profile, &Observed::default(), &now());
    write_status(&ctx, CONTROLLER, &api, db, &status).await?;
    let previous = db
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = status.conditions.iter().find(|c| c.type_ == "Ready") {
        announce(&ctx, db, previous, ready).await?;
    }
    Ok(Action::await_change())
}

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, super::error_policy(CONTROLLER), ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(spec: serde_json::Value, status: Option<serde_json::Value>) -> SectorDatabase {
        let mut obj = serde_json::json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "d", "namespace": "n", "generation": 3}, "spec": spec
        });
        if let Some(status) = status {
            obj["status"] = status;
        }
        serde_json::from_value(obj).unwrap()
    }

    fn spec(name: &str, size: &str) -> serde_json::Value {
        serde_json::json!({
            "agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
            "securityLevel": 3, "storage": {"size": size}, "database": {"name": name, "owner": "app"}
        })
    }

    fn ready(status: &SectorDatabaseStatus) -> (&str, &str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn valid_database_without_postgres_is_pending_not_ready() {
        let status = desired_status(
            &db(spec("health", "1Gi"), None),
            &SecurityProfile::default(),
            &Observed::default(),
            &now(),
        );
        assert_eq!(status.phase, Some(DatabasePhase::Pending));
        assert_eq!(ready(&status), ("False", "NotProvisioned"));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.pinned.unwrap().database.name, "health");
    }

    #[test]
    fn renamed_database_is_invalid_and_keeps_the_pin() {
        let first = desired_status(
            &db(spec("health", "1Gi"), None),
            &SecurityProfile::default(),
            &Observed::default(),
            &now(),
        );
        let renamed = db(
            spec("other", "1Gi"),
            Some(serde_json::to_value(&first).unwrap()),
        );
        let status = desired_status(
            &renamed,
            &SecurityProfile::default(),
            &Observed::default(),
            &now(),
        );
        assert_eq!(status.phase, Some(DatabasePhase::Failed));
        assert_eq!(ready(&status), ("False", "InvalidSpec"));
        assert!(
            status.conditions[0].message.contains("spec.database"),
            "{}",
            status.conditions[0].message
        );
        assert_eq!(status.pinned.unwrap().database.name, "health");
    }

    #[test]
    fn reconciling_twice_yields_the_same_status() {
        let t0 = now();
        let first = desired_status(
            &db(spec("health", "1Gi"), None),
            &SecurityProfile::default(),
            &Observed::default(),
            &t0,
        );
        let again_at = Time(t0.0 + jiff::SignedDuration::from_secs(60));
        let second = desired_status(
            &db(
                spec("health", "1Gi"),
                Some(serde_json::to_value(&first).unwrap()),
            ),
            &SecurityProfile::default(),
            &Observed::default(),
            &again_at,
        );
        assert_eq!(first, second);
    }

    #[test]
    fn grown_storage_moves_the_pin_up() {
        let first = desired_status(
            &db(spec("health", "1Gi"), None),
            &SecurityProfile::default(),
            &Observed::default(),
            &now(),
        );
        let grown = db(
            spec("health", "2Gi"),
            Some(serde_json::to_value(&first).unwrap()),
        );
        let status = desired_status(
            &grown,
            &SecurityProfile::default(),
            &Observed::default(),
            &now(),
        );
        assert_eq!(status.pinned.unwrap().storage_size.0, "2Gi");
    }
}
