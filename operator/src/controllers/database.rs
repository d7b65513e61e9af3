//! The SectorDatabase controller: validate, then build and apply the data plane (ConfigMap,
//! Services, Secrets, NetworkPolicy, StatefulSet), then make the database inside PostgreSQL and
//! read back what the server enforces. `Ready=True` only after the operator itself connected over
//! TLS in this reconcile.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::ca::{
    Authority, CA_SECRET, ISSUER_ANNOTATION, NOT_AFTER_ANNOTATION, ca_changed, operator_ca,
    stored_leaf, superuser_certificate,
};
use super::names::DATABASE as CONTROLLER;
use super::{Context, Result, announce, apply_child, event, now, write_status};
use super::{backups, restore, secret_value, selection};
use crate::api::database::{
    DatabasePhase, DeletionPolicy, Endpoint, Endpoints, InstanceCounts, PinnedSpec, RestoreState,
    SecretNames, SectorDatabaseStatus,
};
use crate::api::{Agency, BackupPolicy, SectorDatabase};
use crate::conditions::{Want, settle};
use crate::dataplane::{self, Names};
use crate::pgconf::{self, PORT};
use crate::pki;
use crate::profile::{Observed, SecurityProfile};
use crate::{quantity, sql, tenancy, validate};

const FINALIZER: &str = "sectordb.io/database";
const SANS_ANNOTATION: &str = "sectordb.io/certificate-names";
/// Extra attempts to reach PostgreSQL, 500 ms apart, before a reconcile reports it unreachable.
const CONNECT_RETRIES: u32 = 4;

/// What the controller found out while provisioning; the status is built from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provisioned {
    pub endpoint: Option<Endpoint>,
    /// The read-only Service, when the database has replicas.
    pub read_only_endpoint: Option<Endpoint>,
    pub ready_instances: i32,
    /// The outcome of connecting to PostgreSQL: `Ok` with what the server enforces, `Err` with
    /// why it could not be reached, `None` when no instance was ready to try.
    pub sql: Option<Result<Observed, String>>,
    /// Problems that do not stop the database, e.g. storage that could not be expanded.
    pub warnings: Vec<Warning>,
    /// The backup step's findings; `None` when PostgreSQL could not be asked (the BackedUp
    /// condition then stays as it was).
    pub backup: Option<backups::Outcome>,
    /// Why the database cannot be created yet (its restore source, a name taken), as a
    /// condition reason and message.
    pub blocked: Option<(&'static str, String)>,
    /// The restore this reconcile completed.
    pub restored: Option<RestoreState>,
}

