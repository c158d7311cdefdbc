//! What a workload controller's `FailedCreate` says: the apiserver refused the pod it tried to
//! create. A ResourceQuota without room (the admission error lists only the resources that
//! exceed it), a quota that needs requests the pod does not set, an admission webhook or another
//! admission plugin (LimitRange, PodSecurityPolicy, a missing ServiceAccount) that denied it,
//! or a webhook the apiserver cannot call while its failurePolicy is Fail.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{PodSpec, ResourceQuota};
use kdiag_api::{Evidence, RootCause};

/// One resource a quota has no room for, as the quota admission quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lack {
    pub resource: String,
    pub requested: String,
    pub used: String,
    pub limited: String,
}

/// Why the apiserver refused a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `exceeded quota: NAME, requested: …, used: …, limited: …`.
    QuotaExceeded { quota: String, lacks: Vec<Lack> },
    /// `failed quota: NAME: must specify limits.cpu,requests.cpu`.
    QuotaNeedsRequests { quota: String, resources: String },
    /// An admission webhook (`by` is `admission webhook "NAME"`, `webhook` NAME) or another
    /// admission plugin (`webhook` None).
    Denied {
        by: String,
        webhook: Option<String>,
        message: String,
    },
    /// `failed calling webhook "NAME": Post "URL": ERROR`: the apiserver could not ask the
    /// webhook (no such Service, nothing listening, a timeout, a certificate it does not trust),
    /// and its failurePolicy Fail turns that into a refusal. `error` is ERROR, without the URL.
    WebhookFailed { webhook: String, error: String },
    /// Anything else, quoted.
    Other { message: String },
}

/// Reads the error a controller got creating a pod (the event's or the condition's message).
pub fn classify(message: &str) -> Refusal {
    let message = message.trim();
    if let Some(rest) = after(message, "exceeded quota: ") {
        let (quota, rest) = rest.split_once(", requested: ").unwrap_or((rest, ""));
        let (requested, rest) = rest.split_once(", used: ").unwrap_or((rest, ""));
        let (used, limited) = rest.split_once(", limited: ").unwrap_or((rest, ""));
        let pairs = |s: &str| -> Vec<(String, String)> {
            s.split(',')
                .filter_map(|kv| kv.trim().split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        let (used, limited) = (pairs(used), pairs(limited));
        let find = |list: &[(String, String)], k: &str| {
            list.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| "?".into())
        };
        let lacks = pairs(requested)
            .into_iter()
            .map(|(resource, requested)| Lack {
                used: find(&used, &resource),
                limited: find(&limited, &resource),
                resource,
                requested,
            })
            .collect();
        return Refusal::QuotaExceeded {
            quota: quota.trim().to_owned(),
            lacks,
        };
    }
    if let Some(rest) = after(message, "failed quota: ")
        && let Some((quota, need)) = rest.split_once(": must specify ")
    {
        return Refusal::QuotaNeedsRequests {
            quota: quota.trim().to_owned(),
            resources: need.trim().to_owned(),
        };
    }
    if let Some(rest) = after(message, "failed calling webhook \"")
        && let Some((webhook, rest)) = rest.split_once('"')
    {
        let rest = rest.trim_start_matches(':').trim();
        // The request the apiserver sent (`Post "https://…?timeout=10s": `) says nothing the
        // webhook's configuration does not; what went wrong comes after it.
        let error = match rest
            .strip_prefix("Post \"")
            .and_then(|r| r.split_once("\": "))
        {
            Some((_, error)) => error,
            None => rest,
        };
        return Refusal::WebhookFailed {
            webhook: webhook.to_owned(),
            error: error.trim().to_owned(),
        };
    }
    if let Some(start) = message.find("admission webhook \"") {
        let rest = &message[start..];
        let (by, said) = rest.split_once(" denied the request").unwrap_or((rest, ""));
        let webhook = by
            .strip_prefix("admission webhook \"")
            .map(|w| w.trim_end_matches('"').to_owned());
        return Refusal::Denied {
            by: by.to_owned(),
            webhook,
            message: said.trim_start_matches(':').trim().to_owned(),
        };
    }
    if let Some(said) = after(message, "is forbidden: ") {
        return Refusal::Denied {
            by: "admission".into(),
            webhook: None,
            message: said.trim().to_owned(),
        };
    }
    Refusal::Other {
        message: message.to_owned(),
    }
}

/// One webhook of a Validating- or MutatingWebhookConfiguration, as much as a refusal's answer
/// quotes: where the apiserver sends its reviews and what it does when that fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionWebhook {
    /// `validatingwebhookconfiguration` or `mutatingwebhookconfiguration`.
    pub kind: &'static str,
    /// The configuration's name.
    pub configuration: String,
    /// The webhook's own name, as the apiserver's errors quote it.
    pub name: String,
    /// `service NS/NAME:PORT/PATH` or `URL https://…`.
    pub target: String,
    /// Fail (the default in admissionregistration/v1) or Ignore.
    pub failure_policy: String,
    pub timeout_seconds: i32,
}

