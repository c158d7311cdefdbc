//! `kubectl diag run`: starts a diagnosis without writing YAML. It checks the processors named
//! exist before creating anything, waits for the controller to admit the Abnormal (so a missing
//! controller or a rejection is reported at once), and with `--wait` follows it to the end.

use std::time::Duration;

use kdiag_api::{
    Abnormal, AbnormalSpec, Diagnoser, InformationCollector, NamespacedName, PodReference,
    Recoverer, Stage,
};
use kdiag_pipeline::admission::Triage;
use kube::api::{Api, ObjectMeta, PostParams};

use super::client::{Kube, Request};
use super::render::Style;
use super::watch::{self, Follow};
use super::{DiagError, Output, Scope};

/// Where processors named without a namespace are looked up: where kdiag registers its
/// built-ins (and Kube Diagnoser did).
pub const PROCESSOR_NAMESPACE: &str = kdiag_api::SYSTEM_NAMESPACE;

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["node", "pod", "service", "job", "deployment", "statefulset", "daemonset", "pdb"])))]
pub struct RunArgs {
    /// The node to diagnose.
    #[arg(long)]
    pub node: Option<String>,
    /// The pod to diagnose: NAME (in the -n namespace) or NAMESPACE/NAME. The controller finds
    /// its node.
    #[arg(long)]
    pub pod: Option<String>,
    /// A Service without ready endpoints: NAME (in the -n namespace) or NAMESPACE/NAME. Judged
    /// at once from the Service, its Endpoints and the pods its selector matches; no Abnormal
    /// is created.
    #[arg(long)]
    pub service: Option<String>,
    /// A Job that gave up (past its backoffLimit or deadline): NAME or NAMESPACE/NAME, judged at
    /// once from its status and its pods; no Abnormal is created.
    #[arg(long)]
    pub job: Option<String>,
    /// A Deployment whose rollout does not finish: NAME or NAMESPACE/NAME, judged at once from
    /// its conditions, its newest ReplicaSet (its FailedCreate: a ResourceQuota, an admission
    /// denial), its pods and the namespace's ResourceQuotas; no Abnormal is created.
    #[arg(long)]
    pub deployment: Option<String>,
    /// A StatefulSet that does not reach its replicas: NAME or NAMESPACE/NAME, judged as
    /// --deployment from its own Events and its pods in ordinal order.
    #[arg(long)]
    pub statefulset: Option<String>,
    /// A DaemonSet missing from nodes (taints it does not tolerate) or whose pods fail: NAME or
    /// NAMESPACE/NAME, judged at once from it, every node and its pods.
    #[arg(long)]
    pub daemonset: Option<String>,
    /// A PodDisruptionBudget that blocks drains (disruptionsAllowed 0): NAME or NAMESPACE/NAME,
    /// judged at once from its status and the pods it protects.
    #[arg(long)]
    pub pdb: Option<String>,
    /// The container of the pod concerned.
    #[arg(long)]
    pub container: Option<String>,
    /// An InformationCollector to run, NAME or NAMESPACE/NAME (default namespace kube-diagnoser).
    /// Repeat for more; they run in the order given. Default: see `kubectl diag run --help`.
    #[arg(long = "collector", value_name = "NAME")]
    pub collectors: Vec<String>,
    /// A Diagnoser to try, NAME or NAMESPACE/NAME. Repeat for more; tried in order until one
    /// identifies the cause. Default: every Diagnoser registered in kube-diagnoser.
    #[arg(long = "diagnoser", value_name = "NAME")]
    pub diagnosers: Vec<String>,
    /// A Recoverer to try, NAME or NAMESPACE/NAME. Repeat for more. Default: none (recovery
    /// changes things, so it is never chosen for you).
    #[arg(long = "recoverer", value_name = "NAME")]
    pub recoverers: Vec<String>,
    /// Assign only the processors named: no defaults for the kinds left out.
    #[arg(long)]
    pub no_defaults: bool,
    /// Name of the Abnormal. Default: generated from the pod or node name.
    #[arg(long)]
    pub name: Option<String>,
    /// Follow the diagnosis until it ends, then print it as `describe` does. The exit code is 0
    /// only when it Succeeded.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: how long to wait for the end.
    #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
    /// How long the controller may take to admit the Abnormal before we say it is not running.
    #[arg(long, default_value = "20s", value_parser = crate::duration::parse_duration)]
    pub admission_timeout: Duration,
}

