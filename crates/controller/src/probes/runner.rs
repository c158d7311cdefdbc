//! The probe runner (KubeProber's probe-agent role): runs each Probe on its schedule, as a Job
//! from its pod template and/or as kdiag's native checks, and turns checker pods that fail, cannot
//! be scheduled or exit without reporting into UNKNOWN results instead of silence.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, EnvFromSource, EnvVar, Pod, PodTemplateSpec, ProjectedVolumeSource,
    ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kdiag_api::kubeprober::{
    EXTRA_CONFIG_MAP, PROBE_CONFIG_ANNOTATION, WORKER_SERVICE_ACCOUNT, env as probe_env,
    labels as probe_labels,
};
use kdiag_api::{CheckerStatus, Probe, ProbeCheckerStatus, ProbeStatus};
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::time::now;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::checks;
use super::report::{self, Report};
use super::schedule::{self, Due};
use crate::Error;

/// Annotation on a Job once its outcome is recorded.
pub(super) const OUTCOME_ANNOTATION: &str = "kdiag.io/outcome";
/// Seconds a checker pod may run (KubeProber's default).
const ACTIVE_DEADLINE_SECONDS: i64 = 1800;
/// Jobs kept per probe.
const JOBS_KEPT: usize = 3;

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// What checker pods get as KUBEPROBER_STATUS_REPORT_URL.
    pub report_url: String,
    /// Results of a periodic probe older than this many intervals are marked stale.
    pub stale_intervals: u32,
    /// A checker pod unschedulable this long is reported UNKNOWN.
    pub unschedulable_after: Duration,
    /// ProbeRuns kept per probe (`--probe-history`); older finished runs are deleted.
    pub history: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            report_url: "http://kdiag-controller.kube-diagnoser.svc:10357/probe-status".into(),
            stale_intervals: 3,
            unschedulable_after: Duration::from_secs(60),
            history: super::runs::DEFAULT_HISTORY,
        }
    }
}

pub(super) struct Ctx {
    pub(super) client: Client,
    pub(super) config: RunnerConfig,
    pub(super) metrics: Arc<Metrics>,
}

/// Starts the runner: a controller for Probes, one for their Jobs, one for their ProbeRuns.
pub fn start(
    client: Client,
    config: RunnerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        config,
        metrics,
    });
    let probes = Controller::new(
        Api::<DeserializeGuard<Probe>>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(reconcile_probe, error_policy, ctx.clone())
    .for_each(|_| async {});
    let runs = Controller::new(
        Api::<DeserializeGuard<kdiag_api::ProbeRun>>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(super::runs::reconcile, error_policy, ctx.clone())
    .for_each(|_| async {});
    let selector = format!("{}={}", probe_labels::APP, probe_labels::APP_VALUE);
    let jobs = Controller::new(
        Api::<Job>::all(client.clone()),
        watcher::Config::default().labels(&selector),
    )
    .owns(
        Api::<Pod>::all(client),
        watcher::Config::default().labels(&selector),
    )
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reconcile_job, error_policy, ctx)
    .for_each(|_| async {});
    async move {
        tokio::join!(probes, jobs, runs);
    }
}

pub(super) fn error_policy<K>(_: Arc<K>, e: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics
        .controller
        .error("probe-runner", e.metric_label(), e.category());
    tracing::warn!(error = %e, "probe runner; retrying");
    Action::requeue(Duration::from_secs(if e.is_transient() { 10 } else { 60 }))
}

