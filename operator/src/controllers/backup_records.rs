//! The SectorBackups of a database: one per backup the operator starts, read back on every
//! reconcile to see whether the one running has ended. Only records the operator started count:
//! it writes their status, which an agency cannot, so a SectorBackup an agency creates itself
//! runs nothing and is marked as such.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::{Context, Result, field_manager};
use crate::api::SectorDatabase;
use crate::api::backup::{
    BackupPhase, BackupType, SectorBackup, SectorBackupSpec, SectorBackupStatus,
};
use crate::backup::detached::{self, Progress};
use crate::backup::exec;

/// The label that names a record's database.
const DATABASE_LABEL: &str = "sectordb.io/database";
/// Finished records kept per database; older ones are deleted (the backups stay).
const KEEP: usize = 10;

/// A database's records, oldest first.
pub struct Records {
    api: Api<SectorBackup>,
    items: Vec<SectorBackup>,
}

impl Records {
    /// Reads the records of `db` and marks those nobody started as failed.
    pub async fn read(ctx: &Context, db: &SectorDatabase) -> Result<Self> {
        let api: Api<SectorBackup> =
            Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
        let listed = api
            .list(&ListParams::default().labels(&format!("{DATABASE_LABEL}={}", db.name_any())))
            .await?;
        let uid = db.uid();
        let mut items: Vec<SectorBackup> = listed
            .items
            .into_iter()
            .filter(|r| r.spec.database == db.name_any())
            .filter(|r| {
                r.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .collect();
        items.sort_by_key(|r| r.creation_timestamp().map(|t| t.0));
        let records = Records { api, items };
        // Within one object's reconcile the operator creates a record and starts it before it
        // returns: a record without a phase here was started by nobody.
        for record in records.items.iter().filter(|r| phase(r).is_none()) {
            let note = "not started: the operator runs only the backups it creates (ask for one with the sectordb.io/backup-request annotation)";
            records
                .finish(&record.name_any(), BackupPhase::Failed, note.into(), None)
                .await?;
        }
        Ok(records)
    }

    /// The record whose backup runs now.
    pub fn running(&self) -> Option<&SectorBackup> {
        self.items
            .iter()
            .find(|r| phase(r) == Some(BackupPhase::Running))
    }

    /// Creates the record of a backup about to start, Running from `now`.
    pub async fn create(&self, record: &SectorBackup, now: &Time) -> Result<SectorBackup> {
        let created = self.api.create(&PostParams::default(), record).await?;
        let status = SectorBackupStatus {
            phase: Some(BackupPhase::Running),
            started: Some(now.clone()),
            ..Default::default()
        };
        self.patch_status(&created.name_any(), &status).await
    }

    /// Writes how a record's backup ended, and deletes the oldest finished records beyond KEEP.
    pub async fn finish(
        &self,
        name: &str,
        phase: BackupPhase,
        message: String,
        completed: Option<&crate::api::database::BackupRecord>,
    ) -> Result<()> {
        let started = self
            .items
            .iter()
            .find(|r| r.name_any() == name)
            .and_then(|r| r.status.as_ref()?.started.clone());
        let status = SectorBackupStatus {
            phase: Some(phase),
            started,
            finished: Some(super::now()),
            label: completed.and_then(|c| c.label.clone()),
            size_bytes: completed.map(|c| c.size_bytes),
            repositories: completed.map(|c| c.repos.clone()).unwrap_or_default(),
            message: Some(message),
        };
        self.patch_status(name, &status).await?;
        let finished: Vec<&SectorBackup> = self
            .items
            .iter()
            .filter(|r| r.name_any() != name && phase_of_finished(r))
            .collect();
        for old in finished
            .iter()
            .take((finished.len() + 1).saturating_sub(KEEP))
        {
            self.api
                .delete(&old.name_any(), &DeleteParams::default())
                .await?;
        }
        Ok(())
    }

    async fn patch_status(&self, name: &str, status: &SectorBackupStatus) -> Result<SectorBackup> {
        let params = PatchParams::apply(&field_manager(super::names::DATABASE)).force();
        let patch = json!({
            "apiVersion": "sectordb.io/v1alpha1",
            "kind": "SectorBackup",
            "status": status,
        });
        Ok(self
            .api
            .patch_status(name, &params, &Patch::Apply(&patch))
            .await?)
    }
}

fn phase(record: &SectorBackup) -> Option<BackupPhase> {
    record.status.as_ref()?.phase
}

fn phase_of_finished(record: &SectorBackup) -> bool {
    matches!(
        phase(record),
        Some(BackupPhase::Completed | BackupPhase::Failed)
    )
}

/// The record of a backup of `db` for `policy`, due for a schedule `slot` or a `request`.
pub fn record(
    db: &SectorDatabase,
    policy: &str,
    kind: BackupType,
    slot: Option<Time>,
    request: Option<String>,
    now: &Time,
) -> SectorBackup {
    let name = format!("{}-{}", db.name_any(), now.0.strftime("%Y%m%d%H%M%S"));
    let mut record = SectorBackup::new(
        &name,
        SectorBackupSpec {
            database: db.name_any(),
            policy: policy.into(),
            kind,
            slot,
            request,
        },
    );
    record.metadata.namespace = db.namespace();
    record.metadata.labels = Some([(DATABASE_LABEL.to_string(), db.name_any())].into());
    record.metadata.owner_references = db.controller_owner_ref(&()).map(|o| vec![o]);
    record
}

/// Starts the backup of `record` in `pod`, detached; `Err` with why it could not start.
pub async fn start(
    pods: &Api<Pod>,
    pod: &str,
    record: &SectorBackup,
    command: &[String],
) -> std::result::Result<(), String> {
    let argv = detached::start(&record.name_any(), command);
    let started = exec::run(pods, pod, argv, std::time::Duration::from_secs(30)).await;
    exec::stdout_of(started, &format!("starting pgbackrest in {pod}")).map(|_| ())
}

/// How the backup of `record` stands in `pod`; `None` when the pod did not answer (it may be
/// restarting: ask again later).
pub async fn look(pods: &Api<Pod>, pod: &str, record: &SectorBackup) -> Option<Progress> {
    let argv = detached::check(&record.name_any());
    let answer = exec::run(pods, pod, argv, std::time::Duration::from_secs(30)).await;
    let out = answer.ok().filter(exec::Output::succeeded)?;
    Some(detached::progress(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_database_and_belongs_to_it() {
        let db: SectorDatabase = serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "db", "namespace": "so-y-te", "uid": "u-1"},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
                     "securityLevel": 3, "storage": {"size": "1Gi"}, "database": {"name": "h", "owner": "app"}}
        }))
        .unwrap();
        let now = Time(jiff::Timestamp::from_second(1_796_659_200).unwrap());
        let r = record(
            &db,
            "provincial",
            BackupType::Full,
            None,
            Some("r1".into()),
            &now,
        );
        assert_eq!(r.name_any(), "db-20261207160000");
        assert_eq!(r.namespace().as_deref(), Some("so-y-te"));
        assert_eq!(
            r.labels().get(DATABASE_LABEL).map(String::as_str),
            Some("db")
        );
        assert_eq!(r.owner_references()[0].uid, "u-1");
        assert_eq!(r.owner_references()[0].controller, Some(true));
        assert_eq!(
            (r.spec.kind, r.spec.request.as_deref()),
            (BackupType::Full, Some("r1"))
        );
    }
}
