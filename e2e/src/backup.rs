//! What the backup tests need besides the cluster: the harness's S3 servers as a BackupPolicy
//! names them, and a look into a bucket with a real S3 client (boto3 from the harness's venv).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use sectordb::api::{BackupPolicy, SectorDatabase};
use serde::Deserialize;
use serde_json::json;

use crate::{OPERATOR_NAMESPACE, TestNamespace, harness, secret_text};

/// One S3 server of `e2e/cluster object-stores`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStore {
    pub name: String,
    pub role: String,
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub credentials_secret: String,
    pub ca_secret: String,
}

/// The object stores the harness runs (`e2e/cluster object-stores` prints one JSON line each):
/// what scripts/test saved in `SECTORDB_OBJECT_STORES`, or else the harness's answer (which also
/// starts them, and would bring back a data center a test has cut off).
pub fn object_stores() -> Result<Vec<ObjectStore>> {
    let printed = match std::env::var("SECTORDB_OBJECT_STORES") {
        Ok(printed) => printed,
        Err(_) => harness(&["object-stores"])?,
    };
    printed
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// A BackupPolicy repository entry for `store`, under `prefix` in its bucket.
pub fn repository(store: &ObjectStore, prefix: &str) -> serde_json::Value {
    json!({
        "name": store.name, "role": store.role,
        "s3": {"endpoint": store.endpoint, "bucket": store.bucket, "region": store.region,
               "pathPrefix": prefix, "uriStyle": "Path",
               "credentialsSecret": {"name": store.credentials_secret},
               "caSecret": {"name": store.ca_secret, "key": "ca.crt"}}
    })
}

/// An object in a bucket, and whether its bytes contain the marker looked for.
#[derive(Debug, Deserialize)]
pub struct Object {
    pub key: String,
    pub size: i64,
    pub has_marker: bool,
}

/// Runs a boto3 `script` from the harness's venv against `store`'s bucket, with `s3` and `e`
/// (the environment: ENDPOINT, BUCKET, REGION, CA, KEY, SECRET and `vars`) defined; its stdout.
async fn boto3(
    client: &Client,
    store: &ObjectStore,
    vars: &[(&str, &str)],
    script: &str,
) -> Result<Vec<u8>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let credentials = secrets.get(&store.credentials_secret).await?;
    let ca = secret_text(&secrets.get(&store.ca_secret).await?, "ca.crt")?;
    let dir = std::env::temp_dir().join(format!("sectordb-e2e-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join(format!("{}-ca.crt", store.name));
    std::fs::write(&ca_file, ca)?;
    let python = std::path::Path::new("/var/lib/sectordb-cluster/object-stores/python");
    let prelude = r#"
import json, os
import boto3
e = os.environ
s3 = boto3.client("s3", endpoint_url=e["ENDPOINT"], region_name=e["REGION"], verify=e["CA"],
                  aws_access_key_id=e["KEY"], aws_secret_access_key=e["SECRET"])
"#;
    let out = Command::new(python)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/tmp")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("ENDPOINT", &store.endpoint)
        .env("BUCKET", &store.bucket)
        .env("REGION", &store.region)
        .env("CA", &ca_file)
        .env("KEY", secret_text(&credentials, "AWS_ACCESS_KEY_ID")?)
        .env(
            "SECRET",
            secret_text(&credentials, "AWS_SECRET_ACCESS_KEY")?,
        )
        .envs(vars.iter().copied())
        .args(["-c", &format!("{prelude}{script}")])
        .output()
        .context("running boto3 from the harness venv")?;
    if !out.status.success() {
        bail!("boto3: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Every object under `prefix` in `store`'s bucket, read in full to look for `marker`.
pub async fn objects(
    client: &Client,
    store: &ObjectStore,
    prefix: &str,
    marker: &str,
) -> Result<Vec<Object>> {
    let vars = [
        ("PREFIX", prefix.trim_start_matches('/')),
        ("MARKER", marker),
    ];
    let script = r#"
found = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=e["BUCKET"], Prefix=e["PREFIX"]):
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket=e["BUCKET"], Key=o["Key"])["Body"].read()
        found.append({"key": o["Key"], "size": o["Size"], "has_marker": e["MARKER"].encode() in body})
print(json.dumps(found))
"#;
    Ok(serde_json::from_slice(
        &boto3(client, store, &vars, script).await?,
    )?)
}

/// Overwrites the object `key` in `store`'s bucket with as many bytes of garbage: a backup file
/// damaged at rest.
pub async fn damage(client: &Client, store: &ObjectStore, key: &str) -> Result<()> {
    let script = r#"
size = s3.head_object(Bucket=e["BUCKET"], Key=e["OBJECT"])["ContentLength"]
s3.put_object(Bucket=e["BUCKET"], Key=e["OBJECT"], Body=os.urandom(max(size, 64)))
"#;
    boto3(client, store, &[("OBJECT", key)], script).await?;
    Ok(())
}

/// Stores `mib` MiB of random bytes as `key` in `store`'s bucket; returns their SHA-256.
pub async fn put_large(
    client: &Client,
    store: &ObjectStore,
    key: &str,
    mib: u32,
) -> Result<String> {
    let script = r#"
import hashlib, tempfile
h = hashlib.sha256()
with tempfile.TemporaryFile() as f:
    for _ in range(int(e["MIB"])):
        b = os.urandom(1 << 20)
        h.update(b)
        f.write(b)
    f.seek(0)
    s3.upload_fileobj(f, e["BUCKET"], e["OBJECT"])
print(json.dumps(h.hexdigest()))
"#;
    let mib = mib.to_string();
    let out = boto3(client, store, &[("OBJECT", key), ("MIB", &mib)], script).await?;
    Ok(serde_json::from_slice(&out)?)
}

/// The size and SHA-256 of the object `key` in `store`'s bucket, read in full; `None` while it
/// does not exist.
pub async fn digest(
    client: &Client,
    store: &ObjectStore,
    key: &str,
) -> Result<Option<(u64, String)>> {
    let script = r#"
import hashlib
try:
    body = s3.get_object(Bucket=e["BUCKET"], Key=e["OBJECT"])["Body"]
except s3.exceptions.NoSuchKey:
    print("null")
else:
    h, n = hashlib.sha256(), 0
    for chunk in body.iter_chunks(1 << 20):
        h.update(chunk)
        n += len(chunk)
    print(json.dumps([n, h.hexdigest()]))
"#;
    let out = boto3(client, store, &[("OBJECT", key)], script).await?;
    Ok(serde_json::from_slice(&out)?)
}

/// What whoever holds the provincial keys could do: overwrite the object `overwrite` with
/// garbage of another size, and delete `delete`.
pub async fn tamper(
    client: &Client,
    store: &ObjectStore,
    overwrite: &str,
    delete: &str,
) -> Result<()> {
    let script = r#"
size = s3.head_object(Bucket=e["BUCKET"], Key=e["OVERWRITE"])["ContentLength"]
s3.put_object(Bucket=e["BUCKET"], Key=e["OVERWRITE"], Body=os.urandom(size + 17))
s3.delete_object(Bucket=e["BUCKET"], Key=e["DELETE"])
"#;
    boto3(
        client,
        store,
        &[("OVERWRITE", overwrite), ("DELETE", delete)],
        script,
    )
    .await?;
    Ok(())
}

/// A test namespace labelled for `policies` BackupPolicies that all select it (more than one is a
/// conflict), each writing to the provincial data center only, encrypted with a passphrase
/// Secret made for the test.
pub struct Setup {
    pub ns: TestNamespace,
    pub policies: Vec<String>,
    client: Client,
}

impl Setup {
    /// With `mirror_max_lag`, each policy also mirrors to the Government data center.
    /// Returns the provincial and the Government data center's object stores too.
    pub async fn new(
        client: &Client,
        prefix: &str,
        policies: usize,
        mirror_max_lag: Option<&str>,
    ) -> Result<(Setup, ObjectStore, ObjectStore)> {
        Self::with_primary(
            client,
            prefix,
            policies,
            mirror_max_lag,
            "ProvincialDataCenter",
        )
        .await
    }

    /// As `new`, with the primary repository in the data center of `primary_role`: a test that
    /// must not depend on the provincial data center (another cuts it off meanwhile) writes to
    /// the Government one.
    pub async fn with_primary(
        client: &Client,
        prefix: &str,
        policies: usize,
        mirror_max_lag: Option<&str>,
        primary_role: &str,
    ) -> Result<(Setup, ObjectStore, ObjectStore)> {
        let ns = TestNamespace::create(client, prefix).await?;
        let label = json!({"metadata": {"labels": {"sectordb.io/backup": ns.name}}});
        Api::<Namespace>::all(client.clone())
            .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&label))
            .await?;
        let stores = object_stores()?;
        let role = |role: &str| {
            stores
                .iter()
                .find(|s| s.role == role)
                .cloned()
                .with_context(|| format!("no {role} object store"))
        };
        let (store, government) = (role(primary_role)?, role("GovernmentDataCenter")?);
        let mut repositories = vec![repository(&store, &format!("/{}", ns.name))];
        if let Some(lag) = mirror_max_lag {
            let mut mirror = repository(&government, &format!("/mirror-{}", ns.name));
            mirror["maxLag"] = json!(lag);
            repositories.push(mirror);
        }
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": ns.name},
            "stringData": {"passphrase": format!("passphrase of {}", ns.name)}
        }))?;
        Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .create(&PostParams::default(), &secret)
            .await?;
        let mut names = Vec::new();
        for i in 0..policies {
            let name = format!("{}-{i}", ns.name);
            let policy: BackupPolicy = serde_json::from_value(json!({
                "apiVersion": "sectordb.io/v1alpha1", "kind": "BackupPolicy",
                "metadata": {"name": name},
                "spec": {
                    "databaseSelector": {"namespaceSelector": {"matchLabels": {"sectordb.io/backup": ns.name}}},
                    "schedule": {"full": "0 1 * * 0", "timeZone": "Asia/Ho_Chi_Minh"},
                    "retention": {"fullBackups": 2},
                    "repositories": repositories,
                    "encryption": {"keySecret": {"name": ns.name}}
                }
            }))?;
            Api::<BackupPolicy>::all(client.clone())
                .create(&PostParams::default(), &policy)
                .await?;
            names.push(name);
        }
        Ok((
            Setup {
                ns,
                policies: names,
                client: client.clone(),
            },
            store,
            government,
        ))
    }

    /// A level-3 SectorDatabase `db` in the namespace, once its first backup is in the
    /// repository.
    pub async fn backed_up_database(&self) -> Result<Api<SectorDatabase>> {
        let api: Api<SectorDatabase> = Api::namespaced(self.client.clone(), &self.ns.name);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(crate::database("db", 3))?,
        )
        .await?;
        crate::wait_for(&api, "db", Duration::from_secs(300), "first backup", |db| {
            db.and_then(|d| d.status.as_ref()?.backup.as_ref()?.last_successful.clone())
                .is_some()
        })
        .await?;
        Ok(api)
    }

    /// Writes a row no backup file may show in plaintext into the table `notes` of the database
    /// `db` (created by `backed_up_database`); returns the row's text.
    pub async fn write_marker(&self, tag: &str) -> Result<String> {
        let marker = format!("MARKER-{}-{tag}", self.ns.name);
        let app = Api::<Secret>::namespaced(self.client.clone(), &self.ns.name)
            .get("db-app")
            .await?;
        crate::connect_with(&app)
            .await?
            .batch_execute(&format!(
                "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('{marker}')"
            ))
            .await?;
        Ok(marker)
    }

    /// The first policy as it is now.
    pub async fn policy(&self) -> Result<BackupPolicy> {
        Ok(Api::<BackupPolicy>::all(self.client.clone())
            .get(&self.policies[0])
            .await?)
    }

    pub async fn delete(self) -> Result<()> {
        let policies: Api<BackupPolicy> = Api::all(self.client.clone());
        for name in &self.policies {
            policies.delete(name, &DeleteParams::default()).await?;
        }
        Api::<Secret>::namespaced(self.client.clone(), OPERATOR_NAMESPACE)
            .delete(&self.ns.name, &DeleteParams::default())
            .await?;
        self.ns.delete().await
    }
}

