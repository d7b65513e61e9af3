//! The DataSharingConnection controller: deny by default, grant exactly the declared dataset
//! (ReadOnly: a role and a Secret; Replicate: a publication and a subscription), revoke within
//! seconds of deletion, suspension or expiry, and log every grant and revocation with the
//! connection's UID.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DeleteParams;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::ca::{operator_ca, superuser_certificate};
use super::names::CONNECTION as CONTROLLER;
use super::{
    Context, Error, Result, announce, apply_child, event, now, secret_value, write_status,
};
use crate::api::connection::{
    ConnectionPhase, DataSharingConnectionStatus, ReplicationStatus, SecretRef, SharingMode,
};
use crate::api::{DataSharingConnection, SectorDatabase};
use crate::conditions::{Want, settle, status_of};
use crate::pgconf::{PORT, TLS_DIR};
use crate::sharing_sql::{self, GrantedTable};
use crate::{dataplane, pki, replication_sql, sharing, sql, tenancy, validate};

const FINALIZER: &str = "sectordb.io/connection";

/// What the controller read about the objects a connection names.
pub struct Facts<'a> {
    pub provider: Option<&'a SectorDatabase>,
    /// Replicate mode: the consumer's SectorDatabase named by `spec.replicateInto`.
    pub target: Option<&'a SectorDatabase>,
    pub consumer_namespace_exists: bool,
    /// Why the register forbids delivering into the consumer namespace, if it does.
    pub consumer_refusal: Option<String>,
    pub now: &'a Time,
}

/// Whether access may exist now.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Grant(Vec<GrantedTable>),
    Deny {
        phase: ConnectionPhase,
        reason: &'static str,
        message: String,
    },
}

fn deny(phase: ConnectionPhase, reason: &'static str, message: impl Into<String>) -> Decision {
    Decision::Deny {
        phase,
        reason,
        message: message.into(),
    }
}

/// Deny by default. Pure.
pub fn decide(conn: &DataSharingConnection, facts: &Facts) -> Decision {
    let spec = &conn.spec;
    if let Err(violations) = validate::connection(spec) {
        return deny(
            ConnectionPhase::Denied,
            "InvalidSpec",
            validate::describe(&violations),
        );
    }
    if spec.suspended {
        return deny(
            ConnectionPhase::Suspended,
            "Suspended",
            "spec.suspended is true: access is revoked",
        );
    }
    if spec.valid_until.0 <= facts.now.0 {
        return deny(
            ConnectionPhase::Expired,
            "Expired",
            format!("spec.validUntil {} has passed", spec.valid_until.0),
        );
    }
    let wanted = &spec.provider;
    let Some(provider) = facts.provider else {
        return deny(
            ConnectionPhase::Pending,
            "ProviderNotFound",
            format!(
                "spec.provider.database: no SectorDatabase {:?} in this namespace",
                wanted.database
            ),
        );
    };
    let Some(tables) = sharing::granted_tables(provider, &wanted.dataset) else {
        return deny(
            ConnectionPhase::Denied,
            "DatasetNotDeclared",
            format!(
                "spec.provider.dataset: {:?} does not declare a dataset {:?}",
                wanted.database, wanted.dataset
            ),
        );
    };
    if let Some(why) = &facts.consumer_refusal {
        return deny(ConnectionPhase::Denied, "ConsumerNotAllowed", why.clone());
    }
    if !facts.consumer_namespace_exists {
        return deny(
            ConnectionPhase::Denied,
            "ConsumerNamespaceNotFound",
            format!(
                "spec.consumer.namespace: namespace {:?} does not exist",
                spec.consumer.namespace
            ),
        );
    }
    if !is_ready(provider) {
        return deny(
            ConnectionPhase::Pending,
            "ProviderNotReady",
            format!(
                "waiting for SectorDatabase {:?} to be Ready before granting access",
                wanted.database
            ),
        );
    }
    if let (SharingMode::Replicate, Some(into)) = (spec.mode, &spec.replicate_into) {
        let Some(target) = facts.target else {
            return deny(
                ConnectionPhase::Pending,
                "TargetNotFound",
                format!(
                    "spec.replicateInto.database: no SectorDatabase {:?} in namespace {:?}",
                    into.database, spec.consumer.namespace
                ),
            );
        };
        if !is_ready(target) {
            return deny(
                ConnectionPhase::Pending,
                "TargetNotReady",
                format!(
                    "waiting for SectorDatabase {:?} in namespace {:?} to be Ready before replicating into it",
                    into.database, spec.consumer.namespace
                ),
            );
        }
    }
    Decision::Grant(tables)
}

fn is_ready(db: &SectorDatabase) -> bool {
    db.status
        .as_ref()
        .and_then(|s| status_of(&s.conditions, "Ready"))
        == Some("True")
}

/// How the consumer receives the granted data.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// ReadOnly: credentials in the consumer's namespace.
    Secret(SecretRef),
    /// Replicate: a subscription in the consumer's database.
    Subscription(ReplicationStatus),
}

