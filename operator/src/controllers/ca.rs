//! The operator's CA and its own client certificate, kept in Secrets in the operator's namespace
//! so every replica and every restart signs and logs in with the same keys. The CA rotates with
//! an overlap: a successor is trusted for `OVERLAP` before it signs, and its predecessor stays
//! trusted for a certificate's lifetime after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
/// The fingerprint of the CA that signed a certificate in a Secret: another one means reissue.
pub const ISSUER_ANNOTATION: &str = "sectordb.io/issuer";
const NEXT_NOT_AFTER: &str = "sectordb.io/next-not-after";
const NEXT_SINCE: &str = "sectordb.io/next-since";
const PREVIOUS_UNTIL: &str = "sectordb.io/previous-trusted-until";
const DAY: i64 = 86_400;
/// How long every client is given to learn a new CA before it signs anything.
const OVERLAP: i64 = 30 * DAY;
/// How often the CA Secret is read again when the watch saw no change: a rotation step falls
/// due with time alone.
const RELOAD: Duration = Duration::from_secs(60);

/// Who signs, and whom clients trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub signer: CertifiedKey,
    /// The CA certificates a client or server trusts (PEM, one after another): the signer, its
    /// successor while it waits and its predecessor while its certificates may still be served.
    pub trust_pem: String,
    /// The signer's fingerprint, recorded on what it signs.
    pub id: String,
}

/// The CA Secret's contents, as the rotation sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    pub signer: Leaf,
    /// A successor, trusted but not yet signing, and since when.
    pub next: Option<(Leaf, i64)>,
    /// The predecessor's certificate, trusted until the instant given.
    pub previous: Option<(String, i64)>,
}

impl CaState {
    fn authority(&self) -> Authority {
        let mut trust = vec![self.signer.key.cert_pem.trim()];
        trust.extend(self.next.iter().map(|(n, _)| n.key.cert_pem.trim()));
        trust.extend(self.previous.iter().map(|(p, _)| p.trim()));
        Authority {
            signer: self.signer.key.clone(),
            trust_pem: trust.join("\n") + "\n",
            id: pki::fingerprint(&self.signer.key.cert_pem),
        }
    }
}

/// The next state of the rotation at `now`, if there is one: a successor made in the signer's
/// last year, promoted after `OVERLAP`, its predecessor dropped a certificate's lifetime later.
/// Pure; `new_ca` makes the successor.
pub fn rotate(
    state: &CaState,
    now: i64,
    new_ca: impl FnOnce() -> std::result::Result<Leaf, pki::Error>,
) -> std::result::Result<Option<CaState>, pki::Error> {
    let mut next = state.clone();
    if next
        .previous
        .as_ref()
        .is_some_and(|(_, until)| now >= *until)
    {
        next.previous = None;
    }
    match next.next.take() {
        None if pki::ca_renewal_due(next.signer.not_after, now) => {
            next.next = Some((new_ca()?, now));
        }
        Some((successor, since)) if now >= since + OVERLAP => {
            let old = std::mem::replace(&mut next.signer, successor);
            next.previous = Some((old.key.cert_pem, now + pki::LEAF_DAYS * DAY));
        }
        waiting => next.next = waiting,
    }
    Ok((next != *state).then_some(next))
}

/// The CA, read again when its Secret changed or a minute passed, and moved along its rotation
/// when due.
pub async fn operator_ca(ctx: &Context) -> Result<Arc<Authority>> {
    let mut cached = ctx.ca.lock().await;
    // Read before the Secret: a change seen while it loads makes the next call read again.
    let changes = ctx.ca_changes.load(Ordering::Acquire);
    if let Some((authority, at, seen)) = cached.as_ref() {
        if at.elapsed() < RELOAD && *seen == changes {
            return Ok(authority.clone());
        }
    }
    let authority = Arc::new(load_and_rotate(ctx).await?.authority());
    *cached = Some((authority.clone(), Instant::now(), changes));
    Ok(authority)
}

/// What the CA Secret's watch calls on each change.
pub fn ca_changed(ctx: &Context) {
    ctx.ca_changes.fetch_add(1, Ordering::AcqRel);
}

