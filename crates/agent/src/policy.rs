//! The node policy as the agent holds it: read from a ConfigMap and swapped in whole when it
//! changes.
//!
//! It fails closed. Until the ConfigMap has been read, and while it is missing or does not parse,
//! the agent holds a closed policy ([`Policy::closed`]) that denies every action that changes the
//! node (command executors, recoverers, signals) with a message saying why; collectors and
//! diagnosers, which only read, keep running. Each change of state is logged, recorded as an Event
//! on the ConfigMap and shown by the `kdiag_agent_policy_valid` gauge and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kdiag_recoverers::policy::Policy;
pub use kdiag_recoverers::policy::PolicyHandle;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::recorder::UncachedRecorder;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// The ConfigMap key holding the policy.
pub const POLICY_KEY: &str = "policy.yaml";

/// What the agent knows of its node policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    /// The ConfigMap has not been read yet.
    NotLoaded,
    /// A valid policy is in force.
    Valid,
    /// The ConfigMap does not exist (or was deleted): why, for messages.
    Missing(String),
    /// The ConfigMap does not hold a valid policy: why, for messages.
    Invalid(String),
}

impl PolicyState {
    /// The state a ConfigMap's content (or its absence) puts the agent in, and the policy to hold.
    /// Pure: the follower's decisions, unit-tested.
    pub fn of(configmap: &str, cm: Option<&ConfigMap>) -> (Self, Policy) {
        let Some(cm) = cm else {
            let why = format!(
                "the node policy ConfigMap {configmap} does not exist; nothing that changes the node runs until it does (create it from config/deploy/20-policy.yaml, see docs/policy.md)"
            );
            return (Self::Missing(why.clone()), Policy::closed(why));
        };
        let parsed = match cm.data.as_ref().and_then(|d| d.get(POLICY_KEY)) {
            None => Err(format!("it has no key {POLICY_KEY}")),
            Some(text) => Policy::from_yaml(text).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(p) => (Self::Valid, p),
            Err(e) => {
                let why = format!(
                    "the node policy ConfigMap {configmap} is invalid ({e}); nothing that changes the node runs until it is fixed (docs/policy.md)"
                );
                (Self::Invalid(why.clone()), Policy::closed(why))
            }
        }
    }

    /// True once the ConfigMap has been read, whatever it held.
    pub fn is_known(&self) -> bool {
        *self != Self::NotLoaded
    }
}

/// What others see of the follower: whether the policy was read, and whether it is valid.
#[derive(Clone)]
pub struct PolicyStatus {
    state: watch::Receiver<PolicyState>,
    /// True while a valid policy is in force (for /readyz).
    pub valid: Arc<AtomicBool>,
}

impl PolicyStatus {
    /// Returns once the ConfigMap has been read (or found missing) for the first time.
    pub async fn wait_until_known(&self) {
        let mut rx = self.state.clone();
        // Err: the follower is gone; nothing more will be known.
        let _ = rx.wait_for(PolicyState::is_known).await;
    }

    pub fn current(&self) -> PolicyState {
        self.state.borrow().clone()
    }
}

/// Follows the ConfigMap `namespace/name` into `handle` until the returned future is dropped.
pub fn follow(
    handle: PolicyHandle,
    client: kube::Client,
    namespace: String,
    name: String,
    metrics: Arc<Metrics>,
    recorder: UncachedRecorder,
) -> (PolicyStatus, impl std::future::Future<Output = ()> + Send) {
    let (tx, rx) = watch::channel(PolicyState::NotLoaded);
    let valid = Arc::new(AtomicBool::new(false));
    metrics.agent.policy_valid.set(0);
    let follower = Follower {
        handle,
        configmap: format!("{namespace}/{name}"),
        reference: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            ..Default::default()
        },
        state: tx,
        valid: valid.clone(),
        metrics,
        recorder,
    };
    let status = PolicyStatus { state: rx, valid };
    (status, follower.follow(client, namespace, name))
}

struct Follower {
    handle: PolicyHandle,
    configmap: String,
    reference: ObjectReference,
    state: watch::Sender<PolicyState>,
    valid: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    recorder: UncachedRecorder,
}

