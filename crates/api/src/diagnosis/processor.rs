//! Processor registrations: `InformationCollector`, `Diagnoser` and `Recoverer` share one spec.
//!
//! A registration with neither externalIP/externalPort nor service names a built-in processor,
//! run in-process by the node agent; otherwise it is an HTTP plugin at that address.

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
    /// Seconds one call may take. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// kdiag extension: how to verify an https processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// kdiag extension: a Secret key (in the registration's namespace) holding a bearer token
    /// sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret_ref: Option<SecretKeyRef>,
}

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
    /// A built-in processor: no address of its own, so the node agent runs it in-process.
    pub fn is_builtin(&self) -> bool {
        self.external_ip.is_none() && self.external_port.is_none() && self.service.is_none()
    }
}

/// Registers an information collector.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "InformationCollector",
    namespaced,
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
}
