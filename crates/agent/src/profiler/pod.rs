//! The pod of `spec.podReference`, which every profiler works within.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::Abnormal;

use super::Profilers;
use crate::Error;

/// The Abnormal's pod as the apiserver has it now.
pub(crate) struct ReferencedPod {
    /// namespace/name, for messages.
    pub(crate) name: String,
    pub(crate) pod: Pod,
}

impl Profilers {
    /// Looks up `spec.podReference` (in the Abnormal's namespace when it names none) within
    /// `within`, and checks that it runs on the Abnormal's node. `None` when the Abnormal names
    /// no pod.
    pub(super) async fn referenced_pod(
        &self,
        abnormal: &Abnormal,
        within: Duration,
    ) -> Result<Option<ReferencedPod>, Error> {
        let Some(r) = abnormal
            .spec
            .pod_reference
            .as_ref()
            .filter(|r| !r.name.is_empty())
        else {
            return Ok(None);
        };
        let ns = if r.namespace.is_empty() {
            abnormal.metadata.namespace.clone().unwrap_or_default()
        } else {
            r.namespace.clone()
        };
        let pod_name = format!("{ns}/{}", r.name);
        let client = self.client.clone().ok_or_else(|| Error::NoClient {
            pod: pod_name.clone(),
        })?;
        let pod = get_pod(client, &ns, &r.name, &pod_name, within).await?;
        let pod_node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !abnormal.spec.node_name.is_empty()
            && !pod_node.is_empty()
            && pod_node != abnormal.spec.node_name
        {
            return Err(Error::PodElsewhere {
                pod: pod_name,
                pod_node,
                node: abnormal.spec.node_name.clone(),
            });
        }
        Ok(Some(ReferencedPod {
            name: pod_name,
            pod,
        }))
    }
}

/// The pod of `spec.podReference`. An apiserver that fails to answer is asked again, with a
/// short backoff, until `within` has passed.
async fn get_pod(
    client: kube::Client,
    ns: &str,
    name: &str,
    pod_name: &str,
    within: Duration,
) -> Result<Pod, Error> {
    let api = kube::Api::<Pod>::namespaced(client, ns);
    let lookup = async {
        let mut delay = Duration::from_millis(100);
        loop {
            match api.get(name).await {
                Ok(pod) => return Ok(pod),
                Err(e) if kdiag_runtime::is_transient(&e) => {
                    tracing::debug!(pod = %pod_name, error = %e, "looking up the profiler's pod; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(Error::PodLookup {
                        pod: pod_name.to_owned(),
                        source: Box::new(e),
                    });
                }
            }
        }
    };
    tokio::time::timeout(within, lookup)
        .await
        .map_err(|_| Error::PodLookupTimeout {
            pod: pod_name.to_owned(),
            timeout: within,
        })?
}
