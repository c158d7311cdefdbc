//! Resource quantities as the scheduler counts them: what a pod requests and what a node can
//! hold.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::types::Resources;

/// A Kubernetes quantity ("500m", "1.5Gi", "2", "1e3") in base units. `None` for anything that
/// is not one.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() {
        return None;
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

fn amount(list: Option<&BTreeMap<String, Quantity>>, key: &str, scale: f64) -> i64 {
    list.and_then(|l| l.get(key))
        .and_then(|q| parse_quantity(&q.0))
        .map(|v| (v * scale).ceil() as i64)
        .unwrap_or(0)
}

fn of_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    Resources {
        cpu_millis: amount(list, "cpu", 1000.0),
        memory_bytes: amount(list, "memory", 1.0),
        ephemeral_storage_bytes: amount(list, "ephemeral-storage", 1.0),
        pods: amount(list, "pods", 1.0),
    }
}

/// What a container requests. The apiserver defaults requests to limits, so a container with
/// only limits requests them.
pub fn container_requests(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let requests = of_list(r.and_then(|r| r.requests.as_ref()));
    let limits = of_list(r.and_then(|r| r.limits.as_ref()));
    let pick = |req: i64, lim: i64| if req == 0 { lim } else { req };
    Resources {
        cpu_millis: pick(requests.cpu_millis, limits.cpu_millis),
        memory_bytes: pick(requests.memory_bytes, limits.memory_bytes),
        ephemeral_storage_bytes: pick(
            requests.ephemeral_storage_bytes,
            limits.ephemeral_storage_bytes,
        ),
        pods: 0,
    }
}

/// What a pod requests as the scheduler counts it: the containers' sum, or the largest init
/// container when that is more (they run one at a time, before the others), plus the pod's
/// overhead, and one pod slot.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let sum = spec
        .containers
        .iter()
        .map(container_requests)
        .fold(Resources::default(), Resources::plus);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_requests)
        .fold(Resources::default(), Resources::max);
    let overhead = of_list(spec.overhead.as_ref());
    Resources {
        pods: 1,
        ..sum.max(init).plus(overhead)
    }
}

/// What a node can hold (status.allocatable).
pub fn node_allocatable(node: &Node) -> Resources {
    of_list(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

/// A memory or storage amount for people: `1.5 GiB`.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let negative = bytes < 0;
    let mut v = bytes.unsigned_abs() as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let sign = if negative { "-" } else { "" };
    if unit == 0 {
        format!("{sign}{} B", bytes.unsigned_abs())
    } else {
        format!("{sign}{v:.1} {}", UNITS[unit])
    }
}

/// CPU for people: `250m` or `2` cores.
pub fn human_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_of_every_suffix_parse() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5Gi"), Some(1_610_612_736.0));
        assert_eq!(parse_quantity("1k"), Some(1000.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("12x"), None);
    }

    #[test]
    fn a_pod_requests_its_containers_sum_or_its_largest_init_container() {
        let pod: Pod = serde_json::from_value(json!({
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}
                ]
            }
        }))
        .unwrap();
        let r = pod_requests(&pod);
        assert_eq!(r.cpu_millis, 2000, "the init container needs more cpu");
        assert_eq!(
            r.memory_bytes,
            128 * 1024 * 1024,
            "limits stand in for requests"
        );
        assert_eq!(r.pods, 1);
    }

    #[test]
    fn amounts_read_well() {
        assert_eq!(human_bytes(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(human_bytes(-2048), "-2.0 KiB");
        assert_eq!(human_cpu(1500), "1500m");
        assert_eq!(human_cpu(2000), "2");
    }
}
