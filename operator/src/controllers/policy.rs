//! The BackupPolicy controller: validates the policy, checks that its Secrets exist, counts the
//! databases it selects and those it backs up (the database controller runs the backups and
//! reports them in each database's status), reports conflicts (a database two policies select
//! is backed up by neither until one lets go), and keeps the off-site mirrors: each pass copies
//! what the primary repository gained since the last one, and the mirror's lag is in status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::names::POLICY as CONTROLLER;
use super::selection::selects;
use super::{Context, Result, announce, backups, now, report_undecodable, write_status};
use crate::api::policy::{BackupPolicyStatus, MirrorStatus, Repository, VerificationResult};
use crate::api::{BackupPolicy, SectorDatabase};
use crate::backup::mirror::{self, Polled};
use crate::backup::schedule;
use crate::conditions::{Want, settle, status_of};
use crate::validate;

/// What the controller read about the databases and Secrets a policy names.
#[derive(Debug, Default)]
pub struct Facts {
    pub selected: i32,
    /// Selected databases whose BackedUp condition is True under this policy.
    pub healthy: i32,
    /// Selected databases another policy selects too, as `namespace/name`.
    pub conflicts: Vec<String>,
    /// Secrets or keys the policy names that the operator's namespace lacks.
    pub missing: Vec<String>,
    /// The latest backup among the databases it covers.
    pub last_run: Option<Time>,
    /// The mirrors as the last pass left them.
    pub mirrors: Vec<MirrorStatus>,
    /// The latest restore drill among the databases it covers.
    pub last_verification: Option<VerificationResult>,
    /// Databases whose latest restore drill failed, as `namespace/name`.
    pub failed_drills: Vec<String>,
}

/// The status a policy should have. Pure.
pub fn desired_status(policy: &BackupPolicy, facts: &Facts, now: &Time) -> BackupPolicyStatus {
    let spec = &policy.spec;
    let primary = spec.repositories.first().map_or("", |r| r.name.as_str());
    let behind: Vec<String> = facts
        .mirrors
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| format!("{} ({} s behind)", m.name, m.lag_seconds))
        .collect();
    let counts = format!(
        "{} of {} selected databases backed up to {primary}",
        facts.healthy, facts.selected
    );
    let want = match validate::policy(spec) {
        Err(violations) => Want::new(
            "Ready",
            false,
            "InvalidSpec",
            validate::describe(&violations),
        ),
        Ok(()) if !facts.missing.is_empty() => Want::new(
            "Ready",
            false,
            "SecretsMissing",
            format!(
                "the operator's namespace lacks {}",
                facts.missing.join(", ")
            ),
        ),
        Ok(()) if !facts.conflicts.is_empty() => Want::new(
            "Ready",
            false,
            "PolicyConflict",
            format!(
                "{} also selected by another BackupPolicy and backed up by neither; {counts}",
                facts.conflicts.join(", ")
            ),
        ),
        Ok(()) if !facts.failed_drills.is_empty() => Want::new(
            "Ready",
            false,
            "RestoreDrillFailed",
            format!(
                "{counts}; the latest restore drill failed for {}: see their status.backup.lastDrill",
                facts.failed_drills.join(", ")
            ),
        ),
        Ok(()) if !behind.is_empty() => Want::new(
            "Ready",
            false,
            "MirrorBehind",
            format!(
                "{counts}; mirror(s) behind by more than their maxLag: {}",
                behind.join(", ")
            ),
        ),
        Ok(()) if facts.mirrors.is_empty() => Want::new("Ready", true, "BackingUp", counts),
        Ok(()) => {
            let kept: Vec<String> = facts
                .mirrors
                .iter()
                .map(|m| format!("{} (lag {} s)", m.name, m.lag_seconds))
                .collect();
            let message = format!("{counts}, mirrored to {}", kept.join(", "));
            Want::new("Ready", true, "BackingUp", message)
        }
    };
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    BackupPolicyStatus {
        observed_generation: generation,
        conditions: settle(vec![want], &previous.conditions, generation, now),
        selected_databases: Some(facts.selected),
        healthy_databases: Some(facts.healthy),
        last_run: facts.last_run.clone().or(previous.last_run.clone()),
        next_run: schedule::next_run(&spec.schedule, now.0).map(Time),
        mirrors: facts.mirrors.clone(),
        last_verification: facts
            .last_verification
            .clone()
            .or(previous.last_verification),
    }
}

