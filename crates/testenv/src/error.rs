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

    #[error("{0}")]
    Other(String),
}

impl TestEnvError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
