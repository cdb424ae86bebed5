//! The machine config: one versioned YAML document (`apiVersion:
//! kelson.dev/v1alpha1`, `kind: MachineConfig`) describing a node.
//!
//! [`parse`] is strict (unknown fields are errors, with a "did you mean"
//! when a known field is close) and then validates meaning; every error
//! names the document, the field's path (`network.podCIDR`) and the
//! reason, and all of a document's errors are reported together.
//!
//! A node's config is made of [`Layer`]s (image defaults < kernel command
//! line < cloud-init < API) combined by [`resolve`], which also records
//! where each value came from. [`nocloud`] turns a cloud-init NoCloud
//! seed's files into layers; [`Store`] keeps the cloud-init and API layers
//! across reboots.

mod error;
mod layers;
pub mod nocloud;
mod schema;
mod secret;
mod store;
mod structure;
mod validate;

pub use error::{did_you_mean, ConfigError, ConfigErrors};
pub use layers::{resolve, Effective, Layer, Source, CMDLINE_KEYS};
pub use schema::*;
pub use secret::{Secret, REDACTED};
pub use store::{Store, StoreError, STATE_DIR};
pub use validate::valid_ca_cert_hash;

pub const API_VERSION: &str = "kelson.dev/v1alpha1";
pub const KIND: &str = "MachineConfig";
/// The static pod (`staticPods[].name`) that runs a control-plane node's
/// etcd member, as `kelsonctl gen` names it; `cluster.etcdJoin` sets its
/// `--initial-cluster`.
pub const ETCD_STATIC_POD: &str = "etcd.yaml";
/// The node's own kubelet client certificate in `pki.certificates`
/// (`CN=system:node:<node>`), as `kelsonctl gen` names it.
pub const KUBELET_CERTIFICATE: &str = "kubelet";

/// A hostname the kernel and Kubernetes both accept: RFC 1123 labels,
/// at most 63 characters in all (the node name limit).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && name.split('.').all(valid_dns_label)
}

/// An RFC 1123 label: 1 to 63 lowercase letters, digits and '-', not
/// starting or ending with '-'.
pub fn valid_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl MachineConfig {
    /// A config with only `apiVersion` and `kind`: every section empty.
    pub fn empty() -> Self {
        MachineConfig {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            node: Node::default(),
            network: Network::default(),
            cluster: Cluster::default(),
            pki: Pki::default(),
            time: Time::default(),
            kubelet: Component::default(),
            kube_proxy: Component::default(),
            static_pods: Vec::new(),
            files: Vec::new(),
            sysctls: Default::default(),
            kernel_modules: Vec::new(),
            install: Install::default(),
        }
    }

    /// The config as YAML with every [`Secret`] shown as [`REDACTED`]: safe
    /// to print or to put in a world-readable file.
    pub fn to_yaml(&self) -> String {
        // Serializing plain structs of strings, numbers and maps cannot fail;
        // an error here would be a bug in the YAML writer.
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# could not render config: {e}\n"))
    }

    /// The config as a YAML document that [`parse`] reads back unchanged,
    /// secrets included: only for files only root can read (mode 0600).
    pub fn to_yaml_with_secrets(&self) -> String {
        secret::reveal_secrets(|| self.to_yaml())
    }
}

/// Parses and validates one machine config document. `document` names it
/// in errors (a file path, or `cloud-init user-data`).
pub fn parse(document: &str, text: &str) -> Result<MachineConfig, ConfigErrors> {
    let config: MachineConfig = structure::parse_yaml(document, text)?;
    let errors = validate::validate(&config);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors::new(
            errors
                .into_iter()
                .map(|(path, reason)| ConfigError { document: document.to_owned(), path, reason })
                .collect(),
        ))
    }
}