/// The status a database should have. Pure: `provisioned` is `None` when the spec is invalid
/// and nothing was applied.
pub fn desired_status(
    db: &SectorDatabase,
    profile: &SecurityProfile,
    agencies: &[Agency],
    provisioned: Option<&Provisioned>,
    now: &Time,
) -> SectorDatabaseStatus {
    let previous = db.status.clone().unwrap_or_default();
    let generation = db.metadata.generation;
    let observed = provisioned
        .and_then(|p| p.sql.clone()?.ok())
        .unwrap_or_default();
    // Judged at the level the Agency approved when the spec asks for less, so lowering the level
    // never makes a database look compliant.
    let floor = tenancy::owner(agencies, &db.namespace().unwrap_or_default())
        .map_or(1, |a| a.spec.approved_level(&db.name_any()));
    let mut judged = db.spec.clone();
    judged.security_level = judged.security_level.max(floor);
    let compliance = profile.evaluate(&judged, &observed);
    let unmet: Vec<&str> = compliance
        .findings
        .iter()
        .filter(|f| !f.satisfied)
        .map(|f| f.rule.as_str())
        .collect();
    let compliant = if unmet.is_empty() {
        Want::new(
            "Compliant",
            true,
            "ProfileSatisfied",
            format!("every rule of level {} is met", judged.security_level),
        )
    } else {
        Want::new(
            "Compliant",
            false,
            "ProfileNotSatisfied",
            format!("unmet rules: {}", unmet.join(", ")),
        )
    };
    let was_ready = matches!(
        previous.phase,
        Some(DatabasePhase::Ready | DatabasePhase::Degraded)
    );
    let n = dataplane::names(&db.name_any());
    let (phase, wanted, pinned) = match (admit(db, agencies), provisioned) {
        (Err(violations), _) => {
            let message = validate::describe(&violations);
            let phase = if was_ready {
                DatabasePhase::Degraded
            } else {
                DatabasePhase::Failed
            };
            (
                phase,
                vec![
                    Want::new("Ready", false, "InvalidSpec", message.clone()),
                    Want::new("Progressing", false, "InvalidSpec", message.clone()),
                    Want::new(
                        "Degraded",
                        false,
                        "InvalidSpec",
                        "the last valid spec stays applied",
                    ),
                    compliant,
                ],
                previous.pinned.clone(),
            )
        }
        (Ok(()), None) => (
            DatabasePhase::Pending,
            vec![
                Want::new("Ready", false, "Pending", "waiting for the first reconcile"),
                compliant,
            ],
            previous.pinned.clone(),
        ),
        (
            Ok(()),
            Some(Provisioned {
                blocked: Some((reason, why)),
                ..
            }),
        ) => (
            DatabasePhase::Pending,
            vec![
                Want::new("Ready", false, reason, why.clone()),
                Want::new("Progressing", false, reason, why.clone()),
                compliant,
            ],
            Some(pin(db, previous.pinned.as_ref())),
        ),
        (Ok(()), Some(p)) => {
            let (phase, ready, progressing, degraded) = match &p.sql {
                Some(Ok(_)) if p.ready_instances >= db.spec.instances => (
                    DatabasePhase::Ready,
                    Want::new("Ready", true, "Ready", "PostgreSQL accepts TLS connections"),
                    Want::new("Progressing", false, "Ready", "provisioned"),
                    Want::new("Degraded", false, "Ready", "all instances ready"),
                ),
                Some(Ok(_)) => (
                    DatabasePhase::Degraded,
                    Want::new(
                        "Ready",
                        true,
                        "PrimaryReady",
                        "the primary accepts TLS connections",
                    ),
                    Want::new("Progressing", false, "PrimaryReady", "provisioned"),
                    Want::new(
                        "Degraded",
                        true,
                        "ReplicasNotStreaming",
                        format!(
                            "{} of {} instances ready: {} standbys stream from the primary",
                            p.ready_instances,
                            db.spec.instances,
                            p.ready_instances - 1
                        ),
                    ),
                ),
                Some(Err(error)) => (
                    if was_ready {
                        DatabasePhase::Degraded
                    } else {
                        DatabasePhase::Provisioning
                    },
                    Want::new("Ready", false, "DatabaseUnreachable", error.clone()),
                    Want::new(
                        "Progressing",
                        !was_ready,
                        "DatabaseUnreachable",
                        error.clone(),
                    ),
                    Want::new("Degraded", was_ready, "DatabaseUnreachable", error.clone()),
                ),
                None => {
                    let message = format!(
                        "waiting for PostgreSQL: {} of {} instances ready",
                        p.ready_instances, db.spec.instances
                    );
                    (
                        if was_ready {
                            DatabasePhase::Degraded
                        } else {
                            DatabasePhase::Provisioning
                        },
                        Want::new(
                            "Ready",
                            false,
                            if was_ready {
                                "InstancesNotReady"
                            } else {
                                "Provisioning"
                            },
                            message.clone(),
                        ),
                        Want::new("Progressing", true, "Provisioning", message.clone()),
                        Want::new("Degraded", was_ready, "InstancesNotReady", message),
                    )
                }
            };
            let mut degraded = degraded;
            if !p.warnings.is_empty() {
                let messages: Vec<&str> = p.warnings.iter().map(|w| w.message.as_str()).collect();
                degraded.message = format!("{}; {}", degraded.message, messages.join("; "));
            }
            let mut wanted = vec![ready, progressing, degraded, compliant];
            if let Some(backup) = &p.backup {
                wanted.push(Want::new(
                    "BackedUp",
                    backup.backed_up,
                    backup.reason,
                    backup.message.clone(),
                ));
            }
            (phase, wanted, Some(pin(db, previous.pinned.as_ref())))
        }
    };
    let mut conditions = settle(wanted, &previous.conditions, generation, now);
    if !conditions.iter().any(|c| c.type_ == "BackedUp") {
        conditions.extend(
            previous
                .conditions
                .iter()
                .find(|c| c.type_ == "BackedUp")
                .cloned(),
        );
    }
    let backup = provisioned
        .and_then(|p| p.backup.as_ref()?.state.clone())
        .or(previous.backup.clone());
    let restore = provisioned
        .and_then(|p| p.restored.clone())
        .or(previous.restore.clone());
    SectorDatabaseStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        backup,
        restore,
        endpoints: provisioned
            .map(|p| Endpoints {
                read_write: p.endpoint.clone(),
                read_only: p.read_only_endpoint.clone(),
            })
            .or(previous.endpoints),
        secrets: provisioned
            .map(|_| SecretNames {
                app: Some(n.app),
                ca: Some(n.ca),
            })
            .or(previous.secrets),
        instances: Some(InstanceCounts {
            desired: db.spec.instances,
            ready: provisioned.map_or(0, |p| p.ready_instances),
        }),
        compliance: Some(compliance),
        pinned,
    }
}

