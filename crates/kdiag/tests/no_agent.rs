//! Abnormals no agent will take: a node that does not exist is rejected at admission; an
//! admitted Abnormal on a node that is gone or runs no agent ends Failed (NoAgent) after the
//! grace period, and garbage collection removes it. This binary runs its own controller with a
//! short grace period and TTL.

mod common;

use std::time::Duration;

use common::*;
use kdiag_api::*;
use kdiag_controller::ControllerConfig;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

const GRACE: Duration = Duration::from_secs(3);
const TTL: Duration = Duration::from_secs(4);
const FINISH: Duration = Duration::from_secs(60);

async fn controller() -> &'static kdiag_testenv::ControlPlane {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let cp = installed().await;
    STARTED
        .get_or_init(|| async {
            start_background_controller(
                cp,
                ControllerConfig {
                    no_agent_grace: Some(GRACE),
                    gc_interval: Duration::from_secs(1),
                    ttl: TTL,
                    ..Default::default()
                },
            );
        })
        .await;
    cp
}

#[tokio::test]
async fn an_abnormal_for_a_node_that_does_not_exist_is_rejected_at_admission() {
    let cp = controller().await;
    let ns = cp.create_namespace("ghost-node").await;
    let client = cp.client().await;
    create_abnormal(&client, &ns, "typo", json!({"nodeName": "no-such-node"})).await;
    let st = wait_final(&client, &ns, "typo", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "NodeNotFound");
    assert!(
        st.message.contains("\"no-such-node\"") && st.message.contains("kubectl get nodes"),
        "{}",
        st.message
    );
    let accepted = st
        .conditions
        .iter()
        .find(|c| c.type_ == AbnormalConditionType::Accepted)
        .unwrap();
    assert_eq!(accepted.status, ConditionStatus::False);
}

#[tokio::test]
async fn abnormals_no_agent_takes_end_failed_after_the_grace_period_and_are_collected() {
    let cp = controller().await;
    let ns = cp.create_namespace("no-agent").await;
    let client = cp.client().await;
    let (busy, idle, doomed) = (
        format!("{ns}-busy"),
        format!("{ns}-idle"),
        format!("{ns}-doomed"),
    );
    for node in [&busy, &idle, &doomed] {
        ensure_node(&client, node).await;
    }
    // A running kdiag-agent pod on the busy node: its Abnormals wait in its queue.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("kdiag-agent-{ns}"), "labels": {"app.kubernetes.io/name": "kdiag-agent"}},
        "spec": {"nodeName": busy, "serviceAccountName": "kdiag-agent", "automountServiceAccountToken": false,
                 "containers": [{"name": "agent", "image": "kdiag"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    // The busy node's Abnormal first: it is past the grace period whenever the others are.
    for (name, node) in [
        ("queued", &busy),
        ("unserved", &idle),
        ("orphaned", &doomed),
    ] {
        create_abnormal(&client, &ns, name, json!({"nodeName": node})).await;
        wait_for(&client, &ns, name, FINISH, |a| {
            a.labels().contains_key(labels::NODE_LABEL)
        })
        .await;
    }
    // The node goes away after admission.
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete(&doomed, &Default::default())
        .await
        .unwrap();

    let unserved = wait_final(&client, &ns, "unserved", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(unserved.phase, Some(AbnormalPhase::Failed));
    assert_eq!(unserved.reason, "NoAgent");
    assert!(
        unserved
            .message
            .contains(&format!("node {idle} runs no kdiag-agent pod"))
            && unserved.message.contains("within 3s")
            && unserved
                .message
                .contains("kubectl -n kube-diagnoser get pods"),
        "{}",
        unserved.message
    );
    let orphaned = wait_final(&client, &ns, "orphaned", FINISH)
        .await
        .status
        .unwrap();
    assert_eq!(orphaned.reason, "NoAgent");
    assert!(
        orphaned
            .message
            .contains(&format!("node {doomed} does not exist")),
        "{}",
        orphaned.message
    );
    assert!(
        event_reasons_at_least(&client, &ns, "unserved", 2)
            .await
            .contains(&"NoAgent".to_owned())
    );
    // The sweep that failed those looked at the busy node's Abnormal too: it still waits.
    let queued = Api::<Abnormal>::namespaced(client.clone(), &ns)
        .get("queued")
        .await
        .unwrap();
    assert_eq!(
        queued.phase(),
        Some(AbnormalPhase::InformationCollecting),
        "an Abnormal queued on a node with an agent is not failed"
    );

    // Final, so garbage collection removes them after the TTL.
    let api: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + FINISH;
    for name in ["unserved", "orphaned"] {
        while api.get_opt(name).await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} was not garbage-collected"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(api.get_opt("queued").await.unwrap().is_some());
}
