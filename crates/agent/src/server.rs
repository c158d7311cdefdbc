//! The agent's routes on the HTTP server (`kdiag_runtime::server`): the built-in processors over
//! the plugin protocol (`/processor/<name>`) and the profiles it keeps (`/profiles/...`). A
//! process without an agent answers these paths with what it does not serve.
//!
//! Every one of these routes needs a bearer token whose user has the right `access::required`
//! names, checked by `kdiag_runtime::auth` (401 without or with a bad token, 403 naming the
//! missing right, 503 when the apiserver cannot be asked). Recoverers are never served.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kdiag_api::Abnormal;
use kdiag_api::plugin::{ProcessorContext, ProcessorError};
use kdiag_runtime::auth::{Authorizer, Refusal};
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::server::{MAX_REQUEST_BYTES, Routes, other_method, text};
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::access;

/// Built-in processors served over HTTP, as the agent runs them.
#[derive(Clone)]
pub struct ProcessorService {
    pub builtins: Builtins,
    pub client: kube::Client,
    pub node_name: String,
    pub max_output_bytes: usize,
    pub node: std::sync::Arc<kdiag_api::plugin::NodeEnvironment>,
    /// Where profiles are kept; served under /profiles/.
    pub data_root: PathBuf,
    /// Checks each caller's token and rights with the apiserver.
    pub authorizer: Arc<Authorizer>,
}

/// The Authorization header of a request, if it has one.
pub(crate) fn authorization()
-> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or_else(|_| async { Ok::<_, std::convert::Infallible>((None,)) })
}

/// The agent's routes; `None` in a process without an agent, which then says so.
pub fn routes(processors: Option<ProcessorService>) -> Routes {
    let svc = processors.clone();
    let post_processor = warp::path!("processor" / String)
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and(authorization())
        .and_then(move |name: String, body: Bytes, auth: Option<String>| {
            let svc = svc.clone();
            async move { Ok::<_, Rejection>(run_processor(svc, name, body, auth).await) }
        });
    let svc = processors.clone();
    let get_processor = warp::path!("processor" / String)
        .and(warp::get())
        .and(authorization())
        .and_then(move |name: String, auth: Option<String>| {
            let svc = svc.clone();
            async move { Ok::<_, Rejection>(raw_data(svc, name, auth).await) }
        });
    let processor_method = warp::path!("processor" / String)
        .and(other_method(&[Method::GET, Method::POST]))
        .map(|_| {
            warp::reply::with_status(
                "use POST with an Abnormal (or GET on a collector)".to_owned(),
                StatusCode::METHOD_NOT_ALLOWED,
            )
        });
    let profiles_dir = processors
        .as_ref()
        .map(|p| p.data_root.join("profiles"))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    // Checked before warp serves the file; `peek` leaves the path to `fs::dir`.
    let svc = processors.clone();
    let profiles = warp::path("profiles")
        .and(warp::get())
        .and(warp::path::peek())
        .and(authorization())
        .and_then(move |path: warp::path::Peek, auth: Option<String>| {
            let svc = svc.clone();
            async move {
                let Some(svc) = svc else {
                    return Err(warp::reject::not_found());
                };
                let request = access::Request::Profile {
                    path: path.as_str(),
                };
                match allowed(&svc, &request, auth.as_deref()).await {
                    Ok(()) => Ok(()),
                    Err((status, message)) => {
                        Err(warp::reject::custom(Refusal { status, message }))
                    }
                }
            }
        })
        .untuple_one()
        .and(warp::fs::dir(profiles_dir));
    let profiles_method = warp::path("profiles")
        .and(other_method(&[Method::GET, Method::HEAD]))
        .map(|| {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "profiles are read with GET".into(),
            )
        });

    post_processor
        .or(get_processor)
        .or(processor_method)
        .or(profiles)
        .map(Reply::into_response)
        .or(profiles_method)
        .unify()
        .boxed()
}

/// Whether the caller may make `request`: Ok, or the status and message to answer.
pub(crate) async fn allowed(
    svc: &ProcessorService,
    request: &access::Request<'_>,
    authorization: Option<&str>,
) -> Result<(), (StatusCode, String)> {
    match access::required(request, &svc.node_name) {
        access::Access::Refused(why) => Err((StatusCode::FORBIDDEN, why)),
        access::Access::Needs(right) => match svc.authorizer.check(authorization, &right).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let refusal = Refusal::of(&e);
                Err((refusal.status, refusal.message))
            }
        },
    }
}

