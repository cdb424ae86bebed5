//! The cluster's Kubernetes files as kubeadm lays them out: three CAs
//! (cluster, etcd, front-proxy) and the service-account key pair, the
//! certificates kubeadm puts under `/etc/kubernetes/pki`, kubeconfigs with
//! embedded certificate data, and the control plane's static pod manifests
//! (see `manifests.rs`). A user who knows kubeadm finds everything where
//! kubeadm would have put it, and can edit it the same way.

use super::cluster::{ClusterPlan, NodePlan, API_SERVER_PORT, DNS_DOMAIN};
use super::pki::{self, Authority, Issued, KeyPairPem, LeafSpec, LoadAuthorityError, PkiError, Usage};
use base64::Engine;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// The Kubernetes release the control plane runs: the `k8s.io/kubernetes`
/// require line of image/kubernetes/go.mod, read by build.rs, so the
/// manifests name the images of the programs the node image builds.
pub const KUBERNETES_VERSION: &str = env!("KELSON_KUBERNETES_VERSION");

/// Where kubeadm keeps the control plane's kubeconfigs and manifests.
pub const KUBERNETES_DIR: &str = "/etc/kubernetes";
/// Where kubeadm keeps the certificates (`--cert-dir`).
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";

/// kube-apiserver's client certificate towards the kubelets. kubeadm gives
/// it `O=kubeadm:cluster-admins`, a group only kubeadm's own RBAC objects
/// bind; nothing creates those here, so it is in `system:masters`, which
/// the API server binds to cluster-admin by itself.
pub const API_SERVER_KUBELET_CLIENT_ORGANISATION: &str = "system:masters";
/// The user's administrator (`DIR/admin.kubeconfig`).
pub const ADMIN_COMMON_NAME: &str = "kubernetes-admin";
pub const ADMIN_ORGANISATION: &str = "system:masters";
pub const KUBE_PROXY_COMMON_NAME: &str = "system:kube-proxy";
pub const NODES_ORGANISATION: &str = "system:nodes";

/// A node's kubelet client identity, `CN=system:node:<node>`.
pub fn kubelet_common_name(node: &str) -> String {
    format!("system:node:{node}")
}

/// A node's kubelet client certificate (every node), for the cluster CA
/// to issue.
pub fn kubelet_leaf(node: &str) -> LeafSpec {
    LeafSpec::client(&kubelet_common_name(node), NODES_ORGANISATION)
}

/// The certificates every cluster has once (kubeadm's `certs` phase minus
/// the per-node ones), and the client certificates of the kubeconfigs.
pub struct ClusterPki {
    pub ca: Authority,
    pub etcd_ca: Authority,
    pub front_proxy_ca: Authority,
    pub service_account: KeyPairPem,
    pub api_server_kubelet_client: Issued,
    pub api_server_etcd_client: Issued,
    pub front_proxy_client: Issued,
    pub etcd_healthcheck_client: Issued,
    pub controller_manager: Issued,
    pub scheduler: Issued,
    pub admin: Issued,
    pub kube_proxy: Issued,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki").field("ca", &self.ca).finish_non_exhaustive()
    }
}

/// Why [`ClusterPki::load`] could not read a cluster folder's certificates.
#[derive(Debug, thiserror::Error)]
pub enum LoadPkiError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the CA {}", cert.display())]
    Authority {
        cert: PathBuf,
        #[source]
        source: LoadAuthorityError,
    },
    #[error(transparent)]
    Issue(#[from] PkiError),
}

/// One control-plane node's own certificates.
#[derive(Debug)]
pub struct ControlPlaneCerts {
    pub api_server: Issued,
    pub etcd_server: Issued,
    pub etcd_peer: Issued,
}

/// The first address of the service CIDR: the `kubernetes` Service's
/// ClusterIP, which the API server's certificate must name.
pub fn first_service_ip(plan: &ClusterPlan) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(plan.spec.service_cidr.network()).saturating_add(1))
}

/// The service-account token issuer, kubeadm's default.
pub fn service_account_issuer() -> String {
    format!("https://kubernetes.default.svc.{DNS_DOMAIN}")
}

