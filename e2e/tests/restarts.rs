//! Tests that take the operator down: they run after the others, one at a time.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use sectordb::api::SectorDatabase;
use sectordb_e2e::{
    OPERATOR_NAME, OPERATOR_NAMESPACE, TestNamespace, client, connect_with, database, is_ready,
    observed_current, operator_pod, operator_ready, poll, proxy_get, wait_for,
};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn operator_survives_losing_its_pod_and_the_lease_moves() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "failover").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("steady", 2))?,
    )
    .await?;
    let before = wait_for(&api, "steady", MINUTE, "status written", observed_current)
        .await?
        .context("gone")?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let holder = |l: Option<&Lease>| l.and_then(|l| l.spec.as_ref()?.holder_identity.clone());
    let old = operator_pod(&client).await?.name_any();
    assert_eq!(
        holder(leases.get_opt(OPERATOR_NAME).await?.as_ref()),
        Some(old.clone())
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    pods.delete(&old, &DeleteParams::default()).await?;
    let lease = wait_for(&leases, OPERATOR_NAME, 2 * MINUTE, "a new holder", |l| {
        holder(l).is_some_and(|h| h != old)
    })
    .await?;
    let new = holder(lease.as_ref()).unwrap();
    poll(2 * MINUTE, "the new operator pod ready", || async {
        (operator_pod(&client).await.ok()?.name_any() == new
            && operator_ready(&client).await.ok()? == "ready")
            .then_some(())
    })
    .await?;

    // The new leader reconciles what exists without rewriting it: a no-op reconcile writes nothing.
    poll(
        MINUTE,
        "the new operator has reconciled databases",
        || async {
            let m = proxy_get(
                &client,
                OPERATOR_NAMESPACE,
                &format!("pods/{new}:8080"),
                "/metrics",
            )
            .await
            .ok()?;
            m.lines()
                .find(|l| l.starts_with("sectordb_reconciles_total{controller=\"database\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .filter(|n| *n >= 1.0)
        },
    )
    .await?;
    let after = api.get("steady").await?;
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "a no-op reconcile rewrote the status"
    );
    ns.delete().await
}

#[tokio::test]
async fn an_operator_killed_while_provisioning_finishes_without_duplicates() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "killed").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("interrupted", 2))?,
    )
    .await?;
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    // Kill the operator as soon as it has started on the database.
    wait_for(
        &api,
        "interrupted",
        Duration::from_secs(60),
        "provisioning started",
        |db| db.and_then(|d| d.status.as_ref()).is_some(),
    )
    .await?;
    let list = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=sectordb-operator"))
        .await?;
    for pod in list {
        operator_pods
            .delete(
                &pod.name_any(),
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await?;
    }
    wait_for(
        &api,
        "interrupted",
        Duration::from_secs(240),
        "Ready=True after the restart",
        is_ready,
    )
    .await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        statefulsets.list(&ListParams::default()).await?.items.len(),
        1
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let names: Vec<String> = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/instance=interrupted"))
        .await?
        .iter()
        .map(|s| s.name_any())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "interrupted-app",
            "interrupted-ca",
            "interrupted-server-tls",
            "interrupted-superuser"
        ]
    );
    let superuser = secrets.get("interrupted-superuser").await?;
    let session = connect_with(&superuser).await?;
    let roles: i64 = session
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = 'app'", &[])
        .await?
        .get(0);
    let dbs: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'health'",
            &[],
        )
        .await?
        .get(0);
    if (roles, dbs) != (1, 1) {
        bail!("expected one role and one database, found {roles} and {dbs}");
    }
    // Wait until the operator is back before the next test.
    poll(Duration::from_secs(120), "operator ready again", || async {
        let pods = operator_pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=sectordb-operator"))
            .await
            .ok()?;
        pods.items
            .iter()
            .any(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(())
    })
    .await?;
    ns.delete().await
}