async fn load_and_rotate(ctx: &Context) -> Result<CaState> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let Some(secret) = api.get_opt(CA_SECRET).await? else {
        return create_ca(&api).await;
    };
    let state = parse_ca(&secret)?;
    let now = jiff::Timestamp::now().as_second();
    let Some(rotated) = rotate(&state, now, pki::new_ca)? else {
        return Ok(state);
    };
    let mut desired = ca_secret(&rotated);
    // The resource version makes a replica that rotated at the same moment lose cleanly; the
    // data and annotations it drops are those a step removed.
    desired.metadata.resource_version = secret.resource_version();
    let mut patch =
        serde_json::to_value(&desired).map_err(|e| Error::MalformedSecret(e.to_string()))?;
    for key in ["next.crt", "next.key", "previous.crt"] {
        if !desired.data.as_ref().is_some_and(|d| d.contains_key(key)) {
            patch["data"][key] = serde_json::Value::Null;
        }
    }
    for key in [NEXT_NOT_AFTER, NEXT_SINCE, PREVIOUS_UNTIL] {
        if !desired.annotations().contains_key(key) {
            patch["metadata"]["annotations"][key] = serde_json::Value::Null;
        }
    }
    match api
        .patch(CA_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, "moved the operator CA's rotation along");
            Ok(rotated)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => parse_ca(&api.get(CA_SECRET).await?),
        Err(e) => Err(e.into()),
    }
}

async fn create_ca(api: &Api<Secret>) -> Result<CaState> {
    let state = CaState {
        signer: pki::new_ca()?,
        next: None,
        previous: None,
    };
    match api.create(&PostParams::default(), &ca_secret(&state)).await {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, "created the operator CA");
            Ok(state)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => parse_ca(&api.get(CA_SECRET).await?),
        Err(e) => Err(e.into()),
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    super::secret_value(Some(secret), key)
}

fn number(secret: &Secret, annotation: &str) -> Option<i64> {
    secret.annotations().get(annotation)?.parse().ok()
}

fn malformed(secret: &Secret, what: &str) -> Error {
    Error::MalformedSecret(format!("no {what} in Secret {}", secret.name_any()))
}

fn pair(secret: &Secret, cert: &str, key: &str) -> Option<CertifiedKey> {
    Some(CertifiedKey {
        cert_pem: text(secret, cert)?,
        key_pem: text(secret, key)?,
    })
}

/// The certificate and key stored under `cert` and `key`, valid until the instant in the
/// annotation `not_after` (0, so due for renewal, when that is missing).
pub fn stored_leaf(secret: &Secret, cert: &str, key: &str, not_after: &str) -> Option<Leaf> {
    Some(Leaf {
        key: pair(secret, cert, key)?,
        not_after: number(secret, not_after).unwrap_or(0),
    })
}

fn parse_ca(secret: &Secret) -> Result<CaState> {
    let signer = pair(secret, "tls.crt", "tls.key").ok_or_else(|| malformed(secret, "tls.crt"))?;
    // A CA made before its end was recorded: ten years from the Secret's creation.
    let created = secret
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    let not_after = number(secret, NOT_AFTER_ANNOTATION).unwrap_or(created + 3650 * DAY);
    let next = stored_leaf(secret, "next.crt", "next.key", NEXT_NOT_AFTER)
        .map(|leaf| (leaf, number(secret, NEXT_SINCE).unwrap_or(0)));
    let previous =
        text(secret, "previous.crt").map(|p| (p, number(secret, PREVIOUS_UNTIL).unwrap_or(0)));
    Ok(CaState {
        signer: Leaf {
            key: signer,
            not_after,
        },
        next,
        previous,
    })
}

fn ca_secret(state: &CaState) -> Secret {
    let mut files = vec![
        ("tls.crt", &state.signer.key.cert_pem),
        ("tls.key", &state.signer.key.key_pem),
    ];
    let mut annotations = vec![(NOT_AFTER_ANNOTATION, state.signer.not_after)];
    if let Some((next, since)) = &state.next {
        files.extend([
            ("next.crt", &next.key.cert_pem),
            ("next.key", &next.key.key_pem),
        ]);
        annotations.extend([(NEXT_NOT_AFTER, next.not_after), (NEXT_SINCE, *since)]);
    }
    if let Some((previous, until)) = &state.previous {
        files.push(("previous.crt", previous));
        annotations.push((PREVIOUS_UNTIL, *until));
    }
    let mut secret = operator_secret(CA_SECRET, &files);
    secret.metadata.annotations = Some(
        annotations
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    secret
}

fn operator_secret(name: &str, files: &[(&str, &String)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".into(),
        "sectordb".into(),
    )]));
    let files: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    secret.data = Some(crate::dataplane::secret_data(&files));
    secret
}

