//! `kubectl diag` and the install path as an operator meets them: the built kdiag binary, called
//! as `kdiag diag …` and through kubectl's plugin mechanism (a `kubectl-diag` symlink on PATH),
//! against a real apiserver with the controller and an agent running in-process under
//! config/deploy's RBAC; plus `kubectl apply -k config/deploy` on fresh control planes.

mod common;
mod docs;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use kdiag_api::{Abnormal, AbnormalPhase};
use kdiag_testenv::ControlPlane;
use kube::api::{Api, PostParams};
use serde::Deserialize as _;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::sync::OnceCell;

const KDIAG: &str = env!("CARGO_BIN_EXE_kdiag");
const FINISH: Duration = Duration::from_secs(60);

/// What a command did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `kdiag diag <args>` with KUBECONFIG pointing at `kubeconfig`.
async fn kdiag_with(kubeconfig: &Path, args: &[&str]) -> Ran {
    let out = tokio::process::Command::new(KDIAG)
        .arg("diag")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR")
        .output()
        .await
        .expect("the kdiag binary runs");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn kdiag(cp: &ControlPlane, args: &[&str]) -> Ran {
    kdiag_with(cp.kubeconfig_path(), args).await
}

/// A directory holding `kubectl-diag`, a symlink to the built binary, as a user installs it.
fn plugin_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kdiag-plugin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(KDIAG, dir.join("kubectl-diag")).unwrap();
        dir
    })
}

/// `kubectl diag <args>`: kubectl finds the plugin on PATH and hands it the arguments.
async fn kubectl_diag(cp: &ControlPlane, args: &[&str]) -> Ran {
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("kubectl")
        .arg("diag")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .output()
        .await
        .expect("kubectl runs");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A namespace with plugins that collect (`echo`), identify a cause (`finder`), fail (`broken`)
/// and recover (`fixer`), all registered in it.
async fn namespace_with_plugins(cp: &ControlPlane, prefix: &str) -> (String, TestPlugin) {
    let ns = cp.create_namespace(prefix).await;
    let client = cp.client().await;
    let plugin = TestPlugin::start().await;
    for (kind, name, path) in [
        ("InformationCollector", "echo", "/echo/collected"),
        ("Diagnoser", "finder", "/root-cause/DiskFull"),
        ("Diagnoser", "broken", "/fail/500"),
        ("Recoverer", "fixer", "/echo/fixed"),
    ] {
        register_plugin(&client, &ns, kind, name, plugin.port, path, 5).await;
    }
    (ns, plugin)
}

/// An Abnormal for `node` that collects with `echo` and finds a cause with `finder`.
async fn create_succeeding(cp: &ControlPlane, ns: &str, name: &str, node: &str) {
    create_abnormal(
        &cp.client().await,
        ns,
        name,
        json!({
            "nodeName": node,
            "assignedInformationCollectors": [{"name": "echo"}],
            "assignedDiagnosers": [{"name": "finder"}],
            "commandExecutors": [{"command": ["echo", "hello from a command"], "type": "InformationCollector"}],
        }),
    )
    .await;
}

#[tokio::test]
async fn kubectl_diag_get_lists_abnormals_with_phase_node_source_root_cause_and_age() {
    let cp = with_controller().await;
    let (ns, _plugin) = namespace_with_plugins(cp, "get").await;
    let node = format!("{ns}-node");
    let _agent = TestAgent::start(cp, &node).await;
    create_succeeding(cp, &ns, "disk", &node).await;
    wait_final(&cp.client().await, &ns, "disk", FINISH).await;

    let ran = kubectl_diag(cp, &["get", "-n", &ns]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        words(lines[0]),
        ["NAME", "PHASE", "NODE", "SOURCE", "ROOT", "CAUSE", "AGE"],
        "{ran}"
    );
    let row = words(lines[1]);
    assert_eq!(row[..4], ["disk", "Succeeded", &node, "Custom"], "{ran}");
    assert_eq!(row[4..6], ["found", "DiskFull"], "{ran}");
    assert!(row[6].ends_with('s'), "an age in seconds: {ran}");
    assert!(!ran.stdout.contains('\x1b'), "no colour into a pipe: {ran}");

    let wide = kubectl_diag(cp, &["get", "disk", "-n", &ns, "-o", "wide"]).await;
    assert_eq!(wide.code, 0, "{wide}");
    assert!(
        wide.stdout
            .lines()
            .next()
            .unwrap()
            .ends_with("REASON   STARTED                STEPS"),
        "{wide}"
    );
    // echo's command, echo, finder.
    assert!(
        wide.stdout.lines().nth(1).unwrap().ends_with("   3"),
        "{wide}"
    );

    let json = kdiag(cp, &["get", "-n", &ns, "-o", "json"]).await;
    let list: serde_json::Value = serde_json::from_str(&json.stdout).expect("-o json is JSON");
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"][0]["status"]["rootCause"]["reason"],
        "DiskFull"
    );

    let all = kdiag(cp, &["get", "-A"]).await;
    assert!(all.stdout.starts_with("NAMESPACE "), "{all}");
    assert!(all.stdout.contains(&ns), "{all}");

    let missing = kdiag(cp, &["get", "nope", "-n", &ns]).await;
    assert_eq!(missing.code, 3, "{missing}");
    assert_eq!(
        missing.stderr.trim(),
        format!("error: Abnormal \"nope\" not found in namespace \"{ns}\"")
    );

    let empty_ns = cp.create_namespace("empty").await;
    let empty = kdiag(cp, &["get", "-n", &empty_ns]).await;
    assert_eq!(empty.code, 0, "{empty}");
    assert_eq!(empty.stdout, "");
    assert_eq!(
        empty.stderr.trim(),
        format!("No Abnormals found in {empty_ns} namespace.")
    );
}

