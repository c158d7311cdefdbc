//! The report endpoint (`POST /probe-status`) that checker pods call with KubeProber's SDK
//! payload, and the merge of results into a ProbeStatus by checker name.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::kubeprober::{
    PROBE_CONFIG_ANNOTATION, ReportProbeStatusSpec, labels as probe_labels,
};
use kdiag_api::{CheckerStatus, Probe, ProbeCheckerStatus, ProbeStatus};
use kdiag_runtime::auth::{Authorizer, User};
use kdiag_runtime::recorder::UncachedRecorder;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use warp::http::StatusCode;

use crate::Error;
use crate::nodes::KnownNodes;

/// The key of a bound ServiceAccount token's pod name in a TokenReview's `user.extra`.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The key of its pod's UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The report endpoint: who may report, and where reports go.
pub struct ProbeReports {
    pub client: Client,
    /// Reviews the checker pods' tokens (TokenReview with the audience below).
    pub authorizer: Authorizer,
    /// The audience checker tokens are issued for ([`kdiag_api::kubeprober::REPORT_AUDIENCE`]).
    pub audience: String,
    /// Take reports without a token (KubeProber's SDK sends none): an explicit opt-in.
    pub allow_unauthenticated: bool,
    pub nodes: Arc<KnownNodes>,
    /// Publishes the Event naming the checkers of a report that were not stored.
    pub recorder: UncachedRecorder,
    /// Continuous probes: their reports pass the token bucket and the denoiser instead.
    pub continuous: Option<Arc<super::continuous::Continuous>>,
}

