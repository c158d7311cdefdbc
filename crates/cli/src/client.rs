//! The edge of `kubectl diag`: the kubeconfig, the client, and turning apiserver answers into
//! errors a person can act on.

use std::path::PathBuf;
use std::time::Duration;

use kdiag_pipeline::{Category, http_status_category};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The install command every "not installed" message points to.
pub const INSTALL_CRDS: &str = "kubectl apply -f config/crd (the CRDs only) or kubectl apply -k config/deploy (everything: CRDs, RBAC, controller, agent, built-in processors)";

/// Everything `kubectl diag` can fail with, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error(
        "no kubeconfig to use: {0}. Set KUBECONFIG or pass --kubeconfig, as for kubectl (kubectl config view shows what kubectl uses)"
    )]
    NoKubeconfig(String),

    #[error("cannot use the kubeconfig{}: {source}", context.as_deref().map(|c| format!(" with context {c:?}")).unwrap_or_default())]
    Kubeconfig {
        context: Option<String>,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error(
        "cannot reach the Kubernetes API at {url}: {message}. Is the cluster up, and is this the context you mean (kubectl config current-context)?"
    )]
    Unreachable { url: String, message: String },

    #[error(
        "the cluster did not accept the credentials of this kubeconfig (HTTP 401: {message}). Log in again or check the user of the current context"
    )]
    Unauthorized { message: String },

    #[error(
        "this cluster does not serve {kind} ({resource}): kdiag's CRDs are not installed. Install them with {INSTALL_CRDS}"
    )]
    CrdsMissing {
        kind: &'static str,
        resource: &'static str,
    },

    #[error("{kind} {name:?} not found in namespace {namespace:?}{hint}")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        /// What to try instead.
        hint: String,
    },

    #[error(
        "forbidden: {message}. Your user may not {verb} {resource}{}; ask a cluster admin for RBAC that allows it (check with: kubectl auth can-i {verb} {resource}{})",
        scope(namespace),
        can_i_scope(namespace)
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: Option<String>,
        message: String,
    },

    #[error(
        "no kdiag controller seems to be running: Abnormal {namespace}/{name} has had no status for {waited:?} (the controller admits every new Abnormal within a second). Check it with: kubectl -n kube-diagnoser get deploy kdiag-controller; kubectl -n kube-diagnoser logs deploy/kdiag-controller. Install it with kubectl apply -k config/deploy"
    )]
    NoController {
        namespace: String,
        name: String,
        waited: Duration,
    },

    #[error(
        "{kind} {name} does not exist, so the step of an Abnormal naming it would fail. Registered {kind}s: {registered}. {what_to_do}"
    )]
    UnknownProcessor {
        kind: &'static str,
        name: String,
        registered: String,
        what_to_do: &'static str,
    },

    #[error("{0}")]
    Usage(String),

    #[error("Abnormal {namespace}/{name} was deleted before it finished")]
    Deleted { namespace: String, name: String },

    #[error(
        "Abnormal {namespace}/{name} is still {phase} after {waited:?}; it goes on in the cluster. Follow it with: kubectl diag watch {name} -n {namespace}"
    )]
    Timeout {
        namespace: String,
        name: String,
        phase: String,
        waited: Duration,
    },

    #[error(
        "probe run {namespace}/{id} has not finished after {waited:?}; it goes on in the cluster. See it with: kubectl diag probe history {namespace}/{probe} -i {id}"
    )]
    RunTimeout {
        namespace: String,
        id: String,
        probe: String,
        waited: Duration,
    },

    #[error(
        "one-time run {id} of cluster {cluster} has not finished after {waited:?}; it goes on in the member. See it with: kubectl diag probe history -c {cluster} -i {id}"
    )]
    OnceTimeout {
        cluster: String,
        id: String,
        waited: Duration,
    },

    #[error("{doing}: {source}")]
    Api {
        doing: String,
        #[source]
        source: kube::Error,
    },

    #[error("cannot write the output: {0}")]
    Output(String),

    #[error("cannot start the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

fn scope(namespace: &Option<String>) -> String {
    match namespace {
        Some(ns) => format!(" in namespace {ns}"),
        None => " in all namespaces".into(),
    }
}

fn can_i_scope(namespace: &Option<String>) -> String {
    match namespace {
        Some(ns) => format!(" -n {ns}"),
        None => " -A".into(),
    }
}

