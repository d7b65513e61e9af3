//! Starting a SectorDatabase from another database's backups (`spec.bootstrap.fromBackup`): the
//! source's repository for the first start of the primary's pod, and, once the restored server
//! is promoted, this database's passwords on the roles it brought along.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt};

use super::backups::repository_config;
use super::database::CONTROLLER;
use super::{Context, Result, apply_child};
use crate::api::database::RestoreState;
use crate::api::{BackupPolicy, SectorDatabase};
use crate::backup::{exec, pgbackrest};
use crate::{dataplane, pgconf, sql};

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
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(Ok(()));
    }
    let from = &bootstrap.from_backup;
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
    let Some(source) =
        Api::<SectorDatabase>::namespaced(ctx.client.clone(), &from.database.namespace)
            .get_opt(&from.database.name)
            .await?
    else {
        return Ok(Err(format!(
            "spec.bootstrap.fromBackup.database: {source_name} not found (restoring the backups of a deleted database is not supported yet)"
        )));
    };
    let backup = source.status.as_ref().and_then(|s| s.backup.clone());
    let (Some(stanza), Some(_)) = (
        backup.as_ref().and_then(|b| b.stanza.clone()),
        backup.as_ref().and_then(|b| b.last_successful.clone()),
    ) else {
        return Ok(Err(format!("{source_name} has no backup yet")));
    };
    if source.spec.database != db.spec.database {
        return Ok(Err(format!(
            "spec.database must be the source's (name {:?}, owner {:?}): the restored data holds that database",
            source.spec.database.name, source.spec.database.owner
        )));
    }
    if let Some(target) = &from.target_time {
        let backup = backup.unwrap_or_default();
        let (earliest, latest) = (backup.recoverable_from, backup.recoverable_until);
        let inside = earliest.as_ref().is_some_and(|e| e.0 <= target.0)
            && latest.as_ref().is_some_and(|l| target.0 <= l.0);
        if !inside {
            let show = |t: Option<Time>| t.map_or("unknown".to_string(), |t| t.0.to_string());
            return Ok(Err(format!(
                "spec.bootstrap.fromBackup.targetTime {} is outside what {source_name}'s backups cover: from {} to {} (the last WAL archived)",
                target.0,
                show(earliest),
                show(latest)
            )));
        }
    }
    let (config, ca) =
        match repository_config(ctx, &policy, &stanza, pgbackrest::RESTORE_DIR).await? {
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
    let stanza = secrets
        .get_opt(&dataplane::names(&db.name_any()).restore)
        .await?
        .and_then(|s| s.data?.get("stanza").cloned())
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default();
    Ok(Ok(RestoreState {
        stanza,
        target_time: bootstrap.from_backup.target_time.clone(),
        completed_at: now.clone(),
    }))
}
