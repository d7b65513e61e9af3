//! Starting a SectorDatabase from another database's backups (`spec.bootstrap.fromBackup`): the
//! source's repository for the first start of the primary's pod, and, once the restored server
//! is promoted, this database's passwords on the roles it brought along.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt};

use super::backups::{self, repository_config};
use super::names::DATABASE as CONTROLLER;
use super::{Context, Result, apply_child, secret_value};
use crate::api::common::NamespacedName;
use crate::api::database::RestoreState;
use crate::api::{BackupPolicy, SectorDatabase};
use crate::backup::{exec, pgbackrest};
use crate::{dataplane, pgconf, sql, tenancy};

/// Writes `<db>-restore` (the source's repository, stanza and recovery target) unless it is
/// there already. `Err` says why the restore cannot start; the database is then
/// not created at all, so it never comes up empty in place of the data asked for.
pub async fn prepare(
    ctx: &Context,
    db: &SectorDatabase,
) -> Result<std::result::Result<(), String>> {
    let Some(bootstrap) = &db.spec.bootstrap else {
        return Ok(Ok(()));
    };
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let name = dataplane::names(&db.name_any()).restore;
    // Once written, the restore has begun (or is done): the source is not judged again, and a
    // restored database no longer depends on its source existing.
    let uid = db.uid().unwrap_or_default();
    if secrets
        .get_opt(&name)
        .await?
        .is_some_and(|s| crate::apply::owned_by(&s, &uid))
    {
        return Ok(Ok(()));
    }
    let from = &bootstrap.from_backup;
    // Judged before anything of the source is looked up, so a refusal says nothing about it.
    let target = NamespacedName {
        namespace: db.namespace().unwrap_or_default(),
        name: db.name_any(),
    };
    if !tenancy::restore_allowed(&super::agencies(ctx).await?, &target, &from.database) {
        return Ok(Err(
            "spec.bootstrap.fromBackup.database: a database restores only from databases of its own namespace, unless the platform authority lists the pair in the Agency's spec.restoreSources".into(),
        ));
    }
    let Some(policy) = Api::<BackupPolicy>::all(ctx.client.clone())
        .get_opt(&from.policy)
        .await?
    else {
        return Ok(Err(format!(
            "spec.bootstrap.fromBackup.policy: BackupPolicy {:?} not found",
            from.policy
        )));
    };
    let source_name = format!("{}/{}", from.database.namespace, from.database.name);
    let source = Api::<SectorDatabase>::namespaced(ctx.client.clone(), &from.database.namespace)
        .get_opt(&from.database.name)
        .await?;
    let stanza = match &source {
        Some(source) => judge(db, source, &source_name),
        // A deleted database: the operator's catalog still knows its stanza. What its backups
        // cover is in no status any more, so pgBackRest itself judges a target time.
        None => backups::recorded_stanza(ctx, &from.database.namespace, &from.database.name)
            .await?
            .ok_or_else(|| {
                format!(
                    "spec.bootstrap.fromBackup.database: {source_name} does not exist and has no backups"
                )
            }),
    };
    let stanza = match stanza {
        Ok(stanza) => stanza,
        Err(why) => return Ok(Err(why)),
    };
    let repositories = &policy.spec.repositories;
    let repository = match &from.repository {
        None => repositories.first(),
        Some(name) => repositories.iter().find(|r| &r.name == name),
    };
    let Some(repository) = repository else {
        let names: Vec<&str> = repositories.iter().map(|r| r.name.as_str()).collect();
        return Ok(Err(format!(
            "spec.bootstrap.fromBackup.repository: BackupPolicy {} has no repository {:?} (it has {})",
            from.policy,
            from.repository.as_deref().unwrap_or_default(),
            names.join(", ")
        )));
    };
    let (config, ca) = match repository_config(
        ctx,
        &policy,
        repository,
        &stanza,
        pgbackrest::RESTORE_DIR,
    )
    .await?
    {
        Ok(found) => found,
        Err(missing) => return Ok(Err(missing)),
    };
    let mut files = pgbackrest::secret_files(&config, ca.as_deref());
    files.push(("stanza", stanza));
    let target = from.target_time.as_ref().map(pgbackrest::restore_time);
    files.push(("target-time", target.unwrap_or_default()));
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    apply_child(
        ctx,
        CONTROLLER,
        &secrets,
        dataplane::opaque_secret(db, &name, &borrowed),
    )
    .await?;
    Ok(Ok(()))
}

