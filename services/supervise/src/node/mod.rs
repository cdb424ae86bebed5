//! The node's supervised services — containerd, the one-shot that imports
//! the pod sandbox image into it, the kubelet and kube-proxy — rendered
//! from the machine config: their files (path, contents, mode) and their
//! [`ServiceSpec`]s. Pure: the caller writes the files (PID 1 through its
//! `Kernel` trait; tests and tools with [`write_files`] under a root).

mod containerd;
mod kube_proxy;
mod kubeconfig;
mod kubelet;
pub mod sandbox_image;

use crate::spec::ServiceSpec;
use kelson_config::MachineConfig;
use std::path::{Path, PathBuf};

pub use containerd::{render as render_containerd, spec as containerd_spec};
pub use kube_proxy::{render as render_kube_proxy, spec as kube_proxy_spec, KUBE_PROXY_CERT};
pub use kubelet::{
    credential as kubelet_credential, render as render_kubelet, spec as kubelet_spec, token_bootstrap_kubeconfig,
    Credential, NODE_CERT,
};
pub use sandbox_image::spec as sandbox_image_spec;

/// Where things are on the node.
pub mod paths {
    /// `CA_FILE` is written by PID 1's apply-config stage from `pki.ca`;
    /// `MANIFEST_DIR` holds the static pods PID 1 runs, named here so the
    /// kubelet's staticPodPath can be checked against it.
    pub use kelson_base::paths::{CA_FILE, CNI_CONFLIST, MANIFEST_DIR, PKI_DIR};

    pub const CONTAINERD_BINARY: &str = "/usr/bin/containerd";
    pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
    pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
    pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";
    pub const CONTAINERD_STATE: &str = "/run/containerd";
    /// Debian's containernetworking-plugins install here.
    pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
    pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
    /// The pod sandbox image. No registry is reachable from the node: the
    /// `sandbox-image` service imports it into containerd's store at boot,
    /// from [`PAUSE_LAYOUT`], before the kubelet starts.
    pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.9";
    /// The node image's OCI layout of [`SANDBOX_IMAGE`] (built by
    /// `image/oci-images.py`; its index names the image).
    pub const PAUSE_LAYOUT: &str = "/usr/lib/kelson/images/pause";
    /// containerd's namespace for CRI, hence for the kubelet's images.
    pub const CRI_NAMESPACE: &str = "k8s.io";

    pub const KUBELET_BINARY: &str = "/usr/bin/kubelet";
    pub const KUBELET_CONFIG: &str = "/etc/kubernetes/kubelet/config.yaml";
    /// Holds the bootstrap token: mode 0600.
    pub const KUBELET_BOOTSTRAP_KUBECONFIG: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
    /// Names the node certificate from the machine config (kubeadm's path).
    pub const KUBELET_NODE_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
    /// The taint a control-plane node registers with, as kubeadm sets it.
    pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane:NoSchedule";
    /// Written by the kubelet itself once TLS bootstrap succeeds; on /var so
    /// a reboot does not need the (expiring) token again.
    pub const KUBELET_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
    pub const KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";
    pub const KUBELET_CERT_DIR: &str = "/var/lib/kubelet/pki";
    /// The cluster CA as token discovery verified it (kubeadm's path on a
    /// worker), written by PID 1 before the bootstrap kubeconfig.
    pub const DISCOVERED_CA_FILE: &str = "/etc/kubernetes/pki/ca.crt";
    /// The kubelet's rotated client certificate and key, in one file.
    pub const KUBELET_CLIENT_CERT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    /// Deliberately not /etc/kubernetes/manifests: PID 1 runs those static
    /// pods itself, and no pod may run twice.
    pub const KUBELET_STATIC_POD_PATH: &str = "/etc/kubernetes/kubelet-manifests";
    pub const KUBELET_HEALTHZ_URL: &str = "http://127.0.0.1:10248/healthz";

    pub const KUBE_PROXY_BINARY: &str = "/usr/bin/kube-proxy";
    pub const KUBE_PROXY_CONFIG: &str = "/etc/kubernetes/kube-proxy/config.yaml";
    pub const KUBE_PROXY_KUBECONFIG: &str = "/var/lib/kube-proxy/kubeconfig";
    pub const KUBE_PROXY_HEALTHZ_URL: &str = "http://127.0.0.1:10256/healthz";
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl RenderedFile {
    pub(crate) fn new(path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        RenderedFile { path: PathBuf::from(path), contents: contents.into(), mode }
    }

    /// The contents as text (every rendered file is UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents).into_owned()
    }
}

/// Everything the node's services need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeServices {
    pub files: Vec<RenderedFile>,
    /// containerd, sandbox-image, kubelet, kube-proxy: ready for
    /// [`crate::Supervisor::start`].
    pub services: Vec<ServiceSpec>,
    /// What was left out and why (missing config), for the log.
    pub notes: Vec<String>,
}

impl NodeServices {
    pub fn file(&self, path: &str) -> Option<&RenderedFile> {
        self.files.iter().find(|f| f.path == Path::new(path))
    }
}

