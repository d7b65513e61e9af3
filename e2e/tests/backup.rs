//! BackupPolicy end to end, against the harness's real S3 servers: a policy selects a database,
//! the operator backs it up encrypted to the provincial data center, status agrees with the
//! bucket, a request annotation runs a backup, retention expires the oldest, a restore drill
//! passes on the backup and fails on it once a file is damaged in the bucket, and two policies
//! on one database are a conflict reported on both.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use sectordb::api::backup::{BackupPhase, BackupType, SectorBackup};
use sectordb::api::database::DrillRecord;
use sectordb::api::{BackupPolicy, SectorDatabase};
use sectordb_e2e::backup::{Setup, damage, objects, request_backup, request_done};
use sectordb_e2e::{Superuser, client, connect_with, database, is_ready, metric, wait_for};
use serde_json::json;

const READY: Duration = Duration::from_secs(180);
const BACKED_UP: Duration = Duration::from_secs(240);

fn condition(db: Option<&SectorDatabase>, type_: &str) -> Option<(String, String)> {
    let c = db?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

fn last_label(db: Option<&SectorDatabase>) -> Option<String> {
    db?.status
        .as_ref()?
        .backup
        .as_ref()?
        .last_successful
        .as_ref()?
        .label
        .clone()
}

#[tokio::test]
async fn a_policy_backs_up_its_database_encrypted_and_keeps_what_retention_says() -> Result<()> {
    let client = client().await?;
    let (setup, store, _) = Setup::new(&client, "backup", 1, None).await?;
    let ns = setup.ns.name.clone();
    // The first backup comes by itself: nothing is recoverable before one.
    let api = setup.backed_up_database().await?;
    let first = wait_for(&api, "db", BACKED_UP, "BackedUp", |db| {
        condition(db, "BackedUp").is_some_and(|c| c.0 == "True")
    })
    .await?;
    let first_label = last_label(first.as_ref()).context("no label after the first backup")?;

    let marker = setup.write_marker("row").await?;
    let mut labels = vec![first_label];
    // Requests are the agency's: they add backups and never expire one the schedule keeps
    // (pgBackRest counts every full backup against retention; the operator keeps the requested
    // ones besides the policy's `fullBackups: 2`).
    for request in ["1", "2"] {
        request_backup(&api, request).await?;
        let db = request_done(&api, request, BACKED_UP).await?;
        let label = last_label(Some(&db)).context("no label")?;
        assert!(
            !labels.contains(&label),
            "backup {request} made no new label"
        );
        labels.push(label);
    }
    // A burst of requests while one runs: one runs, the latest waits, the rest are folded in.
    for request in ["3", "4", "5"] {
        request_backup(&api, request).await?;
    }
    let db = request_done(&api, "5", BACKED_UP).await?;
    labels.push(last_label(Some(&db)).context("no label")?);
    let backup = db
        .status
        .as_ref()
        .and_then(|s| s.backup.clone())
        .context("no status.backup")?;
    let count = backup.backups.unwrap_or(0);
    assert!(
        (4..=5).contains(&count),
        "the scheduled backup, two requested and one or two of the burst: {backup:?}"
    );
    let last = backup
        .last_successful
        .clone()
        .context("no lastSuccessful")?;
    assert_eq!(last.kind, "full");
    assert!(last.size_bytes > 0);
    assert_eq!(last.repos, std::slice::from_ref(&store.name));
    assert!(backup.recoverable_from.is_some() && backup.recoverable_until.is_some());
    let stanza = backup.stanza.clone().context("no stanza")?;

    // The bucket agrees, and holds no plaintext of the marker row.
    let found = objects(&client, &store, &format!("/{ns}"), &marker).await?;
    let has = |label: &str| {
        found
            .iter()
            .any(|o| o.key.contains(&format!("backup/{stanza}/{label}/")))
    };
    assert!(
        labels.iter().all(|l| has(l)),
        "a backup missing from the bucket: {labels:?}"
    );
    assert!(
        found
            .iter()
            .any(|o| o.key.contains(&format!("archive/{stanza}/"))),
        "no WAL archived"
    );
    let plain: Vec<&str> = found
        .iter()
        .filter(|o| o.has_marker)
        .map(|o| o.key.as_str())
        .collect();
    assert!(plain.is_empty(), "plaintext of the marker row in {plain:?}");
    assert!(found.iter().map(|o| o.size).sum::<i64>() > 0);

    // The operator's metrics carry the same backup (one replica: the chart's default).
    let in_namespace = format!("namespace=\"{ns}\"");
    assert_eq!(
        metric(
            &client,
            "sectordb_backup_last_success_timestamp_seconds",
            &in_namespace
        )
        .await?,
        last.time.0.as_second().to_string()
    );

    let policy = Api::<BackupPolicy>::all(client.clone())
        .get(&setup.policies[0])
        .await?;
    let status = policy.status.context("no policy status")?;
    assert_eq!(
        (status.selected_databases, status.healthy_databases),
        (Some(1), Some(1))
    );
    assert_eq!(status.conditions[0].reason, "BackingUp");
    assert!(status.last_run.is_some() && status.next_run.is_some());

    // A restore drill of the latest backup passes: restored, started, checked, counted.
    let passed = drill(&api, "1").await?;
    assert!(passed.succeeded, "{passed:?}");
    let latest = labels.last().context("no labels")?;
    assert_eq!(&passed.label, latest);
    assert!(
        passed.message.contains("pg_amcheck found no corruption"),
        "{passed:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(
        pods.get_opt("db-drill").await?.is_none(),
        "scratch pod left behind"
    );
    let verified =
        |p: Option<&BackupPolicy>| p.and_then(|p| p.status.as_ref()?.last_verification.clone());
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    let policy = wait_for(
        &policies,
        &setup.policies[0],
        Duration::from_secs(60),
        "lastVerification",
        |p| verified(p).is_some_and(|v| v.time == passed.time),
    )
    .await?;
    let verification = verified(policy.as_ref()).context("no lastVerification")?;
    assert_eq!(verification.database, format!("{ns}/db"));
    assert!(verification.succeeded);
    assert_eq!(
        metric(&client, "sectordb_restore_drill_success", &in_namespace).await?,
        "1"
    );

    // Damage one file of that backup in the bucket: the next drill fails, loudly.
    let control = found
        .iter()
        .find(|o| {
            o.key.contains(&format!(
                "backup/{stanza}/{latest}/pg_data/global/pg_control"
            ))
        })
        .context("no pg_control in the latest backup")?;
    damage(&client, &store, &control.key).await?;
    let failed = drill(&api, "2").await?;
    assert!(
        !failed.succeeded,
        "a damaged backup passed its drill: {failed:?}"
    );
    assert!(failed.message.contains("restore of backup"), "{failed:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let warned = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("RestoreDrillFailed")
                && e.type_.as_deref() == Some("Warning")
        });
    assert!(warned, "no Warning Event RestoreDrillFailed");
    wait_for(
        &policies,
        &setup.policies[0],
        Duration::from_secs(60),
        "RestoreDrillFailed",
        |p| {
            p.and_then(|p| p.status.as_ref()?.conditions.first().cloned())
                .is_some_and(|c| c.status == "False" && c.reason == "RestoreDrillFailed")
        },
    )
    .await?;
    assert_eq!(
        metric(&client, "sectordb_restore_drill_success", &in_namespace).await?,
        "0"
    );
    setup.delete().await
}

