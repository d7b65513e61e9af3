//! The Kubernetes objects behind a SectorDatabase, built from its spec. Pure: no client here,
//! so every builder is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::SectorDatabase;
use crate::backup::pgbackrest::{self as backup, RESTORE_DIR};
use crate::pgconf::{self, CONFIG_DIR, PORT, REPLICATION_USER, SOCKET_DIR, TLS_DIR};

/// uid and gid of `postgres` in the project's PostgreSQL image (Debian's package assigns them).
pub const POSTGRES_UID: i64 = 100;
pub const POSTGRES_GID: i64 = 102;
pub const DATA_DIR: &str = "/var/lib/postgresql/data";
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Pod label the operator keeps on each instance: `primary` (ordinal 0) or `replica`.
pub const ROLE_LABEL: &str = "sectordb.io/role";

/// Names of everything a database owns.
pub struct Names {
    pub statefulset: String,
    pub headless: String,
    pub read_write: String,
    pub read_only: String,
    pub config: String,
    pub server_tls: String,
    pub ca: String,
    pub app: String,
    pub replication: String,
    pub disruption_budget: String,
    /// pgBackRest's configuration, while a BackupPolicy covers the database.
    pub backup: String,
    /// The source's repository, for a database that starts from a backup.
    pub restore: String,
    /// The restore drill's scratch pod, and the ConfigMap of row counts it checks against.
    pub drill: String,
}

pub fn names(db: &str) -> Names {
    Names {
        statefulset: db.to_string(),
        headless: format!("{db}-hl"),
        read_write: format!("{db}-rw"),
        read_only: format!("{db}-ro"),
        config: format!("{db}-config"),
        server_tls: format!("{db}-server-tls"),
        ca: format!("{db}-ca"),
        app: format!("{db}-app"),
        replication: format!("{db}-replication"),
        disruption_budget: format!("{db}-primary"),
        backup: format!("{db}-backup"),
        restore: format!("{db}-restore"),
        drill: format!("{db}-drill"),
    }
}

/// Whether `pvc` is the name the StatefulSet gives an instance's volume (`data-<db>-<ordinal>`).
/// Volumes carry no owner reference (they outlive the database on purpose), so deletion checks
/// the name as well as the labels: a label alone would let any claim in the namespace be taken.
pub fn is_volume_of(db: &str, pvc: &str) -> bool {
    pvc.strip_prefix("data-")
        .and_then(|rest| rest.strip_prefix(db))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
}

/// What the builders need beyond the spec.
pub struct Settings<'a> {
    pub image: &'a str,
    pub image_pull_policy: &'a str,
    pub operator_namespace: &'a str,
    /// Ranges the platform lets reach every database besides the agency and the operator.
    pub trusted_ingress_cidrs: &'a [String],
}

/// Labels that select a database's pods.
pub fn selector_labels(db: &SectorDatabase) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sectordb-postgres".into()),
        ("app.kubernetes.io/instance".into(), db.name_any()),
    ])
}

/// Labels every child carries.
pub fn labels(db: &SectorDatabase) -> BTreeMap<String, String> {
    let mut labels = selector_labels(db);
    labels.insert("app.kubernetes.io/component".into(), "database".into());
    labels.insert("app.kubernetes.io/part-of".into(), "sectordb".into());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "sectordb-operator".into(),
    );
    labels.insert(
        "sectordb.io/agency-code".into(),
        db.spec.agency.code.clone(),
    );
    labels
}

fn owner(db: &SectorDatabase) -> OwnerReference {
    db.controller_owner_ref(&())
        .expect("a stored SectorDatabase has a name and uid")
}

fn metadata(db: &SectorDatabase, name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "namespace": db.namespace(),
        "labels": labels(db),
        "ownerReferences": [owner(db)],
    })
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("builders produce valid Kubernetes objects")
}

/// The ConfigMap with postgresql.conf and pg_hba.conf.
pub fn config_map(db: &SectorDatabase) -> ConfigMap {
    from_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(db, &names(&db.name_any()).config),
        "data": {
            "postgresql.conf": pgconf::postgresql_conf(&db.spec),
            "pg_hba.conf": pgconf::pg_hba_conf(&db.spec),
        }
    }))
}