impl DiagError {
    /// `kubectl diag`'s exit code for this error: 2 for a command line that cannot work, 3 for
    /// anything else that stopped the command (1 is kept for "the diagnosis failed").
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 3,
        }
    }

    /// Whether the same request may well succeed shortly: the apiserver could not be reached,
    /// or answered that it is overloaded, unavailable or slow (the rule of
    /// [`kdiag_pipeline::http_status_category`]). A command that polls keeps polling through
    /// those until its own deadline; everything else is reported at once.
    pub fn category(&self) -> Category {
        match self {
            Self::Unreachable { .. } => Category::Transient,
            Self::Api { source, .. } => match source {
                kube::Error::Api(status) => http_status_category(status.code),
                kube::Error::HyperError(_)
                | kube::Error::Service(_)
                | kube::Error::ReadEvents(_) => Category::Transient,
                _ => Category::Permanent,
            },
            _ => Category::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.category() == Category::Transient
    }

    /// A bounded name for what went wrong (kubectl diag exports no metrics; logs and tests use it).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoKubeconfig(_) | Self::Kubeconfig { .. } => "kubeconfig",
            Self::Unreachable { .. } => "unreachable",
            Self::Unauthorized { .. } => "unauthorized",
            Self::CrdsMissing { .. } => "crds_missing",
            Self::NotFound { .. } => "not_found",
            Self::Forbidden { .. } => "forbidden",
            Self::NoController { .. } => "no_controller",
            Self::UnknownProcessor { .. } => "unknown_processor",
            Self::Usage(_) => "usage",
            Self::Deleted { .. } => "deleted",
            Self::Timeout { .. } | Self::RunTimeout { .. } | Self::OnceTimeout { .. } => "timeout",
            Self::Api { .. } => "api",
            Self::Output(_) => "output",
            Self::Runtime(_) => "runtime",
        }
    }
}

/// What a request was about, so its failure can be explained.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub verb: &'static str,
    pub kind: &'static str,
    /// `plural.group`, as kubectl auth can-i takes it.
    pub resource: &'static str,
    /// None for all namespaces.
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

pub const ABNORMALS: &str = "abnormals.diagnosis.netease.com";
pub const PROBESTATUSES: &str = "probestatuses.kubeprober.erda.cloud";
pub const PROBES: &str = "probes.kubeprober.erda.cloud";

impl<'a> Request<'a> {
    pub fn abnormals(verb: &'static str, namespace: Option<&'a str>) -> Self {
        Self {
            verb,
            kind: "Abnormal",
            resource: ABNORMALS,
            namespace,
            name: None,
        }
    }

    pub fn named(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    /// Explains a failed request: the CRD missing, the object missing, RBAC, the network.
    pub fn explain(&self, error: kube::Error, url: &str) -> DiagError {
        match error {
            kube::Error::Api(status) if status.code == 404 => {
                // An object that does not exist comes back with its name in the details; a
                // resource the apiserver does not serve (no CRD) comes back without.
                let object_missing = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
                match (object_missing, self.name) {
                    (true, Some(name)) => DiagError::NotFound {
                        kind: self.kind,
                        namespace: self.namespace.unwrap_or_default().to_owned(),
                        name: name.to_owned(),
                        hint: String::new(),
                    },
                    _ => DiagError::CrdsMissing {
                        kind: self.kind,
                        resource: self.resource,
                    },
                }
            }
            kube::Error::Api(status) if status.code == 403 => DiagError::Forbidden {
                verb: self.verb,
                resource: self.resource,
                namespace: self.namespace.map(str::to_owned),
                message: status.message,
            },
            kube::Error::Api(status) if status.code == 401 => DiagError::Unauthorized {
                message: status.message,
            },
            e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => DiagError::Unreachable {
                url: url.to_owned(),
                message: error_chain(&e),
            },
            source => DiagError::Api {
                doing: format!(
                    "{} {}{}",
                    self.verb,
                    self.kind,
                    self.name.map(|n| format!(" {n}")).unwrap_or_default()
                ),
                source,
            },
        }
    }
}

/// An error and its causes on one line: connection errors hide the useful part in a source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// How to reach the cluster: kubectl's own flags.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// A client and the namespace commands use when none is given.
#[derive(Clone)]
pub struct Kube {
    pub client: Client,
    /// `-n`, or the context's namespace, or `default`.
    pub namespace: String,
    /// The API server's URL, for messages.
    pub url: String,
}

/// Connects the way kubectl does: `--kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`,
/// else the pod's service account; the context from `--context` or the current one.
pub async fn connect(options: &ConnectOptions) -> Result<Kube, DiagError> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    let config = match (&options.kubeconfig, &options.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                DiagError::NoKubeconfig(format!("cannot read {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(file, &kube_options)
                .await
                .map_err(|source| DiagError::Kubeconfig {
                    context: options.context.clone(),
                    source,
                })?
        }
        (None, Some(_)) => Config::from_kubeconfig(&kube_options)
            .await
            .map_err(|source| DiagError::Kubeconfig {
                context: options.context.clone(),
                source,
            })?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| DiagError::NoKubeconfig(error_chain(&e)))?,
    };
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| DiagError::Unreachable {
        url: url.clone(),
        message: error_chain(&e),
    })?;
    Ok(Kube {
        client,
        namespace,
        url,
    })
}

/// An object as the apiserver sent it, and as kdiag's types read it. The raw form is what
/// `-o json|yaml` prints (nothing dropped); an object the types cannot read still gets a row.
#[derive(Debug, Clone)]
pub struct Fetched<K> {
    pub raw: serde_json::Value,
    pub parsed: Result<K, String>,
}