impl ClusterPki {
    pub fn new(now: OffsetDateTime) -> Result<Self, PkiError> {
        let ca = Authority::new("kubernetes", now)?;
        let etcd_ca = Authority::new("etcd-ca", now)?;
        let front_proxy_ca = Authority::new("front-proxy-ca", now)?;
        Ok(ClusterPki {
            service_account: pki::service_account_key()?,
            api_server_kubelet_client: ca
                .issue(&LeafSpec::client("kube-apiserver-kubelet-client", API_SERVER_KUBELET_CLIENT_ORGANISATION))?,
            api_server_etcd_client: etcd_ca
                .issue(&LeafSpec::client_without_organisation("kube-apiserver-etcd-client"))?,
            front_proxy_client: front_proxy_ca.issue(&LeafSpec::client_without_organisation("front-proxy-client"))?,
            etcd_healthcheck_client: etcd_ca
                .issue(&LeafSpec::client_without_organisation("kube-etcd-healthcheck-client"))?,
            controller_manager: ca.issue(&LeafSpec::client_without_organisation("system:kube-controller-manager"))?,
            scheduler: ca.issue(&LeafSpec::client_without_organisation("system:kube-scheduler"))?,
            admin: ca.issue(&LeafSpec::client(ADMIN_COMMON_NAME, ADMIN_ORGANISATION))?,
            kube_proxy: ca.issue(&LeafSpec::client_without_organisation(KUBE_PROXY_COMMON_NAME))?,
            ca,
            etcd_ca,
            front_proxy_ca,
        })
    }

    /// The cluster's certificates as `gen cluster` wrote them under
    /// `pki_dir` (a cluster folder's `pki/`), for `gen node` to add a
    /// control-plane node: the three CAs sign its own certificates, the
    /// shared pairs and the service-account keys are carried as written.
    /// The controller-manager's and scheduler's client certificates live
    /// only inside each node's kubeconfigs, so they are issued afresh (as
    /// kubeadm does on every control-plane node it joins), and so is the
    /// administrator's, which `gen node` does not write.
    pub fn load(pki_dir: &Path, kube_proxy: Issued, now: OffsetDateTime) -> Result<Self, LoadPkiError> {
        let read = |name: &str| {
            let path = pki_dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| LoadPkiError::Read { path, source })
        };
        let pair = |stem: &str| {
            Ok::<_, LoadPkiError>(Issued {
                cert_pem: read(&format!("{stem}.crt"))?,
                key_pem: read(&format!("{stem}.key"))?,
            })
        };
        let authority = |stem: &str| {
            let issued = pair(stem)?;
            Authority::from_pem(&issued.cert_pem, &issued.key_pem, now)
                .map_err(|source| LoadPkiError::Authority { cert: pki_dir.join(format!("{stem}.crt")), source })
        };
        let ca = authority("ca")?;
        Ok(ClusterPki {
            etcd_ca: authority("etcd/ca")?,
            front_proxy_ca: authority("front-proxy-ca")?,
            service_account: KeyPairPem { public_pem: read("sa.pub")?, private_pem: read("sa.key")? },
            api_server_kubelet_client: pair("apiserver-kubelet-client")?,
            api_server_etcd_client: pair("apiserver-etcd-client")?,
            front_proxy_client: pair("front-proxy-client")?,
            etcd_healthcheck_client: pair("etcd/healthcheck-client")?,
            controller_manager: ca.issue(&LeafSpec::client_without_organisation("system:kube-controller-manager"))?,
            scheduler: ca.issue(&LeafSpec::client_without_organisation("system:kube-scheduler"))?,
            admin: ca.issue(&LeafSpec::client(ADMIN_COMMON_NAME, ADMIN_ORGANISATION))?,
            kube_proxy,
            ca,
        })
    }

    /// A control-plane node's API server and etcd certificates.
    pub fn control_plane(&self, plan: &ClusterPlan, node: &NodePlan) -> Result<ControlPlaneCerts, PkiError> {
        let mut api_names = vec![node.name.clone()];
        api_names.extend(
            ["kubernetes", "kubernetes.default", "kubernetes.default.svc"].iter().map(|name| (*name).to_owned()),
        );
        api_names.push(format!("kubernetes.default.svc.{DNS_DOMAIN}"));
        api_names.push("localhost".to_owned());
        let mut api_addresses: Vec<IpAddr> = plan.control_planes().map(|n| IpAddr::V4(n.address)).collect();
        api_addresses.push(IpAddr::V4(first_service_ip(plan)));
        api_addresses.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let api_server =
            self.ca.issue(&LeafSpec::with_names("kube-apiserver", Usage::Server, api_names, api_addresses))?;

        let etcd = |usage| {
            LeafSpec::with_names(
                &node.name,
                usage,
                [node.name.clone(), "localhost".to_owned()],
                [IpAddr::V4(node.address), IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
            )
        };
        Ok(ControlPlaneCerts {
            api_server,
            etcd_server: self.etcd_ca.issue(&etcd(Usage::ServerAndClient))?,
            etcd_peer: self.etcd_ca.issue(&etcd(Usage::ServerAndClient))?,
        })
    }

    /// The cluster-wide files of kubeadm's certificate directory, as
    /// (path relative to it, contents, secret).
    pub fn shared_files(&self) -> Vec<PkiFile> {
        let mut files = Vec::new();
        let pairs: [(&str, Issued); 7] = [
            ("ca", self.ca.issued()),
            ("apiserver-kubelet-client", self.api_server_kubelet_client.clone()),
            ("apiserver-etcd-client", self.api_server_etcd_client.clone()),
            ("front-proxy-ca", self.front_proxy_ca.issued()),
            ("front-proxy-client", self.front_proxy_client.clone()),
            ("etcd/ca", self.etcd_ca.issued()),
            ("etcd/healthcheck-client", self.etcd_healthcheck_client.clone()),
        ];
        for (stem, issued) in &pairs {
            push_pair(&mut files, stem, issued);
        }
        files.push(PkiFile::secret("sa.key", &self.service_account.private_pem));
        files.push(PkiFile::public("sa.pub", &self.service_account.public_pem));
        files
    }
}

