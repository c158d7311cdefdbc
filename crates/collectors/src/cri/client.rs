//! A small CRI RuntimeService client over the runtime's unix socket (gRPC, HTTP/2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::proto::*;

/// Why the runtime could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("no CRI runtime answered on {tried}; {hint}")]
    NoRuntime { tried: String, hint: &'static str },
    #[error("CRI {method} on {socket}: {status}")]
    Call {
        method: &'static str,
        socket: String,
        status: tonic::Status,
    },
}

/// A connected runtime.
#[derive(Clone)]
pub struct CriClient {
    channel: Channel,
    /// `runtime.v1.RuntimeService` or, for older runtimes, `runtime.v1alpha2.RuntimeService`.
    service: &'static str,
    pub socket: PathBuf,
    pub version: VersionResponse,
}

const SERVICES: [&str; 2] = [
    "runtime.v1.RuntimeService",
    "runtime.v1alpha2.RuntimeService",
];

/// Runtimes can list thousands of containers; gRPC's 4 MiB default is too small for that.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

impl CriClient {
    /// Connects to the first socket of `sockets` that exists and answers `Version`, speaking
    /// CRI v1 or, if the runtime does not know it, v1alpha2.
    pub async fn connect(sockets: &[PathBuf], timeout: Duration) -> Result<Self, CriError> {
        let mut tried = Vec::new();
        for socket in sockets {
            if !socket.exists() {
                tried.push(format!("{} (no such socket)", socket.display()));
                continue;
            }
            match Self::connect_one(socket, timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => tried.push(format!("{} ({e})", socket.display())),
            }
        }
        // A socket that exists but does not answer is the runtime's fault, not the agent's
        // configuration: say so rather than suggest another socket.
        let hint = if sockets.iter().any(|s| s.exists()) {
            "the runtime behind an existing socket is down or hung (kubectl diag run --node NODE names which); if the kubelet uses another runtime, pass its socket to the agent (--cri-socket)"
        } else {
            "pass the runtime's socket to the agent (--cri-socket), e.g. /run/containerd/containerd.sock or /var/run/crio/crio.sock"
        };
        if tried.is_empty() {
            tried.push("no socket configured".into());
        }
        Err(CriError::NoRuntime {
            tried: tried.join("; "),
            hint,
        })
    }

    async fn connect_one(socket: &Path, timeout: Duration) -> Result<Self, String> {
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut last = String::new();
        for service in SERVICES {
            let mut c = Self {
                channel: channel.clone(),
                service,
                socket: socket.to_path_buf(),
                version: VersionResponse::default(),
            };
            // A working runtime answers Version in milliseconds; one that does not within the
            // probe's timeout is hung, and waiting out the caller's whole budget (30 s for a
            // collector) would only delay the answer that says so.
            let handshake = timeout.min(super::probe::RUNTIME_PROBE_TIMEOUT);
            let asked = tokio::time::timeout(
                handshake,
                c.unary::<_, VersionResponse>(
                    "Version",
                    VersionRequest {
                        version: "v1".into(),
                    },
                ),
            )
            .await
            // Worded as tonic words its own timeout, which the runtime probe reads as "hung"
            // (both timers are 2 s, so either may fire first).
            .map_err(|_| {
                format!("CRI Version: Timeout expired ({handshake:?} without an answer)")
            })?;
            match asked {
                Ok(v) => {
                    c.version = v;
                    return Ok(c);
                }
                Err(s) if s.code() == Code::Unimplemented => last = s.to_string(),
                Err(s) => return Err(s.to_string()),
            }
        }
        Err(format!("speaks neither CRI v1 nor v1alpha2: {last}"))
    }

    async fn unary<Req, Resp>(&mut self, method: &str, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(format!("/{}/{method}", self.service))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(tonic::Request::new(req), path, codec)
            .await
            .map(|r| r.into_inner())
    }

    fn call_error(&self, method: &'static str, status: tonic::Status) -> CriError {
        CriError::Call {
            method,
            socket: self.socket.display().to_string(),
            status,
        }
    }

    /// Every container the runtime knows, running or not.
    pub async fn list_containers(&mut self) -> Result<Vec<Container>, CriError> {
        self.unary::<_, ListContainersResponse>(
            "ListContainers",
            ListContainersRequest { filter: None },
        )
        .await
        .map(|r| r.containers)
        .map_err(|s| self.call_error("ListContainers", s))
    }

    /// Every pod sandbox the runtime knows.
    pub async fn list_pod_sandboxes(&mut self) -> Result<Vec<PodSandbox>, CriError> {
        self.unary::<_, ListPodSandboxResponse>(
            "ListPodSandbox",
            ListPodSandboxRequest { filter: None },
        )
        .await
        .map(|r| r.items)
        .map_err(|s| self.call_error("ListPodSandbox", s))
    }

    /// One container's status; `verbose` adds the runtime's info (with the pid).
    pub async fn container_status(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<ContainerStatusResponse, CriError> {
        self.unary::<_, ContainerStatusResponse>(
            "ContainerStatus",
            ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose,
            },
        )
        .await
        .map_err(|s| self.call_error("ContainerStatus", s))
    }
}

/// The pid in a verbose ContainerStatus: containerd and CRI-O both put a JSON object with a
/// `pid` field under the `info` key.
pub fn pid_from_info(info: &std::collections::HashMap<String, String>) -> Option<i64> {
    let raw = info.get("info")?;
    let v: serde_json::Value = serde_json::from_str(raw).ok()?;
    v.get("pid")?.as_i64().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_comes_from_the_verbose_info_json() {
        let mut info = std::collections::HashMap::new();
        info.insert(
            "info".to_owned(),
            r#"{"sandboxID":"abc","pid":4242,"removing":false}"#.to_owned(),
        );
        assert_eq!(pid_from_info(&info), Some(4242));
        info.insert("info".to_owned(), r#"{"pid":0}"#.to_owned());
        assert_eq!(pid_from_info(&info), None);
        assert_eq!(pid_from_info(&Default::default()), None);
    }

    #[tokio::test]
    async fn without_a_runtime_the_error_names_every_socket_tried_and_the_flag() {
        let err = CriClient::connect(
            &["/nonexistent/containerd.sock".into()],
            Duration::from_secs(1),
        )
        .await
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/containerd.sock (no such socket)"),
            "{msg}"
        );
        assert!(msg.contains("--cri-socket"), "{msg}");
    }

    #[tokio::test]
    async fn a_runtime_that_accepts_and_never_answers_is_given_up_on_after_the_probes_timeout() {
        let dir = std::env::temp_dir().join(format!("kdiag-cri-hung-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let _ = std::fs::remove_file(&socket);
        // Listening, never accepting: connections wait in the backlog, as with a stopped
        // runtime.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let begin = std::time::Instant::now();
        let err = CriClient::connect(std::slice::from_ref(&socket), Duration::from_secs(30))
            .await
            .err()
            .unwrap();
        let took = begin.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(took < Duration::from_secs(5), "gave up after {took:?}");
        assert!(
            err.to_string()
                .contains("CRI Version: Timeout expired (2s without an answer)"),
            "{err}"
        );
        assert!(
            err.to_string().contains("is down or hung") && !err.to_string().contains("e.g."),
            "an existing socket that does not answer is the runtime's fault: {err}"
        );
    }
}
