//! The runtime's errors, and the rule for kube errors: which apiserver failures are worth
//! retrying. The controller and the agent classify their own errors with [`kube_category`].

use kdiag_pipeline::{Category, http_status_category};

/// Why shared plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client could be built (no service account, no usable kubeconfig).
    #[error(
        "cannot reach Kubernetes: {source}. Run inside a pod with a service account, or set KUBECONFIG to a kubeconfig"
    )]
    NoClient {
        #[source]
        source: Box<kube::Error>,
    },
    /// A document of a manifest is not YAML, or not a Kubernetes object.
    #[error("document {index} of {source_name} is not valid YAML: {reason}")]
    ManifestParse {
        source_name: String,
        index: usize,
        reason: String,
    },
    /// The apiserver does not serve a manifest object's kind.
    #[error(
        "{kind} {name} in {source_name}: the apiserver does not serve {api_version} (are kdiag's CRDs installed?): {source}"
    )]
    ManifestDiscovery {
        source_name: String,
        kind: String,
        name: String,
        api_version: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// Server-side apply of a manifest object failed.
    #[error("applying {kind} {name} from {source_name}: {source}")]
    ManifestApply {
        source_name: String,
        kind: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// A request to a node API without a bearer token, or with one the apiserver did not accept.
    #[error(
        "{reason}. Send 'Authorization: Bearer <token>' with a token the cluster accepts (a user's token from kubeconfig, or a ServiceAccount's)"
    )]
    Unauthenticated { reason: String },
    /// The caller is known but may not do what it asked (docs/security.md, "The node API").
    #[error("{user} may not {right}{reason}. Grant it with RBAC; check with: {can_i} --as {user}")]
    Forbidden {
        user: String,
        right: String,
        can_i: String,
        /// The authorizer's reason, with a leading separator, or empty.
        reason: String,
    },
    /// The apiserver could not be asked who the caller is or what it may do: kdiag refuses
    /// (fails closed) until it can.
    #[error(
        "the request is refused because the apiserver could not be asked to check it ({review} failed: {source}); try again once the apiserver is reachable and the agent may create {review}s"
    )]
    ReviewFailed {
        review: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
}

impl Error {
    pub fn category(&self) -> Category {
        match self {
            Error::NoClient { source }
            | Error::ManifestDiscovery { source, .. }
            | Error::ManifestApply { source, .. }
            | Error::ReviewFailed { source, .. } => kube_category(source),
            Error::ManifestParse { .. }
            | Error::Unauthenticated { .. }
            | Error::Forbidden { .. } => Category::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.category() == Category::Transient
    }

    /// A bounded label for error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoClient { .. } => "no_client",
            Error::ManifestParse { .. } => "manifest_parse",
            Error::ManifestDiscovery { .. } => "manifest_discovery",
            Error::ManifestApply { .. } => "manifest_apply",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::Forbidden { .. } => "forbidden",
            Error::ReviewFailed { .. } => "review_failed",
        }
    }
}

/// Which kube errors are worth retrying:
///
/// - an answer of the apiserver: by its HTTP status ([`http_status_category`]: timeouts, 409
///   lost races, 429 load shedding and 5xx are transient; 4xx are the request's fault);
/// - no answer (the connection failed, was cut, or timed out; hyper and tower errors): transient;
/// - a credential that could not be read or refreshed now (`Auth`; a wrong one is a 401 answer):
///   transient;
/// - anything kdiag got wrong itself (a request it could not build, an answer it could not
///   parse, configuration, TLS setup): permanent.
pub fn kube_category(e: &kube::Error) -> Category {
    match e {
        kube::Error::Api(status) => http_status_category(status.code),
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::Auth(_) => Category::Transient,
        _ => Category::Permanent,
    }
}

/// True for the kube errors worth retrying ([`kube_category`]).
pub fn is_transient(e: &kube::Error) -> bool {
    kube_category(e) == Category::Transient
}

/// True when the apiserver answered 404 Not Found.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True when the apiserver refused a write for the object's size: 413 (its request limit, or
/// etcd's "request is too large"), or a message that says so.
pub fn is_too_large(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            let m = s.message.to_ascii_lowercase();
            s.code == 413 || m.contains("request is too large") || m.contains("too long")
        }
        _ => false,
    }
}

/// True when the apiserver answered 409 Conflict (a precondition failed, or it already exists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An error as the apiserver answers it.
    pub fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("m", "Reason").with_code(code),
        ))
    }

    #[test]
    fn an_apiserver_that_is_overloaded_unavailable_or_slow_is_retried() {
        for code in [429, 500, 503, 504] {
            assert!(is_transient(&api(code)), "{code}");
        }
    }

    #[test]
    fn a_write_that_lost_a_race_is_retried() {
        assert!(is_transient(&api(409)));
        assert!(is_conflict(&api(409)));
    }

    #[test]
    fn no_answer_at_all_is_retried() {
        assert!(is_transient(&kube::Error::Service(
            "connection refused".into()
        )));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_transient(&kube::Error::ReadEvents(io)));
    }

    #[test]
    fn refusals_and_missing_objects_are_recorded_not_retried() {
        for code in [400, 401, 403, 404, 422] {
            assert!(!is_transient(&api(code)), "{code}");
        }
        assert!(is_not_found(&api(404)));
    }

    #[test]
    fn what_kdiag_got_wrong_itself_is_permanent() {
        let parse = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(!is_transient(&kube::Error::SerdeError(parse)));
        assert!(!is_transient(&kube::Error::LinesCodecMaxLineLengthExceeded));
    }

    #[test]
    fn errors_of_the_runtime_take_the_category_of_their_cause() {
        let e = Error::ManifestApply {
            source_name: "x.yaml".into(),
            kind: "Pod".into(),
            name: "p".into(),
            source: Box::new(api(503)),
        };
        assert!(e.is_transient());
        assert_eq!(e.metric_label(), "manifest_apply");
        let e = Error::ManifestParse {
            source_name: "x.yaml".into(),
            index: 0,
            reason: "bad".into(),
        };
        assert!(!e.is_transient());
    }
}
