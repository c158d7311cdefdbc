//! `pod-collector` → `podInformation`: the pods bound to this node.

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::POD_INFORMATION;
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use kube::api::{Api, ListParams};

use crate::budget::{cap_list, output_budget, truncated_key};

/// Lists this node's pods with a field selector on spec.nodeName, so the apiserver sends only
/// them (Kube Diagnoser cached every pod of the cluster on every node).
pub struct PodCollector;

impl Processor for PodCollector {
    fn name(&self) -> &'static str {
        "pod-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        _abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let mut items = node_pods(ctx).await?;
            for pod in &mut items {
                // Bookkeeping no diagnosis needs, and the bulk of a pod's size.
                pod.metadata.managed_fields = None;
                if let Some(a) = pod.metadata.annotations.as_mut() {
                    a.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            }
            let n = items.len();
            let (kept, truncation) = cap_list(&items, output_budget(ctx.max_output_bytes));
            let mut message = format!("collected {n} pods on node {}", ctx.node_name);
            if let Some(t) = &truncation {
                message.push_str(&format!("; {}", t.reason));
            }
            let mut out = ProcessorOutput::message(message)
                .with_context(POD_INFORMATION, serde_json::Value::Array(kept));
            if let Some(t) = truncation {
                out = out.with_context(
                    &truncated_key(POD_INFORMATION),
                    serde_json::to_value(t).unwrap_or_default(),
                );
            }
            Ok(out)
        }
        .boxed()
    }
}

/// The pods bound to this node, listed with a field selector on spec.nodeName.
pub async fn node_pods(ctx: &ProcessorContext) -> Result<Vec<Pod>, ProcessorError> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let list = pods.list(&lp).await.map_err(|e| {
        ProcessorError::Failed(format!(
            "listing the pods of node {}: {e} (the agent needs list on pods)",
            ctx.node_name
        ))
    })?;
    Ok(list.items)
}
