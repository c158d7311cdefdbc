//! What the triage rules look at: the collected facts about one pod, read from the context the
//! collectors wrote (or fetched now when a collector did not run), with helpers to find a
//! container's spec, status, events and logs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Event, Pod};
use kdiag_api::Abnormal;
use kdiag_api::context_keys::{KERNEL_LOG_INFORMATION, NODE_INFORMATION, PROCESS_INFORMATION};
use kdiag_api::plugin::{ProcessorContext, ProcessorError};
use kdiag_collectors::pod_detail::{self, ContainerLogs, POD_DETAIL_INFORMATION, PodDetail};
use serde::Deserialize;
use serde_json::Value;

use crate::terminating_pod::{PodFacts, Verdict};

/// An OOM kill as kernel-log-collector reports it (`kernelLogInformation.oomKills`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OomKill {
    pub timestamp: String,
    pub pid: i64,
    pub task: String,
    pub kind: String,
    pub oom_memcg: String,
    #[serde(rename = "podUID")]
    pub pod_uid: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    pub anon_rss_bytes: Option<u64>,
    pub file_rss_bytes: Option<u64>,
    pub message: String,
}

/// A process as process-collector reports it (`processInformation`), the fields the node
/// rules need.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub name: String,
    /// The state letter: Z for a zombie.
    pub status: String,
    pub command: Vec<String>,
    pub memory_info: ProcMemory,
    #[serde(rename = "podUID")]
    pub pod_uid: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProcMemory {
    pub rss: u64,
}

/// One container of the pod: spec, status, and whether it is an init container.
pub struct ContainerView<'a> {
    pub name: &'a str,
    pub init: bool,
    pub spec: &'a Container,
    pub status: Option<&'a ContainerStatus>,
}

/// Everything the pod rules look at.
pub struct Facts {
    pub detail: PodDetail,
    /// Where the detail came from, for messages.
    pub detail_source: &'static str,
    /// OOM kills of this pod's cgroups; `None` when no kernel log was collected.
    pub oom_kills: Option<Vec<OomKill>>,
    /// The node's processes; `None` when process-collector did not run.
    pub processes: Option<Vec<Proc>>,
    /// node-collector's `nodeInformation`, when it ran.
    pub node_info: Option<Value>,
    /// The terminating-pod verdict, for a pod being deleted on this node.
    pub terminating: Option<(PodFacts, Verdict, String)>,
    /// Pods of the node by UID (`namespace/name`), to name a process's pod.
    pub pod_names: BTreeMap<String, String>,
    /// The node's container runtime asked now, for a pod waiting to be created on this
    /// agent's node.
    pub runtime: Option<kdiag_collectors::cri::probe::RuntimeProbe>,
    pub now: jiff::Timestamp,
}

impl Facts {
    /// Reads the facts of the Abnormal's pod: `podDetailInformation` when pod-detail-collector
    /// ran, else fetched now; the kernel's OOM kills and the processes when their collectors ran.
    pub async fn load(ctx: &ProcessorContext, abnormal: &Abnormal) -> Result<Self, ProcessorError> {
        let (ns, name) = pod_detail::pod_of(abnormal).ok_or_else(|| {
            ProcessorError::InvalidInput(
                "pod-triage-diagnoser needs spec.podReference (the pod to triage); for a node, use node-triage-diagnoser".into(),
            )
        })?;
        let from_context: Option<PodDetail> = abnormal.context_as(POD_DETAIL_INFORMATION)?;
        let (detail, detail_source) = match from_context {
            Some(d)
                if d.pod.metadata.name.as_deref() == Some(name.as_str())
                    && d.pod.metadata.namespace.as_deref() == Some(ns.as_str()) =>
            {
                (d, POD_DETAIL_INFORMATION)
            }
            _ => (
                pod_detail::collect(&ctx.client, &ns, &name).await?,
                "the apiserver (pod-detail-collector did not run)",
            ),
        };
        let uid = detail.pod.metadata.uid.clone().unwrap_or_default();
        let oom_kills = abnormal
            .context_value(KERNEL_LOG_INFORMATION)
            .and_then(|v| v.get("oomKills"))
            .and_then(|v| serde_json::from_value::<Vec<OomKill>>(v.clone()).ok())
            .map(|kills| {
                kills
                    .into_iter()
                    .filter(|k| !uid.is_empty() && k.pod_uid.as_deref() == Some(uid.as_str()))
                    .collect()
            });
        let processes = abnormal
            .context_value(PROCESS_INFORMATION)
            .and_then(|v| serde_json::from_value::<Vec<Proc>>(v.clone()).ok());
        let node_info = abnormal.context_value(NODE_INFORMATION).cloned();
        Ok(Self {
            detail,
            detail_source,
            oom_kills,
            processes,
            node_info,
            terminating: None,
            pod_names: BTreeMap::new(),
            runtime: None,
            now: jiff::Timestamp::now(),
        })
    }

