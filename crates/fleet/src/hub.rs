//! The hub (`kdiag hub`): takes member links over TLS, authenticates each member by its own
//! credential before the WebSocket upgrade, creates the member's `Cluster` on its first link and
//! keeps its status, and stores the member's ProbeStatuses in the fleet namespace
//! ([`crate::state`] says how). A sweeper marks clusters whose heartbeats stopped offline; it
//! reads the Cluster objects, so a restarted hub (or a second one) reaches the same verdicts.
//!
//! Credentials and revocations are read from watched caches (Secrets labelled
//! [`crate::credential::CLUSTER_LABEL`] and the Clusters), checked at the upgrade and again at
//! every heartbeat, so a revocation also ends a live link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kdiag_api::{Cluster, ClusterStatus, Probe, ProbeStatus};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::credential::{self, Accepted, Stored};
use crate::protocol::{CLUSTER_HEADER, Facts, HubMessage, MemberMessage, PATH, ProbeResult};
use crate::state;

/// How the hub runs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Where member links come in (TLS).
    pub bind: SocketAddr,
    /// The fleet namespace: Clusters, credential Secrets and the stored results.
    pub namespace: String,
    pub tls_cert_file: std::path::PathBuf,
    pub tls_key_file: std::path::PathBuf,
    /// A connected cluster silent for longer is marked offline.
    pub offline_after: Duration,
    /// KubeProber's shared SECRET_KEY, accepted from any cluster: only when set (migration).
    pub shared_secret_key: Option<String>,
    /// A Cluster's status is written when something in it changed; its heartbeat time alone is
    /// refreshed at most this often (and at least every third of `offline_after`, which reads
    /// it), so a quiet fleet does not write on every heartbeat.
    pub heartbeat_write_interval: Duration,
}

impl HubConfig {
    pub fn new(
        bind: SocketAddr,
        tls_cert_file: std::path::PathBuf,
        tls_key_file: std::path::PathBuf,
    ) -> Self {
        Self {
            bind,
            namespace: DEFAULT_NAMESPACE.into(),
            tls_cert_file,
            tls_key_file,
            offline_after: Duration::from_secs(90),
            shared_secret_key: None,
            heartbeat_write_interval: DEFAULT_HEARTBEAT_WRITE_INTERVAL,
        }
    }

    /// How often a heartbeat that changed nothing else is written: the configured interval, but
    /// never more than a third of `offline_after` (the sweeper must see a fresh time).
    pub fn heartbeat_refresh(&self) -> Duration {
        self.heartbeat_write_interval.min(self.offline_after / 3)
    }
}

/// The heartbeat time is written at most this often by default.
pub const DEFAULT_HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(30);

/// The fleet namespace by default.
pub const DEFAULT_NAMESPACE: &str = "kdiag-fleet";
/// The port member links come in on by default.
pub const DEFAULT_PORT: u16 = 10443;

struct Hub {
    client: kube::Client,
    config: HubConfig,
    secrets: Store<Secret>,
    clusters: Store<Cluster>,
    /// The Probes of the fleet namespace, assigned to clusters by their labels.
    probes: Store<Probe>,
    /// The live link of each cluster: a newer link of the same cluster ends the older.
    links: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_link: AtomicU64,
}

impl Hub {
    fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters
            .get(&ObjectRef::new(name).within(&self.config.namespace))
    }

    fn authenticate(
        &self,
        cluster: &str,
        token: Option<&str>,
    ) -> Result<Accepted, credential::Refusal> {
        let stored = self
            .secrets
            .get(&ObjectRef::new(&credential::secret_name(cluster)).within(&self.config.namespace))
            .map(|s| Stored::from_secret(&s));
        let revoked = self
            .cluster(cluster)
            .is_some_and(|c| credential::is_revoked(&c.metadata));
        credential::authenticate(
            cluster,
            token,
            stored.as_ref(),
            revoked,
            self.config.shared_secret_key.as_deref(),
        )
    }

    fn clusters_api(&self) -> Api<Cluster> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn results_api(&self) -> Api<ProbeStatus> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }
}