impl<K> Fetched<K> {
    pub fn name(&self) -> &str {
        self.raw["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.raw["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
}

impl Kube {
    /// Every object of kind `K` in `namespace` (None: all namespaces), in the apiserver's order.
    pub async fn list<K>(
        &self,
        namespace: Option<&str>,
        request: Request<'_>,
    ) -> Result<Vec<Fetched<K>>, DiagError>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        self.list_selected(namespace, None, request).await
    }

    /// Those objects of kind `K` whose labels match `selector` (kubectl's `-l` syntax; None: all).
    pub async fn list_selected<K>(
        &self,
        namespace: Option<&str>,
        selector: Option<&str>,
        request: Request<'_>,
    ) -> Result<Vec<Fetched<K>>, DiagError>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let mut params = kube::api::ListParams::default();
        if let Some(selector) = selector {
            params = params.labels(selector);
        }
        let resource = kube::api::ApiResource::erase::<K>(&());
        let api: kube::Api<kube::api::DynamicObject> = match namespace {
            Some(ns) => kube::Api::namespaced_with(self.client.clone(), ns, &resource),
            None => kube::Api::all_with(self.client.clone(), &resource),
        };
        let list = api
            .list(&params)
            .await
            .map_err(|e| request.explain(e, &self.url))?;
        Ok(list
            .items
            .into_iter()
            .map(|o| fetched::<K>(o, &resource))
            .collect())
    }

    /// One object of kind `K`.
    pub async fn get<K>(
        &self,
        namespace: &str,
        name: &str,
        request: Request<'_>,
    ) -> Result<Fetched<K>, DiagError>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    {
        let resource = kube::api::ApiResource::erase::<K>(&());
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(self.client.clone(), namespace, &resource);
        let o = api
            .get(name)
            .await
            .map_err(|e| request.named(name).explain(e, &self.url))?;
        Ok(fetched::<K>(o, &resource))
    }
}

fn fetched<K: serde::de::DeserializeOwned>(
    mut o: kube::api::DynamicObject,
    resource: &kube::api::ApiResource,
) -> Fetched<K> {
    if o.types.is_none() {
        o.types = Some(kube::api::TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
    }
    let raw = serde_json::to_value(&o).unwrap_or_default();
    let parsed = serde_json::from_value::<K>(raw.clone()).map_err(|e| e.to_string());
    Fetched { raw, parsed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::{Status, response::StatusDetails};

    fn status(code: u16, name: &str) -> kube::Error {
        let mut s = Status::failure("x", "NotFound").with_code(code);
        if !name.is_empty() {
            s = s.with_details(StatusDetails {
                name: name.into(),
                group: "diagnosis.netease.com".into(),
                kind: "abnormals".into(),
                uid: String::new(),
                causes: Vec::new(),
                retry_after_seconds: 0,
            });
        }
        kube::Error::Api(s.boxed())
    }

    #[test]
    fn an_unreachable_or_overloaded_apiserver_is_worth_polling_through() {
        let r = Request::abnormals("get", Some("ns")).named("a");
        let unreachable = r.explain(kube::Error::Service("connection refused".into()), "u");
        assert!(unreachable.is_transient(), "{unreachable}");
        for code in [429, 500, 503, 504] {
            let e = r.explain(status(code, ""), "u");
            assert!(e.is_transient(), "{code}: {e}");
        }
    }

    #[test]
    fn refusals_missing_objects_and_usage_errors_end_the_command_at_once() {
        let r = Request::abnormals("get", Some("ns")).named("a");
        for code in [401, 403, 404, 422] {
            let e = r.explain(status(code, "a"), "u");
            assert!(!e.is_transient(), "{code}: {e}");
        }
        assert!(!DiagError::Usage("x".into()).is_transient());
        assert_eq!(DiagError::Usage("x".into()).metric_label(), "usage");
    }

    #[test]
    fn a_404_without_an_object_name_means_the_crds_are_missing() {
        let r = Request::abnormals("list", Some("default"));
        let e = r.explain(status(404, ""), "https://k");
        assert!(matches!(e, DiagError::CrdsMissing { .. }), "{e:?}");
        assert!(e.to_string().contains("kubectl apply -f config/crd"), "{e}");
    }

    #[test]
    fn a_404_naming_the_object_means_it_does_not_exist() {
        let r = Request::abnormals("get", Some("default")).named("web");
        let e = r.explain(status(404, "web"), "https://k");
        assert_eq!(
            e.to_string(),
            "Abnormal \"web\" not found in namespace \"default\""
        );
    }

    #[test]
    fn forbidden_says_which_permission_is_missing_and_how_to_check() {
        let r = Request::abnormals("list", None);
        let e = r.explain(status(403, ""), "https://k");
        let text = e.to_string();
        assert!(
            text.contains("kubectl auth can-i list abnormals.diagnosis.netease.com -A"),
            "{text}"
        );
        assert_eq!(e.exit_code(), 3);
    }
}