async fn reconcile_probe(
    obj: Arc<DeserializeGuard<Probe>>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let Ok(probe) = &obj.0 else {
        return Ok(Action::await_change());
    };
    // Continuous probes run in their own loop (continuous.rs), not on a schedule.
    if super::denoise::is_continuous(&probe.spec.policy) {
        return Ok(Action::await_change());
    }
    let ns = probe.namespace().unwrap_or_default();
    let name = probe.name_any();
    let key = format!("{ns}/{name}");
    let status = probe.status.clone().unwrap_or_default();
    let now_ts = jiff::Timestamp::now();
    let last = status.last_run_time.as_ref().map(|t| t.0);
    let uid = probe.uid().unwrap_or_default();
    let every = schedule::interval(&probe.spec.policy);
    if let Some(every) = every {
        mark_stale(&ctx, &ns, &name, every * ctx.config.stale_intervals).await?;
    }
    match schedule::due(
        &probe.spec.policy,
        &uid,
        last,
        status.runs.unwrap_or(0),
        now_ts,
    ) {
        Due::Never => return Ok(Action::await_change()),
        Due::At(t) => {
            return Ok(Action::requeue(
                t.duration_since(now_ts)
                    .unsigned_abs()
                    .max(Duration::from_secs(1)),
            ));
        }
        Due::Now => {}
    }
    if probe.spec.template.is_none() && probe.spec.checks.is_empty() {
        return Ok(Action::await_change());
    }
    // Recorded first: a crash after it skips this run instead of running it twice.
    let runs = status.runs.unwrap_or(0) + 1;
    let next = every.map(|e| {
        Time(
            now_ts
                + jiff::SignedDuration::try_from(
                    e + schedule::jitter(&uid, probe.spec.policy.run_interval_random),
                )
                .unwrap_or_default(),
        )
    });
    let patch = json!({"status": {"lastRunTime": Time(now_ts), "nextRunTime": next, "runs": runs,
        "phase": if every.is_none() { json!("DONE") } else { serde_json::Value::Null }}});
    Api::<Probe>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| Error::kube("record the run of", format!("Probe {key}"), e))?;
    super::runs::run_scheduled(&ctx, probe, now_ts).await?;
    tracing::info!(probe = %key, run = runs, "probe run started");
    Ok(match every {
        Some(e) => {
            Action::requeue(e + schedule::jitter(&uid, probe.spec.policy.run_interval_random))
        }
        None => Action::await_change(),
    })
}

/// The Job of one run, as KubeProber made it: the probe's pod template, restartPolicy Never, the
/// KUBEPROBER_* environment and configs appended to every container, `envFrom` the `extra-config`
/// ConfigMap (optional), `imagePullPolicy: Always` where a container sets none, the
/// `kubeprober-worker` ServiceAccount where the template names none, its labels, a deadline, no
/// retries, owned by the Probe. batch/v1 only.
pub fn job_for(
    probe: &Probe,
    template: &k8s_openapi::api::core::v1::PodSpec,
    at: jiff::Timestamp,
    report_url: &str,
) -> Job {
    job_with(probe, template, at, report_url, &probe.spec.configs)
}

/// The Jobs of the run `run`: one named as the run with every config's environment (KubeProber's
/// way), or with `spec.perConfig` one per `configs` entry, named `<run>-<index>`, with only that
/// entry's environment, `KDIAG_PROBE_CONFIG` and the annotation naming the entry on the Job and
/// its pod (the report endpoint stores the pod's results under that name).
pub fn jobs_for(
    probe: &Probe,
    template: &k8s_openapi::api::core::v1::PodSpec,
    at: jiff::Timestamp,
    report_url: &str,
    run: &str,
) -> Vec<Job> {
    let with_run = |mut job: Job, name: String| {
        job.metadata.name = Some(name);
        job.metadata.labels.get_or_insert_default().insert(
            kdiag_api::diagnosis::probe_run::PROBE_RUN_LABEL.into(),
            run.into(),
        );
        job
    };
    if !probe.spec.per_config || probe.spec.configs.is_empty() {
        let job = job_with(probe, template, at, report_url, &probe.spec.configs);
        return vec![with_run(job, run.to_owned())];
    }
    probe
        .spec
        .configs
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let name = config_name(config, i);
            let mut config = config.clone();
            config.env.push(EnvVar {
                name: probe_env::PROBE_CONFIG.into(),
                value: Some(name.clone()),
                ..Default::default()
            });
            let mut job = job_with(probe, template, at, report_url, &[config]);
            let annotate = |meta: &mut ObjectMeta| {
                meta.annotations
                    .get_or_insert_default()
                    .insert(PROBE_CONFIG_ANNOTATION.into(), name.clone());
            };
            annotate(&mut job.metadata);
            if let Some(spec) = job.spec.as_mut() {
                annotate(spec.template.metadata.get_or_insert_default());
            }
            let suffix = format!("-{i}");
            let base: String = run.chars().take(63 - suffix.len()).collect();
            with_run(job, format!("{}{suffix}", base.trim_end_matches('-')))
        })
        .collect()
}

