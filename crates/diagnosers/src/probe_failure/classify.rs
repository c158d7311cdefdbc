//! KubeProber checker messages classified to the component at fault and the kind of fault, pure.
//!
//! A checker reports what it saw from where it stood ("dial tcp 10.96.0.10:53: i/o timeout");
//! the classification says what that means (cluster DNS does not answer) so that the diagnosis
//! looks at that component instead of repeating the message.

use serde::{Deserialize, Serialize};

/// The kind of fault a checker's message shows.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// "Failed to create pod sandbox: rpc error: …": the runtime or the CNI plugin of a node.
    SandboxCreationFailed,
    /// A name did not resolve ("lookup NAME on SERVER: … i/o timeout", "no such host").
    DnsLookupFailed,
    /// "dial tcp ADDR: connect: connection refused": nothing accepts connections at ADDR.
    ConnectionRefused,
    /// "context deadline exceeded" (or another timeout): a component did not answer in time.
    DeadlineExceeded,
    /// "… error node: [ n1 n2 ]": a node check failed on those nodes.
    NodesFailing,
}

/// The component a fault is in.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    ContainerRuntime,
    Cni,
    ClusterDns,
    Apiserver,
    Etcd,
    Kubelet,
    Scheduler,
    ControllerManager,
    /// An address that is none of the above (a Service, a pod, a node port).
    Endpoint,
    /// Only the checker's name tells what was checked.
    Checker,
}

impl Component {
    /// The component in words, for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ContainerRuntime => "the container runtime",
            Self::Cni => "the CNI plugin",
            Self::ClusterDns => "cluster DNS",
            Self::Apiserver => "the kube-apiserver",
            Self::Etcd => "etcd",
            Self::Kubelet => "the kubelet",
            Self::Scheduler => "the kube-scheduler",
            Self::ControllerManager => "the kube-controller-manager",
            Self::Endpoint => "the endpoint",
            Self::Checker => "what the checker checks",
        }
    }
}

/// What a failing checker's message means.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Classification {
    pub fault: Fault,
    pub component: Component,
    /// The address involved: `ADDR` of a refused dial, the DNS server asked, the runtime's socket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// The CNI plugin named by a sandbox network error (`calico`, `flannel`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plugin: String,
    /// The name a DNS lookup failed for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The nodes the message lists (`error node: [ … ]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The error itself, without what the message wraps it in ("connection refused",
    /// "i/o timeout", the CNI plugin's own error).
    pub error: String,
}

/// Classifies a failing checker by its name and message; None for a message of no known family.
pub fn classify(checker: &str, message: &str) -> Option<Classification> {
    let lower = message.to_lowercase();
    let nodes = nodes_listed(message);
    let mut c =
        if lower.contains("failed to create pod sandbox") || lower.contains("createpodsandbox") {
            sandbox(message, &lower)
        } else if let Some(c) = dns(checker, message, &lower) {
            c
        } else if let Some(addr) = refused_address(message) {
            Classification {
                fault: Fault::ConnectionRefused,
                component: by_port(&addr)
                    .unwrap_or_else(|| named(checker, &lower, Component::Endpoint)),
                endpoint: addr,
                error: "connection refused".into(),
                ..empty(Fault::ConnectionRefused)
            }
        } else if lower.contains("deadline exceeded")
            || lower.contains("timed out")
            || lower.contains("timeout")
        {
            Classification {
                component: named(checker, &lower, Component::Checker),
                error: if lower.contains("context deadline exceeded") {
                    "context deadline exceeded".into()
                } else {
                    tail_error(message)
                },
                ..empty(Fault::DeadlineExceeded)
            }
        } else if !nodes.is_empty() {
            let before = message[..message.find("node:").unwrap_or(message.len())]
                .trim_end_matches(|ch: char| ch == ',' || ch.is_whitespace())
                .trim_end_matches("error")
                .trim_end_matches(|ch: char| ch == ',' || ch.is_whitespace());
            Classification {
                component: named(checker, &lower, Component::Checker),
                error: before.to_owned(),
                ..empty(Fault::NodesFailing)
            }
        } else {
            return None;
        };
    c.nodes = nodes;
    c.error = without_node_list(&c.error);
    Some(c)
}

/// The error without KubeProber's trailing node list (kept in `nodes`) and the quotes around it.
fn without_node_list(error: &str) -> String {
    let cut = error.find("error node:").map_or(error, |i| &error[..i]);
    cut.trim_end_matches(|ch: char| ch == ',' || ch.is_whitespace())
        .trim_matches('"')
        .trim()
        .to_owned()
}

fn empty(fault: Fault) -> Classification {
    Classification {
        fault,
        component: Component::Checker,
        endpoint: String::new(),
        plugin: String::new(),
        name: String::new(),
        nodes: Vec::new(),
        error: String::new(),
    }
}

