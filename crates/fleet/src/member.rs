//! The member link: a managed cluster's controller dials OUT to the hub (nothing inbound to the
//! member, so it works behind NAT), over one WebSocket on TLS. The hub's certificate must verify
//! against the configured CA, or the member does not connect at all: it logs why and tries
//! again with backoff, and so never takes a frame from a hub it cannot trust.
//!
//! Once connected it sends a heartbeat with the cluster's facts (Kubernetes version, node count,
//! kdiag version) every interval, and every ProbeStatus change from [`Outbox`] until the hub
//! acknowledges it. A dropped link is retried with exponential backoff (reset once a link was
//! up); results queued meanwhile go up on the next link.
//!
//! What the link sends is read-only facts and results: it never carries the cluster's
//! credentials to the apiserver, and the hub gets no way into the member.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kdiag_api::ProbeStatus;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::outbox::{Outbox, Update};
use crate::protocol::{CLUSTER_HEADER, Facts, HubMessage, MemberMessage, PATH, ProbeResult};

/// How a member links to its hub.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// The hub, `wss://HOST:PORT` (the path is the link's own).
    pub hub_url: String,
    /// This cluster's name at the hub (a DNS label).
    pub cluster: String,
    /// The file holding this cluster's credential (read at every connection, so a rotated
    /// credential is picked up).
    pub credential_file: PathBuf,
    /// The CA the hub's certificate must verify against (read at every connection).
    pub hub_ca_file: PathBuf,
    /// How often a heartbeat goes up; the link is dropped when the hub says nothing for three.
    pub heartbeat: Duration,
    /// ProbeStatuses waiting for the hub at most; beyond, the oldest is dropped and counted.
    pub queue_capacity: usize,
    /// The first and the longest wait between connection attempts.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Create, update and delete the Probes the hub assigns (an opt-in: a Probe runs the pods
    /// its template says, so this lets the hub run checker pods here).
    pub accept_probes: bool,
    /// The namespace assigned Probes are created in.
    pub probe_namespace: String,
}

/// The label on the Probes the member created for its hub: only those are updated or removed.
pub const MANAGED_LABEL: &str = "kdiag.io/fleet-managed";
/// The field manager of the member's writes of assigned Probes.
pub const FIELD_MANAGER: &str = "kdiag-fleet-member";

impl MemberConfig {
    pub fn new(
        hub_url: impl Into<String>,
        cluster: impl Into<String>,
        credential_file: PathBuf,
        hub_ca_file: PathBuf,
    ) -> Self {
        Self {
            hub_url: hub_url.into(),
            cluster: cluster.into(),
            credential_file,
            hub_ca_file,
            heartbeat: Duration::from_secs(30),
            queue_capacity: 1000,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            accept_probes: false,
            probe_namespace: "kubeprober".into(),
        }
    }
}

/// The queue and its doorbell, shared by the watch and the link.
struct Shared {
    outbox: Mutex<Outbox>,
    changed: Notify,
    /// Every ProbeStatus the cluster has (`namespace/name`), once the watch listed them all:
    /// what each link's inventory says.
    present: Mutex<Option<std::collections::BTreeSet<String>>>,
    /// Every Abnormal the cluster has (`namespace/name` to its phase), once listed: the
    /// heartbeat's counts and each link's Abnormal inventory.
    abnormals: Mutex<Option<std::collections::BTreeMap<String, String>>>,
}