impl ProbeReports {
    pub fn new(client: Client, allow_unauthenticated: bool, nodes: Arc<KnownNodes>) -> Self {
        Self {
            recorder: UncachedRecorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: "kdiag-controller".into(),
                    instance: None,
                },
            ),
            authorizer: Authorizer::new(client.clone()),
            client,
            audience: kdiag_api::kubeprober::REPORT_AUDIENCE.into(),
            allow_unauthenticated,
            nodes,
            continuous: None,
        }
    }

    /// One `POST /probe-status`: the status and text of the answer. 400 for a bad payload (or
    /// one with no checker that can be stored), 401 without an accepted token, 403 when the
    /// token's pod is not a checker pod of the probe reported for, 422 when a message names
    /// nodes that do not exist, 503 when the apiserver could not be asked, 500 when the write
    /// failed; 200 when stored, with `rejected` listing the checkers that were not (also in a
    /// Warning Event `CheckersRejected` on the ProbeStatus).
    pub async fn receive(&self, authorization: Option<&str>, body: &[u8]) -> (StatusCode, String) {
        let report = match parse(body, &kdiag_runtime::time::now()) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
        };
        // With the opt-in, a report without a token is taken; one with a token is still checked.
        let checked = authorization.is_some() || !self.allow_unauthenticated;
        let mut report = report;
        if checked {
            match self.check_sender(authorization, &report).await {
                // A pod of one `configs` entry (perConfig): its results under the entry's name.
                Ok(Some(config)) => report = under_config(report, &config),
                Ok(None) => {}
                Err(refusal) => return refusal,
            }
        }
        let mut named = Vec::new();
        for c in &report.checkers {
            for n in super::episodes::nodes_in_message(&c.message) {
                if !named.contains(&n) {
                    named.push(n);
                }
            }
        }
        match self.nodes.unknown(&named).await {
            Ok(unknown) if unknown.is_empty() => {}
            Ok(unknown) => {
                let e = Error::UnknownNodes {
                    what: format!("the report for probe {}/{}", report.namespace, report.probe),
                    verb: if unknown.len() == 1 { "is" } else { "are" },
                    nodes: unknown.join(", "),
                };
                return (StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
            }
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
        if let Some(continuous) = &self.continuous
            && let Some(answer) = continuous.receive(&report).await
        {
            return answer;
        }
        match apply(&self.client, &report).await {
            Ok(written) => {
                if !report.rejected.is_empty() {
                    self.record_rejected(&written, &report.rejected).await;
                }
                (StatusCode::OK, answer(&report))
            }
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// A Warning Event on the ProbeStatus naming the checkers of a report that were not stored,
    /// for whoever reads the ProbeStatus rather than the checker pod's log. Best effort: the
    /// answer says the same.
    async fn record_rejected(&self, written: &ProbeStatus, rejected: &[RejectedChecker]) {
        let list: Vec<String> = rejected
            .iter()
            .map(|r| format!("{}: {}", r.checker, r.reason))
            .collect();
        let note = format!(
            "{} checker(s) of a report were not stored (the others were): {}",
            rejected.len(),
            list.join("; ")
        );
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "CheckersRejected".into(),
            // The Events API caps a note at 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: "Report".into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &written.object_ref(&()))
            .await
        {
            tracing::warn!(probe = %written.name_any(), error = %e, "cannot record the rejected checkers of a report");
        }
    }

    /// Authenticates the sender and checks that its token is bound to a checker pod of the
    /// probe the report is for; the `configs` entry the pod runs, with perConfig.
    async fn check_sender(
        &self,
        authorization: Option<&str>,
        report: &Report,
    ) -> Result<Option<String>, (StatusCode, String)> {
        let refuse = |e: kdiag_runtime::Error| {
            let r = kdiag_runtime::auth::Refusal::of(&e);
            let mut message = r.message;
            if matches!(e, kdiag_runtime::Error::Unauthenticated { .. }) {
                message.push_str(&format!(
                    ". A checker pod sends the token kdiag's runner mounts for it (the file ${}) as Authorization: Bearer <token>; KubeProber-style reports without one are taken only when the controller runs with --probe-status-allow-unauthenticated (docs/probes.md)",
                    kdiag_api::kubeprober::env::STATUS_REPORT_TOKEN_FILE
                ));
            }
            (r.status, message)
        };
        let token = kdiag_runtime::auth::bearer_token(authorization).map_err(refuse)?;
        let user = self
            .authorizer
            .authenticate_for(token, Some(&self.audience))
            .await
            .map_err(refuse)?;
        match self.pod_belongs(&user, report).await {
            Ok(config) => Ok(config),
            Err(e @ Error::ReportForbidden { .. }) => Err((StatusCode::FORBIDDEN, e.to_string())),
            Err(e) => Err((StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        }
    }

    /// The UID of Probe `ns/probe`; forbidden when there is none.
    async fn probe_uid(&self, ns: &str, probe: &str) -> Result<String, Error> {
        Api::<Probe>::namespaced(self.client.clone(), ns)
            .get_opt(probe)
            .await
            .map_err(|e| Error::kube("get", format!("Probe {ns}/{probe}"), e))?
            .and_then(|p| p.metadata.uid)
            .ok_or_else(|| Error::ReportForbidden {
                probe: format!("{ns}/{probe}"),
                reason: format!("there is no Probe {ns}/{probe}"),
            })
    }

    /// Ok with the pod's `configs` entry (its [`PROBE_CONFIG_ANNOTATION`]), if it runs one.
    async fn pod_belongs(&self, user: &User, report: &Report) -> Result<Option<String>, Error> {
        let (ns, probe) = (&report.namespace, &report.probe);
        let forbid = |reason: String| Error::ReportForbidden {
            probe: format!("{ns}/{probe}"),
            reason,
        };
        let sa_namespace = user
            .name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(n, _)| n);
        if sa_namespace != Some(ns.as_str()) {
            return Err(forbid(format!(
                "the token belongs to {}, not to a ServiceAccount of namespace {ns}",
                user.name
            )));
        }
        let extra = |key: &str| {
            user.extra
                .get(key)
                .and_then(|v| v.first())
                .cloned()
                .filter(|v| !v.is_empty())
        };
        let (Some(pod_name), Some(pod_uid)) = (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) else {
            return Err(forbid(format!(
                "the token of {} is not bound to a pod",
                user.name
            )));
        };
        let pod = Api::<Pod>::namespaced(self.client.clone(), ns)
            .get_opt(&pod_name)
            .await
            .map_err(|e| Error::kube("get", format!("Pod {ns}/{pod_name}"), e))?
            .filter(|p| p.metadata.uid.as_deref() == Some(pod_uid.as_str()))
            .ok_or_else(|| forbid(format!("the token's pod {ns}/{pod_name} no longer exists")))?;
        let labels = pod.labels();
        let labelled = labels.get(probe_labels::PROBE_NAME) == Some(probe)
            && labels.get(probe_labels::PROBE_NAMESPACE) == Some(ns);
        let job_name = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Job")
            .map(|o| o.name.clone());
        let not_a_checker = || {
            forbid(format!(
                "the token's pod {ns}/{pod_name} is not a checker pod of probe {ns}/{probe} (kdiag's runner labels those {}={probe} and runs them in Jobs the Probe owns)",
                probe_labels::PROBE_NAME
            ))
        };
        // A continuous probe's resident checker pod: its ReplicaSet's Deployment is the Probe's.
        if labelled && job_name.is_none() {
            let probe_uid = self.probe_uid(ns, probe).await?;
            if super::continuous::is_resident_pod(&self.client, ns, probe, &probe_uid, &pod).await?
            {
                return Ok(pod.annotations().get(PROBE_CONFIG_ANNOTATION).cloned());
            }
        }
        let (true, Some(job_name)) = (labelled, job_name) else {
            return Err(not_a_checker());
        };
        let job = Api::<Job>::namespaced(self.client.clone(), ns)
            .get_opt(&job_name)
            .await
            .map_err(|e| Error::kube("get", format!("Job {ns}/{job_name}"), e))?
            .ok_or_else(not_a_checker)?;
        let probe_uid = self.probe_uid(ns, probe).await?;
        let owned = job.owner_references().iter().any(|o| {
            o.controller == Some(true)
                && o.kind == "Probe"
                && o.name == *probe
                && o.uid == probe_uid
        });
        if !owned {
            return Err(not_a_checker());
        }
        Ok(pod.annotations().get(PROBE_CONFIG_ANNOTATION).cloned())
    }
}

/// The report of a checker pod that runs one `configs` entry (perConfig): its checkers stored
/// under the entry's name — the name alone for a single checker (one case per config, as
/// KubeProber's templates are written), `<config>/<checker>` for several.
pub fn under_config(mut report: Report, config: &str) -> Report {
    let single = report.checkers.len() == 1;
    for c in &mut report.checkers {
        c.name = if single {
            config.to_owned()
        } else {
            format!("{config}/{}", c.name)
        };
    }
    report
}

/// Whether a stored checker name is of the `configs` entry `config` ([`under_config`]).
pub fn of_config(checker: &str, config: &str) -> bool {
    checker == config
        || checker
            .strip_prefix(config)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A report, checked: the checkers to store and those refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub namespace: String,
    pub probe: String,
    pub checkers: Vec<ProbeCheckerStatus>,
    /// Checkers that cannot be stored, each with why. KubeProber's SDK never resends a batch
    /// answered 400, so one bad checker must not cost the others theirs.
    pub rejected: Vec<RejectedChecker>,
}

/// A checker of a report that was not stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RejectedChecker {
    /// Its name, or `checkers[<index>]` when it has none.
    pub checker: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// The answer to a report that was stored, naming the checkers that were not.
pub fn answer(report: &Report) -> String {
    if report.rejected.is_empty() {
        return r#"{"success":true}"#.into();
    }
    serde_json::json!({"success": true, "rejected": report.rejected}).to_string()
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
            latency_millis: None,
        });
    }
    if reported.is_empty() {
        return Err(Error::ReportWithoutCheckers);
    }
    let mut checkers = Vec::new();
    let mut rejected = Vec::new();
    for (index, c) in reported.into_iter().enumerate() {
        let name = c.name.clone();
        match checker(index, c, now) {
            Ok(c) => checkers.push(c),
            Err(e) => rejected.push(RejectedChecker {
                checker: if name.trim().is_empty() {
                    format!("checkers[{index}]")
                } else {
                    name
                },
                reason: e.to_string(),
            }),
        }
    }
    if checkers.is_empty() {
        return Err(Error::ReportWithoutValidCheckers {
            problems: rejected
                .iter()
                .map(|r| r.reason.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(Report {
        namespace: spec.probe_namespace,
        probe: spec.probe_name,
        checkers,
        rejected,
    })
}

/// One reported checker, checked; its status read case-insensitively.
fn checker(
    index: usize,
    c: kdiag_api::kubeprober::ReportedChecker,
    now: &Time,
) -> Result<ProbeCheckerStatus, Error> {
    if c.name.trim().is_empty() {
        return Err(Error::CheckerWithoutName { index });
    }
    let status = CheckerStatus::parse(&c.status).ok_or_else(|| Error::CheckerStatusUnknown {
        checker: c.name.clone(),
        status: c.status.clone(),
    })?;
    if status.severity() > CheckerStatus::Info.severity() && c.message.trim().is_empty() {
        return Err(Error::CheckerWithoutMessage {
            checker: c.name,
            status: status.as_str(),
        });
    }
    Ok(ProbeCheckerStatus {
        name: c.name,
        status,
        message: c.message,
        last_run: Some(c.last_run.unwrap_or_else(|| now.clone())),
        diagnosis: None,
        window: super::continuous::reported_window(status, c.latency_millis),
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

/// Writes a report into its ProbeStatus (created if missing), retrying lost races; returns what
/// was written. The error says what failed, for the 500 answer.
pub async fn apply(client: &Client, report: &Report) -> Result<ProbeStatus, Error> {
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
                api.create(&PostParams::default(), &ps).await
            }
            Some(mut ps) => {
                ps.spec.checkers = merge(&ps.spec.checkers, &report.checkers);
                api.replace(&ps.name_any(), &PostParams::default(), &ps)
                    .await
            }
        };
        match result {
            Err(e) if kdiag_runtime::error::is_conflict(&e) => continue,
            Err(e) => return Err(Error::kube("writing", format!("ProbeStatus {key}"), e)),
            Ok(written) => return Ok(written),
        }
    }
    Err(Error::ReportContended { probe: key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(name: &str) -> ProbeCheckerStatus {
        ProbeCheckerStatus {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_per_config_pods_results_are_stored_under_its_configs_name() {
        let report = |names: &[&str]| Report {
            namespace: "n".into(),
            probe: "p".into(),
            checkers: names.iter().map(|n| checker(n)).collect(),
            rejected: vec![],
        };
        let one = under_config(report(&["http-check"]), "shop-frontend");
        assert_eq!(one.checkers[0].name, "shop-frontend");
        let two = under_config(report(&["a", "b"]), "shop-frontend");
        let names: Vec<_> = two.checkers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["shop-frontend/a", "shop-frontend/b"]);
        assert!(of_config("shop-frontend", "shop-frontend"));
        assert!(of_config("shop-frontend/a", "shop-frontend"));
        assert!(!of_config("shop-frontend-2", "shop-frontend"));
    }

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
    fn one_bad_checker_does_not_cost_the_others_their_results() {
        // KubeProber's SDK never resends a batch answered 400.
        let body = br#"{"probeName":"p","probeNamespace":"n","checkers":[
            {"name":"dns","status":"pass"},
            {"name":"","status":"PASS"},
            {"name":"custom","status":"OK","message":"m"},
            {"name":"silent","status":"ERROR"},
            {"name":"api","status":"Error","message":"apiserver answered 500"}]}"#;
        let r = parse(body, &now()).unwrap();
        assert_eq!(
            r.checkers
                .iter()
                .map(|c| (c.name.as_str(), c.status))
                .collect::<Vec<_>>(),
            [("dns", CheckerStatus::Pass), ("api", CheckerStatus::Error)]
        );
        let rejected: Vec<&str> = r.rejected.iter().map(|c| c.checker.as_str()).collect();
        assert_eq!(rejected, ["checkers[1]", "custom", "silent"]);
        assert!(
            r.rejected[1].reason.contains("use PASS, INFO"),
            "{:?}",
            r.rejected
        );
        assert!(
            r.rejected[2].reason.contains("has no message"),
            "{:?}",
            r.rejected
        );
        let answer: serde_json::Value = serde_json::from_str(&answer(&r)).unwrap();
        assert_eq!(answer["success"], true);
        assert_eq!(answer["rejected"][0]["checker"], "checkers[1]");
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