/// Asks for a restore drill of `db` and returns its record once status shows it.
async fn drill(api: &Api<SectorDatabase>, value: &str) -> Result<DrillRecord> {
    let patch = json!({"metadata": {"annotations": {"sectordb.io/drill-request": value}}});
    api.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let db = wait_for(api, "db", BACKED_UP, "the requested drill recorded", |db| {
        db.and_then(|d| {
            d.status
                .as_ref()?
                .backup
                .as_ref()?
                .last_drill_request
                .clone()
        })
        .as_deref()
            == Some(value)
    })
    .await?;
    db.and_then(|d| d.status?.backup?.last_drill)
        .context("no lastDrill")
}

#[tokio::test]
async fn a_database_two_policies_select_is_a_conflict_reported_on_both() -> Result<()> {
    let client = client().await?;
    let (setup, _, _) = Setup::new(&client, "conflict", 2, None).await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &setup.ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("db", 3))?,
    )
    .await?;
    wait_for(&api, "db", READY, "PolicyConflict", |db| {
        condition(db, "BackedUp") == Some(("False".into(), "PolicyConflict".into()))
    })
    .await?;
    let policies: Api<BackupPolicy> = Api::all(client.clone());
    for name in &setup.policies {
        wait_for(
            &policies,
            name,
            Duration::from_secs(60),
            "policy reports the conflict",
            |p| {
                p.and_then(|p| p.status.as_ref()?.conditions.first().cloned())
                    .is_some_and(|c| c.reason == "PolicyConflict" && c.message.contains("/db"))
            },
        )
        .await?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &setup.ns.name);
    assert!(
        secrets.get_opt("db-backup").await?.is_none(),
        "no backup configuration while the conflict lasts"
    );
    setup.delete().await
}

/// A SectorDatabase manifest that starts from `source`'s backups in `policy`, at `target_time`.
fn restored(name: &str, namespace: &str, policy: &str, target_time: &str) -> serde_json::Value {
    let mut db = database(name, 3);
    db["spec"]["bootstrap"] = json!({"fromBackup": {
        "policy": policy, "database": {"namespace": namespace, "name": "db"}, "targetTime": target_time}});
    db
}