impl Shared {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the member link until `shutdown`: watches the cluster's ProbeStatuses into the queue
/// and keeps a link to the hub up.
pub async fn run(client: kube::Client, config: MemberConfig, shutdown: CancellationToken) {
    if let Err(why) = crate::credential::check_cluster_name(&config.cluster) {
        tracing::error!(%why, "fleet member link not started");
        return;
    }
    let shared = Arc::new(Shared {
        outbox: Mutex::new(Outbox::new(config.queue_capacity)),
        changed: Notify::new(),
        present: Mutex::new(None),
        abnormals: Mutex::new(None),
    });
    let watch = tokio::spawn(watch_probe_statuses(client.clone(), shared.clone()));
    let abnormal_watch = tokio::spawn(watch_abnormals(client.clone(), shared.clone()));
    let mut backoff = backoff(&config);
    while !shutdown.is_cancelled() {
        let mut linked = false;
        let result = link(&client, &config, &shared, &shutdown, &mut linked).await;
        if shutdown.is_cancelled() {
            break;
        }
        if linked {
            backoff = self::backoff(&config);
        }
        let delay = backoff.next().unwrap_or(config.retry_max);
        match &result {
            Err(e @ (Error::HubCertificate { .. } | Error::Refused { .. })) => {
                tracing::error!(hub = %config.hub_url, cluster = %config.cluster, error = %e, retry_in = ?delay, "fleet link refused")
            }
            Err(e) => {
                tracing::warn!(hub = %config.hub_url, cluster = %config.cluster, error = %e, retry_in = ?delay, "fleet link down")
            }
            Ok(()) => {
                tracing::info!(hub = %config.hub_url, retry_in = ?delay, "fleet link closed by the hub")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    watch.abort();
    abnormal_watch.abort();
}

fn backoff(config: &MemberConfig) -> impl Iterator<Item = Duration> + use<> {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.retry_min)
        .with_max_delay(config.retry_max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Every ProbeStatus of the cluster, into the queue (a relist sends only what the hub lacks).
async fn watch_probe_statuses(client: kube::Client, shared: Arc<Shared>) {
    let api: Api<DeserializeGuard<ProbeStatus>> = Api::all(client);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    // A (re)list builds the set of what exists anew: deletions missed meanwhile drop out of it.
    let mut listing: Option<std::collections::BTreeSet<String>> = None;
    while let Some(event) = events.next().await {
        let (object, deleted) = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Default::default());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                *shared.present.lock().unwrap_or_else(|e| e.into_inner()) = listing.take();
                continue;
            }
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            Err(e) => {
                tracing::warn!(error = %e, "fleet: watching ProbeStatuses; retrying");
                continue;
            }
        };
        // A ProbeStatus kdiag cannot read is not sent: the hub would store it no better.
        let Ok(p) = object.0 else { continue };
        let namespace = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let update = Update::ProbeStatus {
            namespace,
            name,
            object: (!deleted).then(|| ProbeResult::of(&p)),
        };
        if let Some(l) = listing.as_mut() {
            l.insert(key);
        } else if let Some(present) = shared
            .present
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            if deleted {
                present.remove(&key);
            } else {
                present.insert(key);
            }
        }
        if shared.outbox().push(update) {
            shared.changed.notify_one();
        }
    }
}

/// Every Abnormal of the cluster, as a summary into the queue; their phases for the heartbeat's
/// counts. A summary changes with the phase and the root cause, not with each step's record, so
/// this sends a few changes per Abnormal.
async fn watch_abnormals(client: kube::Client, shared: Arc<Shared>) {
    let api: Api<DeserializeGuard<kdiag_api::Abnormal>> = Api::all(client);
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut listing: Option<std::collections::BTreeMap<String, String>> = None;
    while let Some(event) = events.next().await {
        let (object, deleted) = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(Default::default());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                *shared.abnormals.lock().unwrap_or_else(|e| e.into_inner()) = listing.take();
                shared.changed.notify_one();
                continue;
            }
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            Err(e) => {
                tracing::warn!(error = %e, "fleet: watching Abnormals; retrying");
                continue;
            }
        };
        let Ok(a) = object.0 else { continue };
        let summary = crate::protocol::summary_of(&a);
        let key = format!("{}/{}", summary.namespace, summary.name);
        let mut guard = shared.abnormals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(phases) = listing.as_mut().or(guard.as_mut()) {
            if deleted {
                phases.remove(&key);
            } else {
                phases.insert(key, summary.phase.clone());
            }
        }
        drop(guard);
        let update = Update::Abnormal {
            namespace: summary.namespace.clone(),
            name: summary.name.clone(),
            object: (!deleted).then_some(summary),
        };
        if shared.outbox().push(update) {
            shared.changed.notify_one();
        }
    }
}

