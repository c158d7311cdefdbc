//! The level-2 cluster itself: pods really run, crash, get OOM-killed, fail probes and pulls,
//! Jobs complete — and a stopped run leaves nothing behind, however it ends.
//!
//! Most tests share one cluster (`cluster()`) and work in a namespace of their own. The
//! lifecycle tests at the end start clusters of their own (or in a child process) and check the
//! machine themselves, without asking the library what it removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kdiag_testenv::{
    BUSYBOX_IMAGE, Cluster, ClusterOptions, ImageSpec, TestEnvError, cleanup_stale_runs, cluster,
};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch,
    PatchParams, PostParams,
};
use serde::{Deserialize, Serialize};

const POD_TIMEOUT: Duration = Duration::from_secs(120);

/// Held by the tests that start clusters of their own: every start cleans up stale runs, which
/// must not happen behind the back of the test that checks exactly that.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------------------------------
// helpers

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A pod of examples/pods, moved into the test's namespace.
fn example_pod(case: &str, namespace: &str) -> Pod {
    let path = repo_root().join(format!("examples/pods/{case}/pod.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pod: Pod =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pod.metadata.namespace = Some(namespace.into());
    pod
}

fn busybox_pod(name: &str, image: &str, script: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
            }]
        }
    }))
    .expect("a valid pod")
}

async fn create_pod(c: &Cluster, namespace: &str, pod: &Pod) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(c.client().await, namespace);
    pods.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {:?}: {e}", pod.metadata.name));
    pods
}