/// Every rule a spec must meet before anything is applied: the schema's and the CEL rules (again,
/// for apiservers that skip them), and the Agency register's.
pub fn admit(db: &SectorDatabase, agencies: &[Agency]) -> Result<(), Vec<validate::Violation>> {
    let pinned = db.status.as_ref().and_then(|s| s.pinned.as_ref());
    let mut found = validate::database(&db.spec, pinned)
        .err()
        .unwrap_or_default();
    let namespace = db.namespace().unwrap_or_default();
    if let Err(more) = tenancy::admit_database(agencies, &namespace, &db.name_any(), &db.spec) {
        found.extend(more);
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

/// The immutable values of a valid spec; the storage size only ever moves up.
fn pin(db: &SectorDatabase, before: Option<&PinnedSpec>) -> PinnedSpec {
    match before {
        Some(before) => PinnedSpec {
            storage_size: db.spec.storage.size.clone(),
            ..before.clone()
        },
        None => PinnedSpec {
            database: db.spec.database.clone(),
            storage_size: db.spec.storage.size.clone(),
            bootstrap: db.spec.bootstrap.clone(),
        },
    }
}

/// Creates or keeps every child and connects to PostgreSQL. Side effects live here only.
async fn provision(db: &SectorDatabase, ctx: &Context) -> Result<Provisioned> {
    let namespace = db.namespace().unwrap_or_default();
    let client = ctx.client.clone();
    let n: Names = dataplane::names(&db.name_any());
    let settings = ctx.settings();

    let config = dataplane::config_map(db);
    let config_hash = dataplane::config_hash(&config);
    apply_child(
        ctx,
        CONTROLLER,
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        config,
    )
    .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let mut cluster_ips = std::collections::BTreeMap::new();
    for service in dataplane::services(db) {
        let live = apply_child(ctx, CONTROLLER, &services, service).await?;
        if let Some(ip) = live
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| ip != "None")
        {
            cluster_ips.insert(live.metadata.name.unwrap_or_default(), ip);
        }
    }
    let cluster_ip = cluster_ips.get(&n.read_write).cloned().unwrap_or_default();
    let host = format!("{}.{namespace}.svc", n.read_write);

    let ca = operator_ca(ctx).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let existing = secrets.get_opt(&n.app).await?;
    let owner_password =
        secret_value(existing.as_ref(), "password").unwrap_or_else(|| pki::password(32));
    let app_endpoint = dataplane::Endpoint {
        host: &host,
        host_addr: &cluster_ip,
        database: &db.spec.database.name,
    };
    apply_child(
        ctx,
        CONTROLLER,
        &secrets,
        dataplane::credentials_secret(
            db,
            &n.app,
            &dataplane::Credentials {
                endpoint: &app_endpoint,
                user: &db.spec.database.owner,
                password: &owner_password,
                ca_pem: &ca.trust_pem,
            },
        ),
    )
    .await?;
    let existing = secrets.get_opt(&n.replication).await?;
    let replication_password =
        secret_value(existing.as_ref(), "password").unwrap_or_else(|| pki::password(32));
    for (name, files) in [
        (&n.ca, [("ca.crt", ca.trust_pem.as_str())]),
        (
            &n.replication,
            [("password", replication_password.as_str())],
        ),
    ] {
        apply_child(
            ctx,
            CONTROLLER,
            &secrets,
            dataplane::opaque_secret(db, name, &files),
        )
        .await?;
    }
    let server_certificate =
        server_certificate(ctx, db, &secrets, &ca, &host, &cluster_ips).await?;

    apply_child(
        ctx,
        CONTROLLER,
        &Api::<NetworkPolicy>::namespaced(client.clone(), &namespace),
        dataplane::network_policy(db, &settings),
    )
    .await?;

    let endpoint = |service: &str| Endpoint {
        host: format!("{service}.{namespace}.svc"),
        cluster_ip: cluster_ips.get(service).cloned(),
        port: PORT,
    };
    if let Err(why) = restore::prepare(ctx, db).await? {
        return Ok(Provisioned {
            endpoint: Some(endpoint(&n.read_write)),
            blocked: Some(("RestoreSourceUnavailable", why)),
            ..Provisioned::default()
        });
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let mut desired = dataplane::stateful_set(db, &settings, &config_hash, &cluster_ip);
    let existing = statefulsets.get_opt(&n.statefulset).await?;
    // volumeClaimTemplates cannot change after creation: keep them, and grow the PVCs instead.
    if let (Some(live), Some(spec)) = (
        existing.as_ref().and_then(|s| s.spec.as_ref()),
        desired.spec.as_mut(),
    ) {
        spec.volume_claim_templates = live.volume_claim_templates.clone();
    }
    let live = apply_child(ctx, CONTROLLER, &statefulsets, desired).await?;
    if let Some(api) = &ctx.disruption_budget_api {
        let budgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, api);
        let (_, wrote) = crate::apply::apply(
            &budgets,
            &super::field_manager(CONTROLLER),
            &ctx.checked,
            dataplane::disruption_budget(db, api),
        )
        .await?;
        if wrote {
            ctx.metrics.write(CONTROLLER, &api.kind);
        }
    }
    let pods = label_roles(db, ctx).await?;
    let mut warnings = grow_volumes(db, ctx).await?;
    let pods_ready = live
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);

    // A restored server carries the source's passwords until it is taken over.
    let restoring =
        db.spec.bootstrap.is_some() && db.status.as_ref().is_none_or(|s| s.restore.is_none());
    let mut restored = None;
    let mut adopt_error = None;
    if restoring && pods_ready > 0 {
        let roles = [
            (db.spec.database.owner.as_str(), owner_password.as_str()),
            (pgconf::REPLICATION_USER, replication_password.as_str()),
        ];
        match restore::adopt(ctx, db, &roles, &now()).await? {
            Ok(state) => restored = Some(state),
            Err(why) => adopt_error = Some(format!("restoring from backup: {why}")),
        }
    }
    let plan = backups::prepare(ctx, db).await?;
    let archive_command = plan.as_ref().ok().map(|p| p.archive_command.as_str());
    let superuser = superuser_certificate(ctx).await?;
    let mut sql = match (pods_ready, cluster_ip.parse::<IpAddr>()) {
        (0, _) | (_, Err(_)) => None,
        _ if restoring && restored.is_none() => adopt_error.map(Err),
        (_, Ok(addr)) => {
            let target = sql::Target {
                host: &host,
                addr,
                port: PORT as u16,
                user: "postgres",
                login: sql::Login::Certificate(&superuser),
                ca_pem: &ca.trust_pem,
            };
            let instances = ready_instances(&pods, &live.uid().unwrap_or_default());
            let db_uid = db.uid().unwrap_or_default();
            let installing =
                install_certificates(ctx, &db_uid, &instances, &target, &server_certificate, &ca);
            warnings.extend(installing.await);
            Some(
                configure_postgres(
                    db,
                    &target,
                    &owner_password,
                    &replication_password,
                    archive_command,
                )
                .await
                .map_err(|e| e.to_string()),
            )
        }
    };
    let backup = match (&mut sql, plan) {
        (Some(Ok(observed)), Ok(plan)) => {
            let outcome = backups::run(ctx, db, &plan, observed, &now()).await?;
            observed.backed_up_with_wal = outcome.backed_up;
            observed.offsite_encrypted = outcome.backed_up && outcome.offsite;
            observed.drill_within = outcome
                .state
                .as_ref()
                .and_then(|s| s.last_drill.as_ref())
                .filter(|d| d.succeeded)
                .map(|d| days_between(&d.time, &now()));
            Some(outcome)
        }
        (Some(Ok(_)), Err(outcome)) => Some(outcome),
        _ => None,
    };
    // An instance counts once PostgreSQL says so: the primary answering over TLS, each standby
    // streaming from it. Before the operator reached the primary, the pods' readiness is all
    // there is.
    let ready_instances = match &sql {
        Some(Ok(observed)) => (1 + observed.streaming_standbys).min(db.spec.instances),
        _ => pods_ready.min(1),
    };
    Ok(Provisioned {
        endpoint: Some(endpoint(&n.read_write)),
        read_only_endpoint: (db.spec.instances > 1).then(|| endpoint(&n.read_only)),
        ready_instances,
        sql,
        warnings,
        backup,
        blocked: None,
        restored,
    })
}

