//! The collectors against a real single-node cluster: real pods, containerd's CRI socket, the
//! kubelet's pod directories, the kernel's OOM reports, and this machine's /proc.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::plugin::{NodeEnvironment, Processor, ProcessorContext, ProcessorError};
use kdiag_api::{Abnormal, AbnormalSpec, context_keys};
use kdiag_collectors::{
    ContainerCollector, FileStatusCollector, KernelLogCollector, NodeCollector, PodCollector,
    ProcessCollector, SystemdCollector,
};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, cluster};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const POD_TIMEOUT: Duration = Duration::from_secs(120);

async fn context(c: &Cluster) -> ProcessorContext {
    ProcessorContext {
        node_name: c.node_name().to_owned(),
        client: c.client().await,
        timeout: Duration::from_secs(30),
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

fn abnormal(context: Value) -> Abnormal {
    let mut a = Abnormal::new(
        "test",
        AbnormalSpec {
            context: serde_json::from_value(context).ok(),
            ..Default::default()
        },
    );
    a.metadata.namespace = Some("default".into());
    a
}

async fn run(
    p: &dyn Processor,
    ctx: &ProcessorContext,
    a: &Abnormal,
) -> kdiag_api::plugin::ProcessorOutput {
    p.process(ctx, a)
        .await
        .unwrap_or_else(|e| panic!("{} failed: {e}", p.name()))
}

fn pod(name: &str, script: &str, extra: Value) -> Pod {
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
            }]
        }
    });
    if let (Some(c), Value::Object(extra)) = (v.pointer_mut("/spec/containers/0"), extra) {
        for (k, val) in extra {
            c[k] = val;
        }
    }
    serde_json::from_value(v).expect("a valid pod")
}

