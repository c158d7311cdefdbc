//! Admission, the pure part: is an Abnormal well formed, where does it run, or why not.
//!
//! The controller gathers the facts (IO), then asks [`decide`], which is total: every outcome is
//! a [`Decision`] the controller only has to write.
//!
//! 1. [`with_every_registered`]: an Abnormal that asks for Kube Diagnoser v0.1.0–v0.1.3's rules
//!    gets every registered processor in each empty list; then [`with_triage`]: a pod Abnormal
//!    that names no processors gets the pod triage's registered ones. Computed once; the rest of
//!    admission works on the result.
//! 2. The pod's node ([`PodLookup`]), and only when [`needs_stand_ins`] says so the nodes that
//!    could stand in for a pod on no node ([`StandIns`]).
//! 3. [`decide`]: [`Decision::Admit`] with the [`Route`] to write, [`Decision::Reject`], or
//!    [`Decision::Wait`].
//! 4. The controller routes (the [`Route::patch`]), then accepts ([`accept`]) from what the
//!    routed object records ([`Routing::recorded`]).

pub mod fan_out;
mod legacy;
mod routing;
mod stand_in;
mod triage;
mod validate;

use std::time::Duration;

use kdiag_api::{Abnormal, NamespacedName, ProcessorEndpoint, Stage};

pub use legacy::with_every_registered;
pub use routing::{Route, Routing, StandIn, accept, reject, wait};
pub use stand_in::{
    APISERVER_COLLECTORS, StandIns, can_stand_in, choose_stand_in, stand_in_collectors,
};
pub use triage::{TRIAGE_COLLECTORS, TRIAGE_DIAGNOSERS, Triage, wants_triage, with_triage};
pub use validate::{MAX_TIMEOUT_SECONDS, registration_in_scope, validate};

/// The reason of the rejection of an Abnormal whose `spec.nodeName` names no node.
pub const NODE_NOT_FOUND: &str = "NodeNotFound";

/// What the controller knows about the pod an Abnormal refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLookup {
    /// The Abnormal names its node; no lookup needed.
    NotNeeded,
    /// The pod exists; its node once scheduled, and whether the scheduler has said that no node
    /// fits it (condition PodScheduled=False, reason Unschedulable).
    Found {
        node: Option<String>,
        unschedulable: bool,
    },
    Missing,
}

/// Everything admission decides on besides the Abnormal, gathered by the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Whether the node `spec.nodeName` names exists; looked up whenever it is set (None: not
    /// looked up, and not held against the Abnormal).
    pub node_exists: Option<bool>,
    pub pod: PodLookup,
    /// Nodes that could stand in for a pod on no node; empty unless [`needs_stand_ins`].
    pub stand_ins: StandIns,
    /// How long since the Abnormal was created.
    pub waited: Duration,
    /// How long a pod may take to exist and be scheduled (`--pod-wait`).
    pub pod_wait: Duration,
}

/// The controller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route it as this says, then accept it.
    Admit(Route),
    /// Fail it: the reason is a CamelCase code, the message says what is wrong and what to do.
    Reject {
        reason: &'static str,
        message: String,
    },
    /// The pod is not there or not scheduled yet, or no node can stand in for it yet; look again
    /// after `retry_after`.
    Wait {
        reason: &'static str,
        message: String,
        retry_after: Duration,
    },
}

/// Looks up processor registrations for validation.
pub trait Registry {
    /// The registration, if it exists.
    fn get(&self, stage: Stage, name: &NamespacedName) -> Option<ProcessorEndpoint>;
    /// Every registration of the stage's kind, as namespace/name.
    fn names(&self, stage: Stage) -> Vec<String>;
    /// The built-in processors this kdiag carries.
    fn builtins(&self) -> Vec<&'static str>;
}

/// Why the pod of `abnormal` is to be diagnosed from another node right now, if it is: it is on no
/// node, either because the scheduler found none that fits or because none was found within the
/// wait, and the Abnormal asks only for what a stand-in can do ([`can_stand_in`]).
fn stand_in_reason(abnormal: &Abnormal, facts: &Facts) -> Option<String> {
    if !abnormal.spec.node_name.is_empty() || !can_stand_in(abnormal) {
        return None;
    }
    match &facts.pod {
        PodLookup::Found { node, .. } if node.as_deref().is_some_and(|n| !n.is_empty()) => None,
        PodLookup::Found {
            unschedulable: true,
            ..
        } => Some("the scheduler found no node that fits it".into()),
        PodLookup::Found { .. } if facts.waited >= facts.pod_wait => Some(format!(
            "no scheduler placed it within {}s",
            facts.pod_wait.as_secs()
        )),
        _ => None,
    }
}

/// True when [`decide`] needs [`Facts::stand_ins`]: the controller lists agents and nodes only
/// then.
pub fn needs_stand_ins(abnormal: &Abnormal, facts: &Facts) -> bool {
    stand_in_reason(abnormal, facts).is_some()
}

