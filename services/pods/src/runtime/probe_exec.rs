//! Probe attempts over the network: `tcpSocket` connects, `httpGet` sends
//! a plain HTTP/1.0 GET and reads the status line (200-399 passes, as the
//! kubelet counts). HTTPS and `exec` are reported as unsupported: each
//! attempt fails with a message saying so, and the status shows it.

use super::Prober;
use crate::spec::{HttpScheme, ProbeAction};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Default, Clone, Copy)]
pub struct NetProber;

impl Prober for NetProber {
    async fn probe(&self, action: &ProbeAction, default_host: &str, timeout: Duration) -> Result<(), String> {
        let attempt = async {
            match action {
                ProbeAction::TcpSocket { host, port } => {
                    let host = host.as_deref().unwrap_or(default_host);
                    TcpStream::connect((host, *port)).await.map(drop).map_err(|e| format!("tcp {host}:{port}: {e}"))
                }
                ProbeAction::HttpGet { scheme: HttpScheme::Https, .. } => Err("httpGet with scheme HTTPS is not supported by Kelson's prober".to_owned()),
                ProbeAction::HttpGet { host, port, path, headers, .. } => {
                    let host = host.as_deref().unwrap_or(default_host);
                    http_get(host, *port, path, headers).await
                }
                ProbeAction::Exec { .. } => Err("exec probes are not supported by Kelson's prober".to_owned()),
            }
        };
        tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }
}

async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut stream = TcpStream::connect((host, port)).await.map_err(|e| format!("GET {url}: {e}"))?;
    let mut request = format!("GET {} HTTP/1.0\r\nUser-Agent: kube-probe/kelson\r\nAccept: */*\r\n", if path.is_empty() { "/" } else { path });
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {url}: {e}"))?;
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
        assert_eq!(NetProber.probe(&http(ok), "127.0.0.1", t).await, Ok(()));
        assert_eq!(NetProber.probe(&http(redirect), "127.0.0.1", t).await, Ok(()));
        let error = NetProber.probe(&http(bad), "127.0.0.1", t).await.unwrap_err();
        assert!(error.contains("status 500"), "{error}");
    }

    #[tokio::test]
    async fn tcp_probes_pass_when_something_listens() {
        let port = serve("").await;
        let t = Duration::from_secs(2);
        assert_eq!(NetProber.probe(&ProbeAction::TcpSocket { host: None, port }, "127.0.0.1", t).await, Ok(()));
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        assert!(NetProber.probe(&ProbeAction::TcpSocket { host: None, port: closed }, "127.0.0.1", t).await.is_err());
    }

    #[tokio::test]
    async fn exec_and_https_say_they_are_unsupported() {
        let t = Duration::from_secs(1);
        let error = NetProber.probe(&ProbeAction::Exec { command: vec!["true".into()] }, "127.0.0.1", t).await.unwrap_err();
        assert!(error.contains("not supported"));
    }
}