/// A sandbox failure is the CNI plugin's when the runtime says the network setup failed, else
/// the runtime's own (its socket, a shim, the pause image).
pub(crate) fn sandbox(message: &str, lower: &str) -> Classification {
    let network = lower.contains("network for sandbox")
        || lower.contains("networkplugin")
        || lower.contains("plugin type=")
        || lower.contains("set up pod")
        || lower.contains("setup network")
        || lower.contains("cni");
    let desc = message
        .rfind("desc = ")
        .map(|i| &message[i + "desc = ".len()..])
        .unwrap_or(message)
        .trim()
        .to_owned();
    if network {
        let plugin = between(message, "plugin type=\"", "\"")
            .or_else(|| between(message, "failed to find plugin \"", "\""))
            .or_else(|| between(message, "plugin type=", " "))
            .unwrap_or_default();
        // The plugin's own words come after "failed (add): ".
        let error = message
            .find("failed (add): ")
            .map(|i| message[i + "failed (add): ".len()..].trim().to_owned())
            .unwrap_or(desc);
        return Classification {
            component: Component::Cni,
            plugin,
            error,
            ..empty(Fault::SandboxCreationFailed)
        };
    }
    let endpoint = between(message, "dial unix ", ":")
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_default();
    // Behind a socket the dial's own error says it all ("connect: connection refused").
    let error = message
        .find(&format!("{endpoint}: "))
        .filter(|_| !endpoint.is_empty())
        .map(|i| message[i + endpoint.len() + 2..].to_owned())
        .unwrap_or(desc);
    Classification {
        component: Component::ContainerRuntime,
        endpoint,
        error,
        ..empty(Fault::SandboxCreationFailed)
    }
}

fn dns(checker: &str, message: &str, lower: &str) -> Option<Classification> {
    let name = between(message, "lookup ", " ")
        .or_else(|| between(message, "lookup ", ":"))
        .map(|n| n.trim_end_matches(':').to_owned());
    let dns_words = lower.contains("no such host")
        || lower.contains("servfail")
        || lower.contains("server misbehaving")
        || lower.contains("nxdomain")
        || (lower.contains("dns") && (lower.contains("timeout") || lower.contains("fail")))
        || (checker.to_lowercase().contains("dns") && lower.contains("timeout"));
    if name.is_none() && !dns_words {
        return None;
    }
    let server = between(message, " on ", ": ")
        .filter(|s| s.contains(':'))
        .unwrap_or_default();
    Some(Classification {
        component: Component::ClusterDns,
        endpoint: server,
        name: name.unwrap_or_default(),
        error: tail_error(message),
        ..empty(Fault::DnsLookupFailed)
    })
}

/// `ADDR` of "dial tcp ADDR: connect: connection refused".
fn refused_address(message: &str) -> Option<String> {
    if !message.contains("connection refused") {
        return None;
    }
    let after = &message[message.find("dial tcp ")? + "dial tcp ".len()..];
    let end = after.find(": ")?;
    Some(after[..end].to_owned())
}

/// The well-known ports of the control plane.
fn by_port(addr: &str) -> Option<Component> {
    match addr.rsplit(':').next()? {
        "2379" | "2380" => Some(Component::Etcd),
        "6443" => Some(Component::Apiserver),
        "10250" | "10248" => Some(Component::Kubelet),
        "10259" | "10251" => Some(Component::Scheduler),
        "10257" | "10252" => Some(Component::ControllerManager),
        "53" => Some(Component::ClusterDns),
        _ => None,
    }
}

/// The component a checker's name or message names, else `fallback`.
fn named(checker: &str, lower_message: &str, fallback: Component) -> Component {
    let checker = checker.to_lowercase();
    let rules: [(&[&str], Component); 8] = [
        (&["etcd"], Component::Etcd),
        (
            &["apiserver", "api-server", "kube-api"],
            Component::Apiserver,
        ),
        (&["dns"], Component::ClusterDns),
        (&["kubelet"], Component::Kubelet),
        (&["scheduler"], Component::Scheduler),
        (
            &["controller-manager", "controllermanager"],
            Component::ControllerManager,
        ),
        (
            &["containerd", "docker", "cri-o", "runtime", "sandbox"],
            Component::ContainerRuntime,
        ),
        (&["cni", "calico", "flannel", "cilium"], Component::Cni),
    ];
    for text in [checker.as_str(), lower_message] {
        if let Some((_, c)) = rules
            .iter()
            .find(|(words, _)| words.iter().any(|w| text.contains(w)))
        {
            return *c;
        }
    }
    fallback
}

/// The last ": "-separated part of an error chain: the error itself.
fn tail_error(message: &str) -> String {
    message
        .rsplit(": ")
        .next()
        .unwrap_or(message)
        .trim()
        .to_owned()
}

fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let from = s.find(start)? + start.len();
    let rest = &s[from..];
    let to = rest.find(end).unwrap_or(rest.len());
    let v = rest[..to].trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// The nodes of KubeProber's `… error node: [ n1 n2 ]`.
