//! Node trouble made to really happen, on a single-node cluster of this test's own (it changes
//! the node for good): real memory pressure (a pod holding 6 GiB under a soft eviction
//! threshold 3 GiB below what the node had free, so the kubelet reports MemoryPressure and
//! taints the node without evicting yet), a pod the taint keeps off the node, then the
//! container runtime killed so the kubelet reports the node NotReady. The collectors and the
//! triage diagnosers run directly against it, as the agent runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kdiag_api::plugin::{NodeEnvironment, Processor, ProcessorContext};
use kdiag_api::{Abnormal, AbnormalSpec, AbnormalStatus, PodReference, RootCause};
use kdiag_collectors::{KernelLogCollector, NodeCollector, PodDetailCollector, ProcessCollector};
use kdiag_diagnosers::{NodeTriageDiagnoser, PodTriageDiagnoser};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, ClusterOptions};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

const GIB: u64 = 1024 * 1024 * 1024;

/// Memory available as the kubelet counts it: MemTotal minus the root memory cgroup's working
/// set (usage minus inactive file pages).
fn kubelet_available_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    let usage: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory/memory.usage_in_bytes")
        .expect("cgroup v1 memory controller (docs/development.md: the cluster needs cgroup v1)")
        .trim()
        .parse()
        .unwrap();
    let inactive_file: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory/memory.stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (total_kb * 1024).saturating_sub(usage.saturating_sub(inactive_file))
}

fn context(c: &Cluster, client: kube::Client) -> ProcessorContext {
    ProcessorContext {
        node_name: c.node_name().to_owned(),
        client,
        timeout: Duration::from_secs(30),
        max_output_bytes: 512 * 1024,
        node: Arc::new(NodeEnvironment {
            kubelet_root: c.kubelet_root_dir(),
            cri_sockets: vec![c.cri_socket()],
            apiserver: Some(c.control_plane().url().to_owned()),
            ..Default::default()
        }),
    }
}

/// Runs `collectors` then `diagnoser` on `abnormal` as the agent would: each collector's
/// context is visible to the next step.
async fn triage(
    ctx: &ProcessorContext,
    mut abnormal: Abnormal,
    collectors: &[&dyn Processor],
    diagnoser: &dyn Processor,
) -> Result<RootCause, String> {
    let mut context = std::collections::BTreeMap::new();
    for c in collectors {
        let out = c
            .process(ctx, &abnormal)
            .await
            .map_err(|e| format!("{}: {e}", c.name()))?;
        context.extend(out.context);
        abnormal.status = Some(AbnormalStatus {
            context: Some(context.clone()),
            ..Default::default()
        });
    }
    let out = diagnoser
        .process(ctx, &abnormal)
        .await
        .map_err(|e| format!("{}: {e}", diagnoser.name()))?;
    out.root_cause
        .ok_or_else(|| format!("{} succeeded without a root cause", diagnoser.name()))
}

fn node_abnormal(node: &str) -> Abnormal {
    let mut a = Abnormal::new(
        "node",
        AbnormalSpec {
            node_name: node.to_owned(),
            ..Default::default()
        },
    );
    a.metadata.namespace = Some("default".into());
    a
}

fn pod_abnormal(ns: &str, pod: &str) -> Abnormal {
    let mut a = Abnormal::new(
        "pod",
        AbnormalSpec {
            pod_reference: Some(PodReference {
                namespace: ns.into(),
                name: pod.into(),
                container_name: String::new(),
            }),
            ..Default::default()
        },
    );
    a.metadata.namespace = Some(ns.into());
    a
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let begin = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(begin.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn condition(nodes: &Api<Node>, node: &str, type_: &str) -> Option<(String, String)> {
    let n = nodes.get(node).await.ok()?;
    n.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.message.unwrap_or_default()))
}

