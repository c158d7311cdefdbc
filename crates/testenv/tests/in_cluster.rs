//! kdiag installed the way users install it, on the real single-node cluster with kube-proxy:
//! its image built as `make image` builds it (hack/build-image.sh) and imported into the
//! node's containerd, then `kubectl apply -k` of config/deploy through the test overlay
//! (crates/testenv/overlay: only what differs on the test node). The controller Deployment and
//! the agent DaemonSet become Ready; then, through those pods only — nothing of kdiag runs in
//! this process or on the host — a seed-style Abnormal on a pod filling its emptyDir gets its
//! root cause, the agent's metrics answer on its pod IP, the default triage, the systemd
//! collector and a probe checker run through the installed pods, probes run on a rollout, on
//! demand and continuously and gate a release (probing.rs), a tenant of one namespace
//! diagnoses its own pod through the installed admission webhook (tenant.rs), rolling restarts of both
//! workloads in the middle of work lose no Abnormal and repeat no recovery (restarts.rs),
//! 2,000 Abnormals pass with both pods under their memory limits, and `kubectl delete -k`
//! removes everything.
//!
//! The README's "On a cluster" steps and docs/install.md are these steps.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kdiag_testenv::install::{self, CONTROLLER_IP, NAMESPACE};
use kdiag_testenv::{Cluster, ClusterOptions, kdiag_image};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};

#[path = "in_cluster/probing.rs"]
mod probing;
#[path = "in_cluster/restarts.rs"]
mod restarts;
#[path = "in_cluster/tenant.rs"]
mod tenant;

const READY_TIMEOUT: Duration = Duration::from_secs(180);
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the namespace's pods, events and logs say, for failure messages.
fn describe(c: &Cluster) -> String {
    let mut s = String::new();
    let mut get = c.kubectl();
    get.args(["get", "pods,ds,deploy", "-n", NAMESPACE, "-o", "wide"]);
    s.push_str(&text(&run(get)));
    let mut desc = c.kubectl();
    desc.args(["describe", "pods", "-n", NAMESPACE]);
    s.push_str(&text(&run(desc)));
    for app in ["kdiag-controller", "kdiag-agent"] {
        let mut logs = c.kubectl();
        logs.args([
            "logs",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/name={app}"),
            "--tail=40",
        ]);
        s.push_str(&format!("--- {app} log:\n{}", text(&run(logs))));
    }
    s.push_str(&format!("--- kubelet:\n{}", c.log_tail("kubelet", 30)));
    s
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, c: &Cluster, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            describe(c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_size(&e.path()),
            Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

fn abnormals(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("diagnosis.netease.com", "v1", "Abnormal");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk))
}

/// One plain HTTP GET.
fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let addr = format!("{ip}:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Containers of the node's containerd (CRI namespace) whose image is kdiag's.
fn kdiag_containers(c: &Cluster, image: &str) -> Vec<String> {
    let mut ctr = c.ctr();
    ctr.args(["containers", "ls"]);
    let out = run(ctr);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.contains(image))
        .map(str::to_owned)
        .collect()
}

/// The peak memory use (cgroup v1 `memory.max_usage_in_bytes`) of a pod's first container.
fn memory_peak(c: &Cluster, pod: &Pod) -> u64 {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s[0].container_id.clone())
        .unwrap_or_default();
    let id = id.trim_start_matches("containerd://");
    let kubepods = Path::new("/sys/fs/cgroup/memory")
        .join(c.cgroup_root().trim_start_matches('/'))
        .join("kubepods");
    for qos in ["", "burstable", "besteffort"] {
        let file = kubepods
            .join(qos)
            .join(format!("pod{uid}"))
            .join(id)
            .join("memory.max_usage_in_bytes");
        if let Ok(v) = std::fs::read_to_string(&file) {
            return v.trim().parse().unwrap_or(0);
        }
    }
    panic!(
        "no memory cgroup for pod {uid} container {id} under {}",
        kubepods.display()
    );
}

