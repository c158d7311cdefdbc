//! The webhook's serving certificate: a CA of its own and a certificate it signed, kept in one
//! Secret in kdiag's namespace so that a restart or a second replica serves the same one, and
//! the CA written into the ValidatingWebhookConfiguration's caBundle.
//!
//! The CA's key is used once, to sign, and never stored: when the certificate must be renewed
//! (it expires within [`RENEW_BEFORE`] or lacks a name the webhook is reached by) a new CA and
//! certificate replace both, and the caBundle follows.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use super::ClientConfig;
use crate::Error;

/// The keys of the Secret: the CA (for the caBundle) and the serving pair.
pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const PRIVATE_KEY: &str = "tls.key";

/// How long a new certificate is valid.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A certificate expiring sooner than this is replaced.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A CA and the serving certificate and key it signed, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A new CA and a serving certificate for `hosts` (DNS names or IP addresses), valid from a day
/// before `now_unix` for [`VALIDITY`].
pub fn generate(hosts: &[String], now_unix: i64) -> Result<Serving, Error> {
    let fail = |what: &str, e: rcgen::Error| Error::WebhookCertificate {
        reason: format!("{what}: {e}"),
    };
    let not_before = time_at(now_unix - 24 * 3600)?;
    let not_after = time_at(now_unix + VALIDITY.as_secs() as i64)?;

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kdiag admission webhook CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", e))?;

    let mut leaf = CertificateParams::new(hosts.to_vec()).map_err(|e| fail("names", e))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kdiag admission webhook");
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate().map_err(|e| fail("key", e))?;
    let issuer = Issuer::new(ca, ca_key);
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(|e| fail("certificate", e))?;
    Ok(Serving {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn time_at(unix: i64) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| Error::WebhookCertificate {
        reason: format!("the time {unix}: {e}"),
    })
}

/// Whether `serving` can go on being served at `now_unix`: its certificate parses, names every
/// one of `hosts`, and does not expire within [`RENEW_BEFORE`]. Err says why not.
pub fn still_good(serving: &Serving, hosts: &[String], now_unix: i64) -> Result<(), String> {
    let der = pem_der(&serving.cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    if not_after < now_unix + RENEW_BEFORE.as_secs() as i64 {
        return Err("the certificate expires within 30 days".into());
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .map(|a| std::net::IpAddr::from(a).to_string())
                            .ok(),
                        16 => <[u8; 16]>::try_from(*b)
                            .map(|a| std::net::IpAddr::from(a).to_string())
                            .ok(),
                        _ => None,
                    };
                    names.extend(ip);
                }
                _ => {}
            }
        }
    }
    match hosts.iter().find(|h| !names.contains(h)) {
        Some(missing) => Err(format!("the certificate does not name {missing}")),
        None => Ok(()),
    }
}

fn pem_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    Ok(p.contents)
}

fn from_secret(secret: &Secret) -> Option<Serving> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Serving {
        ca_pem: get(CA_KEY)?,
        cert_pem: get(CERT_KEY)?,
        key_pem: get(PRIVATE_KEY)?,
    })
}

fn secret_data(s: &Serving) -> BTreeMap<String, ByteString> {
    [
        (CA_KEY, &s.ca_pem),
        (CERT_KEY, &s.cert_pem),
        (PRIVATE_KEY, &s.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

/// The serving certificate from Secret `namespace/name`, made (or renewed) when it is missing
/// or no longer good. Safe with several replicas: a create or update that loses a race reads
/// the winner's certificate instead.
pub async fn ensure_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    hosts: &[String],
) -> Result<Serving, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let object = format!("Secret {namespace}/{name}");
    for _ in 0..3 {
        let now = jiff::Timestamp::now().as_second();
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("get", object.clone(), e))?;
        if let Some(serving) = existing.as_ref().and_then(from_secret) {
            match still_good(&serving, hosts, now) {
                Ok(()) => return Ok(serving),
                Err(why) => {
                    tracing::info!(secret = %object, %why, "renewing the webhook's serving certificate")
                }
            }
        }
        let serving = generate(hosts, now)?;
        let result = match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".to_owned(),
                            "kdiag".to_owned(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(secret_data(&serving)),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
            Some(mut secret) => {
                // Conditional on the resourceVersion read: a replica that renewed first wins.
                secret.data = Some(secret_data(&serving));
                api.replace(name, &PostParams::default(), &secret).await
            }
        };
        match result {
            Ok(_) => return Ok(serving),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(Error::kube("write", object.clone(), e)),
        }
    }
    Err(Error::WebhookCertificate {
        reason: format!("{object} kept changing while it was written; it is retried"),
    })
}

/// Points every webhook of ValidatingWebhookConfiguration `name` at this controller with
/// `ca_pem` as its caBundle. Writes only when something differs; Ok(true) when it wrote.
pub async fn patch_configuration(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
    reach: &ClientConfig,
) -> Result<bool, Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let object = format!("ValidatingWebhookConfiguration {name}");
    let current = api
        .get_opt(name)
        .await
        .map_err(|e| Error::kube("get", object.clone(), e))?;
    let Some(current) = current else {
        return Err(Error::WebhookConfigurationMissing { name: name.into() });
    };
    let value = serde_json::to_value(&current).map_err(|e| Error::WebhookCertificate {
        reason: format!("{object} does not serialize: {e}"),
    })?;
    let mut webhooks = value
        .get("webhooks")
        .and_then(|w| w.as_array())
        .cloned()
        .unwrap_or_default();
    let wanted = reach.client_config(ca_pem);
    let mut changed = false;
    for w in &mut webhooks {
        if w.get("clientConfig") != Some(&wanted) {
            w["clientConfig"] = wanted.clone();
            changed = true;
        }
    }
    if !changed {
        return Ok(false);
    }
    // The whole list, conditional on the version read (a merge patch replaces lists).
    let patch = json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "webhooks": webhooks,
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("patch caBundle of", object, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec![
            "kdiag-controller.kube-diagnoser.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_new_certificate_names_every_host_and_is_good_for_a_year() {
        let s = generate(&hosts(), NOW).unwrap();
        assert!(s.ca_pem.contains("BEGIN CERTIFICATE"));
        assert!(s.key_pem.contains("PRIVATE KEY"));
        assert_eq!(still_good(&s, &hosts(), NOW), Ok(()));
        let late = NOW + VALIDITY.as_secs() as i64 - 10 * 24 * 3600;
        assert!(
            still_good(&s, &hosts(), late)
                .unwrap_err()
                .contains("expires")
        );
    }

    #[test]
    fn a_certificate_without_a_name_the_webhook_is_reached_by_is_replaced() {
        let s = generate(&hosts(), NOW).unwrap();
        let more = [hosts(), vec!["10.1.2.3".into()]].concat();
        assert!(still_good(&s, &more, NOW).unwrap_err().contains("10.1.2.3"));
    }

    #[test]
    fn the_serving_certificate_is_issued_by_the_ca_in_the_bundle() {
        let s = generate(&hosts(), NOW).unwrap();
        let ca = pem_der(&s.ca_pem).unwrap();
        let leaf = pem_der(&s.cert_pem).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(leaf.issuer(), ca.subject());
    }

    #[test]
    fn a_secret_round_trips() {
        let s = generate(&hosts(), NOW).unwrap();
        let secret = Secret {
            data: Some(secret_data(&s)),
            ..Default::default()
        };
        assert_eq!(from_secret(&secret), Some(s));
        assert_eq!(from_secret(&Secret::default()), None);
    }
}
