//! The operator's CA rotates with an overlap, and nobody notices: a successor is trusted
//! everywhere before it signs, certificates are reissued when it takes over, and the old CA is
//! trusted until what it signed is gone. The clock is moved by editing the instants the CA
//! Secret records, as an operator running for years would see them. Every database of the
//! cluster follows the CA, so this runs alone (scripts/test runs it last).

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use sectordb::api::SectorDatabase;
use sectordb_e2e::{
    OPERATOR_NAMESPACE, Superuser, TestNamespace, client, connect_with, database, is_ready, poll,
    secret_text, served_certificate, wait_for,
};
use serde_json::json;

const STEP: Duration = Duration::from_secs(240);

fn certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[tokio::test]
async fn the_ca_rotates_with_an_overlap_and_no_client_notices() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "rotate").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("db", 2))?,
    )
    .await?;
    wait_for(&api, "db", Duration::from_secs(180), "Ready", is_ready).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let operator: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let ca = operator.get("sectordb-ca").await?;
    let old_ca = secret_text(&ca, "tls.crt")?;
    let app = secrets.get("db-app").await?;
    let before = connect_with(&app).await?;
    let addr = secret_text(&app, "hostaddr")?;
    let record = |annotation: &str| {
        let patch = json!({"metadata": {"annotations": {annotation: "0"}}});
        let operator = operator.clone();
        async move {
            operator
                .patch(
                    "sectordb-ca",
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
        }
    };

    // The CA's last year: a successor is made and trusted, but does not sign yet.
    record("sectordb.io/certificate-not-after").await?;
    let bundle = poll(STEP, "the successor trusted", || async {
        let trusted = secret_text(&secrets.get("db-ca").await.ok()?, "ca.crt").ok()?;
        (certificates(&trusted) == 2).then_some(trusted)
    })
    .await?;
    let new_ca = secret_text(&operator.get("sectordb-ca").await?, "next.crt")?;
    assert!(bundle.contains(old_ca.trim()) && bundle.contains(new_ca.trim()));
    poll(STEP, "the app Secret trusts both", || async {
        let app = secrets.get("db-app").await.ok()?;
        (secret_text(&app, "ca.crt").ok()? == bundle).then_some(())
    })
    .await?;
    let served = served_certificate(&addr)?;
    let signed_by = |ca_pem: String| {
        let mut app = app.clone();
        app.data.get_or_insert_with(Default::default).insert(
            "ca.crt".into(),
            k8s_openapi::ByteString(ca_pem.into_bytes()),
        );
        app
    };
    let only_old = signed_by(old_ca.clone());
    let only_new = signed_by(new_ca.clone());
    connect_with(&only_old)
        .await
        .context("still signed by the old CA")?;

    // After the overlap the successor signs: the server certificate is reissued by it and
    // installed in place; sessions made before go on.
    record("sectordb.io/next-since").await?;
    poll(STEP, "a certificate from the new CA served", || async {
        let now = served_certificate(&addr).ok()?;
        (now.trim() != served.trim() && connect_with(&only_new).await.is_ok()).then_some(())
    })
    .await?;
    before.batch_execute("SELECT 1").await?;
    connect_with(&secrets.get("db-app").await?).await?;
    // The operator's client certificate is reissued by the new CA and the server trusts it.
    let superuser = poll(
        STEP,
        "the superuser's certificate from the new CA",
        || async {
            let cert = operator.get("sectordb-superuser").await.ok()?;
            let issuer = cert
                .metadata
                .annotations?
                .get("sectordb.io/issuer")?
                .clone();
            (issuer == sectordb::pki::fingerprint(&new_ca)).then_some(())
        },
    );
    superuser.await?;
    Superuser::of(&client, &ns.name, "db")
        .await?
        .connect("postgres")
        .await?;
    assert!(
        connect_with(&only_old).await.is_err(),
        "a client trusting only the old CA still verified the server"
    );

    // A certificate's lifetime later the old CA is trusted no more.
    record("sectordb.io/previous-trusted-until").await?;
    poll(STEP, "the old CA dropped", || async {
        let trusted = secret_text(&secrets.get("db-ca").await.ok()?, "ca.crt").ok()?;
        (trusted.trim() == new_ca.trim()).then_some(())
    })
    .await?;
    connect_with(&secrets.get("db-app").await?).await?;
    ns.delete().await
}
