//! Probe runs with history: every run of a Probe is a `ProbeRun` (diagnosis.netease.com/v1).
//!
//! - A **manual** run is a ProbeRun someone created (`kubectl diag probe run`), Pending: the
//!   runner claims it (a status write guarded by its resourceVersion, so two reconciles cannot
//!   both run it), makes the Probe its owner, and runs the probe now, whatever its schedule.
//! - A **scheduled** run is recorded by the runner itself as a ProbeRun with trigger Schedule,
//!   named as its Job.
//! - A run with checker pods finishes when its Jobs' outcomes are recorded; a run of native checks
//!   only finishes at once. Its status then holds each checker's result of this run (those whose
//!   `lastRun` is not older than the run), and the root causes as kdiag writes them back next to
//!   the probe result, refreshed until they are final or for [`DIAGNOSIS_WAIT`].
//! - Of a probe's finished runs, the newest `--probe-history` are kept; older ones are deleted.
//!
//! The decisions ([`results_since`], [`worst`], [`to_prune`], [`refresh_diagnoses`]) are pure.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::diagnosis::probe_run::{PROBE_RUN_PROBE_LABEL, ProbeRunChecker, probe_label_value};
use kdiag_api::{
    CheckerStatus, Probe, ProbeCheckerStatus, ProbeRun, ProbeRunPhase, ProbeRunSpec,
    ProbeRunTrigger, ProbeStatus,
};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::runner::{Ctx, OUTCOME_ANNOTATION, create_job, run_native_checks};
use crate::Error;

/// ProbeRuns kept per probe unless `--probe-history` says otherwise.
pub const DEFAULT_HISTORY: usize = 20;
/// How long after a run finished its failures' root causes are still looked for.
pub const DIAGNOSIS_WAIT: Duration = Duration::from_secs(600);
/// Longer than native checks may take (each has 120 s): a run of native checks only that is
/// still Running after this was interrupted.
const NATIVE_DEADLINE: Duration = Duration::from_secs(150);
/// How often a running run's Job, or a finished run's diagnoses, are looked at again.
const POLL: Duration = Duration::from_secs(3);

