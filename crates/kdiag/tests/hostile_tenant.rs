//! A hostile tenant against the admission webhook, on a real apiserver with RBAC: the controller
//! serves the webhook (its own CA and certificate, the caBundle written into
//! config/deploy/webhook.yaml's configuration) and the apiserver calls it for every create and
//! update of an Abnormal, an AbnormalSource and a registration.
//!
//! The tenant is ServiceAccount team-a/alice, who may edit kdiag's objects, read logs and exec in
//! namespace team-a only; team-a/carol may create Abnormals and read logs there, but not exec.
//! Every way out of team-a is refused with a message naming the missing right; alice's own
//! diagnosis of her own pod is admitted and runs; a cluster admin can still do everything
//! node-wide; kdiag's own components still write.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kdiag_api::{Abnormal, AbnormalSource, InformationCollector};
use kdiag_controller::ControllerConfig;
use kdiag_controller::webhook::{ClientConfig, PATH, WebhookConfig};
use kdiag_testenv::ControlPlane;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::OnceCell;

const NODE: &str = "hostile-node";
const ALICE: &str = "system:serviceaccount:team-a:alice";
const CAROL: &str = "system:serviceaccount:team-a:carol";

/// What every test shares. Clients are made per test: one made on another test's runtime stops
/// working when that test ends.
struct Env {
    cp: &'static ControlPlane,
    alice_token: String,
    carol_token: String,
}

/// Clients of one test.
struct Clients {
    cp: &'static ControlPlane,
    admin: Client,
    alice: Client,
    carol: Client,
}

async fn env() -> Clients {
    let e = shared().await;
    Clients {
        cp: e.cp,
        admin: e.cp.client().await,
        alice: e.cp.client_with_token(&e.alice_token).await,
        carol: e.cp.client_with_token(&e.carol_token).await,
    }
}

/// The control plane with the webhook's configuration applied and a controller serving it at a
/// URL (`--webhook=url`), two tenant namespaces with a pod each, and the tenants.
async fn shared() -> &'static Env {
    static ENV: OnceCell<Env> = OnceCell::const_new();
    ENV.get_or_init(|| async {
        let cp = installed().await;
        let admin = cp.client().await;
        kubectl_apply(cp, "config/deploy/webhook.yaml");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        start_background_controller(
            cp,
            ControllerConfig {
                pod_wait: Duration::from_secs(4),
                webhook: Some(WebhookConfig {
                    bind: SocketAddr::from(([127, 0, 0, 1], port)),
                    reach: ClientConfig::Url(format!("https://127.0.0.1:{port}{PATH}")),
                    configuration: WEBHOOK_CONFIGURATION.into(),
                    secret: (
                        kdiag_api::SYSTEM_NAMESPACE.into(),
                        kdiag_controller::webhook::DEFAULT_SECRET.into(),
                    ),
                    exempt_users: WebhookConfig::default_exempt_users(),
                }),
                ..Default::default()
            },
        );
        ensure_node(&admin, NODE).await;
        for ns in ["team-a", "team-b"] {
            let namespace: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            match Api::<Namespace>::all(admin.clone())
                .create(&PostParams::default(), &namespace)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("create namespace {ns}: {e}"),
            }
            // Pods need their namespace's default ServiceAccount (no controller makes it here).
            cp.service_account_token(ns, "default").await;
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": ns},
                "spec": {"nodeName": NODE, "automountServiceAccountToken": false,
                         "containers": [{"name": "web", "image": "busybox"}]}
            }))
            .unwrap();
            match Api::<Pod>::namespaced(admin.clone(), ns)
                .create(&PostParams::default(), &pod)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("create pod {ns}/web: {e}"),
            }
        }
        let kdiag_objects = json!({
            "apiGroups": ["diagnosis.netease.com"],
            "resources": ["abnormals", "abnormalsources", "informationcollectors", "diagnosers", "recoverers"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]
        });
        grant(
            &admin,
            "alice",
            json!([kdiag_objects,
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
        )
        .await;
        grant(
            &admin,
            "carol",
            json!([
                {"apiGroups": ["diagnosis.netease.com"], "resources": ["abnormals"],
                 "verbs": ["get", "list", "create"]},
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]),
        )
        .await;
        let alice_token = cp.service_account_token("team-a", "alice").await;
        let carol_token = cp.service_account_token("team-a", "carol").await;
        // The apiserver picks the configuration's new caBundle up from its own cache: wait
        // until a request really passes through the webhook.
        wait_until_webhook_answers(&admin).await;
        Env {
            cp,
            alice_token,
            carol_token,
        }
    })
    .await
}