/// The name a `configs` entry's results are stored under: its name, or `config-<index>`.
pub fn config_name(config: &kdiag_api::ProbeConfig, index: usize) -> String {
    if config.name.trim().is_empty() {
        format!("config-{index}")
    } else {
        config.name.trim().to_owned()
    }
}

fn job_with(
    probe: &Probe,
    template: &k8s_openapi::api::core::v1::PodSpec,
    at: jiff::Timestamp,
    report_url: &str,
    configs: &[kdiag_api::ProbeConfig],
) -> Job {
    let ns = probe.namespace().unwrap_or_default();
    let name = probe.name_any();
    let labels: BTreeMap<String, String> = [
        (
            probe_labels::APP.to_owned(),
            probe_labels::APP_VALUE.to_owned(),
        ),
        (probe_labels::PROBE_NAME.to_owned(), name.clone()),
        (probe_labels::PROBE_NAMESPACE.to_owned(), ns.clone()),
    ]
    .into();
    let mut spec = template.clone();
    spec.restart_policy = Some("Never".into());
    // KubeProber forced its worker account; a template that names an account of its own keeps
    // it (KubeProber overwrote it, so no upstream Probe relied on one).
    if runs_as_worker(template) {
        spec.service_account_name = Some(WORKER_SERVICE_ACCOUNT.into());
    }
    let mut extra = vec![
        EnvVar {
            name: probe_env::PROBE_NAMESPACE.into(),
            value: Some(ns.clone()),
            ..Default::default()
        },
        EnvVar {
            name: probe_env::PROBE_NAME.into(),
            value: Some(name.clone()),
            ..Default::default()
        },
        EnvVar {
            name: probe_env::STATUS_REPORT_URL.into(),
            value: Some(report_url.into()),
            ..Default::default()
        },
    ];
    // kdiag's addition: the token the checker reports with, projected for the report
    // endpoint's audience and bound to the pod (docs/probes.md, "Authenticated reports").
    let token_volume = "kdiag-probe-status-token";
    extra.push(EnvVar {
        name: probe_env::STATUS_REPORT_TOKEN_FILE.into(),
        value: Some(format!("{}/token", kdiag_api::kubeprober::REPORT_TOKEN_DIR)),
        ..Default::default()
    });
    for config in configs {
        extra.extend(config.env.iter().cloned());
    }
    let volumes = spec.volumes.get_or_insert_default();
    volumes.retain(|v| v.name != token_volume);
    volumes.push(Volume {
        name: token_volume.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(kdiag_api::kubeprober::REPORT_AUDIENCE.into()),
                    expiration_seconds: Some(kdiag_api::kubeprober::REPORT_TOKEN_SECONDS),
                    path: "token".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let extra_config = EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: EXTRA_CONFIG_MAP.into(),
            // Optional, unlike KubeProber's: a namespace without it still runs its probes.
            optional: Some(true),
        }),
        ..Default::default()
    };
    for c in &mut spec.containers {
        // KubeProber forced Always; a policy the template sets is kept, so images loaded on
        // the nodes without a registry (IfNotPresent, Never) still run.
        c.image_pull_policy.get_or_insert_with(|| "Always".into());
        let env_from = c.env_from.get_or_insert_default();
        if !env_from.iter().any(|e| {
            e.config_map_ref
                .as_ref()
                .is_some_and(|r| r.name == EXTRA_CONFIG_MAP)
        }) {
            env_from.push(extra_config.clone());
        }
        let env = c.env.get_or_insert_default();
        for e in &extra {
            env.retain(|x| x.name != e.name);
            env.push(e.clone());
        }
        let mounts = c.volume_mounts.get_or_insert_default();
        mounts.retain(|m| m.name != token_volume);
        mounts.push(VolumeMount {
            name: token_volume.into(),
            mount_path: kdiag_api::kubeprober::REPORT_TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let owner = probe
        .controller_owner_ref(&())
        .map(|mut o: OwnerReference| {
            o.block_owner_deletion = Some(true);
            o
        });
    Job {
        metadata: ObjectMeta {
            name: Some(schedule::job_name(&name, at)),
            namespace: Some(ns),
            labels: Some(labels.clone()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// True when the checker pods of `template` run as [`WORKER_SERVICE_ACCOUNT`]: it names no
/// account of its own.
pub fn runs_as_worker(template: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    let named = |n: &Option<String>| n.as_deref().is_some_and(|n| !n.is_empty());
    !named(&template.service_account_name) && !named(&template.service_account)
}

/// Creates the `kubeprober-worker` ServiceAccount in `ns` and binds the ClusterRole of that name
/// (config/deploy/10-rbac.yaml) to it, unless they exist. An existing account or binding is left
/// as it is, so an administrator may bind more rights to it, or bind it to another role.
async fn ensure_worker(ctx: &Ctx, ns: &str, key: &str) -> Result<(), Error> {
    ensure_worker_account(&ctx.client, ns, key).await
}

/// [`ensure_worker`] with a client: for continuous probes' resident checker pods too.
pub(super) async fn ensure_worker_account(
    client: &Client,
    ns: &str,
    key: &str,
) -> Result<(), Error> {
    let labels: BTreeMap<String, String> = [(
        "app.kubernetes.io/managed-by".to_owned(),
        "kdiag".to_owned(),
    )]
    .into();
    let meta = ObjectMeta {
        name: Some(WORKER_SERVICE_ACCOUNT.into()),
        namespace: Some(ns.into()),
        labels: Some(labels),
        ..Default::default()
    };
    let account = ServiceAccount {
        metadata: meta.clone(),
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &account)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(Error::kube(
                "create the ServiceAccount kubeprober-worker for",
                key.to_owned(),
                e,
            ));
        }
    }
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: WORKER_SERVICE_ACCOUNT.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: WORKER_SERVICE_ACCOUNT.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    match Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            "bind the ClusterRole kubeprober-worker for",
            key.to_owned(),
            e,
        )),
    }
}

/// Creates the Jobs of the run `run` ([`jobs_for`]) and returns their names; deletes the
/// probe's Jobs beyond the last few runs.
pub(super) async fn create_job(
    ctx: &Ctx,
    probe: &Probe,
    template: &k8s_openapi::api::core::v1::PodSpec,
    at: jiff::Timestamp,
    run: &str,
) -> Result<Vec<String>, Error> {
    let ns = probe.namespace().unwrap_or_default();
    let key = format!("Probe {ns}/{}", probe.name_any());
    if runs_as_worker(template) {
        ensure_worker(ctx, &ns, &key).await?;
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs = jobs_for(probe, template, at, &ctx.config.report_url, run);
    let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    for job in jobs {
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube("create the Job of", key.clone(), e)),
        }
    }
    // Keep the last few runs for `kubectl logs`; older Jobs go.
    let selector = format!("{}={}", probe_labels::PROBE_NAME, probe.name_any());
    let mut jobs = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Error::kube("list the Jobs of", key, e))?
        .items;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.metadata.creation_timestamp.clone()));
    let per_run = if probe.spec.per_config {
        probe.spec.configs.len().max(1)
    } else {
        1
    };
    for old in jobs.into_iter().skip(JOBS_KEPT * per_run) {
        let _ = api
            .delete(&old.name_any(), &DeleteParams::background())
            .await;
    }
    Ok(names)
}