/// Polls the pod until `done` holds; on timeout fails with its status and the kubelet's log.
async fn wait_for_pod(
    c: &Cluster,
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < POD_TIMEOUT {
        if let Ok(pod) = pods.get(name).await {
            if done(&pod) {
                return pod;
            }
            last = Some(pod);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "pod {name}: {what} not seen within {}s. Status:\n{}\n--- kubelet log:\n{}",
        POD_TIMEOUT.as_secs(),
        serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap_or_default(),
        c.log_tail("kubelet", 30)
    );
}

fn first_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn is_running(pod: &Pod) -> bool {
    first_container(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().expect("a created pod has a uid")
}

async fn events_of(c: &Cluster, namespace: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(c.client().await, namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Waits until the pod has an event with this reason whose message contains `needle`.
async fn wait_for_event(
    c: &Cluster,
    namespace: &str,
    name: &str,
    reason: &str,
    needle: &str,
) -> Event {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < POD_TIMEOUT {
        seen = events_of(c, namespace, name).await;
        if let Some(e) = seen.iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.message.as_deref().is_some_and(|m| m.contains(needle))
        }) {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen: Vec<String> = seen
        .iter()
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect();
    panic!("no {reason} event containing {needle:?} for {namespace}/{name}; events: {seen:#?}");
}

// ------------------------------------------------------------------------------------------
// pods on the shared cluster

#[tokio::test]
async fn a_pod_runs_on_the_node_and_its_log_is_readable() {
    let c = cluster().await;
    let ns = c.create_namespace("running").await;
    let pod = busybox_pod(
        "hello",
        BUSYBOX_IMAGE,
        "echo hello-from-kdiag-testenv; exec sleep 3600",
    );
    let pods = create_pod(c, &ns, &pod).await;
    let pod = wait_for_pod(c, &pods, "hello", "Running", is_running).await;

    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(c.node_name())
    );
    // The pod got an address of the run's own bridge network.
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let prefix = c.pod_subnet().trim_end_matches("0/24").to_owned();
    assert!(
        ip.starts_with(&prefix),
        "pod ip {ip} outside {}",
        c.pod_subnet()
    );

    // apiserver → kubelet (by hostname, on loopback) → containerd → the container's log.
    let log = pods
        .logs("hello", &LogParams::default())
        .await
        .expect("pod log");
    assert!(log.contains("hello-from-kdiag-testenv"), "log: {log:?}");

    // What later tests read directly is where the accessors say: the pod's kubelet directory
    // and its container in containerd's CRI namespace.
    assert!(c.pod_dir(&uid(&pod)).join("containers").is_dir());
    let container_id = first_container(&pod)
        .and_then(|s| s.container_id.clone())
        .unwrap_or_default();
    let listed = c.ctr().args(["containers", "list", "-q"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout)
            .contains(container_id.trim_start_matches("containerd://")),
        "{container_id} not in ctr's list"
    );
}

#[tokio::test]
async fn a_crash_loop_shows_its_exit_code() {
    let c = cluster().await;
    let ns = c.create_namespace("crash").await;
    let pods = create_pod(c, &ns, &example_pod("crash-loop", &ns)).await;
    let pod = wait_for_pod(
        c,
        &pods,
        "crash-loop",
        "CrashLoopBackOff after exit 3",
        |p| {
            first_container(p).is_some_and(|s| {
                let waiting = s
                    .state
                    .as_ref()
                    .and_then(|st| st.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref());
                let exit = s
                    .last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .map(|t| t.exit_code);
                waiting == Some("CrashLoopBackOff") && exit == Some(3)
            })
        },
    )
    .await;
    assert!(first_container(&pod).is_some_and(|s| s.restart_count >= 1));
    wait_for_event(
        c,
        &ns,
        "crash-loop",
        "BackOff",
        "Back-off restarting failed container",
    )
    .await;
    let log = pods
        .logs(
            "crash-loop",
            &LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await
        .expect("previous log");
    assert!(log.contains("fatal:"), "log: {log:?}");
}

#[tokio::test]
async fn an_oom_killed_container_shows_oom_killed_and_the_kernel_says_so() {
    let c = cluster().await;
    let ns = c.create_namespace("oom").await;
    let pods = create_pod(c, &ns, &example_pod("oom-kill", &ns)).await;
    let oom_killed = |s: &ContainerStatus| {
        [s.state.as_ref(), s.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|st| st.terminated.as_ref())
            .find(|t| t.reason.as_deref() == Some("OOMKilled"))
            .map(|t| (t.exit_code, t.container_id.clone().unwrap_or_default()))
    };
    let pod = wait_for_pod(c, &pods, "oom-kill", "OOMKilled", |p| {
        first_container(p).and_then(oom_killed).is_some()
    })
    .await;
    let (exit_code, container_id) = first_container(&pod).and_then(oom_killed).unwrap();
    assert_eq!(exit_code, 137);

    // The kernel's own report names the container's memory cgroup under the run's cgroup root.
    let container_id = container_id.trim_start_matches("containerd://").to_owned();
    let expected = format!("pod{}/{container_id}", uid(&pod));
    let dmesg = Command::new("dmesg").output().expect("dmesg");
    let kernel_log = String::from_utf8_lossy(&dmesg.stdout);
    let line = kernel_log
        .lines()
        .find(|l| l.contains("oom-kill:") && l.contains(&expected))
        .unwrap_or_else(|| panic!("no oom-kill line for {expected} in dmesg"));
    assert!(
        line.contains(&format!("task_memcg={}/kubepods/", c.cgroup_root())),
        "{line}"
    );
}

#[tokio::test]
async fn a_job_runs_to_completion() {
    let c = cluster().await;
    let ns = c.create_namespace("job").await;
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": "once" },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", "echo done"],
                }]
            }}
        }
    }))
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(c.client().await, &ns);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let start = Instant::now();
    loop {
        let job = jobs.get("once").await.unwrap();
        let status = job.status.unwrap_or_default();
        let complete = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        if complete {
            assert_eq!(status.succeeded, Some(1));
            break;
        }
        assert!(
            start.elapsed() < POD_TIMEOUT,
            "Job not complete within {}s: failed={:?}\n{}",
            POD_TIMEOUT.as_secs(),
            status.failed,
            c.log_tail("kube-controller-manager", 20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_missing_image_ends_in_image_pull_back_off_with_a_loopback_connection_error() {
    let c = cluster().await;
    let ns = c.create_namespace("pull").await;
    // A Docker Hub name: the registry most likely to be reached if anything leaked.
    let pod = busybox_pod("missing", "kdiag-no-such-image:v1", "true");
    let pods = create_pod(c, &ns, &pod).await;
    wait_for_pod(c, &pods, "missing", "ImagePullBackOff", |p| {
        first_container(p)
            .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .is_some_and(|r| r == "ImagePullBackOff")
    })
    .await;
    let failed = wait_for_event(c, &ns, "missing", "Failed", "Failed to pull image").await;
    let message = failed.message.unwrap_or_default();
    assert!(
        message.contains("127.0.0.1:9") && message.contains("connection refused"),
        "{message}"
    );
    assert!(
        message.contains("docker.io/library/kdiag-no-such-image:v1"),
        "{message}"
    );
}

#[tokio::test]
async fn a_pod_with_a_finalizer_stays_terminating_until_the_finalizer_goes() {
    let c = cluster().await;
    let ns = c.create_namespace("finalizer").await;
    let pods = create_pod(c, &ns, &example_pod("stuck-terminating", &ns)).await;
    wait_for_pod(c, &pods, "stuck-terminating", "Running", is_running).await;
    pods.delete("stuck-terminating", &DeleteParams::default())
        .await
        .unwrap();
    // The kubelet stops the container, the object stays.
    let pod = wait_for_pod(c, &pods, "stuck-terminating", "stopped container", |p| {
        first_container(p)
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.terminated.is_some())
    })
    .await;
    assert!(pod.metadata.deletion_timestamp.is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pods.get_opt("stuck-terminating").await.unwrap().is_some(),
        "still there while the finalizer is"
    );
    // Releasing the finalizer lets it go: it was the only thing holding it.
    pods.patch(
        "stuck-terminating",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    let start = Instant::now();
    while pods.get_opt("stuck-terminating").await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pod not gone after the finalizer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test]
async fn a_pod_filling_its_empty_dir_grows_its_directory_under_the_kubelet_root() {
    let c = cluster().await;
    let ns = c.create_namespace("emptydir").await;
    let pods = create_pod(c, &ns, &example_pod("emptydir-filling", &ns)).await;
    let pod = wait_for_pod(c, &pods, "emptydir-filling", "Running", is_running).await;
    let spool = c
        .pod_dir(&uid(&pod))
        .join("volumes/kubernetes.io~empty-dir/spool");
    let start = Instant::now();
    let mut size = 0;
    while start.elapsed() < Duration::from_secs(60) {
        size = dir_size(&spool);
        if size >= 12 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        size >= 12 << 20,
        "{} holds only {size} bytes",
        spool.display()
    );
    // Stop it writing: the remaining tests share this disk.
    pods.delete("emptydir-filling", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container_with_unhealthy_events() {
    let c = cluster().await;
    let ns = c.create_namespace("liveness").await;
    let pods = create_pod(c, &ns, &example_pod("liveness-probe", &ns)).await;
    let unhealthy = wait_for_event(
        c,
        &ns,
        "liveness-probe",
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 404",
    )
    .await;
    assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));
    wait_for_pod(c, &pods, "liveness-probe", "a restart", |p| {
        first_container(p).is_some_and(|s| s.restart_count >= 1)
    })
    .await;
}

#[tokio::test]
async fn a_loaded_image_runs_with_its_own_files() {
    let c = cluster().await;
    c.load_image(
        &ImageSpec::new("kdiag.local/greeter:v1")
            .file(
                "/app/greeting.txt",
                0o644,
                b"hello from a loaded image\n".to_vec(),
            )
            .cmd(["sh", "-c", "cat /app/greeting.txt; exec sleep 3600"]),
    )
    .expect("load the image");
    let ns = c.create_namespace("image").await;
    let mut pod = busybox_pod("greeter", "kdiag.local/greeter:v1", "");
    // The image's own command, not the helper's.
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].command = None;
        spec.containers[0].image_pull_policy = Some("Never".into());
    }
    let pods = create_pod(c, &ns, &pod).await;
    wait_for_pod(c, &pods, "greeter", "Running", is_running).await;
    let log = pods.logs("greeter", &LogParams::default()).await.unwrap();
    assert_eq!(log, "hello from a loaded image\n");
}

#[tokio::test]
async fn every_example_abnormal_is_accepted_by_the_abnormal_crd() {
    let c = cluster().await;
    let crd_path = repo_root().join("config/crd/diagnosis.netease.com_abnormals.yaml");
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&std::fs::read_to_string(&crd_path).unwrap()).unwrap();
    c.apply_crds(&[crd]).await.expect("apply the Abnormal CRD");
    let ns = c.create_namespace("abnormals").await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("diagnosis.netease.com", "v1", "Abnormal"),
        "abnormals",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(c.client().await, &ns, &ar);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples/pods"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 5, "{cases:?}");
    for dir in cases {
        let path = dir.join("abnormal.yaml");
        let mut abnormal: DynamicObject =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        abnormal.metadata.namespace = Some(ns.clone());
        let pod_name = example_pod(dir.file_name().unwrap().to_str().unwrap(), &ns)
            .metadata
            .name;
        assert_eq!(
            abnormal.data["spec"]["podReference"]["name"].as_str(),
            pod_name.as_deref(),
            "{} must refer to its pod",
            path.display()
        );
        api.create(&PostParams::default(), &abnormal)
            .await
            .unwrap_or_else(|e| panic!("{} rejected: {e}", path.display()));
    }
}

