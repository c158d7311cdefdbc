//! What an Abnormal, an AbnormalSource or a processor registration amounts to in native
//! Kubernetes rights, and whether a request to admit one needs a check at all. Pure: no client,
//! no clock; `mod.rs` asks the apiserver (SubjectAccessReview) about each [`Need`].
//!
//! | what kdiag is asked to do | right the creator needs |
//! |---|---|
//! | read-only processors about a pod (`pod-detail-collector`, `pod-triage-diagnoser`, `pod-disk-usage-diagnoser`, `terminating-pod-diagnoser`, an HTTP plugin collector or diagnoser) | `get pods/log` on the pod, in its namespace |
//! | a recoverer (`signal-recoverer`, an HTTP plugin recoverer) or a profiler about a pod | `create pods/exec` on the pod, in its namespace |
//! | a built-in that reads the whole node (`process-collector`, `container-collector`, `kernel-log-collector`, `pod-collector`, `systemd-collector`, `file-status-collector`, `node-collector`, `node-triage-diagnoser`, any unknown name) | `get nodes/proxy` |
//! | a command executor (commands run in the host's namespaces, not the pod's) | `get nodes/proxy` |
//! | host pids (`java.pid`, `spec.context.signalRecovery`), a node file (a Go profiler's `go.source` path) | `get nodes/proxy` |
//! | anything with no pod reference (a node Abnormal) | `get nodes/proxy` (named after `spec.nodeName` when set) |
//! | a pod Abnormal that names nothing: the pod triage | what the triage's processors need |
//! | empty lists under Kube Diagnoser v0.1.0–v0.1.3's rules (`kdiag.io/kube-diagnoser-version`) | what every registered processor admission fills in needs |
//!
//! A source or registration outside kdiag's namespace acts only within its own namespace (the
//! controller and the agent enforce that when they run); one in kdiag's namespace acts on every
//! namespace, so its pod rights are asked for all namespaces.

use std::collections::BTreeSet;

use kdiag_api::{
    Abnormal, AbnormalSource, AbnormalSourceType, AbnormalSpec, CommandExecutorSpec,
    NamespacedName, ProcessorEndpoint, ProfilerSpec, Stage,
};
use kdiag_pipeline::admission::{Registry, Triage};
use kdiag_runtime::auth::Right;

/// Built-in collectors and diagnosers that read only the pod an Abnormal names (its spec,
/// Events, owners, log tails, its own volumes) and what other steps recorded about it.
pub const POD_READS: &[&str] = &[
    "pod-detail-collector",
    "pod-triage-diagnoser",
    "pod-disk-usage-diagnoser",
    "terminating-pod-diagnoser",
];

/// Built-ins that read the whole node: every process, container or pod on it, the kernel log,
/// host files and units. Listed so a test can check every built-in is classified; a name in
/// neither list is treated as node-wide.
pub const NODE_READS: &[&str] = &[
    "pod-collector",
    "container-collector",
    "process-collector",
    "kernel-log-collector",
    "systemd-collector",
    "file-status-collector",
    "node-collector",
    "node-triage-diagnoser",
];

/// Built-in recoverers: they change what runs in a pod.
pub const POD_ACTIONS: &[&str] = &["signal-recoverer"];

/// One right an object needs its creator to have, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub right: Right,
    /// "it runs process-collector, which reads the whole node".
    pub because: String,
}

/// The kind of a request's object, by its resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Abnormal,
    AbnormalSource,
    Registration(Stage),
}

impl Kind {
    /// The kind of `resource` in group diagnosis.netease.com, if the webhook handles it.
    pub fn of(group: &str, resource: &str) -> Option<Self> {
        if group != kdiag_api::DIAGNOSIS_GROUP {
            return None;
        }
        Some(match resource {
            "abnormals" => Kind::Abnormal,
            "abnormalsources" => Kind::AbnormalSource,
            "informationcollectors" => Kind::Registration(Stage::InformationCollecting),
            "diagnosers" => Kind::Registration(Stage::Diagnosing),
            "recoverers" => Kind::Registration(Stage::Recovering),
            _ => return None,
        })
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Abnormal => "Abnormal",
            Kind::AbnormalSource => "AbnormalSource",
            Kind::Registration(Stage::InformationCollecting) => "InformationCollector",
            Kind::Registration(Stage::Diagnosing) => "Diagnoser",
            Kind::Registration(_) => "Recoverer",
        }
    }
}

