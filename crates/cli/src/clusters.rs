//! The fleet, from the hub's cluster (docs/fleet.md):
//! - `kubectl diag clusters`: every member cluster, connected or not, with its health summary;
//! - `kubectl diag clusters add NAME`: a credential of its own for a new member (printed once;
//!   the hub keeps only its hash);
//! - `kubectl diag clusters show NAME`: one cluster and its latest diagnoses, with root causes;
//! - `kubectl diag clusters revoke NAME`: deletes that credential; the member is refused from
//!   its next heartbeat on;
//! - `kubectl diag probes -c NAME` (in `probes`): one cluster's latest checker results.

use k8s_openapi::api::core::v1::Secret;
use kdiag_api::Cluster;
use kube::api::{Api, DeleteParams, PostParams};

use super::client::{Fetched, Kube, Request};
use super::render::{self, Style, Table, Tone};
use super::{DiagError, Output};

pub const CLUSTERS: &str = "clusters.kubeprober.erda.cloud";

/// `kubectl diag clusters …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClustersCommand {
    /// Make a credential for a member cluster: prints the token once (the hub stores its hash)
    /// and how to give it to the member's controller.
    Add {
        name: String,
        /// Replace an existing credential (the member must get the new token).
        #[arg(long)]
        rotate: bool,
    },
    /// Revoke a member's credential: its link is refused, and a live one closed at its next
    /// heartbeat. Its Cluster and results stay.
    Revoke { name: String },
    /// One cluster: its row of the list, then its latest diagnoses (open ones first) with their
    /// root causes.
    Show { name: String },
}

fn request<'a>(verb: &'static str, namespace: &'a str) -> Request<'a> {
    Request {
        verb,
        kind: "Cluster",
        resource: CLUSTERS,
        namespace: Some(namespace),
        name: None,
    }
}

/// The table (or objects) of every Cluster in the fleet namespace.
pub async fn list(
    kube: &Kube,
    fleet_namespace: &str,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let items = kube
        .list::<Cluster>(Some(fleet_namespace), request("list", fleet_namespace))
        .await?;
    match output {
        Some(Output::Json) | Some(Output::Yaml) => {
            super::objects(items.into_iter().map(|i| i.raw).collect(), false, output)
        }
        _ if items.is_empty() => Ok(String::new()),
        _ => Ok(table(&items, jiff::Timestamp::now(), style).render()),
    }
}

/// One row per cluster: its link state and since when, versions, nodes, checkers (total/error),
/// the age of its last heartbeat, and why it is offline.
pub fn table(items: &[Fetched<Cluster>], now: jiff::Timestamp, style: Style) -> Table {
    let mut t = Table::new([
        "NAME",
        "STATE",
        "SINCE",
        "KUBERNETES",
        "NODES",
        "KDIAG",
        "CHECKERS",
        "DIAGNOSES",
        "HEARTBEAT",
        "MESSAGE",
    ]);
    for item in items {
        let Ok(c) = &item.parsed else {
            t.row([item.name().to_owned(), style.paint(Tone::Bad, "<invalid>")]);
            continue;
        };
        let s = c.status.clone().unwrap_or_default();
        let state = if s.state.is_empty() {
            "Unknown".to_owned()
        } else {
            s.state.clone()
        };
        let tone = match state.as_str() {
            "Connected" => Tone::Good,
            "Offline" => Tone::Bad,
            _ => Tone::Dim,
        };
        // KubeProber's checkers field is "total/error"; an error count above 0 stands out.
        let checkers = match s.checkers.split_once('/') {
            Some((_, e)) if e.trim() != "0" => style.paint(Tone::Bad, &s.checkers),
            _ => s.checkers.clone(),
        };
        let diagnoses_cell = diagnoses(&s, style);
        t.row([
            item.name().to_owned(),
            style.paint(tone, &state),
            s.state_since
                .map(|t| render::age_at(t.0, now))
                .unwrap_or_default(),
            c.spec.k8s_version.clone(),
            s.node_count.map(|n| n.to_string()).unwrap_or_default(),
            s.kdiag_version.clone(),
            checkers,
            diagnoses_cell,
            s.last_heartbeat_time
                .map(|t| render::age_at(t.0, now))
                .unwrap_or_default(),
            render::truncate(&s.message, 60),
        ]);
    }
    t
}

