//! The HTTP server every kdiag process runs (port 10357 by default): /metrics, /healthz and
//! /readyz here, and the routes of the roles the process runs, handed in by them: on agents the
//! built-in processors over the plugin protocol and profiles (`kdiag_agent::server`), on the
//! controller probe reports and alerts (`kdiag_controller::server`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::metrics::Metrics;

/// The default port, as in Kube Diagnoser.
pub const DEFAULT_PORT: u16 = 10357;
/// The most an Abnormal posted to a built-in, or a report or alert, may weigh.
pub const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

/// Routes a role adds to the server. Every request the base routes do not answer is offered to
/// them; what none answers is 404.
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
        .or(state.routes)
        .recover(|_rej: Rejection| async {
            Ok::<_, Infallible>(warp::reply::with_status(
                "not found".to_owned(),
                StatusCode::NOT_FOUND,
            ))
        })
}

/// A plain-text reply.
pub fn text(status: StatusCode, message: String) -> warp::reply::Response {
    warp::reply::with_status(message, status).into_response()
}
