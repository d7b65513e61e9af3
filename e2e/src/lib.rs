//! Helpers for end-to-end tests against the real cluster the kubeconfig names (`KUBECONFIG`).
//! Every test works in namespaces of its own and removes them; every wait has a deadline.

use std::fmt::Debug;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource, ResourceExt};
use sectordb::api::{Agency, DataSharingConnection, SectorDatabase};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

pub mod backup;
pub mod sharing;

/// The agency code test namespaces are registered with, unless a test names another.
pub const HEALTH_CODE: &str = "000.00.12.H53";
/// The consumer agency of the sharing tests.
pub const LABOUR_CODE: &str = "000.00.20.H53";

/// A SectorDatabase manifest for tests, for the agency `HEALTH_CODE`.
pub fn database(name: &str, level: i32) -> serde_json::Value {
    json!({
        "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
        "metadata": {"name": name},
        "spec": {
            "agency": {"code": HEALTH_CODE, "name": "Department of Health"},
            "sector": "Health", "classification": "Shared", "securityLevel": level,
            "storage": {"size": "64Mi"}, "database": {"name": "health", "owner": "app"},
            "deletionPolicy": "Delete"
        }
    })
}

/// The Ready condition's status, reason and message.
pub fn ready_reason(db: Option<&SectorDatabase>) -> Option<(String, String, String)> {
    let status = db?.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Whether the status describes the current generation.
pub fn observed_current(db: Option<&SectorDatabase>) -> bool {
    db.and_then(|db| Some(db.status.as_ref()?.observed_generation == db.metadata.generation))
        .unwrap_or(false)
}

/// Whether the database reports Ready=True for its current generation.
pub fn is_ready(db: Option<&SectorDatabase>) -> bool {
    observed_current(db) && ready_reason(db).is_some_and(|r| r.0 == "True")
}

/// Where the chart installs the operator.
pub const OPERATOR_NAMESPACE: &str = "sectordb-system";
pub const OPERATOR_NAME: &str = "sectordb-operator";

/// A client for the cluster under test, with the one rustls crypto provider installed.
pub async fn client() -> Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .context("no cluster: set KUBECONFIG (scripts/test does)")
}

/// Waits until `condition` holds for the named object (`None`: it does not exist), or fails
/// after `timeout`. Returns the object as it was when the condition held.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    condition: impl Fn(Option<&K>) -> bool,
) -> Result<Option<K>>
where
    K: Resource + Clone + Debug + DeserializeOwned + Serialize + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(found) => Ok(found?),
        Err(_) => {
            // The status it ended with says why, where the condition alone cannot.
            let last = api.get_opt(name).await.ok().flatten();
            let status = last
                .and_then(|o| serde_json::to_value(o).ok())
                .map(|v| v["status"].to_string())
                .unwrap_or_else(|| "the object is gone".into());
            Err(anyhow!(
                "timed out after {timeout:?} waiting for {name}: {what}; its status: {status}"
            ))
        }
    }
}

/// Polls `probe` until it returns `Some`, or fails after `timeout`; for state that has no watch.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first Event in `namespace` that `matches`, waiting at most `timeout` for one.
pub async fn event_where(
    client: &Client,
    namespace: &str,
    timeout: Duration,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Result<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    poll(timeout, what, || async {
        let listed = events.list(&ListParams::default()).await.ok()?;
        listed.items.into_iter().find(|e| matches(e))
    })
    .await
}

/// GET through the apiserver's service proxy, e.g. the operator's `/metrics`.
pub async fn proxy_get(
    client: &Client,
    namespace: &str,
    target: &str,
    path: &str,
) -> Result<String> {
    let uri = format!("/api/v1/namespaces/{namespace}/{target}/proxy{path}");
    let request = http::Request::get(uri).body(Vec::new())?;
    Ok(client.request_text(request).await?)
}

/// Registers (or re-registers) the Agency `name` with `code`, owning `namespaces`, with
/// `approved_levels` as `spec.approvedLevels`.
pub async fn register(
    client: &Client,
    name: &str,
    code: &str,
    namespaces: &[&str],
    approved_levels: serde_json::Value,
) -> Result<Agency> {
    let agency: Agency = serde_json::from_value(json!({
        "apiVersion": "sectordb.io/v1alpha1", "kind": "Agency",
        "metadata": {"name": name, "labels": {"sectordb.io/e2e": "true"}},
        "spec": {"code": code, "name": format!("Test agency {name}"), "namespaces": namespaces,
                 "approvedLevels": approved_levels}
    }))?;
    Ok(Api::<Agency>::all(client.clone())
        .patch(
            name,
            &kube::api::PatchParams::apply("sectordb-e2e").force(),
            &kube::api::Patch::Apply(&agency),
        )
        .await?)
}

/// A namespace that exists for one test, registered to an Agency of the same name.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    created: std::time::Instant,
}

