//! Section `probe-triggers`: from a change that should trigger a probe to the probe's result,
//! against a real control plane, with the controller (its real RBAC) in this process.
//!
//! A Deployment's rollout finishes (the test writes its status as the Deployment controller
//! would: there is none here) → the Probe watching it (`spec.triggers`, the default quiet period
//! of a RolloutFinished trigger)
//! is run → its ProbeRun with trigger Change is Finished with its native check's result. The
//! baseline, one at a time and interleaved: a manual run (a ProbeRun created as `kubectl diag
//! probe run` does) → the same ProbeRun Finished. Their difference is the watch, the debounce's
//! quiet period (1 s by default for a RolloutFinished trigger) and the ProbeRun's creation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kdiag_controller::ControllerConfig;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

use crate::env::{Env, InProcController};
use crate::load::{Hit, Observer};
use crate::stats::{Summary, ratio, round};

const PROBE: &str = "after-rollout";
const WAIT: Duration = Duration::from_secs(120);

pub async fn run(changes: usize) -> Result<Value> {
    let env = Env::start().await?;
    let ns = env.namespace("probe-triggers").await;
    let controller = InProcController::start(&env, ControllerConfig::default()).await?;
    // The trigger below counts only finished rollouts (the default for a Deployment).
    let quiet = ControllerConfig::default()
        .probe_triggers
        .quiet
        .min(Duration::from_secs(
            kdiag_api::probe_trigger::DEFAULT_ROLLOUT_QUIET_SECONDS as u64,
        ));
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "web:0"}]}}}}))?;
    deployments.create(&PostParams::default(), &d).await?;
    finish_rollout(&deployments).await?;

    let runs = Observer::start(
        Api::namespaced_with(env.admin.clone(), &ns, &run_resource()),
        Arc::new(run_key),
    )
    .await?;
    let probes: Api<DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        &ns,
        &ApiResource::erase::<kdiag_api::Probe>(&()),
    );
    let probe = DynamicObject::new(PROBE, &ApiResource::erase::<kdiag_api::Probe>(&()))
        .within(&ns)
        .data(json!({"spec": {
            "checks": [{"name": "web", "tcp": {"address": open.local_addr()?.to_string()}}],
            "triggers": [{"kind": "Deployment", "name": "web"}]}}));
    probes.create(&PostParams::default(), &probe).await?;
    wait_watching(&probes).await?;

    let mut r = Results::default();
    for i in 0..changes {
        // The change: a new image, then its rollout finishing (the change the trigger counts).
        let generation = deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "c", "image": format!("web:{}", i + 1)}]}}}})),
            )
            .await?
            .metadata
            .generation
            .unwrap_or_default();
        let t0 = Instant::now();
        finish_rollout(&deployments).await?;
        let seen = runs
            .seen(&format!("change:{generation}"), WAIT)
            .await
            .with_context(|| format!("the run of generation {generation}"))?;
        r.change.push(seen - t0);

        let name = format!("manual-{i:03}");
        let manual = DynamicObject::new(&name, &run_resource())
            .within(&ns)
            .data(json!({"spec": {"probe": PROBE, "trigger": "Manual"}}));
        let api: Api<DynamicObject> = Api::namespaced_with(env.admin.clone(), &ns, &run_resource());
        let t0 = Instant::now();
        api.create(&PostParams::default(), &manual).await?;
        let seen = runs.seen(&format!("manual:{name}"), WAIT).await?;
        r.manual.push(seen - t0);
    }
    controller.stop().await;
    drop(open);
    Ok(r.json(changes, quiet))
}

/// The Deployment controller's status once every replica runs the current spec.
async fn finish_rollout(api: &Api<Deployment>) -> Result<()> {
    let generation = api
        .get("web")
        .await?
        .metadata
        .generation
        .unwrap_or_default();
    api.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"observedGeneration": generation, "replicas": 2,
            "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}}),
        ),
    )
    .await?;
    Ok(())
}

/// Waits until the controller watches what the probe's triggers name (TriggersValid=True).
async fn wait_watching(probes: &Api<DynamicObject>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = probes.get(PROBE).await?;
        let watching = p.data["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "TriggersValid" && c["status"] == "True")
        });
        if watching {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the probe's triggers were never watched: {}",
            p.data["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_resource() -> ApiResource {
    ApiResource::erase::<kdiag_api::ProbeRun>(&())
}

/// A finished run with its results: `change:<generation>` for a run started by a rollout,
/// `manual:<name>` for a manual one.
fn run_key(o: &DynamicObject) -> Option<Hit> {
    let status = &o.data["status"];
    if status["phase"] != "Finished" || status["checkers"].as_array()?.is_empty() {
        return None;
    }
    let spec = &o.data["spec"];
    let key = match spec["trigger"].as_str()? {
        "Change" => {
            let detail = spec["changes"][0]["detail"].as_str()?;
            let generation = detail.strip_prefix("generation ")?.split(',').next()?;
            format!("change:{generation}")
        }
        "Manual" => format!("manual:{}", o.metadata.name.as_deref()?),
        _ => return None,
    };
    Some(Hit {
        key,
        ok: status["result"] == "PASS",
    })
}

#[derive(Default)]
struct Results {
    change: Vec<Duration>,
    manual: Vec<Duration>,
}

impl Results {
    fn json(&self, changes: usize, quiet: Duration) -> Value {
        let change = Summary::of(&self.change);
        let manual = Summary::of(&self.manual);
        json!({
            "changes": changes,
            "quietSeconds": quiet.as_secs_f64(),
            "changeToResult": change.json(),
            "manualRunToResult": manual.json(),
            "changeMinusQuiet": {
                "p50Ms": round(change.p50 - quiet.as_secs_f64() * 1000.0),
                "p99Ms": round(change.p99 - quiet.as_secs_f64() * 1000.0),
            },
            "ratioToManual": {"p50": round(ratio(change.p50, manual.p50)),
                "p99": round(ratio(change.p99, manual.p99))},
        })
    }
}
