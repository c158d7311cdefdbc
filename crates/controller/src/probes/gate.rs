//! `GET /gate`: the release gate over HTTP, for pipelines that cannot run kubectl. The verdict is
//! [`kdiag_api::gate::decide`]'s, the same `kubectl diag gate` prints; this module reads the query,
//! checks the caller and fetches the results.
//!
//! Query: `namespace=<ns>` or `allNamespaces=true`; `probes=a,b` or `selector=<labels>` (neither:
//! every probe); `maxAge=10m` (default [`kdiag_api::gate::DEFAULT_MAX_AGE`]).
//!
//! The caller is authenticated with a TokenReview of its bearer token and must be allowed to
//! `get probestatuses` (kubeprober.erda.cloud) in the namespace asked, or in every namespace for
//! `allNamespaces`: the gate tells no more than `kubectl get probestatus` would. 401 without an
//! accepted token, 403 without the right, 503 when the apiserver cannot be asked (fails closed),
//! 400 for a query that cannot work, 200 with the verdict otherwise (`pass` says whether the
//! gate is open; `exitCode` is the CLI's).

use std::collections::HashMap;
use std::time::Duration;

use kdiag_api::gate::{self, Query, Verdict};
use kdiag_api::{Probe, ProbeStatus};
use kdiag_runtime::auth::{Authorizer, Right};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use warp::http::StatusCode;

/// A gate request, as read from its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRequest {
    /// None for every namespace.
    pub namespace: Option<String>,
    pub query: Query,
    pub max_age: Duration,
}

/// Reads `namespace`/`allNamespaces`, `probes`/`selector` and `maxAge`. Err says what is wrong.
pub fn parse(params: &HashMap<String, String>) -> Result<GateRequest, String> {
    let all = params
        .get("allNamespaces")
        .is_some_and(|v| v == "true" || v == "1");
    let namespace = params
        .get("namespace")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let namespace = match (namespace, all) {
        (Some(_), true) => {
            return Err("give namespace=<ns> or allNamespaces=true, not both".into());
        }
        (None, false) => {
            return Err("which namespace? give namespace=<ns> or allNamespaces=true".into());
        }
        (ns, _) => ns,
    };
    let probes: Vec<String> = params
        .get("probes")
        .map(|p| {
            p.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let selector = params
        .get("selector")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if !probes.is_empty() && selector.is_some() {
        return Err("give probes=<names> or selector=<labels>, not both".into());
    }
    let max_age = match params.get("maxAge") {
        Some(s) => kdiag_api::duration::parse_duration(s).map_err(|e| format!("maxAge: {e}"))?,
        None => gate::DEFAULT_MAX_AGE,
    };
    Ok(GateRequest {
        namespace,
        query: Query { probes, selector },
        max_age,
    })
}

/// The right a gate request needs: `get probestatuses` in its namespace (every namespace: none
/// named, so only a cluster-wide grant allows it).
pub fn right(request: &GateRequest) -> Right {
    Right {
        verb: "get".into(),
        group: kdiag_api::KUBEPROBER_GROUP.into(),
        resource: "probestatuses".into(),
        subresource: String::new(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: String::new(),
    }
}

/// One `GET /gate`: the status and the body (the verdict as JSON, or why there is none).
pub async fn answer(
    client: &Client,
    authorizer: &Authorizer,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Verdict, (StatusCode, String)> {
    let request = parse(params).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    if let Err(e) = authorizer.check(authorization, &right(&request)).await {
        let refusal = kdiag_runtime::auth::Refusal::of(&e);
        return Err((refusal.status, refusal.message));
    }
    let ns = request.namespace.as_deref();
    let unavailable = |what: &str, e: kube::Error| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot list {what}: {e}"),
        )
    };
    let statuses: Vec<ProbeStatus> = match ns {
        Some(ns) => Api::<ProbeStatus>::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
    .list(&ListParams::default())
    .await
    .map_err(|e| unavailable("ProbeStatuses", e))?
    .items;
    let probes: Vec<(String, String)> = if request.query.probes.is_empty() {
        let mut params = ListParams::default();
        if let Some(selector) = &request.query.selector {
            params = params.labels(selector);
        }
        match ns {
            Some(ns) => Api::<Probe>::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
        .list(&params)
        .await
        .map_err(|e| match e {
            // A selector the apiserver cannot parse is the caller's to fix.
            kube::Error::Api(s) if s.code == 400 => (StatusCode::BAD_REQUEST, s.message),
            e => unavailable("Probes", e),
        })?
        .items
        .iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect()
    } else {
        Vec::new()
    };
    let asked = gate::select(&request.query, ns, &probes, statuses);
    Ok(gate::decide(
        &asked,
        request.max_age,
        jiff::Timestamp::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_gate_query_names_a_namespace_probes_or_a_selector_and_a_max_age() {
        let r = parse(&params(&[
            ("namespace", "kubeprober"),
            ("probes", "dns, net"),
            ("maxAge", "5m"),
        ]))
        .unwrap();
        assert_eq!(r.namespace.as_deref(), Some("kubeprober"));
        assert_eq!(r.query.probes, ["dns", "net"]);
        assert_eq!(r.max_age, Duration::from_secs(300));
        let all = parse(&params(&[
            ("allNamespaces", "true"),
            ("selector", "tier=1"),
        ]))
        .unwrap();
        assert_eq!(all.namespace, None);
        assert_eq!(all.query.selector.as_deref(), Some("tier=1"));
        assert_eq!(all.max_age, gate::DEFAULT_MAX_AGE);
        assert_eq!(right(&all).namespace, "");
        assert_eq!(
            right(&r).can_i(),
            "kubectl auth can-i get probestatuses.kubeprober.erda.cloud -n kubeprober"
        );
    }

    #[test]
    fn a_gate_query_that_cannot_work_says_why() {
        for (bad, why) in [
            (vec![], "which namespace"),
            (
                vec![("namespace", "a"), ("allNamespaces", "true")],
                "not both",
            ),
            (
                vec![("namespace", "a"), ("probes", "x"), ("selector", "y=z")],
                "not both",
            ),
            (vec![("namespace", "a"), ("maxAge", "soon")], "maxAge"),
        ] {
            let e = parse(&params(&bad)).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
