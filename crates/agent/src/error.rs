//! The agent's errors: a variant per step that can fail, carrying the object involved, with a
//! message that says what to do.
//!
//! [`Error::category`] decides what happens next:
//! - working on an Abnormal (reading it, writing its status): every error stops the reconcile,
//!   which is retried with per-object backoff;
//! - running a step: a transient error (the apiserver unavailable or slow while resolving a
//!   plugin's Service, Endpoints or Secret; a plugin not accepting connections; a Service with
//!   no ready endpoint yet) is retried with backoff within the step's time, then recorded; a
//!   permanent one (a registration that cannot work, a refused read, a plugin's bad answer) is
//!   recorded at once as the step's Failed result, with its message.
//!
//! [`Error::metric_label`] labels `kdiag_agent_errors_total`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kdiag_api::NamespacedName;
use kdiag_pipeline::Category;
use kdiag_runtime::kube_category;

use crate::plugin::PluginError;

/// A processor registration, as messages name it: `Kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub kind: &'static str,
    /// namespace/name.
    pub name: String,
}

impl Registration {
    pub fn new(kind: &'static str, name: &NamespacedName) -> Self {
        Self {
            kind,
            name: name.to_string(),
        }
    }
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// Why the agent could not do something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Working on an Abnormal: the reconcile stops and is retried with backoff.
    /// An apiserver request about the Abnormal being worked on failed.
    #[error("{operation} of Abnormal {abnormal} failed: {source}")]
    Api {
        abnormal: String,
        operation: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    /// A step's result could not be written: the Abnormal kept changing under the writes.
    #[error("Abnormal {0} kept changing under the agent's writes; retrying later")]
    Conflict(String),

    // Resolving a processor registration into something to call.
    #[error(
        "{registration} has no externalIP, externalPort or service, so it names a built-in processor, but kdiag has no built-in called {name:?}; built-ins are: {builtins}"
    )]
    UnknownBuiltin {
        registration: Registration,
        name: String,
        builtins: String,
    },
    #[error(
        "{registration} is registered outside this Abnormal's namespace {namespace} and outside kube-diagnoser, so it may not serve it; register the processor in {namespace}"
    )]
    OutOfNamespace {
        registration: String,
        namespace: String,
    },
    #[error("{registration} has scheme {scheme:?}; use http or https")]
    UnsupportedScheme {
        registration: Registration,
        scheme: String,
    },
    #[error("{registration} has externalPort {port}, which is not a port number")]
    InvalidPort {
        registration: Registration,
        port: String,
    },
    #[error("{registration} sets both service and externalIP/externalPort; set one of them")]
    ServiceAndAddress { registration: Registration },
    #[error(
        "{registration} sets only one of externalIP and externalPort; set both, or neither for a built-in"
    )]
    HalfAddress { registration: Registration },
    #[error("{registration}: Service {service}: {source}")]
    ReadService {
        registration: Registration,
        service: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{registration}: Service {service} has no port {port}")]
    NoServicePort {
        registration: Registration,
        service: String,
        port: i32,
    },
    #[error("{registration}: Endpoints of Service {service}: {source}")]
    ReadEndpoints {
        registration: Registration,
        service: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// No pod behind the Service is ready (yet): a plugin starting or restarting.
    #[error("{registration}: Service {service} has no ready endpoint for port {port}")]
    NoReadyEndpoint {
        registration: Registration,
        service: String,
        port: i32,
    },
    #[error(
        "{registration}: {field}: reading Secret {secret}: {source} (the agent may read Secrets only in namespaces its Role allows; see docs/security.md)"
    )]
    ReadSecret {
        registration: Registration,
        field: &'static str,
        secret: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{registration}: {field}: Secret {secret} has no key {key:?}")]
    SecretKeyMissing {
        registration: Registration,
        field: &'static str,
        secret: String,
        key: String,
    },
    #[error("{registration}: {field}: Secret {secret} key {key:?} is not UTF-8 text")]
    SecretNotText {
        registration: Registration,
        field: &'static str,
        secret: String,
        key: String,
    },
    #[error("{registration}: cannot resolve {host}")]
    Unresolvable {
        registration: Registration,
        host: String,
    },
    /// Resolving did not finish in the time the step had left.
    #[error(
        "{registration}: resolving its address did not finish within {timeout:?} (is the apiserver or DNS slow?)"
    )]
    ResolveTimeout {
        registration: Registration,
        timeout: Duration,
    },

    // Calling an HTTP plugin.
    #[error(transparent)]
    Plugin(#[from] PluginError),

    // Profilers: the error becomes the profiler's status.error.
    #[error("the Java profiler did not finish within its timeout of {seconds}s (timeoutSeconds)")]
    JavaTimeout { seconds: u64 },
    #[error("a profiler needs exactly one of go and java")]
    ProfilerKind,
    #[error("go.source {url:?} is not a URL: {reason}")]
    GoSourceNotUrl { url: String, reason: String },
    #[error("go.source {url:?} must be an http or https URL of a pprof endpoint")]
    GoSourceScheme { url: String },
    #[error(
        "go.source {path:?} names a file on the node, which this agent reads only under the directories of its --go-profile-dir (KDIAG_GO_PROFILE_DIRS), and {allowed}; to allow it, add the directory holding the file to the agent's --go-profile-dir (docs/profilers.md#a-pprof-file-on-the-node)"
    )]
    GoFileNotAllowed { path: String, allowed: String },
    #[error("go.source {path:?} is not a usable file path: {why}")]
    GoFilePath { path: String, why: &'static str },
    #[error("go.source {path} is not a regular file on this node")]
    GoFileNotRegular { path: String },
    #[error("building an HTTP client: {reason}")]
    HttpClient { reason: String },
    #[error("fetching {url}: {reason}")]
    GoFetch { url: String, reason: String },
    #[error("{url} answered HTTP {code}")]
    GoStatus { url: String, code: u16 },
    #[error(
        "a Go profiler fetches only from the Abnormal's pod, and spec.podReference names none; name the pod whose pprof endpoint go.source ({url}) is"
    )]
    GoNoPod { url: String },
    #[error(
        "go.source {url} is not an address of pod {pod} (its IPs: {addresses}); a Go profiler fetches only from the Abnormal's own pod, by IP"
    )]
    GoTargetNotPod {
        url: String,
        pod: String,
        addresses: String,
    },
    #[error(
        "pod {pod} uses the node's network, so go.source may use only a port its containers declare ({ports}), not {port} ({url}); declare the pprof port in the pod's spec"
    )]
    GoUndeclaredPort {
        url: String,
        pod: String,
        port: u16,
        ports: String,
    },
    #[error(
        "{url} answered HTTP {code}, a redirect to {location}; redirects are not followed: set go.source to the pprof endpoint itself, on the Abnormal's pod"
    )]
    GoRedirect {
        url: String,
        code: u16,
        location: String,
    },
    #[error("reading {url}: {reason}")]
    GoRead { url: String, reason: String },
    #[error("{url} sent more than the {limit} bytes this profile may take ({why})")]
    GoTooLarge {
        url: String,
        limit: u64,
        why: &'static str,
    },
    #[error(
        "no room for this profile: {which}; profiles go when they expire (expirationSeconds) or when their Abnormal is deleted"
    )]
    ProfileQuota { which: String },
    /// A file of the profile store (or of a copy) could not be created, written or read.
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("renaming {} to {}: {error}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{} is not under the profiles directory", path.display())]
    NotUnderProfiles { path: PathBuf },
    #[error(
        "Java profiling (type Arthas) needs jcmd (a JDK) in the agent's PATH, and none was found; run the agent from an image with a JDK, or use type MemoryAnalyzer with a heap dump the JVM wrote (-XX:+HeapDumpOnOutOfMemoryError)"
    )]
    JcmdMissing,
    #[error("jcmd could not attach to any JVM: {failures}{hint}")]
    JcmdAttach { failures: String, hint: String },
    #[error("no Java process found: searched {searched}")]
    NoJvm { searched: String },
    #[error(
        "java.hprofFilePath must be the absolute path of an HPROF file for type MemoryAnalyzer"
    )]
    HprofPathRelative,
    #[error("no process found to read the HPROF file through: searched {searched}")]
    NoProcessForHprof { searched: String },
    #[error("no HPROF file: looked for {looked}")]
    NoHprof { looked: String },
    #[error(
        "{what} is {size} bytes, more than the {limit} kdiag copies; copy it yourself (kubectl cp) and open it in Eclipse MAT"
    )]
    HprofTooLarge { what: String, size: u64, limit: u64 },
    #[error("copying {what} did not finish within the profiler's timeout")]
    HprofCopyTimeout { what: String },
    #[error("{} is not an HPROF file ({why})", path.display())]
    NotHprof { path: PathBuf, why: &'static str },
    #[error("java.pid {pid} is not a process id")]
    InvalidPid { pid: i32 },
    #[error("process {pid} does not exist on this node")]
    NoSuchProcess { pid: i32 },
    #[error(
        "no target JVM: set spec.podReference (the pod running Java) or the profiler's java.pid (a host pid)"
    )]
    NoTarget,
    #[error("cannot look up pod {pod}: this agent has no API client")]
    NoClient { pod: String },
    #[error("looking up pod {pod} took longer than {timeout:?}")]
    PodLookupTimeout { pod: String, timeout: Duration },
    #[error("looking up pod {pod}: {source}")]
    PodLookup {
        pod: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("pod {pod} runs on node {pod_node}, not on {node} where this profiler runs")]
    PodElsewhere {
        pod: String,
        pod_node: String,
        node: String,
    },
    #[error(
        "container {container} of pod {pod} has no container ID (not started, or no such container)"
    )]
    NoContainerId { pod: String, container: String },
    #[error("scanning processes: {reason}")]
    ProcessScan { reason: String },
}