/// A member's side of a link: a WebSocket on TLS, upgraded with the cluster's credential.
pub type Link = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// One link, from dialling to its end. `linked` turns true once the hub took it.
async fn link(
    client: &kube::Client,
    config: &MemberConfig,
    shared: &Shared,
    shutdown: &CancellationToken,
    linked: &mut bool,
) -> Result<(), Error> {
    let mut ws = dial(config).await?;
    *linked = true;
    tracing::info!(hub = %config.hub_url, cluster = %config.cluster, "fleet link up");
    let kubernetes_version = match client.apiserver_version().await {
        Ok(v) => v.git_version,
        Err(e) => {
            tracing::warn!(error = %e, "fleet: the apiserver's version");
            String::new()
        }
    };
    let mut node_count = 0;
    shared.outbox().rewind();
    let mut ticker = tokio::time::interval(config.heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let silence = config.heartbeat * 3;
    // One-time runs whose end this link reported. Per link: a new link reports them all again
    // (the hub ignores those it recorded), so an end sent just before a drop is not lost.
    let mut once_reported = std::collections::HashMap::new();
    let mut inventory_sent = false;
    let mut abnormal_inventory_sent = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > silence {
                    return Err(Error::HubSilent { seconds: silence.as_secs() });
                }
                match count_nodes(client).await {
                    Ok(n) => node_count = n,
                    Err(e) => tracing::warn!(error = %e, "fleet: counting nodes"),
                }
                let (abnormals, abnormal_names) = {
                    let phases = shared.abnormals.lock().unwrap_or_else(|e| e.into_inner());
                    let counts = phases.as_ref().map(|p| crate::protocol::count_abnormals(p.values().map(String::as_str)));
                    let names: Option<Vec<String>> = (!abnormal_inventory_sent)
                        .then(|| phases.as_ref().map(|p| p.keys().cloned().collect()))
                        .flatten();
                    (counts, names)
                };
                let facts = Facts {
                    protocol: crate::protocol::VERSION,
                    kdiag_version: crate::KDIAG_VERSION.into(),
                    kubernetes_version: kubernetes_version.clone(),
                    node_count,
                    dropped_results: shared.outbox().dropped(),
                    abnormals,
                };
                send(&mut ws, &MemberMessage::Heartbeat(facts)).await?;
                send_unsent(&mut ws, shared).await?;
                // Once per link, after what was queued: a full resync of what exists.
                if !inventory_sent {
                    let present = shared.present.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(present) = present {
                        let probe_statuses = present.into_iter().collect();
                        send(&mut ws, &MemberMessage::Inventory { probe_statuses }).await?;
                        inventory_sent = true;
                    }
                }
                if let Some(abnormals) = abnormal_names {
                    send(&mut ws, &MemberMessage::AbnormalInventory { abnormals }).await?;
                    abnormal_inventory_sent = true;
                }
                if config.accept_probes {
                    match finished_once_runs(client, &config.probe_namespace, &once_reported).await {
                        Ok(finished) => {
                            for (m, fingerprint) in finished {
                                send(&mut ws, &m).await?;
                                if let MemberMessage::OnceFinished { id, .. } = m {
                                    once_reported.insert(id, fingerprint);
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "fleet: the one-time runs' ProbeRuns"),
                    }
                }
            }
            _ = shared.changed.notified() => send_unsent(&mut ws, shared).await?,
            frame = ws.next() => {
                let frame = match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(Error::Link { reason: e.to_string() }),
                    Some(Ok(f)) => f,
                };
                last_heard = Instant::now();
                match frame {
                    Message::Text(text) => match serde_json::from_str::<HubMessage>(&text) {
                        Ok(HubMessage::Ack { seq }) => shared.outbox().ack(seq),
                        Ok(HubMessage::HeartbeatAck) => {}
                        Ok(HubMessage::Probes { probes }) if config.accept_probes => {
                            if let Err(e) = apply_probes(client, &config.probe_namespace, &probes).await {
                                tracing::warn!(error = %e, "fleet: the Probes the hub assigns; tried again when it sends them next");
                            }
                        }
                        Ok(HubMessage::RunOnce { id, probes }) if config.accept_probes => {
                            match run_once(client, &config.probe_namespace, &id, &probes).await {
                                // Nothing to run: it is over now (it would never end otherwise).
                                Ok(0) => {
                                    let finish_time = jiff::Timestamp::now().to_string();
                                    send(&mut ws, &MemberMessage::OnceFinished { id: id.clone(), probes: Vec::new(), finish_time, results: Vec::new() }).await?;
                                    once_reported.insert(id, 0);
                                }
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, %id, "fleet: a one-time run the hub asked for"),
                            }
                        }
                        Ok(HubMessage::RunOnce { id, .. }) => {
                            tracing::info!(%id, "fleet: the hub asks for a one-time run; not taken without --fleet-accept-probes");
                        }
                        Ok(HubMessage::Probes { probes }) => {
                            if !probes.is_empty() {
                                tracing::info!(count = probes.len(), "fleet: the hub assigns Probes; not taken without --fleet-accept-probes");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "fleet: a frame from the hub kdiag does not know; ignored"),
                    },
                    Message::Close(_) => return Ok(()),
                    _ => {}
                }
            }
        }
    }
}

