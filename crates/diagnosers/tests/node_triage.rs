//! Node trouble made to really happen, on a single-node cluster of this test's own (it changes
//! the node for good): real memory pressure (a pod holding 6 GiB under a soft eviction
//! threshold 3 GiB below what the node had free, so the kubelet reports MemoryPressure and
//! taints the node without evicting yet), a pod the taint keeps off the node, then the
//! container runtime killed so the kubelet reports the node NotReady. The collectors and the
//! triage diagnosers run directly against it, as the agent runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kdiag_api::plugin::{NodeEnvironment, Processor, ProcessorContext};
use kdiag_api::{Abnormal, AbnormalSpec, AbnormalStatus, PodReference, RootCause};
use kdiag_collectors::{KernelLogCollector, NodeCollector, PodDetailCollector, ProcessCollector};
use kdiag_diagnosers::{NodeTriageDiagnoser, PodTriageDiagnoser};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, ClusterOptions};
use kube::api::{Api, PostParams};
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
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
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
        .expect("the node triage identifies NotReady");
    eprintln!("node triage: {}: {}", rc.reason, rc.summary);
    assert_eq!(rc.reason, "NodeNotReady", "{rc:?}");
    assert!(
        rc.summary.contains("container runtime is down"),
        "{}",
        rc.summary
    );
    drop(c);
}
