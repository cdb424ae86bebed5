//! NoCloud seeds from a URL (`ds=nocloud;s=URL` on the command line or in
//! the SMBIOS system serial): `URL/meta-data`, `URL/user-data` and,
//! if the server has it, `URL/network-config`, over HTTP or HTTPS (Mozilla's
//! roots) with hyper. Each request has a timeout and is retried with
//! back-off, since the seed server may come up after the node.
//!
//! Before the config is known the node has no addresses, so
//! [`with_dhcp`] first leases one on the first Ethernet link that gets an
//! answer, runs the fetch, and releases the lease again; the network stage
//! then sets the uplinks up as the fetched config says.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use kelson_config::nocloud::SeedFiles;
use kelson_net::dhcp::{self, DhcpConfig};
use kelson_net::{Netlink, RtNetlink};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::{info, warn};

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const DHCP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("fetching {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("fetching {url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("no Ethernet link got a DHCP lease within {seconds} s to fetch the seed with (tried: {tried})")]
    NoLease { seconds: u64, tried: String },
}

/// What the config stage does after trying to fetch a URL seed.
#[derive(Debug, PartialEq)]
pub enum UrlSeedDecision<T> {
    /// The fetch worked: the fetched seed is read (and, once accepted,
    /// saved in place of any saved one).
    UseFetched(T),
    /// The fetch failed but an earlier boot saved a seed: boot with that,
    /// after warning with the URL and why. An outage of the seed server
    /// must not strand a node that was configured before.
    UseSaved { warning: String },
    /// The fetch failed and no seed was ever saved: the node has never been
    /// configured and stops in maintenance with this reason.
    Stop { reason: String },
}

/// The decision over a fetch result (`Err` holds why it failed) and
/// whether a seed saved at an earlier boot exists.
pub fn decide<T>(url: &str, fetched: Result<T, String>, saved: bool) -> UrlSeedDecision<T> {
    match (fetched, saved) {
        (Ok(files), _) => UrlSeedDecision::UseFetched(files),
        (Err(why), true) => UrlSeedDecision::UseSaved {
            warning: format!(
                "the cloud-init seed at {url} could not be fetched ({why}); booting with the seed saved at an earlier boot"
            ),
        },
        (Err(why), false) => UrlSeedDecision::Stop {
            reason: format!(
                "the cloud-init seed at {url} could not be fetched ({why}) and no seed was saved at an earlier boot"
            ),
        },
    }
}

/// What saving a newly read seed does to the saved one, for the log:
/// `saved` is `None` when nothing is saved, else the saved seed's
/// instance-id (itself `None` if it had none or it was not recorded).
pub fn replacement_note(saved: Option<Option<&str>>, new: Option<&str>) -> Option<String> {
    let shown = |id: Option<&str>| id.map_or_else(|| "none".to_owned(), |id| format!("{id:?}"));
    match saved {
        None => None,
        Some(old) if old == new => {
            Some(format!("the seed has the saved seed's instance-id {}; the saved copy is refreshed", shown(new)))
        }
        Some(old) => {
            Some(format!("the seed (instance-id {}) replaces the saved one (instance-id {})", shown(new), shown(old)))
        }
    }
}

/// One GET; `Ok(None)` for a 404.
async fn get_once(uri: &Uri, tls: &tokio_rustls::TlsConnector) -> Result<Option<Vec<u8>>, String> {
    let host = uri.host().ok_or("no host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host.as_str())
        .header(hyper::header::USER_AGENT, concat!("kelson-init/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = if https {
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("server name {host}: {e}"))?;
        let stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    match response.status().as_u16() {
        200 => {
            let body = response.into_body().collect().await.map_err(|e| format!("reading the body: {e}"))?;
            Ok(Some(body.to_bytes().to_vec()))
        }
        404 => Ok(None),
        other => Err(format!("status {other}")),
    }
}

async fn send<S>(
    io: TokioIo<S>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(|e| format!("sending the request: {e}"))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(config) => tokio_rustls::TlsConnector::from(Arc::new(config)),
        // The ring provider supports the default versions; this cannot
        // happen, but a seed fetch must not bring PID 1 down if it does.
        Err(_) => tokio_rustls::TlsConnector::from(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )),
    }
}