async fn send_unsent(ws: &mut Link, shared: &Shared) -> Result<(), Error> {
    let messages = shared.outbox().unsent();
    for m in &messages {
        send(ws, m).await?;
    }
    Ok(())
}

async fn send(ws: &mut Link, message: &MemberMessage) -> Result<(), Error> {
    let text = serde_json::to_string(message).map_err(|e| Error::Link {
        reason: e.to_string(),
    })?;
    ws.send(Message::text(text)).await.map_err(|e| Error::Link {
        reason: e.to_string(),
    })
}

/// Dials the hub once and hangs up: Ok when the hub's certificate verifies and the hub takes
/// this cluster's credential (a check of the settings).
pub async fn connect_once(config: &MemberConfig) -> Result<(), Error> {
    let mut ws = dial(config).await?;
    let _ = ws.close(None).await;
    Ok(())
}

/// Host and port of `wss://HOST:PORT`.
pub fn hub_address(url: &str) -> Result<(String, u16), Error> {
    let bad = |reason: &str| Error::HubUrl {
        url: url.into(),
        reason: reason.into(),
    };
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("wss") {
        return Err(bad("the link is always TLS: use wss://"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), uri.port_u16().unwrap_or(443)))
}

/// TCP, TLS with the hub's certificate checked, then the WebSocket upgrade with the credential.
/// Public for tools that speak [`crate::protocol`] themselves (the fleet benchmark's simulated
/// members); a controller runs [`run`].
pub async fn dial(config: &MemberConfig) -> Result<Link, Error> {
    let (host, port) = hub_address(&config.hub_url)?;
    let addr = format!("{host}:{port}");
    let tls = crate::tls::client_config(&config.hub_ca_file)?;
    let token =
        std::fs::read_to_string(&config.credential_file).map_err(|source| Error::ReadFile {
            path: config.credential_file.clone(),
            source,
        })?;
    let unreachable = |reason: String| Error::Unreachable {
        addr: addr.clone(),
        reason,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| unreachable(format!("{host} cannot be a TLS server name: {e}")))?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable("the TLS handshake timed out".into()))?
    .map_err(|e| Error::HubCertificate {
        addr: addr.clone(),
        ca_file: config.hub_ca_file.clone(),
        reason: e.to_string(),
    })?;
    let mut request = format!("wss://{addr}{PATH}")
        .into_client_request()
        .map_err(|e| Error::HubUrl {
            url: config.hub_url.clone(),
            reason: e.to_string(),
        })?;
    let header = |v: String| {
        HeaderValue::from_str(&v).map_err(|_| Error::Link {
            reason: "the credential or cluster name is not a valid header value".into(),
        })
    };
    request
        .headers_mut()
        .insert("authorization", header(format!("Bearer {}", token.trim()))?);
    request
        .headers_mut()
        .insert(CLUSTER_HEADER, header(config.cluster.clone())?);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Error::Refused {
            status: response.status().as_u16(),
            message: response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Err(e) => Err(Error::Link {
            reason: e.to_string(),
        }),
    }
}