/// A short, stable digest of the configuration files: in the pod template it makes the
/// StatefulSet restart PostgreSQL exactly when a file changed.
pub fn config_hash(config: &ConfigMap) -> String {
    crate::digest::of(&[&serde_json::to_string(&config.data).unwrap_or_default()])
}

/// Labels that select the primary's pod.
fn primary_selector(db: &SectorDatabase) -> BTreeMap<String, String> {
    let mut labels = selector_labels(db);
    labels.insert(
        "statefulset.kubernetes.io/pod-name".into(),
        format!("{}-0", names(&db.name_any()).statefulset),
    );
    labels
}

/// The role an instance has: ordinal 0 is the primary, the others stream from it. Failover is not
/// implemented, so the role follows the ordinal.
pub fn role_of(pod_name: &str) -> &'static str {
    match pod_name.rsplit_once('-') {
        Some((_, "0")) => "primary",
        _ => "replica",
    }
}

/// The read-write Service (the primary), the read-only Service (the streaming replicas) and the
/// headless Service the StatefulSet needs.
pub fn services(db: &SectorDatabase) -> Vec<Service> {
    let n = names(&db.name_any());
    let primary = primary_selector(db);
    let mut replicas = selector_labels(db);
    replicas.insert(ROLE_LABEL.into(), "replica".into());
    let port = json!([{"name": "postgres", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]);
    vec![
        from_json(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata(db, &n.read_write),
            "spec": {"type": "ClusterIP", "selector": primary, "ports": port}
        })),
        from_json(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata(db, &n.read_only),
            "spec": {"type": "ClusterIP", "selector": replicas, "ports": port}
        })),
        from_json(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": metadata(db, &n.headless),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": selector_labels(db), "ports": port}
        })),
    ]
}

fn push(list: &mut serde_json::Value, item: serde_json::Value) {
    if let Some(items) = list.as_array_mut() {
        items.push(item);
    }
}

/// PostgreSQL's container runs as its own uid, unprivileged, on a read-only root filesystem.
fn postgres_security_context() -> serde_json::Value {
    json!({
        "runAsUser": POSTGRES_UID, "runAsGroup": POSTGRES_GID, "runAsNonRoot": true,
        "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}
    })
}

