//! Node trouble: NotReady (the kubelet or the runtime down, PLEG, the network plugin) and
//! memory, disk or PID pressure, with the top consumers when the node's processes or
//! filesystems were collected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeCondition;
use kdiag_api::Evidence;
use kdiag_api::context_keys::{NODE_INFORMATION, PROCESS_INFORMATION};
use kdiag_collectors::pod_detail::resources::human_bytes;
use kdiag_collectors::pod_detail::{NodeDetail, POD_DETAIL_INFORMATION};
use serde_json::Value;

use kdiag_collectors::cri::probe::RuntimeProbe;
use kdiag_collectors::listener::DaemonProcess;
use kdiag_collectors::pids::PodPids;

use super::facts::Proc;
use super::finding::{Finding, Rank, quote};

/// What the node rules may use besides the node itself.
pub struct NodeInputs<'a> {
    pub processes: Option<&'a [Proc]>,
    pub node_info: Option<&'a Value>,
    /// Pod names by UID, to name a process's pod.
    pub pod_names: &'a BTreeMap<String, String>,
    /// The evidence's context key for the node object.
    pub node_key: &'a str,
    /// The node's own kubelet process, when the node's /proc was searched for it.
    pub kubelet: Option<&'a KubeletSearch>,
    /// The container runtime's answer to a CRI call, when it was asked.
    pub runtime: Option<&'a RuntimeProbe>,
    /// The pids cgroups of the pods with the most processes.
    pub pod_pids: &'a [PodPids],
    /// What each pod's directory under the kubelet's root holds, measured under disk pressure.
    pub pod_disk: &'a [PodDisk],
    pub now: jiff::Timestamp,
}

/// One pod's directory under the kubelet's root (`pods/<uid>`: its volumes and emptyDirs).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDisk {
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    pub dir: String,
    pub bytes: u64,
    pub files: u64,
}

/// Where the node's kubelet was looked for, and what was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletSearch {
    /// The port the Node object advertises (`status.daemonEndpoints`).
    pub port: i32,
    /// The process listening there; None when none does.
    pub process: Option<DaemonProcess>,
}

/// How findings of rank Node order among themselves: what stops the node outright first.
pub const WEIGHT_KUBELET: i64 = 100;
pub const WEIGHT_RUNTIME: i64 = 90;
pub const WEIGHT_NOT_READY: i64 = 80;
pub const WEIGHT_PRESSURE: i64 = 50;

/// The kubelet stopped posting the node's status and its process was looked for on the node:
/// named by what /proc shows (stopped, running but silent, or gone) and since when.
fn kubelet_not_reporting(
    node: &NodeDetail,
    ready: &NodeCondition,
    inputs: &NodeInputs,
) -> Option<Finding> {
    let message = ready.message.as_deref().unwrap_or("").to_ascii_lowercase();
    if ready.status != "Unknown" && !message.contains("stopped posting node status") {
        return None;
    }
    let search = inputs.kubelet?;
    let heartbeat = ready.last_heartbeat_time.as_ref().map(|t| t.0);
    let since = match heartbeat {
        Some(t) => format!(
            "; it last posted the node's status at {} ({} ago)",
            t.round(jiff::Unit::Second).unwrap_or(t),
            human_duration(inputs.now.duration_since(t).as_secs().max(0))
        ),
        None => String::new(),
    };
    let name = &node.name;
    let (reason, summary, suggestion) = match &search.process {
        Some(p) if p.stopped() => (
            "KubeletStopped",
            format!(
                "node {name} is NotReady: its kubelet (pid {}) is {}, so it posts no status{since}",
                p.pid,
                p.state_words()
            ),
            format!(
                "Something stopped the kubelet's process: resume it (kill -CONT {}) or restart the kubelet (systemctl restart kubelet), then find what sent the stop (a debugger, an operator's Ctrl-Z, a freezer cgroup).",
                p.pid
            ),
        ),
        Some(p) => (
            "KubeletNotReporting",
            format!(
                "node {name} is NotReady: its kubelet (pid {}, {}) runs but posts no status: it is hung or cannot reach the apiserver{since}",
                p.pid,
                p.state_words()
            ),
            "Read the kubelet's log on the node (journalctl -u kubelet): a deadlock, a runtime call that never returns, or no route, DNS or certificate to the apiserver; restart the kubelet if it is hung.".into(),
        ),
        None => (
            "KubeletNotRunning",
            format!(
                "node {name} is NotReady: no kubelet process serves its port {} on the node: the kubelet is not running{since}",
                search.port
            ),
            "Start the kubelet (systemctl start kubelet) and read why it ended: journalctl -u kubelet (a bad flag or configuration, an expired certificate, the runtime's socket missing, out of memory).".into(),
        ),
    };
    let mut f = Finding::new(reason, Rank::Node, summary, suggestion)
        .weighted(WEIGHT_KUBELET)
        .with(Evidence {
            kind: "Process".into(),
            message: match &search.process {
                Some(p) => format!(
                    "pid {} `{}` listens on port {}, state {} ({})",
                    p.pid,
                    quote(&p.command.join(" "), 80),
                    search.port,
                    p.state,
                    p.state_words()
                ),
                None => format!("no kubelet process listens on port {}", search.port),
            },
            object: format!("node/{name}"),
            context_key: inputs.node_key.to_owned(),
            timestamp: None,
        });
    f.seen(heartbeat, None);
    Some(f)
}

