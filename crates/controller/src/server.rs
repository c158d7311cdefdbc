//! The controller's routes on the HTTP server (`kdiag_runtime::server`): KubeProber's result
//! reports (`POST /probe-status`), the release gate over them (`GET /gate`) and
//! Prometheus/Alertmanager alerts (`POST /api/...`). A process without them answers these paths
//! with what it does not take.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kdiag_runtime::server::{MAX_REQUEST_BYTES, Routes, other_method, text};
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection, Reply};

/// The controller's routes: probe reports written with `probe_reports`, alerts handed to
/// `alerts`; `None` for either in a process that does not take them, which then says so.
pub fn routes(
    probe_reports: Option<Arc<crate::probes::report::ProbeReports>>,
    alerts: Option<Arc<crate::sources::alerts::AlertSource>>,
) -> Routes {
    let reports = probe_reports;
    let gate_reports = reports.clone();
    let gate = warp::path!("gate")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(
            move |auth: Option<String>, params: HashMap<String, String>| {
                let reports = gate_reports.clone();
                async move { Ok::<_, Rejection>(gate_answer(reports, auth, params).await) }
            },
        );
    let probe_status = warp::path!("probe-status")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and_then(move |auth: Option<String>, body: Bytes| {
            let reports = reports.clone();
            async move { Ok::<_, Rejection>(probe_report(reports, auth, body).await) }
        });
    let alert_routes = warp::path!("api" / String / String)
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>(
            crate::leader::FORWARDED_HEADER,
        ))
        .and(warp::body::content_length_limit(MAX_REQUEST_BYTES))
        .and(warp::body::bytes())
        .and_then(
            move |version: String,
                  endpoint: String,
                  auth: Option<String>,
                  content_type: Option<String>,
                  forwarded_by: Option<String>,
                  body: Bytes| {
                let alerts = alerts.clone();
                async move {
                    let delivery = Delivery {
                        auth,
                        content_type,
                        forwarded_by,
                        body,
                    };
                    Ok::<_, Rejection>(receive_alerts(alerts, &version, &endpoint, delivery).await)
                }
            },
        );

    // Any other method on these paths: 405 with what they take (a POST's own rejection, such as
    // a body over the limit, is answered as such).
    let probe_status_method = warp::path!("probe-status")
        .and(other_method(&[Method::POST]))
        .map(|| {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a KubeProber checker report (JSON) to /probe-status".into(),
            )
        });
    let alert_method = warp::path!("api" / String / String)
        .and(other_method(&[Method::POST]))
        .map(|_, _| {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST alerts to /api/v2/alerts, /api/v1/alerts or /api/v1/webhook".into(),
            )
        });

    let gate_method = warp::path!("gate")
        .and(other_method(&[Method::GET]))
        .map(|| {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET /gate?namespace=<ns>[&probes=a,b|&selector=k=v][&maxAge=10m]".into(),
            )
        });

    probe_status
        .or(alert_routes)
        .map(Reply::into_response)
        .or(gate)
        .unify()
        .or(gate_method)
        .unify()
        .or(probe_status_method)
        .unify()
        .or(alert_method)
        .unify()
        .boxed()
}

