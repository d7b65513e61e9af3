//! The off-site mirror end to end, against the harness's two S3 servers: backups reach the
//! Government data center, verified and still encrypted, and an outage there costs nothing
//! locally. These tests cut that data center off, so they run one at a time, apart from the
//! other backup tests (scripts/test runs this file on its own).

use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::Api;
use sectordb::api::BackupPolicy;
use sectordb_e2e::backup::{Outage, Setup, mirrored_after, objects, request_backup, request_done};
use sectordb_e2e::{client, metric, operator_peak_memory, operator_pod, poll, restarts, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_large_object_streams_through_the_mirror_in_bounded_memory() -> Result<()> {
    const MIB: u32 = 320;
    let client = client().await?;
    let (setup, provincial, government) = Setup::new(&client, "large", 1, Some("10m")).await?;
    let ns = setup.ns.name.clone();
    setup.backed_up_database().await?;
    let operator = operator_pod(&client).await?;
    let before = operator_peak_memory()?;
    // Larger than the operator's memory limit (256Mi): a copy held whole would be OOM-killed.
    let key = "large/object.bin";
    let sha =
        sectordb_e2e::backup::put_large(&client, &provincial, &format!("{ns}/{key}"), MIB).await?;
    let mirrored = format!("mirror-{ns}/{key}");
    let copied = poll(5 * MINUTE, "the large object mirrored", || async {
        sectordb_e2e::backup::digest(&client, &government, &mirrored)
            .await
            .ok()
            .flatten()
    })
    .await?;
    assert_eq!(
        copied,
        (u64::from(MIB) << 20, sha),
        "the mirror's copy differs"
    );
    let grown = operator_peak_memory()?.saturating_sub(before);
    assert!(
        grown < 160 << 20,
        "the operator's peak memory grew by {} MiB copying {MIB} MiB",
        grown >> 20
    );
    let now = operator_pod(&client).await?;
    assert_eq!(
        (now.metadata.uid.clone(), restarts(&now)),
        (operator.metadata.uid.clone(), restarts(&operator)),
        "the operator restarted"
    );
    setup.delete().await
}

#[tokio::test]
async fn a_mirror_keeps_the_encrypted_backups_in_the_government_data_center() -> Result<()> {
    let client = client().await?;
    let (setup, _, government) = Setup::new(&client, "mirror", 1, Some("10m")).await?;
    let ns = setup.ns.name.clone();
    let api = setup.backed_up_database().await?;
    let marker = setup.write_marker("mirror").await?;
    request_backup(&api, "to-mirror").await?;
    let db = request_done(&api, "to-mirror", 3 * MINUTE).await?;
    let backup = db
        .status
        .and_then(|s| s.backup)
        .context("no status.backup")?;
    let last = backup.last_successful.context("no backup")?;
    let (stanza, label) = (
        backup.stanza.context("no stanza")?,
        last.label.context("no label")?,
    );
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    wait_for(
        &policies,
        &setup.policies[0],
        Duration::from_secs(120),
        "mirror caught up",
        |p| p.is_some_and(|p| mirrored_after(p, last.time.0)),
    )
    .await?;
    let found = objects(&client, &government, &format!("/mirror-{ns}"), &marker).await?;
    let has = |suffix: &str| found.iter().any(|o| o.key.ends_with(suffix));
    assert!(
        has(&format!("backup/{stanza}/{label}/backup.manifest")),
        "backup not mirrored"
    );
    assert!(
        has(&format!("backup/{stanza}/backup.info"))
            && has(&format!("archive/{stanza}/archive.info"))
    );
    assert!(
        !found.iter().any(|o| o.has_marker),
        "plaintext in the Government data center"
    );
    // The database's status and compliance see the off-site copy.
    let db = wait_for(
        &api,
        "db",
        Duration::from_secs(120),
        "repos name the mirror",
        |db| {
            db.and_then(|d| d.status.as_ref()?.backup.as_ref()?.last_successful.clone())
                .is_some_and(|l| l.repos.iter().any(|r| r == &government.name))
        },
    )
    .await?
    .context("database vanished")?;
    let offsite = db
        .status
        .and_then(|s| s.compliance)
        .and_then(|c| {
            c.findings
                .into_iter()
                .find(|f| f.rule == "offsite-encrypted-backup")
        })
        .context("no off-site finding")?;
    assert!(offsite.satisfied, "{}", offsite.message);
    assert_eq!(
        setup
            .policy()
            .await?
            .status
            .context("no status")?
            .conditions[0]
            .reason,
        "BackingUp"
    );

    // Whoever holds the provincial keys overwrites a backup file and deletes the manifest: the
    // Government data center keeps both as they were, and the policy says what changed.
    let provincial = sectordb_e2e::backup::object_stores()?
        .into_iter()
        .find(|s| s.name != government.name)
        .context("no provincial data center")?;
    let manifest = format!("backup/{stanza}/{label}/backup.manifest");
    let data = found
        .iter()
        .find(|o| o.key.contains(&format!("backup/{stanza}/{label}/pg_data/")))
        .context("no backup file mirrored")?;
    // The same object under the provincial repository's prefix (`<namespace>/`).
    let relative = data.key.trim_start_matches(&format!("mirror-{ns}/"));
    sectordb_e2e::backup::tamper(
        &client,
        &provincial,
        &format!("{ns}/{relative}"),
        &format!("{ns}/{manifest}"),
    )
    .await?;
    let policy = wait_for(
        &policies,
        &setup.policies[0],
        Duration::from_secs(120),
        "the mirror reports the changed object",
        |p| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.mirrors
                    .iter()
                    .any(|m| m.message.as_deref().is_some_and(|t| t.contains(relative)))
            })
        },
    )
    .await?
    .context("policy vanished")?;
    let said = policy.status.context("no status")?.mirrors[0]
        .message
        .clone()
        .unwrap_or_default();
    assert!(said.contains("changed in the primary repository"), "{said}");
    let after = objects(&client, &government, &format!("/mirror-{ns}"), &marker).await?;
    let size_of = |key: &str, list: &[sectordb_e2e::backup::Object]| {
        list.iter().find(|o| o.key == key).map(|o| o.size)
    };
    assert_eq!(
        size_of(&data.key, &after),
        Some(data.size),
        "the good copy was replaced"
    );
    assert!(
        after.iter().any(|o| o.key.ends_with(&manifest)),
        "the manifest deleted in the primary was deleted off-site"
    );
    setup.delete().await
}

