//! The four controllers and what they share: their names, the context, the error type, status
//! writes and Events.

pub mod agency;
pub mod backup_records;
pub mod backups;
pub mod ca;
pub mod connection;
pub mod database;
pub mod drills;
pub mod policy;
pub mod restore;
pub mod selection;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::core::{DeserializeGuard, object::HasStatus};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::conditions::{Want, settle};
use crate::metrics::Metrics;
use crate::profile::SecurityProfile;

/// Each controller's name: its field manager, the reporter of its Events and its metric label.
/// Kept here rather than in each controller because the database controller's steps (backups,
/// drills, restores) live in files of their own and name it too.
pub mod names {
    pub const AGENCY: &str = "agency";
    pub const CONNECTION: &str = "connection";
    pub const DATABASE: &str = "database";
    pub const POLICY: &str = "policy";
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub profile: SecurityProfile,
    /// The operator's own namespace: its CA Secret and Lease live there.
    pub namespace: String,
    pub postgres_image: String,
    pub postgres_image_pull_policy: String,
    /// Address ranges the platform lets reach every database (NetworkPolicy ipBlocks).
    pub trusted_ingress_cidrs: Vec<String>,
    /// Where PodDisruptionBudgets are served (policy/v1, or policy/v1beta1 before 1.21); `None`
    /// when the cluster serves neither.
    pub disruption_budget_api: Option<kube::api::ApiResource>,
    /// The operator's CA, when it was last read and `ca_changes` as it was then.
    pub ca: tokio::sync::Mutex<Option<(std::sync::Arc<ca::Authority>, std::time::Instant, u64)>>,
    /// Counts the changes the watch saw to the CA Secret: a cached CA older than the last one is
    /// read again at once, not a minute later.
    pub ca_changes: std::sync::atomic::AtomicU64,
    /// The superuser's client certificate and the CA that signed it; renewed when due.
    pub superuser: tokio::sync::Mutex<Option<(crate::pki::Leaf, String)>>,
    /// When each mirror (by policy UID and repository) last had a pass that went through: the
    /// mirror's lag runs from it, and it spaces the passes.
    pub mirror_passes: std::sync::Mutex<
        std::collections::HashMap<String, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    >,
    /// The mirror passes running now, each in its own task.
    pub mirror_runs: crate::backup::mirror::Passes,
    /// The namespaces' labels, from the database controller's watch of namespaces.
    pub namespace_labels: selection::NamespaceLabels,
    /// Per database (by UID), what each run of its servers (pod UID and container start) was
    /// last found serving: the certificate and trust bundle's fingerprints, so an unchanged
    /// instance is not dialled again on every reconcile.
    pub installed: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::HashMap<String, String>>,
    >,
    /// The children as the operator last wrote or checked them (see `apply`).
    pub checked: crate::apply::Checked,
    /// Failed reconciles in a row, per object (see `error_policy`).
    pub failures: Failures,
}

impl Context {
    /// What the database pods are built with.
    pub fn settings(&self) -> crate::dataplane::Settings<'_> {
        crate::dataplane::Settings {
            image: &self.postgres_image,
            image_pull_policy: &self.postgres_image_pull_policy,
            operator_namespace: &self.namespace,
            trusted_ingress_cidrs: &self.trusted_ingress_cidrs,
        }
    }
}

/// Why a reconcile failed. Invalid specs are not errors: they are reported in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Certificate(#[from] crate::pki::Error),
    #[error("a Secret of the operator's is malformed: {0}")]
    MalformedSecret(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("PostgreSQL: {0}")]
    Sql(String),
    #[error("backup: {0}")]
    Backup(String),
    /// A child's name is held by an object the operator did not create for this owner.
    #[error("{0}")]
    NameTaken(String),
}

impl From<crate::apply::Error> for Error {
    fn from(error: crate::apply::Error) -> Self {
        match error {
            crate::apply::Error::Kube(e) => Error::Kube(e),
            taken @ crate::apply::Error::Taken { .. } => Error::NameTaken(taken.to_string()),
        }
    }
}

