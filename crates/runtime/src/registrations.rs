//! Processor registrations (InformationCollector, Diagnoser, Recoverer objects), watched into
//! local caches: admission validates against them, the agent resolves them (`kdiag_agent`'s
//! `registrations::resolve`) into something to call.

use futures::StreamExt;
use kdiag_api::{
    Diagnoser, InformationCollector, NamespacedName, ProcessorEndpoint, Recoverer, Stage,
};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};

use crate::builtin::Builtins;

/// Caches of the three registration kinds.
#[derive(Clone)]
pub struct Registrations {
    collectors: Store<InformationCollector>,
    diagnosers: Store<Diagnoser>,
    recoverers: Store<Recoverer>,
}

fn reflect<K>(
    client: &Client,
) -> (
    Store<K>,
    impl std::future::Future<Output = ()> + Send + use<K>,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .applied_objects()
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::warn!(error = %e, "watching processor registrations (retrying)");
        }
    });
    (reader, stream)
}

use kube::runtime::reflector::reflector;

impl Registrations {
    /// Starts watching all three kinds; the returned future drives the watches.
    pub fn watch(client: &Client) -> (Self, impl std::future::Future<Output = ()> + Send + use<>) {
        let (collectors, a) = reflect::<InformationCollector>(client);
        let (diagnosers, b) = reflect::<Diagnoser>(client);
        let (recoverers, c) = reflect::<Recoverer>(client);
        let driver = async move {
            tokio::join!(a, b, c);
        };
        (
            Self {
                collectors,
                diagnosers,
                recoverers,
            },
            driver,
        )
    }

    /// Waits until all three caches hold a full list.
    pub async fn wait_until_ready(&self) {
        crate::ready::store_ready(&self.collectors).await;
        crate::ready::store_ready(&self.diagnosers).await;
        crate::ready::store_ready(&self.recoverers).await;
    }

    /// The registration of a processor of `stage`, if it exists.
    pub fn endpoint(&self, stage: Stage, name: &NamespacedName) -> Option<ProcessorEndpoint> {
        match stage {
            Stage::InformationCollecting => self
                .collectors
                .get(&ObjectRef::new(&name.name).within(&name.namespace))
                .map(|o| o.spec.endpoint.clone()),
            Stage::Diagnosing => self
                .diagnosers
                .get(&ObjectRef::new(&name.name).within(&name.namespace))
                .map(|o| o.spec.endpoint.clone()),
            Stage::Recovering => self
                .recoverers
                .get(&ObjectRef::new(&name.name).within(&name.namespace))
                .map(|o| o.spec.endpoint.clone()),
        }
    }

    /// Whether the recoverer `name` declares itself idempotent (may be called again).
    pub fn recoverer_is_idempotent(&self, name: &NamespacedName) -> bool {
        self.recoverers
            .get(&ObjectRef::new(&name.name).within(&name.namespace))
            .is_some_and(|o| o.spec.idempotent)
    }

    /// Every registered name of a stage's kind, as namespace/name, for error messages.
    pub fn names(&self, stage: Stage) -> Vec<String> {
        fn names_of<K: Resource<DynamicType = ()> + Clone>(s: &Store<K>) -> Vec<String> {
            let mut v: Vec<String> = s
                .state()
                .iter()
                .map(|o| {
                    format!(
                        "{}/{}",
                        o.meta().namespace.clone().unwrap_or_default(),
                        o.meta().name.clone().unwrap_or_default()
                    )
                })
                .collect();
            v.sort();
            v
        }
        match stage {
            Stage::InformationCollecting => names_of(&self.collectors),
            Stage::Diagnosing => names_of(&self.diagnosers),
            Stage::Recovering => names_of(&self.recoverers),
        }
    }
}

/// Validation at admission looks registrations up in the same caches the agent uses.
pub struct AdmissionRegistry<'a> {
    pub registrations: &'a Registrations,
    pub builtins: &'a Builtins,
}

impl kdiag_pipeline::admission::Registry for AdmissionRegistry<'_> {
    fn get(&self, stage: Stage, name: &NamespacedName) -> Option<ProcessorEndpoint> {
        self.registrations.endpoint(stage, name)
    }

    fn names(&self, stage: Stage) -> Vec<String> {
        self.registrations.names(stage)
    }

    fn builtins(&self) -> Vec<&'static str> {
        self.builtins.names()
    }
}
