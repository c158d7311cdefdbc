//! What a workload controller's `FailedCreate` says: the apiserver refused the pod it tried to
//! create. A ResourceQuota without room (the admission error lists only the resources that
//! exceed it), a quota that needs requests the pod does not set, an admission webhook or another
//! admission plugin (LimitRange, PodSecurityPolicy, a missing ServiceAccount) that denied it.

use k8s_openapi::api::core::v1::ResourceQuota;
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
    /// An admission webhook (`by` is `admission webhook "NAME"`) or another admission plugin.
    Denied { by: String, message: String },
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
    if let Some(start) = message.find("admission webhook \"") {
        let rest = &message[start..];
        let (by, said) = rest.split_once(" denied the request").unwrap_or((rest, ""));
        return Refusal::Denied {
            by: by.to_owned(),
            message: said.trim_start_matches(':').trim().to_owned(),
        };
    }
    if let Some(said) = after(message, "is forbidden: ") {
        return Refusal::Denied {
            by: "admission".into(),
            message: said.trim().to_owned(),
        };
    }
    Refusal::Other {
        message: message.to_owned(),
    }
}

fn after<'a>(s: &'a str, marker: &str) -> Option<&'a str> {
    s.find(marker).map(|i| &s[i + marker.len()..])
}

/// A refused pod creation of `creator` (`ReplicaSet shop/web-5d9f`), for the workload `what`
/// (`Deployment shop/web`, which exists with `have` of `want` pods), as a root cause. The
/// quota is looked up among `quotas` for its evidence. `seen` is the controller's own record
/// of the refusal (its event or condition), evidence first.
pub struct Refused<'a> {
    pub what: &'a str,
    pub creator: &'a str,
    pub have: i32,
    pub want: i32,
    pub message: &'a str,
    pub seen: Evidence,
    pub quotas: &'a [ResourceQuota],
    pub namespace: &'a str,
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
                (
                    "ResourceQuotaMissingRequests",
                    format!(
                        "{head} is refused by ResourceQuota {ns}/{quota}, which requires every pod to set {resources}; the pod template does not"
                    ),
                    format!(
                        "Set resources ({resources}) on every container of the pod template, or give namespace {ns} a LimitRange with defaults."
                    ),
                )
            }
            Refusal::Denied { by, message } => (
                "PodCreationDenied",
                format!("{head} is refused by {by}: {message}"),
                format!(
                    "Change the pod template to satisfy what {by} says, or fix that policy; the controller retries on its own."
                ),
            ),
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
                message: "images must come from registry.example.com".into()
            }
        );
        assert_eq!(
            classify(
                "create Pod web-0 in StatefulSet web failed error: pods \"web-0\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
            ),
            Refusal::Denied {
                by: "admission".into(),
                message: "maximum cpu usage per Container is 1, but limit is 2".into()
            }
        );
    }
}
