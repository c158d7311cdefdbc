//! Go: a pprof profile fetched over HTTP from the program's own endpoint (`go.source`).
//!
//! The agent runs on the node's network with the node's reach, so `go.source` may only be an
//! address of the Abnormal's own pod (`spec.podReference`): one of its IPs, and when the pod uses
//! the node's network, one of the ports its containers declare. Redirects are not followed; a
//! pod cannot send the agent to the cloud metadata endpoint, the kubelet or anything else.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::Abnormal;
use reqwest::Url;
use reqwest::redirect;

use tokio::io::AsyncWriteExt;

use super::{MAX_PROFILE_FILE_BYTES, Profilers};
use crate::Error;

/// The addresses a Go profiler may fetch from: the Abnormal's pod's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddresses {
    /// namespace/name, for messages.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    /// The pod shares the node's network: its IPs are the node's, so the ports are limited to
    /// what its containers declare.
    pub host_network: bool,
    pub ports: Vec<u16>,
}

impl PodAddresses {
    pub fn of(name: &str, pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.and_then(|s| s.pod_ip.as_deref()))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        let spec = pod.spec.as_ref();
        let mut ports: Vec<u16> = spec
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .flat_map(|p| [Some(p.container_port), p.host_port])
            .flatten()
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        ports.sort();
        ports.dedup();
        Self {
            pod: name.to_owned(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ports,
        }
    }
}