/// The superuser's client certificate; a new one is issued (and stored) in the last days of
/// the current one or when another CA signs, and the old one stays valid until its end for
/// connections already made with it.
pub async fn superuser_certificate(ctx: &Context) -> Result<CertifiedKey> {
    let ca = operator_ca(ctx).await?;
    let now = jiff::Timestamp::now().as_second();
    let mut cached = ctx.superuser.lock().await;
    if let Some((leaf, _)) = cached
        .as_ref()
        .filter(|(l, issuer)| !pki::renewal_due(l.not_after, now) && *issuer == ca.id)
    {
        return Ok(leaf.key.clone());
    }
    let leaf = load_or_issue_superuser(ctx, &ca, now).await?;
    let key = leaf.key.clone();
    *cached = Some((leaf, ca.id.clone()));
    Ok(key)
}

async fn load_or_issue_superuser(ctx: &Context, ca: &Authority, now: i64) -> Result<Leaf> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let existing = api.get_opt(SUPERUSER_SECRET).await?;
    let current = existing
        .as_ref()
        .filter(|s| s.annotations().get(ISSUER_ANNOTATION) == Some(&ca.id))
        .and_then(|s| stored_leaf(s, "tls.crt", "tls.key", NOT_AFTER_ANNOTATION))
        .filter(|leaf| !pki::renewal_due(leaf.not_after, now));
    if let Some(leaf) = current {
        return Ok(leaf);
    }
    let leaf = pki::issue_client(&ca.signer, "postgres")?;
    let mut secret = operator_secret(
        SUPERUSER_SECRET,
        &[
            ("tls.crt", &leaf.key.cert_pem),
            ("tls.key", &leaf.key.key_pem),
        ],
    );
    secret.metadata.annotations = Some(BTreeMap::from([
        (NOT_AFTER_ANNOTATION.into(), leaf.not_after.to_string()),
        (ISSUER_ANNOTATION.into(), ca.id.clone()),
    ]));
    let written = match existing {
        Some(old) => {
            // The resource version makes a replica that renewed at the same moment lose cleanly.
            secret.metadata.resource_version = old.resource_version();
            api.patch(
                SUPERUSER_SECRET,
                &PatchParams::default(),
                &Patch::Merge(&secret),
            )
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
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(SUPERUSER_SECRET).await?;
            stored_leaf(&secret, "tls.crt", "tls.key", NOT_AFTER_ANNOTATION)
                .ok_or_else(|| malformed(&secret, "tls.crt"))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(not_after: i64) -> Leaf {
        let mut leaf = pki::new_ca().unwrap();
        leaf.not_after = not_after;
        leaf
    }

    #[test]
    fn a_ca_is_replaced_in_its_last_year_with_an_overlap_on_both_sides() {
        let end = 3650 * DAY;
        let start = CaState {
            signer: ca(end),
            next: None,
            previous: None,
        };
        let never = || -> std::result::Result<Leaf, pki::Error> { panic!("no new CA now") };
        assert_eq!(rotate(&start, end - 366 * DAY, never).unwrap(), None);

        // In the last year a successor is made and trusted, but the signer still signs.
        let t1 = end - 300 * DAY;
        let waiting = rotate(&start, t1, || Ok(ca(t1 + 3650 * DAY)))
            .unwrap()
            .unwrap();
        assert_eq!(waiting.signer, start.signer);
        let successor = waiting.next.clone().unwrap().0;
        let trust = waiting.authority().trust_pem;
        assert!(trust.contains(start.signer.key.cert_pem.trim()));
        assert!(trust.contains(successor.key.cert_pem.trim()));
        assert_eq!(rotate(&waiting, t1 + OVERLAP - 1, never).unwrap(), None);

        // After the overlap it signs; its predecessor is trusted a certificate's lifetime more.
        let promoted = rotate(&waiting, t1 + OVERLAP, never).unwrap().unwrap();
        assert_eq!(promoted.signer, successor);
        assert_ne!(promoted.authority().id, waiting.authority().id);
        let (old, until) = promoted.previous.clone().unwrap();
        assert_eq!(old, start.signer.key.cert_pem);
        assert!(promoted.authority().trust_pem.contains(old.trim()));
        assert_eq!(rotate(&promoted, until - 1, never).unwrap(), None);

        let done = rotate(&promoted, until, never).unwrap().unwrap();
        assert_eq!(done.previous, None);
        assert_eq!(
            done.authority().trust_pem.trim(),
            successor.key.cert_pem.trim()
        );
    }

    #[test]
    fn the_ca_secret_reads_back_as_it_was_written() {
        let state = CaState {
            signer: ca(100),
            next: Some((ca(200), 50)),
            previous: Some((
                "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
                70,
            )),
        };
        assert_eq!(parse_ca(&ca_secret(&state)).unwrap(), state);
    }
}