/// GET with a timeout per attempt and back-off between attempts. A 404 is
/// an answer, not a failure, and is not retried.
async fn get(url: &str, tls: &tokio_rustls::TlsConnector, attempts: u32) -> Result<Option<Vec<u8>>, FetchError> {
    let uri: Uri = url.parse().map_err(|_| FetchError::BadUrl { url: url.to_owned() })?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Err(FetchError::BadUrl { url: url.to_owned() });
    }
    let mut wait = FIRST_RETRY;
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        match tokio::time::timeout(REQUEST_TIMEOUT, get_once(&uri, tls)).await {
            Ok(Ok(body)) => return Ok(body),
            Ok(Err(reason)) if reason.starts_with("status ") => {
                let status = reason.trim_start_matches("status ").parse().unwrap_or(0);
                return Err(FetchError::Status { url: url.to_owned(), status });
            }
            Ok(Err(reason)) => last = reason,
            Err(_) => last = format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
        }
        if attempt < attempts {
            warn!(url, attempt, error = last.as_str(), "seed fetch failed; retrying");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(FetchError::Request { url: url.to_owned(), reason: last })
}

/// Fetches a seed's files from `base` (a trailing `/` is added if missing,
/// as cloud-init expects a directory URL).
pub async fn fetch_seed(base: &str, attempts: u32) -> Result<SeedFiles, FetchError> {
    let base = if base.ends_with('/') { base.to_owned() } else { format!("{base}/") };
    let tls = tls_connector();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let meta_url = format!("{base}meta-data");
    let meta_data = get(&meta_url, &tls, attempts).await?.ok_or(FetchError::Status { url: meta_url, status: 404 })?;
    let user_data = get(&format!("{base}user-data"), &tls, attempts).await?;
    let network_config = get(&format!("{base}network-config"), &tls, attempts).await?;
    Ok(SeedFiles {
        origin: base,
        meta_data: Some(text(meta_data)),
        user_data: user_data.map(text),
        network_config: network_config.map(text),
    })
}

