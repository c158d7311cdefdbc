//! Image pulls that fail: which image, and why (not found, unauthorized, registry unreachable),
//! read from the kubelet's `Failed to pull image` events and the container's waiting message.

use super::facts::Facts;
use super::finding::{self, Finding, Rank, quote_tail};

const PULL_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// Why a pull failed, from the runtime's error text.
fn classify(message: &str) -> (&'static str, &'static str) {
    let m = message.to_ascii_lowercase();
    if m.contains("pull access denied") || m.contains("insufficient_scope") {
        (
            "ImagePullUnauthorized",
            "the registry refused it: the repository does not exist or needs credentials",
        )
    } else if m.contains("unauthorized")
        || m.contains("authentication required")
        || m.contains("401")
        || m.contains("403 forbidden")
        || m.contains("denied")
        || m.contains("no basic auth credentials")
    {
        (
            "ImagePullUnauthorized",
            "the registry refused the credentials (or there were none)",
        )
    } else if m.contains("not found")
        || m.contains("manifest unknown")
        || m.contains("name unknown")
    {
        ("ImageNotFound", "the registry has no such image or tag")
    } else if m.contains("connection refused")
        || m.contains("no such host")
        || m.contains("i/o timeout")
        || m.contains("network is unreachable")
        || m.contains("no route to host")
        || m.contains("proxyconnect")
        || m.contains("tls handshake timeout")
        || m.contains("x509")
        || m.contains("deadline exceeded")
        || m.contains("dial tcp")
        || m.contains("connection reset")
    {
        (
            "RegistryUnreachable",
            "the registry cannot be reached from the node",
        )
    } else {
        ("ImagePullFailed", "the pull failed")
    }
}

/// The registry of an image reference: its first part when that looks like a host, else
/// Docker Hub.
pub fn registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

pub fn check(f: &Facts) -> Vec<Finding> {
    let object = f.object();
    let mut out = Vec::new();
    for c in f.containers() {
        let Some(status) = c.status else { continue };
        let Some(waiting) = status.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let waiting_reason = waiting.reason.as_deref().unwrap_or("");
        if !PULL_REASONS.contains(&waiting_reason) {
            continue;
        }
        let image = c.spec.image.clone().unwrap_or_default();
        // The kubelet's "Failed to pull image …: rpc error: …" event carries the runtime's
        // error; the waiting message of ImagePullBackOff only says "Back-off pulling image".
        let pull_errors: Vec<_> = f
            .events_with("Failed")
            .filter(|e| {
                Facts::event_container(e) == Some(c.name)
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("Failed to pull image"))
            })
            .collect();
        let detail = pull_errors
            .last()
            .and_then(|e| e.message.clone())
            .or_else(|| waiting.message.clone())
            .unwrap_or_default();
        let (reason, why) = match waiting_reason {
            "InvalidImageName" => ("InvalidImageName", "the image reference is not valid"),
            "ErrImageNeverPull" => (
                "ImageNotPresent",
                "it is not on the node and imagePullPolicy is Never",
            ),
            _ => classify(&detail),
        };
        let error = detail
            .rsplit_once(": rpc error: ")
            .map(|(_, e)| e)
            .unwrap_or(&detail);
        let host = registry(&image);
        let suggestion = match reason {
            "ImageNotFound" => format!(
                "Check the image name and tag ({image}): does {host} have it? A typo, a tag never pushed, or a deleted tag; push it or fix spec.containers[{}].image.",
                c.name
            ),
            "ImagePullUnauthorized" => format!(
                "Give the pod credentials for {host}: an imagePullSecrets entry (or the ServiceAccount's) with a docker-registry Secret that may read {image}, and check the repository name."
            ),
            "RegistryUnreachable" => format!(
                "The node cannot reach {host}: check DNS, the node's proxy and firewall, the registry's certificate (x509), or use a registry mirror the nodes can reach; the runtime's error is quoted."
            ),
            "InvalidImageName" => {
                format!("Fix the image reference {image}: repository[:tag][@digest], lower case.")
            }
            "ImageNotPresent" => format!(
                "Load {image} onto the node, or set imagePullPolicy to IfNotPresent so it is pulled."
            ),
            _ => format!("Read the runtime's error for {image} and check the registry {host}."),
        };
        let mut finding = Finding::new(
            reason,
            Rank::Definite,
            format!(
                "container {} of pod {} cannot pull image {image}: {why} ({})",
                c.name,
                f.key(),
                quote_tail(error, 160)
            ),
            suggestion,
        )
        .weighted(pull_errors.len() as i64)
        .with(finding::status(
            &object,
            format!(
                "container {}: waiting, reason {waiting_reason}{}",
                c.name,
                waiting
                    .message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            None,
        ));
        for e in pull_errors.iter().rev().take(3).rev() {
            finding = finding.with_event(e, &object);
        }
        out.push(finding);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_error_says_why() {
        assert_eq!(
            classify("failed to resolve reference \"r.example/a:1\": failed to do request: Head \"https://r.example/v2/a/manifests/1\": proxyconnect tcp: dial tcp 127.0.0.1:9: connect: connection refused").0,
            "RegistryUnreachable"
        );
        assert_eq!(
            classify("failed to resolve reference \"docker.io/library/nginx:nope\": docker.io/library/nginx:nope: not found").0,
            "ImageNotFound"
        );
        assert_eq!(
            classify("failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized").0,
            "ImagePullUnauthorized"
        );
        assert_eq!(classify("something odd").0, "ImagePullFailed");
    }

    #[test]
    fn the_registry_is_the_first_part_when_it_is_a_host() {
        assert_eq!(
            registry("registry.example.com/shop/web:1.2.3"),
            "registry.example.com"
        );
        assert_eq!(registry("localhost:5000/x"), "localhost:5000");
        assert_eq!(registry("nginx:1.25"), "docker.io");
        assert_eq!(registry("library/nginx"), "docker.io");
    }
}
