//! The cluster as this node routes it (pure): every other Node's pod CIDR
//! via that Node's InternalIP, and this node's own pod CIDR as the cluster
//! records it. The seed notes route pods between nodes directly, with no
//! overlay, so these routes are all the pod network needs.

use ipnet::Ipv4Net;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What routing needs from one Node object; `None` where the Node does not
/// (yet) say: the controller-manager or the node fills in the pod CIDR
/// after registration, the kubelet the addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAddressing {
    /// `spec.podCIDR`, or else the first IPv4 network of `spec.podCIDRs`.
    pub pod_cidr: Option<Ipv4Net>,
    /// The first IPv4 `InternalIP` of `status.addresses`.
    pub internal_ip: Option<Ipv4Addr>,
}

impl NodeAddressing {
    /// Reads a Node's JSON (the whole object). Fields that do not parse
    /// count as absent: a Node this node cannot route to is left out, not
    /// an error.
    pub fn from_node(node: &Value) -> Self {
        let spec = node.get("spec");
        let single = spec.and_then(|s| s.get("podCIDR")).and_then(Value::as_str).into_iter();
        let listed = spec.and_then(|s| s.get("podCIDRs")).and_then(Value::as_array).into_iter().flatten();
        let pod_cidr = single.chain(listed.filter_map(Value::as_str)).find_map(|text| text.parse::<Ipv4Net>().ok());
        let internal_ip = node
            .get("status")
            .and_then(|s| s.get("addresses"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .find_map(|a| a.get("address").and_then(Value::as_str)?.parse::<Ipv4Addr>().ok());
        NodeAddressing { pod_cidr: pod_cidr.map(|n| n.trunc()), internal_ip }
    }
}

/// A route this node keeps: `pod_cidr` via `address`, for Node `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    pub pod_cidr: Ipv4Net,
    pub address: Ipv4Addr,
}

/// The cluster from this node's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's own `spec.podCIDR`, once the cluster has one.
    pub own_pod_cidr: Option<Ipv4Net>,
    /// Every other Node with both a pod CIDR and an address, by name.
    pub peers: Vec<PeerNode>,
    /// Nodes left out because their pod CIDR overlaps this node's or an
    /// earlier (by name) peer's: routing them would send one network two
    /// ways.
    pub overlapping: Vec<String>,
}

/// The view of `nodes` (by name) from node `own`.
pub fn cluster_view(nodes: &BTreeMap<String, NodeAddressing>, own: &str) -> ClusterView {
    let own_pod_cidr = nodes.get(own).and_then(|n| n.pod_cidr);
    let mut view = ClusterView { own_pod_cidr, ..ClusterView::default() };
    for (name, node) in nodes {
        if name == own {
            continue;
        }
        let (Some(pod_cidr), Some(address)) = (node.pod_cidr, node.internal_ip) else { continue };
        let overlaps = |other: &Ipv4Net| other.contains(&pod_cidr.network()) || pod_cidr.contains(&other.network());
        if own_pod_cidr.iter().any(overlaps) || view.peers.iter().any(|p| overlaps(&p.pod_cidr)) {
            view.overlapping.push(name.clone());
            continue;
        }
        view.peers.push(PeerNode { name: name.clone(), pod_cidr, address });
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(pod_cidr: Option<&str>, internal_ip: Option<&str>) -> Value {
        let mut node = json!({"kind": "Node", "metadata": {"name": "x"}, "spec": {}, "status": {"addresses": [
            {"type": "Hostname", "address": "x"}
        ]}});
        if let Some(cidr) = pod_cidr {
            node["spec"]["podCIDR"] = json!(cidr);
            node["spec"]["podCIDRs"] = json!([cidr]);
        }
        if let Some(ip) = internal_ip {
            node["status"]["addresses"].as_array_mut().unwrap().push(json!({"type": "InternalIP", "address": ip}));
        }
        node
    }

    fn nodes(list: &[(&str, Option<&str>, Option<&str>)]) -> BTreeMap<String, NodeAddressing> {
        list.iter().map(|(name, cidr, ip)| (name.to_string(), NodeAddressing::from_node(&node(*cidr, *ip)))).collect()
    }

    #[test]
    fn a_node_gives_its_pod_cidr_and_internal_ip() {
        let read = NodeAddressing::from_node(&node(Some("10.244.2.0/24"), Some("192.168.100.12")));
        assert_eq!(read.pod_cidr, Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(read.internal_ip, Some("192.168.100.12".parse().unwrap()));
    }

    #[test]
    fn the_first_ipv4_pod_cidr_and_address_count_and_junk_is_absent() {
        let dual = json!({"spec": {"podCIDRs": ["fd00:10::/64", "10.244.7.0/24"]}, "status": {"addresses": [
            {"type": "InternalIP", "address": "fd00::7"}, {"type": "ExternalIP", "address": "203.0.113.7"},
            {"type": "InternalIP", "address": "192.168.100.17"}
        ]}});
        let read = NodeAddressing::from_node(&dual);
        assert_eq!(read.pod_cidr, Some("10.244.7.0/24".parse().unwrap()));
        assert_eq!(read.internal_ip, Some("192.168.100.17".parse().unwrap()));
        let junk = json!({"spec": {"podCIDR": "not a network"}, "status": {"addresses": "nope"}});
        assert_eq!(NodeAddressing::from_node(&junk), NodeAddressing::default());
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_is_a_peer() {
        let view = cluster_view(
            &nodes(&[
                ("cp-1", Some("10.244.0.0/24"), Some("192.168.100.10")),
                ("w-1", Some("10.244.1.0/24"), Some("192.168.100.11")),
                ("w-2", Some("10.244.2.0/24"), Some("192.168.100.12")),
                ("w-3", None, Some("192.168.100.13")),
                ("w-4", Some("10.244.4.0/24"), None),
            ]),
            "w-1",
        );
        assert_eq!(view.own_pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        let peers: Vec<(&str, String, String)> =
            view.peers.iter().map(|p| (p.name.as_str(), p.pod_cidr.to_string(), p.address.to_string())).collect();
        assert_eq!(
            peers,
            [
                ("cp-1", "10.244.0.0/24".to_owned(), "192.168.100.10".to_owned()),
                ("w-2", "10.244.2.0/24".to_owned(), "192.168.100.12".to_owned()),
            ]
        );
        assert!(view.overlapping.is_empty());
    }

    #[test]
    fn a_node_whose_cidr_overlaps_ours_or_an_earlier_peers_is_left_out() {
        let view = cluster_view(
            &nodes(&[
                ("a", Some("10.244.1.0/24"), Some("192.168.100.11")),
                ("b", Some("10.244.0.0/16"), Some("192.168.100.12")),
                ("c", Some("10.244.5.0/24"), Some("192.168.100.13")),
                ("d", Some("10.244.5.128/25"), Some("192.168.100.14")),
            ]),
            "a",
        );
        assert_eq!(view.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(view.overlapping, ["b", "d"]);
    }

    #[test]
    fn before_our_node_registers_there_is_no_own_cidr_and_peers_still_count() {
        let view = cluster_view(&nodes(&[("cp-1", Some("10.244.0.0/24"), Some("192.168.100.10"))]), "w-9");
        assert_eq!(view.own_pod_cidr, None);
        assert_eq!(view.peers.len(), 1);
    }
}
