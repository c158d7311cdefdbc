//! Section 8: the fleet hub with many member links. The real `kdiag hub` runs as its own process
//! (kdiag-hub's ServiceAccount, config/deploy/hub's RBAC) on a real control plane; the members
//! are simulated in this process, but their links are real: TCP, TLS with the hub's certificate
//! checked against a CA made here, the WebSocket upgrade with each cluster's own credential, and
//! the protocol's frames (kdiag_fleet::protocol). Clusters are added in steps (50, 200, 500 by
//! default) to the same hub; at each size:
//!
//! - **idle**: for `seconds`, every member heartbeats every `heartbeat` (first beats spread over
//!   one interval); the hub's RSS and CPU (utime + stime from /proc, as a share of one core), and
//!   CPU per heartbeat (the hub writes a Cluster's status when a heartbeat changes what it shows,
//!   and otherwise at most every `--heartbeat-write-interval` of the hub, 30 s by default);
//! - **latency**: `changes` ProbeStatus changes, each sent up by a member (one after another,
//!   over the members in turn), timed from the frame sent to the hub's acknowledgement (which the
//!   hub sends only once both of its writes of the stored copy returned); alternating with the
//!   floor: the same two server-side applies of that object, with the hub's field manager and
//!   ServiceAccount, done directly by this process and timed the same way (first request sent to
//!   last response).
//!
//! Per-cluster figures (RSS above the hub with no links, CPU per cluster) show whether the cost
//! stays flat as clusters grow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use kdiag_api::ProbeStatus;
use kdiag_fleet::member::{Link, MemberConfig};
use kdiag_fleet::protocol::{Facts, HubMessage, MemberMessage, ProbeResult};
use kdiag_fleet::state;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::env::{Env, repo_root};
use crate::procstat;
use crate::realproc::RealProc;
use crate::stats::{Summary, ratio, round};

const FLEET_NAMESPACE: &str = kdiag_fleet::hub::DEFAULT_NAMESPACE;
/// The member namespace the simulated ProbeStatuses come from.
const SOURCE_NAMESPACE: &str = "kubeprober";

pub struct Settings {
    pub kdiag: PathBuf,
    /// Cluster counts, ascending: clusters are added to reach each.
    pub clusters: Vec<usize>,
    pub heartbeat: Duration,
    pub seconds: u64,
    pub changes: usize,
}

