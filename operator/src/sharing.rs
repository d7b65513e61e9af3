//! The objects a granted DataSharingConnection delivers, built from the connection and its
//! provider. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{DataSharingConnection, SectorDatabase};
use crate::dataplane::{self, Credentials};
use crate::pgconf::PORT;
use crate::sharing_sql::GrantedTable;

/// Label on everything delivered for a connection, so it can be found across namespaces.
pub use crate::apply::CONNECTION_UID_LABEL;

/// The NetworkPolicy that opens the provider's database to the consumer's namespace.
pub fn network_policy_name(conn: &DataSharingConnection) -> String {
    format!("dsc-{}", conn.name_any())
}

/// The tables and columns the provider declares in `dataset`; `None` when it declares no such
/// dataset.
pub fn granted_tables(provider: &SectorDatabase, dataset: &str) -> Option<Vec<GrantedTable>> {
    let declared = provider
        .spec
        .sharing
        .iter()
        .flat_map(|s| &s.datasets)
        .find(|d| d.name == dataset)?;
    Some(
        declared
            .tables
            .iter()
            .map(|t| GrantedTable {
                schema: t.schema.clone(),
                table: t.name.clone(),
                columns: t.columns.clone(),
            })
            .collect(),
    )
}

/// The credentials Secret's name in the consumer namespace.
pub fn secret_name(conn: &DataSharingConnection) -> String {
    conn.spec
        .consumer
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", conn.name_any()))
}

fn labels(conn: &DataSharingConnection) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/part-of".into(), "sectordb".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "sectordb-operator".into(),
        ),
        ("app.kubernetes.io/component".into(), "data-sharing".into()),
        (CONNECTION_UID_LABEL.into(), conn.uid().unwrap_or_default()),
        (
            "sectordb.io/provider-namespace".into(),
            conn.namespace().unwrap_or_default(),
        ),
        ("sectordb.io/connection".into(), conn.name_any()),
    ])
}

/// The consumer's Secret. It lives in another namespace than the connection, so no owner
/// reference: the controller deletes it on revocation.
pub fn consumer_secret(
    conn: &DataSharingConnection,
    endpoint: &dataplane::Endpoint,
    role: &str,
    password: &str,
    ca_pem: &str,
) -> Secret {
    let mut secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret_name(conn), "namespace": conn.spec.consumer.namespace, "labels": labels(conn)},
    }))
    .expect("a valid Secret");
    secret.data = Some(dataplane::credentials_data(&Credentials {
        endpoint,
        user: role,
        password,
        ca_pem,
    }));
    secret
}

/// Opens the provider database's port to the consumer namespace, for as long as the grant lasts.
pub fn network_policy(conn: &DataSharingConnection, provider: &SectorDatabase) -> NetworkPolicy {
    let owner = conn
        .controller_owner_ref(&())
        .expect("a stored connection has a name and uid");
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(conn), "namespace": conn.namespace(), "labels": labels(conn), "ownerReferences": [owner]},
        "spec": {
            "podSelector": {"matchLabels": dataplane::selector_labels(provider)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": conn.spec.consumer.namespace}}}],
                "ports": [{"protocol": "TCP", "port": PORT}]
            }]
        }
    }))
    .expect("a valid NetworkPolicy")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> SectorDatabase {
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "SectorDatabase",
            "metadata": {"name": "health-records", "namespace": "so-y-te", "uid": "p-1"},
            "spec": {"agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Shared",
                     "securityLevel": 3, "storage": {"size": "1Gi"}, "database": {"name": "health", "owner": "app"},
                     "sharing": {"datasets": [{"name": "vaccinations", "tables": [
                        {"schema": "public", "name": "vaccination_records", "columns": ["id", "district"]}]}]}}
        }))
        .unwrap()
    }

    fn conn(secret_name: Option<&str>) -> DataSharingConnection {
        let mut consumer = json!({"agency": {"code": "000.00.20.H53", "name": "Labour"}, "namespace": "so-lao-dong"});
        if let Some(name) = secret_name {
            consumer["secretName"] = json!(name);
        }
        serde_json::from_value(json!({
            "apiVersion": "sectordb.io/v1alpha1", "kind": "DataSharingConnection",
            "metadata": {"name": "vax", "namespace": "so-y-te", "uid": "c-1"},
            "spec": {"provider": {"database": "health-records", "dataset": "vaccinations"}, "consumer": consumer,
                     "purpose": "Verify eligibility", "legalBasis": "Decree 47/2020", "validUntil": "2027-01-01T00:00:00Z"}
        }))
        .unwrap()
    }

    #[test]
    fn only_declared_datasets_are_granted() {
        let tables = granted_tables(&provider(), "vaccinations").unwrap();
        assert_eq!(
            tables[0].describe(),
            "public.vaccination_records(id,district)"
        );
        assert!(granted_tables(&provider(), "diagnoses").is_none());
    }

    #[test]
    fn the_secret_goes_to_the_consumer_namespace() {
        let endpoint = dataplane::Endpoint {
            host: "health-records-rw.so-y-te.svc",
            host_addr: "10.96.0.7",
            database: "health",
        };
        let secret = consumer_secret(&conn(None), &endpoint, "dsc_c1", "pw", "CA");
        assert_eq!(secret.metadata.namespace.as_deref(), Some("so-lao-dong"));
        assert_eq!(secret.metadata.name.as_deref(), Some("vax-credentials"));
        assert_eq!(secret.metadata.labels.unwrap()[CONNECTION_UID_LABEL], "c-1");
        assert_eq!(secret_name(&conn(Some("from-health"))), "from-health");
    }

    #[test]
    fn the_network_policy_admits_only_the_consumer_namespace_to_the_provider() {
        let np = network_policy(&conn(None), &provider());
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "health-records"
        );
        let from = &spec.ingress.unwrap()[0].from.clone().unwrap()[0];
        assert_eq!(
            from.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "so-lao-dong"
        );
    }
}