/// The answer to a refused request (401 with `WWW-Authenticate`, 403, 503).
pub(crate) fn refused((status, message): (StatusCode, String)) -> warp::reply::Response {
    Refusal { status, message }.response()
}

/// The plugin protocol for a built-in: the whole Abnormal in, the whole Abnormal out.
pub(crate) async fn run_processor(
    svc: Option<ProcessorService>,
    name: String,
    body: Bytes,
    authorization: Option<String>,
) -> warp::reply::Response {
    let Some(svc) = svc else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process serves no processors (only agents do)".into(),
        );
    };
    let Some(processor) = svc.builtins.get(&name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no built-in processor {name:?}; built-ins: {}",
                svc.builtins.names().join(", ")
            ),
        );
    };
    let recoverer = svc.builtins.is_recoverer(&name);
    if recoverer {
        // Refused before the body is read: nobody may, so nobody is asked about.
        let placeholder = Abnormal::new("-", Default::default());
        let request = access::Request::Run {
            name: &name,
            recoverer,
            abnormal: &placeholder,
        };
        if let Err(refusal) = allowed(&svc, &request, authorization.as_deref()).await {
            return refused(refusal);
        }
    }
    let mut abnormal: Abnormal = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the body is not an Abnormal in JSON: {e}"),
            );
        }
    };
    let request = access::Request::Run {
        name: &name,
        recoverer,
        abnormal: &abnormal,
    };
    if let Err(refusal) = allowed(&svc, &request, authorization.as_deref()).await {
        return refused(refusal);
    }
    let timeout = Duration::from_secs(30);
    let ctx = ProcessorContext {
        node_name: svc.node_name.clone(),
        client: svc.client.clone(),
        timeout,
        max_output_bytes: svc.max_output_bytes,
        node: svc.node.clone(),
    };
    let result = match tokio::time::timeout(timeout, processor.process(&ctx, &abnormal)).await {
        Ok(r) => r,
        Err(_) => Err(ProcessorError::Timeout(timeout)),
    };
    match result {
        Ok(out) => {
            let status = abnormal.status.get_or_insert_default();
            status.context.get_or_insert_default().extend(out.context);
            if out.root_cause.is_some() {
                status.root_cause = out.root_cause;
            }
            warp::reply::json(&abnormal).into_response()
        }
        Err(e @ ProcessorError::InvalidInput(_)) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A collector's data as plain JSON (Kube Diagnoser's GET on collectors).
async fn raw_data(
    svc: Option<ProcessorService>,
    name: String,
    authorization: Option<String>,
) -> warp::reply::Response {
    match collected(svc, &name, authorization).await {
        Ok(context) => warp::reply::json(&context).into_response(),
        Err(refusal) => refusal,
    }
}

/// What collector `name` collects about the node without an Abnormal, as its context map; or the
/// answer that refuses it (not served here, no such collector, not a collector, no right, failed).
pub(crate) async fn collected(
    svc: Option<ProcessorService>,
    name: &str,
    authorization: Option<String>,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, warp::reply::Response> {
    let Some(svc) = svc else {
        return Err(text(
            StatusCode::NOT_FOUND,
            "this kdiag process serves no processors".into(),
        ));
    };
    let Some(processor) = svc.builtins.get(name) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("no built-in processor {name:?}"),
        ));
    };
    let request = access::Request::RawData {
        name,
        recoverer: svc.builtins.is_recoverer(name),
    };
    if let access::Access::Refused(why) = access::required(&request, &svc.node_name) {
        return Err(text(StatusCode::FORBIDDEN, why));
    }
    if !name.ends_with("-collector") {
        return Err(text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{name} is not a collector; POST an Abnormal to it"),
        ));
    }
    if let Err(refusal) = allowed(&svc, &request, authorization.as_deref()).await {
        return Err(refused(refusal));
    }
    let mut abnormal = Abnormal::new("raw-data", Default::default());
    abnormal.spec.node_name = svc.node_name.clone();
    let timeout = Duration::from_secs(30);
    let ctx = ProcessorContext {
        node_name: svc.node_name.clone(),
        client: svc.client.clone(),
        timeout,
        max_output_bytes: svc.max_output_bytes,
        node: svc.node.clone(),
    };
    match tokio::time::timeout(timeout, processor.process(&ctx, &abnormal)).await {
        Ok(Ok(out)) => Ok(out.context),
        Ok(Err(e)) => Err(text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(_) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("timed out after {timeout:?}"),
        )),
    }
}