/// Renders all four services. `hostname` is the node's effective name
/// (PID 1's identity stage may have made one up when the config has none).
pub fn render(config: &MachineConfig, hostname: &str) -> NodeServices {
    let mut out = NodeServices { files: Vec::new(), services: Vec::new(), notes: Vec::new() };
    out.files.push(containerd::render());
    // The CNI conflist is kelson-net's (`cni::write_conflist`, written by
    // the network stage): its host-local range must stay clear of the
    // addresses kelson-net hands to PID 1's own pods.
    let kubelet = kubelet::render(config, hostname);
    out.files.extend(kubelet.files);
    out.notes.extend(kubelet.notes);
    let proxy = kube_proxy::render(config, hostname);
    out.files.extend(proxy.files);
    out.notes.extend(proxy.notes);
    out.services = vec![containerd::spec(), sandbox_image::spec(), kubelet.spec, proxy.spec];
    out
}

/// One service's files and spec, with notes on what was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    pub spec: ServiceSpec,
    pub notes: Vec<String>,
}

/// The node's address for the kubelet's `--node-ip`: the first static
/// address of the first uplink, without its prefix length. DHCP-only
/// uplinks have none here; the kubelet then picks one itself.
pub fn node_ip(config: &MachineConfig) -> Option<String> {
    let address = config.network.uplinks.iter().flat_map(|u| u.addresses.iter()).next()?;
    Some(address.split('/').next().unwrap_or(address).to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum WriteFilesError {
    #[error("creating directory {dir} for {path}")]
    CreateDir {
        dir: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: kelson_base::atomic::AtomicWriteError,
    },
}

/// Writes each file under `root` (`/` on the node) atomically with its mode.
pub fn write_files(root: &Path, files: &[RenderedFile]) -> Result<(), WriteFilesError> {
    for file in files {
        let path = root.join(file.path.strip_prefix("/").unwrap_or(&file.path));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| WriteFilesError::CreateDir {
                dir: dir.to_owned(),
                path: file.path.clone(),
                source,
            })?;
        }
        kelson_base::atomic::write_atomic(&path, &file.contents, file.mode)
            .map_err(|source| WriteFilesError::Write { path: file.path.clone(), source })?;
    }
    Ok(())
}

/// YAML for a serde value; the rendered types are plain structs of
/// strings, numbers and lists, which always serialize.
pub(crate) fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# could not render: {e}\n"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A worker's config as `kelsonctl gen cluster` writes it.
    pub(crate) fn worker_config() -> MachineConfig {
        kelson_config::parse(
            "test.yaml",
            r#"
apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
node:
  hostname: lab-worker-1
network:
  uplinks:
    - name: eth0
      addresses: [192.168.100.11/24]
      gateway4: 192.168.100.1
  podCIDR: 10.244.1.0/24
  clusterCIDR: 10.244.0.0/16
  serviceCIDR: 10.96.0.0/12
  mtu: 1460
cluster:
  name: lab
  apiServerEndpoint: https://192.168.100.10:6443
  dnsAddress: 10.96.0.10
  dnsDomain: cluster.local
  bootstrapToken: abcdef.0123456789abcdef
pki:
  ca: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
kubelet:
  extraArgs: [--v=2, --max-pods=50]
kubeProxy:
  binary: /opt/bin/kube-proxy
"#,
        )
        .unwrap()
    }

    #[test]
    fn all_four_services_and_their_files_are_rendered() {
        let node = render(&worker_config(), "lab-worker-1");
        let names: Vec<_> = node.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["containerd", "sandbox-image", "kubelet", "kube-proxy"]);
        // The supervisor accepts them as a graph.
        crate::Supervisor::new(
            node.services.clone(),
            crate::Settings::default(),
            std::sync::Arc::new(crate::ThreadLauncher),
            std::sync::Arc::new(crate::FakeClock::new()),
        )
        .unwrap();
        let mut paths: Vec<_> = node.files.iter().map(|f| (f.path.display().to_string(), f.mode)).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                ("/etc/containerd/config.toml".to_owned(), 0o644),
                ("/etc/kubernetes/bootstrap-kubelet.conf".to_owned(), 0o600),
                ("/etc/kubernetes/kube-proxy/config.yaml".to_owned(), 0o644),
                ("/etc/kubernetes/kubelet/config.yaml".to_owned(), 0o644),
                ("/var/lib/kube-proxy/kubeconfig".to_owned(), 0o644),
            ]
        );
        assert!(node.notes.is_empty(), "{:?}", node.notes);
    }

    #[test]
    fn the_node_ip_is_the_first_uplink_address_without_its_prefix() {
        assert_eq!(node_ip(&worker_config()).as_deref(), Some("192.168.100.11"));
        assert_eq!(node_ip(&MachineConfig::empty()), None);
    }

    #[test]
    fn files_are_written_under_the_root_with_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let node = render(&worker_config(), "lab-worker-1");
        write_files(root.path(), &node.files).unwrap();
        let secret = root.path().join("etc/kubernetes/bootstrap-kubelet.conf");
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        let toml = std::fs::read(root.path().join("etc/containerd/config.toml")).unwrap();
        assert_eq!(toml, node.file(paths::CONTAINERD_CONFIG).unwrap().contents);
    }
}