/// What a request asks, as the AdmissionReview says it.
#[derive(Debug)]
pub struct Request<'a> {
    pub kind: Kind,
    pub operation: &'a str,
    /// The user's name (userInfo.username).
    pub user: &'a str,
    pub object: Option<&'a serde_json::Value>,
    pub old_object: Option<&'a serde_json::Value>,
}

/// What admission does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused, with a message for the user.
    Deny(String),
    /// Allowed if the user has every one of these rights.
    Check(Vec<Need>),
}

/// What the rest of kdiag tells the decision: who is kdiag itself, which processors exist and
/// what the pod triage runs.
pub struct Setting<'a> {
    /// Users exempt from every check (kdiag's own ServiceAccounts).
    pub exempt: &'a [String],
    pub registry: &'a dyn Registry,
    pub triage: &'a Triage,
}

/// Labels and annotations the controller writes to route an Abnormal: nobody else may change
/// them after creation, or an Abnormal could be moved to another node's agent.
const ROUTING_KEYS: [&str; 3] = [
    kdiag_api::labels::NODE_LABEL,
    kdiag_api::labels::STAND_IN_ANNOTATION,
    kdiag_api::labels::PLAN_ANNOTATION,
];

/// The verdict on one request. Total: any request it cannot read is refused (fail closed).
pub fn decide(request: &Request<'_>, setting: &Setting<'_>) -> Verdict {
    if setting.exempt.iter().any(|u| u == request.user) {
        return Verdict::Allow;
    }
    let operation = request.operation;
    if operation != "CREATE" && operation != "UPDATE" {
        return Verdict::Allow;
    }
    let Some(object) = request.object else {
        return Verdict::Deny(format!(
            "the {operation} request carries no object; kdiag's webhook cannot check it"
        ));
    };
    if operation == "UPDATE" {
        let old = request.old_object.unwrap_or(&serde_json::Value::Null);
        let spec_changed = old.get("spec") != object.get("spec");
        match request.kind {
            Kind::Abnormal => {
                if spec_changed {
                    return Verdict::Deny(format!(
                        "the spec of Abnormal {} cannot change after it was created; only kdiag's own components may change it. Delete it and create a new one",
                        display_name(object)
                    ));
                }
                if let Some(key) = ROUTING_KEYS
                    .iter()
                    .find(|k| metadata_value(old, k) != metadata_value(object, k))
                {
                    return Verdict::Deny(format!(
                        "{key} of Abnormal {} is set by kdiag's controller when it routes the Abnormal and cannot be changed",
                        display_name(object)
                    ));
                }
                return Verdict::Allow;
            }
            // A source or registration may change; what it asks for is checked again.
            _ if !spec_changed => return Verdict::Allow,
            _ => {}
        }
    }
    // Set at creation, they would make the Abnormal look routed already: the controller would
    // skip its own admission, and the named node's agent would take it at once.
    if request.kind == Kind::Abnormal
        && let Some(key) = ROUTING_KEYS
            .iter()
            .find(|k| metadata_value(object, k).is_some())
    {
        return Verdict::Deny(format!(
            "{key} is set by kdiag's controller when it routes an Abnormal; create Abnormal {} without it",
            display_name(object)
        ));
    }
    let needs = match request.kind {
        Kind::Abnormal => match serde_json::from_value::<Abnormal>(object.clone()) {
            Ok(a) => abnormal_needs(&a, setting.registry, setting.triage),
            Err(e) => return unreadable(request.kind, e),
        },
        Kind::AbnormalSource => match serde_json::from_value::<AbnormalSource>(object.clone()) {
            Ok(s) => source_needs(&s, setting.registry, setting.triage),
            Err(e) => return unreadable(request.kind, e),
        },
        Kind::Registration(stage) => {
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let name = object
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let spec = object.get("spec").cloned().unwrap_or_default();
            match serde_json::from_value::<ProcessorEndpoint>(spec) {
                Ok(endpoint) => registration_needs(stage, namespace, name, &endpoint),
                Err(e) => return unreadable(request.kind, e),
            }
        }
    };
    Verdict::Check(dedup(needs))
}

