//! Tenant isolation, attacked with a tenant's real powers: objects of its own namespace named like
//! the operator's children, its own SectorDatabase's fields, and a platform admin's mistaken
//! connection. Each test asserts that the attack fails and that nothing of another tenant leaks.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use sectordb::api::connection::ConnectionPhase;
use sectordb::api::{DataSharingConnection, SectorDatabase};
use sectordb_e2e::sharing::{agencies, connection, phase};
use sectordb_e2e::{
    HEALTH_CODE, LABOUR_CODE, Superuser, TestNamespace, client, connect_as, connect_with, database,
    is_ready, poll, ready_reason, register, secret_text, served_certificate, wait_for,
};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(60);
const READY: Duration = Duration::from_secs(180);

/// Waits until the database reports Ready=False with `reason` for its current generation, and
/// returns the message.
async fn refused(api: &Api<SectorDatabase>, name: &str, reason: &str) -> Result<String> {
    let db = wait_for(api, name, SETTLE, reason, |db| {
        sectordb_e2e::observed_current(db)
            && ready_reason(db).is_some_and(|r| r.0 == "False" && r.1 == reason)
    })
    .await?
    .context("database vanished")?;
    Ok(ready_reason(Some(&db)).map(|r| r.2).unwrap_or_default())
}

fn secret(name: &str, value: &str) -> Result<Secret> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name}, "stringData": {"password": value}
    }))?)
}

fn data(secret: &Secret) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()?
        .get("password")
        .map(|b: &ByteString| b.0.clone())
}

#[tokio::test]
async fn names_the_agency_already_uses_are_never_taken_over() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "names").await?;
    // The agency's own NetworkPolicy, open to everyone, named as a database will be.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let open: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "victim"},
        "spec": {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}
    }))?;
    policies.create(&PostParams::default(), &open).await?;
    // ...and its own Secret named as another database's app Secret will be.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &secret("taken-app", "the agency's own")?,
        )
        .await?;

    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    for name in ["victim", "taken"] {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(database(name, 2))?,
        )
        .await?;
    }
    let message = refused(&api, "victim", "NameConflict").await?;
    assert!(message.contains("NetworkPolicy \"victim\""), "{message}");
    let message = refused(&api, "taken", "NameConflict").await?;
    assert!(message.contains("Secret \"taken-app\""), "{message}");

    let kept = policies.get("victim").await?;
    assert!(
        kept.owner_references().is_empty(),
        "the policy was taken over"
    );
    assert_eq!(
        kept.spec.context("no spec")?.ingress,
        open.spec.context("no spec")?.ingress
    );
    assert_eq!(
        data(&secrets.get("taken-app").await?).as_deref(),
        Some("the agency's own".as_bytes())
    );
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    for name in ["victim", "taken"] {
        assert!(
            statefulsets.get_opt(name).await?.is_none(),
            "{name}: a server started"
        );
    }

    // Deleting the databases (deletionPolicy Delete) leaves the agency's objects alone.
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for(&api, "victim", SETTLE, "victim deleted", |db| db.is_none()).await?;
    wait_for(&api, "taken", SETTLE, "taken deleted", |db| db.is_none()).await?;
    assert!(
        policies.get_opt("victim").await?.is_some(),
        "the agency's policy was deleted"
    );
    assert!(
        secrets.get_opt("taken-app").await?.is_some(),
        "the agency's Secret was deleted"
    );
    ns.delete().await
}