#[tokio::test]
async fn a_point_in_time_restore_has_the_rows_before_the_target_and_not_after() -> Result<()> {
    let client = client().await?;
    let (setup, _, _) = Setup::new(&client, "pitr", 1, None).await?;
    let ns = setup.ns.name.clone();
    let api = setup.backed_up_database().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let app = connect_with(&secrets.get("db-app").await?).await?;
    app.batch_execute("CREATE TABLE rows (v text); INSERT INTO rows VALUES ('A')")
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let target: String = app
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.batch_execute("INSERT INTO rows VALUES ('B')").await?;
    // B's WAL segment must reach the repository, or recovery could not see past the target.
    let su = Superuser::of(&client, &ns, "db")
        .await?
        .connect("postgres")
        .await?;
    let segment: String = su
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await?
        .get(0);
    sectordb_e2e::poll(Duration::from_secs(60), "B's WAL archived", || async {
        let archived: Option<String> = su
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .ok()?
            .get(0);
        (archived? >= segment).then_some(())
    })
    .await?;
    // A target past what was archived is refused before anything is created.
    api.create(
        &PostParams::default(),
        &serde_json::from_value(restored(
            "too-late",
            &ns,
            &setup.policies[0],
            "2099-01-01T00:00:00Z",
        ))?,
    )
    .await?;
    let refused = wait_for(&api, "too-late", READY, "restore refused", |db| {
        sectordb_e2e::ready_reason(db).is_some_and(|r| r.1 == "RestoreSourceUnavailable")
    })
    .await?;
    let message = sectordb_e2e::ready_reason(refused.as_ref())
        .context("no Ready")?
        .2;
    assert!(message.contains("targetTime"), "{message}");
    // It never held data: deleting it does not wait for a final backup it has nothing to take from.
    api.delete("too-late", &DeleteParams::default()).await?;
    wait_for(&api, "too-late", Duration::from_secs(30), "deleted", |db| {
        db.is_none()
    })
    .await?;
    // The source's status must show the archive up to the target: have it looked at now.
    let refresh = json!({"metadata": {"annotations": {"sectordb.io/e2e-refresh": "after-b"}}});
    api.patch("db", &PatchParams::default(), &Patch::Merge(&refresh))
        .await?;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(restored("restored", &ns, &setup.policies[0], &target))?,
    )
    .await?;
    let db = wait_for(
        &api,
        "restored",
        Duration::from_secs(300),
        "restored Ready",
        is_ready,
    )
    .await?
    .context("restored database vanished")?;
    let restore = db
        .status
        .and_then(|s| s.restore)
        .context("no status.restore")?;
    let source = api.get("db").await?;
    let source_stanza = source
        .status
        .and_then(|s| s.backup?.stanza)
        .context("no stanza")?;
    assert_eq!(restore.stanza, source_stanza);
    assert_eq!(
        restore.target_time.map(|t| t.0.to_string()),
        Some(target.clone())
    );
    let copy = connect_with(&secrets.get("restored-app").await?).await?;
    let rows: Vec<String> = copy
        .query("SELECT v FROM rows ORDER BY v", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["A"], "restored to {target}: A before it, B after");
    // It then runs as a database of its own, backed up under a new stanza.
    let backed = wait_for(&api, "restored", BACKED_UP, "restored BackedUp", |db| {
        condition(db, "BackedUp").is_some_and(|c| c.0 == "True")
    })
    .await?;
    let own = backed
        .and_then(|d| d.status?.backup?.stanza)
        .context("no stanza of its own")?;
    assert_ne!(own, source_stanza);
    setup.delete().await
}

#[tokio::test]
async fn a_deleted_database_leaves_a_final_backup_that_restores_into_a_new_one() -> Result<()> {
    let client = client().await?;
    let (setup, _, _) = Setup::new(&client, "final", 1, None).await?;
    let ns = setup.ns.name.clone();
    // deletionPolicy: Delete, as every test database.
    let api = setup.backed_up_database().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    connect_with(&secrets.get("db-app").await?)
        .await?
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('written last')")
        .await?;
    api.delete("db", &DeleteParams::default()).await?;
    wait_for(&api, "db", Duration::from_secs(240), "deleted", |db| {
        db.is_none()
    })
    .await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let final_backup = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("FinalBackup"))
        .context("no FinalBackup Event")?;
    assert!(
        final_backup
            .note
            .unwrap_or_default()
            .contains("full backup")
    );

    // The database is gone, and so are its volumes; its backups restore into a new one.
    let mut reborn = database("reborn", 3);
    reborn["spec"]["bootstrap"] = json!({"fromBackup": {
        "policy": setup.policies[0], "database": {"namespace": ns, "name": "db"}}});
    api.create(&PostParams::default(), &serde_json::from_value(reborn)?)
        .await?;
    wait_for(
        &api,
        "reborn",
        Duration::from_secs(300),
        "reborn Ready",
        is_ready,
    )
    .await?;
    let rows: Vec<String> = connect_with(&secrets.get("reborn-app").await?)
        .await?
        .query("SELECT v FROM kept", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["written last"]);
    setup.delete().await
}