/// Runs the probe's native checks, stores their results in its ProbeStatus, and returns them.
pub(super) async fn run_native_checks(
    ctx: &Ctx,
    probe: &Probe,
) -> Result<Vec<ProbeCheckerStatus>, Error> {
    let runs = probe.spec.checks.iter().map(|c| async move {
        let outcome =
            match tokio::time::timeout(Duration::from_secs(120), checks::run(&ctx.client, c)).await
            {
                Ok(o) => o,
                Err(_) => checks::Outcome {
                    status: CheckerStatus::Unknown,
                    message: "the check did not finish within 120s".into(),
                },
            };
        ProbeCheckerStatus {
            name: c.name.clone(),
            status: outcome.status,
            message: outcome.message,
            last_run: Some(now()),
            diagnosis: None,
            window: None,
        }
    });
    let checkers = futures::future::join_all(runs).await;
    let r = Report {
        namespace: probe.namespace().unwrap_or_default(),
        probe: probe.name_any(),
        checkers: checkers.clone(),
        rejected: Vec::new(),
    };
    report::apply(&ctx.client, &r).await?;
    Ok(checkers)
}

/// Marks results older than `max_age` stale: UNKNOWN with when they were last refreshed.
async fn mark_stale(ctx: &Ctx, ns: &str, probe: &str, max_age: Duration) -> Result<(), Error> {
    let api: Api<ProbeStatus> = Api::namespaced(ctx.client.clone(), ns);
    let Some(ps) = api
        .get_opt(probe)
        .await
        .map_err(|e| Error::kube("read", format!("ProbeStatus {ns}/{probe}"), e))?
    else {
        return Ok(());
    };
    let now_ts = jiff::Timestamp::now();
    let stale: Vec<ProbeCheckerStatus> = ps
        .spec
        .checkers
        .iter()
        .filter(|c| !c.message.starts_with("stale:"))
        .filter_map(|c| {
            let last = c.last_run.as_ref()?.0;
            let age = now_ts.duration_since(last).unsigned_abs();
            (age > max_age).then(|| ProbeCheckerStatus {
                name: c.name.clone(),
                status: CheckerStatus::Unknown,
                message: format!(
                    "stale: no result since {last} ({} minutes); the checker has stopped reporting",
                    age.as_secs() / 60
                ),
                last_run: c.last_run.clone(),
                diagnosis: None,
                window: None,
            })
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    report::apply(
        &ctx.client,
        &Report {
            namespace: ns.into(),
            probe: probe.into(),
            checkers: stale,
            rejected: Vec::new(),
        },
    )
    .await
    .map(|_| ())
}

/// Records a finished or stuck checker pod's outcome when it did not report one itself.
async fn reconcile_job(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if job.annotations().contains_key(OUTCOME_ANNOTATION) {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let Some(probe) = job.labels().get(probe_labels::PROBE_NAME).cloned() else {
        return Ok(Action::await_change());
    };
    let key = format!("{ns}/{probe}");
    let job_key = format!("Job {ns}/{}", job.name_any());
    let started = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .or_else(|| job.metadata.creation_timestamp.clone());
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let failed = conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    let complete = conditions
        .iter()
        .any(|c| c.type_ == "Complete" && c.status == "True");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("job-name={}", job.name_any())))
        .await
        .map_err(|e| Error::kube("list the checker pods of", job_key.clone(), e))?
        .items;

    let config = job.annotations().get(PROBE_CONFIG_ANNOTATION).cloned();
    let outcome: Option<(CheckerStatus, String)> = if let Some(f) = failed {
        Some((
            CheckerStatus::Unknown,
            pod_failure_message(&pods, f.reason.as_deref(), f.message.as_deref()),
        ))
    } else if complete {
        if reported_since(&ctx, &ns, &probe, config.as_deref(), started.as_ref()).await? {
            Some((
                CheckerStatus::Pass,
                "the checker pod ran and reported its results".into(),
            ))
        } else {
            Some((CheckerStatus::Unknown, "the checker pod exited without reporting any result; check that it calls the report URL in KUBEPROBER_STATUS_REPORT_URL".into()))
        }
    } else {
        unschedulable_for(&pods, ctx.config.unschedulable_after)
            .map(|msg| (CheckerStatus::Unknown, msg))
    };
    let Some((status, message)) = outcome else {
        // Still running: look again when the pod changes, or when it may have become unschedulable long enough.
        return Ok(Action::requeue(ctx.config.unschedulable_after));
    };
    // KubeProber reports a broken checker pod as one checker named after the probe; a pod of
    // one `configs` entry (perConfig) under the entry's name.
    let own = job
        .annotations()
        .get(PROBE_CONFIG_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| probe.clone());
    let only_if_present = status == CheckerStatus::Pass;
    let existing = Api::<ProbeStatus>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&probe)
        .await
        .map_err(|e| Error::kube("read", format!("ProbeStatus {key}"), e))?;
    let has_probe_checker = existing
        .as_ref()
        .is_some_and(|ps| ps.spec.checkers.iter().any(|c| c.name == own));
    // A config's checker holds what its pod reported: the pod's own outcome replaces it only
    // when the pod reported nothing this run.
    let config_reported = match &config {
        Some(config) => {
            status == CheckerStatus::Pass
                || reported_since(&ctx, &ns, &probe, Some(config), started.as_ref()).await?
        }
        None => false,
    };
    if !config_reported && (!only_if_present || has_probe_checker) {
        let checker = ProbeCheckerStatus {
            name: own.clone(),
            status,
            message: message.clone(),
            last_run: Some(now()),
            diagnosis: None,
            window: None,
        };
        report::apply(
            &ctx.client,
            &Report {
                namespace: ns.clone(),
                probe: probe.clone(),
                checkers: vec![checker],
                rejected: Vec::new(),
            },
        )
        .await?;
    }
    Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {OUTCOME_ANNOTATION: status.as_str()}}}),
            ),
        )
        .await
        .map_err(|e| Error::kube("annotate", job_key.clone(), e))?;
    if status != CheckerStatus::Pass {
        tracing::info!(probe = %key, job = %job.name_any(), message = %message, "checker pod outcome recorded as UNKNOWN");
    }
    Ok(Action::await_change())
}

