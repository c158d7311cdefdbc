//! Errors of kdiag's pure logic, and the one rule every kdiag crate uses to tell an error worth
//! retrying from one to record.
//!
//! Everything that fails here fails on its input (an Abnormal, an AbnormalSource, a plugin's
//! answer): retrying the same input fails the same way, so none of these errors is transient.
//! Their messages end up where the user reads them (a condition, a step's record) and say what
//! to change.

/// What a caller does with an error: retry it, or record it as the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The apiserver or a peer was unreachable, overloaded or slow, or a write lost a race:
    /// the same request may well succeed shortly. Retry with backoff (within a bound).
    Transient,
    /// The request itself is wrong, or not allowed, or what it names does not exist: retrying
    /// fails the same way until someone changes something. Record it (a Failed step, a rejected
    /// Abnormal, an HTTP 4xx answer) with its message.
    Permanent,
}

impl Category {
    /// The value of the `category` label of error metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Transient => "transient",
            Category::Permanent => "permanent",
        }
    }
}

/// The category of an HTTP status code a server (the apiserver, a plugin) answered.
///
/// Transient: 408 Request Timeout, 409 Conflict (a write that lost a race with another writer:
/// re-read and write again), 425 Too Early, 429 Too Many Requests (the apiserver's priority and
/// fairness sheds load this way), 500 (the apiserver reports etcd timeouts so), 502, 503, 504.
/// Everything else (400, 401, 403, 404, 410, 422, …) is the request's own fault.
pub fn http_status_category(code: u16) -> Category {
    match code {
        408 | 409 | 425 | 429 | 500 | 502 | 503 | 504 => Category::Transient,
        _ => Category::Permanent,
    }
}

/// Why pure checks fail. None is transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Admission refuses an Abnormal. `reason` is the CamelCase code written to status.reason;
    /// the message says what is wrong and what to set instead.
    #[error("{message}")]
    Rejected {
        reason: &'static str,
        message: String,
    },
    /// A pattern of an AbnormalSource template does not compile.
    #[error("{field}: {pattern:?} is not a valid regular expression: {reason}")]
    InvalidPattern {
        field: String,
        pattern: String,
        reason: String,
    },
    /// An AbnormalSource's type names a template it does not have.
    #[error("spec.sourceTemplate.type is {kind} but spec.sourceTemplate.{template} is missing")]
    MissingTemplate {
        kind: &'static str,
        template: &'static str,
    },
    /// A PrometheusAlert template that does not say which label holds the node.
    #[error(
        "spec.sourceTemplate.prometheusAlertTemplate.nodeNameReferenceLabel is empty: name the alert label that holds the node (such as node or instance)"
    )]
    MissingNodeLabel,
    /// A ProbeStatus template matching a checker status that opens no failure episode.
    #[error(
        "spec.sourceTemplate.probeStatusTemplate.match.statuses has {status:?}; a failure episode starts on ERROR, WARN or UNKNOWN"
    )]
    InvalidProbeStatus { status: String },
    /// An AbnormalSource of a type no trigger produces.
    #[error("spec.sourceTemplate.type must be KubernetesEvent, PrometheusAlert or ProbeStatus")]
    UnsupportedSourceType,
    /// A template without a single pattern would match every trigger of its kind.
    #[error(
        "spec.sourceTemplate has no pattern, so it would match every {what}; give at least one (for Events: reason or message)"
    )]
    MatchesEverything { what: &'static str },
    /// A plugin returned the Abnormal with a field changed that it must return as it was.
    #[error("changed {field}, which a plugin must return unchanged")]
    ChangedProtectedField { field: String },
}

impl Error {
    /// Pure checks fail on their input: never worth retrying.
    pub fn category(&self) -> Category {
        Category::Permanent
    }

    pub fn is_transient(&self) -> bool {
        self.category() == Category::Transient
    }

    /// The status.reason and message of an Abnormal that fails admission with this error.
    pub fn rejection(&self) -> (&'static str, String) {
        match self {
            Error::Rejected { reason, message } => (reason, message.clone()),
            other => ("InvalidAbnormal", other.to_string()),
        }
    }

    /// A bounded label for error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Rejected { .. } => "rejected",
            Error::InvalidPattern { .. }
            | Error::MissingTemplate { .. }
            | Error::MissingNodeLabel
            | Error::InvalidProbeStatus { .. }
            | Error::UnsupportedSourceType
            | Error::MatchesEverything { .. } => "invalid_source",
            Error::ChangedProtectedField { .. } => "plugin_protocol",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_overload_lost_races_and_server_errors_are_transient() {
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert_eq!(http_status_category(code), Category::Transient, "{code}");
        }
    }

    #[test]
    fn bad_requests_missing_objects_and_refusals_are_permanent() {
        for code in [400, 401, 403, 404, 405, 410, 413, 415, 422, 501] {
            assert_eq!(http_status_category(code), Category::Permanent, "{code}");
        }
    }

    #[test]
    fn what_fails_on_its_input_is_never_retried() {
        let errors = [
            Error::Rejected {
                reason: "MissingTarget",
                message: "m".into(),
            },
            Error::MissingNodeLabel,
            Error::ChangedProtectedField {
                field: "status.phase".into(),
            },
        ];
        for e in errors {
            assert!(!e.is_transient(), "{e}");
            assert_eq!(e.category().as_str(), "permanent");
        }
    }
}
