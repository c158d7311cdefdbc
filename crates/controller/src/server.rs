//! The HTTP server every kdiag process runs (port 10357 by default): /metrics, /healthz,
//! /readyz and, on agents, the built-in processors over the plugin protocol and profiles.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kdiag_api::Abnormal;
use kdiag_api::plugin::{ProcessorContext, ProcessorError};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::builtin::Builtins;
use crate::metrics::Metrics;

/// The default port, as in Kube Diagnoser.
pub const DEFAULT_PORT: u16 = 10357;
/// The most an Abnormal posted to a built-in may weigh.
const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

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
}

/// What the server shows.
#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    /// Run before each scrape to update gauges computed from caches.
    pub refresh: Arc<dyn Fn() + Send + Sync>,
    /// Ready when all of these are true (their watches have synced).
    pub ready: Vec<(String, Arc<AtomicBool>)>,
    pub processors: Option<ProcessorService>,
    /// Accept KubeProber's result reports at POST /probe-status (the controller does).
    pub probe_reports: Option<kube::Client>,
    /// Accept Prometheus/Alertmanager alerts (the controller does).
    pub alerts: Option<Arc<crate::sources::alerts::AlertSource>>,
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
                format!("not ready: waiting for {} to sync", waiting.join(", ")),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });
    let svc = state.processors.clone();
    let post_processor = warp::path!("processor" / String)
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and_then(move |name: String, body: Bytes| {
            let svc = svc.clone();
            async move { Ok::<_, Rejection>(run_processor(svc, name, body).await) }
        });
    let svc = state.processors.clone();
    let get_processor =
        warp::path!("processor" / String)
            .and(warp::get())
            .and_then(move |name: String| {
                let svc = svc.clone();
                async move { Ok::<_, Rejection>(raw_data(svc, name).await) }
            });
    let other_method = warp::path!("processor" / String).map(|_| {
        warp::reply::with_status(
            "use POST with an Abnormal (or GET on a collector)".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
        )
    });
    let reports = state.probe_reports.clone();
    let probe_status = warp::path!("probe-status")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and_then(move |body: Bytes| {
            let reports = reports.clone();
            async move { Ok::<_, Rejection>(probe_report(reports, body).await) }
        });
    let alerts = state.alerts.clone();
    let alert_routes = warp::path!("api" / String / String)
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and_then(
            move |version: String, endpoint: String, auth: Option<String>, body: Bytes| {
                let alerts = alerts.clone();
                async move {
                    Ok::<_, Rejection>(
                        receive_alerts(alerts, &version, &endpoint, auth, body).await,
                    )
                }
            },
        );
    let profiles_dir = state
        .processors
        .as_ref()
        .map(|p| p.data_root.join("profiles"))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let profiles = warp::path("profiles")
        .and(warp::get())
        .and(warp::fs::dir(profiles_dir));

    metrics
        .or(healthz)
        .or(readyz)
        .or(post_processor)
        .or(get_processor)
        .or(probe_status)
        .or(alert_routes)
        .or(other_method)
        .or(profiles)
        .recover(|_rej: Rejection| async {
            Ok::<_, Infallible>(warp::reply::with_status(
                "not found".to_owned(),
                StatusCode::NOT_FOUND,
            ))
        })
}

fn text(status: StatusCode, message: String) -> warp::reply::Response {
    warp::reply::with_status(message, status).into_response()
}

/// The plugin protocol for a built-in: the whole Abnormal in, the whole Abnormal out.
async fn run_processor(
    svc: Option<ProcessorService>,
    name: String,
    body: Bytes,
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
    let mut abnormal: Abnormal = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the body is not an Abnormal in JSON: {e}"),
            );
        }
    };
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

/// Alerts: `POST /api/v2/alerts` and `/api/v1/alerts` (Alertmanager's API, as Prometheus pushes),
/// `POST /api/v1/webhook` (Alertmanager's webhook receiver).
async fn receive_alerts(
    alerts: Option<Arc<crate::sources::alerts::AlertSource>>,
    version: &str,
    endpoint: &str,
    auth: Option<String>,
    body: Bytes,
) -> warp::reply::Response {
    use crate::sources::alerts::{parse_alerts, parse_webhook};
    let Some(source) = alerts else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process takes no alerts (the controller does)".into(),
        );
    };
    if let Some(token) = &source.token {
        let presented = auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim);
        if presented != Some(token.as_str()) {
            return text(
                StatusCode::UNAUTHORIZED,
                "alerts need Authorization: Bearer <token> (see docs/sources.md)".into(),
            );
        }
    }
    let parsed = match (version, endpoint) {
        ("v1" | "v2", "alerts") => parse_alerts(&body),
        ("v1", "webhook") => parse_webhook(&body),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "alert endpoints: POST /api/v2/alerts, /api/v1/alerts, /api/v1/webhook".into(),
            );
        }
    };
    let alerts = match parsed {
        Ok(a) => a,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let via = if endpoint == "webhook" {
        "webhook"
    } else {
        "push"
    };
    match source.deliver(alerts, via).await {
        Ok(summary) => warp::reply::json(&summary).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A checker's results (KubeProber's SDK payload): 200 when stored, 400 for a bad payload (the
/// SDK does not retry those), 500 when the apiserver write failed (the SDK retries).
async fn probe_report(client: Option<kube::Client>, body: Bytes) -> warp::reply::Response {
    let Some(client) = client else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process takes no probe reports (the controller does)".into(),
        );
    };
    let report = match crate::probes::report::parse(&body, &crate::time::now()) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    match crate::probes::report::apply(&client, &report).await {
        Ok(()) => warp::reply::json(&serde_json::json!({"success": true})).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A collector's data as plain JSON (Kube Diagnoser's GET on collectors).
async fn raw_data(svc: Option<ProcessorService>, name: String) -> warp::reply::Response {
    let Some(svc) = svc else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process serves no processors".into(),
        );
    };
    let Some(processor) = svc.builtins.get(&name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no built-in processor {name:?}"),
        );
    };
    if !name.ends_with("-collector") {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{name} is not a collector; POST an Abnormal to it"),
        );
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
        Ok(Ok(out)) => warp::reply::json(&out.context).into_response(),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("timed out after {timeout:?}"),
        ),
    }
}
