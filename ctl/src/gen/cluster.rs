//! `gen cluster`: a [`ClusterSpec`] (the flags) becomes a [`ClusterPlan`]
//! (names, addresses, subnets; pure and deterministic), which becomes the
//! cluster folder's files (certificates, machine configs, seed images,
//! summary; random keys and tokens). The Kubernetes files follow kubeadm's
//! layout (`kubeadm.rs`, `manifests.rs`).

use super::cidr::{self, CidrError};
use super::kubeadm::{self, ClusterPki, ControlPlaneCerts, PkiFile};
use super::manifests::{self, EtcdState};
use super::output::OutputFile;
use super::pki::{self, Authority, Issued, LeafSpec, PkiError, Usage};
use super::seed::{self, MetaData, SeedError};
use crate::api::config::{self as kelsonconfig_file, ClientIdentity, KelsonConfig, NodeEntry};
use ipnet::Ipv4Net;
use kelson_config::{CertKey, ConfigErrors, MachineConfig, PeerRoute, Role, StaticPod, Uplink};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use time::OffsetDateTime;

pub const DNS_DOMAIN: &str = "cluster.local";
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const API_SERVER_PORT: u16 = 6443;

/// Names of a node's certificates in its machine config's `pki.certificates`
/// (PID 1 installs them as /etc/kelson/pki/<name>.{crt,key}), every node.
/// The Kelson management API's serving certificate (not kube-apiserver's),
/// under `DIR/pki/<node>/`.
pub const MANAGEMENT_API_CERT: &str = "management-api";
/// The kubelet's client certificate, `CN=system:node:<node>,
/// O=system:nodes`, signed by the cluster CA; under `DIR/pki/<node>/`.
pub const KUBELET_CERT: &str = "kubelet";
/// kube-proxy's client certificate, `CN=system:kube-proxy`, the same on
/// every node; `DIR/pki/kube-proxy.{crt,key}`.
pub const KUBE_PROXY_CERT: &str = "kube-proxy";
/// PID 1's credential for the cluster objects Kelson needs
/// (`kelson_cluster::AddonApplier`), `CN=kelson:addons, O=system:masters`,
/// on control-plane nodes only; under `DIR/pki/<node>/`.
pub const CLUSTER_ADDONS_CERT: &str = "cluster-addons";
/// Its subject.
pub const CLUSTER_ADDONS_COMMON_NAME: &str = "kelson:addons";
/// The user's kubeconfig in the output directory.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";
/// The cluster folder's summary; `gen node` reads it back and adds to it.
pub const SUMMARY_FILE: &str = "cluster.yaml";

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub control_planes: usize,
    pub workers: usize,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub node_cidr: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub pod_prefix: u8,
    pub mtu: u32,
    pub uplink: String,
}

/// The defaults `kelsonctl gen cluster` uses where a flag is not given.
pub mod defaults {
    pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
    pub const SERVICE_CIDR: &str = "10.96.0.0/12";
    pub const NODE_CIDR: &str = "192.168.100.0/24";
    pub const POD_PREFIX: u8 = 24;
    pub const MTU: u32 = 1460;
    pub const UPLINK: &str = "eth0";
}