impl ControlPlaneCerts {
    /// This node's files of kubeadm's certificate directory.
    pub fn files(&self) -> Vec<PkiFile> {
        let mut files = Vec::new();
        push_pair(&mut files, "apiserver", &self.api_server);
        push_pair(&mut files, "etcd/server", &self.etcd_server);
        push_pair(&mut files, "etcd/peer", &self.etcd_peer);
        files
    }
}

/// A file of kubeadm's certificate directory.
#[derive(Clone)]
pub struct PkiFile {
    /// Relative to [`PKI_DIR`] (and to `DIR/pki`): `ca.crt`, `etcd/peer.key`.
    pub path: String,
    pub contents: String,
    pub secret: bool,
}

impl std::fmt::Debug for PkiFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PkiFile").field("path", &self.path).field("secret", &self.secret).finish_non_exhaustive()
    }
}

impl PkiFile {
    fn public(path: &str, contents: &str) -> Self {
        PkiFile { path: path.to_owned(), contents: contents.to_owned(), secret: false }
    }
    fn secret(path: &str, contents: &str) -> Self {
        PkiFile { path: path.to_owned(), contents: contents.to_owned(), secret: true }
    }
}

fn push_pair(files: &mut Vec<PkiFile>, stem: &str, issued: &Issued) {
    files.push(PkiFile::public(&format!("{stem}.crt"), &issued.cert_pem));
    files.push(PkiFile::secret(&format!("{stem}.key"), &issued.key_pem));
}

/// `https://<address>:6443`.
pub fn api_server_url(address: Ipv4Addr) -> String {
    format!("https://{address}:{API_SERVER_PORT}")
}

/// A kubeconfig as kubeadm writes one: one cluster, one user, one
/// context, the CA and the client's certificate and key embedded.
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &Issued,
) -> Result<String, serde_saphyr::SerializeError> {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let context = format!("{user}@{cluster}");
    let document = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": { "certificate-authority-data": b64(ca_pem), "server": server },
        }],
        "contexts": [{ "name": context, "context": { "cluster": cluster, "user": user } }],
        "current-context": context,
        "preferences": {},
        "users": [{
            "name": user,
            "user": { "client-certificate-data": b64(&client.cert_pem), "client-key-data": b64(&client.key_pem) },
        }],
    });
    // The base64 data on one plain line each, as kubeadm writes it, rather
    // than as folded block scalars.
    let options = serde_saphyr::ser_options! { prefer_block_scalars: false };
    serde_saphyr::to_string_with_options(&document, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::cluster::{plan, ClusterSpec};

    #[test]
    fn the_kubernetes_version_is_go_mods_kubernetes_require_line() {
        let go_mod =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../image/kubernetes/go.mod")).unwrap();
        let line = format!("\tk8s.io/kubernetes {KUBERNETES_VERSION}\n");
        assert!(go_mod.contains(&line), "go.mod has no {line:?}");
        assert!(KUBERNETES_VERSION.starts_with("v1."), "{KUBERNETES_VERSION}");
    }

    #[test]
    fn the_first_service_ip_follows_the_service_network() {
        let plan = plan(&ClusterSpec::with_defaults("demo", 1, 0)).unwrap();
        assert_eq!(first_service_ip(&plan), Ipv4Addr::new(10, 96, 0, 1));
    }

    #[test]
    fn a_kubeconfig_embeds_the_ca_and_the_client_and_names_one_context() {
        let now = OffsetDateTime::now_utc();
        let pki = ClusterPki::new(now).unwrap();
        let text =
            kubeconfig("demo", "https://192.168.100.10:6443", &pki.ca.cert_pem(), "kubernetes-admin", &pki.admin)
                .unwrap();
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let decode = |v: &serde_json::Value| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
        };
        assert_eq!(value["current-context"], "kubernetes-admin@demo");
        assert_eq!(value["clusters"][0]["cluster"]["server"], "https://192.168.100.10:6443");
        assert_eq!(decode(&value["clusters"][0]["cluster"]["certificate-authority-data"]), pki.ca.cert_pem());
        assert_eq!(decode(&value["users"][0]["user"]["client-certificate-data"]), pki.admin.cert_pem);
        assert_eq!(decode(&value["users"][0]["user"]["client-key-data"]), pki.admin.key_pem);
    }
}
