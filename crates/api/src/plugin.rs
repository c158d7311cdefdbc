//! The interface of processors: what a built-in processor receives and returns, and the
//! failures it can report. HTTP plugins speak the same contract over the wire (the whole
//! Abnormal in, the whole Abnormal out); the node agent adapts between the two.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{Abnormal, RootCause};

/// What the node agent hands a processor besides the Abnormal.
#[derive(Clone)]
pub struct ProcessorContext {
    /// The node this agent runs on.
    pub node_name: String,
    /// A client with the agent's own permissions.
    pub client: kube::Client,
    /// How long this step may take; the agent stops waiting after it.
    pub timeout: Duration,
    /// The most bytes of output (serialized JSON) a step may add to the Abnormal.
    pub max_output_bytes: usize,
    /// Where the node's facts are: /proc, the kubelet root, the container runtime's socket.
    pub node: Arc<NodeEnvironment>,
}

/// Where a built-in finds the node it runs on. The agent usually runs in a pod with the host's
/// directories mounted, so each path is configurable (flags of `kdiag agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnvironment {
    /// The host's /proc (the agent runs with hostPID).
    pub proc_root: PathBuf,
    /// The host's /sys.
    pub sys_root: PathBuf,
    /// The kubelet's root directory; pod directories are `<root>/pods/<uid>`.
    pub kubelet_root: PathBuf,
    /// CRI sockets to try, in order (containerd, CRI-O).
    pub cri_sockets: Vec<PathBuf>,
    /// The kernel message device.
    pub kmsg: PathBuf,
    /// The apiserver's URL as this node reaches it (the server of the agent's own client, such
    /// as `https://10.96.0.1:443` in a pod): node-collector reads the certificate served there.
    pub apiserver: Option<String>,
}

impl Default for NodeEnvironment {
    fn default() -> Self {
        Self {
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            kubelet_root: "/var/lib/kubelet".into(),
            cri_sockets: vec![
                "/run/containerd/containerd.sock".into(),
                "/var/run/crio/crio.sock".into(),
            ],
            kmsg: "/dev/kmsg".into(),
            apiserver: None,
        }
    }
}

/// What a processor found or did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessorOutput {
    /// Keys to set in status.context (a collector's data, a diagnoser's findings).
    pub context: BTreeMap<String, serde_json::Value>,
    /// The cause, when a diagnoser identified one.
    pub root_cause: Option<RootCause>,
    /// One line for the step's record, such as "collected 12 pods on node-a".
    pub message: String,
}

impl ProcessorOutput {
    pub fn message(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Default::default()
        }
    }

    pub fn with_context(mut self, key: &str, value: serde_json::Value) -> Self {
        self.context.insert(key.to_owned(), value);
        self
    }

    pub fn with_root_cause(mut self, root_cause: RootCause) -> Self {
        self.root_cause = Some(root_cause);
        self
    }
}

/// Why a processor did not succeed. Each message is written into the step's record, so it must
/// say what happened and, where there is something to do, what.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ProcessorError {
    /// A diagnoser looked and found no cause; the message says what it checked.
    #[error("no cause identified: {0}")]
    NotIdentified(String),
    /// The Abnormal lacks an input the processor needs, or has it in the wrong shape.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Node policy forbids the action; nothing was done.
    #[error("denied by policy rule {rule}: {message}")]
    Denied { rule: String, message: String },
    /// The step did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Anything else that went wrong.
    #[error("{0}")]
    Failed(String),
}

/// A processor run in-process by the node agent (and also served over HTTP by it).
pub trait Processor: Send + Sync {
    /// The registration name it answers to, such as `pod-collector`.
    fn name(&self) -> &'static str;

    /// Runs on `abnormal` as it stands (spec plus the context earlier steps wrote).
    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>>;
}

impl Abnormal {
    /// A context value as processors see it: spec.context overrides status.context.
    pub fn context_value(&self, key: &str) -> Option<&serde_json::Value> {
        self.spec
            .context
            .as_ref()
            .and_then(|c| c.get(key))
            .or_else(|| {
                self.status
                    .as_ref()
                    .and_then(|s| s.context.as_ref())
                    .and_then(|c| c.get(key))
            })
    }

    /// A context value parsed into `T`; `Ok(None)` when absent, an error naming the key when
    /// present in the wrong shape.
    pub fn context_as<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ProcessorError> {
        match self.context_value(key) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ProcessorError::InvalidInput(format!("context key {key}: {e}"))),
        }
    }
}
