//! The cluster's own rules, as users' clusters enforce them: NetworkPolicy admits to a
//! database's port only its agency's pods, the operator, and the consumers of a granted
//! connection; and clients find databases by their Services' DNS names.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::{Api, Client};
use sectordb::api::DataSharingConnection;
use sectordb_e2e::sharing::{agencies, grant};
use sectordb_e2e::{TestNamespace, client, poll, run_pod, secret_text, wait_for};

/// Whether a pod in `namespace` opens a TCP connection to PostgreSQL at `addr` (pg_isready:
/// 0 accepting, 2 no response; anything else is not a network answer and fails the test).
/// `tries` attempts a second apart: a pod's first connections may be refused while its node's
/// kube-router and kube-proxy catch up with it, so a pod that should get in is given time.
async fn reaches(
    client: &Client,
    namespace: &str,
    name: &str,
    addr: &str,
    tries: u32,
) -> Result<bool> {
    let probe = format!("pg_isready -h {addr} -p 5432 -t 5");
    let run = run_pod(
        client,
        namespace,
        name,
        None,
        &format!(
            "for i in $(seq {}); do {probe} >/dev/null 2>&1 && break; sleep 1; done; {probe}; echo rc=$?",
            tries.saturating_sub(1)
        ),
    )
    .await?;
    match run.logs.lines().rev().find_map(|l| l.strip_prefix("rc=")) {
        Some("0") => Ok(true),
        Some("2") => Ok(false),
        _ => bail!("pg_isready from {namespace}: {}", run.logs),
    }
}

#[tokio::test]
async fn only_the_agency_the_operator_and_granted_consumers_reach_a_database() -> Result<()> {
    let client = client().await?;
    // The provider's database is Ready: the operator reached it over SQL (and keeps doing so).
    let a = agencies(&client, "netpol").await?;
    let outsider = TestNamespace::create(&client, "netpol-x").await?;
    let app = Api::<Secret>::namespaced(client.clone(), &a.provider.name)
        .get("records-app")
        .await?;
    let addr = secret_text(&app, "hostaddr")?;

    assert!(
        reaches(&client, &a.provider.name, "own", &addr, 15).await?,
        "the agency's own pod is refused"
    );
    assert!(
        !reaches(&client, &outsider.name, "outsider", &addr, 1).await?,
        "a namespace without a grant reached the database"
    );
    assert!(
        !reaches(&client, &a.consumer.name, "before", &addr, 1).await?,
        "the consumer reached the database before any grant"
    );

    grant(&client, &a, "vax", "2027-12-31T00:00:00Z").await?;
    let mut attempt = 0;
    poll(
        Duration::from_secs(60),
        "the granted consumer reaches the database",
        || {
            attempt += 1;
            let (client, ns, addr) = (client.clone(), a.consumer.name.clone(), addr.clone());
            async move {
                reaches(&client, &ns, &format!("granted-{attempt}"), &addr, 15)
                    .await
                    .ok()
                    .filter(|r| *r)
            }
        },
    )
    .await?;

    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.delete("vax", &DeleteParams::default()).await?;
    wait_for(
        &api,
        "vax",
        Duration::from_secs(60),
        "connection gone",
        |c| c.is_none(),
    )
    .await?;
    let mut attempt = 0;
    poll(
        Duration::from_secs(60),
        "the revoked consumer refused",
        || {
            attempt += 1;
            let (client, ns, addr) = (client.clone(), a.consumer.name.clone(), addr.clone());
            async move {
                reaches(&client, &ns, &format!("revoked-{attempt}"), &addr, 1)
                    .await
                    .ok()
                    .filter(|r| !*r)
                    .map(drop)
            }
        },
    )
    .await
    .context("the consumer still reaches the database after revocation")?;
    assert!(
        !reaches(&client, &outsider.name, "outsider-after", &addr, 1).await?,
        "the outsider reached the database"
    );
    outsider.delete().await?;
    a.delete().await
}
