//! The management API client: one mutual-TLS connection per request
//! (TLS 1.3, ALPN h2 then http/1.1), the node verified by its name against
//! the kelsonconfig's CA alone.

use super::config::{KelsonConfig, NodeEntry};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kelson_api::types::{ErrorBody, LogLine};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// TCP connect and TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request and its answer, except streams, uploads and snapshots.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type RequestBody = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("reading the CA certificate of the kelsonconfig")]
    Ca(#[source] rustls::pki_types::pem::Error),
    #[error("the kelsonconfig's CA certificate is not usable")]
    CaRejected(#[source] rustls::Error),
    #[error("reading the client certificate of the kelsonconfig")]
    Certificate(#[source] rustls::pki_types::pem::Error),
    // The key's text never goes into the message, only that it did not read.
    #[error("reading the client key of the kelsonconfig")]
    Key(#[source] rustls::pki_types::pem::Error),
    #[error("the kelsonconfig's client certificate and key do not go together")]
    Identity(#[source] rustls::Error),
    #[error("setting up TLS 1.3")]
    Protocol(#[source] rustls::Error),
}

/// What went wrong with a TLS connection, in an operator's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    #[error("the node's certificate is not signed by this config's CA")]
    UnknownIssuer,
    #[error("the node's certificate is not issued to node name {0} (is the endpoint another node's?)")]
    WrongName(String),
    #[error("the node's certificate has expired (or this machine's clock is wrong)")]
    Expired,
    #[error("the node's certificate is not valid yet (check this machine's and the node's clocks)")]
    NotYetValid,
    #[error("the node refused this config's client certificate (signed by another CA, or expired)")]
    ClientRefused,
    #[error("the node does not speak TLS 1.3")]
    Version,
    #[error("the endpoint did not answer in TLS (is it a Kelson node's port 50000?)")]
    NotTls,
    #[error("TLS failed: {0}")]
    Other(String),
}

/// Why one request to one node failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("connecting")]
    Connect(#[source] std::io::Error),
    #[error("connecting: no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error(transparent)]
    Tls(#[from] TlsProblem),
    #[error("the connection failed")]
    Http(#[source] hyper::Error),
    #[error("no complete answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("{}", status_text(*.status, .code, .message, .identity))]
    Status { status: StatusCode, code: String, message: String, identity: String },
    /// 422 on a config apply: the body, with the problems.
    #[error("the config was rejected with {} problem(s)", .0.problems.len())]
    Rejected(Box<kelson_api::types::ApplyResult>),
    #[error("reading the answer")]
    Decode(#[source] serde_json::Error),
    #[error("encoding the request")]
    Encode(#[source] serde_json::Error),
    #[error("building the request")]
    Build(#[source] hyper::http::Error),
    #[error("node name {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("{action} {}", .path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn status_text(status: StatusCode, code: &str, message: &str, identity: &str) -> String {
    let mut text = format!("{status}");
    if !code.is_empty() {
        text += &format!(" ({code})");
    }
    if !message.is_empty() {
        text += &format!(": {message}");
    }
    if status == StatusCode::FORBIDDEN {
        text += &format!(" (this kelsonconfig's client certificate is {identity})");
    }
    text
}

/// Classifies a transport failure: the first rustls error in the chain,
/// whether bare or inside an `io::Error`, in words.
pub fn tls_problem(error: &(dyn StdError + 'static), server_name: &str) -> Option<TlsProblem> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(err) = current {
        let rustls_error = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref())
        });
        if let Some(rustls_error) = rustls_error {
            return Some(describe_tls(rustls_error, server_name));
        }
        current = err.source();
    }
    None
}

fn describe_tls(error: &rustls::Error, server_name: &str) -> TlsProblem {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    match error {
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => TlsProblem::UnknownIssuer,
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            TlsProblem::WrongName(server_name.to_owned())
        }
        Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => TlsProblem::Expired,
        Error::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => TlsProblem::NotYetValid,
        Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::AccessDenied
            | Alert::DecryptError,
        ) => TlsProblem::ClientRefused,
        Error::AlertReceived(Alert::ProtocolVersion) | Error::PeerIncompatible(_) => TlsProblem::Version,
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            TlsProblem::NotTls
        }
        other => TlsProblem::Other(other.to_string()),
    }
}

/// The TLS settings of a kelsonconfig, shared by every node's requests.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    identity: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// `CN=…, O=…` of a PEM certificate, for messages; the config's client name
/// if it does not parse (the TLS setup reports that).
fn subject_of(pem: &str, fallback: &str) -> String {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, pem)| pem.parse_x509().ok().map(|cert| cert.subject().to_string()))
        .unwrap_or_else(|| format!("CN={fallback}"))
}

impl Client {
    pub fn new(config: &KelsonConfig) -> Result<Self, ClientSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(config.ca.as_bytes()) {
            roots.add(ca.map_err(ClientSetupError::Ca)?).map_err(ClientSetupError::CaRejected)?;
        }
        if roots.is_empty() {
            return Err(ClientSetupError::Ca(rustls::pki_types::pem::Error::NoItemsFound));
        }
        let chain = CertificateDer::pem_slice_iter(config.client.certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientSetupError::Certificate)?;
        let key = PrivateKeyDer::from_pem_slice(config.client.key.as_bytes()).map_err(ClientSetupError::Key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(ClientSetupError::Protocol)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(ClientSetupError::Identity)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let identity = subject_of(&config.client.certificate, &config.client.name);
        Ok(Client { tls: Arc::new(tls), identity })
    }

    pub fn node(&self, node: &NodeEntry) -> NodeClient {
        NodeClient { node: node.clone(), client: self.clone() }
    }
}

/// Requests to one node.
#[derive(Debug, Clone)]
pub struct NodeClient {
    node: NodeEntry,
    client: Client,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<RequestBody>),
    Http2(hyper::client::conn::http2::SendRequest<RequestBody>),
}