impl Error {
    /// Low-cardinality label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "ApiError",
            Error::Certificate(_) | Error::MalformedSecret(_) => "CertificateError",
            Error::Finalizer(_) => "FinalizerError",
            Error::Sql(_) => "SqlError",
            Error::Backup(_) => "BackupError",
            Error::NameTaken(_) => "NameConflict",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The shared first steps of a namespaced controller's reconcile: decode the object (reporting
/// one that does not decode as InvalidSpec, with `undecodable_phase`), then run `apply`, or
/// `cleanup` once the object is being deleted, under the controller's finalizer.
pub async fn reconcile_namespaced<K, A, AF, C, CF>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
    controller: &'static str,
    finalizer_name: &str,
    undecodable_phase: &str,
    apply: A,
    cleanup: C,
) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Action>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<Action>>,
{
    let _timer = ctx.metrics.reconcile(controller);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &guard.namespace().unwrap_or_default());
    let obj = match &guard.0 {
        Ok(obj) => Arc::new(obj.clone()),
        Err(invalid) => {
            return report_undecodable(&ctx, controller, &api, invalid, Some(undecodable_phase))
                .await;
        }
    };
    finalizer(&api, finalizer_name, obj, |step| async move {
        match step {
            Finalizer::Apply(obj) => apply(obj, ctx).await,
            Finalizer::Cleanup(obj) => cleanup(obj, ctx).await,
        }
    })
    .await
    .map_err(from_finalizer)
}