/// Records a scheduled run of `probe` as a ProbeRun and runs it.
pub(super) async fn run_scheduled(
    ctx: &Ctx,
    probe: &Probe,
    at: jiff::Timestamp,
) -> Result<(), Error> {
    let ns = probe.namespace().unwrap_or_default();
    let name = super::schedule::job_name(&probe.name_any(), at);
    let run = ProbeRun {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(
                [(
                    PROBE_RUN_PROBE_LABEL.to_owned(),
                    probe_label_value(&probe.name_any()),
                )]
                .into(),
            ),
            owner_references: probe.controller_owner_ref(&()).map(|o| vec![o]),
            annotations: Some(kdiag_api::diagnosis::probe_run::requested_now()),
            ..Default::default()
        },
        spec: ProbeRunSpec {
            probe: probe.name_any(),
            trigger: ProbeRunTrigger::Schedule,
            ..Default::default()
        },
        status: None,
    };
    let api: Api<ProbeRun> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &run).await {
        Ok(_) => {}
        // Recorded before a crash: run it again (the Job's create is idempotent too).
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::kube("create", format!("ProbeRun {ns}/{name}"), e)),
    }
    let status = json!({"status": {"phase": ProbeRunPhase::Running, "startedAt": Time(at),
        "jobs": planned_jobs(ctx, probe, &name, at)}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(|e| Error::kube("start", format!("ProbeRun {ns}/{name}"), e))?;
    execute(ctx, probe, &name, at).await?;
    prune(ctx, &ns, &probe.name_any()).await
}

/// Runs `probe` as the run `run`: its Job (named as the run) and its native checks. A run
/// without a Job is finished here with the native checks' results.
async fn execute(ctx: &Ctx, probe: &Probe, run: &str, at: jiff::Timestamp) -> Result<(), Error> {
    let ns = probe.namespace().unwrap_or_default();
    if let Some(template) = &probe.spec.template {
        create_job(ctx, probe, template, at, run).await?;
    }
    let native = if probe.spec.checks.is_empty() {
        Vec::new()
    } else {
        run_native_checks(ctx, probe).await?
    };
    if probe.spec.template.is_none() {
        let checkers: Vec<ProbeRunChecker> = native.iter().map(checker_of).collect();
        finish(ctx, &ns, run, checkers).await?;
    }
    Ok(())
}

/// The names of the Jobs the run `run` will have: recorded with its start, in the same write,
/// so the run is never seen running without them (and taken for a run of native checks only).
fn planned_jobs(ctx: &Ctx, probe: &Probe, run: &str, at: jiff::Timestamp) -> Vec<String> {
    probe
        .spec
        .template
        .as_ref()
        .map(|t| {
            super::runner::jobs_for(probe, t, at, &ctx.config.report_url, run)
                .iter()
                .map(|j| j.name_any())
                .collect()
        })
        .unwrap_or_default()
}

fn checker_of(c: &ProbeCheckerStatus) -> ProbeRunChecker {
    ProbeRunChecker {
        name: c.name.clone(),
        status: c.status,
        message: c.message.clone(),
        last_run: c.last_run.clone(),
        diagnosis: c.diagnosis.clone(),
    }
}

async fn finish(
    ctx: &Ctx,
    ns: &str,
    run: &str,
    checkers: Vec<ProbeRunChecker>,
) -> Result<(), Error> {
    let status = json!({"status": {
        "phase": ProbeRunPhase::Finished,
        "finishedAt": Time(jiff::Timestamp::now()),
        "result": worst(&checkers),
        "checkers": checkers,
    }});
    Api::<ProbeRun>::namespaced(ctx.client.clone(), ns)
        .patch_status(run, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map_err(|e| Error::kube("record the results of", format!("ProbeRun {ns}/{run}"), e))?;
    Ok(())
}

/// One ProbeRun: claim and run a Pending one, finish a Running one whose Job has ended, and
/// copy root causes into a finished one while they come.
pub(super) async fn reconcile(
    obj: Arc<DeserializeGuard<ProbeRun>>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let Ok(run) = &obj.0 else {
        return Ok(Action::await_change());
    };
    let ns = run.namespace().unwrap_or_default();
    let name = run.name_any();
    let key = format!("ProbeRun {ns}/{name}");
    let api: Api<ProbeRun> = Api::namespaced(ctx.client.clone(), &ns);
    let status = run.status.clone().unwrap_or_default();
    match status.phase {
        // The runner records its scheduled runs itself: manual runs and runs started by a
        // change (`triggers`) are claimed here.
        ProbeRunPhase::Pending if run.spec.trigger == ProbeRunTrigger::Schedule => {
            Ok(Action::await_change())
        }
        ProbeRunPhase::Pending => {
            let probe = Api::<Probe>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&run.spec.probe)
                .await
                .map_err(|e| Error::kube("read the Probe of", key.clone(), e))?;
            let fail = |message: String| {
                json!({"metadata": {"resourceVersion": run.resource_version()},
                       "status": {"phase": ProbeRunPhase::Failed, "message": message,
                                  "finishedAt": Time(jiff::Timestamp::now())}})
            };
            let Some(probe) = probe else {
                let patch = fail(format!(
                    "there is no Probe {} in namespace {ns}",
                    run.spec.probe
                ));
                claim(&api, &name, patch, &key).await?;
                return Ok(Action::await_change());
            };
            if probe.spec.template.is_none() && probe.spec.checks.is_empty() {
                let patch =
                    fail("the Probe has neither a template nor checks: nothing to run".into());
                claim(&api, &name, patch, &key).await?;
                return Ok(Action::await_change());
            }
            let now = jiff::Timestamp::now();
            let patch = json!({"metadata": {"resourceVersion": run.resource_version()},
                "status": {"phase": ProbeRunPhase::Running, "startedAt": Time(now),
                           "jobs": planned_jobs(&ctx, &probe, &name, now)}});
            if !claim(&api, &name, patch, &key).await? {
                return Ok(Action::await_change());
            }
            // Owned by its Probe (garbage-collected with it) and labelled with it (history).
            let owner = probe.controller_owner_ref(&());
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {
                    "ownerReferences": owner.map(|o| vec![o]),
                    "labels": {PROBE_RUN_PROBE_LABEL: probe_label_value(&probe.name_any())}}})),
            )
            .await
            .map_err(|e| Error::kube("set the owner of", key.clone(), e))?;
            tracing::info!(run = %key, trigger = run.spec.trigger.as_str(), "probe run started");
            execute(&ctx, &probe, &name, now).await?;
            prune(&ctx, &ns, &probe.name_any()).await?;
            Ok(Action::requeue(POLL))
        }
        ProbeRunPhase::Running => {
            let started = status.started_at.as_ref().map(|t| t.0);
            // Native checks only: the runner finishes the run itself once they are done; it
            // is finished here only when that cannot have happened (the controller restarted
            // mid-run), with the results stored before, if any.
            let age = started
                .map(|s| jiff::Timestamp::now().duration_since(s).unsigned_abs())
                .unwrap_or(NATIVE_DEADLINE);
            if status.jobs.is_empty() && age < NATIVE_DEADLINE {
                return Ok(Action::requeue(NATIVE_DEADLINE - age));
            }
            let mut ended = true;
            for job in &status.jobs {
                let done = match Api::<Job>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(job)
                    .await
                    .map_err(|e| Error::kube("read the Job of", key.clone(), e))?
                {
                    Some(j) => j.annotations().contains_key(OUTCOME_ANNOTATION),
                    // Not created yet (the run has just started), or deleted since.
                    None => age >= NATIVE_DEADLINE,
                };
                ended &= done;
            }
            if !ended {
                return Ok(Action::requeue(POLL));
            }
            let ps = Api::<ProbeStatus>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&run.spec.probe)
                .await
                .map_err(|e| Error::kube("read the ProbeStatus of", key.clone(), e))?;
            let checkers = match (&ps, started) {
                (Some(ps), Some(started)) => results_since(ps, started),
                _ => Vec::new(),
            };
            finish(&ctx, &ns, &name, checkers).await?;
            Ok(Action::requeue(POLL))
        }
        ProbeRunPhase::Finished => {
            let finished = status.finished_at.as_ref().map(|t| t.0);
            let waited = finished
                .map(|f| jiff::Timestamp::now().duration_since(f).unsigned_abs())
                .unwrap_or(DIAGNOSIS_WAIT);
            if settled(&status.checkers) || waited >= DIAGNOSIS_WAIT {
                return Ok(Action::await_change());
            }
            let Some(ps) = Api::<ProbeStatus>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&run.spec.probe)
                .await
                .map_err(|e| Error::kube("read the ProbeStatus of", key.clone(), e))?
            else {
                return Ok(Action::await_change());
            };
            if let Some(checkers) = refresh_diagnoses(&status.checkers, &ps) {
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"checkers": checkers}})),
                )
                .await
                .map_err(|e| Error::kube("record the root causes of", key.clone(), e))?;
            }
            Ok(Action::requeue(POLL * 2))
        }
        ProbeRunPhase::Failed => Ok(Action::await_change()),
    }
}

