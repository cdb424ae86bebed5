//! Joining by bootstrap token (`cluster.caCertHashes`): PID 1 discovers
//! the cluster CA as `kubeadm join` does ([`kelson_cluster::discovery`]),
//! and only once the token's signature and the CA's hash check out writes
//! the CA ([`DISCOVERED_CA_FILE`]), then the kubelet's bootstrap
//! kubeconfig, then sets [`CLUSTER_JOINED`], which the kubelet waits for.
//! The kubelet's own TLS bootstrap then obtains the node's certificate.
//!
//! Until then the node stays up and retries with back-off; each failure's
//! reason is the condition's (`kelsonctl status` shows it, and the
//! kubelet's service shows it as why it is blocked) and is logged when it
//! changes. Nothing is written before the CA is verified, and the
//! kubeconfig (the file the kubelet needs) goes last, atomically.
//!
//! The CA is also kept on /var ([`KEPT_CA`]): the kubelet's kubeconfig
//! from its TLS bootstrap names the CA file, and /etc is rebuilt every
//! boot. A node that joined on an earlier boot (its kubelet kubeconfig is
//! on /var) puts the kept CA back and starts its kubelet without asking
//! the cluster again: its token may have expired since.

use crate::kernel::Kernel;
use crate::status::{Condition, StatusPublisher};
use kelson_cluster::discovery::{self, BootstrapToken, DiscoveryError};
use kelson_config::MachineConfig;
use kelson_supervise::node::paths::{DISCOVERED_CA_FILE, KUBELET_KUBECONFIG};
use kelson_supervise::node::{token_bootstrap_kubeconfig, RenderedFile};
use kelson_supervise::CLUSTER_JOINED;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// The discovered CA, kept across boots.
pub const KEPT_CA: &str = "/var/lib/kelson/token-join/ca.crt";

/// How often discovery is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The first wait after a failure; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Each read of cluster-info.
    pub request_timeout: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A token join to run: from a config whose kubelet joins by token.
pub struct TokenJoiner {
    api_server: String,
    token: BootstrapToken,
    ca_cert_hashes: Vec<String>,
    bootstrap_kubeconfig: RenderedFile,
}

impl std::fmt::Debug for TokenJoiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenJoiner")
            .field("api_server", &self.api_server)
            .field("token", &self.token)
            .field("ca_cert_hashes", &self.ca_cert_hashes)
            .finish_non_exhaustive()
    }
}

impl TokenJoiner {
    /// `None` unless the config joins by token (validation has checked
    /// the token's shape, the endpoint and the hashes).
    pub fn from_config(config: &MachineConfig) -> Option<Self> {
        let bootstrap_kubeconfig = token_bootstrap_kubeconfig(config)?;
        let token = BootstrapToken::parse(config.cluster.bootstrap_token.as_ref()?.expose())?;
        Some(TokenJoiner {
            api_server: config.cluster.api_server_endpoint.clone()?,
            token,
            ca_cert_hashes: config.cluster.ca_cert_hashes.clone(),
            bootstrap_kubeconfig,
        })
    }