/// The StatefulSet running PostgreSQL. An init container running as root makes the volume and
/// the TLS files PostgreSQL's (hostPath volumes ignore fsGroup); PostgreSQL itself runs as its own
/// uid with a read-only root filesystem. Ordinal 0 initialises the primary; every other ordinal
/// clones it with pg_basebackup over verified TLS and streams from `primary_addr` (the read-write
/// ClusterIP: the local cluster has no DNS, and the server certificate names that address).
pub fn stateful_set(
    db: &SectorDatabase,
    settings: &Settings,
    config_hash: &str,
    primary_addr: &str,
) -> StatefulSet {
    let n = names(&db.name_any());
    let prepare = format!(
        "set -eu\n\
         chown {POSTGRES_UID}:{POSTGRES_GID} {DATA_DIR} && chmod 0700 {DATA_DIR}\n\
         install -o {POSTGRES_UID} -g {POSTGRES_GID} -m 0600 /secrets/tls/tls.key {TLS_DIR}/tls.key\n\
         install -o {POSTGRES_UID} -g {POSTGRES_GID} -m 0644 /secrets/tls/tls.crt {TLS_DIR}/tls.crt\n\
         install -o {POSTGRES_UID} -g {POSTGRES_GID} -m 0644 /secrets/tls/ca.crt {TLS_DIR}/ca.crt\n"
    );
    let start = format!(
        "set -eu\n\
         export PGDATA={PGDATA}\n\
         if [ \"${{POD_NAME##*-}}\" = 0 ]; then\n\
           if [ ! -s \"$PGDATA/PG_VERSION\" ] || [ -e {DATA_DIR}/restore-incomplete ]; then\n\
             if [ -n \"${{RESTORE:-}}\" ]; then\n\
               touch {DATA_DIR}/restore-incomplete\n\
               rm -rf \"$PGDATA\" && mkdir -m 0700 \"$PGDATA\"\n\
               set --\n\
               if [ -s {RESTORE_DIR}/target-time ]; then\n\
                 set -- --type=time --target=\"$(cat {RESTORE_DIR}/target-time)\" --target-action=promote\n\
               fi\n\
               pgbackrest --config={RESTORE_DIR}/pgbackrest.conf --stanza=\"$(cat {RESTORE_DIR}/stanza)\" \\\n\
                 \"$@\" restore\n\
               # The source's archive_command names its stanza: never archive this database there.\n\
               sed -i '/^archive_command/d' \"$PGDATA/postgresql.auto.conf\"\n\
               rm {DATA_DIR}/restore-incomplete\n\
             else\n\
               initdb --username=postgres --auth-local=peer --auth-host=reject \\\n\
                 --encoding=UTF8 --locale=C.UTF-8 -D \"$PGDATA\"\n\
             fi\n\
           fi\n\
           exec postgres -D \"$PGDATA\" -c config_file={CONFIG_DIR}/postgresql.conf\n\
         fi\n\
         printf '*:*:*:{REPLICATION_USER}:%s\\n' \"$(cat /secrets/replication/password)\" >/tmp/pgpass\n\
         chmod 0600 /tmp/pgpass\n\
         primary=\"host=$PRIMARY_ADDR port={PORT} user={REPLICATION_USER} passfile=/tmp/pgpass \\\n\
           sslmode=verify-full sslrootcert={TLS_DIR}/ca.crt application_name=$POD_NAME\"\n\
         if [ ! -s \"$PGDATA/PG_VERSION\" ]; then\n\
           rm -rf \"$PGDATA.clone\"\n\
           until pg_basebackup -d \"$primary\" -D \"$PGDATA.clone\" -X stream -c fast; do\n\
             rm -rf \"$PGDATA.clone\"; sleep 2\n\
           done\n\
           mv \"$PGDATA.clone\" \"$PGDATA\"\n\
         fi\n\
         touch \"$PGDATA/standby.signal\"\n\
         exec postgres -D \"$PGDATA\" -c config_file={CONFIG_DIR}/postgresql.conf \\\n\
           -c primary_conninfo=\"$primary\"\n"
    );
    let probe = |period: i32, failures: i32| {
        json!({
            "exec": {"command": ["pg_isready", "-q", "-h", SOCKET_DIR, "-p", PORT.to_string()]},
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 5
        })
    };
    let mut pod_labels = labels(db);
    pod_labels.remove("app.kubernetes.io/managed-by");
    let resources = db
        .spec
        .resources
        .clone()
        .map(|r| serde_json::to_value(r).unwrap_or_default());
    let storage = json!({"requests": {"storage": db.spec.storage.size}});
    let mut claim_spec = json!({"accessModes": ["ReadWriteOnce"], "resources": storage});
    if let Some(class) = &db.spec.storage.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    let mut value = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(db, &n.statefulset),
        "spec": {
            "replicas": db.spec.instances,
            "serviceName": n.headless,
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": selector_labels(db)},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {"sectordb.io/config-hash": config_hash}},
                "spec": {
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "initContainers": [{
                        "name": "prepare",
                        "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                        "command": ["sh", "-c", prepare],
                        "securityContext": {
                            "runAsUser": 0, "runAsNonRoot": false, "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER", "DAC_OVERRIDE"]}
                        },
                        "volumeMounts": [
                            {"name": "data", "mountPath": DATA_DIR},
                            {"name": "tls", "mountPath": TLS_DIR},
                            {"name": "server-tls", "mountPath": "/secrets/tls", "readOnly": true}
                        ]
                    }],
                    "containers": [{
                        "name": "postgres",
                        "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                        // tini reaps what pgBackRest's asynchronous archiver leaves behind; as
                        // PID 1, PostgreSQL would take its failure for a crashed backend.
                        "command": ["tini", "--", "sh", "-c", start],
                        "env": [
                            {"name": "PRIMARY_ADDR", "value": primary_addr},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                        ],
                        "ports": [{"name": "postgres", "containerPort": PORT, "protocol": "TCP"}],
                        "securityContext": postgres_security_context(),
                        "startupProbe": probe(1, 300),
                        "readinessProbe": probe(2, 3),
                        "livenessProbe": probe(10, 6),
                        "resources": resources,
                        "volumeMounts": [
                            {"name": "data", "mountPath": DATA_DIR},
                            // Writable: the operator installs a renewed certificate here and
                            // reloads, so renewal restarts nothing.
                            {"name": "tls", "mountPath": TLS_DIR},
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
                            {"name": "replication", "mountPath": "/secrets/replication", "readOnly": true},
                            {"name": "backup", "mountPath": backup::CONFIG_DIR, "readOnly": true},
                            {"name": "run", "mountPath": SOCKET_DIR},
                            {"name": "tmp", "mountPath": "/tmp"}
                        ]
                    }],
                    "volumes": [
                        {"name": "tls", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "server-tls", "secret": {"secretName": n.server_tls, "defaultMode": 0o400}},
                        {"name": "config", "configMap": {"name": n.config}},
                        {"name": "replication", "secret": {"secretName": n.replication, "defaultMode": 0o444}},
                        // Present while a BackupPolicy covers the database; kubelet updates it in
                        // place, so a policy attaching later restarts nothing.
                        {"name": "backup", "secret": {"secretName": n.backup, "defaultMode": 0o444, "optional": true}},
                        {"name": "run", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}}
                    ]
                }
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": selector_labels(db)},
                "spec": claim_spec
            }]
        }
    });
    if db.spec.bootstrap.is_some() {
        // Not optional: the first start must find the source's repository, never initdb instead.
        let pod = &mut value["spec"]["template"]["spec"];
        let main = &mut pod["containers"][0];
        push(&mut main["env"], json!({"name": "RESTORE", "value": "1"}));
        push(
            &mut main["volumeMounts"],
            json!({"name": "restore", "mountPath": RESTORE_DIR, "readOnly": true}),
        );
        push(
            &mut pod["volumes"],
            json!({"name": "restore", "secret": {"secretName": n.restore, "defaultMode": 0o444}}),
        );
    }
    from_json(value)
}

