//! What the cluster touches on the machine outside its run directory, and the checks that the
//! machine can host it.
//!
//! Outside the run directory there is, per run: the CNI bridge, the run's cgroup, the kubelet's
//! pod logs in /var/log/pods and /var/log/containers (a path kubelet 1.20 hard-codes) and CNI's
//! result cache in /var/lib/cni/results. Shared by all runs on the machine: the sysctls the
//! kubelet sets at start (it "protects" kernel defaults by changing them), its device-plugin
//! socket in /var/lib/kubelet/device-plugins (also hard-coded) and a few empty directories.
//! The per-run things go with the run; the shared ones go with the last run of the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{TestEnvError, rundir};

/// Where every image pull goes: a port nothing listens on, so pulls of images that are not
/// loaded fail at once, locally, with "connection refused".
pub(crate) const PULL_ENDPOINT: &str = "127.0.0.1:9";

/// The sysctls kubelet 1.20 sets when it starts (`setupKernelTunables`), and the one the CNI
/// bridge plugin sets at the first pod (a gateway bridge turns on forwarding).
const KUBELET_SYSCTLS: [&str; 7] = [
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
const POD_LOGS: &str = "/var/log/pods";
const CONTAINER_LOGS: &str = "/var/log/containers";
const CNI_CACHE: &str = "/var/lib/cni";
const KUBELET_DEFAULT_ROOT: &str = "/var/lib/kubelet";

/// The node name (the machine's hostname, as the kubelet would choose it) and the loopback
/// address it resolves to, where the kubelet listens.
pub(crate) fn node_identity() -> Result<(String, Ipv4Addr), TestEnvError> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| TestEnvError::UnsupportedHost {
            reason: format!("cannot read the hostname: {e}"),
        })?
        .trim()
        .to_lowercase();
    let resolved: Vec<IpAddr> = (hostname.as_str(), 0)
        .to_socket_addrs()
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default();
    let loopback_v4 = resolved.iter().find_map(|ip| match *ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some(v4),
        _ => None,
    });
    match loopback_v4 {
        Some(v4) if resolved.iter().all(IpAddr::is_loopback) => Ok((hostname, v4)),
        _ => Err(TestEnvError::HostnameNotLoopback {
            resolved: if resolved.is_empty() {
                "nothing".into()
            } else {
                format!("{resolved:?}")
            },
            hostname,
        }),
    }
}

/// Fails unless connecting to [`PULL_ENDPOINT`] is refused.
pub(crate) fn require_closed_pull_endpoint() -> Result<(), TestEnvError> {
    let addr: SocketAddr = PULL_ENDPOINT.parse().expect("a valid socket address");
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        _ => Err(TestEnvError::PullEndpointOpen {
            endpoint: PULL_ENDPOINT.into(),
        }),
    }
}

/// Picks a /24 for the pod network that no route of this machine overlaps and no other run has
/// chosen, in 10.200.0.0–10.254.255.0.
pub(crate) fn choose_pod_subnet(taken_by_runs: &[String]) -> Result<String, TestEnvError> {
    let routes = ipv4_routes();
    for _ in 0..200 {
        let r = crate::control_plane::random_hex(2);
        let n = u16::from_str_radix(&r, 16).unwrap_or(0);
        let (a, b) = (200 + (n >> 8) as u8 % 55, (n & 0xff) as u8);
        let candidate = u32::from(Ipv4Addr::new(10, a, b, 0));
        let overlaps = routes.iter().any(|(dest, mask)| {
            let common = mask & 0xffff_ff00;
            dest & common == candidate & common
        });
        let subnet = format!("10.{a}.{b}.0/24");
        if !overlaps && !taken_by_runs.contains(&subnet) {
            return Ok(subnet);
        }
    }
    Err(TestEnvError::Other(
        "no free /24 in 10.200.0.0/8..10.254.255.0 for the pod network".into(),
    ))
}

/// (destination, mask) of every IPv4 route, from /proc/net/route.
fn ipv4_routes() -> Vec<(u32, u32)> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    // The kernel prints the addresses as the hex of their in-memory (network order) u32.
    let parse = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| u32::from(Ipv4Addr::from(v.to_ne_bytes())))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((parse(f.get(1)?)?, parse(f.get(7)?)?))
        })
        .filter(|(_, mask)| *mask != 0) // the default route overlaps everything by design
        .collect()
}