    /// Discovers until it succeeds (or the task is aborted at shutdown).
    pub async fn run(self, kernel: Arc<dyn Kernel + Send + Sync>, status: StatusPublisher, pace: Pace) {
        let target = format!("{} with token {}", self.api_server, self.token.id());
        if kernel.exists(Path::new(KUBELET_KUBECONFIG)) {
            match self.rejoin(kernel.as_ref()) {
                Ok(()) => {
                    info!("token join: joined on an earlier boot ({KUBELET_KUBECONFIG}); the kept CA is back");
                    status.set_condition(CLUSTER_JOINED, Condition::True);
                    return;
                }
                Err(reason) => info!("token join: {reason}; discovering the cluster again"),
            }
        }
        info!("token join: discovering the cluster at {target}");
        let mut wait = pace.first_backoff;
        let mut last: Option<String> = None;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.attempt(kernel.as_ref(), pace.request_timeout).await {
                Ok(hash) => {
                    info!(
                        "token join: the cluster CA ({hash}) is verified at {target} after {attempts} attempt(s); \
                         the kubelet starts its TLS bootstrap"
                    );
                    status.set_condition(CLUSTER_JOINED, Condition::True);
                    return;
                }
                Err(reason) => {
                    if last.as_deref() != Some(reason.as_str()) {
                        warn!("token join: not joined: {reason}; retrying");
                    }
                    status.set_condition(
                        CLUSTER_JOINED,
                        Condition::Unreachable(format!("not joined ({attempts} attempts): {reason}")),
                    );
                    last = Some(reason);
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(pace.max_backoff);
        }
    }

    /// One discovery, then the files: the CA (kept and in place), and the
    /// bootstrap kubeconfig last. The CA's hash on success.
    async fn attempt(&self, kernel: &dyn Kernel, timeout: Duration) -> Result<String, String> {
        let discovered = discovery::discover(&self.api_server, &self.token, &self.ca_cert_hashes, timeout)
            .await
            .map_err(|e: DiscoveryError| e.to_string())?;
        let ca = discovered.ca_pem.as_bytes();
        for path in [KEPT_CA, DISCOVERED_CA_FILE] {
            kernel
                .install_file(Path::new(path), ca, 0o644)
                .map_err(|e| format!("writing the verified cluster CA to {path}: {e}"))?;
        }
        let file = &self.bootstrap_kubeconfig;
        kernel
            .install_file(&file.path, &file.contents, file.mode)
            .map_err(|e| format!("writing the kubelet's bootstrap kubeconfig {}: {e}", file.path.display()))?;
        Ok(discovered.ca_cert_hash)
    }

    /// Puts the CA kept from an earlier boot back, checked against the
    /// configured hashes again (the seed may have changed since).
    fn rejoin(&self, kernel: &dyn Kernel) -> Result<(), String> {
        let pem = kernel.read_file(Path::new(KEPT_CA)).map_err(|e| format!("no kept CA at {KEPT_CA}: {e}"))?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
            .map_err(|e| format!("the kept CA {KEPT_CA} is not a PEM certificate: {e}"))?;
        let hash = discovery::ca_cert_hash(&der).map_err(|e| format!("the kept CA {KEPT_CA}: {e}"))?;
        if !self.ca_cert_hashes.iter().any(|pin| pin.eq_ignore_ascii_case(&hash)) {
            return Err(format!("the kept CA's hash {hash} is none of cluster.caCertHashes"));
        }
        kernel
            .install_file(Path::new(DISCOVERED_CA_FILE), &pem, 0o644)
            .map_err(|e| format!("writing the kept CA to {DISCOVERED_CA_FILE}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;
    use kelson_supervise::node::paths::KUBELET_BOOTSTRAP_KUBECONFIG;

    fn config(endpoint: &str, hash: &str) -> MachineConfig {
        kelson_config::parse(
            "join.yaml",
            &format!(
                "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\ncluster:\n  apiServerEndpoint: {endpoint}\n  \
                 bootstrapToken: abcdef.0123456789abcdef\n  caCertHashes: [\"{hash}\"]\n"
            ),
        )
        .unwrap()
    }

    fn pin() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    #[test]
    fn only_a_token_join_config_makes_a_joiner_and_its_debug_hides_the_secret() {
        let joiner = TokenJoiner::from_config(&config("https://10.0.0.1:6443", &pin())).unwrap();
        let shown = format!("{joiner:?}");
        assert!(shown.contains("abcdef") && !shown.contains("0123456789abcdef"), "{shown}");
        assert!(TokenJoiner::from_config(&MachineConfig::empty()).is_none());
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_leaves_the_reason_in_the_status_and_nothing_written() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        drop(listener);
        let joiner = TokenJoiner::from_config(&config(&endpoint, &pin())).unwrap();
        let kernel = Arc::new(FakeKernel::default());
        let status = StatusPublisher::default();
        let mut watch = status.subscribe();
        let task = tokio::spawn(joiner.run(kernel.clone(), status.clone(), Pace::default()));
        let reason = loop {
            watch.changed().await.unwrap();
            if let Condition::Unreachable(reason) = watch.borrow().condition(CLUSTER_JOINED) {
                break reason.clone();
            }
        };
        task.abort();
        assert!(reason.starts_with("not joined (1 attempts): reading kube-public/cluster-info from"), "{reason}");
        assert!(reason.contains(&endpoint), "{reason}");
        for path in [KEPT_CA, DISCOVERED_CA_FILE, KUBELET_BOOTSTRAP_KUBECONFIG] {
            assert!(kernel.file(path).is_none(), "{path} written before the CA was verified");
        }
    }

    #[tokio::test]
    async fn a_node_that_joined_before_puts_its_kept_ca_back_without_asking_the_cluster() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let hash = discovery::ca_cert_hash(ca.der()).unwrap();
        // Nothing listens there: discovery would fail.
        let joiner = TokenJoiner::from_config(&config("https://127.0.0.1:1", &hash)).unwrap();
        let kernel =
            Arc::new(FakeKernel::default().with_file(KUBELET_KUBECONFIG, "kubeconfig").with_file(KEPT_CA, &ca.pem()));
        let status = StatusPublisher::default();
        joiner.run(kernel.clone(), status.clone(), Pace::default()).await;
        assert_eq!(status.current().condition(CLUSTER_JOINED), &Condition::True);
        assert_eq!(kernel.file(DISCOVERED_CA_FILE), Some(ca.pem()));
    }
}
