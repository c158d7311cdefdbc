//! The node policy as the agent holds it: read from a ConfigMap and swapped in whole when it
//! changes. A policy that does not parse is reported and replaced by the defaults, which are the
//! most restrictive: a typo never widens what kdiag may do.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kdiag_recoverers::policy::Policy;
pub use kdiag_recoverers::policy::PolicyHandle;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// The ConfigMap key holding the policy.
pub const POLICY_KEY: &str = "policy.yaml";

/// Follows ConfigMap `namespace/name` into `handle` until the process ends.
pub async fn follow(handle: PolicyHandle, client: kube::Client, namespace: String, name: String) {
    Follower(handle).follow(client, namespace, name).await
}

struct Follower(PolicyHandle);

impl Follower {
    async fn follow(self, client: kube::Client, namespace: String, name: String) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    self.load(&cm, &namespace, &name)
                }
                Ok(watcher::Event::Delete(_)) => {
                    tracing::info!(configmap = %format!("{namespace}/{name}"), "node policy deleted; using the defaults");
                    self.0.set(Policy::default());
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "watching the node policy ConfigMap (retrying)")
                }
            }
        }
    }

    fn load(&self, cm: &ConfigMap, namespace: &str, name: &str) {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(POLICY_KEY))
            .cloned()
            .unwrap_or_default();
        match Policy::from_yaml(&text) {
            Ok(p) => {
                tracing::info!(configmap = %format!("{namespace}/{name}"), "node policy loaded");
                self.0.set(p);
            }
            Err(e) => {
                tracing::error!(configmap = %format!("{namespace}/{name}"), error = %e, "node policy is invalid; using the restrictive defaults until it is fixed");
                self.0.set(Policy::default());
            }
        }
    }
}