/// What the Abnormal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Node(String),
    Pod(PodReference),
}

/// The processors of each kind, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    pub collectors: Vec<NamespacedName>,
    pub diagnosers: Vec<NamespacedName>,
    pub recoverers: Vec<NamespacedName>,
}

impl Assigned {
    fn is_empty(&self) -> bool {
        self.collectors.is_empty() && self.diagnosers.is_empty() && self.recoverers.is_empty()
    }
}

/// The registrations that exist, per kind (None: could not be listed, e.g. RBAC).
#[derive(Debug, Clone, Default)]
pub struct Registered {
    pub collectors: Option<Vec<NamespacedName>>,
    pub diagnosers: Option<Vec<NamespacedName>>,
    pub recoverers: Option<Vec<NamespacedName>>,
}

/// Collectors `run --pod` prefers, in order; those registered in kube-diagnoser are used.
const POD_COLLECTORS: &[&str] = &[
    "pod-collector",
    "container-collector",
    "kernel-log-collector",
];
/// Collectors `run --node` prefers, in order. Not `systemd-collector`: it needs the units to show
/// in `spec.context`, which `run` cannot set, and `nsenter` with `CAP_SYS_ADMIN`, which the
/// shipped agent does not have, so as a default it would only add a failed step.
pub const NODE_COLLECTORS: &[&str] = &[
    "node-collector",
    "kernel-log-collector",
    "process-collector",
];

/// The processors `kubectl diag run` assigns for the kinds the command line leaves out. This is
/// the one place the defaults live.
///
/// - A pod: the registered part of the pod triage (docs/triage.md), asked of the function
///   admission fills a pod Abnormal that names none with (`Triage::registered` in
///   kdiag-pipeline). An install without the triage's registrations gets the older defaults:
///   the preferred pod collectors and every Diagnoser.
/// - A node: the preferred node collectors registered in kube-diagnoser, and every Diagnoser
///   registered there, node-triage-diagnoser first and without pod-triage-diagnoser (it needs a
///   pod); they are tried until one identifies the cause.
/// - Recoverers: none. Recovery acts on the cluster and must be asked for.
pub fn default_processors(target: &Target, registered: &Registered) -> Assigned {
    // None: the user may not list that kind (RBAC), so which are registered is unknown; the
    // defaults are asked for and the controller checks them at admission.
    let in_system = |list: &Option<Vec<NamespacedName>>| -> Option<Vec<NamespacedName>> {
        list.as_ref().map(|l| {
            l.iter()
                .filter(|n| n.namespace == PROCESSOR_NAMESPACE)
                .cloned()
                .collect()
        })
    };
    let collectors_there = in_system(&registered.collectors);
    let diagnosers_there = in_system(&registered.diagnosers);
    let maybe_registered = |list: &Option<Vec<NamespacedName>>, n: &NamespacedName| {
        list.as_ref().is_none_or(|l| l.contains(n))
    };
    let preferred = |names: &[&str]| -> Vec<NamespacedName> {
        names
            .iter()
            .map(|name| NamespacedName::new(PROCESSOR_NAMESPACE, *name))
            .filter(|n| maybe_registered(&collectors_there, n))
            .collect()
    };
    let mut every_diagnoser = diagnosers_there.clone().unwrap_or_default();
    every_diagnoser.sort();
    let (collectors, diagnosers) = match target {
        Target::Pod(_) => {
            // The same function admission fills a pod Abnormal that names no processors with.
            let triage = Triage::default().registered(&|stage, n| match stage {
                Stage::InformationCollecting => maybe_registered(&collectors_there, n),
                Stage::Diagnosing => maybe_registered(&diagnosers_there, n),
                Stage::Recovering => false,
            });
            (
                if triage.collectors.is_empty() {
                    preferred(POD_COLLECTORS)
                } else {
                    triage.collectors
                },
                if triage.diagnosers.is_empty() {
                    every_diagnoser
                } else {
                    triage.diagnosers
                },
            )
        }
        Target::Node(_) => {
            let node_triage = NamespacedName::new(PROCESSOR_NAMESPACE, "node-triage-diagnoser");
            let pod_triage = NamespacedName::new(PROCESSOR_NAMESPACE, "pod-triage-diagnoser");
            every_diagnoser.retain(|n| *n != pod_triage);
            // The node triage answers for the node as a whole; the others look at its pods.
            every_diagnoser.sort_by_key(|n| *n != node_triage);
            (preferred(NODE_COLLECTORS), every_diagnoser)
        }
    };
    Assigned {
        collectors,
        diagnosers,
        recoverers: Vec::new(),
    }
}

