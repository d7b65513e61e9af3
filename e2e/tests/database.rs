//! SectorDatabase end to end: real PostgreSQL pods on the local cluster, TLS clients with the
//! delivered Secrets, faults, and deletion.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use sectordb::api::SectorDatabase;
use sectordb::api::database::DatabasePhase;
use sectordb_e2e::{
    Superuser, TestNamespace, client, connect_with, database, is_ready, libpq_from_secret,
    observed_current, pod_ready, poll, ready_reason, run_pod, secret_text, wait_for,
};
use serde_json::json;
use tokio_postgres::NoTls;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

async fn create_ready(client: &Client, ns: &str, name: &str, level: i32) -> Result<SectorDatabase> {
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database(name, level))?,
    )
    .await?;
    wait_for(&api, name, READY_TIMEOUT, "Ready=True", is_ready)
        .await?
        .context("database vanished")
}

#[tokio::test]
async fn a_database_becomes_ready_and_serves_tls_clients_only() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "tls").await?;
    let db = create_ready(&client, &ns.name, "records", 3).await?;
    let status = db.status.clone().context("no status")?;
    assert_eq!(status.phase, Some(DatabasePhase::Ready));
    let rw = status
        .endpoints
        .and_then(|e| e.read_write)
        .context("no read-write endpoint")?;
    assert_eq!(rw.host, format!("records-rw.{}.svc", ns.name));
    assert!(
        rw.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.parse::<IpAddr>().is_ok())
    );
    let compliance = status.compliance.context("no compliance")?;
    for rule in ["tls-only", "pgaudit"] {
        assert!(
            compliance
                .findings
                .iter()
                .any(|f| f.rule == rule && f.satisfied),
            "{rule} not satisfied: {compliance:?}"
        );
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let app = secrets
        .get(
            &status
                .secrets
                .and_then(|s| s.app)
                .context("no app Secret")?,
        )
        .await?;
    let keys: Vec<&String> = app.data.as_ref().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "ca.crt", "dbname", "host", "hostaddr", "password", "port", "uri", "user"
        ]
    );

    // With the CA from the Secret, over TLS: the owner works in its database.
    let session = connect_with(&app).await?;
    session
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
        .await?;
    let tls: bool = session
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(tls);

    // Without TLS: refused by pg_hba.
    let plain = format!(
        "host={} port=5432 user={} password={} dbname={} sslmode=disable",
        secret_text(&app, "hostaddr")?,
        secret_text(&app, "user")?,
        secret_text(&app, "password")?,
        secret_text(&app, "dbname")?
    );
    let refused = tokio_postgres::connect(&plain, NoTls)
        .await
        .err()
        .context("a plain connection was accepted")?;
    let message = refused
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("pg_hba.conf rejects connection"),
        "{refused:?}"
    );

    // From another pod, psql with nothing but the Secret: by the Service's DNS name, and by
    // name and address (for clusters without DNS). A new pod's first connections may be
    // refused while its node's kube-router and kube-proxy catch up with it: it tries again.
    for with_hostaddr in [false, true] {
        let psql = format!("psql \"{}\" -Atc", libpq_from_secret(with_hostaddr));
        let run = run_pod(
            &client,
            &ns.name,
            "psql",
            Some(&app.name_any()),
            &format!(
                "for i in $(seq 14); do {psql} 'SELECT 1' >/dev/null 2>&1 && break; sleep 1; done; {psql} 'SELECT count(*) FROM t'"
            ),
        )
        .await?;
        assert!(
            run.succeeded,
            "psql (hostaddr: {with_hostaddr}): {}",
            run.logs
        );
        assert_eq!(run.logs.trim(), "2", "hostaddr: {with_hostaddr}");
    }
    ns.delete().await
}

