//! A plain client of the API for tests and benchmarks: TLS 1.3 with an
//! optional client certificate, one connection speaking HTTP/1.1 or HTTP/2
//! as ALPN chose. Not kelsonctl's client: no retries, no error wording,
//! nothing but the connection, so what is measured is the server.

use super::ClientCert;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why a client could not be set up, connect or send. No variant holds key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the CA certificates from PEM")]
    CaPem(#[source] rustls::pki_types::pem::Error),
    #[error("adding a CA certificate to the client's trust store")]
    CaCertificate(#[source] rustls::Error),
    #[error("reading the client certificate from PEM")]
    CertPem(#[source] rustls::pki_types::pem::Error),
    #[error("reading the client private key from PEM")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    #[error("building the TLS 1.3 client config")]
    Config(#[source] rustls::Error),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("connecting to {0}")]
    Connect(SocketAddr, #[source] std::io::Error),
    #[error("TLS handshake with {0}")]
    Handshake(SocketAddr, #[source] std::io::Error),
    #[error("starting HTTP on the connection to {0}")]
    Http(SocketAddr, #[source] hyper::Error),
    #[error("building the request for {0}")]
    Request(String, #[source] hyper::http::Error),
    #[error("sending {0}")]
    Send(String, #[source] hyper::Error),
}

/// The TLS side of a client, built once and used for any number of
/// connections (so a connection pays for its handshake, not for parsing
/// PEM).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts `ca_pem`, presents `client` (no certificate when `None`),
    /// expects the server's certificate to name `server_name` (a DNS name
    /// or an IP address), offers the protocols `alpn` in that order.
    pub fn new(
        ca_pem: &str,
        client: Option<&ClientCert>,
        server_name: &str,
        alpn: &[&str],
    ) -> Result<ClientTls, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.map_err(ClientError::CaPem)?).map_err(ClientError::CaCertificate)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ClientError::Config)?
            .with_root_certificates(roots);
        let mut config = match client {
            Some(client) => {
                let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ClientError::CertPem)?;
                let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).map_err(ClientError::KeyPem)?;
                builder.with_client_auth_cert(chain, key).map_err(ClientError::Config)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::ServerName(server_name.to_owned()))?;
        Ok(ClientTls { config: Arc::new(config), server_name })
    }

    /// The same, never resuming a TLS session: every connection makes a
    /// full handshake, certificates and all (as a new kelsonctl process
    /// does). By default a session ticket from an earlier connection is
    /// used when the server gave one.
    pub fn without_resumption(mut self) -> ClientTls {
        Arc::make_mut(&mut self.config).resumption = rustls::client::Resumption::disabled();
        self
    }

    /// A new connection to `addr`: TCP, the TLS handshake, and HTTP/2 when
    /// the server chose `h2`, else HTTP/1.1.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, ClientError> {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|error| ClientError::Connect(addr, error))?;
        // Requests are small and answered at once; Nagle would hold them.
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|error| ClientError::Handshake(addr, error))?;
        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let io = TokioIo::new(tls);
        if is_h2 {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|error| ClientError::Http(addr, error))?;
            let task = Arc::new(Driver(tokio::spawn(async move {
                let _ = connection.await;
            })));
            Ok(Connection { sender: Sender::Http2(sender), protocol: "h2", resumed, driver: task })
        } else {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(io).await.map_err(|error| ClientError::Http(addr, error))?;
            let task = Arc::new(Driver(tokio::spawn(async move {
                let _ = connection.await;
            })));
            Ok(Connection { sender: Sender::Http1(sender), protocol: "http/1.1", resumed, driver: task })
        }
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// The task that drives a connection's I/O; the connection closes when the
/// last handle to it is dropped.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client connection; dropping it (and every [`Connection::share`]d
/// handle) closes it.
pub struct Connection {
    sender: Sender,
    /// `h2` or `http/1.1`.
    pub protocol: &'static str,
    /// The handshake resumed an earlier session (no certificates sent).
    pub resumed: bool,
    driver: Arc<Driver>,
}

impl Connection {
    /// Another handle to this HTTP/2 connection, whose requests are
    /// multiplexed with this one's; `None` on HTTP/1.1 (one request at a
    /// time).
    pub fn share(&self) -> Option<Connection> {
        match &self.sender {
            Sender::Http2(sender) => Some(Connection {
                sender: Sender::Http2(sender.clone()),
                protocol: self.protocol,
                resumed: self.resumed,
                driver: self.driver.clone(),
            }),
            Sender::Http1(_) => None,
        }
    }

    /// Sends one request for `path` (with its query) and answers with the
    /// response once its head is in; the body streams.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut request = Request::builder().method(method);
        request = match self.sender {
            Sender::Http1(_) => request.uri(path).header(hyper::header::HOST, "127.0.0.1"),
            Sender::Http2(_) => request.uri(format!("https://127.0.0.1{path}")),
        };
        let request =
            request.body(Full::new(body.into())).map_err(|error| ClientError::Request(path.to_owned(), error))?;
        // An HTTP/1.1 connection takes the next request only once its
        // driver has seen the last answer's end, which can be a moment after
        // the caller read it: waiting for ready avoids "connection was not
        // ready" under load.
        let sent = match &mut self.sender {
            Sender::Http1(sender) => match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(error) => Err(error),
            },
            Sender::Http2(sender) => match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(error) => Err(error),
            },
        };
        sent.map_err(|error| ClientError::Send(path.to_owned(), error))
    }
}