/// `NAME` or `NAMESPACE/NAME`; a bare name is looked up in kube-diagnoser.
pub fn parse_processor(flag: &str, value: &str) -> Result<NamespacedName, DiagError> {
    let parts: Vec<&str> = value.split('/').collect();
    match parts.as_slice() {
        [name] if !name.is_empty() => Ok(NamespacedName::new(PROCESSOR_NAMESPACE, *name)),
        [ns, name] if !ns.is_empty() && !name.is_empty() => Ok(NamespacedName::new(*ns, *name)),
        _ => Err(DiagError::Usage(format!(
            "--{flag} {value:?}: give NAME or NAMESPACE/NAME"
        ))),
    }
}

/// The target from `--node` or `--pod`.
pub fn parse_target(args: &RunArgs, namespace: &str) -> Result<Target, DiagError> {
    match (&args.node, &args.pod) {
        (Some(_), None) if args.container.is_some() => Err(DiagError::Usage(
            "--container names a container of --pod; a node has none".into(),
        )),
        (Some(node), None) if !node.is_empty() => Ok(Target::Node(node.clone())),
        (None, Some(pod)) => {
            let parts: Vec<&str> = pod.split('/').collect();
            let (ns, name) = match parts.as_slice() {
                [name] if !name.is_empty() => (namespace, *name),
                [ns, name] if !ns.is_empty() && !name.is_empty() => (*ns, *name),
                _ => {
                    return Err(DiagError::Usage(format!(
                        "--pod {pod:?}: give NAME (in namespace {namespace}) or NAMESPACE/NAME"
                    )));
                }
            };
            Ok(Target::Pod(PodReference {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                container_name: args.container.clone().unwrap_or_default(),
            }))
        }
        _ => Err(DiagError::Usage(
            "say what to diagnose: --node NODE, --pod [NAMESPACE/]NAME, or a workload [NAMESPACE/]NAME: --service, --job, --deployment, --statefulset, --daemonset, --pdb".into(),
        )),
    }
}

/// The processors to assign: those named, and the defaults for kinds not named (unless
/// `no_defaults`). Every one named must be registered, when the registrations could be read.
pub fn choose(
    args: &RunArgs,
    target: &Target,
    registered: &Registered,
) -> Result<Assigned, DiagError> {
    let parse = |flag: &str, values: &[String]| -> Result<Vec<NamespacedName>, DiagError> {
        values.iter().map(|v| parse_processor(flag, v)).collect()
    };
    let named = Assigned {
        collectors: parse("collector", &args.collectors)?,
        diagnosers: parse("diagnoser", &args.diagnosers)?,
        recoverers: parse("recoverer", &args.recoverers)?,
    };
    for (kind, wanted, there) in [
        (
            "InformationCollector",
            &named.collectors,
            &registered.collectors,
        ),
        ("Diagnoser", &named.diagnosers, &registered.diagnosers),
        ("Recoverer", &named.recoverers, &registered.recoverers),
    ] {
        let Some(there) = there else { continue };
        if let Some(missing) = wanted.iter().find(|w| !there.contains(w)) {
            return Err(DiagError::UnknownProcessor {
                kind,
                name: missing.to_string(),
                registered: if there.is_empty() {
                    "none".into()
                } else {
                    let mut names: Vec<String> = there.iter().map(ToString::to_string).collect();
                    names.sort();
                    names.join(", ")
                },
                what_to_do: "Name one of those, or register yours (docs/plugins.md).",
            });
        }
    }
    let defaults = if args.no_defaults {
        Assigned::default()
    } else {
        default_processors(target, registered)
    };
    let pick = |named: Vec<NamespacedName>, default: Vec<NamespacedName>| {
        if named.is_empty() { default } else { named }
    };
    let assigned = Assigned {
        collectors: pick(named.collectors, defaults.collectors),
        diagnosers: pick(named.diagnosers, defaults.diagnosers),
        recoverers: pick(named.recoverers, defaults.recoverers),
    };
    if assigned.is_empty() {
        return Err(DiagError::Usage(format!(
            "nothing to run: no processor was named and none of the defaults ({}) is registered in {PROCESSOR_NAMESPACE}. Install the built-ins with kubectl apply -k config/deploy, or name processors with --collector/--diagnoser/--recoverer",
            match target {
                Target::Pod(_) => POD_COLLECTORS,
                Target::Node(_) => NODE_COLLECTORS,
            }
            .join(", ")
        )));
    }
    Ok(assigned)
}

