//! The controller's errors: a variant per step that can fail, carrying the object involved.
//!
//! [`Error::category`] decides what happens next: a transient error (the apiserver unavailable,
//! overloaded or slow, a write that lost a race) is retried soon; a permanent one (RBAC, an
//! object the apiserver refuses, a malformed request from a checker pod or Alertmanager) is
//! answered or logged with its message and retried only slowly, since it needs someone to act.
//! [`Error::metric_label`] labels `kdiag_controller_errors_total`.

use kdiag_pipeline::Category;
use kdiag_runtime::kube_category;

/// What admission, routing, the ProbeStatus write-back, the probe runner and trigger, and the
/// alert and report endpoints fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver request failed. `operation` is a short verb phrase ("get", "patch labels of")
    /// and also the `operation` label of `kdiag_controller_api_errors_total`; `object` is
    /// `Kind namespace/name`.
    #[error("{operation} {object}: {source}")]
    Kube {
        operation: &'static str,
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// A report's write into its ProbeStatus lost every race it ran (the 500 answer).
    #[error("ProbeStatus {probe} kept changing under the write; report again")]
    ReportContended { probe: String },
    /// The diagnosis of an Abnormal could not be written next to its probe result: the
    /// ProbeStatus kept changing under the write. Retried.
    #[error(
        "ProbeStatus {probe} kept changing under the write-back of Abnormal {abnormal}'s diagnosis; it is retried"
    )]
    WritebackContended { probe: String, abnormal: String },

    /// A probe report that is not KubeProber's payload (the 400 answer).
    #[error(
        "the body is not KubeProber's report payload ({reason}); expected {{\"probeName\", \"probeNamespace\", \"checkers\": [{{\"name\", \"status\", \"message\"}}]}}"
    )]
    ReportNotJson { reason: String },
    #[error(
        "probeName and probeNamespace must be set (the checker pod gets them as KUBEPROBER_PROBE_NAME and KUBEPROBER_PROBE_NAMESPACE)"
    )]
    ReportWithoutProbe,
    #[error("the report has no checkers")]
    ReportWithoutCheckers,
    #[error("checkers[{index}] has an empty name; name the check")]
    CheckerWithoutName { index: usize },
    /// Every checker of a report was refused (the 400 answer); a report with some good ones
    /// stores those and names the others in its answer and an Event.
    #[error("no checker of the report could be stored: {problems}")]
    ReportWithoutValidCheckers { problems: String },
    #[error("checker {checker:?} has status {status:?}; use PASS, INFO, WARN, UNKNOWN or ERROR")]
    CheckerStatusUnknown { checker: String, status: String },
    #[error("checker {checker:?} is {status} but has no message; say what failed")]
    CheckerWithoutMessage {
        checker: String,
        status: &'static str,
    },

    /// A report whose sender is not one of its probe's checker pods (the 403 answer).
    #[error(
        "{reason}; a report for probe {probe} is taken only from that probe's checker pods (kdiag's runner mounts their token, audience kdiag-probe-status, at the file KDIAG_PROBE_STATUS_TOKEN_FILE names), or from anyone when the controller runs with --probe-status-allow-unauthenticated (docs/probes.md)"
    )]
    ReportForbidden { probe: String, reason: String },
    /// A report or alert names nodes that are not Nodes of this cluster (the 422 answer).
    #[error(
        "{what} names {nodes}, which {verb} no Node of this cluster; nothing was created for it. Name a node `kubectl get nodes` lists"
    )]
    UnknownNodes {
        what: String,
        nodes: String,
        verb: &'static str,
    },
    /// The controller's alert token Secret could not be read or created at start.
    #[error(
        "the alert token Secret {secret}: {reason}. Create it (kubectl -n kube-diagnoser create secret generic kdiag-alert-token --from-literal=token=$(head -c 32 /dev/urandom | base64)) or grant the controller get/create on it (config/deploy/10-rbac.yaml)"
    )]
    AlertTokenSecret { secret: String, reason: String },

    /// An alert delivery that is not Alertmanager's API payload (the 400 answer).
    #[error(
        "the body is not a JSON array of alerts ({reason}); expected [{{\"labels\": {{\"alertname\": …}}, \"annotations\": {{}}, \"startsAt\": …}}]"
    )]
    AlertsNotJson { reason: String },
    #[error(
        "the body is not Alertmanager's webhook payload ({reason}); expected {{\"version\": \"4\", \"alerts\": […]}}"
    )]
    WebhookNotJson { reason: String },
    #[error("webhook payload version {version:?}; kdiag reads version 4")]
    WebhookVersion { version: String },
    #[error("alert {index} has no alertname label")]
    AlertWithoutName { index: usize },
    #[error("alert {index} has {field} {value:?}, which is not an RFC 3339 time")]
    AlertTime {
        index: usize,
        field: &'static str,
        value: String,
    },

    /// Storm control dropped a trigger: a budget of its source or node is spent.
    #[error("storm control: the {budget} budget is spent ({key})")]
    StormControl { budget: &'static str, key: String },

    /// The TLS check could not get the certificate an endpoint serves.
    #[error("cannot set up TLS: {reason}")]
    TlsSetup { reason: String },
    #[error("no connection within {seconds}s")]
    TlsConnectTimeout { seconds: u64 },
    #[error("cannot connect: {source}")]
    TlsConnect {
        #[source]
        source: std::io::Error,
    },
    #[error("not a server name: {reason}")]
    TlsServerName { reason: String },
    #[error("no TLS handshake within {seconds}s")]
    TlsHandshakeTimeout { seconds: u64 },
    #[error("TLS handshake failed: {source}")]
    TlsHandshake {
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate served")]
    TlsNoCertificate,

    /// The admission webhook's serving certificate could not be made or read.
    #[error(
        "the admission webhook's certificate: {reason}; if the Secret holding it is damaged, delete it and the controller makes a new one"
    )]
    WebhookCertificate { reason: String },
    /// The admission webhook's port is taken.
    #[error(
        "the admission webhook cannot listen on {addr}: {source} (choose a port with --webhook-port)"
    )]
    WebhookListen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The ValidatingWebhookConfiguration whose caBundle the controller keeps is not installed.
    #[error(
        "ValidatingWebhookConfiguration {name} does not exist: apply config/deploy/webhook.yaml (kubectl apply -k config/deploy), or start the controller with --webhook=off"
    )]
    WebhookConfigurationMissing { name: String },
    /// The controller could not join the leader election.
    #[error(
        "cannot join the leader election on Lease {lease}: {reason}; check that the controller may get, create and patch Leases in its namespace (config/deploy/10-rbac.yaml), or run a single replica with --leader-elect=false"
    )]
    LeaderElection { lease: String, reason: String },
}

