//! Resource quantities as the scheduler counts them: what a pod requests and what a node can
//! hold.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::types::Resources;

/// `key`'s amount in units of 10^-`scale` (3: millicores), rounded up; 0 when absent or not a
/// quantity.
fn amount(list: Option<&BTreeMap<String, Quantity>>, key: &str, scale: i32) -> i64 {
    list.and_then(|l| l.get(key))
        .and_then(|q| crate::quantity::Quantity::parse(&q.0))
        .map(|q| q.ceil_scaled(scale))
        .unwrap_or(0)
}

fn of_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
    Resources {
        cpu_millis: amount(list, "cpu", 3),
        memory_bytes: amount(list, "memory", 0),
        ephemeral_storage_bytes: amount(list, "ephemeral-storage", 0),
        pods: amount(list, "pods", 0),
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

/// A hostPort a container asks for: (port, protocol, host IP), as the scheduler compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub port: i32,
    pub protocol: String,
    pub host_ip: String,
}

/// Every hostPort `pod`'s containers (and init containers) ask for.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&h| h > 0)?;
            Some(HostPort {
                port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// Whether two hostPorts cannot share a node: the same port and protocol on overlapping
/// addresses (equal, or either binds every address).
pub fn host_ports_clash(a: &HostPort, b: &HostPort) -> bool {
    let every = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    a.port == b.port
        && a.protocol == b.protocol
        && (every(&a.host_ip) || every(&b.host_ip) || a.host_ip == b.host_ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_holds_its_allocatable_amounts_exactly() {
        let node: Node = serde_json::from_value(json!({
            "status": {"allocatable": {
                "cpu": "3800m", "memory": "16266384Ki", "ephemeral-storage": "93492209510",
                "pods": "110"
            }}
        }))
        .unwrap();
        let r = node_allocatable(&node);
        // Through f64, 3800m was 3.8000000000000003 cores: 3801 millicores.
        assert_eq!(r.cpu_millis, 3800);
        assert_eq!(r.memory_bytes, 16_266_384 * 1024);
        assert_eq!(r.ephemeral_storage_bytes, 93_492_209_510);
        assert_eq!(r.pods, 110);
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

    fn with_host_ports(ports: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "c", "ports": ports}]}}))
        .unwrap()
    }

    #[test]
    fn host_ports_are_read_from_containers_with_tcp_by_default() {
        let pod = with_host_ports(serde_json::json!([
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
            {"containerPort": 9000}]));
        let ports = host_ports(&pod);
        assert_eq!(
            ports.len(),
            2,
            "a port without hostPort holds nothing on the node"
        );
        assert_eq!((ports[0].port, ports[0].protocol.as_str()), (8080, "TCP"));
        assert_eq!(ports[1].host_ip, "10.0.0.1");
    }

    #[test]
    fn host_ports_clash_on_the_same_port_protocol_and_an_overlapping_address() {
        let p = |port, proto: &str, ip: &str| HostPort {
            port,
            protocol: proto.into(),
            host_ip: ip.into(),
        };
        assert!(host_ports_clash(
            &p(80, "TCP", ""),
            &p(80, "TCP", "10.0.0.1")
        ));
        assert!(host_ports_clash(
            &p(80, "TCP", "10.0.0.1"),
            &p(80, "TCP", "10.0.0.1")
        ));
        assert!(!host_ports_clash(
            &p(80, "TCP", "10.0.0.1"),
            &p(80, "TCP", "10.0.0.2")
        ));
        assert!(!host_ports_clash(&p(80, "TCP", ""), &p(80, "UDP", "")));
        assert!(!host_ports_clash(&p(80, "TCP", ""), &p(81, "TCP", "")));
    }
}