pub(crate) fn link_exists(name: &str) -> bool {
    !name.is_empty() && Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a network interface (the run's bridge) if it exists.
pub(crate) fn delete_link(ip: &Path, name: &str) -> Vec<String> {
    if !link_exists(name) {
        return Vec::new();
    }
    let out = std::process::Command::new(ip)
        .args(["link", "delete", name])
        .output();
    match out {
        Ok(o) if o.status.success() || !link_exists(name) => Vec::new(),
        Ok(o) => vec![format!(
            "bridge {name}: ip link delete: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )],
        Err(e) => vec![format!("bridge {name}: {e}")],
    }
}

/// Processes whose command line has `arg` as one of its arguments (the shims name their
/// containerd socket with `-address <socket>`), and every descendant of those.
pub(crate) fn processes_with_arg_and_descendants(arg: &str) -> BTreeSet<i32> {
    let mut parents: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    let mut matched = BTreeSet::new();
    for pid in all_pids() {
        if let Some(ppid) = kdiag_procstat::parent(Path::new("/proc"), pid) {
            parents.entry(ppid).or_default().push(pid);
        }
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        {
            matched.insert(pid);
        }
    }
    let mut all = matched.clone();
    let mut todo: Vec<i32> = matched.into_iter().collect();
    while let Some(p) = todo.pop() {
        for child in parents.get(&p).into_iter().flatten() {
            if all.insert(*child) {
                todo.push(*child);
            }
        }
    }
    all
}

pub(crate) fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    kdiag_procstat::alive(Path::new("/proc"), pid)
}

/// Removes the kubelet's log directories of these pods (`/var/log/pods/<ns>_<name>_<uid>`) and
/// the `/var/log/containers` links into them.
pub(crate) fn remove_pod_logs(pod_uids: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut removed: Vec<PathBuf> = Vec::new();
    for entry in read_dir(POD_LOGS) {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
        if name
            .as_deref()
            .and_then(|n| n.rsplit('_').next())
            .is_some_and(|uid| pod_uids.contains(uid))
        {
            if let Err(e) = std::fs::remove_dir_all(&entry) {
                problems.push(format!("pod logs {}: {e}", entry.display()));
            }
            removed.push(entry);
        }
    }
    for link in read_dir(CONTAINER_LOGS) {
        if let Ok(target) = std::fs::read_link(&link)
            && removed.iter().any(|d| target.starts_with(d))
        {
            let _ = std::fs::remove_file(&link);
        }
    }
    problems
}

/// Removes the kubelet's log directories of pods no live run has any more: a pod deleted shortly
/// before its run stopped is gone from the kubelet's root (where [`remove_pod_logs`] finds the
/// run's pods) before the kubelet's garbage collection, once a minute, removed its logs. Only on
/// a machine without a kubelet of its own (no `/var/lib/kubelet/pods`), whose every pod log
/// directory is a test run's.
pub(crate) fn remove_orphaned_pod_logs(live_pod_uids: &BTreeSet<String>) -> Vec<String> {
    if Path::new(KUBELET_DEFAULT_ROOT).join("pods").exists() {
        return Vec::new();
    }
    let orphans: BTreeSet<String> = read_dir(POD_LOGS)
        .iter()
        .filter_map(|d| {
            d.file_name()?
                .to_str()?
                .rsplit('_')
                .next()
                .map(str::to_owned)
        })
        .filter(|uid| !live_pod_uids.contains(uid))
        .collect();
    remove_pod_logs(&orphans)
}

/// Removes CNI's cached results of this run: its own network's and the loopback network's of
/// its sandboxes.
pub(crate) fn remove_cni_cache(network: &str, sandbox_ids: &BTreeSet<String>) {
    let results = Path::new(CNI_CACHE).join("results");
    for entry in read_dir(&results) {
        let Some(name) = entry.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let ours = name.starts_with(&format!("{network}-"))
            || sandbox_ids
                .iter()
                .any(|id| name == format!("cni-loopback-{id}-lo"));
        if ours {
            let _ = std::fs::remove_file(&entry);
        }
    }
}

fn read_dir(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn sysctl_snapshot() -> PathBuf {
    rundir::base().join("sysctls-before-kubelet")
}

/// Records the kubelet's sysctls as they are before the first kubelet of the machine changes
/// them. Later runs keep the first record.
pub(crate) fn save_sysctls_once() -> Result<(), TestEnvError> {
    let file = sysctl_snapshot();
    if file.exists() {
        return Ok(());
    }
    let mut text = String::new();
    for name in KUBELET_SYSCTLS {
        if let Ok(v) = std::fs::read_to_string(Path::new("/proc/sys").join(name)) {
            text.push_str(&format!("{name}={}\n", v.trim()));
        }
    }
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(TestEnvError::io(&tmp))?;
    std::fs::rename(&tmp, &file).map_err(TestEnvError::io(&file))
}

/// Undoes what every run of the machine shared, once the last one is gone: the sysctls, the
/// kubelet's device-plugin socket and the empty directories the components created.
pub(crate) fn restore_shared_state() -> Vec<String> {
    let mut problems = Vec::new();
    let file = sysctl_snapshot();
    if let Ok(text) = std::fs::read_to_string(&file) {
        for line in text.lines() {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            if !KUBELET_SYSCTLS.contains(&name) {
                continue;
            }
            if let Err(e) = std::fs::write(Path::new("/proc/sys").join(name), value) {
                problems.push(format!("sysctl {name}={value}: {e}"));
            }
        }
        let _ = std::fs::remove_file(&file);
    }
    // Only when /var/lib/kubelet holds nothing but what a kubelet with another --root-dir puts
    // there: a real node's kubelet directory is never touched.
    let plugins = Path::new(KUBELET_DEFAULT_ROOT).join("device-plugins");
    let only_ours = read_dir(KUBELET_DEFAULT_ROOT) == vec![plugins.clone()]
        && read_dir(&plugins).iter().all(|p| {
            p.file_name()
                .is_some_and(|n| n == "kubelet.sock" || n == "DEPRECATION")
        });
    if only_ours {
        for f in read_dir(&plugins) {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir(&plugins);
        let _ = std::fs::remove_dir(KUBELET_DEFAULT_ROOT);
    }
    // Empty directories only: remove_dir fails on anything that is in use.
    for dir in [
        "/var/lib/cni/results",
        CNI_CACHE,
        "/run/containerd/s",
        "/run/containerd",
        CONTAINER_LOGS,
        POD_LOGS,
    ] {
        let _ = std::fs::remove_dir(dir);
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chosen_subnet_avoids_the_ones_other_runs_hold() {
        let first = super::choose_pod_subnet(&[]).unwrap();
        assert!(
            first.starts_with("10.2") && first.ends_with(".0/24"),
            "{first}"
        );
        for _ in 0..20 {
            assert_ne!(
                super::choose_pod_subnet(std::slice::from_ref(&first)).unwrap(),
                first
            );
        }
    }
}