pub async fn run(s: &Settings) -> Result<Value> {
    if s.clusters.windows(2).any(|w| w[0] >= w[1]) || s.clusters.is_empty() {
        bail!("--fleet-clusters must be ascending, e.g. 50,200,500");
    }
    let env = Env::start().await?;
    let out = env
        .cp
        .kubectl()
        .args(["apply", "-k"])
        .arg(repo_root().join("config/deploy/hub"))
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply -k config/deploy/hub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pki = tempfile::tempdir()?;
    let pki = pki.path();
    write_pki(pki)?;
    let hub_token = env
        .cp
        .service_account_token(FLEET_NAMESPACE, "kdiag-hub")
        .await;
    let kubeconfig = env.cp.write_kubeconfig_for("kdiag-hub", &hub_token);
    let run_dir = env.cp.run_dir().to_path_buf();
    let hub = RealProc::spawn(
        &s.kdiag,
        None,
        "kdiag hub",
        &[
            "hub".into(),
            "--namespace".into(),
            FLEET_NAMESPACE.into(),
            "--tls-cert-file".into(),
            pki.join("tls.crt").display().to_string(),
            "--tls-key-file".into(),
            pki.join("tls.key").display().to_string(),
            // Nothing goes offline during the run: the sweeper only reads.
            "--offline-after".into(),
            "1h".into(),
        ],
        &kubeconfig,
        &run_dir.join("kdiag-hub-fleet.log"),
    )?;
    let url = format!("wss://127.0.0.1:{}", hub.port);
    let floor_client = env.cp.client_with_token(&hub_token).await;
    let floor_api: Api<ProbeStatus> = Api::namespaced(floor_client, FLEET_NAMESPACE);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.admin.clone(), FLEET_NAMESPACE);

    let stop = CancellationToken::new();
    let beats = Arc::new(AtomicU64::new(0));
    let mut members: Vec<MemberHandle> = Vec::new();
    // The hub up, its caches filled, before any link is measured: the first link waits for it.
    let empty = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let config = credential(&secrets, pki, &url, "bench-probe-ready").await?;
            match kdiag_fleet::member::connect_once(&config).await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!("the hub took no link within 60 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        // Settled: what the hub holds with no live link.
        tokio::time::sleep(Duration::from_secs(2)).await;
        procstat::sample(hub.pid())?
    };
    let mut sizes = Vec::new();
    for &n in &s.clusters {
        eprintln!("  {n} clusters: linking {} more", n - members.len());
        let started = Instant::now();
        // Every credential first: the hub learns of them through its watch, moments later.
        let mut configs = Vec::new();
        for i in members.len()..n {
            configs.push(credential(&secrets, pki, &url, &format!("bench-{i:04}")).await?);
        }
        let linked = futures::stream::iter(configs.into_iter().map(|config| {
            let (beats, stop) = (beats.clone(), stop.clone());
            let heartbeat = s.heartbeat;
            async move {
                link(&config, heartbeat, beats, stop)
                    .await
                    .with_context(|| format!("linking {}", config.cluster))
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
        for m in linked {
            members.push(m?);
        }
        let link_seconds = started.elapsed().as_secs_f64();

        eprintln!("  {n} clusters: idle for {} s", s.seconds);
        let beats_before = beats.load(Ordering::Relaxed);
        let a = procstat::sample(hub.pid())?;
        tokio::time::sleep(Duration::from_secs(s.seconds)).await;
        let b = procstat::sample(hub.pid())?;
        let heartbeats = beats.load(Ordering::Relaxed) - beats_before;
        let cpu = procstat::cpu_share(&a, &b);
        let cpu_seconds = b.cpu.saturating_sub(a.cpu).as_secs_f64();

        eprintln!("  {n} clusters: {} changes, and the floor", s.changes);
        let (link_samples, floor_samples) = latency(&members, &floor_api, s.changes).await?;
        let link = Summary::of(&link_samples);
        let floor = Summary::of(&floor_samples);
        let after = procstat::sample(hub.pid())?;
        let rss_above_empty = after.rss_kib.saturating_sub(empty.rss_kib);
        sizes.push(json!({
            "clusters": n,
            "linkSeconds": round(link_seconds),
            "hubRssMiB": round(procstat::mib(after.rss_kib)),
            "hubThreads": after.threads,
            "hubCpuPercentOfCore": round(cpu * 100.0),
            "heartbeats": heartbeats,
            "heartbeatsPerSecond": round(heartbeats as f64 / s.seconds as f64),
            "hubCpuMsPerHeartbeat": round(ratio(cpu_seconds * 1000.0, heartbeats as f64)),
            "perCluster": {
                "rssKiBAboveNoLinks": round(rss_above_empty as f64 / n as f64),
                "cpuPercentOfCore": round(cpu * 100.0 / n as f64),
            },
            "changeToStored": link.json(),
            "floorDirectWrite": floor.json(),
            "ratioToFloor": {"p50": round(ratio(link.p50, floor.p50)),
                             "p99": round(ratio(link.p99, floor.p99))},
        }));
    }
    stop.cancel();
    hub.stop();
    Ok(json!({
        "heartbeatSeconds": s.heartbeat.as_secs_f64(),
        "idleSeconds": s.seconds,
        "changes": s.changes,
        "hubWithoutLinks": {"rssMiB": round(procstat::mib(empty.rss_kib))},
        "sizes": sizes,
    }))
}

/// A CA, and the hub's certificate for 127.0.0.1 signed by it.
fn write_pki(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "kdiag bench fleet CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])?;
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key))?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("tls.crt"), leaf_cert.pem())?;
    std::fs::write(dir.join("tls.key"), leaf_key.serialize_pem())?;
    Ok(())
}

/// The cluster's own credential, stored at the hub as `kubectl diag clusters add` stores it.
async fn credential(
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    pki: &Path,
    url: &str,
    cluster: &str,
) -> Result<MemberConfig> {
    let token = kdiag_fleet::credential::generate_token()?;
    let secret = kdiag_fleet::credential::secret(FLEET_NAMESPACE, cluster, &token);
    let name = kdiag_fleet::credential::secret_name(cluster);
    let _ = secrets.delete(&name, &Default::default()).await;
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {name}"))?;
    let file = pki.join(format!("{cluster}.token"));
    std::fs::write(&file, &token)?;
    Ok(MemberConfig::new(url, cluster, file, pki.join("ca.crt")))
}

/// One change a simulated member sends up; `acked` gets the instant of the hub's ack.
struct Change {
    name: String,
    result: ProbeResult,
    acked: oneshot::Sender<Instant>,
}

struct MemberHandle {
    changes: mpsc::Sender<Change>,
}

fn facts() -> Facts {
    Facts {
        protocol: kdiag_fleet::protocol::VERSION,
        kdiag_version: kdiag_fleet::KDIAG_VERSION.into(),
        kubernetes_version: "v1.20.2".into(),
        node_count: 3,
        dropped_results: 0,
        abnormals: None,
    }
}

async fn send(ws: &mut Link, m: &MemberMessage) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(m)?)).await?;
    Ok(())
}

