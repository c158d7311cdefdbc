//! The validating admission webhook: every create and update of an Abnormal, an AbnormalSource
//! or a processor registration is authorized against the user who asks for it, with a
//! SubjectAccessReview for the native right it amounts to (`decide`, pure; the table is there
//! and in docs/security.md). The spec of an admitted Abnormal cannot change, except by kdiag's
//! own identities. Status is a subresource and never reaches the webhook.
//!
//! IO here: the serving certificate and the caBundle (`cert`), the TLS listener (`serve`), and
//! the reviews (through [`kdiag_runtime::auth::Authorizer`], whose cache keeps allowed
//! decisions 30 s and refusals 5 s per user and right). The ValidatingWebhookConfiguration
//! (config/deploy/webhook.yaml) fails closed: while this webhook cannot be reached, nothing it
//! covers can be created or changed (docs/troubleshooting.md says how to recover).

pub mod cert;
pub mod decide;
pub mod review;
mod serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kdiag_pipeline::admission::Triage;
use kdiag_runtime::auth::{Authorizer, Right, User};
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::registrations::{AdmissionRegistry, Registrations};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Error;
use decide::{Kind, Need, Request, Setting, Verdict};

/// The path the webhook is served on.
pub const PATH: &str = "/validate";
/// The default port of the webhook's HTTPS listener.
pub const DEFAULT_PORT: u16 = 9443;
/// The ValidatingWebhookConfiguration config/deploy installs.
pub const DEFAULT_CONFIGURATION: &str = "kdiag-webhook";
/// The Secret holding the webhook's CA and serving certificate, in kdiag's namespace.
pub const DEFAULT_SECRET: &str = "kdiag-webhook-cert";
/// How often the certificate and the caBundle are checked (and renewed or rewritten).
pub const RESYNC: Duration = Duration::from_secs(60);

/// How the apiserver reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientConfig {
    /// Through a Service (the controller runs in the cluster): `namespace/name:port`.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// At a URL (the controller runs as a process on a host the apiserver reaches, as in
    /// `kdiag local` and the tests): `https://127.0.0.1:9443/validate`.
    Url(String),
}

impl ClientConfig {
    /// The names the serving certificate must carry for this way of reaching it.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        match self {
            ClientConfig::Service {
                namespace, name, ..
            } => {
                hosts.push(format!("{name}.{namespace}.svc"));
                hosts.push(format!("{name}.{namespace}.svc.cluster.local"));
            }
            ClientConfig::Url(url) => {
                let host = url
                    .split("://")
                    .nth(1)
                    .unwrap_or(url)
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let host = match host.rsplit_once(':') {
                    Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
                    _ => host,
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if !host.is_empty() && !hosts.iter().any(|h| h == host) {
                    hosts.push(host.to_owned());
                }
            }
        }
        hosts
    }

    /// The webhook's `clientConfig` with `ca_pem` as its caBundle.
    pub fn client_config(&self, ca_pem: &str) -> serde_json::Value {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        match self {
            ClientConfig::Service {
                namespace,
                name,
                port,
            } => json!({
                "service": {"namespace": namespace, "name": name, "path": PATH, "port": port},
                "caBundle": ca,
            }),
            ClientConfig::Url(url) => json!({"url": url, "caBundle": ca}),
        }
    }
}

/// The webhook's settings (`kdiag controller --webhook…`).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where the HTTPS listener binds.
    pub bind: std::net::SocketAddr,
    /// How the apiserver reaches it (written into the configuration).
    pub reach: ClientConfig,
    /// The ValidatingWebhookConfiguration whose caBundle and address the controller keeps.
    pub configuration: String,
    /// The Secret (namespace, name) that keeps the CA and serving certificate.
    pub secret: (String, String),
    /// Users never checked: kdiag's own components.
    pub exempt_users: Vec<String>,
}

impl WebhookConfig {
    /// kdiag's own ServiceAccounts: the controller (it routes and patches Abnormals, creates
    /// them from sources) and the agent.
    pub fn default_exempt_users() -> Vec<String> {
        ["kdiag-controller", "kdiag-agent"]
            .iter()
            .map(|sa| format!("system:serviceaccount:{}:{sa}", kdiag_api::SYSTEM_NAMESPACE))
            .collect()
    }
}

