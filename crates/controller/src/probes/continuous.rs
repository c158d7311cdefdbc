//! Continuous probes (`spec.policy.mode: Continuous`), the IO part: follows Probes, runs each
//! continuous probe's native checks in a task of its own every interval, keeps the probe's checker
//! pod resident as a Deployment the Probe owns, and passes every raw result (the task's, and the
//! resident pod's reports to `POST /probe-status`) through the probe's token bucket and the
//! denoiser ([`super::denoise`]) before anything reaches the ProbeStatus.
//!
//! A task stops when its Probe is deleted, leaves Continuous mode or changes (then a new one
//! starts with the new spec, keeping the checkers' windows), and at shutdown. The denoiser's
//! state lives here, in memory: after a restart a checker resumes from the status stored in its
//! ProbeStatus (a failing checker still needs its recoveries).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kdiag_api::kubeprober::labels as probe_labels;
use kdiag_api::{
    CheckerStatus, CheckerWindow, NativeCheck, Probe, ProbeCheckerStatus, ProbeStatus,
};
use kdiag_runtime::metrics::Metrics;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;

use super::checks;
use super::denoise::{self, Checker, Settings};
use super::report::{self, Report};
use crate::Error;
use crate::sources::storm::{Buckets, Budget};

/// What tells a resident checker pod how often to report.
pub const INTERVAL_ENV: &str = "KDIAG_PROBE_INTERVAL_SECONDS";
/// The label marking a probe's resident checker pod (and its Deployment).
pub const RESIDENT_LABEL: &str = "kdiag.io/resident";
/// The field manager of the resident Deployment.
const FIELD_MANAGER: &str = "kdiag-continuous-probes";
/// Reports a probe may send at once beyond its steady rate.
pub const BUCKET_BURST: f64 = 5.0;
/// Results per interval a probe's bucket refills with: one expected, room for a retry.
pub const BUCKET_PER_INTERVAL: f64 = 2.0;
/// Longest a native check may take before it counts as UNKNOWN.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// One raw result of a continuous checker.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub name: String,
    pub status: CheckerStatus,
    pub message: String,
    pub latency_millis: Option<i64>,
}

/// What became of a batch of raw results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Not a continuous probe (of this controller): the periodic path stores the report.
    NotContinuous,
    /// Refused by the probe's token bucket (counted).
    Limited,
    /// Denoised; this many checker entries were written.
    Taken { written: usize },
}

/// The continuous probes this controller runs, and their checkers' denoisers.
pub struct Continuous {
    client: Client,
    metrics: Arc<Metrics>,
    /// What resident checker pods get as KUBEPROBER_STATUS_REPORT_URL.
    report_url: String,
    probes: Mutex<HashMap<String, Running>>,
    buckets: Mutex<Buckets>,
}

