//! Admission, the pure part: is an Abnormal well formed, where does it run, or why not.

use std::time::Duration;

use kdiag_api::{Abnormal, NamespacedName, ProcessorEndpoint, Stage};

/// Seconds a command executor or profiler may be given at most.
pub const MAX_TIMEOUT_SECONDS: i32 = 3600;

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

/// The controller's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route to this node's agent.
    Admit { node: String },
    /// Fail it: the reason is a CamelCase code, the message says what is wrong and what to do.
    Reject {
        reason: &'static str,
        message: String,
    },
    /// The pod is on no node, and everything the Abnormal asks for reads only the apiserver: any
    /// node's agent can run it (the pod triage of an unschedulable pod). `why` says why the pod
    /// is on no node; the controller picks the node.
    StandIn { pod: String, why: String },
    /// The pod is not there or not scheduled yet; look again after `retry_after`.
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

/// Checks everything that can be checked without the pod: target, processors, executors,
/// profilers.
pub fn validate(
    abnormal: &Abnormal,
    registry: &dyn Registry,
) -> Result<(), (&'static str, String)> {
    let spec = &abnormal.spec;
    if spec.node_name.is_empty() && spec.pod_reference.is_none() {
        return Err((
            "MissingTarget",
            "neither spec.nodeName nor spec.podReference is set: set spec.nodeName to the node to diagnose, or spec.podReference {namespace, name} to a pod".into(),
        ));
    }
    if let Some(p) = &spec.pod_reference
        && p.name.is_empty()
    {
        return Err((
            "InvalidPodReference",
            "spec.podReference.name is empty: name the pod to diagnose".into(),
        ));
    }
    let ns = abnormal.metadata.namespace.as_deref().unwrap_or_default();
    for stage in Stage::ALL {
        for (i, reference) in abnormal.assigned(stage).iter().enumerate() {
            let name = reference.or_namespace(ns);
            let kind = kind_of(stage);
            let field = format!("spec.{}[{i}]", list_field(stage));
            if name.name.is_empty() {
                return Err((
                    "InvalidProcessorReference",
                    format!("{field}.name is empty"),
                ));
            }
            match registry.get(stage, &name) {
                None => {
                    let known = registry.names(stage);
                    return Err((
                        "ProcessorNotFound",
                        format!(
                            "{field} names {kind} {name}, which does not exist; registered {kind}s: {}",
                            if known.is_empty() {
                                "none (install config/deploy to register the built-ins)".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
                Some(endpoint)
                    if endpoint.is_builtin()
                        && !registry.builtins().contains(&name.name.as_str()) =>
                {
                    return Err((
                        "UnknownBuiltinProcessor",
                        format!(
                            "{field}: {kind} {name} has no address, so it names a built-in processor, but there is no built-in called {:?}; built-ins: {}. Give the registration an externalIP/externalPort or a service if it is an HTTP plugin",
                            name.name,
                            registry.builtins().join(", ")
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for (i, c) in spec.command_executors.iter().enumerate() {
        let field = format!("spec.commandExecutors[{i}]");
        if c.command.is_empty() || c.command[0].trim().is_empty() {
            return Err((
                "InvalidCommandExecutor",
                format!(
                    "{field}.command is empty: give the program and its arguments as a list, such as [ps, aux]"
                ),
            ));
        }
        if c.command.len() == 1 && c.command[0].contains(' ') {
            return Err((
                "InvalidCommandExecutor",
                format!(
                    "{field}.command is one string with spaces ({:?}); commands never run through a shell, so give each argument as its own list item",
                    c.command[0]
                ),
            ));
        }
        check_seconds(&field, "timeoutSeconds", c.timeout_seconds)
            .map_err(|m| ("InvalidCommandExecutor", m))?;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in spec.profilers.iter().enumerate() {
        let field = format!("spec.profilers[{i}]");
        let bad = |m: String| ("InvalidProfiler", m);
        if p.name.trim().is_empty() {
            return Err(bad(format!("{field}.name is empty")));
        }
        if !names.insert(p.name.as_str()) {
            return Err(bad(format!(
                "{field}.name {:?} is used twice; profiler names must be unique in an Abnormal",
                p.name
            )));
        }
        match (&p.go, &p.java) {
            (Some(go), None) => {
                let ok = go.source.starts_with("http://") || go.source.starts_with("https://");
                if !ok {
                    return Err(bad(format!(
                        "{field}.go.source {:?} must be an http(s) URL of a pprof endpoint, such as http://127.0.0.1:6060/debug/pprof/heap",
                        go.source
                    )));
                }
            }
            (None, Some(java)) => {
                if java.pid.is_some_and(|pid| pid < 2) {
                    return Err(bad(format!(
                        "{field}.java.pid must be the host pid of a Java process (2 or more), or left out to profile the JVMs of spec.podReference"
                    )));
                }
                // A MemoryAnalyzer copy may read a host path; a jcmd report needs a JVM.
                if java.type_ == kdiag_api::JavaProfilerType::Arthas
                    && java.pid.is_none()
                    && spec.pod_reference.is_none()
                {
                    return Err(bad(format!(
                        "{field}.java names no JVM: set java.pid, or spec.podReference to profile that pod's JVMs"
                    )));
                }
                if java.type_ == kdiag_api::JavaProfilerType::MemoryAnalyzer
                    && !java.hprof_file_path.starts_with('/')
                {
                    return Err(bad(format!(
                        "{field}.java.hprofFilePath must be the absolute path of an HPROF file for type MemoryAnalyzer"
                    )));
                }
            }
            _ => return Err(bad(format!("{field} must set exactly one of go and java"))),
        }
        check_seconds(&field, "timeoutSeconds", p.timeout_seconds).map_err(bad)?;
        if p.expiration_seconds.is_some_and(|s| s < 1) {
            return Err(bad(format!("{field}.expirationSeconds must be at least 1")));
        }
    }
    Ok(())
}

fn check_seconds(field: &str, name: &str, v: Option<i32>) -> Result<(), String> {
    match v {
        Some(s) if !(1..=MAX_TIMEOUT_SECONDS).contains(&s) => Err(format!(
            "{field}.{name} is {s}; it must be between 1 and {MAX_TIMEOUT_SECONDS}"
        )),
        _ => Ok(()),
    }
}

/// Decides what happens to a new Abnormal. `waited` is how long since it was created.
pub fn decide(
    abnormal: &Abnormal,
    registry: &dyn Registry,
    pod: &PodLookup,
    waited: Duration,
    pod_wait: Duration,
) -> Decision {
    if let Err((reason, message)) = validate(abnormal, registry) {
        return Decision::Reject { reason, message };
    }
    if !abnormal.spec.node_name.is_empty() {
        return Decision::Admit {
            node: abnormal.spec.node_name.clone(),
        };
    }
    let pod_name = pod_key(abnormal);
    let retry_after = Duration::from_secs(2)
        .min(pod_wait.saturating_sub(waited))
        .max(Duration::from_millis(500));
    match pod {
        PodLookup::Found {
            node: Some(node), ..
        } if !node.is_empty() => Decision::Admit { node: node.clone() },
        PodLookup::NotNeeded => Decision::Reject {
            reason: "MissingTarget",
            message: "no node to route to".into(),
        },
        PodLookup::Found {
            unschedulable: true,
            ..
        } if can_stand_in(abnormal) => Decision::StandIn {
            pod: pod_name,
            why: "the scheduler found no node that fits it".into(),
        },
        PodLookup::Found { .. } if waited >= pod_wait && can_stand_in(abnormal) => {
            Decision::StandIn {
                pod: pod_name,
                why: format!("no scheduler placed it within {}s", pod_wait.as_secs()),
            }
        }
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
pub fn choose_stand_in(
    agent_nodes: &[String],
    ready_nodes: &[String],
    abnormal: &str,
) -> Option<String> {
    let mut nodes: Vec<&String> = if agent_nodes.is_empty() {
        ready_nodes.iter().collect()
    } else {
        agent_nodes.iter().collect()
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

/// The processors a pod is triaged with when its Abnormal names none: one documented default
/// (docs/triage.md), made of registered processors like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triage {
    pub collectors: Vec<NamespacedName>,
    pub diagnosers: Vec<NamespacedName>,
}

/// The triage's collectors (in kube-diagnoser), in order: the one place they are named.
pub const TRIAGE_COLLECTORS: &[&str] = &[
    "pod-detail-collector",
    "container-collector",
    "process-collector",
    "kernel-log-collector",
];

/// The triage's diagnosers (in kube-diagnoser).
pub const TRIAGE_DIAGNOSERS: &[&str] = &["pod-triage-diagnoser"];

impl Default for Triage {
    fn default() -> Self {
        let named = |names: &[&str]| {
            names
                .iter()
                .map(|n| NamespacedName::new(kdiag_api::SYSTEM_NAMESPACE, *n))
                .collect()
        };
        Self {
            collectors: named(TRIAGE_COLLECTORS),
            diagnosers: named(TRIAGE_DIAGNOSERS),
        }
    }
}

/// True when the pod triage applies: a pod, and no processor, command or profiler named.
pub fn wants_triage(a: &Abnormal) -> bool {
    let s = &a.spec;
    s.pod_reference.is_some()
        && s.assigned_information_collectors.is_empty()
        && s.assigned_diagnosers.is_empty()
        && s.assigned_recoverers.is_empty()
        && s.command_executors.is_empty()
        && s.profilers.is_empty()
}

/// The Abnormal with the triage's registered processors filled in, if it applies.
pub fn with_triage(a: &Abnormal, triage: &Triage, registry: &dyn Registry) -> Option<Abnormal> {
    if !wants_triage(a) {
        return None;
    }
    let mut out = a.clone();
    out.spec.assigned_information_collectors = triage
        .collectors
        .iter()
        .filter(|n| registry.get(Stage::InformationCollecting, n).is_some())
        .cloned()
        .collect();
    out.spec.assigned_diagnosers = triage
        .diagnosers
        .iter()
        .filter(|n| registry.get(Stage::Diagnosing, n).is_some())
        .cloned()
        .collect();
    Some(out)
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
mod tests {
    use std::collections::BTreeMap;

    use kdiag_api::*;
    use serde_json::json;

    use super::*;

    struct Known(BTreeMap<(Stage, String), ProcessorEndpoint>);

    impl Registry for Known {
        fn get(&self, stage: Stage, name: &NamespacedName) -> Option<ProcessorEndpoint> {
            self.0.get(&(stage, name.to_string())).cloned()
        }
        fn names(&self, stage: Stage) -> Vec<String> {
            self.0
                .keys()
                .filter(|(s, _)| *s == stage)
                .map(|(_, n)| n.clone())
                .collect()
        }
        fn builtins(&self) -> Vec<&'static str> {
            vec!["pod-collector"]
        }
    }

    fn registry() -> Known {
        let mut m = BTreeMap::new();
        m.insert(
            (
                Stage::InformationCollecting,
                "kube-diagnoser/pod-collector".to_owned(),
            ),
            ProcessorEndpoint::default(),
        );
        m.insert(
            (
                Stage::InformationCollecting,
                "kube-diagnoser/not-built-in".to_owned(),
            ),
            ProcessorEndpoint::default(),
        );
        m.insert(
            (Stage::Diagnosing, "kube-diagnoser/remote".to_owned()),
            ProcessorEndpoint {
                external_ip: Some("10.0.0.1".into()),
                external_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80),
                ),
                ..Default::default()
            },
        );
        Known(m)
    }

    fn abnormal(spec: serde_json::Value) -> Abnormal {
        serde_json::from_value(
            json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "team"}, "spec": spec}),
        )
        .unwrap()
    }

    fn reject_reason(a: &Abnormal) -> (&'static str, String) {
        match decide(
            a,
            &registry(),
            &PodLookup::NotNeeded,
            Duration::ZERO,
            Duration::from_secs(60),
        ) {
            Decision::Reject { reason, message } => (reason, message),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn an_abnormal_with_a_node_and_known_processors_is_admitted_to_that_node() {
        let a = abnormal(
            json!({"nodeName": "n1", "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-collector"}],
            "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "remote"}]}),
        );
        assert_eq!(
            decide(
                &a,
                &registry(),
                &PodLookup::NotNeeded,
                Duration::ZERO,
                Duration::from_secs(60)
            ),
            Decision::Admit { node: "n1".into() }
        );
    }

    #[test]
    fn an_abnormal_without_node_or_pod_is_rejected_with_what_to_set() {
        let (reason, message) = reject_reason(&abnormal(json!({})));
        assert_eq!(reason, "MissingTarget");
        assert!(message.contains("spec.nodeName") && message.contains("spec.podReference"));
    }

    #[test]
    fn an_unknown_processor_is_rejected_listing_the_registered_ones() {
        let (reason, message) = reject_reason(&abnormal(
            json!({"nodeName": "n", "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "podcollector"}]}),
        ));
        assert_eq!(reason, "ProcessorNotFound");
        assert!(message.contains("kube-diagnoser/podcollector"), "{message}");
        assert!(
            message.contains("kube-diagnoser/pod-collector"),
            "{message}"
        );
        assert!(
            message.contains("spec.assignedInformationCollectors[0]"),
            "{message}"
        );
    }

    #[test]
    fn a_processor_without_namespace_is_looked_up_in_the_abnormals_namespace() {
        let (_, message) = reject_reason(&abnormal(
            json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "pod-collector"}]}),
        ));
        assert!(message.contains("team/pod-collector"), "{message}");
    }

    #[test]
    fn a_registration_without_address_must_name_a_built_in() {
        let (reason, message) = reject_reason(&abnormal(
            json!({"nodeName": "n", "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "not-built-in"}]}),
        ));
        assert_eq!(reason, "UnknownBuiltinProcessor");
        assert!(message.contains("built-ins: pod-collector"), "{message}");
    }

    #[test]
    fn malformed_command_executors_are_rejected() {
        let (reason, m) = reject_reason(&abnormal(
            json!({"nodeName": "n", "commandExecutors": [{"command": [], "type": "Diagnoser"}]}),
        ));
        assert_eq!(reason, "InvalidCommandExecutor");
        assert!(
            m.contains("spec.commandExecutors[0].command is empty"),
            "{m}"
        );
        let (_, m) = reject_reason(&abnormal(
            json!({"nodeName": "n", "commandExecutors": [{"command": ["ps aux"], "type": "Diagnoser"}]}),
        ));
        assert!(m.contains("never run through a shell"), "{m}");
        let (_, m) = reject_reason(&abnormal(
            json!({"nodeName": "n", "commandExecutors": [{"command": ["ps"], "type": "Diagnoser", "timeoutSeconds": 0}]}),
        ));
        assert!(m.contains("timeoutSeconds is 0"), "{m}");
    }

    #[test]
    fn malformed_profilers_are_rejected() {
        let (reason, m) = reject_reason(&abnormal(
            json!({"nodeName": "n", "profilers": [{"name": "p", "type": "Diagnoser"}]}),
        ));
        assert_eq!(reason, "InvalidProfiler");
        assert!(m.contains("exactly one of go and java"), "{m}");
        let (_, m) = reject_reason(&abnormal(
            json!({"nodeName": "n", "profilers": [{"name": "p", "type": "Diagnoser", "go": {"source": "/tmp/x"}}]}),
        ));
        assert!(m.contains("must be an http(s) URL"), "{m}");
        let (_, m) = reject_reason(&abnormal(json!({"nodeName": "n", "profilers": [
            {"name": "p", "type": "Diagnoser", "go": {"source": "http://x/debug/pprof/heap"}},
            {"name": "p", "type": "Diagnoser", "go": {"source": "http://x/debug/pprof/heap"}}]})));
        assert!(m.contains("used twice"), "{m}");
        let (_, m) = reject_reason(&abnormal(json!({"nodeName": "n", "profilers": [
            {"name": "p", "type": "Diagnoser", "java": {"type": "Arthas", "pid": 0}}]})));
        assert!(m.contains("java.pid must be the host pid"), "{m}");
        let (_, m) = reject_reason(&abnormal(json!({"nodeName": "n", "profilers": [
            {"name": "p", "type": "Diagnoser", "java": {"type": "Arthas"}}]})));
        assert!(m.contains("names no JVM"), "{m}");
    }

    #[test]
    fn a_pod_abnormal_without_processors_gets_the_registered_part_of_the_triage() {
        let a = abnormal(json!({"podReference": {"name": "web"}}));
        let triage = Triage {
            collectors: vec![
                NamespacedName::new("kube-diagnoser", "pod-collector"),
                NamespacedName::new("kube-diagnoser", "gone"),
            ],
            diagnosers: vec![NamespacedName::new("kube-diagnoser", "remote")],
        };
        let t = with_triage(&a, &triage, &registry()).unwrap();
        assert_eq!(
            t.spec.assigned_information_collectors,
            [NamespacedName::new("kube-diagnoser", "pod-collector")]
        );
        assert_eq!(
            t.spec.assigned_diagnosers,
            [NamespacedName::new("kube-diagnoser", "remote")]
        );
        let named = abnormal(
            json!({"podReference": {"name": "web"}, "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "remote"}]}),
        );
        assert!(
            with_triage(&named, &triage, &registry()).is_none(),
            "a user's choice is kept"
        );
        assert!(
            with_triage(&abnormal(json!({"nodeName": "n"})), &triage, &registry()).is_none(),
            "a node is not a pod"
        );
    }

    #[test]
    fn a_pod_reference_resolves_to_the_pods_node() {
        let a = abnormal(json!({"podReference": {"name": "web"}}));
        let d = decide(
            &a,
            &registry(),
            &PodLookup::Found {
                node: Some("n7".into()),
                unschedulable: false,
            },
            Duration::ZERO,
            Duration::from_secs(60),
        );
        assert_eq!(d, Decision::Admit { node: "n7".into() });
    }

    #[test]
    fn a_missing_pod_is_waited_for_then_rejected() {
        let a = abnormal(json!({"podReference": {"name": "web"}}));
        let wait = Duration::from_secs(60);
        assert!(matches!(
            decide(
                &a,
                &registry(),
                &PodLookup::Missing,
                Duration::from_secs(10),
                wait
            ),
            Decision::Wait { .. }
        ));
        let Decision::Reject { reason, message } = decide(
            &a,
            &registry(),
            &PodLookup::Missing,
            Duration::from_secs(61),
            wait,
        ) else {
            panic!()
        };
        assert_eq!(reason, "PodNotFound");
        assert!(message.contains("team/web"), "{message}");
    }

    #[test]
    fn an_unscheduled_pod_is_waited_for_then_rejected() {
        let a = abnormal(json!({"podReference": {"namespace": "x", "name": "web"}}));
        let pod = PodLookup::Found {
            node: None,
            unschedulable: true,
        };
        assert!(matches!(
            decide(
                &a,
                &registry(),
                &pod,
                Duration::from_secs(1),
                Duration::from_secs(60)
            ),
            Decision::Wait { .. }
        ));
        let Decision::Reject { reason, .. } = decide(
            &a,
            &registry(),
            &pod,
            Duration::from_secs(60),
            Duration::from_secs(60),
        ) else {
            panic!()
        };
        assert_eq!(
            reason, "PodNotScheduled",
            "pod-collector needs the pod's node"
        );
    }

    fn triaged_pod(extra: serde_json::Value) -> Abnormal {
        let mut spec = json!({"podReference": {"namespace": "x", "name": "big"},
            "assignedInformationCollectors": [
                {"namespace": "kube-diagnoser", "name": "pod-detail-collector"},
                {"namespace": "kube-diagnoser", "name": "process-collector"}],
            "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "pod-triage-diagnoser"}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        abnormal(spec)
    }

    struct Anything;

    impl Registry for Anything {
        fn get(&self, _: Stage, _: &NamespacedName) -> Option<ProcessorEndpoint> {
            Some(ProcessorEndpoint::default())
        }
        fn names(&self, _: Stage) -> Vec<String> {
            vec![]
        }
        fn builtins(&self) -> Vec<&'static str> {
            vec![
                "pod-detail-collector",
                "process-collector",
                "pod-triage-diagnoser",
                "signal-recoverer",
            ]
        }
    }

    #[test]
    fn an_unschedulable_pods_triage_is_run_at_once_by_another_node_with_only_apiserver_collectors()
    {
        let a = triaged_pod(json!({}));
        let unschedulable = PodLookup::Found {
            node: None,
            unschedulable: true,
        };
        let d = decide(
            &a,
            &Anything,
            &unschedulable,
            Duration::ZERO,
            Duration::from_secs(60),
        );
        let Decision::StandIn { pod, why } = d else {
            panic!("{d:?}")
        };
        assert_eq!(pod, "x/big");
        assert!(why.contains("no node that fits"), "{why}");
        let (kept, left_out) = stand_in_collectors(&a);
        assert_eq!(
            kept,
            vec![NamespacedName::new(
                "kube-diagnoser",
                "pod-detail-collector"
            )]
        );
        assert_eq!(
            left_out,
            vec![NamespacedName::new("kube-diagnoser", "process-collector")]
        );
    }

    #[test]
    fn a_pod_no_scheduler_placed_is_triaged_elsewhere_once_the_wait_is_over() {
        let a = triaged_pod(json!({}));
        let pending = PodLookup::Found {
            node: None,
            unschedulable: false,
        };
        let wait = Duration::from_secs(60);
        assert!(matches!(
            decide(&a, &Anything, &pending, Duration::from_secs(5), wait),
            Decision::Wait { .. }
        ));
        assert!(matches!(
            decide(&a, &Anything, &pending, wait, wait),
            Decision::StandIn { .. }
        ));
    }

    #[test]
    fn nothing_that_acts_on_a_node_ever_runs_on_a_stand_in() {
        let unschedulable = PodLookup::Found {
            node: None,
            unschedulable: true,
        };
        let a = triaged_pod(
            json!({"assignedRecoverers": [{"namespace": "kube-diagnoser", "name": "signal-recoverer"}]}),
        );
        assert!(!can_stand_in(&a));
        assert!(matches!(
            decide(
                &a,
                &Anything,
                &unschedulable,
                Duration::ZERO,
                Duration::from_secs(60)
            ),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn the_stand_in_is_an_agents_node_else_a_ready_one_and_stable_per_abnormal() {
        let agents = vec!["b".to_owned(), "a".to_owned()];
        let ready = vec!["c".to_owned()];
        let first = choose_stand_in(&agents, &ready, "x/one").unwrap();
        assert!(agents.contains(&first));
        assert_eq!(choose_stand_in(&agents, &ready, "x/one").unwrap(), first);
        assert_eq!(choose_stand_in(&[], &ready, "x/one").as_deref(), Some("c"));
        assert_eq!(choose_stand_in(&[], &[], "x/one"), None);
        let spread: std::collections::BTreeSet<String> = (0..20)
            .map(|i| choose_stand_in(&agents, &ready, &format!("x/{i}")).unwrap())
            .collect();
        assert_eq!(spread.len(), 2, "different Abnormals use different nodes");
    }

    #[test]
    fn the_stand_in_is_pinned_so_it_survives_restarts_and_upgrades() {
        let nodes = ["n3".to_owned(), "n1".to_owned(), "n2".to_owned()];
        let chosen = |abnormal: &str| choose_stand_in(&nodes, &[], abnormal).unwrap();
        // FNV-1a of the name modulo 3, over the nodes in name order.
        assert_eq!(chosen("shop/web-oom"), "n3");
        assert_eq!(chosen("shop/db-oom"), "n2");
        assert_eq!(chosen("x/one"), "n1");
        assert_eq!(choose_stand_in(&[], &nodes, "x/two").unwrap(), "n3");
    }
}
