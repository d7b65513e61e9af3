//! The backup step of a SectorDatabase's reconcile: which BackupPolicy covers the database,
//! pgBackRest's configuration in its namespace, the stanza, the backups the schedule or a request
//! asks for (run in the primary's pod), and what the repository then holds. Status is built from
//! `pgbackrest info` only, so it never lists a backup the repository does not have.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::backup_records::{self, Records};
use super::drills::{self, Drill};
use super::names::DATABASE as CONTROLLER;
use super::{Context, Result, apply_child, secret_value};
use crate::api::backup::BackupPhase;
use crate::api::database::{BackupRecord, BackupState};
use crate::api::policy::{
    BackupPolicySpec, MirrorStatus, PassphraseSecret, Repository, RepositoryRole,
};
use crate::api::{BackupPolicy, SectorDatabase};
use crate::backup::detached::Progress;
use crate::backup::exec;
use crate::backup::pgbackrest::{self, Kind, Layout, RepositorySecrets};
use crate::backup::schedule;
use crate::profile::Observed;
use crate::{dataplane, pgconf, validate};

/// The operator's record of the stanza of every database it backed up, `<namespace>.<name>`:
/// it outlives the databases, so the backups of a deleted one can still be restored.
pub const CATALOG: &str = "sectordb-backup-catalog";

/// Annotating a SectorDatabase with a new value of this asks for a full backup now.
pub const REQUEST_ANNOTATION: &str = "sectordb.io/backup-request";
/// pgBackRest's exit code when another process holds the stanza's backup lock.
const LOCK_HELD: i32 = 50;

/// pgBackRest's set-up for a database one policy covers.
pub struct Plan {
    policy: BackupPolicy,
    stanza: String,
    digest: String,
    pub archive_command: String,
}

/// What the backup step found: the BackedUp condition, `status.backup`, and an Event to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub backed_up: bool,
    pub reason: &'static str,
    pub message: String,
    pub state: Option<BackupState>,
    /// (warning, reason, message)
    pub event: Option<(bool, &'static str, String)>,
    /// Look again this soon (a pending configuration, a failed backup).
    pub retry_in: Option<Duration>,
    /// Encrypted backups of the database are kept off site (see `offsite`).
    pub offsite: bool,
}

fn not_backed_up(reason: &'static str, message: impl Into<String>) -> Outcome {
    Outcome {
        backed_up: false,
        reason,
        message: message.into(),
        state: None,
        event: None,
        retry_in: None,
        offsite: false,
    }
}

/// The valid policies that select `db`.
async fn selecting(ctx: &Context, db: &SectorDatabase) -> Result<Vec<BackupPolicy>> {
    let namespace = db.namespace().unwrap_or_default();
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&namespace)
        .await?
        .map(|ns| ns.labels().clone())
        .unwrap_or_default();
    let policies = Api::<DeserializeGuard<BackupPolicy>>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(policies
        .into_iter()
        .filter_map(|guard| guard.0.ok())
        .filter(|p| super::selection::selects(&p.spec.database_selector, &labels, db))
        .collect())
}

/// A value from a Secret in the operator's namespace, or what is missing.
async fn operator_secret_value(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
) -> Result<std::result::Result<String, String>> {
    let secret = secrets.get_opt(name).await?;
    Ok(secret_value(secret.as_ref(), key)
        .ok_or_else(|| format!("Secret {name:?} with key {key:?}")))
}

/// A repository's keys and CA, read from the policy's Secrets in the operator's namespace.
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub ca_pem: Option<String>,
}

/// The keys of `repository`, and the passphrase when `passphrase` names one; `Err` lists what the
/// operator's namespace lacks.
pub async fn repository_keys(
    ctx: &Context,
    repository: &Repository,
    passphrase: Option<&PassphraseSecret>,
) -> Result<std::result::Result<(Keys, Option<String>), Vec<String>>> {
    let operator: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let s3 = &repository.s3;
    let mut missing = Vec::new();
    let mut read = |found: std::result::Result<String, String>| match found {
        Ok(value) => Some(value),
        Err(what) => {
            missing.push(what);
            None
        }
    };
    let credentials = &s3.credentials_secret;
    let key_id = read(
        operator_secret_value(&operator, &credentials.name, &credentials.access_key_id_key).await?,
    );
    let key_secret = read(
        operator_secret_value(
            &operator,
            &credentials.name,
            &credentials.secret_access_key_key,
        )
        .await?,
    );
    let ca = match &s3.ca_secret {
        Some(ca) => read(operator_secret_value(&operator, &ca.name, &ca.key).await?),
        None => None,
    };
    let passphrase = match passphrase {
        Some(p) => read(operator_secret_value(&operator, &p.name, &p.key).await?),
        None => None,
    };
    match (key_id, key_secret) {
        (Some(access_key_id), Some(secret_access_key)) if missing.is_empty() => Ok(Ok((
            Keys {
                access_key_id,
                secret_access_key,
                ca_pem: ca,
            },
            passphrase,
        ))),
        _ => Ok(Err(missing)),
    }
}