#[tokio::test]
async fn memory_pressure_names_the_top_consumer_the_taint_keeps_pods_off_and_a_dead_runtime_makes_the_node_not_ready()
 {
    let available = kubelet_available_bytes();
    assert!(
        available > 10 * GIB,
        "this test needs more than 10 GiB available (it holds 6 GiB); {} GiB are",
        available / GIB
    );
    // Pressure once 3 GiB of what is free now are taken; the 6 GiB pod takes them with 3 GiB
    // to spare either way, whatever else this shared machine does meanwhile. Soft, with a
    // grace period longer than the test: the kubelet reports and taints, and evicts nothing.
    let threshold_mib = (available - 3 * GIB) / (1024 * 1024);
    let c = Cluster::start_with(ClusterOptions {
        kubelet_args: vec![
            format!("--eviction-soft=memory.available<{threshold_mib}Mi"),
            "--eviction-soft-grace-period=memory.available=30m".into(),
        ],
        ..Default::default()
    })
    .await
    .expect("a cluster of this test's own");
    let client = c.client().await;
    let ctx = context(&c, client.clone());
    let node = c.node_name().to_owned();
    let nodes: Api<Node> = Api::all(client.clone());
    let ns = c.create_namespace("pressure").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // Three dd processes, each holding a 2000 MiB buffer read from /dev/zero: dd blocks writing
    // into a pipe nobody reads, so the memory stays resident.
    let hog: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hog"},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c",
                    "for i in 1 2 3; do (dd if=/dev/zero bs=2000M count=1 2>/dev/null | sleep 3600) & done; wait"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &hog).await.unwrap();
    let message = wait_for(
        "MemoryPressure=True",
        Duration::from_secs(120),
        async || {
            condition(&nodes, &node, "MemoryPressure")
                .await
                .filter(|(s, _)| s == "True")
                .map(|(_, m)| m)
        },
    )
    .await;
    eprintln!("MemoryPressure: {message}");

    let rc = triage(
        &ctx,
        node_abnormal(&node),
        &[&NodeCollector, &ProcessCollector],
        &NodeTriageDiagnoser,
    )
    .await
    .expect("the node triage identifies the pressure");
    eprintln!("node triage: {}: {}", rc.reason, rc.summary);
    assert_eq!(rc.reason, "NodeMemoryPressure", "{rc:?}");
    assert!(
        rc.summary.contains(&format!("pod {ns}/hog")),
        "the top consumers name the pod holding the memory: {}",
        rc.summary
    );
    assert!(
        rc.evidence
            .iter()
            .any(|e| e.kind == "NodeCondition" && e.object == format!("node/{node}")),
        "{:?}",
        rc.evidence
    );
    assert!(
        rc.evidence
            .iter()
            .any(|e| e.kind == "Process" && e.object == format!("pod/{ns}/hog")),
        "{:?}",
        rc.evidence
    );

    // The node lifecycle controller taints the node; a new pod does not tolerate it.
    let late: Pod = serde_json::from_value(json!({
        "metadata": {"name": "late"},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &late).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "FailedScheduling for the taint",
        Duration::from_secs(60),
        async || {
            let lp = kube::api::ListParams::default().fields("involvedObject.name=late");
            events.list(&lp).await.ok()?.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.message.as_deref().is_some_and(|m| m.contains("taint"))
            })
        },
    )
    .await;
    let rc = triage(
        &ctx,
        pod_abnormal(&ns, "late"),
        &[&PodDetailCollector],
        &PodTriageDiagnoser,
    )
    .await
    .expect("the pod triage identifies the taint");
    eprintln!("pod triage of late: {}: {}", rc.reason, rc.summary);
    assert_eq!(rc.reason, "TaintNotTolerated", "{rc:?}");
    assert!(
        rc.summary.contains(&format!(
            "node.kubernetes.io/memory-pressure:NoSchedule on node {node}"
        )),
        "{}",
        rc.summary
    );

    // The pod holding the memory, triaged: nothing wrong with the pod itself, its node is
    // under pressure, and it is the top consumer.
    let rc = triage(
        &ctx,
        pod_abnormal(&ns, "hog"),
        &[&PodDetailCollector, &ProcessCollector, &KernelLogCollector],
        &PodTriageDiagnoser,
    )
    .await
    .expect("the pod triage sees the node's pressure");
    eprintln!("pod triage of hog: {}: {}", rc.reason, rc.summary);
    assert_eq!(rc.reason, "NodeMemoryPressure", "{rc:?}");

    // Kill the container runtime: the kubelet reports the node NotReady.
    let containerd = c
        .pids()
        .into_iter()
        .find(|(name, _)| name == "containerd")
        .map(|(_, pid)| pid)
        .expect("the cluster's containerd pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &containerd.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {containerd}");
    let message = wait_for("Ready=False", Duration::from_secs(90), async || {
        condition(&nodes, &node, "Ready")
            .await
            .filter(|(s, _)| s != "True")
            .map(|(_, m)| m)
    })
    .await;
    eprintln!("Ready: {message}");
    let rc = triage(&ctx, node_abnormal(&node), &[], &NodeTriageDiagnoser)
        .await
        .expect("the node triage identifies the dead runtime");
    eprintln!("node triage: {}: {}", rc.reason, rc.summary);
    // The runtime's own socket, asked, is the cause; the kubelet's NotReady follows from it.
    assert_eq!(rc.reason, "ContainerRuntimeDown", "{rc:?}");
    assert!(
        rc.summary.contains(&format!(
            "its socket {} refuses connections",
            c.cri_socket().display()
        )),
        "{}",
        rc.summary
    );
    assert!(
        rc.others
            .iter()
            .any(|o| o.reason == "NodeNotReady" && o.summary.contains("container runtime is down")),
        "{:?}",
        rc.others
    );
    drop(c);
}