// ------------------------------------------------------------------------------------------
// lifecycle: what a run leaves behind

/// What belongs to one run, recorded while it runs, to check that none of it survives.
#[derive(Debug, Serialize, Deserialize)]
struct RunTrace {
    run_dir: PathBuf,
    control_plane_dir: PathBuf,
    bridge: String,
    cgroup_root: String,
    cri_socket: String,
    /// Components, shims and container processes.
    pids: Vec<i32>,
    /// Inodes of the pods' network namespaces.
    netns: Vec<String>,
    pod_uids: Vec<String>,
    /// Shim sockets, which containerd 1.6 keeps in /run/containerd/s whatever its state dir.
    shim_sockets: Vec<PathBuf>,
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    kdiag_procstat::alive(Path::new("/proc"), pid)
}

fn proc_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Records the run as the machine shows it: processes in its cgroup or naming its socket, and
/// the network namespaces they are in.
async fn trace(c: &Cluster) -> RunTrace {
    let mut pids: BTreeSet<i32> = c.pids().into_iter().map(|(_, p)| p).collect();
    let mut netns = BTreeSet::new();
    let socket = c.cri_socket().to_string_lossy().into_owned();
    for pid in proc_pids() {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let in_run = cgroup
            .lines()
            .any(|l| l.contains(&format!(":{}/", c.cgroup_root())));
        if in_run || cmdline(pid).contains(&socket) {
            pids.insert(pid);
            if cgroup.contains("/kubepods/")
                && let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            {
                netns.insert(ns.to_string_lossy().into_owned());
            }
        }
    }
    let pod_uids = std::fs::read_dir(c.kubelet_root_dir().join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Each shim's bundle directory records its address.
    let tasks = c
        .run_dir()
        .join("containerd/state/io.containerd.runtime.v2.task/k8s.io");
    let shim_sockets = std::fs::read_dir(tasks)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|b| std::fs::read_to_string(b.path().join("address")).ok())
        .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")))
        .collect();
    RunTrace {
        shim_sockets,
        run_dir: c.run_dir(),
        control_plane_dir: c.control_plane().run_dir().to_owned(),
        bridge: c.bridge(),
        cgroup_root: c.cgroup_root(),
        cri_socket: socket,
        pids: pids.into_iter().collect(),
        netns: netns.into_iter().collect(),
        pod_uids,
    }
}

