//! A served FakeNode on 127.0.0.1 and a hyper client over tokio-rustls.
#![allow(dead_code)]
// Test set-up: a failure here is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kelson_api::fake::{ClientCert, FakeNode, TestPki};
use kelson_api::{serve, ServerSettings, TlsMaterial};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Server {
    pub addr: SocketAddr,
    pub node: Arc<FakeNode>,
    pub pki: TestPki,
    pub tls: watch::Sender<Option<TlsMaterial>>,
    pub audit_log: PathBuf,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> Server {
    start_with(Arc::new(FakeNode::new())).await
}

pub async fn start_with(node: Arc<FakeNode>) -> Server {
    let pki = TestPki::generate("test CA").unwrap();
    let (tls, changes) = watch::channel(Some(pki.tls_material()));
    let dir = tempfile::tempdir().unwrap();
    let audit_log = dir.path().join("audit/audit.log");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = ServerSettings { audit_log: Some(audit_log.clone()) };
    let task = tokio::spawn(serve(listener, node.clone(), changes, settings));
    Server { addr, node, pki, tls, audit_log, _dir: dir, task }
}

impl Server {
    pub fn admin(&self) -> ClientCert {
        self.pki.client("alice", Some(kelson_api::ROLE_ADMIN)).unwrap()
    }

    pub fn read_only(&self) -> ClientCert {
        self.pki.client("bob", Some(kelson_api::ROLE_READ_ONLY)).unwrap()
    }

    pub async fn connect(&self, client: Option<&ClientCert>) -> anyhow::Result<Connection> {
        connect(self.addr, &self.pki.ca_pem, client, &["h2", "http/1.1"]).await
    }

    /// One request on a fresh connection; the answer's status and body.
    pub async fn request(
        &self,
        client: Option<&ClientCert>,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut connection = self.connect(client).await?;
        let response = connection.send(method, path, body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A client connection; dropping it closes the connection.
pub struct Connection {
    sender: Sender,
    pub protocol: &'static str,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut request = Request::builder().method(method);
        request = match self.sender {
            Sender::Http1(_) => request.uri(path).header(hyper::header::HOST, "127.0.0.1"),
            Sender::Http2(_) => request.uri(format!("https://127.0.0.1{path}")),
        };
        let request = request.body(Full::new(body.into()))?;
        Ok(match &mut self.sender {
            Sender::Http1(sender) => sender.send_request(request).await?,
            Sender::Http2(sender) => sender.send_request(request).await?,
        })
    }
}

/// Connects with `client`'s certificate (none when `None`), trusting
/// `ca_pem`, offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&ClientCert>,
    alpn: &[&str],
) -> anyhow::Result<Connection> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let io = TokioIo::new(tls);
    if io.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender: Sender::Http2(sender), protocol: "h2", task })
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender: Sender::Http1(sender), protocol: "http/1.1", task })
    }
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(body)))
}

/// The audit log's lines, parsed.
pub fn audit_lines(server: &Server) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&server.audit_log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