fn condition<'a>(node: &'a NodeDetail, type_: &str) -> Option<&'a NodeCondition> {
    node.conditions.iter().find(|c| c.type_ == type_)
}

fn condition_evidence(node: &NodeDetail, c: &NodeCondition, key: &str) -> Evidence {
    Evidence {
        kind: "NodeCondition".into(),
        message: format!(
            "{}={} reason {}: {}",
            c.type_,
            c.status,
            c.reason.as_deref().unwrap_or("?"),
            c.message.as_deref().unwrap_or("").trim()
        ),
        object: format!("node/{}", node.name),
        context_key: key.to_owned(),
        timestamp: c.last_transition_time.clone(),
    }
}

/// Why a node is not ready, in plain words, from its Ready condition.
fn not_ready_cause(c: &NodeCondition) -> (String, String) {
    let message = c.message.as_deref().unwrap_or("");
    let m = message.to_ascii_lowercase();
    if c.status == "Unknown" || m.contains("stopped posting node status") {
        (
            "the kubelet stopped reporting (it is down, hung, or cannot reach the apiserver)".into(),
            "On the node: systemctl status kubelet and journalctl -u kubelet (crash loop, certificate expired, out of memory or disk); check the network path from the node to the apiserver.".into(),
        )
    } else if m.contains("container runtime is down") || m.contains("runtime status check") {
        (
            "the container runtime is down".into(),
            "On the node: systemctl status containerd (or crio) and its log; the kubelet cannot run or see any container until the runtime answers on its socket.".into(),
        )
    } else if m.contains("pleg is not healthy") {
        (
            "the kubelet's pod lifecycle event generator (PLEG) is stuck: listing containers takes too long".into(),
            "The runtime is overloaded or hung (too many containers, a stuck shim, slow disk): check the runtime's log and load; restarting the runtime or the kubelet usually clears it.".into(),
        )
    } else if m.contains("network plugin") || m.contains("cni") || m.contains("networkready=false")
    {
        (
            "the network plugin is not ready".into(),
            "The CNI plugin's configuration or daemon is missing on the node: check the CNI pods (DaemonSet) on this node and /etc/cni/net.d.".into(),
        )
    } else {
        (
            format!("the kubelet reports it not ready: {}", quote(message, 160)),
            "Read the kubelet's log on the node for the reason it reports.".into(),
        )
    }
}

pub fn check(node: &NodeDetail, inputs: &NodeInputs) -> Vec<Finding> {
    let mut out = Vec::new();
    let object = format!("node/{}", node.name);
    if let Some(ready) = condition(node, "Ready")
        && ready.status != "True"
    {
        let (why, suggestion) = not_ready_cause(ready);
        let mut f = match kubelet_not_reporting(node, ready, inputs) {
            Some(f) => f,
            None => Finding::new(
                "NodeNotReady",
                Rank::Node,
                format!("node {} is NotReady: {why}", node.name),
                suggestion,
            )
            .weighted(WEIGHT_NOT_READY),
        }
        .with(condition_evidence(node, ready, inputs.node_key));
        f.seen(ready.last_transition_time.as_ref().map(|t| t.0), None);
        for e in node
            .events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("NodeNotReady"))
        {
            f = f.with_event(e, &object);
        }
        out.push(f);
    }
    if let Some(probe) = inputs.runtime {
        out.extend(super::runtime::node_finding(node, probe, inputs.node_key));
    }
    if let Some(procs) = inputs.processes {
        out.extend(super::processes::zombies(procs, inputs.pod_names));
    }
    // The node's own pid space, when no PIDPressure condition reports it already (the
    // kubelet sets one only with a pid.available eviction threshold, which is off by default).
    if condition(node, "PIDPressure").is_none_or(|c| c.status != "True")
        && let Some(f) = node_pids_near_limit(node, inputs)
    {
        out.push(f);
    }
    out.extend(super::processes::pids_limits(
        inputs.pod_pids,
        inputs.processes,
        inputs.pod_names,
    ));
    for (type_, reason, resource) in [
        ("MemoryPressure", "NodeMemoryPressure", "memory"),
        ("DiskPressure", "NodeDiskPressure", "disk"),
        ("PIDPressure", "NodePIDPressure", "process IDs"),
    ] {
        let Some(c) = condition(node, type_) else {
            continue;
        };
        if c.status != "True" {
            continue;
        }
        // Disk pressure from inodes is a different fix (many small files, not big ones): said
        // first, with the pods holding the most files.
        let inodes = (type_ == "DiskPressure")
            .then(|| inode_bound(inputs))
            .flatten();
        let (top, evidence) = match type_ {
            "MemoryPressure" => top_memory(inputs),
            "DiskPressure" => top_disk(inputs, inodes.is_some()),
            _ => top_pids(inputs),
        };
        let from_inodes = inodes
            .as_ref()
            .map(|i| {
                format!(
                    " from inodes, not bytes: {} has {:.0}% of its inodes used and {:.0}% of its bytes",
                    i.mount, i.inodes_percent, i.bytes_percent
                )
            })
            .unwrap_or_default();
        let mut f = Finding::new(
            reason,
            Rank::Node,
            format!(
                "node {} is under {resource} pressure{from_inodes} ({}){}",
                node.name,
                quote(c.message.as_deref().unwrap_or(""), 100),
                if top.is_empty() {
                    String::new()
                } else {
                    format!("; top consumers: {top}")
                }
            ),
            match type_ {
                "MemoryPressure" => "The kubelet evicts pods above their memory requests until memory.available is above its eviction threshold again. Find the largest consumers (listed), set memory requests and limits close to real use, or add memory.".into(),
                "DiskPressure" if inodes.is_some() => "Every file takes an inode, and the filesystem has few left although bytes are free: remove the many small files the pods listed write (caches, temporary files in emptyDirs, unrotated logs), or give the filesystem more inodes (mkfs -i, tmpfs nr_inodes). The kubelet evicts the pods with the most inodes first once its grace period is over.".into(),
                "DiskPressure" => "The kubelet removes unused images and evicts pods by disk use until the filesystem is below its threshold. Free space on the fullest filesystem (listed): container logs, unused images (crictl rmi --prune), emptyDirs, or grow the disk.".into(),
                _ => "Processes or threads near the node's limit: find the pod forking most (listed) and set a pod PID limit (--pod-max-pids).".into(),
            },
        )
        .weighted(WEIGHT_PRESSURE)
        .with(condition_evidence(node, c, inputs.node_key))
        .with_all(evidence);
        f.seen(c.last_transition_time.as_ref().map(|t| t.0), None);
        for e in node
            .events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("EvictionThresholdMet"))
        {
            f = f.with_event(e, &object);
        }
        out.push(f);
    }
    if let Some(c) = condition(node, "NetworkUnavailable")
        && c.status == "True"
    {
        out.push(
            Finding::new(
                "NodeNetworkUnavailable",
                Rank::Node,
                format!(
                    "node {} has no working pod network: {}",
                    node.name,
                    quote(c.message.as_deref().unwrap_or(""), 160)
                ),
                "The network plugin has not configured this node's routes: check its pods on the node and its log.".into(),
            )
            .with(condition_evidence(node, c, inputs.node_key)),
        );
    }
    if let Some(info) = inputs.node_info {
        out.extend(clock_skew(node, info));
        out.extend(certificates(node, info));
        out.extend(apiserver_certificates(node, info));
    }
    out
}