/// What happened in PostgreSQL this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Granted {
        role: String,
        tables: Vec<GrantedTable>,
        delivery: Delivery,
    },
    /// A grant was allowed but could not be made (e.g. a declared table does not exist yet).
    GrantFailed {
        reason: &'static str,
        message: String,
    },
    NotGranted,
}

/// The provider's status lost its read-write endpoint after the session to it was opened (a
/// status rewritten meanwhile): try again rather than trust an address no longer reported.
fn endpoint_gone() -> Outcome {
    failed(
        "ProviderNotReady",
        "the provider's status no longer reports its read-write endpoint",
    )
}

fn failed(reason: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::GrantFailed {
        reason,
        message: message.into(),
    }
}

/// The status a connection should have. Pure.
pub fn desired_status(
    conn: &DataSharingConnection,
    decision: &Decision,
    outcome: &Outcome,
    now: &Time,
) -> DataSharingConnectionStatus {
    let previous = conn.status.clone().unwrap_or_default();
    let generation = conn.metadata.generation;
    let was_granted = previous.granted_at.is_some() && previous.revoked_at.is_none();
    let mut status = DataSharingConnectionStatus {
        observed_generation: generation,
        expires_at: Some(conn.spec.valid_until.clone()),
        ..previous.clone()
    };
    let (phase, ready, reason, message) = match (decision, outcome) {
        (
            _,
            Outcome::Granted {
                role,
                tables,
                delivery,
            },
        ) => {
            status.role = Some(role.clone());
            if !was_granted {
                status.granted_at = Some(now.clone());
                status.revoked_at = None;
            }
            status.granted_objects = tables.iter().map(GrantedTable::describe).collect();
            let objects = status.granted_objects.join(", ");
            let until = &conn.spec.valid_until.0;
            let consumer = &conn.spec.consumer.namespace;
            match delivery {
                Delivery::Secret(secret) => {
                    status.secret_ref = Some(secret.clone());
                    status.replication = None;
                    let message = format!("{consumer} may read {objects} until {until}");
                    (ConnectionPhase::Active, true, "Granted", message)
                }
                Delivery::Subscription(replication) => {
                    status.secret_ref = None;
                    status.replication = Some(replication.clone());
                    let target = &replication.target;
                    if replication.streaming {
                        let message = format!(
                            "{objects} replicate into {target} until {until}; lag {} s",
                            replication.lag_seconds
                        );
                        (ConnectionPhase::Active, true, "Replicating", message)
                    } else {
                        let message = format!(
                            "{objects} are granted to {target}; waiting for its subscription to stream"
                        );
                        (
                            ConnectionPhase::Active,
                            false,
                            "ReplicationStarting",
                            message,
                        )
                    }
                }
            }
        }
        (_, Outcome::GrantFailed { reason, message }) => {
            (ConnectionPhase::Pending, false, *reason, message.clone())
        }
        (
            Decision::Deny {
                phase,
                reason,
                message,
            },
            _,
        ) => {
            if was_granted {
                status.revoked_at = Some(now.clone());
            }
            status.granted_objects.clear();
            status.secret_ref = None;
            status.replication = None;
            let phase = if was_granted && *phase == ConnectionPhase::Denied {
                ConnectionPhase::Revoked
            } else {
                *phase
            };
            (phase, false, *reason, message.clone())
        }
        (Decision::Grant(_), Outcome::NotGranted) => (
            ConnectionPhase::Pending,
            false,
            "Pending",
            "granting".to_string(),
        ),
    };
    let granted = matches!(outcome, Outcome::Granted { .. });
    let wanted = vec![
        Want::new("Ready", ready, reason, message.clone()),
        Want::new("Granted", granted, reason, message),
    ];
    status.phase = Some(phase);
    status.conditions = settle(wanted, &previous.conditions, generation, now);
    status
}

/// When to look again: at the expiry instant at the latest, so a lapsed grant is revoked on time;
/// soon while a grant is failing or a subscription is starting; every half minute while rows
/// replicate, so status shows the current lag.
fn next_check(
    conn: &DataSharingConnection,
    decision: &Decision,
    outcome: &Outcome,
    now: &Time,
) -> Action {
    let until = &conn.spec.valid_until.0;
    if until <= &now.0 {
        return Action::await_change();
    }
    let left = until.duration_since(now.0).unsigned_abs();
    let replicating = match outcome {
        Outcome::Granted {
            delivery: Delivery::Subscription(replication),
            ..
        } => Some(replication.streaming),
        _ => None,
    };
    let recheck = match (decision, outcome, replicating) {
        (_, Outcome::GrantFailed { .. }, _) => Duration::from_secs(10),
        (_, _, Some(false)) => Duration::from_secs(2),
        (_, _, Some(true)) => Duration::from_secs(30),
        (
            Decision::Deny {
                reason: "ConsumerNamespaceNotFound" | "ProviderNotFound" | "TargetNotFound",
                ..
            },
            _,
            _,
        ) => Duration::from_secs(30),
        (
            Decision::Deny {
                phase: ConnectionPhase::Suspended | ConnectionPhase::Denied,
                ..
            },
            _,
            _,
        ) => Duration::from_secs(3600),
        _ => Duration::from_secs(300),
    };
    // A little after the instant, so the check itself sees the connection expired.
    Action::requeue(left.min(recheck) + Duration::from_millis(200))
}