#[tokio::test]
async fn a_database_outside_the_register_or_below_its_approved_level_is_refused() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "levels").await?;
    register(
        &client,
        &ns.name,
        HEALTH_CODE,
        &[&ns.name],
        json!({"default": 2, "strict": 3}),
    )
    .await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);

    let mut cases = vec![
        ("strict", database("strict", 2), "spec.securityLevel"),
        ("low", database("low", 1), "spec.securityLevel"),
    ];
    let mut foreign = database("foreign", 2);
    foreign["spec"]["agency"]["code"] = json!(LABOUR_CODE);
    cases.push(("foreign", foreign, "spec.agency.code"));
    for (name, manifest, _) in &cases {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(manifest.clone())?,
        )
        .await
        .with_context(|| format!("creating {name}"))?;
    }
    for (name, _, field) in &cases {
        let message = refused(&api, name, "InvalidSpec").await?;
        assert!(message.contains(field), "{name}: {message}");
    }

    // A served database cannot lower itself below its approved level either: it keeps running
    // as it was, reported Degraded and InvalidSpec.
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("served", 2))?,
    )
    .await?;
    wait_for(
        &api,
        "served",
        Duration::from_secs(180),
        "served Ready",
        is_ready,
    )
    .await?;
    let lower = json!({"spec": {"securityLevel": 1}});
    api.patch("served", &PatchParams::default(), &Patch::Merge(&lower))
        .await?;
    let message = refused(&api, "served", "InvalidSpec").await?;
    assert!(message.contains("spec.securityLevel"), "{message}");
    // Compliance is judged at the approved level, not the one asked for.
    let status = api.get("served").await?.status.context("no status")?;
    let compliant = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .context("no Compliant")?;
    assert_eq!(compliant.status, "False", "{}", compliant.message);
    assert_eq!(status.compliance.map(|c| c.level), Some(2));
    assert_eq!(
        status.phase,
        Some(sectordb::api::database::DatabasePhase::Degraded)
    );

    // A namespace no Agency lists runs nothing.
    let bare = format!("{}-bare", ns.name);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": bare, "labels": {"sectordb.io/e2e": "true"}}}),
            )?,
        )
        .await?;
    let elsewhere: Api<SectorDatabase> = Api::namespaced(client.clone(), &bare);
    elsewhere
        .create(
            &PostParams::default(),
            &serde_json::from_value(database("stray", 2))?,
        )
        .await?;
    let message = refused(&elsewhere, "stray", "InvalidSpec").await?;
    assert!(
        message.contains("not registered to any Agency"),
        "{message}"
    );
    assert!(
        Api::<StatefulSet>::namespaced(client.clone(), &bare)
            .get_opt("stray")
            .await?
            .is_none()
    );
    elsewhere.delete("stray", &DeleteParams::default()).await?;
    wait_for(&elsewhere, "stray", SETTLE, "stray deleted", |db| {
        db.is_none()
    })
    .await?;
    namespaces.delete(&bare, &DeleteParams::default()).await?;
    ns.delete().await
}

#[tokio::test]
async fn a_restore_from_another_agency_s_database_is_refused_and_says_nothing_of_it() -> Result<()>
{
    let client = client().await?;
    let victim = TestNamespace::create_for(&client, "victim", LABOUR_CODE).await?;
    let victims: Api<SectorDatabase> = Api::namespaced(client.clone(), &victim.name);
    victims
        .create(
            &PostParams::default(),
            &serde_json::from_value(database("payroll", 1))?,
        )
        .await?;
    let attacker = TestNamespace::create(&client, "thief").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &attacker.name);
    // One source exists, one does not: the answers must be the same, so neither is an oracle.
    for (name, source) in [("copy", "payroll"), ("guess", "no-such-database")] {
        let mut copy = database(name, 2);
        copy["spec"]["bootstrap"] = json!({"fromBackup": {
            "policy": "any-policy", "database": {"namespace": victim.name, "name": source}}});
        api.create(&PostParams::default(), &serde_json::from_value(copy)?)
            .await?;
    }
    let first = refused(&api, "copy", "RestoreSourceUnavailable").await?;
    let second = refused(&api, "guess", "RestoreSourceUnavailable").await?;
    assert_eq!(first, second);
    assert!(first.contains("own namespace"), "{first}");
    let events = Api::<Event>::namespaced(client.clone(), &attacker.name)
        .list(&ListParams::default())
        .await?;
    let mut said: Vec<String> = events.iter().filter_map(|e| e.note.clone()).collect();
    said.push(first);
    for text in &said {
        assert!(
            !text.contains(&victim.name) && !text.contains("payroll"),
            "leaks the source: {text}"
        );
    }
    assert!(
        Api::<StatefulSet>::namespaced(client.clone(), &attacker.name)
            .get_opt("copy")
            .await?
            .is_none()
    );
    attacker.delete().await?;
    victim.delete().await
}