/// Leases an address on the first Ethernet link that gets one, runs
/// `work`, then releases the lease.
pub async fn with_dhcp<T, F: std::future::Future<Output = T>>(work: impl FnOnce() -> F) -> Result<T, FetchError> {
    let netlink = RtNetlink::open().map_err(|e| FetchError::NoLease { seconds: 0, tried: format!("netlink: {e}") })?;
    let links = netlink.links().await.unwrap_or_default();
    let candidates: Vec<_> =
        links.into_iter().filter(|l| l.kind.is_none() && l.mac.is_some() && l.name != "lo").collect();
    let mut tried = Vec::new();
    for link in candidates {
        tried.push(link.name.clone());
        let _ = netlink.set_up(link.index).await;
        let name = link.name.clone();
        let config = DhcpConfig { link, resolv_conf: Some("/etc/resolv.conf".into()), fixed_mtu: None, hostname: None };
        let Ok(handle) = dhcp::spawn(netlink.clone(), config) else { continue };
        let mut status = handle.watch();
        // The borrow `wait_for` returns must end here: held, it would block
        // the client's next status update, and the client with it.
        let bound =
            matches!(tokio::time::timeout(DHCP_TIMEOUT, status.wait_for(|s| s.state == "bound")).await, Ok(Ok(_)));
        if bound {
            let address = handle.status().lease.map(|l| l.address.to_string()).unwrap_or_default();
            info!(link = name.as_str(), address = address.as_str(), "DHCP lease taken to fetch the seed");
            let result = work().await;
            handle.release().await;
            return Ok(result);
        }
        handle.release().await;
    }
    Err(FetchError::NoLease { seconds: DHCP_TIMEOUT.as_secs(), tried: tried.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny HTTP/1.1 server on loopback: path → body; other paths 404.
    /// The first `refuse` connections are closed without an answer.
    async fn serve(files: HashMap<&'static str, &'static str>, refuse: u32) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let len = stream.read(&mut buf).await.unwrap_or(0);
                if n < refuse {
                    continue;
                }
                let request = String::from_utf8_lossy(&buf[..len]).into_owned();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let response = match files.get(path.as_str()) {
                    Some(body) => {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    }
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (format!("http://127.0.0.1:{port}/seed"), hits)
    }

    #[tokio::test]
    async fn the_three_files_are_fetched_and_a_missing_network_config_is_none() {
        let files = HashMap::from([
            ("/seed/meta-data", "instance-id: url-1\n"),
            ("/seed/user-data", "#cloud-config\nhostname: web\n"),
        ]);
        let (base, _) = serve(files, 0).await;
        let seed = fetch_seed(&base, 1).await.unwrap();
        assert_eq!(seed.meta_data.as_deref(), Some("instance-id: url-1\n"));
        assert_eq!(seed.user_data.as_deref(), Some("#cloud-config\nhostname: web\n"));
        assert_eq!(seed.network_config, None);
        assert_eq!(seed.origin, format!("{base}/"));
    }

    #[tokio::test]
    async fn a_server_that_fails_at_first_is_retried() {
        let files = HashMap::from([("/seed/meta-data", "instance-id: x\n")]);
        let (base, hits) = serve(files, 2).await;
        let seed = fetch_seed(&base, 4).await.unwrap();
        assert_eq!(seed.meta_data.as_deref(), Some("instance-id: x\n"));
        assert!(hits.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn errors_name_the_url() {
        let (base, _) = serve(HashMap::new(), 0).await;
        let err = fetch_seed(&base, 1).await.unwrap_err().to_string();
        assert_eq!(err, format!("fetching {base}/meta-data: the server answered 404"));
        let err = fetch_seed("ftp://example.org/seed/", 1).await.unwrap_err().to_string();
        assert_eq!(err, "ftp://example.org/seed/meta-data is not an http:// or https:// URL");
        // Nothing listens on port 9 of loopback.
        let err = fetch_seed("http://127.0.0.1:9/seed/", 2).await.unwrap_err().to_string();
        assert!(err.starts_with("fetching http://127.0.0.1:9/seed/meta-data: connecting to 127.0.0.1:9:"), "{err}");
    }

    #[test]
    fn a_fetched_seed_is_used_whether_or_not_one_is_saved() {
        assert_eq!(decide("http://s/", Ok(1), false), UrlSeedDecision::UseFetched(1));
        assert_eq!(decide("http://s/", Ok(1), true), UrlSeedDecision::UseFetched(1));
    }

    #[test]
    fn a_failed_fetch_with_a_saved_seed_warns_and_boots_with_the_saved_one() {
        let decision = decide::<()>("http://10.0.2.100/", Err("connecting to 10.0.2.100:80: refused".into()), true);
        assert_eq!(
            decision,
            UrlSeedDecision::UseSaved {
                warning: "the cloud-init seed at http://10.0.2.100/ could not be fetched (connecting to 10.0.2.100:80: refused); booting with the seed saved at an earlier boot".into()
            }
        );
    }

    #[test]
    fn a_failed_fetch_on_a_node_never_configured_stops_naming_the_url_and_why() {
        let decision = decide::<()>("http://10.0.2.100/", Err("the server answered 404".into()), false);
        assert_eq!(
            decision,
            UrlSeedDecision::Stop {
                reason: "the cloud-init seed at http://10.0.2.100/ could not be fetched (the server answered 404) and no seed was saved at an earlier boot".into()
            }
        );
    }

    #[test]
    fn a_seed_with_another_instance_id_is_said_to_replace_the_saved_one() {
        assert_eq!(replacement_note(None, Some("i-1")), None);
        assert_eq!(
            replacement_note(Some(Some("i-1")), Some("i-2")).as_deref(),
            Some("the seed (instance-id \"i-2\") replaces the saved one (instance-id \"i-1\")")
        );
        assert_eq!(
            replacement_note(Some(None), Some("i-2")).as_deref(),
            Some("the seed (instance-id \"i-2\") replaces the saved one (instance-id none)")
        );
        assert_eq!(
            replacement_note(Some(Some("i-1")), Some("i-1")).as_deref(),
            Some("the seed has the saved seed's instance-id \"i-1\"; the saved copy is refreshed")
        );
    }
}
