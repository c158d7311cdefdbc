//! Whether a node name that came from outside (a checker's report, an alert's label, a probe
//! message) is a Node of this cluster. Triggers create Abnormals and take storm budgets only for
//! real nodes: an invented name is refused and costs nothing. A name is looked up with a GET
//! (the controller's `get nodes` right); answers are kept briefly in a bounded cache, a known
//! node for [`KNOWN_TTL`], an unknown one for [`UNKNOWN_TTL`] so a node that joins is seen soon.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kdiag_runtime::auth::{CACHE_ENTRIES, TtlCache};
use kube::{Api, Client};

use crate::Error;

/// How long a node found is remembered.
pub const KNOWN_TTL: Duration = Duration::from_secs(60);
/// How long a node not found is remembered.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);

pub struct KnownNodes {
    client: Client,
    cache: Mutex<TtlCache<String, bool>>,
}

impl KnownNodes {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::new(TtlCache::new(CACHE_ENTRIES)),
        }
    }

    /// Whether `name` is a Node. A name that cannot be a Node's is not looked up.
    pub async fn exists(&self, name: &str) -> Result<bool, Error> {
        if !is_node_name(name) {
            return Ok(false);
        }
        let cached = lock(&self.cache)
            .get(&name.to_owned(), Instant::now())
            .copied();
        if let Some(known) = cached {
            return Ok(known);
        }
        let found = Api::<Node>::all(self.client.clone())
            .get_metadata_opt(name)
            .await
            .map_err(|e| Error::kube("get", format!("Node {name}"), e))?
            .is_some();
        let ttl = if found { KNOWN_TTL } else { UNKNOWN_TTL };
        lock(&self.cache).insert(name.to_owned(), found, Instant::now(), ttl);
        Ok(found)
    }

    /// The names of `names` that are no Node, in order.
    pub async fn unknown<'a>(&self, names: &'a [String]) -> Result<Vec<&'a str>, Error> {
        let mut out = Vec::new();
        for n in names {
            if !self.exists(n).await? {
                out.push(n.as_str());
            }
        }
        Ok(out)
    }
}

/// A DNS subdomain (RFC 1123) of at most 253 characters: what a Node's name must be.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::is_node_name;

    #[test]
    fn only_dns_subdomains_are_looked_up() {
        for ok in ["node-1", "ip-10-0-0-1.ec2.internal", "a"] {
            assert!(is_node_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Node1",
            "a/b",
            "../x",
            "-a",
            "a-",
            "a..b",
            &"x".repeat(254),
        ] {
            assert!(!is_node_name(bad), "{bad}");
        }
    }
}
