//! DataSharingConnection end to end: a consumer agency reads what the provider declared and
//! nothing else, over TLS with the delivered Secret, and loses access within seconds of
//! deletion or expiry. Agencies cannot grant themselves access.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use sectordb::api::DataSharingConnection;
use sectordb::api::SectorDatabase;
use sectordb::api::connection::ConnectionPhase;
use sectordb_e2e::sharing::{agencies, connection, grant, phase, replication};
use sectordb_e2e::{Superuser, TestNamespace, client, connect_with, poll, wait_for};
use serde_json::json;

fn denied(result: std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>) -> bool {
    result
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code() == "42501"))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_consumer_reads_the_granted_columns_and_nothing_else() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "share").await?;
    let (conn, secret) = grant(&client, &a, "vax", "2027-12-31T00:00:00Z").await?;
    let status = conn.status.context("no status")?;
    assert_eq!(
        status.granted_objects,
        ["public.vaccination_records(id,district,vaccine)"]
    );
    assert!(
        status
            .role
            .as_deref()
            .is_some_and(|r| r.starts_with("dsc_"))
    );
    assert!(status.granted_at.is_some());

    let session = connect_with(&secret).await?;
    let rows = session
        .query("SELECT id, district, vaccine FROM vaccination_records", &[])
        .await?;
    assert_eq!(rows.len(), 1);
    assert!(
        denied(
            session
                .query("SELECT patient_name FROM vaccination_records", &[])
                .await
        ),
        "undeclared column"
    );
    assert!(
        denied(session.query("SELECT * FROM diagnoses", &[]).await),
        "another table"
    );
    assert!(
        denied(
            session
                .query(
                    "INSERT INTO vaccination_records (id) VALUES (2) RETURNING id",
                    &[]
                )
                .await
        ),
        "writing"
    );
    assert!(
        denied(session.query("CREATE TABLE mine (id int)", &[]).await),
        "creating objects"
    );

    sectordb_e2e::event_where(
        &client,
        &a.provider.name,
        Duration::from_secs(30),
        "a Granted Event",
        |e| e.reason.as_deref() == Some("Granted"),
    )
    .await?;

    // The consumer deletes the delivered Secret: it is delivered again at once, and works.
    let secrets: Api<Secret> = Api::namespaced(
        client.clone(),
        secret
            .metadata
            .namespace
            .as_deref()
            .context("no namespace")?,
    );
    let name = secret.metadata.name.clone().context("no name")?;
    secrets.delete(&name, &DeleteParams::default()).await?;
    let again = poll(
        Duration::from_secs(15),
        "the Secret delivered again",
        || async {
            secrets
                .get_opt(&name)
                .await
                .ok()
                .flatten()
                .filter(|s| s.metadata.uid != secret.metadata.uid)
        },
    )
    .await?;
    let rows = poll(
        Duration::from_secs(30),
        "a read with the new Secret",
        || async {
            let session = connect_with(&again).await.ok()?;
            session
                .query("SELECT id FROM vaccination_records", &[])
                .await
                .ok()
        },
    )
    .await?;
    assert_eq!(rows.len(), 1);
    a.delete().await
}

#[tokio::test]
async fn deleting_a_connection_revokes_access_within_five_seconds() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "revoke").await?;
    let (conn, secret) = grant(&client, &a, "vax", "2027-12-31T00:00:00Z").await?;
    let role = conn.status.and_then(|s| s.role).context("no role")?;
    let open = connect_with(&secret).await?;
    open.query("SELECT id FROM vaccination_records", &[])
        .await?;

    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    let started = Instant::now();
    api.delete("vax", &DeleteParams::default()).await?;
    poll(
        Duration::from_secs(5),
        "the open session terminated and new logins refused",
        || async {
            (open.query("SELECT 1", &[]).await.is_err() && connect_with(&secret).await.is_err())
                .then_some(())
        },
    )
    .await?;
    let revoked_in = started.elapsed();
    wait_for(
        &api,
        "vax",
        Duration::from_secs(30),
        "connection gone",
        |c| c.is_none(),
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &a.consumer.name);
    assert!(
        secrets
            .get_opt(&secret.metadata.name.clone().unwrap())
            .await?
            .is_none(),
        "the consumer's Secret remains"
    );
    let su = Superuser::of(&client, &a.provider.name, "records")
        .await?
        .connect("postgres")
        .await?;
    let login: bool = su
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?
        .get(0);
    assert!(!login, "the role is kept NOLOGIN");
    println!("revocation: delete -> session terminated and login refused in {revoked_in:?}");
    a.delete().await
}

