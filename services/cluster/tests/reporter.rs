//! The reporter against a fake API server on 127.0.0.1: real TLS (a CA,
//! a server certificate and the node's client certificate made with
//! rcgen, client certificates required), real HTTP, the real kube client.
//! The fake stands in for the transport only; the real API server's
//! behaviour (strategic merge, the Node authorizer) is checked by the QEMU
//! cluster test.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use kelson_base::Exit;
use kelson_cluster::{Reporter, ReporterConfig, Timing};
use kelson_pods::manifest::{parse, LoadOptions};
use kelson_pods::runtime::PodsStatus;
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
use tokio::sync::{oneshot, watch};

const NODE: &str = "n1";
const NODE_UID: &str = "6c9f1e0a-uid-of-n1";
/// How long a test waits for the reporter to do something before failing
/// (generous: the machine is shared; nothing is measured).
const PATIENCE: Duration = Duration::from_secs(60);

/// One request as the fake API server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
    /// The DER of the client certificate the TLS session presented.
    client_cert: Option<Vec<u8>>,
    /// What the fake answered.
    status: u16,
}

struct Pki {
    ca_pem: String,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    client_cert_pem: String,
    client_cert_der: Vec<u8>,
    client_key_pem: String,
}

fn pki() -> Pki {
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

fn dn(common_name: &str, organisation: &str) -> DistinguishedName {
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
struct FakeApiServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeApiServer {
    async fn start(pki: &Pki, node_after: usize) -> Self {
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
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let client_cert =
                        tls.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(|c| c.to_vec());
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, client_cert) = (seen.clone(), client_cert.clone());
                        async move { Ok::<_, hyper::Error>(answer(request, client_cert, &seen, node_after).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        FakeApiServer { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Waits until the recorded requests satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
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

async fn answer(
    request: Request<Incoming>,
    client_cert: Option<Vec<u8>>,
    seen: &Mutex<Vec<Seen>>,
    node_after: usize,
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
        ("GET", p) if p == node_path && refused_gets < node_after => (404, not_found()),
        ("GET", p) if p == node_path => (200, node()),
        ("PATCH", p) if p == format!("{node_path}/status") => (200, node()),
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

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("nodes \"{NODE}\" not found")})
}

fn node() -> Value {
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
fn running_pod(name: &str) -> PodStatus {
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

fn config(pki: &Pki, url: &str) -> ReporterConfig {
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

fn condition<'a>(patch: &'a Seen, type_: &str) -> &'a Value {
    patch.body["status"]["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {:#}", patch.body))
}

fn is_status_patch(s: &Seen) -> bool {
    s.method == "PATCH" && s.path == format!("/api/v1/nodes/{NODE}/status")
}

fn is_event_post(s: &Seen) -> bool {
    s.method == "POST" && s.path == "/api/v1/namespaces/default/events"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_waits_for_the_node_then_patches_only_kelsons_conditions_and_posts_events() {
    let pki = pki();
    let server = FakeApiServer::start(&pki, 3).await;
    let (pods_tx, pods_rx) =
        watch::channel(PodsStatus { pods: vec![running_pod("etcd"), running_pod("kube-apiserver")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let reporter = Reporter::new(config(&pki, &server.url)).expect("reporter");
    let task = tokio::spawn(reporter.run(pods_rx, async {
        let _ = stopped.await;
    }));

    let seen = server
        .wait_for("a status patch and two Started events", |seen| {
            seen.iter().any(is_status_patch) && seen.iter().filter(|s| is_event_post(s)).count() >= 2
        })
        .await;

    // Every request came over TLS with the node's certificate.
    for s in &seen {
        assert_eq!(s.client_cert.as_deref(), Some(pki.client_cert_der.as_slice()), "{} {}", s.method, s.path);
    }
    // It asked for the Node until it existed, and wrote nothing before.
    let first_found =
        seen.iter().position(|s| s.method == "GET" && s.status == 200).expect("a GET that found the Node");
    assert_eq!(seen.iter().filter(|s| s.method == "GET" && s.status == 404).count(), 3);
    assert!(seen[..first_found].iter().all(|s| s.method == "GET"), "{seen:#?}");

    let patch = seen.iter().find(|s| is_status_patch(s)).expect("status patch");
    assert_eq!(patch.content_type.as_deref(), Some("application/strategic-merge-patch+json"));
    let types: Vec<&str> = patch.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["KelsonStaticPodsHealthy", "KelsonEtcdHealthy"], "only Kelson's conditions: {:#}", patch.body);
    assert_eq!(patch.body.as_object().map(|o| o.len()), Some(1), "only status: {:#}", patch.body);
    let pods = condition(patch, "KelsonStaticPodsHealthy");
    assert_eq!(pods["status"], "True");
    assert_eq!(pods["message"], "etcd-n1 running ready (restarts 0); kube-apiserver-n1 running ready (restarts 0)");
    // Still True as the Node already said: its transition time is kept.
    assert_eq!(pods["lastTransitionTime"], "2025-06-01T12:00:00Z");
    assert_eq!(condition(patch, "KelsonEtcdHealthy")["status"], "True");

    let posts: Vec<&Seen> = seen.iter().filter(|s| is_event_post(s)).collect();
    let event = &posts[0].body;
    assert_eq!(event["involvedObject"], json!({"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}));
    assert_eq!(event["source"], json!({"component": "kelson-init", "host": NODE}));
    assert_eq!(event["metadata"]["namespace"], "default");
    assert_eq!((&event["type"], &event["reason"]), (&json!("Normal"), &json!("Started")));
    let messages: Vec<&str> = posts.iter().filter_map(|p| p.body["message"].as_str()).collect();
    assert_eq!(
        messages,
        [
            "Started container etcd of static pod kube-system/etcd-n1",
            "Started container kube-apiserver of static pod kube-system/kube-apiserver-n1"
        ]
    );

    // kill -9 of the API server, and its restart.
    let before = server.seen().len();
    pods_tx.send_modify(|status| {
        let pod = &mut status.pods[1];
        let c = pod.container_mut("kube-apiserver").expect("container");
        c.set_terminated(Exit::Signal(9), false, SystemTime::now(), None);
        c.set_running(SystemTime::now());
        pod.update_phase(RestartPolicy::Always);
    });
    let seen = server
        .wait_for("a Restarted event and the patch after it", |seen| {
            let new = &seen[before.min(seen.len())..];
            new.iter().any(|s| is_event_post(s) && s.body["reason"] == "Restarted") && new.iter().any(is_status_patch)
        })
        .await;
    let new = &seen[before..];
    let restarted = new.iter().find(|s| is_event_post(s) && s.body["reason"] == "Restarted").expect("Restarted event");
    assert_eq!(restarted.body["type"], "Warning");
    assert_eq!(
        restarted.body["message"],
        "Restarted container kube-apiserver of static pod kube-system/kube-apiserver-n1 (restart count 1); \
         last run ended: Error, exit code 137 (signal 9)"
    );
    let patch = new.iter().find(|s| is_status_patch(s)).expect("status patch");
    let pods = condition(patch, "KelsonStaticPodsHealthy");
    assert_eq!(pods["status"], "False", "running but not yet ready again: {pods:#}");
    assert_eq!(pods["message"], "etcd-n1 running ready (restarts 0); kube-apiserver-n1 running not ready (restarts 1)");
    assert_ne!(pods["lastTransitionTime"], "2025-06-01T12:00:00Z", "the status changed");

    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops on shutdown").expect("reporter task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_event_within_ten_minutes_bumps_the_count_of_the_first() {
    let pki = pki();
    let server = FakeApiServer::start(&pki, 0).await;
    let (pods_tx, pods_rx) = watch::channel(PodsStatus { pods: vec![running_pod("etcd")] });
    let (stop, stopped) = oneshot::channel::<()>();
    let reporter = Reporter::new(config(&pki, &server.url)).expect("reporter");
    let task = tokio::spawn(reporter.run(pods_rx, async {
        let _ = stopped.await;
    }));
    let patches = |seen: &[Seen]| seen.iter().filter(|s| is_status_patch(s)).count();
    let mut expected = 1;
    server.wait_for("the first status patch", |seen| patches(seen) >= expected).await;
    // Readiness lost, back, lost again: each change is one status patch;
    // the two losses are the same event.
    for ready in [false, true, false] {
        pods_tx.send_modify(|status| {
            status.pods[0].container_mut("etcd").expect("container").set_probed(true, ready);
            status.pods[0].update_phase(RestartPolicy::Always);
        });
        expected += 1;
        server.wait_for("a status patch for the readiness change", |seen| patches(seen) >= expected).await;
    }
    let seen = server
        .wait_for("the repeated Unhealthy event", |seen| {
            seen.iter().any(|s| s.method == "PATCH" && s.path.starts_with("/api/v1/namespaces/default/events/"))
        })
        .await;
    let unhealthy: Vec<&Seen> = seen.iter().filter(|s| is_event_post(s) && s.body["reason"] == "Unhealthy").collect();
    assert_eq!(unhealthy.len(), 1, "posted once: {seen:#?}");
    let name = unhealthy[0].body["metadata"]["name"].as_str().expect("event name");
    assert!(name.starts_with("n1."), "{name}");
    let bump = seen.iter().find(|s| s.method == "PATCH" && s.path.contains("/events/")).expect("event patch");
    assert_eq!(bump.path, format!("/api/v1/namespaces/default/events/{name}"));
    assert_eq!(bump.body["count"], 2);
    assert!(bump.body["lastTimestamp"].is_string(), "{:#}", bump.body);

    stop.send(()).expect("reporter still running");
    tokio::time::timeout(PATIENCE, task).await.expect("reporter stops on shutdown").expect("reporter task");
}

#[test]
fn the_key_never_shows_in_debug_output_or_errors() {
    let secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRET!KEY*MATERIAL\n-----END PRIVATE KEY-----\n";
    let pki = pki();
    let mut config = config(&pki, "https://127.0.0.1:6443");
    config.key_pem = secret.as_bytes().to_vec();
    assert!(!format!("{config:?}").contains("TOPSECRET"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = runtime.enter();
    let error = Reporter::new(config).err().expect("a malformed key is refused");
    let text = error.to_string();
    assert!(text.starts_with("reading the node's client key: "), "{text}");
    assert!(!text.contains("TOPSECRET"), "{text}");
}

#[test]
fn a_pem_without_a_certificate_is_refused_naming_which() {
    let pki = pki();
    let mut config = config(&pki, "https://127.0.0.1:6443");
    config.ca_pem = b"not a certificate".to_vec();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _guard = runtime.enter();
    let error = Reporter::new(config).err().expect("refused");
    assert_eq!(error.to_string(), "reading the cluster CA: no CERTIFICATE block in the PEM");
}
