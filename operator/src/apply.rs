//! Server-side apply of child objects, skipped when the object already carries the digest of
//! exactly what would be sent, so a steady state makes no writes.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Annotation holding the digest of the last applied desired object.
pub const DIGEST_ANNOTATION: &str = "sectordb.io/applied-digest";

fn digest<K: Serialize>(obj: &K) -> String {
    let text = serde_json::to_string(obj).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies `desired` unless the live object was applied from the same desired state.
/// Returns the live object and whether a write happened.
pub async fn apply<K>(api: &Api<K>, manager: &str, mut desired: K) -> Result<(K, bool), kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.name_any();
    let want = digest(&desired);
    if let Some(live) = api.get_opt(&name).await? {
        if live.annotations().get(DIGEST_ANNOTATION) == Some(&want) {
            return Ok((live, false));
        }
    }
    desired
        .annotations_mut()
        .insert(DIGEST_ANNOTATION.into(), want);
    let live = api
        .patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    Ok((live, true))
}