/// Writes `patch` (which carries the resourceVersion the decision was made on). False when
/// another reconcile got there first.
async fn claim(
    api: &Api<ProbeRun>,
    name: &str,
    patch: serde_json::Value,
    key: &str,
) -> Result<bool, Error> {
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(Error::kube("claim", key.to_owned(), e)),
    }
}

/// Deletes the probe's finished runs beyond the newest `history`.
async fn prune(ctx: &Ctx, ns: &str, probe: &str) -> Result<(), Error> {
    let api: Api<ProbeRun> = Api::namespaced(ctx.client.clone(), ns);
    let runs = api
        .list(&ListParams::default().labels(&format!(
            "{PROBE_RUN_PROBE_LABEL}={}",
            probe_label_value(probe)
        )))
        .await
        .map_err(|e| Error::kube("list the ProbeRuns of", format!("Probe {ns}/{probe}"), e))?
        .items;
    let listed: Vec<Listed> = runs
        .iter()
        // The label may be cut short: another probe's runs may share it.
        .filter(|r| r.spec.probe == probe)
        .map(|r| Listed {
            name: r.name_any(),
            created: r
                .annotations()
                .get(kdiag_api::diagnosis::probe_run::PROBE_RUN_REQUESTED_AT_ANNOTATION)
                .and_then(|t| t.parse().ok())
                .or_else(|| r.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or_default(),
            done: r.status.as_ref().is_some_and(|s| s.phase.is_final()),
        })
        .collect();
    for name in to_prune(&listed, ctx.config.history) {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("delete", format!("ProbeRun {ns}/{name}"), e)),
        }
    }
    Ok(())
}

/// A ProbeRun as pruning sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// When it was asked for: its requested-at annotation, else its creation (whole seconds).
    pub created: jiff::Timestamp,
    /// Finished or Failed; a run still going is never deleted.
    pub done: bool,
}

/// The runs to delete so that at most `keep` remain: the oldest finished ones beyond the newest
/// `keep` (by when they were asked for, then name, so the choice is stable).
pub fn to_prune(runs: &[Listed], keep: usize) -> Vec<String> {
    let mut sorted: Vec<&Listed> = runs.iter().collect();
    sorted.sort_by(|a, b| (b.created, &b.name).cmp(&(a.created, &a.name)));
    sorted
        .into_iter()
        .skip(keep.max(1))
        .filter(|r| r.done)
        .map(|r| r.name.clone())
        .collect()
}

/// The checkers of `ps` that reported in this run: those whose `lastRun` is not older than the
/// run's start (to the second, as reports carry whole seconds).
pub fn results_since(ps: &ProbeStatus, started: jiff::Timestamp) -> Vec<ProbeRunChecker> {
    let since = started.as_second();
    ps.spec
        .checkers
        .iter()
        .filter(|c| {
            c.last_run
                .as_ref()
                .is_some_and(|t| t.0.as_second() >= since)
        })
        .map(checker_of)
        .collect()
}

