//! `kubectl diag run --deployment`, `--statefulset`, `--daemonset` and `--pdb`: the objects each
//! judgement needs, read at once; the judging is `kdiag_diagnosers::workload`'s.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kdiag_diagnosers::workload::create::{AdmissionWebhook, admission_webhooks};
use kdiag_diagnosers::workload::{
    self, DaemonSetFacts, DeploymentFacts, PdbFacts, StatefulSetFacts, rollout,
};
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::{answer, split};
use crate::client::{Kube, Request};
use crate::{DiagError, Output};

/// What is read, and how to say which permission is missing when it cannot be.
struct Reader<'a> {
    kube: &'a Kube,
    ns: &'a str,
}

impl Reader<'_> {
    fn request(
        &self,
        verb: &'static str,
        kind: &'static str,
        resource: &'static str,
    ) -> Request<'_> {
        Request {
            verb,
            kind,
            resource,
            namespace: Some(self.ns),
            name: None,
        }
    }

    async fn get<K>(
        &self,
        name: &str,
        kind: &'static str,
        resource: &'static str,
    ) -> Result<Option<K>, DiagError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(self.kube.client.clone(), self.ns)
            .get_opt(name)
            .await
            .map_err(|e| {
                self.request("get", kind, resource)
                    .named(name)
                    .explain(e, &self.kube.url)
            })
    }

    async fn list<K>(
        &self,
        params: &ListParams,
        kind: &'static str,
        resource: &'static str,
    ) -> Result<Vec<K>, DiagError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Ok(Api::<K>::namespaced(self.kube.client.clone(), self.ns)
            .list(params)
            .await
            .map_err(|e| {
                self.request("list", kind, resource)
                    .explain(e, &self.kube.url)
            })?
            .items)
    }

    /// The pods a selector matches.
    async fn pods(&self, selector: Option<&LabelSelector>) -> Result<Vec<Pod>, DiagError> {
        match selector.map(selector_string) {
            // An empty selector would match every pod of the namespace: none is meant.
            None => Ok(Vec::new()),
            Some(s) if s.is_empty() => Ok(Vec::new()),
            Some(s) => {
                self.list(&ListParams::default().labels(&s), "Pod", "pods")
                    .await
            }
        }
    }

    /// The Events about one object.
    async fn events(&self, kind: &str, name: &str) -> Result<Vec<Event>, DiagError> {
        self.list(
            &ListParams::default().fields(&format!(
                "involvedObject.kind={kind},involvedObject.name={name}"
            )),
            "Event",
            "events",
        )
        .await
    }

    async fn quotas(&self) -> Result<Vec<ResourceQuota>, DiagError> {
        self.list(&ListParams::default(), "ResourceQuota", "resourcequotas")
            .await
    }

    /// The cluster's admission webhooks, to name the configuration behind a refusal. Many who
    /// may read a namespace may not read these cluster-wide objects: then the answer names
    /// the webhook only, from the apiserver's message, and nothing fails.
    async fn webhooks(&self) -> Vec<AdmissionWebhook> {
        let client = &self.kube.client;
        let params = ListParams::default();
        let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .list(&params)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .list(&params)
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        admission_webhooks(&validating, &mutating)
    }
}

/// A label selector as `kubectl -l` takes it.
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// `--deployment`: the Deployment, its ReplicaSets and pods, its newest ReplicaSet's Events
/// and the namespace's ResourceQuotas. Exit code 0 when a cause is named, 1 when it is rolled
/// out.
pub async fn deployment(
    kube: &Kube,
    namespace: &str,
    target: &str,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = split("--deployment", target, namespace)?;
    let r = Reader { kube, ns };
    let mut f = DeploymentFacts {
        key: format!("{ns}/{name}"),
        deployment: r
            .get::<Deployment>(name, "Deployment", "deployments.apps")
            .await?,
        ..Default::default()
    };
    if let Some(d) = &f.deployment {
        let selector = d.spec.as_ref().map(|s| &s.selector);
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let sets: Vec<ReplicaSet> = match selector.map(selector_string) {
            Some(s) if !s.is_empty() => {
                r.list(
                    &ListParams::default().labels(&s),
                    "ReplicaSet",
                    "replicasets.apps",
                )
                .await?
            }
            _ => Vec::new(),
        };
        f.replica_sets = sets
            .into_iter()
            .filter(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid)
            })
            .collect();
        f.pods = r.pods(selector).await?;
        if let Some(rs) = rollout::newest_replica_set(&f.replica_sets)
            && let Some(rs_name) = rs.metadata.name.as_deref()
        {
            f.events = r.events("ReplicaSet", rs_name).await?;
        }
        f.quotas = r.quotas().await?;
        f.webhooks = r.webhooks().await;
    }
    let cause = workload::deployment_stuck(&f);
    let none = || {
        let st = f
            .deployment
            .as_ref()
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        format!(
            "no cause found: Deployment {} is rolled out ({} ready, {} updated, {} available); checked its conditions, {} ReplicaSet(s), the newest one's {} event(s), {} pod(s) and {} ResourceQuota(s)",
            f.key,
            st.ready_replicas.unwrap_or(0),
            st.updated_replicas.unwrap_or(0),
            st.available_replicas.unwrap_or(0),
            f.replica_sets.len(),
            f.events.len(),
            f.pods.len(),
            f.quotas.len()
        )
    };
    answer("deployment", &f.key, cause, none, output, print)
}

