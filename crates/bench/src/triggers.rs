//! Section 4: trigger paths, one episode at a time (no queueing), the three kinds interleaved so
//! drift falls on all alike, each followed by one bare write of an Abnormal-sized object: the
//! apiserver's own write latency in the same run, the baseline every path is compared with.
//!
//! - ProbeStatus: a checker turns ERROR (a new ProbeStatus) → the Abnormal exists → its root cause
//!   is written back onto the checker (the agent ran the same processors as in section 1);
//! - Event: a Warning Event → the Abnormal exists;
//! - alert: `POST /api/v2/alerts` on the controller's server → the Abnormal exists.
//!
//! Storm-control budgets are lifted for the run, so it measures the paths, not the guard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kdiag_controller::ControllerConfig;
use kdiag_controller::probes::trigger::ProbeBudgets;
use kdiag_controller::sources::sink::SourceBudgets;
use kdiag_controller::sources::storm::Budget;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

use crate::env::{Env, InProcAgent, InProcController, abnormal_resource, abnormal_spec};
use crate::floor;
use crate::load::{Hit, Observer};
use crate::plugin::Plugin;
use crate::stats::{Summary, ratio, round};

/// The alert token the benchmark's controller requires (alerts need one by default).
const ALERT_TOKEN: &str = "kdiag-bench-alerts";

const NODE: &str = "trigger-node";
/// Event and alert Abnormals go to a node without an agent: only their creation is measured.
const IDLE_NODE: &str = "no-agent-node";
const WAIT: Duration = Duration::from_secs(60);

pub async fn run(episodes: usize) -> Result<Value> {
    let env = Env::start().await?;
    let ns = env.namespace("triggers").await;
    let plugin = Plugin::start().await?;
    env.register_plugin(&ns, plugin.port).await?;
    floor::install(&env).await?;
    let unlimited = Budget {
        burst: 1e9,
        per_minute: 1e9,
    };
    let controller = InProcController::start(
        &env,
        ControllerConfig {
            probe_budgets: ProbeBudgets {
                per_probe: unlimited,
                per_node: unlimited,
            },
            source_budgets: SourceBudgets {
                per_source: unlimited,
                per_node: unlimited,
            },
            alert_namespace: ns.clone(),
            alert_token: Some(ALERT_TOKEN.into()),
            ..Default::default()
        },
    )
    .await?;
    let agent_client = env
        .cp
        .client_with_token(&env.token("kdiag-agent").await)
        .await;
    env.node(NODE).await?;
    env.node(IDLE_NODE).await?;
    let agent =
        InProcAgent::start(agent_client, NODE, &env.cp.run_dir().join("trigger-agent")).await?;
    create_sources(&env, &ns).await?;

    let abnormals = Observer::start(
        Api::namespaced_with(env.admin.clone(), &ns, &abnormal_resource()),
        Arc::new(abnormal_key),
    )
    .await?;
    let probe_statuses = Observer::start(
        Api::namespaced_with(env.admin.clone(), &ns, &probe_status_resource()),
        Arc::new(diagnosed_key),
    )
    .await?;
    let floor_api = floor::floor_api(&env, &ns);
    let spec = abnormal_spec(&ns, NODE);
    let http = reqwest::Client::new();
    let alerts_url = format!("http://127.0.0.1:{}/api/v2/alerts", controller.port);

    let ep = Episodes {
        env: &env,
        ns: &ns,
        http: &http,
        alerts_url: &alerts_url,
        abnormals: &abnormals,
        probe_statuses: &probe_statuses,
    };
    // Sources take effect once the controller has seen them: one unmeasured episode of each.
    let warm = tokio::time::timeout(WAIT, async {
        ep.probe("warm").await?;
        ep.event("warm").await?;
        ep.alert("warm").await
    })
    .await
    .context("the warm-up episodes did not finish: are the sources valid?")?;
    warm?;

    let mut r = Results::default();
    for i in 0..episodes {
        if i % 50 == 0 {
            eprintln!("  episodes {i}..{}", (i + 50).min(episodes));
        }
        let id = format!("{i:04}");
        let (write, to_abnormal, to_root_cause) = ep.probe(&id).await?;
        r.probe_write.push(write);
        r.probe_abnormal.push(to_abnormal);
        r.probe_root_cause.push(to_root_cause);
        r.baseline
            .push(floor::timed_create(&floor_api, &ns, &format!("w-p-{id}"), &spec).await?);
        let (write, to_abnormal) = ep.event(&id).await?;
        r.event_write.push(write);
        r.event_abnormal.push(to_abnormal);
        r.baseline
            .push(floor::timed_create(&floor_api, &ns, &format!("w-e-{id}"), &spec).await?);
        let (post, to_abnormal) = ep.alert(&id).await?;
        r.alert_post.push(post);
        r.alert_abnormal.push(to_abnormal);
        r.baseline
            .push(floor::timed_create(&floor_api, &ns, &format!("w-a-{id}"), &spec).await?);
    }
    agent.stop().await;
    controller.stop().await;
    Ok(r.json(episodes))
}

