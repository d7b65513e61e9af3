//! Smoke tests of the operator as the chart installs it on the local cluster: it is ready, serves
//! its CRDs and metrics, reports true status, refuses bad input, and survives losing its pod.
//! Run by scripts/test after `helm install`; they share the one operator, so they run one at a
//! time (`--test-threads=1`).

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use sectordb::api::SectorDatabase;
use sectordb::api::database::DatabasePhase;
use sectordb_e2e::{
    OPERATOR_NAME, OPERATOR_NAMESPACE, TestNamespace, client, database, observed_current,
    operator_metrics, operator_ready, ready_reason, wait_for,
};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn chart_installs_a_ready_operator_with_established_crds() -> Result<()> {
    let client = client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    wait_for(
        &deployments,
        OPERATOR_NAME,
        2 * MINUTE,
        "deployment available",
        |d| {
            d.and_then(|d| d.status.as_ref()?.available_replicas)
                .unwrap_or(0)
                >= 1
        },
    )
    .await?;
    assert_eq!(operator_ready(&client).await?, "ready");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "sectordatabases.sectordb.io",
        "datasharingconnections.sectordb.io",
        "backuppolicies.sectordb.io",
    ] {
        let crd = crds.get(name).await?;
        let established = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            established
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name} not established"
        );
        assert_eq!(
            crd.metadata
                .annotations
                .unwrap_or_default()
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep")
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_schema_rejects_bad_input_and_the_operator_reports_what_cel_would() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "invalid").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<SectorDatabase>(&()),
    );

    // Schema: a level outside 1..5 and a malformed agency code never reach the operator.
    for (patch, field) in [
        (json!({"securityLevel": 6}), "spec.securityLevel"),
        (
            json!({"agency": {"code": "not a code", "name": "x"}}),
            "spec.agency.code",
        ),
        (json!({"sector": "Astrology"}), "spec.sector"),
    ] {
        let mut bad = database("bad", 3);
        for (k, v) in patch.as_object().unwrap() {
            bad["spec"][k] = v.clone();
        }
        // Sent as raw JSON: the typed client could not even express these values.
        let error = raw
            .create(
                &PostParams::default(),
                &serde_json::from_value::<DynamicObject>(bad)?,
            )
            .await;
        let error = error
            .err()
            .with_context(|| format!("{field} was accepted"))?;
        assert!(
            matches!(&error, kube::Error::Api(s) if s.code == 422),
            "{field}: {error}"
        );
        assert!(
            error.to_string().contains(field),
            "{field} not named in: {error}"
        );
    }

    // A cross-field rule: plain connections at level 3. Apiservers with CEL refuse it; on
    // those without (1.20), the operator reports InvalidSpec naming the field.
    let mut plain = database("plain", 3);
    plain["spec"]["tls"] = json!({"mode": "Optional"});
    match api
        .create(&PostParams::default(), &serde_json::from_value(plain)?)
        .await
    {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("spec.tls.mode"), "{}", s.message),
        Err(other) => return Err(other.into()),
        Ok(_) => {
            let db = wait_for(&api, "plain", MINUTE, "InvalidSpec", |db| {
                ready_reason(db).is_some_and(|r| r.1 == "InvalidSpec") && observed_current(db)
            })
            .await?;
            let (_, _, message) = ready_reason(db.as_ref()).unwrap();
            assert!(message.contains("spec.tls.mode"), "{message}");
            assert_eq!(
                db.unwrap().status.unwrap().phase,
                Some(DatabasePhase::Failed)
            );
        }
    }

    // Immutability: renaming the database after acceptance.
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("renamed", 2))?,
    )
    .await?;
    wait_for(&api, "renamed", MINUTE, "accepted and pinned", |db| {
        db.and_then(|d| d.status.as_ref()?.pinned.as_ref())
            .is_some()
    })
    .await?;
    let rename = Patch::Merge(json!({"spec": {"database": {"name": "other"}}}));
    match api.patch("renamed", &PatchParams::default(), &rename).await {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("immutable"), "{}", s.message),
        Err(other) => return Err(other.into()),
        Ok(_) => {
            let db = wait_for(&api, "renamed", MINUTE, "InvalidSpec after rename", |db| {
                ready_reason(db).is_some_and(|r| r.1 == "InvalidSpec") && observed_current(db)
            })
            .await?;
            assert!(
                ready_reason(db.as_ref())
                    .unwrap()
                    .2
                    .contains("spec.database")
            );
        }
    }
    // The operator kept running through all of it.
    assert_eq!(operator_ready(&client).await?, "ready");
    ns.delete().await
}

#[tokio::test]
async fn metrics_are_served() -> Result<()> {
    let client = client().await?;
    let metrics = operator_metrics(&client).await?;
    assert!(metrics.contains("sectordb_leader 1"), "{metrics}");
    assert!(
        metrics.contains("sectordb_reconciles_total{controller="),
        "{metrics}"
    );
    assert!(
        metrics.contains("sectordb_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );
    Ok(())
}