/// A node clock this far from the apiserver's (beyond the measurement's own uncertainty) breaks
/// what compares times across machines: tokens and certificates judged not yet or no longer
/// valid, leases and node heartbeats that look stale, logs out of order.
pub const CLOCK_SKEW_LIMIT_SECONDS: f64 = 5.0;
/// A kubelet certificate this close to its expiry is a finding: the kubelet rotates its client
/// certificate well before (at 70–90 % of its life), so one still this close means rotation is
/// failing (or is off) and the node will lose the apiserver when it expires.
pub const CERTIFICATE_WARNING_SECONDS: i64 = 7 * 24 * 3600;

fn info_evidence(node: &NodeDetail, message: String) -> Evidence {
    Evidence {
        kind: "NodeInformation".into(),
        message,
        object: format!("node/{}", node.name),
        context_key: NODE_INFORMATION.into(),
        timestamp: None,
    }
}

fn clock_skew(node: &NodeDetail, info: &Value) -> Option<Finding> {
    let api = info.pointer("/clock/apiserver")?;
    let skew = api.get("skewSeconds")?.as_f64()?;
    let uncertainty = api
        .get("uncertaintySeconds")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    if skew.abs() - uncertainty < CLOCK_SKEW_LIMIT_SECONDS {
        return None;
    }
    let direction = if skew > 0.0 { "ahead of" } else { "behind" };
    let synced = match info.pointer("/clock/synchronized") {
        Some(Value::Bool(false)) => {
            "; no time daemon keeps it in sync (adjtimex reports it unsynchronized)"
        }
        Some(Value::Bool(true)) => {
            "; its time daemon believes it is in sync, so its time source is wrong"
        }
        _ => "",
    };
    Some(
        Finding::new(
            "NodeClockSkew",
            Rank::Node,
            format!(
                "node {}'s clock is {:.0} s {direction} the apiserver's{synced}",
                node.name,
                skew.abs()
            ),
            "Fix the node's time: check chronyd/ntpd/systemd-timesyncd and its sources (chronyc tracking, timedatectl); tokens, certificates and node leases are judged by the clock, so a skewed node fails authentication or looks dead.".into(),
        )
        .with(info_evidence(
            node,
            format!(
                "node clock minus apiserver Date: {skew:+.1} s (±{uncertainty:.1} s); apiserver Date {}",
                api.get("apiserverDate").and_then(Value::as_str).unwrap_or("?")
            ),
        )),
    )
}

fn certificates(node: &NodeDetail, info: &Value) -> Vec<Finding> {
    let Some(certs) = info
        .pointer("/certificates/certificates")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    certs
        .iter()
        .filter_map(|c| {
            let left = c.get("expiresInSeconds")?.as_i64()?;
            if left > CERTIFICATE_WARNING_SECONDS {
                return None;
            }
            let path = c.get("path").and_then(Value::as_str).unwrap_or("?");
            let subject = c.get("subject").and_then(Value::as_str).unwrap_or("?");
            let not_after = c.get("notAfter").and_then(Value::as_str).unwrap_or("?");
            let (reason, state) =
                expiry(left, ["NodeCertificateExpired", "NodeCertificateExpiring"]);
            Some(
                Finding::new(
                    reason,
                    Rank::Node,
                    format!(
                        "node {}: the kubelet's certificate {path} ({subject}) {state}",
                        node.name
                    ),
                    "Renew it: with client rotation on (rotateCertificates: true) the kubelet asks for a new one through a CertificateSigningRequest that must be approved (kubectl get csr); otherwise issue a new certificate for the node (kubeadm certs renew, or your provisioner) and restart the kubelet.".into(),
                )
                .with(info_evidence(
                    node,
                    format!("{path}: subject {subject}, notAfter {not_after}"),
                )),
            )
        })
        .collect()
}

