//! Rolling restarts of the installed agent DaemonSet and controller Deployment in the middle of
//! work, and 2,000 Abnormals through the installed pods (whose memory the caller then checks
//! against their limits). Part of in_cluster.rs's one install.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// How long the plugin's collect path takes: long enough that a restart finds work in flight.
const COLLECT_DELAY: Duration = Duration::from_millis(1500);
/// How long the plugin's recovery takes: long enough that a restart can land during one.
const RECOVER_DELAY: Duration = Duration::from_secs(3);
const WORK_TIMEOUT: Duration = Duration::from_secs(300);

/// A real HTTP plugin on the node's loopback (the agent runs on the host network, so it reaches
/// the test's loopback): every POST is answered after its path's delay with the Abnormal it was
/// sent, unchanged, and counted per path and Abnormal.
struct CountingPlugin {
    port: u16,
    calls: Arc<Mutex<BTreeMap<(String, String), usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CountingPlugin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingPlugin {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(BTreeMap::new()));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Some((path, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let name = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|a| a["metadata"]["name"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    *counted
                        .lock()
                        .unwrap()
                        .entry((path.clone(), name))
                        .or_insert(0) += 1;
                    let delay = if path == "/recover" {
                        RECOVER_DELAY
                    } else {
                        COLLECT_DELAY
                    };
                    tokio::time::sleep(delay).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                });
            }
        });
        Self { port, calls, task }
    }

    /// Calls of `path`, per Abnormal.
    fn calls_of(&self, path: &str) -> BTreeMap<String, usize> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, _), _)| p == path)
            .map(|((_, name), n)| (name.clone(), *n))
            .collect()
    }
}

/// The request line's path and the body of one HTTP/1.1 request with a Content-Length.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1)?.to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((path, buf[head_end..head_end + length].to_vec()))
}

/// Registers the plugin's `path` as a processor of `kind` in `ns`.
async fn register(client: &kube::Client, ns: &str, kind: &str, name: &str, port: u16, path: &str) {
    let gvk = GroupVersionKind::gvk("diagnosis.netease.com", "v1", kind);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk));
    let o = DynamicObject::new(name, &ApiResource::from_gvk(&gvk))
        .within(ns)
        .data(json!({"spec": {"externalIP": "127.0.0.1", "externalPort": port, "path": path, "timeoutSeconds": 30}}));
    api.create(&PostParams::default(), &o)
        .await
        .unwrap_or_else(|e| panic!("register {kind} {ns}/{name}: {e}"));
}

/// Creates Abnormals `{prefix}-{i}` for `i` in `range` with `spec`, 16 at a time. A create the
/// apiserver refuses is retried for up to 60 s (kdiag's admission webhook answers through the
/// controller's Service, which a rolling restart of the controller hands from pod to pod);
/// returns how many creates needed a retry.
async fn create_many(
    api: &Api<DynamicObject>,
    prefix: &str,
    range: std::ops::Range<usize>,
    spec: Value,
) -> usize {
    let names: Vec<String> = range.map(|i| format!("{prefix}-{i:04}")).collect();
    let mut retried = 0;
    for batch in names.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for name in batch {
            let (api, spec, name) = (api.clone(), spec.clone(), name.clone());
            set.spawn(async move {
                let gvk = GroupVersionKind::gvk("diagnosis.netease.com", "v1", "Abnormal");
                let o = DynamicObject::new(&name, &ApiResource::from_gvk(&gvk))
                    .data(json!({"spec": spec}));
                let first = Instant::now();
                let mut tries = 0usize;
                loop {
                    match api.create(&PostParams::default(), &o).await {
                        Ok(_) => return tries,
                        Err(kube::Error::Api(e)) if e.code == 409 => return tries,
                        Err(e) if first.elapsed() < Duration::from_secs(60) => {
                            tries += 1;
                            if tries == 1 {
                                println!("create {name}: {e}; retrying");
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => panic!("create Abnormal {name}: {e}"),
                    }
                }
            });
        }
        while let Some(tries) = set.join_next().await {
            retried += usize::from(tries.unwrap() > 0);
        }
    }
    retried
}

/// Phase per Abnormal of `ns` (empty while not yet admitted).
async fn phases(api: &Api<DynamicObject>) -> BTreeMap<String, DynamicObject> {
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|a| Some((a.metadata.name.clone()?, a)))
                .collect()
        })
        .unwrap_or_default()
}

fn phase_of(a: &DynamicObject) -> &str {
    a.data["status"]["phase"].as_str().unwrap_or_default()
}

fn is_final(a: &DynamicObject) -> bool {
    matches!(phase_of(a), "Succeeded" | "Failed")
}