#[tokio::test]
async fn kubectl_diag_describe_tells_trigger_steps_commands_root_cause_and_events() {
    let cp = with_controller().await;
    let (ns, _plugin) = namespace_with_plugins(cp, "describe").await;
    let node = format!("{ns}-node");
    let _agent = TestAgent::start(cp, &node).await;
    create_succeeding(cp, &ns, "disk", &node).await;
    wait_final(&cp.client().await, &ns, "disk", FINISH).await;
    // Events are written after the status; give the last one a moment.
    let client = cp.client().await;
    for _ in 0..50 {
        if event_reasons(&client, &ns, "disk").await.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ran = kubectl_diag(cp, &["describe", "disk", "-n", &ns]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let out = &ran.stdout;
    let in_order = [
        "Name:         disk".to_owned(),
        format!("Namespace:    {ns}"),
        "Phase:        Succeeded".into(),
        format!("Node:         {node}"),
        "Trigger:".into(),
        "  Source:     Custom".into(),
        "Root cause:   found DiskFull".into(),
        "  Reason:     DiskFull".into(),
        format!("  Found by:   {ns}/finder"),
        "Timeline:".into(),
        "Created".into(),
        "Admission               kdiag-controller".into(),
        "InformationCollecting   command echo hello from a command".into(),
        format!("InformationCollecting   {ns}/echo"),
        "InformationCollected (stage)".into(),
        format!("Diagnosing              {ns}/finder"),
        "Identified (stage)".into(),
        "Recovered (stage)".into(),
        "Skipped".into(),
        "Succeeded".into(),
        "Commands:".into(),
        "  echo 'hello from a command' [InformationCollector]".into(),
        "Collected:    collected".into(),
        "Events:".into(),
        "Accepted".into(),
        "Identified".into(),
    ];
    let mut from = 0;
    for needle in &in_order {
        let at = out[from..]
            .find(needle.as_str())
            .unwrap_or_else(|| panic!("{needle:?} missing (in this order) from:\n{ran}"));
        from += at + needle.len();
    }
    assert!(!out.contains('\x1b'), "plain when not a terminal: {ran}");

    let coloured = kdiag(cp, &["describe", "disk", "-n", &ns, "--color=always"]).await;
    assert!(
        coloured.stdout.contains("\x1b[32mSucceeded\x1b[0m"),
        "{coloured}"
    );
    let yaml = kdiag(cp, &["describe", "disk", "-n", &ns, "-o", "yaml"]).await;
    let parsed: Abnormal = serde_yaml::from_str(&yaml.stdout).expect("-o yaml is the Abnormal");
    assert_eq!(parsed.phase(), Some(AbnormalPhase::Succeeded));
}

#[tokio::test]
async fn kubectl_diag_watch_follows_each_step_live_and_ends_with_the_abnormal() {
    let cp = with_controller().await;
    let (ns, _plugin) = namespace_with_plugins(cp, "watch").await;
    let node = format!("{ns}-node");
    // No agent yet: the Abnormal is admitted (its Node exists) and then waits, so the watch
    // sees it happen.
    common::ensure_node(&cp.client().await, &node).await;
    create_succeeding(cp, &ns, "live", &node).await;
    let mut watch = tokio::process::Command::new(KDIAG)
        .args(["diag", "watch", "live", "-n", &ns, "--timeout", "90s"])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The watch is running and has seen the admission before any step runs.
    while !seen.iter().any(|l: &String| l.contains("accepted")) {
        let line = tokio::time::timeout(FINISH, lines.next_line())
            .await
            .expect("the watch prints the admission")
            .unwrap()
            .expect("the watch is still running");
        seen.push(line);
    }
    assert!(
        !seen.iter().any(|l| l.contains("Succeeded")),
        "nothing ran yet: {seen:#?}"
    );
    let _agent = TestAgent::start(cp, &node).await;
    while let Some(line) = tokio::time::timeout(FINISH, lines.next_line())
        .await
        .expect("the watch ends when the Abnormal finishes")
        .unwrap()
    {
        seen.push(line);
    }
    let status = watch.wait().await.unwrap();
    let text = seen.join("\n");
    assert_eq!(status.code(), Some(0), "Succeeded exits 0:\n{text}");
    let order = [
        format!("Abnormal {ns}/live (source Custom, node {node})"),
        format!("accepted  routed to node {node}"),
        "InformationCollecting  echo hello from a command  ".into(),
        format!("InformationCollecting  {ns}/echo  Succeeded in"),
        "now Diagnosing".into(),
        format!("Diagnosing             {ns}/finder  Succeeded in"),
        "root cause  found DiskFull (DiskFull)".into(),
        "Succeeded".into(),
        format!("the whole story: kubectl diag describe live -n {ns}"),
    ];
    let mut from = 0;
    for needle in &order {
        let at = text[from..]
            .find(needle.as_str())
            .unwrap_or_else(|| panic!("{needle:?} missing (in this order) from:\n{text}"));
        from += at + needle.len();
    }

    // Watching an Abnormal that already failed prints its story and exits 1 at once.
    let client = cp.client().await;
    create_abnormal(
        &client,
        &ns,
        "broken",
        json!({"nodeName": node, "assignedDiagnosers": [{"name": "broken"}]}),
    )
    .await;
    wait_final(&client, &ns, "broken", FINISH).await;
    let failed = kdiag(cp, &["watch", "broken", "-n", &ns]).await;
    assert_eq!(failed.code, 1, "{failed}");
    assert!(failed.stdout.contains("Failed: NotIdentified"), "{failed}");
}

#[tokio::test]
async fn kubectl_diag_run_wait_exits_0_only_when_the_diagnosis_succeeds() {
    let cp = with_controller().await;
    let (ns, _plugin) = namespace_with_plugins(cp, "run").await;
    let node = format!("{ns}-node");
    let _agent = TestAgent::start(cp, &node).await;
    let echo = format!("{ns}/echo");
    let finder = format!("{ns}/finder");
    let broken = format!("{ns}/broken");

    let ok = kubectl_diag(
        cp,
        &[
            "run",
            "-n",
            &ns,
            "--node",
            &node,
            "--collector",
            &echo,
            "--diagnoser",
            &finder,
            "--name",
            "ok",
            "--wait",
        ],
    )
    .await;
    assert_eq!(ok.code, 0, "{ok}");
    assert!(
        ok.stdout
            .starts_with("abnormal.diagnosis.netease.com/ok created"),
        "{ok}"
    );
    assert!(ok.stdout.contains(&format!("  collectors: {echo}")), "{ok}");
    assert!(ok.stdout.contains("Root cause:   found DiskFull"), "{ok}");
    assert!(ok.stdout.contains("Phase:        Succeeded"), "{ok}");

    let failed = kubectl_diag(
        cp,
        &[
            "run",
            "-n",
            &ns,
            "--node",
            &node,
            "--collector",
            &echo,
            "--diagnoser",
            &broken,
            "--wait",
        ],
    )
    .await;
    assert_eq!(failed.code, 1, "a Failed diagnosis exits 1: {failed}");
    assert!(failed.stdout.contains("Phase:        Failed"), "{failed}");
    assert!(
        failed.stdout.contains("Root cause:   none found"),
        "{failed}"
    );
    assert!(
        failed.stdout.contains("answered HTTP 500"),
        "the failing step says why: {failed}"
    );
    // The generated name comes from the node's.
    let api: Api<Abnormal> = Api::namespaced(cp.client().await, &ns);
    let names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|a| a.metadata.name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with(&format!("{node}-"))),
        "{names:?}"
    );

    // Without --wait, run returns once the controller admitted it.
    let quick = kdiag(
        cp,
        &[
            "run",
            "-n",
            &ns,
            "--node",
            &node,
            "--collector",
            &echo,
            "--name",
            "quick",
            "--no-defaults",
        ],
    )
    .await;
    assert_eq!(quick.code, 0, "{quick}");
    // With only a collector it may be over before run looks; either way it says so.
    assert!(
        quick.stdout.contains(&format!(
            "accepted; follow it with: kubectl diag watch quick -n {ns}"
        )) || quick.stdout.contains(&format!(
            "accepted, and it already Succeeded; the whole story: kubectl diag describe quick -n {ns}"
        )),
        "{quick}"
    );
}

