//! `container-collector` → `criContainerInformation` (kdiag's view) and `containerInformation`
//! (the same containers in Docker's shape, as Kube Diagnoser wrote them): the node's containers,
//! from its CRI runtime (containerd or CRI-O) over the runtime's socket.

pub mod client;
pub mod docker_shape;
pub mod probe;
pub mod proto;

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kdiag_api::Abnormal;
use kdiag_api::context_keys::{CONTAINER_INFORMATION, CRI_CONTAINER_INFORMATION};
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use serde::Serialize;

use crate::budget::{Deadline, cap_list, output_budget, truncated_key};
pub use client::{CriClient, CriError};
use proto::ContainerState;

/// The kubelet's labels on every container it creates.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Container statuses asked at once: enough to be quick, few enough not to load the runtime.
const STATUS_CONCURRENCY: usize = 8;

/// One container, as written to `criContainerInformation`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    pub container_name: String,
    /// How many times the kubelet restarted it before this instance (0 for the first).
    pub attempt: u32,
    pub image: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_ref: String,
    /// Created, Running, Exited or Unknown.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it is in its state (OOMKilled, Error, Completed), as the runtime says.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The host pid of its init process, where the runtime gives it (running containers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The runtime's labels on it (the kubelet's `io.kubernetes.*`): only in the Docker-shaped
    /// list, as Docker listed them.
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
}

/// Asks the runtime at the first of `ctx.node.cri_sockets` that answers.
pub struct ContainerCollector;