/// The server certificate in `<db>-server-tls`, naming the Services and their ClusterIPs;
/// reissued when those names change or its renewal window opens.
async fn server_certificate(
    ctx: &Context,
    db: &SectorDatabase,
    secrets: &Api<Secret>,
    ca: &Authority,
    host: &str,
    cluster_ips: &std::collections::BTreeMap<String, String>,
) -> Result<pki::CertifiedKey> {
    let name = dataplane::names(&db.name_any()).server_tls;
    let dns = dataplane::service_dns_names(db);
    let ips: Vec<IpAddr> = cluster_ips
        .values()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let sans = format!(
        "{};{}",
        dns.join(","),
        cluster_ips.values().cloned().collect::<Vec<_>>().join(",")
    );
    let current = secrets.get_opt(&name).await?;
    let now = jiff::Timestamp::now().as_second();
    // Kept while it names the Services, comes from the signing CA and is not due; the trusted
    // CAs beside it follow the rotation either way.
    let kept = current
        .as_ref()
        .filter(|s| {
            let annotations = s.annotations();
            annotations.get(SANS_ANNOTATION) == Some(&sans)
                && annotations.get(ISSUER_ANNOTATION) == Some(&ca.id)
        })
        .and_then(|s| stored_leaf(s, "tls.crt", "tls.key", NOT_AFTER_ANNOTATION))
        .filter(|leaf| !pki::renewal_due(leaf.not_after, now));
    let leaf = match kept {
        Some(leaf) => leaf,
        None => pki::issue_server(&ca.signer, host, &dns, &ips)?,
    };
    let mut secret = dataplane::opaque_secret(
        db,
        &name,
        &[
            ("tls.crt", &leaf.key.cert_pem),
            ("tls.key", &leaf.key.key_pem),
            ("ca.crt", &ca.trust_pem),
        ],
    );
    let annotations = secret.annotations_mut();
    annotations.insert(SANS_ANNOTATION.into(), sans);
    annotations.insert(ISSUER_ANNOTATION.into(), ca.id.clone());
    annotations.insert(NOT_AFTER_ANNOTATION.into(), leaf.not_after.to_string());
    apply_child(ctx, CONTROLLER, secrets, secret).await?;
    Ok(leaf.key)
}

/// A problem that does not stop the database: reported in the Degraded condition and as a
/// warning Event with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

/// Whole days from `from` to `to`; 0 when `to` is earlier.
fn days_between(from: &Time, to: &Time) -> i32 {
    let seconds = to.0.as_second() - from.0.as_second();
    i32::try_from(seconds.max(0) / 86_400).unwrap_or(i32::MAX)
}

async fn configure_postgres(
    db: &SectorDatabase,
    target: &sql::Target<'_>,
    owner_password: &str,
    replication_password: &str,
    archive_command: Option<&str>,
) -> Result<Observed, sql::Error> {
    // A pod that just turned ready is often not yet behind its Service (kube-proxy programs the
    // endpoint a moment later): a few quick attempts here cost no API calls, unlike a requeue.
    let mut attempt = 0;
    let client = loop {
        match sql::connect(target, "postgres").await {
            Ok(client) => break client,
            Err(_) if attempt < CONNECT_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    };
    sql::ensure_role(
        &client,
        pgconf::REPLICATION_USER,
        "LOGIN REPLICATION",
        replication_password,
    )
    .await?;
    sql::ensure_database(&client, &db.spec, owner_password).await?;
    sql::apply_parameters(&client, &db.spec).await?;
    sql::set_archive_command(&client, archive_command).await?;
    // A database re-created on retained volumes keeps its roles, with the passwords of earlier
    // Secrets: the roles follow the Secrets again.
    sql::keep_password(&client, pgconf::REPLICATION_USER, replication_password).await?;
    sql::observe(&client, db.spec.security_level).await
}

/// Keeps the role label on each instance's pod: the read-only Service selects the replicas by it.
/// A replaced pod arrives without the label and wakes this controller through its StatefulSet.
/// Returns the instances' pods.
async fn label_roles(db: &SectorDatabase, ctx: &Context) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/name=sectordb-postgres",
        db.name_any()
    );
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    for pod in &list.items {
        let name = pod.name_any();
        let role = dataplane::role_of(&name);
        if pod.labels().get(dataplane::ROLE_LABEL).map(String::as_str) == Some(role) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"labels": {dataplane::ROLE_LABEL: role}}});
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        ctx.metrics.write(CONTROLLER, "Pod");
    }
    Ok(list.items)
}