#[tokio::test]
async fn kubectl_diag_run_refuses_a_processor_that_does_not_exist_and_lists_those_that_do() {
    let cp = with_controller().await;
    let (ns, _plugin) = namespace_with_plugins(cp, "unknown").await;
    let ran = kdiag(
        cp,
        &[
            "run",
            "-n",
            &ns,
            "--node",
            "n1",
            "--diagnoser",
            &format!("{ns}/oom-diagnoser"),
        ],
    )
    .await;
    assert_eq!(ran.code, 3, "{ran}");
    assert!(
        ran.stderr.contains(&format!(
            "Diagnoser {ns}/oom-diagnoser does not exist, so the step of an Abnormal naming it would fail. Registered Diagnosers: "
        )),
        "{ran}"
    );
    assert!(
        ran.stderr.contains(&format!("{ns}/broken, {ns}/finder")),
        "{ran}"
    );
    let api: Api<Abnormal> = Api::namespaced(cp.client().await, &ns);
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was created"
    );

    let usage = kdiag(cp, &["run", "-n", &ns, "--collector", "x"]).await;
    assert_eq!(usage.code, 2, "no target is a usage error: {usage}");
}

#[tokio::test]
async fn kubectl_diag_run_for_a_pod_assigns_the_default_collectors_registered_in_kube_diagnoser() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("pod").await;
    let client = cp.client().await;
    // Level 1 runs no controller-manager, so the namespace has no default ServiceAccount yet.
    cp.service_account_token(&ns, "default").await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"nodeName": format!("{ns}-node"), "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "busybox"}]}
    }))
    .unwrap();
    Api::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();

    let ran = kdiag(
        cp,
        &[
            "run",
            "-n",
            &ns,
            "--pod",
            "web",
            "--container",
            "app",
            "--name",
            "triage",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    let a: Abnormal = Api::namespaced(client, &ns).get("triage").await.unwrap();
    let p = a.spec.pod_reference.clone().unwrap();
    assert_eq!(
        (
            p.namespace.as_str(),
            p.name.as_str(),
            p.container_name.as_str()
        ),
        (ns.as_str(), "web", "app")
    );
    assert_eq!(
        a.spec
            .assigned_information_collectors
            .first()
            .map(ToString::to_string),
        Some("kube-diagnoser/pod-detail-collector".to_owned()),
        "the pod triage's first collector: {:?}",
        a.spec
    );
    assert!(
        a.spec.assigned_recoverers.is_empty(),
        "never a recoverer by default"
    );
    assert_eq!(
        a.spec.node_name,
        format!("{ns}-node"),
        "routed to the pod's node"
    );
}

#[tokio::test]
async fn kubectl_diag_probes_lists_one_row_per_checker_with_its_root_cause() {
    let cp = installed().await;
    let ns = cp.create_namespace("probes").await;
    let client = cp.client().await;
    let ps: kdiag_api::ProbeStatus = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
        "metadata": {"name": "k8s", "namespace": ns, "annotations": {
            "kdiag.io/diagnoses": "{\"kubelet\": {\"abnormal\": \"x/kubelet-1\", \"phase\": \"Succeeded\", \"rootCause\": \"kubelet on node-b lost its client certificate\"}}"}},
        "spec": {"checkers": [
            {"name": "dns", "status": "PASS", "lastRun": "2026-01-01T00:00:00Z"},
            {"name": "coredns", "status": "ERROR", "message": "2 of 2 coredns pods CrashLoopBackOff", "lastRun": "2026-01-01T00:00:00Z",
             "diagnosis": {"abnormal": "x/coredns-1", "phase": "Succeeded", "rootCause": "coredns cannot read its ConfigMap"}},
            {"name": "kubelet", "status": "ERROR", "message": "node-b NotReady", "lastRun": "2026-01-01T00:00:00Z"}
        ]}
    }))
    .unwrap();
    Api::<kdiag_api::ProbeStatus>::namespaced(client, &ns)
        .create(&PostParams::default(), &ps)
        .await
        .unwrap();

    let ran = kubectl_diag(cp, &["probes", "-n", &ns]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let rows: Vec<Vec<&str>> = ran
        .stdout
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        [
            "PROBER",
            "CHECKER",
            "STATUS",
            "MESSAGE",
            "LASTRUN",
            "ROOT CAUSE"
        ],
        "{ran}"
    );
    assert_eq!(rows[1][..3], ["k8s", "dns", "PASS"], "{ran}");
    assert_eq!(
        rows[2][1..],
        [
            "coredns",
            "ERROR",
            "2 of 2 coredns pods CrashLoopBackOff",
            rows[2][4],
            "coredns cannot read its ConfigMap"
        ],
        "{ran}"
    );
    assert_eq!(
        rows[3].last(),
        Some(&"kubelet on node-b lost its client certificate"),
        "the annotation is read too: {ran}"
    );
    let wide = kdiag(cp, &["probes", "-n", &ns, "-o", "wide"]).await;
    assert!(wide.stdout.contains("x/coredns-1"), "{wide}");
}

