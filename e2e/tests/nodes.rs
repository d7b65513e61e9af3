//! Node-local volumes, as on a cluster with local disks: a database whose node stops waits for
//! that node and comes back there with its data; it never starts empty on another node.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use sectordb::api::SectorDatabase;
use sectordb_e2e::{
    TestNamespace, client, connect_with, database, harness, is_ready, poll, ready_reason, wait_for,
};

/// Starts the node again when dropped, so a failed assertion never leaves the cluster a node
/// short for the tests after this one.
struct Stopped(String);

impl Stopped {
    fn node(name: &str) -> Result<Stopped> {
        harness(&["node", "stop", name])?;
        Ok(Stopped(name.to_string()))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Err(e) = harness(&["node", "start", &self.0]) {
            eprintln!("starting node {} again failed: {e:#}", self.0);
        }
    }
}

/// The node the volume's PersistentVolume is bound to (its required node affinity).
fn affinity_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let expr = terms.first()?.match_expressions.as_ref()?.first()?;
    expr.values.as_ref()?.first().cloned()
}

#[tokio::test]
async fn a_database_whose_node_stops_waits_for_its_node_and_its_data() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "node").await?;
    let api: Api<SectorDatabase> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(database("pinned", 2))?,
    )
    .await?;
    wait_for(&api, "pinned", Duration::from_secs(180), "Ready", is_ready).await?;
    let app = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get("pinned-app")
        .await?;
    connect_with(&app)
        .await?
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('on its node')")
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let first = pods.get("pinned-0").await?;
    let node = first
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("pod not scheduled")?;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
        .get("data-pinned-0")
        .await?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .context("claim not bound")?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv_name)
        .await?;
    assert_eq!(
        affinity_node(&pv).as_deref(),
        Some(node.as_str()),
        "the volume is not node-local"
    );

    let stopped = Stopped::node(&node)?;
    // As an administrator who gave up on the node would: the pod object goes at once.
    pods.delete(
        "pinned-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    wait_for(&api, "pinned", Duration::from_secs(90), "not Ready", |db| {
        ready_reason(db).is_some_and(|r| r.0 == "False")
    })
    .await?;
    // Its replacement waits for the stopped node, where its volume lives: unscheduled once the
    // node is marked unreachable, or bound to it before that (the node still looked Ready), but
    // never placed on another node and never running.
    let waiting = poll(
        Duration::from_secs(60),
        "the replacement pod exists",
        || async {
            let pod = pods.get_opt("pinned-0").await.ok().flatten();
            pod.filter(|p| p.uid() != first.uid())
        },
    )
    .await?;
    let mut placed = None;
    for _ in 0..15 {
        let pod = pods.get("pinned-0").await?;
        assert_eq!(pod.uid(), waiting.uid(), "the pod was replaced again");
        placed = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        assert!(
            placed.is_none() || placed.as_deref() == Some(node.as_str()),
            "the database was placed on {placed:?} while its node {node} is stopped"
        );
        let phase = pod.status.and_then(|s| s.phase);
        assert_eq!(
            phase.as_deref(),
            Some("Pending"),
            "the replacement runs while its node is stopped"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!("while {node} is stopped the replacement waits, placed on {placed:?}");

    drop(stopped);
    wait_for(
        &api,
        "pinned",
        Duration::from_secs(180),
        "Ready again",
        is_ready,
    )
    .await?;
    let back = pods.get("pinned-0").await?.spec.and_then(|s| s.node_name);
    assert_eq!(back.as_deref(), Some(node.as_str()));
    let kept: String = connect_with(&app)
        .await?
        .query_one("SELECT v FROM kept", &[])
        .await?
        .get(0);
    assert_eq!(kept, "on its node");
    ns.delete().await
}