#[tokio::test]
async fn a_grant_delivers_only_into_its_consumer_agency_s_namespace_and_never_over_a_foreign_secret()
-> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "deliver").await?;
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    // A Secret the platform admin's mistaken connection points at, in kube-system.
    let system: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let sentinel = format!("{}-sentinel", a.provider.name);
    system
        .create(
            &PostParams::default(),
            &secret(&sentinel, "cluster secret")?,
        )
        .await?;

    let mut to_system = connection(
        "to-system",
        "kube-system",
        "2027-12-31T00:00:00Z",
        "vaccinations",
    )?;
    to_system.spec.consumer.secret_name = Some(sentinel.clone());
    let to_operator = connection(
        "to-operator",
        sectordb_e2e::OPERATOR_NAMESPACE,
        "2027-12-31T00:00:00Z",
        "vaccinations",
    )?;
    let mut wrong_code = connection(
        "wrong-code",
        &a.consumer.name,
        "2027-12-31T00:00:00Z",
        "vaccinations",
    )?;
    wrong_code.spec.consumer.agency.code = HEALTH_CODE.into();
    // The consumer agency's own Secret, named by the connection.
    let consumer_secrets: Api<Secret> = Api::namespaced(client.clone(), &a.consumer.name);
    consumer_secrets
        .create(&PostParams::default(), &secret("theirs", "consumer's own")?)
        .await?;
    let mut over_theirs = connection(
        "over-theirs",
        &a.consumer.name,
        "2027-12-31T00:00:00Z",
        "vaccinations",
    )?;
    over_theirs.spec.consumer.secret_name = Some("theirs".into());
    for conn in [&to_system, &to_operator, &wrong_code, &over_theirs] {
        api.create(&PostParams::default(), conn).await?;
    }
    for (name, reason) in [
        ("to-system", "ConsumerNotAllowed"),
        ("to-operator", "ConsumerNotAllowed"),
        ("wrong-code", "ConsumerNotAllowed"),
    ] {
        let conn = wait_for(&api, name, SETTLE, reason, |c| {
            phase(c) == Some(ConnectionPhase::Denied)
        })
        .await?
        .context("vanished")?;
        let ready = conn
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .context("no Ready")?;
        assert_eq!(ready.reason, reason, "{name}: {}", ready.message);
    }
    let conflict = wait_for(&api, "over-theirs", SETTLE, "NameConflict", |c| {
        c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "NameConflict")
        })
    })
    .await?
    .context("vanished")?;
    assert!(conflict.status.and_then(|s| s.secret_ref).is_none());

    // Deleting every connection (their revocation) deletes nothing that is not theirs.
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    for name in ["to-system", "to-operator", "wrong-code", "over-theirs"] {
        wait_for(&api, name, SETTLE, "deleted", |c| c.is_none()).await?;
    }
    assert_eq!(
        data(&system.get(&sentinel).await?).as_deref(),
        Some("cluster secret".as_bytes())
    );
    assert_eq!(
        data(&consumer_secrets.get("theirs").await?).as_deref(),
        Some("consumer's own".as_bytes())
    );
    system.delete(&sentinel, &DeleteParams::default()).await?;
    a.delete().await
}

