//! Tests that take the operator down: they run after the others, one at a time, side by side
//! only with the provincial data center's outage (which none of these depends on).

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use sectordb::api::connection::ConnectionPhase;
use sectordb::api::{DataSharingConnection, SectorDatabase};
use sectordb::backup::exec;
use sectordb::sharing_sql;
use sectordb_e2e::backup::{Setup, objects, request_backup, request_done};
use sectordb_e2e::sharing::{Agencies, agencies, connection, phase};
use sectordb_e2e::{
    OPERATOR_NAME, OPERATOR_NAMESPACE, Superuser, TestNamespace, client, connect_with, database,
    is_ready, observed_current, operator_pod, operator_ready, pod_ready, poll, proxy_get, wait_for,
};

use serde_json::json;

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
            "interrupted-replication",
            "interrupted-server-tls"
        ]
    );
    let session = Superuser::of(&client, &ns.name, "interrupted")
        .await?
        .connect("postgres")
        .await?;
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
        pods.items.iter().any(pod_ready).then_some(())
    })
    .await?;
    ns.delete().await
}

async fn scale_operator(client: &kube::Client, replicas: i32) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    deployments
        .patch(
            OPERATOR_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    poll(2 * MINUTE, "the operator scaled", || async {
        let running = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=sectordb-operator"))
            .await
            .ok()?
            .items
            .len();
        match replicas {
            0 => (running == 0).then_some(()),
            _ => (operator_ready(client).await.ok()? == "ready").then_some(()),
        }
    })
    .await
}

/// What an operator that died between `CREATE ROLE` and delivering the Secret leaves behind:
/// the role with a password nobody holds, and a grant it should not have. The next operator
/// must finish the grant on that role, exactly as the connection says.
async fn finish_an_interrupted_grant(client: &kube::Client, a: &Agencies) -> Result<()> {
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    let created = api
        .create(
            &PostParams::default(),
            &connection(
                "interrupted",
                &a.consumer.name,
                "2030-01-01T00:00:00Z",
                "vaccinations",
            )?,
        )
        .await?;
    let role = sharing_sql::role_name(&created.uid().context("no uid")?);
    let provider = Superuser::of(client, &a.provider.name, "records")
        .await?
        .connect("health")
        .await?;
    provider
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'left-behind-by-a-dead-operator';
             GRANT SELECT (patient_name) ON vaccination_records TO {role};"
        ))
        .await?;

    scale_operator(client, 1).await?;
    let conn = wait_for(&api, "interrupted", 2 * MINUTE, "Active", |c| {
        phase(c) == Some(ConnectionPhase::Active)
    })
    .await?
    .context("connection vanished")?;
    let roles: i64 = provider
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dsc\\_%'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        roles, 1,
        "one role per connection, whatever happened before"
    );
    assert_eq!(
        conn.status.as_ref().and_then(|s| s.role.clone()),
        Some(role)
    );
    let secret_name = conn
        .status
        .and_then(|s| s.secret_ref)
        .context("no secretRef")?
        .name;
    let secret = Api::<Secret>::namespaced(client.clone(), &a.consumer.name)
        .get(&secret_name)
        .await?;
    let consumer = connect_with(&secret).await?;
    let rows = consumer
        .query("SELECT id, district, vaccine FROM vaccination_records", &[])
        .await?;
    assert_eq!(rows.len(), 1);
    let leaked = consumer
        .query("SELECT patient_name FROM vaccination_records", &[])
        .await
        .expect_err("the grant left behind must be revoked");
    assert_eq!(
        leaked.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    Ok(())
}

#[tokio::test]
async fn a_grant_interrupted_between_its_steps_ends_right_without_a_second_role() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "regrant").await?;
    scale_operator(&client, 0).await?;
    let outcome = finish_an_interrupted_grant(&client, &a).await;
    // Whatever happened, the operator runs again for the tests after this one.
    scale_operator(&client, 1).await?;
    outcome?;
    a.delete().await
}

/// Whether a pgBackRest backup runs in `pod` now.
async fn backup_running(pods: &Api<Pod>, pod: &str) -> bool {
    // No ps in the image; the bracket keeps grep from finding its own command line.
    let command = [
        "sh",
        "-c",
        "grep -lsaq -- '--type=ful[l]' /proc/[0-9]*/cmdline",
    ]
    .map(String::from)
    .to_vec();
    exec::run(pods, pod, command, Duration::from_secs(20))
        .await
        .is_ok_and(|o| o.succeeded())
}

#[tokio::test]
async fn an_operator_killed_during_a_backup_never_reports_one_the_repository_lacks() -> Result<()> {
    let client = client().await?;
    // The provincial data center is cut off by a test running meanwhile (scripts/test).
    let (setup, store, _) =
        Setup::with_primary(&client, "bkill", 1, None, "GovernmentDataCenter").await?;
    let ns = setup.ns.name.clone();
    let api = setup.backed_up_database().await?;
    // Enough data that the backup lasts a few seconds.
    connect_with(
        &Api::<Secret>::namespaced(client.clone(), &ns)
            .get("db-app")
            .await?,
    )
    .await?
    .batch_execute(
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS a, md5((g + 1)::text) AS b FROM generate_series(1, 3000000) g",
    )
    .await?;
    request_backup(&api, "during-restart").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    poll(2 * MINUTE, "the requested backup running", || async {
        backup_running(&pods, "db-0").await.then_some(())
    })
    .await?;
    let old = operator_pod(&client).await?.name_any();
    Api::<Pod>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .delete(
            &old,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    // The new operator finishes the request: the backup completed, or ran again.
    let db = request_done(&api, "during-restart", 5 * MINUTE).await?;
    let backup = db
        .status
        .and_then(|s| s.backup)
        .context("no status.backup")?;
    let (stanza, label) = (
        backup.stanza.clone().context("no stanza")?,
        backup
            .last_successful
            .as_ref()
            .and_then(|l| l.label.clone())
            .context("no label")?,
    );
    let found = objects(&client, &store, &format!("/{ns}"), "no marker").await?;
    let complete = |label: &str| {
        found.iter().any(|o| {
            o.key
                .ends_with(&format!("backup/{stanza}/{label}/backup.manifest"))
        })
    };
    assert!(
        complete(&label),
        "status names {label}, which the bucket lacks"
    );
    let in_bucket: std::collections::BTreeSet<&str> = found
        .iter()
        .filter(|o| o.key.ends_with("/backup.manifest"))
        .filter_map(|o| o.key.split('/').rev().nth(1))
        .collect();
    assert_eq!(
        backup.backups,
        Some(in_bucket.len() as i32),
        "status counts {:?} backups, the bucket holds {in_bucket:?}",
        backup.backups
    );
    setup.delete().await
}