/// The Abnormal to create. Without a name, the apiserver generates one from the target's.
pub fn build(namespace: &str, name: Option<&str>, target: &Target, assigned: Assigned) -> Abnormal {
    let (node_name, pod_reference, stem) = match target {
        Target::Node(n) => (n.clone(), None, n.clone()),
        Target::Pod(p) => (String::new(), Some(p.clone()), p.name.clone()),
    };
    let mut metadata = ObjectMeta {
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    };
    match name {
        Some(n) => metadata.name = Some(n.to_owned()),
        // generateName adds 5 characters; names stay within 63 so they also fit a label value.
        None => metadata.generate_name = Some(format!("{}-", generated_stem(&stem))),
    }
    Abnormal {
        metadata,
        spec: AbnormalSpec {
            node_name,
            pod_reference,
            assigned_information_collectors: assigned.collectors,
            assigned_diagnosers: assigned.diagnosers,
            assigned_recoverers: assigned.recoverers,
            ..Default::default()
        },
        status: None,
    }
}

/// A DNS-label-safe stem for generated names: lower case, dashes, at most 50 characters.
fn generated_stem(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    while out.ends_with('-') {
        out.pop();
    }
    let trimmed = out.trim_start_matches('-').to_owned();
    if trimmed.is_empty() {
        "diag".into()
    } else {
        trimmed
    }
}

