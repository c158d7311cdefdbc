//! Where admission sends an Abnormal, and the status it writes.
//!
//! The routing is recorded on the Abnormal in fields that are data, not prose: the node label
//! (which the node's agent selects on) agreeing with `spec.nodeName`, and for a stand-in the
//! [`STAND_IN_ANNOTATION`] (a JSON [`StandIn`]). [`Routing::recorded`] reads it back, after a
//! controller restart too; the Accepted condition's message is made from it and never parsed.
//!
//! Admission routes first and accepts second: the routing patch carries the resourceVersion the
//! decision was made on, so an Abnormal is routed once, and the acceptance is a status write with
//! the resourceVersion of the routed object, so it is accepted once.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::labels::{NODE_LABEL, PLAN_ANNOTATION, STAND_IN_ANNOTATION, node_label_value};
use kdiag_api::{
    Abnormal, AbnormalConditionType, AbnormalPhase, AbnormalStatus, ConditionStatus, NamespacedName,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::plan::fingerprint;
use crate::set_condition;

/// Another node's agent diagnoses a pod that is on no node, with the collectors that read only
/// the apiserver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandIn {
    /// The pod, as namespace/name.
    pub pod: String,
    /// Why the pod is on no node.
    pub why: String,
    /// The names of the collectors left out, which would only describe the stand-in node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

/// Where an Abnormal runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The node whose agent runs it.
    pub node: String,
    /// Set when that node stands in for a pod that is on no node.
    pub stand_in: Option<StandIn>,
}

impl Routing {
    /// The routing recorded on `a`: its node label agrees with `spec.nodeName`. None until
    /// admission has routed it.
    pub fn recorded(a: &Abnormal) -> Option<Routing> {
        let node = &a.spec.node_name;
        let label = a.metadata.labels.as_ref()?.get(NODE_LABEL)?;
        if node.is_empty() || *label != node_label_value(node) {
            return None;
        }
        let stand_in = a
            .metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(STAND_IN_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok());
        Some(Routing {
            node: node.clone(),
            stand_in,
        })
    }

    /// The message of the Accepted condition and Event.
    pub fn accepted_message(&self) -> String {
        let mut msg = format!("routed to node {}", self.node);
        if let Some(s) = &self.stand_in {
            msg.push_str(&format!(
                " to stand in for unscheduled pod {}: it is on no node ({}); only collectors that read the apiserver run",
                s.pod, s.why
            ));
            if !s.left_out.is_empty() {
                msg.push_str(&format!(" (left out: {})", s.left_out.join(", ")));
            }
        }
        msg
    }
}

/// What admission writes when it admits: where the Abnormal runs, and the processors it runs (the
/// pod triage's when it named none, a stand-in's share of them, every registered one where it
/// asks for Kube Diagnoser v0.1.0–v0.1.3's rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub routing: Routing,
    pub collectors: Vec<NamespacedName>,
    pub diagnosers: Vec<NamespacedName>,
    pub recoverers: Vec<NamespacedName>,
}

impl Route {
    /// The JSON merge patch that routes `abnormal` (the copy the decision was made on): the node
    /// label, `spec.nodeName`, the stand-in annotation (removed when there is none), the plan's
    /// fingerprint ([`PLAN_ANNOTATION`]), and the processors where they differ from its own. Its resourceVersion makes the patch fail with
    /// 409 Conflict if the Abnormal changed since it was read, so no Abnormal is routed twice.
    pub fn patch(&self, abnormal: &Abnormal) -> Value {
        let stand_in = self
            .routing
            .stand_in
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok());
        // The plan as admitted: the spec with these processors, frozen for the agent.
        let mut routed = abnormal.clone();
        routed.spec.assigned_information_collectors = self.collectors.clone();
        routed.spec.assigned_diagnosers = self.diagnosers.clone();
        routed.spec.assigned_recoverers = self.recoverers.clone();
        let mut patch = json!({
            "metadata": {
                "resourceVersion": abnormal.metadata.resource_version,
                "labels": {NODE_LABEL: node_label_value(&self.routing.node)},
                "annotations": {
                    STAND_IN_ANNOTATION: stand_in,
                    PLAN_ANNOTATION: fingerprint(&routed),
                },
            },
            "spec": {"nodeName": self.routing.node},
        });
        // The processors arrive with the routing label, so the agent sees them at once.
        if self.collectors != abnormal.spec.assigned_information_collectors {
            patch["spec"]["assignedInformationCollectors"] = json!(self.collectors);
        }
        if self.diagnosers != abnormal.spec.assigned_diagnosers {
            patch["spec"]["assignedDiagnosers"] = json!(self.diagnosers);
        }
        if self.recoverers != abnormal.spec.assigned_recoverers {
            patch["spec"]["assignedRecoverers"] = json!(self.recoverers);
        }
        patch
    }
}

/// The status of an accepted Abnormal: it starts collecting now.
pub fn accept(status: &mut AbnormalStatus, routing: &Routing, now: &Time) {
    status.phase = Some(AbnormalPhase::InformationCollecting);
    status.start_time = Some(now.clone());
    status.reason.clear();
    status.message.clear();
    set_condition(
        &mut status.conditions,
        AbnormalConditionType::Accepted,
        ConditionStatus::True,
        "Accepted",
        &routing.accepted_message(),
        now,
    );
}

/// The status of a rejected Abnormal: Failed, with the reason and what to do.
pub fn reject(status: &mut AbnormalStatus, reason: &str, message: &str, now: &Time) {
    status.phase = Some(AbnormalPhase::Failed);
    status.reason = reason.into();
    status.message = message.into();
    set_condition(
        &mut status.conditions,
        AbnormalConditionType::Accepted,
        ConditionStatus::False,
        reason,
        message,
        now,
    );
}

/// Records what a waiting admission waits for. False when the status says so already, so
/// nothing needs writing.
pub fn wait(status: &mut AbnormalStatus, reason: &str, message: &str) -> bool {
    if status.reason == reason && status.message == message {
        return false;
    }
    status.reason = reason.into();
    status.message = message.into();
    true
}
