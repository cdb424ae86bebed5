//! Bootstrap-token discovery, as `kubeadm join --token T
//! --discovery-token-ca-cert-hash sha256:H` does it: a node that holds only
//! the API server's address, a bootstrap token and the hash of the cluster
//! CA's public key learns the CA and trusts it.
//!
//! 1. The `cluster-info` ConfigMap (namespace `kube-public`) is read
//!    anonymously, without checking the server's certificate (the node has
//!    no CA yet). Its `kubeconfig` names the CA and the API server.
//! 2. The controller-manager's bootstrapsigner signs that kubeconfig with
//!    every valid token: `jws-kubeconfig-<token id>` is a detached JWS
//!    (HS256, keyed by the token's secret, `kid` the token id). It is
//!    verified with the node's token: only a holder of the token could
//!    have made it, so the kubeconfig is the cluster's. No signature for
//!    the token id means the cluster does not know the token (never
//!    registered, expired and cleaned up).
//! 3. The CA certificate in that kubeconfig must have a public key whose
//!    SHA-256 (of its DER SubjectPublicKeyInfo, kubeadm's pin) is one of
//!    the configured hashes: the token alone would let anyone who knows it
//!    pose as the cluster.
//! 4. `cluster-info` is read again, this time through TLS checked against
//!    that CA, and must be the same: the server holds the CA's key.
//!
//! [`verify_cluster_info`] is steps 2 and 3 on data already read (pure);
//! [`discover`] does all four. Cryptography is ring's (HMAC-SHA256,
//! SHA-256) and x509-parser's (the certificate's SubjectPublicKeyInfo).

use crate::problems::error_chain;
use base64::Engine;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where kubeadm (and so the bootstrapsigner) keeps the cluster's public
/// description.
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO: &str = "cluster-info";
/// The key of the kubeconfig in `cluster-info`.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// The prefix of each token's signature in `cluster-info`.
pub const SIGNATURE_PREFIX: &str = "jws-kubeconfig-";

/// A kubeadm bootstrap token, `<id>.<secret>`. `Debug` shows the id only:
/// the secret never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl BootstrapToken {
    /// `[a-z0-9]{6}.[a-z0-9]{16}`, or `None`.
    pub fn parse(token: &str) -> Option<Self> {
        let (id, secret) = token.split_once('.')?;
        let part =
            |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        (part(id, 6) && part(secret, 16)).then(|| BootstrapToken { id: id.to_owned(), secret: secret.to_owned() })
    }

    /// The public half, which names the token's Secret and signature.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret half: for the HMAC key and the bootstrap kubeconfig only.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<secret>)", self.id)
    }
}

/// What discovery establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The cluster CA's certificates, PEM, as cluster-info carries them.
    pub ca_pem: String,
    /// The API server cluster-info names.
    pub server: String,
    /// The configured hash the CA matched.
    pub ca_cert_hash: String,
}

/// Why discovery did not (yet) succeed. None carries the token's secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading {CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} from {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "{CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} has no {KUBECONFIG_KEY} (is the cluster set up for token joins?)"
    )]
    NoKubeconfig,
    #[error(
        "{CLUSTER_INFO_NAMESPACE}/{CLUSTER_INFO} carries no signature for token {token_id}: the cluster does not \
         know the token, or it has expired (the controller-manager signs for valid tokens only)"
    )]
    NotSigned { token_id: String },
    #[error("the signature for token {token_id} on {CLUSTER_INFO}: {reason}")]
    BadSignature { token_id: String, reason: String },
    #[error("{CLUSTER_INFO}'s kubeconfig: {reason}")]
    Kubeconfig { reason: String },
    #[error(
        "the cluster CA's public key hash is {found}, none of cluster.caCertHashes ({expected}): not the cluster \
         the seed names, or the seed's hash is wrong"
    )]
    CaHashMismatch { found: String, expected: String },
    #[error(
        "{CLUSTER_INFO} read through TLS checked against the discovered CA differs from the first read (another \
         server answered one of them)"
    )]
    Changed,
}