/// Waits until all `n` Abnormals of `api` are final and returns them.
async fn wait_all_final(
    c: &Cluster,
    api: &Api<DynamicObject>,
    n: usize,
    timeout: Duration,
) -> BTreeMap<String, DynamicObject> {
    let start = Instant::now();
    loop {
        let all = phases(api).await;
        let done = all.values().filter(|a| is_final(a)).count();
        if all.len() == n && done == n {
            return all;
        }
        assert!(
            start.elapsed() < timeout,
            "{done} of {n} Abnormals final ({} exist) after {timeout:?}; unfinished: {:?}\n{}",
            all.len(),
            all.iter()
                .filter(|(_, a)| !is_final(a))
                .take(5)
                .map(|(k, a)| format!("{k}: {}", a.data["status"]))
                .collect::<Vec<_>>(),
            describe(c)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `kubectl rollout …`, off the runtime's threads: the plugin must keep answering meanwhile
/// (a restarting agent waits for its running recovery's answer before it exits).
fn rollout(c: &Cluster, args: &[&str]) {
    let mut cmd = c.kubectl();
    cmd.args(["-n", NAMESPACE, "rollout"]).args(args);
    let out = tokio::task::block_in_place(|| run(cmd));
    assert!(
        out.status.success(),
        "kubectl rollout {args:?}:\n{}\n{}",
        text(&out),
        describe(c)
    );
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Abnormals with a slow collector and with a slow recoverer are in flight when the agent
/// DaemonSet and then the controller Deployment are restarted (`kubectl rollout restart`), and
/// more are created while the controller's pods change. Every Abnormal ends, every collection
/// succeeds, and no recovery runs twice.
pub async fn rolling_restarts_lose_no_abnormal_and_repeat_no_recovery(
    c: &Cluster,
    client: &kube::Client,
    node: &str,
) {
    let t = Instant::now();
    let ns = "rolling";
    create_namespace(client, ns).await;
    let plugin = CountingPlugin::start().await;
    register(
        client,
        ns,
        "InformationCollector",
        "slow-collect",
        plugin.port,
        "/collect",
    )
    .await;
    register(
        client,
        ns,
        "Recoverer",
        "counted-recover",
        plugin.port,
        "/recover",
    )
    .await;
    let api = abnormals(client.clone(), ns);
    let collect = json!({"nodeName": node, "assignedInformationCollectors": [
        {"namespace": NAMESPACE, "name": "pod-collector"}, {"name": "slow-collect"}]});
    // Fewer than the shipped policy's 10 recoveries per hour on a node.
    let recover = json!({"nodeName": node, "assignedRecoverers": [{"name": "counted-recover"}]});
    const COLLECT: usize = 120;
    const RECOVER: usize = 5;

    create_many(&api, "collect", 0..COLLECT / 2, collect.clone()).await;
    create_many(&api, "recover", 0..RECOVER, recover).await;
    wait_until("work in flight in the agent", WORK_TIMEOUT, c, || {
        let (collects, recovers) = (plugin.calls_of("/collect"), plugin.calls_of("/recover"));
        async move { collects.len() >= 8 && !recovers.is_empty() }
    })
    .await;
    println!(
        "restarting the agent with {} collections and {} recoveries started",
        plugin.calls_of("/collect").len(),
        plugin.calls_of("/recover").len()
    );
    rollout(c, &["restart", "ds/kdiag-agent"]);
    rollout(c, &["status", "ds/kdiag-agent", "--timeout=180s"]);
    rollout(c, &["restart", "deploy/kdiag-controller"]);
    // Created while the controller's pods change.
    let retried = create_many(&api, "collect", COLLECT / 2..COLLECT, collect).await;
    rollout(c, &["status", "deploy/kdiag-controller", "--timeout=180s"]);
    let all = wait_all_final(c, &api, COLLECT + RECOVER, WORK_TIMEOUT).await;

    let collected = plugin.calls_of("/collect");
    let recovered = plugin.calls_of("/recover");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (name, a) in &all {
        let status = &a.data["status"];
        let outcome = format!(
            "{} {}",
            phase_of(a),
            status["reason"].as_str().unwrap_or_default()
        );
        *outcomes.entry(outcome).or_default() += 1;
        if name.starts_with("collect-") {
            assert_eq!(
                phase_of(a),
                "Succeeded",
                "a collection did not survive the restarts: {name}: {}",
                serde_json::to_string_pretty(status).unwrap()
            );
            assert!(
                collected.contains_key(name),
                "{name} never reached the collector"
            );
        } else {
            let calls = recovered.get(name).copied().unwrap_or(0);
            assert!(
                calls <= 1,
                "the recovery of {name} ran {calls} times: {}",
                serde_json::to_string_pretty(status).unwrap()
            );
            // Succeeded means it ran (once); an interrupted one says it is not run again.
            match phase_of(a) {
                "Succeeded" => assert_eq!(calls, 1, "{name}: {status}"),
                _ => assert!(
                    status["reason"] == "RecoveryInterrupted",
                    "{name} failed for another reason: {status}"
                ),
            }
        }
    }
    println!(
        "rolling restarts of agent and controller: {} Abnormals all final ({outcomes:?}), \
         {} recovery calls for {RECOVER} recoveries, {retried} creates retried during the \
         controller's restart, {:.1}s",
        all.len(),
        recovered.values().sum::<usize>(),
        t.elapsed().as_secs_f64()
    );
}

/// 2,000 Abnormals (pod-collector) through the installed agent and controller, 16 created at a
/// time; all end Succeeded. The caller checks the pods' peak memory against their limits.
pub async fn two_thousand_abnormals_pass_through(c: &Cluster, client: &kube::Client, node: &str) {
    const N: usize = 2000;
    let t = Instant::now();
    let ns = "many";
    create_namespace(client, ns).await;
    let api = abnormals(client.clone(), ns);
    let spec = json!({"nodeName": node, "assignedInformationCollectors": [
        {"namespace": NAMESPACE, "name": "pod-collector"}]});
    create_many(&api, "a", 0..N, spec).await;
    let created = t.elapsed();
    let all = wait_all_final(c, &api, N, WORK_TIMEOUT).await;
    let failed: Vec<_> = all
        .iter()
        .filter(|(_, a)| phase_of(a) != "Succeeded")
        .take(3)
        .map(|(k, a)| format!("{k}: {}", a.data["status"]))
        .collect();
    assert!(
        failed.is_empty(),
        "Abnormals that did not succeed: {failed:?}"
    );
    println!(
        "{N} Abnormals created in {:.1}s, all Succeeded after {:.1}s ({:.0}/s)",
        created.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        N as f64 / t.elapsed().as_secs_f64()
    );
}