impl TestNamespace {
    /// A namespace of the agency `HEALTH_CODE`.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        Self::create_for(client, prefix, HEALTH_CODE).await
    }

    /// A namespace, and the Agency `code` that owns it (no approved levels: any level).
    pub async fn create_for(client: &Client, prefix: &str, code: &str) -> Result<Self> {
        let suffix = jiff::Timestamp::now().as_millisecond() % 1_000_000;
        let name = format!("e2e-{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"sectordb.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        register(client, &name, code, &[&name], json!({})).await?;
        Ok(TestNamespace {
            name,
            client: client.clone(),
            created: std::time::Instant::now(),
        })
    }

    /// Deletes the namespace: its connections and databases first, waiting until the operator's
    /// finalizers let them go (a cleanup that hangs fails the test). The namespace itself goes
    /// in the background: the 1.20 namespace controller backs off exponentially while pods
    /// terminate, and can take minutes after its content is gone.
    pub async fn delete(self) -> Result<()> {
        self.delete_all::<DataSharingConnection>().await?;
        self.delete_all::<SectorDatabase>().await?;
        Api::<Agency>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        record_time(&self.name, self.created.elapsed())
    }

    /// Deletes every `K` in the namespace and waits until their finalizers let them go; if they
    /// do not, says what holds them.
    async fn delete_all<K>(&self) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        let api = Api::<K>::namespaced(self.client.clone(), &self.name);
        let everything = ListParams::default();
        api.delete_collection(&DeleteParams::default(), &everything)
            .await?;
        let kind = K::kind(&());
        let gone = poll(
            Duration::from_secs(300),
            &format!("every {kind} in {} deleted", self.name),
            || async {
                api.list(&everything)
                    .await
                    .ok()?
                    .items
                    .is_empty()
                    .then_some(())
            },
        )
        .await;
        let Err(error) = gone else { return Ok(()) };
        let held: Vec<String> = api
            .list(&everything)
            .await
            .map(|l| {
                l.iter()
                    .map(|o| format!("{} finalizers {:?}", o.name_any(), o.finalizers()))
                    .collect()
            })
            .unwrap_or_default();
        Err(error.context(format!(
            "{kind}s still in {}: {held:?}; warnings: {:?}",
            self.name,
            self.warnings().await
        )))
    }

    /// The Warning Events the namespace has seen.
    async fn warnings(&self) -> Vec<String> {
        Api::<Event>::namespaced(self.client.clone(), &self.name)
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.iter()
                    .filter(|e| e.type_.as_deref() == Some("Warning"))
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.reason.as_deref().unwrap_or(""),
                            e.note.as_deref().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Appends `seconds<TAB>test<TAB>namespace` to the file `SECTORDB_E2E_TIMES` names, if any,
/// so the suite can say which tests its time went to (libtest reports no test's duration).
/// The test is the libtest thread's name; one short append per line keeps the lines of tests
/// running side by side whole.
fn record_time(namespace: &str, took: Duration) -> Result<()> {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("SECTORDB_E2E_TIMES") else {
        return Ok(());
    };
    let thread = std::thread::current();
    let line = format!(
        "{}\t{}\t{namespace}\n",
        took.as_secs(),
        thread.name().unwrap_or("?")
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .with_context(|| format!("recording the test's time in {}", path.display()))
}

/// The value of the operator's metric `name` in the series whose labels include `label` (e.g.
/// `namespace="e2e-x"`).
pub async fn metric(client: &Client, name: &str, label: &str) -> Result<String> {
    let metrics = operator_metrics(client).await?;
    let series = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .with_context(|| format!("no {name} series with {label}"))?;
    Ok(series.rsplit(' ').next().unwrap_or_default().to_string())
}

/// What the operator's metrics Service serves (`/metrics`).
pub async fn operator_metrics(client: &Client) -> Result<String> {
    proxy_get(
        client,
        OPERATOR_NAMESPACE,
        "services/sectordb-operator-metrics:http-metrics",
        "/metrics",
    )
    .await
}

/// A value of a Secret as text.
pub fn secret_text(secret: &Secret, key: &str) -> Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("no {key} in the Secret"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

/// A TLS session as the app Secret describes it, verified against the Secret's CA.
pub async fn connect_with(secret: &Secret) -> Result<tokio_postgres::Client> {
    let password = secret_text(secret, "password")?;
    let (user, dbname) = (secret_text(secret, "user")?, secret_text(secret, "dbname")?);
    connect_as(
        secret,
        &user,
        sectordb::sql::Login::Password(&password),
        &dbname,
    )
    .await
}

/// A session to the server `secret` names (host, address, port, CA) as `user`.
pub async fn connect_as(
    secret: &Secret,
    user: &str,
    login: sectordb::sql::Login<'_>,
    dbname: &str,
) -> Result<tokio_postgres::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (host, addr, ca) = (
        secret_text(secret, "host")?,
        secret_text(secret, "hostaddr")?,
        secret_text(secret, "ca.crt")?,
    );
    let target = sectordb::sql::Target {
        host: &host,
        addr: addr.parse::<IpAddr>()?,
        port: secret_text(secret, "port")?.parse()?,
        user,
        login,
        ca_pem: &ca,
    };
    Ok(sectordb::sql::connect(&target, dbname).await?)
}

/// The PostgreSQL superuser of one SectorDatabase, as the operator logs in: with the operator's
/// client certificate from its namespace (no superuser password exists anywhere).
pub struct Superuser {
    app: Secret,
    identity: sectordb::pki::CertifiedKey,
}

impl Superuser {
    pub async fn of(client: &Client, namespace: &str, db: &str) -> Result<Superuser> {
        let app = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&format!("{db}-app"))
            .await?;
        let certificate = Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .get("sectordb-superuser")
            .await?;
        let identity = sectordb::pki::CertifiedKey {
            cert_pem: secret_text(&certificate, "tls.crt")?,
            key_pem: secret_text(&certificate, "tls.key")?,
        };
        Ok(Superuser { app, identity })
    }

    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let login = sectordb::sql::Login::Certificate(&self.identity);
        connect_as(&self.app, "postgres", login, dbname).await
    }
}

