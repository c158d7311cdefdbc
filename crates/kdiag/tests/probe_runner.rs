//! The probe runner on a real single-node cluster: a Probe runs as a Job whose busybox checker
//! reports over HTTP to the controller; checker pods that fail, exit silently or cannot be
//! scheduled become UNKNOWN.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::batch::v1::Job;
use kdiag_api::*;
use kdiag_controller::probes::runner::RunnerConfig;
use kdiag_controller::{self as controller, ControllerConfig};
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::server::{self, ServerState};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, cluster};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// The cluster with kdiag installed and a controller (with its report endpoint on the bridge)
/// running on a runtime of its own.
async fn setup() -> &'static Cluster {
    static READY: OnceCell<()> = OnceCell::const_new();
    let c = cluster().await;
    READY
        .get_or_init(|| async {
            init_logging();
            c.apply_crds(&kdiag_api::crds::all()).await.unwrap();
            kubectl_apply(c, "config/deploy/00-namespace.yaml");
            kubectl_apply(c, "config/deploy");
            remove_webhook(c.kubectl());
            let subnet = c.pod_subnet();
            let o: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
            let gateway = Ipv4Addr::new(o.octets()[0], o.octets()[1], o.octets()[2], 1);
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = service_account_client(c, "kdiag-controller").await;
                    let config = ControllerConfig {
                        runner: RunnerConfig {
                            report_url: format!("http://{gateway}:{port}/probe-status"),
                            unschedulable_after: Duration::from_secs(3),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let metrics = Arc::new(Metrics::new());
                    let shutdown = CancellationToken::new();
                    let (handle, driver) = controller::start(
                        client.clone(),
                        config,
                        Builtins::standard(),
                        metrics.clone(),
                        shutdown.clone(),
                    );
                    let state = ServerState {
                        metrics,
                        refresh: Arc::new(|| {}),
                        ready: vec![("controller".into(), handle.ready.clone())],
                        routes: kdiag_runtime::server::join(
                            kdiag_agent::server::routes(None),
                            kdiag_controller::server::routes(
                                Some(handle.probe_reports.clone()),
                                None,
                            ),
                        ),
                    };
                    // All addresses: the bridge the pods reach the host on exists only once a pod runs.
                    let serving = server::serve(
                        SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
                        state,
                        shutdown.cancelled_owned(),
                    )
                    .await
                    .unwrap();
                    tokio::spawn(serving);
                    tokio::spawn(driver);
                    tx.send(()).unwrap();
                    std::future::pending::<()>().await;
                });
            });
            rx.recv_timeout(Duration::from_secs(60)).unwrap();
        })
        .await;
    c
}

