//! What the backup tests need besides the cluster: the harness's S3 servers as a BackupPolicy
//! names them, and a look into a bucket with a real S3 client (boto3 from the harness's venv).

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

use crate::{OPERATOR_NAMESPACE, secret_text};

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

fn harness() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster")
}

/// The object stores the harness runs (`e2e/cluster object-stores` prints one JSON line each).
pub fn object_stores() -> Result<Vec<ObjectStore>> {
    let out = Command::new(harness()).arg("object-stores").output()?;
    if !out.status.success() {
        bail!(
            "e2e/cluster object-stores: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout)?
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

/// Every object under `prefix` in `store`'s bucket, read in full to look for `marker`.
pub async fn objects(
    client: &Client,
    store: &ObjectStore,
    prefix: &str,
    marker: &str,
) -> Result<Vec<Object>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let credentials = secrets.get(&store.credentials_secret).await?;
    let ca = secret_text(&secrets.get(&store.ca_secret).await?, "ca.crt")?;
    let dir = std::env::temp_dir().join(format!("sectordb-e2e-s3-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_file = dir.join(format!("{}-ca.crt", store.name));
    std::fs::write(&ca_file, ca)?;
    let python = std::path::Path::new("/var/lib/sectordb-cluster/object-stores/python");
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
        .env("SECRET", secret_text(&credentials, "AWS_SECRET_ACCESS_KEY")?)
        .env("PREFIX", prefix.trim_start_matches('/'))
        .env("MARKER", marker)
        .args([
            "-c",
            r#"
import json, os
import boto3
e = os.environ
s3 = boto3.client("s3", endpoint_url=e["ENDPOINT"], region_name=e["REGION"], verify=e["CA"],
                  aws_access_key_id=e["KEY"], aws_secret_access_key=e["SECRET"])
found = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=e["BUCKET"], Prefix=e["PREFIX"]):
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket=e["BUCKET"], Key=o["Key"])["Body"].read()
        found.append({"key": o["Key"], "size": o["Size"], "has_marker": e["MARKER"].encode() in body})
print(json.dumps(found))
"#,
        ])
        .output()
        .context("running boto3 from the harness venv")?;
    if !out.status.success() {
        bail!("boto3 listing: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