/// The member's Abnormals in a few words: `2 open, 1 failed` (succeeded ones only when there is
/// nothing else to say); empty from a member that does not report them.
fn diagnoses(s: &kdiag_api::ClusterStatus, style: Style) -> String {
    let Some(a) = s.abnormals else {
        return String::new();
    };
    let mut parts = Vec::new();
    if a.open > 0 {
        parts.push(style.paint(Tone::Warn, &format!("{} open", a.open)));
    }
    if a.failed > 0 {
        parts.push(style.paint(Tone::Bad, &format!("{} failed", a.failed)));
    }
    if parts.is_empty() {
        return format!("{} succeeded", a.succeeded);
    }
    parts.join(", ")
}

/// `clusters CLUSTER`: one cluster in full: its link, facts, checkers, the member's Abnormals by
/// outcome and its latest diagnoses with their root causes.
pub async fn show(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let c = kube
        .get::<Cluster>(
            fleet_namespace,
            cluster,
            request_for("get", fleet_namespace, cluster),
        )
        .await?;
    if matches!(output, Some(Output::Json) | Some(Output::Yaml)) {
        return super::objects(vec![c.raw], true, output);
    }
    let now = jiff::Timestamp::now();
    let mut text = table(std::slice::from_ref(&c), now, style).render();
    let Ok(c) = c.parsed else {
        return Ok(text);
    };
    let s = c.status.unwrap_or_default();
    if s.diagnoses.is_empty() {
        return Ok(text);
    }
    text.push_str("\nLatest diagnoses:\n");
    text.push_str(&diagnoses_table(&s.diagnoses, now, style).render());
    Ok(text)
}

/// One row per diagnosis the hub keeps for a cluster.
pub fn diagnoses_table(
    list: &[kdiag_api::DiagnosisSummary],
    now: jiff::Timestamp,
    style: Style,
) -> Table {
    let mut t = Table::new(["ABNORMAL", "NODE", "PHASE", "AGE", "ROOT CAUSE"]);
    for d in list {
        let phase = if d.phase.is_empty() {
            "Pending".to_owned()
        } else {
            d.phase.clone()
        };
        let tone = match phase.as_str() {
            "Succeeded" => Tone::Good,
            "Failed" => Tone::Bad,
            _ => Tone::Warn,
        };
        let cause = if d.root_cause.is_empty() {
            d.reason.clone()
        } else {
            d.root_cause.clone()
        };
        t.row([
            format!("{}/{}", d.namespace, d.name),
            d.node.clone(),
            style.paint(tone, &phase),
            d.create_time
                .as_ref()
                .map(|t| render::age_at(t.0, now))
                .unwrap_or_default(),
            // One cluster's view: the whole root cause, as `probes -o wide` prints it.
            cause,
        ]);
    }
    t
}

/// `clusters add`: a new credential Secret in the fleet namespace. Returns what to print.
pub async fn add(
    kube: &Kube,
    fleet_namespace: &str,
    name: &str,
    rotate: bool,
) -> Result<String, DiagError> {
    kdiag_fleet::credential::check_cluster_name(name).map_err(DiagError::Usage)?;
    let token =
        kdiag_fleet::credential::generate_token().map_err(|e| DiagError::Usage(e.to_string()))?;
    let secret = kdiag_fleet::credential::secret(fleet_namespace, name, &token);
    let api: Api<Secret> = Api::namespaced(kube.client.clone(), fleet_namespace);
    let secret_name = kdiag_fleet::credential::secret_name(name);
    let req = Request {
        verb: "create",
        kind: "Secret",
        resource: "secrets",
        namespace: Some(fleet_namespace),
        name: Some(&secret_name),
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 && !rotate => {
            return Err(DiagError::Usage(format!(
                "cluster {name} already has a credential (Secret {fleet_namespace}/{secret_name}); pass --rotate to replace it"
            )));
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let mut existing = api
                .get(&secret_name)
                .await
                .map_err(|e| req.explain(e, &kube.url))?;
            existing.data = secret.data.clone();
            existing.metadata.annotations = None;
            api.replace(&secret_name, &PostParams::default(), &existing)
                .await
                .map_err(|e| req.explain(e, &kube.url))?;
        }
        Err(e) => return Err(req.explain(e, &kube.url)),
    }
    Ok(format!(
        "cluster {name}: credential stored as Secret {fleet_namespace}/{secret_name} (its SHA-256 only).\n\
         The token, shown only now:\n\n  {token}\n\n\
         In the member cluster, give it, the hub's address and the hub's CA to the controller:\n\n  \
         kubectl -n kube-diagnoser create secret generic kdiag-fleet --from-literal=hub=wss://HUB:10443 \\\n    \
         --from-literal=cluster={name} --from-literal=token={token} --from-file=ca.crt=HUB_CA.pem\n  \
         kubectl -n kube-diagnoser rollout restart deploy/kdiag-controller\n\n\
         (docs/fleet.md).\n"
    ))
}