/// The registrations of each kind in the namespaces that matter: kube-diagnoser and every
/// namespace a processor was named in. A kind that cannot be listed (RBAC) is left unchecked:
/// the controller checks again at admission.
async fn registered(
    kube: &Kube,
    args: &RunArgs,
    warn: &mut dyn FnMut(&str),
) -> Result<Registered, DiagError> {
    async fn names<K>(
        kube: &Kube,
        namespaces: &[String],
        kind: &'static str,
        resource: &'static str,
        warn: &mut dyn FnMut(&str),
    ) -> Result<Option<Vec<NamespacedName>>, DiagError>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let mut out = Vec::new();
        for ns in namespaces {
            let request = Request {
                verb: "list",
                kind,
                resource,
                namespace: Some(ns),
                name: None,
            };
            match kube.list::<K>(Some(ns), request).await {
                Ok(items) => out.extend(
                    items
                        .iter()
                        .map(|i| NamespacedName::new(i.namespace(), i.name())),
                ),
                Err(DiagError::Forbidden { .. }) => {
                    warn(&format!(
                        "warning: cannot list {kind}s in {ns} (forbidden); the controller will check the names"
                    ));
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(Some(out))
    }
    let namespaces = |values: &[String]| -> Vec<String> {
        let mut ns = vec![PROCESSOR_NAMESPACE.to_owned()];
        for v in values {
            if let Some((n, _)) = v.split_once('/')
                && !ns.iter().any(|x| x == n)
            {
                ns.push(n.to_owned());
            }
        }
        ns
    };
    Ok(Registered {
        collectors: names::<InformationCollector>(
            kube,
            &namespaces(&args.collectors),
            "InformationCollector",
            "informationcollectors.diagnosis.netease.com",
            warn,
        )
        .await?,
        diagnosers: names::<Diagnoser>(
            kube,
            &namespaces(&args.diagnosers),
            "Diagnoser",
            "diagnosers.diagnosis.netease.com",
            warn,
        )
        .await?,
        recoverers: names::<Recoverer>(
            kube,
            &namespaces(&args.recoverers),
            "Recoverer",
            "recoverers.diagnosis.netease.com",
            warn,
        )
        .await?,
    })
}

/// Creates the Abnormal and reports on it. Returns the exit code: 0 when admitted (or, with
/// --wait, when it Succeeded), 1 when it was rejected or Failed.
///
/// With `-o json|yaml` stdout holds only the Abnormal as stored (after admission, or with
/// --wait after its end), so it can be piped to `jq` or saved; the progress goes to stderr.
pub async fn run(
    kube: &Kube,
    scope: &Scope,
    args: &RunArgs,
    output: Option<Output>,
    style: Style,
    print: &mut dyn FnMut(&str),
    warn: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    if let Some(service) = &args.service {
        return super::workload::service(kube, &scope.namespace, service, output, print).await;
    }
    if let Some(job) = &args.job {
        return super::workload::job(kube, &scope.namespace, job, output, print).await;
    }
    let ns = &scope.namespace;
    use super::workload::apps;
    if let Some(d) = &args.deployment {
        return apps::deployment(kube, ns, d, output, print).await;
    }
    if let Some(s) = &args.statefulset {
        return apps::statefulset(kube, ns, s, output, print).await;
    }
    if let Some(d) = &args.daemonset {
        return apps::daemonset(kube, ns, d, output, print).await;
    }
    if let Some(p) = &args.pdb {
        return apps::pdb(kube, ns, p, output, print).await;
    }
    if !matches!(output, Some(Output::Json | Output::Yaml)) {
        return report(kube, scope, args, style, print, warn)
            .await
            .map(|(code, _)| code);
    }
    let (code, name) = {
        // Progress lines and warnings both go to stderr, in the order they come.
        let warn = std::cell::RefCell::new(warn);
        let mut progress = |line: &str| (warn.borrow_mut())(line);
        let mut warnings = |line: &str| (warn.borrow_mut())(line);
        report(kube, scope, args, style, &mut progress, &mut warnings).await?
    };
    print(
        super::describe::run(kube, &scope.namespace, &name, output, style)
            .await?
            .trim_end(),
    );
    Ok(code)
}

/// `run`'s text report; also returns the Abnormal's name.
async fn report(
    kube: &Kube,
    scope: &Scope,
    args: &RunArgs,
    style: Style,
    print: &mut dyn FnMut(&str),
    warn: &mut dyn FnMut(&str),
) -> Result<(u8, String), DiagError> {
    if scope.all_namespaces {
        return Err(DiagError::Usage(
            "run creates an Abnormal in one namespace: use -n NAMESPACE, not -A".into(),
        ));
    }
    let namespace = scope.namespace.as_str();
    let target = parse_target(args, namespace)?;
    let registered = registered(kube, args, warn).await?;
    let assigned = choose(args, &target, &registered)?;
    let abnormal = build(namespace, args.name.as_deref(), &target, assigned);

    let api: Api<Abnormal> = Api::namespaced(kube.client.clone(), namespace);
    let created = match api.create(&PostParams::default(), &abnormal).await {
        Ok(a) => a,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(DiagError::Usage(format!(
                "Abnormal {namespace}/{} already exists: choose another --name, or leave --name out to get a generated one",
                args.name.as_deref().unwrap_or("")
            )));
        }
        Err(e) => return Err(Request::abnormals("create", Some(namespace)).explain(e, &kube.url)),
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    print(&format!("abnormal.diagnosis.netease.com/{name} created"));
    let summary = |list: &[NamespacedName]| {
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    print(&format!(
        "  collectors: {}\n  diagnosers: {}\n  recoverers: {}",
        summary(created.assigned(Stage::InformationCollecting)),
        summary(created.assigned(Stage::Diagnosing)),
        summary(created.assigned(Stage::Recovering)),
    ));

    if args.wait {
        let follow = Follow {
            timeout: args.timeout,
            admission_timeout: args.admission_timeout,
            require_controller: true,
        };
        let done = watch::follow(kube, namespace, &name, follow, style, print, warn).await?;
        print("");
        let events = super::describe::run(kube, namespace, &name, None, style).await?;
        print(events.trim_end());
        return Ok((exit_code(&done), name));
    }

    // Without --wait, still wait for admission: a rejection or a missing controller is worth
    // knowing now, not after a later `describe`.
    let deadline = tokio::time::Instant::now() + args.admission_timeout;
    loop {
        let read = api.get(&name).await.map_err(|e| {
            Request::abnormals("get", Some(namespace))
                .named(&name)
                .explain(e, &kube.url)
        });
        match read {
            Ok(a) => {
                if let Some((line, code)) = admission_outcome(&a, namespace, &name) {
                    print(&line);
                    return Ok((code, name));
                }
            }
            // An apiserver that is briefly unreachable or overloaded is read again.
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DiagError::NoController {
                namespace: namespace.into(),
                name,
                waited: args.admission_timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What `run` without `--wait` reports once the controller has written a status, and its exit
/// code; None before that. A fast diagnosis may already be over by then.
pub fn admission_outcome(a: &Abnormal, namespace: &str, name: &str) -> Option<(String, u8)> {
    if !watch::has_status(a) {
        return None;
    }
    let status = a.status.clone().unwrap_or_default();
    let accepted = status
        .conditions
        .iter()
        .find(|c| c.type_ == kdiag_api::AbnormalConditionType::Accepted)
        .map(|c| c.status == kdiag_api::ConditionStatus::True);
    let follow = format!("follow it with: kubectl diag watch {name} -n {namespace}");
    let story = format!("the whole story: kubectl diag describe {name} -n {namespace}");
    Some(match (status.phase, accepted) {
        (Some(kdiag_api::AbnormalPhase::Failed), Some(true)) => (
            format!(
                "accepted, and it already Failed: {}: {}; {story}",
                status.reason, status.message
            ),
            1,
        ),
        (Some(kdiag_api::AbnormalPhase::Failed), _) => (
            format!("rejected: {}: {}", status.reason, status.message),
            1,
        ),
        (Some(kdiag_api::AbnormalPhase::Succeeded), _) => {
            (format!("accepted, and it already Succeeded; {story}"), 0)
        }
        (Some(_), _) => (format!("accepted; {follow}"), 0),
        (None, _) => (
            format!("{}: {}; {follow}", status.reason, status.message),
            0,
        ),
    })
}

/// 0 only for Succeeded.
pub fn exit_code(a: &Abnormal) -> u8 {
    match a.phase() {
        Some(kdiag_api::AbnormalPhase::Succeeded) => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(argv: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .unwrap()
            .run
    }

    fn nn(s: &str) -> NamespacedName {
        let (ns, n) = s.split_once('/').unwrap();
        NamespacedName::new(ns, n)
    }

    #[test]
    fn a_user_who_may_not_list_registrations_still_asks_for_the_pod_triage() {
        let unknown = Registered {
            collectors: None,
            diagnosers: None,
            recoverers: None,
        };
        let a = args(&["--pod", "web"]);
        let chosen = choose(&a, &parse_target(&a, "default").unwrap(), &unknown).unwrap();
        let triage = Triage::default();
        assert_eq!(chosen.collectors, triage.collectors);
        assert_eq!(chosen.diagnosers, triage.diagnosers);
    }

    fn registered() -> Registered {
        Registered {
            collectors: Some(vec![
                nn("kube-diagnoser/kernel-log-collector"),
                nn("kube-diagnoser/pod-collector"),
                nn("kube-diagnoser/process-collector"),
                nn("team/custom-collector"),
            ]),
            diagnosers: Some(vec![
                nn("kube-diagnoser/z-diag"),
                nn("kube-diagnoser/a-diag"),
                nn("team/t-diag"),
            ]),
            recoverers: Some(vec![nn("kube-diagnoser/signal-recoverer")]),
        }
    }

    #[test]
    fn a_pod_gets_the_pod_triage_when_it_is_registered_and_a_node_the_node_triage_first() {
        let mut r = registered();
        for name in ["pod-detail-collector", "container-collector"] {
            r.collectors
                .as_mut()
                .unwrap()
                .push(nn(&format!("kube-diagnoser/{name}")));
        }
        for name in ["pod-triage-diagnoser", "node-triage-diagnoser"] {
            r.diagnosers
                .as_mut()
                .unwrap()
                .push(nn(&format!("kube-diagnoser/{name}")));
        }
        let pod = args(&["--pod", "shop/web"]);
        let chosen = choose(&pod, &parse_target(&pod, "default").unwrap(), &r).unwrap();
        let triage = kdiag_pipeline::admission::Triage::default();
        assert_eq!(chosen.collectors, triage.collectors);
        assert_eq!(chosen.diagnosers, triage.diagnosers);
        assert!(chosen.recoverers.is_empty());
        let node = args(&["--node", "n1"]);
        let chosen = choose(&node, &parse_target(&node, "default").unwrap(), &r).unwrap();
        assert_eq!(
            chosen.diagnosers,
            [
                nn("kube-diagnoser/node-triage-diagnoser"),
                nn("kube-diagnoser/a-diag"),
                nn("kube-diagnoser/z-diag")
            ],
            "the node triage first, the pod triage left out"
        );
    }

    #[test]
    fn a_pod_gets_the_registered_part_of_the_triage_and_every_system_diagnoser_without_the_triage_diagnoser()
     {
        let a = args(&["--pod", "shop/web"]);
        let target = parse_target(&a, "default").unwrap();
        assert_eq!(
            target,
            Target::Pod(PodReference {
                namespace: "shop".into(),
                name: "web".into(),
                container_name: String::new()
            })
        );
        let chosen = choose(&a, &target, &registered()).unwrap();
        assert_eq!(
            chosen,
            Assigned {
                collectors: vec![
                    nn("kube-diagnoser/process-collector"),
                    nn("kube-diagnoser/kernel-log-collector")
                ],
                diagnosers: vec![nn("kube-diagnoser/a-diag"), nn("kube-diagnoser/z-diag")],
                recoverers: vec![],
            }
        );
    }

    #[test]
    fn a_bare_pod_name_is_in_the_command_namespace_and_processors_in_kube_diagnoser() {
        let a = args(&[
            "--pod",
            "web",
            "--container",
            "app",
            "--collector",
            "pod-collector",
            "--diagnoser",
            "team/t-diag",
        ]);
        let target = parse_target(&a, "shop").unwrap();
        let Target::Pod(p) = &target else { panic!() };
        assert_eq!(
            (p.namespace.as_str(), p.container_name.as_str()),
            ("shop", "app")
        );
        let chosen = choose(&a, &target, &registered()).unwrap();
        assert_eq!(chosen.collectors, [nn("kube-diagnoser/pod-collector")]);
        assert_eq!(chosen.diagnosers, [nn("team/t-diag")]);
    }

    #[test]
    fn an_unknown_processor_is_refused_with_the_registered_ones() {
        let a = args(&["--node", "n1", "--diagnoser", "oom"]);
        let err = choose(&a, &parse_target(&a, "default").unwrap(), &registered()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Diagnoser kube-diagnoser/oom does not exist, so the step of an Abnormal naming it would fail. Registered Diagnosers: kube-diagnoser/a-diag, kube-diagnoser/z-diag, team/t-diag. Name one of those, or register yours (docs/plugins.md)."
        );
    }

    #[test]
    fn registrations_that_cannot_be_listed_are_left_to_the_controller() {
        let a = args(&["--node", "n1", "--diagnoser", "oom"]);
        let mut r = registered();
        r.diagnosers = None;
        let chosen = choose(&a, &parse_target(&a, "default").unwrap(), &r).unwrap();
        assert_eq!(chosen.diagnosers, [nn("kube-diagnoser/oom")]);
    }

    #[test]
    fn no_defaults_and_nothing_named_is_a_usage_error_that_says_how_to_fix_it() {
        let a = args(&["--node", "n1", "--no-defaults"]);
        let err = choose(&a, &parse_target(&a, "default").unwrap(), &registered()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("kubectl apply -k config/deploy"),
            "{err}"
        );
    }

    #[test]
    fn node_and_pod_are_exclusive_and_one_is_required() {
        assert!(Cli::try_parse_from(["run", "--node", "a", "--pod", "b"]).is_err());
        assert!(Cli::try_parse_from(["run", "--collector", "x"]).is_err());
        let a = args(&["--node", "a", "--container", "c"]);
        assert_eq!(parse_target(&a, "default").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn run_without_wait_tells_a_rejection_from_a_diagnosis_that_already_failed() {
        let with = |status: serde_json::Value| -> Abnormal {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n"}, "status": status
            }))
            .unwrap()
        };
        assert_eq!(
            admission_outcome(&with(serde_json::json!(null)), "ns", "a"),
            None
        );
        let accepted = |phase: &str| {
            with(
                serde_json::json!({"phase": phase, "identifiable": false, "recoverable": false,
                "reason": if phase == "Failed" { "NotIdentified" } else { "" }, "message": "m",
                "conditions": [{"type": "Accepted", "status": "True"}]}),
            )
        };
        assert_eq!(
            admission_outcome(&accepted("Diagnosing"), "ns", "a").unwrap(),
            (
                "accepted; follow it with: kubectl diag watch a -n ns".into(),
                0
            )
        );
        assert_eq!(
            admission_outcome(&accepted("Failed"), "ns", "a").unwrap(),
            ("accepted, and it already Failed: NotIdentified: m; the whole story: kubectl diag describe a -n ns".into(), 1)
        );
        assert_eq!(
            admission_outcome(&accepted("Succeeded"), "ns", "a")
                .unwrap()
                .1,
            0
        );
        let rejected = with(
            serde_json::json!({"phase": "Failed", "identifiable": false, "recoverable": false,
            "reason": "ProcessorNotFound", "message": "m",
            "conditions": [{"type": "Accepted", "status": "False", "reason": "ProcessorNotFound"}]}),
        );
        assert_eq!(
            admission_outcome(&rejected, "ns", "a").unwrap(),
            ("rejected: ProcessorNotFound: m".into(), 1)
        );
        let waiting = with(
            serde_json::json!({"identifiable": false, "recoverable": false,
            "reason": "WaitingForPod", "message": "pod ns/web does not exist yet"}),
        );
        assert_eq!(admission_outcome(&waiting, "ns", "a").unwrap().1, 0);
    }

    #[test]
    fn malformed_names_are_usage_errors() {
        assert!(parse_processor("collector", "a/b/c").is_err());
        assert!(parse_processor("collector", "/x").is_err());
        let a = args(&["--pod", "shop/"]);
        assert!(parse_target(&a, "default").is_err());
    }

    #[test]
    fn the_abnormal_names_its_target_and_gets_a_generated_name_unless_given() {
        let assigned = Assigned {
            collectors: vec![nn("kube-diagnoser/pod-collector")],
            ..Default::default()
        };
        let pod = Target::Pod(PodReference {
            namespace: "shop".into(),
            name: "Web_Server".into(),
            container_name: String::new(),
        });
        let a = build("shop", None, &pod, assigned.clone());
        assert_eq!(a.metadata.generate_name.as_deref(), Some("web-server-"));
        assert_eq!(a.metadata.name, None);
        assert_eq!(a.spec.pod_reference.as_ref().unwrap().name, "Web_Server");
        assert!(a.spec.node_name.is_empty());
        let n = build(
            "ops",
            Some("disk"),
            &Target::Node("node-a".into()),
            assigned,
        );
        assert_eq!(n.metadata.name.as_deref(), Some("disk"));
        assert_eq!(n.spec.node_name, "node-a");
        assert_eq!(
            serde_json::to_value(&n).unwrap()["spec"]["assignedInformationCollectors"],
            serde_json::json!([{"namespace": "kube-diagnoser", "name": "pod-collector"}])
        );
        assert_eq!(generated_stem(&"x".repeat(80)).len(), 50);
        assert_eq!(generated_stem("--"), "diag");
    }
}
