//! Standing in for a pod that is on no node: which Abnormals may run on another node's agent,
//! with what, and on which node.

use kdiag_api::{Abnormal, NamespacedName};

/// The nodes that could stand in for a pod on no node, gathered by the IO layer only when
/// [`super::needs_stand_ins`] says they are needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandIns {
    /// Nodes where a kdiag agent runs (its DaemonSet's Running pods).
    pub agent_nodes: Vec<String>,
    /// Ready nodes; read only when no agent is found.
    pub ready_nodes: Vec<String>,
}

/// Collectors (in kube-diagnoser) that read only the apiserver, so that any node's agent can run
/// them for a pod that is on no node.
pub const APISERVER_COLLECTORS: &[&str] = &["pod-detail-collector"];

fn reads_only_the_apiserver(n: &NamespacedName) -> bool {
    n.namespace == kdiag_api::SYSTEM_NAMESPACE && APISERVER_COLLECTORS.contains(&n.name.as_str())
}

/// True when another node's agent can diagnose this pod Abnormal while the pod is on no node: it
/// collects with an apiserver-only collector, and asks for nothing that acts on a node
/// (recoverers, commands, profilers). Node-local collectors are left out when it stands in.
pub fn can_stand_in(a: &Abnormal) -> bool {
    let s = &a.spec;
    s.pod_reference.is_some()
        && s.assigned_information_collectors
            .iter()
            .any(reads_only_the_apiserver)
        && s.assigned_recoverers.is_empty()
        && s.command_executors.is_empty()
        && s.profilers.is_empty()
}

/// The collectors an Abnormal keeps when another node stands in, and those left out.
pub fn stand_in_collectors(a: &Abnormal) -> (Vec<NamespacedName>, Vec<NamespacedName>) {
    a.spec
        .assigned_information_collectors
        .iter()
        .cloned()
        .partition(reads_only_the_apiserver)
}

/// The node whose agent stands in for a pod on no node: a node where a kdiag agent runs, else a
/// Ready node; the same one for the same Abnormal, and spread over nodes for different ones.
pub fn choose_stand_in(candidates: &StandIns, abnormal: &str) -> Option<String> {
    let mut nodes: Vec<&String> = if candidates.agent_nodes.is_empty() {
        candidates.ready_nodes.iter().collect()
    } else {
        candidates.agent_nodes.iter().collect()
    };
    nodes.sort();
    nodes.dedup();
    if nodes.is_empty() {
        return None;
    }
    // FNV-1a, not DefaultHasher (unspecified across Rust releases): the same choice after a
    // restart and after an upgrade.
    let at = crate::hash::fnv1a(abnormal) % nodes.len() as u64;
    Some(nodes[at as usize].clone())
}
