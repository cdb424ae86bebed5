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

use crate::kernel::Kernel;
use crate::stages::network::NodeNetwork;
use crate::status::StatusPublisher;
use kelson_api::TlsMaterial;
use kelson_config::{ConfigError, Effective, Layer, MachineConfig};
use kelson_pods::runtime::PodsStatus;
use kelson_supervise::Supervisor;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
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

/// Polls, on the API's own thread, until the boot has settled, then moves
/// that thread out of SCHED_IDLE (back to nice [`API_NICE`]).
async fn leave_idle_once_settled(kernel: Arc<dyn Kernel + Send + Sync>, status: StatusPublisher, handles: Handles) {
    let mut boot_ended: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !matches!(status.current().phase, crate::status::Phase::Booting) {
            boot_ended.get_or_insert_with(tokio::time::Instant::now);
        }
        let snapshot = handles.supervisor().map(|supervisor| supervisor.snapshot());
        if boot_settled(snapshot.as_ref(), boot_ended.map(|at| at.elapsed())) {
            break;
        }
    }
    let restored = kernel.set_this_threads_idle(false).and_then(|()| kernel.set_this_threads_nice(API_NICE));
    match restored {
        Ok(()) => tracing::info!(nice = API_NICE, "the boot has settled: the management API leaves SCHED_IDLE"),
        Err(e) => {
            tracing::warn!(error = %e, "the management API could not leave SCHED_IDLE; it answers only when the node is idle")
        }
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

/// How much lower than the boot's the API thread's CPU priority is once the
/// boot has settled: nice 10 weighs about a tenth of nice 0, so under load
/// the kernel gives the services, the pods and their children the CPU
/// first, and the API what is left. Clients see slower answers while the
/// node is busy.
pub const API_NICE: i32 = 10;

/// Until the boot has settled the API thread is SCHED_IDLE: it runs on CPU
/// time nothing else wants, so a crowd of clients at a booting node cannot
/// slow the stages or the services' start. Settled: the boot has ended
/// (ready or maintenance) and every service has come to rest (healthy, or
/// a state it will not leave by itself), or this long after the boot ended
/// (a kube-proxy with no API server to sync with never turns healthy).
/// SCHED_IDLE for good would let a busy control plane starve the API.
pub const BOOT_SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Whether the API can leave SCHED_IDLE: see [`BOOT_SETTLE_LIMIT`].
/// `since_boot_ended` is `None` while the node is still booting.
pub fn boot_settled(services: Option<&kelson_supervise::Snapshot>, since_boot_ended: Option<Duration>) -> bool {
    use kelson_supervise::ServiceState as S;
    let Some(since) = since_boot_ended else { return false };
    let at_rest = services.is_none_or(|snapshot| {
        snapshot.services.values().all(|service| {
            matches!(service.state, S::Healthy | S::Completed | S::Stopped | S::Failed | S::Absent | S::Blocked)
        })
    });
    at_rest || since >= BOOT_SETTLE_LIMIT
}

/// Starts the API server on `0.0.0.0:`[`kelson_api::PORT`] on a thread of
/// its own, with its own single-threaded runtime: SCHED_IDLE while the boot
/// settles, then at [`API_NICE`]. It serves once [`Handles`] has serving
/// material.
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
        let idle = match backend.kernel.set_this_threads_idle(true) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not make the management API thread SCHED_IDLE while the node boots");
                false
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "could not start the management API's runtime: the API is not served");
                return;
            }
        };
        runtime.block_on(async move {
            if idle {
                // On this runtime, so on this thread.
                tokio::spawn(leave_idle_once_settled(backend.kernel.clone(), backend.status.clone(), backend.handles.clone()));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_supervise::{ServiceState, ServiceStatus, Snapshot};

    fn services(states: &[(&str, ServiceState)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (name, state) in states {
            let mut status = ServiceStatus::new(name, std::time::SystemTime::now());
            status.state = *state;
            snapshot.services.insert((*name).to_owned(), status);
        }
        snapshot
    }

    #[test]
    fn the_api_stays_idle_while_the_node_boots_whatever_the_services_do() {
        let healthy = services(&[("containerd", ServiceState::Healthy)]);
        assert!(!boot_settled(Some(&healthy), None));
        assert!(!boot_settled(None, None));
    }

    #[test]
    fn after_the_boot_the_api_waits_for_services_still_starting_up_to_the_limit() {
        let starting = services(&[("containerd", ServiceState::Healthy), ("kubelet", ServiceState::Running)]);
        assert!(!boot_settled(Some(&starting), Some(Duration::from_secs(5))));
        assert!(boot_settled(Some(&starting), Some(BOOT_SETTLE_LIMIT)));
        let backing_off = services(&[("kubelet", ServiceState::BackingOff)]);
        assert!(!boot_settled(Some(&backing_off), Some(Duration::from_secs(5))));
    }

    #[test]
    fn services_at_rest_or_none_at_all_settle_the_boot_at_once() {
        let at_rest = services(&[
            ("containerd", ServiceState::Healthy),
            ("sandbox-image", ServiceState::Completed),
            ("kube-proxy", ServiceState::Absent),
            ("kubelet", ServiceState::Blocked),
        ]);
        assert!(boot_settled(Some(&at_rest), Some(Duration::ZERO)));
        // A node in maintenance, or without services.
        assert!(boot_settled(None, Some(Duration::ZERO)));
    }
}
