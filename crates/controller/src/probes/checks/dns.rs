//! DNS resolution against given resolvers, or those of /etc/resolv.conf: an A and an AAAA query
//! per name and resolver, so a failure names which resolver failed for which name.
//!
//! The queries go through hickory's DNS client: random query ids and source ports, answers
//! accepted only from the server asked and for the question asked, retransmission within the
//! timeout, and TCP when an answer comes back truncated. Names are asked as written (absolute):
//! resolv.conf's search domains do not apply, so a check tests exactly the name it lists.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use hickory_net::NetError;
use hickory_net::proto::op::{DnsRequestOptions, DnsResponse, Query, ResponseCode};
use hickory_net::proto::rr::{Name, RData, RecordType};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle;
use kdiag_api::DnsCheck;

use super::{Outcome, seconds};

pub async fn check(c: &DnsCheck) -> Outcome {
    if c.names.is_empty() {
        return Outcome {
            status: kdiag_api::CheckerStatus::Unknown,
            message: "dns check with no names to resolve".into(),
        };
    }
    let resolvers: Vec<String> = if c.resolvers.is_empty() {
        discovered_resolvers().await
    } else {
        c.resolvers.clone()
    };
    if resolvers.is_empty() {
        return Outcome::error("no resolver given and none in /etc/resolv.conf");
    }
    let timeout = seconds(c.timeout_seconds, 2);
    let mut failures = Vec::new();
    let mut answers = Vec::new();
    for resolver in &resolvers {
        let Some(addr) = parse_resolver(resolver) else {
            failures.push(format!("resolver {resolver:?} is not ip or ip:port"));
            continue;
        };
        for name in &c.names {
            match resolve(addr, name, timeout).await {
                Ok(ips) if !ips.is_empty() => answers.push(format!(
                    "{name} → {} via {addr}",
                    ips.iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )),
                Ok(_) => failures.push(format!("{name} has no A/AAAA record at {addr}")),
                Err(e) => failures.push(format!("{name} via {addr}: {e}")),
            }
        }
    }
    if failures.is_empty() {
        Outcome::pass(answers.join("; "))
    } else {
        Outcome::error(format!("DNS resolution failed: {}", failures.join("; ")))
    }
}

async fn discovered_resolvers() -> Vec<String> {
    tokio::fs::read_to_string("/etc/resolv.conf")
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_owned())
        .collect()
}

fn parse_resolver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// A and AAAA records of `name` at `server`; each query answers within `timeout` or fails.
pub async fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, String> {
    let fqdn = absolute(name)?;
    // Both at once: the slower of the two bounds the wait, not their sum.
    let (a, aaaa) = tokio::join!(
        query(server, &fqdn, RecordType::A, timeout),
        query(server, &fqdn, RecordType::AAAA, timeout),
    );
    let mut ips = a?;
    ips.extend(aaaa?);
    Ok(ips)
}

/// The name as given, made absolute.
fn absolute(name: &str) -> Result<Name, String> {
    let invalid = || format!("{name:?} is not a valid DNS name");
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err(invalid());
    }
    let mut fqdn = Name::from_ascii(trimmed).map_err(|_| invalid())?;
    fqdn.set_fqdn(true);
    Ok(fqdn)
}

/// One question to one server: over UDP, then over TCP if the answer was truncated.
async fn query(
    server: SocketAddr,
    name: &Name,
    qtype: RecordType,
    timeout: Duration,
) -> Result<Vec<IpAddr>, String> {
    let ask = async {
        let provider = TokioRuntimeProvider::default();
        let udp = UdpClientStream::builder(server, provider.clone())
            .with_timeout(Some(timeout))
            .exchange();
        let response = first(udp.lookup(Query::query(name.clone(), qtype), options())).await?;
        if !response.metadata.truncation {
            return Ok(response);
        }
        let tcp = TcpClientStream::exchange(server, None, timeout, None, provider).await?;
        first(tcp.lookup(Query::query(name.clone(), qtype), options())).await
    };
    let response = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(response)) => response,
        Err(_) | Ok(Err(NetError::Timeout)) => {
            return Err(format!("no answer within {}s", timeout.as_secs()));
        }
        Ok(Err(e)) => return Err(format!("no answer: {e}")),
    };
    match response.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Vec::new()),
        ResponseCode::ServFail => return Err("SERVFAIL".into()),
        ResponseCode::Refused => return Err("REFUSED".into()),
        code => return Err(format!("rcode {}", u16::from(code))),
    }
    Ok(response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect())
}

/// A recursive query with EDNS, as a stub resolver sends it.
fn options() -> DnsRequestOptions {
    DnsRequestOptions::default()
}

async fn first(
    mut responses: impl futures::Stream<Item = Result<DnsResponse, NetError>> + Unpin,
) -> Result<DnsResponse, NetError> {
    responses.next().await.unwrap_or(Err(NetError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_asked_as_written_and_absolute() {
        assert_eq!(
            absolute("kubernetes.default.svc").unwrap().to_string(),
            "kubernetes.default.svc."
        );
        assert_eq!(
            absolute("example.com.").unwrap().to_string(),
            "example.com."
        );
        for bad in ["bad..name", "", ".", &format!("{}.com", "a".repeat(64))] {
            assert_eq!(
                absolute(bad).unwrap_err(),
                format!("{bad:?} is not a valid DNS name")
            );
        }
    }

    #[test]
    fn a_resolver_is_an_ip_with_port_53_unless_it_names_one() {
        assert_eq!(
            parse_resolver("10.0.0.10"),
            Some("10.0.0.10:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("[fd00::a]:5353"),
            Some("[fd00::a]:5353".parse().unwrap())
        );
        assert_eq!(parse_resolver("dns.example"), None);
    }
}