/// Role `name` in team-a with `rules`, bound to ServiceAccount team-a/`name`.
async fn grant(admin: &Client, name: &str, rules: serde_json::Value) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let pp = PostParams::default();
    let role: Role = serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": "team-a"}, "rules": rules}),
    )
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "team-a"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "team-a"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    }))
    .unwrap();
    for r in [
        Api::<Role>::namespaced(admin.clone(), "team-a")
            .create(&pp, &role)
            .await
            .map(|_| ()),
        Api::<RoleBinding>::namespaced(admin.clone(), "team-a")
            .create(&pp, &binding)
            .await
            .map(|_| ()),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("grant {name}: {e}"),
        }
    }
}

async fn wait_until_webhook_answers(admin: &Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = abnormal("team-a", "webhook-probe", json!({"nodeName": NODE}));
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    loop {
        match Api::<Abnormal>::namespaced(admin.clone(), "team-a")
            .create(&dry_run, &probe)
            .await
        {
            Ok(_) => return,
            // Connection refused or an unknown authority until the apiserver has the new
            // caBundle.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the admission webhook never answered: {e}"),
        }
    }
}

fn abnormal(ns: &str, name: &str, spec: serde_json::Value) -> Abnormal {
    serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap()
}

fn kdiag(name: &str) -> serde_json::Value {
    json!({"namespace": "kube-diagnoser", "name": name})
}

/// Creates `object` as `client`; Ok, or the apiserver's message.
async fn create<K>(client: &Client, ns: &str, object: &K) -> Result<K, String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), object)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message.clone(),
            other => other.to_string(),
        })
}

/// The webhook's refusal of `result`, checked to come from the webhook.
fn refusal<T: std::fmt::Debug>(result: Result<T, String>) -> String {
    let message = result.expect_err("the webhook must refuse this");
    assert!(
        message.contains("admission webhook") && message.contains("denied the request"),
        "not the webhook's refusal: {message}"
    );
    message
}

#[tokio::test]
async fn an_abnormal_about_another_namespaces_pod_is_refused_naming_the_right() {
    let e = env().await;
    let a = abnormal(
        "team-a",
        "into-team-b",
        json!({"podReference": {"namespace": "team-b", "name": "web"},
               "assignedInformationCollectors": [kdiag("pod-detail-collector")]}),
    );
    let m = refusal(create(&e.alice, "team-a", &a).await);
    assert!(
        m.contains(&format!(
            "user {ALICE:?} may not get pods/log in namespace \"team-b\", which this Abnormal needs because it runs pod-detail-collector against pod team-b/web"
        )),
        "{m}"
    );
    assert!(
        m.contains("kubectl auth can-i get pods/web --subresource=log -n team-b"),
        "{m}"
    );
}

#[tokio::test]
async fn node_wide_host_pid_and_node_file_abnormals_are_refused_to_a_tenant() {
    let e = env().await;
    let cases = [
        (
            json!({"nodeName": NODE}),
            format!("may not get nodes/proxy on node {NODE:?}"),
        ),
        (
            json!({"podReference": {"name": "web"},
                   "assignedInformationCollectors": [kdiag("process-collector")]}),
            "process-collector, which reads the whole node".to_owned(),
        ),
        (
            json!({"podReference": {"name": "web"},
                   "profilers": [{"name": "jvm", "type": "Diagnoser",
                                  "java": {"type": "Arthas", "pid": 1}}]}),
            "names host pid 1".to_owned(),
        ),
        (
            json!({"podReference": {"name": "web"},
                   "profilers": [{"name": "heap", "type": "Diagnoser",
                                  "go": {"source": "/etc/kubernetes/admin.conf"}}]}),
            "reads file /etc/kubernetes/admin.conf of the node".to_owned(),
        ),
        (
            json!({"podReference": {"name": "web"},
                   "commandExecutors": [{"command": ["ps", "aux"], "type": "InformationCollector"}]}),
            "command-executor \"ps aux\"".to_owned(),
        ),
        (
            json!({"podReference": {"name": "web"},
                   "assignedRecoverers": [kdiag("signal-recoverer")],
                   "context": {"signalRecovery": [{"pid": 1, "signal": 9}]}}),
            "spec.context.signalRecovery names host pids".to_owned(),
        ),
    ];
    for (i, (spec, says)) in cases.into_iter().enumerate() {
        let a = abnormal("team-a", &format!("node-wide-{i}"), spec.clone());
        let m = refusal(create(&e.alice, "team-a", &a).await);
        assert!(m.contains(&says), "{spec}: {m}");
        assert!(m.contains("nodes/proxy"), "{spec}: {m}");
    }
}