/// Everything of the run still on the machine, found by looking at the machine.
fn leftovers(t: &RunTrace) -> Vec<String> {
    let mut left = Vec::new();
    let dirs = [
        t.run_dir.to_string_lossy().into_owned(),
        t.control_plane_dir.to_string_lossy().into_owned(),
    ];
    for pid in proc_pids() {
        if !alive(pid) {
            continue;
        }
        let cmd = cmdline(pid);
        if t.pids.contains(&pid)
            || dirs.iter().any(|d| cmd.contains(&format!("{d}/")))
            || cmd.contains(&t.cri_socket)
        {
            left.push(format!("process {pid}: {cmd}"));
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup
            .lines()
            .any(|l| l.ends_with(&t.cgroup_root) || l.contains(&format!("{}/", t.cgroup_root)))
        {
            left.push(format!("process {pid} in the run's cgroup: {cmd}"));
        }
        if let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            && t.netns.contains(&ns.to_string_lossy().into_owned())
        {
            left.push(format!("process {pid} in a pod network namespace: {cmd}"));
        }
    }
    for info in ["/proc/self/mountinfo", "/proc/1/mountinfo"] {
        for line in std::fs::read_to_string(info).unwrap_or_default().lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (root, mount_point) = (fields[3], fields[4]);
            if dirs
                .iter()
                .any(|d| mount_point == d || mount_point.starts_with(&format!("{d}/")))
                || t.netns.iter().any(|ns| root == ns)
            {
                left.push(format!("mount in {info}: {line}"));
            }
        }
    }
    if Path::new("/sys/class/net").join(&t.bridge).exists() {
        left.push(format!("bridge {}", t.bridge));
    }
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = h.path().join(t.cgroup_root.trim_start_matches('/'));
        if cg.exists() {
            left.push(format!("cgroup {}", cg.display()));
        }
    }
    for d in [&t.run_dir, &t.control_plane_dir] {
        if d.exists() {
            left.push(format!("directory {}", d.display()));
        }
    }
    for socket in &t.shim_sockets {
        if socket.exists() {
            left.push(format!("shim socket {}", socket.display()));
        }
    }
    for e in std::fs::read_dir("/var/log/pods")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if t.pod_uids.iter().any(|u| name.ends_with(u.as_str())) {
            left.push(format!("pod logs {}", e.path().display()));
        }
    }
    left
}

