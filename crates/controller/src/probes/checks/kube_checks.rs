//! Checks of the cluster itself: the apiserver, a namespace round trip, the nodes.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kdiag_api::{ApiserverCheck, NamespaceRoundTripCheck, NodesCheck};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::{Outcome, seconds};

pub async fn apiserver(client: &Client, c: &ApiserverCheck) -> Outcome {
    let warn_ms = c.warn_milliseconds.filter(|m| *m > 0).unwrap_or(1000) as u128;
    let started = Instant::now();
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("a static request");
    match client.request_text(req).await {
        Ok(body) if body.trim() == "ok" => {
            let ms = started.elapsed().as_millis();
            if ms > warn_ms {
                Outcome::warn(format!(
                    "the apiserver is ready but took {ms} ms to say so (over {warn_ms} ms)"
                ))
            } else {
                Outcome::pass(format!("the apiserver is ready ({ms} ms)"))
            }
        }
        Ok(body) => Outcome::error(format!("the apiserver is not ready: {}", body.trim())),
        Err(e) => Outcome::error(format!("the apiserver's /readyz failed: {e}")),
    }
}

/// A write round trip in kdiag's own namespace: a Lease is created and deleted there, and the
/// check waits until it is gone. (It once created and deleted a namespace, which needed the right
/// to create and delete every namespace of the cluster; a Lease in kube-diagnoser needs a Role
/// there only, and still proves that admission and etcd take writes and deletions.)
pub async fn namespace_round_trip(client: &Client, c: &NamespaceRoundTripCheck) -> Outcome {
    let timeout = seconds(c.timeout_seconds, 60);
    let ns = kdiag_api::SYSTEM_NAMESPACE;
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let name = format!("kdiag-round-trip-{:08x}", rand_u32());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [(
                    "kdiag.io/check".to_owned(),
                    "namespace-round-trip".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    let started = Instant::now();
    if let Err(e) = api.create(&PostParams::default(), &lease).await {
        return Outcome::error(format!(
            "creating Lease {ns}/{name} failed (an admission webhook or etcd?): {e}"
        ));
    }
    let created = started.elapsed().as_millis();
    if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
        return Outcome::error(format!(
            "Lease {ns}/{name} was created but deleting it failed: {e}"
        ));
    }
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_opt(&name).await {
            Ok(None) => {
                return Outcome::pass(format!(
                    "Lease {ns}/{name} created in {created} ms and deleted in {} ms",
                    started.elapsed().as_millis() - created
                ));
            }
            Ok(Some(_)) if Instant::now() >= deadline => {
                return Outcome::warn(format!(
                    "Lease {ns}/{name} is still there {}s after its deletion: a finalizer or the garbage collector is stuck",
                    timeout.as_secs()
                ));
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => return Outcome::error(format!("reading Lease {ns}/{name}: {e}")),
        }
    }
}

pub async fn nodes(client: &Client, c: &NodesCheck) -> Outcome {
    let list = match Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => return Outcome::error(format!("listing nodes failed: {e}")),
    };
    let mut not_ready = Vec::new();
    let mut cordoned = Vec::new();
    for n in &list {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()));
        match ready {
            Some((s, _)) if s == "True" => {}
            Some((s, reason)) => not_ready.push((
                name.clone(),
                format!(
                    "{name}: Ready={s}{}",
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    }
                ),
            )),
            None => not_ready.push((name.clone(), format!("{name}: no Ready condition"))),
        }
        if n.spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            cordoned.push(name);
        }
    }
    if !not_ready.is_empty() {
        // KubeProber's node-check format, so the trigger makes one Abnormal per node.
        let names: Vec<&str> = not_ready.iter().map(|(n, _)| n.as_str()).collect();
        let details: Vec<&str> = not_ready.iter().map(|(_, d)| d.as_str()).collect();
        return Outcome::error(format!(
            "{} of {} nodes not ready ({}), error node: [ {} ]",
            not_ready.len(),
            list.len(),
            details.join("; "),
            names.join(" ")
        ));
    }
    if !cordoned.is_empty() && !c.ignore_cordoned.unwrap_or(false) {
        return Outcome::warn(format!(
            "{} of {} nodes cordoned, warn node: [ {} ]",
            cordoned.len(),
            list.len(),
            cordoned.join(" ")
        ));
    }
    Outcome::pass(format!("all {} nodes ready", list.len()))
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32)).wrapping_mul(2654435761) ^ std::process::id()
}