/// How often a mirror gets a pass; a pass within this of the last one is not repeated when some
/// database's change wakes the controller.
const MIRROR_PASS_EVERY: Duration = Duration::from_secs(20);
/// How often a policy whose mirror pass runs looks whether it ended.
const PASS_LOOK_EVERY: Duration = Duration::from_secs(5);

/// The mirror's status after a pass. `lastSynced` says since when the mirror has held all the
/// primary held: a pass that copied something moves it to now, one that found nothing new
/// leaves it, so an idle mirror rewrites no status. A pass that failed leaves it too, and the
/// lag runs from the last pass that went through (`last_pass`, kept by this process; the
/// policy's creation when there was none). Pure.
fn mirror_status(
    repository: &Repository,
    pass: &std::result::Result<u64, String>,
    last_synced: Option<&Time>,
    last_pass: Option<&Time>,
    since: &Time,
    now: &Time,
) -> MirrorStatus {
    let max_lag = repository
        .max_lag
        .as_deref()
        .and_then(validate::parse_duration)
        .unwrap_or(3600);
    let (lag_seconds, last_synced) = match (pass, last_synced) {
        (Ok(0), Some(synced)) => (0, Some(synced.clone())),
        (Ok(_), _) => (0, Some(now.clone())),
        (Err(_), _) => {
            let from = last_pass.or(last_synced).unwrap_or(since);
            (
                (now.0.as_second() - from.0.as_second()).max(0),
                last_synced.cloned(),
            )
        }
    };
    MirrorStatus {
        name: repository.name.clone(),
        lag_seconds,
        last_synced,
        healthy: lag_seconds <= max_lag,
        message: pass.as_ref().err().cloned(),
    }
}

/// Each mirror's status: a pass that ended is read and recorded, one that runs is left to run,
/// and one is started where none ran within `MIRROR_PASS_EVERY`. Also whether a pass runs now
/// (the policy is then looked at again soon).
async fn keep_mirrors(
    ctx: &Context,
    policy: &BackupPolicy,
    now: &Time,
) -> Result<(Vec<MirrorStatus>, bool)> {
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.mirrors.clone())
        .unwrap_or_default();
    let since = policy
        .metadata
        .creation_timestamp
        .clone()
        .unwrap_or_else(|| now.clone());
    let Some(primary) = policy.spec.repositories.first() else {
        return Ok((Vec::new(), false));
    };
    let mut statuses = Vec::new();
    let mut running = false;
    for repository in policy.spec.repositories.iter().skip(1) {
        let before = previous.iter().find(|m| m.name == repository.name);
        let key = format!("{}/{}", policy.uid().unwrap_or_default(), repository.name);
        let last_pass = ctx
            .mirror_passes
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let last = before.and_then(|m| m.last_synced.as_ref());
        let status = |pass: &std::result::Result<u64, String>, at: &Time| {
            mirror_status(repository, pass, last, last_pass.as_ref(), &since, at)
        };
        // While a pass runs the status stays as it was (before the first: lag since creation).
        let while_running = || {
            let first = || status(&Err("the first pass runs".into()), now);
            before.cloned().unwrap_or_else(first)
        };
        let started = match ctx.mirror_runs.poll(&key) {
            Polled::Running => {
                running = true;
                statuses.push(while_running());
                continue;
            }
            Polled::Done(started, pass) => {
                record_pass(ctx, policy, repository, &key, &started, &pass);
                statuses.push(status(&pass, &started));
                continue;
            }
            Polled::Idle => now,
        };
        let recent = last_pass.as_ref().or(last).is_some_and(|t| {
            started.0.as_second() - t.0.as_second() < MIRROR_PASS_EVERY.as_secs() as i64
        });
        if let (true, Some(before)) = (recent, before) {
            statuses.push(before.clone());
            continue;
        }
        match (
            backups::repository_keys(ctx, primary, None).await?,
            backups::repository_keys(ctx, repository, None).await?,
        ) {
            (Ok((from, _)), Ok((to, _))) => {
                let copy = pass(primary.clone(), from, repository.clone(), to);
                ctx.mirror_runs.start(key, started.clone(), copy);
                running = true;
                statuses.push(while_running());
            }
            _ => statuses.push(status(
                &Err("the repositories' Secrets are missing".to_string()),
                now,
            )),
        }
    }
    Ok((statuses, running))
}