fn assert_nothing_left(t: &RunTrace, within: Duration) {
    let start = Instant::now();
    loop {
        let left = leftovers(t);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "left behind:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod with a volume (a tmpfs and a bind mount), waited for until it runs.
async fn run_a_pod(c: &Cluster, name: &str) -> Pod {
    let ns = c.create_namespace(name).await;
    let mut pod = busybox_pod(name, BUSYBOX_IMAGE, "exec sleep 3600");
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = Some(vec![
            serde_json::from_value(
                serde_json::json!({"name": "scratch", "emptyDir": {"medium": "Memory"}}),
            )
            .unwrap(),
        ]);
        spec.containers[0].volume_mounts = Some(vec![
            serde_json::from_value(serde_json::json!({"name": "scratch", "mountPath": "/scratch"}))
                .unwrap(),
        ]);
    }
    let pods = create_pod(c, &ns, &pod).await;
    wait_for_pod(c, &pods, name, "Running", is_running).await
}

#[tokio::test]
async fn a_stopped_cluster_leaves_nothing_behind_and_a_second_cluster_beside_it_keeps_working() {
    // The shared cluster first, so it is there for the whole life of the second one.
    let shared = cluster().await;
    let _serial = SERIAL.lock().await;
    let neighbour = run_a_pod(shared, "neighbour").await;

    let own = Cluster::start().await.expect("start a second cluster");
    assert_ne!(own.bridge(), shared.bridge());
    assert_ne!(own.pod_subnet(), shared.pod_subnet());
    assert_ne!(own.cgroup_root(), shared.cgroup_root());
    let started = Instant::now();
    run_a_pod(&own, "doomed").await;
    let t = trace(&own).await;
    assert!(
        !t.netns.is_empty(),
        "the pod's network namespace must have been seen: {t:?}"
    );
    assert!(
        t.pids
            .iter()
            .any(|p| cmdline(*p).contains("containerd-shim")),
        "a shim must have been seen: {t:?}"
    );
    println!(
        "second cluster: pod running {:.1}s after start",
        started.elapsed().as_secs_f64()
    );

    let stop = Instant::now();
    own.stop().expect("a clean stop");
    println!("stop took {:.1}s", stop.elapsed().as_secs_f64());
    assert_nothing_left(&t, Duration::from_secs(5));

    // The neighbour's pod never noticed.
    let pods: Api<Pod> = Api::namespaced(
        shared.client().await,
        neighbour.metadata.namespace.as_deref().unwrap(),
    );
    let after = pods.get("neighbour").await.unwrap();
    assert!(is_running(&after));
    assert_eq!(first_container(&after).map(|s| s.restart_count), Some(0));
    let node = Api::<Node>::all(shared.client().await)
        .get(shared.node_name())
        .await
        .unwrap();
    assert!(
        node.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}

/// Run directories of this process, and kdiag cgroups of the machine.
fn own_runs() -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
    let prefix = |kind: &str| format!("{kind}-{}-", std::process::id());
    let dirs = std::fs::read_dir(std::env::temp_dir().join("kdiag-testenv"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix("cluster")) || n.starts_with(&prefix("apiserver"))
            })
        })
        .collect();
    let cgroups = std::fs::read_dir("/sys/fs/cgroup/memory")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kdiag-"))
        })
        .collect();
    (dirs, cgroups)
}

