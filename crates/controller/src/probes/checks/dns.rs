//! DNS resolution against given resolvers, or those of /etc/resolv.conf: a plain UDP query per
//! name and resolver, so a failure names which resolver failed for which name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use kdiag_api::DnsCheck;
use tokio::net::UdpSocket;

use super::{Outcome, seconds};

pub async fn check(c: &DnsCheck) -> Outcome {
    if c.names.is_empty() {
        return Outcome {
            status: kdiag_api::CheckerStatus::Unknown,
            message: "dns check with no names to resolve".into(),
        };
    }
    let resolvers: Vec<String> = if c.resolvers.is_empty() {
        discovered_resolvers()
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

fn discovered_resolvers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
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

/// A and AAAA records of `name` at `server`.
pub async fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for qtype in [1u16, 28] {
        ips.extend(query(server, name, qtype, timeout).await?);
    }
    Ok(ips)
}

async fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Vec<IpAddr>, String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("no UDP socket: {e}"))?;
    let id = (std::process::id() as u16) ^ (qtype << 3) ^ (name.len() as u16);
    let packet = encode_query(id, name, qtype)?;
    socket
        .send_to(&packet, server)
        .await
        .map_err(|e| format!("sending the query: {e}"))?;
    let mut buf = [0u8; 1500];
    let n = match tokio::time::timeout(timeout, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(format!("no answer: {e}")),
        Err(_) => return Err(format!("no answer within {}s", timeout.as_secs())),
    };
    decode_answer(&buf[..n], id)
}

fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // recursion desired, one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a valid DNS name"));
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    Ok(p)
}

fn decode_answer(msg: &[u8], id: u16) -> Result<Vec<IpAddr>, String> {
    let short = || "a truncated DNS answer".to_owned();
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("an answer that does not match the query".into());
    }
    match msg[3] & 0x0f {
        0 => {}
        3 => return Ok(Vec::new()), // NXDOMAIN
        2 => return Err("SERVFAIL".into()),
        5 => return Err("REFUSED".into()),
        code => return Err(format!("rcode {code}")),
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i).ok_or_else(short)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        i = skip_name(msg, i).ok_or_else(short)?;
        let h = msg.get(i..i + 10).ok_or_else(short)?;
        let (rtype, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[8], h[9]]) as usize,
        );
        let data = msg.get(i + 10..i + 10 + len).ok_or_else(short)?;
        match (rtype, len) {
            (1, 4) => ips.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (28, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                ips.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        }
        i += 10 + len;
    }
    Ok(ips)
}

/// The index after a (possibly compressed) name starting at `i`.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += len + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_encodes_and_an_answer_decodes() {
        let q = encode_query(0x1234, "kubernetes.default.svc", 1).unwrap();
        // The answer a server sends: the query with QR set, one A record via a name pointer.
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]);
        assert_eq!(
            decode_answer(&a, 0x1234).unwrap(),
            [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]
        );
        a[3] = 0x82;
        assert_eq!(decode_answer(&a, 0x1234).unwrap_err(), "SERVFAIL");
        assert!(encode_query(1, "bad..name", 1).is_err());
    }
}
