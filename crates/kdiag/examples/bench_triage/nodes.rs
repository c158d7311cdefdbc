//! The node faults of the benchmark, made to happen one at a time on the bench's own cluster,
//! as `crates/diagnosers/tests/node_triage.rs` makes them: inject, wait until the cluster shows
//! it (a node condition, an event, the processes in /proc), time the classes it makes, restore,
//! wait until the node is Ready and untainted again. The answers come through the running
//! controller and agent (`kubectl diag run --node` / `--pod … --wait`), not by calling the
//! diagnosers directly.
//!
//! The agent here is a thread of the bench process on the node (the machine), not a pod: it
//! keeps answering while the kubelet or containerd is stopped. Shipped as a DaemonSet its
//! process is a container's, which a stopped kubelet or containerd does not stop either (the
//! shim keeps it), so this is the same situation.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::triage_support::Stack;
use crate::{Ask, Class, Via, time_class};

/// How long a fault may take to show, or the node to recover.
const FAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The cluster options the node faults need (as node_triage.rs's second test): the node
/// lifecycle controller calls a silent node NotReady after 20 s; pods may hold 24 pids; the
/// kubelet's root is a 128 MiB tmpfs under soft disk pressure below half free (with a grace
/// period longer than the bench, so nothing is evicted for it) and below half its inodes free
/// (it has [`INODES`]), and the pressure condition clears 5 s after the pressure does instead
/// of 5 min.
pub fn cluster_options() -> kdiag_testenv::ClusterOptions {
    kdiag_testenv::ClusterOptions {
        controller_manager_args: vec![
            "--node-monitor-grace-period=20s".into(),
            "--node-monitor-period=1s".into(),
        ],
        kubelet_args: vec![
            "--pod-max-pids=24".into(),
            "--eviction-soft=nodefs.available<50%,nodefs.inodesFree<50%".into(),
            "--eviction-soft-grace-period=nodefs.available=30m,nodefs.inodesFree=30m".into(),
            "--eviction-pressure-transition-period=5s".into(),
        ],
        kubelet_root_mib: Some(128),
        kubelet_root_inodes: Some(INODES),
        // The certificates class, in place from the start: the kubelet serves a certificate
        // that expired, the apiserver one with three days left.
        kubelet_serving_certificate: Some(expired_kubelet_certificate()),
        apiserver_certificate_lifetime: Some(Duration::from_secs(3 * 86400)),
        ..Default::default()
    }
}

/// A self-signed serving certificate for the kubelet that expired on 2025-01-01.
fn expired_kubelet_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("valid names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubelet-expired");
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let cert = params.self_signed(&key).expect("a certificate");
    (cert.pem(), key.serialize_pem())
}

/// The inodes of the kubelet's filesystem: the bench's pods and their directories take a few
/// hundred, the inode fault most of the rest.
const INODES: u64 = 4096;

struct Faults<'a> {
    st: &'a Stack,
    c: &'a Cluster,
    node: String,
    nodes: Api<Node>,
    pods: Api<Pod>,
    events: Api<Event>,
    runs: usize,
}

/// Runs every node fault in turn and returns its classes, timed. The runtime killed, then the
/// kubelet killed, come last: the test cluster cannot restart either, so they stay dead until
/// the cluster stops. In that order because a dead kubelet reports nothing (so the runtime's
/// death must be seen first), while the triage ranks a dead kubelet above a dead runtime.
pub async fn run(
    st: &Stack,
    runs: usize,
    kill_runtime: bool,
    kill_kubelet: bool,
    out: &mut Vec<Class>,
) -> Result<(), String> {
    let client = st.client().await;
    let f = Faults {
        st,
        c: st.cluster,
        node: st.cluster.node_name().to_owned(),
        nodes: Api::all(client.clone()),
        pods: Api::namespaced(client.clone(), &st.namespace),
        events: Api::namespaced(client, &st.namespace),
        runs,
    };
    out.push(f.certificates().await?);
    out.push(f.zombies().await?);
    out.push(f.pids_limit().await?);
    out.push(f.drain_blocked().await?);
    out.push(f.kubelet_stopped().await?);
    out.extend(f.runtime_hung().await?);
    out.push(f.cni_broken().await?);
    out.push(f.inode_pressure().await?);
    out.push(f.disk_pressure().await?);
    if kill_runtime {
        out.push(f.runtime_killed().await?);
    }
    if kill_kubelet {
        out.push(f.kubelet_killed().await?);
    }
    Ok(())
}