/// The controller's own error out of `kube::runtime::finalizer`'s wrapper.
fn from_finalizer(error: kube::runtime::finalizer::Error<Error>) -> Error {
    match error {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

/// The platform authority's Agency register. An entry that does not decode registers nothing,
/// so it cannot stop every database's reconcile.
pub async fn agencies(ctx: &Context) -> Result<Vec<crate::api::Agency>> {
    let api: Api<DeserializeGuard<crate::api::Agency>> = Api::all(ctx.client.clone());
    let listed = api.list(&kube::api::ListParams::default()).await?;
    Ok(listed.items.into_iter().filter_map(|a| a.0.ok()).collect())
}

/// A Secret's value as text; `None` when the Secret, the key or valid UTF-8 is missing.
pub fn secret_value(
    secret: Option<&k8s_openapi::api::core::v1::Secret>,
    key: &str,
) -> Option<String> {
    let bytes = secret?.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The server-side apply field manager of a controller.
pub fn field_manager(controller: &str) -> String {
    format!("sectordb/{controller}")
}

/// Consecutive failed reconciles per object, by controller and object: each retry waits longer,
/// and a success starts again from the first delay.
#[derive(Default)]
pub struct Failures(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl Failures {
    fn key<K: Resource>(controller: &str, obj: &K) -> String {
        let namespace = obj.namespace().unwrap_or_default();
        format!("{controller}/{namespace}/{}", obj.name_any())
    }

    /// Counts one more failure of `obj`; returns how many in a row.
    fn failed<K: Resource>(&self, controller: &str, obj: &K) -> u32 {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(Self::key(controller, obj)).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn succeeded<K: Resource>(&self, controller: &str, obj: &K) {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&Self::key(controller, obj));
    }
}

/// How long to wait after the `failures`-th failure in a row: 5 s, doubling, at most 5 min.
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 << doublings).min(Duration::from_secs(300))
}

/// A reconcile as the controller runs it.
type Reconciled = std::pin::Pin<Box<dyn Future<Output = Result<Action>> + Send>>;

/// Wraps a controller's reconcile so that a success clears the object's failure count.
pub fn counting_failures<K, F, Fut>(
    controller: &'static str,
    reconcile: F,
) -> impl Fn(Arc<DeserializeGuard<K>>, Arc<Context>) -> Reconciled
where
    K: Resource + Send + Sync + 'static,
    F: Fn(Arc<DeserializeGuard<K>>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    move |obj, ctx| {
        let reconciled = reconcile(obj.clone(), ctx.clone());
        Box::pin(async move {
            let result = reconciled.await;
            if result.is_ok() {
                ctx.failures.succeeded(controller, &*obj);
            }
            result
        })
    }
}

/// Retries a failed reconcile after a delay that grows with the object's failures in a row
/// (`retry_after`), and tells the object's owner why in a Warning Event (the Recorder folds
/// repeats of the same message into one Event's series).
pub fn error_policy<K>(
    controller: &'static str,
) -> impl Fn(Arc<DeserializeGuard<K>>, &Error, Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    move |obj, error, ctx| {
        ctx.metrics.failure(controller, error.category());
        let failures = ctx.failures.failed(controller, &*obj);
        let delay = retry_after(failures);
        tracing::warn!(controller, category = error.category(), %error, failures, retry_in_s = delay.as_secs(), "reconcile failed; retrying");
        let note = format!(
            "reconcile failed ({failures} in a row, next try in {} s): {error}",
            delay.as_secs()
        );
        let reason = error.category();
        tokio::spawn(async move { event(&ctx, &*obj, true, reason, note).await });
        Action::requeue(delay)
    }
}

/// The current instant at the precision metav1.Time keeps (whole seconds), so a status built now
/// compares equal to the same status read back from the apiserver.
pub fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Writes `status` with server-side apply unless the object already has exactly that status, so
/// a no-op reconcile makes no write.
pub async fn write_status<K>(
    ctx: &Context,
    controller: &'static str,
    api: &Api<K>,
    obj: &K,
    status: &K::Status,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + HasStatus + Clone + DeserializeOwned + Debug,
    K::Status: Serialize + PartialEq,
{
    if obj.status() == Some(status) {
        return Ok(());
    }
    let body = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(&field_manager(controller)).force(),
        &Patch::Apply(body),
    )
    .await?;
    ctx.metrics.write(controller, "status");
    Ok(())
}

/// Applies a child object (skipped when unchanged, see `apply`) and counts the write.
pub async fn apply_child<K>(
    ctx: &Context,
    controller: &'static str,
    api: &Api<K>,
    desired: K,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let (live, wrote) =
        crate::apply::apply(api, &field_manager(controller), &ctx.checked, desired).await?;
    if wrote {
        ctx.metrics.write(controller, &K::kind(&()));
    }
    Ok(live)
}

/// Publishes an Event about `obj`. Events are best effort: a failure (a namespace being deleted
/// refuses new Events) is logged and never fails the reconcile, so cleanup still completes.
pub async fn event<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    warning: bool,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(truncate(&note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(reason, %error, "publishing an Event failed");
    }
}

/// Publishes an Event about `obj` when its Ready condition changes reason, so a steady state
/// emits nothing.
pub async fn announce<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    previous: &[Condition],
    ready: &Condition,
) {
    let before = previous.iter().find(|c| c.type_ == ready.type_);
    if before.is_some_and(|c| c.reason == ready.reason && c.status == ready.status) {
        return;
    }
    let warning = !(ready.status == "True" || NORMAL_REASONS.contains(&ready.reason.as_str()));
    event(ctx, obj, warning, &ready.reason, ready.message.clone()).await
}

/// Ready=False reasons that are steps of normal progress, not problems.
const NORMAL_REASONS: &[&str] = &["Provisioning", "ProviderNotReady", "Pending"];

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// An object whose stored form does not decode (a bad enum value, a wrong type) is reported
/// as `Ready=False, reason=InvalidSpec`: the operator neither panics on it nor stops watching
/// its kind.
pub async fn report_undecodable<K>(
    ctx: &Context,
    controller: &'static str,
    api: &Api<K>,
    invalid: &kube::core::error_boundary::InvalidObject,
    phase: Option<&str>,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let generation = invalid.metadata.generation;
    let message = format!(
        "the object does not match the sectordb.io/v1alpha1 API: {}",
        invalid.error
    );
    let ready = settle(
        vec![Want::new("Ready", false, "InvalidSpec", message.clone())],
        &[],
        generation,
        &now(),
    );
    let mut status = json!({"observedGeneration": generation, "conditions": ready});
    if let Some(phase) = phase {
        status["phase"] = json!(phase);
    }
    let body = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    tracing::warn!(controller, object = %name, namespace = ?invalid.metadata.namespace, %message, "undecodable object");
    api.patch_status(
        &name,
        &PatchParams::apply(&field_manager(controller)).force(),
        &Patch::Apply(body),
    )
    .await?;
    ctx.metrics.write(controller, "status");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn retries_back_off_per_object_and_a_success_starts_again() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_after(u32::MAX), Duration::from_secs(300));

        let object = |name: &str| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("n".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let failures = Failures::default();
        assert_eq!(failures.failed("database", &object("a")), 1);
        assert_eq!(failures.failed("database", &object("a")), 2);
        assert_eq!(
            failures.failed("database", &object("b")),
            1,
            "another object"
        );
        assert_eq!(
            failures.failed("policy", &object("a")),
            1,
            "another controller"
        );
        failures.succeeded("database", &object("a"));
        assert_eq!(failures.failed("database", &object("a")), 1);
    }
}
