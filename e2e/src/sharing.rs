//! The two agencies every sharing test starts from, and the connection they are granted.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use sectordb::api::connection::ConnectionPhase;
use sectordb::api::{DataSharingConnection, SectorDatabase};
use serde_json::json;

use crate::{LABOUR_CODE, TestNamespace, connect_with, database, is_ready, wait_for};

const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Agencies {
    pub provider: TestNamespace,
    pub consumer: TestNamespace,
}

impl Agencies {
    pub async fn delete(self) -> Result<()> {
        self.provider.delete().await?;
        self.consumer.delete().await
    }
}

/// A provider agency with a Ready database that declares `vaccinations` (three of four columns)
/// and holds rows, and a consumer agency.
pub async fn agencies(client: &Client, name: &str) -> Result<Agencies> {
    let provider = TestNamespace::create(client, &format!("{name}-p")).await?;
    let consumer = TestNamespace::create_for(client, &format!("{name}-c"), LABOUR_CODE).await?;
    let mut db = database("records", 3);
    db["spec"]["sharing"] = json!({"datasets": [{"name": "vaccinations", "tables": [
        {"schema": "public", "name": "vaccination_records", "columns": ["id", "district", "vaccine"]}]}]});
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &provider.name);
    api.create(&PostParams::default(), &serde_json::from_value(db)?)
        .await?;
    wait_for(&api, "records", READY_TIMEOUT, "provider Ready", is_ready).await?;
    let app = Api::<Secret>::namespaced(client.clone(), &provider.name)
        .get("records-app")
        .await?;
    connect_with(&app)
        .await?
        .batch_execute(
            "CREATE TABLE vaccination_records (id int, district text, vaccine text, patient_name text);
             INSERT INTO vaccination_records VALUES (1, 'Ba Dinh', 'MMR', 'Nguyen Van A');
             CREATE TABLE diagnoses (id int);",
        )
        .await?;
    Ok(Agencies { provider, consumer })
}

pub fn connection(
    name: &str,
    consumer: &str,
    valid_until: &str,
    dataset: &str,
) -> Result<DataSharingConnection> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sectordb.io/v1alpha1", "kind": "DataSharingConnection",
        "metadata": {"name": name},
        "spec": {
            "provider": {"database": "records", "dataset": dataset},
            "consumer": {"agency": {"code": LABOUR_CODE, "name": "Department of Labour"}, "namespace": consumer},
            "mode": "ReadOnly",
            "purpose": "Verify eligibility for social support payments",
            "legalBasis": "Decree 47/2020/ND-CP, art. 22",
            "validUntil": valid_until,
            "connectionLimit": 3
        }
    }))?)
}

pub fn phase(c: Option<&DataSharingConnection>) -> Option<ConnectionPhase> {
    c?.status.as_ref()?.phase
}

/// A Replicate connection of `vaccinations` into the consumer's SectorDatabase `target`.
pub fn replication(name: &str, consumer: &str, target: &str) -> Result<DataSharingConnection> {
    let mut conn = connection(name, consumer, "2027-12-31T00:00:00Z", "vaccinations")?;
    conn.spec.mode = sectordb::api::connection::SharingMode::Replicate;
    conn.spec.replicate_into = Some(sectordb::api::connection::ReplicateInto {
        database: target.into(),
    });
    Ok(conn)
}

/// Grants the consumer the provider's `vaccinations` dataset until `valid_until`,
/// waits until the connection is Active, and returns it with the Secret delivered to the consumer.
pub async fn grant(
    client: &Client,
    a: &Agencies,
    name: &str,
    valid_until: &str,
) -> Result<(DataSharingConnection, Secret)> {
    let api: Api<DataSharingConnection> = Api::namespaced(client.clone(), &a.provider.name);
    api.create(
        &PostParams::default(),
        &connection(name, &a.consumer.name, valid_until, "vaccinations")?,
    )
    .await?;
    let conn = wait_for(&api, name, Duration::from_secs(90), "Active", |c| {
        phase(c) == Some(ConnectionPhase::Active)
    })
    .await?
    .context("connection vanished")?;
    let secret_name = conn
        .status
        .as_ref()
        .and_then(|s| s.secret_ref.as_ref())
        .context("no secretRef")?
        .name
        .clone();
    let secret = Api::<Secret>::namespaced(client.clone(), &a.consumer.name)
        .get(&secret_name)
        .await?;
    Ok((conn, secret))
}