#[tokio::test]
async fn a_grant_s_role_reaches_only_the_provider_s_application_database_until_valid_until()
-> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "reach").await?;
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.create(
        &PostParams::default(),
        &connection(
            "vax",
            &a.consumer.name,
            "2027-12-31T00:00:00Z",
            "vaccinations",
        )?,
    )
    .await?;
    let conn = wait_for(&api, "vax", Duration::from_secs(90), "Active", |c| {
        phase(c) == Some(ConnectionPhase::Active)
    })
    .await?
    .context("vanished")?;
    let status = conn.status.context("no status")?;
    let secret_ref = status.secret_ref.context("no secretRef")?;
    let delivered = Api::<Secret>::namespaced(client.clone(), &a.consumer.name)
        .get(&secret_ref.name)
        .await?;
    connect_with(&delivered)
        .await
        .context("the application database admits the grant")?;
    for other in ["postgres", "template1"] {
        let mut elsewhere = delivered.clone();
        elsewhere
            .data
            .get_or_insert_with(Default::default)
            .insert("dbname".into(), ByteString(other.as_bytes().to_vec()));
        let attempt = connect_with(&elsewhere).await;
        let error = attempt
            .err()
            .with_context(|| format!("the grant's role logged in to {other}"))?;
        assert!(
            format!("{error:#}").contains("pg_hba.conf"),
            "{other}: {error:#}"
        );
    }
    // PostgreSQL itself holds the expiry, so it holds without the operator.
    let provider = Superuser::of(&client, &a.provider.name, "records")
        .await?
        .connect("postgres")
        .await?;
    let role = status.role.context("no role")?;
    let expires: i64 = provider
        .query_one(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?
        .get(0);
    assert_eq!(
        expires,
        "2027-12-31T00:00:00Z"
            .parse::<jiff::Timestamp>()?
            .as_second()
    );
    assert_eq!(secret_text(&delivered, "user")?, role);
    a.delete().await
}

#[tokio::test]
async fn replicate_never_writes_into_a_table_the_consumer_made_itself() -> Result<()> {
    let client = client().await?;
    let a = agencies(&client, "own-table").await?;
    let provider_app = Api::<Secret>::namespaced(client.clone(), &a.provider.name)
        .get("records-app")
        .await?;
    connect_with(&provider_app)
        .await?
        .batch_execute("ALTER TABLE vaccination_records ADD PRIMARY KEY (id)")
        .await?;
    let databases: Api<SectorDatabase> = Api::namespaced(client.clone(), &a.consumer.name);
    let mut warehouse = database("warehouse", 3);
    warehouse["spec"]["agency"]["code"] = json!(LABOUR_CODE);
    databases
        .create(&PostParams::default(), &serde_json::from_value(warehouse)?)
        .await?;
    wait_for(
        &databases,
        "warehouse",
        Duration::from_secs(180),
        "warehouse Ready",
        is_ready,
    )
    .await?;
    let consumer_app = Api::<Secret>::namespaced(client.clone(), &a.consumer.name)
        .get("warehouse-app")
        .await?;
    let own = connect_with(&consumer_app).await?;
    own.batch_execute(
        "CREATE TABLE vaccination_records (id int PRIMARY KEY, district text, vaccine text);
         INSERT INTO vaccination_records VALUES (42, 'the consumer''s own', 'row')",
    )
    .await?;

    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.create(
        &PostParams::default(),
        &sectordb_e2e::sharing::replication("vax", &a.consumer.name, "warehouse")?,
    )
    .await?;
    let conn = wait_for(&api, "vax", Duration::from_secs(90), "NameConflict", |c| {
        c.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "NameConflict")
        })
    })
    .await?
    .context("connection vanished")?;
    let ready = conn
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .context("no Ready")?;
    assert!(
        ready.message.contains("public.vaccination_records"),
        "{}",
        ready.message
    );
    let rows: Vec<(i32, String)> = own
        .query("SELECT id, district FROM vaccination_records", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [(42, "the consumer's own".to_string())]);
    let subscriptions: i64 = own
        .query_one("SELECT count(*) FROM pg_subscription", &[])
        .await?
        .get(0);
    assert_eq!(
        subscriptions, 0,
        "a subscription was made into the consumer's own table"
    );
    a.delete().await
}