#[tokio::test]
async fn a_signal_against_ones_own_pod_needs_the_exec_right() {
    let e = env().await;
    let a = abnormal(
        "team-a",
        "carol-signals",
        json!({"podReference": {"name": "web"},
               "assignedRecoverers": [kdiag("signal-recoverer")]}),
    );
    let m = refusal(create(&e.carol, "team-a", &a).await);
    assert!(
        m.contains(&format!(
            "user {CAROL:?} may not create pods/exec in namespace \"team-a\", which this Abnormal needs because it runs signal-recoverer against pod team-a/web"
        )),
        "{m}"
    );
    // Alice may exec in team-a: the same Abnormal is hers to create.
    let mut mine = a.clone();
    mine.metadata.name = Some("alice-signals".into());
    create(&e.alice, "team-a", &mine).await.unwrap();
}

#[tokio::test]
async fn a_tenants_diagnosis_of_its_own_pod_is_admitted_and_runs() {
    let e = env().await;
    let agent = TestAgent::start(e.cp, NODE).await;
    let a = abnormal(
        "team-a",
        "own-pod",
        json!({"podReference": {"name": "web"},
               "assignedInformationCollectors": [kdiag("pod-detail-collector")],
               "assignedDiagnosers": [kdiag("pod-triage-diagnoser")]}),
    );
    create(&e.alice, "team-a", &a).await.unwrap();
    // The controller routes it (labels, spec.nodeName: writes by kdiag's own identity) and the
    // agent writes its status.
    let done = wait_final(&e.alice, "team-a", "own-pod", Duration::from_secs(60)).await;
    let status = done.status.clone().unwrap_or_default();
    assert!(
        !status.processors.is_empty(),
        "the agent recorded its steps: {status:?}"
    );
    assert_eq!(done.spec.node_name, NODE, "the controller routed it");
    agent.stop().await;
}

#[tokio::test]
async fn the_spec_of_an_admitted_abnormal_cannot_change_but_kdiag_still_writes() {
    let e = env().await;
    let a = abnormal(
        "team-a",
        "no-edits",
        json!({"podReference": {"name": "web"},
               "assignedInformationCollectors": [kdiag("pod-detail-collector")]}),
    );
    create(&e.alice, "team-a", &a).await.unwrap();
    let api = Api::<Abnormal>::namespaced(e.alice.clone(), "team-a");
    let retarget = json!({"spec": {"podReference": {"namespace": "team-b", "name": "web"}}});
    let m = refusal(
        api.patch(
            "no-edits",
            &PatchParams::default(),
            &Patch::Merge(&retarget),
        )
        .await
        .map_err(|e| e.to_string()),
    );
    assert!(m.contains("cannot change after it was created"), "{m}");
    let relabel = json!({"metadata": {"labels": {(kdiag_api::labels::NODE_LABEL): "elsewhere"}}});
    let m = refusal(
        api.patch("no-edits", &PatchParams::default(), &Patch::Merge(&relabel))
            .await
            .map_err(|e| e.to_string()),
    );
    assert!(m.contains(kdiag_api::labels::NODE_LABEL), "{m}");
    // A label of her own is hers to set.
    let own = json!({"metadata": {"labels": {"team": "a"}}});
    api.patch("no-edits", &PatchParams::default(), &Patch::Merge(&own))
        .await
        .unwrap();
    // Not even a cluster admin changes the spec: only kdiag's own components do.
    let admin_api = Api::<Abnormal>::namespaced(e.admin.clone(), "team-a");
    let m = refusal(
        admin_api
            .patch(
                "no-edits",
                &PatchParams::default(),
                &Patch::Merge(&retarget),
            )
            .await
            .map_err(|e| e.to_string()),
    );
    assert!(m.contains("cannot change"), "{m}");
    // The controller's own writes (routing: a label, spec.nodeName) went through.
    wait_for(
        &e.alice,
        "team-a",
        "no-edits",
        Duration::from_secs(30),
        |a| a.spec.node_name == NODE,
    )
    .await;
}