/// Creates the pod and waits until `done` holds; fails with its status and the kubelet's log.
async fn start(c: &Cluster, ns: &str, pod: Pod, what: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    let pods: Api<Pod> = Api::namespaced(c.client().await, ns);
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let begin = Instant::now();
    let mut last = None;
    while begin.elapsed() < POD_TIMEOUT {
        if let Ok(p) = pods.get(&name).await {
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

fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().expect("uid")
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

fn list<'a>(out: &'a kdiag_api::plugin::ProcessorOutput, key: &str) -> &'a Vec<Value> {
    out.context
        .get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no list under {key}: {:?}", out.context.keys()))
}

#[tokio::test]
async fn container_collector_lists_a_running_pods_container_with_its_pid_and_process_collector_maps_that_pid_to_the_pod_and_back()
 {
    let c = cluster().await;
    let ns = c.create_namespace("containers").await;
    let p = start(
        c,
        &ns,
        pod("sleeper", "exec sleep 3600", json!({})),
        "Running",
        running,
    )
    .await;
    let ctx = context(c).await;

    let out = run(&ContainerCollector, &ctx, &abnormal(json!({}))).await;
    assert!(out.message.contains("containerd"), "{}", out.message);
    let containers = list(&out, context_keys::CRI_CONTAINER_INFORMATION);
    let entry = containers
        .iter()
        .find(|e| e["podNamespace"] == ns.as_str() && e["podName"] == "sleeper")
        .unwrap_or_else(|| panic!("sleeper not in {containers:#?}"));
    assert_eq!(entry["containerName"], "main");
    assert_eq!(entry["state"], "Running");
    assert_eq!(entry["podUID"], uid(&p).as_str());
    assert_eq!(entry["id"], container_id(&p).as_str());
    assert!(
        entry["image"].as_str().unwrap().contains("busybox"),
        "{entry}"
    );
    assert!(
        entry["createdAt"].as_str().unwrap().ends_with('Z'),
        "{entry}"
    );
    let pid = entry["pid"]
        .as_i64()
        .expect("containerd gives the pid of a running container");
    // The same container in Docker's shape, under Kube Diagnoser's key.
    let docker = list(&out, context_keys::CONTAINER_INFORMATION);
    let listed = docker
        .iter()
        .find(|e| e["Id"] == container_id(&p).as_str())
        .unwrap_or_else(|| panic!("sleeper not in {docker:#?}"));
    assert_eq!(listed["State"], "running");
    assert!(
        listed["Status"].as_str().unwrap().starts_with("Up "),
        "{listed}"
    );
    assert_eq!(
        listed["Names"][0],
        format!("/k8s_main_sleeper_{ns}_{}_0", uid(&p))
    );
    assert_eq!(listed["Labels"]["io.kubernetes.pod.name"], "sleeper");
    assert!(listed["Created"].as_i64().unwrap() > 0, "{listed}");

    // The kernel agrees: that pid is `sleep 3600`.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).starts_with("sleep\u{0}3600"));

    // process-collector maps the pid to the pod and the container...
    let out = run(&ProcessCollector, &ctx, &abnormal(json!({}))).await;
    let processes = list(&out, context_keys::PROCESS_INFORMATION);
    assert!(processes.len() > 10, "{}", out.message);
    let proc_entry = processes
        .iter()
        .find(|e| e["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not collected"));
    assert_eq!(proc_entry["podUID"], uid(&p).as_str());
    assert_eq!(proc_entry["containerID"], container_id(&p).as_str());
    assert_eq!(proc_entry["command"], json!(["sleep", "3600"]));
    for field in [
        "ppid",
        "tgid",
        "status",
        "createTime",
        "cpuPercent",
        "nice",
        "startTime",
    ] {
        assert!(
            proc_entry.get(field).is_some(),
            "{field} missing: {proc_entry}"
        );
    }
    assert!(proc_entry["memoryInfo"]["rss"].as_u64().unwrap() > 0);
    // ... and back: the pod's processes include it (and the sandbox's pause, in its own
    // container of the same pod).
    let of_pod: Vec<&Value> = processes
        .iter()
        .filter(|e| e["podUID"] == uid(&p).as_str())
        .collect();
    assert!(of_pod.iter().any(|e| e["pid"] == pid));
    assert!(of_pod.len() >= 2, "{of_pod:#?}");
    // The shim serving the pod's sandbox names it.
    assert!(
        processes.iter().any(|e| e["shimFor"].is_string()
            && e["command"][0]
                .as_str()
                .unwrap_or("")
                .contains("containerd-shim")),
        "no containerd shim found"
    );

    // pod-collector lists it among the node's pods.
    let out = run(&PodCollector, &ctx, &abnormal(json!({}))).await;
    let pods = list(&out, context_keys::POD_INFORMATION);
    assert!(
        pods.iter()
            .any(|e| e["metadata"]["uid"] == uid(&p).as_str())
    );

    // file-status-collector measures the pod's directory.
    let dir = c.pod_dir(&uid(&p));
    let out = run(
        &FileStatusCollector,
        &ctx,
        &abnormal(json!({ "filePathInformation": [dir, "/nonexistent/kdiag"] })),
    )
    .await;
    let files = list(&out, context_keys::FILE_STATUS_INFORMATION);
    assert_eq!(files[0]["exists"], true);
    assert_eq!(files[0]["isDir"], true);
    assert!(
        files[0]["tree"]["files"].as_u64().unwrap() >= 1,
        "{}",
        files[0]
    );
    assert_eq!(files[1]["exists"], false);
}

#[tokio::test]
async fn kernel_log_collector_finds_the_oom_kill_of_a_real_oom_pod() {
    let c = cluster().await;
    let ns = c.create_namespace("oom").await;
    let oom_killed = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|s| {
                [s.state.as_ref(), s.last_state.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|st| st.terminated.as_ref())
                    .find(|t| t.reason.as_deref() == Some("OOMKilled"))
                    .and_then(|t| t.container_id.clone())
            })
    };
    let spec = pod(
        "hog",
        "head -c 268435456 /dev/zero | tail > /dev/null",
        json!({"resources": {"requests": {"memory": "16Mi"}, "limits": {"memory": "32Mi"}}}),
    );
    let p = start(c, &ns, spec, "OOMKilled", |p| oom_killed(p).is_some()).await;
    let killed = oom_killed(&p)
        .unwrap()
        .trim_start_matches("containerd://")
        .to_owned();
    let ctx = context(c).await;

    let out = run(
        &KernelLogCollector,
        &ctx,
        &abnormal(json!({"kernelLogSinceSeconds": 600})),
    )
    .await;
    let info = &out.context[context_keys::KERNEL_LOG_INFORMATION];
    assert_eq!(info["source"], "/dev/kmsg", "{}", out.message);
    let kills = info["oomKills"].as_array().unwrap();
    let kill = kills
        .iter()
        .find(|k| k["podUID"] == uid(&p).as_str() && k["containerID"] == killed.as_str())
        .unwrap_or_else(|| {
            panic!(
                "no OOM kill of pod {} container {killed} in {kills:#?}",
                uid(&p)
            )
        });
    assert_eq!(kill["kind"], "memcg");
    assert!(kill["pid"].as_i64().unwrap() > 0);
    assert!(
        ["tail", "head", "sh"].contains(&kill["task"].as_str().unwrap()),
        "{kill}"
    );
    assert!(
        kill["taskMemcg"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/kubepods/", c.cgroup_root()))
    );
    // The wall-clock time is within the last ten minutes.
    let at: jiff::Timestamp = kill["timestamp"].as_str().unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(at).as_secs();
    assert!((-5..600).contains(&age), "OOM kill at {at}, {age} s ago");
    assert!(out.message.contains("OOM kills"), "{}", out.message);
}