/// May a Go profiler fetch `url` for this pod? Only from one of the pod's IPs (a literal
/// address: a name could resolve anywhere), and on the node's network only from a declared port.
pub fn check_target(url: &Url, pod: &PodAddresses) -> Result<(), Error> {
    let not_pod = || Error::GoTargetNotPod {
        url: url.to_string(),
        pod: pod.pod.clone(),
        addresses: if pod.ips.is_empty() {
            "none yet: the pod has no IP".into()
        } else {
            pod.ips
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    // A literal address only (IPv6 in brackets); a name does not parse.
    let Some(ip) = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok())
    else {
        return Err(not_pod());
    };
    if !pod.ips.contains(&ip) {
        return Err(not_pod());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    if pod.host_network && !pod.ports.contains(&port) {
        return Err(Error::GoUndeclaredPort {
            url: url.to_string(),
            pod: pod.pod.clone(),
            port,
            ports: pod
                .ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}

impl Profilers {
    pub(super) async fn go(
        &self,
        abnormal: &Abnormal,
        name: &str,
        source: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let url = reqwest::Url::parse(source).map_err(|e| Error::GoSourceNotUrl {
            url: source.to_owned(),
            reason: e.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Error::GoSourceScheme {
                url: source.to_owned(),
            });
        }
        let started = std::time::Instant::now();
        let pod = self
            .referenced_pod(abnormal, timeout / 3)
            .await?
            .ok_or_else(|| Error::GoNoPod {
                url: source.to_owned(),
            })?;
        check_target(&url, &PodAddresses::of(&pod.name, &pod.pod))?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|e| Error::HttpClient {
                reason: e.to_string(),
            })?;
        let mut resp =
            client
                .get(url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| Error::GoFetch {
                    url: source.to_owned(),
                    reason: e.to_string(),
                })?;
        if resp.status().is_redirection() {
            return Err(Error::GoRedirect {
                url: source.to_owned(),
                code: resp.status().as_u16(),
                location: resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or("nowhere")
                    .to_owned(),
            });
        }
        if !resp.status().is_success() {
            return Err(Error::GoStatus {
                url: source.to_owned(),
                code: resp.status().as_u16(),
            });
        }
        // Streamed to a temporary file, never whole in memory, and cut off at the room left.
        let limit = self
            .room_for(abnormal, name, MAX_PROFILE_FILE_BYTES)
            .await?;
        let (file, url_path) = self.location(abnormal, name);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|error| Error::Io {
                    action: "creating",
                    path: dir.to_owned(),
                    error,
                })?;
        }
        let tmp = file.with_extension("partial");
        let written = async {
            let mut out = tokio::fs::File::create(&tmp)
                .await
                .map_err(|error| Error::Io {
                    action: "creating",
                    path: tmp.clone(),
                    error,
                })?;
            let mut size: u64 = 0;
            while let Some(chunk) = resp.chunk().await.map_err(|e| Error::GoRead {
                url: source.to_owned(),
                reason: e.to_string(),
            })? {
                size += chunk.len() as u64;
                if size > limit {
                    return Err(Error::GoTooLarge {
                        url: source.to_owned(),
                        limit,
                        why: if limit == MAX_PROFILE_FILE_BYTES {
                            "the cap of one profile"
                        } else {
                            "what this Abnormal's and this node's profile quotas leave"
                        },
                    });
                }
                out.write_all(&chunk).await.map_err(|error| Error::Io {
                    action: "writing",
                    path: tmp.clone(),
                    error,
                })?;
            }
            out.flush().await.map_err(|error| Error::Io {
                action: "writing",
                path: tmp.clone(),
                error,
            })?;
            tokio::fs::rename(&tmp, &file)
                .await
                .map_err(|error| Error::Rename {
                    from: tmp.clone(),
                    to: file.clone(),
                    error,
                })
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        Ok(url_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ips: &[&str], host_network: bool, ports: &[u16]) -> PodAddresses {
        PodAddresses {
            pod: "shop/cart".into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            host_network,
            ports: ports.to_vec(),
        }
    }

    fn check(url: &str, pod: &PodAddresses) -> Result<(), Error> {
        check_target(&Url::parse(url).unwrap(), pod)
    }

    #[test]
    fn a_pods_own_ip_is_a_target_on_any_port() {
        let p = pod(&["10.88.0.7", "fd00::7"], false, &[]);
        assert!(check("http://10.88.0.7:6060/debug/pprof/heap", &p).is_ok());
        assert!(check("http://[fd00::7]:8080/debug/pprof/goroutine", &p).is_ok());
    }

    #[test]
    fn the_node_metadata_endpoints_names_and_other_pods_are_refused() {
        let p = pod(&["10.88.0.7"], false, &[]);
        for url in [
            "http://127.0.0.1:6060/debug/pprof/heap",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.88.0.8:6060/debug/pprof/heap",
            "https://10.0.0.1:10250/pods",
            "http://localhost:6060/debug/pprof/heap",
            "http://cart.shop.svc:6060/debug/pprof/heap",
            "http://[::1]:6060/",
        ] {
            let e = check(url, &p).unwrap_err();
            assert!(matches!(e, Error::GoTargetNotPod { .. }), "{url}: {e}");
            assert!(e.to_string().contains("10.88.0.7"), "{e}");
        }
        let e = check("http://10.88.0.7/", &pod(&[], false, &[])).unwrap_err();
        assert!(e.to_string().contains("the pod has no IP"), "{e}");
    }

    #[test]
    fn on_the_nodes_network_only_declared_ports_are_targets() {
        let p = pod(&["192.168.1.5"], true, &[6060]);
        assert!(check("http://192.168.1.5:6060/debug/pprof/heap", &p).is_ok());
        let e = check("http://192.168.1.5:10250/pods", &p).unwrap_err();
        assert!(
            matches!(&e, Error::GoUndeclaredPort { port: 10250, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("6060"), "{e}");
        assert!(
            check("http://192.168.1.5/", &p).is_err(),
            "port 80 is not declared"
        );
    }

    #[test]
    fn a_pods_addresses_are_read_from_its_status_and_declared_ports() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"hostNetwork": true, "containers": [
                {"name": "a", "ports": [{"containerPort": 6060}, {"containerPort": 9090, "hostPort": 19090}]},
                {"name": "b"}]},
            "status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
        }))
        .unwrap();
        let a = PodAddresses::of("ns/p", &pod);
        assert_eq!(a.ips.len(), 2);
        assert!(a.host_network);
        assert_eq!(a.ports, vec![6060, 9090, 19090]);
    }
}
