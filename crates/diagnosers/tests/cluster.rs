//! The diagnosers against a real single-node cluster: a pod filling its emptyDir, a pod held
//! by a finalizer, a container that ignores SIGTERM under a long grace period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::plugin::{NodeEnvironment, Processor, ProcessorContext, ProcessorError};
use kdiag_api::{Abnormal, AbnormalSpec, PodReference, context_keys};
use kdiag_diagnosers::{PodDiskUsageDiagnoser, TerminatingPodDiagnoser};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, cluster};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const POD_TIMEOUT: Duration = Duration::from_secs(120);
const MIB: u64 = 1024 * 1024;

async fn context(c: &Cluster) -> ProcessorContext {
    ProcessorContext {
        node_name: c.node_name().to_owned(),
        client: c.client().await,
        timeout: Duration::from_secs(60),
        max_output_bytes: 512 * 1024,
        node: Arc::new(NodeEnvironment {
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            kubelet_root: c.kubelet_root_dir(),
            cri_sockets: vec![c.cri_socket()],
            kmsg: "/dev/kmsg".into(),
            apiserver: Some(c.control_plane().url().to_owned()),
        }),
    }
}

fn abnormal(pod: Option<(&str, &str)>, context: Value) -> Abnormal {
    let mut a = Abnormal::new(
        "test",
        AbnormalSpec {
            context: serde_json::from_value(context).ok(),
            pod_reference: pod.map(|(ns, name)| PodReference {
                namespace: ns.into(),
                name: name.into(),
                container_name: String::new(),
            }),
            ..Default::default()
        },
    );
    a.metadata.namespace = Some("default".into());
    a
}

fn pod(name: &str, grace: i64, script: &str, extra: Value) -> Pod {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
            }]
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("a valid pod")
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

async fn wait_for(
    c: &Cluster,
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    let begin = Instant::now();
    let mut last = None;
    while begin.elapsed() < POD_TIMEOUT {
        if let Ok(p) = pods.get(name).await {
            if done(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "pod {name}: {what} not seen in time. Status: {}\nkubelet: {}",
        serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap_or_default(),
        c.log_tail("kubelet", 30)
    );
}

fn first_state(p: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()
}

fn running(p: &Pod) -> bool {
    first_state(p).is_some_and(|s| s.running.is_some())
}

/// A tmpfs mounted for the test, unmounted however the test ends.
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn tmpfs(at: &std::path::Path) -> Self {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "kdiag-test"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Self(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A container's cgroup frozen for the test (cgroup v1 freezer), thawed however it ends.
struct Frozen(std::path::PathBuf);

impl Frozen {
    fn pid(pid: i64) -> Self {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let path = cgroup
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "freezer")
                    .then(|| path.to_owned())
            })
            .expect("a freezer hierarchy (cgroup v1)");
        let state = std::path::Path::new("/sys/fs/cgroup/freezer")
            .join(path.trim_start_matches('/'))
            .join("freezer.state");
        std::fs::write(&state, "FROZEN").unwrap_or_else(|e| panic!("{}: {e}", state.display()));
        Self(state)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "THAWED");
    }
}

fn container_id(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default()
        .trim_start_matches("containerd://")
        .to_owned()
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().expect("uid")
}