#[tokio::test]
async fn a_running_backup_holds_up_no_change_to_its_database_and_lands_in_its_record() -> Result<()>
{
    let client = client().await?;
    let (setup, _, _) = Setup::new(&client, "long", 1, None).await?;
    let ns = setup.ns.name.clone();
    let api = setup.backed_up_database().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let app = secrets.get("db-app").await?;
    // Enough data that the backup runs for a while.
    connect_with(&app)
        .await?
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) AS a, md5((g + 1)::text) AS b FROM generate_series(1, 4000000) g",
        )
        .await?;
    request_backup(&api, "long").await?;
    let db = wait_for(
        &api,
        "db",
        Duration::from_secs(60),
        "a backup running",
        |db| {
            db.and_then(|d| d.status.as_ref()?.backup.as_ref()?.running.clone())
                .is_some()
        },
    )
    .await?;
    let running = db
        .and_then(|d| d.status?.backup?.running)
        .context("no running backup")?;

    // A change made while it runs is applied at once, not after the backup.
    let edited = std::time::Instant::now();
    let patch = json!({"spec": {"postgres": {"parameters": {"work_mem": "8MB"}}}});
    api.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    sectordb_e2e::poll(Duration::from_secs(60), "work_mem 8MB", || async {
        let session = connect_with(&app).await.ok()?;
        let row = session.query_one("SHOW work_mem", &[]).await.ok()?;
        (row.get::<_, String>(0) == "8MB").then_some(())
    })
    .await?;
    let applied_after = edited.elapsed();
    let applied_at = jiff::Timestamp::now();
    assert!(
        applied_after < Duration::from_secs(20),
        "the edit took {applied_after:?} during a backup"
    );

    // The backup's outcome still lands: in the database's status and in its SectorBackup.
    let db = request_done(&api, "long", Duration::from_secs(300)).await?;
    let label = last_label(Some(&db)).context("no backup label")?;
    let records: Api<SectorBackup> = Api::namespaced(client.clone(), &ns);
    let record = records.get(&running).await?;
    let status = record.status.context("no SectorBackup status")?;
    assert_eq!(
        (status.phase, status.label.as_deref()),
        (Some(BackupPhase::Completed), Some(label.as_str())),
        "{status:?}"
    );
    assert!(status.size_bytes.unwrap_or(0) > 0, "{status:?}");
    assert!(status.finished.is_some(), "{status:?}");
    // pgBackRest's own stop time, in whole seconds.
    let stopped = db
        .status
        .as_ref()
        .and_then(|s| s.backup.as_ref()?.last_successful.as_ref())
        .map(|l| l.time.0)
        .context("no lastSuccessful")?;
    assert!(
        stopped >= jiff::Timestamp::from_second(applied_at.as_second())?,
        "the backup stopped at {stopped}, before the edit was seen at {applied_at}: the test proves nothing (more filler?)"
    );
    assert_eq!(
        (record.spec.kind, record.spec.request.as_deref()),
        (BackupType::Full, Some("long"))
    );

    // A SectorBackup the operator did not start runs nothing and says so.
    let backups_before = db.status.as_ref().and_then(|s| s.backup.as_ref()?.backups);
    let uid = db.metadata.uid.clone().context("no uid")?;
    let forged: SectorBackup = serde_json::from_value(json!({
        "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorBackup",
        "metadata": {"name": "db-forged", "labels": {"sectordb.io/database": "db"},
                     "ownerReferences": [{"apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
                                          "name": "db", "uid": uid, "controller": true}]},
        "spec": {"database": "db", "policy": setup.policies[0], "type": "full"}
    }))?;
    records.create(&PostParams::default(), &forged).await?;
    // Any change wakes the database's reconcile, which reads its records.
    request_backup(&api, "after-forged").await?;
    let forged = sectordb_e2e::poll(
        Duration::from_secs(60),
        "the forged record marked",
        || async {
            let r = records.get("db-forged").await.ok()?;
            r.status.filter(|s| s.phase.is_some())
        },
    )
    .await?;
    assert_eq!(forged.phase, Some(BackupPhase::Failed), "{forged:?}");
    assert!(forged.message.unwrap_or_default().contains("not started"));
    assert_eq!(forged.label, None);
    let db = request_done(&api, "after-forged", Duration::from_secs(300)).await?;
    assert_eq!(
        db.status.and_then(|s| s.backup?.backups),
        backups_before.map(|n| n + 1),
        "the forged record must not have run a backup of its own"
    );
    setup.delete().await
}
