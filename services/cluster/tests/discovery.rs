//! Token discovery against a TLS server that serves `cluster-info` to
//! anonymous clients, as kube-apiserver does: discovered when the token's
//! signature and the CA's pin check out and the server holds that CA's
//! certificate; refused, saying why, when the token is not signed for or
//! the server's certificate is not from the CA cluster-info names (a
//! server posing as the cluster with a leaked token).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::{pki, Pki};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Response;
use kelson_cluster::discovery::{ca_cert_hash, cluster_info_kubeconfig, discover, BootstrapToken, DiscoveryError};
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const TOKEN: &str = "abcdef.0123456789abcdef";
const PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// The bootstrapsigner's detached JWS over `payload` (the test's signer).
fn sign(payload: &str, token: &BootstrapToken) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(format!("{{\"alg\":\"HS256\",\"kid\":\"{}\"}}", token.id()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret().as_bytes());
    let tag = ring::hmac::sign(&key, format!("{header}.{}", b64.encode(payload)).as_bytes());
    format!("{header}..{}", b64.encode(tag.as_ref()))
}

/// Serves `data` as cluster-info over TLS with `server`'s certificate,
/// without asking for a client certificate; anything else is 404.
async fn serve(server: &Pki, data: serde_json::Value) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(server.server_chain.clone(), server.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"}, "data": data}).to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let found = request.uri().path() == PATH && request.headers().get("authorization").is_none();
                    let (status, text) = if found { (200, body.clone()) } else { (404, "{}".to_owned()) };
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    async move { Ok::<_, hyper::Error>(response) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    url
}

fn pin(pki: &Pki) -> String {
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    ca_cert_hash(&der).unwrap()
}

/// cluster-info as the control plane publishes it: naming `cluster`'s CA
/// and signed with `token` (whose id is abcdef).
fn signed_cluster_info(cluster: &Pki, token: &BootstrapToken) -> serde_json::Value {
    let kubeconfig = cluster_info_kubeconfig("https://192.168.100.10:6443", &cluster.ca_pem);
    json!({"kubeconfig": kubeconfig, "jws-kubeconfig-abcdef": sign(&kubeconfig, token)})
}

#[tokio::test]
async fn a_server_holding_the_pinned_ca_is_discovered() {
    let cluster = pki();
    let token = BootstrapToken::parse(TOKEN).unwrap();
    let data = signed_cluster_info(&cluster, &token);
    let url = serve(&cluster, data).await;
    let discovered = discover(&url, &token, &[pin(&cluster)], Duration::from_secs(10)).await.unwrap();
    assert_eq!(discovered.ca_pem, cluster.ca_pem);
    assert_eq!(discovered.server, "https://192.168.100.10:6443");
    assert_eq!(discovered.ca_cert_hash, pin(&cluster));
}

#[tokio::test]
async fn a_token_the_cluster_has_not_signed_for_is_unknown_or_expired() {
    let cluster = pki();
    let token = BootstrapToken::parse(TOKEN).unwrap();
    let other = BootstrapToken::parse("zzzzzz.0123456789abcdef").unwrap();
    let kubeconfig = cluster_info_kubeconfig("https://192.168.100.10:6443", &cluster.ca_pem);
    let url =
        serve(&cluster, json!({"kubeconfig": kubeconfig, "jws-kubeconfig-zzzzzz": sign(&kubeconfig, &other)})).await;
    let err = discover(&url, &token, &[pin(&cluster)], Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err, DiscoveryError::NotSigned { token_id: "abcdef".into() });
}

#[tokio::test]
async fn a_server_without_the_pinned_cas_certificate_is_refused_on_the_second_read() {
    // cluster-info names the real CA and is signed with the real token,
    // but the server answering holds a certificate from another CA.
    let cluster = pki();
    let impostor = pki();
    let token = BootstrapToken::parse(TOKEN).unwrap();
    let data = signed_cluster_info(&cluster, &token);
    let url = serve(&impostor, data).await;
    let err = discover(&url, &token, &[pin(&cluster)], Duration::from_secs(10)).await.unwrap_err();
    let DiscoveryError::Unreachable { endpoint, reason } = &err else { panic!("{err:?}") };
    assert_eq!(endpoint, &url);
    assert!(reason.to_lowercase().contains("certificate"), "{err}");
}

/// A node has no system CA bundle: the first, anonymous read must not
/// need one. `SSL_CERT_FILE` pointing nowhere makes the host look the
/// same to the TLS stack (set before any client exists in this process;
/// the other tests here trust nothing from the system either).
#[tokio::test]
async fn discovery_needs_no_system_roots() {
    std::env::set_var("SSL_CERT_FILE", "/nonexistent/kelson-test-no-system-roots.pem");
    std::env::set_var("SSL_CERT_DIR", "/nonexistent/kelson-test-no-system-roots");
    let cluster = pki();
    let token = BootstrapToken::parse(TOKEN).unwrap();
    let data = signed_cluster_info(&cluster, &token);
    let url = serve(&cluster, data).await;
    let discovered = discover(&url, &token, &[pin(&cluster)], Duration::from_secs(10)).await.unwrap();
    assert_eq!(discovered.ca_pem, cluster.ca_pem);
}

#[tokio::test]
async fn a_missing_cluster_info_is_the_servers_answer() {
    let cluster = pki();
    let token = BootstrapToken::parse(TOKEN).unwrap();
    let url = serve(&cluster, json!({})).await;
    let err = discover(&url, &token, &[pin(&cluster)], Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err, DiscoveryError::NoKubeconfig);
}
