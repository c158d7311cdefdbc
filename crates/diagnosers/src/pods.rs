//! The pods a diagnoser looks at.

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::POD_INFORMATION;
use kdiag_api::plugin::{ProcessorContext, ProcessorError};

/// Where the pods came from, for messages.
pub enum Source {
    /// `podInformation`, written by pod-collector earlier in this Abnormal.
    Context,
    /// Listed from the apiserver just now.
    Api,
}

impl Source {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Context => "podInformation",
            Self::Api => "the apiserver",
        }
    }
}

/// The node's pods: `podInformation` if an earlier collector wrote it whole, else a fresh list
/// of the pods bound to this node.
pub async fn node_pods(
    ctx: &ProcessorContext,
    abnormal: &Abnormal,
) -> Result<(Vec<Pod>, Source), ProcessorError> {
    // A podInformation cut to fit the output cap lacks pods: ask the apiserver instead.
    let truncated = abnormal
        .context_value(&kdiag_collectors::budget::truncated_key(POD_INFORMATION))
        .is_some_and(|v| !v.is_null());
    if !truncated && let Some(pods) = abnormal.context_as::<Vec<Pod>>(POD_INFORMATION)? {
        return Ok((pods, Source::Context));
    }
    let pods = kdiag_collectors::pod::node_pods(ctx).await?;
    Ok((pods, Source::Api))
}

/// `namespace/name`.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

/// The evidence object of a pod: `pod/namespace/name`.
pub fn object(pod: &Pod) -> String {
    format!("pod/{}", key(pod))
}

pub fn uid(pod: &Pod) -> Option<&str> {
    pod.metadata.uid.as_deref()
}

/// Whether the Abnormal's podReference (if any) names this pod.
pub fn referenced(abnormal: &Abnormal, pod: &Pod) -> bool {
    match &abnormal.spec.pod_reference {
        None => true,
        Some(r) => {
            let ns = if r.namespace.is_empty() {
                abnormal.metadata.namespace.as_deref().unwrap_or("default")
            } else {
                r.namespace.as_str()
            };
            pod.metadata.name.as_deref() == Some(r.name.as_str())
                && pod.metadata.namespace.as_deref() == Some(ns)
        }
    }
}

/// The Abnormal's podReference as `namespace/name`.
pub fn reference(abnormal: &Abnormal) -> Option<String> {
    abnormal.spec.pod_reference.as_ref().map(|r| {
        let ns = if r.namespace.is_empty() {
            abnormal.metadata.namespace.as_deref().unwrap_or("default")
        } else {
            r.namespace.as_str()
        };
        format!("{ns}/{}", r.name)
    })
}