impl Follower {
    async fn follow(self, client: kube::Client, namespace: String, name: String) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, config).default_backoff().boxed();
        // During a (re)list: whether the ConfigMap was among the objects listed.
        let mut listed: Option<ConfigMap> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => listed = None,
                Ok(watcher::Event::InitApply(cm)) => listed = Some(cm),
                // The list is complete: the ConfigMap exists or it does not.
                Ok(watcher::Event::InitDone) => self.apply(listed.take().as_ref()).await,
                Ok(watcher::Event::Apply(cm)) => self.apply(Some(&cm)).await,
                Ok(watcher::Event::Delete(_)) => self.apply(None).await,
                Err(e) => {
                    tracing::warn!(error = %e, configmap = %self.configmap, "watching the node policy ConfigMap (retrying)")
                }
            }
        }
    }

    async fn apply(&self, cm: Option<&ConfigMap>) {
        let (state, policy) = PolicyState::of(&self.configmap, cm);
        self.handle.set(policy);
        let ok = state == PolicyState::Valid;
        self.valid.store(ok, Ordering::Release);
        self.metrics.agent.policy_valid.set(i64::from(ok));
        let before = self.state.send_replace(state.clone());
        if before == state {
            return;
        }
        let (warning, reason, note) = match &state {
            PolicyState::Valid => {
                tracing::info!(configmap = %self.configmap, "node policy loaded");
                (
                    false,
                    "PolicyLoaded",
                    format!("node policy {} loaded", self.configmap),
                )
            }
            PolicyState::Missing(why) => {
                tracing::error!(configmap = %self.configmap, "{why}");
                (true, "PolicyMissing", why.clone())
            }
            PolicyState::Invalid(why) => {
                tracing::error!(configmap = %self.configmap, "{why}");
                (true, "PolicyInvalid", why.clone())
            }
            PolicyState::NotLoaded => return,
        };
        // A valid policy at start is not news; a change, or a policy that denies, is.
        if !warning && before == PolicyState::NotLoaded {
            return;
        }
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "LoadPolicy".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &self.reference).await {
            self.metrics
                .agent
                .api_errors
                .with_label_values(&["create_event"])
                .inc();
            tracing::warn!(configmap = %self.configmap, error = %e, "recording a policy event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Option<&str>) -> ConfigMap {
        ConfigMap {
            data: data.map(|d| [(POLICY_KEY.to_owned(), d.to_owned())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_configmap_is_the_policy() {
        let (state, policy) = PolicyState::of("kd/p", Some(&cm(Some("dryRun: true\n"))));
        assert_eq!(state, PolicyState::Valid);
        assert!(policy.spec.dry_run && policy.closed_reason().is_none());
        let (state, policy) = PolicyState::of("kd/p", Some(&cm(Some("{}"))));
        assert_eq!(state, PolicyState::Valid);
        assert!(policy.allows_command(&["uptime".to_owned()]).is_ok());
    }

    #[test]
    fn a_missing_invalid_or_empty_configmap_closes_the_policy_and_says_why() {
        for (cm, expect) in [
            (None, "does not exist"),
            (
                Some(cm(Some("comands: {}\n"))),
                "is invalid (the node policy is not valid YAML",
            ),
            (Some(cm(None)), "is invalid (it has no key policy.yaml)"),
        ] {
            let (state, policy) = PolicyState::of("kube-diagnoser/kdiag-policy", cm.as_ref());
            let why = match &state {
                PolicyState::Missing(w) | PolicyState::Invalid(w) => w.clone(),
                other => panic!("{other:?}"),
            };
            assert!(why.contains(expect), "{why}");
            assert!(why.contains("kube-diagnoser/kdiag-policy"), "{why}");
            assert!(why.contains("nothing that changes the node runs"), "{why}");
            let denied = policy
                .allows_recoverer("kube-diagnoser/signal-recoverer")
                .unwrap_err();
            assert_eq!(denied.to_string(), format!("denied: {why}"));
            assert!(policy.allows_command(&["uptime".to_owned()]).is_err());
        }
    }
}