/// Binds the link listener and returns its address and the future that runs the hub until
/// `shutdown` (it must be spawned or awaited). Links are taken once the caches are filled.
pub async fn start(
    client: kube::Client,
    config: HubConfig,
    shutdown: CancellationToken,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    Error,
> {
    let tls = crate::tls::ServingCertificate::load(&config.tls_cert_file, &config.tls_key_file)?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| Error::Listen {
            addr: config.bind,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.bind,
        source,
    })?;
    let (secrets, secrets_writer) = reflector::store();
    let (clusters, clusters_writer) = reflector::store();
    let (probes, probes_writer) = reflector::store();
    let probes_watch = watcher(
        Api::<Probe>::namespaced(client.clone(), &config.namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(probes_writer);
    let secrets_watch = watcher(
        Api::<Secret>::namespaced(client.clone(), &config.namespace),
        watcher::Config::default().labels(credential::CLUSTER_LABEL),
    )
    .default_backoff()
    .reflect(secrets_writer);
    let clusters_watch = watcher(
        Api::<Cluster>::namespaced(client.clone(), &config.namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(clusters_writer);
    let hub = Arc::new(Hub {
        client,
        config,
        secrets,
        clusters,
        probes,
        links: Mutex::new(HashMap::new()),
        next_link: AtomicU64::new(1),
    });
    let run = async move {
        let watches = [
            tokio::spawn(drive("credential Secrets", secrets_watch)),
            tokio::spawn(drive("Clusters", clusters_watch)),
            tokio::spawn(drive("Probes", probes_watch)),
        ];
        let ready = async {
            let _ = hub.secrets.wait_until_ready().await;
            let _ = hub.clusters.wait_until_ready().await;
            let _ = hub.probes.wait_until_ready().await;
        };
        tokio::select! {
            _ = ready => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!(address = %local, namespace = %hub.config.namespace, "fleet hub taking member links");
        let sweeper = tokio::spawn(sweep(hub.clone(), shutdown.clone()));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let Ok((tcp, peer)) = accepted else { continue };
            // Per link: a renewed certificate is served from the next link on.
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let (hub, shutdown) = (hub.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_link(&hub, acceptor, tcp, &shutdown).await {
                    tracing::warn!(%peer, error = %e, "fleet link ended");
                }
            });
        }
        sweeper.abort();
        for w in watches {
            w.abort();
        }
    };
    Ok((local, run))
}

async fn drive<T, E: std::fmt::Display>(
    what: &str,
    events: impl futures::Stream<Item = Result<T, E>>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(e) = events.next().await {
        if let Err(e) = e {
            tracing::warn!(error = %e, "fleet hub: watching {what}; retrying");
        }
    }
}

/// Marks connected clusters whose heartbeats stopped offline.
async fn sweep(hub: Arc<Hub>, shutdown: CancellationToken) {
    let period =
        (hub.config.offline_after / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let message = state::missed_heartbeats_message(hub.config.offline_after);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = jiff::Timestamp::now();
        for c in hub.clusters.state() {
            let Some(status) = &c.status else { continue };
            if !state::missed_heartbeats(status, now, hub.config.offline_after) {
                continue;
            }
            let name = c.metadata.name.clone().unwrap_or_default();
            if let Err(e) = mark_offline(&hub, &name, &c.metadata, Some(status), &message).await {
                tracing::debug!(cluster = %name, error = %e, "fleet hub: marking offline");
            } else {
                tracing::info!(cluster = %name, "fleet: cluster offline (missed heartbeats)");
            }
        }
    }
}

/// Writes the cluster offline, conditional on the version read: a heartbeat that came in since
/// wins.
async fn mark_offline(
    hub: &Hub,
    name: &str,
    meta: &ObjectMeta,
    status: Option<&ClusterStatus>,
    why: &str,
) -> Result<(), Error> {
    let Some(mut patch) = state::offline(status, why, jiff::Timestamp::now()) else {
        return Ok(());
    };
    patch["metadata"] = json!({"resourceVersion": meta.resource_version});
    hub.clusters_api()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("mark offline", format!("Cluster {name}"), e))?;
    Ok(())
}

fn refuse(status: u16, message: String) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(message));
    *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN);
    r
}

