//! The CNI config containerd's pods use: `/etc/cni/net.d/10-kelson.conflist`.
//!
//! - `bridge` on cbr0 with `isGateway` (the bridge address is the pods'
//!   gateway; the plugin finds it already on cbr0) and `ipMasq: false`:
//!   Kelson's own KELSON-POSTROUTING rule masquerades, and the plugin's
//!   per-pod rules would duplicate it.
//! - `host-local` IPAM on the upper half of the pod CIDR
//!   ([`BridgePlan::cni_range`]); Kelson's own pods take the lower half.
//! - `portmap` for hostPort.
//! - No `loopback`: containerd's CRI plugin brings up each sandbox's lo itself
//!   by running the `loopback` binary from its CNI bin dir with its own
//!   config, outside any conflist; listing it here would be a second ADD on
//!   the same lo. The binary must still be in the bin dir.
//!
//! cniVersion 1.0.0 is accepted by containernetworking-plugins 1.1.1, the
//! version in Debian bookworm and trixie.

use crate::plan::BridgePlan;
use kelson_base::atomic::{write_atomic, AtomicWriteError};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const CNI_VERSION: &str = "1.0.0";
pub const NETWORK_NAME: &str = "kelson";
pub use kelson_base::paths::CNI_CONFLIST as DEFAULT_CONFLIST;

/// The conflist as JSON.
pub fn conflist(bridge: &BridgePlan) -> serde_json::Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge.name,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": bridge.mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": bridge.pod_cidr.to_string(),
                        "rangeStart": bridge.cni_range.first.to_string(),
                        "rangeEnd": bridge.cni_range.last.to_string(),
                        "gateway": bridge.address.addr().to_string(),
                    }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
            },
        ],
    })
}

#[derive(Debug, thiserror::Error)]
#[error("writing the CNI config {path}")]
pub struct CniConfigError {
    pub path: PathBuf,
    #[source]
    pub source: AtomicWriteError,
}

/// Writes the conflist to `path` if it differs; true when it wrote.
pub fn write_conflist(path: &Path, bridge: &BridgePlan) -> Result<bool, CniConfigError> {
    let text = format!("{:#}\n", conflist(bridge));
    if std::fs::read_to_string(path).is_ok_and(|have| have == text) {
        return Ok(false);
    }
    write_atomic(path, text.as_bytes(), 0o644).map_err(|source| CniConfigError { path: path.to_owned(), source })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::NetPlan;

    fn bridge() -> BridgePlan {
        let network = kelson_config::Network {
            pod_cidr: Some("10.244.1.0/24".into()),
            cluster_cidr: Some("10.244.0.0/16".into()),
            mtu: Some(1460),
            ..Default::default()
        };
        NetPlan::from_config(&network).unwrap().bridge.unwrap()
    }

    #[test]
    fn the_bridge_plugin_uses_cbr0_and_the_upper_half_without_masquerading() {
        let c = conflist(&bridge());
        let b = &c["plugins"][0];
        assert_eq!(b["bridge"], "cbr0");
        assert_eq!(b["ipMasq"], false);
        assert_eq!(b["mtu"], 1460);
        let range = &b["ipam"]["ranges"][0][0];
        assert_eq!(range["subnet"], "10.244.1.0/24");
        assert_eq!(range["rangeStart"], "10.244.1.128");
        assert_eq!(range["rangeEnd"], "10.244.1.254");
        assert_eq!(range["gateway"], "10.244.1.1");
        let types: Vec<&str> = c["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
    }

    #[test]
    fn writing_twice_writes_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.d/10-kelson.conflist");
        assert!(write_conflist(&path, &bridge()).unwrap());
        assert!(!write_conflist(&path, &bridge()).unwrap());
        let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, conflist(&bridge()));
    }
}