#[tokio::test]
async fn pod_disk_usage_diagnoser_identifies_the_emptydir_hog_and_names_it() {
    let c = cluster().await;
    let ns = c.create_namespace("disk").await;
    let pods: Api<Pod> = Api::namespaced(c.client().await, &ns);
    let hog = pod(
        "hog",
        1,
        "dd if=/dev/zero of=/spool/fill bs=1M count=64 2>/dev/null; exec sleep 3600",
        json!({"spec": {
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "dd if=/dev/zero of=/spool/fill bs=1M count=64 2>/dev/null; exec sleep 3600"],
                "volumeMounts": [{"name": "spool", "mountPath": "/spool"}]}],
            "volumes": [{"name": "spool", "emptyDir": {}}],
        }}),
    );
    pods.create(&PostParams::default(), &hog).await.unwrap();
    let p = wait_for(c, &pods, "hog", "Running", running).await;
    // Wait until the 64 MiB are on the node's disk, in the kubelet's directory for the volume.
    let fill = c
        .pod_dir(&uid(&p))
        .join("volumes/kubernetes.io~empty-dir/spool/fill");
    let begin = Instant::now();
    while std::fs::metadata(&fill).map(|m| m.len()).unwrap_or(0) < 64 * MIB {
        assert!(
            begin.elapsed() < POD_TIMEOUT,
            "{} never reached 64 MiB",
            fill.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ctx = context(c).await;

    let out = PodDiskUsageDiagnoser
        .process(
            &ctx,
            &abnormal(None, json!({"podDiskUsageThreshold": "32Mi"})),
        )
        .await
        .unwrap_or_else(|e| panic!("not identified: {e}"));
    let cause = out.root_cause.expect("a root cause");
    eprintln!("pod-disk-usage-diagnoser: {cause:#?}");
    assert_eq!(cause.reason, "PodDiskUsageOverThreshold");
    assert!(
        cause.summary.starts_with(&format!("pod {ns}/hog uses 64.")),
        "{}",
        cause.summary
    );
    assert!(
        cause.summary.contains("emptyDir spool"),
        "{}",
        cause.summary
    );
    assert!(
        cause
            .evidence
            .iter()
            .any(|e| e.object == format!("pod/{ns}/hog"))
    );
    assert!(!cause.suggestion.is_empty());
    // The compatibility list, largest first, with Kube Diagnoser's fields.
    let top = out.context[context_keys::POD_DISK_USAGE_DIAGNOSIS]
        .as_array()
        .unwrap();
    assert_eq!(top[0]["metadata"]["name"], "hog");
    assert!(top[0]["diskUsage"].as_u64().unwrap() >= 64 * MIB);
    assert_eq!(top[0]["path"], json!(c.pod_dir(&uid(&p))));
    assert_eq!(top[0]["emptyDirs"][0]["name"], "spool");
    assert!(top[0]["sharePercent"].as_f64().unwrap() > 0.0);

    // With a threshold it does not reach, the node is healthy: a clear non-identification that
    // says what was checked (and still names the largest pod).
    match PodDiskUsageDiagnoser
        .process(
            &ctx,
            &abnormal(None, json!({"podDiskUsageThreshold": "1Ti"})),
        )
        .await
    {
        Err(ProcessorError::NotIdentified(m)) => {
            eprintln!("pod-disk-usage-diagnoser, healthy: {m}");
            assert!(m.contains("pod directories"), "{m}");
            assert!(m.contains(&format!("the largest is {ns}/hog")), "{m}");
            assert!(m.contains("ephemeral-storage limit"), "{m}");
            assert!(m.contains("% full"), "{m}");
        }
        other => panic!("expected NotIdentified, got {other:?}"),
    }
    // A wrong threshold is the Abnormal's fault.
    match PodDiskUsageDiagnoser
        .process(
            &ctx,
            &abnormal(None, json!({"podDiskUsageThreshold": "lots"})),
        )
        .await
    {
        Err(ProcessorError::InvalidInput(m)) => assert!(m.contains("podDiskUsageThreshold"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn terminating_pod_diagnoser_names_the_finalizer_for_one_pod_and_the_sigterm_ignoring_process_for_another()
 {
    let c = cluster().await;
    let ns = c.create_namespace("terminating").await;
    let pods: Api<Pod> = Api::namespaced(c.client().await, &ns);
    let ctx = context(c).await;

    // A pod held by a finalizer nobody removes.
    let held = pod(
        "held",
        2,
        "exec sleep 86400",
        json!({"metadata": {"finalizers": ["kdiag.test/never-released"]}}),
    );
    // A container that ignores SIGTERM, under a long grace period.
    let stubborn = pod("stubborn", 300, "trap '' TERM; exec sleep 86400", json!({}));
    pods.create(&PostParams::default(), &held).await.unwrap();
    pods.create(&PostParams::default(), &stubborn)
        .await
        .unwrap();
    wait_for(c, &pods, "held", "Running", running).await;
    let stubborn = wait_for(c, &pods, "stubborn", "Running", running).await;

    // Before deletion: not terminating, nothing to find.
    match TerminatingPodDiagnoser
        .process(&ctx, &abnormal(Some((&ns, "held")), json!({})))
        .await
    {
        Err(ProcessorError::NotIdentified(m)) => assert!(m.contains("is not terminating"), "{m}"),
        other => panic!("{other:?}"),
    }

    pods.delete("held", &DeleteParams::default()).await.unwrap();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    // The held pod's container stops after its 2 s grace; its deadline (deletionTimestamp +
    // grace) passes soon after.
    // The kubelet 1.20 sometimes reports a container it removed during the deletion as
    // lastState terminated (ContainerStatusUnknown) with state waiting: stopped all the same.
    let held = wait_for(c, &pods, "held", "stopped container", |p| {
        let stopped_last = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.last_state.as_ref())
            .is_some_and(|s| s.terminated.is_some());
        first_state(p)
            .is_some_and(|s| s.terminated.is_some() || (s.running.is_none() && stopped_last))
    })
    .await;
    let deletion = held.metadata.deletion_timestamp.clone().unwrap().0;
    let deadline = deletion
        .checked_add(jiff::SignedDuration::from_secs(3))
        .unwrap();
    while jiff::Timestamp::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let out = TerminatingPodDiagnoser
        .process(&ctx, &abnormal(Some((&ns, "held")), json!({})))
        .await
        .unwrap_or_else(|e| panic!("held: {e}"));
    let cause = out.root_cause.clone().unwrap();
    eprintln!("terminating-pod-diagnoser, held: {cause:#?}");
    assert_eq!(cause.reason, "FinalizersPresent", "{}", cause.summary);
    assert!(
        cause.summary.contains(&format!("pod {ns}/held")),
        "{}",
        cause.summary
    );
    assert!(
        cause.summary.contains("kdiag.test/never-released"),
        "{}",
        cause.summary
    );
    assert!(
        cause.summary.contains("past its deletion deadline"),
        "{}",
        cause.summary
    );
    assert!(
        !out.context.contains_key(context_keys::SIGNAL_RECOVERY),
        "no signal for a finalizer: {:?}",
        out.context.get(context_keys::SIGNAL_RECOVERY)
    );
    let diag = out.context[context_keys::TERMINATING_POD_FINDINGS]
        .as_array()
        .unwrap();
    assert_eq!(diag[0]["metadata"]["name"], "held");
    assert!(diag[0]["overdueSeconds"].as_i64().unwrap() >= 0);
    // Kube Diagnoser's key holds the overdue pod itself, as a Pod object.
    let pods_out: Vec<Pod> =
        serde_json::from_value(out.context[context_keys::TERMINATING_POD_DIAGNOSIS].clone())
            .expect("terminatingPodDiagnosis is a list of Pods");
    assert_eq!(pods_out[0].metadata.name.as_deref(), Some("held"));
    assert!(pods_out[0].metadata.deletion_timestamp.is_some());

    // A volume left mounted under the pod's directory is named too (a real tmpfs mount where
    // the kubelet keeps the pod's emptyDirs).
    let extra = c
        .pod_dir(&uid(&held))
        .join("volumes/kubernetes.io~empty-dir/extra");
    std::fs::create_dir_all(&extra).unwrap();
    let mount = Mounted::tmpfs(&extra);
    let out = TerminatingPodDiagnoser
        .process(&ctx, &abnormal(Some((&ns, "held")), json!({})))
        .await
        .unwrap_or_else(|e| panic!("held with a mount: {e}"));
    let cause = out.root_cause.clone().unwrap();
    assert!(cause.summary.contains("still mounted"), "{}", cause.summary);
    assert!(
        cause
            .evidence
            .iter()
            .any(|e| e.kind == "Mount" && e.message.contains("~empty-dir/extra"))
    );
    drop(mount);

    let out = TerminatingPodDiagnoser
        .process(&ctx, &abnormal(Some((&ns, "stubborn")), json!({})))
        .await
        .unwrap_or_else(|e| panic!("stubborn: {e}"));
    let cause = out.root_cause.clone().unwrap();
    eprintln!(
        "terminating-pod-diagnoser, stubborn: {cause:#?}\n{}",
        serde_json::to_string_pretty(&out.context).unwrap()
    );
    assert_eq!(cause.reason, "SigtermIgnored", "{}", cause.summary);
    assert!(
        cause
            .summary
            .contains(&format!("pod {ns}/stubborn is terminating")),
        "{}",
        cause.summary
    );
    assert!(cause.summary.contains("sleep 86400"), "{}", cause.summary);
    let signals = out.context[context_keys::SIGNAL_RECOVERY]
        .as_array()
        .unwrap();
    assert_eq!(signals.len(), 1, "{signals:?}");
    let pid = signals[0]["pid"].as_i64().unwrap();
    assert_eq!(signals[0]["signal"], 9);
    // The proposed pid is the container's sleep, in the stubborn pod's cgroup, and the start
    // time matches the kernel's, so the recoverer can tell a reused pid.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("pod{}", uid(&stubborn))),
        "{cgroup}"
    );
    let start = kdiag_procstat::start_time("/proc".as_ref(), pid as i32).unwrap();
    assert_eq!(signals[0]["startTime"], start);

    // Node-wide, both are named, each with its own cause.
    let out = TerminatingPodDiagnoser
        .process(&ctx, &abnormal(None, json!({})))
        .await
        .unwrap();
    let diag = out.context[context_keys::TERMINATING_POD_FINDINGS]
        .as_array()
        .unwrap();
    let reason_of = |name: &str| {
        diag.iter()
            .find(|d| d["metadata"]["name"] == name && d["metadata"]["namespace"] == ns.as_str())
            .map(|d| d["causes"][0]["reason"].clone())
    };
    assert_eq!(reason_of("held"), Some(json!("FinalizersPresent")));
    assert_eq!(reason_of("stubborn"), Some(json!("SigtermIgnored")));

    // Release both so the cluster's teardown does not wait for them.
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let _ = pods
        .delete(
            "stubborn",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await;
}

#[tokio::test]
async fn terminating_pod_diagnoser_proposes_sigkill_for_a_container_process_alive_past_the_deadline()
 {
    let c = cluster().await;
    let ns = c.create_namespace("alive").await;
    let pods: Api<Pod> = Api::namespaced(c.client().await, &ns);
    let ctx = context(c).await;
    pods.create(
        &PostParams::default(),
        &pod("frozen", 1, "exec sleep 86400", json!({})),
    )
    .await
    .unwrap();
    let p = wait_for(c, &pods, "frozen", "Running", running).await;
    // The container's process, found the way the diagnoser finds it: by the pod's cgroup.
    let snap = kdiag_collectors::process::scan::scan(
        std::path::Path::new("/proc"),
        kdiag_collectors::budget::Deadline::never(),
        2,
    )
    .unwrap();
    let sleeper = snap
        .processes
        .iter()
        .find(|q| q.container_id.as_deref() == Some(container_id(&p).as_str()))
        .expect("the container's sleep");
    assert_eq!(sleeper.command, ["sleep", "86400"]);
    // A frozen process cannot die, not even of the kubelet's SIGKILL: the pod outlives its
    // deadline with its container process alive, as with a process stuck on I/O.
    let frozen = Frozen::pid(sleeper.pid as i64);
    pods.delete("frozen", &DeleteParams::default())
        .await
        .unwrap();
    let p = wait_for(c, &pods, "frozen", "deletionTimestamp", |p| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await;
    let deadline = p
        .metadata
        .deletion_timestamp
        .clone()
        .unwrap()
        .0
        .checked_add(jiff::SignedDuration::from_secs(2))
        .unwrap();
    while jiff::Timestamp::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let out = TerminatingPodDiagnoser
        .process(&ctx, &abnormal(Some((&ns, "frozen")), json!({})))
        .await
        .unwrap_or_else(|e| panic!("frozen: {e}"));
    let cause = out.root_cause.clone().unwrap();
    eprintln!("terminating-pod-diagnoser, frozen: {cause:#?}");
    assert_eq!(cause.reason, "ContainerProcessesAlive", "{}", cause.summary);
    assert!(
        cause.summary.contains("past its deletion deadline"),
        "{}",
        cause.summary
    );
    let signals = out.context[context_keys::SIGNAL_RECOVERY]
        .as_array()
        .unwrap();
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0]["pid"], sleeper.pid);
    assert_eq!(signals[0]["signal"], 9);
    assert_eq!(signals[0]["startTime"], sleeper.start_time);

    // Thawed, the process gets the kubelet's pending SIGKILL and the pod goes.
    drop(frozen);
    let _ = pods
        .delete(
            "frozen",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await;
}