/// Did any checker of the probe (of its `configs` entry `config`, with perConfig) report after
/// the run started?
async fn reported_since(
    ctx: &Ctx,
    ns: &str,
    probe: &str,
    config: Option<&str>,
    started: Option<&Time>,
) -> Result<bool, Error> {
    let Some(ps) = Api::<ProbeStatus>::namespaced(ctx.client.clone(), ns)
        .get_opt(probe)
        .await
        .map_err(|e| Error::kube("read", format!("ProbeStatus {ns}/{probe}"), e))?
    else {
        return Ok(false);
    };
    let since = started.map(|t| t.0.as_second()).unwrap_or(0);
    Ok(ps
        .spec
        .checkers
        .iter()
        .filter(|c| match config {
            Some(config) => super::report::of_config(&c.name, config),
            None => c.name != probe,
        })
        .any(|c| {
            c.last_run
                .as_ref()
                .is_some_and(|t| t.0.as_second() >= since)
        }))
}

/// KubeProber's message for a failed checker pod: `pod running failed, reason: …, message: …`,
/// followed by `(pod <name>)` so the trigger can point the diagnosis at it.
pub fn pod_failure_message(
    pods: &[Pod],
    job_reason: Option<&str>,
    job_message: Option<&str>,
) -> String {
    let failed = pods.iter().find_map(|p| {
        let terminated = p
            .status
            .as_ref()?
            .container_statuses
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find_map(|cs| {
                cs.state
                    .and_then(|st| st.terminated)
                    .filter(|t| t.exit_code != 0)
            })?;
        Some((p.metadata.name.clone().unwrap_or_default(), terminated))
    });
    match failed {
        Some((pod, t)) => format!(
            "pod running failed, reason: {}, message: exit code {}{} (pod {pod})",
            t.reason.unwrap_or_else(|| "Error".into()),
            t.exit_code,
            t.message
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default()
        ),
        None => format!(
            "pod running failed, reason: {}, message: {}{}",
            job_reason.unwrap_or("Failed"),
            job_message.unwrap_or("the checker Job failed"),
            pods.first()
                .and_then(|p| p.metadata.name.clone())
                .map(|n| format!(" (pod {n})"))
                .unwrap_or_default()
        ),
    }
}