struct Running {
    uid: String,
    /// The parts of the spec a running probe depends on: a change restarts it.
    fingerprint: String,
    settings: Settings,
    checkers: HashMap<String, Checker>,
    stop: CancellationToken,
    resident: bool,
}

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Continuous {
    pub fn new(client: Client, metrics: Arc<Metrics>, report_url: String) -> Arc<Self> {
        Arc::new(Self {
            client,
            metrics,
            report_url,
            probes: Mutex::new(HashMap::new()),
            buckets: Mutex::new(Buckets::default()),
        })
    }

    /// Follows every Probe until `shutdown`, starting and stopping continuous probes.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let api: Api<DeserializeGuard<Probe>> = Api::all(self.client.clone());
        let events = watcher(api, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        // The Probes a relist has shown so far: those it does not show were deleted meanwhile.
        let mut listed: HashSet<String> = HashSet::new();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = events.next() => e,
            };
            let Some(event) = event else { break };
            match event {
                Ok(watcher::Event::Init) => listed.clear(),
                Ok(watcher::Event::InitApply(obj)) | Ok(watcher::Event::Apply(obj)) => {
                    let Ok(probe) = &obj.0 else { continue };
                    listed.insert(key(
                        &probe.namespace().unwrap_or_default(),
                        &probe.name_any(),
                    ));
                    if let Err(e) = self.clone().follow(probe, &shutdown).await {
                        tracing::warn!(error = %e, "continuous probe; retried at its next change or relist");
                    }
                }
                Ok(watcher::Event::Delete(obj)) => {
                    if let Ok(probe) = &obj.0 {
                        self.forget(&key(
                            &probe.namespace().unwrap_or_default(),
                            &probe.name_any(),
                        ));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let gone: Vec<String> = lock(&self.probes)
                        .keys()
                        .filter(|k| !listed.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        self.forget(&k);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching Probes for continuous probes; retrying")
                }
            }
        }
        for k in lock(&self.probes).keys().cloned().collect::<Vec<_>>() {
            self.forget(&k);
        }
    }

    /// Starts, restarts or stops one probe to match its spec.
    async fn follow(
        self: Arc<Self>,
        probe: &Probe,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let ns = probe.namespace().unwrap_or_default();
        let name = probe.name_any();
        let k = key(&ns, &name);
        let uid = probe.uid().unwrap_or_default();
        if !denoise::is_continuous(&probe.spec.policy) {
            let was_resident = self.forget(&k);
            if was_resident {
                self.delete_resident(&ns, &name).await?;
            }
            return Ok(());
        }
        let fingerprint = serde_json::to_string(&(
            &probe.spec.policy,
            &probe.spec.checks,
            &probe.spec.template,
            &probe.spec.configs,
        ))
        .unwrap_or_default();
        let settings = Settings::of(&probe.spec.policy);
        let resident = probe.spec.template.is_some();
        let mut resumed = None;
        {
            let probes = lock(&self.probes);
            match probes.get(&k) {
                Some(r) if r.uid == uid && r.fingerprint == fingerprint => return Ok(()),
                Some(_) => {}
                None => resumed = Some(()),
            }
        }
        // A probe seen for the first time resumes its checkers from the stored statuses.
        let stored = if resumed.is_some() {
            self.stored_checkers(&ns, &name).await?
        } else {
            HashMap::new()
        };
        let stop = shutdown.child_token();
        let was_resident = {
            let mut probes = lock(&self.probes);
            let previous = probes.remove(&k);
            if let Some(p) = &previous {
                p.stop.cancel();
            }
            let (checkers, was_resident) = match previous {
                Some(p) if p.uid == uid => (p.checkers, p.resident),
                Some(p) => (HashMap::new(), p.resident),
                None => (stored, false),
            };
            probes.insert(
                k.clone(),
                Running {
                    uid,
                    fingerprint,
                    settings,
                    checkers,
                    stop: stop.clone(),
                    resident,
                },
            );
            self.metrics
                .controller
                .continuous_probes
                .set(probes.len() as i64);
            was_resident
        };
        if resident {
            self.apply_resident(probe, settings).await?;
        } else if was_resident {
            self.delete_resident(&ns, &name).await?;
        }
        if !probe.spec.checks.is_empty() {
            let checks = probe.spec.checks.clone();
            tokio::spawn(self.native_loop(ns, name.clone(), checks, settings.interval, stop));
        }
        tracing::info!(probe = %k, interval = ?settings.interval, resident, "continuous probe running");
        Ok(())
    }

    /// Stops a probe's loop and forgets its checkers; whether it had a resident pod.
    fn forget(&self, k: &str) -> bool {
        let mut probes = lock(&self.probes);
        let Some(r) = probes.remove(k) else {
            return false;
        };
        r.stop.cancel();
        self.metrics
            .controller
            .continuous_probes
            .set(probes.len() as i64);
        tracing::info!(probe = %k, "continuous probe stopped");
        r.resident
    }

    /// The checkers of the probe's ProbeStatus, resumed at their stored statuses.
    async fn stored_checkers(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<HashMap<String, Checker>, Error> {
        let ps = Api::<ProbeStatus>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("read", format!("ProbeStatus {ns}/{name}"), e))?;
        Ok(ps
            .map(|ps| {
                ps.spec
                    .checkers
                    .into_iter()
                    .map(|c| (c.name.clone(), Checker::resume(c.status, c.message)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Runs the native checks every interval until `stop`.
    async fn native_loop(
        self: Arc<Self>,
        ns: String,
        name: String,
        checks: Vec<NativeCheck>,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        // A slow check delays the next round rather than bunching rounds up after it.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let round = futures::future::join_all(checks.iter().map(|c| self.run_check(c)));
            let raws = tokio::select! {
                _ = stop.cancelled() => return,
                r = round => r,
            };
            match self.take(&ns, &name, raws, "native").await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(probe = %key(&ns, &name), error = %e, "continuous probe: storing results; retried next interval")
                }
            }
        }
    }

    async fn run_check(&self, c: &NativeCheck) -> Raw {
        let started = Instant::now();
        let outcome = tokio::time::timeout(CHECK_TIMEOUT, checks::run(&self.client, c))
            .await
            .unwrap_or_else(|_| checks::Outcome {
                status: CheckerStatus::Unknown,
                message: format!(
                    "the check did not finish within {}s",
                    CHECK_TIMEOUT.as_secs()
                ),
            });
        Raw {
            name: c.name.clone(),
            status: outcome.status,
            message: outcome.message,
            latency_millis: Some(started.elapsed().as_millis() as i64),
        }
    }

    /// The report endpoint's way in: None when the probe is not continuous here; otherwise the
    /// answer (200 taken, 429 limited, 500 when the write failed).
    pub async fn receive(&self, report: &Report) -> Option<(StatusCode, String)> {
        let raws = report
            .checkers
            .iter()
            .map(|c| Raw {
                name: c.name.clone(),
                status: c.status,
                message: c.message.clone(),
                latency_millis: c.window.as_ref().and_then(|w| w.p50_millis),
            })
            .collect();
        match self
            .take(&report.namespace, &report.probe, raws, "report")
            .await
        {
            Ok(Taken::NotContinuous) => None,
            Ok(Taken::Limited) => Some((
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "probe {}/{} reports faster than its interval allows; this report was not taken (counted in kdiag_continuous_probe_results_total{{outcome=\"limited\"}})",
                    report.namespace, report.probe
                ),
            )),
            Ok(Taken::Taken { .. }) => Some((StatusCode::OK, report::answer(report))),
            Err(e) => Some((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }

    /// Passes raw results through the probe's token bucket and its checkers' denoisers, and
    /// writes the entries the write rule asks for.
    pub async fn take(
        &self,
        ns: &str,
        probe: &str,
        raws: Vec<Raw>,
        path: &'static str,
    ) -> Result<Taken, Error> {
        let k = key(ns, probe);
        let now = Instant::now();
        let pending = {
            let mut probes = lock(&self.probes);
            let Some(running) = probes.get_mut(&k) else {
                return Ok(Taken::NotContinuous);
            };
            let budget = Budget {
                burst: BUCKET_BURST,
                per_minute: BUCKET_PER_INTERVAL * 60.0 / running.settings.interval.as_secs_f64(),
            };
            if lock(&self.buckets)
                .take(now, &[(k.clone(), budget)])
                .is_err()
            {
                self.metrics
                    .controller
                    .continuous_results
                    .with_label_values(&[path, "limited"])
                    .inc();
                return Ok(Taken::Limited);
            }
            self.metrics
                .controller
                .continuous_results
                .with_label_values(&[path, "taken"])
                .inc();
            let settings = running.settings;
            raws.into_iter()
                .filter_map(|r| {
                    let checker = running.checkers.entry(r.name.clone()).or_default();
                    checker
                        .observe(&settings, r.status, &r.message, r.latency_millis, now)
                        .map(|(entry, reason)| (r.name, entry, reason))
                })
                .collect::<Vec<_>>()
        };
        if pending.is_empty() {
            return Ok(Taken::Taken { written: 0 });
        }
        let stamp = kdiag_runtime::time::now();
        let report = Report {
            namespace: ns.into(),
            probe: probe.into(),
            checkers: pending
                .iter()
                .map(|(name, e, _)| ProbeCheckerStatus {
                    name: name.clone(),
                    status: e.status,
                    message: e.message.clone(),
                    last_run: Some(stamp.clone()),
                    diagnosis: None,
                    window: Some(e.window.clone()),
                })
                .collect(),
            rejected: Vec::new(),
        };
        report::apply(&self.client, &report).await?;
        let written = pending.len();
        let mut probes = lock(&self.probes);
        if let Some(running) = probes.get_mut(&k) {
            for (name, entry, reason) in pending {
                if let Some(c) = running.checkers.get_mut(&name) {
                    c.written(entry, now);
                }
                self.metrics
                    .controller
                    .continuous_writes
                    .with_label_values(&[reason.as_str()])
                    .inc();
            }
        }
        Ok(Taken::Taken { written })
    }

    /// Creates or updates the probe's resident Deployment (server-side apply: unchanged, it is
    /// left as it is).
    async fn apply_resident(&self, probe: &Probe, settings: Settings) -> Result<(), Error> {
        let Some(d) = resident_deployment(probe, &self.report_url, settings.interval) else {
            return Ok(());
        };
        let ns = probe.namespace().unwrap_or_default();
        if super::runner::runs_as_worker(
            probe.spec.template.as_ref().unwrap_or(&PodSpec::default()),
        ) {
            super::runner::ensure_worker_account(
                &self.client,
                &ns,
                &format!("Probe {ns}/{}", probe.name_any()),
            )
            .await?;
        }
        Api::<Deployment>::namespaced(self.client.clone(), &ns)
            .patch(
                &d.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&d),
            )
            .await
            .map_err(|e| {
                Error::kube(
                    "apply the resident checker Deployment of",
                    format!("Probe {ns}/{}", probe.name_any()),
                    e,
                )
            })?;
        Ok(())
    }

    async fn delete_resident(&self, ns: &str, probe: &str) -> Result<(), Error> {
        match Api::<Deployment>::namespaced(self.client.clone(), ns)
            .delete(&resident_name(probe), &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::kube(
                "delete the resident checker Deployment of",
                format!("Probe {ns}/{probe}"),
                e,
            )),
        }
    }
}

/// The resident Deployment's name: `<probe>-continuous`, within 63 characters.
pub fn resident_name(probe: &str) -> String {
    let suffix = "-continuous";
    let base: String = probe.chars().take(63 - suffix.len()).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// The resident checker Deployment of a continuous probe with a pod template: one replica of the
/// pod a run's Job would get (the same environment, `extra-config`, account and report token),
/// restarted when it exits, told its interval in [`INTERVAL_ENV`], owned by the Probe.
pub fn resident_deployment(
    probe: &Probe,
    report_url: &str,
    interval: Duration,
) -> Option<Deployment> {
    let template = probe.spec.template.as_ref()?;
    let job = super::runner::job_for(probe, template, jiff::Timestamp::UNIX_EPOCH, report_url);
    let mut pod = job.spec?.template;
    let meta = pod.metadata.get_or_insert_default();
    meta.labels
        .get_or_insert_default()
        .insert(RESIDENT_LABEL.into(), "true".into());
    let labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
    let spec = pod.spec.get_or_insert_default();
    spec.restart_policy = Some("Always".into());
    for c in &mut spec.containers {
        let env = c.env.get_or_insert_default();
        env.retain(|e| e.name != INTERVAL_ENV);
        env.push(EnvVar {
            name: INTERVAL_ENV.into(),
            value: Some(interval.as_secs().to_string()),
            ..Default::default()
        });
    }
    let selector: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| {
            [
                probe_labels::PROBE_NAME,
                probe_labels::PROBE_NAMESPACE,
                RESIDENT_LABEL,
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Deployment {
        metadata: ObjectMeta {
            name: Some(resident_name(&probe.name_any())),
            namespace: probe.namespace(),
            labels: Some(labels),
            owner_references: probe.controller_owner_ref(&()).map(|mut o| {
                o.block_owner_deletion = Some(true);
                vec![o]
            }),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: pod,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Whether `pod` is the resident checker pod of Probe `probe` (uid `probe_uid`): controlled by
/// a ReplicaSet that the probe's resident Deployment controls, which the Probe controls. A
/// report's sender is checked with it as a Job's pod is checked by its Job.
pub(super) async fn is_resident_pod(
    client: &Client,
    ns: &str,
    probe: &str,
    probe_uid: &str,
    pod: &Pod,
) -> Result<bool, Error> {
    let controller_of =
        |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference], kind: &str| {
            refs.iter()
                .find(|o| o.controller == Some(true) && o.kind == kind)
                .map(|o| (o.name.clone(), o.uid.clone()))
        };
    let Some((rs_name, rs_uid)) = controller_of(pod.owner_references(), "ReplicaSet") else {
        return Ok(false);
    };
    let Some(rs) = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .get_opt(&rs_name)
        .await
        .map_err(|e| Error::kube("get", format!("ReplicaSet {ns}/{rs_name}"), e))?
        .filter(|rs| rs.uid().as_deref() == Some(rs_uid.as_str()))
    else {
        return Ok(false);
    };
    let Some((d_name, d_uid)) = controller_of(rs.owner_references(), "Deployment") else {
        return Ok(false);
    };
    if d_name != resident_name(probe) {
        return Ok(false);
    }
    let Some(d) = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&d_name)
        .await
        .map_err(|e| Error::kube("get", format!("Deployment {ns}/{d_name}"), e))?
        .filter(|d| d.uid().as_deref() == Some(d_uid.as_str()))
    else {
        return Ok(false);
    };
    Ok(d.owner_references().iter().any(|o| {
        o.controller == Some(true) && o.kind == "Probe" && o.name == probe && o.uid == probe_uid
    }))
}

/// A reported checker's latency, carried to [`Continuous::receive`] as a window of one result.
pub fn reported_window(
    status: CheckerStatus,
    latency_millis: Option<i64>,
) -> Option<CheckerWindow> {
    latency_millis.map(|ms| CheckerWindow {
        results: 1,
        success_rate: if status.severity() <= CheckerStatus::Info.severity() {
            1.0
        } else {
            0.0
        },
        p50_millis: Some(ms),
        p99_millis: Some(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_resident_deployment_runs_the_jobs_pod_with_its_interval_owned_by_the_probe() {
        let probe: Probe = serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"policy": {"mode": "Continuous", "intervalSeconds": 5},
                "template": {"containers": [{"name": "c", "image": "checker"}]},
                "configs": [{"name": "a", "env": [{"name": "URL", "value": "http://web"}]}]}
        }))
        .unwrap();
        let d =
            resident_deployment(&probe, "http://r/probe-status", Duration::from_secs(5)).unwrap();
        assert_eq!(d.name_any(), "web-continuous");
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Probe", "u1", Some(true))
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        let selector = spec.selector.match_labels.unwrap();
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "the selector selects the pod"
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("kubeprober-worker")
        );
        let env: BTreeMap<String, String> = pod.containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        assert_eq!(env[INTERVAL_ENV], "5");
        assert_eq!(env["URL"], "http://web");
        assert_eq!(env["KUBEPROBER_STATUS_REPORT_URL"], "http://r/probe-status");
        assert!(env.contains_key("KDIAG_PROBE_STATUS_TOKEN_FILE"));
    }

    #[test]
    fn a_long_probe_name_still_makes_a_valid_deployment_name() {
        let name = resident_name(&"p".repeat(80));
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-continuous"));
    }
}