impl AdmissionWebhook {
    fn object(&self) -> String {
        format!("{}/{}", self.kind, self.configuration)
    }

    fn configuration_kind(&self) -> &'static str {
        if self.kind == "mutatingwebhookconfiguration" {
            "MutatingWebhookConfiguration"
        } else {
            "ValidatingWebhookConfiguration"
        }
    }
}

/// Every webhook of these configurations, flattened.
pub fn admission_webhooks(
    validating: &[ValidatingWebhookConfiguration],
    mutating: &[MutatingWebhookConfiguration],
) -> Vec<AdmissionWebhook> {
    type Config = k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
    let target = |c: &Config| match (&c.service, &c.url) {
        (Some(s), _) => format!(
            "service {}/{}:{}{}",
            s.namespace,
            s.name,
            s.port.unwrap_or(443),
            s.path.as_deref().unwrap_or("/")
        ),
        (None, Some(url)) => format!("URL {url}"),
        (None, None) => "nothing (no service or URL)".into(),
    };
    let one = |kind,
               configuration: &Option<String>,
               name: &str,
               c: &Config,
               policy: &Option<String>,
               timeout: Option<i32>| {
        AdmissionWebhook {
            kind,
            configuration: configuration.clone().unwrap_or_default(),
            name: name.to_owned(),
            target: target(c),
            failure_policy: policy.clone().unwrap_or_else(|| "Fail".into()),
            timeout_seconds: timeout.unwrap_or(10),
        }
    };
    let mut out = Vec::new();
    for v in validating {
        for w in v.webhooks.iter().flatten() {
            out.push(one(
                "validatingwebhookconfiguration",
                &v.metadata.name,
                &w.name,
                &w.client_config,
                &w.failure_policy,
                w.timeout_seconds,
            ));
        }
    }
    for m in mutating {
        for w in m.webhooks.iter().flatten() {
            out.push(one(
                "mutatingwebhookconfiguration",
                &m.metadata.name,
                &w.name,
                &w.client_config,
                &w.failure_policy,
                w.timeout_seconds,
            ));
        }
    }
    out
}

/// The resources of `needed` (`requests.cpu,limits.memory`) each container of `spec` does not
/// set, as `container app sets no requests.cpu, requests.memory`; empty when every one does
/// (or the template is unknown).
fn lacking(needed: &str, spec: Option<&PodSpec>) -> Vec<String> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("init container", c))
        .chain(spec.containers.iter().map(|c| ("container", c)));
    let mut out = Vec::new();
    for (what, c) in containers {
        let res = c.resources.as_ref();
        let missing: Vec<&str> = needed
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .filter(|r| {
                let (kind, name) = r.split_once('.').unwrap_or(("requests", r));
                let map = match kind {
                    "limits" => res.and_then(|r| r.limits.as_ref()),
                    // A request left out defaults to the limit: a limit is enough.
                    _ => res
                        .and_then(|r| r.requests.as_ref())
                        .filter(|m| m.contains_key(name))
                        .or(res.and_then(|r| r.limits.as_ref())),
                };
                !map.is_some_and(|m| m.contains_key(name))
            })
            .collect();
        if !missing.is_empty() {
            out.push(format!("{what} {} sets no {}", c.name, missing.join(", ")));
        }
    }
    out
}

