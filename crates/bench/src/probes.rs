//! Section 6: what continuous probing costs. `probes` native probes (a TCP check each, against a
//! listener in this process that always accepts: results never change) run continuously at
//! `interval` seconds for `seconds` against the real `kdiag controller` process; then, in the
//! same run, as many probes run periodically (runInterval 1 minute, KubeProber's smallest
//! interval) for as long, the baseline. For each: the controller's CPU as a share of one core
//! (utime + stime from /proc) and the apiserver's own count of write requests in that time.
//!
//! The continuous phase is measured once every probe has stored its first result (a write is
//! expected then, when a checker gets its status); from there on results are unchanged, so the
//! write rule (docs/probes.md) allows no write before the heartbeat (5 minutes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::apiserver;
use crate::env::Env;
use crate::procstat;
use crate::realproc::RealProc;
use crate::stats::round;

pub struct Settings {
    pub kdiag: PathBuf,
    pub probes: usize,
    pub interval: u64,
    pub seconds: u64,
}

pub async fn run(s: &Settings) -> Result<Value> {
    let env = Env::start().await?;
    let ns = env.namespace("probes").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let accepting = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    let kc = env
        .cp
        .write_kubeconfig_for("kdiag-controller", &env.token("kdiag-controller").await);
    let run_dir = env.cp.run_dir().to_path_buf();
    let mut controller = RealProc::spawn(
        &s.kdiag,
        None,
        "kdiag controller",
        &[
            "controller".into(),
            "--webhook=off".into(),
            "--leader-elect=false".into(),
        ],
        &kc,
        &run_dir.join("kdiag-controller-probes.log"),
    )?;
    let http = reqwest::Client::new();
    controller.wait_ready(&http).await?;
    let probes: Api<kdiag_api::Probe> = Api::namespaced(env.admin.clone(), &ns);

    eprintln!(
        "  continuous: {} probes every {} s for {} s",
        s.probes, s.interval, s.seconds
    );
    let policy = json!({"mode": "Continuous", "intervalSeconds": s.interval});
    let names = create(&probes, "continuous", s.probes, &policy, &address).await?;
    // Measured from the first result of every probe on: that write is the checker's status.
    wait_results(&env, &ns, &names, Duration::from_secs(60 + s.interval * 3)).await?;
    let continuous = measure(&env, &controller, s.seconds).await?;
    for n in &names {
        probes.delete(n, &DeleteParams::default()).await?;
    }

    eprintln!(
        "  periodic baseline: {} probes, runInterval 1 minute, for {} s",
        s.probes, s.seconds
    );
    let policy = json!({"runInterval": 1});
    let before = Measure::start(&env, &controller).await?;
    let names = create(&probes, "periodic", s.probes, &policy, &address).await?;
    tokio::time::sleep(Duration::from_secs(s.seconds)).await;
    let periodic = before.finish(&env, &controller).await?;
    wait_results(&env, &ns, &names, Duration::from_secs(60)).await?;

    controller.stop();
    accepting.abort();
    Ok(json!({
        "probes": s.probes,
        "intervalSeconds": s.interval,
        "seconds": s.seconds,
        "continuous": continuous,
        "periodic": periodic,
    }))
}

async fn create(
    api: &Api<kdiag_api::Probe>,
    prefix: &str,
    n: usize,
    policy: &Value,
    address: &str,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i:02}");
        let probe: kdiag_api::Probe = serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
            "metadata": {"name": name},
            "spec": {"policy": policy, "checks": [{"name": "tcp", "tcp": {"address": address}}]}
        }))?;
        api.create(&PostParams::default(), &probe)
            .await
            .with_context(|| format!("creating Probe {name}"))?;
        names.push(name);
    }
    Ok(names)
}

/// Waits until every probe's checker has a result.
async fn wait_results(env: &Env, ns: &str, names: &[String], timeout: Duration) -> Result<()> {
    let api: Api<kdiag_api::ProbeStatus> = Api::namespaced(env.admin.clone(), ns);
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = 0;
        for n in names {
            let has = api
                .get_opt(n)
                .await?
                .is_some_and(|ps| ps.spec.checkers.iter().any(|c| c.name == "tcp"));
            if !has {
                missing += 1;
            }
        }
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{missing} of {} probes stored no result within {timeout:?}",
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Measure {
    cpu: procstat::ProcSample,
    scrape: apiserver::Scrape,
}

impl Measure {
    async fn start(env: &Env, controller: &RealProc) -> Result<Self> {
        Ok(Self {
            scrape: apiserver::scrape(&env.admin).await?,
            cpu: procstat::sample(controller.pid())?,
        })
    }

    async fn finish(self, env: &Env, controller: &RealProc) -> Result<Value> {
        let cpu = procstat::sample(controller.pid())?;
        let scrape = apiserver::scrape(&env.admin).await?;
        let d = apiserver::delta(&self.scrape, &scrape);
        // Not the controller's: the bench's own creates of the probes, and the apiserver's own
        // bookkeeping (its `kubernetes` Endpoints every 10 s). The controller runs without
        // leader election, so it writes no Lease either.
        let not_controllers = |k: &str| k == "POST probes" || k.ends_with(" endpoints");
        let writes: serde_json::Map<String, Value> = d
            .requests
            .iter()
            .filter(|(k, _)| !not_controllers(k))
            .filter(|(k, _)| {
                apiserver::WRITE_VERBS
                    .iter()
                    .any(|v| k.starts_with(&format!("{v} ")))
            })
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let total: f64 = writes.values().filter_map(Value::as_f64).sum();
        Ok(json!({
            "controllerCpuPercentOfCore": round(procstat::cpu_share(&self.cpu, &cpu) * 100.0),
            "apiserverWrites": total,
            "writesByRequest": writes,
            "apiserverRequests": d.requests_total(),
        }))
    }
}

async fn measure(env: &Env, controller: &RealProc, seconds: u64) -> Result<Value> {
    let m = Measure::start(env, controller).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    m.finish(env, controller).await
}
