//! Probe attempts over the network: `tcpSocket` connects, `httpGet` sends
//! one HTTP/1.0 GET and reads the status line (200-399 passes, as the
//! kubelet counts). HTTPS is TLS without certificate checks, as the
//! kubelet's prober does (control-plane pods probe their own self-signed
//! serving certificates). `exec` probes need a process in the container,
//! which only the node can start: PID 1's prober (`init/src/pod_runtime.rs`)
//! runs them and hands the rest to this one.

use super::Prober;
use crate::spec::{HttpScheme, ProbeAction};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct NetProber {
    tls: Arc<ClientConfig>,
}

impl Default for NetProber {
    fn default() -> Self {
        NetProber::new()
    }
}

impl NetProber {
    pub fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone());
        // The ring provider supports the default protocol versions, so
        // this cannot fail; TLS 1.2 alone is the fallback anyway.
        let builder = builder.with_safe_default_protocol_versions().or_else(|_| {
            ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&[&rustls::version::TLS12])
        });
        let tls = match builder {
            Ok(builder) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            Err(_) => ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))))
                .with_no_client_auth(),
        };
        NetProber { tls: Arc::new(tls) }
    }
}

/// Accepts any server certificate (signatures are still checked, so the
/// handshake is real), as the kubelet's `InsecureSkipVerify` prober does.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Prober for NetProber {
    async fn probe(&self, action: &ProbeAction, default_host: &str, timeout: Duration) -> Result<(), String> {
        let attempt = async {
            match action {
                ProbeAction::TcpSocket { host, port } => {
                    let host = host.as_deref().unwrap_or(default_host);
                    TcpStream::connect((host, *port)).await.map(drop).map_err(|e| format!("tcp {host}:{port}: {e}"))
                }
                ProbeAction::HttpGet { host, port, path, headers, scheme } => {
                    let host = host.as_deref().unwrap_or(default_host);
                    let url = format!(
                        "{}://{host}:{port}{path}",
                        if *scheme == HttpScheme::Https { "https" } else { "http" }
                    );
                    let stream = TcpStream::connect((host, *port)).await.map_err(|e| format!("GET {url}: {e}"))?;
                    if *scheme == HttpScheme::Http {
                        return http_get(stream, &url, host, *port, path, headers).await;
                    }
                    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("GET {url}: {e}"))?;
                    let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|e| format!("GET {url}: TLS handshake: {e}"))?;
                    http_get(tls, &url, host, *port, path, headers).await
                }
                ProbeAction::Exec { .. } => Err("exec probes are not supported by Kelson's prober".to_owned()),
            }
        };
        tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }
}

async fn http_get(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    url: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let mut request = format!(
        "GET {} HTTP/1.0\r\nUser-Agent: kube-probe/kelson\r\nAccept: */*\r\n",
        if path.is_empty() { "/" } else { path }
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {url}: {e}"))?;
    stream.flush().await.map_err(|e| format!("GET {url}: {e}"))?;
    // The status line is all a probe needs.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("GET {url}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {url}: not an HTTP response: {:?}", line.lines().next().unwrap_or("")))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET {url}: status {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        port
    }

    fn http(port: u16) -> ProbeAction {
        ProbeAction::HttpGet { host: None, port, path: "/healthz".into(), scheme: HttpScheme::Http, headers: vec![] }
    }

    #[tokio::test]
    async fn http_probes_pass_on_2xx_and_3xx_and_fail_otherwise() {
        let ok = serve("HTTP/1.1 200 OK\r\n\r\nok").await;
        let redirect = serve("HTTP/1.0 302 Found\r\n\r\n").await;
        let bad = serve("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let t = Duration::from_secs(2);
        assert_eq!(NetProber::new().probe(&http(ok), "127.0.0.1", t).await, Ok(()));
        assert_eq!(NetProber::new().probe(&http(redirect), "127.0.0.1", t).await, Ok(()));
        let error = NetProber::new().probe(&http(bad), "127.0.0.1", t).await.unwrap_err();
        assert!(error.contains("status 500"), "{error}");
    }

    #[tokio::test]
    async fn tcp_probes_pass_when_something_listens() {
        let port = serve("").await;
        let t = Duration::from_secs(2);
        assert_eq!(NetProber::new().probe(&ProbeAction::TcpSocket { host: None, port }, "127.0.0.1", t).await, Ok(()));
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        assert!(NetProber::new()
            .probe(&ProbeAction::TcpSocket { host: None, port: closed }, "127.0.0.1", t)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn https_probes_accept_a_self_signed_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\n\r\nok").await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        let action = ProbeAction::HttpGet {
            host: None,
            port,
            path: "/livez".into(),
            scheme: HttpScheme::Https,
            headers: vec![],
        };
        assert_eq!(NetProber::new().probe(&action, "127.0.0.1", Duration::from_secs(5)).await, Ok(()));
        let plain =
            ProbeAction::HttpGet { host: None, port, path: "/livez".into(), scheme: HttpScheme::Http, headers: vec![] };
        assert!(
            NetProber::new().probe(&plain, "127.0.0.1", Duration::from_secs(2)).await.is_err(),
            "plain HTTP to a TLS port fails"
        );
    }

    #[tokio::test]
    async fn exec_says_it_is_unsupported() {
        let t = Duration::from_secs(1);
        let error = NetProber::new()
            .probe(&ProbeAction::Exec { command: vec!["true".into()] }, "127.0.0.1", t)
            .await
            .unwrap_err();
        assert!(error.contains("not supported"));
    }
}