#[tokio::test]
async fn a_user_without_rbac_is_told_which_permission_is_missing() {
    let cp = installed().await;
    let ns = cp.create_namespace("rbac").await;
    let token = cp.service_account_token(&ns, "nobody").await;
    let kubeconfig = cp.write_kubeconfig_for(&format!("nobody-{ns}"), &token);
    let ran = kdiag_with(&kubeconfig, &["get", "-n", &ns]).await;
    assert_eq!(ran.code, 3, "{ran}");
    assert!(ran.stderr.starts_with("error: forbidden: "), "{ran}");
    assert!(
        ran.stderr.contains(&format!(
            "check with: kubectl auth can-i list abnormals.diagnosis.netease.com -n {ns}"
        )),
        "{ran}"
    );
}

#[tokio::test]
async fn a_cluster_without_the_crds_or_a_kubeconfig_gets_told_what_to_do() {
    let bare = ControlPlane::start().await.expect("a fresh control plane");
    for args in [
        &["get"][..],
        &["describe", "x"],
        &["watch", "x"],
        &["probes", "-A"],
        &["run", "--node", "n1", "--collector", "pod-collector"],
    ] {
        let ran = kdiag(&bare, args).await;
        assert_eq!(ran.code, 3, "{args:?}: {ran}");
        assert!(
            ran.stderr.contains(
                "kdiag's CRDs are not installed. Install them with kubectl apply -f config/crd"
            ),
            "{args:?}: {ran}"
        );
        assert!(
            ran.stderr.contains("kubectl apply -k config/deploy"),
            "{ran}"
        );
    }

    let nowhere = std::env::temp_dir().join(format!("kdiag-no-kubeconfig-{}", std::process::id()));
    let none = kdiag_with(&nowhere, &["get"]).await;
    assert_eq!(none.code, 3, "{none}");
    assert!(
        none.stderr.starts_with("error: no kubeconfig to use: "),
        "{none}"
    );
    assert!(
        none.stderr.contains("Set KUBECONFIG or pass --kubeconfig"),
        "{none}"
    );

    let context = kdiag(&bare, &["get", "--context", "no-such-context"]).await;
    assert_eq!(context.code, 3, "{context}");
    assert!(context.stderr.contains("\"no-such-context\""), "{context}");
}