/// What answers reviews.
pub struct Webhook {
    authorizer: Authorizer,
    registrations: Registrations,
    builtins: Builtins,
    triage: Triage,
    exempt: Vec<String>,
    metrics: Arc<Metrics>,
}

impl Webhook {
    pub fn new(
        client: kube::Client,
        registrations: Registrations,
        builtins: Builtins,
        triage: Triage,
        exempt: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            authorizer: Authorizer::new(client),
            registrations,
            builtins,
            triage,
            exempt,
            metrics,
        }
    }

    /// The answer to one AdmissionReview body: a JSON AdmissionReview, or Err with why the body
    /// is not one (answered 400).
    pub async fn review(&self, body: &[u8]) -> Result<serde_json::Value, String> {
        let review = review::parse(body)?;
        let request = &review.request;
        let started = std::time::Instant::now();
        let refusal = self.refusal(request).await;
        let kind = Kind::of(&request.resource.group, &request.resource.resource)
            .map_or("other", kind_noun);
        let m = &self.metrics.controller;
        m.webhook_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        m.webhook_reviews
            .with_label_values(&[
                kind,
                if refusal.is_some() {
                    "refused"
                } else {
                    "allowed"
                },
            ])
            .inc();
        if let Some(why) = &refusal {
            tracing::info!(
                user = %request.user_info.username,
                operation = %request.operation,
                resource = %request.resource.resource,
                %why,
                "admission webhook refused a request"
            );
        }
        Ok(review::answer(
            &review.api_version,
            &request.uid,
            refusal.as_deref(),
        ))
    }

    async fn refusal(&self, request: &review::AdmissionRequest) -> Option<String> {
        // Status and other subresources are not the webhook's business.
        if !request.sub_resource.is_empty() {
            return None;
        }
        let kind = Kind::of(&request.resource.group, &request.resource.resource)?;
        // Deciding with an empty registration cache would classify every plugin as unknown.
        self.registrations.wait_until_ready().await;
        let registry = AdmissionRegistry {
            registrations: &self.registrations,
            builtins: &self.builtins,
        };
        let verdict = decide::decide(
            &Request {
                kind,
                operation: &request.operation,
                user: &request.user_info.username,
                object: request.object.as_ref(),
                old_object: request.old_object.as_ref(),
            },
            &Setting {
                exempt: &self.exempt,
                registry: &registry,
                triage: &self.triage,
            },
        );
        let needs = match verdict {
            Verdict::Allow => return None,
            Verdict::Deny(why) => return Some(why),
            Verdict::Check(needs) => needs,
        };
        let user = request.user_info.user();
        let noun = kind_noun(kind);
        for need in &needs {
            if let Some(why) = self.missing(&user, need, noun).await {
                return Some(why);
            }
        }
        None
    }

    /// Why `user` may not have what `need` asks, if not.
    async fn missing(&self, user: &User, need: &Need, noun: &str) -> Option<String> {
        match self.authorizer.authorize(user, &need.right).await {
            Ok(()) => None,
            Err(kdiag_runtime::Error::Forbidden { .. }) => Some(format!(
                "user {:?} may not {}, which this {noun} needs because {} (check with: {})",
                user.name,
                describe(&need.right),
                need.because,
                need.right.can_i()
            )),
            // Fail closed: a request that could not be checked is refused.
            Err(e) => Some(format!(
                "kdiag could not check whether user {:?} may {}: {e}; try again",
                user.name,
                describe(&need.right)
            )),
        }
    }
}

fn kind_noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Abnormal => "Abnormal",
        Kind::AbnormalSource => "AbnormalSource",
        Kind::Registration(_) => "registration",
    }
}

/// "create pods/exec in namespace \"team-b\"", "get nodes/proxy on node \"n1\"".
pub fn describe(right: &Right) -> String {
    let mut s = format!("{} {}", right.verb, right.resource);
    if !right.subresource.is_empty() {
        s.push('/');
        s.push_str(&right.subresource);
    }
    if !right.group.is_empty() {
        s.push_str(&format!(" ({})", right.group));
    }
    match (right.resource.as_str(), right.namespace.is_empty()) {
        ("nodes", _) if !right.name.is_empty() => s.push_str(&format!(" on node {:?}", right.name)),
        ("nodes", _) => s.push_str(" (cluster-wide)"),
        (_, false) => s.push_str(&format!(" in namespace {:?}", right.namespace)),
        (_, true) => s.push_str(" in every namespace"),
    }
    s
}