fn empty_body() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn json_body<B: Serialize>(body: &B) -> Result<RequestBody, RequestError> {
    let bytes = serde_json::to_vec(body).map_err(RequestError::Encode)?;
    Ok(Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed())
}

impl NodeClient {
    pub fn node(&self) -> &NodeEntry {
        &self.node
    }

    async fn connect(&self) -> Result<(Sender, tokio::task::JoinHandle<Result<(), hyper::Error>>), RequestError> {
        let server_name = ServerName::try_from(self.node.name.clone())
            .map_err(|_| RequestError::ServerName(self.node.name.clone()))?;
        let connector = tokio_rustls::TlsConnector::from(self.client.tls.clone());
        let handshake = async {
            let tcp = TcpStream::connect(&self.node.endpoint).await.map_err(RequestError::Connect)?;
            let _ = tcp.set_nodelay(true);
            connector.connect(server_name, tcp).await.map_err(|e| match tls_problem(&e, &self.node.name) {
                Some(problem) => RequestError::Tls(problem),
                None => RequestError::Connect(e),
            })
        };
        let tls =
            tokio::time::timeout(CONNECT_TIMEOUT, handshake).await.map_err(|_| RequestError::ConnectTimeout)??;
        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if is_h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| self.transport(e))?;
            Ok((Sender::Http2(sender), tokio::spawn(connection)))
        } else {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(io).await.map_err(|e| self.transport(e))?;
            Ok((Sender::Http1(sender), tokio::spawn(connection)))
        }
    }

    /// Why the node closed a connection it had accepted, if a TLS alert
    /// says so. In TLS 1.3 a node checks the client certificate after the
    /// client's handshake is done, so a refusal arrives as an alert on the
    /// first read; a request that wrote first sees only a broken pipe. A
    /// fresh connection that only reads gets the alert itself.
    async fn probe_for_alert(&self) -> Option<TlsProblem> {
        let probe = async {
            let server_name = ServerName::try_from(self.node.name.clone()).ok()?;
            let connector = tokio_rustls::TlsConnector::from(self.client.tls.clone());
            let tcp = TcpStream::connect(&self.node.endpoint).await.ok()?;
            let mut tls = connector.connect(server_name, tcp).await.ok()?;
            let mut buffer = [0u8; 64];
            match tls.read(&mut buffer).await {
                Err(error) => tls_problem(&error, &self.node.name),
                Ok(_) => None,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, probe).await.ok().flatten()
    }

    fn transport(&self, error: hyper::Error) -> RequestError {
        match tls_problem(&error, &self.node.name) {
            Some(problem) => RequestError::Tls(problem),
            None => RequestError::Http(error),
        }
    }

    /// Sends one request on a fresh connection; answers with the response
    /// if its status is a success, else the error the body describes.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        content: Option<(&str, Option<u64>)>,
    ) -> Result<Response<Incoming>, RequestError> {
        let (sender, connection) = self.connect().await?;
        let mut request = Request::builder().method(method);
        request = match &sender {
            Sender::Http2(_) => request.uri(format!("https://{}{path}", self.node.name)),
            Sender::Http1(_) => request.uri(path).header(hyper::header::HOST, self.node.name.as_str()),
        };
        if let Some((content_type, length)) = content {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
            if let Some(length) = length {
                request = request.header(hyper::header::CONTENT_LENGTH, length);
            }
        }
        let request = request.body(body).map_err(RequestError::Build)?;
        let sent = match sender {
            Sender::Http1(mut sender) => sender.send_request(request).await,
            Sender::Http2(mut sender) => sender.send_request(request).await,
        };
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                // The connection's own error says more (a TLS alert the node
                // sent after the handshake: TLS 1.3 checks client
                // certificates then).
                if let Ok(Ok(Err(connection_error))) = tokio::time::timeout(Duration::from_secs(1), connection).await {
                    if let Some(problem) = tls_problem(&connection_error, &self.node.name) {
                        return Err(RequestError::Tls(problem));
                    }
                }
                if let Some(problem) = self.probe_for_alert().await {
                    return Err(RequestError::Tls(problem));
                }
                return Err(self.transport(error));
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = self.read_all(response.into_body()).await?;
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            if let Ok(result) = serde_json::from_slice::<kelson_api::types::ApplyResult>(&bytes) {
                return Err(RequestError::Rejected(Box::new(result)));
            }
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.code, body.message),
            Err(_) => (String::new(), String::from_utf8_lossy(&bytes).trim().to_owned()),
        };
        Err(RequestError::Status { status, code, message, identity: self.client.identity.clone() })
    }

    async fn read_all(&self, body: Incoming) -> Result<Bytes, RequestError> {
        body.collect().await.map(|collected| collected.to_bytes()).map_err(|e| self.transport(e))
    }

    async fn json_request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        is_json: bool,
    ) -> Result<T, RequestError> {
        let exchange = async {
            let content = is_json.then_some(("application/json", None));
            let response = self.send(method, path, body, content).await?;
            let bytes = self.read_all(response.into_body()).await?;
            serde_json::from_slice(&bytes).map_err(RequestError::Decode)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| RequestError::Timeout)?
    }

    /// `GET path`, the answer decoded from JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        self.json_request(Method::GET, path, empty_body(), false).await
    }

    /// `POST path` with a JSON body (or none), the answer decoded from JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, RequestError> {
        match body {
            Some(body) => self.json_request(Method::POST, path, json_body(body)?, true).await,
            None => self.json_request(Method::POST, path, empty_body(), false).await,
        }
    }

    /// `GET path` answered with NDJSON log lines, read as they come.
    pub async fn log_lines(&self, path: &str) -> Result<LogLines, RequestError> {
        let response = self.send(Method::GET, path, empty_body(), None).await?;
        Ok(LogLines { body: response.into_body(), pending: Vec::new(), client: self.clone() })
    }

    /// `GET path` into `destination`: written to `destination.partial`,
    /// renamed when the whole answer is in; the partial file is removed on
    /// failure. Answers with the bytes written.
    pub async fn download(&self, path: &str, destination: &Path) -> Result<u64, RequestError> {
        let mut partial = destination.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let result = self.download_to(path, &partial).await;
        match result {
            Ok(bytes) => {
                tokio::fs::rename(&partial, destination).await.map_err(|source| RequestError::File {
                    action: "renaming the finished download to",
                    path: destination.to_owned(),
                    source,
                })?;
                Ok(bytes)
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(error)
            }
        }
    }

    async fn download_to(&self, path: &str, partial: &Path) -> Result<u64, RequestError> {
        let file_error = |action: &'static str| {
            let path = partial.to_owned();
            move |source| RequestError::File { action, path, source }
        };
        let response = self.send(Method::GET, path, empty_body(), None).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(partial)
            .await
            .map_err(file_error("creating"))?;
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.transport(e))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).await.map_err(file_error("writing"))?;
                written += data.len() as u64;
            }
        }
        file.sync_all().await.map_err(file_error("syncing"))?;
        Ok(written)
    }

    /// `POST path` with `file` as the body, streamed; the answer decoded
    /// from JSON.
    pub async fn upload<T: DeserializeOwned>(&self, path: &str, file: &Path) -> Result<T, RequestError> {
        let file_error =
            |action: &'static str| move |source| RequestError::File { action, path: file.to_owned(), source };
        let handle = tokio::fs::File::open(file).await.map_err(file_error("opening"))?;
        let length = handle.metadata().await.map_err(file_error("inspecting"))?.len();
        let stream = tokio_util::io::ReaderStream::new(handle).map_ok(Frame::data);
        let body = BodyExt::boxed(StreamBody::new(stream));
        let response = self.send(Method::POST, path, body, Some(("application/octet-stream", Some(length)))).await?;
        let bytes = self.read_all(response.into_body()).await?;
        serde_json::from_slice(&bytes).map_err(RequestError::Decode)
    }
}