/// The worst status of a run, as the ProbeStatus summary ranks them; None without checkers.
pub fn worst(checkers: &[ProbeRunChecker]) -> Option<CheckerStatus> {
    checkers
        .iter()
        .map(|c| c.status)
        .max_by_key(|s| s.severity())
}

/// Whether every failure of the run has a final diagnosis (Succeeded or Failed).
pub fn settled(checkers: &[ProbeRunChecker]) -> bool {
    checkers
        .iter()
        .filter(|c| c.status.severity() >= CheckerStatus::Unknown.severity())
        .all(|c| {
            c.diagnosis
                .as_ref()
                .is_some_and(|d| d.phase == "Succeeded" || d.phase == "Failed")
        })
}

/// The run's checkers with the diagnoses kdiag wrote next to the same results (same checker,
/// same `lastRun`) in the ProbeStatus; None when nothing changed. A later result of the checker
/// belongs to a later run, and its diagnosis is not this run's.
pub fn refresh_diagnoses(
    checkers: &[ProbeRunChecker],
    ps: &ProbeStatus,
) -> Option<Vec<ProbeRunChecker>> {
    let mut changed = false;
    let updated = checkers
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let same = ps
                .spec
                .checkers
                .iter()
                .find(|p| p.name == c.name && p.last_run == c.last_run);
            if same.is_some()
                && let Some(d) = kdiag_api::gate::diagnosis(ps, &c.name)
                && c.diagnosis.as_ref() != Some(&d)
            {
                c.diagnosis = Some(d);
                changed = true;
            }
            c
        })
        .collect();
    changed.then_some(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn listed(name: &str, created: &str, done: bool) -> Listed {
        Listed {
            name: name.into(),
            created: ts(created),
            done,
        }
    }

    #[test]
    fn the_oldest_finished_runs_beyond_the_history_are_pruned_and_running_ones_kept() {
        let runs = [
            listed("a", "2026-12-01T10:00:00Z", true),
            listed("b", "2026-12-01T10:01:00Z", false),
            listed("c", "2026-12-01T10:02:00Z", true),
            listed("d", "2026-12-01T10:03:00Z", true),
            listed("e", "2026-12-01T10:04:00Z", true),
        ];
        assert_eq!(to_prune(&runs, 2), ["c", "a"], "b is still running");
        assert!(to_prune(&runs, 5).is_empty());
        assert_eq!(to_prune(&runs, 0).len(), 3, "at least the newest is kept");
    }

    fn status(checkers: serde_json::Value) -> ProbeStatus {
        serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "p", "namespace": "n"}, "spec": {"checkers": checkers}
        }))
        .unwrap()
    }

    #[test]
    fn a_run_takes_the_results_reported_since_it_started_and_its_worst() {
        let ps = status(json!([
            {"name": "old", "status": "ERROR", "message": "x", "lastRun": "2026-12-01T09:00:00Z"},
            {"name": "dns", "status": "PASS", "lastRun": "2026-12-01T10:00:00Z"},
            {"name": "api", "status": "WARN", "message": "slow", "lastRun": "2026-12-01T10:00:05Z"}
        ]));
        let got = results_since(&ps, ts("2026-12-01T10:00:00.400Z"));
        let names: Vec<_> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["dns", "api"]);
        assert_eq!(worst(&got), Some(CheckerStatus::Warn));
        assert_eq!(worst(&[]), None);
    }

    #[test]
    fn root_causes_are_copied_only_for_the_same_result_until_final() {
        let run = vec![ProbeRunChecker {
            name: "dns".into(),
            status: CheckerStatus::Error,
            message: "timeout".into(),
            last_run: Some(Time(ts("2026-12-01T10:00:00Z"))),
            diagnosis: None,
        }];
        assert!(!settled(&run));
        let same = status(
            json!([{"name": "dns", "status": "ERROR", "message": "timeout",
            "lastRun": "2026-12-01T10:00:00Z",
            "diagnosis": {"abnormal": "n/a", "phase": "Succeeded", "rootCause": "coredns down"}}]),
        );
        let updated = refresh_diagnoses(&run, &same).unwrap();
        assert_eq!(
            updated[0].diagnosis.as_ref().unwrap().root_cause,
            "coredns down"
        );
        assert!(settled(&updated));
        assert_eq!(refresh_diagnoses(&updated, &same), None, "nothing new");
        let later = status(
            json!([{"name": "dns", "status": "ERROR", "message": "timeout",
            "lastRun": "2026-12-01T10:05:00Z",
            "diagnosis": {"abnormal": "n/b", "phase": "Succeeded", "rootCause": "another"}}]),
        );
        assert_eq!(refresh_diagnoses(&run, &later), None, "a later run's");
    }
}