#[tokio::test]
async fn a_government_data_center_outage_costs_nothing_locally_and_the_mirror_catches_up()
-> Result<()> {
    let client = client().await?;
    let (setup, _, government) = Setup::new(&client, "outage", 1, Some("30s")).await?;
    let ns = setup.ns.name.clone();
    let api = setup.backed_up_database().await?;
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let name = setup.policies[0].clone();
    let mirror =
        |p: Option<&BackupPolicy>| p.and_then(|p| p.status.as_ref()?.mirrors.first().cloned());
    wait_for(&policies, &name, 2 * MINUTE, "mirror in sync", |p| {
        mirror(p).is_some_and(|m| m.healthy && m.last_synced.is_some())
    })
    .await?;

    let outage = Outage::begin(&government.name)?;
    // Backups and archiving to the provincial data center go on.
    request_backup(&api, "during-outage").await?;
    // Generous: the backup tests beside this one load the single provincial S3 server.
    let db = request_done(&api, "during-outage", 6 * MINUTE).await?;
    let backup = db
        .status
        .and_then(|s| s.backup)
        .context("no status.backup")?;
    let label = backup
        .last_successful
        .as_ref()
        .and_then(|l| l.label.clone())
        .context("no label")?;
    // The mirror falls behind, and the policy and the database say so.
    let behind = wait_for(&policies, &name, 3 * MINUTE, "mirror behind", |p| {
        mirror(p).is_some_and(|m| !m.healthy && m.lag_seconds > 30)
    })
    .await?;
    assert_eq!(
        behind
            .and_then(|p| p.status?.conditions.first().cloned())
            .map(|c| c.reason),
        Some("MirrorBehind".to_string())
    );
    // The metric shows the lag too.
    let labels = format!("policy=\"{name}\",repository=\"{}\"", government.name);
    let lag: i64 = metric(&client, "sectordb_mirror_lag_seconds", &labels)
        .await?
        .parse()?;
    assert!(
        lag > 30,
        "mirror lag metric {lag} while the mirror is behind"
    );
    wait_for(&api, "db", 2 * MINUTE, "Compliant=False off site", |db| {
        db.and_then(|d| d.status.as_ref()?.compliance.clone())
            .is_some_and(|c| {
                c.findings
                    .iter()
                    .any(|f| f.rule == "offsite-encrypted-backup" && !f.satisfied)
            })
    })
    .await?;

    // Taken before the data center is back, whole seconds as in status: a pass may copy while
    // the start is still checking the server, and lastSynced drops the fraction.
    let after = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?;
    outage.end()?;
    wait_for(&policies, &name, 3 * MINUTE, "mirror caught up", |p| {
        mirror(p).is_some_and(|m| {
            m.healthy && m.lag_seconds == 0 && m.last_synced.as_ref().is_some_and(|t| t.0 >= after)
        })
    })
    .await?;
    let stanza = backup.stanza.context("no stanza")?;
    let found = objects(&client, &government, &format!("/mirror-{ns}"), "no marker").await?;
    assert!(
        found.iter().any(|o| o
            .key
            .ends_with(&format!("backup/{stanza}/{label}/backup.manifest"))),
        "the backup taken during the outage is not in the mirror"
    );
    setup.delete().await
}