/// The row counts taken when backup `label` completed, which its restore drill checks the
/// copy against; `taken` is when its restore point was created (RFC 3339).
pub fn drill_baseline(db: &SectorDatabase, label: &str, counts: &str, taken: &str) -> ConfigMap {
    from_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(db, &names(&db.name_any()).drill),
        "data": {"label": label, "counts": counts, "taken": taken}
    }))
}

/// Labels of a database's restore drill pod: none of them selects it into the database's
/// Services, StatefulSet or NetworkPolicy.
pub fn drill_labels(db: &SectorDatabase) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sectordb-drill".into()),
        ("app.kubernetes.io/instance".into(), db.name_any()),
        ("app.kubernetes.io/part-of".into(), "sectordb".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "sectordb-operator".into(),
        ),
    ])
}

/// The scratch instance a restore drill restores into: the database's image and backup
/// configuration, its data on an emptyDir that goes with the pod. It idles until the operator
/// runs the restore and the checks in it; its PostgreSQL listens on the local socket only.
pub fn drill_pod(db: &SectorDatabase, settings: &Settings) -> Pod {
    let n = names(&db.name_any());
    let mut meta = metadata(db, &n.drill);
    meta["labels"] = json!(drill_labels(db));
    from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": false,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "postgres",
                "image": settings.image, "imagePullPolicy": settings.image_pull_policy,
                "command": ["tini", "--", "sleep", "infinity"],
                "env": [{"name": "PGDATA", "value": PGDATA}],
                "securityContext": postgres_security_context(),
                "resources": db.spec.resources,
                "volumeMounts": [
                    {"name": "data", "mountPath": DATA_DIR},
                    {"name": "backup", "mountPath": backup::CONFIG_DIR, "readOnly": true},
                    {"name": "run", "mountPath": SOCKET_DIR},
                    {"name": "tmp", "mountPath": "/tmp"}
                ]
            }],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "backup", "secret": {"secretName": n.backup, "defaultMode": 0o444}},
                {"name": "run", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}}
            ]
        }
    }))
}