fn after<'a>(s: &'a str, marker: &str) -> Option<&'a str> {
    s.find(marker).map(|i| &s[i + marker.len()..])
}

/// A refused pod creation of `creator` (`ReplicaSet shop/web-5d9f`), for the workload `what`
/// (`Deployment shop/web`, which exists with `have` of `want` pods), as a root cause. The
/// quota is looked up among `quotas` for its evidence. `seen` is the controller's own record
/// of the refusal (its event or condition), evidence first. `webhooks` are the cluster's
/// admission webhooks (empty when they could not be read), `template` the pods' spec.
pub struct Refused<'a> {
    pub what: &'a str,
    pub creator: &'a str,
    pub have: i32,
    pub want: i32,
    pub message: &'a str,
    pub seen: Evidence,
    pub quotas: &'a [ResourceQuota],
    pub namespace: &'a str,
    pub webhooks: &'a [AdmissionWebhook],
    pub template: Option<&'a PodSpec>,
}

impl Refused<'_> {
    pub fn cause(&self) -> RootCause {
        let head = format!(
            "{} cannot create its pods ({} of {} exist): {}",
            self.what, self.have, self.want, self.creator
        );
        let mut evidence = vec![self.seen.clone()];
        let ns = self.namespace;
        let (reason, summary, suggestion) = match classify(self.message) {
            Refusal::QuotaExceeded { quota, lacks } => {
                evidence.extend(self.quota_evidence(&quota));
                let lacking = lacks
                    .iter()
                    .map(|l| {
                        format!(
                            "{} (a pod asks {}, {} of {} used)",
                            l.resource, l.requested, l.used, l.limited
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    "ResourceQuotaExceeded",
                    format!(
                        "{head} is refused by ResourceQuota {ns}/{quota}, which has no room for {lacking}"
                    ),
                    format!(
                        "Raise the hard limit of ResourceQuota {ns}/{quota} (kubectl edit resourcequota -n {ns} {quota}), lower what each pod requests, or free quota by removing other workloads in {ns}; the controller retries on its own."
                    ),
                )
            }
            Refusal::QuotaNeedsRequests { quota, resources } => {
                evidence.extend(self.quota_evidence(&quota));
                let lacking = lacking(&resources, self.template);
                let lacking = if lacking.is_empty() {
                    "the pod template does not".to_owned()
                } else {
                    format!("in the pod template {}", lacking.join("; "))
                };
                (
                    "ResourceQuotaMissingRequests",
                    format!(
                        "{head} is refused by ResourceQuota {ns}/{quota}, which requires every pod to set {resources}; {lacking}"
                    ),
                    format!(
                        "Set resources ({resources}) on every container of the pod template, or give namespace {ns} a LimitRange with defaults."
                    ),
                )
            }
            Refusal::Denied {
                by,
                webhook,
                message,
            } => {
                let config = webhook.as_deref().and_then(|w| self.webhook(w));
                let of = config
                    .map(|w| {
                        evidence.push(webhook_evidence(w));
                        format!(" (of {} {})", w.configuration_kind(), w.configuration)
                    })
                    .unwrap_or_default();
                (
                    "PodCreationDenied",
                    format!("{head} is refused by {by}{of}: {message}"),
                    format!(
                        "Change the pod template to satisfy what {by} says, or fix that policy; the controller retries on its own."
                    ),
                )
            }
            Refusal::WebhookFailed { webhook, error } => {
                let config = self.webhook(&webhook);
                let of = config
                    .map(|w| {
                        evidence.push(webhook_evidence(w));
                        format!(
                            " (of {} {}, calling {})",
                            w.configuration_kind(),
                            w.configuration,
                            w.target
                        )
                    })
                    .unwrap_or_default();
                let delete = config
                    .map(|w| format!("kubectl delete {} {}", w.kind, w.configuration))
                    .unwrap_or_else(|| "delete its configuration".into());
                (
                    "AdmissionWebhookFailing",
                    format!(
                        "{head} is refused because the apiserver cannot call admission webhook \"{webhook}\"{of} and its failurePolicy is Fail: {error}"
                    ),
                    format!(
                        "Bring the webhook's server back (its Service, endpoints and pods, its certificate), or, if it is gone for good, {delete}; failurePolicy Ignore lets pods through while it is down. The controller retries on its own."
                    ),
                )
            }
            Refusal::Other { message } => (
                "PodCreationFailed",
                format!("{head} fails to create them: {message}"),
                "Fix what the error says; the controller retries on its own.".into(),
            ),
        };
        RootCause {
            reason: reason.into(),
            summary,
            suggestion,
            since: self.seen.timestamp.clone(),
            evidence,
            ..Default::default()
        }
    }

    fn webhook(&self, name: &str) -> Option<&AdmissionWebhook> {
        self.webhooks.iter().find(|w| w.name == name)
    }

    fn quota_evidence(&self, name: &str) -> Option<Evidence> {
        let q = self
            .quotas
            .iter()
            .find(|q| q.metadata.name.as_deref() == Some(name))?;
        let list = |m: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >| {
            m.into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let st = q.status.as_ref();
        Some(Evidence {
            kind: "ResourceQuota".into(),
            object: format!("resourcequota/{}/{name}", self.namespace),
            message: format!(
                "hard {}; used {}",
                list(st.and_then(|s| s.hard.as_ref())),
                list(st.and_then(|s| s.used.as_ref()))
            ),
            ..Default::default()
        })
    }
}

/// `AdmissionWebhook` evidence: the configuration, where it sends reviews and its policy.
fn webhook_evidence(w: &AdmissionWebhook) -> Evidence {
    Evidence {
        kind: "AdmissionWebhook".into(),
        object: w.object(),
        message: format!(
            "webhook {} calls {}, failurePolicy {}, timeout {} s",
            w.name, w.target, w.failure_policy, w.timeout_seconds
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exceeded_quota_names_the_quota_and_each_resource_it_lacks() {
        let r = classify(
            "Error creating: pods \"web-5d9f-x\" is forbidden: exceeded quota: tiny, requested: pods=1,requests.cpu=500m, used: pods=1,requests.cpu=0, limited: pods=1,requests.cpu=100m",
        );
        assert_eq!(
            r,
            Refusal::QuotaExceeded {
                quota: "tiny".into(),
                lacks: vec![
                    Lack {
                        resource: "pods".into(),
                        requested: "1".into(),
                        used: "1".into(),
                        limited: "1".into()
                    },
                    Lack {
                        resource: "requests.cpu".into(),
                        requested: "500m".into(),
                        used: "0".into(),
                        limited: "100m".into()
                    },
                ]
            }
        );
    }

    #[test]
    fn a_quota_that_needs_requests_names_them() {
        assert_eq!(
            classify(
                "pods \"web-0\" is forbidden: failed quota: compute: must specify limits.cpu,requests.cpu"
            ),
            Refusal::QuotaNeedsRequests {
                quota: "compute".into(),
                resources: "limits.cpu,requests.cpu".into()
            }
        );
    }

    #[test]
    fn a_webhook_or_another_admission_plugin_is_named_with_what_it_said() {
        assert_eq!(
            classify(
                "Error creating: admission webhook \"policy.example.com\" denied the request: images must come from registry.example.com"
            ),
            Refusal::Denied {
                by: "admission webhook \"policy.example.com\"".into(),
                webhook: Some("policy.example.com".into()),
                message: "images must come from registry.example.com".into()
            }
        );
        assert_eq!(
            classify(
                "create Pod web-0 in StatefulSet web failed error: pods \"web-0\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
            ),
            Refusal::Denied {
                by: "admission".into(),
                webhook: None,
                message: "maximum cpu usage per Container is 1, but limit is 2".into()
            }
        );
    }

    #[test]
    fn a_webhook_the_apiserver_cannot_call_is_named_with_its_error_without_the_request() {
        assert_eq!(
            classify(
                "Error creating: Internal error occurred: failed calling webhook \"gone.kdiag.test\": Post \"https://gone.shop.svc:443/validate?timeout=10s\": service \"gone\" not found"
            ),
            Refusal::WebhookFailed {
                webhook: "gone.kdiag.test".into(),
                error: "service \"gone\" not found".into()
            }
        );
    }

    fn refused<'a>(
        message: &'a str,
        webhooks: &'a [AdmissionWebhook],
        template: Option<&'a PodSpec>,
    ) -> RootCause {
        Refused {
            what: "Deployment shop/web",
            creator: "its ReplicaSet shop/web-5d9f",
            have: 0,
            want: 1,
            message,
            seen: Evidence::default(),
            quotas: &[],
            namespace: "shop",
            webhooks,
            template,
        }
        .cause()
    }

    fn validating(v: serde_json::Value) -> Vec<AdmissionWebhook> {
        admission_webhooks(&[serde_json::from_value(v).unwrap()], &[])
    }

    #[test]
    fn a_failing_webhook_names_its_configuration_and_where_it_calls() {
        let webhooks = validating(serde_json::json!({
            "metadata": {"name": "policy"},
            "webhooks": [{"name": "gone.kdiag.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"service": {"namespace": "shop", "name": "gone", "path": "/validate"}}}]}));
        let rc = refused(
            "Internal error occurred: failed calling webhook \"gone.kdiag.test\": Post \"https://gone.shop.svc:443/validate?timeout=10s\": service \"gone\" not found",
            &webhooks,
            None,
        );
        assert_eq!(rc.reason, "AdmissionWebhookFailing");
        assert_eq!(
            rc.summary,
            "Deployment shop/web cannot create its pods (0 of 1 exist): its ReplicaSet shop/web-5d9f is refused because the apiserver cannot call admission webhook \"gone.kdiag.test\" (of ValidatingWebhookConfiguration policy, calling service shop/gone:443/validate) and its failurePolicy is Fail: service \"gone\" not found"
        );
        assert!(
            rc.suggestion
                .contains("kubectl delete validatingwebhookconfiguration policy")
        );
        assert_eq!(
            rc.evidence[1].message,
            "webhook gone.kdiag.test calls service shop/gone:443/validate, failurePolicy Fail, timeout 10 s"
        );
    }

    #[test]
    fn a_denying_webhook_names_its_configuration() {
        let webhooks = validating(serde_json::json!({
            "metadata": {"name": "policy"},
            "webhooks": [{"name": "deny.kdiag.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": 5,
                "clientConfig": {"url": "https://127.0.0.1:9443/deny"}}]}));
        let rc = refused(
            "admission webhook \"deny.kdiag.test\" denied the request: no pods today",
            &webhooks,
            None,
        );
        assert_eq!(rc.reason, "PodCreationDenied");
        assert!(
            rc.summary.ends_with(
                "is refused by admission webhook \"deny.kdiag.test\" (of ValidatingWebhookConfiguration policy): no pods today"
            ),
            "{}",
            rc.summary
        );
        assert_eq!(
            rc.evidence[1].object,
            "validatingwebhookconfiguration/policy"
        );
    }

    #[test]
    fn a_quota_that_needs_requests_names_the_containers_that_lack_them() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({"containers": [
            {"name": "app"},
            {"name": "sidecar", "resources": {"requests": {"cpu": "10m"}}},
            {"name": "limited", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
        ]}))
        .unwrap();
        let rc = refused(
            "pods \"web-5d9f-x\" is forbidden: failed quota: compute: must specify requests.cpu,requests.memory",
            &[],
            Some(&spec),
        );
        assert_eq!(rc.reason, "ResourceQuotaMissingRequests");
        assert!(
            rc.summary.ends_with(
                "is refused by ResourceQuota shop/compute, which requires every pod to set requests.cpu,requests.memory; in the pod template container app sets no requests.cpu, requests.memory; container sidecar sets no requests.memory"
            ),
            "{}",
            rc.summary
        );
    }
}
