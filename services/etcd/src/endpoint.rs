//! Where etcd is and the credentials to reach it.

use crate::error::EtcdError;
use std::path::Path;

/// The URL a control-plane node's etcd listens on for local clients
/// (kubeadm's `--listen-client-urls` holds it beside the node's address).
pub const LOCAL_CLIENT_URL: &str = "https://127.0.0.1:2379";

/// etcd's client URLs and the mutual-TLS material to reach them, all PEM.
/// The key is a secret: there is no `Display`, and `Debug` omits it.
#[derive(Clone)]
pub struct EtcdEndpoint {
    pub endpoints: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for EtcdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdEndpoint")
            .field("endpoints", &self.endpoints)
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// Under a kubeadm-layout PKI directory (`/etc/kubernetes/pki`): etcd's CA.
pub const ETCD_CA_FILE: &str = "etcd/ca.crt";
/// The API server's etcd client certificate and key (see [`EtcdEndpoint::for_node`]).
pub const CLIENT_CERT_FILE: &str = "apiserver-etcd-client.crt";
pub const CLIENT_KEY_FILE: &str = "apiserver-etcd-client.key";

impl EtcdEndpoint {
    /// A control-plane node's view of etcd: its CA and the API server's etcd
    /// client certificate from `pki_dir`, and the given client URLs
    /// (`vec![LOCAL_CLIENT_URL.into()]` for the node's own member).
    ///
    /// The client certificate is the API server's (`apiserver-etcd-client`),
    /// not `etcd/healthcheck-client`: kubeadm issues both from the etcd CA and,
    /// with etcd's auth off (as kubeadm runs it), etcd lets either do anything.
    /// The health-check certificate is meant for probes; the API server's is
    /// the one that must hold full rights should etcd auth be enabled (it reads
    /// and writes every key), and it is the one kubeadm itself uses to add,
    /// promote and remove members.
    pub fn for_node(pki_dir: &Path, endpoints: Vec<String>) -> Result<Self, EtcdError> {
        let read = |name: &str| {
            let path = pki_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| EtcdError::ReadPki { path, source })
        };
        Ok(Self {
            endpoints,
            ca_pem: read(ETCD_CA_FILE)?,
            cert_pem: read(CLIENT_CERT_FILE)?,
            key_pem: read(CLIENT_KEY_FILE)?,
        })
    }

    /// The same credentials aimed at other client URLs (another member's).
    pub fn with_endpoints(&self, endpoints: Vec<String>) -> Self {
        Self { endpoints, ..self.clone() }
    }

    /// The endpoints as errors name them.
    pub(crate) fn label(&self) -> String {
        self.endpoints.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_key() {
        let endpoint = EtcdEndpoint {
            endpoints: vec![LOCAL_CLIENT_URL.to_owned()],
            ca_pem: "CA".to_owned(),
            cert_pem: "CERT".to_owned(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nsecret-bytes".to_owned(),
        };
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("secret-bytes"), "{shown}");
        assert!(shown.contains("<secret>") && shown.contains("CERT"), "{shown}");
    }

    #[test]
    fn for_node_reads_the_etcd_ca_and_the_api_servers_client_pair() {
        let pki = tempfile::tempdir().unwrap();
        std::fs::create_dir(pki.path().join("etcd")).unwrap();
        std::fs::write(pki.path().join(ETCD_CA_FILE), "ca").unwrap();
        std::fs::write(pki.path().join(CLIENT_CERT_FILE), "cert").unwrap();
        std::fs::write(pki.path().join(CLIENT_KEY_FILE), "key").unwrap();
        std::fs::write(pki.path().join("etcd/healthcheck-client.crt"), "wrong").unwrap();

        let endpoint = EtcdEndpoint::for_node(pki.path(), vec![LOCAL_CLIENT_URL.to_owned()]).unwrap();

        assert_eq!(
            (endpoint.ca_pem.as_str(), endpoint.cert_pem.as_str(), endpoint.key_pem.as_str()),
            ("ca", "cert", "key")
        );
        assert_eq!(endpoint.endpoints, [LOCAL_CLIENT_URL]);
    }

    #[test]
    fn for_node_names_the_missing_file() {
        let pki = tempfile::tempdir().unwrap();
        std::fs::create_dir(pki.path().join("etcd")).unwrap();
        std::fs::write(pki.path().join(ETCD_CA_FILE), "ca").unwrap();

        let err = EtcdEndpoint::for_node(pki.path(), vec![]).unwrap_err();

        let message = err.to_string();
        assert!(message.contains(&pki.path().join(CLIENT_CERT_FILE).display().to_string()), "{message}");
    }
}
