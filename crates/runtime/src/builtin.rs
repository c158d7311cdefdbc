//! The built-in processors this binary carries, by registration name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kdiag_api::plugin::Processor;

/// Built-in processors by the name their registration must have.
#[derive(Clone, Default)]
pub struct Builtins {
    by_name: BTreeMap<&'static str, Arc<dyn Processor>>,
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
        self.by_name.keys().copied().collect()
    }
}
