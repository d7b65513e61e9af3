//! What the operator learns from the apiserver before its controllers start: that every CRD is
//! established (so a fresh install does not fill the log with watch errors), and which API
//! versions the cluster serves where versions differ between supported Kubernetes releases.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, GroupVersionKind};
use kube::{Api, Client};

use crate::crdgen;

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Returns once every CRD the operator serves is established; logs what it still waits for.
pub async fn wait_for_crds(client: Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let names: Vec<String> = crdgen::all()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let mut delay = Duration::from_millis(250);
    loop {
        let mut missing = Vec::new();
        for name in &names {
            match api.get_opt(name).await {
                Ok(Some(crd)) if established(&crd) => {}
                Ok(_) => missing.push(name.clone()),
                Err(error) => missing.push(format!("{name} ({error})")),
            }
        }
        if missing.is_empty() {
            tracing::info!("CRDs established");
            return;
        }
        tracing::info!(?missing, "waiting for CRDs to be established");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Where the cluster serves PodDisruptionBudgets: policy/v1 from Kubernetes 1.21, policy/v1beta1
/// before (the local 1.20 cluster), neither on a cluster that disabled both.
pub async fn disruption_budget_api(client: &Client) -> Option<ApiResource> {
    for version in ["v1", "v1beta1"] {
        let served = client
            .list_api_group_resources(&format!("policy/{version}"))
            .await
            .is_ok_and(|list| {
                list.resources
                    .iter()
                    .any(|r| r.name == "poddisruptionbudgets")
            });
        if served {
            tracing::info!(version, "PodDisruptionBudgets served by policy/{version}");
            let gvk = GroupVersionKind::gvk("policy", version, "PodDisruptionBudget");
            return Some(ApiResource::from_gvk_with_plural(
                &gvk,
                "poddisruptionbudgets",
            ));
        }
    }
    tracing::warn!("the cluster serves no PodDisruptionBudget API; databases get none");
    None
}
