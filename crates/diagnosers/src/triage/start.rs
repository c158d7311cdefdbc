//! Containers that could not start: the runtime could not run the command (missing or not
//! executable), the kubelet could not build the container's configuration (a missing
//! ConfigMap, Secret or key), a volume could not be mounted, or the pod's sandbox could not be
//! created.

use k8s_openapi::api::core::v1::Event;
use kdiag_api::Evidence;
use kdiag_collectors::pod_detail::POD_DETAIL_INFORMATION;

use super::facts::Facts;
use super::finding::{self, Finding, Rank, quote};

/// Waiting reasons of a container whose process the runtime could not start.
const START_REASONS: &[&str] = &["RunContainerError", "StartError", "ContainerCannotRun"];

pub fn check(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in f.containers() {
        let Some(status) = c.status else { continue };
        let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
        let terminated = [
            status.state.as_ref().and_then(|s| s.terminated.as_ref()),
            status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref()),
        ]
        .into_iter()
        .flatten()
        .find(|t| START_REASONS.contains(&t.reason.as_deref().unwrap_or("")));
        let waiting_reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
        if waiting_reason == "CreateContainerConfigError"
            || waiting_reason == "CreateContainerError"
        {
            let message = waiting.and_then(|w| w.message.as_deref()).unwrap_or("");
            out.push(config_error(f, c.name, waiting_reason, message));
        } else if START_REASONS.contains(&waiting_reason)
            || terminated
                .is_some_and(|t| !c.recovered_since(t.finished_at.as_ref().map(|t| t.0), f.now))
        {
            let message = waiting
                .filter(|_| START_REASONS.contains(&waiting_reason))
                .and_then(|w| w.message.as_deref())
                .or_else(|| terminated.and_then(|t| t.message.as_deref()))
                .unwrap_or("");
            let at = terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0);
            out.push(start_error(f, c.name, message, at, status.restart_count));
        }
    }
    out.extend(mount_errors(f));
    out.extend(sandbox_errors(f));
    out
}

/// The container's Failed events (`Error: …`), for evidence.
fn failed_events<'a>(f: &'a Facts, container: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
    f.events_with("Failed")
        .filter(move |e| Facts::event_container(e) == Some(container))
}

/// `exec: "X": …` → X.
fn exec_target(message: &str) -> Option<&str> {
    let rest = &message[message.find("exec: \"")? + 7..];
    Some(&rest[..rest.find('"')?])
}

fn start_error(
    f: &Facts,
    container: &str,
    message: &str,
    at: Option<jiff::Timestamp>,
    restarts: i32,
) -> Finding {
    let object = f.object();
    let m = message.to_ascii_lowercase();
    let target = exec_target(message).unwrap_or("the command");
    let (reason, what, suggestion) = if m.contains("executable file not found") {
        (
            "ExecutableNotFound",
            format!("its command `{target}` is not in the image's PATH"),
            format!(
                "Fix command/args of container {container}: `{target}` does not exist in the image (a typo, or an image without that program). Give the full path of a program the image has, or use an image that contains it."
            ),
        )
    } else if m.contains("no such file or directory") && m.contains("chdir") {
        (
            "WorkingDirectoryNotFound",
            "its workingDir does not exist in the image".to_owned(),
            format!(
                "Fix workingDir of container {container}, or create the directory in the image."
            ),
        )
    } else if m.contains("no such file or directory") {
        (
            "ExecutableNotFound",
            format!("its command `{target}` does not exist in the image"),
            format!(
                "Fix command/args of container {container}: `{target}` is not a file in the image (a wrong path, or an image that does not contain it; a script whose #! interpreter is missing fails the same way)."
            ),
        )
    } else if m.contains("permission denied") || m.contains("exec format error") {
        (
            "ExecutableNotRunnable",
            if m.contains("exec format error") {
                format!("its command `{target}` cannot be executed: exec format error")
            } else {
                format!("its command `{target}` cannot be executed: permission denied")
            },
            format!(
                "`{target}` exists but cannot run: make it executable in the image (chmod +x), check that it is a program built for the node's CPU architecture (exec format error), or a script starting with #!."
            ),
        )
    } else {
        (
            "ContainerStartFailed",
            format!("the runtime could not start it: {}", quote(message, 200)),
            format!(
                "Read the runtime's message above and the kubelet's Failed events for container {container}; check command, workingDir, securityContext and volume mounts."
            ),
        )
    };
    let mut finding = Finding::new(
        reason,
        Rank::Definite,
        format!(
            "container {container} of pod {} could not start: {what}{}",
            f.key(),
            if restarts > 0 {
                format!(" ({restarts} attempt(s))")
            } else {
                String::new()
            }
        ),
        suggestion,
    )
    .weighted(restarts as i64)
    .with(finding::status(
        &object,
        format!("container {container}: {}", quote(message, 400)),
        at,
    ));
    for e in failed_events(f, container) {
        finding = finding.with_event(e, &object);
    }
    finding
}