fn unreadable(kind: Kind, e: serde_json::Error) -> Verdict {
    Verdict::Deny(format!(
        "kdiag cannot read this {}: {e}; fix the object",
        kind.noun()
    ))
}

fn display_name(object: &serde_json::Value) -> String {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
}

fn metadata_value<'a>(object: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let meta = object.get("metadata")?;
    meta.get("labels")
        .and_then(|l| l.get(key))
        .or_else(|| meta.get("annotations").and_then(|a| a.get(key)))
}

/// One right per distinct right, with the first reason given for it; in the order first needed.
fn dedup(needs: Vec<Need>) -> Vec<Need> {
    let mut seen = BTreeSet::new();
    needs
        .into_iter()
        .filter(|n| seen.insert(format!("{:?}", n.right)))
        .collect()
}

/// Where kdiag acts for an object.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A pod; `namespace` empty means every namespace, `name` empty any pod; `node` the node
    /// named with it, if any (node-wide steps then need the right on that node only).
    Pod {
        namespace: String,
        name: String,
        node: String,
    },
    /// A node; `name` empty means any node.
    Node { name: String },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Pod {
                namespace, name, ..
            } if !namespace.is_empty() && !name.is_empty() => {
                format!("pod {namespace}/{name}")
            }
            Target::Pod { namespace, .. } if !namespace.is_empty() => {
                format!("pods of namespace {namespace}")
            }
            Target::Pod { .. } => "pods of every namespace".into(),
            Target::Node { name } if !name.is_empty() => format!("node {name}"),
            Target::Node { .. } => "a node".into(),
        }
    }

    fn node_name(&self) -> &str {
        match self {
            Target::Node { name } => name,
            Target::Pod { node, .. } => node,
        }
    }
}

/// How much a step can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    /// Reads what concerns the target.
    Read,
    /// Acts in the target's processes (signals, profilers, recoverers).
    Exec,
    /// Reads or acts on the whole node, whatever the target.
    Node,
}

fn right_for(power: Power, target: &Target) -> Right {
    let pods = |verb: &str, sub: &str, namespace: &str, name: &str| Right {
        verb: verb.into(),
        group: String::new(),
        resource: "pods".into(),
        subresource: sub.into(),
        namespace: namespace.into(),
        name: name.into(),
    };
    match (power, target) {
        (
            Power::Read,
            Target::Pod {
                namespace, name, ..
            },
        ) => pods("get", "log", namespace, name),
        (
            Power::Exec,
            Target::Pod {
                namespace, name, ..
            },
        ) => pods("create", "exec", namespace, name),
        _ => Right::node_proxy(target.node_name()),
    }
}

fn need(power: Power, target: &Target, what: String) -> Need {
    let because = match power {
        Power::Node => what,
        _ => format!("{what} against {}", target.describe()),
    };
    Need {
        right: right_for(power, target),
        because,
    }
}

/// How a referenced processor is classified: by its built-in name, or as an HTTP plugin.
fn processor_power(stage: Stage, reference: &NamespacedName, registry: &dyn Registry) -> Power {
    let plugin = registry
        .get(stage, reference)
        .is_some_and(|endpoint| !endpoint.is_builtin());
    builtin_power(stage, &reference.name, plugin)
}

fn builtin_power(stage: Stage, name: &str, plugin: bool) -> Power {
    if stage == Stage::Recovering {
        // A built-in recoverer acts in the pod's processes; a plugin recoverer is asked to
        // change something about its target.
        return if plugin || POD_ACTIONS.contains(&name) {
            Power::Exec
        } else {
            Power::Node
        };
    }
    if plugin || POD_READS.contains(&name) {
        Power::Read
    } else {
        Power::Node
    }
}

/// What a user without node-level rights can run about its own pod instead of the whole triage.
const TRIAGE_WITHOUT_NODE_RIGHTS: &str = "; without that right, name only processors that read the pod, for example `kubectl diag run --pod <pod> --collector pod-detail-collector --diagnoser pod-triage-diagnoser`";