/// A ready instance of a database: its pod's name, its address, and what names this run of its
/// server (the pod's UID and when its PostgreSQL container started).
struct Instance {
    pod: String,
    run: String,
    addr: IpAddr,
}

/// The ready instances: pods of the StatefulSet `statefulset_uid` (a pod the agency made with
/// the same labels is not one).
fn ready_instances(pods: &[Pod], statefulset_uid: &str) -> Vec<Instance> {
    pods.iter()
        .filter(|p| crate::apply::owned_by(*p, statefulset_uid))
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let started = status
                .container_statuses
                .iter()
                .flatten()
                .find(|c| c.name == crate::backup::exec::CONTAINER)?
                .state
                .as_ref()?
                .running
                .as_ref()?
                .started_at
                .as_ref()?;
            Some(Instance {
                pod: p.name_any(),
                run: format!("{}@{}", p.uid()?, started.0),
                addr: status.pod_ip.as_deref()?.parse().ok()?,
            })
        })
        .collect()
}

/// Installs the current server certificate in each ready instance not yet known to serve it,
/// dialled at its pod address (`target` says as whom, and the name its certificate carries);
/// one that cannot be reached keeps serving its previous, still valid, certificate and is
/// reported, and is tried again on the next reconcile.
async fn install_certificates(
    ctx: &Context,
    db_uid: &str,
    instances: &[Instance],
    target: &sql::Target<'_>,
    certificate: &pki::CertifiedKey,
    ca: &Authority,
) -> Vec<Warning> {
    let serving = format!(
        "{}/{}",
        pki::fingerprint(&certificate.cert_pem),
        pki::fingerprint(&ca.trust_pem)
    );
    let known = ctx
        .installed
        .lock()
        .map(|m| m.get(db_uid).cloned())
        .ok()
        .flatten();
    let mut installed = std::collections::HashMap::new();
    let mut warnings = Vec::new();
    for instance in instances {
        if known.as_ref().and_then(|k| k.get(&instance.run)) == Some(&serving) {
            installed.insert(instance.run.clone(), serving.clone());
            continue;
        }
        let target = sql::Target {
            addr: instance.addr,
            ..*target
        };
        let outcome = match sql::connect(&target, "postgres").await {
            Ok(session) => {
                sql::install_server_certificate(&session, certificate, &ca.trust_pem).await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(_) => {
                installed.insert(instance.run.clone(), serving.clone());
            }
            Err(error) => warnings.push(Warning {
                reason: "CertificateNotInstalled",
                message: format!(
                    "instance {} still serves its previous server certificate: {error}",
                    instance.pod
                ),
            }),
        }
    }
    if let Ok(mut map) = ctx.installed.lock() {
        map.insert(db_uid.to_string(), installed);
    }
    warnings
}

/// Asks for more space on each volume smaller than the spec; reports what the storage class
/// refuses rather than failing the reconcile.
async fn grow_volumes(db: &SectorDatabase, ctx: &Context) -> Result<Vec<Warning>> {
    let Some(wanted) = quantity::bytes(&db.spec.storage.size.0) else {
        return Ok(vec![]);
    };
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let selector = format!("app.kubernetes.io/instance={}", db.name_any());
    let mut warnings = Vec::new();
    for pvc in pvcs.list(&ListParams::default().labels(&selector)).await? {
        let requested = pvc.spec.as_ref().and_then(|s| {
            s.resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("storage")
                .cloned()
        });
        if requested
            .as_ref()
            .and_then(|q| quantity::bytes(&q.0))
            .is_some_and(|have| have >= wanted)
        {
            continue;
        }
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": db.spec.storage.size}}}});
        ctx.metrics.write(CONTROLLER, "PersistentVolumeClaim");
        if let Err(error) = pvcs
            .patch(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            warnings.push(Warning {
                reason: "StorageNotExpanded",
                message: format!(
                    "volume {} was not expanded to {}: {error}",
                    pvc.name_any(),
                    db.spec.storage.size.0
                ),
            });
        }
    }
    Ok(warnings)
}

async fn apply_database(db: Arc<SectorDatabase>, ctx: Arc<Context>) -> Result<Action> {
    let ctx = &*ctx;
    let api: Api<SectorDatabase> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let agencies = super::agencies(ctx).await?;
    let provisioned = match admit(&db, &agencies) {
        // A name held by someone else's object stops the database before anything is overwritten.
        Ok(()) => match provision(&db, ctx).await {
            Err(super::Error::NameTaken(why)) => Some(Provisioned {
                blocked: Some(("NameConflict", why)),
                ..Provisioned::default()
            }),
            provisioned => Some(provisioned?),
        },
        Err(_) => None,
    };
    for warning in provisioned.iter().flat_map(|p| &p.warnings) {
        event(ctx, &*db, true, warning.reason, warning.message.clone()).await;
    }
    let backup = provisioned.as_ref().and_then(|p| p.backup.as_ref());
    if let Some((warning, reason, message)) = backup.and_then(|b| b.event.clone()) {
        event(ctx, &*db, warning, reason, message).await;
    }
    let retry = backup.and_then(|b| b.retry_in);
    let status = desired_status(&db, &ctx.profile, &agencies, provisioned.as_ref(), &now());
    write_status(ctx, CONTROLLER, &api, &db, &status).await?;
    if let Some(state) = &status.backup {
        let namespace = db.namespace().unwrap_or_default();
        ctx.metrics.backup(&namespace, &db.name_any(), state);
    }
    let previous = db
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if let Some(ready) = status.conditions.iter().find(|c| c.type_ == "Ready") {
        announce(ctx, &*db, previous, ready).await;
    }
    Ok(match (status.phase, retry) {
        (Some(DatabasePhase::Failed), _) => Action::await_change(),
        // A backup configuration on its way to the pod, or a failed backup to retry.
        (_, Some(retry)) => Action::requeue(retry),
        // Re-check a healthy database now and then: Ready must stay true only while it is.
        (Some(DatabasePhase::Ready), _) => Action::requeue(Duration::from_secs(60)),
        // Something needs a person or a slow fix (a refused volume expansion, a lost pod that
        // the StatefulSet is replacing, which also wakes this controller): no tight loop.
        (Some(DatabasePhase::Degraded), _) => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(5)),
    })
}