/// A missing ConfigMap, Secret or key (CreateContainerConfigError), named.
fn config_error(f: &Facts, container: &str, waiting_reason: &str, message: &str) -> Finding {
    let object = f.object();
    let ns = f.namespace();
    let missing = missing_object(message, ns);
    let (reason, what, suggestion, missing_object) = match &missing {
        Some(Missing::Object { kind, name }) => (
            if *kind == "ConfigMap" {
                "ConfigMapNotFound"
            } else {
                "SecretNotFound"
            },
            format!("{kind} {ns}/{name} does not exist"),
            format!(
                "Create {kind} {name} in namespace {ns} (kubectl create {} {name} -n {ns} …), or fix the name container {container} refers to (env valueFrom / envFrom); mark the reference optional: true if the pod may start without it.",
                kind.to_ascii_lowercase()
            ),
            Some(format!("{}/{ns}/{name}", kind.to_ascii_lowercase())),
        ),
        Some(Missing::Key { kind, name, key }) => (
            if *kind == "ConfigMap" {
                "ConfigMapKeyNotFound"
            } else {
                "SecretKeyNotFound"
            },
            format!("{kind} {ns}/{name} has no key {key}"),
            format!(
                "Add key {key} to {kind} {ns}/{name}, or fix the key container {container} asks for (env valueFrom {}KeyRef).",
                if *kind == "ConfigMap" {
                    "configMap"
                } else {
                    "secret"
                }
            ),
            Some(format!("{}/{ns}/{name}", kind.to_ascii_lowercase())),
        ),
        None => (
            if waiting_reason == "CreateContainerError" {
                "ContainerCreateFailed"
            } else {
                "ContainerConfigError"
            },
            format!("{waiting_reason}: {}", quote(message, 200)),
            format!(
                "The kubelet could not build container {container}'s configuration: fix what the message says (its env, envFrom, volume mounts or securityContext)."
            ),
            None,
        ),
    };
    let mut finding = Finding::new(
        reason,
        Rank::Definite,
        format!(
            "container {container} of pod {} cannot start: {what}",
            f.key()
        ),
        suggestion,
    )
    .with(finding::status(
        &object,
        format!("container {container}: waiting, reason {waiting_reason}: {message}"),
        None,
    ));
    if let Some(o) = missing_object {
        finding = finding.with(Evidence {
            kind: "MissingObject".into(),
            message: format!("{what} (referenced by container {container})"),
            object: o,
            context_key: POD_DETAIL_INFORMATION.into(),
            timestamp: None,
        });
    }
    for e in failed_events(f, container) {
        finding = finding.with_event(e, &object);
    }
    finding
}

#[derive(Debug, PartialEq)]
enum Missing {
    Object {
        kind: &'static str,
        name: String,
    },
    Key {
        kind: &'static str,
        name: String,
        key: String,
    },
}

/// `configmap "x" not found`, `secret "x" not found`, `couldn't find key k in ConfigMap ns/x`.
fn missing_object(message: &str, ns: &str) -> Option<Missing> {
    for (needle, kind) in [("configmap \"", "ConfigMap"), ("secret \"", "Secret")] {
        if let Some(i) = message.find(needle) {
            let rest = &message[i + needle.len()..];
            if let Some(end) = rest.find('"')
                && rest[end..].starts_with("\" not found")
            {
                return Some(Missing::Object {
                    kind,
                    name: rest[..end].to_owned(),
                });
            }
        }
    }
    let rest = &message[message.find("couldn't find key ")? + "couldn't find key ".len()..];
    let (key, rest) = rest.split_once(" in ")?;
    let (kind, obj) = rest.trim().split_once(' ')?;
    let kind = match kind {
        "ConfigMap" => "ConfigMap",
        "Secret" => "Secret",
        _ => return None,
    };
    let name = obj
        .trim()
        .trim_end_matches('.')
        .strip_prefix(&format!("{ns}/"))
        .unwrap_or(obj.trim())
        .to_owned();
    Some(Missing::Key {
        kind,
        name,
        key: key.to_owned(),
    })
}