/// Makes the managed Probes of `namespace` exactly `probes`: each applied (created or updated),
/// and those the hub no longer assigns deleted. Probes not labelled [`MANAGED_LABEL`] are never
/// touched.
async fn apply_probes(
    client: &kube::Client,
    namespace: &str,
    probes: &[crate::protocol::AssignedProbe],
) -> Result<(), Error> {
    let api: Api<kdiag_api::Probe> = Api::namespaced(client.clone(), namespace);
    let apply = kube::api::PatchParams::apply(FIELD_MANAGER).force();
    for p in probes {
        let body = serde_json::json!({
            "apiVersion": "kubeprober.erda.cloud/v1",
            "kind": "Probe",
            "metadata": {"name": p.name, "namespace": namespace, "labels": {MANAGED_LABEL: "true"}},
            "spec": p.spec,
        });
        api.patch(&p.name, &apply, &kube::api::Patch::Apply(&body))
            .await
            .map_err(|e| Error::kube("apply", format!("Probe {namespace}/{}", p.name), e))?;
    }
    let managed = api
        .list(&ListParams::default().labels(MANAGED_LABEL))
        .await
        .map_err(|e| Error::kube("list", format!("the managed Probes of {namespace}"), e))?;
    for existing in managed.items {
        let name = existing.metadata.name.unwrap_or_default();
        if probes.iter().any(|p| p.name == name) {
            continue;
        }
        match api.delete(&name, &Default::default()).await {
            Ok(_) => {
                tracing::info!(probe = %name, "fleet: a Probe the hub no longer assigns, removed")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(
                    "delete",
                    format!("Probe {namespace}/{name}"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// The label on the ProbeRuns of a one-time run the hub asked for: its id.
pub const ONCE_LABEL: &str = "kdiag.io/fleet-once";

/// Starts a one-time run of the named managed Probes (all when `probes` is empty): one manual
/// ProbeRun each, which kdiag's probe runner runs (docs/probes.md). Returns how many it started.
async fn run_once(
    client: &kube::Client,
    namespace: &str,
    id: &str,
    probes: &[String],
) -> Result<usize, Error> {
    let managed: Api<kdiag_api::Probe> = Api::namespaced(client.clone(), namespace);
    let names: Vec<String> = managed
        .list(&ListParams::default().labels(MANAGED_LABEL))
        .await
        .map_err(|e| Error::kube("list", format!("the managed Probes of {namespace}"), e))?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| probes.is_empty() || probes.contains(n))
        .collect();
    let runs: Api<kdiag_api::ProbeRun> = Api::namespaced(client.clone(), namespace);
    let started = names.len();
    for name in names {
        let base: String = name.chars().take(50).collect();
        let run = kdiag_api::ProbeRun {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}-", base.trim_end_matches('-'))),
                namespace: Some(namespace.to_owned()),
                labels: Some(
                    [
                        (
                            kdiag_api::diagnosis::probe_run::PROBE_RUN_PROBE_LABEL.to_owned(),
                            kdiag_api::diagnosis::probe_run::probe_label_value(&name),
                        ),
                        (
                            ONCE_LABEL.to_owned(),
                            kdiag_api::labels::node_label_value(id),
                        ),
                    ]
                    .into(),
                ),
                annotations: Some({
                    let mut a = kdiag_api::diagnosis::probe_run::requested_now();
                    a.insert(ONCE_ID_ANNOTATION.to_owned(), id.to_owned());
                    a
                }),
                ..Default::default()
            },
            spec: kdiag_api::ProbeRunSpec {
                probe: name.clone(),
                trigger: kdiag_api::ProbeRunTrigger::Manual,
                ..Default::default()
            },
            status: None,
        };
        runs.create(&Default::default(), &run)
            .await
            .map_err(|e| Error::kube("create", format!("a ProbeRun of {namespace}/{name}"), e))?;
    }
    Ok(started)
}

/// The annotation on a one-time run's ProbeRuns holding its id as the hub sent it (the label
/// holds it as a label value).
pub const ONCE_ID_ANNOTATION: &str = "kdiag.io/fleet-once-id";

/// An [`MemberMessage::OnceFinished`] for each one-time run whose ProbeRuns all ended and that
/// `reported` lacks or holds with other results (a root cause written back since), with the
/// fingerprint of what it says.
async fn finished_once_runs(
    client: &kube::Client,
    namespace: &str,
    reported: &std::collections::HashMap<String, u64>,
) -> Result<Vec<(MemberMessage, u64)>, Error> {
    let runs: Api<kdiag_api::ProbeRun> = Api::namespaced(client.clone(), namespace);
    let list = runs
        .list(&ListParams::default().labels(ONCE_LABEL))
        .await
        .map_err(|e| Error::kube("list", format!("the one-time ProbeRuns of {namespace}"), e))?;
    let mut by_id: std::collections::BTreeMap<String, Vec<kdiag_api::ProbeRun>> =
        Default::default();
    for r in list.items {
        let id = r
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ONCE_ID_ANNOTATION))
            .cloned();
        if let Some(id) = id {
            by_id.entry(id).or_default().push(r);
        }
    }
    Ok(by_id
        .into_iter()
        .filter_map(|(id, runs)| {
            let finish_time = crate::state::once_finished(&runs)?;
            let mut probes: Vec<String> = runs.iter().map(|r| r.spec.probe.clone()).collect();
            probes.sort();
            probes.dedup();
            let results = crate::state::once_results(&runs);
            let fingerprint = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                serde_json::to_string(&results)
                    .unwrap_or_default()
                    .hash(&mut h);
                // Never 0: that marks a run reported with nothing to run.
                h.finish().max(1)
            };
            if reported.get(&id) == Some(&fingerprint) || reported.get(&id) == Some(&0) {
                return None;
            }
            let m = MemberMessage::OnceFinished {
                id,
                probes,
                finish_time,
                results,
            };
            Some((m, fingerprint))
        })
        .collect())
}

/// The cluster's nodes, counted page by page from their metadata.
async fn count_nodes(client: &kube::Client) -> Result<i64, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut params = ListParams::default().limit(500);
    let mut count = 0;
    loop {
        let page = api.list_metadata(&params).await?;
        count += page.items.len() as i64;
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return Ok(count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_address_must_be_wss() {
        assert_eq!(
            hub_address("wss://hub.example:8443").unwrap(),
            ("hub.example".into(), 8443)
        );
        assert_eq!(
            hub_address("wss://hub.example").unwrap(),
            ("hub.example".into(), 443)
        );
        assert_eq!(hub_address("wss://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(matches!(
            hub_address("ws://hub.example:80"),
            Err(Error::HubUrl { .. })
        ));
    }
}