/// Dials the hub as `config`'s cluster, waits for the first heartbeat's answer (the hub has
/// its Cluster then), and leaves the member running in a task until `stop`.
async fn link(
    config: &MemberConfig,
    heartbeat: Duration,
    beats: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<MemberHandle> {
    // A credential created moments ago may not be in the hub's cache yet: 401 until it is.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ws = loop {
        match kdiag_fleet::member::dial(config).await {
            Ok(ws) => break ws,
            Err(kdiag_fleet::Error::Refused { status: 401, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e.into()),
        }
    };
    send(&mut ws, &MemberMessage::Heartbeat(facts())).await?;
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => bail!("no answer to the first heartbeat within 60 s"),
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(HubMessage::HeartbeatAck) = serde_json::from_str(&t) {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the link: {e}"),
                None => bail!("the hub closed the link"),
            }
        }
    }
    let (tx, rx) = mpsc::channel(4);
    // Spread the members' beats over one interval, as independent clusters' would be.
    let offset = heartbeat.mul_f64(rand_fraction(&config.cluster));
    tokio::spawn(member(ws, heartbeat, offset, rx, beats, stop));
    Ok(MemberHandle { changes: tx })
}

/// A fraction in [0, 1) from a name (no random crate needed for spreading).
fn rand_fraction(name: &str) -> f64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % 10_000) as f64 / 10_000.0
}

async fn member(
    mut ws: Link,
    heartbeat: Duration,
    offset: Duration,
    mut changes: mpsc::Receiver<Change>,
    beats: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    let mut pending: HashMap<u64, oneshot::Sender<Instant>> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            _ = ticker.tick() => {
                if send(&mut ws, &MemberMessage::Heartbeat(facts())).await.is_err() {
                    return;
                }
            }
            Some(c) = changes.recv() => {
                seq += 1;
                pending.insert(seq, c.acked);
                let m = MemberMessage::ProbeStatus {
                    seq,
                    namespace: SOURCE_NAMESPACE.into(),
                    name: c.name,
                    object: Some(c.result),
                };
                if send(&mut ws, &m).await.is_err() {
                    return;
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => return,
                };
                match serde_json::from_str(&text) {
                    Ok(HubMessage::HeartbeatAck) => {
                        beats.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(HubMessage::Ack { seq }) => {
                        if let Some(done) = pending.remove(&seq) {
                            let _ = done.send(Instant::now());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A ProbeStatus with one failing checker whose message says which change it is.
fn result(i: usize) -> Result<ProbeResult> {
    Ok(ProbeResult {
        spec: serde_json::from_value(json!({"checkers": [
            {"name": "dns", "status": "ERROR", "message": format!("no answer (change {i})")},
            {"name": "nodes", "status": "PASS"},
        ]}))?,
        status: None,
        annotations: Default::default(),
    })
}

/// `changes` changes sent up by the members in turn, each alternating with the floor's direct
/// write of the same object. Each member's object and each floor object is written once
/// beforehand, so every timed write is an update.
async fn latency(
    members: &[MemberHandle],
    floor: &Api<ProbeStatus>,
    changes: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let used = members.len().min(changes).max(1);
    for (i, m) in members.iter().take(used).enumerate() {
        via_link(m, i).await?;
        direct(floor, i % used, i).await?;
    }
    let (mut link, mut direct_samples) = (Vec::new(), Vec::new());
    for i in 0..changes {
        link.push(via_link(&members[i % used], used + i).await?);
        direct_samples.push(direct(floor, i % used, used + i).await?);
    }
    Ok((link, direct_samples))
}

async fn via_link(m: &MemberHandle, i: usize) -> Result<Duration> {
    let (acked, done) = oneshot::channel();
    let t0 = Instant::now();
    m.changes
        .send(Change {
            name: "bench".into(),
            result: result(i)?,
            acked,
        })
        .await
        .context("a simulated member ended")?;
    let t1 = tokio::time::timeout(Duration::from_secs(60), done)
        .await
        .context("no acknowledgement within 60 s")?
        .context("a simulated member ended")?;
    Ok(t1 - t0)
}

/// What the hub writes for a stored result, written here: the object, then its status.
async fn direct(api: &Api<ProbeStatus>, slot: usize, i: usize) -> Result<Duration> {
    let cluster = format!("floor-{slot:04}");
    let result = result(i)?;
    let stored = state::stored_name(&cluster, SOURCE_NAMESPACE, "bench");
    let body = state::stored_object(
        FLEET_NAMESPACE,
        &cluster,
        SOURCE_NAMESPACE,
        "bench",
        &result,
    );
    let status = state::stored_status(FLEET_NAMESPACE, &stored, &result);
    let apply = PatchParams::apply(state::FIELD_MANAGER).force();
    let t0 = Instant::now();
    api.patch(&stored, &apply, &Patch::Apply(&body)).await?;
    api.patch_status(&stored, &apply, &Patch::Apply(&status))
        .await?;
    Ok(t0.elapsed())
}