    pub fn pod(&self) -> &Pod {
        &self.detail.pod
    }

    pub fn namespace(&self) -> &str {
        self.pod()
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.pod().metadata.name.as_deref().unwrap_or("")
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    /// The evidence object: `pod/namespace/name`.
    pub fn object(&self) -> String {
        format!("pod/{}", self.key())
    }

    pub fn uid(&self) -> &str {
        self.pod().metadata.uid.as_deref().unwrap_or("")
    }

    /// Init containers first, then the app containers, each with its status.
    pub fn containers(&self) -> Vec<ContainerView<'_>> {
        let Some(spec) = self.pod().spec.as_ref() else {
            return Vec::new();
        };
        let status = self.pod().status.as_ref();
        fn find<'a>(
            list: Option<&'a Vec<ContainerStatus>>,
            name: &str,
        ) -> Option<&'a ContainerStatus> {
            list.and_then(|l| l.iter().find(|s| s.name == name))
        }
        let mut out = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            out.push(ContainerView {
                name: &c.name,
                init: true,
                spec: c,
                status: find(
                    status.and_then(|s| s.init_container_statuses.as_ref()),
                    &c.name,
                ),
            });
        }
        for c in &spec.containers {
            out.push(ContainerView {
                name: &c.name,
                init: false,
                spec: c,
                status: find(status.and_then(|s| s.container_statuses.as_ref()), &c.name),
            });
        }
        out
    }

    pub fn events(&self) -> &[Event] {
        &self.detail.events
    }

    /// The pod's events with this reason, oldest first.
    pub fn events_with<'a>(&'a self, reason: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events()
            .iter()
            .filter(move |e| e.reason.as_deref() == Some(reason))
    }

    /// The container an event is about, from its fieldPath `spec.containers{app}`.
    pub fn event_container(e: &Event) -> Option<&str> {
        let path = e.involved_object.field_path.as_deref()?;
        let start = path.find('{')? + 1;
        let end = path[start..].find('}')? + start;
        Some(&path[start..end])
    }

    pub fn logs_of(&self, container: &str) -> Option<&ContainerLogs> {
        self.detail.logs.iter().find(|l| l.container == container)
    }

    pub fn restart_policy(&self) -> &str {
        self.pod()
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// The pod's phase, `Unknown` when none.
    pub fn phase(&self) -> &str {
        self.pod()
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Unknown")
    }
}

/// A failure of a container that runs again and has not failed for this long is history.
pub const OVER_AFTER_SECONDS: i64 = 600;

impl ContainerView<'_> {
    /// Whether the container runs again and `finished` (its last failure) is long enough ago to
    /// be history rather than the current trouble.
    pub fn recovered_since(&self, finished: Option<jiff::Timestamp>, now: jiff::Timestamp) -> bool {
        let running = self
            .status
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some());
        running && finished.is_some_and(|f| now.duration_since(f).as_secs() > OVER_AFTER_SECONDS)
    }
}

/// A container ID without its runtime prefix (`containerd://…`).
pub fn bare_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}