/// `--statefulset`: the StatefulSet, its pods and Events, the namespace's ResourceQuotas.
pub async fn statefulset(
    kube: &Kube,
    namespace: &str,
    target: &str,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = split("--statefulset", target, namespace)?;
    let r = Reader { kube, ns };
    let mut f = StatefulSetFacts {
        key: format!("{ns}/{name}"),
        stateful_set: r
            .get::<StatefulSet>(name, "StatefulSet", "statefulsets.apps")
            .await?,
        ..Default::default()
    };
    if let Some(s) = &f.stateful_set {
        f.pods = r.pods(s.spec.as_ref().map(|s| &s.selector)).await?;
        f.events = r.events("StatefulSet", name).await?;
        f.quotas = r.quotas().await?;
        f.webhooks = r.webhooks().await;
    }
    let cause = workload::statefulset_stuck(&f);
    let none = || {
        format!(
            "no cause found: every pod of StatefulSet {} is ready; checked its status, its {} pod(s), {} event(s) and {} ResourceQuota(s)",
            f.key,
            f.pods.len(),
            f.events.len(),
            f.quotas.len()
        )
    };
    answer("statefulset", &f.key, cause, none, output, print)
}

/// `--daemonset`: the DaemonSet, every node (their taints and labels), its pods and Events.
pub async fn daemonset(
    kube: &Kube,
    namespace: &str,
    target: &str,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = split("--daemonset", target, namespace)?;
    let r = Reader { kube, ns };
    let mut f = DaemonSetFacts {
        key: format!("{ns}/{name}"),
        daemon_set: r
            .get::<DaemonSet>(name, "DaemonSet", "daemonsets.apps")
            .await?,
        ..Default::default()
    };
    if let Some(d) = &f.daemon_set {
        f.pods = r.pods(d.spec.as_ref().map(|s| &s.selector)).await?;
        f.events = r.events("DaemonSet", name).await?;
        f.quotas = r.quotas().await?;
        f.webhooks = r.webhooks().await;
        f.nodes = Api::<Node>::all(kube.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| {
                Request {
                    verb: "list",
                    kind: "Node",
                    resource: "nodes",
                    namespace: None,
                    name: None,
                }
                .explain(e, &kube.url)
            })?
            .items;
    }
    let cause = workload::daemonset_broken(&f);
    let none = || {
        let st = f
            .daemon_set
            .as_ref()
            .and_then(|d| d.status.clone())
            .unwrap_or_default();
        format!(
            "no cause found: DaemonSet {} runs ready on {} of {} node(s) it selects; checked every node's taints against its tolerations, its {} pod(s) and {} event(s)",
            f.key,
            st.number_ready,
            st.desired_number_scheduled,
            f.pods.len(),
            f.events.len()
        )
    };
    answer("daemonset", &f.key, cause, none, output, print)
}

/// `--pdb`: the PodDisruptionBudget (`policy/v1`, else `policy/v1beta1` on older clusters) and
/// the pods its selector matches.
pub async fn pdb(
    kube: &Kube,
    namespace: &str,
    target: &str,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = split("--pdb", target, namespace)?;
    let r = Reader { kube, ns };
    let request = || Request {
        verb: "get",
        kind: "PodDisruptionBudget",
        resource: "poddisruptionbudgets.policy",
        namespace: Some(ns),
        name: Some(name),
    };
    let read = |version: &str| {
        let resource = ApiResource {
            group: "policy".into(),
            version: version.into(),
            api_version: format!("policy/{version}"),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
        };
        Api::<DynamicObject>::namespaced_with(kube.client.clone(), ns, &resource)
    };
    // A 404 naming the object means it does not exist; one without means the apiserver does
    // not serve policy/v1 (before 1.21): ask for v1beta1, whose fields are the same.
    let object = match read("v1").get(name).await {
        Ok(o) => Some(o),
        Err(kube::Error::Api(s))
            if s.code == 404 && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) =>
        {
            None
        }
        Err(kube::Error::Api(s)) if s.code == 404 => read("v1beta1")
            .get_opt(name)
            .await
            .map_err(|e| request().explain(e, &kube.url))?,
        Err(e) => return Err(request().explain(e, &kube.url)),
    };
    let pdb = object
        .map(|mut o| {
            o.types = Some(kube::api::TypeMeta {
                api_version: "policy/v1".into(),
                kind: "PodDisruptionBudget".into(),
            });
            serde_json::to_value(&o).and_then(serde_json::from_value)
        })
        .transpose()
        .map_err(|e| DiagError::Output(format!("reading PodDisruptionBudget {ns}/{name}: {e}")))?;
    let mut f = PdbFacts {
        key: format!("{ns}/{name}"),
        pdb,
        pods: Vec::new(),
    };
    if let Some(p) = &f.pdb {
        f.pods = r
            .pods(p.spec.as_ref().and_then(|s| s.selector.as_ref()))
            .await?;
    }
    let cause = workload::pdb_blocking(&f);
    let none = || {
        let st = f
            .pdb
            .as_ref()
            .and_then(|p| p.status.clone())
            .unwrap_or_default();
        format!(
            "no cause found: PodDisruptionBudget {} allows {} disruption(s) ({} of {} pod(s) healthy, {} must stay); checked its status and the {} pod(s) its selector matches",
            f.key,
            st.disruptions_allowed,
            st.current_healthy,
            st.expected_pods,
            st.desired_healthy,
            f.pods.len()
        )
    };
    answer("podDisruptionBudget", &f.key, cause, none, output, print)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_reads_as_kubectl_l_takes_it() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(selector_string(&s), "app=web,tier in (a,b),!canary");
    }
}
