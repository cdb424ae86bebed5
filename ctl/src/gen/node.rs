//! `gen node`: a node added to a cluster folder after `gen cluster`. The
//! folder is the cluster's record: `cluster.yaml` gives the settings and the
//! nodes, `pki/` the CA that signs the new node's certificates and
//! kube-proxy's shared pair, an existing node's machine config the bootstrap
//! token. The new node gets the lowest free address and pod CIDR, and its
//! files are rendered by the same [`render_node`] as `gen cluster`'s nodes.
//! A control-plane node also gets the control plane's certificates, signed
//! by the folder's three CAs, and static pods whose etcd joins the running
//! members (`cluster.etcdJoin` through `cluster.etcdEndpoints`, which then
//! lists it too for the next node).
//!
//! Nothing is written until everything is read, checked and rendered; then
//! the change is staged and moved into place ([`Staging`]), `cluster.yaml`
//! last.

use super::cidr::{self, CidrError};
use super::cluster::{
    control_plane_files, kelsonconfig_entry, node_table, render_node, ClusterPlan, ClusterSpec, GenClusterError,
    NodeMaterial, NodePlan, Summary, DNS_DOMAIN, ETCD_CLIENT_PORT, KELSONCONFIGS, KUBE_PROXY_CERT, SUMMARY_FILE,
};
use super::kubeadm::{ClusterPki, LoadPkiError};
use super::output::{OutputError, OutputFile, Staging};
use super::pki::{Authority, Issued, LoadAuthorityError};
use crate::api::config::{ConfigFileError, KelsonConfig};
use ipnet::Ipv4Net;
use kelson_config::{ConfigErrors, Role};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum GenNodeError {
    #[error("node name {0:?} is not a lowercase RFC 1123 hostname of at most 63 characters")]
    Hostname(String),
    #[error("loading the cluster's control-plane certificates from {}", .0.display())]
    ControlPlanePki(PathBuf, #[source] LoadPkiError),
    #[error("{}: etcdEndpoints is empty: a control-plane node joins etcd through the running members", .0.display())]
    NoEtcdMembers(PathBuf),
    #[error("{} is not a `kelsonctl gen cluster` folder: it has no {SUMMARY_FILE}", .0.display())]
    NotAClusterFolder(PathBuf),
    #[error("{} is missing: {why}", path.display())]
    Missing { path: PathBuf, why: &'static str },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Summary {
        path: PathBuf,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{}: {field}: {reason}", path.display())]
    Field { path: PathBuf, field: String, reason: String },
    #[error("{}: nodes is empty (gen cluster lists every node it wrote)", .0.display())]
    NoNodes(PathBuf),
    #[error("node {name} is already in the cluster: {} has it", place.display())]
    NameTaken { name: String, place: PathBuf },
    #[error("{}: no room for another node", path.display())]
    NoRoom {
        path: PathBuf,
        #[source]
        source: CidrError,
    },
    #[error("loading the cluster CA from {} and {}", cert.display(), key.display())]
    Ca {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: LoadAuthorityError,
    },
    #[error("{} does not validate", path.display())]
    NodeConfig {
        path: PathBuf,
        #[source]
        source: ConfigErrors,
    },
    #[error("{}: cluster.bootstrapToken is missing (gen cluster gives every node the cluster's token)", .0.display())]
    NoBootstrapToken(PathBuf),
    #[error("{} is not the CA that {} trusts (pki.ca): the folder mixes two clusters", ca.display(), config.display())]
    CaMismatch { ca: PathBuf, config: PathBuf },
    #[error(transparent)]
    Kelsonconfig(#[from] ConfigFileError),
    #[error("rendering node {name}")]
    Render {
        name: String,
        #[source]
        source: GenClusterError,
    },
    #[error("rendering {}", .0.display())]
    RenderKelsonconfig(PathBuf, #[source] serde_saphyr::SerializeError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// What `gen node` added, for the caller to report.
#[derive(Debug)]
pub struct GeneratedNode {
    pub cluster: String,
    pub node: NodePlan,
    /// The nodes it has peer routes to.
    pub peers: usize,
    /// The folder's files it changed besides adding the node's own.
    pub updated: Vec<String>,
    /// A control-plane node: the running etcd members it joins through.
    pub etcd_join_through: Option<Vec<String>>,
}

impl GeneratedNode {
    /// What was written, for the operator; no secrets.
    pub fn describe(&self, dir: &Path) -> String {
        let dir = dir.display();
        let node = &self.node;
        let mut out = format!("added node {} to cluster {} in {dir}\n", node.name, self.cluster);
        out += &node_table(std::slice::from_ref(node));
        out += &format!("seed image: {dir}/nodes/{}/seed.img (it holds the node's private keys)\n", node.name);
        out += &format!("peer routes: to the {} other nodes' pod CIDRs\n", self.peers);
        let updated: Vec<String> = self.updated.iter().map(|file| format!("{dir}/{file}")).collect();
        out += &format!("updated: {}\n", updated.join(", "));
        if let Some(members) = &self.etcd_join_through {
            out += &format!(
                "etcd: at its first boot, {} adds itself as a learner through {}, then starts its etcd and is \
                 promoted once in sync; the running control-plane nodes must be up\n",
                node.name,
                members.join(",")
            );
        }
        // What routes the others to it is the Node watcher, from its Node
        // object; their seeds' static routes stay as generated.
        out += &format!(
            "the other nodes' machine configs are unchanged: their static peerRoutes lack {} via {}, which their \
             Node watcher adds once {} has registered\n",
            node.pod_cidr, node.address, node.name
        );
        out
    }
}

fn read(path: &Path, why: &'static str) -> Result<String, GenNodeError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            GenNodeError::Missing { path: path.to_owned(), why }
        } else {
            GenNodeError::Read { path: path.to_owned(), source }
        }
    })
}

/// Adds a node to the cluster folder `dir`.
pub fn generate_node(dir: &Path, spec: &NodeSpec) -> Result<GeneratedNode, GenNodeError> {
    if !kelson_config::valid_hostname(&spec.name) {
        return Err(GenNodeError::Hostname(spec.name.clone()));
    }
    let summary_path = dir.join(SUMMARY_FILE);
    if !summary_path.is_file() {
        return Err(GenNodeError::NotAClusterFolder(dir.to_owned()));
    }
    // Claimed before anything is read, so two runs cannot both add to the
    // same cluster.yaml.
    let staging = Staging::begin(dir)?;
    let folder = ClusterFolder::read(dir, OffsetDateTime::now_utc())?;
    let change = folder.add(spec)?;
    let mut entries = vec![format!("pki/{}", spec.name), format!("nodes/{}", spec.name)];
    entries.extend(change.updated.iter().cloned());
    let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
    staging.commit(&change.files, &entries)?;
    Ok(change.generated)
}

/// What `gen node` reads from a cluster folder.
struct ClusterFolder {
    dir: PathBuf,
    summary: Summary,
    plan: ClusterPlan,
    ca: Authority,
    kube_proxy: Issued,
    bootstrap_token: String,
    /// When the token expires, as the first node's config says.
    bootstrap_token_expiration: Option<String>,
    /// The kelsonconfig files there are, by name.
    kelsonconfigs: Vec<(&'static str, KelsonConfig)>,
    /// When the new node's certificates start.
    now: OffsetDateTime,
}

/// The node's files and the folder's changed files, and the report.
struct Change {
    files: Vec<OutputFile>,
    /// Changed files of the folder, in the order they are to be replaced:
    /// `cluster.yaml` last, so a node is listed only once its files are there.
    updated: Vec<String>,
    generated: GeneratedNode,
}

impl ClusterFolder {
    fn read(dir: &Path, now: OffsetDateTime) -> Result<Self, GenNodeError> {
        let summary_path = dir.join(SUMMARY_FILE);
        let text = read(&summary_path, "gen cluster writes it")?;
        let summary: Summary = serde_saphyr::from_str(&text)
            .map_err(|source| GenNodeError::Summary { path: summary_path.clone(), source: Box::new(source) })?;
        let plan = plan_of(&summary_path, &summary)?;

        let cert = dir.join("pki/ca.crt");
        let key = dir.join("pki/ca.key");
        let ca_pem = read(&cert, "the cluster CA's certificate")?;
        let key_pem = read(&key, "the cluster CA's key signs the new node's certificates")?;
        let ca = Authority::from_pem(&ca_pem, &key_pem, now).map_err(|source| GenNodeError::Ca {
            cert: cert.clone(),
            key,
            source,
        })?;
        let kube_proxy = Issued {
            cert_pem: read(&dir.join(format!("pki/{KUBE_PROXY_CERT}.crt")), "every node carries kube-proxy's pair")?,
            key_pem: read(&dir.join(format!("pki/{KUBE_PROXY_CERT}.key")), "every node carries kube-proxy's pair")?,
        };

        // The token is a secret, so cluster.yaml does not have it; every
        // node's config does. The first node's also says which CA it trusts.
        let first = summary.nodes.first().ok_or_else(|| GenNodeError::NoNodes(summary_path.clone()))?;
        let config_path = dir.join(&first.machine_config);
        let config_text = read(&config_path, "gen cluster writes every node's machine config")?;
        let config = kelson_config::parse(&config_path.display().to_string(), &config_text)
            .map_err(|source| GenNodeError::NodeConfig { path: config_path.clone(), source })?;
        if config.pki.ca.as_deref() != Some(ca_pem.as_str()) {
            return Err(GenNodeError::CaMismatch { ca: cert, config: config_path });
        }
        let bootstrap_token = config
            .cluster
            .bootstrap_token
            .as_ref()
            .map(|token| token.expose().to_owned())
            .ok_or(GenNodeError::NoBootstrapToken(config_path))?;
        let bootstrap_token_expiration = config.cluster.bootstrap_token_expiration.clone();

        let mut kelsonconfigs = Vec::new();
        for file in KELSONCONFIGS {
            let path = dir.join(file);
            // An operator may have moved a kelsonconfig elsewhere; the ones
            // still here are kept up to date.
            if path.exists() {
                let text = read(&path, "kelsonconfig")?;
                kelsonconfigs.push((file, KelsonConfig::from_yaml(&path, &text)?));
            }
        }
        Ok(ClusterFolder {
            dir: dir.to_owned(),
            summary,
            plan,
            ca,
            kube_proxy,
            bootstrap_token,
            bootstrap_token_expiration,
            kelsonconfigs,
            now,
        })
    }

    /// Refuses a name the folder already has anywhere a node's name shows.
    fn check_name_is_free(&self, name: &str) -> Result<(), GenNodeError> {
        let taken = |place: PathBuf| Err(GenNodeError::NameTaken { name: name.to_owned(), place });
        if self.summary.nodes.iter().any(|node| node.name == name) {
            return taken(self.dir.join(SUMMARY_FILE));
        }
        for place in [self.dir.join("nodes").join(name), self.dir.join("pki").join(name)] {
            if place.symlink_metadata().is_ok() {
                return taken(place);
            }
        }
        for (file, config) in &self.kelsonconfigs {
            if config.nodes.iter().any(|node| node.name == name) {
                return taken(self.dir.join(file));
            }
        }
        Ok(())
    }

    /// Plans and renders the new node and the folder's changed files.
    fn add(mut self, spec: &NodeSpec) -> Result<Change, GenNodeError> {
        self.check_name_is_free(&spec.name)?;
        let summary_path = self.dir.join(SUMMARY_FILE);
        let no_room = |source| GenNodeError::NoRoom { path: summary_path.clone(), source };
        let cluster_spec = &self.plan.spec;
        let mut taken_addresses: Vec<Ipv4Addr> = self.plan.nodes.iter().map(|n| n.address).collect();
        taken_addresses.extend(cluster_spec.gateway);
        let address = cidr::next_free_address(cluster_spec.node_cidr, &taken_addresses).map_err(no_room)?;
        let taken_pods: Vec<Ipv4Net> = self.plan.nodes.iter().map(|n| n.pod_cidr).collect();
        let pod_cidr = cidr::next_free_pod_subnet(cluster_spec.cluster_cidr, cluster_spec.pod_prefix, &taken_pods)
            .map_err(no_room)?;
        let node = NodePlan { name: spec.name.clone(), role: spec.role, address, pod_cidr };

        self.plan.nodes.push(node.clone());
        let render_error = |source| GenNodeError::Render { name: node.name.clone(), source };
        let control_plane = if node.role == Role::ControlPlane {
            // The new member joins through those running now, and is one of
            // them from then on, for the next node added.
            let members = self.plan.etcd_endpoints.clone();
            if members.is_empty() {
                return Err(GenNodeError::NoEtcdMembers(summary_path));
            }
            self.plan.etcd_endpoints.push(format!("https://{}:{ETCD_CLIENT_PORT}", node.address));
            let pki_dir = self.dir.join("pki");
            let pki = ClusterPki::load(&pki_dir, self.kube_proxy.clone(), self.now)
                .map_err(|source| GenNodeError::ControlPlanePki(pki_dir, source))?;
            let own = pki.control_plane(&self.plan, &node).map_err(|e| render_error(e.into()))?;
            let files =
                control_plane_files(&self.plan, &node, &pki, &own, Some(members.clone())).map_err(render_error)?;
            Some((members, own.files(), files))
        } else {
            None
        };
        let (etcd_join_through, control_plane) = match control_plane {
            Some((members, pki_files, files)) => (Some(members), Some((pki_files, files))),
            None => (None, None),
        };
        let material = NodeMaterial {
            generation: &self.summary.generation,
            bootstrap_token: &self.bootstrap_token,
            bootstrap_token_expiration: self.bootstrap_token_expiration.as_deref(),
            ca: &self.ca,
            kube_proxy: &self.kube_proxy,
        };
        let rendered = render_node(&self.plan, &node, &material, control_plane).map_err(render_error)?;
        let mut files = rendered.files;
        let mut updated = Vec::new();
        for (file, mut config) in self.kelsonconfigs {
            config.nodes.push(kelsonconfig_entry(&node));
            let text = config.to_yaml().map_err(|e| GenNodeError::RenderKelsonconfig(self.dir.join(file), e))?;
            files.push(OutputFile::secret(file.to_owned(), text));
            updated.push(file.to_owned());
        }
        self.summary.nodes.push(rendered.summary);
        self.summary.etcd_endpoints = self.plan.etcd_endpoints.clone();
        files.push(OutputFile::public(SUMMARY_FILE.to_owned(), self.summary.to_text().map_err(render_error)?));
        updated.push(SUMMARY_FILE.to_owned());
        let generated = GeneratedNode {
            cluster: self.summary.name.clone(),
            peers: self.plan.nodes.len() - 1,
            node,
            updated: updated.clone(),
            etcd_join_through,
        };
        Ok(Change { files, updated, generated })
    }
}

/// The plan `gen cluster` made, read back from `cluster.yaml`: its
/// settings, its nodes and its endpoints as written (an operator who edited
/// an endpoint gets it in the new node too).
fn plan_of(path: &Path, summary: &Summary) -> Result<ClusterPlan, GenNodeError> {
    let field_error = |field: String, reason: String| GenNodeError::Field { path: path.to_owned(), field, reason };
    let network =
        |field: &str, value: &str| cidr::parse_cidr(value).map_err(|e| field_error(field.to_owned(), e.to_string()));
    let address = |field: String, value: &str| {
        value.parse::<Ipv4Addr>().map_err(|_| field_error(field, format!("{value:?} is not an IPv4 address")))
    };
    let mut nodes = Vec::new();
    for (index, node) in summary.nodes.iter().enumerate() {
        nodes.push(NodePlan {
            name: node.name.clone(),
            role: node.role,
            address: address(format!("nodes[{index}].address"), &node.address)?,
            pod_cidr: network(&format!("nodes[{index}].podCIDR"), &node.pod_cidr)?,
        });
    }
    let count = |role| nodes.iter().filter(|n| n.role == role).count();
    let spec = ClusterSpec {
        name: summary.name.clone(),
        control_planes: count(Role::ControlPlane),
        workers: count(Role::Worker),
        cluster_cidr: network("clusterCIDR", &summary.cluster_cidr)?,
        service_cidr: network("serviceCIDR", &summary.service_cidr)?,
        node_cidr: network("nodeCIDR", &summary.node_cidr)?,
        gateway: summary.gateway.as_deref().map(|g| address("gateway".into(), g)).transpose()?,
        pod_prefix: summary.pod_prefix,
        mtu: summary.mtu,
        uplink: summary.uplink.clone(),
    };
    let dns_address = address("dnsAddress".into(), &summary.dns_address)?;
    if summary.dns_domain != DNS_DOMAIN {
        let reason = format!("{:?} is not {DNS_DOMAIN}, the only cluster domain kelsonctl renders", summary.dns_domain);
        return Err(field_error("dnsDomain".into(), reason));
    }
    let mut plan = ClusterPlan::new(spec, nodes, dns_address);
    plan.etcd_endpoints = summary.etcd_endpoints.clone();
    plan.api_server_endpoint = summary.api_server_endpoint.clone();
    Ok(plan)
}
