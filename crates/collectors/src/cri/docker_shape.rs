//! `containerInformation` in the shape Kube Diagnoser wrote there: the list Docker's
//! `GET /containers/json` answers (Go's `types.Container`), filled from what the CRI runtime
//! says. Plugins written against Kube Diagnoser decode it with Docker's Go types unchanged.
//!
//! What CRI has no equivalent for stays empty: `Command` (not in CRI's container list), `Ports`
//! and `NetworkSettings` (a pod's network belongs to its sandbox, not its containers), `Mounts`
//! (kdiag does not ask the runtime for them) and `HostConfig.NetworkMode`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ContainerInfo;

/// One entry, with Docker's JSON field names and Go field types (`Created` in Unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerContainer {
    #[serde(rename = "Id")]
    pub id: String,
    /// As dockershim named the kubelet's containers: `/k8s_<container>_<pod>_<namespace>_<pod
    /// uid>_<attempt>`, which tools parsing Docker names for the pod still understand.
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: String,
    pub created: i64,
    pub ports: Vec<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    /// Docker's lower-case state word: created, running, exited (or unknown).
    pub state: String,
    /// Docker's human status: `Up 5 minutes`, `Exited (137) 2 hours ago`, `Created`.
    pub status: String,
    pub host_config: HostConfig,
    pub network_settings: Option<serde_json::Value>,
    pub mounts: Vec<serde_json::Value>,
}

/// Docker's `HostConfig` summary; its only field, `NetworkMode`, is left out as Docker omits it
/// when empty.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HostConfig {}

/// The Docker-shaped entry of one container, its `Status` worded as of `now`.
pub fn docker_container(info: &ContainerInfo, now: jiff::Timestamp) -> DockerContainer {
    let name = if info.pod_name.is_empty() {
        format!(
            "/{}",
            if info.container_name.is_empty() {
                &info.id
            } else {
                &info.container_name
            }
        )
    } else {
        format!(
            "/k8s_{}_{}_{}_{}_{}",
            info.container_name, info.pod_name, info.pod_namespace, info.pod_uid, info.attempt
        )
    };
    let parse = |t: &str| t.parse::<jiff::Timestamp>().ok();
    let since = |t: Option<&String>| {
        t.and_then(|t| parse(t))
            .map(|t| human_duration((now.as_second() - t.as_second()).max(0)))
    };
    let status = match info.state.as_str() {
        "Running" => since(info.started_at.as_ref())
            .map(|d| format!("Up {d}"))
            .unwrap_or_else(|| "Up".into()),
        "Exited" => {
            let code = info.exit_code.unwrap_or_default();
            match since(info.finished_at.as_ref()) {
                Some(d) => format!("Exited ({code}) {d} ago"),
                None => format!("Exited ({code})"),
            }
        }
        "Created" => "Created".into(),
        _ => String::new(),
    };
    DockerContainer {
        id: info.id.clone(),
        names: vec![name],
        image: info.image.clone(),
        image_id: info.image_ref.clone(),
        command: String::new(),
        created: parse(&info.created_at)
            .map(|t| t.as_second())
            .unwrap_or_default(),
        ports: Vec::new(),
        labels: info.labels.clone(),
        state: info.state.to_ascii_lowercase(),
        status,
        host_config: HostConfig::default(),
        network_settings: None,
        mounts: Vec::new(),
    }
}