#[tokio::test]
async fn sources_and_registrations_that_would_act_elsewhere_are_refused() {
    let e = env().await;
    let alert_source: AbnormalSource = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
        "metadata": {"name": "alerts", "namespace": "team-a"},
        "spec": {"sourceTemplate": {"type": "PrometheusAlert",
                  "prometheusAlertTemplate": {"regexp": {"alertName": "Oops"}, "nodeNameReferenceLabel": "node"}},
                 "assignedInformationCollectors": [kdiag("pod-detail-collector")]}
    }))
    .unwrap();
    let m = refusal(create(&e.alice, "team-a", &alert_source).await);
    assert!(
        m.contains("may not get nodes/proxy") && m.contains("creates Abnormals about nodes"),
        "{m}"
    );
    let event_source = |name: &str, collector: &str| -> AbnormalSource {
        serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"sourceTemplate": {"type": "KubernetesEvent",
                      "kubernetesEventTemplate": {"regexp": {"reason": "BackOff"}}},
                     "assignedInformationCollectors": [kdiag(collector)]}
        }))
        .unwrap()
    };
    let m = refusal(
        create(
            &e.alice,
            "team-a",
            &event_source("processes", "process-collector"),
        )
        .await,
    );
    assert!(
        m.contains("process-collector, which reads the whole node"),
        "{m}"
    );
    // Within team-a, reading team-a's pods: hers to create.
    create(
        &e.alice,
        "team-a",
        &event_source("backoff", "pod-detail-collector"),
    )
    .await
    .unwrap();

    let registration = |name: &str| -> InformationCollector {
        serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "InformationCollector",
            "metadata": {"name": name, "namespace": "team-a"}, "spec": {}
        }))
        .unwrap()
    };
    let m = refusal(create(&e.alice, "team-a", &registration("kernel-log-collector")).await);
    assert!(
        m.contains("may not get nodes/proxy") && m.contains("kernel-log-collector"),
        "{m}"
    );
    create(&e.alice, "team-a", &registration("pod-detail-collector"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cluster_admin_may_still_do_everything_node_wide() {
    let e = env().await;
    for (i, spec) in [
        json!({"nodeName": NODE, "assignedInformationCollectors": [kdiag("process-collector")]}),
        json!({"podReference": {"namespace": "team-b", "name": "web"},
               "commandExecutors": [{"command": ["uptime"], "type": "InformationCollector"}],
               "assignedRecoverers": [kdiag("signal-recoverer")]}),
        // Kube Diagnoser's own example, unchanged.
        example_spec("examples/abnormal.yaml"),
    ]
    .into_iter()
    .enumerate()
    {
        let a = abnormal("team-a", &format!("admin-{i}"), spec.clone());
        create(&e.admin, "team-a", &a)
            .await
            .unwrap_or_else(|m| panic!("{spec}: {m}"));
    }
}

fn example_spec(path: &str) -> serde_json::Value {
    let yaml = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    v["spec"].clone()
}

#[tokio::test]
async fn the_certificate_is_kept_in_its_secret_and_a_restart_serves_the_same_one() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;
    use kdiag_controller::webhook::cert;
    let e = env().await;
    let secret = Api::<Secret>::namespaced(e.admin.clone(), kdiag_api::SYSTEM_NAMESPACE)
        .get(kdiag_controller::webhook::DEFAULT_SECRET)
        .await
        .unwrap();
    let ca = secret.data.unwrap()[cert::CA_KEY].0.clone();
    let configuration = Api::<ValidatingWebhookConfiguration>::all(e.admin.clone())
        .get(WEBHOOK_CONFIGURATION)
        .await
        .unwrap();
    for w in configuration.webhooks.unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.map(|b| b.0),
            Some(ca.clone()),
            "the caBundle is the Secret's CA"
        );
    }
    // What a restarted controller (or a second replica) does first, with its own identity.
    let controller = service_account_client(e.cp, "kdiag-controller").await;
    let hosts = ClientConfig::Url("https://127.0.0.1:1/validate".into()).hosts();
    let again = cert::ensure_secret(
        &controller,
        kdiag_api::SYSTEM_NAMESPACE,
        kdiag_controller::webhook::DEFAULT_SECRET,
        &hosts,
    )
    .await
    .unwrap();
    assert_eq!(
        again.ca_pem.as_bytes(),
        ca.as_slice(),
        "the same CA is served"
    );
}