/// A superuser session on a SectorDatabase's application database, or why there is none.
async fn superuser_session(
    ctx: &Context,
    db: &SectorDatabase,
) -> Result<std::result::Result<tokio_postgres::Client, String>> {
    let namespace = db.namespace().unwrap_or_default();
    let Some((endpoint, addr)) = read_write_endpoint(db) else {
        return Ok(Err(format!(
            "SectorDatabase {namespace}/{} has no read-write address yet",
            db.name_any()
        )));
    };
    let ca = operator_ca(ctx).await?;
    let certificate = superuser_certificate(ctx).await?;
    let target = sql::Target {
        host: &endpoint.host,
        addr,
        port: PORT as u16,
        user: "postgres",
        login: sql::Login::Certificate(&certificate),
        ca_pem: &ca.trust_pem,
    };
    Ok(sql::connect(&target, &db.spec.database.name)
        .await
        .map_err(|e| e.to_string()))
}

/// The read-write Service of a database as status reports it: its DNS name and ClusterIP.
fn read_write_endpoint(db: &SectorDatabase) -> Option<(crate::api::database::Endpoint, IpAddr)> {
    let endpoint = db
        .status
        .as_ref()
        .and_then(|s| s.endpoints.as_ref()?.read_write.clone())?;
    let addr = endpoint.cluster_ip.as_deref()?.parse::<IpAddr>().ok()?;
    Some((endpoint, addr))
}

/// Grants access and delivers it the way the mode asks. Side effects live here and in
/// `revoke_access`.
async fn grant_access(
    ctx: &Context,
    conn: &DataSharingConnection,
    provider: &SectorDatabase,
    target: Option<&SectorDatabase>,
    tables: Vec<GrantedTable>,
) -> Result<Outcome> {
    let role = sharing_sql::role_name(&conn.uid().unwrap_or_default());
    let session = match superuser_session(ctx, provider).await? {
        Ok(session) => session,
        Err(error) => {
            return Ok(failed(
                "ProviderUnreachable",
                format!("cannot reach the provider database: {error}"),
            ));
        }
    };
    // The network path first: a subscription connects to the provider the moment it is made,
    // and a cluster that enforces NetworkPolicy refuses it until the path is open. Without the
    // role's password the path alone lets nobody in.
    let policies: Api<NetworkPolicy> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    apply_child(
        ctx,
        CONTROLLER,
        &policies,
        sharing::network_policy(conn, provider),
    )
    .await?;
    let delivery = match (conn.spec.mode, target) {
        (SharingMode::Replicate, Some(target)) => {
            replicate(ctx, conn, provider, target, &session, &role, &tables).await?
        }
        _ => deliver_secret(ctx, conn, provider, &session, &role, &tables).await?,
    };
    let delivery = match delivery {
        Ok(delivery) => delivery,
        Err(outcome) => return Ok(outcome),
    };
    Ok(Outcome::Granted {
        role,
        tables,
        delivery,
    })
}

/// ReadOnly: the role's column grants and the consumer's credentials Secret.
async fn deliver_secret(
    ctx: &Context,
    conn: &DataSharingConnection,
    provider: &SectorDatabase,
    session: &tokio_postgres::Client,
    role: &str,
    tables: &[GrantedTable],
) -> Result<std::result::Result<Delivery, Outcome>> {
    let consumer_secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &conn.spec.consumer.namespace);
    let name = sharing::secret_name(conn);
    let existing = consumer_secrets.get_opt(&name).await?;
    // A Secret of that name the operator did not deliver for this connection is neither read nor
    // overwritten, and no role is made for it.
    let uid = conn.uid().unwrap_or_default();
    if existing
        .as_ref()
        .is_some_and(|s| s.labels().get(sharing::CONNECTION_UID_LABEL) != Some(&uid))
    {
        return Ok(Err(failed(
            "NameConflict",
            format!(
                "spec.consumer.secretName: Secret {name:?} already exists in namespace {:?} and was not delivered for this connection; name another",
                conn.spec.consumer.namespace
            ),
        )));
    }
    let known = secret_value(existing.as_ref(), "password");
    let password = known.clone().unwrap_or_else(|| pki::password(32));
    let grant = sharing_sql::Grant {
        role,
        password: &password,
        connection_limit: conn.spec.connection_limit,
        database: &provider.spec.database.name,
        tables,
        set_password: known.is_none(),
        replication: false,
        valid_until: conn.spec.valid_until.0,
    };
    if let Err(error) = sharing_sql::grant(session, &grant).await {
        return Ok(Err(failed(
            "GrantFailed",
            format!("PostgreSQL refused the grant: {error}"),
        )));
    }
    let Some((rw, addr)) = read_write_endpoint(provider) else {
        return Ok(Err(endpoint_gone()));
    };
    let host_addr = addr.to_string();
    let endpoint = dataplane::Endpoint {
        host: &rw.host,
        host_addr: &host_addr,
        database: &provider.spec.database.name,
    };
    let ca = operator_ca(ctx).await?;
    apply_child(
        ctx,
        CONTROLLER,
        &consumer_secrets,
        sharing::consumer_secret(conn, &endpoint, role, &password, &ca.trust_pem),
    )
    .await?;
    Ok(Ok(Delivery::Secret(SecretRef {
        namespace: conn.spec.consumer.namespace.clone(),
        name,
    })))
}

