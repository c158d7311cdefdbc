//! Real Kubernetes for kdiag's tests: no mocks.
//!
//! - [`ControlPlane`] (level 1): etcd + kube-apiserver 1.20.2 on free loopback ports, with token
//!   auth and RBAC. Enough for everything that only needs the API.
//! - [`Cluster`] (level 2): the same control plane plus kube-controller-manager, kube-scheduler,
//!   a kubelet and containerd with a CNI bridge: a real single-node cluster whose pods run,
//!   crash, get OOM-killed and fail probes and pulls. Images are local ([`BUSYBOX_IMAGE`]).
//!
//! A test asks for the level it needs: [`control_plane`] or [`cluster`], each shared by the
//! tests of one test binary; [`ControlPlane::start`] and [`Cluster::start`] give an instance of
//! its own. Tests isolate themselves with a fresh namespace ([`ControlPlane::create_namespace`]).
//! The processes die with the test binary, however it ends: they get SIGKILL from the kernel when
//! it exits (PR_SET_PDEATHSIG), everything else of a run is removed at exit or, after a crash,
//! by the next start.
//!
//! The Kubernetes binaries come from `hack/setup-cluster.sh` (run by `make test`), cached outside
//! the repository. A test that cannot get a control plane fails with the reason; it is never
//! skipped.

mod binaries;
mod cluster;
mod control_plane;
mod error;
pub mod install;
mod kdiag_image;
mod link;
mod process;
mod rundir;

pub use binaries::{Binaries, NodeBinaries, cache_dir};
pub use cluster::{
    BUSYBOX_IMAGE, CONTAINERD_NAMESPACE, Cluster, ClusterOptions, FileContents, ImageFile,
    ImageSpec, PAUSE_IMAGE, cleanup_stale_runs, cluster,
};
pub use control_plane::{ControlPlane, control_plane};
pub use error::TestEnvError;
pub use kdiag_image::{KdiagImage, kdiag_image};
pub use link::Link;
pub use process::{ManagedProcess, tail as log_tail};

/// Installs rustls' ring crypto provider once, as kube's client needs exactly one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
