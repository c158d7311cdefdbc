//! kdiag-fleet: many clusters, one view (docs/fleet.md).
//!
//! - [`member`]: the link a managed cluster's controller dials OUT to the hub with (WebSocket
//!   over TLS, the hub's certificate checked against a configured CA, the cluster's own
//!   credential), sending heartbeats and every ProbeStatus change from a bounded queue.
//! - [`hub`]: `kdiag hub`, in the management cluster: authenticates each member, keeps its
//!   `Cluster` object (connected or offline, versions, node count, results summary) and stores
//!   its results per cluster.
//! - The pure parts, unit-tested without IO: [`protocol`] (the frames), [`outbox`] (the member's
//!   queue), [`credential`] (credentials and the hub's decision) and [`state`] (what the hub
//!   writes and when a cluster is offline).
//!
//! Depends on kdiag-api, kube, tokio-tungstenite and rustls; never on the controller (which
//! depends on this crate to run the member link).

pub mod credential;
pub mod hub;
pub mod member;
pub mod outbox;
pub mod protocol;
pub mod state;
pub mod tls;

use std::path::PathBuf;

/// The kdiag version members report and the hub shows.
pub const KDIAG_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What can go wrong in the fleet, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {reason}")]
    Tls { reason: String },
    #[error("no random bytes from the system for a credential")]
    Random,
    #[error("cannot listen on {addr}: {source} (another process on the port? choose another)")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the hub address {url:?}: {reason} (write it wss://HOST:PORT)")]
    HubUrl { url: String, reason: String },
    #[error("cannot reach the hub at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the hub at {addr} presented a certificate that does not verify against the CA in {ca_file}: {reason}; not connecting (check --fleet-hub-ca and the hub's certificate)"
    )]
    HubCertificate {
        addr: String,
        ca_file: PathBuf,
        reason: String,
    },
    #[error("the hub refused this cluster ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the link to the hub: {reason}")]
    Link { reason: String },
    #[error("the hub sent nothing for {seconds}s: reconnecting")]
    HubSilent { seconds: u64 },
    #[error("cannot {action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        source: Box<kube::Error>,
    },
}

impl Error {
    pub(crate) fn kube(action: &'static str, object: impl Into<String>, e: kube::Error) -> Self {
        Self::Kube {
            action,
            object: object.into(),
            source: Box::new(e),
        }
    }
}
