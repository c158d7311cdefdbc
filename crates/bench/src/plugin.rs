//! A trivial HTTP plugin in Kube Diagnoser's protocol (POST the Abnormal, get it back changed),
//! so the benchmark pays for a real plugin call over loopback but not for any plugin logic:
//!
//! - `/collect`: adds `status.context.benchCollected`;
//! - `/diagnose`: sets `status.rootCause`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Plugin {
    pub port: u16,
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Plugin {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(true) = handle(stream).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self { port, calls, task })
    }
}

/// Answers one request; true when it was a plugin call that got its answer.
async fn handle(mut stream: TcpStream) -> std::io::Result<bool> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut body: Value = serde_json::from_slice(&buf[header_end..]).unwrap_or(Value::Null);
    if !body["status"].is_object() {
        body["status"] = json!({});
    }
    let status = match path.as_str() {
        "/collect" => {
            if !body["status"]["context"].is_object() {
                body["status"]["context"] = json!({});
            }
            body["status"]["context"]["benchCollected"] = json!("collected by the bench plugin");
            200
        }
        "/diagnose" => {
            body["status"]["rootCause"] =
                json!({"summary": "found by the bench plugin", "reason": "BenchRootCause"});
            200
        }
        _ => 404,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        bytes.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&bytes).await?;
    stream.shutdown().await?;
    Ok(status == 200)
}
