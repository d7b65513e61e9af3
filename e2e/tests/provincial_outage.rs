//! The provincial data center (every policy's primary repository) cut off: a database restores
//! from the Government data center's mirror alone, and pgBackRest's own listing of the mirror
//! agrees with the source's status. It takes the primary away from every other backup test, so
//! scripts/test runs it last, side by side only with the operator restarts (whose backup test
//! writes to the Government data center); its waits allow for the operator being away.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::PostParams;
use sectordb::api::{BackupPolicy, SectorDatabase};
use sectordb::backup::exec;
use sectordb::backup::pgbackrest::{self, RESTORE_DIR};
use sectordb_e2e::backup::{Outage, Setup, mirrored_after, request_backup, request_done};
use sectordb_e2e::{client, connect_with, database, is_ready, wait_for};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_database_restores_from_the_mirror_while_the_primary_is_unreachable() -> Result<()> {
    let client = client().await?;
    let (setup, provincial, government) = Setup::new(&client, "frommirror", 1, Some("10m")).await?;
    let ns = setup.ns.name.clone();
    let api = setup.backed_up_database().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let marker = setup.write_marker("offsite").await?;
    request_backup(&api, "before-outage").await?;
    let db = request_done(&api, "before-outage", 3 * MINUTE).await?;
    let backed_up = db
        .status
        .and_then(|s| s.backup?.last_successful)
        .context("no backup")?
        .time;
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    wait_for(
        &policies,
        &setup.policies[0],
        2 * MINUTE,
        "the backup mirrored",
        |p| p.is_some_and(|p| mirrored_after(p, backed_up.0)),
    )
    .await?;

    let outage = Outage::begin(&provincial.name)?;
    let mut copy = database("copy", 3);
    copy["spec"]["bootstrap"] = json!({"fromBackup": {
        "policy": setup.policies[0], "database": {"namespace": ns, "name": "db"},
        "repository": government.name}});
    api.create(&PostParams::default(), &serde_json::from_value(copy)?)
        .await?;
    let restored = wait_for(&api, "copy", 5 * MINUTE, "copy Ready", is_ready).await?;
    let rows: Vec<String> = connect_with(&secrets.get("copy-app").await?)
        .await?
        .query("SELECT body FROM notes", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, [marker], "the copy restored from the mirror");
    let restore = restored
        .and_then(|d: SectorDatabase| d.status?.restore)
        .context("no status.restore")?;
    assert!(
        restore.stanza.starts_with(&format!("{ns}.db.")),
        "{restore:?}"
    );

    // pgBackRest reads the mirror as a repository of its own (the copy's restore configuration
    // names it), and what it lists there is what the source's status says.
    let info = exec::run(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        "copy-0",
        vec![
            "pgbackrest".into(),
            format!("--config={RESTORE_DIR}/pgbackrest.conf"),
            format!("--stanza={}", restore.stanza),
            "info".into(),
            "--output=json".into(),
        ],
        // The Government data center's single S3 server also takes the restart tests' backups
        // meanwhile; one run of the suite saw this listing take over a minute.
        3 * MINUTE,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert!(
        info.succeeded(),
        "pgbackrest info on the mirror: {}",
        info.tail()
    );
    let in_mirror =
        pgbackrest::parse_info(&info.stdout, &government.name).map_err(anyhow::Error::msg)?;
    let labels: Vec<Option<String>> = in_mirror.iter().map(|r| r.label.clone()).collect();
    let source = api
        .get("db")
        .await?
        .status
        .and_then(|s| s.backup)
        .context("no status.backup")?;
    assert_eq!(
        labels.last().cloned().flatten(),
        source.last_successful.and_then(|r| r.label),
        "the mirror's latest backup is not the one status names: {labels:?}"
    );
    assert_eq!(Some(labels.len() as i32), source.backups, "{labels:?}");
    outage.end()?;
    setup.delete().await
}