/// kubeadm's pin of a certificate: `sha256:` and the hex SHA-256 of its
/// DER SubjectPublicKeyInfo.
pub fn ca_cert_hash(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex(digest.as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Checks a detached compact JWS (`header..signature`, the payload left
/// out) over `payload`: HS256 keyed by the token's secret, `kid` the
/// token's id.
pub fn verify_detached_jws(jws: &str, payload: &[u8], token: &BootstrapToken) -> Result<(), String> {
    let parts: Vec<&str> = jws.split('.').collect();
    let [header, detached, signature] = parts.as_slice() else {
        return Err(format!("not a compact JWS (it has {} parts, not 3)", parts.len()));
    };
    if !detached.is_empty() {
        return Err("not detached (it carries a payload of its own)".to_owned());
    }
    let header_json = b64url().decode(header).map_err(|e| format!("its header is not base64url: {e}"))?;
    let header_value: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|e| format!("its header is not JSON: {e}"))?;
    match header_value.get("alg").and_then(serde_json::Value::as_str) {
        Some("HS256") => {}
        other => return Err(format!("its algorithm is {other:?}, not HS256")),
    }
    if let Some(kid) = header_value.get("kid") {
        if kid.as_str() != Some(token.id()) {
            return Err(format!("it is for key {kid}, not token {}", token.id()));
        }
    }
    let signature = b64url().decode(signature).map_err(|e| format!("its signature is not base64url: {e}"))?;
    let signing_input = format!("{header}.{}", b64url().encode(payload));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret().as_bytes());
    ring::hmac::verify(&key, signing_input.as_bytes(), &signature)
        .map_err(|_| "it does not verify with the token's secret (the cluster's token differs)".to_owned())
}

/// The CA (PEM) and server of a kubeconfig's first cluster.
fn cluster_of(kubeconfig: &str) -> Result<(String, String), DiscoveryError> {
    let reason = |reason: String| DiscoveryError::Kubeconfig { reason };
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| reason(format!("does not parse: {e}")))?;
    let cluster = parsed
        .clusters
        .first()
        .and_then(|named| named.cluster.as_ref())
        .ok_or_else(|| reason("names no cluster".to_owned()))?;
    let server = cluster.server.clone().ok_or_else(|| reason("its cluster has no server".to_owned()))?;
    let data = cluster
        .certificate_authority_data
        .as_deref()
        .ok_or_else(|| reason("its cluster has no certificate-authority-data".to_owned()))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| reason(format!("certificate-authority-data is not base64: {e}")))?;
    let pem = String::from_utf8(pem).map_err(|_| reason("certificate-authority-data is not PEM text".to_owned()))?;
    Ok((pem, server))
}

/// Steps 2 and 3 on `cluster-info`'s data: the token's signature over the
/// kubeconfig, then the CA against `ca_cert_hashes`.
pub fn verify_cluster_info(
    data: &BTreeMap<String, String>,
    token: &BootstrapToken,
    ca_cert_hashes: &[String],
) -> Result<Discovered, DiscoveryError> {
    let kubeconfig = data.get(KUBECONFIG_KEY).ok_or(DiscoveryError::NoKubeconfig)?;
    let token_id = token.id().to_owned();
    let signature = data
        .get(&format!("{SIGNATURE_PREFIX}{token_id}"))
        .ok_or_else(|| DiscoveryError::NotSigned { token_id: token_id.clone() })?;
    verify_detached_jws(signature, kubeconfig.as_bytes(), token)
        .map_err(|reason| DiscoveryError::BadSignature { token_id, reason })?;
    let (ca_pem, server) = cluster_of(kubeconfig)?;
    let certificates: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| DiscoveryError::Kubeconfig { reason: format!("certificate-authority-data: {e}") })?;
    if certificates.is_empty() {
        return Err(DiscoveryError::Kubeconfig { reason: "certificate-authority-data holds no certificate".into() });
    }
    let mut found = Vec::new();
    for der in &certificates {
        let hash = ca_cert_hash(der).map_err(|reason| DiscoveryError::Kubeconfig { reason })?;
        if let Some(pin) = ca_cert_hashes.iter().find(|pin| pin.eq_ignore_ascii_case(&hash)) {
            return Ok(Discovered { ca_pem, server, ca_cert_hash: pin.clone() });
        }
        found.push(hash);
    }
    Err(DiscoveryError::CaHashMismatch { found: found.join(", "), expected: ca_cert_hashes.join(", ") })
}