pub fn nodes_listed(message: &str) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("node:") {
        rest = rest[i + "node:".len()..].trim_start();
        let Some(inner) = rest.strip_prefix('[') else {
            continue;
        };
        let end = inner.find(']').unwrap_or(inner.len());
        for n in inner[..end].split(|c: char| c.is_whitespace() || c == ',') {
            if !n.is_empty() && !nodes.iter().any(|x| x == n) {
                nodes.push(n.to_owned());
            }
        }
        rest = &inner[end..];
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(checker: &str, message: &str) -> Classification {
        classify(checker, message).unwrap_or_else(|| panic!("not classified: {message}"))
    }

    #[test]
    fn a_sandbox_failure_behind_the_runtime_socket_names_the_socket() {
        let x = c(
            "statefulset-check",
            "Failed to create pod sandbox: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing dial unix /run/containerd/containerd.sock: connect: connection refused\"",
        );
        assert_eq!(
            (x.fault, x.component, x.endpoint.as_str()),
            (
                Fault::SandboxCreationFailed,
                Component::ContainerRuntime,
                "/run/containerd/containerd.sock"
            )
        );
        assert_eq!(x.error, "connect: connection refused");
    }

    #[test]
    fn a_sandbox_network_failure_names_the_cni_plugin_and_its_own_error() {
        let x = c(
            "deployment-check",
            "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"5d2e\": plugin type=\"calico\" failed (add): error getting ClusterInformation: connection is unauthorized: Unauthorized",
        );
        assert_eq!((x.component, x.plugin.as_str()), (Component::Cni, "calico"));
        assert_eq!(
            x.error,
            "error getting ClusterInformation: connection is unauthorized: Unauthorized"
        );
        let y = c(
            "deployment-check",
            "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to set up sandbox container network for pod \"web\": networkPlugin cni failed to set up pod \"web_shop\" network: failed to find plugin \"flannel\" in path [/opt/cni/bin]",
        );
        assert_eq!(
            (y.component, y.plugin.as_str()),
            (Component::Cni, "flannel")
        );
    }

    #[test]
    fn a_deadline_is_the_component_the_checker_or_message_names() {
        let x = c("etcd-put", "context deadline exceeded");
        assert_eq!(
            (x.fault, x.component, x.error.as_str()),
            (
                Fault::DeadlineExceeded,
                Component::Etcd,
                "context deadline exceeded"
            )
        );
        assert_eq!(
            c("k8s-get-namespaces", "Get \"https://10.96.0.1:443/api/v1/namespaces\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)").component,
            Component::Checker
        );
        assert_eq!(
            c(
                "control-plane",
                "kube-apiserver health: context deadline exceeded"
            )
            .component,
            Component::Apiserver
        );
    }

    #[test]
    fn a_refused_dial_gives_the_address_and_control_plane_ports_their_component() {
        let x = c(
            "service-check",
            "Get \"http://10.96.14.3:80/\": dial tcp 10.96.14.3:80: connect: connection refused",
        );
        assert_eq!(
            (x.fault, x.component, x.endpoint.as_str()),
            (
                Fault::ConnectionRefused,
                Component::Endpoint,
                "10.96.14.3:80"
            )
        );
        let y = c(
            "etcd-health",
            "dial tcp 127.0.0.1:2379: connect: connection refused",
        );
        assert_eq!(
            (y.component, y.endpoint.as_str()),
            (Component::Etcd, "127.0.0.1:2379")
        );
    }

    #[test]
    fn a_dns_lookup_failure_is_cluster_dns_with_the_name_and_server() {
        let x = c(
            "dns-resolution-check",
            "lookup kubernetes.default.svc.cluster.local on 10.96.0.10:53: read udp 10.244.0.7:41234->10.96.0.10:53: i/o timeout",
        );
        assert_eq!(
            (
                x.fault,
                x.component,
                x.name.as_str(),
                x.endpoint.as_str(),
                x.error.as_str()
            ),
            (
                Fault::DnsLookupFailed,
                Component::ClusterDns,
                "kubernetes.default.svc.cluster.local",
                "10.96.0.10:53",
                "i/o timeout"
            )
        );
        let y = c(
            "dns-resolution-check",
            "lookup kubernetes.default: i/o timeout",
        );
        assert_eq!(
            (y.name.as_str(), y.endpoint.as_str()),
            ("kubernetes.default", "")
        );
        assert_eq!(c("dns", "SERVFAIL").component, Component::ClusterDns);
    }

    #[test]
    fn a_node_check_lists_its_nodes_and_names_the_component_it_checks() {
        let x = c(
            "kubelet-active",
            "kubelet service not active, error node: [ worker-1 worker-2 ]",
        );
        assert_eq!(
            (x.fault, x.component, x.nodes.clone(), x.error.as_str()),
            (
                Fault::NodesFailing,
                Component::Kubelet,
                vec!["worker-1".to_owned(), "worker-2".to_owned()],
                "kubelet service not active"
            )
        );
        // Nodes are kept whatever the fault.
        let y = c(
            "etcd-put",
            "context deadline exceeded, error node: [ cp-1 ]",
        );
        assert_eq!(
            (y.fault, y.nodes.clone()),
            (Fault::DeadlineExceeded, vec!["cp-1".to_owned()])
        );
    }

    #[test]
    fn a_message_of_no_known_family_is_not_classified() {
        assert_eq!(classify("web", "unexpected status 500"), None);
    }
}