/// Ensures the serving certificate and the caBundle, then serves the webhook until `shutdown`;
/// `ready` turns true once it serves with the caBundle in place (or with no configuration to
/// write it into, which it then looks for every 2 s). Retries what fails (the
/// apiserver unavailable, the configuration not yet applied) with a message, and re-checks every
/// [`RESYNC`] (a renewed certificate, a re-applied configuration without caBundle).
pub async fn run(
    client: kube::Client,
    config: WebhookConfig,
    webhook: Arc<Webhook>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let hosts = config.reach.hosts();
    let (ns, name) = &config.secret;
    let mut server: Option<serve::Server> = None;
    loop {
        // Whether the configuration points at this webhook now: until then, look again soon.
        let mut configured = false;
        match cert::ensure_secret(&client, ns, name, &hosts).await {
            Ok(serving) => {
                let tls = serve::tls_config(&serving);
                match (tls, &server) {
                    (Ok(tls), Some(s)) => s.set_tls(tls),
                    (Ok(tls), None) => {
                        match serve::Server::bind(
                            config.bind,
                            tls,
                            webhook.clone(),
                            shutdown.clone(),
                        )
                        .await
                        {
                            Ok(s) => server = Some(s),
                            Err(e) => {
                                tracing::error!(error = %e, "the admission webhook cannot listen; retrying")
                            }
                        }
                    }
                    (Err(e), _) => {
                        tracing::error!(error = %e, "the admission webhook's certificate")
                    }
                }
                if server.is_some() {
                    match cert::patch_configuration(
                        &client,
                        &config.configuration,
                        &serving.ca_pem,
                        &config.reach,
                    )
                    .await
                    {
                        Ok(wrote) => {
                            if wrote {
                                tracing::info!(configuration = %config.configuration, "admission webhook: caBundle and address written");
                            }
                            configured = true;
                            ready.store(true, Ordering::Release);
                        }
                        // Deleted on purpose (docs/troubleshooting.md) or not applied yet: serve
                        // anyway, so the controller's other endpoints stay ready, and write the
                        // caBundle as soon as it is there.
                        Err(e @ Error::WebhookConfigurationMissing { .. }) => {
                            if !ready.swap(true, Ordering::AcqRel) {
                                tracing::warn!(error = %e, "admission webhook: serving, but nothing calls it");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admission webhook: cannot write the caBundle; retrying")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "admission webhook: no serving certificate yet; retrying")
            }
        }
        let wait = if configured {
            RESYNC
        } else {
            Duration::from_secs(2)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_adds_its_host_to_the_certificates_names() {
        let hosts = ClientConfig::Url("https://10.0.0.5:9443/validate".into()).hosts();
        assert!(hosts.contains(&"10.0.0.5".to_owned()), "{hosts:?}");
        let hosts = ClientConfig::Url("https://127.0.0.1:9443/validate".into()).hosts();
        assert_eq!(hosts, ["localhost", "127.0.0.1"]);
        let hosts = ClientConfig::Service {
            namespace: "kube-diagnoser".into(),
            name: "kdiag-controller".into(),
            port: 9443,
        }
        .hosts();
        assert!(hosts.contains(&"kdiag-controller.kube-diagnoser.svc".to_owned()));
    }

    #[test]
    fn the_client_config_points_at_the_service_or_the_url() {
        let c = ClientConfig::Service {
            namespace: "kube-diagnoser".into(),
            name: "kdiag-controller".into(),
            port: 9443,
        }
        .client_config("CA");
        assert_eq!(c["service"]["path"], PATH);
        assert_eq!(c["caBundle"], "Q0E=");
        let c = ClientConfig::Url("https://127.0.0.1:1/validate".into()).client_config("CA");
        assert_eq!(c["url"], "https://127.0.0.1:1/validate");
    }

    #[test]
    fn refusals_name_the_right_and_where() {
        let exec = Right {
            verb: "create".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: "exec".into(),
            namespace: "team-b".into(),
            name: "web".into(),
        };
        assert_eq!(describe(&exec), "create pods/exec in namespace \"team-b\"");
        assert_eq!(
            describe(&Right::node_proxy("")),
            "get nodes/proxy (cluster-wide)"
        );
        assert_eq!(
            describe(&Right::node_proxy("n1")),
            "get nodes/proxy on node \"n1\""
        );
    }
}
