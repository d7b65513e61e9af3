//! The operator's CA and its own client certificate, kept in Secrets in the operator's namespace
//! so every replica and every restart signs and logs in with the same keys.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

use super::{Context, Error, Result};
use crate::pki::{self, CertifiedKey, Leaf};

pub const CA_SECRET: &str = "sectordb-ca";
/// The client certificate (common name `postgres`) the operator logs in to every database with.
/// No password of the superuser exists: this Secret, in the operator's namespace, is the only
/// way in over the network.
pub const SUPERUSER_SECRET: &str = "sectordb-superuser";
/// Unix seconds at which a certificate in a Secret expires, so renewal needs no parser.
pub const NOT_AFTER_ANNOTATION: &str = "sectordb.io/certificate-not-after";

/// The CA, loaded once per process.
pub async fn operator_ca(ctx: &Context) -> Result<&CertifiedKey> {
    ctx.ca.get_or_try_init(|| load_or_create(ctx)).await
}

/// The superuser's client certificate; a new one is issued (and stored) in the last days of
/// the current one, which stays valid until its end for connections already made with it.
pub async fn superuser_certificate(ctx: &Context) -> Result<CertifiedKey> {
    let now = jiff::Timestamp::now().as_second();
    let mut cached = ctx.superuser.lock().await;
    if let Some(leaf) = cached
        .as_ref()
        .filter(|l| !pki::renewal_due(l.not_after, now))
    {
        return Ok(leaf.key.clone());
    }
    let leaf = load_or_issue_superuser(ctx, now).await?;
    let key = leaf.key.clone();
    *cached = Some(leaf);
    Ok(key)
}

async fn load_or_issue_superuser(ctx: &Context, now: i64) -> Result<Leaf> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let existing = api.get_opt(SUPERUSER_SECRET).await?;
    if let Some(leaf) = existing.as_ref().and_then(|s| parse_leaf(s).ok()) {
        if !pki::renewal_due(leaf.not_after, now) {
            return Ok(leaf);
        }
    }
    let leaf = pki::issue_client(operator_ca(ctx).await?, "postgres")?;
    let mut secret = tls_secret(SUPERUSER_SECRET, &leaf.key);
    secret.metadata.annotations = Some(BTreeMap::from([(
        NOT_AFTER_ANNOTATION.into(),
        leaf.not_after.to_string(),
    )]));
    let written = match existing {
        Some(old) => {
            // The resource version makes a replica that renewed at the same moment lose cleanly.
            secret.metadata.resource_version = old.resource_version();
            let patch = Patch::Merge(&secret);
            api.patch(SUPERUSER_SECRET, &PatchParams::default(), &patch)
                .await
        }
        None => api.create(&PostParams::default(), &secret).await,
    };
    match written {
        Ok(_) => {
            tracing::info!(
                secret = SUPERUSER_SECRET,
                "issued the superuser's client certificate"
            );
            Ok(leaf)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => parse_leaf(&api.get(SUPERUSER_SECRET).await?),
        Err(e) => Err(e.into()),
    }
}

fn parse(secret: &Secret) -> Result<CertifiedKey> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| {
                Error::MalformedSecret(format!("no {key} in Secret {}", secret.name_any()))
            })
    };
    Ok(CertifiedKey {
        cert_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
    })
}

fn parse_leaf(secret: &Secret) -> Result<Leaf> {
    let not_after = secret
        .annotations()
        .get(NOT_AFTER_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Error::MalformedSecret(format!(
                "no {NOT_AFTER_ANNOTATION} on Secret {}",
                secret.name_any()
            ))
        })?;
    Ok(Leaf {
        key: parse(secret)?,
        not_after,
    })
}

fn tls_secret(name: &str, key: &CertifiedKey) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".into(),
        "sectordb".into(),
    )]));
    secret.data = Some(BTreeMap::from([
        (
            "tls.crt".into(),
            ByteString(key.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".into(),
            ByteString(key.key_pem.clone().into_bytes()),
        ),
    ]));
    secret
}

async fn load_or_create(ctx: &Context) -> Result<CertifiedKey> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Some(secret) = api.get_opt(CA_SECRET).await? {
        return parse(&secret);
    }
    let ca = pki::new_ca()?;
    match api
        .create(&PostParams::default(), &tls_secret(CA_SECRET, &ca))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, "created the operator CA");
            Ok(ca)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => parse(&api.get(CA_SECRET).await?),
        Err(e) => Err(e.into()),
    }
}
