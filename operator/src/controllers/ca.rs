//! The operator's CA, kept in a Secret in the operator's namespace so every replica and every
//! restart signs with the same key.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

use super::{Context, Error, Result};
use crate::pki::{self, CertifiedKey};

pub const CA_SECRET: &str = "sectordb-ca";

/// The CA, loaded once per process.
pub async fn operator_ca(ctx: &Context) -> Result<&CertifiedKey> {
    ctx.ca.get_or_try_init(|| load_or_create(ctx)).await
}

fn parse(secret: &Secret) -> Result<CertifiedKey> {
    let field = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| Error::MalformedCa(format!("no {key} in Secret {CA_SECRET}")))
    };
    Ok(CertifiedKey {
        cert_pem: field("tls.crt")?,
        key_pem: field("tls.key")?,
    })
}

async fn load_or_create(ctx: &Context) -> Result<CertifiedKey> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Some(secret) = api.get_opt(CA_SECRET).await? {
        return parse(&secret);
    }
    let ca = pki::new_ca()?;
    let mut secret = Secret::default();
    secret.metadata.name = Some(CA_SECRET.into());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".into(),
        "sectordb".into(),
    )]));
    secret.data = Some(BTreeMap::from([
        (
            "tls.crt".into(),
            ByteString(ca.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".into(),
            ByteString(ca.key_pem.clone().into_bytes()),
        ),
    ]));
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, "created the operator CA");
            Ok(ca)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => parse(&api.get(CA_SECRET).await?),
        Err(e) => Err(e.into()),
    }
}
