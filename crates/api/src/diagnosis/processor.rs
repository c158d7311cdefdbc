//! Processor registrations: `InformationCollector`, `Diagnoser` and `Recoverer` share one spec.
//!
//! A registration with neither externalIP/externalPort nor service names a built-in processor,
//! run in-process by the node agent; otherwise it is an HTTP plugin at that address. The
//! v0.1.0–v0.1.5 fields `ip` and `port` are read as externalIP and externalPort
//! ([`ProcessorEndpoint::effective`]).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where and how to call a processor. The same fields as Kube Diagnoser's registrations, plus
/// kdiag's optional service, tls and bearerTokenSecretRef.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorEndpoint {
    /// Host of an external processor: an IP address or (kdiag) a DNS name.
    #[serde(
        default,
        rename = "externalIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ip: Option<String>,
    /// Port of an external processor. Kube Diagnoser wrote it as a number; a string is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_port: Option<IntOrString>,
    /// kdiag extension: a Service in front of the processor, instead of externalIP/externalPort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceReference>,
    /// URL path, such as /processor/podCollector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// http (default) or https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Seconds one call may take. Default (also for 0, as in Kube Diagnoser): 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// kdiag extension: how to verify an https processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// kdiag extension: a Secret key (in the registration's namespace) holding a bearer token
    /// sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretKeyRef>,
    /// Deprecated (Kube Diagnoser v0.1.0–v0.1.5): the processor's host; read as externalIP.
    /// `0.0.0.0` or a loopback address with port 8090 named Kube Diagnoser's own agent, so
    /// such a registration names kdiag's built-in of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Deprecated (Kube Diagnoser v0.1.0–v0.1.5; a string in v0.1.0): the processor's port;
    /// read as externalPort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Deprecated (Kube Diagnoser v0.1.0–v0.1.5): kept, unused, as it was in Kube Diagnoser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_path: Option<String>,
    /// Deprecated (Kube Diagnoser v0.1.0–v0.1.1): a core/v1 Probe; kept, unused, as it was in
    /// Kube Diagnoser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_free_form_object")]
    pub readiness_probe: Option<serde_json::Value>,
}

/// The status of a processor registration: only Kube Diagnoser's `ready`, kept so the apiserver
/// does not prune it. kdiag does not write it (Kube Diagnoser did not either).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorStatus {
    /// Kube Diagnoser v0.1.0–v0.1.5: whether the processor passed its readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// The port Kube Diagnoser's agent served its built-ins on.
pub const KUBE_DIAGNOSER_AGENT_PORT: i32 = 8090;

/// kdiag extension: a Service and port that front a processor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReference {
    /// Namespace of the Service; default: the registration's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// Port of the Service.
    pub port: i32,
}

/// kdiag extension: TLS settings for an https processor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM bundle of the CAs that may sign the processor's certificate. Default: the system's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_bundle: String,
    /// A Secret key (in the registration's namespace) holding that PEM bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Name to verify the certificate against, when it differs from the host called.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_name: String,
}

/// kdiag extension: one key of a Secret in the registration's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl ProcessorEndpoint {
    /// Seconds one call may take when timeoutSeconds is left out or 0, as in Kube Diagnoser.
    pub const DEFAULT_TIMEOUT_SECONDS: i32 = 30;

    /// Seconds one call may take: timeoutSeconds, or the default when it is left out or not
    /// positive (Kube Diagnoser's webhook turned 0 into 30).
    pub fn timeout(&self) -> i32 {
        self.timeout_seconds
            .filter(|s| *s > 0)
            .unwrap_or(Self::DEFAULT_TIMEOUT_SECONDS)
    }

    /// A built-in processor: no address of its own, so the node agent runs it in-process.
    pub fn is_builtin(&self) -> bool {
        let e = self.effective();
        e.external_ip.is_none() && e.external_port.is_none() && e.service.is_none()
    }

    /// True when the address comes from the deprecated `ip`/`port` alone: today's fields
    /// (externalIP, externalPort, service) win when both are given.
    pub fn uses_legacy_address(&self) -> bool {
        (self.ip.is_some() || self.port.is_some())
            && self.external_ip.is_none()
            && self.external_port.is_none()
            && self.service.is_none()
    }

    /// True when the deprecated address names Kube Diagnoser's own agent (0.0.0.0 or loopback,
    /// port 8090), where its built-ins were served: kdiag runs its own built-in instead.
    pub fn legacy_address_names_the_agent(&self) -> bool {
        let local = matches!(
            self.ip.as_deref().map(str::trim),
            Some("0.0.0.0" | "127.0.0.1" | "::" | "::1" | "localhost" | "")
        );
        let agent_port = match &self.port {
            Some(IntOrString::Int(p)) => *p == KUBE_DIAGNOSER_AGENT_PORT,
            Some(IntOrString::String(p)) => {
                p.trim().parse::<i32>().ok() == Some(KUBE_DIAGNOSER_AGENT_PORT)
            }
            None => false,
        };
        self.uses_legacy_address() && local && agent_port
    }

    /// The endpoint with the deprecated `ip`/`port` read as today's fields: externalIP and
    /// externalPort, or no address (a built-in) when they named Kube Diagnoser's agent.
    pub fn effective(&self) -> ProcessorEndpoint {
        let mut e = self.clone();
        if self.uses_legacy_address() && !self.legacy_address_names_the_agent() {
            e.external_ip = self.ip.clone().filter(|ip| !ip.trim().is_empty());
            e.external_port = self.port.clone();
        }
        e.ip = None;
        e.port = None;
        e
    }

    /// What to say about a registration that uses the deprecated fields: how it was read and
    /// what to change.
    pub fn deprecation_note(&self) -> Option<String> {
        if !self.uses_legacy_address() {
            return None;
        }
        let address = format!(
            "{}:{}",
            self.ip.as_deref().unwrap_or_default(),
            match &self.port {
                Some(IntOrString::Int(p)) => p.to_string(),
                Some(IntOrString::String(p)) => p.clone(),
                None => String::new(),
            }
        );
        Some(if self.legacy_address_names_the_agent() {
            format!(
                "the registration uses Kube Diagnoser's deprecated spec.ip/spec.port ({address}, its agent), read as kdiag's built-in of the same name; remove spec.ip and spec.port"
            )
        } else {
            format!(
                "the registration uses Kube Diagnoser's deprecated spec.ip/spec.port ({address}); rename them spec.externalIP and spec.externalPort"
            )
        })
    }
}