/// Cuts a data center off (`stop`) or brings it back (`start`): its TLS front, as a WAN outage
/// would; the objects it holds survive.
pub fn object_store(action: &str, name: &str) -> Result<()> {
    harness(&[&format!("object-store-{action}"), name]).map(drop)
}

/// Whether the policy's first mirror completed a pass after `after`, in sync.
pub fn mirrored_after(policy: &BackupPolicy, after: jiff::Timestamp) -> bool {
    policy
        .status
        .as_ref()
        .and_then(|s| s.mirrors.first())
        .is_some_and(|m| {
            m.healthy && m.lag_seconds == 0 && m.last_synced.as_ref().is_some_and(|t| t.0 >= after)
        })
}

/// A data center cut off (`e2e/cluster object-store-stop`) until this is dropped, however the
/// test ends.
pub struct Outage(Option<String>);

impl Outage {
    pub fn begin(name: &str) -> Result<Outage> {
        object_store("stop", name)?;
        Ok(Outage(Some(name.to_string())))
    }

    /// Brings the data center back; a start that fails fails the test, where the drop could only
    /// try.
    pub fn end(mut self) -> Result<()> {
        match self.0.take() {
            Some(name) => object_store("start", &name),
            None => Ok(()),
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            let _ = object_store("start", &name);
        }
    }
}

/// Asks for a backup of the database `db` with a new value of the request annotation.
pub async fn request_backup(api: &Api<SectorDatabase>, value: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {"sectordb.io/backup-request": value}}});
    api.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The database `db` once its status shows the request `value` acted on.
pub async fn request_done(
    api: &Api<SectorDatabase>,
    value: &str,
    timeout: Duration,
) -> Result<SectorDatabase> {
    crate::wait_for(api, "db", timeout, "the requested backup recorded", |db| {
        db.and_then(|d| d.status.as_ref()?.backup.as_ref()?.last_request.clone())
            .as_deref()
            == Some(value)
    })
    .await?
    .context("the database vanished")
}