fn processor_reason(name: &str, power: Power, plugin_or_triage: &str) -> String {
    match power {
        Power::Node => format!("it runs {plugin_or_triage}{name}, which reads the whole node"),
        _ => format!("it runs {plugin_or_triage}{name}"),
    }
}

/// The fields an Abnormal and an AbnormalSource share: what they make an agent run.
struct Work<'a> {
    namespace: &'a str,
    collectors: &'a [NamespacedName],
    diagnosers: &'a [NamespacedName],
    recoverers: &'a [NamespacedName],
    commands: &'a [CommandExecutorSpec],
    profilers: &'a [ProfilerSpec],
    context: Option<&'a std::collections::BTreeMap<String, serde_json::Value>>,
}

impl<'a> Work<'a> {
    fn of_abnormal(namespace: &'a str, s: &'a AbnormalSpec) -> Self {
        Self {
            namespace,
            collectors: &s.assigned_information_collectors,
            diagnosers: &s.assigned_diagnosers,
            recoverers: &s.assigned_recoverers,
            commands: &s.command_executors,
            profilers: &s.profilers,
            context: s.context.as_ref(),
        }
    }

    fn names_nothing(&self) -> bool {
        self.collectors.is_empty()
            && self.diagnosers.is_empty()
            && self.recoverers.is_empty()
            && self.commands.is_empty()
            && self.profilers.is_empty()
    }
}

fn work_needs(
    work: &Work<'_>,
    target: &Target,
    registry: &dyn Registry,
    triage: &Triage,
) -> Vec<Need> {
    let mut needs = Vec::new();
    let is_pod = matches!(target, Target::Pod { .. });
    if is_pod && work.names_nothing() {
        for (stage, list) in [
            (Stage::InformationCollecting, &triage.collectors),
            (Stage::Diagnosing, &triage.diagnosers),
        ] {
            for reference in list {
                let power = processor_power(stage, reference, registry);
                let mut because = processor_reason(&reference.name, power, "the pod triage's ");
                if power == Power::Node {
                    // A tenant can still diagnose its own pod: say how.
                    because.push_str(TRIAGE_WITHOUT_NODE_RIGHTS);
                }
                needs.push(need(power, target, because));
            }
        }
    }
    for (stage, list) in [
        (Stage::InformationCollecting, work.collectors),
        (Stage::Diagnosing, work.diagnosers),
        (Stage::Recovering, work.recoverers),
    ] {
        for reference in list {
            let reference = reference.or_namespace(work.namespace);
            let power = processor_power(stage, &reference, registry);
            let mut because = processor_reason(&reference.name, power, "");
            if is_pod && power == Power::Node && stage != Stage::Recovering {
                // A tenant can still diagnose its own pod (as `kubectl diag run` names the
                // triage's processors itself): say how.
                because.push_str(TRIAGE_WITHOUT_NODE_RIGHTS);
            }
            needs.push(need(power, target, because));
        }
    }
    for command in work.commands {
        needs.push(need(
            Power::Node,
            target,
            format!(
                "it runs command-executor {:?} on the node (commands run in the host's namespaces, not the pod's)",
                command.command.join(" ")
            ),
        ));
    }
    for profiler in work.profilers {
        let java_pid = profiler.java.as_ref().and_then(|j| j.pid);
        let node_file = profiler.go.as_ref().and_then(|g| g.local_file());
        let (power, what) = match (java_pid, node_file) {
            (Some(pid), _) => (
                Power::Node,
                format!("its profiler {} names host pid {pid}", profiler.name),
            ),
            (None, Some(path)) => (
                Power::Node,
                format!(
                    "its profiler {} reads file {path} of the node",
                    profiler.name
                ),
            ),
            (None, None) => (Power::Exec, format!("it runs profiler {}", profiler.name)),
        };
        needs.push(need(power, target, what));
    }
    if work
        .context
        .is_some_and(|c| c.contains_key(kdiag_api::context_keys::SIGNAL_RECOVERY))
    {
        needs.push(need(
            Power::Node,
            target,
            format!(
                "spec.context.{} names host pids to signal",
                kdiag_api::context_keys::SIGNAL_RECOVERY
            ),
        ));
    }
    if !is_pod && needs.is_empty() {
        needs.push(need(
            Power::Node,
            target,
            format!("it is about {}, not a pod", target.describe()),
        ));
    }
    needs
}

