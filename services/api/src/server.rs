//! The accept loop: TLS material from a watch, one task per connection,
//! HTTP/1.1 or HTTP/2 as ALPN chose.

use crate::backend::Node;
use crate::handlers::{handle, Shared};
use crate::tls::{server_config, Client, TlsMaterial};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// How the server runs, beyond its listener, node and TLS material.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// Where each write request is recorded, one JSON line each; `None`
    /// logs writes through `tracing` only.
    pub audit_log: Option<PathBuf>,
}

/// A client that has not finished its handshake by then is dropped, so
/// half-open connections do not pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pause after a failed accept (out of file descriptors), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until the future is dropped. A change on `tls` (new CA or
/// certificate) applies to new connections; `None` or material that does
/// not parse: keep the last good one (log why); with none ever, refuse
/// connections (log once). Dropping the future ends every connection.
pub async fn serve<N: Node>(
    listener: TcpListener,
    node: Arc<N>,
    mut tls: watch::Receiver<Option<TlsMaterial>>,
    settings: ServerSettings,
) {
    let shared = Arc::new(Shared { node, audit_log: settings.audit_log });
    let mut acceptor = None;
    let initial = tls.borrow_and_update().clone();
    reload(&mut acceptor, initial);
    let mut watching = true;
    let mut refusal_logged = false;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = tls.changed(), if watching => match changed {
                Ok(()) => {
                    let material = tls.borrow_and_update().clone();
                    reload(&mut acceptor, material);
                }
                Err(_) => {
                    watching = false;
                    tracing::info!("the API's TLS material will not change any more; serving with what it has");
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match &acceptor {
                    Some(acceptor) => {
                        connections.spawn(serve_connection(tcp, peer, acceptor.clone(), shared.clone()));
                    }
                    None => {
                        if !refusal_logged {
                            tracing::warn!(%peer, "refusing API connections: no usable TLS material yet");
                            refusal_logged = true;
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "accepting an API connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Takes new material when it makes a config; otherwise keeps the last.
fn reload(acceptor: &mut Option<TlsAcceptor>, material: Option<TlsMaterial>) {
    let Some(material) = material else {
        if acceptor.is_some() {
            tracing::warn!("the API's TLS material was withdrawn; keeping the last good one");
        }
        return;
    };
    match server_config(&material) {
        Ok(config) => {
            *acceptor = Some(TlsAcceptor::from(Arc::new(config)));
            tracing::info!("the API serves new connections with new TLS material");
        }
        Err(error) => {
            let keeping = if acceptor.is_some() { "keeping the last good one" } else { "no connection is served yet" };
            tracing::warn!(error = %crate::error_chain(&error), "the API's new TLS material is unusable; {keeping}");
        }
    }
}

async fn serve_connection<N: Node>(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, shared: Arc<Shared<N>>) {
    // Without it a handshake's or an HTTP/2 answer's last small write
    // waits for the client's delayed ACK: 20-40 ms per new connection and
    // at the 99th percentile on loopback (`cargo xtask bench api`).
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, %error, "setting TCP_NODELAY on an API connection");
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake with an API client failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake with an API client timed out");
            return;
        }
    };
    // The verifier made a certificate mandatory; a session without one
    // cannot get here, but is refused all the same.
    let Some(certificate) = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) else {
        return;
    };
    let client = Arc::new(Client::from_certificate(certificate));
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &client, request).await) }
    });
    if let Err(error) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await {
        tracing::debug!(%peer, %error, "API connection ended with an error");
    }
}
