//! Whether the node's container runtime answers: one CRI `Version` call with a short timeout,
//! told apart as down (no socket, or the socket refuses connections: nothing listens), hung
//! (the socket accepts, nothing answers in time) or answering. The kubelet waits minutes
//! (`--runtime-request-timeout`, 2 min) before it calls the runtime down; this takes seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::CriClient;
use crate::listener::{self, DaemonProcess, Listen};

/// How long the runtime gets to answer `Version`: a healthy one answers in milliseconds, so
/// two seconds without an answer is a runtime that is not working.
pub const RUNTIME_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The runtimes' own process names, to find the one listening on the socket.
const RUNTIME_NAMES: &[&str] = &["containerd", "crio", "dockerd", "cri-dockerd"];

/// What the runtime's socket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RuntimeState {
    /// It answered `Version`.
    #[default]
    Answering,
    /// No socket file at the path.
    NoSocket,
    /// The socket file exists and refuses connections: nothing listens (the runtime is down;
    /// a killed runtime leaves its socket file behind).
    Refused,
    /// It accepted the connection and did not answer within the timeout.
    TimedOut,
    /// It answered with an error.
    Failed,
}

/// One probe of the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuntimeProbe {
    pub socket: String,
    pub state: RuntimeState,
    /// `containerd v1.6.20` when it answered.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// The error, in the words of the call that failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub took_millis: u64,
    pub timeout_millis: u64,
    /// The runtime's process listening on the socket, when /proc shows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<DaemonProcess>,
    /// When it was probed (RFC 3339).
    pub at: String,
}

impl RuntimeProbe {
    /// Down or hung: the kubelet can neither create nor inspect containers.
    pub fn broken(&self) -> bool {
        !matches!(self.state, RuntimeState::Answering)
    }
}

/// Probes the first of `sockets` that exists (the first one when none does) and looks for the
/// process serving it in `proc_root`.
pub async fn probe(sockets: &[PathBuf], proc_root: &Path, timeout: Duration) -> RuntimeProbe {
    let socket = sockets
        .iter()
        .find(|s| s.exists())
        .or(sockets.first())
        .cloned()
        .unwrap_or_default();
    let begin = Instant::now();
    let (state, runtime, error) = ask(&socket, timeout).await;
    let took_millis = begin.elapsed().as_millis() as u64;
    let (root, path) = (proc_root.to_owned(), socket.clone());
    let process = tokio::task::spawn_blocking(move || {
        listener::find(&root, RUNTIME_NAMES, &Listen::Unix(&path))
    })
    .await
    .ok()
    .flatten();
    RuntimeProbe {
        socket: socket.display().to_string(),
        state,
        runtime,
        error,
        took_millis,
        timeout_millis: timeout.as_millis() as u64,
        process,
        at: jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

async fn ask(socket: &Path, timeout: Duration) -> (RuntimeState, String, String) {
    if !socket.exists() {
        return (
            RuntimeState::NoSocket,
            String::new(),
            format!("no socket at {}", socket.display()),
        );
    }
    // A plain connect first: it tells "nothing listens" from "it listens and does not answer",
    // which the gRPC client folds into one transport error.
    match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return (
                RuntimeState::Refused,
                String::new(),
                format!("connect: {e}"),
            );
        }
        Ok(Err(e)) => return (RuntimeState::Failed, String::new(), format!("connect: {e}")),
        Err(_) => {
            return (
                RuntimeState::TimedOut,
                String::new(),
                format!("connect did not complete within {timeout:?}"),
            );
        }
    }
    // A silent runtime ends as our timeout or as the client's (its Version handshake gives up
    // after the same 2 s, saying "Timeout expired" as tonic does): both are "hung".
    match tokio::time::timeout(
        timeout,
        CriClient::connect(std::slice::from_ref(&socket.to_path_buf()), timeout * 2),
    )
    .await
    {
        Ok(Ok(c)) => (
            RuntimeState::Answering,
            format!("{} {}", c.version.runtime_name, c.version.runtime_version),
            String::new(),
        ),
        Ok(Err(e)) if e.to_string().contains("Timeout expired") => (
            RuntimeState::TimedOut,
            String::new(),
            format!("CRI Version did not answer within {timeout:?}"),
        ),
        Ok(Err(e)) => (RuntimeState::Failed, String::new(), e.to_string()),
        Err(_) => (
            RuntimeState::TimedOut,
            String::new(),
            format!("CRI Version did not answer within {timeout:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kdiag-cri-probe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_any_more_is_refused_and_a_missing_one_is_no_socket() {
        let d = dir("refused");
        let socket = d.join("containerd.sock");
        // Bound then closed: the file stays, as a killed runtime leaves it.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let p = probe(
            std::slice::from_ref(&socket),
            Path::new("/proc"),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(p.state, RuntimeState::Refused, "{p:?}");
        assert!(p.error.contains("refused"), "{}", p.error);
        assert!(p.broken());
        let p = probe(
            &[d.join("none.sock")],
            Path::new("/proc"),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(p.state, RuntimeState::NoSocket, "{p:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_hung_runtime_is_hung_at_the_shipped_timeout_whichever_timer_fires_first() {
        // The client's Version handshake gives up after the same 2 s as the probe: its error
        // must read as a timeout too, not as a runtime that answers with an error.
        let d = dir("hung-shipped");
        let socket = d.join("containerd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        for _ in 0..3 {
            let p = probe(
                std::slice::from_ref(&socket),
                Path::new("/proc"),
                RUNTIME_PROBE_TIMEOUT,
            )
            .await;
            assert_eq!(p.state, RuntimeState::TimedOut, "{p:?}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_socket_that_accepts_and_never_answers_times_out() {
        let d = dir("hung");
        let socket = d.join("containerd.sock");
        // Listening, never accepting: connections wait in the backlog, as with a stopped
        // runtime.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let begin = Instant::now();
        let p = probe(&[socket], Path::new("/proc"), Duration::from_millis(500)).await;
        assert_eq!(p.state, RuntimeState::TimedOut, "{p:?}");
        assert!(
            begin.elapsed() < Duration::from_secs(3),
            "{:?}",
            begin.elapsed()
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
