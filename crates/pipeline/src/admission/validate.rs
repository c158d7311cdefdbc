//! Checks of an Abnormal that need no pod: target, processors, executors, profilers.

use kdiag_api::{Abnormal, Stage};

use super::{Registry, kind_of, list_field};
use crate::Error;

/// May an Abnormal in `abnormal_namespace` use a processor registered in `registration_namespace`?
/// Registrations in kdiag's own namespace serve every namespace; any other only its own, so a
/// tenant's plugin never sees, or acts for, another tenant's Abnormals.
pub fn registration_in_scope(registration_namespace: &str, abnormal_namespace: &str) -> bool {
    registration_namespace == kdiag_api::SYSTEM_NAMESPACE
        || registration_namespace == abnormal_namespace
}

/// Seconds a command executor or profiler may be given at most.
pub const MAX_TIMEOUT_SECONDS: i32 = 3600;

/// Checks everything that can be checked without the pod: target, processors, executors,
/// profilers.
pub fn validate(abnormal: &Abnormal, registry: &dyn Registry) -> Result<(), Error> {
    let spec = &abnormal.spec;
    if let Err(message) = abnormal.kube_diagnoser_release() {
        return Err(rejected("InvalidKubeDiagnoserVersion", message));
    }
    if spec.node_name.is_empty() && spec.pod_reference.is_none() {
        return Err(rejected(
            "MissingTarget",
            "neither spec.nodeName nor spec.podReference is set: set spec.nodeName to the node to diagnose, or spec.podReference {namespace, name} to a pod. Kube Diagnoser v0.1.0-v0.1.5 ran such an Abnormal on every node, and so does kdiag (one Abnormal per node) unless its controller runs with --fan-out-max-nodes=0, as this one does (docs/compatibility.md)".into(),
        ));
    }
    if let Some(p) = &spec.pod_reference
        && p.name.is_empty()
    {
        return Err(rejected(
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
                return Err(rejected(
                    "InvalidProcessorReference",
                    format!("{field}.name is empty"),
                ));
            }
            if !registration_in_scope(&name.namespace, ns) {
                return Err(rejected(
                    "ProcessorOutOfNamespace",
                    format!(
                        "{field} names {kind} {name}, registered in namespace {}; an Abnormal in namespace {ns} may use only processors registered in {ns} or in {}",
                        name.namespace,
                        kdiag_api::SYSTEM_NAMESPACE
                    ),
                ));
            }
            match registry.get(stage, &name) {
                // Kube Diagnoser ran the registered processors an Abnormal named and passed over
                // the others, so one missing name does not reject the Abnormal: its step fails
                // at run time saying what is registered, and the stage's usual rule decides
                // (a collection needs one success, a diagnosis one identification).
                None => {}
                Some(endpoint)
                    if endpoint.is_builtin()
                        && !registry.builtins().contains(&name.name.as_str()) =>
                {
                    return Err(rejected(
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
            return Err(rejected(
                "InvalidCommandExecutor",
                format!(
                    "{field}.command is empty: give the program and its arguments as a list, such as [ps, aux]"
                ),
            ));
        }
        if c.command.len() == 1 && c.command[0].contains(' ') {
            return Err(rejected(
                "InvalidCommandExecutor",
                format!(
                    "{field}.command is one string with spaces ({:?}); commands never run through a shell, so give each argument as its own list item",
                    c.command[0]
                ),
            ));
        }
        check_seconds(
            "InvalidCommandExecutor",
            &field,
            "timeoutSeconds",
            c.timeout_seconds,
        )?;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in spec.profilers.iter().enumerate() {
        let field = format!("spec.profilers[{i}]");
        let bad = |m: String| rejected("InvalidProfiler", m);
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
                // A URL, or (as Kube Diagnoser allowed) an absolute path of a pprof file on the
                // node, which the agent reads only under its --go-profile-dir.
                let url = go.source.starts_with("http://") || go.source.starts_with("https://");
                let file = go.local_file().is_some_and(|p| p.starts_with('/'));
                if !url && !file {
                    return Err(bad(format!(
                        "{field}.go.source {:?} must be an http(s) URL of a pprof endpoint, such as http://10.88.0.7:6060/debug/pprof/heap, or the absolute path of a pprof file on the node, such as /var/run/pprof/heap.pprof",
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
        check_seconds(
            "InvalidProfiler",
            &field,
            "timeoutSeconds",
            p.timeout_seconds,
        )?;
        // 0 means the default, as Kube Diagnoser's webhook made it.
        if p.expiration_seconds.is_some_and(|s| s < 0) {
            return Err(bad(format!(
                "{field}.expirationSeconds must be at least 1 (or 0 or left out for 7200)"
            )));
        }
    }
    Ok(())
}

fn check_seconds(
    reason: &'static str,
    field: &str,
    name: &str,
    v: Option<i32>,
) -> Result<(), Error> {
    match v {
        // 0 means the default, as Kube Diagnoser's webhook made it.
        Some(s) if s != 0 && !(1..=MAX_TIMEOUT_SECONDS).contains(&s) => Err(rejected(
            reason,
            format!(
                "{field}.{name} is {s}; it must be between 1 and {MAX_TIMEOUT_SECONDS} (or 0 or left out for {})",
                kdiag_api::DEFAULT_STEP_TIMEOUT_SECONDS
            ),
        )),
        _ => Ok(()),
    }
}

fn rejected(reason: &'static str, message: String) -> Error {
    Error::Rejected { reason, message }
}