#[tokio::test]
async fn a_revocation_that_cannot_reach_the_provider_is_retried_never_reported_done() -> Result<()>
{
    let client = client().await?;
    let a = agencies(&client, "unreach").await?;
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.create(
        &PostParams::default(),
        &connection(
            "vax",
            &a.consumer.name,
            "2027-12-31T00:00:00Z",
            "vaccinations",
        )?,
    )
    .await?;
    let conn = wait_for(&api, "vax", Duration::from_secs(90), "Active", |c| {
        phase(c) == Some(ConnectionPhase::Active)
    })
    .await?
    .context("vanished")?;
    let role = conn.status.and_then(|s| s.role).context("no role")?;
    // The provider's server goes away (its pod deleted, and a quota of no pods in the namespace
    // keeps the StatefulSet from making it again: the operator puts back a StatefulSet scaled by
    // hand), then the platform authority suspends the grant.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &a.provider.name);
    let no_pods: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}
    }))?;
    quotas.create(&PostParams::default(), &no_pods).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &a.provider.name);
    pods.delete("records-0", &Default::default()).await?;
    sectordb_e2e::poll(Duration::from_secs(90), "provider pod gone", || async {
        pods.get_opt("records-0")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    api.patch(
        "vax",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspended": true}})),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pending = api.get("vax").await?;
    let status = pending.status.clone().context("no status")?;
    assert!(
        status.revoked_at.is_none(),
        "reported revoked while PostgreSQL was unreachable: {status:?}"
    );
    assert_ne!(status.phase, Some(ConnectionPhase::Suspended));
    assert_ne!(
        status.observed_generation, pending.metadata.generation,
        "the suspension looks handled"
    );

    // The failing revocation is told on the connection, and retried.
    let told = sectordb_e2e::event_where(
        &client,
        &a.provider.name,
        Duration::from_secs(30),
        "a failure Warning",
        |e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("vax")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("in a row, next try in"))
        },
    )
    .await?;
    assert_eq!(told.type_.as_deref(), Some("Warning"), "{told:?}");

    // The provider comes back: the retry revokes for real.
    quotas.delete("no-pods", &Default::default()).await?;
    let done = wait_for(&api, "vax", Duration::from_secs(180), "Suspended", |c| {
        phase(c) == Some(ConnectionPhase::Suspended)
    })
    .await?
    .context("vanished")?;
    assert!(done.status.and_then(|s| s.revoked_at).is_some());
    let superuser = Superuser::of(&client, &a.provider.name, "records").await?;
    let login: bool = sectordb_e2e::poll(Duration::from_secs(60), "provider reachable", || async {
        let session = superuser.connect("postgres").await.ok()?;
        session
            .query_one(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .ok()
            .map(|r| r.get(0))
    })
    .await?;
    assert!(!login, "the role still logs in");
    a.delete().await
}

#[tokio::test]
async fn nothing_in_the_agency_s_namespace_logs_in_as_the_superuser_or_reads_server_files()
-> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "nosuper").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("own", 3))?,
    )
    .await?;
    wait_for(&api, "own", READY, "Ready", is_ready).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let app = secrets.get("own-app").await?;
    // Every value of every Secret the agency can read, tried as the superuser's password.
    let all = secrets.list(&ListParams::default()).await?;
    assert!(
        !all.iter().any(|s| s.name_any().contains("superuser")),
        "a superuser Secret in the agency's namespace"
    );
    let mut tried = 0;
    for secret in &all {
        for value in secret.data.iter().flat_map(|d| d.values()) {
            let Ok(text) = std::str::from_utf8(&value.0) else {
                continue;
            };
            let login = sectordb::sql::Login::Password(text.trim());
            assert!(
                connect_as(&app, "postgres", login, "postgres")
                    .await
                    .is_err(),
                "a value of Secret {} logs in as postgres",
                secret.name_any()
            );
            tried += 1;
        }
    }
    assert!(tried > 5, "only {tried} values tried");
    // The server's own certificate and key, which the agency can read, are not a client identity.
    let server = secrets.get("own-server-tls").await?;
    let identity = sectordb::pki::CertifiedKey {
        cert_pem: secret_text(&server, "tls.crt")?,
        key_pem: secret_text(&server, "tls.key")?,
    };
    let login = sectordb::sql::Login::Certificate(&identity);
    assert!(
        connect_as(&app, "postgres", login, "postgres")
            .await
            .is_err()
    );
    // The owner role the agency holds is no superuser and reads no server files.
    let owner = connect_with(&app).await?;
    let attributes = owner
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    for i in 0..4 {
        assert!(!attributes.get::<_, bool>(i), "attribute {i} of the owner");
    }
    for attack in [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_ls_dir('.')",
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "COPY (SELECT 1) TO '/tmp/out'",
        "SELECT lo_import('/etc/passwd')",
        "GRANT pg_read_server_files TO app",
        "SET ROLE postgres",
    ] {
        let refused = owner
            .batch_execute(attack)
            .await
            .err()
            .with_context(|| format!("{attack} was allowed"))?;
        let code = refused.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{attack}: {refused:?}");
    }
    ns.delete().await
}

