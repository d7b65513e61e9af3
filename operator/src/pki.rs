//! The operator's own certificate authority and the certificates it issues. The CA lives in a
//! Secret in the operator's namespace; server certificates name the Service DNS names and the
//! ClusterIP, so clients can verify the server with or without cluster DNS.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The CA's subject; the CA certificate is rebuilt from it and the stored key when signing, so
/// issuing needs no certificate parser.
const CA_COMMON_NAME: &str = "sectordb operator CA";
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 397;

#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct Error(#[from] rcgen::Error);

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = jiff::Timestamp::now().as_second();
    // A little backdating absorbs clock skew between the operator and the servers.
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_delta(now - 3600);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_delta(now + days * 86_400);
}

fn time_delta(seconds: i64) -> std::time::Duration {
    std::time::Duration::from_secs(seconds.max(0) as u64)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "sectordb");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A new self-signed CA.
pub fn new_ca() -> Result<CertifiedKey, Error> {
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A TLS server certificate for `dns_names` and `ips`, signed by the CA.
pub fn issue_server(
    ca: &CertifiedKey,
    common_name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<CertifiedKey, Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, SERVER_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A random password of `len` characters from a URI-safe alphabet, from the OS's random source.
pub fn password(len: usize) -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let rng = ring::rand::SystemRandom::new();
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes).expect("the OS random source works");
    // 256 % 57 != 0 gives a slight bias; at 32 characters (~187 bits) it does not matter.
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[test]
    fn server_certificates_verify_against_the_ca_by_name_and_by_ip() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = new_ca().unwrap();
        let server = issue_server(
            &ca,
            "health-records-rw",
            &["health-records-rw.so-y-te.svc".into()],
            &["10.96.0.42".parse().unwrap()],
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
        for name in ["health-records-rw.so-y-te.svc", "10.96.0.42"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap();
        }
        let wrong = ServerName::try_from("other.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &wrong, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn passwords_are_long_random_and_uri_safe() {
        let a = password(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, password(32));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