/// Decides what happens to a new Abnormal (`abnormal` as [`with_triage`] left it).
pub fn decide(abnormal: &Abnormal, registry: &dyn Registry, facts: &Facts) -> Decision {
    if let Err(e) = validate(abnormal, registry) {
        let (reason, message) = e.rejection();
        return Decision::Reject { reason, message };
    }
    let route = |node: &str| Route {
        routing: Routing {
            node: node.to_owned(),
            stand_in: None,
        },
        collectors: abnormal.spec.assigned_information_collectors.clone(),
        diagnosers: abnormal.spec.assigned_diagnosers.clone(),
        recoverers: abnormal.spec.assigned_recoverers.clone(),
    };
    let named = &abnormal.spec.node_name;
    if !named.is_empty() {
        // An Abnormal for a node that does not exist (a typo, a node already removed, a name an
        // alert or a probe made up) would wait forever for an agent.
        if facts.node_exists == Some(false) {
            return Decision::Reject {
                reason: NODE_NOT_FOUND,
                message: format!(
                    "spec.nodeName {named:?} is not a node of this cluster (`kubectl get nodes` lists them); name an existing node, or set spec.podReference instead and leave spec.nodeName empty"
                ),
            };
        }
        return Decision::Admit(route(named));
    }
    let pod_name = pod_key(abnormal);
    let (waited, pod_wait) = (facts.waited, facts.pod_wait);
    if let Some(why) = stand_in_reason(abnormal, facts) {
        return match choose_stand_in(&facts.stand_ins, &abnormal_key(abnormal)) {
            Some(node) => {
                let (kept, left_out) = stand_in_collectors(abnormal);
                Decision::Admit(Route {
                    routing: Routing {
                        node,
                        stand_in: Some(StandIn {
                            pod: pod_name,
                            why,
                            left_out: left_out.into_iter().map(|n| n.name).collect(),
                        }),
                    },
                    collectors: kept,
                    diagnosers: abnormal.spec.assigned_diagnosers.clone(),
                    recoverers: abnormal.spec.assigned_recoverers.clone(),
                })
            }
            None if waited >= pod_wait => Decision::Reject {
                reason: "NoNodeToRunOn",
                message: format!(
                    "pod {pod_name} is on no node ({why}), and no node is Ready with a kdiag agent to diagnose it from; check `kubectl get nodes` and the kdiag-agent DaemonSet"
                ),
            },
            None => Decision::Wait {
                reason: "WaitingForNode",
                message: format!(
                    "pod {pod_name} is on no node ({why}); waiting for a Ready node with a kdiag agent to diagnose it from"
                ),
                retry_after: Duration::from_secs(2),
            },
        };
    }
    let retry_after = Duration::from_secs(2)
        .min(pod_wait.saturating_sub(waited))
        .max(Duration::from_millis(500));
    match &facts.pod {
        PodLookup::Found {
            node: Some(node), ..
        } if !node.is_empty() => Decision::Admit(route(node)),
        PodLookup::NotNeeded => Decision::Reject {
            reason: "MissingTarget",
            message: "no node to route to".into(),
        },
        PodLookup::Found { .. } if waited >= pod_wait => Decision::Reject {
            reason: "PodNotScheduled",
            message: format!(
                "pod {pod_name} was not scheduled to a node within {}s, so there is no node to diagnose on; look at the pod's events (kubectl describe pod), or set spec.nodeName",
                pod_wait.as_secs()
            ),
        },
        PodLookup::Found { .. } => Decision::Wait {
            reason: "WaitingForPod",
            message: format!(
                "pod {pod_name} is not scheduled yet; waiting up to {}s",
                pod_wait.as_secs()
            ),
            retry_after,
        },
        PodLookup::Missing if waited >= pod_wait => Decision::Reject {
            reason: "PodNotFound",
            message: format!(
                "pod {pod_name} does not exist (waited {}s); check spec.podReference's namespace and name",
                pod_wait.as_secs()
            ),
        },
        PodLookup::Missing => Decision::Wait {
            reason: "WaitingForPod",
            message: format!(
                "pod {pod_name} does not exist yet; waiting up to {}s",
                pod_wait.as_secs()
            ),
            retry_after,
        },
    }
}

/// The pod an Abnormal refers to, as namespace/name (its own namespace by default).
pub fn pod_key(abnormal: &Abnormal) -> String {
    let p = abnormal.spec.pod_reference.clone().unwrap_or_default();
    let ns = if p.namespace.is_empty() {
        abnormal.metadata.namespace.clone().unwrap_or_default()
    } else {
        p.namespace
    };
    format!("{ns}/{}", p.name)
}

/// The Abnormal as namespace/name.
fn abnormal_key(a: &Abnormal) -> String {
    format!(
        "{}/{}",
        a.metadata.namespace.as_deref().unwrap_or_default(),
        a.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The kind name of a stage's registrations.
pub fn kind_of(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "InformationCollector",
        Stage::Diagnosing => "Diagnoser",
        Stage::Recovering => "Recoverer",
    }
}

fn list_field(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "assignedInformationCollectors",
        Stage::Diagnosing => "assignedDiagnosers",
        Stage::Recovering => "assignedRecoverers",
    }
}

#[cfg(test)]
mod tests;
