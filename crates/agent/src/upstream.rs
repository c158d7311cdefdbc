//! Kube Diagnoser's agent paths (its `:8090`), served on a port of their own when
//! `--kube-diagnoser-port` is given, for tools and registrations that call the agent the way they
//! called Kube Diagnoser's:
//!
//! | path | POST (an Abnormal) | GET |
//! |---|---|---|
//! | `/informationcollector/<name>` | the built-in collector, as `/processor/<built-in>` | what it collects about the node: the array under its context key, as Kube Diagnoser answered |
//! | `/diagnoser/<name>` | the built-in diagnoser | 405 |
//! | `/recoverer/<name>` | refused (403): recoverers never run over HTTP | refused (403) |
//! | `/informationcollector`, `/diagnoser`, `/recoverer` | 405 | the registrations of that kind, as a JSON array |
//!
//! Every path but `/metrics`, `/healthz` and `/readyz` needs the same token and right as the
//! node API's own path for the same thing ([`crate::access`]): these are other names for it.

use bytes::Bytes;
use kdiag_api::{Diagnoser, InformationCollector, Recoverer, context_keys};
use kdiag_runtime::server::{MAX_REQUEST_BYTES, Routes, other_method, text};
use kube::Api;
use kube::api::ListParams;
use warp::http::{Method, StatusCode};
use warp::{Filter, Reply};

use crate::access;
use crate::server::{ProcessorService, allowed, authorization, collected, refused, run_processor};

/// Kube Diagnoser's path (kind segment, processor segment), the built-in it names, and for a
/// collector the context key whose value its GET answered with.
pub const PATHS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "informationcollector",
        "podcollector",
        "pod-collector",
        Some(context_keys::POD_INFORMATION),
    ),
    (
        "informationcollector",
        "containercollector",
        "container-collector",
        Some(context_keys::CONTAINER_INFORMATION),
    ),
    (
        "informationcollector",
        "processcollector",
        "process-collector",
        Some(context_keys::PROCESS_INFORMATION),
    ),
    (
        "informationcollector",
        "filestatuscollector",
        "file-status-collector",
        Some(context_keys::FILE_STATUS_INFORMATION),
    ),
    (
        "informationcollector",
        "systemdcollector",
        "systemd-collector",
        Some(context_keys::SYSTEMD_UNIT_PROPERTY_INFORMATION),
    ),
    (
        "diagnoser",
        "poddiskusagediagnoser",
        "pod-disk-usage-diagnoser",
        None,
    ),
    (
        "diagnoser",
        "terminatingpoddiagnoser",
        "terminating-pod-diagnoser",
        None,
    ),
    ("recoverer", "signalrecoverer", "signal-recoverer", None),
];

/// The built-in and context key Kube Diagnoser's `/<kind>/<processor>` names.
pub fn builtin_of(kind: &str, processor: &str) -> Option<(&'static str, Option<&'static str>)> {
    PATHS
        .iter()
        .find(|(k, p, _, _)| *k == kind && *p == processor)
        .map(|(_, _, name, key)| (*name, *key))
}

/// Kube Diagnoser's agent routes; `None` in a process without an agent.
pub fn routes(processors: Option<ProcessorService>) -> Routes {
    // The path is checked before the method, so a path that names nothing is 404, not 405.
    let known =
        warp::path!(String / String).and_then(|kind: String, processor: String| async move {
            builtin_of(&kind, &processor).ok_or_else(warp::reject::not_found)
        });
    let svc = processors.clone();
    let post = known
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and(authorization())
        .then(
            move |(name, _): (&'static str, Option<&'static str>),
                  body: Bytes,
                  auth: Option<String>| {
                let svc = svc.clone();
                async move { run_processor(svc, name.into(), body, auth).await }
            },
        );
    let svc = processors.clone();
    let get = known.and(warp::get()).and(authorization()).then(
        move |(name, key): (&'static str, Option<&'static str>), auth: Option<String>| {
            let svc = svc.clone();
            async move { as_array(svc, name, key, auth).await }
        },
    );
    let method = known
        .and(other_method(&[Method::GET, Method::POST]))
        .map(|_| {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST with an Abnormal (or GET on a collector)".into(),
            )
        });
    let svc = processors;
    let list = warp::path!(String)
        .and_then(|kind: String| async move {
            match kind.as_str() {
                "informationcollector" | "diagnoser" | "recoverer" => Ok(kind),
                _ => Err(warp::reject::not_found()),
            }
        })
        .and(warp::get())
        .and(authorization())
        .then(move |kind: String, auth: Option<String>| {
            let svc = svc.clone();
            async move { registrations(svc, &kind, auth).await }
        });
    post.or(get)
        .unify()
        .or(method)
        .unify()
        .or(list)
        .unify()
        .boxed()
}

/// A collector's GET, as Kube Diagnoser answered it: the value under its context key (`[]` when
/// it found nothing). A diagnoser's GET is 405, a recoverer's 403.
async fn as_array(
    svc: Option<ProcessorService>,
    name: &str,
    key: Option<&str>,
    authorization: Option<String>,
) -> warp::reply::Response {
    let mut context = match collected(svc, name, authorization).await {
        Ok(context) => context,
        Err(refusal) => return refusal,
    };
    let value = key
        .and_then(|k| context.remove(k))
        .unwrap_or_else(|| serde_json::json!([]));
    warp::reply::json(&value).into_response()
}

/// `GET /informationcollector` (or `/diagnoser`, `/recoverer`): the registrations of that kind in
/// every namespace, as Kube Diagnoser listed them from its cache. Needs the node-wide right.
async fn registrations(
    svc: Option<ProcessorService>,
    kind: &str,
    authorization: Option<String>,
) -> warp::reply::Response {
    let Some(svc) = svc else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process serves no processors".into(),
        );
    };
    if let Err(refusal) = allowed(
        &svc,
        &access::Request::Registrations,
        authorization.as_deref(),
    )
    .await
    {
        return refused(refusal);
    }
    let lp = ListParams::default();
    let listed = match kind {
        "informationcollector" => Api::<InformationCollector>::all(svc.client.clone())
            .list(&lp)
            .await
            .map(|l| serde_json::to_value(l.items)),
        "diagnoser" => Api::<Diagnoser>::all(svc.client.clone())
            .list(&lp)
            .await
            .map(|l| serde_json::to_value(l.items)),
        _ => Api::<Recoverer>::all(svc.client.clone())
            .list(&lp)
            .await
            .map(|l| serde_json::to_value(l.items)),
    };
    match listed {
        Ok(Ok(items)) => warp::reply::json(&items).into_response(),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to list {kind} registrations: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kube_diagnoser_path_names_a_built_in_and_other_paths_none() {
        let builtins = kdiag_runtime::builtin::Builtins::standard();
        for (kind, processor, name, _) in PATHS {
            assert_eq!(builtin_of(kind, processor).map(|b| b.0), Some(*name));
            assert!(builtins.get(name).is_some(), "{name} is not a built-in");
        }
        assert_eq!(builtin_of("processor", "pod-collector"), None);
        assert_eq!(builtin_of("diagnoser", "podcollector"), None);
    }
}