/// Reads `cluster-info` anonymously from `api_server`: trusting `ca_pem`
/// when given, else any certificate (step 1: nothing is trusted yet, and
/// nothing read is believed before it is verified).
pub async fn read_cluster_info(
    api_server: &str,
    ca_pem: Option<&str>,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, DiscoveryError> {
    let unreachable = |reason: String| DiscoveryError::Unreachable { endpoint: api_server.to_owned(), reason };
    let uri: http::Uri = api_server.parse().map_err(|e| unreachable(format!("not a URL: {e}")))?;
    let mut config = kube::Config::new(uri);
    match ca_pem {
        Some(pem) => {
            let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<Result<_, _>>()
                .map_err(|e| unreachable(format!("the discovered CA: {e}")))?;
            config.root_cert = Some(roots);
        }
        None => {
            config.accept_invalid_certs = true;
            // No roots: without this kube looks for the system's (a node
            // has none, and refuses to build the client); none is trusted.
            config.root_cert = Some(Vec::new());
        }
    }
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let https = kube::client::ConfigExt::rustls_https_connector(&config)
        .map_err(|e| unreachable(format!("making a client: {}", error_chain(&e))))?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let service = tower::ServiceBuilder::new().layer(kube::client::ConfigExt::base_uri_layer(&config)).service(http);
    let client = kube::Client::new(service, CLUSTER_INFO_NAMESPACE);
    let api: Api<ConfigMap> = Api::namespaced(client, CLUSTER_INFO_NAMESPACE);
    let read = tokio::time::timeout(timeout, api.get(CLUSTER_INFO))
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", timeout.as_secs())))?;
    match read {
        Ok(map) => Ok(map.data.unwrap_or_default()),
        Err(kube::Error::Api(status)) => {
            Err(unreachable(format!("the API server answered {} {}: {}", status.code, status.reason, status.message)))
        }
        Err(other) => Err(unreachable(error_chain(&other))),
    }
}

/// Discovery's four steps against `api_server`.
pub async fn discover(
    api_server: &str,
    token: &BootstrapToken,
    ca_cert_hashes: &[String],
    timeout: Duration,
) -> Result<Discovered, DiscoveryError> {
    let unverified = read_cluster_info(api_server, None, timeout).await?;
    let discovered = verify_cluster_info(&unverified, token, ca_cert_hashes)?;
    let verified = read_cluster_info(api_server, Some(&discovered.ca_pem), timeout).await?;
    if verified.get(KUBECONFIG_KEY) != unverified.get(KUBECONFIG_KEY) {
        return Err(DiscoveryError::Changed);
    }
    Ok(discovered)
}

/// The kubeconfig `cluster-info` carries: the CA and the API server, no
/// user (kubeadm's shape). What [`crate::addons`] publishes.
pub fn cluster_info_kubeconfig(server: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: \"\"\n\
         contexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn token() -> BootstrapToken {
        BootstrapToken::parse(TOKEN).unwrap()
    }

    /// A detached JWS as the bootstrapsigner makes it (go-jose's
    /// protected header `{"alg":"HS256","kid":"<id>"}`), computed with
    /// ring's HMAC: the signer of the tests, not of the node.
    pub(crate) fn sign(payload: &str, token_id: &str, secret: &str) -> String {
        let header = b64url().encode(format!("{{\"alg\":\"HS256\",\"kid\":\"{token_id}\"}}"));
        let input = format!("{header}.{}", b64url().encode(payload));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{header}..{}", b64url().encode(tag.as_ref()))
    }

    fn ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        // The pin from the key itself, not through ca_cert_hash.
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let pin = format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref()));
        (cert.pem(), pin)
    }

    fn cluster_info(kubeconfig: &str, signatures: &[(&str, String)]) -> BTreeMap<String, String> {
        let mut data = BTreeMap::from([(KUBECONFIG_KEY.to_owned(), kubeconfig.to_owned())]);
        for (id, jws) in signatures {
            data.insert(format!("{SIGNATURE_PREFIX}{id}"), jws.clone());
        }
        data
    }

    #[test]
    fn tokens_parse_in_the_kubeadm_shape_and_debug_shows_the_id_only() {
        let t = token();
        assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
        assert_eq!(format!("{t:?}"), "BootstrapToken(abcdef.<secret>)");
        for bad in
            ["abcdef0123456789abcdef", "abcde.0123456789abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde"]
        {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_ca_hash_is_the_sha256_of_the_subject_public_key_info() {
        let (pem, pin) = ca();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(ca_cert_hash(&der).unwrap(), pin);
        assert!(ca_cert_hash(b"not a certificate").unwrap_err().starts_with("not an X.509 certificate"));
    }

    #[test]
    fn a_signed_cluster_info_with_the_pinned_ca_is_discovered() {
        let (pem, pin) = ca();
        let kubeconfig = cluster_info_kubeconfig("https://192.168.100.10:6443", &pem);
        let data = cluster_info(&kubeconfig, &[("abcdef", sign(&kubeconfig, "abcdef", "0123456789abcdef"))]);
        let other_pin = format!("sha256:{}", "0".repeat(64));
        let discovered = verify_cluster_info(&data, &token(), &[other_pin, pin.to_uppercase()]).unwrap();
        assert_eq!(discovered.ca_pem, pem);
        assert_eq!(discovered.server, "https://192.168.100.10:6443");
        assert_eq!(discovered.ca_cert_hash, pin.to_uppercase());
    }

    #[test]
    fn every_failure_says_why() {
        let (pem, pin) = ca();
        let kubeconfig = cluster_info_kubeconfig("https://192.168.100.10:6443", &pem);
        let good = sign(&kubeconfig, "abcdef", "0123456789abcdef");
        let pins = [pin.clone()];

        // No kubeconfig at all.
        let err = verify_cluster_info(&BTreeMap::new(), &token(), &pins).unwrap_err();
        assert_eq!(err, DiscoveryError::NoKubeconfig);

        // Signed for another token only: this one is unknown or expired.
        let data = cluster_info(&kubeconfig, &[("zzzzzz", sign(&kubeconfig, "zzzzzz", "0123456789abcdef"))]);
        let err = verify_cluster_info(&data, &token(), &pins).unwrap_err();
        assert_eq!(err, DiscoveryError::NotSigned { token_id: "abcdef".into() });
        assert!(err.to_string().contains("does not know the token, or it has expired"), "{err}");

        // Signed with another secret under this id.
        let data = cluster_info(&kubeconfig, &[("abcdef", sign(&kubeconfig, "abcdef", "ffffffffffffffff"))]);
        let err = verify_cluster_info(&data, &token(), &pins).unwrap_err();
        assert!(
            matches!(&err, DiscoveryError::BadSignature { reason, .. } if reason.contains("does not verify")),
            "{err}"
        );
        assert!(!err.to_string().contains("0123456789abcdef"), "the secret in {err}");

        // A kubeconfig changed after signing (another CA slipped in).
        let (other_pem, _) = ca();
        let forged = cluster_info_kubeconfig("https://192.168.100.10:6443", &other_pem);
        let data = cluster_info(&forged, &[("abcdef", good.clone())]);
        assert!(matches!(verify_cluster_info(&data, &token(), &pins), Err(DiscoveryError::BadSignature { .. })));

        // Not detached, another algorithm, another kid, not a JWS.
        let (header, _, sig) = {
            let mut parts = good.split('.');
            (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned())
        };
        let attached = format!("{header}.{}.{sig}", b64url().encode(&kubeconfig));
        assert_eq!(
            verify_detached_jws(&attached, kubeconfig.as_bytes(), &token()).unwrap_err(),
            "not detached (it carries a payload of its own)"
        );
        let none = format!("{}..{sig}", b64url().encode("{\"alg\":\"none\",\"kid\":\"abcdef\"}"));
        assert_eq!(
            verify_detached_jws(&none, kubeconfig.as_bytes(), &token()).unwrap_err(),
            "its algorithm is Some(\"none\"), not HS256"
        );
        let other_kid = sign(&kubeconfig, "zzzzzz", "0123456789abcdef");
        assert_eq!(
            verify_detached_jws(&other_kid, kubeconfig.as_bytes(), &token()).unwrap_err(),
            "it is for key \"zzzzzz\", not token abcdef"
        );
        assert_eq!(verify_detached_jws("abc", b"", &token()).unwrap_err(), "not a compact JWS (it has 1 parts, not 3)");

        // Signed properly, but the CA is not the pinned one.
        let data = cluster_info(&kubeconfig, &[("abcdef", good)]);
        let wrong = format!("sha256:{}", "ab".repeat(32));
        let err = verify_cluster_info(&data, &token(), std::slice::from_ref(&wrong)).unwrap_err();
        assert_eq!(err, DiscoveryError::CaHashMismatch { found: pin, expected: wrong });

        // Signed, but no CA in it.
        let bare = "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://x:6443\n";
        let data = cluster_info(bare, &[("abcdef", sign(bare, "abcdef", "0123456789abcdef"))]);
        let err = verify_cluster_info(&data, &token(), &pins).unwrap_err();
        assert_eq!(err.to_string(), "cluster-info's kubeconfig: its cluster has no certificate-authority-data");
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_answer_is_unreachable_with_the_reason() {
        // A port nothing listens on: refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let endpoint = format!("https://127.0.0.1:{port}");
        let err = discover(&endpoint, &token(), &[], Duration::from_secs(5)).await.unwrap_err();
        let DiscoveryError::Unreachable { endpoint: named, reason } = &err else { panic!("{err:?}") };
        assert_eq!(named, &endpoint);
        assert!(!reason.is_empty(), "{err}");
        assert!(err.to_string().starts_with(&format!("reading kube-public/cluster-info from {endpoint}: ")), "{err}");
    }
}
