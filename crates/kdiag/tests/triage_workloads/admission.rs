//! Pods the apiserver refuses to a ReplicaSet, for real: an admission webhook that denies them,
//! one the apiserver cannot call (its Service does not exist) under failurePolicy Fail, and a
//! ResourceQuota on requests that the pod template does not set.
//!
//! The webhooks run on the cluster every test shares, so they are scoped to leave everything
//! else alone: only pods, only CREATE, only in a namespace carrying this test's own label and
//! only pods with this test's `app` labels; a guard deletes the configuration even when an
//! assertion fails.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, ResourceQuota};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{delete_namespace, diag_run, from, sleeper, template, wait_for};
use crate::triage_support::webhook::{
    DENIAL, WebhookConfiguration, denying_webhook, wait_refused, webhook,
};

/// The ReplicaSet of Deployment `name` once its ReplicaFailure condition is set; its name and
/// the condition's message.
async fn refused_replica_set(sets: &Api<ReplicaSet>, name: &str) -> (String, String) {
    wait_for(
        &format!("ReplicaFailure on {name}'s ReplicaSet"),
        || async {
            sets.list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .ok()?
                .items
                .into_iter()
                .find_map(|rs| {
                    let message = rs
                        .status?
                        .conditions?
                        .into_iter()
                        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?
                        .message?;
                    Some((rs.metadata.name?, message))
                })
        },
    )
    .await
}

async fn deploy(deployments: &Api<Deployment>, app: &str) {
    deployments
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": app}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": app}}, "template": template(app, sleeper())}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rollout_refused_by_an_admission_webhook_names_the_webhook_its_configuration_the_replicaset_and_what_it_said()
 {
    let c = kdiag_testenv::cluster().await;
    let client = c.client().await;
    let ns = c.create_namespace("webhook").await;
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kdiag.test/webhook-scope": ns}}})),
        )
        .await
        .unwrap();
    let (port, ca) = denying_webhook().await;
    let name = format!("kdiag-test-{ns}");
    let configurations: Api<
        k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration,
    > = Api::all(client.clone());
    configurations
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name}, "webhooks": [
                webhook("deny.kdiag.test", &ns, "denied", json!({
                    "url": format!("https://127.0.0.1:{port}/deny"),
                    "caBundle": k8s_openapi::ByteString(ca.into_bytes())})),
                webhook("gone.kdiag.test", &ns, "unreachable", json!({
                    "service": {"namespace": ns, "name": "kdiag-gone", "path": "/validate"}})),
            ]})),
        )
        .await
        .unwrap();
    let guard = WebhookConfiguration {
        cluster: c,
        name: name.clone(),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_refused(&pods, "denied", DENIAL).await;
    wait_refused(&pods, "unreachable", "failed calling webhook").await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deploy(&deployments, "denied").await;
    deploy(&deployments, "unreachable").await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let (denied_rs, message) = refused_replica_set(&sets, "denied").await;
    eprintln!("ReplicaFailure of {denied_rs}: {message}");
    let (unreachable_rs, message) = refused_replica_set(&sets, "unreachable").await;
    eprintln!("ReplicaFailure of {unreachable_rs}: {message}");

    let denied = diag_run(c, &["--deployment", &format!("{ns}/denied")]).await;
    let unreachable = diag_run(c, &["--deployment", &format!("{ns}/unreachable")]).await;
    drop(guard);

    assert_eq!(denied.code, 0, "{denied}");
    assert!(
        denied.stdout.starts_with(&format!(
            "Root cause:   Deployment {ns}/denied cannot create its pods (0 of 1 exist): its ReplicaSet {ns}/{denied_rs} is refused by admission webhook \"deny.kdiag.test\" (of ValidatingWebhookConfiguration {name}): {DENIAL}\n"
        )),
        "{denied}"
    );
    assert!(
        denied.stdout.contains("  Reason:     PodCreationDenied"),
        "{denied}"
    );
    assert!(
        denied.stdout.contains(&format!(
            "- [AdmissionWebhook] validatingwebhookconfiguration/{name}: webhook deny.kdiag.test calls URL https://127.0.0.1:{port}/deny, failurePolicy Fail, timeout 5 s"
        )),
        "{denied}"
    );

    assert_eq!(unreachable.code, 0, "{unreachable}");
    assert!(
        unreachable.stdout.starts_with(&format!(
            "Root cause:   Deployment {ns}/unreachable cannot create its pods (0 of 1 exist): its ReplicaSet {ns}/{unreachable_rs} is refused because the apiserver cannot call admission webhook \"gone.kdiag.test\" (of ValidatingWebhookConfiguration {name}, calling service {ns}/kdiag-gone:443/validate) and its failurePolicy is Fail: service \"kdiag-gone\" not found"
        )),
        "{unreachable}"
    );
    assert!(
        unreachable
            .stdout
            .contains("  Reason:     AdmissionWebhookFailing"),
        "{unreachable}"
    );
    assert!(
        unreachable.stdout.contains(&format!(
            "kubectl delete validatingwebhookconfiguration {name}"
        )),
        "{unreachable}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_quota_on_requests_refuses_pods_that_set_none_and_names_the_quota_and_the_containers_lacking_them()
 {
    let c = kdiag_testenv::cluster().await;
    let client = c.client().await;
    let ns = c.create_namespace("quota-requests").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    quotas
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "compute"},
                "spec": {"hard": {"requests.cpu": "1", "requests.memory": "1Gi"}}})),
        )
        .await
        .unwrap();
    // Until the quota controller has written its status, admission refuses every pod with
    // "status unknown": wait for it so the refusal is the one this test is about.
    wait_for("the quota's status", || async {
        quotas
            .get("compute")
            .await
            .ok()?
            .status?
            .hard
            .filter(|h| h.contains_key("requests.cpu"))
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deploy(&deployments, "web").await;
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let (rs, message) = refused_replica_set(&sets, "web").await;
    eprintln!("ReplicaFailure of {rs}: {message}");

    let ran = diag_run(c, &["--deployment", &format!("{ns}/web")]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.starts_with(&format!(
            "Root cause:   Deployment {ns}/web cannot create its pods (0 of 1 exist): its ReplicaSet {ns}/{rs} is refused by ResourceQuota {ns}/compute, which requires every pod to set requests.cpu,requests.memory; in the pod template container app sets no requests.cpu, requests.memory\n"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout
            .contains("  Reason:     ResourceQuotaMissingRequests"),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "- [ResourceQuota] resourcequota/{ns}/compute: hard requests.cpu=1, requests.memory=1Gi; used requests.cpu=0, requests.memory=0"
        )),
        "{ran}"
    );
    delete_namespace(&client, &ns).await;
}