/// Once the restored server has left recovery, gives the roles it brought from the source this
/// database's passwords (as SCRAM verifiers, over the local socket), and records the restore.
/// `Err` while it is still recovering.
pub async fn adopt(
    ctx: &Context,
    db: &SectorDatabase,
    passwords: &[(&str, &str)],
    now: &Time,
) -> Result<std::result::Result<RestoreState, String>> {
    let Some(bootstrap) = &db.spec.bootstrap else {
        return Ok(Err("not a restored database".into()));
    };
    let mut script = String::from(
        "DO $$ BEGIN IF pg_is_in_recovery() THEN RAISE EXCEPTION 'still recovering from the backup'; END IF; END $$;\n",
    );
    for (role, password) in passwords {
        script.push_str(&format!(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = {role_literal}) THEN ALTER ROLE {role_ident} {clause}; END IF; END $$;\n",
            role_literal = sql::literal(role),
            role_ident = sql::ident(role),
            clause = sql::password_clause(password)
        ));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    // The statements carry SCRAM verifiers, never passwords: a verifier in the exec request lets
    // nobody log in. (Standard input would hide them, but the v4 exec protocol of older
    // apiservers cannot close it.)
    let mut command: Vec<String> = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        pgconf::SOCKET_DIR,
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
    ]
    .map(String::from)
    .to_vec();
    command.push(script);
    let pod = format!("{}-0", db.name_any());
    let out = match exec::run(&pods, &pod, command, Duration::from_secs(60)).await {
        Ok(out) => out,
        Err(error) => return Ok(Err(error)),
    };
    if !out.succeeded() {
        return Ok(Err(out.tail()));
    }
    // The stanza the pod restored from is the one its restore Secret named.
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let restore = secrets
        .get_opt(&dataplane::names(&db.name_any()).restore)
        .await?;
    let stanza = secret_value(restore.as_ref(), "stanza").unwrap_or_default();
    Ok(Ok(RestoreState {
        stanza,
        target_time: bootstrap.from_backup.target_time.clone(),
        completed_at: now.clone(),
    }))
}

/// The stanza of an existing source, when restoring from it can work: it has a backup, holds
/// the same database, and its backups cover the target time.
fn judge(
    db: &SectorDatabase,
    source: &SectorDatabase,
    source_name: &str,
) -> std::result::Result<String, String> {
    let backup = source.status.as_ref().and_then(|s| s.backup.clone());
    let (Some(stanza), Some(_)) = (
        backup.as_ref().and_then(|b| b.stanza.clone()),
        backup.as_ref().and_then(|b| b.last_successful.clone()),
    ) else {
        return Err(format!("{source_name} has no backup yet"));
    };
    if source.spec.database != db.spec.database {
        return Err(format!(
            "spec.database must be the source's (name {:?}, owner {:?}): the restored data holds that database",
            source.spec.database.name, source.spec.database.owner
        ));
    }
    let target = db
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.from_backup.target_time.as_ref());
    if let Some(target) = target {
        let backup = backup.unwrap_or_default();
        let (earliest, latest) = (backup.recoverable_from, backup.recoverable_until);
        let inside = earliest.as_ref().is_some_and(|e| e.0 <= target.0)
            && latest.as_ref().is_some_and(|l| target.0 <= l.0);
        if !inside {
            let show = |t: Option<Time>| t.map_or("unknown".to_string(), |t| t.0.to_string());
            return Err(format!(
                "spec.bootstrap.fromBackup.targetTime {} is outside what {source_name}'s backups cover: from {} to {} (the last WAL archived)",
                target.0,
                show(earliest),
                show(latest)
            ));
        }
    }
    Ok(stanza)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db(
        database: &str,
        target: Option<&str>,
        backup: Option<serde_json::Value>,
    ) -> SectorDatabase {
        let mut from = json!({"policy": "p", "database": {"namespace": "n", "name": "src"}});
        if let Some(t) = target {
            from["targetTime"] = json!(t);
        }
        let mut obj = json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "copy", "namespace": "n"},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
                     "securityLevel": 3, "storage": {"size": "1Gi"}, "database": {"name": database, "owner": "app"},
                     "bootstrap": {"fromBackup": from}}
        });
        if let Some(backup) = backup {
            obj["status"] = json!({"backup": backup});
        }
        serde_json::from_value(obj).unwrap()
    }

    fn backed_up() -> serde_json::Value {
        json!({"stanza": "n.src.1", "recoverableFrom": "2026-11-30T04:00:00Z", "recoverableUntil": "2026-11-30T05:00:00Z",
               "lastSuccessful": {"time": "2026-11-30T04:00:00Z", "type": "full", "sizeBytes": 1}})
    }

    #[test]
    fn a_source_is_restored_only_inside_what_its_backups_cover() {
        let source = db("health", None, Some(backed_up()));
        let at = |t| judge(&db("health", Some(t), None), &source, "n/src");
        assert_eq!(at("2026-11-30T04:30:00Z"), Ok("n.src.1".into()));
        assert!(at("2026-11-30T05:00:01Z").unwrap_err().contains("outside"));
        assert!(at("2026-11-30T03:59:59Z").unwrap_err().contains("outside"));
        assert_eq!(
            judge(&db("health", None, None), &source, "n/src"),
            Ok("n.src.1".into())
        );
    }

    #[test]
    fn a_source_without_backups_or_with_another_database_is_refused() {
        let bare = db("health", None, None);
        assert!(
            judge(&bare, &bare, "n/src")
                .unwrap_err()
                .contains("no backup")
        );
        let source = db("health", None, Some(backed_up()));
        let other = judge(&db("labour", None, None), &source, "n/src").unwrap_err();
        assert!(other.contains("spec.database"), "{other}");
    }
}