#[tokio::test]
async fn node_collector_reports_load_memory_pressure_filesystems_pids_clock_and_kubelet_certificates()
 {
    let c = cluster().await;
    let ctx = context(c).await;
    let out = run(&NodeCollector, &ctx, &abnormal(json!({}))).await;
    let n = &out.context[context_keys::NODE_INFORMATION];
    assert!(n["memory"]["totalBytes"].as_u64().unwrap() > 0);
    assert!(n["load"]["load1"].is_number());
    assert!(n["pids"]["pidMax"].as_u64().unwrap() >= n["pids"]["threads"].as_u64().unwrap());
    let fs = n["filesystems"].as_array().unwrap();
    assert!(
        fs.iter()
            .all(|f| f["inodes"].is_number() && f["usedPercent"].is_number())
    );
    // PSI is present on this kernel.
    if std::path::Path::new("/proc/pressure/memory").exists() {
        assert!(
            n["pressure"]["memory"]["some"]["avg10"].is_number(),
            "{}",
            n["pressure"]
        );
    }
    assert!(
        ["synchronized", "NOT synchronized", "sync state unknown"]
            .iter()
            .any(|s| out.message.contains(s)),
        "{}",
        out.message
    );
    // The apiserver runs on this machine: the clocks agree within the measurement's error.
    let skew = &n["clock"]["apiserver"];
    let (offset, uncertainty) = (
        skew["skewSeconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("{skew}")),
        skew["uncertaintySeconds"].as_f64().unwrap(),
    );
    assert!(offset.abs() <= uncertainty + 0.1, "{skew}");
    // The kubelet made its self-signed serving certificate in its cert dir (<root>/pki).
    let certs = n["certificates"]["certificates"].as_array().unwrap();
    let serving = certs
        .iter()
        .find(|c| c["path"].as_str().unwrap().ends_with("/pki/kubelet.crt"))
        .unwrap_or_else(|| panic!("{}", n["certificates"]));
    assert!(
        serving["expiresInSeconds"].as_i64().unwrap() > 300 * 86400,
        "{serving}"
    );
}

#[tokio::test]
async fn systemd_collector_says_plainly_that_this_node_does_not_run_systemd() {
    let c = cluster().await;
    let ctx = context(c).await;
    let a = abnormal(json!({"systemdUnitNameInformationContextKey": ["kubelet.service"]}));
    let runs_systemd = std::fs::read_to_string("/proc/1/comm")
        .map(|s| s.trim() == "systemd")
        .unwrap_or(false);
    let result = SystemdCollector.process(&ctx, &a).await;
    if runs_systemd {
        let out = result.expect("systemctl show on a systemd host");
        assert!(
            list(&out, context_keys::SYSTEMD_UNIT_PROPERTY_INFORMATION)[0]["properties"].is_array()
        );
    } else {
        match result {
            Err(ProcessorError::Failed(m)) => assert!(m.contains("does not run systemd"), "{m}"),
            other => panic!("expected a clear failure without systemd, got {other:?}"),
        }
    }
    // Missing input is the Abnormal's fault, and the message says what to set.
    match SystemdCollector.process(&ctx, &abnormal(json!({}))).await {
        Err(ProcessorError::InvalidInput(m)) => {
            assert!(m.contains("systemdUnitNameInformationContextKey"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn container_collector_without_a_runtime_names_the_sockets_it_tried() {
    let c = cluster().await;
    let mut ctx = context(c).await;
    let missing = PathBuf::from("/nonexistent/kdiag/containerd.sock");
    ctx.node = Arc::new(NodeEnvironment {
        cri_sockets: vec![missing],
        ..(*ctx.node).clone()
    });
    match ContainerCollector.process(&ctx, &abnormal(json!({}))).await {
        Err(ProcessorError::Failed(m)) => {
            assert!(m.contains("/nonexistent/kdiag/containerd.sock"), "{m}");
            assert!(m.contains("--cri-socket"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}