/// Deletion: the StatefulSet and the rest go by owner reference; the volumes stay unless
/// `deletionPolicy: Delete`.
async fn cleanup(db: Arc<SectorDatabase>, ctx: Arc<Context>) -> Result<Action> {
    let ctx = &*ctx;
    ctx.metrics
        .forget(&db.namespace().unwrap_or_default(), &db.name_any());
    ctx.checked
        .forget(&db.namespace().unwrap_or_default(), &db.name_any());
    let pvcs: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let selector = format!("app.kubernetes.io/instance={}", db.name_any());
    let names: Vec<String> = pvcs
        .list(&ListParams::default().labels(&selector))
        .await?
        .iter()
        .map(|p| p.name_any())
        .filter(|name| dataplane::is_volume_of(&db.name_any(), name))
        .collect();
    match db.spec.deletion_policy {
        DeletionPolicy::Retain => {
            event(
                ctx,
                &*db,
                false,
                "VolumesRetained",
                format!("deletionPolicy Retain: kept volumes {}", names.join(", ")),
            )
            .await;
        }
        DeletionPolicy::Delete => {
            // The data leaves only once its last state is in the repository. A database that
            // never got a volume holds no data to back up.
            let outcome = if names.is_empty() {
                Ok(None)
            } else {
                backups::final_backup(ctx, &db).await?
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(what)) => event(ctx, &*db, false, "FinalBackup", what).await,
                // Deleting the namespace deletes the volumes and the pods with it, whatever this
                // finalizer does; holding on would only keep the namespace from going.
                Err(why) if namespace_terminating(ctx, &db).await? => {
                    let message = format!(
                        "{why}; the namespace is being deleted, which deletes the volumes without a final backup"
                    );
                    event(ctx, &*db, true, "FinalBackupFailed", message).await;
                }
                Err(why) => {
                    let message = format!(
                        "{why}; the volumes stay until a final backup succeeds (or set deletionPolicy: Retain)"
                    );
                    event(ctx, &*db, true, "FinalBackupFailed", message.clone()).await;
                    return Err(super::Error::Backup(message));
                }
            }
            for name in &names {
                pvcs.delete(name, &DeleteParams::default()).await?;
            }
            event(
                ctx,
                &*db,
                false,
                "VolumesDeleted",
                format!(
                    "deletionPolicy Delete: deleted volumes {}",
                    names.join(", ")
                ),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

async fn namespace_terminating(ctx: &Context, db: &SectorDatabase) -> Result<bool> {
    let namespace = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&db.namespace().unwrap_or_default())
        .await?;
    Ok(namespace.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()))
}

async fn reconcile(
    guard: Arc<DeserializeGuard<SectorDatabase>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    super::reconcile_namespaced(
        guard,
        ctx,
        CONTROLLER,
        FINALIZER,
        "Failed",
        apply_database,
        cleanup,
    )
    .await
}

/// What every child of a database carries (`dataplane::labels`).
const CHILD_LABEL: &str = "app.kubernetes.io/managed-by=sectordb-operator";

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    let statefulsets: Api<StatefulSet> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let databases = controller.store();
    let labels = ctx.namespace_labels.clone();
    // A policy's change concerns the databases it selects or selected.
    let policies: Api<DeserializeGuard<BackupPolicy>> = Api::all(ctx.client.clone());
    // Registering, changing or removing an Agency changes what its namespaces may run.
    let agencies: Api<DeserializeGuard<Agency>> = Api::all(ctx.client.clone());
    let in_namespaces = controller.store();
    let in_namespace = in_namespaces.clone();
    let recorded = ctx.namespace_labels.clone();
    // A namespace's labels decide which policy covers its databases.
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    // Every database trusts the operator's CA and serves a certificate it signed: a rotation
    // step (or another replica's) reaches them all at once.
    let ca_secret: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let following_ca = controller.store();
    let ca_ctx = ctx.clone();
    // Every child is watched, so one deleted or edited is put back at once, not at the next
    // resync. Only the operator's own children: the label narrows the watch, the owner
    // reference (which `owns` follows) decides.
    let children = || watcher::Config::default().labels(CHILD_LABEL);
    let client = &ctx.client;
    let controller = match &ctx.disruption_budget_api {
        Some(api) => {
            let budgets: Api<DynamicObject> = Api::all_with(client.clone(), api);
            controller.owns_with(budgets, api.clone(), children())
        }
        None => controller,
    };
    controller
        .owns(statefulsets, children())
        .owns(Api::<Service>::all(client.clone()), children())
        .owns(Api::<ConfigMap>::all(client.clone()), children())
        .owns(Api::<Secret>::all(client.clone()), children())
        .owns(Api::<NetworkPolicy>::all(client.clone()), children())
        .watches(policies, watcher::Config::default(), move |policy| {
            let policy = policy.0.ok();
            databases
                .state()
                .into_iter()
                .filter(|guard| match (&policy, &guard.0) {
                    (Some(p), Ok(db)) => {
                        let namespace = labels.get(&db.namespace().unwrap_or_default());
                        selection::concerns(p, namespace.as_ref(), db)
                    }
                    _ => true,
                })
                .map(|db| ObjectRef::from_obj(&*db))
                .collect::<Vec<_>>()
        })
        .watches(namespaces, watcher::Config::default(), move |namespace| {
            recorded.record(&namespace);
            let name = namespace.name_any();
            in_namespace
                .state()
                .into_iter()
                .filter(|db| db.namespace().as_deref() == Some(name.as_str()))
                .map(|db| ObjectRef::from_obj(&*db))
                .collect::<Vec<_>>()
        })
        .watches(agencies, watcher::Config::default(), move |agency| {
            let namespaces = agency
                .0
                .as_ref()
                .map(|a| a.spec.namespaces.clone())
                .unwrap_or_default();
            in_namespaces
                .state()
                .into_iter()
                .filter(|db| db.namespace().is_some_and(|ns| namespaces.contains(&ns)))
                .map(|db| ObjectRef::from_obj(&*db))
                .collect::<Vec<_>>()
        })
        .watches(
            ca_secret,
            watcher::Config::default().fields(&format!("metadata.name={CA_SECRET}")),
            move |_| {
                ca_changed(&ca_ctx);
                following_ca
                    .state()
                    .into_iter()
                    .map(|db| ObjectRef::from_obj(&*db))
                    .collect::<Vec<_>>()
            },
        )
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

    #[test]
    fn a_drill_counts_whole_days_and_never_from_the_future() {
        let at = |t: &str| Time(t.parse().unwrap());
        let drill = at("2026-06-01T03:00:00Z");
        assert_eq!(days_between(&drill, &at("2026-06-02T02:59:59Z")), 0);
        assert_eq!(days_between(&drill, &at("2026-11-30T03:00:00Z")), 182);
        assert_eq!(days_between(&drill, &at("2026-05-01T00:00:00Z")), 0);
    }

    fn db(spec: serde_json::Value, status: Option<serde_json::Value>) -> SectorDatabase {
        let mut obj = serde_json::json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "d", "namespace": "n", "generation": 3}, "spec": spec
        });
        if let Some(status) = status {
            obj["status"] = status;
        }
        serde_json::from_value(obj).unwrap()
    }

    fn spec(name: &str, size: &str, instances: i32) -> serde_json::Value {
        serde_json::json!({
            "agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
            "securityLevel": 3, "instances": instances, "storage": {"size": size}, "database": {"name": name, "owner": "app"}
        })
    }

    /// The Agency that owns the test databases' namespace.
    fn register() -> Vec<Agency> {
        vec![serde_json::from_value(serde_json::json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "Agency", "metadata": {"name": "a"},
            "spec": {"code": "H53", "name": "x", "namespaces": ["n"], "approvedLevels": {"default": 3}}
        }))
        .unwrap()]
    }

    #[test]
    fn a_database_outside_the_register_or_below_its_approved_level_is_invalid() {
        let mut lowered = spec("health", "1Gi", 1);
        lowered["securityLevel"] = serde_json::json!(1);
        let status = status_of(
            &db(lowered, None),
            Some(&provisioned(1, Some(Ok(observed())))),
        );
        assert_eq!(ready(&status), ("False", "InvalidSpec"));
        assert!(
            status.conditions[0].message.contains("spec.securityLevel"),
            "{}",
            status.conditions[0].message
        );
        let elsewhere = desired_status(
            &db(spec("health", "1Gi", 1), None),
            &SecurityProfile::default(),
            &[],
            None,
            &now(),
        );
        assert_eq!(ready(&elsewhere), ("False", "InvalidSpec"));
        assert!(elsewhere.conditions[0].message.contains("not registered"));
    }

    fn ready(status: &SectorDatabaseStatus) -> (&str, &str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn provisioned(ready_instances: i32, sql: Option<Result<Observed, String>>) -> Provisioned {
        Provisioned {
            endpoint: None,
            read_only_endpoint: None,
            ready_instances,
            sql,
            warnings: vec![],
            ..Provisioned::default()
        }
    }

    fn status_of(db: &SectorDatabase, p: Option<&Provisioned>) -> SectorDatabaseStatus {
        desired_status(db, &SecurityProfile::default(), &register(), p, &now())
    }

    fn observed() -> Observed {
        Observed {
            tls_enforced: true,
            pgaudit_loaded: true,
            ..Observed::default()
        }
    }

    #[test]
    fn ready_only_after_the_operator_connected() {
        let d = db(spec("health", "1Gi", 1), None);
        let waiting = status_of(&d, Some(&provisioned(0, None)));
        assert_eq!(
            (waiting.phase, ready(&waiting)),
            (Some(DatabasePhase::Provisioning), ("False", "Provisioning"))
        );
        let pod_ready_but_no_sql =
            status_of(&d, Some(&provisioned(1, Some(Err("refused".into())))));
        assert_eq!(
            ready(&pod_ready_but_no_sql),
            ("False", "DatabaseUnreachable")
        );
        let up = status_of(&d, Some(&provisioned(1, Some(Ok(observed())))));
        assert_eq!(
            (up.phase, ready(&up)),
            (Some(DatabasePhase::Ready), ("True", "Ready"))
        );
        let tls = up
            .compliance
            .unwrap()
            .findings
            .into_iter()
            .find(|f| f.rule == "tls-only")
            .unwrap();
        assert!(tls.satisfied);
    }

    #[test]
    fn a_ready_database_that_loses_its_pod_is_degraded() {
        let d = db(spec("health", "1Gi", 1), None);
        let up = status_of(&d, Some(&provisioned(1, Some(Ok(observed())))));
        let later = db(
            spec("health", "1Gi", 1),
            Some(serde_json::to_value(&up).unwrap()),
        );
        let down = status_of(&later, Some(&provisioned(0, None)));
        assert_eq!(down.phase, Some(DatabasePhase::Degraded));
        let degraded = down
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .unwrap();
        assert_eq!(degraded.status, "True");
    }

    #[test]
    fn missing_replicas_are_reported_not_hidden() {
        let d = db(spec("health", "1Gi", 2), None);
        let s = status_of(&d, Some(&provisioned(1, Some(Ok(observed())))));
        assert_eq!(s.phase, Some(DatabasePhase::Degraded));
        assert_eq!(
            s.instances,
            Some(InstanceCounts {
                desired: 2,
                ready: 1
            })
        );
    }

    #[test]
    fn renamed_database_is_invalid_and_keeps_the_pin() {
        let first = status_of(
            &db(spec("health", "1Gi", 1), None),
            Some(&provisioned(0, None)),
        );
        let renamed = db(
            spec("other", "1Gi", 1),
            Some(serde_json::to_value(&first).unwrap()),
        );
        let status = status_of(&renamed, None);
        assert_eq!(status.phase, Some(DatabasePhase::Failed));
        assert_eq!(ready(&status), ("False", "InvalidSpec"));
        assert!(
            status.conditions[0].message.contains("spec.database"),
            "{}",
            status.conditions[0].message
        );
        assert_eq!(status.pinned.unwrap().database.name, "health");
    }

    #[test]
    fn reconciling_twice_yields_the_same_status() {
        let t0 = now();
        let p = provisioned(1, Some(Ok(observed())));
        let first = desired_status(
            &db(spec("health", "1Gi", 1), None),
            &SecurityProfile::default(),
            &register(),
            Some(&p),
            &t0,
        );
        let again_at = Time(t0.0 + jiff::SignedDuration::from_secs(60));
        let stored = db(
            spec("health", "1Gi", 1),
            Some(serde_json::to_value(&first).unwrap()),
        );
        assert_eq!(
            first,
            desired_status(
                &stored,
                &SecurityProfile::default(),
                &register(),
                Some(&p),
                &again_at
            )
        );
    }

    #[test]
    fn grown_storage_moves_the_pin_up() {
        let first = status_of(
            &db(spec("health", "1Gi", 1), None),
            Some(&provisioned(0, None)),
        );
        let grown = db(
            spec("health", "2Gi", 1),
            Some(serde_json::to_value(&first).unwrap()),
        );
        let status = status_of(&grown, Some(&provisioned(0, None)));
        assert_eq!(status.pinned.unwrap().storage_size.0, "2Gi");
    }

    #[test]
    fn a_restore_that_cannot_start_is_pending_with_the_reason_and_never_ready() {
        let blocked = Provisioned {
            blocked: Some((
                "RestoreSourceUnavailable",
                "spec.bootstrap.fromBackup.targetTime is outside".into(),
            )),
            ..Provisioned::default()
        };
        let status = status_of(&db(spec("d", "1Gi", 1), None), Some(&blocked));
        assert_eq!(status.phase, Some(DatabasePhase::Pending));
        assert_eq!(ready(&status), ("False", "RestoreSourceUnavailable"));
    }

    #[test]
    fn the_backup_step_sets_backed_up_and_a_database_it_could_not_ask_keeps_the_last_word() {
        let outcome = backups::Outcome {
            backed_up: true,
            reason: "BackedUp",
            message: "full backup".into(),
            state: Some(crate::api::database::BackupState {
                stanza: Some("n.d.1".into()),
                ..Default::default()
            }),
            event: None,
            retry_in: None,
            offsite: false,
        };
        let with_backup = Provisioned {
            backup: Some(outcome),
            ..provisioned(1, Some(Ok(Observed::default())))
        };
        let first = status_of(&db(spec("d", "1Gi", 1), None), Some(&with_backup));
        let backed_up = |s: &SectorDatabaseStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "BackedUp")
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        assert_eq!(backed_up(&first), Some(("True".into(), "BackedUp".into())));
        let later = db(
            spec("d", "1Gi", 1),
            Some(serde_json::to_value(&first).unwrap()),
        );
        let unreachable = status_of(&later, Some(&provisioned(1, Some(Err("down".into())))));
        assert_eq!(backed_up(&unreachable), backed_up(&first));
        assert_eq!(
            unreachable.backup.and_then(|b| b.stanza).as_deref(),
            Some("n.d.1")
        );
    }
}