/// One member link: TLS, authentication at the upgrade, then its frames until it ends.
async fn serve_link(
    hub: &Arc<Hub>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let link = |reason: String| Error::Link { reason };
    let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
        .await
        .map_err(|_| link("the TLS handshake timed out".into()))?
        .map_err(|e| link(format!("TLS: {e}")))?;
    let mut admitted: Option<(String, String, Accepted)> = None;
    // tungstenite's handshake callback returns its own (large) error response type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        if request.uri().path() != PATH {
            return Err(refuse(404, format!("the fleet link is served at {PATH}")));
        }
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let cluster = header(CLUSTER_HEADER).unwrap_or_default();
        let token =
            header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
        match hub.authenticate(&cluster, token.as_deref()) {
            Ok(how) => {
                admitted = Some((cluster, token.unwrap_or_default(), how));
                Ok(response)
            }
            Err(refusal) => {
                tracing::warn!(%cluster, why = %refusal.message(), "fleet: member refused");
                Err(refuse(refusal.status(), refusal.message()))
            }
        }
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tls, callback)
        .await
        .map_err(|e| link(format!("the upgrade: {e}")))?;
    let Some((cluster, token, how)) = admitted else {
        return Err(link("upgraded without a decision".into()));
    };
    if how == Accepted::SharedSecretKey {
        tracing::warn!(%cluster, "fleet: member admitted with the shared SECRET_KEY (migration opt-in); give it a credential of its own");
    }
    let id = hub.next_link.fetch_add(1, Ordering::Relaxed);
    let ended = CancellationToken::new();
    if let Some((_, older)) = hub
        .links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(cluster.clone(), (id, ended.clone()))
    {
        older.cancel();
    }
    tracing::info!(%cluster, "fleet: member linked");
    let result = member_frames(hub, &mut ws, &cluster, &token, &ended, shutdown).await;
    let _ = ws.close(None).await;
    let mut links = hub.links.lock().unwrap_or_else(|e| e.into_inner());
    if links.get(&cluster).is_some_and(|(i, _)| *i == id) {
        links.remove(&cluster);
    }
    result
}

type Link = tokio_tungstenite::WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

async fn reply(ws: &mut Link, m: &HubMessage) -> Result<(), Error> {
    let text = serde_json::to_string(m).unwrap_or_default();
    ws.send(Message::text(text)).await.map_err(|e| Error::Link {
        reason: e.to_string(),
    })
}

