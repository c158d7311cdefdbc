//! Prometheus alert sources, served by the controller: Alertmanager's API (`POST /api/v2/alerts`,
//! and v1 as Kube Diagnoser had, so Prometheus can push straight to kdiag) and Alertmanager's
//! webhook receiver (`POST /api/v1/webhook`). An alert matches PrometheusAlert templates; its
//! node is the label the template names. One Abnormal per firing: its name is derived from the
//! alert's fingerprint and startsAt, so a redelivery, also after a controller restart, finds the
//! Abnormal instead of making another.

use std::collections::BTreeMap;
use std::hash::Hasher as _;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::{Abnormal, AbnormalSource, AbnormalSourceType, PrometheusAlert};
use kdiag_pipeline::hash::{FnvHasher, fnv1a};
use kdiag_pipeline::templates::{CompiledSource, Facts, compile, order, select, slug};
use kube::runtime::reflector::Store;
use serde::{Deserialize, Serialize};

use super::sink::{Outcome, Sink};
use crate::Error;

const KIND: &str = "PrometheusAlert";

/// One alert as Prometheus pushes it and Alertmanager forwards it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    /// Webhook payloads: "firing" or "resolved".
    #[serde(default)]
    pub status: Option<String>,
    /// Webhook payloads carry it; pushed alerts get it computed.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Alertmanager's webhook payload (the fields kdiag uses).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    #[serde(default)]
    pub version: String,
    pub alerts: Vec<Alert>,
}

/// Parses `POST /api/v{1,2}/alerts`: a JSON array of alerts.
pub fn parse_alerts(body: &[u8]) -> Result<Vec<Alert>, Error> {
    let alerts: Vec<Alert> = serde_json::from_slice(body).map_err(|e| Error::AlertsNotJson {
        reason: e.to_string(),
    })?;
    validate(&alerts)?;
    Ok(alerts)
}

/// Parses Alertmanager's webhook payload.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<Alert>, Error> {
    let w: Webhook = serde_json::from_slice(body).map_err(|e| Error::WebhookNotJson {
        reason: e.to_string(),
    })?;
    if !w.version.is_empty() && w.version != "4" {
        return Err(Error::WebhookVersion { version: w.version });
    }
    validate(&w.alerts)?;
    Ok(w.alerts)
}