#[tokio::test]
async fn a_connection_stops_working_when_it_expires() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "expiry").await?;
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20);
    let until_text = until.round(jiff::Unit::Second)?.to_string();
    let (_, secret) = grant(&client, &a, "vax", &until_text).await?;
    connect_with(&secret)
        .await?
        .query("SELECT id FROM vaccination_records", &[])
        .await?;
    poll(
        Duration::from_secs(40),
        "login refused after validUntil",
        || async { connect_with(&secret).await.is_err().then_some(()) },
    )
    .await?;
    let late = jiff::Timestamp::now().duration_since(until.round(jiff::Unit::Second)?);
    assert!(
        late < jiff::SignedDuration::from_secs(5),
        "access outlived validUntil by {late:?}"
    );
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    wait_for(&api, "vax", Duration::from_secs(30), "Expired", |c| {
        phase(c) == Some(ConnectionPhase::Expired)
    })
    .await?;
    a.delete().await
}

#[tokio::test]
async fn a_dataset_the_provider_did_not_declare_is_denied() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "deny").await?;
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.create(
        &PostParams::default(),
        &connection(
            "diag",
            &a.consumer.name,
            "2027-12-31T00:00:00Z",
            "diagnoses",
        )?,
    )
    .await?;
    let conn = wait_for(&api, "diag", Duration::from_secs(60), "Denied", |c| {
        phase(c) == Some(ConnectionPhase::Denied)
    })
    .await?
    .context("gone")?;
    let ready = conn
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .context("no Ready")?;
    assert_eq!(ready.reason, "DatasetNotDeclared");
    assert!(ready.message.contains("spec.provider.dataset"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &a.consumer.name);
    assert!(secrets.get_opt("diag-credentials").await?.is_none());
    a.delete().await
}

#[tokio::test]
async fn an_agency_admin_cannot_create_connections() -> Result<()> {
    let client = client().await?;
    let consumer = TestNamespace::create_for(&client, "rbac", sectordb_e2e::LABOUR_CODE).await?;
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "agency-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "sectordb-agency-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "labour-admin"}]
    }))?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &consumer.name)
        .create(&PostParams::default(), &binding)
        .await?;
    // The same user, through the apiserver's impersonation, as kubectl --as does.
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some("labour-admin".into());
    let as_admin = Client::try_from(config)?;
    // The binding works: the agency admin can manage SectorDatabases in its namespace. The
    // apiserver's authorizer learns of a new RoleBinding through its informer, a moment later.
    let dbs: Api<SectorDatabase> = Api::namespaced(as_admin.clone(), &consumer.name);
    poll(
        Duration::from_secs(10),
        "agency admin can list its own databases",
        || async { dbs.list(&ListParams::default()).await.ok() },
    )
    .await?;
    // ...but cannot grant itself access, in its namespace or any other.
    for namespace in [consumer.name.as_str(), "default"] {
        let api: Api<DataSharingConnection> = Api::namespaced(as_admin.clone(), namespace);
        let attempt = api
            .create(
                &PostParams::default(),
                &connection(
                    "self-grant",
                    &consumer.name,
                    "2027-12-31T00:00:00Z",
                    "vaccinations",
                )?,
            )
            .await;
        assert!(
            matches!(attempt, Err(kube::Error::Api(ref s)) if s.code == 403),
            "{namespace}: {attempt:?}"
        );
    }
    consumer.delete().await
}

