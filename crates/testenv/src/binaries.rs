//! Where the Kubernetes and etcd binaries are.

use std::path::{Path, PathBuf};

use crate::TestEnvError;

/// The Kubernetes version the binaries are built from.
pub const KUBERNETES_VERSION: &str = "1.20.2";
/// Must match BUILD_REVISION in hack/setup-cluster.sh.
const BUILD_REVISION: u32 = 1;

/// Paths of the binaries a test environment runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubelet: PathBuf,
    /// Only a cluster started with [`ClusterOptions::kube_proxy`](crate::ClusterOptions) runs it.
    pub kube_proxy: PathBuf,
}

impl Binaries {
    /// The cached build: `$KDIAG_K8S_BIN_DIR`, else
    /// `${KDIAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kdiag}/kubernetes-<version>-r<rev>/bin`.
    pub fn locate() -> Result<Self, TestEnvError> {
        let dir = match std::env::var_os("KDIAG_K8S_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => cache_dir().join(format!(
                "kubernetes-{KUBERNETES_VERSION}-r{BUILD_REVISION}/bin"
            )),
        };
        let etcd = std::env::var_os("KDIAG_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/bin/etcd".into());
        let bins = Self {
            etcd,
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kube_scheduler: dir.join("kube-scheduler"),
            kubelet: dir.join("kubelet"),
            kube_proxy: dir.join("kube-proxy"),
        };
        Ok(bins)
    }

    /// Fails with what to run when a binary is missing.
    pub(crate) fn require(path: &Path) -> Result<(), TestEnvError> {
        if path.is_file() {
            Ok(())
        } else {
            Err(TestEnvError::MissingBinary {
                binary: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: path.to_owned(),
            })
        }
    }
}

/// The node's runtime pieces of the level-2 cluster, all from Debian packages (`containerd`,
/// `runc`, `containernetworking-plugins`, `busybox-static`, `iproute2`), installed by
/// `hack/setup-cluster.sh`.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    pub containerd: PathBuf,
    /// containerd finds its shim through `PATH`; required here so a missing one fails at start
    /// rather than at the first pod.
    pub containerd_shim: PathBuf,
    pub runc: PathBuf,
    pub ctr: PathBuf,
    /// The static busybox every local image is made of.
    pub busybox: PathBuf,
    /// Where the CNI plugins (bridge, host-local, loopback) live.
    pub cni_bin_dir: PathBuf,
    pub ip: PathBuf,
}

impl NodeBinaries {
    /// Debian's paths; `KDIAG_BUSYBOX` and `KDIAG_CNI_BIN_DIR` override the two that vary most.
    pub fn locate() -> Self {
        let env_or = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| default.into())
        };
        Self {
            containerd: "/usr/bin/containerd".into(),
            containerd_shim: "/usr/bin/containerd-shim-runc-v2".into(),
            runc: "/usr/sbin/runc".into(),
            ctr: "/usr/bin/ctr".into(),
            busybox: env_or("KDIAG_BUSYBOX", "/bin/busybox"),
            cni_bin_dir: env_or("KDIAG_CNI_BIN_DIR", "/usr/lib/cni"),
            ip: "/usr/sbin/ip".into(),
        }
    }

    /// Fails with what to run when any piece is missing.
    pub(crate) fn require_all(&self) -> Result<(), TestEnvError> {
        for path in [
            &self.containerd,
            &self.containerd_shim,
            &self.runc,
            &self.ctr,
            &self.busybox,
            &self.ip,
        ] {
            Binaries::require(path)?;
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            Binaries::require(&self.cni_bin_dir.join(plugin))?;
        }
        Ok(())
    }
}

/// kdiag's cache directory, outside any repository.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KDIAG_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("kdiag")
}