/// The inodes of the kubelet's own filesystem in the test that fills them: a few hundred are
/// the kubelet's and its pods' own directories.
const INODES: u64 = 4096;

/// Whether the root cause, or one of the causes ranked below it, has this reason and says this.
fn names(rc: &RootCause, reason: &str, needle: &str) -> bool {
    (rc.reason == reason && rc.summary.contains(needle))
        || rc
            .others
            .iter()
            .any(|o| o.reason == reason && o.summary.contains(needle))
}

/// A self-signed serving certificate for the kubelet that expired on 2025-01-01.
fn expired_serving_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubelet-expired");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn busybox(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script]}]}
    }))
    .unwrap()
}

/// Sends `signal` (STOP, CONT, KILL) to one process of the cluster, by its pid alone: a stopped
/// kubelet or containerd is the fault, not its process group.
fn signal(c: &Cluster, component: &str, signal: &str) -> i32 {
    let pid = c
        .pids()
        .into_iter()
        .find(|(name, _)| name == component)
        .map(|(_, pid)| pid)
        .unwrap_or_else(|| panic!("the cluster's {component} pid"));
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid}");
    pid
}

async fn wait_running(pods: &Api<Pod>, name: &str) {
    wait_for(
        &format!("pod {name} Running"),
        Duration::from_secs(90),
        async || {
            let p = pods.get(name).await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        },
    )
    .await;
}

