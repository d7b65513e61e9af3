//! Server-side apply of child objects, skipped when the object already carries the digest of
//! exactly what would be sent and still holds every field of it, so a steady state makes no
//! writes and an edit (even one that keeps the digest annotation) is put back. A name already
//! taken by an object the operator did not create for this owner is never overwritten.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Annotation holding the digest of the last applied desired object.
pub const DIGEST_ANNOTATION: &str = "sectordb.io/applied-digest";

/// Label that marks an object the operator wrote for a DataSharingConnection in another
/// namespace, where no owner reference can point: it holds the connection's UID.
pub const CONNECTION_UID_LABEL: &str = "sectordb.io/connection-uid";

/// Why a child was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The name is held by an object this owner did not create.
    #[error(
        "{kind} {name:?} already exists and was not created by sectordb for this object; rename or remove it"
    )]
    Taken { kind: String, name: String },
}

fn digest<K: Serialize>(obj: &K) -> String {
    crate::digest::of(&[&serde_json::to_string(obj).unwrap_or_default()])
}

/// Whether `live` was made for the owner `desired` names: an owner reference with the same UID,
/// or, for objects that cannot carry one, the same connection UID label. Names and shared labels
/// prove nothing: a tenant can set those on anything in its namespace.
pub fn same_owner<K: Resource>(live: &K, desired: &K) -> bool {
    let uids = |obj: &K| -> Vec<String> {
        obj.owner_references()
            .iter()
            .map(|o| o.uid.clone())
            .collect()
    };
    let wanted = uids(desired);
    if !wanted.is_empty() {
        return uids(live).iter().any(|uid| wanted.contains(uid));
    }
    let label = |obj: &K| obj.labels().get(CONNECTION_UID_LABEL).cloned();
    label(desired).is_some_and(|uid| !uid.is_empty() && label(live) == Some(uid))
}

/// The kind an object serializes with (typed and dynamic objects alike carry it).
fn kind_of<K: Serialize>(obj: &K) -> String {
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| v.get("kind")?.as_str().map(String::from))
        .unwrap_or_else(|| "object".into())
}

/// Whether `obj` carries an owner reference to the object with `uid`: the one proof that the
/// operator made it for that owner, checked before anything is deleted.
pub fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    !uid.is_empty() && obj.owner_references().iter().any(|o| o.uid == uid)
}

/// Deletes the object `name` if, and only if, it carries an owner reference to `uid`; returns
/// whether it did. An object of that name made by anyone else stays.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let owned = api.get_opt(name).await?.is_some_and(|o| owned_by(&o, uid));
    if owned {
        api.delete(name, &kube::api::DeleteParams::default())
            .await?;
    }
    Ok(owned)
}

/// Whether `live` holds every field `desired` sets, with the same value: objects may carry more
/// keys (the apiserver's defaults), lists must have the same length and items (an added
/// NetworkPolicy rule is an edit, not a default). The digest annotation alone proves nothing:
/// whoever edits a child in the namespace can keep it.
pub fn covers(desired: &serde_json::Value, live: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .all(|(key, value)| value.is_null() || have.get(key).is_some_and(|h| covers(value, h))),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| covers(w, h))
        }
        _ => desired == live,
    }
}

/// The parts of an object the operator decides: all but the metadata the apiserver manages.
fn decided<K: Serialize>(obj: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("status");
        if let Some(meta) = fields.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.retain(|key, _| matches!(key.as_str(), "labels" | "ownerReferences"));
        }
    }
    value
}

/// The resourceVersion of each child as the operator last wrote or checked it, by kind,
/// namespace and name: an object nobody changed since is not compared again. Without it, a field
/// the apiserver stores in another form than it was sent (a quantity, say) would be re-applied
/// on every reconcile.
#[derive(Default)]
pub struct Checked(Mutex<HashMap<String, String>>);

impl Checked {
    fn key<K: Resource + Serialize>(obj: &K) -> String {
        format!(
            "{}/{}/{}",
            kind_of(obj),
            obj.namespace().unwrap_or_default(),
            obj.name_any()
        )
    }

    fn holds<K: Resource + Serialize>(&self, live: &K) -> bool {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        live.resource_version().is_some()
            && seen.get(&Self::key(live)) == live.resource_version().as_ref()
    }

    /// Forgets the children of a deleted owner: every entry in `namespace` whose name starts
    /// with `prefix` (another owner's entry that shares the prefix is only compared once more).
    pub fn forget(&self, namespace: &str, prefix: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|key, _| {
            let mut parts = key.splitn(3, '/');
            let (_, ns, name) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
            ns != Some(namespace) || !name.starts_with(prefix)
        });
    }

    fn record<K: Resource + Serialize>(&self, live: &K) {
        if let Some(version) = live.resource_version() {
            let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.insert(Self::key(live), version);
        }
    }
}

