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
/// Server and client certificates live 90 days and are renewed in their last 7, as
/// CloudNativePG does: a leaked key is useful for weeks, not years.
pub const LEAF_DAYS: i64 = 90;
const RENEW_BEFORE_DAYS: i64 = 7;
const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct Error(#[from] rcgen::Error);

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A server or client certificate and the instant (Unix seconds) it stops being valid, which
/// the operator records beside it so it knows when to renew without parsing certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub key: CertifiedKey,
    pub not_after: i64,
}

/// Whether a certificate valid until `not_after` is in its renewal window at `now`.
pub fn renewal_due(not_after: i64, now: i64) -> bool {
    now >= not_after - RENEW_BEFORE_DAYS * DAY
}

/// Whether the CA valid until `not_after` should be replaced: in its last year, which leaves
/// room for the overlap during which clients learn to trust its successor.
pub fn ca_renewal_due(not_after: i64, now: i64) -> bool {
    now >= not_after - 365 * DAY
}

/// A short, stable name of a certificate (the start of the SHA-256 of its PEM), recorded on the
/// certificates it signs so they are reissued when another CA takes over.
pub fn fingerprint(cert_pem: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert_pem.trim().as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Sets the validity from an hour ago (absorbing clock skew between the operator and the
/// servers) to `days` from now; returns the end.
fn validity(params: &mut CertificateParams, days: i64) -> i64 {
    let now = jiff::Timestamp::now().as_second();
    let not_after = now + days * DAY;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + time_delta(now - 3600);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + time_delta(not_after);
    not_after
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

/// A new self-signed CA, valid for ten years. Every CA the operator makes has the same subject;
/// the certificates it signs name it by key identifier too, so clients that trust two CAs
/// during a rotation find the right one.
pub fn new_ca() -> Result<Leaf, Error> {
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    let not_after = validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(Leaf {
        key: CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        not_after,
    })
}

/// A TLS server certificate for `dns_names` and `ips`, signed by the CA.
pub fn issue_server(
    ca: &CertifiedKey,
    common_name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<Leaf, Error> {
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    issue(ca, params, common_name, ExtendedKeyUsagePurpose::ServerAuth)
}

/// A TLS client certificate for the PostgreSQL role `user` (its common name, which
/// PostgreSQL's `cert` authentication compares with the user name), signed by the CA.
pub fn issue_client(ca: &CertifiedKey, user: &str) -> Result<Leaf, Error> {
    issue(
        ca,
        CertificateParams::default(),
        user,
        ExtendedKeyUsagePurpose::ClientAuth,
    )
}

fn issue(
    ca: &CertifiedKey,
    mut params: CertificateParams,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<Leaf, Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate()?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let not_after = validity(&mut params, LEAF_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Leaf {
        key: CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        not_after,
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
        let ca = new_ca().unwrap().key;
        let server = issue_server(
            &ca,
            "health-records-rw",
            &["health-records-rw.so-y-te.svc".into()],
            &["10.96.0.42".parse().unwrap()],
        )
        .unwrap()
        .key;
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
    fn client_certificates_verify_for_client_auth_only() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = new_ca().unwrap().key;
        let client = issue_client(&ca, "postgres").unwrap();
        let now = jiff::Timestamp::now().as_second();
        assert!((client.not_after - now - LEAF_DAYS * DAY).abs() < 60);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let roots = std::sync::Arc::new(roots);
        let leaf = CertificateDer::from_pem_slice(client.key.cert_pem.as_bytes()).unwrap();
        rustls::server::WebPkiClientVerifier::builder(roots.clone())
            .build()
            .unwrap()
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .unwrap();
        // It cannot pose as a server.
        let server_verifier = rustls::client::WebPkiServerVerifier::builder(roots)
            .build()
            .unwrap();
        let name = ServerName::try_from("postgres").unwrap();
        assert!(
            server_verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn renewal_starts_seven_days_before_the_end() {
        let end = 1_000 * DAY;
        assert!(!renewal_due(end, end - 8 * DAY));
        assert!(renewal_due(end, end - 7 * DAY));
        assert!(renewal_due(end, end + 1));
    }

    #[test]
    fn passwords_are_long_random_and_uri_safe() {
        let a = password(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a, password(32));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
