//! The node API (the agent's :10357) against a real apiserver with RBAC: callers authenticate
//! with a bearer token (TokenReview) and need the right that names what they ask for
//! (SubjectAccessReview); /metrics, /healthz and /readyz stay open; recoverers are never served;
//! when the apiserver cannot be asked, requests are refused (503).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kdiag_agent::server::ProcessorService;
use kdiag_runtime::auth::Authorizer;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::server::{self, ServerState};
use kdiag_testenv::ControlPlane;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// (status, body) of `method path` on `base`, with a bearer token when one is given.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, String) {
    let url: reqwest_lite::Url = format!("{base}{path}").parse().unwrap();
    match token {
        Some(t) => {
            let bearer = format!("Bearer {t}");
            reqwest_lite::request_with(url, method, body, &[("authorization", &bearer)]).await
        }
        None => reqwest_lite::request(url, method, body).await,
    }
}

fn abnormal_json(ns: &str, pod: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "ask", "namespace": ns},
        "spec": {"podReference": {"namespace": ns, "name": pod}}
    }))
    .unwrap()
}

/// Creates `kind` (Role or ClusterRole) `name` with `rules`, bound to ServiceAccount `ns/sa`.
async fn grant(
    client: &Client,
    ns: &str,
    sa: &str,
    kind: &str,
    name: &str,
    rules: serde_json::Value,
) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let subjects = json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]);
    let role_ref = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
    let pp = PostParams::default();
    if kind == "Role" {
        let role: Role = serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns}, "rules": rules}),
        )
        .unwrap();
        Api::<Role>::namespaced(client.clone(), ns)
            .create(&pp, &role)
            .await
            .unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns}, "subjects": subjects, "roleRef": role_ref
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), ns)
            .create(&pp, &binding)
            .await
            .unwrap();
    } else {
        let role: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
        Api::<ClusterRole>::all(client.clone())
            .create(&pp, &role)
            .await
            .unwrap();
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name}, "subjects": subjects, "roleRef": role_ref
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&pp, &binding)
            .await
            .unwrap();
    }
}

/// Asks until the answer's status is `want` (RBAC and the refusal cache take a moment), and
/// returns the answer.
async fn until_status(
    base: &str,
    method: &str,
    path: &str,
    body: &[u8],
    token: &str,
    want: u16,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, text) = call(base, method, path, body, Some(token)).await;
        if code == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path} answered {code}, not {want}, for 30s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_anonymous_client_gets_only_metrics_and_health() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("anon").await;
    let agent = TestAgent::start(cp, &format!("{ns}-node")).await;
    let base = format!("http://{}", agent.addr);
    let body = abnormal_json(&ns, "p");

    for path in ["/metrics", "/healthz", "/readyz"] {
        let (code, text) = call(&base, "GET", path, b"", None).await;
        assert_eq!(code, 200, "GET {path}: {text}");
    }
    let profile = format!("/profiles/{ns}/x/heap");
    for (method, path, body) in [
        ("GET", "/processor/process-collector", &b""[..]),
        ("POST", "/processor/node-collector", &body[..]),
        ("POST", "/processor/pod-detail-collector", &body[..]),
        ("GET", profile.as_str(), b""),
    ] {
        let (code, text) = call(&base, method, path, body, None).await;
        assert_eq!(code, 401, "{method} {path}: {text}");
        assert!(
            text.contains("no Authorization header") && text.contains("Bearer <token>"),
            "{method} {path}: {text}"
        );
        let (code, text) = call(&base, method, path, body, Some("not-a-token")).await;
        assert_eq!(code, 401, "{method} {path} with a made-up token: {text}");
        assert!(text.contains("did not accept the bearer token"), "{text}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn a_user_without_the_right_is_told_which_right_and_served_once_granted() {
    let cp = with_controller().await;
    let admin = cp.client().await;
    let ns = cp.create_namespace("rights").await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let base = format!("http://{}", agent.addr);
    let token = cp.service_account_token(&ns, "reader").await;
    let user = format!("system:serviceaccount:{ns}:reader");

    // A pod of the namespace (its ServiceAccount first: admission looks it up).
    cp.service_account_token(&ns, "default").await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "namespace": ns},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    // A profile of an Abnormal of the namespace, on the agent's disk.
    let dir = agent.data_root.join(format!("profiles/{ns}/slow"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("heap"), "the profile").unwrap();
    let profile = format!("/profiles/{ns}/slow/heap");
    let pod_body = abnormal_json(&ns, "app");

    // No rights: 403, naming the right and the line that checks it.
    let (code, text) = call(&base, "GET", "/processor/node-collector", b"", Some(&token)).await;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains(&format!("{user} may not get nodes/proxy named {node}"))
            && text.contains(&format!(
                "kubectl auth can-i get nodes/{node} --subresource=proxy --as {user}"
            )),
        "{text}"
    );
    let (code, text) = call(&base, "GET", &profile, b"", Some(&token)).await;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains(&format!(
            "may not get abnormals/profile (diagnosis.netease.com) named slow in namespace {ns}"
        )),
        "{text}"
    );
    let (code, text) = call(
        &base,
        "POST",
        "/processor/pod-detail-collector",
        &pod_body,
        Some(&token),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains(&format!(
            "may not get abnormals/processor (diagnosis.netease.com) named pod-detail-collector in namespace {ns}"
        )),
        "{text}"
    );

    // The namespace's rights: its profiles and the pod-scoped collector about its pods.
    grant(
        &admin,
        &ns,
        "reader",
        "Role",
        "node-api-reader",
        json!([{"apiGroups": ["diagnosis.netease.com"],
                "resources": ["abnormals/profile", "abnormals/processor"], "verbs": ["get"]}]),
    )
    .await;
    let served = until_status(&base, "GET", &profile, b"", &token, 200).await;
    assert_eq!(served, "the profile");
    let detail = until_status(
        &base,
        "POST",
        "/processor/pod-detail-collector",
        &pod_body,
        &token,
        200,
    )
    .await;
    let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(
        detail["status"]["context"]["podDetailInformation"]["pod"]["metadata"]["name"], "app",
        "{detail}"
    );
    // Still not another namespace's pod, nor the node-wide built-ins.
    let (code, text) = call(
        &base,
        "POST",
        "/processor/pod-detail-collector",
        &abnormal_json("kube-system", "etcd"),
        Some(&token),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("in namespace kube-system"), "{text}");
    let (code, _) = call(&base, "GET", "/processor/node-collector", b"", Some(&token)).await;
    assert_eq!(code, 403);

    // The node-wide right, for this node only.
    grant(
        &admin,
        &ns,
        "reader",
        "ClusterRole",
        &format!("{ns}-node-proxy"),
        json!([{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"],
                "resourceNames": [node]}]),
    )
    .await;
    let raw = until_status(&base, "GET", "/processor/node-collector", b"", &token, 200).await;
    assert!(raw.starts_with('{'), "a collector's data in JSON: {raw}");
    agent.stop().await;
}