/// A message if a pod has been unschedulable for at least `after`.
pub fn unschedulable_for(pods: &[Pod], after: Duration) -> Option<String> {
    let now_ts = jiff::Timestamp::now();
    pods.iter()
        .filter_map(|p| {
            Some((
                p.metadata.name.clone().unwrap_or_default(),
                p.status.as_ref()?.conditions.as_ref()?,
            ))
        })
        .flat_map(|(pod, cs)| cs.iter().map(move |c| (pod.clone(), c)))
        .find_map(|(pod, c)| {
            let since = c.last_transition_time.as_ref()?.0;
            (c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && now_ts.duration_since(since).unsigned_abs() >= after)
                .then(|| {
                    format!(
                        "pod running failed, reason: Unschedulable, message: {} (pod {pod})",
                        c.message.clone().unwrap_or_default()
                    )
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_with(template: serde_json::Value) -> (Probe, k8s_openapi::api::core::v1::PodSpec) {
        let probe: Probe = serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"template": template}
        }))
        .unwrap();
        let spec = probe.spec.template.clone().unwrap();
        (probe, spec)
    }

    fn pod_of(job: &Job) -> k8s_openapi::api::core::v1::PodSpec {
        job.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn a_checker_pod_gets_kubeprobers_account_pull_policy_and_extra_config() {
        let (probe, template) = probe_with(json!({"containers": [
            {"name": "a", "image": "x"},
            {"name": "b", "image": "y", "imagePullPolicy": "IfNotPresent"}]}));
        let pod = pod_of(&job_for(
            &probe,
            &template,
            jiff::Timestamp::UNIX_EPOCH,
            "u",
        ));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("kubeprober-worker")
        );
        let policies: Vec<_> = pod
            .containers
            .iter()
            .map(|c| c.image_pull_policy.as_deref())
            .collect();
        assert_eq!(policies, [Some("Always"), Some("IfNotPresent")]);
        for c in &pod.containers {
            let from = c.env_from.clone().unwrap();
            assert_eq!(from.len(), 1, "{from:?}");
            let r = from[0].config_map_ref.clone().unwrap();
            assert_eq!((r.name.as_str(), r.optional), ("extra-config", Some(true)));
        }
        assert!(
            pod.volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "kdiag-probe-status-token"),
            "the report token is still projected"
        );
    }

    fn env_of(job: &Job) -> Vec<(String, String)> {
        pod_of(job).containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                !e.name.starts_with("KUBEPROBER_") && !e.name.starts_with("KDIAG_PROBE_STATUS")
            })
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn configs_go_into_one_pod_unless_per_config_makes_one_job_per_config() {
        let probe = |per_config: bool| -> Probe {
            serde_json::from_value(json!({
                "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"template": {"containers": [{"name": "a", "image": "x"}]},
                    "perConfig": per_config,
                    "configs": [
                        {"name": "shop", "env": [{"name": "URL", "value": "http://shop"}]},
                        {"env": [{"name": "URL", "value": "http://cart"}]}]}
            }))
            .unwrap()
        };
        let merged = probe(false);
        let template = merged.spec.template.clone().unwrap();
        let jobs = jobs_for(
            &merged,
            &template,
            jiff::Timestamp::UNIX_EPOCH,
            "u",
            "p-run",
        );
        assert_eq!(jobs.len(), 1, "KubeProber's way: one pod");
        assert_eq!(jobs[0].name_any(), "p-run");
        assert_eq!(
            env_of(&jobs[0]),
            [("URL".to_owned(), "http://cart".to_owned())],
            "every config's env, the later winning as in KubeProber"
        );

        let split = probe(true);
        let jobs = jobs_for(&split, &template, jiff::Timestamp::UNIX_EPOCH, "u", "p-run");
        let names: Vec<_> = jobs.iter().map(|j| j.name_any()).collect();
        assert_eq!(names, ["p-run-0", "p-run-1"]);
        for (job, (config, url)) in jobs
            .iter()
            .zip([("shop", "http://shop"), ("config-1", "http://cart")])
        {
            assert_eq!(
                env_of(job),
                [
                    ("URL".to_owned(), url.to_owned()),
                    ("KDIAG_PROBE_CONFIG".to_owned(), config.to_owned())
                ]
            );
            let pod_annotations = job
                .spec
                .clone()
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap();
            assert_eq!(pod_annotations[PROBE_CONFIG_ANNOTATION], config);
            assert_eq!(
                job.labels()[kdiag_api::diagnosis::probe_run::PROBE_RUN_LABEL],
                "p-run"
            );
        }
    }

    #[test]
    fn a_template_that_names_its_account_or_already_reads_extra_config_keeps_them() {
        let (probe, template) = probe_with(json!({"serviceAccountName": "mine", "containers": [
            {"name": "a", "image": "x",
             "envFrom": [{"configMapRef": {"name": "extra-config"}}]}]}));
        assert!(!runs_as_worker(&template));
        let pod = pod_of(&job_for(
            &probe,
            &template,
            jiff::Timestamp::UNIX_EPOCH,
            "u",
        ));
        assert_eq!(pod.service_account_name.as_deref(), Some("mine"));
        assert_eq!(pod.containers[0].env_from.clone().unwrap().len(), 1);
    }
}