/// The chain the apiserver serves to this node (node-collector's `apiserverCertificate`): its
/// leaf or a CA in it expired or within [`CERTIFICATE_WARNING_SECONDS`]. Once it expires every
/// kubelet, controller and user is refused at once; checked from the node, it also catches a
/// load balancer in front of the apiserver that still serves an old certificate.
fn apiserver_certificates(node: &NodeDetail, info: &Value) -> Vec<Finding> {
    let Some(served) = info.get("apiserverCertificate") else {
        return Vec::new();
    };
    let address = served.get("address").and_then(Value::as_str).unwrap_or("?");
    let Some(chain) = served.get("chain").and_then(Value::as_array) else {
        return Vec::new();
    };
    chain
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let left = c.get("expiresInSeconds")?.as_i64()?;
            if left > CERTIFICATE_WARNING_SECONDS {
                return None;
            }
            let subject = c.get("subject").and_then(Value::as_str).unwrap_or("?");
            let issuer = c.get("issuer").and_then(Value::as_str).unwrap_or("?");
            let not_after = c.get("notAfter").and_then(Value::as_str).unwrap_or("?");
            let which = if i == 0 {
                format!("serving certificate ({subject})")
            } else {
                format!("certificate chain's {subject}")
            };
            let (reason, state) = expiry(
                left,
                ["ApiserverCertificateExpired", "ApiserverCertificateExpiring"],
            );
            Some(
                Finding::new(
                    reason,
                    Rank::Node,
                    format!(
                        "the apiserver at {address}, as node {} reaches it: its {which} {state}",
                        node.name
                    ),
                    "Renew the apiserver's serving certificate (kubeadm certs renew apiserver, or your provisioner) and restart kube-apiserver; if a load balancer or proxy answers at this address, give it the new certificate too. Check from the node with: openssl s_client -connect <address> </dev/null | openssl x509 -noout -dates".into(),
                )
                .with(info_evidence(
                    node,
                    format!(
                        "TLS handshake with {address}: certificate #{i} subject {subject}, issuer {issuer}, notAfter {not_after}"
                    ),
                )),
            )
        })
        .collect()
}