impl ClusterSpec {
    /// A cluster named `name` with every other setting at the command's
    /// defaults.
    pub fn with_defaults(name: &str, control_planes: usize, workers: usize) -> ClusterSpec {
        // The default strings are fixed CIDRs that parse; the fallback only
        // keeps this free of unwrap.
        let net = |s: &str| s.parse().unwrap_or_default();
        ClusterSpec {
            name: name.to_owned(),
            control_planes,
            workers,
            cluster_cidr: net(defaults::CLUSTER_CIDR),
            service_cidr: net(defaults::SERVICE_CIDR),
            node_cidr: net(defaults::NODE_CIDR),
            gateway: None,
            pod_prefix: defaults::POD_PREFIX,
            mtu: defaults::MTU,
            uplink: defaults::UPLINK.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenClusterError {
    #[error("a cluster needs at least one control-plane node")]
    NoControlPlane,
    #[error("cluster name {cluster:?} makes node name {node:?}, which is not a lowercase RFC 1123 hostname of at most 63 characters")]
    NodeName { cluster: String, node: String },
    #[error("uplink {0:?} is not a Linux interface name (1 to 15 characters, none of them '/', ':' or whitespace)")]
    UplinkName(String),
    #[error("planning the cluster's addresses")]
    Addresses(#[from] CidrError),
    #[error("{first} {first_net} overlaps {second} {second_net}")]
    Overlap { first: &'static str, first_net: Ipv4Net, second: &'static str, second_net: Ipv4Net },
    #[error("gateway {gateway} is not a host address inside node CIDR {node_cidr}")]
    GatewayOutside { gateway: Ipv4Addr, node_cidr: Ipv4Net },
    #[error("gateway {gateway} is also node {node}'s address")]
    GatewayIsNode { gateway: Ipv4Addr, node: String },
    #[error("reading random bytes from the operating system")]
    Random(#[source] getrandom::Error),
    #[error("issuing certificates")]
    Pki(#[from] PkiError),
    #[error("node {node}'s generated machine config does not validate (a bug in kelsonctl)")]
    InvalidConfig {
        node: String,
        #[source]
        errors: ConfigErrors,
    },
    #[error("building node {node}'s seed image")]
    Seed {
        node: String,
        #[source]
        source: SeedError,
    },
    #[error("writing the token's expiration")]
    Expiration(#[source] time::error::Format),
    #[error("hashing the cluster CA's public key: {reason}")]
    CaHash { reason: String },
    #[error("rendering cluster.yaml")]
    Summary(#[source] serde_saphyr::SerializeError),
    #[error("rendering {what}")]
    Render {
        what: String,
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

/// One node of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    pub role: Role,
    pub address: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

/// Every name and address of the cluster, decided before any key exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub spec: ClusterSpec,
    /// Control-plane nodes first, then workers; node k has the k-th pod subnet.
    pub nodes: Vec<NodePlan>,
    pub dns_address: Ipv4Addr,
    /// etcd's client URLs: every control-plane node's, on 2379.
    pub etcd_endpoints: Vec<String>,
    /// The first control-plane node's API server: with no load balancer in
    /// front, that is the one address every node can be given up front.
    pub api_server_endpoint: String,
}

impl ClusterPlan {
    /// A plan of these nodes, with the endpoints they imply.
    pub fn new(spec: ClusterSpec, nodes: Vec<NodePlan>, dns_address: Ipv4Addr) -> Self {
        let control_planes = nodes.iter().filter(|n| n.role == Role::ControlPlane);
        let etcd_endpoints =
            control_planes.clone().map(|n| format!("https://{}:{ETCD_CLIENT_PORT}", n.address)).collect();
        let first = control_planes.map(|n| n.address).next().unwrap_or(spec.node_cidr.network());
        let api_server_endpoint = format!("https://{first}:{API_SERVER_PORT}");
        ClusterPlan { spec, nodes, dns_address, etcd_endpoints, api_server_endpoint }
    }

    pub fn control_planes(&self) -> impl Iterator<Item = &NodePlan> {
        self.nodes.iter().filter(|n| n.role == Role::ControlPlane)
    }

    /// Routes to every other node's pod subnet through that node.
    pub fn peer_routes(&self, node: &NodePlan) -> Vec<PeerRoute> {
        self.nodes
            .iter()
            .filter(|other| other.name != node.name)
            .map(|other| PeerRoute { pod_cidr: other.pod_cidr.to_string(), via: other.address.to_string() })
            .collect()
    }
}

fn valid_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len()) && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Decides names, addresses and subnets, refusing anything that cannot work.
pub fn plan(spec: &ClusterSpec) -> Result<ClusterPlan, GenClusterError> {
    if spec.control_planes == 0 {
        return Err(GenClusterError::NoControlPlane);
    }
    if !valid_interface_name(&spec.uplink) {
        return Err(GenClusterError::UplinkName(spec.uplink.clone()));
    }
    let networks =
        [("cluster CIDR", spec.cluster_cidr), ("service CIDR", spec.service_cidr), ("node CIDR", spec.node_cidr)];
    for (i, &(first, first_net)) in networks.iter().enumerate() {
        for &(second, second_net) in &networks[i + 1..] {
            if cidr::overlaps(first_net, second_net) {
                return Err(GenClusterError::Overlap { first, first_net, second, second_net });
            }
        }
    }
    let roles = std::iter::repeat_n(Role::ControlPlane, spec.control_planes)
        .chain(std::iter::repeat_n(Role::Worker, spec.workers));
    let mut names = Vec::new();
    for (role, index) in roles.clone().zip((1..=spec.control_planes).chain(1..=spec.workers)) {
        let kind = if role == Role::ControlPlane { "cp" } else { "worker" };
        let node = format!("{}-{kind}-{index}", spec.name);
        if !kelson_config::valid_hostname(&node) {
            return Err(GenClusterError::NodeName { cluster: spec.name.clone(), node });
        }
        names.push(node);
    }
    let count = names.len();
    let pod_cidrs = cidr::carve_pod_subnets(spec.cluster_cidr, spec.pod_prefix, count)?;
    let addresses = cidr::node_addresses(spec.node_cidr, count)?;
    let dns_address = cidr::dns_address(spec.service_cidr)?;
    let nodes: Vec<NodePlan> = names
        .into_iter()
        .zip(roles)
        .zip(addresses.into_iter().zip(pod_cidrs))
        .map(|((name, role), (address, pod_cidr))| NodePlan { name, role, address, pod_cidr })
        .collect();
    if let Some(gateway) = spec.gateway {
        let node_cidr = spec.node_cidr;
        if !node_cidr.contains(&gateway) || gateway == node_cidr.network() || gateway == node_cidr.broadcast() {
            return Err(GenClusterError::GatewayOutside { gateway, node_cidr });
        }
        if let Some(node) = nodes.iter().find(|n| n.address == gateway) {
            return Err(GenClusterError::GatewayIsNode { gateway, node: node.name.clone() });
        }
    }
    Ok(ClusterPlan::new(spec.clone(), nodes, dns_address))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], GenClusterError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(GenClusterError::Random)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` characters from [a-z0-9], uniformly: bytes at or above the
/// largest multiple of 36 are drawn again rather than folded in.
fn random_token_part(len: usize) -> Result<String, GenClusterError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for byte in random_bytes::<32>()? {
            if usize::from(byte) < 252 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(byte) % 36]));
            }
        }
    }
    Ok(out)
}

/// A kubeadm-style bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn bootstrap_token() -> Result<String, GenClusterError> {
    Ok(format!("{}.{}", random_token_part(6)?, random_token_part(16)?))
}

/// How long a generated token authenticates (kubeadm's default TTL).
pub const TOKEN_TTL: time::Duration = time::Duration::hours(24);
/// The join seed's user-data in the cluster folder: one MachineConfig any
/// number of workers join with by the bootstrap token.
pub const JOIN_USER_DATA: &str = "join/user-data";

/// `now` + [`TOKEN_TTL`] as RFC 3339 UTC, as a token Secret's `expiration`.
fn token_expiration(now: OffsetDateTime) -> Result<String, GenClusterError> {
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    (now.to_offset(time::UtcOffset::UTC) + TOKEN_TTL).format(&format).map_err(GenClusterError::Expiration)
}

/// kubeadm's `--discovery-token-ca-cert-hash` of a CA certificate (PEM):
/// `sha256:` and the hex SHA-256 of its SubjectPublicKeyInfo.
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, GenClusterError> {
    let bad = |reason: String| GenClusterError::CaHash { reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex(digest.as_ref())))
}

/// The join seed's user-data: the cluster's settings, the API server, the
/// token and the CA hash; no name, address or pod CIDR, which each node's
/// meta-data, network-config and kernel command line give.
pub fn join_user_data(plan: &ClusterPlan, token: &str, ca_cert_hash: &str) -> Result<String, GenClusterError> {
    let spec = &plan.spec;
    let mut config = MachineConfig::empty();
    config.node.role = Role::Worker;
    config.network.cluster_cidr = Some(spec.cluster_cidr.to_string());
    config.network.service_cidr = Some(spec.service_cidr.to_string());
    config.network.mtu = Some(spec.mtu);
    config.cluster.name = Some(spec.name.clone());
    config.cluster.api_server_endpoint = Some(plan.api_server_endpoint.clone());
    config.cluster.dns_address = Some(plan.dns_address.to_string());
    config.cluster.dns_domain = Some(DNS_DOMAIN.to_owned());
    config.cluster.bootstrap_token = Some(token.into());
    config.cluster.ca_cert_hashes = vec![ca_cert_hash.to_owned()];
    let yaml = config.to_yaml_with_secrets();
    kelson_config::parse(JOIN_USER_DATA, &yaml)
        .map_err(|errors| GenClusterError::InvalidConfig { node: "the join seed".into(), errors })?;
    Ok(format!(
        "# The user-data of a NoCloud seed for any worker joining cluster {} by bootstrap token; it holds\n\
         # the token: keep it private. Each node's seed adds its own meta-data (local-hostname) and\n\
         # network-config (its address); its pod CIDR is kelson.podCIDR on its kernel command line.\n{yaml}",
        spec.name
    ))
}

/// What this run of `gen cluster` produced, for the caller to write and report.
#[derive(Debug)]
pub struct GeneratedCluster {
    pub plan: ClusterPlan,
    /// Random per run; part of every node's instance-id.
    pub generation: String,
    pub files: Vec<OutputFile>,
    /// The bootstrap token's id, expiration and CA hash, and the join seed.
    pub token_join: SummaryTokenJoin,
}

impl GeneratedCluster {
    /// What was written, for the operator: nodes, addresses, where the
    /// seeds and client certificates are. No secrets.
    pub fn describe(&self, dir: &std::path::Path) -> String {
        let dir = dir.display();
        let spec = &self.plan.spec;
        let mut out = format!("wrote cluster {} (generation {}) to {dir}\n", spec.name, self.generation);
        out += &node_table(&self.plan.nodes);
        out += &format!("seed images: {dir}/nodes/<node>/seed.img (they hold the node's private keys)\n");
        out += &format!(
            "kubectl: kubectl --kubeconfig {dir}/{ADMIN_KUBECONFIG} get nodes (Kubernetes {})\n",
            kubeadm::KUBERNETES_VERSION
        );
        for ((name, organisation), file) in CLIENTS.into_iter().zip(KELSONCONFIGS) {
            out += &format!("client {name}: {dir}/pki/{name}.crt, {dir}/pki/{name}.key (O={organisation})\n");
            out += &format!(
                "kelsonctl as {name}: kelsonctl status --kelsonconfig {dir}/{file} (0600: it holds the key)\n"
            );
        }
        {
            let join = &self.token_join;
            out += &format!(
                "token join: {dir}/{JOIN_USER_DATA} (bootstrap token {}, expires {}, CA {}): the user-data of any \
                 worker's seed; it holds the token\n",
                join.token_id, join.expiration, join.ca_cert_hash
            );
        }
        out += &format!("summary: {dir}/cluster.yaml\n");
        out
    }
}

/// The nodes as the operator is shown them: name, role, address, pod CIDR.
pub fn node_table(nodes: &[NodePlan]) -> String {
    let mut out = format!("  {:<24} {:<14} {:<16} {}\n", "NODE", "ROLE", "ADDRESS", "POD CIDR");
    for node in nodes {
        let role = if node.role == Role::ControlPlane { "control-plane" } else { "worker" };
        out += &format!("  {:<24} {role:<14} {:<16} {}\n", node.name, node.address.to_string(), node.pod_cidr);
    }
    out
}

/// The management API's client certificates, handed to people and tools,
/// not to nodes.
const CLIENTS: [(&str, &str); 2] = [("admin", pki::ADMIN_ORGANISATION), ("read-only", pki::READ_ONLY_ORGANISATION)];
/// kelsonctl's config for each client, in [`CLIENTS`]' order.
pub const KELSONCONFIGS: [&str; 2] = [kelsonconfig_file::DEFAULT_FILE, kelsonconfig_file::READ_ONLY_FILE];

/// kelsonctl's config for one client: the cluster CA, the client's
/// certificate and key, and every node at its address on the API's port.
fn kelsonconfig(plan: &ClusterPlan, ca_pem: &str, client: &str, issued: &Issued) -> KelsonConfig {
    KelsonConfig {
        cluster: plan.spec.name.clone(),
        ca: ca_pem.to_owned(),
        client: ClientIdentity {
            name: client.to_owned(),
            certificate: issued.cert_pem.clone(),
            key: issued.key_pem.clone(),
        },
        nodes: plan.nodes.iter().map(kelsonconfig_entry).collect(),
    }
}

/// A node as a kelsonconfig lists it: its address on the API's port.
pub fn kelsonconfig_entry(node: &NodePlan) -> NodeEntry {
    NodeEntry { name: node.name.clone(), endpoint: format!("{}:{}", node.address, kelson_api::PORT) }
}

fn push_pair(files: &mut Vec<OutputFile>, stem: &str, issued: &Issued) {
    files.push(OutputFile::public(format!("{stem}.crt"), issued.cert_pem.clone()));
    files.push(OutputFile::secret(format!("{stem}.key"), issued.key_pem.clone()));
}

fn cert_key(issued: &Issued) -> CertKey {
    CertKey { cert: issued.cert_pem.clone(), key: issued.key_pem.clone().into() }
}

fn push_pki_files(files: &mut Vec<OutputFile>, dir: &str, pki_files: &[PkiFile]) {
    for file in pki_files {
        let path = format!("{dir}/{}", file.path);
        files.push(if file.secret {
            OutputFile::secret(path, file.contents.clone())
        } else {
            OutputFile::public(path, file.contents.clone())
        });
    }
}

fn render_error(what: String) -> impl FnOnce(serde_saphyr::SerializeError) -> GenClusterError {
    move |source| GenClusterError::Render { what, source }
}

/// What a control-plane node carries beyond every node's certificates:
/// kubeadm's certificate directory and kubeconfigs as `files:`, and the
/// control plane's manifests as `staticPods:`.
pub struct ControlPlaneFiles {
    files: Vec<kelson_config::File>,
    static_pods: Vec<StaticPod>,
    /// For a node joining a running etcd: the members' client URLs it adds
    /// itself through (`cluster.etcdJoin`, `cluster.etcdEndpoints`).
    join_through: Option<Vec<String>>,
}

/// `join_through`: `None` for a node founding the cluster with the others
/// (`gen cluster`); the running members' client URLs for one joining them
/// later (`gen node`).
pub fn control_plane_files(
    plan: &ClusterPlan,
    node: &NodePlan,
    cluster_pki: &ClusterPki,
    own: &ControlPlaneCerts,
    join_through: Option<Vec<String>>,
) -> Result<ControlPlaneFiles, GenClusterError> {
    let mode = |secret: bool| Some(if secret { "0600" } else { "0644" }.to_owned());
    let mut files: Vec<kelson_config::File> = cluster_pki
        .shared_files()
        .into_iter()
        .chain(own.files())
        .map(|f| kelson_config::File {
            path: format!("{}/{}", kubeadm::PKI_DIR, f.path),
            content: f.contents.into(),
            mode: mode(f.secret),
        })
        .collect();
    let server = kubeadm::api_server_url(node.address);
    let ca = cluster_pki.ca.cert_pem();
    for (path, user, client) in [
        (kubeadm::CONTROLLER_MANAGER_CONF, "system:kube-controller-manager", &cluster_pki.controller_manager),
        (kubeadm::SCHEDULER_CONF, "system:kube-scheduler", &cluster_pki.scheduler),
    ] {
        let text = kubeadm::kubeconfig(&plan.spec.name, &server, &ca, user, client)
            .map_err(render_error(format!("{path} for {}", node.name)))?;
        files.push(kelson_config::File { path: path.to_owned(), content: text.into(), mode: mode(true) });
    }
    let etcd_state = if join_through.is_some() { EtcdState::Existing } else { EtcdState::New };
    let static_pods = manifests::control_plane(plan, node, etcd_state)
        .map_err(render_error(format!("{}'s static pod manifests", node.name)))?
        .into_iter()
        .map(|(name, manifest)| StaticPod { name, manifest })
        .collect();
    Ok(ControlPlaneFiles { files, static_pods, join_through })
}

/// Issues every certificate, renders each node's machine config and seed,
/// the user's kubeconfig and the summary. Nothing is written to disk here.
pub fn render(plan: ClusterPlan, now: OffsetDateTime) -> Result<GeneratedCluster, GenClusterError> {
    let spec = &plan.spec;
    let generation = hex(&random_bytes::<8>()?);
    let token = bootstrap_token()?;
    let cluster_pki = ClusterPki::new(now)?;
    let ca = &cluster_pki.ca;
    let mut files = Vec::new();
    // DIR/pki holds what kubeadm's /etc/kubernetes/pki would, so an
    // operator can issue more; the per-node ones under pki/<node>/.
    push_pki_files(&mut files, "pki", &cluster_pki.shared_files());
    push_pair(&mut files, &format!("pki/{KUBE_PROXY_CERT}"), &cluster_pki.kube_proxy);
    for ((name, organisation), file) in CLIENTS.into_iter().zip(KELSONCONFIGS) {
        let issued = ca.issue(&LeafSpec::client(name, organisation))?;
        push_pair(&mut files, &format!("pki/{name}"), &issued);
        let text =
            kelsonconfig(&plan, &ca.cert_pem(), name, &issued).to_yaml().map_err(render_error(file.to_owned()))?;
        files.push(OutputFile::secret(file.to_owned(), text));
    }
    let admin = kubeadm::kubeconfig(
        &spec.name,
        &plan.api_server_endpoint,
        &ca.cert_pem(),
        kubeadm::ADMIN_COMMON_NAME,
        &cluster_pki.admin,
    )
    .map_err(render_error(ADMIN_KUBECONFIG.to_owned()))?;
    files.push(OutputFile::secret(ADMIN_KUBECONFIG.to_owned(), admin));

    let expiration = token_expiration(now)?;
    let material = NodeMaterial {
        generation: &generation,
        bootstrap_token: &token,
        bootstrap_token_expiration: Some(&expiration),
        ca,
        kube_proxy: &cluster_pki.kube_proxy,
    };
    let mut summary_nodes = Vec::new();
    for node in &plan.nodes {
        let control_plane = if node.role == Role::ControlPlane {
            let own = cluster_pki.control_plane(&plan, node)?;
            Some((own.files(), control_plane_files(&plan, node, &cluster_pki, &own, None)?))
        } else {
            None
        };
        let rendered = render_node(&plan, node, &material, control_plane)?;
        files.extend(rendered.files);
        summary_nodes.push(rendered.summary);
    }

    let ca_cert_hash = ca_cert_hash(&ca.cert_pem())?;
    let join = join_user_data(&plan, &token, &ca_cert_hash)?;
    files.push(OutputFile::secret(JOIN_USER_DATA.to_owned(), join));
    let mut summary = Summary::new(&plan, &generation, summary_nodes);
    let token_id = token.split('.').next().unwrap_or_default().to_owned();
    let token_join = SummaryTokenJoin { token_id, expiration, ca_cert_hash, user_data: JOIN_USER_DATA.to_owned() };
    summary.token_join = Some(token_join.clone());
    files.push(OutputFile::public(SUMMARY_FILE.to_owned(), summary.to_text()?));
    Ok(GeneratedCluster { plan, generation, files, token_join })
}

/// What every node's files are made from besides its own plan: fresh in
/// `gen cluster`, read back from the cluster folder in `gen node`.
pub struct NodeMaterial<'a> {
    /// The cluster's generation, part of the node's instance-id.
    pub generation: &'a str,
    pub bootstrap_token: &'a str,
    /// When the token stops working; control-plane nodes register it with it.
    pub bootstrap_token_expiration: Option<&'a str>,
    /// The cluster CA, which signs the node's certificates.
    pub ca: &'a Authority,
    /// kube-proxy's client certificate, the same on every node.
    pub kube_proxy: &'a Issued,
}

/// One node's files (under `pki/<node>/` and `nodes/<node>/`) and its
/// entry in `cluster.yaml`.
pub struct RenderedNode {
    pub files: Vec<OutputFile>,
    pub summary: SummaryNode,
}

/// Issues a node's certificates and renders its machine config (validated
/// as the node will) and seed image. A control-plane node also brings its
/// own kubeadm certificates (under `pki/<node>/`) and control-plane files.
pub fn render_node(
    plan: &ClusterPlan,
    node: &NodePlan,
    material: &NodeMaterial<'_>,
    control_plane: Option<(Vec<PkiFile>, ControlPlaneFiles)>,
) -> Result<RenderedNode, GenClusterError> {
    let ca = material.ca;
    let mut files = Vec::new();
    let mut certs = BTreeMap::new();
    certs.insert(MANAGEMENT_API_CERT, ca.issue(&LeafSpec::node(&node.name, node.address, Usage::Server, false))?);
    certs.insert(KUBELET_CERT, ca.issue(&kubeadm::kubelet_leaf(&node.name))?);
    certs.insert(KUBE_PROXY_CERT, material.kube_proxy.clone());
    if control_plane.is_some() {
        let addons = LeafSpec::client(CLUSTER_ADDONS_COMMON_NAME, kubeadm::ADMIN_ORGANISATION);
        certs.insert(CLUSTER_ADDONS_CERT, ca.issue(&addons)?);
    }
    for (name, issued) in &certs {
        if *name != KUBE_PROXY_CERT {
            push_pair(&mut files, &format!("pki/{}/{name}", node.name), issued);
        }
    }
    let mut config = machine_config(plan, node, material.bootstrap_token, &ca.cert_pem(), &certs);
    if let Some((own_pki, control_plane)) = control_plane {
        push_pki_files(&mut files, &format!("pki/{}", node.name), &own_pki);
        config.files = control_plane.files;
        config.static_pods = control_plane.static_pods;
        config.cluster.bootstrap_token_expiration = material.bootstrap_token_expiration.map(str::to_owned);
        if let Some(members) = control_plane.join_through {
            config.cluster.etcd_join = true;
            config.cluster.etcd_endpoints = members;
        }
    }
    let yaml = config.to_yaml_with_secrets();
    let document = format!("nodes/{}/machine-config.yaml", node.name);
    kelson_config::parse(&document, &yaml)
        .map_err(|errors| GenClusterError::InvalidConfig { node: node.name.clone(), errors })?;

    let instance_id = format!("kelson-{}-{}", material.generation, node.name);
    let meta = MetaData { instance_id: instance_id.clone(), local_hostname: node.name.clone() };
    let volume_id = u32::from_be_bytes(random_bytes::<4>()?);
    let image = seed::build_seed_image(&meta, &yaml, volume_id)
        .map_err(|source| GenClusterError::Seed { node: node.name.clone(), source })?;
    // Both carry the node's private keys and the bootstrap token.
    files.push(OutputFile::secret(document.clone(), yaml));
    let seed_path = format!("nodes/{}/seed.img", node.name);
    files.push(OutputFile::secret(seed_path.clone(), image));

    let certificates =
        certs
            .keys()
            .map(|name| {
                if *name == KUBE_PROXY_CERT {
                    format!("pki/{name}.crt")
                } else {
                    format!("pki/{}/{name}.crt", node.name)
                }
            })
            .collect();
    let summary = SummaryNode {
        name: node.name.clone(),
        role: node.role,
        address: node.address.to_string(),
        pod_cidr: node.pod_cidr.to_string(),
        instance_id,
        machine_config: document,
        seed_image: seed_path,
        certificates,
    };
    Ok(RenderedNode { files, summary })
}

fn machine_config(
    plan: &ClusterPlan,
    node: &NodePlan,
    token: &str,
    ca_pem: &str,
    certs: &BTreeMap<&str, Issued>,
) -> MachineConfig {
    let spec = &plan.spec;
    let mut config = MachineConfig::empty();
    config.node.hostname = Some(node.name.clone());
    config.node.role = node.role;
    config.network.uplinks = vec![Uplink {
        name: Some(spec.uplink.clone()),
        addresses: vec![format!("{}/{}", node.address, spec.node_cidr.prefix_len())],
        gateway4: spec.gateway.map(|g| g.to_string()),
        ..Uplink::default()
    }];
    config.network.pod_cidr = Some(node.pod_cidr.to_string());
    config.network.cluster_cidr = Some(spec.cluster_cidr.to_string());
    config.network.service_cidr = Some(spec.service_cidr.to_string());
    config.network.mtu = Some(spec.mtu);
    config.network.peer_routes = plan.peer_routes(node);
    config.cluster.name = Some(spec.name.clone());
    config.cluster.etcd_endpoints = plan.etcd_endpoints.clone();
    config.cluster.api_server_endpoint = Some(plan.api_server_endpoint.clone());
    config.cluster.dns_address = Some(plan.dns_address.to_string());
    config.cluster.dns_domain = Some(DNS_DOMAIN.to_owned());
    config.cluster.bootstrap_token = Some(token.into());
    config.pki.ca = Some(ca_pem.to_owned());
    config.pki.certificates = certs.iter().map(|(name, issued)| ((*name).to_owned(), cert_key(issued))).collect();
    config
}

/// `cluster.yaml`: what an operator needs to find things; no secrets.
/// `gen node` reads it back, so it refuses fields it does not know rather
/// than drop them when it rewrites the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Summary {
    pub name: String,
    pub generation: String,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: String,
    #[serde(rename = "nodeCIDR")]
    pub node_cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub pod_prefix: u8,
    pub mtu: u32,
    pub uplink: String,
    pub dns_address: String,
    pub dns_domain: String,
    pub api_server_endpoint: String,
    pub etcd_endpoints: Vec<String>,
    pub kubernetes_version: String,
    pub admin_kubeconfig: String,
    /// In the order the nodes were generated: `gen cluster`'s, then each
    /// `gen node`'s.
    pub nodes: Vec<SummaryNode>,
    pub certificate_authorities: SummaryAuthorities,
    pub clients: Vec<SummaryClient>,
    /// Workers joining by bootstrap token (absent from folders written
    /// before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_join: Option<SummaryTokenJoin>,
}

/// The bootstrap token workers join with: its id (the secret is in the
/// join user-data and the control-plane nodes' configs only), when it
/// expires, and the CA hash joining nodes check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummaryTokenJoin {
    pub token_id: String,
    pub expiration: String,
    pub ca_cert_hash: String,
    /// The join seed's user-data, relative to the folder.
    pub user_data: String,
}

/// The three CAs' certificates, as kubeadm names them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummaryAuthorities {
    pub cluster: String,
    pub etcd: String,
    pub front_proxy: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummaryNode {
    pub name: String,
    pub role: Role,
    pub address: String,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    pub instance_id: String,
    pub machine_config: String,
    pub seed_image: String,
    pub certificates: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryClient {
    pub name: String,
    pub subject: String,
    pub cert: String,
    pub key: String,
}

impl Summary {
    fn new(plan: &ClusterPlan, generation: &str, nodes: Vec<SummaryNode>) -> Self {
        let spec = &plan.spec;
        Summary {
            name: spec.name.clone(),
            generation: generation.to_owned(),
            cluster_cidr: spec.cluster_cidr.to_string(),
            service_cidr: spec.service_cidr.to_string(),
            node_cidr: spec.node_cidr.to_string(),
            gateway: spec.gateway.map(|g| g.to_string()),
            pod_prefix: spec.pod_prefix,
            mtu: spec.mtu,
            uplink: spec.uplink.clone(),
            dns_address: plan.dns_address.to_string(),
            dns_domain: DNS_DOMAIN.to_owned(),
            api_server_endpoint: plan.api_server_endpoint.clone(),
            etcd_endpoints: plan.etcd_endpoints.clone(),
            kubernetes_version: kubeadm::KUBERNETES_VERSION.to_owned(),
            admin_kubeconfig: ADMIN_KUBECONFIG.to_owned(),
            nodes,
            certificate_authorities: SummaryAuthorities {
                cluster: "pki/ca.crt".to_owned(),
                etcd: "pki/etcd/ca.crt".to_owned(),
                front_proxy: "pki/front-proxy-ca.crt".to_owned(),
            },
            clients: CLIENTS
                .iter()
                .map(|(name, organisation)| SummaryClient {
                    name: (*name).to_owned(),
                    subject: format!("CN={name}, O={organisation}"),
                    cert: format!("pki/{name}.crt"),
                    key: format!("pki/{name}.key"),
                })
                .collect(),
            token_join: None,
        }
    }

    /// The file's text, with a header saying what it is.
    pub fn to_text(&self) -> Result<String, GenClusterError> {
        let body = serde_saphyr::to_string(self).map_err(GenClusterError::Summary)?;
        Ok(format!(
            "# Written by `kelsonctl gen cluster` (and `gen node`, which adds nodes). No secrets here: keys are in \
             pki/, admin.kubeconfig, kelsonconfig* and the nodes' files.\n{body}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(control_planes: usize, workers: usize) -> ClusterSpec {
        ClusterSpec::with_defaults("demo", control_planes, workers)
    }

    #[test]
    fn nodes_are_named_numbered_and_addressed_in_order() {
        let plan = plan(&spec(1, 2)).unwrap();
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["demo-cp-1", "demo-worker-1", "demo-worker-2"]);
        assert_eq!(plan.nodes[2].address, Ipv4Addr::new(192, 168, 100, 12));
        assert_eq!(plan.nodes[2].pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(plan.dns_address, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(plan.api_server_endpoint, "https://192.168.100.10:6443");
        assert_eq!(plan.etcd_endpoints, ["https://192.168.100.10:2379"]);
    }

    #[test]
    fn every_control_plane_node_is_an_etcd_endpoint() {
        let plan = plan(&spec(3, 0)).unwrap();
        assert_eq!(
            plan.etcd_endpoints,
            ["https://192.168.100.10:2379", "https://192.168.100.11:2379", "https://192.168.100.12:2379"]
        );
    }

    #[test]
    fn peer_routes_are_the_other_nodes_subnets_via_their_addresses() {
        let plan = plan(&spec(1, 2)).unwrap();
        let routes = plan.peer_routes(&plan.nodes[1]);
        assert_eq!(
            routes,
            [
                PeerRoute { pod_cidr: "10.244.0.0/24".into(), via: "192.168.100.10".into() },
                PeerRoute { pod_cidr: "10.244.2.0/24".into(), via: "192.168.100.12".into() },
            ]
        );
        let single = super::plan(&spec(1, 0)).unwrap();
        assert!(single.peer_routes(&single.nodes[0]).is_empty());
    }

    #[test]
    fn a_cluster_without_control_plane_is_refused() {
        assert_eq!(plan(&spec(0, 2)).unwrap_err().to_string(), "a cluster needs at least one control-plane node");
    }

    #[test]
    fn a_name_that_makes_bad_hostnames_is_refused() {
        let mut bad = spec(1, 0);
        bad.name = "Demo".into();
        assert_eq!(
            plan(&bad).unwrap_err().to_string(),
            "cluster name \"Demo\" makes node name \"Demo-cp-1\", which is not a lowercase RFC 1123 hostname of at most 63 characters"
        );
        bad.name = "x".repeat(60);
        assert!(matches!(plan(&bad), Err(GenClusterError::NodeName { .. })));
    }

    #[test]
    fn overlapping_networks_are_refused() {
        let mut bad = spec(1, 0);
        bad.node_cidr = "10.244.5.0/24".parse().unwrap();
        assert_eq!(plan(&bad).unwrap_err().to_string(), "cluster CIDR 10.244.0.0/16 overlaps node CIDR 10.244.5.0/24");
        let mut bad = spec(1, 0);
        bad.service_cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(plan(&bad).unwrap_err().to_string(), "cluster CIDR 10.244.0.0/16 overlaps service CIDR 10.0.0.0/8");
    }

    #[test]
    fn too_many_nodes_for_the_cluster_cidr_are_refused_with_the_reason() {
        let mut bad = spec(1, 4);
        bad.cluster_cidr = "10.244.0.0/22".parse().unwrap();
        let err = plan(&bad).unwrap_err();
        assert_eq!(err.to_string(), "planning the cluster's addresses");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "cluster CIDR 10.244.0.0/22 holds 4 /24 pod subnets, fewer than the 5 nodes");
    }

    #[test]
    fn the_gateway_must_be_a_free_host_in_the_node_cidr() {
        let mut s = spec(1, 1);
        s.gateway = Some(Ipv4Addr::new(192, 168, 100, 1));
        assert!(plan(&s).is_ok());
        s.gateway = Some(Ipv4Addr::new(192, 168, 101, 1));
        assert_eq!(
            plan(&s).unwrap_err().to_string(),
            "gateway 192.168.101.1 is not a host address inside node CIDR 192.168.100.0/24"
        );
        s.gateway = Some(Ipv4Addr::new(192, 168, 100, 255));
        assert!(matches!(plan(&s), Err(GenClusterError::GatewayOutside { .. })));
        s.gateway = Some(Ipv4Addr::new(192, 168, 100, 11));
        assert_eq!(plan(&s).unwrap_err().to_string(), "gateway 192.168.100.11 is also node demo-worker-1's address");
    }

    #[test]
    fn a_bad_uplink_name_is_refused() {
        let mut s = spec(1, 0);
        s.uplink = "a-very-long-interface".into();
        assert!(matches!(plan(&s), Err(GenClusterError::UplinkName(_))));
        s.uplink = String::new();
        assert!(matches!(plan(&s), Err(GenClusterError::UplinkName(_))));
    }

    #[test]
    fn bootstrap_tokens_have_the_kubeadm_shape_and_differ() {
        let token = bootstrap_token().unwrap();
        assert_eq!(token.len(), 23);
        assert_eq!(&token[6..7], ".");
        assert!(
            token.chars().enumerate().all(|(i, c)| i == 6 || c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{token}"
        );
        assert_ne!(token, bootstrap_token().unwrap());
    }
}