/// Remembers when a pass that went through started (the lag runs from it), or logs why it failed.
fn record_pass(
    ctx: &Context,
    policy: &BackupPolicy,
    repository: &Repository,
    key: &str,
    started: &Time,
    pass: &std::result::Result<u64, String>,
) {
    match pass {
        Ok(_) => {
            if let Ok(mut passes) = ctx.mirror_passes.lock() {
                passes.insert(key.to_string(), started.clone());
            }
        }
        Err(error) => tracing::warn!(
            policy = %policy.name_any(), mirror = %repository.name, %error,
            "mirror pass failed; it is retried"
        ),
    }
}

/// One pass copying what `primary` gained to `mirror`; how many objects it copied.
async fn pass(
    primary: Repository,
    from: backups::Keys,
    mirror: Repository,
    to: backups::Keys,
) -> std::result::Result<u64, String> {
    let open = |repository, keys: &backups::Keys| {
        mirror::open(&mirror::Access {
            repository,
            access_key_id: &keys.access_key_id,
            secret_access_key: &keys.secret_access_key,
            ca_pem: keys.ca_pem.as_deref(),
        })
    };
    let started = std::time::Instant::now();
    let done = mirror::sync(&open(&primary, &from)?, &open(&mirror, &to)?).await?;
    if done.copied > 0 {
        tracing::info!(
            mirror = %mirror.name, copied = done.copied, bytes = done.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64, "mirror pass"
        );
    }
    // The mirror is not in step with a primary whose written-once objects changed: it keeps the
    // verified copies, and the lag grows until someone looks.
    match done.changed.as_slice() {
        [] => Ok(done.copied as u64),
        changed => Err(format!(
            "{} objects changed in the primary repository after they were mirrored; the mirror keeps its verified copies: {}",
            changed.len(),
            changed
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The Secrets and keys a policy names that `present` (name -> keys) lacks.
fn missing_secrets(policy: &BackupPolicy, present: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for repository in &policy.spec.repositories {
        let c = &repository.s3.credentials_secret;
        wanted.push((&c.name, &c.access_key_id_key));
        wanted.push((&c.name, &c.secret_access_key_key));
        if let Some(ca) = &repository.s3.ca_secret {
            wanted.push((&ca.name, &ca.key));
        }
    }
    if let Some(e) = &policy.spec.encryption {
        wanted.push((&e.key_secret.name, &e.key_secret.key));
    }
    wanted
        .into_iter()
        .filter(|(name, key)| {
            !present
                .get(*name)
                .is_some_and(|keys| keys.iter().any(|k| k == key))
        })
        .map(|(name, key)| format!("Secret {name:?} key {key:?}"))
        .collect()
}

async fn reconcile(
    guard: Arc<DeserializeGuard<BackupPolicy>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let api: Api<BackupPolicy> = Api::all(ctx.client.clone());
    let policy = match &guard.0 {
        Ok(policy) => policy,
        Err(invalid) => return report_undecodable(&ctx, CONTROLLER, &api, invalid, None).await,
    };
    let namespaces: BTreeMap<String, BTreeMap<String, String>> =
        Api::<Namespace>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect();
    let databases = Api::<DeserializeGuard<SectorDatabase>>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let others: Vec<BackupPolicy> = Api::<DeserializeGuard<BackupPolicy>>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|guard| guard.0.ok())
        .filter(|p| p.name_any() != policy.name_any())
        .collect();
    let present: BTreeMap<String, Vec<String>> =
        Api::<Secret>::namespaced(ctx.client.clone(), &ctx.namespace)
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|s| {
                let keys = s.data.unwrap_or_default().into_keys().collect();
                (s.metadata.name.unwrap_or_default(), keys)
            })
            .collect();
    let no_labels = BTreeMap::new();
    let mut facts = Facts {
        missing: missing_secrets(policy, &present),
        ..Facts::default()
    };
    for db in databases.iter().filter_map(|guard| guard.0.as_ref().ok()) {
        let labels = db
            .namespace()
            .and_then(|ns| namespaces.get(&ns))
            .unwrap_or(&no_labels);
        if !selects(&policy.spec.database_selector, labels, db) {
            continue;
        }
        facts.selected += 1;
        if others
            .iter()
            .any(|p| selects(&p.spec.database_selector, labels, db))
        {
            facts.conflicts.push(format!(
                "{}/{}",
                db.namespace().unwrap_or_default(),
                db.name_any()
            ));
            continue;
        }
        let Some(status) = &db.status else { continue };
        let backup = status
            .backup
            .as_ref()
            .filter(|b| b.policy.as_deref() == Some(&policy.name_any()));
        if status_of(&status.conditions, "BackedUp") == Some("True") && backup.is_some() {
            facts.healthy += 1;
        }
        let last = backup
            .and_then(|b| b.last_successful.as_ref())
            .map(|l| l.time.clone());
        if last.as_ref().map(|t| t.0) > facts.last_run.as_ref().map(|t| t.0) {
            facts.last_run = last;
        }
        if let Some(drill) = backup.and_then(|b| b.last_drill.as_ref()) {
            let database = format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any());
            if !drill.succeeded {
                facts.failed_drills.push(database.clone());
            }
            let latest = facts.last_verification.as_ref().map(|v| v.time.0);
            if latest < Some(drill.time.0) {
                facts.last_verification = Some(VerificationResult {
                    time: drill.time.clone(),
                    database,
                    succeeded: drill.succeeded,
                    restore_seconds: drill.restore_seconds,
                });
            }
        }
    }
    let now = now();
    let mut passing = false;
    if facts.missing.is_empty() && validate::policy(&policy.spec).is_ok() {
        (facts.mirrors, passing) = keep_mirrors(&ctx, policy, &now).await?;
    }
    let mut existing: Vec<String> = others.iter().map(|p| p.name_any()).collect();
    existing.push(policy.name_any());
    ctx.metrics.keep_policies(&existing);
    ctx.metrics.mirrors(&policy.name_any(), &facts.mirrors);
    let status = desired_status(policy, &facts, &now);
    write_status(&ctx, CONTROLLER, &api, policy, &status).await?;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = status.conditions.first() {
        announce(&ctx, policy, previous, ready).await;
    }
    // Namespace labels and Secrets are not watched; a periodic look keeps the counts true, and
    // the mirrors get their next pass.
    Ok(Action::requeue(if passing {
        PASS_LOOK_EVERY
    } else if policy.spec.repositories.len() > 1 {
        MIRROR_PASS_EVERY
    } else {
        Duration::from_secs(120)
    }))
}

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<BackupPolicy>> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let policies = controller.store();
    let labels = ctx.namespace_labels.clone();
    // A database's change concerns the policies that select it or selected it.
    let databases: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    controller
        .watches(databases, watcher::Config::default(), move |db| {
            let db = db.0.ok();
            let namespace = db
                .as_ref()
                .and_then(|d| labels.get(&d.namespace().unwrap_or_default()));
            policies
                .state()
                .into_iter()
                .filter(|guard| match (&guard.0, &db) {
                    (Ok(p), Some(db)) => super::selection::concerns(p, namespace.as_ref(), db),
                    _ => true,
                })
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            super::counting_failures(CONTROLLER, reconcile),
            super::error_policy(CONTROLLER),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::DatabaseSelector;
    use serde_json::json;

    fn db(level: i32, labels: serde_json::Value) -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "d", "namespace": "n", "labels": labels},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
                     "securityLevel": level, "storage": {"size": "1Gi"}, "database": {"name": "h", "owner": "app"}}
        }))
        .unwrap()
    }

    fn selector(value: serde_json::Value) -> DatabaseSelector {
        serde_json::from_value(value).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_selects_nothing() {
        assert!(!selects(
            &selector(json!({})),
            &labels(&[]),
            &db(3, json!({}))
        ));
    }

    #[test]
    fn namespace_selector_and_levels_both_apply() {
        let s = selector(
            json!({"namespaceSelector": {"matchLabels": {"sectordb.io/backup": "standard"}}, "securityLevels": [3]}),
        );
        let standard = labels(&[("sectordb.io/backup", "standard")]);
        assert!(selects(&s, &standard, &db(3, json!({}))));
        assert!(!selects(&s, &standard, &db(2, json!({}))));
        assert!(!selects(&s, &labels(&[]), &db(3, json!({}))));
    }

    #[test]
    fn database_label_selector_applies() {
        let s = selector(
            json!({"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]}}),
        );
        assert!(selects(&s, &labels(&[]), &db(1, json!({"tier": "gold"}))));
        assert!(!selects(
            &s,
            &labels(&[]),
            &db(1, json!({"tier": "bronze"}))
        ));
    }

    fn policy(repositories: usize) -> BackupPolicy {
        let repo = |i: usize| {
            json!({"name": format!("r{i}"), "role": "Other", "s3": {
            "endpoint": "https://s3.example:9443", "bucket": "b", "credentialsSecret": {"name": "s3"}}})
        };
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "BackupPolicy",
            "metadata": {"name": "p", "generation": 1},
            "spec": {"databaseSelector": {}, "schedule": {"full": "0 1 * * 0"}, "retention": {"fullBackups": 2},
                     "repositories": (0..repositories).map(repo).collect::<Vec<_>>(),
                     "encryption": {"keySecret": {"name": "enc"}}}
        }))
        .unwrap()
    }

    fn ready(status: &BackupPolicyStatus) -> (String, String) {
        let c = &status.conditions[0];
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_policy_is_ready_only_with_its_secrets_no_conflicts_and_its_mirrors_within_max_lag() {
        let now = Time("2026-11-30T00:00:00Z".parse().unwrap());
        let facts = Facts {
            selected: 2,
            healthy: 1,
            ..Facts::default()
        };
        let status = desired_status(&policy(1), &facts, &now);
        assert_eq!(ready(&status), ("True".into(), "BackingUp".into()));
        assert_eq!(status.healthy_databases, Some(1));
        assert!(status.next_run.is_some());
        let mirror = |healthy| MirrorStatus {
            name: "r1".into(),
            lag_seconds: if healthy { 0 } else { 7200 },
            last_synced: Some(now.clone()),
            healthy,
            message: None,
        };
        let behind = Facts {
            mirrors: vec![mirror(false)],
            ..Facts::default()
        };
        let mirrored = desired_status(&policy(2), &behind, &now);
        assert_eq!(ready(&mirrored), ("False".into(), "MirrorBehind".into()));
        let kept = Facts {
            mirrors: vec![mirror(true)],
            ..Facts::default()
        };
        let status = desired_status(&policy(2), &kept, &now);
        assert_eq!(ready(&status), ("True".into(), "BackingUp".into()));
        assert_eq!(status.mirrors, [mirror(true)]);
        let conflict = Facts {
            conflicts: vec!["ns/db".into()],
            ..Facts::default()
        };
        assert_eq!(
            ready(&desired_status(&policy(1), &conflict, &now)),
            ("False".into(), "PolicyConflict".into())
        );
    }

    #[test]
    fn secrets_and_keys_the_policy_names_must_exist() {
        let present = BTreeMap::from([(
            "s3".to_string(),
            vec![
                "AWS_ACCESS_KEY_ID".to_string(),
                "AWS_SECRET_ACCESS_KEY".to_string(),
            ],
        )]);
        assert_eq!(
            missing_secrets(&policy(1), &present),
            ["Secret \"enc\" key \"passphrase\""]
        );
    }

    #[test]
    fn a_mirror_that_cannot_be_reached_falls_behind_from_its_last_complete_pass() {
        let mut repository = policy(2).spec.repositories[1].clone();
        repository.max_lag = Some("1m".into());
        let at = |s: &str| Time(s.parse().unwrap());
        let (created, synced, passed, now) = (
            at("2026-11-30T00:00:00Z"),
            at("2026-11-30T00:30:00Z"),
            at("2026-11-30T01:00:00Z"),
            at("2026-11-30T01:00:50Z"),
        );
        let status = |pass, synced, passed, now| {
            mirror_status(&repository, pass, synced, passed, &created, now)
        };
        let copied = status(&Ok(3), Some(&synced), Some(&passed), &now);
        assert_eq!((copied.lag_seconds, copied.healthy), (0, true));
        assert_eq!(copied.last_synced, Some(now.clone()));
        let idle = status(&Ok(0), Some(&synced), Some(&passed), &now);
        assert_eq!((idle.lag_seconds, idle.healthy), (0, true));
        assert_eq!(
            idle.last_synced,
            Some(synced.clone()),
            "a pass that found nothing new rewrites nothing"
        );
        let first = status(&Ok(0), None, None, &now);
        assert_eq!(first.last_synced, Some(now.clone()));
        let down = Err("connection refused".to_string());
        let recent = status(&down, Some(&synced), Some(&passed), &now);
        assert_eq!((recent.lag_seconds, recent.healthy), (50, true));
        let later = at("2026-11-30T01:01:30Z");
        let long = status(&down, Some(&synced), Some(&passed), &later);
        assert_eq!((long.lag_seconds, long.healthy), (90, false));
        assert_eq!(long.last_synced, Some(synced.clone()));
        let restarted = status(&down, Some(&synced), None, &now);
        assert_eq!(
            restarted.lag_seconds, 1850,
            "from lastSynced when no pass is known"
        );
        let never = status(&down, None, None, &now);
        assert_eq!(never.lag_seconds, 3650);
    }
}