/// Registers an information collector.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "InformationCollector",
    namespaced,
    status = "ProcessorStatus",
    shortname = "ic",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "Registers an information collector: built in (no address) or an HTTP plugin.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.externalIP"),
    printcolumn(name = "Port", type_ = "string", json_path = ".spec.externalPort"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct InformationCollectorSpec {
    #[serde(flatten)]
    pub endpoint: ProcessorEndpoint,
}

/// Registers a diagnoser.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "Diagnoser",
    namespaced,
    status = "ProcessorStatus",
    shortname = "dg",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "Registers a diagnoser: built in (no address) or an HTTP plugin.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.externalIP"),
    printcolumn(name = "Port", type_ = "string", json_path = ".spec.externalPort"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct DiagnoserSpec {
    #[serde(flatten)]
    pub endpoint: ProcessorEndpoint,
}

/// Registers a recoverer.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "Recoverer",
    namespaced,
    status = "ProcessorStatus",
    shortname = "rcv",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "Registers a recoverer: built in (no address) or an HTTP plugin.",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.externalIP"),
    printcolumn(name = "Port", type_ = "string", json_path = ".spec.externalPort"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct RecovererSpec {
    #[serde(flatten)]
    pub endpoint: ProcessorEndpoint,
    /// kdiag extension: the recoverer may be called again with the same `Idempotency-Key`
    /// header (`<uid>/Recovering/<namespace>/<name>`) without acting twice (docs/plugins.md). A
    /// recovery the agent stopped during is then run again after its restart, up to 3 attempts
    /// in all, instead of ending the Abnormal with reason RecoveryInterrupted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoint(spec: serde_json::Value) -> ProcessorEndpoint {
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn a_v015_plugin_registration_is_read_as_external_ip_and_port() {
        let e = endpoint(
            json!({"ip": "10.0.0.7", "port": 8000, "path": "/collect", "metricPath": "/metrics"}),
        );
        assert!(!e.is_builtin());
        let effective = e.effective();
        assert_eq!(effective.external_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(effective.external_port, Some(IntOrString::Int(8000)));
        assert!(
            e.deprecation_note()
                .unwrap()
                .contains("rename them spec.externalIP")
        );
    }

    #[test]
    fn a_v010_port_written_as_a_string_is_read_too() {
        let e = endpoint(json!({"ip": "10.0.0.7", "port": "8000"}));
        assert_eq!(
            e.effective().external_port,
            Some(IntOrString::String("8000".into()))
        );
    }

    #[test]
    fn kube_diagnosers_own_builtin_registrations_stay_builtins() {
        for ip in ["0.0.0.0", "127.0.0.1"] {
            let e = endpoint(
                json!({"ip": ip, "port": 8090, "path": "/informationcollector/podcollector"}),
            );
            assert!(e.is_builtin(), "{ip}:8090 named Kube Diagnoser's agent");
            assert!(e.deprecation_note().unwrap().contains("built-in"));
        }
        assert!(!endpoint(json!({"ip": "0.0.0.0", "port": 9000})).is_builtin());
    }

    #[test]
    fn todays_fields_win_over_the_deprecated_ones() {
        let e = endpoint(
            json!({"externalIP": "10.0.0.8", "externalPort": 80, "ip": "10.0.0.7", "port": 1}),
        );
        assert_eq!(e.effective().external_ip.as_deref(), Some("10.0.0.8"));
        assert!(e.deprecation_note().is_none());
        assert!(endpoint(json!({})).is_builtin());
    }

    #[test]
    fn a_timeout_of_zero_means_the_default_as_in_kube_diagnoser() {
        assert_eq!(endpoint(json!({"timeoutSeconds": 0})).timeout(), 30);
        assert_eq!(endpoint(json!({})).timeout(), 30);
        assert_eq!(endpoint(json!({"timeoutSeconds": 5})).timeout(), 5);
    }
}