impl Error {
    /// Retry (transient) or record (permanent); see the module's documentation.
    pub fn category(&self) -> Category {
        use Error::*;
        match self {
            Api { source, .. } => kube_category(source),
            Conflict(_) => Category::Transient,
            ReadService { source, .. }
            | ReadEndpoints { source, .. }
            | ReadSecret { source, .. }
            | PodLookup { source, .. } => kube_category(source),
            NoReadyEndpoint { .. }
            | Unresolvable { .. }
            | ResolveTimeout { .. }
            | PodLookupTimeout { .. } => Category::Transient,
            Plugin(e) => e.category(),
            UnknownBuiltin { .. }
            | OutOfNamespace { .. }
            | UnsupportedScheme { .. }
            | InvalidPort { .. }
            | ServiceAndAddress { .. }
            | HalfAddress { .. }
            | NoServicePort { .. }
            | SecretKeyMissing { .. }
            | SecretNotText { .. } => Category::Permanent,
            JavaTimeout { .. }
            | ProfilerKind
            | GoSourceNotUrl { .. }
            | GoSourceScheme { .. }
            | GoFileNotAllowed { .. }
            | GoFilePath { .. }
            | GoFileNotRegular { .. }
            | HttpClient { .. }
            | GoFetch { .. }
            | GoStatus { .. }
            | GoNoPod { .. }
            | GoTargetNotPod { .. }
            | GoUndeclaredPort { .. }
            | GoRedirect { .. }
            | GoRead { .. }
            | GoTooLarge { .. }
            | ProfileQuota { .. }
            | Io { .. }
            | Rename { .. }
            | NotUnderProfiles { .. }
            | JcmdMissing
            | JcmdAttach { .. }
            | NoJvm { .. }
            | HprofPathRelative
            | NoProcessForHprof { .. }
            | NoHprof { .. }
            | HprofTooLarge { .. }
            | HprofCopyTimeout { .. }
            | NotHprof { .. }
            | InvalidPid { .. }
            | NoSuchProcess { .. }
            | NoTarget
            | NoClient { .. }
            | PodElsewhere { .. }
            | NoContainerId { .. }
            | ProcessScan { .. } => Category::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.category() == Category::Transient
    }

    /// A bounded label for `kdiag_agent_errors_total` (never an object name).
    pub fn metric_label(&self) -> &'static str {
        use Error::*;
        match self {
            Api { operation, .. } => operation,
            Conflict(_) => "conflict",
            UnknownBuiltin { .. }
            | UnsupportedScheme { .. }
            | InvalidPort { .. }
            | ServiceAndAddress { .. }
            | HalfAddress { .. }
            | NoServicePort { .. } => "invalid_registration",
            ReadService { .. } => "read_service",
            ReadEndpoints { .. } => "read_endpoints",
            NoReadyEndpoint { .. } => "no_ready_endpoint",
            ReadSecret { .. } | SecretKeyMissing { .. } | SecretNotText { .. } => "read_secret",
            Unresolvable { .. } | ResolveTimeout { .. } => "resolve_address",
            OutOfNamespace { .. } => "out_of_namespace",
            Plugin(e) => e.metric_label(),
            PodLookup { .. } | PodLookupTimeout { .. } => "profiler_pod_lookup",
            _ => "profiler",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Box<kube::Error> {
        Box::new(kube::Error::Api(Box::new(
            kube::core::Status::failure("m", "Reason").with_code(code),
        )))
    }

    fn reg() -> Registration {
        Registration::new("Diagnoser", &NamespacedName::new("team", "plugin"))
    }

    #[test]
    fn an_apiserver_that_fails_while_a_plugins_service_is_resolved_is_retried() {
        let e = Error::ReadService {
            registration: reg(),
            service: "team/plugin".into(),
            source: api(503),
        };
        assert!(e.is_transient());
        assert_eq!(e.metric_label(), "read_service");
        let e = Error::ReadEndpoints {
            registration: reg(),
            service: "team/plugin".into(),
            source: Box::new(kube::Error::Service("connection reset".into())),
        };
        assert!(e.is_transient());
        let e = Error::ReadSecret {
            registration: reg(),
            field: "tls.caSecretRef",
            secret: "team/ca".into(),
            source: api(429),
        };
        assert!(e.is_transient());
    }

    #[test]
    fn a_refused_or_missing_service_or_secret_is_recorded() {
        for code in [403, 404] {
            let e = Error::ReadSecret {
                registration: reg(),
                field: "bearerTokenSecretRef",
                secret: "team/token".into(),
                source: api(code),
            };
            assert!(!e.is_transient(), "{code}");
            assert!(e.to_string().contains("docs/security.md"), "{e}");
        }
    }

    #[test]
    fn a_plugin_that_is_starting_is_retried() {
        let e = Error::NoReadyEndpoint {
            registration: reg(),
            service: "team/plugin".into(),
            port: 80,
        };
        assert!(e.is_transient());
        assert!(
            Error::Unresolvable {
                registration: reg(),
                host: "plugin.example:80".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn a_registration_that_cannot_work_is_recorded_at_once() {
        let e = Error::HalfAddress {
            registration: reg(),
        };
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "Diagnoser team/plugin sets only one of externalIP and externalPort; set both, or neither for a built-in"
        );
    }

    #[test]
    fn a_plugin_refusing_connections_is_retried_but_not_one_that_answered() {
        let refused = Error::Plugin(PluginError::Connect {
            url: "http://10.0.0.1/".into(),
            attempts: 3,
            reason: "connection refused".into(),
        });
        assert!(refused.is_transient());
        let answered = Error::Plugin(PluginError::Status {
            url: "http://10.0.0.1/".into(),
            code: 503,
            body: "busy".into(),
        });
        assert!(
            !answered.is_transient(),
            "it may have acted: only a call that sent nothing is repeated"
        );
        let slow = Error::Plugin(PluginError::Timeout {
            url: "http://10.0.0.1/".into(),
            timeout: Duration::from_secs(2),
        });
        assert!(!slow.is_transient());
    }

    #[test]
    fn losing_the_race_for_an_abnormal_is_retried() {
        assert!(Error::Conflict("team/a".into()).is_transient());
        let e = Error::Api {
            abnormal: "team/a".into(),
            operation: "get",
            source: api(500),
        };
        assert!(e.is_transient());
    }

    #[test]
    fn a_profilers_pod_lookup_is_retried_on_an_unavailable_apiserver() {
        let e = Error::PodLookup {
            pod: "team/web".into(),
            source: api(503),
        };
        assert!(e.is_transient());
        assert!(!Error::JcmdMissing.is_transient());
    }
}