#[derive(Default)]
struct Results {
    baseline: Vec<Duration>,
    probe_write: Vec<Duration>,
    probe_abnormal: Vec<Duration>,
    probe_root_cause: Vec<Duration>,
    event_write: Vec<Duration>,
    event_abnormal: Vec<Duration>,
    alert_post: Vec<Duration>,
    alert_abnormal: Vec<Duration>,
}

impl Results {
    fn json(&self, episodes: usize) -> Value {
        let base = Summary::of(&self.baseline);
        let path = |samples: &[Duration]| {
            let s = Summary::of(samples);
            json!({"latency": s.json(), "ratioToWrite": {
                "p50": round(ratio(s.p50, base.p50)), "p99": round(ratio(s.p99, base.p99))}})
        };
        json!({
            "episodes": episodes,
            "apiserverWrite": base.json(),
            "probeToAbnormal": path(&self.probe_abnormal),
            "probeToRootCause": path(&self.probe_root_cause),
            "eventToAbnormal": path(&self.event_abnormal),
            "alertToAbnormal": path(&self.alert_abnormal),
            "triggerRequests": {
                "probeStatusCreate": Summary::of(&self.probe_write).json(),
                "eventCreate": Summary::of(&self.event_write).json(),
                "alertPost": Summary::of(&self.alert_post).json(),
            },
        })
    }
}

struct Episodes<'a> {
    env: &'a Env,
    ns: &'a str,
    http: &'a reqwest::Client,
    alerts_url: &'a str,
    abnormals: &'a Observer,
    probe_statuses: &'a Observer,
}

impl Episodes<'_> {
    /// A new ProbeStatus whose checker is ERROR; returns the write's round trip, the time to the
    /// Abnormal and the time to the root cause on the checker.
    async fn probe(&self, id: &str) -> Result<(Duration, Duration, Duration)> {
        let name = format!("probe-{id}");
        let ps: DynamicObject = DynamicObject::new(&name, &probe_status_resource())
            .within(self.ns)
            .data(
                json!({"spec": {"checkers": [{"name": "dns-resolution", "status": "ERROR",
                "message": "lookup kubernetes.default.svc: i/o timeout",
                "lastRun": jiff::Timestamp::now().to_string()}]}}),
            );
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.env.admin.clone(), self.ns, &probe_status_resource());
        let t0 = Instant::now();
        api.create(&PostParams::default(), &ps).await?;
        let write = t0.elapsed();
        let key = format!("probe:{name}");
        let abnormal = self.abnormals.seen(&key, WAIT).await?;
        let root_cause = self.probe_statuses.seen(&key, WAIT).await?;
        Ok((write, abnormal - t0, root_cause - t0))
    }

    /// A Warning Event about a pod of its own; returns the write's round trip and the time to
    /// the Abnormal.
    async fn event(&self, id: &str) -> Result<(Duration, Duration)> {
        let pod = format!("web-{id}");
        let now = jiff::Timestamp::now().to_string();
        let e: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
            "metadata": {"name": format!("{pod}.bench"), "namespace": self.ns},
            "involvedObject": {"kind": "Pod", "namespace": self.ns, "name": pod,
                "uid": format!("uid-{pod}"), "fieldPath": "spec.containers{app}"},
            "reason": "BenchBackOff", "message": "Back-off restarting failed container",
            "type": "Warning", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": IDLE_NODE},
        }))?;
        let api: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.env.admin.clone(), self.ns);
        let t0 = Instant::now();
        api.create(&PostParams::default(), &e).await?;
        let write = t0.elapsed();
        let seen = self.abnormals.seen(&format!("event:{pod}"), WAIT).await?;
        Ok((write, seen - t0))
    }

    /// One firing alert; returns the POST's round trip and the time to the Abnormal.
    async fn alert(&self, id: &str) -> Result<(Duration, Duration)> {
        let alert = json!([{"labels": {"alertname": "KdiagBench", "bench": self.ns, "namespace": self.ns,
                "episode": id, "node": IDLE_NODE, "severity": "critical"},
            "annotations": {"summary": "bench alert"},
            "startsAt": jiff::Timestamp::now().to_string(),
            "generatorURL": "http://prometheus/graph"}]);
        let t0 = Instant::now();
        let resp = self
            .http
            .post(self.alerts_url)
            .bearer_auth(ALERT_TOKEN)
            .json(&alert)
            .send()
            .await?;
        let post = t0.elapsed();
        anyhow::ensure!(
            resp.status().is_success(),
            "POST /api/v2/alerts: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        let seen = self.abnormals.seen(&format!("alert:{id}"), WAIT).await?;
        Ok((post, seen - t0))
    }
}