/// pgbackrest.conf for `stanza` in `repository` of `policy` (its primary, or a mirror to restore
/// from), as mounted at `config_dir`, and that repository's CA; the keys and passphrase come
/// from the policy's Secrets in the operator's namespace. `Err` names what is missing there.
pub async fn repository_config(
    ctx: &Context,
    policy: &BackupPolicy,
    repository: &Repository,
    stanza: &str,
    config_dir: &str,
) -> Result<std::result::Result<(String, Option<String>), String>> {
    let passphrase = policy.spec.encryption.as_ref().map(|e| &e.key_secret);
    let (keys, passphrase) = match repository_keys(ctx, repository, passphrase).await? {
        Ok(found) => found,
        Err(missing) => {
            return Ok(Err(format!(
                "BackupPolicy {} names what namespace {} lacks: {}",
                policy.name_any(),
                ctx.namespace,
                missing.join(", ")
            )));
        }
    };
    let (key_id, key_secret, ca) = (keys.access_key_id, keys.secret_access_key, keys.ca_pem);
    let config = pgbackrest::config(
        &policy.spec,
        repository,
        &RepositorySecrets {
            access_key_id: &key_id,
            secret_access_key: &key_secret,
            ca_pem: ca.as_deref(),
            passphrase: passphrase.as_deref(),
        },
        stanza,
        &Layout {
            config_dir,
            pgdata: dataplane::PGDATA,
            data_dir: dataplane::DATA_DIR,
            socket_dir: pgconf::SOCKET_DIR,
        },
    );
    Ok(Ok((config, ca)))
}

/// Finds the policy that covers `db` and writes pgBackRest's configuration for it into the
/// database's namespace (`<db>-backup`). Nothing is written when no policy, or more than one,
/// selects the database; a database no policy covers loses the configuration.
pub async fn prepare(
    ctx: &Context,
    db: &SectorDatabase,
) -> Result<std::result::Result<Plan, Outcome>> {
    let namespace = db.namespace().unwrap_or_default();
    let n = dataplane::names(&db.name_any());
    let own: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut policies = selecting(ctx, db).await?;
    if policies.len() > 1 {
        let names: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
        return Ok(Err(not_backed_up(
            "PolicyConflict",
            format!(
                "selected by BackupPolicies {}: exactly one may cover a database; nothing is changed until the conflict is resolved",
                names.join(", ")
            ),
        )));
    }
    let Some(policy) = policies.pop() else {
        if crate::apply::delete_owned(&own, &n.backup, &db.uid().unwrap_or_default()).await? {
            ctx.metrics.write(CONTROLLER, "Secret");
        }
        return Ok(Err(not_backed_up(
            "NoPolicy",
            "no BackupPolicy selects this database",
        )));
    };
    if let Err(violations) = validate::policy(&policy.spec) {
        return Ok(Err(not_backed_up(
            "PolicyInvalid",
            format!(
                "BackupPolicy {}: {}",
                policy.name_any(),
                validate::describe(&violations)
            ),
        )));
    }
    let stanza = pgbackrest::stanza(&namespace, &db.name_any(), &db.uid().unwrap_or_default());
    let (config, ca) = match repository_config(
        ctx,
        &policy,
        &policy.spec.repositories[0],
        &stanza,
        pgbackrest::CONFIG_DIR,
    )
    .await?
    {
        Ok(found) => found,
        Err(missing) => return Ok(Err(not_backed_up("PolicySecretsMissing", missing))),
    };
    let files = pgbackrest::secret_files(&config, ca.as_deref());
    let digest = files
        .iter()
        .find(|(name, _)| *name == "digest")
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    apply_child(
        ctx,
        CONTROLLER,
        &own,
        dataplane::opaque_secret(db, &n.backup, &borrowed),
    )
    .await?;
    Ok(Ok(Plan {
        archive_command: pgbackrest::archive_command(&stanza),
        policy,
        stanza,
        digest,
    }))
}