#[tokio::test]
async fn a_server_certificate_due_for_renewal_is_renewed_and_served_without_a_restart() -> Result<()>
{
    let client = client().await?;
    let ns = TestNamespace::create(&client, "renew").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    let mut manifest = database("renewed", 2);
    manifest["spec"]["instances"] = json!(2);
    api.create(&PostParams::default(), &serde_json::from_value(manifest)?)
        .await?;
    wait_for(&api, "renewed", READY, "both instances ready", |db| {
        is_ready(db)
            && db
                .and_then(|d| d.status.as_ref()?.instances.as_ref())
                .is_some_and(|i| i.ready == 2)
    })
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let not_after = |s: &Secret| -> i64 {
        s.annotations()
            .get("sectordb.io/certificate-not-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let now = || jiff::Timestamp::now().as_second();
    let first = secrets.get("renewed-server-tls").await?;
    let ninety_days = 90 * 86_400;
    assert!(
        (not_after(&first) - now() - ninety_days).abs() < 86_400,
        "a new certificate lives 90 days"
    );
    let app = secrets.get("renewed-app").await?;
    let before = connect_with(&app).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let lives = || async {
        let mut seen = Vec::new();
        for name in ["renewed-0", "renewed-1"] {
            let pod = pods.get(name).await?;
            let restarts = sectordb_e2e::restarts(&pod);
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            seen.push((pod.uid(), restarts, ip.context("no pod IP")?));
        }
        anyhow::Ok(seen)
    };
    let lives_before = lives().await?;

    // What a certificate in its last week looks like to the operator.
    secrets
        .patch(
            "renewed-server-tls",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"sectordb.io/certificate-not-after": "0"}}}),
            ),
        )
        .await?;
    let renewed = poll(
        Duration::from_secs(120),
        "a renewed certificate",
        || async {
            let secret = secrets.get("renewed-server-tls").await.ok()?;
            let cert = secret_text(&secret, "tls.crt").ok()?;
            (cert != secret_text(&first, "tls.crt").ok()?
                && not_after(&secret) > now() + ninety_days - 3600)
                .then_some(cert)
        },
    )
    .await?;
    // Served by the primary (through its Service) and by the standby, as clients see them.
    let primary = secret_text(&app, "hostaddr")?;
    let standby = lives_before[1].2.clone();
    for addr in [primary, standby] {
        poll(
            Duration::from_secs(60),
            "the renewed certificate served",
            || async {
                let served = served_certificate(&addr).ok()?;
                (served.trim() == renewed.trim()).then_some(())
            },
        )
        .await
        .with_context(|| format!("at {addr}"))?;
    }
    // Without a restart: the session made before still works, the pods are the same.
    before.batch_execute("SELECT 1").await?;
    assert_eq!(lives().await?, lives_before);
    connect_with(&app).await?.batch_execute("SELECT 1").await?;
    ns.delete().await
}