// Multi-threaded: the test's own plugin (restarts.rs) answers while kubectl runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdiag_installed_from_its_image_diagnoses_a_filling_emptydir_and_uninstalls_cleanly() {
    let begin = Instant::now();
    // The image builds while the cluster starts.
    let (cluster, image) = tokio::join!(
        Cluster::start_with(ClusterOptions {
            kube_proxy: true,
            ..Default::default()
        }),
        tokio::task::spawn_blocking(kdiag_image)
    );
    let c = cluster.expect("start a cluster with kube-proxy");
    let image = image
        .unwrap()
        .expect("build the kdiag image (hack/build-image.sh)");
    println!(
        "cluster and image ready after {:.1}s: cargo build of kdiag {:.1}s (a no-op when current), image build {}",
        begin.elapsed().as_secs_f64(),
        image.cargo_build.as_secs_f64(),
        image
            .image_build
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "cached".into())
    );

    // Load: what `ctr -n k8s.io images import` does on each node.
    let t = Instant::now();
    c.import_image_archive(&image.archive)
        .expect("import the kdiag image");
    println!("image import {:.1}s", t.elapsed().as_secs_f64());

    // Install, as docs/install.md says: the first apply creates the CRDs and reports the
    // objects of their kinds (kubectl maps every object before applying any); once they are
    // served and the controller (with its admission webhook) is ready, the same command again
    // applies them.
    let t = Instant::now();
    let overlay = install::render_overlay(&c, install::free_port().unwrap()).unwrap();
    let applied = install::apply(&c, &overlay, READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(&c)));
    println!(
        "kubectl apply -k: {applied} run(s), {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Ready, as docs/install.md checks it.
    let t = Instant::now();
    install::wait_ready(&c, READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", describe(&c)));
    println!(
        "controller and agent Ready {:.1}s after the apply",
        t.elapsed().as_secs_f64()
    );
    let client = c.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let agent_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=kdiag-agent"))
        .await
        .unwrap()
        .items
        .remove(0);
    let mut installed_uids = std::collections::BTreeSet::new();
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        installed_uids.extend(p.metadata.uid.clone());
        let image_of = p.spec.as_ref().map(|s| s.containers[0].image.clone());
        assert_eq!(
            image_of.flatten().as_deref(),
            Some(image.name.as_str()),
            "{:?} runs another image",
            p.metadata.name
        );
    }

    // A seed-style Abnormal (pod-collector + pod-disk-usage-diagnoser) on a pod that fills its
    // emptyDir, both from examples/pods/emptydir-filling, as the README shows them.
    let t = Instant::now();
    let example = repo_root().join("examples/pods/emptydir-filling");
    let mut create = c.kubectl();
    create.arg("apply").arg("-f").arg(example.join("pod.yaml"));
    let out = run(create);
    assert!(out.status.success(), "{}", text(&out));
    let default_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let spooled = Instant::now();
    let uid = loop {
        if let Ok(p) = default_pods.get("emptydir-filling").await {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let spool = c
                .pod_dir(&uid)
                .join("volumes/kubernetes.io~empty-dir/spool");
            if dir_size(&spool) > 40 << 20 {
                break uid;
            }
        }
        assert!(
            spooled.elapsed() < DIAGNOSIS_TIMEOUT,
            "the emptydir-filling pod does not hold more than the Abnormal's 32Mi threshold\n{}",
            describe(&c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut create = c.kubectl();
    create
        .arg("create")
        .arg("-f")
        .arg(example.join("abnormal.yaml"));
    let out = run(create);
    assert!(out.status.success(), "{}", text(&out));
    let abnormals = abnormals(client.clone(), "default");
    let waited = Instant::now();
    let a = loop {
        if let Ok(a) = abnormals.get("emptydir-filling").await {
            let phase = a.data["status"]["phase"].as_str().unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                break a;
            }
            assert!(
                waited.elapsed() < DIAGNOSIS_TIMEOUT,
                "the emptydir-filling Abnormal did not end: {}\n{}",
                serde_json::to_string_pretty(&a.data["status"]).unwrap(),
                describe(&c)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let status = &a.data["status"];
    assert_eq!(
        status["phase"],
        "Succeeded",
        "{}",
        serde_json::to_string_pretty(status).unwrap()
    );
    let summary = status["rootCause"]["summary"].as_str().unwrap_or_default();
    println!(
        "root cause {:.1}s after the pod: {summary}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        summary.contains("default/emptydir-filling")
            && summary.contains(&format!("pods/{uid}"))
            && summary.contains("over the threshold of 32.0 MiB"),
        "{}",
        serde_json::to_string_pretty(status).unwrap()
    );

    // The agent's metrics on its pod IP (the node's address: hostNetwork) and port, counting the
    // diagnosis it just ran.
    let agent_ip = agent_pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the agent pod's IP");
    let agent_port = agent_pod.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0]
        .container_port as u16;
    let metrics = http_get(&agent_ip, agent_port, "/metrics")
        .unwrap_or_else(|e| panic!("GET http://{agent_ip}:{agent_port}/metrics: {e}"));
    assert!(
        metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
        "{metrics}"
    );
    let diagnosed = metrics.lines().find(|l| {
        l.starts_with("kdiag_steps_total{")
            && l.contains("pod-disk-usage-diagnoser")
            && l.contains("result=\"Succeeded\"")
    });
    assert!(
        diagnosed.is_some_and(|l| !l.ends_with(" 0")),
        "no pod-disk-usage-diagnoser step in the agent's metrics at {agent_ip}:{agent_port}:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("kdiag_steps_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "agent metrics at http://{agent_ip}:{agent_port}/metrics: {}",
        diagnosed.unwrap()
    );

    // `kubectl diag` (the same kdiag binary, as `make plugin` links it) diagnoses a crash-looping
    // pod with the default triage: the pod-detail, container (CRI socket), process (hostPID) and
    // kernel-log collectors run in the agent's container with the shipped privileges.
    let t = Instant::now();
    let crash = repo_root().join("examples/pods/crash-loop/pod.yaml");
    let mut create = c.kubectl();
    create.arg("apply").arg("-f").arg(&crash);
    let out = run(create);
    assert!(out.status.success(), "{}", text(&out));
    let restarted = Instant::now();
    loop {
        let restarted_once = default_pods.get("crash-loop").await.is_ok_and(|p| {
            p.status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .iter()
                .any(|s| s.restart_count >= 1)
        });
        if restarted_once {
            break;
        }
        assert!(
            restarted.elapsed() < DIAGNOSIS_TIMEOUT,
            "crash-loop never restarted\n{}",
            describe(&c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let plugin_dir = c.run_dir().join("plugin");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(&image.binary, plugin_dir.join("kubectl-diag")).unwrap();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut diag = Command::new("kubectl");
    diag.env("PATH", &path)
        .env("KUBECONFIG", c.kubeconfig_path())
        .args([
            "diag",
            "run",
            "--pod",
            "crash-loop",
            "--wait",
            "--color=never",
        ]);
    let out = tokio::task::spawn_blocking(move || run(diag))
        .await
        .unwrap();
    let report = text(&out);
    println!(
        "kubectl diag run --pod crash-loop --wait: exit {:?} after {:.1}s",
        out.status.code(),
        t.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "kubectl diag run failed:\n{report}\n{}",
        describe(&c)
    );
    for collector in [
        "pod-detail-collector",
        "container-collector",
        "process-collector",
        "kernel-log-collector",
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(&format!("kube-diagnoser/{collector}  ")))
            .unwrap_or_else(|| panic!("no {collector} step in:\n{report}"));
        println!("  {}", line.trim());
        assert!(line.contains("Succeeded"), "{line}\n{report}");
    }
    let root_cause = report
        .lines()
        .find(|l| l.contains("root cause"))
        .unwrap_or_else(|| panic!("no root cause in:\n{report}"));
    println!("  {}", root_cause.trim());
    assert!(
        root_cause.contains("crash-loop") && root_cause.contains("exit code 3"),
        "{report}"
    );

    // The same pod, diagnosed by a tenant of its namespace through the installed webhook.
    tenant::a_tenant_diagnoses_its_own_pod_with_the_processors_it_may_use(&c, &client, &path).await;

    // systemd-collector inside the shipped agent: it cannot run there (a host without systemd,
    // or no nsenter and CAP_SYS_ADMIN in the container), and its failed step must say which.
    let systemd = serde_json::json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "systemd-units", "namespace": "default"},
        "spec": {
            "nodeName": c.node_name(),
            "source": "Custom",
            "assignedInformationCollectors": [
                {"namespace": NAMESPACE, "name": "systemd-collector"}
            ],
            "context": {"systemdUnitNameInformationContextKey": ["kubelet.service"]},
        },
    });
    let systemd_file = c.run_dir().join("systemd-units.yaml");
    std::fs::write(&systemd_file, serde_json::to_vec(&systemd).unwrap()).unwrap();
    let mut create = c.kubectl();
    create.arg("create").arg("-f").arg(&systemd_file);
    let out = run(create);
    assert!(out.status.success(), "{}", text(&out));
    let waited = Instant::now();
    let step = loop {
        let a = abnormals.get("systemd-units").await.ok();
        let step = a.as_ref().and_then(|a| {
            a.data["status"]["processors"]
                .as_array()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p["processor"] == format!("{NAMESPACE}/systemd-collector"))
                })
                .cloned()
        });
        if let Some(step) = step {
            break step;
        }
        assert!(
            waited.elapsed() < DIAGNOSIS_TIMEOUT,
            "no systemd-collector step: {:?}\n{}",
            a.map(|a| a.data["status"].clone()),
            describe(&c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let message = step["message"].as_str().unwrap_or_default();
    println!("systemd-collector in the agent's container: {step}");
    assert_eq!(step["result"], "Failed", "{step}");
    assert!(
        message.contains("does not run systemd")
            || message.contains("nsenter")
            || message.contains("CAP_SYS_ADMIN"),
        "the failed step does not say what it lacks: {step}"
    );

    // A Probe's checker Job (run by the controller) reports through the controller's Service,
    // by ClusterIP; its ERROR opens an episode whose Abnormal the agent finishes, and the
    // controller writes the diagnosis next to the checker.
    let t = Instant::now();
    // It sends the projected token the runner mounts for it: the shipped controller takes no
    // report without one.
    let report = r#"i=0; until wget -q -O- --header 'Content-Type: application/json' --header "Authorization: Bearer $(cat $KDIAG_PROBE_STATUS_TOKEN_FILE)" --post-data "{\"probeName\":\"$KUBEPROBER_PROBE_NAME\",\"probeNamespace\":\"$KUBEPROBER_PROBE_NAMESPACE\",\"name\":\"\",\"checkers\":[{\"name\":\"disk-check\",\"status\":\"error\",\"message\":\"/data is 97% full\"}]}" "$KUBEPROBER_STATUS_REPORT_URL"; do i=$((i+1)); [ $i -lt 60 ] || exit 1; sleep 1; done"#;
    let probe = serde_json::json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": "node-disk", "namespace": "default"},
        "spec": {"template": {
            "containers": [{"name": "checker", "image": kdiag_testenv::BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", report]}],
            "terminationGracePeriodSeconds": 1,
        }},
    });
    let probe_file = c.run_dir().join("probe.yaml");
    std::fs::write(&probe_file, serde_json::to_vec(&probe).unwrap()).unwrap();
    let mut create = c.kubectl();
    create.arg("create").arg("-f").arg(&probe_file);
    let out = run(create);
    assert!(out.status.success(), "{}", text(&out));
    let probe_statuses: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "kubeprober.erda.cloud",
            "v1",
            "ProbeStatus",
        )),
    );
    let waited = Instant::now();
    let checker = loop {
        let checker = probe_statuses
            .get_opt("node-disk")
            .await
            .ok()
            .flatten()
            .and_then(|ps| {
                ps.data["spec"]["checkers"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == "disk-check").cloned())
            });
        if let Some(checker) = &checker
            && checker["diagnosis"]["phase"]
                .as_str()
                .is_some_and(|p| p == "Succeeded" || p == "Failed")
        {
            break checker.clone();
        }
        assert!(
            waited.elapsed() < DIAGNOSIS_TIMEOUT,
            "the checker's report and its diagnosis did not arrive: {checker:?}\n{}",
            describe(&c)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "probe checker reported through {CONTROLLER_IP} and diagnosed in {:.1}s: {}",
        t.elapsed().as_secs_f64(),
        checker
    );
    assert_eq!(checker["status"], "ERROR", "{checker}");
    assert_eq!(checker["message"], "/data is 97% full", "{checker}");
    // The source names no diagnoser and the collectors name no cause: that is said, not shown
    // as success (issue 18).
    assert_eq!(checker["diagnosis"]["phase"], "Failed", "{checker}");
    assert_eq!(checker["diagnosis"]["reason"], "NoCauseFound", "{checker}");
    assert!(
        checker["diagnosis"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no cause found: on node ")),
        "{checker}"
    );

    // Probing (issue 19): a rollout triggers one run, a manual run lands in the history, a
    // continuous probe rides out a flapping path and diagnoses its real break, the release gate
    // follows it, and an image-based continuous probe's resident pod reports.
    probing::probes_run_on_change_on_demand_continuously_and_gate_a_release(&c, &client, &path)
        .await;

    // Work in flight across rolling restarts of both workloads, then 2,000 Abnormals through
    // the pods the restarts made.
    let node = agent_pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("the agent pod's node");
    restarts::rolling_restarts_lose_no_abnormal_and_repeat_no_recovery(&c, &client, &node).await;
    restarts::two_thousand_abnormals_pass_through(&c, &client, &node).await;

    // Memory of the running pods, against their limits (docs/install.md, sizing): their peak
    // covers the 2,000 Abnormals.
    for (app, limit) in [
        ("kdiag-controller", 256u64 << 20),
        ("kdiag-agent", 128 << 20),
    ] {
        // Every replica: the controller's leader holds the Abnormals, its standby little.
        let running: Vec<Pod> = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={app}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        assert!(
            !running.is_empty(),
            "no running {app} pod\n{}",
            describe(&c)
        );
        for p in running {
            installed_uids.extend(p.metadata.uid.clone());
            let peak = memory_peak(&c, &p);
            println!(
                "{app} {}: peak memory {:.1} MiB of its {} MiB limit",
                p.metadata.name.as_deref().unwrap_or_default(),
                peak as f64 / (1 << 20) as f64,
                limit >> 20
            );
            assert!(peak < limit, "{app} used {peak} bytes");
        }
    }

    // Uninstall, as docs/install.md says; the example pod goes first.
    let t = Instant::now();
    let mut delete = c.kubectl();
    delete
        .args(["delete", "--wait=true", "-f"])
        .arg(example.join("pod.yaml"))
        .arg("-f")
        .arg(&crash);
    let out = run(delete);
    assert!(out.status.success(), "{}", text(&out));
    install::uninstall(&c, &overlay).unwrap_or_else(|e| panic!("{e}"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_until(
        "the namespace, the CRDs and every kdiag container are gone",
        READY_TIMEOUT,
        &c,
        || {
            let (namespaces, crds) = (namespaces.clone(), crds.clone());
            let c = &c;
            let name = image.name.clone();
            async move {
                let ns_gone = namespaces
                    .get_opt(NAMESPACE)
                    .await
                    .is_ok_and(|n| n.is_none());
                let crds_left = crds
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter_map(|c| c.metadata.name.clone())
                            .filter(|n| {
                                n.ends_with("diagnosis.netease.com")
                                    || n.ends_with("kubeprober.erda.cloud")
                            })
                            .count()
                    })
                    .unwrap_or(1);
                ns_gone && crds_left == 0 && kdiag_containers(c, &name).is_empty()
            }
        },
    )
    .await;
    println!(
        "kubectl delete -k: gone in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // On the node: no process of the image, no mount of its pods; what the hostPaths made
    // (the data directory, which docs/install.md says stays) is in the run directory.
    for pid in std::fs::read_dir("/proc").unwrap().flatten() {
        let exe = std::fs::read_link(pid.path().join("exe")).unwrap_or_default();
        let cmdline = std::fs::read(pid.path().join("cmdline")).unwrap_or_default();
        assert!(
            !(exe.ends_with("kdiag") && cmdline.starts_with(b"/kdiag")),
            "a kdiag process is left: pid {:?}",
            pid.file_name()
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let uids: Vec<String> = agent_pod.metadata.uid.iter().cloned().collect();
    let pods_seen = &installed_uids;
    for line in mounts.lines() {
        assert!(
            !uids.iter().any(|u| line.contains(u.as_str())),
            "a mount of the agent pod is left: {line}"
        );
    }
    let installed_pods: Vec<String> = pods_seen.iter().cloned().collect();
    c.stop().expect("a clean stop");
    // The kubelet's pod logs outside the run directory go with the run too.
    for e in std::fs::read_dir("/var/log/pods")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !installed_pods
                .iter()
                .any(|uid| name.ends_with(uid.as_str())),
            "pod logs left: {}",
            e.path().display()
        );
    }
    println!("total {:.1}s", begin.elapsed().as_secs_f64());
}
