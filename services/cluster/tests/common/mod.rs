//! Shared by the reporter's test files: a test PKI, the fake API server
//! and pod statuses. Each file uses part of it.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use kelson_cluster::{ReporterConfig, Timing};
use kelson_pods::manifest::{parse, LoadOptions};
use kelson_pods::status::PodStatus;
use kelson_pods::RestartPolicy;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

pub const NODE: &str = "n1";
pub const NODE_UID: &str = "6c9f1e0a-uid-of-n1";
/// How long a test waits for the reporter to do something before failing
/// (generous: the machine is shared; nothing is measured).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One request as the fake API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Value,
    /// The DER of the client certificate the TLS session presented.
    pub client_cert: Option<Vec<u8>>,
    /// What the fake answered.
    pub status: u16,
}

pub struct Pki {
    pub ca_pem: String,
    pub server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub server_key: rustls::pki_types::PrivateKeyDer<'static>,
    pub client_cert_pem: String,
    pub client_cert_der: Vec<u8>,
    pub client_key_pem: String,
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("test cluster CA", "kelson");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");

    let server_key = KeyPair::generate().expect("server key");
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
    server_params.distinguished_name = dn("kube-apiserver", "kelson");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &ca).expect("server certificate");

    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::default();
    client_params.distinguished_name = dn(&format!("system:node:{NODE}"), "system:nodes");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca).expect("client certificate");

    Pki {
        ca_pem: ca.pem(),
        server_chain: vec![server.der().clone()],
        server_key: rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).expect("server key DER"),
        client_cert_pem: client.pem(),
        client_cert_der: client.der().to_vec(),
        client_key_pem: client_key.serialize_pem(),
    }
}

pub fn dn(common_name: &str, organisation: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, organisation);
    dn
}

/// A test double of kube-apiserver for the transport only: it requires a
/// client certificate from the test CA, answers `GET /api/v1/nodes/n1`
/// with 404 until `node_after` such GETs were refused, then with a Node
/// that already carries the kubelet's Ready condition and an old Kelson
/// condition; it accepts status patches and events, and records every
/// request.
pub struct FakeApiServer {
    /// While set, the Node is gone: GET and PATCH of it answer 404.
    pub node_deleted: Arc<std::sync::atomic::AtomicBool>,
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApiServer {
    pub async fn start(pki: &Pki, node_after: usize) -> Self {
        Self::start_on(pki, node_after, "127.0.0.1:0").await
    }

    pub async fn start_on(pki: &Pki, node_after: usize, address: &str) -> Self {
        let acceptor = tls_acceptor(pki);
        let listener = TcpListener::bind(address).await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let node_deleted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deleted_flag = node_deleted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, deleted) = (acceptor.clone(), record.clone(), deleted_flag.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let client_cert =
                        tls.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(|c| c.to_vec());
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, client_cert) = (seen.clone(), client_cert.clone());
                        let deleted = deleted.load(std::sync::atomic::Ordering::SeqCst);
                        async move { Ok::<_, hyper::Error>(answer(request, client_cert, &seen, node_after, deleted).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        FakeApiServer { node_deleted, url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until the recorded requests satisfy `done`.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("gave up waiting for {what}; requests so far: {seen:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// TLS as kube-apiserver does it: the server certificate of `pki`, a
/// client certificate from its CA required.
pub fn tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("CA into the root store");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .expect("server TLS config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub async fn answer(
    request: Request<Incoming>,
    client_cert: Option<Vec<u8>>,
    seen: &Mutex<Vec<Seen>>,
    node_after: usize,
    node_deleted: bool,
) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let content_type =
        request.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let node_path = format!("/api/v1/nodes/{NODE}");
    let mut seen = seen.lock().expect("lock");
    let refused_gets = seen.iter().filter(|s| s.method == "GET" && s.status == 404).count();
    let (status, reply) = match (method.as_str(), path.as_str()) {
        ("GET" | "PATCH", p) if p.starts_with(&node_path) && node_deleted => (404, not_found()),
        ("GET", p) if p == node_path && refused_gets < node_after => (404, not_found()),
        ("GET", p) if p == node_path => (200, node()),
        ("PATCH", p) if p == format!("{node_path}/status") => (200, node()),
        // Names are unique within a namespace, as the real server keeps them.
        ("POST", "/api/v1/namespaces/default/events")
            if seen.iter().any(|s| s.status == 201 && s.body["metadata"]["name"] == body["metadata"]["name"]) =>
        {
            (409, already_exists())
        }
        ("POST", "/api/v1/namespaces/default/events") => (201, body.clone()),
        ("PATCH", p) if p.starts_with("/api/v1/namespaces/default/events/") => (200, body.clone()),
        _ => (404, not_found()),
    };
    seen.push(Seen { method, path, content_type, body, client_cert, status });
    let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

pub fn already_exists() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
           "message": "events already exists"})
}

pub fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("nodes \"{NODE}\" not found")})
}

pub fn node() -> Value {
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": NODE, "uid": NODE_UID},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
             "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "KelsonStaticPodsHealthy", "status": "True", "reason": "StaticPodsHealthy", "message": "from before",
             "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2025-06-01T12:00:00Z"}
        ]}
    })
}

/// A static pod `<name>-n1` with one container named like the pod,
/// running and ready.
pub fn running_pod(name: &str) -> PodStatus {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\n\
         spec:\n  hostNetwork: true\n  containers:\n  - name: {name}\n    image: registry.k8s.io/{name}:v1.36.3\n"
    );
    let options = LoadOptions { node_name: Some(NODE.to_owned()) };
    let spec = parse(Path::new("/etc/kubernetes/manifests/test.yaml"), yaml.as_bytes(), &options).expect("manifest");
    let mut pod = PodStatus::new(&spec, None, SystemTime::now());
    let c = pod.container_mut(name).expect("container");
    c.set_running(SystemTime::now());
    c.set_probed(true, true);
    pod.update_phase(RestartPolicy::Always);
    pod
}

pub fn config(pki: &Pki, url: &str) -> ReporterConfig {
    ReporterConfig {
        api_server: url.to_owned(),
        ca_pem: pki.ca_pem.clone().into_bytes(),
        cert_pem: pki.client_cert_pem.clone().into_bytes(),
        key_pem: pki.client_key_pem.clone().into_bytes(),
        node_name: NODE.to_owned(),
        timing: Timing {
            debounce: Duration::from_millis(20),
            heartbeat: Duration::from_secs(3600),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
        },
    }
}

pub fn is_status_patch(s: &Seen) -> bool {
    s.method == "PATCH" && s.path == format!("/api/v1/nodes/{NODE}/status")
}