/// A duration worded as Docker words a container's age ("About a minute", "3 hours").
pub fn human_duration(seconds: i64) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let (minutes, hours) = (seconds / 60, seconds / 3600);
    match seconds {
        s if s < 1 => "Less than a second".into(),
        s if s < 60 => plural(s, "second"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => plural(minutes, "minute"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => plural(hours, "hour"),
        _ if hours < 24 * 7 * 2 => plural(hours / 24, "day"),
        _ if hours < 24 * 30 * 2 => plural(hours / 24 / 7, "week"),
        _ if hours < 24 * 365 * 2 => plural(hours / 24 / 30, "month"),
        _ => plural(hours / 24 / 365, "year"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker's `types.Container` (and its `Port`, `MountPoint`) with the Go field types as Rust
    /// ones, field names as Go's encoding/json writes and reads them; every field required, as a
    /// Go plugin's code would read each one.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct UpstreamContainer {
        #[serde(rename = "Id")]
        id: String,
        names: Vec<String>,
        image: String,
        #[serde(rename = "ImageID")]
        image_id: String,
        command: String,
        created: i64,
        ports: Vec<UpstreamPort>,
        #[serde(default)]
        size_rw: i64,
        #[serde(default)]
        size_root_fs: i64,
        labels: BTreeMap<String, String>,
        state: String,
        status: String,
        host_config: UpstreamHostConfig,
        network_settings: Option<serde_json::Value>,
        mounts: Vec<UpstreamMountPoint>,
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    #[allow(dead_code)]
    struct UpstreamPort {
        #[serde(rename = "IP", default)]
        ip: String,
        private_port: u16,
        #[serde(default)]
        public_port: u16,
        #[serde(rename = "Type")]
        type_: String,
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    #[allow(dead_code)]
    struct UpstreamHostConfig {
        #[serde(default)]
        network_mode: String,
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    #[allow(dead_code)]
    struct UpstreamMountPoint {
        #[serde(rename = "Type", default)]
        type_: String,
        #[serde(default)]
        source: String,
        destination: String,
        #[serde(rename = "RW")]
        rw: bool,
    }

    fn exited() -> ContainerInfo {
        ContainerInfo {
            id: "0123abcd".into(),
            pod_name: "web".into(),
            pod_namespace: "shop".into(),
            pod_uid: "u-1".into(),
            container_name: "app".into(),
            attempt: 2,
            image: "nginx:1.25".into(),
            image_ref: "docker.io/library/nginx@sha256:aa".into(),
            state: "Exited".into(),
            created_at: "2023-11-14T22:13:20Z".into(),
            started_at: Some("2023-11-14T22:13:21Z".into()),
            finished_at: Some("2023-11-14T22:13:30Z".into()),
            exit_code: Some(137),
            reason: "OOMKilled".into(),
            labels: [("io.kubernetes.pod.name".to_owned(), "web".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_exited_container_reads_as_docker_listed_it() {
        let now: jiff::Timestamp = "2023-11-14T23:13:30Z".parse().unwrap();
        let d = docker_container(&exited(), now);
        assert_eq!(d.names, ["/k8s_app_web_shop_u-1_2"]);
        assert_eq!(d.created, 1_700_000_000);
        assert_eq!(d.state, "exited");
        assert_eq!(d.status, "Exited (137) About an hour ago");
        assert_eq!(d.image_id, "docker.io/library/nginx@sha256:aa");
        assert_eq!(d.labels["io.kubernetes.pod.name"], "web");
    }

    #[test]
    fn container_information_decodes_with_dockers_go_types() {
        let now: jiff::Timestamp = "2023-11-14T22:20:00Z".parse().unwrap();
        let mut running = exited();
        running.state = "Running".into();
        running.finished_at = None;
        running.exit_code = None;
        let list = vec![
            docker_container(&exited(), now),
            docker_container(&running, now),
        ];
        let json = serde_json::to_value(&list).unwrap();
        let decoded: Vec<UpstreamContainer> =
            serde_json::from_value(json.clone()).expect("decodes into []types.Container");
        assert_eq!(decoded[1].status, "Up 6 minutes");
        assert_eq!(decoded[1].state, "running");
        assert_eq!(decoded[0].id, "0123abcd");
        assert_eq!(json[0]["HostConfig"], serde_json::json!({}));
        assert!(json[0]["NetworkSettings"].is_null());
    }

    #[test]
    fn ages_are_worded_as_docker_words_them() {
        for (s, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (150, "2 minutes"),
            (3600, "About an hour"),
            (3 * 3600, "3 hours"),
            (3 * 86400, "3 days"),
            (20 * 86400, "2 weeks"),
            (90 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }
}
