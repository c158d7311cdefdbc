//! Each member cluster's own credential, and the hub's decision on a connecting member.
//!
//! A credential is a random token. The hub keeps only its SHA-256, in a Secret of its namespace
//! named `kdiag-fleet-<cluster>` (labelled [`CLUSTER_LABEL`]); the member keeps the token in a
//! file. Deleting that Secret, or annotating it or the cluster's `Cluster`
//! [`REVOKED_ANNOTATION`]`=true`, revokes the credential: new connections are refused and a live
//! one is closed at its next heartbeat. KubeProber's single `SECRET_KEY`, shared by every
//! cluster, is accepted only when the hub is started with it explicitly (migration).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Label on credential Secrets: the cluster they are for (the hub watches only these).
pub const CLUSTER_LABEL: &str = "kdiag.io/fleet-cluster";
/// The Secret's key holding the token's SHA-256, in lower-case hex.
pub const TOKEN_HASH_KEY: &str = "tokenSha256";
/// On a credential Secret or a Cluster: `true` refuses the cluster's member.
pub const REVOKED_ANNOTATION: &str = "kdiag.io/fleet-revoked";

/// The credential Secret's name for `cluster`.
pub fn secret_name(cluster: &str) -> String {
    format!("kdiag-fleet-{cluster}")
}

/// Cluster names are DNS labels: they name Secrets and objects and are label values.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster name {name:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

/// SHA-256 of `token`, lower-case hex.
pub fn hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref())
}

/// A new token: 32 random bytes, hex.
pub fn generate_token() -> Result<String, crate::Error> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| crate::Error::Random)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Secret the hub reads `cluster`'s credential from.
pub fn secret(namespace: &str, cluster: &str, token: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(cluster)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (CLUSTER_LABEL.to_owned(), cluster.to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "kdiag".to_owned()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            TOKEN_HASH_KEY.to_owned(),
            ByteString(hash(token).into_bytes()),
        )])),
        ..Default::default()
    }
}

/// What the hub knows of a cluster's credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub token_sha256: String,
    pub revoked: bool,
}

impl Stored {
    pub fn from_secret(s: &Secret) -> Self {
        Self {
            token_sha256: s
                .data
                .as_ref()
                .and_then(|d| d.get(TOKEN_HASH_KEY))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .map(|h| h.trim().to_ascii_lowercase())
                .unwrap_or_default(),
            revoked: is_revoked(&s.metadata),
        }
    }
}

/// Whether an object carries [`REVOKED_ANNOTATION`]`=true`.
pub fn is_revoked(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVOKED_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// How a member got in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Its own credential.
    OwnCredential,
    /// KubeProber's shared key (the hub opted in).
    SharedSecretKey,
}

/// Why a member is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadClusterName(String),
    /// No credential presented.
    Missing,
    /// No credential stored for the cluster, or not this one.
    Unknown,
    Revoked,
}

impl Refusal {
    /// The HTTP status of the refused upgrade.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadClusterName(_) => 400,
            Self::Missing | Self::Unknown => 401,
            Self::Revoked => 403,
        }
    }

    /// What the member is told (and logs): never whether the cluster is known.
    pub fn message(&self) -> String {
        match self {
            Self::BadClusterName(why) => why.clone(),
            Self::Missing => "no credential: send Authorization: Bearer <token>".into(),
            Self::Unknown => "unknown cluster or wrong credential".into(),
            Self::Revoked => "this cluster's credential is revoked".into(),
        }
    }
}

/// The hub's decision on `cluster` presenting `token`. `stored` is its credential Secret,
/// `cluster_revoked` whether its Cluster is annotated revoked, `shared_key` KubeProber's key when
/// the hub accepts it.
pub fn authenticate(
    cluster: &str,
    token: Option<&str>,
    stored: Option<&Stored>,
    cluster_revoked: bool,
    shared_key: Option<&str>,
) -> Result<Accepted, Refusal> {
    check_cluster_name(cluster).map_err(Refusal::BadClusterName)?;
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(Refusal::Missing);
    };
    if cluster_revoked || stored.is_some_and(|s| s.revoked) {
        return Err(Refusal::Revoked);
    }
    let presented = hash(token);
    if let Some(s) = stored
        && !s.token_sha256.is_empty()
        && same(&presented, &s.token_sha256)
    {
        return Ok(Accepted::OwnCredential);
    }
    if let Some(key) = shared_key.map(str::trim).filter(|k| !k.is_empty())
        && same(&presented, &hash(key))
    {
        return Ok(Accepted::SharedSecretKey);
    }
    Err(Refusal::Unknown)
}

/// Equality that takes the same time wherever the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(token: &str) -> Stored {
        Stored {
            token_sha256: hash(token),
            revoked: false,
        }
    }

    #[test]
    fn a_member_with_its_own_credential_is_accepted() {
        let s = stored("t0k3n");
        assert_eq!(
            authenticate("prod-1", Some("t0k3n"), Some(&s), false, None),
            Ok(Accepted::OwnCredential)
        );
        // The file may end with a newline.
        assert_eq!(
            authenticate("prod-1", Some("t0k3n\n"), Some(&s), false, None),
            Ok(Accepted::OwnCredential)
        );
    }

    #[test]
    fn unknown_wrong_missing_and_revoked_credentials_are_refused() {
        let s = stored("t0k3n");
        assert_eq!(
            authenticate("prod-1", Some("t0k3n"), None, false, None),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            authenticate("prod-1", Some("other"), Some(&s), false, None),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            authenticate("prod-1", None, Some(&s), false, None),
            Err(Refusal::Missing)
        );
        let revoked = Stored {
            revoked: true,
            ..s.clone()
        };
        assert_eq!(
            authenticate("prod-1", Some("t0k3n"), Some(&revoked), false, None),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            authenticate("prod-1", Some("t0k3n"), Some(&s), true, None),
            Err(Refusal::Revoked)
        );
        assert_eq!(Refusal::Revoked.status(), 403);
        assert_eq!(Refusal::Unknown.status(), 401);
    }

    #[test]
    fn the_shared_secret_key_counts_only_when_the_hub_opted_in_and_not_for_a_revoked_cluster() {
        assert_eq!(
            authenticate("old-1", Some("SECRET"), None, false, None),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            authenticate("old-1", Some("SECRET"), None, false, Some("SECRET")),
            Ok(Accepted::SharedSecretKey)
        );
        assert_eq!(
            authenticate("old-1", Some("SECRET"), None, true, Some("SECRET")),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn cluster_names_must_be_dns_labels() {
        assert!(check_cluster_name("erda-cloud").is_ok());
        for bad in ["", "Prod", "a.b", "-a", "a-", &"x".repeat(64)] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            authenticate("A", Some("t"), None, false, None),
            Err(Refusal::BadClusterName(_))
        ));
    }

    #[test]
    fn a_credential_secret_stores_the_hash_not_the_token() {
        let token = generate_token().unwrap();
        assert_eq!(token.len(), 64);
        let s = secret("kdiag-fleet", "prod-1", &token);
        let raw = serde_json::to_string(&s).unwrap();
        assert!(!raw.contains(&token));
        assert_eq!(Stored::from_secret(&s), stored(&token));
        assert_eq!(s.metadata.name.as_deref(), Some("kdiag-fleet-prod-1"));
    }
}
