//! Admission's check of a node an Abnormal names: an Abnormal for a node that does not exist
//! (a typo, a node already removed, a name an alert or probe made up) would wait forever for an
//! agent, so it is rejected at once with a message that says what to check.

use k8s_openapi::api::core::v1::Node;
use kdiag_api::Abnormal;
use kdiag_pipeline::admission::Decision;
use kube::api::Api;

use super::{ControllerError, Ctx, api_error};

/// The reason of the rejection of an Abnormal whose `spec.nodeName` names no node.
pub const NODE_NOT_FOUND: &str = "NodeNotFound";

/// The rejection for an Abnormal whose `spec.nodeName` (as its creator wrote it) is not a node
/// of the cluster; `None` when it names none or names one that exists.
pub(crate) async fn reject_unknown_node(
    ctx: &Ctx,
    abnormal: &Abnormal,
) -> Result<Option<Decision>, ControllerError> {
    let node = &abnormal.spec.node_name;
    if node.is_empty() {
        return Ok(None);
    }
    let exists = Api::<Node>::all(ctx.client.clone())
        .get_metadata_opt(node)
        .await
        .map_err(|e| api_error(ctx, abnormal, "get node", e))?
        .is_some();
    Ok((!exists).then(|| unknown_node(node)))
}

/// The rejection of an Abnormal for node `node`, which does not exist.
pub fn unknown_node(node: &str) -> Decision {
    Decision::Reject {
        reason: NODE_NOT_FOUND,
        message: format!(
            "spec.nodeName {node:?} is not a node of this cluster (`kubectl get nodes` lists them); name an existing node, or set spec.podReference instead and leave spec.nodeName empty"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rejection_names_the_node_and_what_to_do() {
        let Decision::Reject { reason, message } = unknown_node("nod-1") else {
            panic!("not a rejection")
        };
        assert_eq!(reason, "NodeNotFound");
        assert!(message.contains("\"nod-1\""), "{message}");
        assert!(message.contains("kubectl get nodes"), "{message}");
    }
}