fn busybox(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script]}]}
    }))
    .expect("a valid pod")
}

/// Polls `check` every 300 ms until it gives a value, for at most `timeout`.
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T, String> {
    let begin = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if begin.elapsed() > timeout {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The processes whose cgroups are the pod's (its containers and its sandbox), with their
/// state letter from /proc/PID/stat.
fn pod_processes(uid: &str) -> Vec<char> {
    let marker = format!("pod{uid}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let p = e.path();
            let cgroup = std::fs::read_to_string(p.join("cgroup")).ok()?;
            if !cgroup.contains(&marker) {
                return None;
            }
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            // The state follows the command's closing parenthesis.
            stat.rsplit_once(") ")?.1.chars().next()
        })
        .collect()
}

impl Faults<'_> {
    fn class(&self, name: &str, ask: Ask, reasons: &[&'static str]) -> Class {
        let via = match ask {
            Ask::Node => Via::CliNode,
            _ => Via::CliPod,
        };
        Class::new(name, via, ask, reasons.to_vec())
    }

    async fn time(&self, class: &mut Class) -> Result<(), String> {
        time_class(self.st, class, self.runs).await
    }

    async fn create(&self, pod: &Pod) -> Result<String, String> {
        let created = self
            .pods
            .create(&PostParams::default(), pod)
            .await
            .map_err(|e| format!("create pod: {e}"))?;
        Ok(created.metadata.uid.unwrap_or_default())
    }

    /// Deletes the pod and waits until it is gone.
    async fn delete(&self, name: &str) -> Result<(), String> {
        let _ = self.pods.delete(name, &DeleteParams::default()).await;
        wait_for(&format!("pod {name} gone"), FAULT_TIMEOUT, async || {
            self.pods.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await
    }

    async fn condition(&self, type_: &str) -> Option<String> {
        let n = self.nodes.get(&self.node).await.ok()?;
        n.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status)
    }

    async fn healthy(&self) -> Result<(), String> {
        wait_for(
            "the node Ready, without pressure and untainted",
            FAULT_TIMEOUT,
            async || {
                let n = self.nodes.get(&self.node).await.ok()?;
                let tainted = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| !t.is_empty());
                let conditions = n.status?.conditions?;
                let fine = conditions.iter().all(|c| {
                    (c.type_ == "Ready") == (c.status == "True") || c.type_ == "NetworkUnavailable"
                });
                (fine && !tainted).then_some(())
            },
        )
        .await
    }

    /// Sends `signal` to the one process of the cluster named `component` (not its group).
    fn signal(&self, component: &str, signal: &str) -> Result<i32, String> {
        let pid = self
            .c
            .pids()
            .into_iter()
            .find(|(name, _)| name == component)
            .map(|(_, pid)| pid)
            .ok_or_else(|| format!("no {component} process in the cluster"))?;
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -{signal} {pid} failed"));
        }
        Ok(pid)
    }

    /// Nothing to inject: the kubelet's expired certificate and the apiserver's with three days
    /// left are there from the start (cluster_options); the node is otherwise healthy, so they are
    /// the answer.
    async fn certificates(&self) -> Result<Class, String> {
        eprintln!("node fault: certificates (in place since the cluster started)");
        let mut class = self.class(
            "certificates",
            Ask::Node,
            &["NodeCertificateExpired", "ApiserverCertificateExpiring"],
        );
        self.time(&mut class).await?;
        Ok(class)
    }

    /// A pod whose pid 1 (an exec'd sleep) never reaps six children that exited at once.
    async fn zombies(&self) -> Result<Class, String> {
        eprintln!("node fault: zombies");
        let uid = self
            .create(&busybox(
                "reaper",
                "for i in 1 2 3 4 5 6; do sleep 0 & done; exec sleep 3600",
            ))
            .await?;
        wait_for("6 zombies in pod reaper", FAULT_TIMEOUT, async || {
            (pod_processes(&uid).iter().filter(|s| **s == 'Z').count() >= 6).then_some(())
        })
        .await?;
        let mut class = self.class("zombies", Ask::Node, &["ZombieProcesses"]);
        self.time(&mut class).await?;
        self.delete("reaper").await?;
        Ok(class)
    }

    /// A pod whose shell starts sleeps until it holds its 24 pids.
    async fn pids_limit(&self) -> Result<Class, String> {
        eprintln!("node fault: a pod at its pids limit");
        let uid = self
            .create(&busybox(
                "forker",
                "for i in $(seq 21); do sleep 3600 & done; wait",
            ))
            .await?;
        // 90 % of 24 is the rule's threshold.
        wait_for("pod forker holding 22 pids", FAULT_TIMEOUT, async || {
            (pod_processes(&uid).len() >= 22).then_some(())
        })
        .await?;
        let mut class = self.class("pids-limit", Ask::Node, &["PodPidsLimitReached"]);
        self.time(&mut class).await?;
        self.delete("forker").await?;
        Ok(class)
    }

    /// The kubelet stopped with SIGSTOP until the node lifecycle controller calls it NotReady.
    async fn kubelet_stopped(&self) -> Result<Class, String> {
        eprintln!("node fault: the kubelet stopped (about 25 s until NotReady)");
        self.signal("kubelet", "STOP")?;
        let shown = wait_for("Ready not True", FAULT_TIMEOUT, async || {
            self.condition("Ready").await.filter(|s| s != "True")
        })
        .await;
        let mut class = self.class("kubelet-stopped", Ask::Node, &["KubeletStopped"]);
        let timed = match shown {
            Ok(_) => self.time(&mut class).await,
            Err(e) => Err(e),
        };
        self.signal("kubelet", "CONT")?;
        timed?;
        self.healthy().await?;
        Ok(class)
    }

    /// containerd stopped with SIGSTOP, and a pod created meanwhile that waits for it: the node
    /// triage and the pod's triage.
    async fn runtime_hung(&self) -> Result<Vec<Class>, String> {
        eprintln!("node fault: containerd stopped");
        self.signal("containerd", "STOP")?;
        let timed = async {
            self.create(&busybox("waits", "sleep 3600")).await?;
            wait_for("pod waits scheduled", FAULT_TIMEOUT, async || {
                self.pods
                    .get("waits")
                    .await
                    .ok()?
                    .spec?
                    .node_name
                    .filter(|n| !n.is_empty())
            })
            .await?;
            let mut node = self.class("runtime-hung", Ask::Node, &["ContainerRuntimeHung"]);
            let mut pod = self.class(
                "runtime-hung-pod",
                Ask::Pod {
                    pod: "waits".into(),
                    via_cli: true,
                },
                &["ContainerRuntimeHung"],
            );
            self.time(&mut node).await?;
            self.time(&mut pod).await?;
            Ok::<_, String>(vec![node, pod])
        }
        .await;
        self.signal("containerd", "CONT")?;
        let classes = timed?;
        self.running("waits").await?;
        self.delete("waits").await?;
        self.healthy().await?;
        Ok(classes)
    }

    async fn running(&self, name: &str) -> Result<(), String> {
        wait_for(&format!("pod {name} Running"), FAULT_TIMEOUT, async || {
            let p = self.pods.get(name).await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await
    }

    /// The pod network's configuration names a plugin that does not exist: a pod created
    /// meanwhile cannot get its sandbox.
    async fn cni_broken(&self) -> Result<Class, String> {
        eprintln!("node fault: the CNI configuration names a missing plugin");
        let conflist = self.c.cni_conf_dir().join("10-kdiag.conflist");
        let staged = self.c.cni_conf_dir().join(".bench.tmp");
        let original = std::fs::read_to_string(&conflist).map_err(|e| e.to_string())?;
        let mut broken: serde_json::Value =
            serde_json::from_str(&original).map_err(|e| e.to_string())?;
        broken["plugins"][0]["type"] = json!("kdiag-missing");
        replace(&staged, &conflist, &broken.to_string())?;
        let timed = async {
            self.create(&busybox("no-network", "sleep 3600")).await?;
            wait_for("FailedCreatePodSandBox", FAULT_TIMEOUT, async || {
                let lp = ListParams::default().fields("involvedObject.name=no-network");
                self.events
                    .list(&lp)
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .find(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
            })
            .await?;
            let mut class = self.class(
                "cni-broken",
                Ask::Pod {
                    pod: "no-network".into(),
                    via_cli: true,
                },
                &["CNISetupFailed"],
            );
            self.time(&mut class).await?;
            Ok::<_, String>(class)
        }
        .await;
        replace(&staged, &conflist, &original)?;
        let class = timed?;
        self.running("no-network").await?;
        self.delete("no-network").await?;
        Ok(class)
    }

    /// A pod writes 80 MiB into an emptyDir on the kubelet's 128 MiB filesystem.
    async fn disk_pressure(&self) -> Result<Class, String> {
        eprintln!("node fault: disk pressure on the kubelet's filesystem");
        let filler: Pod = serde_json::from_value(json!({
            "metadata": {"name": "filler"},
            "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/fill bs=1M count=80; exec sleep 3600"]}]}
        }))
        .expect("a valid pod");
        self.create(&filler).await?;
        let shown = wait_for("DiskPressure True", FAULT_TIMEOUT, async || {
            self.condition("DiskPressure").await.filter(|s| s == "True")
        })
        .await;
        let mut class = self.class("disk-pressure", Ask::Node, &["NodeDiskPressure"]);
        let timed = match shown {
            Ok(_) => self.time(&mut class).await,
            Err(e) => Err(e),
        };
        self.delete("filler").await?;
        timed?;
        self.healthy().await?;
        Ok(class)
    }

    /// containerd killed: the kubelet reports the node not Ready. Not restored (the test
    /// cluster cannot restart containerd); the cluster stops after it.
    async fn runtime_killed(&self) -> Result<Class, String> {
        eprintln!("node fault: containerd killed (last: not restored)");
        self.signal("containerd", "KILL")?;
        wait_for("Ready False", FAULT_TIMEOUT, async || {
            self.condition("Ready").await.filter(|s| s == "False")
        })
        .await?;
        let mut class = self.class("runtime-down", Ask::Node, &["ContainerRuntimeDown"]);
        self.time(&mut class).await?;
        Ok(class)
    }

    /// A bare pod protected by a PodDisruptionBudget that allows no eviction, and `kubectl
    /// drain` refused by it: the node stays cordoned while the class is timed, then uncordoned.
    async fn drain_blocked(&self) -> Result<Class, String> {
        eprintln!("node fault: a drain held by a disruption budget");
        let mut guarded = busybox("guarded", "exec sleep 3600");
        guarded.metadata.labels = Some([("app".to_owned(), "guarded".to_owned())].into());
        self.create(&guarded).await?;
        self.running("guarded").await?;
        // policy/v1beta1: the cluster is Kubernetes 1.20.
        let budget = json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "guard", "namespace": self.st.namespace},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}});
        self.kubectl_stdin(&["apply", "-f", "-"], &budget.to_string())?;
        wait_for(
            "the budget's status: 1 healthy, no disruption allowed",
            FAULT_TIMEOUT,
            async || {
                let out = self
                    .c
                    .kubectl()
                    .args([
                        "-n",
                        self.st.namespace.as_str(),
                        "get",
                        "pdb",
                        "guard",
                        "-o",
                        "json",
                    ])
                    .output()
                    .ok()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let st = &v["status"];
                // Healthy too: eviction lets a pod still Pending go whatever the budget says.
                (st["expectedPods"] == 1
                    && st["currentHealthy"] == 1
                    && st["disruptionsAllowed"] == 0)
                    .then_some(())
            },
        )
        .await?;
        let drain = self
            .c
            .kubectl()
            .args([
                "drain",
                self.node.as_str(),
                "--pod-selector=app=guarded",
                // A bare pod: drain refuses those without --force, which still evicts through
                // the budget.
                "--force",
                "--timeout=4s",
            ])
            .output()
            .map_err(|e| format!("kubectl drain: {e}"))?;
        let said = String::from_utf8_lossy(&drain.stderr).into_owned();
        let mut class = self.class("drain-blocked", Ask::Node, &["NodeDrainBlocked"]);
        let timed = if drain.status.success() || !said.contains("disruption budget") {
            Err(format!(
                "kubectl drain was not refused by the budget: {said}"
            ))
        } else {
            self.time(&mut class).await
        };
        let uncordon = self
            .c
            .kubectl()
            .args(["uncordon", self.node.as_str()])
            .output()
            .map_err(|e| format!("kubectl uncordon: {e}"))?;
        if !uncordon.status.success() {
            return Err(format!(
                "kubectl uncordon: {}",
                String::from_utf8_lossy(&uncordon.stderr)
            ));
        }
        timed?;
        let _ = self
            .c
            .kubectl()
            .args(["-n", self.st.namespace.as_str(), "delete", "pdb", "guard"])
            .output();
        self.delete("guarded").await?;
        self.healthy().await?;
        Ok(class)
    }

    /// Runs kubectl with `input` on its stdin.
    fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = self
            .c
            .kubectl()
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("kubectl: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|e| format!("kubectl stdin: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A pod creates empty files in an emptyDir until a quarter of the kubelet filesystem's
    /// inodes are left (below the half the kubelet wants free) and none of its bytes are used.
    /// How many it creates is counted from what is free now: the bench's other pods hold some.
    async fn inode_pressure(&self) -> Result<Class, String> {
        eprintln!("node fault: the kubelet's filesystem out of inodes");
        let free = free_inodes(&self.c.kubelet_root_dir())?;
        let files = free.saturating_sub(INODES / 4);
        let script =
            format!("cd /scratch && for i in $(seq {files}); do : > f$i; done; exec sleep 3600");
        let many: Pod = serde_json::from_value(json!({
            "metadata": {"name": "many-files"},
            "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    "command": ["sh", "-c", script]}]}
        }))
        .expect("a valid pod");
        self.create(&many).await?;
        let shown = wait_for("DiskPressure True (inodes)", FAULT_TIMEOUT, async || {
            self.condition("DiskPressure").await.filter(|s| s == "True")
        })
        .await;
        let mut class = self.class("inode-pressure", Ask::Node, &["NodeDiskPressure"]);
        let timed = match shown {
            Ok(_) => self.time(&mut class).await,
            Err(e) => Err(e),
        };
        self.delete("many-files").await?;
        timed?;
        self.healthy().await?;
        Ok(class)
    }

    /// The kubelet killed outright: the node lifecycle controller turns Ready Unknown (from
    /// False when containerd was killed before), and the agent finds no process on the
    /// kubelet's port. Not restored: the cluster stops after it.
    async fn kubelet_killed(&self) -> Result<Class, String> {
        eprintln!("node fault: the kubelet killed (last: not restored; about 25 s until Unknown)");
        self.signal("kubelet", "KILL")?;
        wait_for("Ready Unknown", FAULT_TIMEOUT, async || {
            self.condition("Ready").await.filter(|s| s == "Unknown")
        })
        .await?;
        let mut class = self.class("kubelet-killed", Ask::Node, &["KubeletNotRunning"]);
        self.time(&mut class).await?;
        Ok(class)
    }
}

/// Writes `text` to `path` through a rename, so containerd never reads half a file.
fn replace(staged: &Path, path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(staged, text).map_err(|e| format!("{}: {e}", staged.display()))?;
    std::fs::rename(staged, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Free inodes of the filesystem holding `path`, from `df` (coreutils).
fn free_inodes(path: &Path) -> Result<u64, String> {
    let out = std::process::Command::new("df")
        .args(["--output=iavail"])
        .arg(path)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("df --output=iavail {}: no number", path.display()))
}