impl Error {
    /// An apiserver error about `object` (`Kind namespace/name`).
    pub fn kube(operation: &'static str, object: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            operation,
            object: object.into(),
            source: Box::new(source),
        }
    }

    /// Retry soon (transient) or record and retry only slowly (permanent).
    pub fn category(&self) -> Category {
        match self {
            Error::Kube { source, .. } => kube_category(source),
            Error::ReportContended { .. } | Error::WritebackContended { .. } => Category::Transient,
            Error::TlsConnect { .. }
            | Error::TlsConnectTimeout { .. }
            | Error::TlsHandshake { .. }
            | Error::TlsHandshakeTimeout { .. } => Category::Transient,
            Error::WebhookCertificate { .. }
            | Error::WebhookListen { .. }
            | Error::WebhookConfigurationMissing { .. } => Category::Permanent,
            Error::LeaderElection { .. } => Category::Transient,
            Error::ReportNotJson { .. }
            | Error::ReportWithoutProbe
            | Error::ReportWithoutCheckers
            | Error::CheckerWithoutName { .. }
            | Error::ReportWithoutValidCheckers { .. }
            | Error::CheckerStatusUnknown { .. }
            | Error::CheckerWithoutMessage { .. }
            | Error::ReportForbidden { .. }
            | Error::UnknownNodes { .. }
            | Error::AlertTokenSecret { .. }
            | Error::AlertsNotJson { .. }
            | Error::WebhookNotJson { .. }
            | Error::WebhookVersion { .. }
            | Error::AlertWithoutName { .. }
            | Error::AlertTime { .. }
            | Error::StormControl { .. }
            | Error::TlsSetup { .. }
            | Error::TlsServerName { .. }
            | Error::TlsNoCertificate => Category::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.category() == Category::Transient
    }

    /// A bounded label for `kdiag_controller_errors_total` (never an object name).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { operation, .. } => operation,
            Error::ReportContended { .. } => "report_contended",
            Error::WritebackContended { .. } => "writeback_contended",
            Error::ReportNotJson { .. }
            | Error::ReportWithoutProbe
            | Error::ReportWithoutCheckers
            | Error::CheckerWithoutName { .. }
            | Error::ReportWithoutValidCheckers { .. }
            | Error::CheckerStatusUnknown { .. }
            | Error::CheckerWithoutMessage { .. } => "invalid_report",
            Error::ReportForbidden { .. } => "report_forbidden",
            Error::UnknownNodes { .. } => "unknown_node",
            Error::AlertTokenSecret { .. } => "alert_token_secret",
            Error::AlertsNotJson { .. }
            | Error::WebhookNotJson { .. }
            | Error::WebhookVersion { .. }
            | Error::AlertWithoutName { .. }
            | Error::AlertTime { .. } => "invalid_alerts",
            Error::StormControl { .. } => "storm_control",
            Error::TlsSetup { .. }
            | Error::TlsConnectTimeout { .. }
            | Error::TlsConnect { .. }
            | Error::TlsServerName { .. }
            | Error::TlsHandshakeTimeout { .. }
            | Error::TlsHandshake { .. }
            | Error::TlsNoCertificate => "tls_check",
            Error::WebhookCertificate { .. }
            | Error::WebhookListen { .. }
            | Error::WebhookConfigurationMissing { .. } => "webhook",
            Error::LeaderElection { .. } => "leader_election",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("m", "Reason").with_code(code),
        ))
    }

    #[test]
    fn an_apiserver_error_is_as_transient_as_its_cause() {
        assert!(Error::kube("get", "Pod a/b", api(503)).is_transient());
        assert!(Error::kube("get", "Pod a/b", api(409)).is_transient());
        assert!(!Error::kube("get", "Pod a/b", api(403)).is_transient());
        assert!(!Error::kube("get", "Pod a/b", api(404)).is_transient());
    }

    #[test]
    fn a_write_that_kept_losing_races_is_retried() {
        let e = Error::WritebackContended {
            probe: "p/k8s".into(),
            abnormal: "p/a".into(),
        };
        assert!(e.is_transient());
        assert!(
            Error::ReportContended {
                probe: "p/k8s".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn malformed_reports_and_alerts_are_refused_not_retried() {
        for e in [
            Error::ReportWithoutCheckers,
            Error::AlertWithoutName { index: 0 },
            Error::WebhookVersion {
                version: "3".into(),
            },
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }

    #[test]
    fn a_spent_budget_is_not_retried() {
        let e = Error::StormControl {
            budget: "node",
            key: "node:n1".into(),
        };
        assert!(!e.is_transient());
        assert_eq!(e.metric_label(), "storm_control");
    }

    #[test]
    fn metric_labels_name_the_step_never_the_object() {
        let e = Error::kube("patch labels of", "Abnormal team/secret-name", api(500));
        assert_eq!(e.metric_label(), "patch labels of");
        assert!(e.to_string().contains("team/secret-name"));
    }
}