impl Processor for ContainerCollector {
    fn name(&self) -> &'static str {
        "container-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        _abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let deadline = Deadline::within(ctx.timeout);
            let mut client = CriClient::connect(&ctx.node.cri_sockets, deadline.remaining())
                .await
                .map_err(|e| ProcessorError::Failed(e.to_string()))?;
            let listed = list(&mut client, deadline)
                .await
                .map_err(|e| ProcessorError::Failed(e.to_string()))?;
            let runtime = format!(
                "{} {} (CRI {}) at {}",
                client.version.runtime_name,
                client.version.runtime_version,
                client.version.runtime_api_version,
                client.socket.display()
            );
            // Both lists share the step's budget: half each.
            let half = output_budget(ctx.max_output_bytes) / 2;
            let (kept, truncation) = cap_list(&listed.containers, half);
            let now = jiff::Timestamp::now();
            let docker: Vec<docker_shape::DockerContainer> = listed
                .containers
                .iter()
                .map(|c| docker_shape::docker_container(c, now))
                .collect();
            let (docker_kept, docker_truncation) = cap_list(&docker, half);
            let running = listed
                .containers
                .iter()
                .filter(|c| c.state == "Running")
                .count();
            let mut message = format!(
                "collected {} containers ({running} running) from {runtime}",
                listed.containers.len()
            );
            if listed.details_missing > 0 {
                message.push_str(&format!(
                    "; {} without status details ({})",
                    listed.details_missing,
                    listed.first_problem.as_deref().unwrap_or("time budget")
                ));
            }
            if let Some(t) = &truncation {
                message.push_str(&format!("; {}", t.reason));
            }
            let mut out = ProcessorOutput::message(message)
                .with_context(CRI_CONTAINER_INFORMATION, serde_json::Value::Array(kept))
                .with_context(CONTAINER_INFORMATION, serde_json::Value::Array(docker_kept));
            for (key, t) in [
                (CRI_CONTAINER_INFORMATION, truncation),
                (CONTAINER_INFORMATION, docker_truncation),
            ] {
                if let Some(t) = t {
                    out = out.with_context(
                        &truncated_key(key),
                        serde_json::to_value(t).unwrap_or_default(),
                    );
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

/// The containers of a runtime, with details from ContainerStatus where there was time.
#[derive(Debug, Default)]
pub struct Listed {
    pub containers: Vec<ContainerInfo>,
    /// Containers whose status could not be asked (time ran out, or the call failed).
    pub details_missing: usize,
    pub first_problem: Option<String>,
}

/// Lists the containers and asks each one's status (verbose for running ones, for the pid).
pub async fn list(client: &mut CriClient, deadline: Deadline) -> Result<Listed, CriError> {
    let containers = client.list_containers().await?;
    let mut infos: Vec<ContainerInfo> = containers.iter().map(from_container).collect();
    let asks: Vec<(usize, String, bool)> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let running = c.state == ContainerState::ContainerRunning as i32;
            (i, c.id.clone(), running)
        })
        .collect();
    let statuses: Vec<(usize, Result<proto::ContainerStatusResponse, CriError>)> =
        futures::stream::iter(asks)
            .map(|(i, id, running)| {
                let mut client = client.clone();
                async move {
                    let r = tokio::time::timeout(
                        deadline.remaining(),
                        client.container_status(&id, running),
                    )
                    .await;
                    let r = r.unwrap_or_else(|_| {
                        Err(CriError::Call {
                            method: "ContainerStatus",
                            socket: client.socket.display().to_string(),
                            status: tonic::Status::deadline_exceeded("time budget spent"),
                        })
                    });
                    (i, r)
                }
            })
            .buffer_unordered(STATUS_CONCURRENCY)
            .collect()
            .await;
    let mut listed = Listed::default();
    for (i, r) in statuses {
        match r {
            Ok(status) => apply_status(&mut infos[i], &status),
            Err(e) => {
                listed.details_missing += 1;
                listed.first_problem.get_or_insert_with(|| e.to_string());
            }
        }
    }
    infos.sort_by(|a, b| {
        (&a.pod_namespace, &a.pod_name, &a.container_name, b.attempt).cmp(&(
            &b.pod_namespace,
            &b.pod_name,
            &b.container_name,
            a.attempt,
        ))
    });
    listed.containers = infos;
    Ok(listed)
}

fn from_container(c: &proto::Container) -> ContainerInfo {
    let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
    let meta = c.metadata.clone().unwrap_or_default();
    ContainerInfo {
        id: c.id.clone(),
        pod_name: label(LABEL_POD_NAME),
        pod_namespace: label(LABEL_POD_NAMESPACE),
        pod_uid: label(LABEL_POD_UID),
        container_name: if meta.name.is_empty() {
            label(LABEL_CONTAINER_NAME)
        } else {
            meta.name
        },
        attempt: meta.attempt,
        image: c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        image_ref: c.image_ref.clone(),
        state: state_word(c.state),
        created_at: nanos_to_rfc3339(c.created_at).unwrap_or_default(),
        sandbox_id: c.pod_sandbox_id.clone(),
        labels: c
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

fn apply_status(info: &mut ContainerInfo, r: &proto::ContainerStatusResponse) {
    if let Some(s) = &r.status {
        info.state = state_word(s.state);
        info.started_at = nanos_to_rfc3339(s.started_at);
        info.finished_at = nanos_to_rfc3339(s.finished_at);
        if s.finished_at > 0 {
            info.exit_code = Some(s.exit_code);
        }
        info.reason = s.reason.clone();
        // ListContainers gives the image ID; ContainerStatus resolves it to the tag the pod
        // asked for (what the kubelet shows), and the reference to a digest.
        if let Some(image) = s.image.as_ref().filter(|i| !i.image.is_empty()) {
            info.image = image.image.clone();
        }
        if !s.image_ref.is_empty() {
            info.image_ref = s.image_ref.clone();
        }
    }
    info.pid = client::pid_from_info(&r.info);
}

fn state_word(state: i32) -> String {
    ContainerState::try_from(state)
        .map(|s| s.word().to_owned())
        .unwrap_or_else(|_| format!("State{state}"))
}

/// CRI times are nanoseconds since the epoch; 0 means "not set".
pub fn nanos_to_rfc3339(nanos: i64) -> Option<String> {
    if nanos <= 0 {
        return None;
    }
    jiff::Timestamp::from_nanosecond(nanos as i128)
        .ok()
        .map(|t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cri_container_becomes_an_entry_named_after_its_pod() {
        let mut c = proto::Container {
            id: "c1".into(),
            pod_sandbox_id: "s1".into(),
            metadata: Some(proto::ContainerMetadata {
                name: "app".into(),
                attempt: 2,
            }),
            state: ContainerState::ContainerExited as i32,
            created_at: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        c.labels.insert(LABEL_POD_NAME.into(), "web".into());
        c.labels.insert(LABEL_POD_NAMESPACE.into(), "shop".into());
        c.labels.insert(LABEL_POD_UID.into(), "u-1".into());
        let mut info = from_container(&c);
        assert_eq!(
            (info.pod_namespace.as_str(), info.pod_name.as_str()),
            ("shop", "web")
        );
        assert_eq!(info.container_name, "app");
        assert_eq!(info.attempt, 2);
        assert_eq!(info.state, "Exited");
        assert_eq!(info.created_at, "2023-11-14T22:13:20Z");
        let status = proto::ContainerStatusResponse {
            status: Some(proto::ContainerStatus {
                state: ContainerState::ContainerExited as i32,
                finished_at: 1_700_000_001_000_000_000,
                exit_code: 137,
                reason: "OOMKilled".into(),
                ..Default::default()
            }),
            info: Default::default(),
        };
        apply_status(&mut info, &status);
        assert_eq!(info.exit_code, Some(137));
        assert_eq!(info.reason, "OOMKilled");
        assert_eq!(info.pid, None);
    }
}
