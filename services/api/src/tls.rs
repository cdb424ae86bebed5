//! The server's side of mutual TLS: the rustls config built from PEM, and
//! who a verified client is (role, common name, serial) from its
//! certificate.

use crate::{ROLE_ADMIN, ROLE_READ_ONLY};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::fmt;
use std::sync::Arc;

/// The PEM the server needs: the cluster CA its clients' certificates must
/// chain to, and its own certificate (chain) and private key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Why TLS material could not become a server config. No variant holds the
/// key or its text.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("reading the CA certificates from PEM")]
    CaPem(#[source] rustls::pki_types::pem::Error),
    #[error("the CA PEM holds no certificate")]
    NoCa,
    #[error("adding a CA certificate to the trust store")]
    CaCertificate(#[source] rustls::Error),
    #[error("reading the server certificate chain from PEM")]
    CertPem(#[source] rustls::pki_types::pem::Error),
    #[error("the server certificate PEM holds no certificate")]
    NoCertificate,
    // The key's parse error names no key material, only what was wrong.
    #[error("reading the server private key from PEM")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    #[error("building the client certificate verifier over the CA")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("building the TLS 1.3 server config with the certificate and key")]
    Config(#[source] rustls::Error),
}

/// The protocols offered by ALPN, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A TLS 1.3-only server config that requires a client certificate chaining
/// to `material.ca_pem`.
pub fn server_config(material: &TlsMaterial) -> Result<ServerConfig, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        roots.add(cert.map_err(TlsConfigError::CaPem)?).map_err(TlsConfigError::CaCertificate)?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoCa);
    }
    let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsConfigError::CertPem)?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).map_err(TlsConfigError::KeyPem)?;

    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(TlsConfigError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsConfigError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsConfigError::Config)?;
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// What a client may do, from its certificate's organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => ROLE_ADMIN,
            Role::ReadOnly => ROLE_READ_ONLY,
        }
    }
}

/// Who is asking: a client whose certificate the handshake verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `None`: the certificate names no role this API knows; every request
    /// is refused.
    pub role: Option<Role>,
    /// The subject's CN, empty when it has none.
    pub common_name: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
}

impl Client {
    /// Reads the client from its (already verified) leaf certificate. A
    /// certificate that does not parse gets no role.
    pub fn from_certificate(der: &[u8]) -> Client {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Client { role: None, common_name: String::new(), serial: String::new() };
        };
        let subject = cert.subject();
        let organisations: Vec<&str> = subject.iter_organization().filter_map(|o| o.as_str().ok()).collect();
        // A certificate may name several organisations (groups); the widest
        // known role wins, as Kubernetes grants the union of its groups.
        let role = if organisations.contains(&ROLE_ADMIN) {
            Some(Role::Admin)
        } else if organisations.contains(&ROLE_READ_ONLY) {
            Some(Role::ReadOnly)
        } else {
            None
        };
        let common_name =
            subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned();
        let serial = cert.raw_serial().iter().map(|byte| format!("{byte:02x}")).collect();
        Client { role, common_name, serial }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_does_not_show_the_private_key() {
        let material = TlsMaterial {
            ca_pem: "ca".to_owned(),
            cert_pem: "cert".to_owned(),
            key_pem: "-----BEGIN PRIVATE KEY-----MC4CAQAwBQYDK2VwBCIEI".to_owned(),
        };
        let printed = format!("{material:?}");
        assert!(!printed.contains("MC4CAQ"), "{printed}");
        assert!(printed.contains("cert"), "{printed}");
    }

    #[test]
    fn material_without_a_ca_is_refused() {
        let material = TlsMaterial { ca_pem: String::new(), cert_pem: String::new(), key_pem: String::new() };
        assert!(matches!(server_config(&material), Err(TlsConfigError::NoCa)));
    }
}
