//! Native checks: what a probe can check without a checker image, run by kdiag itself and
//! reported as checkers of the Probe (an additive `spec.checks` extension). Each answers PASS,
//! WARN or ERROR with a message a person can act on.

mod dns;
mod endpoints;
mod etcd;
mod kube_checks;
mod tls;

use kdiag_api::{CheckerStatus, NativeCheck};
use kube::Client;

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: CheckerStatus,
    pub message: String,
}

impl Outcome {
    pub fn pass(message: impl Into<String>) -> Self {
        Self {
            status: CheckerStatus::Pass,
            message: message.into(),
        }
    }
    pub fn warn(message: impl Into<String>) -> Self {
        Self {
            status: CheckerStatus::Warn,
            message: message.into(),
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            status: CheckerStatus::Error,
            message: message.into(),
        }
    }
}

/// Runs one check. A check with no kind, or more than one, is reported as UNKNOWN: the probe is
/// broken, not its target.
pub async fn run(client: &Client, check: &NativeCheck) -> Outcome {
    let kinds = [
        check.apiserver.is_some(),
        check.dns.is_some(),
        check.namespace_round_trip.is_some(),
        check.nodes.is_some(),
        check.tls.is_some(),
        check.http.is_some(),
        check.tcp.is_some(),
        check.etcd.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Outcome {
            status: CheckerStatus::Unknown,
            message: format!(
                "check {:?} must set exactly one of apiserver, dns, namespaceRoundTrip, nodes, tls, http, tcp, etcd",
                check.name
            ),
        };
    }
    if let Some(c) = &check.apiserver {
        return kube_checks::apiserver(client, c).await;
    }
    if let Some(c) = &check.dns {
        return dns::check(c).await;
    }
    if let Some(c) = &check.namespace_round_trip {
        return kube_checks::namespace_round_trip(client, c).await;
    }
    if let Some(c) = &check.nodes {
        return kube_checks::nodes(client, c).await;
    }
    if let Some(c) = &check.tls {
        return tls::check(c).await;
    }
    if let Some(c) = &check.http {
        return endpoints::http(c).await;
    }
    if let Some(c) = &check.tcp {
        return endpoints::tcp(c).await;
    }
    if let Some(c) = &check.etcd {
        return etcd::check(c).await;
    }
    unreachable!("exactly one kind is set")
}

fn seconds(v: Option<i32>, default: u64) -> std::time::Duration {
    std::time::Duration::from_secs(v.filter(|s| *s > 0).map(|s| s as u64).unwrap_or(default))
}