/// Applies `desired` unless the live object was applied from the same desired state and still
/// holds it. Returns the live object and whether a write happened.
pub async fn apply<K>(
    api: &Api<K>,
    manager: &str,
    checked: &Checked,
    mut desired: K,
) -> Result<(K, bool), Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.name_any();
    let want = digest(&desired);
    if let Some(live) = api.get_opt(&name).await? {
        if !same_owner(&live, &desired) {
            return Err(Error::Taken {
                kind: kind_of(&desired),
                name,
            });
        }
        if live.annotations().get(DIGEST_ANNOTATION) == Some(&want)
            && (checked.holds(&live) || covers(&decided(&desired), &decided(&live)))
        {
            checked.record(&live);
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
    checked.record(&live);
    Ok((live, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    fn secret(meta: serde_json::Value) -> Secret {
        serde_json::from_value(serde_json::json!({"metadata": meta})).unwrap()
    }

    #[test]
    fn forgetting_an_owner_drops_its_children_in_its_namespace_only() {
        let checked = Checked::default();
        let v = |ns: &str, name: &str| {
            secret(serde_json::json!({"name": name, "namespace": ns, "resourceVersion": "7"}))
        };
        for s in [
            v("a", "db-app"),
            v("a", "db-server-tls"),
            v("a", "other-app"),
            v("b", "db-app"),
        ] {
            checked.record(&s);
        }
        checked.forget("a", "db");
        assert!(!checked.holds(&v("a", "db-app")) && !checked.holds(&v("a", "db-server-tls")));
        assert!(checked.holds(&v("a", "other-app")) && checked.holds(&v("b", "db-app")));
    }

    fn owned_by(uid: &str) -> serde_json::Value {
        serde_json::json!({"name": "s", "ownerReferences": [
            {"apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase", "name": "d", "uid": uid}]})
    }

    #[test]
    fn only_an_object_made_for_the_same_owner_may_be_overwritten() {
        let desired = secret(owned_by("u-1"));
        assert!(same_owner(&secret(owned_by("u-1")), &desired));
        assert!(!same_owner(&secret(owned_by("u-2")), &desired));
        assert!(!same_owner(
            &secret(serde_json::json!({"name": "s"})),
            &desired
        ));
        let same_labels =
            secret(serde_json::json!({"name": "s", "labels": {"app.kubernetes.io/instance": "d"}}));
        assert!(!same_owner(&same_labels, &desired));
    }

    #[test]
    fn an_edit_that_keeps_the_digest_is_seen_but_defaults_are_not() {
        let desired = serde_json::json!({"spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 5432}]}],
            "policyTypes": ["Ingress"], "unset": null}});
        let mut live = desired.clone();
        live["spec"]["ingress"][0]["ports"][0]["protocol"] = "TCP".into();
        live["spec"].as_object_mut().unwrap().remove("unset");
        assert!(
            covers(&desired, &live),
            "defaults and unset fields are no drift"
        );
        let mut widened = live.clone();
        widened["spec"]["ingress"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({}));
        assert!(!covers(&desired, &widened), "an added rule is drift");
        let mut changed = live.clone();
        changed["spec"]["podSelector"]["matchLabels"]["app"] = "other".into();
        assert!(!covers(&desired, &changed));
        let mut removed = live;
        removed["spec"]
            .as_object_mut()
            .unwrap()
            .remove("policyTypes");
        assert!(!covers(&desired, &removed));
    }

    #[test]
    fn only_what_the_operator_decides_is_compared() {
        let obj = secret(serde_json::json!({"name": "s", "resourceVersion": "7",
            "annotations": {DIGEST_ANNOTATION: "x"}, "labels": {"a": "b"}}));
        let decided = decided(&obj);
        assert_eq!(
            decided["metadata"],
            serde_json::json!({"labels": {"a": "b"}})
        );
    }

    #[test]
    fn an_object_in_another_namespace_is_recognised_by_its_connection_uid_only() {
        let labelled = |uid: &str| {
            secret(serde_json::json!({"name": "s", "labels": {CONNECTION_UID_LABEL: uid}}))
        };
        assert!(same_owner(&labelled("c-1"), &labelled("c-1")));
        assert!(!same_owner(&labelled("c-2"), &labelled("c-1")));
        assert!(!same_owner(
            &secret(serde_json::json!({"name": "s"})),
            &labelled("c-1")
        ));
        assert!(!same_owner(&labelled(""), &labelled("")));
    }
}
