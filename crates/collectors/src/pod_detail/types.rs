//! The shape of `podDetailInformation`, shared by pod-detail-collector (which writes it) and the
//! triage diagnosers (which read it), so both sides agree by construction.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, NodeCondition, Pod, Taint};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything pod-detail-collector found about one pod.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodDetail {
    /// When the collector read it (RFC 3339).
    pub collected_at: String,
    /// The pod, without managedFields and last-applied annotations.
    pub pod: Pod,
    /// The controller chain above the pod, nearest first (ReplicaSet, then its Deployment…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<Owner>,
    /// core/v1 Events whose involvedObject is this pod, oldest first (the most recent ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// The last log lines of each container's current and previous instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<ContainerLogs>,
    /// The node the pod is bound to; absent while it is not scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeDetail>,
    /// For a pod not bound to a node: what the nodes have free and what its claims are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    /// What could not be read (a permission, a log), recorded instead of failing the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What was cut to fit the output cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

/// One controller above the pod.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// spec.replicas, for the kinds that have it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Its status as the apiserver has it (conditions, ready counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Why it could not be read, when it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The log tails of one container.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLogs {
    pub container: String,
    #[serde(default)]
    pub init: bool,
    /// The running (or last started) instance; absent when none ever started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<LogTail>,
    /// The instance before the last restart; absent when there was none or its log is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<LogTail>,
}

/// The last lines of one container instance's log, oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogTail {
    #[serde(default)]
    pub lines: Vec<LogLine>,
    /// Lines were dropped to stay within the bounds.
    #[serde(default)]
    pub truncated: bool,
    /// Why the log could not be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One log line with the time the runtime stamped it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct LogLine {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    pub text: String,
}

/// The pod's node as the apiserver has it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeDetail {
    pub name: String,
    #[serde(default)]
    pub conditions: Vec<NodeCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub unschedulable: bool,
    #[serde(default)]
    pub allocatable: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubelet_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_runtime_version: String,
    /// The port the kubelet serves its API on (`status.daemonEndpoints`): how the node's own
    /// kubelet is told apart from other kubelets of the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_port: Option<i32>,
    /// Recent Events about the node (NodeNotReady, EvictionThresholdMet, SystemOOM…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// Why the node could not be read, when it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// What the scheduler had to choose from, for a pod not bound to a node.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    /// What the pod requests (containers summed, init containers' maximum, overhead).
    pub requested: Resources,
    /// Every node with what is free on it, the most free memory first.
    #[serde(default)]
    pub nodes: Vec<NodeFit>,
    /// Nodes left out of `nodes` to stay within the output cap.
    #[serde(default)]
    pub nodes_omitted: usize,
    /// The PersistentVolumeClaims the pod mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimState>,
}

/// Amounts of the resources the scheduler counts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    #[serde(default)]
    pub ephemeral_storage_bytes: i64,
    #[serde(default)]
    pub pods: i64,
}

impl Resources {
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis - other.cpu_millis,
            memory_bytes: self.memory_bytes - other.memory_bytes,
            ephemeral_storage_bytes: self.ephemeral_storage_bytes - other.ephemeral_storage_bytes,
            pods: self.pods - other.pods,
        }
    }

    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_bytes: self.memory_bytes + other.memory_bytes,
            ephemeral_storage_bytes: self.ephemeral_storage_bytes + other.ephemeral_storage_bytes,
            pods: self.pods + other.pods,
        }
    }

    /// The larger of each resource.
    pub fn max(self, other: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            ephemeral_storage_bytes: self
                .ephemeral_storage_bytes
                .max(other.ephemeral_storage_bytes),
            pods: self.pods.max(other.pods),
        }
    }
}

/// One node as the scheduler sees it: what it can hold, what its pods request, whom it admits.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeFit {
    pub name: String,
    pub ready: bool,
    #[serde(default)]
    pub unschedulable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// The requests of the pods bound to it that have not ended.
    pub requested: Resources,
    /// allocatable − requested.
    pub free: Resources,
    /// The pods on the node holding a hostPort the pod asks for (the scheduler's "didn't have
    /// free ports"), at most a few per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_port_holders: Vec<HostPortHolder>,
}

/// A hostPort a pod on a node holds that the pod being diagnosed also asks for.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostPortHolder {
    pub port: i32,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The address it binds; empty for every address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// `namespace/name` of the pod holding it.
    pub pod: String,
}

/// A PersistentVolumeClaim the pod mounts, and whether it is bound.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimState {
    pub name: String,
    /// Pending, Bound, Lost; `Missing` when the claim does not exist.
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub storage_class_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub volume_name: String,
    /// The claim's most recent Events (ProvisioningFailed, FailedBinding, WaitForFirstConsumer…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}
