//! A served FakeNode on 127.0.0.1, reached with the fake feature's client.
#![allow(dead_code)]
// Test set-up: a failure here is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use kelson_api::fake::{ClientCert, ClientTls, Connection, FakeNode, TestPki};
use kelson_api::{serve, ServerSettings, TlsMaterial};
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

/// Connects with `client`'s certificate (none when `None`), trusting
/// `ca_pem`, offering `alpn`.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&ClientCert>,
    alpn: &[&str],
) -> anyhow::Result<Connection> {
    Ok(ClientTls::new(ca_pem, client, "127.0.0.1", alpn)?.connect(addr).await?)
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
