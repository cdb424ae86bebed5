//! The CNI network containerd gives pods: Debian's `bridge` plugin on cbr0
//! with `host-local` addresses from the node's pod CIDR. Kelson sets up
//! cbr0, its address and the MASQUERADE rule itself (kelson-net), so the
//! plugin neither masquerades nor owns the bridge's configuration.

use super::paths::CNI_CONFIG;
use super::RenderedFile;
use kelson_config::MachineConfig;
use serde_json::json;

/// `None` without a pod CIDR: there is nothing to hand out.
pub fn render(config: &MachineConfig) -> Option<RenderedFile> {
    let pod_cidr = config.network.pod_cidr.as_ref()?;
    let mut bridge = json!({
        "type": "bridge",
        "bridge": "cbr0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": pod_cidr }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    });
    if let Some(mtu) = config.network.mtu {
        bridge["mtu"] = json!(mtu);
    }
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "kelson",
        "plugins": [bridge, { "type": "portmap", "capabilities": { "portMappings": true } }],
    });
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    Some(RenderedFile::new(CNI_CONFIG, text, 0o644))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::worker_config;

    #[test]
    fn pods_get_addresses_from_the_pod_cidr_on_cbr0_without_masquerade() {
        let file = render(&worker_config()).unwrap();
        assert_eq!(
            file.path.to_str(),
            Some("/etc/cni/net.d/10-kelson.conflist")
        );
        let v: serde_json::Value = serde_json::from_slice(&file.contents).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cbr0");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["mtu"], 1460);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn no_pod_cidr_no_cni_config() {
        assert!(render(&MachineConfig::empty()).is_none());
    }
}