/// Whether an alert delivery with this Authorization header is taken: with a token configured,
/// only when it carries that token (compared in constant time); without one, only when
/// unauthenticated alerts were explicitly allowed. Err says what to do.
pub fn alert_sender_allowed(
    token: Option<&str>,
    allow_unauthenticated: bool,
    authorization: Option<&str>,
) -> Result<(), String> {
    let Some(token) = token else {
        return if allow_unauthenticated {
            Ok(())
        } else {
            Err("alerts are refused: this controller has no alert token. Set KDIAG_ALERT_TOKEN (from a Secret) and send it as Authorization: Bearer <token>, or start the controller with --alerts-allow-unauthenticated to take alerts from anyone who can reach it (docs/sources.md)".into())
        };
    };
    let presented = authorization
        .and_then(|a| {
            let (scheme, rest) = a.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err("alerts need Authorization: Bearer <token> with the controller's alert token (see docs/sources.md)".into())
    }
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Alerts: `POST /api/v2/alerts` and `/api/v1/alerts` (Alertmanager's API, as Prometheus pushes),
/// `POST /api/v1/webhook` (Alertmanager's webhook receiver).
/// One POST of alerts, as received.
struct Delivery {
    auth: Option<String>,
    content_type: Option<String>,
    /// The standby that handed it on, if one did.
    forwarded_by: Option<String>,
    body: Bytes,
}

async fn receive_alerts(
    alerts: Option<Arc<crate::sources::alerts::AlertSource>>,
    version: &str,
    endpoint: &str,
    delivery: Delivery,
) -> warp::reply::Response {
    let Delivery {
        auth,
        content_type,
        forwarded_by,
        body,
    } = delivery;
    use crate::sources::alerts::{parse_alerts, parse_webhook};
    let Some(source) = alerts else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process takes no alerts (the controller does)".into(),
        );
    };
    let webhook = match (version, endpoint) {
        ("v1" | "v2", "alerts") => false,
        ("v1", "webhook") => true,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "alert endpoints: POST /api/v2/alerts, /api/v1/alerts, /api/v1/webhook".into(),
            );
        }
    };
    if let Err(why) = alert_sender_allowed(
        source.token.as_deref(),
        source.allow_unauthenticated,
        auth.as_deref(),
    ) {
        return text(StatusCode::UNAUTHORIZED, why);
    }
    // A standby hands the delivery to the leader, whose storm budgets count it. Prometheus and
    // Alertmanager resend on 5xx, so a delivery that cannot be handed on now is not lost.
    if !source.leader.is_leader() {
        if let Some(by) = forwarded_by {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{by} handed these alerts to this replica, which does not lead (leadership is changing); retry"
                ),
            );
        }
        let path = format!("/api/{version}/{endpoint}");
        return match source
            .leader
            .forward(&path, auth.as_deref(), content_type.as_deref(), body)
            .await
        {
            Ok((status, answer)) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                warp::reply::with_status(
                    warp::reply::with_header(answer.to_vec(), "content-type", "application/json"),
                    status,
                )
                .into_response()
            }
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        };
    }
    let parsed = if webhook {
        parse_webhook(&body)
    } else {
        parse_alerts(&body)
    };
    let alerts = match parsed {
        Ok(a) => a,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let via = if endpoint == "webhook" {
        "webhook"
    } else {
        "push"
    };
    match source.deliver(alerts, via).await {
        // Alerts naming nodes that do not exist were refused (and created nothing): 422, with
        // what the others did. Neither Prometheus nor Alertmanager resends a 4xx.
        Ok(summary) if !summary.refused.is_empty() => warp::reply::with_status(
            warp::reply::json(&summary),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .into_response(),
        Ok(summary) => warp::reply::json(&summary).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A checker's results (KubeProber's SDK payload): 200 when stored, 400 for a bad payload (the
/// SDK does not retry those), 401/403 for a sender that is not the probe's checker pod, 422 for
/// nodes that do not exist, 500 when the apiserver write failed (the SDK retries).
async fn probe_report(
    reports: Option<Arc<crate::probes::report::ProbeReports>>,
    auth: Option<String>,
    body: Bytes,
) -> warp::reply::Response {
    let Some(reports) = reports else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process takes no probe reports (the controller does)".into(),
        );
    };
    match reports.receive(auth.as_deref(), &body).await {
        (StatusCode::OK, _) => {
            warp::reply::json(&serde_json::json!({"success": true})).into_response()
        }
        (StatusCode::UNAUTHORIZED, message) => warp::reply::with_header(
            text(StatusCode::UNAUTHORIZED, message),
            "www-authenticate",
            "Bearer realm=\"kdiag\"",
        )
        .into_response(),
        (status, message) => text(status, message),
    }
}

/// The release gate (`crate::probes::gate`): 200 with the verdict, or 400/401/403/503 with why
/// there is none. It is served by the process that takes probe reports, with their client.
async fn gate_answer(
    reports: Option<Arc<crate::probes::report::ProbeReports>>,
    auth: Option<String>,
    params: HashMap<String, String>,
) -> warp::reply::Response {
    let Some(reports) = reports else {
        return text(
            StatusCode::NOT_FOUND,
            "this kdiag process serves no release gate (the controller does)".into(),
        );
    };
    match crate::probes::gate::answer(
        &reports.client,
        &reports.authorizer,
        auth.as_deref(),
        &params,
    )
    .await
    {
        Ok(verdict) => warp::reply::json(&verdict).into_response(),
        Err((StatusCode::UNAUTHORIZED, message)) => warp::reply::with_header(
            text(StatusCode::UNAUTHORIZED, message),
            "www-authenticate",
            "Bearer realm=\"kdiag\"",
        )
        .into_response(),
        Err((status, message)) => text(status, message),
    }
}

/// Kube Diagnoser's master's `/clusterhealth`, answered as it answered with its cluster health
/// evaluator turned off (422, any method): kdiag scores no cluster health, so a client polling it
/// learns that at once instead of getting a 404 it might retry.
pub fn cluster_health() -> Routes {
    warp::path!("clusterhealth")
        .map(|| {
            text(
                StatusCode::UNPROCESSABLE_ENTITY,
                "cluster health evaluator is not enabled: kdiag does not score cluster health; run a Probe with kdiag's native checks (apiserver, nodes) instead, see docs/probes.md".into(),
            )
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::alert_sender_allowed;

    #[test]
    fn alerts_without_a_configured_token_are_refused_unless_explicitly_allowed() {
        let why = alert_sender_allowed(None, false, None).unwrap_err();
        assert!(
            why.contains("KDIAG_ALERT_TOKEN") && why.contains("--alerts-allow-unauthenticated"),
            "{why}"
        );
        assert!(alert_sender_allowed(None, false, Some("Bearer anything")).is_err());
        assert!(alert_sender_allowed(None, true, None).is_ok());
    }

    #[test]
    fn alerts_with_a_configured_token_need_exactly_that_token() {
        assert!(alert_sender_allowed(Some("s3cret"), false, Some("Bearer s3cret")).is_ok());
        assert!(alert_sender_allowed(Some("s3cret"), true, Some("bearer s3cret")).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let why = alert_sender_allowed(Some("s3cret"), true, wrong).unwrap_err();
            assert!(why.contains("Bearer <token>"), "{wrong:?}: {why}");
        }
    }
}
