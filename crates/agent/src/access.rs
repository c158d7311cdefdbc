//! Which right a request to the node API needs: pure, no IO. `server.rs` asks
//! [`kdiag_runtime::auth::Authorizer`] whether the caller has it.
//!
//! | request | right (SubjectAccessReview) |
//! |---|---|
//! | `GET /metrics`, `/healthz`, `/readyz` | none (open) |
//! | `GET /profiles/<ns>/<abnormal>/<profiler>` | `get abnormals/profile` (diagnosis.netease.com) named `<abnormal>` in `<ns>` |
//! | `GET /profiles/<anything else>` | `get nodes/proxy` on the node |
//! | `POST /processor/pod-detail-collector` with a pod | `get abnormals/processor` named `pod-detail-collector` in the pod's namespace |
//! | `POST /processor/<other collector or diagnoser>` | `get nodes/proxy` on the node |
//! | `GET /processor/<collector>` | `get nodes/proxy` on the node |
//! | `POST` or `GET /processor/<recoverer>` | refused for everyone |
//! | `GET /informationcollector`, `/diagnoser`, `/recoverer` (`--kube-diagnoser-port`) | `get nodes/proxy` on the node |
//!
//! Kube Diagnoser's paths for the built-ins (`--kube-diagnoser-port`, `crate::upstream`) are
//! other names for `/processor/<built-in>` and need what it needs.
//!
//! Why: the built-ins run with the agent's identity and host privileges. What reads the whole
//! node (processes, every pod on it, the kernel log, files) is node-wide, as the kubelet's own
//! node endpoints are: `nodes/proxy`. What reads only one pod is scoped to that pod's namespace,
//! and names the processor, so a role can grant exactly one (`resourceNames`). A profile belongs
//! to its Abnormal. Recoverers change the node: they run only as a step of an Abnormal, under
//! the node policy, its budget and its records.

use kdiag_api::Abnormal;
use kdiag_runtime::auth::Right;

/// The built-ins that read only the pod an Abnormal names (its `spec.podReference`).
pub const POD_SCOPED: &[&str] = &["pod-detail-collector"];

/// What a request to the node API asks for.
#[derive(Debug)]
pub enum Request<'a> {
    /// `POST /processor/<name>` with an Abnormal.
    Run {
        name: &'a str,
        recoverer: bool,
        abnormal: &'a Abnormal,
    },
    /// `GET /processor/<name>`: a collector's data about the node.
    RawData { name: &'a str, recoverer: bool },
    /// `GET /profiles/<path>`.
    Profile { path: &'a str },
    /// Kube Diagnoser's `GET /informationcollector` (`/diagnoser`, `/recoverer`): the
    /// registrations of a kind.
    Registrations,
}

/// What the request needs before it is served.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Served to no one, whoever asks.
    Refused(String),
    /// Served to a caller that has this right.
    Needs(Right),
}

/// The right `request` needs on the agent of `node`.
pub fn required(request: &Request<'_>, node: &str) -> Access {
    match request {
        Request::Run {
            name,
            recoverer: true,
            ..
        }
        | Request::RawData {
            name,
            recoverer: true,
        } => Access::Refused(format!(
            "{name} is a recoverer, and recoverers are never run over HTTP: list it in an Abnormal's spec.recoverers, where the node policy, its budget and the Abnormal's records govern it"
        )),
        Request::Run { name, abnormal, .. } if POD_SCOPED.contains(name) => {
            match kdiag_collectors::pod_detail::pod_of(abnormal) {
                Some((namespace, _)) => {
                    Access::Needs(Right::abnormals("get", "processor", &namespace, name))
                }
                // Without a pod it reads nothing; ask what the node-wide processors ask.
                None => Access::Needs(Right::node_proxy(node)),
            }
        }
        Request::Run { .. } | Request::RawData { .. } | Request::Registrations => {
            Access::Needs(Right::node_proxy(node))
        }
        Request::Profile { path } => {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            match parts.as_slice() {
                [namespace, abnormal, _, ..] => {
                    Access::Needs(Right::abnormals("get", "profile", namespace, abnormal))
                }
                _ => Access::Needs(Right::node_proxy(node)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abnormal(namespace: &str, pod: Option<(&str, &str)>) -> Abnormal {
        let mut spec = serde_json::json!({});
        if let Some((ns, name)) = pod {
            spec["podReference"] = serde_json::json!({"namespace": ns, "name": name});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": namespace}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn a_profile_needs_get_abnormals_profile_on_its_abnormal() {
        assert_eq!(
            required(
                &Request::Profile {
                    path: "team-a/oom/heap"
                },
                "n1"
            ),
            Access::Needs(Right::abnormals("get", "profile", "team-a", "oom"))
        );
    }

    #[test]
    fn any_other_path_under_profiles_needs_the_node_wide_right() {
        for path in ["", "team-a", "team-a/oom", "/"] {
            assert_eq!(
                required(&Request::Profile { path }, "n1"),
                Access::Needs(Right::node_proxy("n1")),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_node_wide_processor_needs_nodes_proxy_on_the_node() {
        let a = abnormal("team-a", Some(("team-a", "p")));
        for name in [
            "process-collector",
            "pod-collector",
            "node-triage-diagnoser",
        ] {
            assert_eq!(
                required(
                    &Request::Run {
                        name,
                        recoverer: false,
                        abnormal: &a
                    },
                    "n1"
                ),
                Access::Needs(Right::node_proxy("n1")),
                "{name}"
            );
        }
        assert_eq!(
            required(
                &Request::RawData {
                    name: "kernel-log-collector",
                    recoverer: false
                },
                "n1"
            ),
            Access::Needs(Right::node_proxy("n1"))
        );
    }

    #[test]
    fn the_pod_detail_collector_needs_a_right_in_the_pods_namespace_not_the_abnormals() {
        let a = abnormal("team-a", Some(("payments", "api-0")));
        assert_eq!(
            required(
                &Request::Run {
                    name: "pod-detail-collector",
                    recoverer: false,
                    abnormal: &a
                },
                "n1"
            ),
            Access::Needs(Right::abnormals(
                "get",
                "processor",
                "payments",
                "pod-detail-collector"
            ))
        );
        // A pod without a namespace is in the Abnormal's.
        let a = abnormal("team-a", Some(("", "api-0")));
        assert_eq!(
            required(
                &Request::Run {
                    name: "pod-detail-collector",
                    recoverer: false,
                    abnormal: &a
                },
                "n1"
            ),
            Access::Needs(Right::abnormals(
                "get",
                "processor",
                "team-a",
                "pod-detail-collector"
            ))
        );
        let a = abnormal("team-a", None);
        assert_eq!(
            required(
                &Request::Run {
                    name: "pod-detail-collector",
                    recoverer: false,
                    abnormal: &a
                },
                "n1"
            ),
            Access::Needs(Right::node_proxy("n1"))
        );
    }

    #[test]
    fn a_recoverer_is_refused_to_everyone() {
        let a = abnormal("team-a", None);
        for request in [
            Request::Run {
                name: "signal-recoverer",
                recoverer: true,
                abnormal: &a,
            },
            Request::RawData {
                name: "signal-recoverer",
                recoverer: true,
            },
        ] {
            match required(&request, "n1") {
                Access::Refused(why) => assert!(
                    why.contains("never run over HTTP") && why.contains("spec.recoverers"),
                    "{why}"
                ),
                other => panic!("{request:?}: {other:?}"),
            }
        }
    }
}