#[tokio::test]
async fn a_kubelet_that_cannot_start_fails_the_start_with_its_log_and_leaves_no_run_behind() {
    cluster().await;
    let _serial = SERIAL.lock().await;
    let (dirs_before, cgroups_before) = own_runs();
    let err = Cluster::start_with(ClusterOptions {
        kubelet_args: vec!["--no-such-flag=1".into()],
        ..Default::default()
    })
    .await
    .err()
    .expect("a kubelet with an unknown flag cannot start");
    assert!(
        matches!(&err, TestEnvError::ExitedEarly { process, .. } if process == "kubelet"),
        "{err}"
    );
    assert!(
        err.to_string().contains("no-such-flag"),
        "the kubelet's log tail: {err}"
    );
    let (dirs_after, cgroups_after) = own_runs();
    assert_eq!(
        dirs_after, dirs_before,
        "the failed run's directories must be gone"
    );
    assert!(
        cgroups_after.is_subset(&cgroups_before),
        "the failed run's cgroup must be gone: {cgroups_after:?}"
    );
}

/// Runs the helper below in a child test process; returns its exit status and its trace.
fn run_helper(mode: &str) -> (std::process::ExitStatus, RunTrace) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_a_cluster_run_a_pod_then_end",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KDIAG_TESTENV_HELPER", mode)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("HELPER ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "the helper printed no trace:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status, serde_json::from_str(line).unwrap())
}

#[tokio::test]
async fn a_test_that_panics_leaves_nothing_behind() {
    cluster().await;
    let _serial = SERIAL.lock().await;
    let (status, t) = tokio::task::spawn_blocking(|| run_helper("panic"))
        .await
        .unwrap();
    assert!(!status.success(), "the helper must have failed");
    assert_nothing_left(&t, Duration::from_secs(10));
}

#[tokio::test]
async fn a_killed_test_binary_leaves_containers_that_the_next_start_cleans_up() {
    cluster().await;
    let _serial = SERIAL.lock().await;
    let (status, t) = tokio::task::spawn_blocking(|| run_helper("kill"))
        .await
        .unwrap();
    assert!(!status.success());
    // SIGKILL runs no cleanup: the parent-death signal takes the components, but the shims and
    // containers outlive them by design, and the mounts and the bridge stay.
    std::thread::sleep(Duration::from_secs(1));
    let survivors = leftovers(&t);
    assert!(
        survivors.iter().any(|l| l.contains("containerd-shim")),
        "expected the shim to outlive its killed owner: {survivors:#?}"
    );
    assert!(
        survivors.iter().any(|l| l.starts_with("bridge")),
        "{survivors:#?}"
    );
    // What every start does first.
    let problems = tokio::task::spawn_blocking(cleanup_stale_runs)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_nothing_left(&t, Duration::from_secs(10));
}

/// Not a test: the child process of the two tests above. It starts the shared cluster, runs a
/// pod, prints the run's trace, then ends the way KDIAG_TESTENV_HELPER says.
#[tokio::test]
#[ignore = "helper run by other tests in a child process"]
async fn helper_start_a_cluster_run_a_pod_then_end() {
    let Ok(mode) = std::env::var("KDIAG_TESTENV_HELPER") else {
        return;
    };
    let c = cluster().await;
    run_a_pod(c, "helper").await;
    let t = trace(c).await;
    println!("HELPER {}", serde_json::to_string(&t).unwrap());
    match mode.as_str() {
        "kill" => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        _ => panic!("the helper panics on purpose"),
    }
}
