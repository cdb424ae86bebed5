//! Certificate authorities and the certificates they issue. Keys are ECDSA
//! P-256. The cluster has three CAs as kubeadm lays them out (cluster,
//! etcd, front-proxy; see `kubeadm.rs`); the machine config's `pki.ca` is
//! the cluster CA.
//!
//! Who is who is in the subject: Kelson's node certificates carry the node
//! name as CN; the management API's client certificates carry their role in
//! O (`kelson:admin`, `kelson:read-only`), which the management API is
//! meant to authorize on; Kubernetes' own certificates use Kubernetes'
//! names (`CN=system:node:<node>, O=system:nodes`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use time::{Duration, OffsetDateTime};

/// Organisation of every subject, and the prefix of client roles.
pub const ORGANISATION: &str = "kelson";
pub const ADMIN_ORGANISATION: &str = "kelson:admin";
pub const READ_ONLY_ORGANISATION: &str = "kelson:read-only";

const CA_LIFETIME: Duration = Duration::days(10 * 365);
const LEAF_LIFETIME: Duration = Duration::days(365);
/// Nodes whose clock lags the generating machine's still accept fresh certificates.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating the key for {subject}")]
    Key {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("building the certificate request for {subject}")]
    Params {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("signing the certificate for {subject}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
}

/// Why a CA's certificate and key, read back from PEM, cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum LoadAuthorityError {
    #[error("the key is not a PEM private key (ECDSA P-256, RSA or Ed25519)")]
    Key(#[source] rcgen::Error),
    #[error("the certificate is not one PEM X.509 certificate")]
    Certificate,
    #[error("the certificate is not a CA certificate (no basicConstraints CA:TRUE)")]
    NotACa,
    #[error("the key is not the certificate's key (their public keys differ)")]
    KeyMismatch,
    #[error("reading the certificate's subject and key identifier")]
    Issuer(#[source] rcgen::Error),
}

/// A certificate and its private key, both PEM. The key is a secret: this
/// type deliberately has no `Display` and its `Debug` omits the key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<secret>").finish()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// etcd uses its server and peer certificates in both directions.
    ServerAndClient,
}

/// A leaf certificate to issue.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// Absent where Kubernetes names none (`CN=system:kube-scheduler`).
    pub organisation: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usage: Usage,
}

