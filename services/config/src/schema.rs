//! The machine config's fields. CIDRs and addresses are kept as written and
//! checked by `validate`, so a malformed one is reported with its path.

use crate::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub node: Node,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub pki: Pki,
    #[serde(default)]
    pub time: Time,
    #[serde(default)]
    pub kubelet: Component,
    #[serde(default)]
    pub kube_proxy: Component,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_pods: Vec<StaticPod>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Install::is_unset")]
    pub install: Install,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    #[default]
    Worker,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<Uplink>,
    #[serde(rename = "podCIDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "clusterCIDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    #[serde(rename = "serviceCIDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// The cbr0 bridge's MTU (the seed notes use 1460).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Search domains for resolv.conf, written with `nameservers`.
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_routes: Vec<PeerRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Uplink {
    /// Match by interface name or by MAC address (one of the two).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The name the link is given (netplan's `set-name`): it is renamed
    /// before it is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp4: bool,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    pub to: String,
    pub via: String,
}

/// Another node's pod CIDR, reached directly through that node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerRoute {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    pub via: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// etcd's client URLs. On a node with `etcdJoin`, those of the members
    /// already running, through which it adds itself.
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// A control-plane node joining an etcd cluster that runs already
    /// (`kelsonctl gen node --role control-plane` sets it). While its etcd
    /// has no data, PID 1 holds its `etcd.yaml` static pod back, adds it as
    /// a learner through `etcdEndpoints` (with
    /// `/etc/kubernetes/pki/apiserver-etcd-client.{crt,key}`), starts it
    /// with the `--initial-cluster` etcd answered and promotes it once in
    /// sync. Its manifest says `--initial-cluster-state=existing`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub etcd_join: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_server_endpoint: Option<String>,
    #[serde(rename = "dnsAddress")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// A kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`. On a
    /// control-plane node, the token PID 1 registers in the cluster (the
    /// `bootstrap-token-<id>` Secret, with `bootstrapTokenExpiration`); on
    /// a node without its own kubelet certificate, what its kubelet trades
    /// for one (TLS bootstrap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<Secret>,
    /// When the token stops authenticating (RFC 3339, UTC:
    /// `2026-12-09T10:00:00Z`), written into its Secret; the
    /// controller-manager's tokencleaner deletes it then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_expiration: Option<String>,
    /// Joining with the token alone, as `kubeadm join
    /// --discovery-token-ca-cert-hash` does: the SHA-256 of the cluster
    /// CA's public key (`sha256:<hex of its SubjectPublicKeyInfo>`). PID 1
    /// reads the `cluster-info` ConfigMap from `apiServerEndpoint`
    /// anonymously, checks the token's signature on it and the CA against
    /// these, and only then writes the kubelet's bootstrap kubeconfig.
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca_cert_hashes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pki {
    /// The cluster CA certificate, PEM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// name → certificate and key, PEM.
    #[serde(default)]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, CertKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertKey {
    pub cert: String,
    pub key: Secret,
}

/// The kubelet or kube-proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Component {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticPod {
    /// The file name under /etc/kubernetes/manifests.
    pub name: String,
    pub manifest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct File {
    pub path: String,
    /// Files written by a seed are often keys and credentials: every file's
    /// content is treated as a secret.
    pub content: Secret,
    /// Octal, as a string (`"0644"`); 0644 if absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Time synchronisation: the NTP servers the node should use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Time {
    #[serde(default)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

/// Installing Kelson from the ISO: only a node booted live from the ISO acts
/// on it; an installed node ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Install {
    /// The whole disk to write the disk image to (`/dev/vda`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Overwrite the disk even if it holds a partition table or filesystem.
    #[serde(default, skip_serializing_if = "is_false")]
    pub wipe: bool,
}

impl Install {
    fn is_unset(&self) -> bool {
        self.disk.is_none() && !self.wipe
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
