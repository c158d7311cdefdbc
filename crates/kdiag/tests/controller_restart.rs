//! Admission exactly once, across controller restarts. This binary runs its own controllers
//! (no shared one), so a test can stop and start them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kdiag_api::*;
use kdiag_controller::ControllerConfig;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn start_controller(cp: &kdiag_testenv::ControlPlane) -> tokio::task::JoinHandle<()> {
    let client = service_account_client(cp, "kdiag-controller").await;
    let (_handle, driver) = kdiag_controller::start(
        client,
        ControllerConfig::default(),
        Builtins::standard(),
        Arc::new(Metrics::new()),
        CancellationToken::new(),
    );
    tokio::spawn(driver)
}

#[tokio::test]
async fn a_controller_restarted_after_routing_but_before_accepting_accepts_from_the_routed_fields()
{
    let cp = installed().await;
    let ns = cp.create_namespace("half-admitted").await;
    let client = cp.client().await;
    // The state a controller leaves when it dies between its routing patch and its status
    // write: routed to a node standing in for a pod on no node, no phase. The pod does not
    // exist, so deciding again could not route it: only the routed fields can.
    let stand_in = json!({"pod": format!("{ns}/web"), "why": "the scheduler found no node that fits it",
        "leftOut": ["container-collector"]});
    let routed: Abnormal = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "half", "namespace": ns,
            "labels": {labels::NODE_LABEL: "n2"},
            "annotations": {labels::STAND_IN_ANNOTATION: stand_in.to_string()}},
        "spec": {"podReference": {"name": "web"}, "nodeName": "n2",
            "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-detail-collector"}]},
    }))
    .unwrap();
    let api: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    let created = api.create(&PostParams::default(), &routed).await.unwrap();

    let controller = start_controller(cp).await;
    let accepted = wait_for(&client, &ns, "half", Duration::from_secs(30), |a| {
        a.phase().is_some()
    })
    .await;
    let reasons = event_reasons_at_least(&client, &ns, "half", 1).await;
    controller.abort();
    assert_eq!(accepted.phase(), Some(AbnormalPhase::InformationCollecting));
    let st = accepted.status.clone().unwrap();
    assert_eq!(st.conditions.len(), 1);
    assert_eq!(
        st.conditions[0].message,
        format!(
            "routed to node n2 to stand in for unscheduled pod {ns}/web: it is on no node (the scheduler found no node that fits it); only collectors that read the apiserver run (left out: container-collector)"
        )
    );
    assert_eq!(reasons, ["Accepted"]);
    assert_eq!(accepted.spec, created.spec, "not routed again");
    assert_eq!(accepted.labels(), created.labels());
}

#[tokio::test]
async fn controllers_killed_and_restarted_during_admission_admit_each_abnormal_once() {
    let cp = installed().await;
    let ns = cp.create_namespace("restarts").await;
    let client = cp.client().await;
    ensure_node(&client, &format!("{ns}-node")).await;
    for i in 0..40 {
        create_abnormal(
            &client,
            &ns,
            &format!("a-{i:02}"),
            json!({"nodeName": format!("{ns}-node")}),
        )
        .await;
    }
    // Kill the controller a few times while it works through the backlog.
    for pause_ms in [150u64, 300, 450] {
        let c = start_controller(cp).await;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        c.abort();
    }
    let c = start_controller(cp).await;
    for i in 0..40 {
        let name = format!("a-{i:02}");
        let a = wait_for(&client, &ns, &name, Duration::from_secs(60), |a| {
            a.labels().contains_key(labels::NODE_LABEL) && a.phase().is_some()
        })
        .await;
        assert_eq!(
            a.phase(),
            Some(AbnormalPhase::InformationCollecting),
            "{name}"
        );
        let accepted = a
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .filter(|c| c.type_ == AbnormalConditionType::Accepted)
            .count();
        assert_eq!(accepted, 1, "{name}");
        let events = event_reasons(&client, &ns, &name).await;
        assert!(
            events.iter().filter(|r| *r == "Accepted").count() <= 1,
            "{name} admitted twice: {events:?}"
        );
    }
    c.abort();
}
