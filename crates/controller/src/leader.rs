//! Leader election: of the controller's replicas, one (the holder of a Lease) admits, routes,
//! collects garbage, runs probes and turns triggers into Abnormals; the others stand by. Every
//! replica serves the admission webhook and probe reports (they keep no state), and a standby
//! hands alert deliveries to the leader, whose storm budgets they draw on.
//!
//! The Lease is kept by kube-lease-manager (server-side apply, so two replicas cannot both take
//! it). A leader that loses its Lease stops all work and its process exits: the kubelet restarts
//! it as a standby, so no work of a former leader outlives its leadership. On a graceful stop the
//! leader releases the Lease; a standby takes it when it looks next, at the latest when the
//! Lease would have expired.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;

/// The Lease's default name, in kdiag's namespace.
pub const DEFAULT_LEASE: &str = "kdiag-controller";

/// The header a standby sets on a delivery it hands to the leader: a replica that receives one
/// while not leading answers 503 instead of handing it on again.
pub const FORWARDED_HEADER: &str = "x-kdiag-forwarded-by";

/// How a replica takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// The Lease, as namespace and name.
    pub lease: (String, String),
    /// This replica's identity in the Lease: `NAME@HOST:PORT`, where HOST:PORT is its HTTP
    /// server as the other replicas reach it (standbys hand alerts there).
    pub identity: String,
    /// How long a Lease not renewed stays held: how long a crashed leader's work waits.
    pub lease_duration: Duration,
    /// How long before the end of its Lease the leader renews it.
    pub renew_before: Duration,
}

impl LeaderElection {
    /// Client-go's usual timing: a crashed leader is replaced within 15 s.
    pub fn new(namespace: &str, lease: &str, identity: &str) -> Self {
        Self {
            lease: (namespace.into(), lease.into()),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_before: Duration::from_secs(5),
        }
    }
}

/// The address in an identity `NAME@HOST:PORT`, if it has one.
pub fn address_of(identity: &str) -> Option<&str> {
    identity
        .rsplit_once('@')
        .map(|(_, addr)| addr)
        .filter(|a| !a.is_empty())
}

/// This replica's place in the election, shared with what needs to know it.
#[derive(Clone)]
pub struct LeaderView {
    /// True while this replica holds the Lease (always true without an election).
    pub leading: Arc<AtomicBool>,
    election: Option<Arc<ElectionView>>,
}

struct ElectionView {
    leases: Api<Lease>,
    config: LeaderElection,
    http: reqwest::Client,
}

impl LeaderView {
    /// A replica with no election: it always leads.
    pub fn sole() -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(true)),
            election: None,
        }
    }

    /// This replica's view: [`LeaderView::sole`] without an election, else not leading until
    /// its [`Candidacy`] acquires the Lease.
    pub fn new(client: &kube::Client, election: Option<LeaderElection>) -> Self {
        match election {
            None => Self::sole(),
            Some(config) => Self::elected(client.clone(), config),
        }
    }

    fn elected(client: kube::Client, config: LeaderElection) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client");
        Self {
            leading: Arc::new(AtomicBool::new(false)),
            election: Some(Arc::new(ElectionView {
                leases: Api::namespaced(client, &config.lease.0),
                config,
                http,
            })),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// The identity holding the Lease now, read from the apiserver.
    pub async fn holder(&self) -> Result<Option<String>, Error> {
        let Some(e) = &self.election else {
            return Ok(None);
        };
        let lease = e
            .leases
            .get_opt(&e.config.lease.1)
            .await
            .map_err(|source| {
                Error::kube(
                    "get",
                    format!("Lease {}/{}", e.config.lease.0, e.config.lease.1),
                    source,
                )
            })?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }

    /// Hands a POST to the leader's HTTP server at the same path and returns its answer as
    /// status and body. Err says why it could not be handed on (answered 503: retry).
    pub async fn forward(
        &self,
        path: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        let Some(e) = &self.election else {
            return Err("no leader election is configured".into());
        };
        let holder = self
            .holder()
            .await
            .map_err(|err| format!("cannot find the leader: {err}; retry"))?
            .ok_or("no replica leads yet (the Lease has no holder); retry in a few seconds")?;
        if holder == e.config.identity {
            return Err("this replica holds the Lease but is not leading yet; retry".into());
        }
        let addr = address_of(&holder).ok_or_else(|| {
            format!("the leader {holder:?} names no address (NAME@HOST:PORT) to hand alerts to")
        })?;
        let mut request = e
            .http
            .post(format!("http://{addr}{path}"))
            .header(FORWARDED_HEADER, &e.config.identity)
            .body(body);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        if let Some(c) = content_type {
            request = request.header("content-type", c);
        }
        let response = request.send().await.map_err(|err| {
            format!("handing the delivery to the leader {holder} failed: {err}; retry")
        })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|err| format!("reading the leader {holder}'s answer failed: {err}; retry"))?;
        Ok((status, body))
    }
}

/// A replica's candidacy: acquires the Lease, keeps it renewed, and says when it is lost.
pub struct Candidacy {
    view: LeaderView,
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Candidacy {
    /// Joins the election `view` was made for (creating the Lease if there is none); None
    /// without an election.
    pub async fn join(client: kube::Client, view: &LeaderView) -> Result<Option<Self>, Error> {
        let Some(election) = &view.election else {
            return Ok(None);
        };
        let config = election.config.clone();
        let view = view.clone();
        let manager = LeaseManagerBuilder::new(client, &config.lease.1)
            .with_namespace(&config.lease.0)
            .with_identity(&config.identity)
            .with_duration(config.lease_duration.as_secs().max(2))
            .with_grace(config.renew_before.as_secs().max(1))
            .build()
            .await
            .map_err(|e| Error::LeaderElection {
                lease: format!("{}/{}", config.lease.0, config.lease.1),
                reason: e.to_string(),
            })?;
        let (state, task) = manager.watch().await;
        Ok(Some(Self { view, state, task }))
    }

    /// Returns once this replica leads.
    pub async fn acquired(&mut self) {
        while !*self.state.borrow_and_update() {
            if self.state.changed().await.is_err() {
                // The manager ended (it logs why): never leading.
                std::future::pending::<()>().await;
            }
        }
        self.view.leading.store(true, Ordering::Release);
    }

    /// Returns once this replica, leading, has lost the Lease.
    pub async fn lost(&mut self) {
        loop {
            if !*self.state.borrow_and_update() {
                break;
            }
            if self.state.changed().await.is_err() {
                break;
            }
        }
        self.view.leading.store(false, Ordering::Release);
    }

    /// Leaves the election, releasing the Lease if held.
    pub async fn release(self) {
        self.view.leading.store(false, Ordering::Release);
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader election: Lease released"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "leader election: releasing the Lease failed; it expires on its own")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election: the Lease task ended abnormally")
            }
            Err(_) => tracing::warn!(
                "leader election: releasing the Lease took over 5 s; it expires on its own"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_names_the_address_standbys_hand_alerts_to() {
        assert_eq!(
            address_of("kdiag-controller-6f9c@10.244.0.7:10357"),
            Some("10.244.0.7:10357")
        );
        assert_eq!(address_of("kdiag-controller-6f9c"), None);
        assert_eq!(address_of("name@"), None);
    }
}
