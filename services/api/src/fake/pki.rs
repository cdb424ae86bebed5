//! A throwaway PKI for tests: a CA, a server certificate for 127.0.0.1 and
//! localhost, and client certificates with any CN and organisation.

use crate::TlsMaterial;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use std::path::Path;

/// A client certificate and its key, PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA and the server certificate it signed.
pub struct TestPki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

fn distinguished_name(common_name: &str, organisation: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(organisation) = organisation {
        name.push(DnType::OrganizationName, organisation);
    }
    name
}

impl TestPki {
    /// A fresh CA (named `ca_name`) and server certificate.
    pub fn generate(ca_name: &str) -> Result<TestPki, rcgen::Error> {
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = distinguished_name(ca_name, Some("kelson"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        server_params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        server_params.distinguished_name = distinguished_name("kelson-api", None);
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params.signed_by(&server_key, &issuer)?;

        Ok(TestPki {
            ca_pem: issuer.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            issuer,
        })
    }

    /// What [`crate::serve`] needs to serve with this PKI.
    pub fn tls_material(&self) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
        }
    }

    /// A client certificate with subject CN `common_name` and O
    /// `organisation` (none when `None`), valid from now for a year.
    pub fn client(&self, common_name: &str, organisation: Option<&str>) -> Result<ClientCert, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, organisation);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate (O `organisation`) that expired in 2001.
    pub fn expired_client(&self, common_name: &str, organisation: &str) -> Result<ClientCert, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, Some(organisation));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<ClientCert, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Writes `ca.pem`, `server.pem`, `server-key.pem`, and an admin client's
    /// `admin.pem` and `admin-key.pem` (keys 0600) into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let admin = self.client("fake-admin", Some(crate::ROLE_ADMIN)).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let files = [
            ("ca.pem", &self.ca_pem, 0o644),
            ("server.pem", &self.server_cert_pem, 0o644),
            ("server-key.pem", &self.server_key_pem, 0o600),
            ("admin.pem", &admin.cert_pem, 0o644),
            ("admin-key.pem", &admin.key_pem, 0o600),
        ];
        for (name, text, mode) in files {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(dir.join(name))?
                .write_all(text.as_bytes())?;
        }
        Ok(())
    }
}