fn catalog_key(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// Adds `db`'s stanza to the catalog (a merge patch of one key: other databases' entries stay).
async fn record_stanza(ctx: &Context, db: &SectorDatabase, stanza: &str) -> Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let key = catalog_key(&db.namespace().unwrap_or_default(), &db.name_any());
    let body = json!({"metadata": {"name": CATALOG, "labels": {"app.kubernetes.io/part-of": "sectordb"}},
                      "data": {key: stanza}});
    if maps.get_opt(CATALOG).await?.is_some() {
        maps.patch(CATALOG, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
    } else {
        maps.create(
            &PostParams::default(),
            &serde_json::from_value(body).expect("a valid ConfigMap"),
        )
        .await?;
    }
    ctx.metrics.write(CONTROLLER, "ConfigMap");
    Ok(())
}

/// The stanza the catalog recorded for a database, which may no longer exist.
pub async fn recorded_stanza(ctx: &Context, namespace: &str, name: &str) -> Result<Option<String>> {
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    Ok(maps
        .get_opt(CATALOG)
        .await?
        .and_then(|m| m.data?.remove(&catalog_key(namespace, name))))
}

/// A full backup of a database about to be deleted with `deletionPolicy: Delete`, when a policy
/// covers it. `Ok(None)`: no policy covers it, nothing to do; `Err` with why the backup could not
/// be taken, and then the volumes must stay.
pub async fn final_backup(
    ctx: &Context,
    db: &SectorDatabase,
) -> Result<std::result::Result<Option<String>, String>> {
    let plan = match prepare(ctx, db).await? {
        Ok(plan) => plan,
        Err(outcome) if outcome.reason == "NoPolicy" => return Ok(Ok(None)),
        Err(outcome) => return Ok(Err(outcome.message)),
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let pod = format!("{}-0", db.name_any());
    let run = |args: &[&str], seconds: u64| {
        exec::run(
            &pods,
            &pod,
            pgbackrest::command(&plan.stanza, seconds, args),
            Duration::from_secs(seconds + 30),
        )
    };
    let info = exec::stdout_of(
        run(&["info", "--output=json"], 120).await,
        "pgbackrest info",
    );
    let args = match info.and_then(|i| pgbackrest::backup_args("full", true, &plan.policy.spec, &i))
    {
        Ok(args) => args,
        Err(error) => return Ok(Err(format!("final backup: {error}"))),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(error) = exec::stdout_of(run(&args, 3600).await, "final backup") {
        return Ok(Err(error));
    }
    let repo = &plan.policy.spec.repositories[0].name;
    let label = match run(&["info", "--output=json"], 120).await {
        Ok(out) if out.succeeded() => pgbackrest::parse_info(&out.stdout, repo)
            .ok()
            .and_then(|b| b.last()?.label.clone()),
        _ => None,
    };
    Ok(Ok(Some(format!(
        "full backup {} in {repo}, stanza {}",
        label.unwrap_or_else(|| "(label unread)".into()),
        plan.stanza
    ))))
}

fn time(seconds: i64) -> Option<Time> {
    jiff::Timestamp::from_second(seconds).ok().map(Time)
}

/// Creates the stanza once, runs the backup that is due (a new `sectordb.io/backup-request`
/// value, the first backup, or a schedule slot), and reads back what the repository holds. Call
/// when the primary answers SQL, with what SQL observed.
pub async fn run(
    ctx: &Context,
    db: &SectorDatabase,
    plan: &Plan,
    observed: &Observed,
    now: &Time,
) -> Result<Outcome> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let pod = format!("{}-0", db.name_any());
    let policy_name = plan.policy.name_any();
    let repo = plan.policy.spec.repositories[0].name.clone();
    // The store this reconcile started from can lag behind the status the last one wrote; a
    // backup decided on a stale status would run twice.
    let db =
        &Api::<SectorDatabase>::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default())
            .get(&db.name_any())
            .await?;
    let previous = db
        .status
        .as_ref()
        .and_then(|s| s.backup.clone())
        .filter(|b| b.stanza.as_deref() == Some(&plan.stanza))
        .unwrap_or_default();
    let mut state = BackupState {
        policy: Some(policy_name.clone()),
        recoverable_until: observed.last_archived.and_then(time),
        ..previous.clone()
    };
    let exec_in = |args: &[&str], seconds: u64| {
        let command = pgbackrest::command(&plan.stanza, seconds, args);
        let pods = pods.clone();
        let pod = pod.clone();
        async move { exec::run(&pods, &pod, command, Duration::from_secs(seconds + 30)).await }
    };
    let failed = |reason: &'static str, message: String, state: &BackupState| Outcome {
        backed_up: state.last_successful.is_some() && !observed.archiving_fails,
        reason,
        message: message.clone(),
        state: Some(state.clone()),
        event: Some((true, reason, message)),
        retry_in: Some(Duration::from_secs(120)),
        offsite: false,
    };

    let seen = exec::run(
        &pods,
        &pod,
        vec!["cat".into(), pgbackrest::DIGEST_FILE.into()],
        Duration::from_secs(30),
    )
    .await;
    if !seen.is_ok_and(|o| o.succeeded() && o.stdout.trim() == plan.digest) {
        return Ok(Outcome {
            retry_in: Some(Duration::from_secs(10)),
            state: Some(state),
            ..not_backed_up(
                "ConfigurationPending",
                format!(
                    "waiting for pod {pod} to see the backup configuration of policy {policy_name} (kubelet refreshes Secret volumes within about a minute)"
                ),
            )
        });
    }
    if previous.stanza.is_none() {
        match exec_in(&["stanza-create"], 120).await {
            Ok(out) if out.succeeded() => {
                record_stanza(ctx, db, &plan.stanza).await?;
                state.stanza = Some(plan.stanza.clone());
            }
            Ok(out) => {
                return Ok(failed(
                    "StanzaCreateFailed",
                    format!("pgbackrest stanza-create in {repo}: {}", out.tail()),
                    &state,
                ));
            }
            Err(error) => return Ok(failed("StanzaCreateFailed", error, &state)),
        }
    }

    let request = db.annotations().get(REQUEST_ANNOTATION).cloned();
    let requested = request.is_some() && request != previous.last_request;
    let last_slot = previous.last_scheduled.as_ref().map(|t| t.0);
    let due = schedule::due(&plan.policy.spec.schedule, last_slot, now.0);
    let kind = match (requested, due) {
        (true, _) => Some(Kind::Full),
        (false, Some(due)) => Some(due.kind),
        (false, None) => None,
    };
    // The backup itself runs detached in the pod, recorded by a SectorBackup: this reconcile
    // starts it, later ones read how it ended.
    let records = Records::read(ctx, db).await?;
    let mut event = None;
    let mut completed = None;
    state.running = None;
    if let Some(running) = records.running() {
        let name = running.name_any();
        match backup_records::look(&pods, &pod, running).await {
            None | Some(Progress::Running) => state.running = Some(name),
            Some(Progress::Finished { code: 0, .. }) => {
                if let Some(slot) = &running.spec.slot {
                    state.last_scheduled = Some(slot.clone());
                }
                if running.spec.request.is_some() {
                    state.last_request = running.spec.request.clone();
                }
                event = Some((false, "BackupCompleted", String::new()));
                completed = Some(name);
            }
            Some(Progress::Finished {
                code: LOCK_HELD, ..
            }) => {
                let message = "another pgBackRest backup of this database was running";
                records
                    .finish(&name, BackupPhase::Failed, message.into(), None)
                    .await?;
                // Someone else's backup holding the lock is no failure of this one's: no
                // Warning, and a look again soon.
                return Ok(Outcome {
                    event: None,
                    retry_in: Some(Duration::from_secs(30)),
                    ..failed("BackupRunning", format!("backup {name}: {message}"), &state)
                });
            }
            Some(ended) => {
                let why = match ended {
                    Progress::Finished { tail, .. } => tail,
                    _ => "pgBackRest stopped with its pod before it finished".into(),
                };
                let message = format!("{} backup to {repo}: {why}", running.spec.kind.as_str());
                records
                    .finish(&name, BackupPhase::Failed, message.clone(), None)
                    .await?;
                return Ok(failed(
                    "BackupFailed",
                    format!("backup {name}: {message}"),
                    &state,
                ));
            }
        }
    } else if let Some(kind) = kind {
        let info = exec::stdout_of(
            exec_in(&["info", "--output=json"], 120).await,
            "pgbackrest info",
        );
        let args = match info.and_then(|info| {
            pgbackrest::backup_args(kind.as_str(), requested, &plan.policy.spec, &info)
        }) {
            Ok(args) => args,
            Err(error) => return Ok(failed("InfoFailed", error, &state)),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let record = backup_records::record(
            db,
            &policy_name,
            kind,
            due.filter(|_| !requested).map(|d| Time(d.slot)),
            request.clone().filter(|_| requested),
            now,
        );
        let record = records.create(&record, now).await?;
        let command = pgbackrest::command(&plan.stanza, 3600, &args);
        if let Err(error) = backup_records::start(&pods, &pod, &record, &command).await {
            records
                .finish(&record.name_any(), BackupPhase::Failed, error.clone(), None)
                .await?;
            return Ok(failed("BackupFailed", error, &state));
        }
        state.running = Some(record.name_any());
    }
    if completed.is_some() || previous.last_successful.is_none() {
        let out = match exec_in(&["info", "--output=json"], 120).await {
            Ok(out) if out.succeeded() => out,
            Ok(out) => {
                return Ok(failed(
                    "InfoFailed",
                    format!("pgbackrest info: {}", out.tail()),
                    &state,
                ));
            }
            Err(error) => return Ok(failed("InfoFailed", error, &state)),
        };
        let backups = match pgbackrest::parse_info(&out.stdout, &repo) {
            Ok(backups) => backups,
            Err(error) => return Ok(failed("InfoFailed", error, &state)),
        };
        state.backups = Some(i32::try_from(backups.len()).unwrap_or(i32::MAX));
        state.recoverable_from = backups.first().map(|b| b.time.clone());
        state.last_successful = backups.last().cloned();
    }
    let mirrors = plan
        .policy
        .status
        .as_ref()
        .map(|s| s.mirrors.clone())
        .unwrap_or_default();
    if let Some(last) = state.last_successful.as_mut() {
        last.repos = holding(&plan.policy.spec, &mirrors, &last.time);
    }
    // While a backup runs, look at it again soon.
    let running = state
        .running
        .as_ref()
        .map(|name| format!("; backup {name} runs"));
    let mut retry_in = running.as_ref().map(|_| Duration::from_secs(10));
    let Some(last) = state.last_successful.clone() else {
        return Ok(Outcome {
            retry_in: retry_in.or(Some(Duration::from_secs(30))),
            state: Some(state),
            ..not_backed_up(
                if running.is_some() {
                    "BackupRunning"
                } else {
                    "NoBackupYet"
                },
                format!(
                    "no backup of this database in {repo} yet{}",
                    running.unwrap_or_default()
                ),
            )
        });
    };
    let label = last.label.clone().unwrap_or_default();
    if let Some(name) = &completed {
        let message = format!(
            "{} backup {label} in {repo}, {} bytes",
            last.kind, last.size_bytes
        );
        records
            .finish(name, BackupPhase::Completed, message, Some(&last))
            .await?;
    }
    let mut event = event.map(|(warning, reason, _)| {
        (
            warning,
            reason,
            format!(
                "{} backup {label} in {repo}, {} bytes",
                last.kind, last.size_bytes
            ),
        )
    });
    // No drill while a backup runs: it would restore the backup before this one.
    let drill = match state.running {
        None => drill_due(db, plan, &previous, &last, now),
        Some(_) => None,
    };
    if completed.is_some() {
        // What the drill of this backup will check its copy against.
        if let Err(why) = drills::take_baseline(ctx, db, &label).await? {
            tracing::warn!(database = %db.name_any(), %label, %why, "row counts for restore drills not taken");
        }
    } else if let Some(slot) = drill {
        match drills::run(ctx, db, &plan.stanza, observed.last_archived).await? {
            Drill::Waiting(why) => {
                tracing::info!(database = %db.name_any(), %why, "restore drill waits");
                retry_in = Some(Duration::from_secs(10));
            }
            Drill::Done(record) => {
                event = Some(if record.succeeded {
                    (false, "RestoreDrillPassed", record.message.clone())
                } else {
                    (true, "RestoreDrillFailed", record.message.clone())
                });
                match slot {
                    DrillSlot::Requested(value) => state.last_drill_request = Some(value),
                    DrillSlot::Scheduled(slot) => state.last_drill_slot = Some(Time(slot)),
                }
                state.last_drill = Some(record);
            }
        }
    }
    if observed.archiving_fails {
        return Ok(Outcome {
            event,
            ..failed(
                "ArchivingFails",
                format!(
                    "the last WAL archive attempt to {repo} failed; the latest backup is {label}"
                ),
                &state,
            )
        });
    }
    Ok(Outcome {
        backed_up: true,
        reason: "BackedUp",
        message: format!(
            "{} backup {label} of {} in {} (policy {policy_name}); backups in the repository: {}{}",
            last.kind,
            last.time.0,
            last.repos.join(" and "),
            state.backups.unwrap_or(0),
            running.unwrap_or_default()
        ),
        offsite: offsite(&plan.policy.spec, &mirrors),
        state: Some(state),
        event,
        retry_in,
    })
}

/// Why a drill is due.
enum DrillSlot {
    Requested(String),
    Scheduled(jiff::Timestamp),
}

/// A new `sectordb.io/drill-request` value, or a `verification.schedule` slot since the last
/// drill (before the first, since the latest backup).
fn drill_due(
    db: &SectorDatabase,
    plan: &Plan,
    previous: &BackupState,
    last: &BackupRecord,
    now: &Time,
) -> Option<DrillSlot> {
    let request = db.annotations().get(drills::REQUEST_ANNOTATION);
    if let Some(request) = request.filter(|r| previous.last_drill_request.as_ref() != Some(*r)) {
        return Some(DrillSlot::Requested(request.clone()));
    }
    let verification = plan.policy.spec.verification.as_ref()?;
    let since = previous
        .last_drill_slot
        .as_ref()
        .map_or(last.time.0, |t| t.0);
    schedule::drill_due(
        &verification.schedule,
        &plan.policy.spec.schedule,
        since,
        now.0,
    )
    .map(DrillSlot::Scheduled)
}

/// The repositories that hold a backup completed at `time`: the primary, and each mirror whose
/// last complete pass came after it. Pure.
pub fn holding(policy: &BackupPolicySpec, mirrors: &[MirrorStatus], time: &Time) -> Vec<String> {
    let mut repos: Vec<String> = policy
        .repositories
        .iter()
        .take(1)
        .map(|r| r.name.clone())
        .collect();
    repos.extend(
        mirrors
            .iter()
            .filter(|m| m.last_synced.as_ref().is_some_and(|t| t.0 >= time.0))
            .map(|m| m.name.clone()),
    );
    repos
}

/// Whether encrypted backups are kept off site: the policy encrypts and a Government data
/// center mirror is within its maxLag. Pure.
pub fn offsite(policy: &BackupPolicySpec, mirrors: &[MirrorStatus]) -> bool {
    policy.encryption.is_some()
        && policy.repositories.iter().skip(1).any(|r| {
            r.role == RepositoryRole::GovernmentDataCenter
                && mirrors
                    .iter()
                    .any(|m| m.name == r.name && m.healthy && m.last_synced.is_some())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(encrypted: bool) -> BackupPolicySpec {
        let repo = |name: &str, role: &str| {
            serde_json::json!({"name": name, "role": role, "s3": {
            "endpoint": "https://s3.example", "bucket": "bucket", "credentialsSecret": {"name": "s"}}})
        };
        let mut spec = serde_json::json!({
            "databaseSelector": {}, "schedule": {"full": "0 1 * * 0"}, "retention": {"fullBackups": 2},
            "repositories": [repo("provincial-dc", "ProvincialDataCenter"), repo("government-dc", "GovernmentDataCenter")]
        });
        if encrypted {
            spec["encryption"] = serde_json::json!({"keySecret": {"name": "enc"}});
        }
        serde_json::from_value(spec).unwrap()
    }

    fn mirror(synced: &str, healthy: bool) -> MirrorStatus {
        MirrorStatus {
            name: "government-dc".into(),
            lag_seconds: 0,
            last_synced: Some(Time(synced.parse().unwrap())),
            healthy,
            message: None,
        }
    }

    #[test]
    fn a_backup_is_in_a_mirror_once_a_pass_completed_after_it() {
        let time = Time("2026-11-30T04:00:00Z".parse().unwrap());
        let before = [mirror("2026-11-30T03:59:59Z", true)];
        assert_eq!(holding(&spec(true), &before, &time), ["provincial-dc"]);
        let after = [mirror("2026-11-30T04:00:20Z", true)];
        assert_eq!(
            holding(&spec(true), &after, &time),
            ["provincial-dc", "government-dc"]
        );
    }

    #[test]
    fn backups_count_as_off_site_only_encrypted_and_with_the_mirror_within_its_lag() {
        let kept = [mirror("2026-11-30T04:00:20Z", true)];
        assert!(offsite(&spec(true), &kept));
        assert!(!offsite(&spec(false), &kept));
        assert!(!offsite(
            &spec(true),
            &[mirror("2026-11-30T04:00:20Z", false)]
        ));
        assert!(!offsite(&spec(true), &[]));
    }
}
