//! Everything that names one run — paths, bridge, cgroup, subnet, process ids — and its record
//! on disk (`cluster.json` in the run directory).
//!
//! The record is written before any of those things exists and rewritten after each process
//! starts. When a run dies without cleaning up (SIGKILL, power loss of the test binary), the
//! next start reads it and finishes the job: see teardown.rs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TestEnvError;

pub(crate) const RECORD_FILE: &str = "cluster.json";
/// Where containerd 1.6 puts shim sockets, whatever its state directory.
pub(crate) const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub dir: PathBuf,
    /// Short random hex naming the run's bridge, cgroup and CNI network.
    pub id: String,
    pub pod_subnet: String,
    #[serde(default)]
    pub processes: Vec<RecordedProcess>,
    /// Whether the run runs kube-proxy, whose iptables chains and sysctl are machine-wide
    /// (kube_proxy.rs).
    #[serde(default)]
    pub kube_proxy: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RecordedProcess {
    pub name: String,
    pub pid: i32,
    /// Start time in clock ticks (field 22 of /proc/<pid>/stat), so a reused pid is not killed.
    pub start_time: String,
}

impl RunRecord {
    pub fn new(dir: PathBuf, id: String, pod_subnet: String) -> Self {
        Self {
            dir,
            id,
            pod_subnet,
            processes: Vec::new(),
            kube_proxy: false,
        }
    }

    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(RECORD_FILE)).ok()?;
        let record: Self = serde_json::from_str(&text).ok()?;
        // Never act on a record that names another directory or an id we would not generate:
        // it decides what gets killed and removed.
        (record.dir == dir && valid_id(&record.id)).then_some(record)
    }

    pub fn write(&self) -> Result<(), TestEnvError> {
        let path = self.dir.join(RECORD_FILE);
        let tmp = self.dir.join(format!("{RECORD_FILE}.tmp"));
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| TestEnvError::Other(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(TestEnvError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(TestEnvError::io(&path))
    }

    // --- names -------------------------------------------------------------------------

    /// The run's cgroup in every hierarchy, relative to the hierarchy root; the kubelet's
    /// `cgroupRoot` is `/` + this.
    pub fn cgroup(&self) -> String {
        format!("kdiag-{}", self.id)
    }

    /// containerd's cgroup, under the run's.
    pub fn runtime_cgroup(&self) -> String {
        format!("{}/runtime", self.cgroup())
    }

    /// The CNI bridge; interface names have at most 15 characters.
    pub fn bridge(&self) -> String {
        format!("kdiag{}", self.id)
    }

    pub fn cni_network(&self) -> String {
        format!("kdiag-{}", self.id)
    }

    /// The bridge's own address, the pods' gateway: the first address of the pod subnet
    /// (host-local's default gateway).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        let network = self.pod_subnet.split('/').next().unwrap_or_default();
        let base = network
            .parse::<std::net::Ipv4Addr>()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        std::net::Ipv4Addr::from(u32::from(base) + 1)
    }

    // --- paths -------------------------------------------------------------------------

    pub fn containerd_dir(&self) -> PathBuf {
        self.dir.join("containerd")
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }

    pub fn containerd_root(&self) -> PathBuf {
        self.containerd_dir().join("root")
    }

    pub fn containerd_state(&self) -> PathBuf {
        self.containerd_dir().join("state")
    }

    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }

    /// runc's state (`--root`), instead of the machine-wide /run/containerd/runc.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni").join("net.d")
    }

    /// host-local IPAM's allocations, instead of the machine-wide /var/lib/cni/networks.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("cni").join("ipam")
    }

    /// Where containerd keeps the pods' network namespaces (`netns_mounts_under_state_dir`).
    pub fn netns_dir(&self) -> PathBuf {
        self.containerd_state()
            .join("io.containerd.grpc.v1.cri")
            .join("netns")
    }

    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet-config.yaml")
    }

    pub fn kube_proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy-config.yaml")
    }

    pub fn volume_plugin_dir(&self) -> PathBuf {
        self.dir.join("volume-plugins")
    }

    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    /// Sandbox ids containerd knows of (for CNI's loopback cache entries).
    pub fn sandbox_ids(&self) -> std::collections::BTreeSet<String> {
        [self.containerd_root(), self.containerd_state()]
            .iter()
            .map(|d| d.join("io.containerd.grpc.v1.cri").join("sandboxes"))
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect()
    }

    /// The sockets of this run's shims. containerd 1.6 puts them in the machine-wide
    /// /run/containerd/s/ (named by a hash of socket, namespace and container id); a shim that is
    /// killed leaves its socket there. Each bundle directory records its shim's address.
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        let tasks = self
            .containerd_state()
            .join("io.containerd.runtime.v2.task");
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|ns| std::fs::read_dir(ns.path()).into_iter().flatten().flatten())
            .filter_map(|bundle| std::fs::read_to_string(bundle.path().join("address")).ok())
            .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")))
            // Never remove anything else, whatever the file says.
            .filter(|p| p.parent() == Some(Path::new(SHIM_SOCKET_DIR)))
            .collect()
    }

    /// Uids of the pods the kubelet has directories for.
    pub fn pod_uids(&self) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(self.kubelet_root().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect()
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    (4..=10).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_fit_the_kernel_limits_and_carry_the_id() {
        let r = RunRecord::new("/tmp/x".into(), "0a1b2c".into(), "10.200.1.0/24".into());
        assert!(r.bridge().len() <= 15, "{}", r.bridge());
        assert_eq!(r.cgroup(), "kdiag-0a1b2c");
        assert_eq!(r.runtime_cgroup(), "kdiag-0a1b2c/runtime");
        assert!(r.containerd_socket().starts_with("/tmp/x"));
        assert_eq!(r.gateway(), std::net::Ipv4Addr::new(10, 200, 1, 1));
    }

    #[test]
    fn a_record_that_names_another_directory_is_ignored() {
        let dir = std::env::temp_dir().join(format!("kdiag-record-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        RunRecord::new("/elsewhere".into(), "0a1b2c".into(), String::new()).write_to_test(&dir);
        assert!(RunRecord::read(&dir).is_none());
        RunRecord::new(dir.clone(), "0a1b2c".into(), String::new())
            .write()
            .unwrap();
        assert_eq!(RunRecord::read(&dir).unwrap().id, "0a1b2c");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    impl RunRecord {
        fn write_to_test(&self, dir: &Path) {
            std::fs::write(dir.join(RECORD_FILE), serde_json::to_vec(self).unwrap()).unwrap();
        }
    }
}
