//! Publishing Events without kube's Recorder cache.
//!
//! kube's `Recorder` keeps every Event it published for 6 minutes, to fold a repeat into a series,
//! and drops old ones only when it publishes again: a few Events per Abnormal made it the largest
//! memory user of a busy agent (docs/performance.md). kdiag's Events mark transitions of one
//! Abnormal, which do not repeat, so each is published by a Recorder of its own.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

#[derive(Clone)]
pub struct UncachedRecorder {
    client: Client,
    reporter: Reporter,
}

impl UncachedRecorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, reference)
            .await
    }
}