fn validate(alerts: &[Alert]) -> Result<(), Error> {
    for (i, a) in alerts.iter().enumerate() {
        if a.labels.get("alertname").is_none_or(|n| n.is_empty()) {
            return Err(Error::AlertWithoutName { index: i });
        }
        for (field, v) in [("startsAt", &a.starts_at), ("endsAt", &a.ends_at)] {
            if let Some(t) = v.as_deref().filter(|t| !t.is_empty())
                && t.parse::<Timestamp>().is_err()
            {
                return Err(Error::AlertTime {
                    index: i,
                    field,
                    value: t.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Prometheus' fingerprint of a label set (FNV-1a over sorted names and values, 0xff separated),
/// as Alertmanager computes and reports it.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = FnvHasher::default();
    for (k, v) in labels {
        h.write(k.as_bytes());
        h.write_u8(255);
        h.write(v.as_bytes());
        h.write_u8(255);
    }
    format!("{:016x}", h.finish())
}

/// The facts a PrometheusAlert template matches.
pub fn facts(a: &Alert) -> Facts {
    let mut f = Facts::new();
    f.insert(
        "alertName".into(),
        a.labels.get("alertname").cloned().unwrap_or_default(),
    );
    f.insert("startsAt".into(), a.starts_at.clone().unwrap_or_default());
    f.insert("endsAt".into(), a.ends_at.clone().unwrap_or_default());
    f.insert(
        "generatorURL".into(),
        a.generator_url.clone().unwrap_or_default(),
    );
    for (k, v) in &a.labels {
        f.insert(format!("labels.{k}"), v.clone());
    }
    // An alert belongs to the namespace its `namespace` label names, if any.
    if let Some(ns) = a.labels.get("namespace").filter(|n| !n.is_empty()) {
        f.insert(kdiag_pipeline::templates::SCOPE_FACT.into(), ns.clone());
    }
    for (k, v) in &a.annotations {
        f.insert(format!("annotations.{k}"), v.clone());
    }
    kdiag_pipeline::templates::add_go_times(&mut f);
    f
}

/// True when the alert says it has ended.
pub fn is_resolved(a: &Alert, now: Timestamp) -> bool {
    a.status.as_deref() == Some("resolved")
        || a.ends_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_some_and(|end| end <= now && end.as_second() > 0)
}

/// The node named by `label`; an `instance`-style `host:port` loses its port.
pub fn node_from(a: &Alert, label: &str) -> Option<String> {
    let v = a.labels.get(label)?.trim();
    let host = match v.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => v,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The Abnormal's name for one firing: alert name, fingerprint, and when it started.
pub fn abnormal_name(a: &Alert, fp: &str) -> String {
    // One instant, one name: Prometheus pushes milliseconds ("…00.120Z"), Alertmanager's webhook
    // trims their zeros ("…00.12Z"), so the time is hashed in one form (jiff's, as written when
    // whole seconds).
    let starts = a.starts_at.as_deref().unwrap_or_default();
    let h = fnv1a(
        starts
            .parse::<Timestamp>()
            .map_or_else(|_| starts.to_owned(), |t| t.to_string()),
    );
    format!(
        "alert-{}-{}-{:06x}",
        slug(
            a.labels
                .get("alertname")
                .map(String::as_str)
                .unwrap_or("alert"),
            60
        ),
        &fp[..10.min(fp.len())],
        h & 0xff_ffff
    )
}

/// Counts of what a delivery did, for its answer.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub created: usize,
    pub grouped: usize,
    pub suppressed: usize,
    pub resolved: usize,
    pub unmatched: usize,
    /// Alerts refused because the node they name is not a Node: what was wrong, one per alert.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

pub struct AlertSource {
    pub sink: Arc<Sink>,
    pub sources: Store<AbnormalSource>,
    /// Abnormals are created in this namespace (alerts have none of their own).
    pub namespace: String,
    /// Deliveries must carry `Authorization: Bearer <token>`; without a token they are refused
    /// unless `allow_unauthenticated`.
    pub token: Option<String>,
    /// Take deliveries from anyone when no token is set (an explicit opt-in).
    pub allow_unauthenticated: bool,
    /// Alerts are taken only for real nodes.
    pub nodes: Arc<crate::nodes::KnownNodes>,
    /// Only the leader takes alerts (its storm budgets count them); a standby hands them on.
    pub leader: crate::leader::LeaderView,
}

impl AlertSource {
    fn sources(&self) -> Vec<CompiledSource> {
        let mut v: Vec<CompiledSource> = self
            .sources
            .state()
            .iter()
            .filter(|s| s.spec.source_template.type_ == AbnormalSourceType::PrometheusAlert)
            .filter_map(|s| compile(s).ok())
            .collect();
        order(&mut v);
        v
    }

    /// Handles one delivery of alerts; `via` names the path (push, webhook) in the occurrences.
    pub async fn deliver(&self, alerts: Vec<Alert>, via: &str) -> Result<Summary, Error> {
        let sources = self.sources();
        let now = Timestamp::now();
        let mut summary = Summary::default();
        for alert in alerts {
            let fp = alert
                .fingerprint
                .clone()
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| fingerprint(&alert.labels));
            let name = abnormal_name(&alert, &fp);
            if is_resolved(&alert, now) {
                // Only an Abnormal this firing created is marked; nothing is created for an end.
                let ended = alert.ends_at.clone().unwrap_or_else(|| now.to_string());
                self.sink.resolve(&self.namespace, &name, &ended);
                summary.resolved += 1;
                continue;
            }
            let Some(source) = select(
                &sources,
                AbnormalSourceType::PrometheusAlert,
                &facts(&alert),
            )
            .cloned() else {
                summary.unmatched += 1;
                continue;
            };
            let label = source
                .spec
                .source_template
                .prometheus_alert_template
                .as_ref()
                .map(|t| t.node_name_reference_label.clone())
                .unwrap_or_default();
            let Some(node) = node_from(&alert, &label) else {
                self.sink.suppress(KIND, &source, "no-node");
                summary.suppressed += 1;
                continue;
            };
            // An invented node name creates nothing and takes no budget.
            if !self.nodes.exists(&node).await? {
                self.sink.suppress(KIND, &source, "unknown-node");
                summary.refused.push(
                    Error::UnknownNodes {
                        what: format!(
                            "alert {} (label {label})",
                            alert.labels.get("alertname").cloned().unwrap_or_default()
                        ),
                        nodes: node,
                        verb: "is",
                    }
                    .to_string(),
                );
                continue;
            }
            // Every delivery counts once: Prometheus and Alertmanager both resend while it fires.
            let delivery = format!("{fp}@{via}@{}", now.as_millisecond());
            if self.exists(&name).await? {
                self.sink
                    .record(&self.namespace, &name, &delivery, 1, &now.to_string());
                self.sink
                    .metrics
                    .controller
                    .suppressed
                    .with_label_values(&[KIND, "grouped"])
                    .inc();
                summary.grouped += 1;
                continue;
            }
            if self.sink.admit(KIND, &source, &node).is_err() {
                summary.suppressed += 1;
                continue;
            }
            let abnormal = self.build(&alert, &source, &name, &node, &fp);
            match self
                .sink
                .create(KIND, &source, &abnormal)
                .await
                .map_err(|e| {
                    Error::kube("creating", format!("Abnormal {}/{name}", self.namespace), e)
                })? {
                Outcome::Created(_) => summary.created += 1,
                _ => summary.grouped += 1,
            }
            self.sink
                .record(&self.namespace, &name, &delivery, 1, &now.to_string());
        }
        Ok(summary)
    }

    async fn exists(&self, name: &str) -> Result<bool, Error> {
        let api: kube::Api<Abnormal> =
            kube::Api::namespaced(self.sink.client.clone(), &self.namespace);
        api.get_opt(name)
            .await
            .map(|o| o.is_some())
            .map_err(|e| Error::kube("reading", format!("Abnormal {}/{name}", self.namespace), e))
    }

    fn build(
        &self,
        alert: &Alert,
        source: &CompiledSource,
        name: &str,
        node: &str,
        fp: &str,
    ) -> Abnormal {
        let time = |s: &Option<String>| {
            s.as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .filter(|t| t.as_second() > 0)
                .map(Time)
        };
        let mut spec = source.abnormal_spec();
        spec.source = AbnormalSourceType::PrometheusAlert;
        spec.node_name = node.to_owned();
        spec.prometheus_alert = Some(Box::new(PrometheusAlert {
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            starts_at: time(&alert.starts_at),
            ends_at: time(&alert.ends_at),
            generator_url: alert.generator_url.clone().unwrap_or_default(),
        }));
        let mut a = Abnormal::new(name, spec);
        a.metadata.namespace = Some(self.namespace.clone());
        a.metadata.labels = Some(
            [
                ("kdiag.io/source".to_owned(), KIND.to_owned()),
                ("kdiag.io/fingerprint".to_owned(), fp.to_owned()),
            ]
            .into(),
        );
        a
    }
}

/// The alert token in Secret `namespace/name` (key `token`); when there is no such Secret, one
/// is created with a random token (256 bits, hex). The error says what to do.
pub async fn ensure_alert_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, Error> {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let failed = |what: &str, e: kube::Error| Error::AlertTokenSecret {
        secret: format!("{namespace}/{name}"),
        reason: format!("{what}: {e}"),
    };
    let read = |s: Secret| -> Result<String, Error> {
        s.data
            .and_then(|d| d.get("token").cloned())
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::AlertTokenSecret {
                secret: format!("{namespace}/{name}"),
                reason: "it has no key token, or it is empty".into(),
            })
    };
    for _ in 0..3 {
        if let Some(s) = api
            .get_opt(name)
            .await
            .map_err(|e| failed("reading it", e))?
        {
            return read(s);
        }
        let token = kdiag_runtime::auth::random_token();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some([("app.kubernetes.io/part-of".to_owned(), "kdiag".to_owned())].into()),
                ..Default::default()
            },
            string_data: Some([("token".to_owned(), token.clone())].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&kube::api::PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created the alert token Secret with a random token; send it as Authorization: Bearer <token>");
                return Ok(token);
            }
            // Another controller made it first: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(failed("creating it", e)),
        }
    }
    Err(Error::AlertTokenSecret {
        secret: format!("{namespace}/{name}"),
        reason: "it kept appearing and disappearing".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_match_prometheus() {
        // Prometheus' own: model.LabelSet{"alertname": "NodeDown", "node": "n1"}.Fingerprint().
        let labels: BTreeMap<String, String> = [
            ("alertname".to_owned(), "NodeDown".to_owned()),
            ("node".to_owned(), "n1".to_owned()),
        ]
        .into();
        let fp = fingerprint(&labels);
        assert_eq!(fp, "9a824ff0fc9ac0b5");
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
    }

    #[test]
    fn malformed_payloads_are_refused_with_what_is_wrong() {
        assert!(
            parse_alerts(b"{}")
                .unwrap_err()
                .to_string()
                .contains("not a JSON array of alerts")
        );
        assert!(
            parse_alerts(br#"[{"labels": {}}]"#)
                .unwrap_err()
                .to_string()
                .contains("no alertname")
        );
        assert!(
            parse_alerts(br#"[{"labels": {"alertname": "A"}, "startsAt": "yesterday"}]"#)
                .unwrap_err()
                .to_string()
                .contains("not an RFC 3339 time")
        );
        assert!(
            parse_webhook(br#"{"version": "3", "alerts": []}"#)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        assert!(
            parse_webhook(b"[]")
                .unwrap_err()
                .to_string()
                .contains("webhook payload")
        );
    }

    #[test]
    fn the_node_label_may_be_an_instance_with_a_port() {
        let a = Alert {
            labels: [("instance".to_owned(), "node-7:9100".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(node_from(&a, "instance"), Some("node-7".into()));
        assert_eq!(node_from(&a, "node"), None);
    }

    #[test]
    fn a_refiring_gets_a_new_abnormal_and_a_redelivery_the_same() {
        let mut a = Alert {
            labels: [("alertname".to_owned(), "DiskFull".to_owned())].into(),
            starts_at: Some("2026-11-22T10:00:00Z".into()),
            ..Default::default()
        };
        let fp = fingerprint(&a.labels);
        let first = abnormal_name(&a, &fp);
        assert_eq!(first, abnormal_name(&a, &fp));
        a.starts_at = Some("2026-11-22T12:00:00Z".into());
        assert_ne!(first, abnormal_name(&a, &fp));
        // Pinned: a redelivery after an upgrade must find the same name.
        assert_eq!(first, "alert-diskfull-744e61ca07-3df95a");
        // The same instant written by the two paths is the same firing.
        a.starts_at = Some("2026-11-22T12:00:00.120Z".into());
        let pushed = abnormal_name(&a, &fp);
        a.starts_at = Some("2026-11-22T12:00:00.12Z".into());
        assert_eq!(abnormal_name(&a, &fp), pushed);
        a.starts_at = Some("2026-11-22T12:00:00.12+00:00".into());
        assert_eq!(abnormal_name(&a, &fp), pushed);
    }

    #[test]
    fn resolved_is_the_status_or_an_end_in_the_past() {
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let firing = Alert {
            ends_at: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(!is_resolved(&firing, now));
        assert!(is_resolved(
            &Alert {
                status: Some("resolved".into()),
                ..Default::default()
            },
            now
        ));
        assert!(is_resolved(
            &Alert {
                ends_at: Some("2026-11-22T11:00:00Z".into()),
                ..Default::default()
            },
            now
        ));
    }
}