/// What one linked member sends, until the link ends, is replaced or revoked.
async fn member_frames(
    hub: &Hub,
    ws: &mut Link,
    cluster: &str,
    token: &str,
    ended: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    ensure_cluster(hub, cluster).await?;
    let mut counts = seed_counts(hub, cluster).await?;
    // What this link wrote last, so `since` holds even while the cache lags behind.
    let mut written: Option<ClusterStatus> = None;
    // The assignment last sent down (None: nothing yet on this link, so the first is sent).
    let mut assigned: Option<String> = None;
    // The one-time run last sent down on this link (the cache may lag behind its record).
    let mut sent_once: Option<String> = None;
    // The diagnoses the Cluster shows, as this link last wrote them (or found them).
    let mut diagnoses = hub
        .cluster(cluster)
        .and_then(|c| c.status.clone())
        .map(|s| s.diagnoses)
        .unwrap_or_default();
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            _ = ended.cancelled() => return Err(Error::Link { reason: "a newer link of the cluster replaced this one".into() }),
            _ = shutdown.cancelled() => return Ok(()),
        };
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Err(e)) => {
                return Err(Error::Link {
                    reason: e.to_string(),
                });
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let message: MemberMessage = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "fleet: a frame kdiag does not know; ignored");
                continue;
            }
        };
        match message {
            MemberMessage::Heartbeat(facts) => {
                if let Err(refusal) = hub.authenticate(cluster, Some(token)) {
                    let previous = hub.cluster(cluster);
                    if let Some(c) = previous {
                        let _ = mark_offline(
                            hub,
                            cluster,
                            &c.metadata,
                            c.status.as_ref(),
                            &refusal.message(),
                        )
                        .await;
                    }
                    tracing::warn!(%cluster, why = %refusal.message(), "fleet: closing a live link");
                    return Err(Error::Refused {
                        status: refusal.status(),
                        message: refusal.message(),
                    });
                }
                let total = counts.values().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                written = heartbeat(hub, cluster, &facts, total, written).await?;
                reply(ws, &HubMessage::HeartbeatAck).await?;
                // Checked at each heartbeat: a label change reaches the member within one.
                let labels = hub
                    .cluster(cluster)
                    .and_then(|c| c.metadata.labels.clone())
                    .unwrap_or_default();
                let probes: Vec<Probe> = hub.probes.state().iter().map(|p| (**p).clone()).collect();
                let now = state::assigned_probes(&labels, &probes);
                let names: Vec<String> = now.iter().map(|p| p.name.clone()).collect();
                let cached = hub.cluster(cluster).and_then(|c| c.status.clone());
                if let Some(patch) = state::attached_probes(cached.as_ref(), &names) {
                    hub.clusters_api()
                        .patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| {
                            Error::kube("patch attachedProbes of", format!("Cluster {cluster}"), e)
                        })?;
                }
                let fingerprint = serde_json::to_string(&now).unwrap_or_default();
                if assigned.as_ref() != Some(&fingerprint) {
                    reply(ws, &HubMessage::Probes { probes: now }).await?;
                    assigned = Some(fingerprint);
                }
                run_once(hub, ws, cluster, &mut sent_once).await?;
            }
            MemberMessage::ProbeStatus {
                seq,
                namespace,
                name,
                object,
            } => {
                let stored = state::stored_name(cluster, &namespace, &name);
                match store(hub, cluster, &namespace, &name, object.as_ref()).await {
                    Ok(()) => {}
                    // Refused as invalid: sending it again would not help; it is acknowledged.
                    Err(Error::Kube { source, .. }) if is_permanent(&source) => {
                        tracing::warn!(%cluster, %namespace, %name, error = %source, "fleet: a result the hub cannot store; dropped");
                    }
                    Err(e) => return Err(e),
                }
                match &object {
                    Some(o) => {
                        counts.insert(stored, o.counts());
                    }
                    None => {
                        counts.remove(&stored);
                    }
                }
                reply(ws, &HubMessage::Ack { seq }).await?;
            }
            MemberMessage::Abnormal {
                seq,
                namespace,
                name,
                object,
            } => {
                if let Some(next) =
                    state::diagnoses_with(&diagnoses, &namespace, &name, object.as_ref())
                {
                    write_diagnoses(hub, cluster, &next).await?;
                    diagnoses = next;
                }
                reply(ws, &HubMessage::Ack { seq }).await?;
            }
            MemberMessage::AbnormalInventory { abnormals } => {
                let present = abnormals.into_iter().collect();
                if let Some(next) = state::diagnoses_present(&diagnoses, &present) {
                    write_diagnoses(hub, cluster, &next).await?;
                    diagnoses = next;
                }
            }
            MemberMessage::Inventory { probe_statuses } => {
                let present = probe_statuses.into_iter().collect();
                for stale in resync(hub, cluster, &present).await? {
                    counts.remove(&stale);
                }
            }
            MemberMessage::OnceFinished {
                id,
                probes,
                finish_time,
                results,
            } => {
                // Not worth ending the link over: the member reports it again on its next link.
                if let Err(e) =
                    once_finished(hub, cluster, &id, &probes, &finish_time, &results).await
                {
                    tracing::warn!(%cluster, %id, error = %e, "fleet: recording the end of a one-time run");
                }
            }
        }
    }
}

/// Deletes the results stored for `cluster` whose source the member no longer has; returns
/// their stored names.
async fn resync(
    hub: &Hub,
    cluster: &str,
    present: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>, Error> {
    let stored = hub
        .results_api()
        .list_metadata(
            &ListParams::default().labels(&format!("{}={cluster}", state::CLUSTER_LABEL)),
        )
        .await
        .map_err(|e| Error::kube("list", format!("the ProbeStatuses of {cluster}"), e))?;
    let pairs: Vec<(String, Option<String>)> = stored
        .items
        .into_iter()
        .map(|m| {
            let source = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(state::SOURCE_ANNOTATION).cloned());
            (m.metadata.name.unwrap_or_default(), source)
        })
        .collect();
    let stale = state::stale_results(
        pairs.iter().map(|(n, s)| (n.as_str(), s.as_deref())),
        present,
    );
    for name in &stale {
        match hub
            .results_api()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(
                    "delete",
                    format!("ProbeStatus {}/{name}", hub.config.namespace),
                    e,
                ));
            }
        }
        tracing::info!(%cluster, stored = %name, "fleet: a result the member no longer has, deleted");
    }
    Ok(stale)
}