/// Default deny, then: the agency's own namespace, and the operator.
pub fn network_policy(db: &SectorDatabase, settings: &Settings) -> NetworkPolicy {
    let namespace_named = |name: &str| json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}});
    let mut from = vec![
        json!({"podSelector": {}}),
        namespace_named(settings.operator_namespace),
    ];
    from.extend(
        settings
            .trusted_ingress_cidrs
            .iter()
            .map(|cidr| json!({"ipBlock": {"cidr": cidr}})),
    );
    from_json(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(db, &db.name_any()),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(db)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": from,
                "ports": [{"protocol": "TCP", "port": PORT}]
            }]
        }
    }))
}

/// How a client reaches the database.
pub struct Endpoint<'a> {
    pub host: &'a str,
    pub host_addr: &'a str,
    pub database: &'a str,
}

/// Who logs in where: the contents of a credentials Secret.
pub struct Credentials<'a> {
    pub endpoint: &'a Endpoint<'a>,
    pub user: &'a str,
    pub password: &'a str,
    pub ca_pem: &'a str,
}

/// The keys design.md lists for every credentials Secret: host, hostaddr, port, dbname, user,
/// password, ca.crt and a libpq URI that verifies the server (sslmode=verify-full).
pub fn credentials_data(c: &Credentials) -> BTreeMap<String, ByteString> {
    let e = c.endpoint;
    let uri = format!(
        "postgresql://{}:{}@{}:{PORT}/{}?sslmode=verify-full&hostaddr={}&sslrootcert=ca.crt",
        c.user, c.password, e.host, e.database, e.host_addr
    );
    let port = PORT.to_string();
    secret_data(&[
        ("host", e.host),
        ("hostaddr", e.host_addr),
        ("port", &port),
        ("dbname", e.database),
        ("user", c.user),
        ("password", c.password),
        ("ca.crt", c.ca_pem),
        ("uri", &uri),
    ])
}

/// A database's own credentials Secret (owned by the database).
pub fn credentials_secret(db: &SectorDatabase, name: &str, credentials: &Credentials) -> Secret {
    let mut secret: Secret = from_json(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata(db, name), "type": "Opaque"}),
    );
    secret.data = Some(credentials_data(credentials));
    secret
}

/// An Opaque Secret with the given keys: the server's certificate and key, the CA certificate, or
/// the replication password.
pub fn opaque_secret(db: &SectorDatabase, name: &str, files: &[(&str, &str)]) -> Secret {
    let mut secret: Secret = from_json(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata(db, name), "type": "Opaque"}),
    );
    secret.data = Some(secret_data(files));
    secret
}

