//! The built-in processors this binary carries, by registration name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kdiag_api::plugin::Processor;

/// Built-in processors by the name their registration must have.
#[derive(Clone, Default)]
pub struct Builtins {
    by_name: BTreeMap<&'static str, Arc<dyn Processor>>,
    /// Built-ins this process knows by name only ([`Builtins::standard_names`]).
    named: BTreeSet<&'static str>,
    /// The recoverers among them (they change the node; never served over HTTP).
    recoverers: BTreeSet<&'static str>,
}

impl Builtins {
    /// Every built-in of kdiag's processor crates. Recoverers are bound to a policy that denies
    /// every action until one is loaded; the agent binds them to the node policy it follows.
    pub fn standard() -> Self {
        let mut b = Self::default();
        for p in kdiag_collectors::all()
            .into_iter()
            .chain(kdiag_diagnosers::all())
        {
            b.insert(p);
        }
        b.bind_policy(kdiag_recoverers::policy::PolicyHandle::not_loaded());
        b
    }

    /// The names of [`Builtins::standard`] without the processors: for the controller, which
    /// admits Abnormals that name built-ins but never runs them. Its binary then leaves out the
    /// agent's processors (`kdiag-controller`, docs/performance.md: idle memory);
    /// [`Builtins::get`] finds nothing.
    pub fn standard_names() -> Self {
        let recoverers = kdiag_recoverers::names();
        Self {
            by_name: BTreeMap::new(),
            named: kdiag_collectors::names()
                .into_iter()
                .chain(kdiag_diagnosers::names())
                .chain(recoverers.iter().copied())
                .collect(),
            recoverers: recoverers.into_iter().collect(),
        }
    }

    /// Binds the recoverers to `policy`.
    pub fn bind_policy(&mut self, policy: kdiag_recoverers::policy::PolicyHandle) {
        for p in kdiag_recoverers::all(policy) {
            self.recoverers.insert(p.name());
            self.insert(p);
        }
    }

    pub fn insert(&mut self, p: Arc<dyn Processor>) {
        self.by_name.insert(p.name(), p);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Processor>> {
        self.by_name.get(name).cloned()
    }

    /// True for a built-in recoverer.
    pub fn is_recoverer(&self, name: &str) -> bool {
        self.recoverers.contains(name)
    }

    /// The names, for error messages that list what exists.
    pub fn names(&self) -> Vec<&'static str> {
        let all: BTreeSet<&'static str> = self.by_name.keys().chain(&self.named).copied().collect();
        all.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_names_only_builtins_are_exactly_the_agents_builtins() {
        let (full, named) = (Builtins::standard(), Builtins::standard_names());
        assert_eq!(full.names(), named.names());
        for name in full.names() {
            assert_eq!(full.is_recoverer(name), named.is_recoverer(name), "{name}");
            assert!(named.get(name).is_none(), "{name} is only a name");
        }
        assert!(named.is_recoverer("signal-recoverer"));
    }
}