/// Records that the one-time run `id` finished: `finishTime` in its `status.onceProbeList`
/// entry. Read from the apiserver, not the cache: the entry was written moments before.
async fn once_finished(
    hub: &Hub,
    cluster: &str,
    id: &str,
    probes: &[String],
    finish_time: &str,
    results: &[kdiag_api::OnceProbeResult],
) -> Result<(), Error> {
    let api = hub.clusters_api();
    // Conditional on the version read, so a concurrent write of the list is not lost: on a
    // conflict, read again (a few times; a heartbeat's write is the usual one in between).
    for _ in 0..5 {
        let c = api
            .get(cluster)
            .await
            .map_err(|e| Error::kube("get", format!("Cluster {cluster}"), e))?;
        let list = c.status.map(|s| s.once_probe_list).unwrap_or_default();
        let Some(list) = state::once_list_finished(&list, id, finish_time, probes, results) else {
            return Ok(());
        };
        let patch = json!({"metadata": {"resourceVersion": c.metadata.resource_version},
                           "status": {"onceProbeList": list}});
        match api
            .patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => {
                return Err(Error::kube(
                    "record the end of a one-time run of",
                    format!("Cluster {cluster}"),
                    e,
                ));
            }
        }
    }
    tracing::info!(%cluster, %id, "fleet: one-time run finished");
    Ok(())
}

/// Sends a one-time run asked for on the Cluster down, once, and records it in
/// `status.onceProbeList`.
async fn run_once(
    hub: &Hub,
    ws: &mut Link,
    cluster: &str,
    sent: &mut Option<String>,
) -> Result<(), Error> {
    let Some(c) = hub.cluster(cluster) else {
        return Ok(());
    };
    let Some(request) = state::once_request(c.metadata.annotations.as_ref()) else {
        return Ok(());
    };
    if sent.as_deref() == Some(request.id.as_str()) {
        return Ok(());
    }
    let list = c
        .status
        .as_ref()
        .map(|s| s.once_probe_list.clone())
        .unwrap_or_default();
    let Some(list) = state::once_list_with(&list, &request) else {
        // Recorded by an earlier link: sent then.
        *sent = Some(request.id);
        return Ok(());
    };
    reply(
        ws,
        &HubMessage::RunOnce {
            id: request.id.clone(),
            probes: request.probes.clone(),
        },
    )
    .await?;
    // Recorded conditionally on the version read, so it cannot overwrite a `finishTime` written
    // since the cache was filled: on a conflict, read again and add it to what is there.
    let (mut list, mut version) = (list, c.metadata.resource_version.clone());
    for _ in 0..5 {
        let patch = json!({"metadata": {"resourceVersion": version},
                           "status": {"onceProbeList": list}});
        match hub
            .clusters_api()
            .patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(Error::kube(
                    "record a one-time run of",
                    format!("Cluster {cluster}"),
                    e,
                ));
            }
        }
        let now = hub
            .clusters_api()
            .get(cluster)
            .await
            .map_err(|e| Error::kube("get", format!("Cluster {cluster}"), e))?;
        let current = now.status.map(|s| s.once_probe_list).unwrap_or_default();
        let Some(next) = state::once_list_with(&current, &request) else {
            break;
        };
        (list, version) = (next, now.metadata.resource_version);
    }
    tracing::info!(%cluster, id = %request.id, "fleet: one-time run sent");
    *sent = Some(request.id);
    Ok(())
}

fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 400 || s.code == 422)
}