/// A Secret's `data` holding each `(key, text)` of `files`.
pub fn secret_data(files: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    files
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// The Service DNS names a server certificate must carry: every instance serves the same
/// certificate, the primary behind the read-write Service and the replicas behind the read-only
/// one.
pub fn service_dns_names(db: &SectorDatabase) -> Vec<String> {
    let namespace = db.namespace().unwrap_or_default();
    let n = names(&db.name_any());
    [n.read_write, n.read_only]
        .into_iter()
        .flat_map(|service| {
            [
                service.clone(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ]
        })
        .collect()
}

/// A PodDisruptionBudget that keeps the primary from voluntary eviction: without automatic
/// failover, evicting it is an outage, so a node drain waits for a person (as CloudNativePG does
/// for a primary). `api` is policy/v1, or policy/v1beta1 on clusters older than 1.21; the two
/// agree on every field used here.
pub fn disruption_budget(db: &SectorDatabase, api: &ApiResource) -> DynamicObject {
    let n = names(&db.name_any());
    let primary = primary_selector(db);
    from_json(json!({
        "apiVersion": api.api_version, "kind": api.kind,
        "metadata": metadata(db, &n.disruption_budget),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": primary}}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_statefulset_s_own_volume_names_belong_to_a_database() {
        assert!(is_volume_of("db", "data-db-0"));
        assert!(is_volume_of("db", "data-db-12"));
        for other in [
            "data-db",
            "data-db-",
            "data-db-x",
            "data-dba-0",
            "db-0",
            "data-db-0-copy",
        ] {
            assert!(!is_volume_of("db", other), "{other}");
        }
    }

    fn db() -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "health-records", "namespace": "so-y-te", "uid": "u-1"},
            "spec": {"agency": {"code": "000.00.12.H53", "name": "Health"}, "sector": "Health",
                     "classification": "Shared", "securityLevel": 3, "storage": {"size": "2Gi"},
                     "database": {"name": "health", "owner": "app"}}
        }))
        .unwrap()
    }

    fn settings() -> Settings<'static> {
        Settings {
            image: "local/sectordb-postgres:15",
            image_pull_policy: "Never",
            operator_namespace: "sectordb-system",
            trusted_ingress_cidrs: &[],
        }
    }

    #[test]
    fn the_network_policy_admits_the_agency_the_operator_and_only_the_platform_s_ranges() {
        let peers = |np: &NetworkPolicy| {
            serde_json::to_value(&np.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0].from)
                .unwrap()
        };
        assert_eq!(
            peers(&network_policy(&db(), &settings())),
            json!([{"podSelector": {}},
                   {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "sectordb-system"}}}])
        );
        let cidrs = ["10.200.0.1/32".to_string()];
        let trusted = Settings {
            trusted_ingress_cidrs: &cidrs,
            ..settings()
        };
        assert_eq!(
            peers(&network_policy(&db(), &trusted))[2],
            json!({"ipBlock": {"cidr": "10.200.0.1/32"}})
        );
    }

    #[test]
    fn every_child_is_owned_and_labelled() {
        let db = db();
        let sts = stateful_set(&db, &settings(), "abc", "10.96.0.9");
        let cm = config_map(&db);
        let svcs = services(&db);
        let metas = [
            &sts.metadata,
            &cm.metadata,
            &svcs[0].metadata,
            &svcs[1].metadata,
            &svcs[2].metadata,
            &disruption_budget(&db, &policy("v1")).metadata,
            &network_policy(&db, &settings()).metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("SectorDatabase", "u-1", Some(true))
            );
            assert_eq!(
                meta.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
                "health-records"
            );
            assert_eq!(meta.namespace.as_deref(), Some("so-y-te"));
        }
    }

    #[test]
    fn the_drill_pod_joins_none_of_the_database_selectors_and_runs_unprivileged() {
        let db = db();
        let pod = drill_pod(&db, &settings());
        let labels = pod.metadata.labels.clone().unwrap();
        for selector in [
            selector_labels(&db),
            services(&db)[0].spec.clone().unwrap().selector.unwrap(),
        ] {
            assert!(
                !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
                "{selector:?} selects the drill pod"
            );
        }
        assert_eq!(pod.metadata.name.as_deref(), Some("health-records-drill"));
        assert_eq!(
            pod.metadata.owner_references.unwrap()[0].uid.as_str(),
            "u-1"
        );
        let spec = pod.spec.unwrap();
        let sc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(
            (sc.run_as_user, sc.read_only_root_filesystem),
            (Some(100), Some(true))
        );
        let backup = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "backup");
        assert_eq!(
            backup.and_then(|v| v.secret).and_then(|s| s.secret_name),
            Some("health-records-backup".into())
        );
    }

    #[test]
    fn postgres_runs_as_its_own_user_on_a_read_only_root() {
        let sts = stateful_set(&db(), &settings(), "abc", "10.96.0.9");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let main = &pod.containers[0];
        let sc = main.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_user,
                sc.run_as_non_root,
                sc.read_only_root_filesystem
            ),
            (Some(100), Some(true), Some(true))
        );
        assert!(main.readiness_probe.is_some() && main.liveness_probe.is_some());
    }

    #[test]
    fn storage_comes_from_the_spec_and_the_config_hash_reaches_the_pods() {
        let sts = stateful_set(&db(), &settings(), "f00d", "10.96.0.9")
            .spec
            .unwrap();
        let claim = &sts.volume_claim_templates.unwrap()[0];
        let requests = claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(requests["storage"].0, "2Gi");
        assert_eq!(
            sts.template.metadata.unwrap().annotations.unwrap()["sectordb.io/config-hash"],
            "f00d"
        );
    }

    #[test]
    fn the_read_write_service_selects_only_the_primary() {
        let svc = &services(&db())[0];
        assert_eq!(svc.metadata.name.as_deref(), Some("health-records-rw"));
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap()["statefulset.kubernetes.io/pod-name"],
            "health-records-0"
        );
    }

    fn policy(version: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("policy", version, "PodDisruptionBudget"),
            "poddisruptionbudgets",
        )
    }

    #[test]
    fn the_read_only_service_selects_the_replicas_by_the_role_label() {
        let svc = &services(&db())[1];
        assert_eq!(svc.metadata.name.as_deref(), Some("health-records-ro"));
        let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(selector[ROLE_LABEL], "replica");
        assert_eq!(selector["app.kubernetes.io/instance"], "health-records");
        assert_eq!(role_of("health-records-0"), "primary");
        assert_eq!(role_of("health-records-10"), "replica");
        assert_eq!(role_of("db-1-2"), "replica");
        assert_eq!(role_of("db-1-0"), "primary");
    }

    #[test]
    fn every_instance_runs_and_standbys_stream_from_the_primary_address() {
        let mut three = db();
        three.spec.instances = 3;
        let sts = stateful_set(&three, &settings(), "abc", "10.96.0.9")
            .spec
            .unwrap();
        assert_eq!(sts.replicas, Some(3));
        let main = &sts.template.spec.unwrap().containers[0];
        let env = main.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "PRIMARY_ADDR" && e.value.as_deref() == Some("10.96.0.9"))
        );
        let command = main.command.as_ref().unwrap();
        // tini is PID 1, so a failed asynchronous WAL archiver never restarts PostgreSQL.
        assert_eq!(command[..4], ["tini", "--", "sh", "-c"]);
        let script = &command[4];
        assert!(script.contains("pg_basebackup") && script.contains("sslmode=verify-full"));
        assert!(script.contains(&format!("user={REPLICATION_USER}")));
    }

    #[test]
    fn the_certificate_names_both_services() {
        let names = service_dns_names(&db());
        assert!(names.contains(&"health-records-rw.so-y-te.svc".to_string()));
        assert!(names.contains(&"health-records-ro.so-y-te.svc".to_string()));
    }

    #[test]
    fn the_disruption_budget_keeps_the_primary_in_either_policy_version() {
        for version in ["v1", "v1beta1"] {
            let pdb = disruption_budget(&db(), &policy(version));
            assert_eq!(
                pdb.types.as_ref().unwrap().api_version,
                format!("policy/{version}")
            );
            assert_eq!(pdb.data["spec"]["minAvailable"], 1);
            assert_eq!(
                pdb.data["spec"]["selector"]["matchLabels"]["statefulset.kubernetes.io/pod-name"],
                "health-records-0"
            );
        }
    }

    #[test]
    fn credentials_carry_every_key_and_a_verifying_uri() {
        let endpoint = Endpoint {
            host: "health-records-rw.so-y-te.svc",
            host_addr: "10.96.0.9",
            database: "health",
        };
        let credentials = Credentials {
            endpoint: &endpoint,
            user: "app",
            password: "pw",
            ca_pem: "CA",
        };
        let secret = credentials_secret(&db(), "health-records-app", &credentials);
        let data = secret.data.unwrap();
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ca.crt", "dbname", "host", "hostaddr", "password", "port", "uri", "user"
            ]
        );
        let uri = String::from_utf8(data["uri"].0.clone()).unwrap();
        assert!(
            uri.contains("sslmode=verify-full") && uri.contains("hostaddr=10.96.0.9"),
            "{uri}"
        );
    }

    #[test]
    fn config_hash_changes_with_the_config() {
        let a = config_map(&db());
        let mut other = db();
        other
            .spec
            .postgres
            .parameters
            .insert("max_connections".into(), "300".into());
        assert_ne!(config_hash(&a), config_hash(&config_map(&other)));
        assert_eq!(config_hash(&a), config_hash(&config_map(&db())));
    }
}