fn probe_status_resource() -> ApiResource {
    ApiResource::erase::<kdiag_api::ProbeStatus>(&())
}

/// The bench's AbnormalSources: probe failures run section 1's processors on NODE; Events and
/// alerts name their node.
async fn create_sources(env: &Env, ns: &str) -> Result<()> {
    let spec = abnormal_spec(ns, NODE);
    let sources = [
        (
            "probes",
            json!({"priority": 100,
            "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {
                "match": {"probeNamespace": ns}, "nodeName": NODE}},
            "assignedInformationCollectors": spec["assignedInformationCollectors"],
            "assignedDiagnosers": spec["assignedDiagnosers"]}),
        ),
        (
            "events",
            json!({"priority": 100,
            "sourceTemplate": {"type": "KubernetesEvent", "kubernetesEventTemplate": {
                "regexp": {"namespace": ns, "reason": "BenchBackOff"}}},
            "assignedInformationCollectors": spec["assignedInformationCollectors"]}),
        ),
        (
            "alerts",
            json!({"priority": 100,
            "sourceTemplate": {"type": "PrometheusAlert", "prometheusAlertTemplate": {
                "regexp": {"alertName": "KdiagBench", "labels": {"bench": ns}},
                "nodeNameReferenceLabel": "node"}},
            "assignedInformationCollectors": spec["assignedInformationCollectors"]}),
        ),
    ];
    let api: Api<DynamicObject> = Api::namespaced_with(
        env.admin.clone(),
        ns,
        &ApiResource::erase::<kdiag_api::AbnormalSource>(&()),
    );
    for (name, spec) in sources {
        let o = DynamicObject::new(name, &ApiResource::erase::<kdiag_api::AbnormalSource>(&()))
            .within(ns)
            .data(json!({ "spec": spec }));
        api.create(&PostParams::default(), &o).await?;
    }
    Ok(())
}

/// Which episode an Abnormal belongs to, by what triggered it.
fn abnormal_key(o: &DynamicObject) -> Option<Hit> {
    let spec = &o.data["spec"];
    let key = match spec["source"].as_str()? {
        "ProbeStatus" => format!("probe:{}", spec["probeStatus"]["name"].as_str()?),
        "KubernetesEvent" => format!(
            "event:{}",
            spec["kubernetesEvent"]["involvedObject"]["name"].as_str()?
        ),
        "PrometheusAlert" => format!(
            "alert:{}",
            spec["prometheusAlert"]["labels"]["episode"].as_str()?
        ),
        _ => return None,
    };
    Some(Hit { key, ok: true })
}

/// A ProbeStatus whose checker carries a final diagnosis.
fn diagnosed_key(o: &DynamicObject) -> Option<Hit> {
    let checkers = o.data["spec"]["checkers"].as_array()?;
    let phase = checkers
        .iter()
        .find_map(|c| c["diagnosis"]["phase"].as_str())?;
    let ok = match phase {
        "Succeeded" => true,
        "Failed" => false,
        _ => return None,
    };
    Some(Hit {
        key: format!("probe:{}", o.metadata.name.as_deref()?),
        ok,
    })
}