/// Creates the cluster's `Cluster` on its first link.
async fn ensure_cluster(hub: &Hub, cluster: &str) -> Result<(), Error> {
    if hub.cluster(cluster).is_some() {
        return Ok(());
    }
    let object = Cluster {
        metadata: ObjectMeta {
            name: Some(cluster.to_owned()),
            namespace: Some(hub.config.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    state::FIELD_MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Default::default(),
        status: None,
    };
    match hub
        .clusters_api()
        .create(&PostParams::default(), &object)
        .await
    {
        Ok(_) => {
            tracing::info!(%cluster, "fleet: Cluster created on the member's first link");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("create", format!("Cluster {cluster}"), e)),
    }
}

/// Checker counts of the results the hub holds for the cluster, by stored name.
async fn seed_counts(hub: &Hub, cluster: &str) -> Result<HashMap<String, (u64, u64)>, Error> {
    let list = hub
        .results_api()
        .list(&ListParams::default().labels(&format!("{}={cluster}", state::CLUSTER_LABEL)))
        .await
        .map_err(|e| Error::kube("list", format!("the ProbeStatuses of {cluster}"), e))?;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            let counts = ProbeResult::of(&p).counts();
            (p.metadata.name.unwrap_or_default(), counts)
        })
        .collect())
}

/// Writes the diagnoses the Cluster shows.
async fn write_diagnoses(
    hub: &Hub,
    cluster: &str,
    list: &[kdiag_api::DiagnosisSummary],
) -> Result<(), Error> {
    let patch = state::diagnoses_patch(list);
    hub.clusters_api()
        .patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("patch diagnoses of", format!("Cluster {cluster}"), e))?;
    Ok(())
}

/// The Cluster after a heartbeat: KubeProber's spec.k8sVersion, and its status when something
/// changed or the written heartbeat time is due ([`state::heartbeat_status`]). Returns what this
/// link wrote last.
async fn heartbeat(
    hub: &Hub,
    cluster: &str,
    facts: &Facts,
    checkers: (u64, u64),
    written: Option<ClusterStatus>,
) -> Result<Option<ClusterStatus>, Error> {
    let api = hub.clusters_api();
    let cached = hub.cluster(cluster);
    if cached
        .as_ref()
        .is_none_or(|c| c.spec.k8s_version != facts.kubernetes_version)
    {
        let patch = json!({"spec": {"k8sVersion": facts.kubernetes_version}});
        api.patch(cluster, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube("patch", format!("Cluster {cluster}"), e))?;
    }
    // What this link wrote, while the cache may not have caught up with it; the cache when it
    // marked the cluster offline after that write (the sweeper, while this hub was stalled).
    let cached_status = cached.and_then(|c| c.status.clone());
    let previous = match (written, cached_status) {
        (Some(w), Some(c))
            if c.state == state::OFFLINE
                && c.state_since.as_ref().map(|t| t.0)
                    > w.last_heartbeat_time.as_ref().map(|t| t.0) =>
        {
            Some(c)
        }
        (Some(w), _) => Some(w),
        (None, c) => c,
    };
    let Some(patch) = state::heartbeat_status(
        previous.as_ref(),
        facts,
        checkers,
        jiff::Timestamp::now(),
        hub.config.heartbeat_refresh(),
    ) else {
        return Ok(previous);
    };
    let status = state::status_of(&patch);
    api.patch_status(cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("patch status of", format!("Cluster {cluster}"), e))?;
    Ok(Some(status))
}

/// Stores (or deletes) one result of the cluster.
async fn store(
    hub: &Hub,
    cluster: &str,
    namespace: &str,
    name: &str,
    object: Option<&ProbeResult>,
) -> Result<(), Error> {
    let api = hub.results_api();
    let stored = state::stored_name(cluster, namespace, name);
    let what = format!("ProbeStatus {}/{stored}", hub.config.namespace);
    let Some(result) = object else {
        return match api.delete(&stored, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::kube("delete", what, e)),
        };
    };
    let apply = PatchParams::apply(state::FIELD_MANAGER).force();
    let body = state::stored_object(&hub.config.namespace, cluster, namespace, name, result);
    api.patch(&stored, &apply, &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("apply", what.clone(), e))?;
    let status = state::stored_status(&hub.config.namespace, &stored, result);
    api.patch_status(&stored, &apply, &Patch::Apply(&status))
        .await
        .map_err(|e| Error::kube("apply status of", what, e))?;
    Ok(())
}