/// A log response, line by line.
pub struct LogLines {
    body: Incoming,
    pending: Vec<u8>,
    client: NodeClient,
}

impl LogLines {
    /// The next line; `None` when the node ended the response.
    pub async fn next(&mut self) -> Result<Option<LogLine>, RequestError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map(Some).map_err(RequestError::Decode);
            }
            match self.body.frame().await {
                Some(frame) => {
                    let frame = frame.map_err(|e| self.client.transport(e))?;
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                None if self.pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => {
                    let line = std::mem::take(&mut self.pending);
                    return serde_json::from_slice(&line).map(Some).map_err(RequestError::Decode);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_inside_io_errors_are_put_in_words() {
        let unknown = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            tls_problem(&unknown, "cp1").unwrap().to_string(),
            "the node's certificate is not signed by this config's CA"
        );
        let refused = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        assert_eq!(tls_problem(&refused, "cp1"), Some(TlsProblem::ClientRefused));
        let wrong = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(
            tls_problem(&wrong, "cp1").unwrap().to_string(),
            "the node's certificate is not issued to node name cp1 (is the endpoint another node's?)"
        );
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_problem(&plain, "cp1"), None);
    }

    #[test]
    fn a_forbidden_answer_names_the_client_certificate() {
        let error = RequestError::Status {
            status: StatusCode::FORBIDDEN,
            code: "forbidden".into(),
            message: "read-only clients may not POST".into(),
            identity: "CN=read-only, O=kelson:read-only".into(),
        };
        assert_eq!(
            error.to_string(),
            "403 Forbidden (forbidden): read-only clients may not POST \
             (this kelsonconfig's client certificate is CN=read-only, O=kelson:read-only)"
        );
    }
}
