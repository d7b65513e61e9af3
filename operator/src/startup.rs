//! Waiting for the CRDs: controllers start only once the apiserver serves every kind, so a fresh
//! install does not fill the log with watch errors.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
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
