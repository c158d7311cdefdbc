//! A tenant who may only read pods and create Abnormals in one namespace, diagnosing its own
//! crash-looping pod with `kubectl diag` through the installed controller's admission webhook
//! (served in the cluster, reached through its Service) and agent. Part of in_cluster.rs's one
//! install.

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use serde_json::json;

use super::*;

/// What the tenant `default/tenant` may do: read pods, their logs and Events, and create and
/// follow Abnormals, in namespace `default` only. No node right, no exec.
async fn tenant_role(client: &kube::Client) {
    let roles: Api<Role> = Api::namespaced(client.clone(), "default");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "tenant", "namespace": "default"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log", "events"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["diagnosis.netease.com"], "resources": ["abnormals"],
             "verbs": ["get", "list", "watch", "create", "delete"]},
        ]
    }))
    .unwrap();
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create Role default/tenant");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), "default");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenant", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "default"}]
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create RoleBinding default/tenant");
}

/// The default triage needs node rights, so the webhook refuses it to the tenant and says which
/// processors it may name instead; with those, the tenant gets the root cause of its own pod.
/// `path` has `kubectl-diag` first; the crash-loop pod has restarted at least once.
pub async fn a_tenant_diagnoses_its_own_pod_with_the_processors_it_may_use(
    c: &Cluster,
    client: &kube::Client,
    path: &str,
) {
    tenant_role(client).await;
    let token = c.service_account_token("default", "tenant").await;
    let kubeconfig = c.write_kubeconfig_for("tenant", &token);
    let diag = |extra: &[&str]| {
        let mut cmd = Command::new("kubectl");
        cmd.env("PATH", path)
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "diag",
                "run",
                "--pod",
                "crash-loop",
                "--wait",
                "--color=never",
            ])
            .args(extra);
        cmd
    };

    let refused = tokio::task::block_in_place(|| run(diag(&[])));
    let answer = text(&refused);
    println!(
        "tenant: kubectl diag run --pod crash-loop --wait: exit {:?}, {}",
        refused.status.code(),
        answer
            .lines()
            .find(|l| l.contains("denied"))
            .unwrap_or("")
            .trim()
    );
    assert!(
        !refused.status.success(),
        "the default triage (node-wide collectors) was admitted for a tenant without node rights:\n{answer}"
    );
    assert!(
        answer.contains("nodes/proxy")
            && answer.contains("--collector pod-detail-collector --diagnoser pod-triage-diagnoser"),
        "the refusal names neither the missing right nor what the tenant may run instead:\n{answer}"
    );

    // The controller counts the refusal: on whichever replica the apiserver called (their
    // metrics, on their pod IPs).
    let controllers = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=kdiag-controller"))
        .await
        .unwrap()
        .items;
    let mut refused = 0.0;
    for controller in controllers {
        let Some(ip) = controller.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        let metrics = http_get(&ip, 10357, "/metrics")
            .unwrap_or_else(|e| panic!("GET http://{ip}:10357/metrics: {e}"));
        refused += metrics
            .lines()
            .filter(|l| {
                l.starts_with("kdiag_webhook_reviews_total{")
                    && l.contains("kind=\"Abnormal\"")
                    && l.contains("result=\"refused\"")
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>();
    }
    println!("controllers' metrics: {refused} refused Abnormal review(s)");
    assert!(refused >= 1.0, "the controllers counted no refused review");

    let t = Instant::now();
    let out = tokio::task::block_in_place(|| {
        run(diag(&[
            "--collector",
            "pod-detail-collector",
            "--diagnoser",
            "pod-triage-diagnoser",
        ]))
    });
    let report = text(&out);
    println!(
        "tenant: kubectl diag run --pod crash-loop --collector pod-detail-collector --diagnoser pod-triage-diagnoser --wait: exit {:?} after {:.1}s",
        out.status.code(),
        t.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "the tenant's own diagnosis failed:\n{report}\n{}",
        describe(c)
    );
    let root_cause = report
        .lines()
        .find(|l| l.contains("root cause"))
        .unwrap_or_else(|| panic!("no root cause in the tenant's report:\n{report}"));
    println!("  {}", root_cause.trim());
    assert!(
        root_cause.contains("crash-loop") && root_cause.contains("exit code 3"),
        "{report}"
    );
}
