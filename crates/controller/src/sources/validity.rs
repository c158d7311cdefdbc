//! Reports on each AbnormalSource whether its template is usable: condition `Valid` with the
//! reason a pattern does not compile (Kube Diagnoser ignored broken sources silently).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kdiag_api::{AbnormalSource, SourceCondition};
use kdiag_pipeline::templates::compile;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Starts the validity reporter; returns the store of AbnormalSources it keeps (the triggers
/// read it) and the future that runs it.
pub fn start(
    client: Client,
    shutdown: CancellationToken,
) -> (
    Store<AbnormalSource>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let controller = Controller::new(
        Api::<AbnormalSource>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.cancelled_owned());
    let store = controller.store();
    let run = controller
        .run(
            reconcile,
            |_, e: &kube::Error, _| {
                tracing::warn!(error = %e, "writing an AbnormalSource's status; retrying");
                Action::requeue(Duration::from_secs(10))
            },
            Arc::new(client),
        )
        .for_each(|_| async {});
    (store, run)
}

async fn reconcile(
    source: Arc<AbnormalSource>,
    client: Arc<Client>,
) -> Result<Action, kube::Error> {
    let (status, reason, message) = match compile(&source) {
        Ok(_) => (
            "True",
            "Valid",
            "the template compiles; matching triggers create Abnormals".to_owned(),
        ),
        Err(e) => (
            "False",
            "InvalidTemplate",
            format!("{e}; this source is ignored until it is fixed"),
        ),
    };
    let current = source
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Valid"));
    let observed = source.status.as_ref().and_then(|s| s.observed_generation);
    if current.is_some_and(|c| c.status == status && c.message == message)
        && observed == source.metadata.generation
    {
        return Ok(Action::await_change());
    }
    let transition = match current {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(kdiag_runtime::time::now()),
    };
    let condition = SourceCondition {
        type_: "Valid".into(),
        status: status.into(),
        last_transition_time: transition,
        reason: reason.into(),
        message,
    };
    if status == "False" {
        tracing::warn!(source = %format!("{}/{}", source.namespace().unwrap_or_default(), source.name_any()), message = %condition.message, "invalid AbnormalSource");
    }
    let api: Api<AbnormalSource> =
        Api::namespaced((*client).clone(), &source.namespace().unwrap_or_default());
    let patch = json!({"status": {"conditions": [condition], "observedGeneration": source.metadata.generation}});
    api.patch_status(
        &source.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(Action::await_change())
}