#[tokio::test]
async fn a_deleted_pod_comes_back_with_its_data_and_status_recovers() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "restart").await?;
    create_ready(&client, &ns.name, "durable", 2).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let app = secrets.get("durable-app").await?;
    connect_with(&app)
        .await?
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let old_uid = pods.get("durable-0").await?.uid();
    pods.delete("durable-0", &DeleteParams::default()).await?;
    // The replacement starts on the same node's volume within seconds, often before a
    // reconcile could report the gap (a pod that stays away is reported not Ready:
    // tests/nodes.rs). So: the new pod Ready, the database Ready, and the data there.
    poll(
        Duration::from_secs(90),
        "the replacement pod Ready",
        || async {
            pods.get_opt("durable-0")
                .await
                .ok()
                .flatten()
                .filter(|p| p.uid() != old_uid && pod_ready(p))
        },
    )
    .await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&api, "durable", READY_TIMEOUT, "Ready again", is_ready).await?;
    // The host's kube-proxy follows the new endpoint a moment after the pod is Ready.
    let row: String = poll(Duration::from_secs(30), "the data read back", || async {
        let db = connect_with(&app).await.ok()?;
        db.query_one("SELECT v FROM kept", &[])
            .await
            .ok()?
            .try_get(0)
            .ok()
    })
    .await?;
    assert_eq!(row, "before");
    ns.delete().await
}

/// A tenant controls its namespace: an edit to a child that keeps the operator's digest
/// annotation, and a deleted child, are both put back within seconds (a Ready database is
/// otherwise looked at once a minute).
#[tokio::test]
async fn an_edited_or_deleted_child_is_put_back_at_once() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "drift").await?;
    create_ready(&client, &ns.name, "kept", 2).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let rules = |p: &NetworkPolicy| {
        p.spec
            .as_ref()
            .and_then(|s| s.ingress.as_ref())
            .map_or(0, Vec::len)
    };
    let before = policies.get("kept").await?;
    assert_eq!(rules(&before), 1);
    // An ingress rule admitting everyone, added by merge patch: annotations stay as they were.
    let mut widened = before.spec.clone().context("no spec")?;
    widened
        .ingress
        .get_or_insert_default()
        .push(Default::default());
    policies
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": widened})),
        )
        .await?;
    let after = policies.get("kept").await?;
    assert_eq!(rules(&after), 2, "the tenant's edit did not land");
    assert_eq!(
        after.annotations().get("sectordb.io/applied-digest"),
        before.annotations().get("sectordb.io/applied-digest")
    );
    poll(
        Duration::from_secs(15),
        "the widened policy put back",
        || async {
            let live = policies.get("kept").await.ok()?;
            (rules(&live) == 1).then_some(())
        },
    )
    .await?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let old = secrets.get("kept-app").await?.uid();
    secrets.delete("kept-app", &DeleteParams::default()).await?;
    let app = poll(
        Duration::from_secs(15),
        "the app Secret made again",
        || async {
            secrets
                .get_opt("kept-app")
                .await
                .ok()
                .flatten()
                .filter(|s| s.uid() != old)
        },
    )
    .await?;
    // The new Secret is the working one: its password is the role's.
    poll(
        Duration::from_secs(30),
        "a login with the new Secret",
        || async { connect_with(&app).await.ok().map(drop) },
    )
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn deletion_retains_volumes_unless_asked_to_delete_them() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "delete").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    for (name, policy) in [("kept", "Retain"), ("dropped", "Delete")] {
        let mut manifest = database(name, 2);
        manifest["spec"]["deletionPolicy"] = json!(policy);
        api.create(&PostParams::default(), &serde_json::from_value(manifest)?)
            .await?;
        wait_for(&api, name, READY_TIMEOUT, "Ready=True", is_ready).await?;
        api.delete(name, &DeleteParams::default()).await?;
        wait_for(&api, name, Duration::from_secs(90), "deleted", |db| {
            db.is_none()
        })
        .await?;
    }
    let claim = |db: &str| format!("data-{db}-0");
    assert!(
        pvcs.get_opt(&claim("kept"))
            .await?
            .is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "Retain lost the volume"
    );
    wait_for(
        &pvcs,
        &claim("dropped"),
        Duration::from_secs(90),
        "volume deleted",
        |p| p.is_none(),
    )
    .await?;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "VolumesRetained")
            && reasons.iter().any(|r| r == "VolumesDeleted"),
        "{reasons:?}"
    );
    ns.delete().await
}