#[tokio::test]
async fn a_recoverer_is_never_run_over_http_not_even_for_an_admin() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("no-recover").await;
    let agent = TestAgent::start(cp, &format!("{ns}-node")).await;
    let base = format!("http://{}", agent.addr);
    let mut victim = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let body = serde_json::to_vec(&json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "kill", "namespace": ns},
        "spec": {"context": {"signalRecovery": [{"pid": victim.id(), "signal": 9}]}}
    }))
    .unwrap();

    for (method, body) in [("POST", &body[..]), ("GET", b"")] {
        let (code, text) = call(
            &base,
            method,
            "/processor/signal-recoverer",
            body,
            Some(cp.admin_token()),
        )
        .await;
        assert_eq!(code, 403, "{method}: {text}");
        assert!(
            text.contains("never run over HTTP") && text.contains("spec.recoverers"),
            "{text}"
        );
    }
    assert!(victim.try_wait().unwrap().is_none(), "the process lives");
    victim.kill().unwrap();
    let _ = victim.wait();
    agent.stop().await;
}

/// An agent's routes whose reviews are made with `client`.
async fn serve_node_api(cp: &ControlPlane, node: &str, client: Client) -> String {
    let state = ServerState {
        metrics: Arc::new(Metrics::new()),
        refresh: Arc::new(|| {}),
        ready: vec![],
        routes: kdiag_agent::server::routes(Some(ProcessorService {
            builtins: Builtins::standard(),
            authorizer: Arc::new(Authorizer::new(client.clone())),
            client,
            node_name: node.into(),
            max_output_bytes: 64 * 1024,
            node: Default::default(),
            data_root: cp.run_dir().join(format!("fail-closed-{node}")),
        })),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serving = server::serve(([127, 0, 0, 1], port).into(), state, std::future::pending())
        .await
        .unwrap();
    tokio::spawn(serving);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn when_the_apiserver_cannot_be_asked_the_node_api_refuses_with_503() {
    let cp = installed().await;
    let ns = cp.create_namespace("closed").await;
    // An identity that may not create TokenReviews: every review fails.
    let powerless = cp
        .client_with_token(&cp.service_account_token(&ns, "powerless").await)
        .await;
    let base = serve_node_api(cp, &format!("{ns}-node"), powerless).await;
    let (code, text) = call(
        &base,
        "GET",
        "/processor/node-collector",
        b"",
        Some(cp.admin_token()),
    )
    .await;
    assert_eq!(code, 503, "{text}");
    assert!(
        text.contains("could not be asked") && text.contains("TokenReview failed"),
        "{text}"
    );
    // Metrics and health do not depend on the apiserver.
    let (code, _) = call(&base, "GET", "/healthz", b"", None).await;
    assert_eq!(code, 200);
}

/// `routes` served on a free loopback port, as `--kube-diagnoser-port` serves them.
async fn serve_routes(routes: kdiag_runtime::server::Routes) -> String {
    let state = ServerState {
        metrics: Arc::new(Metrics::new()),
        refresh: Arc::new(|| {}),
        ready: vec![],
        routes,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serving = server::serve(([127, 0, 0, 1], port).into(), state, std::future::pending())
        .await
        .unwrap();
    tokio::spawn(serving);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn kube_diagnosers_agent_paths_answer_in_its_shapes_to_callers_with_the_node_apis_rights() {
    let cp = with_controller().await;
    let admin = cp.client().await;
    let ns = cp.create_namespace("upstream-paths").await;
    let node = format!("{ns}-node");
    let client = service_account_client(cp, "kdiag-agent").await;
    let base = serve_routes(kdiag_agent::upstream::routes(Some(ProcessorService {
        builtins: Builtins::standard(),
        authorizer: Arc::new(Authorizer::new(client.clone())),
        client,
        node_name: node.clone(),
        max_output_bytes: 1024 * 1024,
        node: Default::default(),
        data_root: cp.run_dir().join(format!("upstream-{node}")),
    })))
    .await;
    cp.service_account_token(&ns, "default").await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "namespace": ns},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let body = abnormal_json(&ns, "app");
    let token = cp.service_account_token(&ns, "tool").await;
    let user = format!("system:serviceaccount:{ns}:tool");
    let calls: [(&str, &str, &[u8]); 4] = [
        ("GET", "/informationcollector/podcollector", b""),
        ("POST", "/informationcollector/podcollector", &body),
        ("POST", "/diagnoser/terminatingpoddiagnoser", &body),
        ("GET", "/informationcollector", b""),
    ];

    // Anonymous: 401; a token without the right: 403 naming it; /healthz stays open.
    for (method, path, body) in calls {
        let (code, text) = call(&base, method, path, body, None).await;
        assert_eq!(code, 401, "{method} {path}: {text}");
        let (code, text) = call(&base, method, path, body, Some(&token)).await;
        assert_eq!(code, 403, "{method} {path}: {text}");
        assert!(
            text.contains(&format!("{user} may not get nodes/proxy named {node}")),
            "{text}"
        );
    }
    assert_eq!(call(&base, "GET", "/healthz", b"", None).await.0, 200);

    grant(
        &admin,
        &ns,
        "tool",
        "ClusterRole",
        &format!("{ns}-node-proxy"),
        json!([{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"],
                "resourceNames": [node]}]),
    )
    .await;
    // GET on a collector: the array itself, as Kube Diagnoser's []corev1.Pod.
    let pods = until_status(
        &base,
        "GET",
        "/informationcollector/podcollector",
        b"",
        &token,
        200,
    )
    .await;
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    assert_eq!(pods[0]["metadata"]["name"], "app", "{pods}");
    assert_eq!(pods.as_array().map(Vec::len), Some(1), "{pods}");
    // POST: the plugin protocol, the Abnormal back with the collector's key.
    let (code, text) = call(
        &base,
        "POST",
        "/informationcollector/podcollector",
        &body,
        Some(&token),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let answered: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answered["metadata"]["name"], "ask");
    assert_eq!(
        answered["status"]["context"]["podInformation"][0]["metadata"]["name"], "app",
        "{answered}"
    );
    // The diagnoser runs (it finds no terminating pod here: not identified, 500, as Kube
    // Diagnoser answered a diagnoser that failed).
    let (code, text) = call(
        &base,
        "POST",
        "/diagnoser/terminatingpoddiagnoser",
        &body,
        Some(&token),
    )
    .await;
    assert!(![401, 403, 404, 405].contains(&code), "{code}: {text}");
    // The registrations of a kind, as an array.
    let (code, text) = call(&base, "GET", "/informationcollector", b"", Some(&token)).await;
    assert_eq!(code, 200, "{text}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .is_array(),
        "{text}"
    );
    // A diagnoser has no GET; a recoverer is never served, not even to an admin; other paths
    // are not there.
    let (code, _) = call(
        &base,
        "GET",
        "/diagnoser/poddiskusagediagnoser",
        b"",
        Some(&token),
    )
    .await;
    assert_eq!(code, 405);
    let (code, text) = call(
        &base,
        "POST",
        "/recoverer/signalrecoverer",
        &body,
        Some(cp.admin_token()),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("never run over HTTP"), "{text}");
    let (code, _) = call(
        &base,
        "GET",
        "/informationcollector/nosuchcollector",
        b"",
        Some(&token),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn kube_diagnosers_cluster_health_path_says_it_is_not_enabled() {
    let base = serve_routes(kdiag_controller::server::cluster_health()).await;
    let (code, text) = call(&base, "GET", "/clusterhealth", b"", None).await;
    assert_eq!(code, 422, "{text}");
    assert!(
        text.starts_with("cluster health evaluator is not enabled"),
        "{text}"
    );
}
