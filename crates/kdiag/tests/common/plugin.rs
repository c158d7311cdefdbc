//! Real HTTP plugins for tests: a small HTTP/1.1 server on loopback whose answers depend on the
//! path, so a test can make a plugin succeed, fail, stall or lie on purpose.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running test plugin. Paths:
/// - `/echo/<key>`: 200 with the Abnormal, status.context[<key>] = "<key>-value"
/// - `/sleep/<ms>/<key>`: sleeps, then as /echo
/// - `/hold/<key>`: waits until the test calls [`release`] for `<key>`, then as /echo
/// - `/big/<bytes>/<key>`: as /echo, with a value of that many bytes
/// - `/fail/<code>`: that HTTP status with a short body
/// - `/invalid-json`: 200 with a body that is not JSON
/// - `/oversize`: 200 with a 3 MiB body
/// - `/change-phase`: 200 with status.phase changed
/// - `/change-spec`: 200 with a recoverer added to spec.assignedRecoverers
/// - `/slow-body`: 200 headers, then the body one byte per second
/// - `/root-cause/<reason>`: 200 with status.rootCause set
/// - `/status-only/<key>`: 200 with only `{"status": {"context": {<key>: "<key>-value"}}}`
/// - `/drop/<key>`: 200 with only `{"status": {"context": {<key>: null}}}`
pub struct TestPlugin {
    pub port: u16,
    /// Every request path, in arrival order.
    pub calls: Arc<Mutex<Vec<String>>>,
    /// The Idempotency-Key header of each request that had one, with its path.
    pub idempotency_keys: Arc<Mutex<Vec<(String, String)>>>,
    /// Every request's path and JSON body (null when it was not JSON), in arrival order.
    pub bodies: Arc<Mutex<Vec<(String, Value)>>>,
    pub in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestPlugin {
    pub async fn start() -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST).await
    }

    /// A plugin listening on `ip` (Endpoints may not list a loopback address).
    pub async fn start_on(ip: std::net::Ipv4Addr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let idempotency_keys = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (c, k, f, b) = (
            calls.clone(),
            idempotency_keys.clone(),
            in_flight.clone(),
            bodies.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, k, f, b) = (c.clone(), k.clone(), f.clone(), b.clone());
                tokio::spawn(async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let _ = handle(stream, c, k, b).await;
                    f.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            calls,
            idempotency_keys,
            bodies,
            in_flight,
            task,
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// The body of the first request to `path`, if one came.
    #[allow(dead_code)]
    pub fn body_of(&self, path: &str) -> Option<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
    }

    pub fn count(&self, path_prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|p| p.starts_with(path_prefix))
            .count()
    }
}

/// The gates `/hold/<key>` waits at, by key (unique per test), in every plugin of the process.
fn gate(key: &str) -> Arc<tokio::sync::Semaphore> {
    static GATES: std::sync::LazyLock<
        Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    > = std::sync::LazyLock::new(Default::default);
    GATES
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(0)))
        .clone()
}

/// Lets one `/hold/<key>` request through (now or when it arrives).
pub fn release(key: &str) {
    gate(key).add_permits(1);
}

async fn handle(
    mut stream: TcpStream,
    calls: Arc<Mutex<Vec<String>>>,
    keys: Arc<Mutex<Vec<(String, String)>>>,
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let header_end = loop {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
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
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[header_end..]).unwrap_or(Value::Null);
    calls.lock().unwrap().push(path.clone());
    bodies.lock().unwrap().push((path.clone(), body.clone()));
    if let Some(key) = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("idempotency-key")
            .then(|| value.trim().to_owned())
    }) {
        keys.lock().unwrap().push((path.clone(), key));
    }

    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["echo", key] => reply_json(&mut stream, with_context(body, key)).await,
        ["big", bytes, key] => {
            let mut b = with_context(body, key);
            b["status"]["context"][*key] = json!("b".repeat(bytes.parse().unwrap_or(0)));
            reply_json(&mut stream, b).await
        }
        ["hold", key] => {
            if let Ok(permit) = gate(key).acquire().await {
                permit.forget();
            }
            reply_json(&mut stream, with_context(body, key)).await
        }
        ["sleep", ms, key] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            reply_json(&mut stream, with_context(body, key)).await
        }
        ["fail", code] => {
            reply(
                &mut stream,
                code.parse().unwrap_or(500),
                "text/plain",
                b"plugin exploded on purpose",
            )
            .await
        }
        ["invalid-json"] => reply(&mut stream, 200, "application/json", b"this is not json").await,
        ["oversize"] => {
            reply(
                &mut stream,
                200,
                "application/json",
                &vec![b'x'; 3 * 1024 * 1024],
            )
            .await
        }
        ["change-phase"] => {
            let mut b = body;
            b["status"]["phase"] = json!("Succeeded");
            reply_json(&mut stream, b).await
        }
        ["change-spec"] => {
            let mut b = body;
            b["spec"]["assignedRecoverers"] = json!([{"namespace": "kube-system", "name": "evil"}]);
            reply_json(&mut stream, b).await
        }
        ["slow-body"] => {
            let body = serde_json::to_vec(&body).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            for b in body {
                stream.write_all(&[b]).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        }
        ["root-cause", reason] => {
            let mut b = body;
            b["status"]["rootCause"] =
                json!({"summary": format!("found {reason}"), "reason": reason});
            reply_json(&mut stream, b).await
        }
        // Kube Diagnoser decoded replies into a copy of the request: status alone sufficed.
        ["status-only", key] => {
            reply_json(
                &mut stream,
                json!({"status": {"context": {*key: format!("{key}-value")}}}),
            )
            .await
        }
        ["drop", key] => {
            reply_json(&mut stream, json!({"status": {"context": {*key: null}}})).await
        }
        _ => reply(&mut stream, 404, "text/plain", b"no such test path").await,
    }
}

fn with_context(mut body: Value, key: &str) -> Value {
    if !body["status"].is_object() {
        body["status"] = json!({});
    }
    if !body["status"]["context"].is_object() {
        body["status"]["context"] = json!({});
    }
    body["status"]["context"][key] = json!(format!("{key}-value"));
    body
}

async fn reply_json(stream: &mut TcpStream, v: Value) -> std::io::Result<()> {
    reply(
        stream,
        200,
        "application/json",
        &serde_json::to_vec(&v).unwrap(),
    )
    .await
}

async fn reply(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// An IPv4 address of this machine outside the loopback range, from the kernel's routing table
/// (`/32 host LOCAL` entries of /proc/net/fib_trie).
pub fn host_ipv4() -> std::net::Ipv4Addr {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap();
    let lines: Vec<&str> = trie.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[1].trim() == "/32 host LOCAL")
        .filter_map(|w| w[0].trim().trim_start_matches("|--").trim().parse().ok())
        .find(|ip: &std::net::Ipv4Addr| !ip.is_loopback())
        .expect("a non-loopback IPv4 address on this machine")
}