/// A certificate `left` seconds from its expiry (negative: past it): the first reason of
/// `[expired, expiring]` that applies, and the words for it.
fn expiry(left: i64, [expired, expiring]: [&'static str; 2]) -> (&'static str, String) {
    if left <= 0 {
        (expired, format!("expired {} ago", human_duration(-left)))
    } else {
        (expiring, format!("expires in {}", human_duration(left)))
    }
}

/// `93784` → "1 d 2 h", `300` → "5 min".
pub fn human_duration(seconds: i64) -> String {
    let (d, h, m) = (seconds / 86400, seconds % 86400 / 3600, seconds % 3600 / 60);
    match (d, h) {
        (0, 0) if m == 0 => format!("{seconds} s"),
        (0, 0) => format!("{m} min"),
        (0, h) => format!("{h} h {m} min"),
        (d, h) => format!("{d} d {h} h"),
    }
}

pub fn pod_of(p: &Proc, names: &BTreeMap<String, String>) -> String {
    match &p.pod_uid {
        Some(uid) => match names.get(uid) {
            Some(n) => format!("pod {n}"),
            None => format!("pod UID {uid}"),
        },
        None => "the host".into(),
    }
}

pub fn command(p: &Proc) -> String {
    if p.command.is_empty() {
        format!("[{}]", p.name)
    } else {
        quote(&p.command.join(" "), 60)
    }
}

/// The five processes with the most resident memory.
fn top_memory(inputs: &NodeInputs) -> (String, Vec<Evidence>) {
    let Some(procs) = inputs.processes else {
        return (String::new(), Vec::new());
    };
    let mut sorted: Vec<&Proc> = procs.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.memory_info.rss));
    let top: Vec<&Proc> = sorted.into_iter().take(5).collect();
    let text = top
        .iter()
        .map(|p| {
            format!(
                "pid {} `{}` ({}) {}",
                p.pid,
                command(p),
                pod_of(p, inputs.pod_names),
                human_bytes(p.memory_info.rss as i64)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let evidence = top
        .iter()
        .map(|p| Evidence {
            kind: "Process".into(),
            message: format!(
                "pid {} `{}` of {} holds {} resident",
                p.pid,
                command(p),
                pod_of(p, inputs.pod_names),
                human_bytes(p.memory_info.rss as i64)
            ),
            object: match (
                &p.pod_uid,
                p.pod_uid.as_ref().and_then(|u| inputs.pod_names.get(u)),
            ) {
                (_, Some(n)) => format!("pod/{n}"),
                _ => String::new(),
            },
            context_key: PROCESS_INFORMATION.into(),
            timestamp: None,
        })
        .collect();
    (text, evidence)
}

/// The three fullest filesystems, from node-collector.
/// The fullest filesystem, when its inodes are fuller than its bytes: the pressure comes from
/// the number of files.
struct InodeBound {
    mount: String,
    inodes_percent: f64,
    bytes_percent: f64,
}

fn inode_bound(inputs: &NodeInputs) -> Option<InodeBound> {
    let fs = inputs.node_info?.get("filesystems")?.as_array()?;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let fullest = fs.iter().max_by(|a, b| {
        let f = |v: &Value| num(v, "usedPercent").max(num(v, "inodesUsedPercent"));
        f(a).total_cmp(&f(b))
    })?;
    let (inodes, bytes) = (
        num(fullest, "inodesUsedPercent"),
        num(fullest, "usedPercent"),
    );
    (inodes > bytes).then(|| InodeBound {
        mount: fullest
            .get("mountPoint")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        inodes_percent: inodes,
        bytes_percent: bytes,
    })
}

fn top_disk(inputs: &NodeInputs, by_files: bool) -> (String, Vec<Evidence>) {
    let fs: Vec<&Value> = inputs
        .node_info
        .and_then(|v| v.get("filesystems"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let used = |v: &Value| v.get("usedPercent").and_then(Value::as_f64).unwrap_or(0.0);
    let inodes = |v: &Value| {
        v.get("inodesUsedPercent")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    // Bytes or inodes, whichever is fuller: either runs a filesystem out.
    let fullest = |v: &Value| used(v).max(inodes(v));
    let mut sorted = fs;
    sorted.sort_by(|a, b| fullest(b).total_cmp(&fullest(a)));
    // A container's overlay root shows the numbers of the filesystem below it: one line each.
    let mut seen = std::collections::BTreeSet::new();
    let top: Vec<&Value> = sorted
        .into_iter()
        .filter(|v| {
            seen.insert((
                v.get("sizeBytes").and_then(Value::as_u64),
                v.get("availableBytes").and_then(Value::as_u64),
            ))
        })
        .take(3)
        .collect();
    let line = |v: &Value| {
        format!(
            "{} {:.0}% used ({} free, {:.0}% of inodes)",
            v.get("mountPoint").and_then(Value::as_str).unwrap_or("?"),
            used(v),
            human_bytes(v.get("availableBytes").and_then(Value::as_i64).unwrap_or(0)),
            inodes(v)
        )
    };
    let mut pods: Vec<&PodDisk> = inputs.pod_disk.iter().collect();
    if by_files {
        pods.sort_by_key(|p| std::cmp::Reverse(p.files));
    } else {
        pods.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    }
    pods.truncate(5);
    let pod_name = |p: &PodDisk| {
        inputs
            .pod_names
            .get(&p.pod_uid)
            .map(|n| format!("pod {n}"))
            .unwrap_or_else(|| format!("pod UID {}", p.pod_uid))
    };
    let pod_line = |p: &PodDisk| {
        if by_files {
            format!(
                "{} {} file(s) ({})",
                pod_name(p),
                p.files,
                human_bytes(p.bytes as i64)
            )
        } else {
            format!(
                "{} {} in {} file(s)",
                pod_name(p),
                human_bytes(p.bytes as i64),
                p.files
            )
        }
    };
    let mut text = top.iter().map(|v| line(v)).collect::<Vec<_>>().join(", ");
    if !pods.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!(
            "{} (their volumes and emptyDirs): {}",
            if by_files {
                "pods with the most files"
            } else {
                "largest pods"
            },
            pods.iter()
                .map(|p| pod_line(p))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let evidence = top
        .iter()
        .map(|v| Evidence {
            kind: "DiskUsage".into(),
            message: line(v),
            object: String::new(),
            context_key: NODE_INFORMATION.into(),
            timestamp: None,
        })
        .chain(pods.iter().map(|p| {
            Evidence {
                kind: "DiskUsage".into(),
                message: format!("{}: {}", p.dir, pod_line(p)),
                object: inputs
                    .pod_names
                    .get(&p.pod_uid)
                    .map(|n| format!("pod/{n}"))
                    .unwrap_or_default(),
                context_key: inputs.node_key.to_owned(),
                timestamp: None,
            }
        }))
        .collect();
    (text, evidence)
}

/// The node's threads (each takes a pid) at [`super::processes::PIDS_LIMIT_PERCENT`] of its
/// pid_max, from node-collector, with the pods running the most processes.
fn node_pids_near_limit(node: &NodeDetail, inputs: &NodeInputs) -> Option<Finding> {
    let pids = inputs.node_info?.get("pids")?;
    let threads = pids.get("threads")?.as_u64()?;
    let max = pids.get("pidMax")?.as_u64().filter(|m| *m > 0)?;
    let percent = threads * 100 / max;
    if percent < super::processes::PIDS_LIMIT_PERCENT {
        return None;
    }
    let (top, evidence) = top_pids(inputs);
    Some(
        Finding::new(
            "NodePidsNearLimit",
            Rank::Node,
            format!(
                "node {} uses {threads} of its {max} pids ({percent}%): new processes and threads anywhere on it will fail to start{}",
                node.name,
                if top.is_empty() {
                    String::new()
                } else {
                    format!("; most processes: {top}")
                }
            ),
            "Find the pod or program forking most (listed) and stop the leak; set the kubelet's podPidsLimit so one pod cannot take the node's pid space, or raise kernel.pid_max.".into(),
        )
        .weighted(super::processes::WEIGHT_PIDS + 1)
        .with(info_evidence(
            node,
            format!("{threads} threads of pid_max {max} ({percent}%)"),
        ))
        .with_all(evidence),
    )
}

/// The five pods with the most processes.
fn top_pids(inputs: &NodeInputs) -> (String, Vec<Evidence>) {
    let Some(procs) = inputs.processes else {
        return (String::new(), Vec::new());
    };
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    for p in procs {
        *by_pod.entry(pod_of(p, inputs.pod_names)).or_default() += 1;
    }
    let mut sorted: Vec<(String, usize)> = by_pod.into_iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    sorted.truncate(5);
    (
        sorted
            .iter()
            .map(|(who, n)| format!("{who}: {n} processes"))
            .collect::<Vec<_>>()
            .join(", "),
        sorted
            .iter()
            .map(|(who, n)| Evidence {
                kind: "Process".into(),
                message: format!("{who} runs {n} processes"),
                object: String::new(),
                context_key: PROCESS_INFORMATION.into(),
                timestamp: None,
            })
            .collect(),
    )
}

/// The pod triage's view: the pod's node, as pod-detail-collector read it.
pub fn for_pod(f: &super::facts::Facts) -> Vec<Finding> {
    let Some(node) = f.detail.node.as_ref() else {
        return Vec::new();
    };
    let inputs = NodeInputs {
        processes: f.processes.as_deref(),
        node_info: f.node_info.as_ref(),
        pod_names: &f.pod_names,
        node_key: POD_DETAIL_INFORMATION,
        // The runtime is judged by the pod rule (it names the pod waiting for it); the kubelet
        // and the pids cgroups only by the node triage.
        kubelet: None,
        runtime: None,
        pod_pids: &[],
        pod_disk: &[],
        now: f.now,
    };
    check(node, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(conditions: Value) -> NodeDetail {
        NodeDetail {
            name: "n1".into(),
            conditions: serde_json::from_value(conditions).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn a_not_ready_node_says_which_part_is_down() {
        let names = BTreeMap::new();
        let inputs = NodeInputs {
            processes: None,
            node_info: None,
            pod_names: &names,
            node_key: "x",
            kubelet: None,
            runtime: None,
            pod_pids: &[],
            pod_disk: &[],
            now: jiff::Timestamp::now(),
        };
        let f = check(
            &node(
                json!([{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                "message": "container runtime is down,PLEG is not healthy: pleg was last seen active 3m0s ago"}]),
            ),
            &inputs,
        );
        assert_eq!(f[0].reason, "NodeNotReady");
        assert!(
            f[0].summary.contains("container runtime is down"),
            "{}",
            f[0].summary
        );
        let f = check(
            &node(
                json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status."}]),
            ),
            &inputs,
        );
        assert!(
            f[0].summary.contains("kubelet stopped reporting"),
            "{}",
            f[0].summary
        );
    }

    #[test]
    fn memory_pressure_names_the_largest_processes_and_their_pods() {
        let mut names = BTreeMap::new();
        names.insert("u1".to_owned(), "shop/cache".to_owned());
        let procs: Vec<Proc> = serde_json::from_value(json!([
            {"pid": 10, "name": "redis", "command": ["redis-server"], "memoryInfo": {"rss": 8_000_000_000u64}, "podUID": "u1"},
            {"pid": 11, "name": "sshd", "command": ["sshd"], "memoryInfo": {"rss": 1_000_000}}
        ]))
        .unwrap();
        let inputs = NodeInputs {
            processes: Some(&procs),
            node_info: None,
            pod_names: &names,
            node_key: "x",
            kubelet: None,
            runtime: None,
            pod_pids: &[],
            pod_disk: &[],
            now: jiff::Timestamp::now(),
        };
        let f = check(
            &node(json!([{"type": "Ready", "status": "True"},
                {"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory", "message": "kubelet has insufficient memory available"}])),
            &inputs,
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].reason, "NodeMemoryPressure");
        assert!(
            f[0].summary.contains("redis-server` (pod shop/cache)"),
            "{}",
            f[0].summary
        );
        assert!(f[0].evidence.iter().any(|e| e.object == "pod/shop/cache"));
    }

    #[test]
    fn disk_pressure_names_the_fullest_filesystems_by_bytes_or_inodes_and_the_largest_pods() {
        let mut names = BTreeMap::new();
        names.insert("u1".to_owned(), "shop/logs".to_owned());
        let info = json!({"filesystems": [
            {"mountPoint": "/", "usedPercent": 40.0, "inodesUsedPercent": 97.0, "availableBytes": 1_000_000_000},
            {"mountPoint": "/var/lib/containerd", "usedPercent": 91.0, "inodesUsedPercent": 10.0, "availableBytes": 100_000_000},
            {"mountPoint": "/boot", "usedPercent": 20.0, "inodesUsedPercent": 1.0, "availableBytes": 100_000_000}]});
        let pod_disk = [
            PodDisk {
                pod_uid: "u1".into(),
                dir: "/var/lib/kubelet/pods/u1".into(),
                bytes: 3 << 30,
                files: 120_000,
            },
            PodDisk {
                pod_uid: "u2".into(),
                dir: "/var/lib/kubelet/pods/u2".into(),
                bytes: 1 << 20,
                files: 3,
            },
        ];
        let inputs = NodeInputs {
            processes: None,
            node_info: Some(&info),
            pod_names: &names,
            node_key: "x",
            kubelet: None,
            runtime: None,
            pod_pids: &[],
            pod_disk: &pod_disk,
            now: jiff::Timestamp::now(),
        };
        let f = check(
            &node(json!([{"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure", "message": "kubelet has disk pressure"}])),
            &inputs,
        );
        assert_eq!(f[0].reason, "NodeDiskPressure");
        assert!(
            f[0].summary.starts_with("node n1 is under disk pressure from inodes, not bytes: / has 97% of its inodes used and 40% of its bytes (kubelet has disk pressure)"),
            "{}",
            f[0].summary
        );
        assert!(
            f[0].summary.contains("top consumers: / 40% used (953.7 MiB free, 97% of inodes), /var/lib/containerd 91% used"),
            "{}",
            f[0].summary
        );
        assert!(
            f[0].summary.contains("pods with the most files (their volumes and emptyDirs): pod shop/logs 120000 file(s) (3.0 GiB), pod UID u2 3 file(s)"),
            "{}",
            f[0].summary
        );
        assert!(f[0].suggestion.starts_with("Every file takes an inode"));
        // The same node with its fullest filesystem full by bytes: the largest pods by bytes.
        let info = json!({"filesystems": [
            {"mountPoint": "/", "usedPercent": 98.0, "inodesUsedPercent": 9.0, "availableBytes": 1_000_000}]});
        let f = check(
            &node(
                json!([{"type": "DiskPressure", "status": "True", "message": "kubelet has disk pressure"}]),
            ),
            &NodeInputs {
                node_info: Some(&info),
                ..inputs
            },
        );
        assert!(
            f[0].summary.starts_with("node n1 is under disk pressure (kubelet has disk pressure); top consumers: / 98% used")
                && f[0].summary.contains("largest pods (their volumes and emptyDirs): pod shop/logs 3.0 GiB in 120000 file(s)"),
            "{}",
            f[0].summary
        );
        assert!(f[0].evidence.iter().any(|e| e.object == "pod/shop/logs"));
    }

    #[test]
    fn a_stopped_kubelet_an_absent_one_and_a_silent_one_are_told_apart() {
        let names = BTreeMap::new();
        let not_posting = node(
            json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": "2026-12-05T01:00:00Z", "lastTransitionTime": "2026-12-05T01:00:20Z"}]),
        );
        let judge = |process: Option<DaemonProcess>| {
            let search = KubeletSearch {
                port: 10250,
                process,
            };
            let inputs = NodeInputs {
                processes: None,
                node_info: None,
                pod_names: &names,
                node_key: "x",
                kubelet: Some(&search),
                runtime: None,
                pod_pids: &[],
                pod_disk: &[],
                now: "2026-12-05T01:02:00Z".parse().unwrap(),
            };
            check(&not_posting, &inputs).remove(0)
        };
        let kubelet = |state: &str| DaemonProcess {
            pid: 7,
            name: "kubelet".into(),
            state: state.into(),
            command: vec!["/usr/bin/kubelet".into()],
        };
        let f = judge(Some(kubelet("T")));
        assert_eq!(f.reason, "KubeletStopped");
        assert!(
            f.summary
                .contains("its kubelet (pid 7) is stopped (SIGSTOP")
                && f.summary
                    .contains("last posted the node's status at 2026-12-05T01:00:00Z (2 min ago)"),
            "{}",
            f.summary
        );
        assert_eq!(f.since.unwrap().to_string(), "2026-12-05T01:00:00Z");
        assert!(f.suggestion.contains("kill -CONT 7"), "{}", f.suggestion);
        assert_eq!(judge(Some(kubelet("S"))).reason, "KubeletNotReporting");
        let f = judge(None);
        assert_eq!(f.reason, "KubeletNotRunning");
        assert!(
            f.summary
                .contains("no kubelet process serves its port 10250"),
            "{}",
            f.summary
        );
    }

    #[test]
    fn a_node_near_its_pid_max_names_the_pod_running_the_most_processes() {
        let mut names = BTreeMap::new();
        names.insert("u1".to_owned(), "shop/forker".to_owned());
        let procs: Vec<Proc> = serde_json::from_value(json!([
            {"pid": 10, "name": "sh", "podUID": "u1"},
            {"pid": 11, "name": "sh", "podUID": "u1"},
            {"pid": 12, "name": "sshd"}
        ]))
        .unwrap();
        let full = json!({"pids": {"threads": 31000, "pidMax": 32768}});
        let inputs = |info| NodeInputs {
            processes: Some(&procs),
            node_info: Some(info),
            pod_names: &names,
            node_key: "x",
            kubelet: None,
            runtime: None,
            pod_pids: &[],
            pod_disk: &[],
            now: jiff::Timestamp::now(),
        };
        let ready = node(json!([{"type": "Ready", "status": "True"}]));
        let f = check(&ready, &inputs(&full));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].reason, "NodePidsNearLimit");
        assert!(
            f[0].summary
                .starts_with("node n1 uses 31000 of its 32768 pids (94%)")
                && f[0].summary.contains("pod shop/forker: 2 processes"),
            "{}",
            f[0].summary
        );
        let roomy = json!({"pids": {"threads": 3000, "pidMax": 32768}});
        assert!(check(&ready, &inputs(&roomy)).is_empty());
    }

    fn inputs_with(info: &Value) -> NodeInputs<'_> {
        static NAMES: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
        NodeInputs {
            processes: None,
            node_info: Some(info),
            pod_names: NAMES.get_or_init(BTreeMap::new),
            node_key: POD_DETAIL_INFORMATION,
            kubelet: None,
            runtime: None,
            pod_pids: &[],
            pod_disk: &[],
            now: jiff::Timestamp::now(),
        }
    }

    #[test]
    fn a_clock_beyond_the_limit_and_its_uncertainty_is_named_with_its_direction() {
        let ready = node(json!([{"type": "Ready", "status": "True"}]));
        let skewed = json!({"clock": {"synchronized": false,
            "apiserver": {"skewSeconds": -42.3, "uncertaintySeconds": 0.6, "apiserverDate": "Fri, 04 Dec 2026 22:00:00 GMT"}}});
        let f = check(&ready, &inputs_with(&skewed));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].reason, "NodeClockSkew");
        assert!(
            f[0].summary.contains("42 s behind the apiserver's"),
            "{}",
            f[0].summary
        );
        assert!(f[0].summary.contains("unsynchronized"), "{}", f[0].summary);

        let within =
            json!({"clock": {"apiserver": {"skewSeconds": 5.3, "uncertaintySeconds": 0.6}}});
        assert!(
            check(&ready, &inputs_with(&within)).is_empty(),
            "within the measurement's own error"
        );
    }

    #[test]
    fn kubelet_certificates_expired_or_within_a_week_are_named_and_others_are_not() {
        let ready = node(json!([{"type": "Ready", "status": "True"}]));
        let info = json!({"certificates": {"certificates": [
            {"path": "/var/lib/kubelet/pki/kubelet-client-current.pem", "subject": "CN=system:node:n1",
             "notAfter": "2026-11-01T00:00:00Z", "expiresInSeconds": -2 * 86400 - 3600},
            {"path": "/var/lib/kubelet/pki/kubelet.crt", "subject": "CN=n1@1",
             "notAfter": "2026-12-07T00:00:00Z", "expiresInSeconds": 3 * 86400},
            {"path": "/var/lib/kubelet/pki/other.crt", "subject": "CN=x",
             "notAfter": "2027-12-07T00:00:00Z", "expiresInSeconds": 300 * 86400}]}});
        let f = check(&ready, &inputs_with(&info));
        let reasons: Vec<&str> = f.iter().map(|f| f.reason).collect();
        assert_eq!(
            reasons,
            ["NodeCertificateExpired", "NodeCertificateExpiring"]
        );
        assert!(
            f[0].summary.contains("kubelet-client-current.pem"),
            "{}",
            f[0].summary
        );
        assert!(
            f[0].summary.contains("expired 2 d 1 h ago"),
            "{}",
            f[0].summary
        );
        assert!(
            f[1].summary.contains("expires in 3 d 0 h"),
            "{}",
            f[1].summary
        );
    }

    #[test]
    fn an_apiserver_chain_within_a_week_of_expiry_is_named_with_its_address_and_a_healthy_one_is_not()
     {
        let ready = node(json!([{"type": "Ready", "status": "True"}]));
        let info = json!({"apiserverCertificate": {"address": "https://10.0.0.1:443/", "chain": [
            {"subject": "CN=kube-apiserver", "issuer": "CN=kubernetes",
             "notAfter": "2026-12-08T00:00:00Z", "expiresInSeconds": 2 * 86400 + 7200},
            {"subject": "CN=kubernetes", "issuer": "CN=kubernetes",
             "notAfter": "2036-12-08T00:00:00Z", "expiresInSeconds": 3650 * 86400}]}});
        let f = check(&ready, &inputs_with(&info));
        assert_eq!(
            f.iter().map(|f| f.reason).collect::<Vec<_>>(),
            ["ApiserverCertificateExpiring"]
        );
        assert_eq!(
            f[0].summary,
            "the apiserver at https://10.0.0.1:443/, as node n1 reaches it: its serving certificate (CN=kube-apiserver) expires in 2 d 2 h"
        );
        assert!(
            f[0].evidence[0]
                .message
                .contains("notAfter 2026-12-08T00:00:00Z")
        );

        let expired_ca = json!({"apiserverCertificate": {"address": "https://lb:6443", "chain": [
            {"subject": "CN=kube-apiserver", "issuer": "CN=kubernetes", "expiresInSeconds": 86400 * 300},
            {"subject": "CN=kubernetes", "issuer": "CN=kubernetes", "expiresInSeconds": -60}]}});
        let f = check(&ready, &inputs_with(&expired_ca));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].reason, "ApiserverCertificateExpired");
        assert!(
            f[0].summary
                .ends_with("its certificate chain's CN=kubernetes expired 1 min ago"),
            "{}",
            f[0].summary
        );

        let unreadable = json!({"apiserverCertificate": {"address": "https://lb:6443", "error": "connecting to lb:6443: refused"}});
        assert!(check(&ready, &inputs_with(&unreadable)).is_empty());
    }
}