/// The rights an Abnormal needs its creator to have.
pub fn abnormal_needs(a: &Abnormal, registry: &dyn Registry, triage: &Triage) -> Vec<Need> {
    // What admission will run is what is checked: under Kube Diagnoser v0.1.0-v0.1.3's rules
    // (kdiag.io/kube-diagnoser-version) admission fills empty lists with every registered
    // processor, recoverers included.
    let filled = kdiag_pipeline::admission::with_every_registered(a, registry);
    let a = filled.as_ref().unwrap_or(a);
    let namespace = a.metadata.namespace.as_deref().unwrap_or_default();
    let target = match &a.spec.pod_reference {
        Some(p) => Target::Pod {
            namespace: if p.namespace.is_empty() {
                namespace.to_owned()
            } else {
                p.namespace.clone()
            },
            name: p.name.clone(),
            node: a.spec.node_name.clone(),
        },
        None => Target::Node {
            name: a.spec.node_name.clone(),
        },
    };
    work_needs(
        &Work::of_abnormal(namespace, &a.spec),
        &target,
        registry,
        triage,
    )
}

/// The rights an AbnormalSource needs its creator to have: what the Abnormals it creates will
/// need. One outside kdiag's namespace creates Abnormals only for Events of its namespace's
/// objects (pods); alert and probe sources, and any source in kdiag's namespace, may create
/// Abnormals about nodes.
pub fn source_needs(s: &AbnormalSource, registry: &dyn Registry, triage: &Triage) -> Vec<Need> {
    let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
    let template = &s.spec.source_template;
    let target = if namespace != kdiag_api::SYSTEM_NAMESPACE
        && template.type_ == AbnormalSourceType::KubernetesEvent
    {
        Target::Pod {
            namespace: namespace.to_owned(),
            name: String::new(),
            node: String::new(),
        }
    } else {
        Target::Node {
            name: template
                .probe_status_template
                .as_ref()
                .map(|t| t.node_name.clone())
                .unwrap_or_default(),
        }
    };
    let spec = &s.spec;
    let work = Work {
        namespace,
        collectors: &spec.assigned_information_collectors,
        diagnosers: &spec.assigned_diagnosers,
        recoverers: &spec.assigned_recoverers,
        commands: &spec.command_executors,
        profilers: &spec.profilers,
        context: spec.context.as_ref(),
    };
    let mut needs = work_needs(&work, &target, registry, triage);
    if let Target::Node { .. } = target {
        let why = if namespace == kdiag_api::SYSTEM_NAMESPACE {
            format!("a source in {namespace} acts on every namespace and node")
        } else {
            format!(
                "a {} source creates Abnormals about nodes",
                template.type_.as_str()
            )
        };
        for n in &mut needs {
            n.because = format!("{why}, and {}", n.because);
        }
    }
    needs
}

/// The rights a processor registration needs its creator to have: what its processor does, for
/// Abnormals of its namespace (kdiag's namespace: every namespace).
pub fn registration_needs(
    stage: Stage,
    namespace: &str,
    name: &str,
    endpoint: &ProcessorEndpoint,
) -> Vec<Need> {
    let plugin = !endpoint.is_builtin();
    let power = builtin_power(stage, name, plugin);
    let target = Target::Pod {
        namespace: if namespace == kdiag_api::SYSTEM_NAMESPACE {
            String::new()
        } else {
            namespace.to_owned()
        },
        name: String::new(),
        node: String::new(),
    };
    let what = if plugin {
        format!("it registers HTTP plugin {name}, which the agents send Abnormals to")
    } else {
        processor_reason(name, power, "built-in ")
    };
    let what = match stage {
        Stage::Recovering => format!("{what} to recover"),
        _ => what,
    };
    vec![need(power, &target, what)]
}

#[cfg(test)]
mod tests;
