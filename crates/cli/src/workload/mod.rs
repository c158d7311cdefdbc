//! `kubectl diag run --service`, `--job`, `--deployment`, `--statefulset`, `--daemonset` and
//! `--pdb`: workload-level causes judged at once from objects the CLI reads — a Service without
//! ready endpoints (its Endpoints and the pods its selector matches), a Job that gave up (its
//! status and its pods), and in [`apps`] a rollout that does not finish, a DaemonSet that skips
//! nodes, a PodDisruptionBudget that blocks drains. The judges are pure
//! (`kdiag_diagnosers::probe_failure` — the Service's is the one the probe trigger uses — and
//! `kdiag_diagnosers::workload`). Nothing runs on a node, so no Abnormal is created.

pub mod apps;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kdiag_api::RootCause;
use kdiag_diagnosers::probe_failure::{ServiceFacts, job_failed, service_without_endpoints};
use kube::api::{Api, ListParams};

use super::client::{Kube, Request};
use super::{DiagError, Output};

/// Reads and judges the Service; prints the root cause (or, with -o json|yaml, it as data).
/// Exit code 0 when a cause was found, 1 when the Service has ready endpoints.
pub async fn service(
    kube: &Kube,
    namespace: &str,
    target: &str,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = split("--service", target, namespace)?;
    let facts = read(kube, ns, name).await?;
    let cause = service_without_endpoints(&facts);
    let none = || nothing_wrong(&facts);
    answer("service", &facts.key, cause, none, output, print)
}

/// `--job`: reads the Job and its pods (label `job-name`), judges, prints as [`service`] does.
/// Exit code 0 when it failed (the cause is named), 1 while it has not.
pub async fn job(
    kube: &Kube,
    namespace: &str,
    target: &str,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = split("--job", target, namespace)?;
    let key = format!("{ns}/{name}");
    let request = Request {
        verb: "get",
        kind: "Job",
        resource: "jobs.batch",
        namespace: Some(ns),
        name: Some(name),
    };
    let job = Api::<Job>::namespaced(kube.client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| request.explain(e, &kube.url))?;
    let pods = Api::<Pod>::namespaced(kube.client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .map_err(|e| {
            Request {
                verb: "list",
                kind: "Pod",
                resource: "pods",
                name: None,
                ..request
            }
            .explain(e, &kube.url)
        })?
        .items;
    let cause = job_failed(&key, &job, &pods);
    let none = || {
        let s = job.status.clone().unwrap_or_default();
        format!(
            "no cause found: Job {key} has not failed ({} active, {} succeeded, {} failed; no Failed condition)",
            s.active.unwrap_or(0),
            s.succeeded.unwrap_or(0),
            s.failed.unwrap_or(0)
        )
    };
    answer("job", &key, cause, none, output, print)
}

pub(crate) fn split<'a>(
    flag: &str,
    target: &'a str,
    namespace: &'a str,
) -> Result<(&'a str, &'a str), DiagError> {
    match target.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns, name)),
        None if !target.is_empty() => Ok((namespace, target)),
        _ => Err(DiagError::Usage(format!(
            "{flag} {target:?}: give NAME (in namespace {namespace}) or NAMESPACE/NAME"
        ))),
    }
}

/// Prints the cause (text, or `{KIND: key, rootCause}` with -o json|yaml); 0 when one was found.
pub(crate) fn answer(
    kind: &str,
    key: &str,
    cause: Option<RootCause>,
    none: impl FnOnce() -> String,
    output: Option<Output>,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    if matches!(output, Some(Output::Json | Output::Yaml)) {
        let value = serde_json::json!({kind: key, "rootCause": cause});
        print(super::objects(vec![value], true, output)?.trim_end());
    } else {
        print(&match &cause {
            Some(c) => text(c),
            None => none(),
        });
    }
    Ok(if cause.is_some() { 0 } else { 1 })
}

async fn read(kube: &Kube, ns: &str, name: &str) -> Result<ServiceFacts, DiagError> {
    let request = |kind: &'static str, resource: &'static str| Request {
        verb: "get",
        kind,
        resource,
        namespace: Some(ns),
        name: Some(name),
    };
    let explain = |r: Request, e: kube::Error| r.explain(e, &kube.url);
    let key = format!("{ns}/{name}");
    let service = Api::<Service>::namespaced(kube.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| explain(request("Service", "services"), e))?;
    let Some(service) = service else {
        return Ok(ServiceFacts {
            key,
            ..Default::default()
        });
    };
    let endpoints = Api::<Endpoints>::namespaced(kube.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| explain(request("Endpoints", "endpoints"), e))?;
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods = if selector.is_empty() {
        Vec::new()
    } else {
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Api::<Pod>::namespaced(kube.client.clone(), ns)
            .list(&ListParams::default().labels(&labels))
            .await
            .map_err(|e| {
                let mut r = request("Pod", "pods");
                r.verb = "list";
                r.name = None;
                explain(r, e)
            })?
            .items
    };
    Ok(ServiceFacts {
        key,
        service: Some(service),
        endpoints,
        pods,
    })
}

fn nothing_wrong(facts: &ServiceFacts) -> String {
    let ready: usize = facts
        .endpoints
        .iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    format!(
        "no cause found: Service {} has {ready} ready endpoint(s); checked its Endpoints and the {} pod(s) its selector matches",
        facts.key,
        facts.pods.len()
    )
}

/// A root cause in the shape `describe` gives it.
pub fn text(c: &RootCause) -> String {
    let mut out = format!("Root cause:   {}\n  Reason:     {}\n", c.summary, c.reason);
    if !c.suggestion.is_empty() {
        out.push_str(&format!("  Suggestion: {}\n", c.suggestion));
    }
    if !c.evidence.is_empty() {
        out.push_str("  Evidence:\n");
        for e in &c.evidence {
            out.push_str(&format!("    - [{}] {}: {}\n", e.kind, e.object, e.message));
        }
    }
    out.trim_end().to_owned()
}