/// `clusters revoke`: deletes the credential Secret.
pub async fn revoke(kube: &Kube, fleet_namespace: &str, name: &str) -> Result<String, DiagError> {
    let api: Api<Secret> = Api::namespaced(kube.client.clone(), fleet_namespace);
    let secret_name = kdiag_fleet::credential::secret_name(name);
    let req = Request {
        verb: "delete",
        kind: "Secret",
        resource: "secrets",
        namespace: Some(fleet_namespace),
        name: Some(&secret_name),
    };
    api.delete(&secret_name, &DeleteParams::default())
        .await
        .map_err(|e| req.explain(e, &kube.url))?;
    Ok(format!(
        "cluster {name}: credential revoked; its link is refused from its next heartbeat on.\n"
    ))
}

/// `probe once -c`: asks the hub, through an annotation on the Cluster, for a one-time run; the
/// hub sends it to the member at its next heartbeat. Returns what to print (the id).
pub async fn once(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
    probes: &[String],
) -> Result<(String, String), DiagError> {
    let now = jiff::Timestamp::now();
    let suffix =
        kdiag_fleet::credential::generate_token().map_err(|e| DiagError::Usage(e.to_string()))?;
    let id = format!("{}-{}", now.strftime("%Y%m%d%H%M%S"), &suffix[..6]);
    let request = kdiag_fleet::state::OnceRequest {
        id: id.clone(),
        probes: probes.to_vec(),
        create_time: now.to_string(),
    };
    let value = serde_json::to_string(&request).unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": {
        kdiag_fleet::state::PROBE_ONCE_ANNOTATION: value}}});
    let api: Api<Cluster> = Api::namespaced(kube.client.clone(), fleet_namespace);
    api.patch(
        cluster,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map_err(|e| request_for("patch", fleet_namespace, cluster).explain(e, &kube.url))?;
    let text = format!(
        "{id}
one-time run of cluster {cluster} asked for: the hub sends it at the member's next heartbeat.
         Its results: kubectl diag probe history -c {cluster} -i {id}; all runs: kubectl diag probe history -c {cluster}
"
    );
    Ok((id, text))
}