#[tokio::test]
async fn storage_growth_the_class_refuses_is_reported() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "grow").await?;
    create_ready(&client, &ns.name, "growing", 2).await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    api.patch(
        "growing",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"storage": {"size": "128Mi"}}})),
    )
    .await?;
    // The local cluster's host-path class cannot expand volumes: status must say so, not pretend.
    let db = wait_for(
        &api,
        "growing",
        Duration::from_secs(90),
        "Degraded names the volume",
        |db| {
            db.and_then(|d| d.status.as_ref())
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
                .is_some_and(|c| c.message.contains("was not expanded"))
        },
    )
    .await?
    .context("gone")?;
    assert_eq!(
        db.status
            .and_then(|s| s.pinned)
            .map(|p| p.storage_size.0)
            .as_deref(),
        Some("128Mi")
    );
    // Shrinking below what was accepted is refused (schema CEL or the operator).
    let shrink = api
        .patch(
            "growing",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"size": "32Mi"}}})),
        )
        .await;
    if shrink.is_ok() {
        wait_for(
            &api,
            "growing",
            Duration::from_secs(60),
            "InvalidSpec for shrinking",
            |db| {
                ready_reason(db)
                    .is_some_and(|r| r.1 == "InvalidSpec" && r.2.contains("spec.storage.size"))
            },
        )
        .await?;
    }
    ns.delete().await
}

#[tokio::test]
async fn parameters_are_reloaded_or_restarted_as_postgres_requires() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "params").await?;
    create_ready(&client, &ns.name, "tuned", 2).await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    let superuser = Superuser::of(&client, &ns.name, "tuned").await?;
    let patch =
        json!({"spec": {"postgres": {"parameters": {"work_mem": "8MB", "max_connections": "50"}}}});
    api.patch("tuned", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    // work_mem reloads in place; max_connections needs a restart, which the config digest in
    // the pod template triggers.
    poll(
        Duration::from_secs(180),
        "both parameters in force",
        || async {
            let session = superuser.connect("postgres").await.ok()?;
            let work_mem: String = session.query_one("SHOW work_mem", &[]).await.ok()?.get(0);
            let max: String = session
                .query_one("SHOW max_connections", &[])
                .await
                .ok()?
                .get(0);
            (work_mem == "8MB" && max == "50").then_some(())
        },
    )
    .await?;
    wait_for(
        &api,
        "tuned",
        READY_TIMEOUT,
        "Ready with the new parameters",
        is_ready,
    )
    .await?;
    // A parameter outside the allow-list, or a value outside its kind, is InvalidSpec, and the
    // running server keeps its settings.
    let bad = json!({"spec": {"postgres": {"parameters": {
        "ssl": "off", "work_mem": "x", "max_connections": "1"}}}});
    api.patch("tuned", &PatchParams::default(), &Patch::Merge(bad))
        .await?;
    let db = wait_for(
        &api,
        "tuned",
        Duration::from_secs(60),
        "InvalidSpec",
        |db| ready_reason(db).is_some_and(|r| r.1 == "InvalidSpec"),
    )
    .await?;
    let message = ready_reason(db.as_ref()).unwrap().2;
    for field in ["ssl", "work_mem", "max_connections"] {
        assert!(
            message.contains(&format!("spec.postgres.parameters.{field}")),
            "{field}: {message}"
        );
    }
    let session = superuser.connect("postgres").await?;
    for (name, kept) in [
        ("ssl", "on"),
        ("work_mem", "8MB"),
        ("max_connections", "50"),
    ] {
        let value: String = session
            .query_one(&format!("SHOW {name}"), &[])
            .await?
            .get(0);
        assert_eq!(value, kept, "{name}");
    }
    ns.delete().await
}

