//! The kubelet's certificates, for node-collector: the client certificate it reaches the
//! apiserver with and its serving certificate, both under `<kubelet root>/pki` unless the
//! kubelet was told otherwise. An expired client certificate is a classic cause of a node that
//! goes NotReady for no visible reason (the kubelet can no longer post its status), and one
//! close to expiry on a node where rotation fails is that outage announced in advance.

use std::collections::BTreeSet;
use std::path::Path;

use jiff::Timestamp;
use serde_json::{Value, json};

/// Files read at most from the directory (the kubelet keeps a few, plus rotated copies).
const MAX_FILES: usize = 20;

/// One certificate as node-collector reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub path: String,
    pub subject: String,
    pub not_after: Timestamp,
}

impl CertInfo {
    pub fn to_json(&self, now: Timestamp) -> Value {
        json!({
            "path": self.path,
            "subject": self.subject,
            "notAfter": self.not_after.to_string(),
            "expiresInSeconds": self.not_after.duration_since(now).as_secs(),
        })
    }
}

/// The first certificate of a PEM file (a key next to it is skipped), or why there is none.
pub fn parse_first_certificate(path: &str, pem: &[u8]) -> Result<CertInfo, String> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("{path}: not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|e| format!("{path}: not an X.509 certificate: {e}"))?;
        let not_after = Timestamp::from_second(cert.validity().not_after.timestamp())
            .map_err(|e| format!("{path}: expiry out of range: {e}"))?;
        return Ok(CertInfo {
            path: path.to_owned(),
            subject: cert.subject().to_string(),
            not_after,
        });
    }
    Err(format!("{path}: no certificate in it"))
}

/// Every certificate in the `*.crt` and `*.pem` files of `dir` (symlinks such as
/// `kubelet-client-current.pem` read once, under the name they are used by), and the problems.
pub fn scan(dir: &Path) -> (Vec<CertInfo>, Vec<String>) {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return (certs, vec![format!("{}: {e}", dir.display())]),
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "pem"))
        .collect();
    // "current" links first, so a rotated file it points to is reported under the link's name.
    paths.sort_by_key(|p| (!p.to_string_lossy().contains("current"), p.clone()));
    let mut seen = BTreeSet::new();
    for path in paths.into_iter().take(MAX_FILES) {
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !seen.insert(real) {
            continue;
        }
        let shown = path.display().to_string();
        match std::fs::read(&path) {
            Ok(bytes) => match parse_first_certificate(&shown, &bytes) {
                Ok(c) => certs.push(c),
                // A key file named .pem is not a problem worth reporting.
                Err(e) if e.ends_with("no certificate in it") => {}
                Err(e) => problems.push(e),
            },
            Err(e) => problems.push(format!("{shown}: {e}")),
        }
    }
    (certs, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = include_str!("../tests/fixtures/kubelet-client.pem");

    #[test]
    fn a_pem_certificate_gives_its_subject_and_expiry() {
        let c = parse_first_certificate("pki/kubelet-client.pem", CLIENT.as_bytes()).unwrap();
        assert!(c.subject.contains("system:node:vm"), "{}", c.subject);
        assert!(c.not_after > "2027-01-01T00:00:00Z".parse().unwrap());
    }

    #[test]
    fn a_key_before_the_certificate_is_skipped_and_garbage_is_named() {
        let with_key =
            format!("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n{CLIENT}");
        assert!(parse_first_certificate("x.pem", with_key.as_bytes()).is_ok());
        let e = parse_first_certificate(
            "x.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(e.starts_with("x.pem: not an X.509 certificate"), "{e}");
    }

    #[test]
    fn a_directory_is_scanned_once_per_certificate_under_the_name_it_is_used_by() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubelet-client-2027.pem"), CLIENT).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("kubelet-client-2027.pem"),
            dir.path().join("kubelet-client-current.pem"),
        )
        .unwrap();
        std::fs::write(dir.path().join("kubelet.key"), "not read").unwrap();
        std::fs::write(
            dir.path().join("broken.crt"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let (certs, problems) = scan(dir.path());
        assert_eq!(certs.len(), 1, "{certs:?}");
        assert!(certs[0].path.ends_with("kubelet-client-current.pem"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("broken.crt"));
    }
}
