//! The floor: what the apiserver alone costs for an Abnormal's life, measured in the same run.
//!
//! A bare client loop creates an object and then writes its status as many times as kdiag did,
//! with the very status bodies kdiag wrote (recorded from a watch on one of kdiag's Abnormals), so
//! the same bytes go through the same admission, validation and etcd path.
//!
//! The objects are of a copy of the Abnormal CRD under the group `floor.bench.kdiag.io`: the same
//! schema and the same apiserver, but no kdiag component watches them, so kdiag's controller and
//! agents stay idle while the floor runs and both can be measured alternately.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

use crate::env::{Env, object};

const GROUP: &str = "floor.bench.kdiag.io";

pub fn resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: "Abnormal".into(),
        plural: "abnormals".into(),
    }
}

/// Installs the floor's copy of the Abnormal CRD.
pub async fn install(env: &Env) -> Result<()> {
    let original = kdiag_api::crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "Abnormal")
        .context("the Abnormal CRD")?;
    let mut crd: Value = serde_json::to_value(original)?;
    crd["metadata"] = json!({"name": format!("abnormals.{GROUP}")});
    crd["spec"]["group"] = json!(GROUP);
    let crd: CustomResourceDefinition = serde_json::from_value(crd)?;
    env.cp.apply_crds(&[crd]).await?;
    Ok(())
}

/// What the floor writes for one object: kdiag's spec, then kdiag's successive statuses.
#[derive(Clone)]
pub struct Plan {
    pub spec: Value,
    pub statuses: Vec<Value>,
}

impl Plan {
    /// The statuses kdiag wrote for one Abnormal, in order. The last one must be final.
    pub fn from_trace(spec: Value, trace: Vec<Value>) -> Result<Self> {
        let last = trace.last().context("no status was recorded")?;
        anyhow::ensure!(
            matches!(last["phase"].as_str(), Some("Succeeded" | "Failed")),
            "the recorded statuses do not end in a final phase: {last}"
        );
        Ok(Self {
            spec,
            statuses: trace,
        })
    }
}

/// Creates `name` and writes each status of the plan as kdiag's agent does: a replace of
/// /status conditional on the resourceVersion last read, one after the other, as a client doing
/// nothing else would.
pub async fn run_one(api: Api<DynamicObject>, ns: String, name: String, plan: Plan) -> Result<()> {
    let mut stored = api
        .create(
            &PostParams::default(),
            &object(&resource(), &ns, &name, &plan.spec),
        )
        .await?;
    for status in &plan.statuses {
        stored.data["status"] = status.clone();
        stored = api
            .replace_status(&name, &PostParams::default(), &stored)
            .await?;
    }
    Ok(())
}

/// One bare create, timed: the apiserver's own write latency.
pub async fn timed_create(
    api: &Api<DynamicObject>,
    ns: &str,
    name: &str,
    spec: &Value,
) -> Result<Duration> {
    let start = std::time::Instant::now();
    api.create(&PostParams::default(), &object(&resource(), ns, name, spec))
        .await?;
    Ok(start.elapsed())
}

pub fn floor_api(env: &Env, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(env.admin.clone(), ns, &resource())
}
