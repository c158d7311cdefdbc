//! Real Kubernetes for kdiag's tests: no mocks.
//!
//! - [`ControlPlane`] (level 1): etcd + kube-apiserver 1.20.2 on free loopback ports, with token
//!   auth and RBAC. Enough for everything that only needs the API.
//!
//! Each test binary shares one instance ([`control_plane`]); tests isolate themselves with a
//! fresh namespace ([`ControlPlane::create_namespace`]). The processes die with the test binary,
//! however it ends: they get SIGKILL from the kernel when it exits (PR_SET_PDEATHSIG), and the
//! run directory is removed at exit or, after a crash, by the next start.
//!
//! The Kubernetes binaries come from `hack/setup-cluster.sh` (run by `make test`), cached outside
//! the repository. A test that cannot get a control plane fails with the reason; it is never
//! skipped.

mod binaries;
mod control_plane;
mod error;
mod process;
mod rundir;

pub use binaries::Binaries;
pub use control_plane::{ControlPlane, control_plane};
pub use error::TestEnvError;

/// Installs rustls' ring crypto provider once, as kube's client needs exactly one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