async fn wait_ready_untainted(nodes: &Api<Node>, node: &str) {
    wait_for(
        "the node Ready again and untainted",
        Duration::from_secs(60),
        async || {
            let n = nodes.get(node).await.ok()?;
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            let ready = n
                .status?
                .conditions?
                .into_iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && !tainted).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn zombies_a_pod_at_its_pids_limit_a_drain_held_by_a_disruption_budget_a_stopped_kubelet_a_stopped_runtime_a_broken_cni_plugin_and_a_kubelet_filesystem_out_of_inodes_then_bytes_and_a_killed_kubelet_are_each_named()
 {
    // The node lifecycle controller calls a silent node NotReady after 20 s instead of 40 s
    // (the kubelet renews its lease every 10 s); every pod may hold 24 pids; the kubelet's
    // filesystem is a 128 MiB of its own, under disk pressure once less than half is free
    // (soft, with a grace period longer than the test: reported, nothing evicted).
    let c = Cluster::start_with(ClusterOptions {
        controller_manager_args: vec![
            "--node-monitor-grace-period=20s".into(),
            "--node-monitor-period=1s".into(),
        ],
        kubelet_args: vec![
            "--pod-max-pids=24".into(),
            "--eviction-soft=nodefs.available<50%,nodefs.inodesFree<50%".into(),
            "--eviction-soft-grace-period=nodefs.available=30m,nodefs.inodesFree=30m".into(),
            // DiskPressure clears 5 s after the inodes are freed, not 5 min: the bytes come next.
            "--eviction-pressure-transition-period=5s".into(),
        ],
        kubelet_root_mib: Some(128),
        kubelet_serving_certificate: Some(expired_serving_certificate()),
        kubelet_root_inodes: Some(INODES),
        // The apiserver serves a certificate with three days left.
        apiserver_certificate_lifetime: Some(Duration::from_secs(3 * 86400)),
        ..Default::default()
    })
    .await
    .expect("a cluster of this test's own");
    let client = c.client().await;
    let ctx = context(&c, client.clone());
    let node = c.node_name().to_owned();
    let nodes: Api<Node> = Api::all(client.clone());
    let ns = c.create_namespace("faults").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let node_triage = async || {
        triage(
            &ctx,
            node_abnormal(&node),
            &[&ProcessCollector],
            &NodeTriageDiagnoser,
        )
        .await
    };

    // The kubelet serves with a certificate that expired (installed before it started, see the
    // options): node-collector reads it from the kubelet's cert dir and the triage names it. The
    // apiserver's has under three days left: node-collector reads it from a handshake with the
    // apiserver's address, as this node reaches it.
    let rc = triage(
        &ctx,
        node_abnormal(&node),
        &[&NodeCollector],
        &NodeTriageDiagnoser,
    )
    .await
    .expect("the node triage names the kubelet's expired certificate");
    eprintln!("node triage: {}: {}", rc.reason, rc.summary);
    assert!(
        names(
            &rc,
            "NodeCertificateExpired",
            &format!(
                "the kubelet's certificate {}/pki/kubelet.crt (CN=kubelet-expired) expired ",
                c.kubelet_root_dir().display()
            )
        ),
        "{rc:#?}"
    );
    assert!(
        names(
            &rc,
            "ApiserverCertificateExpiring",
            &format!(
                "the apiserver at {}, as node {node} reaches it: its serving certificate (CN=kdiag-test-apiserver) expires in 2 d 23 h",
                c.control_plane().url()
            )
        ),
        "{rc:#?}"
    );

    // Zombies: six children that exit at once, and a parent (exec'd sleep, the container's
    // pid 1) that never waits for them. PIDs: a shell starting 21 sleeps, 22 of the pod's 24
    // pids with the sandbox's pause.
    pods.create(
        &PostParams::default(),
        &busybox(
            "reaper",
            "for i in 1 2 3 4 5 6; do sleep 0 & done; exec sleep 3600",
        ),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &busybox("forker", "for i in $(seq 21); do sleep 3600 & done; wait"),
    )
    .await
    .unwrap();
    let began = Instant::now();
    let rc = wait_for(
        "the node triage names the zombies' parent and the pod at its pids limit",
        Duration::from_secs(90),
        async || {
            let rc = node_triage().await.ok()?;
            (names(&rc, "ZombieProcesses", &format!("of pod {ns}/reaper"))
                && names(
                    &rc,
                    "PodPidsLimitReached",
                    &format!("pod {ns}/forker holds"),
                ))
            .then_some(rc)
        },
    )
    .await;
    eprintln!(
        "node triage ({:?} from the pods' creation): {}: {}\n  others: {:#?}",
        began.elapsed(),
        rc.reason,
        rc.summary,
        rc.others
    );
    assert!(
        names(&rc, "ZombieProcesses", "`sleep 3600` of pod")
            && names(
                &rc,
                "ZombieProcesses",
                "never reaps its children: 6 zombie(s) (sleep)"
            ),
        "{rc:#?}"
    );
    assert!(
        names(&rc, "PodPidsLimitReached", "of its 24 pids")
            && names(&rc, "PodPidsLimitReached", "× sleep"),
        "{rc:#?}"
    );

    // A drain held by a disruption budget: the reaper pod is protected by a budget that allows
    // no eviction, and `kubectl drain` (cordon, then evict) gives up after its timeout.
    pods.patch(
        "reaper",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "guarded"}}})),
    )
    .await
    .unwrap();
    let budgets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource {
            group: "policy".into(),
            version: "v1beta1".into(),
            api_version: "policy/v1beta1".into(),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
        },
    );
    budgets
        .patch(
            "guard",
            &PatchParams::apply("kdiag-test"),
            &Patch::Apply(
                json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "guard"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}),
            ),
        )
        .await
        .unwrap();
    wait_for(
        "the disruption controller's status with the reaper healthy",
        Duration::from_secs(60),
        async || {
            let st = budgets.get("guard").await.ok()?.data["status"].clone();
            // Healthy too: the eviction API lets a pod still Pending go whatever the budget
            // says, and the pods may be that young here.
            (st["expectedPods"] == 1 && st["currentHealthy"] == 1 && st["disruptionsAllowed"] == 0)
                .then_some(())
        },
    )
    .await;
    let drain = c
        .kubectl()
        .args([
            "drain",
            node.as_str(),
            "--pod-selector=app=guarded",
            // The reaper is a bare pod: drain refuses those without --force, which still
            // evicts through the budget.
            "--force",
            "--timeout=4s",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&drain.stderr).into_owned();
    eprintln!("kubectl drain: {said}");
    assert!(
        !drain.status.success() && said.contains("disruption budget"),
        "the drain is refused by the budget: {said}"
    );
    let asked = Instant::now();
    let rc = node_triage().await;
    let took = asked.elapsed();
    let uncordon = c
        .kubectl()
        .args(["uncordon", node.as_str()])
        .output()
        .unwrap();
    assert!(uncordon.status.success(), "kubectl uncordon");
    let rc = rc.expect("the node triage names the blocked drain");
    eprintln!(
        "node triage ({took:?}): {}: {}\n  others: {:#?}",
        rc.reason, rc.summary, rc.others
    );
    assert!(
        names(
            &rc,
            "NodeDrainBlocked",
            &format!(
                "node {node} is cordoned and cannot be drained: 1 pod(s) on it (reaper) may not be evicted, because PodDisruptionBudget {ns}/guard allows no eviction (disruptionsAllowed 0)"
            )
        ),
        "{rc:#?}"
    );
    wait_ready_untainted(&nodes, &node).await;

    // The kubelet stopped (hung): the node turns NotReady, and the triage names the process.
    let kubelet = signal(&c, "kubelet", "STOP");
    let stopped_at = Instant::now();
    let message = wait_for("Ready=Unknown", Duration::from_secs(90), async || {
        condition(&nodes, &node, "Ready")
            .await
            .filter(|(s, _)| s != "True")
            .map(|(_, m)| m)
    })
    .await;
    eprintln!("Ready after {:?}: {message}", stopped_at.elapsed());
    let asked = Instant::now();
    let rc = node_triage().await;
    let took = asked.elapsed();
    signal(&c, "kubelet", "CONT");
    let rc = rc.expect("the node triage identifies the stopped kubelet");
    eprintln!("node triage ({took:?}): {}: {}", rc.reason, rc.summary);
    assert_eq!(rc.reason, "KubeletStopped", "{rc:#?}");
    assert!(
        rc.summary
            .contains(&format!("its kubelet (pid {kubelet}) is stopped (SIGSTOP"))
            && rc.summary.contains("it last posted the node's status at"),
        "{}",
        rc.summary
    );
    assert!(rc.since.is_some(), "since when: {rc:?}");
    assert!(
        rc.evidence
            .iter()
            .any(|e| e.kind == "Process" && e.message.contains(", state T")),
        "{:?}",
        rc.evidence
    );
    wait_ready_untainted(&nodes, &node).await;

    // The runtime stopped (hung): pods created meanwhile wait, each pointing at it.
    let containerd = signal(&c, "containerd", "STOP");
    for name in ["waits-1", "waits-2"] {
        pods.create(&PostParams::default(), &busybox(name, "sleep 3600"))
            .await
            .unwrap();
    }
    let socket = c.cri_socket().display().to_string();
    let mut pod_causes = Vec::new();
    for name in ["waits-1", "waits-2"] {
        wait_for(
            &format!("{name} scheduled"),
            Duration::from_secs(30),
            async || {
                pods.get(name)
                    .await
                    .ok()?
                    .spec?
                    .node_name
                    .filter(|n| !n.is_empty())
            },
        )
        .await;
        let asked = Instant::now();
        let rc = triage(
            &ctx,
            pod_abnormal(&ns, name),
            &[&PodDetailCollector],
            &PodTriageDiagnoser,
        )
        .await;
        eprintln!("pod triage of {name} ({:?}): {rc:?}", asked.elapsed());
        pod_causes.push(rc);
    }
    let asked = Instant::now();
    let node_rc = node_triage().await;
    let node_took = asked.elapsed();
    signal(&c, "containerd", "CONT");
    for (name, rc) in ["waits-1", "waits-2"].iter().zip(pod_causes) {
        let rc = rc.unwrap_or_else(|e| panic!("the pod triage of {name}: {e}"));
        assert_eq!(rc.reason, "ContainerRuntimeHung", "{rc:#?}");
        assert!(
            rc.summary.starts_with(&format!(
                "pod {ns}/{name} cannot start: the container runtime on node {node} is hung: its socket {socket} accepts connections"
            )) && rc.summary.contains(&format!("containerd pid {containerd} is stopped")),
            "{}",
            rc.summary
        );
    }
    let rc = node_rc.expect("the node triage identifies the hung runtime");
    eprintln!("node triage ({node_took:?}): {}: {}", rc.reason, rc.summary);
    assert_eq!(rc.reason, "ContainerRuntimeHung", "{rc:#?}");
    assert!(rc.summary.contains(&socket), "{}", rc.summary);
    for name in ["waits-1", "waits-2"] {
        wait_running(&pods, name).await;
    }

    // The CNI plugin broken: the network's configuration names a plugin that does not exist.
    let conflist = c.cni_conf_dir().join("10-kdiag.conflist");
    let original = std::fs::read_to_string(&conflist).unwrap();
    let mut broken: serde_json::Value = serde_json::from_str(&original).unwrap();
    broken["plugins"][0]["type"] = json!("kdiag-missing");
    let staged = c.cni_conf_dir().join(".broken.tmp");
    std::fs::write(&staged, broken.to_string()).unwrap();
    std::fs::rename(&staged, &conflist).unwrap();
    pods.create(&PostParams::default(), &busybox("no-network", "sleep 3600"))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let sandbox_event = wait_for(
        "FailedCreatePodSandBox",
        Duration::from_secs(60),
        async || {
            let lp = kube::api::ListParams::default().fields("involvedObject.name=no-network");
            events
                .list(&lp)
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
        },
    )
    .await;
    eprintln!("event: {}", sandbox_event.message.unwrap_or_default());
    let asked = Instant::now();
    let rc = triage(
        &ctx,
        pod_abnormal(&ns, "no-network"),
        &[&PodDetailCollector],
        &PodTriageDiagnoser,
    )
    .await;
    let took = asked.elapsed();
    std::fs::write(&staged, &original).unwrap();
    std::fs::rename(&staged, &conflist).unwrap();
    let rc = rc.expect("the pod triage identifies the CNI failure");
    eprintln!(
        "pod triage of no-network ({took:?}): {}: {}",
        rc.reason, rc.summary
    );
    assert_eq!(rc.reason, "CNISetupFailed", "{rc:#?}");
    assert!(
        rc.summary.starts_with(&format!(
            "pod {ns}/no-network cannot start: the CNI plugin kdiag-missing on node {node} fails to set up its sandbox's network: "
        )) && rc.summary.contains("failed to find plugin \"kdiag-missing\""),
        "{}",
        rc.summary
    );
    wait_running(&pods, "no-network").await;

    // Inode pressure: a pod creates 3600 empty files in an emptyDir, nine tenths of the
    // kubelet filesystem's 4096 inodes and none of its bytes: fuller than the machine's own
    // disk is by bytes, which the triage compares it with.
    let many_files: Pod = serde_json::from_value(json!({
        "metadata": {"name": "many-files"},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "command": ["sh", "-c", "cd /scratch && for i in $(seq 3600); do : > f$i; done; exec sleep 3600"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &many_files)
        .await
        .unwrap();
    let message = wait_for(
        "DiskPressure=True from inodes",
        Duration::from_secs(90),
        async || {
            condition(&nodes, &node, "DiskPressure")
                .await
                .filter(|(s, _)| s == "True")
                .map(|(_, m)| m)
        },
    )
    .await;
    eprintln!("DiskPressure: {message}");
    let asked = Instant::now();
    let rc = node_triage()
        .await
        .expect("the node triage identifies the inode pressure");
    eprintln!(
        "node triage ({:?}): {}: {}",
        asked.elapsed(),
        rc.reason,
        rc.summary
    );
    let kubelet_root = c.kubelet_root_dir().display().to_string();
    assert!(
        names(
            &rc,
            "NodeDiskPressure",
            &format!("under disk pressure from inodes, not bytes: {kubelet_root} has ")
        ) && names(
            &rc,
            "NodeDiskPressure",
            &format!(
                "pods with the most files (their volumes and emptyDirs): pod {ns}/many-files 36"
            )
        ),
        "{rc:#?}"
    );
    pods.delete("many-files", &Default::default())
        .await
        .unwrap();
    wait_for(
        "DiskPressure=False once the files are gone",
        Duration::from_secs(90),
        async || {
            condition(&nodes, &node, "DiskPressure")
                .await
                .filter(|(s, _)| s == "False")
        },
    )
    .await;

    // Disk pressure: a pod writes 80 MiB into an emptyDir on the kubelet's 128 MiB filesystem.
    let filler: Pod = serde_json::from_value(json!({
        "metadata": {"name": "filler"},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=80; exec sleep 3600"]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &filler).await.unwrap();
    let message = wait_for("DiskPressure=True", Duration::from_secs(90), async || {
        condition(&nodes, &node, "DiskPressure")
            .await
            .filter(|(s, _)| s == "True")
            .map(|(_, m)| m)
    })
    .await;
    eprintln!("DiskPressure: {message}");
    let asked = Instant::now();
    let rc = node_triage()
        .await
        .expect("the node triage identifies the disk pressure");
    eprintln!(
        "node triage ({:?}): {}: {}",
        asked.elapsed(),
        rc.reason,
        rc.summary
    );
    assert!(
        names(
            &rc,
            "NodeDiskPressure",
            &format!("largest pods (their volumes and emptyDirs): pod {ns}/filler 80.")
        ),
        "{rc:#?}"
    );
    assert!(
        names(
            &rc,
            "NodeDiskPressure",
            &format!("{} ", c.kubelet_root_dir().display())
        ),
        "the kubelet's filesystem is among the fullest: {rc:#?}"
    );

    // Last, since nothing here can start it again: the kubelet killed outright. The node turns
    // NotReady, and the triage finds no process on the kubelet's port.
    let kubelet = signal(&c, "kubelet", "KILL");
    let killed_at = Instant::now();
    let message = wait_for(
        "Ready=Unknown after the kill",
        Duration::from_secs(90),
        async || {
            condition(&nodes, &node, "Ready")
                .await
                .filter(|(s, _)| s != "True")
                .map(|(_, m)| m)
        },
    )
    .await;
    eprintln!("Ready after {:?}: {message}", killed_at.elapsed());
    let asked = Instant::now();
    let rc = node_triage()
        .await
        .expect("the node triage identifies the dead kubelet");
    eprintln!(
        "node triage ({:?}): {}: {}",
        asked.elapsed(),
        rc.reason,
        rc.summary
    );
    assert_eq!(rc.reason, "KubeletNotRunning", "{rc:#?}");
    assert!(
        rc.summary.starts_with(&format!(
            "node {node} is NotReady: no kubelet process serves its port {} on the node: the kubelet is not running",
            c.kubelet_address().port()
        )),
        "{} (kubelet pid {kubelet} was killed)",
        rc.summary
    );
    drop(c);
}