/// A fresh control plane with everything installed by `kubectl apply -k config/deploy` (and
/// no controller running: a level-1 control plane has no kubelet to run the Deployment).
async fn kustomized() -> &'static ControlPlane {
    static CP: OnceCell<ControlPlane> = OnceCell::const_new();
    CP.get_or_init(|| async {
        let cp = ControlPlane::start().await.expect("a fresh control plane");
        let apply = || {
            cp.kubectl()
                .args(["apply", "-k"])
                .arg(repo_root().join("config/deploy"))
                .output()
                .unwrap()
        };
        let first = apply();
        if !first.status.success() {
            // kubectl maps every object before applying any: custom resources in the same run
            // as their CRDs are refused once, exactly as with -f config/crd -f config/deploy.
            let stderr = String::from_utf8_lossy(&first.stderr);
            assert!(
                stderr.contains("ensure CRDs are installed first"),
                "{stderr}"
            );
            // The first run also installed the admission webhook's configuration, which fails
            // closed; in a cluster the controller serves it before the second run (docs/install.md),
            // here nothing does. The second run installs it again, after the registrations
            // (kustomize orders webhook configurations last).
            remove_webhook(cp.kubectl());
            let again = apply();
            assert!(
                again.status.success(),
                "{}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
        let webhook = cp
            .kubectl()
            .args([
                "get",
                "validatingwebhookconfiguration",
                WEBHOOK_CONFIGURATION,
            ])
            .output()
            .unwrap();
        assert!(
            webhook.status.success(),
            "config/deploy installs the admission webhook's configuration: {}",
            String::from_utf8_lossy(&webhook.stderr)
        );
        // No controller serves it here, and the tests on this control plane create Abnormals.
        remove_webhook(cp.kubectl());
        cp
    })
    .await
}

#[tokio::test]
async fn kubectl_apply_k_config_deploy_installs_the_crds_and_everything_in_config_deploy() {
    let cp = kustomized().await;
    let rendered = cp
        .kubectl()
        .arg("kustomize")
        .arg(repo_root().join("config/deploy"))
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let mut kinds_names: Vec<(String, String)> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| {
            let v = serde_yaml::Value::deserialize(d).unwrap();
            (
                v["kind"].as_str().unwrap_or_default().to_owned(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    kinds_names.sort();
    for crd in kdiag_api::crds::all() {
        let name = crd.metadata.name.unwrap();
        assert!(
            kinds_names.contains(&("CustomResourceDefinition".into(), name.clone())),
            "{name} missing from the kustomization: {kinds_names:?}"
        );
    }
    for (kind, name) in [
        ("Namespace", "kube-diagnoser"),
        ("ServiceAccount", "kdiag-controller"),
        ("ClusterRole", "kdiag-agent"),
        ("Deployment", "kdiag-controller"),
        ("DaemonSet", "kdiag-agent"),
        ("InformationCollector", "pod-collector"),
        ("ValidatingWebhookConfiguration", "kdiag-webhook"),
    ] {
        assert!(
            kinds_names.contains(&(kind.into(), name.into())),
            "{kind}/{name} missing from the kustomization: {kinds_names:?}"
        );
    }
    // Applied to the real apiserver: every object is there.
    for what in [
        "crd/abnormals.diagnosis.netease.com",
        "crd/probestatuses.kubeprober.erda.cloud",
        "-n kube-diagnoser deployment/kdiag-controller",
        "-n kube-diagnoser daemonset/kdiag-agent",
        "clusterrolebinding/kdiag-agent",
        "-n kube-diagnoser informationcollector/pod-collector",
    ] {
        let got = cp
            .kubectl()
            .arg("get")
            .args(what.split(' '))
            .output()
            .unwrap();
        assert!(
            got.status.success(),
            "{what} is missing after kubectl apply -k: {}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
}

#[tokio::test]
async fn kubectl_diag_run_says_no_controller_seems_to_be_running_when_nothing_admits_the_abnormal()
{
    let cp = kustomized().await;
    let ran = kdiag(
        cp,
        &[
            "run",
            "--node",
            "n1",
            "--collector",
            "pod-collector",
            "--name",
            "unadmitted",
            "--admission-timeout",
            "3s",
        ],
    )
    .await;
    assert_eq!(ran.code, 3, "{ran}");
    assert!(
        ran.stderr.contains("no kdiag controller seems to be running: Abnormal default/unadmitted has had no status for 3s"),
        "{ran}"
    );
    assert!(
        ran.stderr
            .contains("kubectl -n kube-diagnoser get deploy kdiag-controller"),
        "{ran}"
    );
    // watch only warns, and a timeout ends it with exit code 3.
    let watch = kdiag(
        cp,
        &[
            "watch",
            "unadmitted",
            "--timeout",
            "4s",
            "--admission-timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(watch.code, 3, "{watch}");
    assert!(
        watch
            .stderr
            .contains("warning: no kdiag controller seems to be running"),
        "{watch}"
    );
    assert!(
        watch.stderr.contains("is still not admitted after 4s"),
        "{watch}"
    );
}

#[test]
fn the_kustomizations_list_every_crd_and_every_manifest_of_config_deploy() {
    // kustomize cannot glob; a manifest added without its line would silently not install.
    let listed = |path: &str| -> Vec<String> {
        let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        v["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    let yaml_files = |dir: &str| -> Vec<String> {
        let mut f: Vec<String> = std::fs::read_dir(repo_root().join(dir))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        f.sort();
        f
    };
    let mut crds = listed("config/crd/Kustomization");
    crds.sort();
    let mut generated: Vec<String> = kdiag_api::crds::all()
        .iter()
        .map(kdiag_api::crds::file_name)
        .collect();
    generated.sort();
    assert_eq!(
        crds, generated,
        "config/crd/Kustomization must list every CRD file"
    );
    assert_eq!(crds, yaml_files("config/crd"));

    let deploy = listed("config/deploy/Kustomization");
    assert_eq!(deploy[0], "../crd", "the CRDs come first");
    let mut manifests = deploy[1..].to_vec();
    manifests.sort();
    assert_eq!(
        manifests,
        yaml_files("config/deploy"),
        "config/deploy/Kustomization must list every manifest in config/deploy"
    );
    // The fleet hub's own directory, applied on its own in a management cluster.
    let mut hub = listed("config/deploy/hub/Kustomization");
    hub.sort();
    assert_eq!(
        hub,
        yaml_files("config/deploy/hub"),
        "config/deploy/hub/Kustomization must list every manifest in config/deploy/hub"
    );
}

#[test]
fn the_api_reference_in_docs_is_generated_from_the_crds() {
    let generated = docs::api_reference();
    let path = repo_root().join("docs/api-reference.md");
    if std::env::var_os("KDIAG_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/api-reference.md differs from the CRDs: regenerate it with \
         KDIAG_UPDATE_DOCS=1 cargo test -p kdiag --test kubectl_diag api_reference"
    );
}

#[test]
fn the_security_page_shows_the_rbac_and_agent_privileges_config_deploy_grants() {
    let path = repo_root().join("docs/security.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let read = |f: &str| std::fs::read_to_string(repo_root().join(f)).unwrap();
    let rbac = docs::rbac_tables(&read("config/deploy/10-rbac.yaml"));
    let hub_rbac = docs::rbac_tables(&read("config/deploy/hub/10-rbac.yaml"));
    // Every permission says which feature needs it.
    for file in [
        "config/deploy/10-rbac.yaml",
        "config/deploy/hub/10-rbac.yaml",
    ] {
        for (kind, name, whys) in docs::rule_comments(&read(file)) {
            assert!(
                !whys.is_empty() && whys.iter().all(|w| !w.is_empty()),
                "{kind} {name} in {file} has a rule without a comment saying which feature needs it: {whys:?}"
            );
        }
    }
    let agent = docs::agent_privileges(&read("config/deploy/40-agent.yaml"));
    let generated = docs::replace_generated(&page, "RBAC", &rbac)
        .and_then(|p| docs::replace_generated(&p, "AGENT", &agent))
        .and_then(|p| docs::replace_generated(&p, "HUB RBAC", &hub_rbac))
        .expect("docs/security.md has the GENERATED RBAC, AGENT and HUB RBAC markers");
    if std::env::var_os("KDIAG_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        page == generated,
        "docs/security.md no longer shows what config/deploy grants: regenerate it with \
         KDIAG_UPDATE_DOCS=1 cargo test -p kdiag --test kubectl_diag the_security_page"
    );
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_the_metrics_page_documents() {
    let text =
        std::fs::read_to_string(repo_root().join("config/grafana/kdiag-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let metrics_page = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() > 10, "{exprs:?}");
    let token = regex::Regex::new(r"\b[a-z][a-z_]*[a-z]\b").unwrap();
    for expr in &exprs {
        for m in token.find_iter(expr) {
            let t = m.as_str();
            if !(t.starts_with("kdiag_") || t.ends_with("_count")) {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| t.strip_suffix(s))
                .unwrap_or(t);
            // Kube Diagnoser's counters are documented by their family (`diagnoser_chain_sync_*`).
            let family = t.rsplit_once("_sync_").map(|(f, _)| format!("{f}_sync_*"));
            assert!(
                metrics_page.contains(t)
                    || metrics_page.contains(base)
                    || family.is_some_and(|f| metrics_page.contains(&f)),
                "the dashboard uses {t}, which docs/metrics.md does not document: {expr}"
            );
        }
    }
}

/// Builds examples/plugins/rust (its own Cargo project and target directory, so the workspace's
/// build lock is not involved) and starts it on a free loopback port.
async fn start_rust_example() -> (tokio::process::Child, u16) {
    let dir = repo_root().join("examples/plugins/rust");
    let built = tokio::process::Command::new(env!("CARGO"))
        .args(["build", "--locked", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .output()
        .await
        .expect("cargo runs");
    assert!(
        built.status.success(),
        "examples/plugins/rust does not build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut child = tokio::process::Command::new(dir.join("target/debug/oom-diagnoser"))
        .args(["--address", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the example says where it listens")
        .unwrap()
        .unwrap_or_default();
    let port = first
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    (child, port)
}

#[tokio::test]
async fn the_rust_plugin_example_identifies_an_oom_kill_when_run_asks_for_it() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("rust-example").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let (_plugin, port) = start_rust_example().await;
    register_plugin(&client, &ns, "Diagnoser", "oom-diagnoser", port, "/", 10).await;

    // A pod whose container was OOM-killed, as the kubelet would report it.
    cp.service_account_token(&ns, "default").await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "busybox", "resources": {"limits": {"memory": "64Mi"}}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"containerStatuses": [{
            "name": "app", "image": "busybox", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                "startedAt": "2026-11-22T10:00:00Z", "finishedAt": "2026-11-22T10:00:05Z"}}
        }]}})),
    )
    .await
    .unwrap();
    let _agent = TestAgent::start(cp, &node).await;

    let oom = format!("{ns}/oom-diagnoser");
    let ran = kdiag(
        cp,
        &[
            "run",
            "-n",
            &ns,
            "--pod",
            "web",
            "--collector",
            "pod-collector",
            "--diagnoser",
            &oom,
            "--wait",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.contains(&format!(
            "Root cause:   container app of pod {ns}/web was OOM-killed at its 64Mi memory limit"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "[PodStatus] Pod/{ns}/web: container app terminated with reason OOMKilled, exit code 137; restarted 4 times"
        )),
        "{ran}"
    );
}

#[tokio::test]
async fn kubectl_diag_run_with_o_json_or_yaml_prints_only_the_abnormal_as_stored() {
    let cp = with_controller().await;
    let (ns, _plugin) = namespace_with_plugins(cp, "run-json").await;
    let node = format!("{ns}-node");
    let _agent = TestAgent::start(cp, &node).await;
    let echo = format!("{ns}/echo");
    let finder = format!("{ns}/finder");
    let base = [
        "run",
        "-n",
        &ns,
        "--node",
        &node,
        "--collector",
        &echo,
        "--diagnoser",
        &finder,
    ];

    let mut args = base.to_vec();
    args.extend(["--name", "as-json", "--wait", "-o", "json"]);
    let ran = kubectl_diag(cp, &args).await;
    assert_eq!(ran.code, 0, "{ran}");
    // stdout is one JSON document: the Abnormal as the apiserver stores it, after its end.
    let stored: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {ran}"));
    assert_eq!(stored["kind"], "Abnormal", "{ran}");
    assert_eq!(stored["metadata"]["name"], "as-json");
    assert_eq!(stored["status"]["phase"], "Succeeded");
    assert_eq!(stored["status"]["rootCause"]["summary"], "found DiskFull");
    let api: Api<Abnormal> = Api::namespaced(cp.client().await, &ns);
    let read = serde_json::to_value(api.get("as-json").await.unwrap()).unwrap();
    assert_eq!(stored["status"], read["status"], "as stored");
    // The progress went to stderr.
    assert!(
        ran.stderr
            .contains("abnormal.diagnosis.netease.com/as-json created"),
        "{ran}"
    );

    let mut args = base.to_vec();
    args.extend(["--name", "as-yaml", "-o", "yaml"]);
    let ran = kubectl_diag(cp, &args).await;
    assert_eq!(ran.code, 0, "{ran}");
    let stored: serde_json::Value = serde_yaml::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout is not YAML ({e}): {ran}"));
    assert_eq!(stored["metadata"]["name"], "as-yaml", "{ran}");
    assert_eq!(stored["spec"]["nodeName"], json!(node));
    // Without --wait: printed once admitted.
    assert!(stored["status"]["phase"].is_string(), "{ran}");
}

#[tokio::test]
async fn kubectl_diag_run_on_a_service_without_ready_endpoints_names_its_unready_pods_or_its_empty_selector()
 {
    use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
    let cp = with_controller().await;
    let ns = cp.create_namespace("run-service").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    cp.service_account_token(&ns, "default").await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for (name, app) in [("web", "web"), ("orphan", "nothing")] {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
        services.create(&Default::default(), &svc).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "web:1"}]}}),
    )
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    pods.patch_status(
        "web-1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"status": {"phase": "Running", "podIP": "10.244.7.7", "containerStatuses": [{
            "name": "app", "ready": false, "restartCount": 3, "image": "web:1", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
        ),
    )
    .await
    .unwrap();
    // What the endpoints controller would write for it (none runs here).
    let endpoints: Endpoints = serde_json::from_value(json!({"metadata": {"name": "web"},
        "subsets": [{"notReadyAddresses": [{"ip": "10.244.7.7", "nodeName": node,
            "targetRef": {"kind": "Pod", "name": "web-1", "namespace": ns}}], "ports": [{"port": 8080}]}]}))
    .unwrap();
    Api::<Endpoints>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &endpoints)
        .await
        .unwrap();

    let ran = kubectl_diag(cp, &["run", "--service", "web", "-n", &ns]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.starts_with(&format!(
            "Root cause:   Service {ns}/web has no ready endpoint: none of the 1 pod(s) its selector app=web matches is ready: web-1 on node {node} (Running, container app waiting CrashLoopBackOff, 3 restart(s))"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout.contains("  Reason:     ServiceNoReadyEndpoints"),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "- [Endpoints] endpoints/{ns}/web: 0 ready address(es), 1 not ready (10.244.7.7)"
        )),
        "{ran}"
    );

    let orphan = kubectl_diag(
        cp,
        &["run", "--service", &format!("{ns}/orphan"), "-o", "json"],
    )
    .await;
    assert_eq!(orphan.code, 0, "{orphan}");
    let v: serde_json::Value = serde_json::from_str(&orphan.stdout).unwrap();
    assert_eq!(
        v["rootCause"]["summary"],
        json!(format!(
            "Service {ns}/orphan has no ready endpoint: its selector app=nothing matches no pod"
        ))
    );
}

#[tokio::test]
async fn kubectl_diag_run_on_a_job_past_its_backoff_limit_names_its_last_attempts_failure() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    let cp = with_controller().await;
    let ns = cp.create_namespace("run-job").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    cp.service_account_token(&ns, "default").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "migrate"},
        "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "migrate", "image": "migrate:1"}]}}}}))
    .unwrap();
    jobs.create(&Default::default(), &job).await.unwrap();
    // No job controller runs here: its pods and its verdict are written as it would.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (i, name) in ["migrate-a", "migrate-b"].iter().enumerate() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"job-name": "migrate"}},
            "spec": {"nodeName": node, "restartPolicy": "Never", "automountServiceAccountToken": false,
                     "containers": [{"name": "migrate", "image": "migrate:1"}]}}))
        .unwrap();
        pods.create(&Default::default(), &pod).await.unwrap();
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Failed", "containerStatuses": [{
                "name": "migrate", "ready": false, "restartCount": 0, "image": "migrate:1", "imageID": "",
                "state": {"terminated": {"exitCode": 2 + i, "reason": "Error",
                    "finishedAt": format!("2026-12-01T10:0{i}:00Z"),
                    "message": "relation \"users\" does not exist"}}}]}})),
        )
        .await
        .unwrap();
    }
    jobs.patch_status(
        "migrate",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"failed": 2, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit",
            "lastTransitionTime": jiff::Timestamp::now().to_string()}]}})),
    )
    .await
    .unwrap();

    let ran = kubectl_diag(cp, &["run", "--job", "migrate", "-n", &ns]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.starts_with(&format!(
            "Root cause:   Job {ns}/migrate gave up after 2 failed attempt(s), past its backoffLimit 1; the last attempt, pod migrate-b, failed: container migrate exited 3 (Error): relation \"users\" does not exist"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout.contains("  Reason:     JobBackoffLimitExceeded"),
        "{ran}"
    );
}