impl LeafSpec {
    /// A node's server (or peer) certificate, valid for its name and address,
    /// and with `with_loopback` also for 127.0.0.1 and localhost.
    pub fn node(node: &str, address: Ipv4Addr, usage: Usage, with_loopback: bool) -> Self {
        let mut dns_names = vec![node.to_owned()];
        let mut ip_addresses = vec![IpAddr::V4(address)];
        if with_loopback {
            dns_names.push("localhost".to_owned());
            ip_addresses.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        LeafSpec {
            common_name: node.to_owned(),
            organisation: Some(ORGANISATION.to_owned()),
            dns_names,
            ip_addresses,
            usage,
        }
    }

    /// A client certificate whose role is its organisation.
    pub fn client(common_name: &str, organisation: &str) -> Self {
        LeafSpec { organisation: Some(organisation.to_owned()), ..LeafSpec::client_without_organisation(common_name) }
    }

    /// A client certificate known by its CN alone.
    pub fn client_without_organisation(common_name: &str) -> Self {
        LeafSpec {
            common_name: common_name.to_owned(),
            organisation: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: Usage::Client,
        }
    }

    /// A certificate with `usage` for these names and addresses.
    pub fn with_names(
        common_name: &str,
        usage: Usage,
        dns_names: impl IntoIterator<Item = String>,
        ip_addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        LeafSpec {
            common_name: common_name.to_owned(),
            organisation: None,
            dns_names: dns_names.into_iter().collect(),
            ip_addresses: ip_addresses.into_iter().collect(),
            usage,
        }
    }

    fn subject(&self) -> String {
        match &self.organisation {
            Some(organisation) => format!("CN={}, O={organisation}", self.common_name),
            None => format!("CN={}", self.common_name),
        }
    }
}

/// A certificate authority, able to issue leaf certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    now: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

fn distinguished_name(common_name: &str, organisation: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(organisation) = organisation {
        dn.push(DnType::OrganizationName, organisation);
    }
    dn
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid from (about) `now`.
    pub fn new(common_name: &str, now: OffsetDateTime) -> Result<Self, PkiError> {
        let subject = format!("the CA {common_name}");
        let key = KeyPair::generate().map_err(|source| PkiError::Key { subject: subject.clone(), source })?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, Some(ORGANISATION));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign { subject, source })?;
        Ok(Authority { issuer: Issuer::new(params, key), cert_pem: cert.pem(), key_pem, now })
    }

    /// A CA an earlier run made, from its certificate and key as that run
    /// wrote them, issuing from `now`. The key must be the certificate's:
    /// rcgen would otherwise sign certificates no one can verify.
    pub fn from_pem(cert_pem: &str, key_pem: &str, now: OffsetDateTime) -> Result<Self, LoadAuthorityError> {
        let key = KeyPair::from_pem(key_pem).map_err(LoadAuthorityError::Key)?;
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| LoadAuthorityError::Certificate)?;
        let cert = pem.parse_x509().map_err(|_| LoadAuthorityError::Certificate)?;
        if !cert.is_ca() {
            return Err(LoadAuthorityError::NotACa);
        }
        if key.public_key_raw() != &*cert.public_key().subject_public_key.data {
            return Err(LoadAuthorityError::KeyMismatch);
        }
        let issuer =
            Issuer::from_ca_cert_der(&pem.contents.as_slice().into(), key).map_err(LoadAuthorityError::Issuer)?;
        Ok(Authority { issuer, cert_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned(), now })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's own certificate and key.
    pub fn issued(&self) -> Issued {
        Issued { cert_pem: self.cert_pem(), key_pem: self.key_pem.clone() }
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let subject = spec.subject();
        let key = KeyPair::generate().map_err(|source| PkiError::Key { subject: subject.clone(), source })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&spec.common_name, spec.organisation.as_deref());
        let mut sans = Vec::new();
        for name in &spec.dns_names {
            let dns =
                name.clone().try_into().map_err(|source| PkiError::Params { subject: subject.clone(), source })?;
            sans.push(SanType::DnsName(dns));
        }
        sans.extend(spec.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = self.now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = self.now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer).map_err(|source| PkiError::Sign { subject, source })?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The key pair the API server signs service-account tokens with
/// (`sa.key`, PKCS#8 `PRIVATE KEY`) and checks them with (`sa.pub`,
/// `PUBLIC KEY`). ECDSA P-256: the API server accepts it (ES256).
pub fn service_account_key() -> Result<KeyPairPem, PkiError> {
    let subject = "the service-account signing key".to_owned();
    let key = KeyPair::generate().map_err(|source| PkiError::Key { subject, source })?;
    Ok(KeyPairPem { public_pem: key.public_key_pem(), private_pem: key.serialize_pem() })
}

/// A bare key pair, PEM; like [`Issued`], its `Debug` omits the private key.
#[derive(Clone)]
pub struct KeyPairPem {
    pub public_pem: String,
    pub private_pem: String,
}

impl std::fmt::Debug for KeyPairPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairPem").field("public_pem", &self.public_pem).field("private_pem", &"<secret>").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::pem::parse_x509_pem;

    #[test]
    fn a_node_certificate_is_signed_by_the_ca_and_names_the_node() {
        let ca = Authority::new("demo", OffsetDateTime::now_utc()).unwrap();
        let leaf = ca
            .issue(&LeafSpec::node("demo-cp-1", Ipv4Addr::new(192, 168, 100, 10), Usage::ServerAndClient, true))
            .unwrap();
        let (_, ca_pem) = parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        let (_, leaf_pem) = parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let leaf_cert = leaf_pem.parse_x509().unwrap();
        leaf_cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(leaf_cert.issuer(), ca_cert.subject());
        assert!(ca_cert.is_ca());
        assert!(!leaf_cert.is_ca());
        let subject = leaf_cert.subject().to_string();
        assert!(subject.contains("CN=demo-cp-1"), "{subject}");
    }

    #[test]
    fn a_key_never_shows_in_debug_output() {
        let ca = Authority::new("demo", OffsetDateTime::now_utc()).unwrap();
        let issued = ca.issue(&LeafSpec::client("admin", ADMIN_ORGANISATION)).unwrap();
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
