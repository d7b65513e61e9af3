//! Restore drills (`verification.schedule`, or the `sectordb.io/drill-request` annotation): a
//! backup restored into a scratch pod, started, checked with `pg_amcheck` and against the row
//! counts taken when it completed; then the pod goes. The reconcile of the database waits for
//! the drill, as it does for a backup.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

use super::names::DATABASE as CONTROLLER;
use super::{Context, Result, apply_child, now};
use crate::api::SectorDatabase;
use crate::api::database::DrillRecord;
use crate::backup::{drill, exec, pgbackrest};
use crate::dataplane;

pub const REQUEST_ANNOTATION: &str = "sectordb.io/drill-request";

/// How long the scratch pod may take to start (the image is the database's, already on nodes
/// that run it).
const POD_START: Duration = Duration::from_secs(180);
/// A restore or recovery longer than this fails the drill.
const RESTORE_LIMIT: u64 = 3600;

fn data(config_map: Option<&ConfigMap>, key: &str) -> Option<String> {
    config_map?.data.as_ref()?.get(key).cloned()
}

/// After backup `label` completed in the primary: its row counts and restore point, kept in
/// the ConfigMap `<db>-drill`. `Err` says why they could not be taken.
pub async fn take_baseline(
    ctx: &Context,
    db: &SectorDatabase,
    label: &str,
) -> Result<std::result::Result<(), String>> {
    let namespace = db.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let primary = format!("{}-0", db.name_any());
    let command = drill::baseline_command(&db.spec.database.name, label);
    let out = match exec::run(&pods, &primary, command, Duration::from_secs(300)).await {
        Ok(out) if out.succeeded() => out,
        Ok(out) => return Ok(Err(out.tail())),
        Err(error) => return Ok(Err(error)),
    };
    let counts = drill::format_counts(&drill::parse_counts(&out.stdout));
    let taken = now().0.to_string();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    apply_child(
        ctx,
        CONTROLLER,
        &config_maps,
        dataplane::drill_baseline(db, label, &counts, &taken),
    )
    .await?;
    Ok(Ok(()))
}

/// A drill that cannot start yet, or its record.
pub enum Drill {
    Waiting(String),
    Done(DrillRecord),
}

/// Runs a drill of the backup whose row counts were taken last. `last_archived` (Unix time) is
/// when PostgreSQL last archived WAL: the restore point must be in the archive first.
pub async fn run(
    ctx: &Context,
    db: &SectorDatabase,
    stanza: &str,
    last_archived: Option<i64>,
) -> Result<Drill> {
    let namespace = db.namespace().unwrap_or_default();
    let n = dataplane::names(&db.name_any());
    let baseline = Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&n.drill)
        .await?;
    let (Some(label), Some(counts), Some(taken)) = (
        data(baseline.as_ref(), "label"),
        data(baseline.as_ref(), "counts"),
        data(baseline.as_ref(), "taken").and_then(|t| t.parse::<jiff::Timestamp>().ok()),
    ) else {
        return Ok(Drill::Done(DrillRecord {
            time: now(),
            label: String::new(),
            succeeded: false,
            restore_seconds: 0,
            message: "no row counts were taken when a backup completed (they are taken after each backup the operator runs): nothing to check a copy against".into(),
        }));
    };
    if last_archived.is_none_or(|at| at < taken.as_second()) {
        return Ok(Drill::Waiting(format!(
            "waiting for the restore point of backup {label} to reach the archive"
        )));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let settings = ctx.settings();
    remove(&pods, &n.drill, &db.uid().unwrap_or_default()).await?;
    pods.create(&PostParams::default(), &dataplane::drill_pod(db, &settings))
        .await?;
    ctx.metrics.write(CONTROLLER, "Pod");
    let checked = check(&pods, &n.drill, db, stanza, &label, &counts).await;
    // The scratch pod goes whatever happened, also when the apiserver failed a check's call.
    remove(&pods, &n.drill, &db.uid().unwrap_or_default()).await?;
    let (succeeded, restore_seconds, message) = match checked? {
        Ok((seconds, message)) => (true, seconds, message),
        Err((seconds, message)) => (false, seconds, message),
    };
    Ok(Drill::Done(DrillRecord {
        time: now(),
        label,
        succeeded,
        restore_seconds,
        message,
    }))
}

