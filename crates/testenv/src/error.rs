use std::path::PathBuf;

/// Why a test environment could not be provided. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    #[error(
        "{binary} not found at {path}: run `make setup` (hack/setup-cluster.sh) to install and build the Kubernetes binaries, or set KDIAG_K8S_BIN_DIR"
    )]
    MissingBinary { binary: String, path: PathBuf },

    #[error("could not start {process}: {source}")]
    Spawn {
        process: String,
        source: std::io::Error,
    },

    #[error("{process} exited during start-up ({status}); last lines of its log {log}:\n{tail}")]
    ExitedEarly {
        process: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("{what} was not ready after {seconds}s; last lines of {log}:\n{tail}")]
    NotReady {
        what: String,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },

    #[error("test environment I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("kube client for the test environment: {0}")]
    Client(String),

    #[error("{command} failed: {output}")]
    CommandFailed { command: String, output: String },

    #[error(
        "the level-2 cluster cannot run on this machine: {reason}. It needs root, cgroup v1 (kubelet 1.20 with the cgroupfs driver) and the Debian packages of `make setup`"
    )]
    UnsupportedHost { reason: String },

    #[error(
        "the hostname {hostname:?} resolves to {resolved}, not to a loopback address. The apiserver reaches the kubelet by the node's hostname and the kubelet listens on loopback only: add `127.0.0.1 {hostname}` to /etc/hosts"
    )]
    HostnameNotLoopback { hostname: String, resolved: String },

    #[error(
        "something listens on {endpoint}, where the cluster sends every image pull so that none leaves the machine; stop it, or image pulls would reach it"
    )]
    PullEndpointOpen { endpoint: String },

    #[error("building the local images: {0}")]
    Image(String),

    #[error("node {node} was not Ready and untainted after {seconds}s ({state}).\n{logs}")]
    NodeNotReady {
        node: String,
        seconds: u64,
        state: String,
        /// The kubelet's and containerd's log tails, each under a header naming the file.
        logs: String,
    },

    #[error("stopping the cluster left things behind:\n- {}", problems.join("\n- "))]
    Teardown { problems: Vec<String> },

    #[error("{0}")]
    Other(String),
}

impl TestEnvError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