/// Rule 2, the part that holds today: two agencies under one BackupPolicy each hold their own
/// database's backup Secret (their pods mount it), and the key in one opens none of the other's
/// backups, even with the repository's S3 keys that Secret still carries.
#[tokio::test]
async fn one_agency_s_backup_key_opens_none_of_another_agency_s_backups() -> Result<()> {
    use sectordb::backup::{exec, pgbackrest};
    let client = client().await?;
    let (victim, _, _) = sectordb_e2e::backup::Setup::new(&client, "keys", 1, None).await?;
    let victims = victim.backed_up_database().await?;
    let victim_stanza = victims
        .get("db")
        .await?
        .status
        .and_then(|s| s.backup?.stanza)
        .context("no stanza")?;
    let thief = TestNamespace::create_for(&client, "keythief", LABOUR_CODE).await?;
    let under_the_policy = json!({"metadata": {"labels": {"sectordb.io/backup": victim.ns.name}}});
    Api::<Namespace>::all(client.clone())
        .patch(
            &thief.name,
            &PatchParams::default(),
            &Patch::Merge(&under_the_policy),
        )
        .await?;
    let thieves: Api<SectorDatabase> = Api::namespaced(client.clone(), &thief.name);
    let mut own_db = database("db", 3);
    own_db["spec"]["agency"]["code"] = json!(LABOUR_CODE);
    thieves
        .create(&PostParams::default(), &serde_json::from_value(own_db)?)
        .await?;
    let own = wait_for(&thieves, "db", 5 * SETTLE, "first backup", |db| {
        db.and_then(|d| d.status.as_ref()?.backup.as_ref()?.last_successful.as_ref())
            .is_some()
    })
    .await?
    .and_then(|d| d.status?.backup?.stanza)
    .context("no stanza")?;

    let mounted = secret_text(
        &Api::<Secret>::namespaced(client.clone(), &thief.name)
            .get("db-backup")
            .await?,
        "pgbackrest.conf",
    )?;
    let policy_passphrase = format!("passphrase of {}", victim.ns.name);
    assert!(
        !mounted.contains(&policy_passphrase),
        "the policy's passphrase reached an agency's namespace"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &thief.name);
    let info = |stanza: String| {
        let pods = pods.clone();
        async move {
            let command = vec![
                "pgbackrest".into(),
                format!("--config={}", pgbackrest::CONFIG_FILE),
                format!("--stanza={stanza}"),
                "info".into(),
                "--output=json".into(),
            ];
            let out = exec::run(&pods, "db-0", command, SETTLE)
                .await
                .map_err(anyhow::Error::msg)?;
            let listed = pgbackrest::parse_info(&out.stdout, "provincial").unwrap_or_default();
            anyhow::Ok((out, listed))
        }
    };
    // The same command on its own stanza lists its backup: what fails below is the key alone.
    let (out, listed) = info(own).await?;
    assert!(!listed.is_empty(), "its own backups: {}", out.tail());
    let (out, listed) = info(victim_stanza).await?;
    assert!(
        listed.is_empty(),
        "one agency's key listed another's backups: {listed:?}"
    );
    assert!(
        !out.stdout.contains("\"label\""),
        "another agency's backup labels: {}",
        out.stdout
    );
    thief.delete().await?;
    victim.delete().await
}
