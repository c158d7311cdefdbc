//! The HTTP server every kdiag process runs (port 10357 by default): /metrics, /healthz and
//! /readyz here, and the routes of the roles the process runs, handed in by them: on agents the
//! built-in processors over the plugin protocol and profiles (`kdiag_agent::server`), on the
//! controller probe reports and alerts (`kdiag_controller::server`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use warp::filters::BoxedFilter;
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::metrics::Metrics;

/// The default port, as in Kube Diagnoser.
pub const DEFAULT_PORT: u16 = 10357;
/// The most an Abnormal posted to a built-in, or a report or alert, may weigh.
pub const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

/// Routes a role adds to the server. Every request the base routes do not answer is offered to
/// them; what none answers gets the status of why ([`rejection`]): 413 for a body over
/// [`MAX_REQUEST_BYTES`], 405 for a path that takes another method, 404 for a path nobody serves.
pub type Routes = BoxedFilter<(warp::reply::Response,)>;

/// The routes of `first`, then those of `second` (for a process that runs several roles, or to
/// answer a role's paths with "not here").
pub fn join(first: Routes, second: Routes) -> Routes {
    first.or(second).unify().boxed()
}

/// What the server shows.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    /// Run before each scrape to update gauges computed from caches.
    pub refresh: Arc<dyn Fn() + Send + Sync>,
    /// Ready when all of these are true; /readyz names those that are not ("waiting for NAME").
    pub ready: Vec<(String, Arc<AtomicBool>)>,
    /// The routes of the roles this process runs.
    pub routes: Routes,
}

/// Serves until `shutdown` resolves. Fails only if the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<impl std::future::Future<Output = ()>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %addr, "HTTP server listening (/metrics, /healthz, /readyz)");
    let routes = routes(state);
    Ok(warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run())
}

/// All routes; public for tests that drive them with warp's test client.
pub fn routes(
    state: ServerState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let s = state.clone();
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        (s.refresh)();
        warp::reply::with_header(
            s.metrics.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
    });
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");
    let base_methods = warp::path!("metrics")
        .or(warp::path!("healthz"))
        .unify()
        .or(warp::path!("readyz"))
        .unify()
        .and(other_method(&[Method::GET]))
        .map(|| text(StatusCode::METHOD_NOT_ALLOWED, "use GET".into()));
    let s = state.clone();
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let waiting: Vec<&str> = s
            .ready
            .iter()
            .filter(|(_, r)| !r.load(Ordering::Acquire))
            .map(|(n, _)| n.as_str())
            .collect();
        if waiting.is_empty() {
            warp::reply::with_status("ok".to_owned(), StatusCode::OK)
        } else {
            warp::reply::with_status(
                format!("not ready: waiting for {}", waiting.join(", ")),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });

    metrics
        .or(healthz)
        .or(readyz)
        .or(base_methods)
        .or(state.routes)
        .recover(|rej: Rejection| async move { Ok::<_, Infallible>(rejection(&rej)) })
}

/// The answer to a request no route took, with the status of why. Of several reasons (each route
/// that declined gives one), the one warp prefers is answered: a specific one over "wrong method"
/// over "not found".
pub fn rejection(rej: &Rejection) -> warp::reply::Response {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };
    if let Some(refusal) = rej.find::<crate::auth::Refusal>() {
        return refusal.response();
    }
    let (status, message) = if rej.find::<UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request's Content-Type is not supported; send application/json".to_owned(),
        )
    } else if rej.find::<PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over kdiag's limit of {} MiB ({MAX_REQUEST_BYTES} bytes); send less per request",
                MAX_REQUEST_BYTES / (1024 * 1024)
            ),
        )
    } else if rej.find::<LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            format!(
                "the request needs a Content-Length header (bodies are limited to {MAX_REQUEST_BYTES} bytes)"
            ),
        )
    } else if let Some(h) = rej.find::<MissingHeader>() {
        (
            StatusCode::BAD_REQUEST,
            format!("the request lacks the header {}", h.name()),
        )
    } else if let Some(h) = rej.find::<InvalidHeader>() {
        (
            StatusCode::BAD_REQUEST,
            format!("the request's header {} is not valid", h.name()),
        )
    } else if rej.find::<InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "the request's query string is not valid".to_owned(),
        )
    } else if rej.find::<MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "this path does not take that method".to_owned(),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "not found: this server answers /metrics, /healthz, /readyz and the routes of its role (docs/metrics.md)".to_owned(),
        )
    };
    text(status, message)
}

/// Passes requests whose method is not one of `allowed` (to answer them 405 with a message that
/// says what the path takes); declines the others, so an allowed method's own rejection (a body
/// too large, say) is what gets answered.
pub fn other_method(
    allowed: &'static [Method],
) -> impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and_then(move |m: Method| async move {
            if allowed.contains(&m) {
                Err(warp::reject::not_found())
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

/// A plain-text reply.
pub fn text(status: StatusCode, message: String) -> warp::reply::Response {
    warp::reply::with_status(message, status).into_response()
}