/// Replicate: the role (with REPLICATION) and its column grants, a publication of exactly the
/// granted columns, the target tables and a subscription in the consumer's database. The role's
/// password is set anew only when the subscription is created: the subscription is the only
/// holder of it, so no Secret is written.
async fn replicate(
    ctx: &Context,
    conn: &DataSharingConnection,
    provider: &SectorDatabase,
    target: &SectorDatabase,
    session: &tokio_postgres::Client,
    role: &str,
    tables: &[GrantedTable],
) -> Result<std::result::Result<Delivery, Outcome>> {
    let target_name = format!(
        "{}/{}",
        target.namespace().unwrap_or_default(),
        target.name_any()
    );
    let consumer = match superuser_session(ctx, target).await? {
        Ok(consumer) => consumer,
        Err(error) => {
            return Ok(Err(failed(
                "TargetUnreachable",
                format!("cannot reach {target_name}: {error}"),
            )));
        }
    };
    let sources = match replication_sql::describe(session, tables).await {
        Ok(sources) => sources,
        Err(error) => {
            return Ok(Err(failed(
                "GrantFailed",
                format!("PostgreSQL refused to describe the dataset: {error}"),
            )));
        }
    };
    if let Some(problem) = replication_sql::unpublishable(&sources) {
        return Ok(Err(failed("NotReplicable", problem)));
    }
    let Some((rw, addr)) = read_write_endpoint(provider) else {
        return Ok(Err(endpoint_gone()));
    };
    let steps = async {
        let subscribed = replication_sql::subscribed(&consumer, role).await?;
        let password = pki::password(32);
        let grant = sharing_sql::Grant {
            role,
            password: &password,
            connection_limit: conn.spec.connection_limit,
            database: &provider.spec.database.name,
            tables,
            set_password: !subscribed,
            replication: true,
            valid_until: conn.spec.valid_until.0,
        };
        sharing_sql::grant(session, &grant).await?;
        replication_sql::publish(session, role, &sources).await?;
        if let Err(why) =
            replication_sql::ensure_targets(&consumer, role, &sources, &target.spec.database.owner)
                .await?
        {
            return Ok(Err(why));
        }
        let addr = addr.to_string();
        let ca_file = format!("{TLS_DIR}/ca.crt");
        let source = replication_sql::Source {
            host: &rw.host,
            addr: &addr,
            port: PORT as u16,
            dbname: &provider.spec.database.name,
            user: role,
            password: &password,
            ca_file: &ca_file,
        };
        replication_sql::subscribe(&consumer, role, &source).await?;
        if subscribed {
            replication_sql::refresh_if_tables_changed(&consumer, role, &sources).await?;
        }
        replication_sql::stream(session, role).await.map(Ok)
    };
    let stream = match steps.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(taken)) => return Ok(Err(failed("NameConflict", taken))),
        Err(error) => {
            return Ok(Err(failed(
                "GrantFailed",
                format!("PostgreSQL refused a replication step: {error}"),
            )));
        }
    };
    Ok(Ok(Delivery::Subscription(ReplicationStatus {
        publication: role.to_string(),
        subscription: role.to_string(),
        target: target_name,
        streaming: stream.streaming,
        lag_seconds: stream.lag_seconds,
    })))
}

/// The consumer database the spec asks to replicate into, as (namespace, name).
fn wanted_target(conn: &DataSharingConnection) -> Option<(String, String)> {
    conn.spec
        .replicate_into
        .as_ref()
        .filter(|_| conn.spec.mode == SharingMode::Replicate)
        .map(|into| (conn.spec.consumer.namespace.clone(), into.database.clone()))
}

/// The consumer database a subscription was made in, as status records it.
fn subscribed_target(conn: &DataSharingConnection) -> Option<(String, String)> {
    let target = &conn.status.as_ref()?.replication.as_ref()?.target;
    let (namespace, name) = target.split_once('/')?;
    Some((namespace.to_string(), name.to_string()))
}