/// Deletes the scratch pod and waits until it is gone, so the next drill starts clean. A pod of
/// that name the operator did not make for this database is left alone, and the drill fails.
async fn remove(pods: &Api<Pod>, name: &str, owner_uid: &str) -> Result<()> {
    let gone = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    match pods.get_opt(name).await? {
        None => return Ok(()),
        Some(pod) if !crate::apply::owned_by(&pod, owner_uid) => {
            return Err(super::Error::NameTaken(format!(
                "Pod {name:?} already exists and was not created by sectordb for this database; the restore drill needs that name"
            )));
        }
        Some(_) => {}
    }
    let _ = pods.delete(name, &gone).await;
    for _ in 0..60 {
        if pods.get_opt(name).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn running(pods: &Api<Pod>, name: &str) -> Result<bool> {
    let started = Instant::now();
    while started.elapsed() < POD_START {
        let phase = pods
            .get_opt(name)
            .await?
            .and_then(|p| p.status)
            .and_then(|s| s.phase);
        match phase.as_deref() {
            Some("Running") => return Ok(true),
            Some("Failed" | "Succeeded") => return Ok(false),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    Ok(false)
}

/// The checks, in order; the first that fails ends the drill. `Ok`/`Err` carry the restore
/// seconds (0 when the restore did not finish) and what was found.
async fn check(
    pods: &Api<Pod>,
    pod: &str,
    db: &SectorDatabase,
    stanza: &str,
    label: &str,
    counts: &str,
) -> Result<std::result::Result<(i64, String), (i64, String)>> {
    if !running(pods, pod).await? {
        return Ok(Err((
            0,
            format!("the scratch pod {pod} did not start within {POD_START:?}"),
        )));
    }
    let step = |command: Vec<String>, seconds: u64| async move {
        match exec::run(pods, pod, command, Duration::from_secs(seconds + 30)).await {
            Ok(out) if out.succeeded() => Ok(out.stdout),
            Ok(out) => Err(out.tail()),
            Err(error) => Err(error),
        }
    };
    let started = Instant::now();
    let args = drill::restore_args(label);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let restore = pgbackrest::command(stanza, RESTORE_LIMIT, &args);
    if let Err(why) = step(restore, RESTORE_LIMIT).await {
        return Ok(Err((0, format!("restore of backup {label}: {why}"))));
    }
    if let Err(why) = step(drill::start_command(), RESTORE_LIMIT).await {
        return Ok(Err((
            0,
            format!("the copy of backup {label} did not start: {why}"),
        )));
    }
    let seconds = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
    if let Err(why) = step(drill::amcheck_command(), RESTORE_LIMIT).await {
        return Ok(Err((
            seconds,
            format!("pg_amcheck on the copy of backup {label}: {why}"),
        )));
    }
    let restored = match step(drill::count_command(&db.spec.database.name), RESTORE_LIMIT).await {
        Ok(out) => drill::parse_counts(&out),
        Err(why) => return Ok(Err((seconds, format!("counting rows in the copy: {why}")))),
    };
    let at_backup = drill::read_counts(counts);
    match drill::compare(&at_backup, &restored) {
        Ok(()) => {
            let tables = match at_backup.len() {
                1 => "1 table".to_string(),
                n => format!("{n} tables"),
            };
            Ok(Ok((
                seconds,
                format!(
                    "backup {label} restored in {seconds} s; pg_amcheck found no corruption; the rows of {tables} match the counts taken at backup"
                ),
            )))
        }
        Err(why) => Ok(Err((
            seconds,
            format!("the copy of backup {label} differs: {why}"),
        ))),
    }
}