async fn wait_checker(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    checker: &str,
    timeout: Duration,
) -> ProbeCheckerStatus {
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ps) = api.get_opt(probe).await.unwrap()
            && let Some(c) = ps.spec.checkers.iter().find(|c| c.name == checker)
        {
            return c.clone();
        }
        if Instant::now() >= deadline {
            let ps = api.get_opt(probe).await.unwrap();
            let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns);
            let mut logs = String::new();
            for p in pods.list(&ListParams::default()).await.unwrap().items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let log = pods
                    .logs(&name, &Default::default())
                    .await
                    .unwrap_or_default();
                logs.push_str(&format!("\n{name}: {log}"));
            }
            panic!(
                "checker {checker} of {ns}/{probe} never reported: {:?}{logs}",
                ps.map(|p| p.spec)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn checker_pod(script: &str) -> serde_json::Value {
    json!({"containers": [{"name": "checker", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script]}], "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false})
}

#[tokio::test]
async fn a_probe_runs_as_a_job_like_kubeprobers_and_its_busybox_checker_reports_over_http() {
    let c = setup().await;
    let ns = c.create_namespace("probe-run").await;
    let client = c.client().await;
    // KubeProber's SDK payload, sent the way a shell prober would, with the token kdiag's
    // runner projects into the pod (the controller takes no report without it).
    let script = r#"wget -q -O- --header 'Content-Type: application/json' --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)" --post-data "{\"probeName\":\"$KUBEPROBER_PROBE_NAME\",\"probeNamespace\":\"$KUBEPROBER_PROBE_NAMESPACE\",\"name\":\"\",\"checkers\":[{\"name\":\"disk-check\",\"status\":\"pass\",\"message\":\"$EXTRA\"}]}" "$KUBEPROBER_STATUS_REPORT_URL""#;
    create_probe(
        &client,
        &ns,
        "node-disk",
        json!({"template": checker_pod(script),
        "configs": [{"name": "extra", "env": [{"name": "EXTRA", "value": "from configs"}]}]}),
    )
    .await;
    let started = Instant::now();
    let checker = wait_checker(
        &client,
        &ns,
        "node-disk",
        "disk-check",
        Duration::from_secs(90),
    )
    .await;
    eprintln!(
        "probe created → checker result stored in {:?}",
        started.elapsed()
    );
    assert_eq!(checker.status, CheckerStatus::Pass);
    assert_eq!(
        checker.message, "from configs",
        "configs env reaches the checker"
    );

    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(jobs.len(), 1, "one-shot: one Job");
    let job = &jobs[0];
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels["app"], "kubeprober.erda.cloud");
    assert_eq!(labels["kubeprober.erda.cloud/probe-name"], "node-disk");
    assert_eq!(labels["kubeprober.erda.cloud/probe-namespace"], ns);
    let spec = job.spec.clone().unwrap();
    assert_eq!(
        (spec.backoff_limit, spec.active_deadline_seconds),
        (Some(0), Some(1800))
    );
    let owner = &job.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Probe", "node-disk")
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let env: Vec<String> = pod.containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for name in [
        "KUBEPROBER_PROBE_NAMESPACE",
        "KUBEPROBER_PROBE_NAME",
        "KUBEPROBER_STATUS_REPORT_URL",
        "KDIAG_PROBE_STATUS_TOKEN_FILE",
        "EXTRA",
    ] {
        assert!(env.iter().any(|e| e == name), "{name} missing from {env:?}");
    }
    // The report token: projected, for the report endpoint's audience, short-lived.
    let projection = pod
        .volumes
        .clone()
        .unwrap()
        .into_iter()
        .find_map(|v| v.projected)
        .and_then(|p| p.sources)
        .and_then(|s| s.into_iter().find_map(|s| s.service_account_token))
        .expect("a projected ServiceAccount token");
    assert_eq!(
        (
            projection.audience.as_deref(),
            projection.expiration_seconds
        ),
        (Some("kdiag-probe-status"), Some(600))
    );
    let probe = Api::<Probe>::namespaced(client.clone(), &ns)
        .get("node-disk")
        .await
        .unwrap();
    let st = probe.status.unwrap();
    assert_eq!((st.phase.as_str(), st.runs), ("DONE", Some(1)));
}

#[tokio::test]
async fn a_checker_pod_cannot_report_for_another_probe_nor_without_its_token() {
    let c = setup().await;
    let ns = c.create_namespace("probe-cross").await;
    let client = c.client().await;
    // The checker of "intruder" tries to write "victim"'s result, with its own token and with
    // none, then reports what it was answered to its own probe.
    let script = r#"post() { wget -q -O- --header 'Content-Type: application/json' "$@" --post-data '{"probeName":"victim","probeNamespace":"'$KUBEPROBER_PROBE_NAMESPACE'","name":"","checkers":[{"name":"disk-check","status":"pass"}]}' "$KUBEPROBER_STATUS_REPORT_URL" >/dev/null 2>&1 && echo accepted || echo refused; }
a=$(post --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)"); b=$(post)
wget -q -O- --header 'Content-Type: application/json' --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)" --post-data "{\"probeName\":\"$KUBEPROBER_PROBE_NAME\",\"probeNamespace\":\"$KUBEPROBER_PROBE_NAMESPACE\",\"name\":\"\",\"checkers\":[{\"name\":\"cross\",\"status\":\"pass\",\"message\":\"with token $a, without $b\"}]}" "$KUBEPROBER_STATUS_REPORT_URL""#;
    create_probe(&client, &ns, "victim", json!({})).await;
    create_probe(
        &client,
        &ns,
        "intruder",
        json!({"template": checker_pod(script)}),
    )
    .await;
    let checker = wait_checker(&client, &ns, "intruder", "cross", Duration::from_secs(90)).await;
    assert_eq!(
        checker.message, "with token refused, without refused",
        "{checker:?}"
    );
    assert!(
        Api::<ProbeStatus>::namespaced(client.clone(), &ns)
            .get_opt("victim")
            .await
            .unwrap()
            .is_none(),
        "victim's ProbeStatus was written"
    );
}

#[tokio::test]
async fn a_checker_pod_that_exits_without_reporting_is_unknown() {
    let c = setup().await;
    let ns = c.create_namespace("probe-silent").await;
    let client = c.client().await;
    create_probe(
        &client,
        &ns,
        "silent",
        json!({"template": checker_pod("echo forgot to report; exit 0")}),
    )
    .await;
    let checker = wait_checker(&client, &ns, "silent", "silent", Duration::from_secs(90)).await;
    assert_eq!(checker.status, CheckerStatus::Unknown);
    assert!(
        checker.message.contains("exited without reporting"),
        "{}",
        checker.message
    );
}

#[tokio::test]
async fn a_checker_pod_that_fails_is_unknown_with_the_pods_reason() {
    let c = setup().await;
    let ns = c.create_namespace("probe-crash").await;
    let client = c.client().await;
    create_probe(
        &client,
        &ns,
        "crashing",
        json!({"template": checker_pod("echo boom >&2; exit 2")}),
    )
    .await;
    let checker = wait_checker(
        &client,
        &ns,
        "crashing",
        "crashing",
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(checker.status, CheckerStatus::Unknown);
    assert!(
        checker
            .message
            .starts_with("pod running failed, reason: Error, message: exit code 2"),
        "{}",
        checker.message
    );
}

#[tokio::test]
async fn a_checker_pod_that_cannot_be_scheduled_is_unknown() {
    let c = setup().await;
    let ns = c.create_namespace("probe-pending").await;
    let client = c.client().await;
    let mut pod = checker_pod("true");
    pod["nodeSelector"] = json!({"kdiag.io/no-such-node": "true"});
    create_probe(&client, &ns, "nowhere", json!({"template": pod})).await;
    let checker = wait_checker(&client, &ns, "nowhere", "nowhere", Duration::from_secs(90)).await;
    assert_eq!(checker.status, CheckerStatus::Unknown);
    assert!(
        checker
            .message
            .starts_with("pod running failed, reason: Unschedulable"),
        "{}",
        checker.message
    );
}

#[tokio::test]
async fn native_checks_run_without_an_image_and_pass_on_a_healthy_cluster() {
    let c = setup().await;
    let ns = c.create_namespace("probe-native").await;
    let client = c.client().await;
    create_probe(
        &client,
        &ns,
        "cluster-health",
        json!({"checks": [
            {"name": "apiserver", "apiserver": {}},
            {"name": "namespace-round-trip", "namespaceRoundTrip": {"timeoutSeconds": 60}},
            {"name": "nodes", "nodes": {}},
        ]}),
    )
    .await;
    for name in ["apiserver", "namespace-round-trip", "nodes"] {
        let checker = wait_checker(
            &client,
            &ns,
            "cluster-health",
            name,
            Duration::from_secs(90),
        )
        .await;
        assert_eq!(
            checker.status,
            CheckerStatus::Pass,
            "{name}: {}",
            checker.message
        );
    }
    assert!(
        Api::<Job>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no Job for native checks"
    );
}

/// Whether `user` may `verb` `resource` in `ns`, as the apiserver's RBAC says.
async fn may(client: &kube::Client, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

#[tokio::test]
async fn a_checker_pod_runs_as_kubeprober_worker_with_the_extra_config_map_like_kubeprobers() {
    let c = setup().await;
    let ns = c.create_namespace("probe-worker").await;
    let client = c.client().await;
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "extra-config"}, "data": {"CLUSTER_NAME": "erda-test"}}))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let script = r#"wget -q -O- --header 'Content-Type: application/json' --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)" --post-data "{\"probeName\":\"$KUBEPROBER_PROBE_NAME\",\"probeNamespace\":\"$KUBEPROBER_PROBE_NAMESPACE\",\"checkers\":[{\"name\":\"extra\",\"status\":\"PASS\",\"message\":\"cluster $CLUSTER_NAME\"}]}" "$KUBEPROBER_STATUS_REPORT_URL""#;
    create_probe(
        &client,
        &ns,
        "erda",
        json!({"template": checker_pod(script)}),
    )
    .await;
    let checker = wait_checker(&client, &ns, "erda", "extra", Duration::from_secs(90)).await;
    assert_eq!(
        checker.message, "cluster erda-test",
        "extra-config reaches the checker"
    );

    // The pod the Job controller made runs as the worker account the runner created.
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("kubeprober.erda.cloud/probe-name=erda"))
        .await
        .unwrap()
        .items;
    let pod = pods[0].spec.clone().unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("kubeprober-worker")
    );
    let container = &pod.containers[0];
    assert_eq!(
        container.image_pull_policy.as_deref(),
        Some("IfNotPresent"),
        "the template's pull policy is kept"
    );
    let from = container.env_from.clone().unwrap();
    let cm_ref = from[0].config_map_ref.clone().unwrap();
    assert_eq!(
        (cm_ref.name.as_str(), cm_ref.optional),
        ("extra-config", Some(true))
    );

    // kubeprober-worker reads the Probe's namespace, and nothing secret nor anything elsewhere.
    let worker = format!("system:serviceaccount:{ns}:kubeprober-worker");
    assert!(may(&client, &worker, "list", "pods", &ns).await);
    assert!(!may(&client, &worker, "get", "secrets", &ns).await);
    assert!(!may(&client, &worker, "create", "pods", &ns).await);
    assert!(!may(&client, &worker, "list", "pods", "kube-system").await);
}