async fn read_database(
    ctx: &Context,
    at: Option<(String, String)>,
) -> Result<Option<SectorDatabase>> {
    let Some((namespace, name)) = at else {
        return Ok(None);
    };
    let databases: Api<SectorDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
    Ok(databases.get_opt(&name).await?)
}

/// Revokes in PostgreSQL (when the provider is there to ask): the role loses its grants and
/// sessions, which stops any replication at once; then drops the publication and its slot, the
/// consumer's subscription (keeping the copied rows) and Secret, and closes the network path.
/// Safe to run when nothing was ever granted.
async fn revoke_access(
    ctx: &Context,
    conn: &DataSharingConnection,
    provider: Option<&SectorDatabase>,
) -> Result<()> {
    let role = sharing_sql::role_name(&conn.uid().unwrap_or_default());
    if let Some(provider) = provider {
        match superuser_session(ctx, provider).await? {
            Ok(session) => {
                sharing_sql::revoke(&session, &role, &provider.spec.database.name)
                    .await
                    .map_err(|e| Error::Sql(e.to_string()))?;
                replication_sql::drop_publication(&session, &role)
                    .await
                    .map_err(|e| Error::Sql(e.to_string()))?;
            }
            // Unreachable for good: the provider or its namespace is being deleted. Its data goes
            // with it, or stays on retained volumes where nobody knows the role's password once
            // its Secret is deleted below, and VALID UNTIL still holds.
            Err(error) if going(ctx, provider).await? => {
                tracing::warn!(%error, role, "provider going away: the role was not revoked in PostgreSQL")
            }
            // Otherwise the revocation is not done: retried, and never reported as done.
            Err(error) => {
                return Err(Error::Sql(format!(
                    "revoking {role}: the provider database is unreachable, access is not revoked yet: {error}"
                )));
            }
        }
    }
    let target = subscribed_target(conn).or_else(|| wanted_target(conn));
    if let Some(target) = read_database(ctx, target).await? {
        match superuser_session(ctx, &target).await? {
            Ok(session) => replication_sql::unsubscribe(&session, &role)
                .await
                .map_err(|e| Error::Sql(e.to_string()))?,
            Err(error) => {
                tracing::warn!(%error, role, "consumer database unreachable: its subscription could not be dropped")
            }
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &conn.spec.consumer.namespace);
    let name = sharing::secret_name(conn);
    if secrets
        .get_opt(&name)
        .await?
        .is_some_and(|s| s.labels().get(sharing::CONNECTION_UID_LABEL) == conn.uid().as_ref())
    {
        secrets.delete(&name, &DeleteParams::default()).await?;
        ctx.metrics.write(CONTROLLER, "Secret");
    }
    let policies: Api<NetworkPolicy> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let hole = sharing::network_policy_name(conn);
    if crate::apply::delete_owned(&policies, &hole, &conn.uid().unwrap_or_default()).await? {
        ctx.metrics.write(CONTROLLER, "NetworkPolicy");
    }
    Ok(())
}

/// Whether `db` or its namespace is being deleted.
async fn going(ctx: &Context, db: &SectorDatabase) -> Result<bool> {
    if db.metadata.deletion_timestamp.is_some() {
        return Ok(true);
    }
    let namespace = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&db.namespace().unwrap_or_default())
        .await?;
    Ok(namespace.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()))
}

/// The audit line for a grant or a revocation: a log record a SOC can correlate by UID.
/// A change of who may read what: the audit log's action and the Event's reason.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Granted,
    /// The connection stopped qualifying (expired, suspended, the dataset withdrawn...).
    Revoked,
    /// The platform authority deleted the connection.
    Deleted,
}

impl Access {
    fn action(self) -> &'static str {
        match self {
            Access::Granted => "grant",
            Access::Revoked | Access::Deleted => "revoke",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Access::Granted => "Granted",
            Access::Revoked | Access::Deleted => "Revoked",
        }
    }
}

/// Writes the audit line and publishes the Event of a grant or a revocation; a revocation the
/// authority did not ask for is a Warning, so it stands out in `kubectl get events`.
async fn record(
    ctx: &Context,
    conn: &DataSharingConnection,
    provider: Option<&SectorDatabase>,
    access: Access,
    detail: String,
) {
    let action = access.action();
    tracing::info!(
        audit = action,
        connection_uid = %conn.uid().unwrap_or_default(),
        connection = %conn.name_any(),
        provider_namespace = %conn.namespace().unwrap_or_default(),
        provider_database = %conn.spec.provider.database,
        provider_agency = %provider.map(|p| p.spec.agency.code.as_str()).unwrap_or(""),
        consumer_namespace = %conn.spec.consumer.namespace,
        consumer_agency = %conn.spec.consumer.agency.code,
        purpose = %conn.spec.purpose,
        legal_basis = %conn.spec.legal_basis,
        detail,
        "data sharing {action}"
    );
    event(
        ctx,
        conn,
        access == Access::Revoked,
        access.reason(),
        detail,
    )
    .await;
}