/// The certificate a PostgreSQL server at `addr` presents in its TLS handshake, as PEM (from
/// `openssl s_client`, so what a client sees, not what a Secret says).
pub fn served_certificate(addr: &str) -> Result<String> {
    let output = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "openssl s_client -starttls postgres -connect {addr}:5432 </dev/null 2>/dev/null | openssl x509"
            ),
        ])
        .output()?;
    Ok(String::from_utf8(output.stdout)?)
}

/// The operator process's peak resident memory so far (`VmHWM`, in bytes), read from `/proc`
/// on this node, where the local cluster runs its containers.
pub fn operator_peak_memory() -> Result<u64> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let dir = entry?.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() > 1 && args[0].ends_with(b"sectordb-operator") && args[1] == b"run" {
            let status = std::fs::read_to_string(dir.join("status"))?;
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .context("no VmHWM")?;
            found.push(kib * 1024);
        }
    }
    match found[..] {
        [bytes] => Ok(bytes),
        _ => Err(anyhow!("{} operator processes on this node", found.len())),
    }
}

/// The operator pod that is not being deleted.
pub async fn operator_pod(client: &Client) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=sectordb-operator"))
        .await?;
    list.items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .context("no operator pod")
}

/// How many times the containers of `pod` have restarted, together.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

/// What the operator pod's /readyz answers.
pub async fn operator_ready(client: &Client) -> Result<String> {
    let pod = operator_pod(client).await?;
    let readyz = proxy_get(
        client,
        OPERATOR_NAMESPACE,
        &format!("pods/{}:8080", pod.name_any()),
        "/readyz",
    )
    .await?;
    Ok(readyz)
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a one-shot pod printed, and whether it succeeded.
pub struct PodRun {
    pub succeeded: bool,
    pub logs: String,
}

/// Runs `script` with `sh -c` in a throwaway pod of `namespace` (the PostgreSQL image, as the
/// postgres user), with the Secret `secret`, if any, mounted at /s; waits until it ends and
/// deletes it. As an agency's own workload would run: no privileges, the cluster's network.
pub async fn run_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    secret: Option<&str>,
    script: &str,
) -> Result<PodRun> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 100, "runAsNonRoot": true},
            "containers": [{
                "name": "run", "image": "local/sectordb-postgres:15", "imagePullPolicy": "Never",
                "command": ["sh", "-c", script]
            }]
        }
    });
    if let Some(secret) = secret {
        pod["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": "s", "mountPath": "/s", "readOnly": true}]);
        pod["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": secret}}]);
    }
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
        .await?;
    let done = wait_for(
        &pods,
        name,
        Duration::from_secs(120),
        &format!("pod {name} finished"),
        |p| {
            p.and_then(|p| p.status.as_ref()?.phase.clone())
                .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
        },
    )
    .await?
    .with_context(|| format!("pod {name} vanished"))?;
    let logs = pods.logs(name, &Default::default()).await?;
    pods.delete(name, &DeleteParams::default()).await?;
    Ok(PodRun {
        succeeded: done.status.and_then(|s| s.phase).as_deref() == Some("Succeeded"),
        logs,
    })
}

/// A libpq connection string from the credentials Secret mounted at /s, for `sh -c`: by the
/// Service's DNS name alone, or with the address the Secret also holds (clusters without DNS).
pub fn libpq_from_secret(with_hostaddr: bool) -> String {
    let hostaddr = if with_hostaddr {
        " hostaddr=$(cat /s/hostaddr)"
    } else {
        ""
    };
    format!(
        "host=$(cat /s/host){hostaddr} port=$(cat /s/port) dbname=$(cat /s/dbname) user=$(cat /s/user) password=$(cat /s/password) sslmode=verify-full sslrootcert=/s/ca.crt"
    )
}

/// Runs the test cluster's harness, `e2e/cluster ARGS...`, and returns what it printed.
pub fn harness(args: &[&str]) -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster");
    let out = std::process::Command::new(path).args(args).output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "e2e/cluster {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8(out.stdout)?)
}
