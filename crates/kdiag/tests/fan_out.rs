//! An Abnormal that names neither a node nor a pod runs on every node, as Kube Diagnoser
//! v0.1.0–v0.1.5 ran it: one child Abnormal per node, the parent's status summarising them. This
//! binary has a control plane of its own, so it alone decides how many nodes there are.

mod common;

use std::time::Duration;

use common::*;
use kdiag_api::*;
use kdiag_controller::ControllerConfig;
use kube::api::{Api, ListParams};
use serde_json::json;

const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_abnormal_without_a_target_runs_once_on_every_node_and_ends_with_each_nodes_result() {
    let cp = installed().await;
    start_background_controller(
        cp,
        ControllerConfig {
            fan_out_max_nodes: 2,
            ..Default::default()
        },
    );
    let ns = cp.create_namespace("fan-out").await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "everywhere",
        plugin.port,
        "/echo/seen",
        5,
    )
    .await;
    let (a, b) = (format!("{ns}-a"), format!("{ns}-b"));
    let agent_a = TestAgent::start(cp, &a).await;
    let agent_b = TestAgent::start(cp, &b).await;
    // As a Kube Diagnoser v0.1.5 user wrote it: no nodeName, no podReference.
    create_abnormal(
        &client,
        &ns,
        "all-nodes",
        json!({"assignedInformationCollectors": [{"name": "everywhere"}]}),
    )
    .await;
    let parent = wait_final(&client, &ns, "all-nodes", FINISH).await;
    let st = parent.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    assert_eq!(st.message, "succeeded on all 2 nodes");
    let fanned = &st.context.unwrap_or_default()["fanOut"];
    let nodes: Vec<&str> = fanned
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, [a.as_str(), b.as_str()]);
    let children = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "kdiag.io/fan-out-parent={}",
            parent.metadata.uid.clone().unwrap()
        )))
        .await
        .unwrap()
        .items;
    assert_eq!(children.len(), 2);
    for child in &children {
        assert_eq!(child.phase(), Some(AbnormalPhase::Succeeded));
        assert_eq!(
            child.status.as_ref().unwrap().context.as_ref().unwrap()["seen"],
            json!("seen-value"),
            "each node's agent ran the collector"
        );
    }
    assert_eq!(plugin.count("/echo/seen"), 2, "once per node");

    // A third node is more than this controller's --fan-out-max-nodes.
    ensure_node(&client, &format!("{ns}-c")).await;
    create_abnormal(
        &client,
        &ns,
        "too-many",
        json!({"assignedInformationCollectors": [{"name": "everywhere"}]}),
    )
    .await;
    let refused = wait_final(&client, &ns, "too-many", FINISH).await;
    let st = refused.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "FanOutTooLarge", "{}", st.message);
    assert!(
        st.message.contains("--fan-out-max-nodes is 2"),
        "{}",
        st.message
    );
    agent_a.stop().await;
    agent_b.stop().await;
}