/// The rows of `query`, first column as text, or `None` while the query fails (the table may not
/// exist yet).
async fn texts(session: &tokio_postgres::Client, query: &str) -> Option<Vec<String>> {
    let rows = session.query(query, &[]).await.ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test]
async fn replicate_copies_the_granted_columns_into_the_consumer_database() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "repl").await?;
    let provider_app = Api::<Secret>::namespaced(client.clone(), &a.provider.name)
        .get("records-app")
        .await?;
    let provider = connect_with(&provider_app).await?;
    // Logical replication identifies rows by the primary key, which the dataset must include.
    provider
        .batch_execute("ALTER TABLE vaccination_records ADD PRIMARY KEY (id)")
        .await?;
    let databases: Api<SectorDatabase> = Api::namespaced(client.clone(), &a.consumer.name);
    databases
        .create(
            &PostParams::default(),
            &serde_json::from_value({
                let mut warehouse = sectordb_e2e::database("warehouse", 3);
                warehouse["spec"]["agency"]["code"] = json!(sectordb_e2e::LABOUR_CODE);
                warehouse
            })?,
        )
        .await?;
    wait_for(
        &databases,
        "warehouse",
        Duration::from_secs(180),
        "consumer database Ready",
        sectordb_e2e::is_ready,
    )
    .await?;

    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.create(
        &PostParams::default(),
        &replication("vax", &a.consumer.name, "warehouse")?,
    )
    .await?;
    let conn = wait_for(&api, "vax", Duration::from_secs(90), "Replicating", |c| {
        c.and_then(|c| c.status.as_ref()?.replication.as_ref())
            .is_some_and(|r| r.streaming)
    })
    .await?
    .context("connection vanished")?;
    let status = conn.status.context("no status")?;
    let replication = status.replication.context("no replication status")?;
    assert_eq!(replication.target, format!("{}/warehouse", a.consumer.name));
    assert_eq!(
        status.granted_objects,
        ["public.vaccination_records(id,district,vaccine)"]
    );
    assert!(
        status.secret_ref.is_none(),
        "Replicate delivers no credentials"
    );

    let consumer_app = Api::<Secret>::namespaced(client.clone(), &a.consumer.name)
        .get("warehouse-app")
        .await?;
    let consumer = connect_with(&consumer_app).await?;
    let districts = "SELECT district FROM vaccination_records ORDER BY id";
    poll(
        Duration::from_secs(30),
        "the existing row copied",
        || async { (texts(&consumer, districts).await? == ["Ba Dinh"]).then_some(()) },
    )
    .await?;
    provider
        .batch_execute(
            "INSERT INTO vaccination_records VALUES (2, 'Hoan Kiem', 'BCG', 'Tran Thi B')",
        )
        .await?;
    poll(Duration::from_secs(30), "a new row replicated", || async {
        (texts(&consumer, districts).await? == ["Ba Dinh", "Hoan Kiem"]).then_some(())
    })
    .await?;
    let columns = texts(
        &consumer,
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_name = 'vaccination_records' ORDER BY ordinal_position",
    )
    .await
    .context("no columns")?;
    assert_eq!(
        columns,
        ["id", "district", "vaccine"],
        "patient_name must not arrive"
    );

    // Deleting the connection stops replication and leaves the consumer's copy.
    api.delete("vax", &DeleteParams::default()).await?;
    wait_for(
        &api,
        "vax",
        Duration::from_secs(30),
        "connection gone",
        |c| c.is_none(),
    )
    .await?;
    provider
        .batch_execute("INSERT INTO vaccination_records VALUES (3, 'Cau Giay', 'MMR', 'Le Van C')")
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        texts(&consumer, districts).await,
        Some(vec!["Ba Dinh".to_string(), "Hoan Kiem".to_string()]),
        "after revocation nothing new arrives and the copy stays"
    );
    assert_eq!(
        texts(&consumer, "SELECT subname::text FROM pg_subscription").await,
        Some(vec![]),
        "the subscription is dropped"
    );
    a.delete().await
}