/// FailedMount events while a container waits to be created.
fn mount_errors(f: &Facts) -> Vec<Finding> {
    let creating = f.containers().iter().any(|c| {
        c.status
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("ContainerCreating"))
    }) || f.phase() == "Pending";
    if !creating || f.pod().metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let object = f.object();
    let ns = f.namespace();
    let mut out = Vec::new();
    let mounts: Vec<&Event> = f.events_with("FailedMount").collect();
    // The kubelet alternates the specific error (`configmap "x" not found`) with a generic
    // "timed out waiting for the condition": prefer the latest specific one.
    let Some(telling) = mounts
        .iter()
        .rev()
        .find(|e| {
            e.message
                .as_deref()
                .is_some_and(|m| m.contains("MountVolume."))
        })
        .or(mounts.last())
    else {
        return out;
    };
    let message = telling.message.as_deref().unwrap_or("");
    let volume = message
        .split_once("for volume \"")
        .and_then(|(_, r)| r.split_once('"'))
        .map(|(v, _)| v.to_owned());
    let vol = volume
        .as_deref()
        .map(|v| format!("volume {v}"))
        .unwrap_or_else(|| "a volume".into());
    let mut finding = match missing_object(message, ns) {
        Some(Missing::Object { kind, name }) => Finding::new(
            if kind == "ConfigMap" {
                "ConfigMapNotFound"
            } else {
                "SecretNotFound"
            },
            Rank::Definite,
            format!(
                "pod {} cannot start: {vol} needs {kind} {ns}/{name}, which does not exist",
                f.key()
            ),
            format!(
                "Create {kind} {name} in namespace {ns}, or fix the name in the pod's volumes (or mark it optional: true)."
            ),
        )
        .with(Evidence {
            kind: "MissingObject".into(),
            message: format!("{kind} {ns}/{name} does not exist (needed by {vol})"),
            object: format!("{}/{ns}/{name}", kind.to_ascii_lowercase()),
            context_key: POD_DETAIL_INFORMATION.into(),
            timestamp: None,
        }),
        _ => Finding::new(
            "VolumeMountFailed",
            Rank::Definite,
            format!(
                "pod {} cannot start: {vol} could not be mounted: {}",
                f.key(),
                quote(message, 200)
            ),
            "Read the FailedMount message: a missing or unbound claim, a volume attached elsewhere (ReadWriteOnce), an unreachable NFS or storage backend, or a CSI driver not running on the node.".into(),
        ),
    };
    for e in &mounts {
        finding = finding.with_event(e, &object);
    }
    out.push(finding);
    out
}

/// FailedCreatePodSandBox: the pod's network (the CNI plugin, named with its own error) or
/// sandbox could not be set up.
fn sandbox_errors(f: &Facts) -> Vec<Finding> {
    if f.phase() != "Pending" || f.pod().metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let object = f.object();
    let events: Vec<&Event> = f.events_with("FailedCreatePodSandBox").collect();
    let Some(last) = events.last() else {
        return Vec::new();
    };
    let message = last.message.as_deref().unwrap_or("");
    let c = crate::probe_failure::classify::sandbox(message, &message.to_ascii_lowercase());
    let node = f
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default();
    let mut finding = if c.component == crate::probe_failure::classify::Component::Cni {
        let plugin = if c.plugin.is_empty() {
            "the CNI plugin".to_owned()
        } else {
            format!("the CNI plugin {}", c.plugin)
        };
        Finding::new(
            "CNISetupFailed",
            Rank::Definite,
            format!(
                "pod {} cannot start: {plugin}{node} fails to set up its sandbox's network: {}",
                f.key(),
                quote(plugin_error(&c.error), 200)
            ),
            format!(
                "Fix {plugin}{node}: its configuration in /etc/cni/net.d (the type it names), its binary in /opt/cni/bin, its daemon's pods and log, its IP pool. Every new pod of the node fails the same way until it works; the kubelet retries by itself."
            ),
        )
    } else {
        Finding::new(
            "SandboxCreationFailed",
            Rank::Definite,
            format!(
                "pod {} cannot start: its sandbox could not be created: {}",
                f.key(),
                quote(message, 200)
            ),
            "The container runtime could not create the pod's sandbox: check the runtime's log on the node and that the sandbox (pause) image can be pulled.".into(),
        )
    };
    for e in &events {
        finding = finding.with_event(e, &object);
    }
    vec![finding]
}

/// The plugin's own error, without the runtime's `failed to setup network for sandbox "<id>": `.
fn plugin_error(error: &str) -> &str {
    match error.find("network for sandbox \"") {
        Some(i) => {
            let rest = &error[i + "network for sandbox \"".len()..];
            rest.find("\": ").map_or(error, |j| &rest[j + 3..])
        }
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_configmap_secret_or_key_is_named() {
        assert_eq!(
            missing_object("configmap \"app-config\" not found", "x"),
            Some(Missing::Object {
                kind: "ConfigMap",
                name: "app-config".into()
            })
        );
        assert_eq!(
            missing_object(
                "MountVolume.SetUp failed for volume \"cfg\" : secret \"tls\" not found",
                "x"
            ),
            Some(Missing::Object {
                kind: "Secret",
                name: "tls".into()
            })
        );
        assert_eq!(
            missing_object("couldn't find key database_url in ConfigMap x/present", "x"),
            Some(Missing::Key {
                kind: "ConfigMap",
                name: "present".into(),
                key: "database_url".into()
            })
        );
        assert_eq!(missing_object("something else", "x"), None);
    }

    #[test]
    fn the_command_the_runtime_could_not_exec_is_read_from_its_message() {
        let m = "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"nosuchcmd\": executable file not found in $PATH: unknown";
        assert_eq!(exec_target(m), Some("nosuchcmd"));
        assert_eq!(exec_target("no exec here"), None);
    }
}
