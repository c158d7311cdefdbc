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
async fn a_controller_restarted_after_admitting_but_before_routing_routes_without_admitting_again()
{
    let cp = installed().await;
    let ns = cp.create_namespace("half-admitted").await;
    let client = cp.client().await;
    ensure_node(&client, "n1").await;
    let created = create_abnormal(&client, &ns, "half", json!({"nodeName": "n1"})).await;
    // The state a controller leaves when it dies between its status write and its label write.
    let started = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    );
    let mut admitted = created.clone();
    admitted.status = Some(AbnormalStatus {
        phase: Some(AbnormalPhase::InformationCollecting),
        start_time: Some(started.clone()),
        conditions: vec![AbnormalCondition {
            type_: AbnormalConditionType::Accepted,
            status: ConditionStatus::True,
            last_transition_time: Some(started.clone()),
            reason: "Accepted".into(),
            message: "routed to node n1".into(),
        }],
        ..Default::default()
    });
    let api: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    api.replace_status("half", &PostParams::default(), &admitted)
        .await
        .unwrap();

    let controller = start_controller(cp).await;
    let routed = wait_for(&client, &ns, "half", Duration::from_secs(30), |a| {
        a.labels().contains_key(labels::NODE_LABEL)
    })
    .await;
    controller.abort();
    let st = routed.status.unwrap();
    assert_eq!(
        st.start_time,
        Some(started),
        "startTime is the first admission's"
    );
    assert_eq!(st.conditions.len(), 1);
    assert!(
        event_reasons(&client, &ns, "half").await.is_empty(),
        "no second Accepted event"
    );
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
            a.labels().contains_key(labels::NODE_LABEL)
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