/// The app Secret pointed at another Service (its DNS name and ClusterIP).
fn secret_for(app: &Secret, endpoint: &sectordb::api::database::Endpoint) -> Secret {
    let mut secret = app.clone();
    let data = secret.data.get_or_insert_with(Default::default);
    for (key, value) in [
        ("host", endpoint.host.clone()),
        ("hostaddr", endpoint.cluster_ip.clone().unwrap_or_default()),
    ] {
        data.insert(key.into(), k8s_openapi::ByteString(value.into_bytes()));
    }
    secret
}

#[tokio::test]
async fn a_standby_streams_from_the_primary_behind_the_read_only_service() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "replicas").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    // One instance first, then scaled: the standby joins a primary that already has data.
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("pair", 2))?,
    )
    .await?;
    wait_for(&api, "pair", READY_TIMEOUT, "Ready", is_ready).await?;
    api.patch(
        "pair",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"instances": 2}})),
    )
    .await?;
    let db = wait_for(
        &api,
        "pair",
        READY_TIMEOUT,
        "Ready with 2 of 2 instances",
        |db| {
            is_ready(db)
                && observed_current(db)
                && db.and_then(|d| d.status.as_ref()?.instances.clone())
                    == Some(sectordb::api::database::InstanceCounts {
                        desired: 2,
                        ready: 2,
                    })
        },
    )
    .await?
    .context("database vanished")?;
    let status = db.status.context("no status")?;
    assert_eq!(status.phase, Some(DatabasePhase::Ready));
    let endpoints = status.endpoints.context("no endpoints")?;
    let ro = endpoints.read_only.context("no read-only endpoint")?;
    assert_eq!(ro.host, format!("pair-ro.{}.svc", ns.name));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let app = secrets.get("pair-app").await?;
    let primary = connect_with(&app).await?;
    primary
        .batch_execute("CREATE TABLE visits (id int); INSERT INTO visits VALUES (1), (2), (3)")
        .await?;

    // The read-only Service reaches the standby over verified TLS (the certificate names it), and
    // the rows written on the primary arrive there.
    let replica_secret = secret_for(&app, &ro);
    let rows = poll(Duration::from_secs(30), "rows on the standby", || async {
        let replica = connect_with(&replica_secret).await.ok()?;
        let n: i64 = replica
            .query_one("SELECT count(*) FROM visits", &[])
            .await
            .ok()?
            .get(0);
        (n == 3).then_some(n)
    })
    .await?;
    assert_eq!(rows, 3);
    let replica = connect_with(&replica_secret).await?;
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    assert!(
        in_recovery,
        "the read-only Service must not reach the primary"
    );
    let write = replica
        .batch_execute("INSERT INTO visits VALUES (4)")
        .await
        .expect_err("a standby must refuse writes");
    assert_eq!(
        write.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "unexpected error: {write:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let standby = pods.get("pair-1").await?;
    assert_eq!(
        standby.labels().get("sectordb.io/role").map(String::as_str),
        Some("replica")
    );

    // The primary is kept from voluntary eviction, with whichever policy API the cluster serves.
    let mut found = None;
    for version in ["v1", "v1beta1"] {
        let gvk = kube::api::GroupVersionKind::gvk("policy", version, "PodDisruptionBudget");
        let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "poddisruptionbudgets");
        let budgets: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &ns.name, &resource);
        if let Ok(Some(pdb)) = budgets.get_opt("pair-primary").await {
            found = Some(pdb);
            break;
        }
    }
    let pdb = found.context("no PodDisruptionBudget pair-primary")?;
    assert_eq!(pdb.data["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb.data["spec"]["selector"]["matchLabels"]["statefulset.kubernetes.io/pod-name"],
        "pair-0"
    );
    ns.delete().await
}