async fn read_provider(
    ctx: &Context,
    conn: &DataSharingConnection,
) -> Result<Option<SectorDatabase>> {
    let at = (
        conn.namespace().unwrap_or_default(),
        conn.spec.provider.database.clone(),
    );
    read_database(ctx, Some(at)).await
}

async fn apply_connection(conn: Arc<DataSharingConnection>, ctx: Arc<Context>) -> Result<Action> {
    let ctx = &*ctx;
    let api: Api<DataSharingConnection> =
        Api::namespaced(ctx.client.clone(), &conn.namespace().unwrap_or_default());
    let provider = read_provider(ctx, &conn).await?;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let consumer_namespace_exists = namespaces
        .get_opt(&conn.spec.consumer.namespace)
        .await?
        .is_some();
    let target = read_database(ctx, wanted_target(&conn)).await?;
    let agencies = super::agencies(ctx).await?;
    let consumer_refusal = tenancy::consumer_refusal(
        &agencies,
        &conn.spec.consumer.namespace,
        &conn.spec.consumer.agency.code,
        &ctx.namespace,
    );
    let now = now();
    let facts = Facts {
        provider: provider.as_ref(),
        target: target.as_ref(),
        consumer_namespace_exists,
        consumer_refusal,
        now: &now,
    };
    let decision = decide(&conn, &facts);
    let previous = conn.status.clone().unwrap_or_default();
    let was_granted = previous.granted_at.is_some() && previous.revoked_at.is_none();
    let outcome = match (&decision, provider.as_ref()) {
        (Decision::Grant(tables), Some(provider)) => {
            grant_access(ctx, &conn, provider, target.as_ref(), tables.clone()).await?
        }
        (Decision::Deny { .. }, _) if was_granted || previous.role.is_some() => {
            revoke_access(ctx, &conn, provider.as_ref()).await?;
            Outcome::NotGranted
        }
        _ => Outcome::NotGranted,
    };
    let status = desired_status(&conn, &decision, &outcome, &now);
    if status.granted_objects != previous.granted_objects
        || status.revoked_at != previous.revoked_at
    {
        let (access, detail) = match &outcome {
            Outcome::Granted { role, .. } => (
                Access::Granted,
                format!("role {role}: {}", status.granted_objects.join(", ")),
            ),
            _ => (
                Access::Revoked,
                status
                    .conditions
                    .first()
                    .map(|c| c.message.clone())
                    .unwrap_or_default(),
            ),
        };
        if access == Access::Granted || was_granted {
            record(ctx, &conn, provider.as_ref(), access, detail).await;
        }
    }
    write_status(ctx, CONTROLLER, &api, &conn, &status).await?;
    if let Some(ready) = status.conditions.iter().find(|c| c.type_ == "Ready") {
        announce(ctx, &*conn, &previous.conditions, ready).await;
    }
    Ok(next_check(&conn, &decision, &outcome, &now))
}

async fn cleanup(conn: Arc<DataSharingConnection>, ctx: Arc<Context>) -> Result<Action> {
    let ctx = &*ctx;
    let provider = read_provider(ctx, &conn).await?;
    revoke_access(ctx, &conn, provider.as_ref()).await?;
    record(
        ctx,
        &conn,
        provider.as_ref(),
        Access::Deleted,
        "the connection was deleted: access revoked".into(),
    )
    .await;
    Ok(Action::await_change())
}

async fn reconcile(
    guard: Arc<DeserializeGuard<DataSharingConnection>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    super::reconcile_namespaced(
        guard,
        ctx,
        CONTROLLER,
        FINALIZER,
        "Denied",
        apply_connection,
        cleanup,
    )
    .await
}

pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<DeserializeGuard<DataSharingConnection>> = Api::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let connections = controller.store();
    // A database's change (declared datasets, readiness) re-evaluates every connection that
    // reads from it or replicates into it.
    let databases: Api<DeserializeGuard<SectorDatabase>> = Api::all(ctx.client.clone());
    // What a connection writes is watched, so a deleted or edited one is put back at once: the
    // path into the provider's namespace (owned), and the Secret in the consumer's namespace,
    // where no owner reference can point (found by the connection's UID in its label).
    let policies: Api<NetworkPolicy> = Api::all(ctx.client.clone());
    let delivered: Api<Secret> = Api::all(ctx.client.clone());
    let by_uid = controller.store();
    controller
        .owns(
            policies,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=sectordb-operator"),
        )
        .watches(
            delivered,
            watcher::Config::default().labels(sharing::CONNECTION_UID_LABEL),
            move |secret| {
                let uid = secret.labels().get(sharing::CONNECTION_UID_LABEL).cloned();
                by_uid
                    .state()
                    .into_iter()
                    .filter(|c| uid.is_some() && c.uid() == uid)
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(databases, watcher::Config::default(), move |db| {
            let at = (db.namespace().unwrap_or_default(), db.name_any());
            connections
                .state()
                .into_iter()
                .filter(|c| {
                    c.0.as_ref().is_ok_and(|c| {
                        let provider = (
                            c.namespace().unwrap_or_default(),
                            c.spec.provider.database.clone(),
                        );
                        provider == at || wanted_target(c).as_ref() == Some(&at)
                    })
                })
                .map(|c| ObjectRef::from_obj(&*c))
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
    use serde_json::json;

    fn conn(valid_until: &str, suspended: bool, mode: &str) -> DataSharingConnection {
        let mut spec = json!({
            "provider": {"database": "health-records", "dataset": "vaccinations"},
            "consumer": {"agency": {"code": "000.00.20.H53", "name": "Labour"}, "namespace": "so-lao-dong"},
            "purpose": "Verify eligibility for support", "legalBasis": "Decree 47/2020/ND-CP",
            "validUntil": valid_until, "suspended": suspended, "mode": mode
        });
        if mode == "Replicate" {
            spec["replicateInto"] = json!({"database": "w"});
        }
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "DataSharingConnection",
            "metadata": {"name": "c", "namespace": "so-y-te", "generation": 1, "uid": "u-1"}, "spec": spec
        }))
        .unwrap()
    }

    fn provider(datasets: serde_json::Value, ready: bool) -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "health-records", "namespace": "so-y-te"},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Shared",
                     "securityLevel": 3, "storage": {"size": "1Gi"}, "database": {"name": "h", "owner": "app"},
                     "sharing": {"datasets": datasets}},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": "r",
                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn vaccinations() -> serde_json::Value {
        json!([{"name": "vaccinations", "tables": [{"schema": "public", "name": "v", "columns": ["id"]}]}])
    }

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    fn decided(
        conn: &DataSharingConnection,
        provider: Option<&SectorDatabase>,
        ns: bool,
    ) -> (ConnectionPhase, &'static str) {
        decided_into(conn, provider, None, ns)
    }

    fn decided_into(
        conn: &DataSharingConnection,
        provider: Option<&SectorDatabase>,
        target: Option<&SectorDatabase>,
        ns: bool,
    ) -> (ConnectionPhase, &'static str) {
        let now = at("2026-11-23T00:00:00Z");
        match decide(
            conn,
            &Facts {
                provider,
                target,
                consumer_namespace_exists: ns,
                consumer_refusal: None,
                now: &now,
            },
        ) {
            Decision::Grant(_) => (ConnectionPhase::Active, "Grant"),
            Decision::Deny { phase, reason, .. } => (phase, reason),
        }
    }

    #[test]
    fn undeclared_dataset_is_denied() {
        let p = provider(json!([]), true);
        assert_eq!(
            decided(
                &conn("2027-01-01T00:00:00Z", false, "ReadOnly"),
                Some(&p),
                true
            ),
            (ConnectionPhase::Denied, "DatasetNotDeclared")
        );
    }

    #[test]
    fn a_consumer_namespace_the_register_refuses_is_denied_before_anything_else() {
        let p = provider(vaccinations(), true);
        let now = at("2026-11-23T00:00:00Z");
        let decision = decide(
            &conn("2027-01-01T00:00:00Z", false, "ReadOnly"),
            &Facts {
                provider: Some(&p),
                target: None,
                consumer_namespace_exists: true,
                consumer_refusal: Some(
                    "spec.consumer.namespace: \"kube-system\" is a system namespace".into(),
                ),
                now: &now,
            },
        );
        assert!(matches!(
            decision,
            Decision::Deny {
                phase: ConnectionPhase::Denied,
                reason: "ConsumerNotAllowed",
                ..
            }
        ));
    }

    #[test]
    fn missing_consumer_namespace_is_denied() {
        let p = provider(vaccinations(), true);
        assert_eq!(
            decided(
                &conn("2027-01-01T00:00:00Z", false, "ReadOnly"),
                Some(&p),
                false
            ),
            (ConnectionPhase::Denied, "ConsumerNamespaceNotFound")
        );
    }

    #[test]
    fn provider_not_ready_or_missing_keeps_the_connection_pending() {
        let p = provider(vaccinations(), false);
        assert_eq!(
            decided(
                &conn("2027-01-01T00:00:00Z", false, "ReadOnly"),
                Some(&p),
                true
            ),
            (ConnectionPhase::Pending, "ProviderNotReady")
        );
        assert_eq!(
            decided(&conn("2027-01-01T00:00:00Z", false, "ReadOnly"), None, true),
            (ConnectionPhase::Pending, "ProviderNotFound")
        );
    }

    #[test]
    fn an_eligible_read_only_connection_is_granted() {
        let p = provider(vaccinations(), true);
        assert_eq!(
            decided(
                &conn("2027-01-01T00:00:00Z", false, "ReadOnly"),
                Some(&p),
                true
            )
            .1,
            "Grant"
        );
    }

    #[test]
    fn replication_waits_for_a_ready_target_database() {
        let p = provider(vaccinations(), true);
        let c = conn("2027-01-01T00:00:00Z", false, "Replicate");
        assert_eq!(
            decided_into(&c, Some(&p), None, true),
            (ConnectionPhase::Pending, "TargetNotFound")
        );
        let starting = provider(json!([]), false);
        assert_eq!(
            decided_into(&c, Some(&p), Some(&starting), true),
            (ConnectionPhase::Pending, "TargetNotReady")
        );
        let ready = provider(json!([]), true);
        assert_eq!(decided_into(&c, Some(&p), Some(&ready), true).1, "Grant");
    }

    #[test]
    fn past_valid_until_is_expired_and_suspended_is_suspended() {
        let p = provider(vaccinations(), true);
        assert_eq!(
            decided(
                &conn("2026-01-01T00:00:00Z", false, "ReadOnly"),
                Some(&p),
                true
            )
            .0,
            ConnectionPhase::Expired
        );
        assert_eq!(
            decided(
                &conn("2027-01-01T00:00:00Z", true, "ReadOnly"),
                Some(&p),
                true
            )
            .0,
            ConnectionPhase::Suspended
        );
    }

    #[test]
    fn an_expiring_connection_is_rechecked_just_after_its_expiry() {
        let c = conn("2026-11-23T00:00:20Z", false, "ReadOnly");
        let now = at("2026-11-23T00:00:00Z");
        let decision = decide(
            &c,
            &Facts {
                provider: None,
                target: None,
                consumer_namespace_exists: true,
                consumer_refusal: None,
                now: &now,
            },
        );
        assert_eq!(
            next_check(&c, &decision, &Outcome::NotGranted, &now),
            Action::requeue(Duration::from_millis(20_200))
        );
    }

    #[test]
    fn a_revoked_grant_records_when_and_keeps_the_role() {
        let c = conn("2027-01-01T00:00:00Z", false, "ReadOnly");
        let t = |s| at(s);
        let tables = vec![GrantedTable {
            schema: "public".into(),
            table: "v".into(),
            columns: vec!["id".into()],
        }];
        let secret = SecretRef {
            namespace: "so-lao-dong".into(),
            name: "c-credentials".into(),
        };
        let granted = desired_status(
            &c,
            &Decision::Grant(tables.clone()),
            &Outcome::Granted {
                role: "dsc_u1".into(),
                tables,
                delivery: Delivery::Secret(secret),
            },
            &t("2026-11-23T00:00:00Z"),
        );
        assert_eq!(granted.phase, Some(ConnectionPhase::Active));
        assert_eq!(granted.granted_objects, ["public.v(id)"]);
        let mut later = c.clone();
        later.status = Some(granted);
        let gone = deny(
            ConnectionPhase::Denied,
            "DatasetNotDeclared",
            "no longer declared",
        );
        let revoked = desired_status(
            &later,
            &gone,
            &Outcome::NotGranted,
            &t("2026-11-23T01:00:00Z"),
        );
        assert_eq!(revoked.phase, Some(ConnectionPhase::Revoked));
        assert_eq!(revoked.revoked_at, Some(t("2026-11-23T01:00:00Z")));
        assert_eq!(revoked.role.as_deref(), Some("dsc_u1"));
        assert!(revoked.granted_objects.is_empty() && revoked.secret_ref.is_none());
    }

    #[test]
    fn a_subscription_is_ready_only_while_it_streams_and_reports_its_lag() {
        let c = conn("2027-01-01T00:00:00Z", false, "Replicate");
        let tables = vec![GrantedTable {
            schema: "public".into(),
            table: "v".into(),
            columns: vec!["id".into()],
        }];
        let outcome = |streaming| Outcome::Granted {
            role: "dsc_u1".into(),
            tables: tables.clone(),
            delivery: Delivery::Subscription(ReplicationStatus {
                publication: "dsc_u1".into(),
                subscription: "dsc_u1".into(),
                target: "so-lao-dong/w".into(),
                streaming,
                lag_seconds: 3,
            }),
        };
        let now = at("2026-11-23T00:00:00Z");
        let decision = Decision::Grant(tables.clone());
        let starting = desired_status(&c, &decision, &outcome(false), &now);
        assert_eq!(starting.phase, Some(ConnectionPhase::Active));
        assert_eq!(status_of(&starting.conditions, "Ready"), Some("False"));
        assert_eq!(status_of(&starting.conditions, "Granted"), Some("True"));
        assert!(starting.secret_ref.is_none());
        let streaming = desired_status(&c, &decision, &outcome(true), &now);
        assert_eq!(status_of(&streaming.conditions, "Ready"), Some("True"));
        assert_eq!(
            streaming.replication.as_ref().map(|r| r.lag_seconds),
            Some(3)
        );
        assert_eq!(
            next_check(&c, &decision, &outcome(true), &now),
            Action::requeue(Duration::from_millis(30_200))
        );
        assert_eq!(
            next_check(&c, &decision, &outcome(false), &now),
            Action::requeue(Duration::from_millis(2_200))
        );
    }
}