#[tokio::test]
async fn a_probe_without_the_extra_config_map_still_runs() {
    let c = setup().await;
    let ns = c.create_namespace("probe-no-extra").await;
    let client = c.client().await;
    let script = r#"wget -q -O- --header 'Content-Type: application/json' --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)" --post-data "{\"probeName\":\"$KUBEPROBER_PROBE_NAME\",\"probeNamespace\":\"$KUBEPROBER_PROBE_NAMESPACE\",\"checkers\":[{\"name\":\"plain\",\"status\":\"PASS\"}]}" "$KUBEPROBER_STATUS_REPORT_URL""#;
    create_probe(
        &client,
        &ns,
        "plain",
        json!({"template": checker_pod(script)}),
    )
    .await;
    let checker = wait_checker(&client, &ns, "plain", "plain", Duration::from_secs(90)).await;
    assert_eq!(checker.status, CheckerStatus::Pass);
}

#[tokio::test]
async fn a_per_config_probe_runs_one_checker_pod_per_config_each_reporting_under_its_name() {
    let c = setup().await;
    let ns = c.create_namespace("per-config").await;
    let client = c.client().await;
    // One case template: every pod reports the same checker name, with its config's values.
    let script = r#"wget -q -O- --header 'Content-Type: application/json' --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)" --post-data "{\"probeName\":\"$KUBEPROBER_PROBE_NAME\",\"probeNamespace\":\"$KUBEPROBER_PROBE_NAMESPACE\",\"name\":\"\",\"checkers\":[{\"name\":\"http\",\"status\":\"$STATUS\",\"message\":\"$URL as $KDIAG_PROBE_CONFIG\"}]}" "$KUBEPROBER_STATUS_REPORT_URL""#;
    create_probe(
        &client,
        &ns,
        "shop",
        json!({"template": checker_pod(script), "perConfig": true, "configs": [
            {"name": "frontend", "env": [{"name": "STATUS", "value": "pass"}, {"name": "URL", "value": "http://frontend"}]},
            {"name": "cart", "env": [{"name": "STATUS", "value": "error"}, {"name": "URL", "value": "http://cart"}]}]}),
    )
    .await;
    let frontend = wait_checker(&client, &ns, "shop", "frontend", Duration::from_secs(90)).await;
    let cart = wait_checker(&client, &ns, "shop", "cart", Duration::from_secs(90)).await;
    assert_eq!(
        (frontend.status, frontend.message.as_str()),
        (CheckerStatus::Pass, "http://frontend as frontend")
    );
    assert_eq!(
        (cart.status, cart.message.as_str()),
        (CheckerStatus::Error, "http://cart as cart")
    );
    // The run that made both pods finishes once both Jobs have ended, with both results.
    let runs: Api<ProbeRun> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    let run = loop {
        let list = runs.list(&ListParams::default()).await.unwrap().items;
        if let Some(r) = list.iter().find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == ProbeRunPhase::Finished)
        }) {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let st = run.status.unwrap();
    assert_eq!(st.jobs.len(), 2, "{st:?}");
    assert_eq!(st.result, Some(CheckerStatus::Error), "{st:?}");
    let mut names: Vec<_> = st.checkers.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["cart", "frontend"], "{st:?}");
}
