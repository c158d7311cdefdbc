//! The report endpoint (`POST /probe-status`) that checker pods call with KubeProber's SDK
//! payload, and the merge of results into a ProbeStatus by checker name.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::kubeprober::ReportProbeStatusSpec;
use kdiag_api::{CheckerStatus, ProbeCheckerStatus, ProbeStatus};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::Error;

/// A report, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub namespace: String,
    pub probe: String,
    pub checkers: Vec<ProbeCheckerStatus>,
}

/// Parses and checks a payload; the error is the 400 body.
pub fn parse(body: &[u8], now: &Time) -> Result<Report, Error> {
    let spec: ReportProbeStatusSpec =
        serde_json::from_slice(body).map_err(|e| Error::ReportNotJson {
            reason: e.to_string(),
        })?;
    if spec.probe_name.trim().is_empty() || spec.probe_namespace.trim().is_empty() {
        return Err(Error::ReportWithoutProbe);
    }
    let mut reported = spec.checkers.clone();
    // The SDK also sends one checker inline at the top level; usually its name is empty.
    if !spec.name.is_empty() {
        reported.push(kdiag_api::kubeprober::ReportedChecker {
            name: spec.name.clone(),
            status: spec.status.clone().unwrap_or_default(),
            message: spec.message.clone(),
            last_run: spec.last_run.clone(),
        });
    }
    if reported.is_empty() {
        return Err(Error::ReportWithoutCheckers);
    }
    let mut checkers = Vec::new();
    for c in reported {
        if c.name.trim().is_empty() {
            return Err(Error::CheckerWithoutName);
        }
        let status =
            CheckerStatus::parse(&c.status).ok_or_else(|| Error::CheckerStatusUnknown {
                checker: c.name.clone(),
                status: c.status.clone(),
            })?;
        if status.severity() > CheckerStatus::Info.severity() && c.message.trim().is_empty() {
            return Err(Error::CheckerWithoutMessage {
                checker: c.name,
                status: status.as_str(),
            });
        }
        checkers.push(ProbeCheckerStatus {
            name: c.name,
            status,
            message: c.message,
            last_run: Some(c.last_run.unwrap_or_else(|| now.clone())),
            diagnosis: None,
        });
    }
    Ok(Report {
        namespace: spec.probe_namespace,
        probe: spec.probe_name,
        checkers,
    })
}

/// Merges results by checker name: a reported checker replaces the one of the same name (keeping
/// its diagnosis while the status stays failing); others are kept.
pub fn merge(
    existing: &[ProbeCheckerStatus],
    reported: &[ProbeCheckerStatus],
) -> Vec<ProbeCheckerStatus> {
    let mut out = existing.to_vec();
    for r in reported {
        match out.iter_mut().find(|c| c.name == r.name) {
            Some(c) => {
                let diagnosis = c.diagnosis.take();
                *c = r.clone();
                c.diagnosis = diagnosis;
            }
            None => out.push(r.clone()),
        }
    }
    out
}

/// Writes a report into its ProbeStatus (created if missing), retrying lost races. The error
/// says what failed, for the 500 answer.
pub async fn apply(client: &Client, report: &Report) -> Result<(), Error> {
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), &report.namespace);
    let key = format!("{}/{}", report.namespace, report.probe);
    for _ in 0..5 {
        let result = match api
            .get_opt(&report.probe)
            .await
            .map_err(|e| Error::kube("reading", format!("ProbeStatus {key}"), e))?
        {
            None => {
                let mut ps = ProbeStatus::new(
                    &report.probe,
                    kdiag_api::ProbeStatusSpec {
                        checkers: report.checkers.clone(),
                    },
                );
                ps.metadata.namespace = Some(report.namespace.clone());
                api.create(&PostParams::default(), &ps).await.map(|_| ())
            }
            Some(mut ps) => {
                ps.spec.checkers = merge(&ps.spec.checkers, &report.checkers);
                api.replace(&ps.name_any(), &PostParams::default(), &ps)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Err(e) if kdiag_runtime::error::is_conflict(&e) => continue,
            Err(e) => return Err(Error::kube("writing", format!("ProbeStatus {key}"), e)),
            Ok(()) => return Ok(()),
        }
    }
    Err(Error::ReportContended { probe: key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time("2026-11-22T10:00:00Z".parse().unwrap())
    }

    #[test]
    fn kubeprobers_exact_payload_is_accepted() {
        let body = br#"{"probeName":"k8s","probeNamespace":"kubeprober","name":"",
            "checkers":[{"name":"dns-resolution-check","status":"ERROR","message":"lookup failed","lastRun":"2021-09-01T09:59:23Z"},
                        {"name":"deployment-service-check","status":"pass"}]}"#;
        let r = parse(body, &now()).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.probe.as_str()),
            ("kubeprober", "k8s")
        );
        assert_eq!(r.checkers[0].status, CheckerStatus::Error);
        assert_eq!(
            r.checkers[0].last_run.as_ref().unwrap().0.to_string(),
            "2021-09-01T09:59:23Z"
        );
        assert_eq!(
            r.checkers[1].status,
            CheckerStatus::Pass,
            "statuses are upper-cased"
        );
        assert_eq!(r.checkers[1].last_run, Some(now()));
    }

    #[test]
    fn a_top_level_named_checker_counts_too() {
        let r = parse(br#"{"probeName":"p","probeNamespace":"n","name":"solo","status":"WARN","message":"slow","checkers":[]}"#, &now()).unwrap();
        assert_eq!(r.checkers.len(), 1);
        assert_eq!(r.checkers[0].name, "solo");
    }

    #[test]
    fn malformed_payloads_are_refused_with_what_is_wrong() {
        for (body, expected) in [
            (&b"not json"[..], "not KubeProber's report payload"),
            (br#"{"probeName":"","probeNamespace":"n","checkers":[{"name":"a","status":"PASS"}]}"#, "probeName and probeNamespace"),
            (br#"{"probeName":"p","probeNamespace":"n","checkers":[]}"#, "no checkers"),
            (br#"{"probeName":"p","probeNamespace":"n","checkers":[{"name":"a","status":"BROKEN"}]}"#, "use PASS, INFO, WARN, UNKNOWN or ERROR"),
            (br#"{"probeName":"p","probeNamespace":"n","checkers":[{"name":"a","status":"ERROR"}]}"#, "has no message"),
        ] {
            let e = parse(body, &now()).unwrap_err();
            assert!(!e.is_transient(), "{e}");
            assert!(e.to_string().contains(expected), "{e}");
        }
    }

    #[test]
    fn results_merge_by_checker_name() {
        let c = |n: &str, s: CheckerStatus| ProbeCheckerStatus {
            name: n.into(),
            status: s,
            message: "m".into(),
            ..Default::default()
        };
        let mut existing = vec![c("a", CheckerStatus::Error), c("b", CheckerStatus::Pass)];
        existing[0].diagnosis = Some(kdiag_api::CheckerDiagnosis {
            abnormal: "x".into(),
            ..Default::default()
        });
        let merged = merge(
            &existing,
            &[c("a", CheckerStatus::Error), c("c", CheckerStatus::Warn)],
        );
        assert_eq!(
            merged.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(
            merged[0].diagnosis.is_some(),
            "the diagnosis stays with its checker"
        );
    }
}
