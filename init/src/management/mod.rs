//! The management API as PID 1 serves it: kelson-api's server on
//! [`kelson_api::PORT`], answering from the node through
//! [`backend::NodeBackend`].
//!
//! The server starts before the first boot stage, so it can report boot as
//! it happens and serves a node that stopped in maintenance. It needs the
//! cluster CA and the node's `management-api` certificate from the machine
//! config: until the config stage has accepted one, connections are
//! refused. A node whose config was rejected falls back to the config the
//! boot saved earlier ([`fallback_config`]), so it can still be reached and
//! sent a good one.
//!
//! The stages hand the API what it serves through [`Handles`] as they
//! start things: the config, the supervisor, the pods, the network.

pub mod backend;
pub mod config_apply;
pub mod kmsg;

use crate::stages::network::NodeNetwork;
use kelson_api::TlsMaterial;
use kelson_config::{ConfigError, Effective, Layer, MachineConfig};
use kelson_pods::runtime::PodsStatus;
use kelson_supervise::Supervisor;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tokio::sync::watch;

/// The certificate in `pki.certificates` the API serves with.
pub const SERVING_CERTIFICATE: &str = "management-api";
/// Where every write through the API is recorded.
pub const AUDIT_LOG: &str = "/var/log/kelson/audit.log";

/// The config as the boot read it, and as the API changes it.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    /// Every layer that parsed, the API's included.
    pub layers: Vec<Layer>,
    /// Layers rejected before they could be merged (a seed that is not
    /// YAML): they stop every boot whatever else is sent.
    pub unreadable: Vec<ConfigError>,
    /// The accepted config; `None` when the boot rejected it.
    pub effective: Option<Effective>,
}

/// What the stages have started that the API reaches, shared and cheap to
/// clone. The supervisor and the network are held weakly: the API must not
/// keep them (and their files on /var) alive past shutdown.
#[derive(Clone, Default)]
pub struct Handles(Arc<Shared>);

#[derive(Default)]
struct Shared {
    config: Mutex<ConfigState>,
    tls: OnceLock<watch::Sender<Option<TlsMaterial>>>,
    supervisor: Mutex<Weak<Supervisor>>,
    pods: OnceLock<watch::Receiver<PodsStatus>>,
    network: Mutex<Weak<tokio::sync::Mutex<NodeNetwork>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handles {
    fn tls_sender(&self) -> &watch::Sender<Option<TlsMaterial>> {
        self.0.tls.get_or_init(|| watch::channel(None).0)
    }

    /// Follows the serving material: the CA and certificate of the config
    /// in effect.
    pub fn tls(&self) -> watch::Receiver<Option<TlsMaterial>> {
        self.tls_sender().subscribe()
    }

    /// Records the config and, when it carries the API's certificate,
    /// serves with it from the next connection on.
    pub fn set_config(&self, state: ConfigState) {
        if let Some(material) = state.effective.as_ref().and_then(|e| tls_material(&e.config)) {
            self.tls_sender().send_replace(Some(material));
        }
        *lock(&self.0.config) = state;
    }

    /// Serves with `config`'s certificate if nothing serves yet: for a
    /// node in maintenance, from the config it booted with last time.
    pub fn serve_with_if_unset(&self, config: &MachineConfig) -> bool {
        let Some(material) = tls_material(config) else { return false };
        self.tls_sender().send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(material);
            true
        })
    }

    pub fn config(&self) -> ConfigState {
        lock(&self.0.config).clone()
    }

    pub fn set_supervisor(&self, supervisor: &Arc<Supervisor>) {
        *lock(&self.0.supervisor) = Arc::downgrade(supervisor);
    }

    pub fn supervisor(&self) -> Option<Arc<Supervisor>> {
        lock(&self.0.supervisor).upgrade()
    }

    pub fn set_pods(&self, pods: watch::Receiver<PodsStatus>) {
        let _ = self.0.pods.set(pods);
    }

    pub fn pods(&self) -> Option<PodsStatus> {
        self.0.pods.get().map(|rx| rx.borrow().clone())
    }

    pub fn set_network(&self, network: &Arc<tokio::sync::Mutex<NodeNetwork>>) {
        *lock(&self.0.network) = Arc::downgrade(network);
    }

    pub fn network(&self) -> Option<Arc<tokio::sync::Mutex<NodeNetwork>>> {
        lock(&self.0.network).upgrade()
    }
}

/// The CA and the API's certificate from `config`, if it has both.
pub fn tls_material(config: &MachineConfig) -> Option<TlsMaterial> {
    let ca = config.pki.ca.as_ref()?;
    let pair = config.pki.certificates.get(SERVING_CERTIFICATE)?;
    Some(TlsMaterial { ca_pem: ca.clone(), cert_pem: pair.cert.clone(), key_pem: pair.key.expose().to_owned() })
}

/// The config the node accepted at an earlier boot, for serving the API
/// when this boot's was rejected: the image defaults, the saved seed and
/// the saved API layer, and without the API layer if they do not resolve
/// together.
pub fn fallback_config(image_defaults: Option<&str>, store: &kelson_config::Store) -> Option<Effective> {
    use kelson_config::{resolve, Source};
    let mut layers = Vec::new();
    if let Some(text) = image_defaults {
        layers.extend(Layer::from_document(Source::ImageDefaults, "image defaults", text).ok());
    }
    layers.extend(store.load(Source::CloudInit).ok().flatten());
    let api = store.load(Source::Api).ok().flatten();
    if let Some(api) = &api {
        let mut with_api = layers.clone();
        with_api.push(api.clone());
        if let Ok(effective) = resolve(&with_api) {
            return Some(effective);
        }
    }
    resolve(&layers).ok()
}

/// How much lower than the boot's the API thread's CPU priority is: nice
/// 10 weighs about a tenth of nice 0, so under load the kernel gives the
/// boot stages, the services and their children the CPU first, and the API
/// what is left. Clients see slower answers while the node is busy; the
/// node does not see slower boots.
pub const API_NICE: i32 = 10;

/// Starts the API server on `0.0.0.0:`[`kelson_api::PORT`] on a thread of
/// its own, with its own single-threaded runtime, at [`API_NICE`]. It
/// serves once [`Handles`] has serving material.
///
/// The API's work (TLS handshakes, encoding, log streams) must not take
/// the CPU from boot-critical work, which runs on the main runtime and in
/// its blocking pool: a thread of its own is what lets the kernel's
/// scheduler tell the two apart. Threads the API's runtime starts for
/// blocking work (saving a config, installing an update) inherit its
/// priority.
pub fn start(backend: backend::NodeBackend) {
    let tls = backend.handles.tls();
    let spawned = std::thread::Builder::new().name("management-api".into()).spawn(move || {
        if let Err(e) = backend.kernel.set_this_threads_nice(API_NICE) {
            // The API then competes with the boot as an equal: slower
            // boots under load, nothing else.
            tracing::warn!(nice = API_NICE, error = %e, "could not lower the management API thread's priority");
        }
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "could not start the management API's runtime: the API is not served");
                return;
            }
        };
        runtime.block_on(async move {
            let address = std::net::SocketAddr::from(([0, 0, 0, 0], kelson_api::PORT));
            let listener = match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(%address, error = %e, "the management API cannot listen");
                    return;
                }
            };
            tracing::info!(%address, "management API listening (mutual TLS; it answers once the config gives it a certificate)");
            let settings = kelson_api::ServerSettings { audit_log: Some(std::path::PathBuf::from(AUDIT_LOG)) };
            kelson_api::serve(listener, Arc::new(backend), tls, settings).await;
        });
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the management API's thread: the API is not served");
    }
}