/// `probe once --wait`: follows the run in the Cluster's `status.onceProbeList` until the member
/// reported it finished (`finishTime`), then its results as [`once_run`] prints them, with the
/// exit code of `probe run --wait`.
pub async fn wait_once(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
    id: &str,
    timeout: std::time::Duration,
    style: Style,
) -> Result<(u8, String), DiagError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match once_run(kube, fleet_namespace, cluster, id, style).await {
            Ok((Some(code), text)) => return Ok((code, text)),
            Ok((None, _)) => {}
            // Not recorded yet (the hub sends it at the next heartbeat), or a passing failure.
            Err(DiagError::Usage(_)) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DiagError::OnceTimeout {
                cluster: cluster.to_owned(),
                id: id.to_owned(),
                waited: timeout,
            });
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `probe history -c CLUSTER -i ID`: one one-time run (when it was asked for and finished, the
/// Probes it ran) and that run's results, with root causes.
/// The exit code of its results once it finished: 0 all PASS or INFO, 4 an ERROR or WARN, 6 none;
/// None while it runs.
pub async fn once_run(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
    id: &str,
    style: Style,
) -> Result<(Option<u8>, String), DiagError> {
    let c = kube
        .get::<Cluster>(
            fleet_namespace,
            cluster,
            request_for("get", fleet_namespace, cluster),
        )
        .await?;
    let list = c
        .parsed
        .ok()
        .and_then(|c| c.status)
        .map(|s| s.once_probe_list)
        .unwrap_or_default();
    let Some(item) = list.into_iter().find(|i| i.id == id) else {
        return Err(DiagError::Usage(format!(
            "cluster {cluster} has no one-time run {id} (the hub keeps the last {}; see kubectl diag probe history -c {cluster})",
            kdiag_fleet::state::ONCE_HISTORY
        )));
    };
    let probes = if item.probes.is_empty() {
        "<all assigned>".to_owned()
    } else {
        item.probes.join(",")
    };
    let finished = if item.finish_time.is_empty() {
        "not yet".to_owned()
    } else {
        item.finish_time.clone()
    };
    let mut text = format!(
        "one-time run {id} of cluster {cluster}\ncreated:  {}\nfinished: {finished}\nprobes:   {probes}\n",
        item.create_time
    );
    // This run's own results, as the member reported its ProbeRuns; from a member that does not
    // report them, each Probe's latest result the hub stores (this run's or a later one's).
    let own = !item.results.is_empty();
    let results = if own {
        run_results(&item.results)
    } else {
        super::probes::stored_results(kube, fleet_namespace, cluster, &item.probes).await?
    };
    let code = super::probes::exit_code(&results);
    if results.is_empty() {
        text.push_str("\nNo results from the cluster for these Probes yet.\n");
    } else {
        text.push('\n');
        if !own {
            text.push_str(
                "Each Probe's latest result (the member did not report this run's own):\n",
            );
        }
        text.push_str(
            &super::probes::table(&results, false, true, jiff::Timestamp::now(), style).render(),
        );
    }
    for r in item.results.iter().filter(|r| !r.message.is_empty()) {
        text.push_str(&format!("{}: {} {}\n", r.probe, r.phase, r.message));
    }
    Ok(((!item.finish_time.is_empty()).then_some(code), text))
}

/// A one-time run's results as ProbeStatuses named after their Probe, for the probes table.
fn run_results(results: &[kdiag_api::OnceProbeResult]) -> Vec<Fetched<kdiag_api::ProbeStatus>> {
    results
        .iter()
        .map(|r| {
            let raw = serde_json::json!({
                "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
                "metadata": {"name": r.probe},
                "spec": {"checkers": r.checkers},
            });
            Fetched {
                parsed: serde_json::from_value(raw.clone()).map_err(|e| e.to_string()),
                raw,
            }
        })
        .collect()
}

/// `probe history -c`: the cluster's last one-time runs (`status.onceProbeList`).
pub async fn once_history(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
) -> Result<String, DiagError> {
    let c = kube
        .get::<Cluster>(
            fleet_namespace,
            cluster,
            request_for("get", fleet_namespace, cluster),
        )
        .await?;
    let Ok(c) = c.parsed else {
        return Ok(String::new());
    };
    let list = c.status.map(|s| s.once_probe_list).unwrap_or_default();
    if list.is_empty() {
        return Ok(String::new());
    }
    let mut t = Table::new(["ID", "CREATED", "FINISHED", "PROBES"]);
    for item in list.iter().rev() {
        let probes = if item.probes.is_empty() {
            "<all assigned>".to_owned()
        } else {
            item.probes.join(",")
        };
        let finished = if item.finish_time.is_empty() {
            "-".to_owned()
        } else {
            item.finish_time.clone()
        };
        t.row([item.id.clone(), item.create_time.clone(), finished, probes]);
    }
    Ok(t.render())
}

fn request_for<'a>(verb: &'static str, namespace: &'a str, name: &'a str) -> Request<'a> {
    request(verb, namespace).named(name)
}

/// The label selector of one cluster's stored results.
pub fn results_selector(cluster: &str) -> String {
    format!("{}={cluster}", kdiag_fleet::credential::CLUSTER_LABEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetched(v: serde_json::Value) -> Fetched<Cluster> {
        Fetched {
            parsed: serde_json::from_value(v.clone()).map_err(|e| e.to_string()),
            raw: v,
        }
    }

    #[test]
    fn the_clusters_table_shows_connected_and_offline_clusters_with_their_health() {
        let now: jiff::Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let items = [
            fetched(json!({
                "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Cluster",
                "metadata": {"name": "prod-1", "namespace": "kdiag-fleet"},
                "spec": {"k8sVersion": "v1.20.2"},
                "status": {"state": "Connected", "stateSince": "2026-12-04T09:00:00Z",
                           "lastHeartbeatTime": "2026-12-04T09:59:50Z", "nodeCount": 3,
                           "checkers": "12/1", "kdiagVersion": "0.1.0"}})),
            fetched(json!({
                "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Cluster",
                "metadata": {"name": "edge-7", "namespace": "kdiag-fleet"},
                "spec": {},
                "status": {"state": "Offline", "stateSince": "2026-12-04T09:58:00Z",
                           "message": "no heartbeat for more than 90s"}})),
        ];
        let text = table(&items, now, Style::PLAIN).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].contains("prod-1") && lines[1].contains("Connected"));
        assert!(lines[1].contains("60m") && lines[1].contains("12/1") && lines[1].contains("10s"));
        assert!(lines[2].contains("edge-7") && lines[2].contains("Offline"));
        assert!(lines[2].contains("no heartbeat"));
    }
}
