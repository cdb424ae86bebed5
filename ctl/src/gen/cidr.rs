//! Address arithmetic for a generated cluster: parsing the CIDR flags,
//! carving one pod subnet per node out of the cluster CIDR, and picking
//! node and service addresses. IPv4 only, as the node's networking is.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Node addresses start at this offset into the node CIDR, leaving the
/// low addresses for the gateway and other infrastructure.
pub const FIRST_NODE_OFFSET: u32 = 10;

/// kubeadm's convention: cluster DNS is the 10th address of the service CIDR.
pub const DNS_OFFSET: u32 = 10;

/// Smaller pod subnets leave no room for pods once cbr0 holds the first address.
pub const LONGEST_POD_PREFIX: u8 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{value:?} is not an IPv4 CIDR like 10.244.0.0/16")]
    NotACidr { value: String },
    #[error("{value:?} has host bits set (the network is {network})")]
    HostBitsSet { value: String, network: Ipv4Net },
    #[error("pod prefix /{prefix} must be between cluster CIDR {cluster}'s /{} and /{LONGEST_POD_PREFIX}", cluster.prefix_len())]
    PodPrefixOutOfRange { cluster: Ipv4Net, prefix: u8 },
    #[error("cluster CIDR {cluster} holds {available} /{prefix} pod subnets, fewer than the {needed} nodes")]
    TooFewPodSubnets { cluster: Ipv4Net, prefix: u8, available: u64, needed: usize },
    #[error("node CIDR {cidr} holds {available} node addresses (from .{FIRST_NODE_OFFSET} on), fewer than the {needed} nodes")]
    TooFewNodeAddresses { cidr: Ipv4Net, available: u64, needed: usize },
    #[error("node CIDR {cidr} has no free node address: every one from .{FIRST_NODE_OFFSET} to the last before broadcast is a node's or the gateway's")]
    NoFreeNodeAddress { cidr: Ipv4Net },
    #[error("cluster CIDR {cluster} has no free /{prefix} pod subnet: every one overlaps a node's pod CIDR")]
    NoFreePodSubnet { cluster: Ipv4Net, prefix: u8 },
    #[error("service CIDR {cidr} is too small to hold the cluster DNS address (its {DNS_OFFSET}th address)")]
    NoDnsAddress { cidr: Ipv4Net },
}

/// Parses a network in CIDR notation; host bits must be clear so that what
/// the operator typed is exactly the network used.
pub fn parse_cidr(value: &str) -> Result<Ipv4Net, CidrError> {
    let net: Ipv4Net = value.parse().map_err(|_| CidrError::NotACidr { value: value.to_owned() })?;
    if net.addr() != net.network() {
        return Err(CidrError::HostBitsSet { value: value.to_owned(), network: net.trunc() });
    }
    Ok(net)
}

/// The first `count` subnets of length `prefix` inside `cluster`, in order:
/// node k gets the k-th.
pub fn carve_pod_subnets(cluster: Ipv4Net, prefix: u8, count: usize) -> Result<Vec<Ipv4Net>, CidrError> {
    if prefix < cluster.prefix_len() || prefix > LONGEST_POD_PREFIX {
        return Err(CidrError::PodPrefixOutOfRange { cluster, prefix });
    }
    let available = 1u64 << (prefix - cluster.prefix_len());
    if (count as u64) > available {
        return Err(CidrError::TooFewPodSubnets { cluster, prefix, available, needed: count });
    }
    let subnets = cluster.subnets(prefix).map_err(|_| CidrError::PodPrefixOutOfRange { cluster, prefix })?;
    Ok(subnets.take(count).collect())
}

/// `count` consecutive host addresses starting [`FIRST_NODE_OFFSET`] into
/// `cidr`, none of them the broadcast address.
pub fn node_addresses(cidr: Ipv4Net, count: usize) -> Result<Vec<Ipv4Addr>, CidrError> {
    let network = u32::from(cidr.network());
    let broadcast = u32::from(cidr.broadcast());
    // Usable offsets are FIRST_NODE_OFFSET ..= size-2 (the last is broadcast).
    let size = u64::from(broadcast - network) + 1;
    let available = size.saturating_sub(u64::from(FIRST_NODE_OFFSET) + 1);
    if (count as u64) > available {
        return Err(CidrError::TooFewNodeAddresses { cidr, available, needed: count });
    }
    Ok((0..count as u32).map(|i| Ipv4Addr::from(network + FIRST_NODE_OFFSET + i)).collect())
}

/// The lowest address of `cidr` from [`FIRST_NODE_OFFSET`] on, before
/// broadcast, that is not in `taken` (the nodes' addresses and the
/// gateway): where a node added later goes.
pub fn next_free_address(cidr: Ipv4Net, taken: &[Ipv4Addr]) -> Result<Ipv4Addr, CidrError> {
    let network = u32::from(cidr.network());
    let broadcast = u32::from(cidr.broadcast());
    network
        .checked_add(FIRST_NODE_OFFSET)
        .into_iter()
        .flat_map(|first| first..broadcast)
        .map(Ipv4Addr::from)
        .find(|address| !taken.contains(address))
        .ok_or(CidrError::NoFreeNodeAddress { cidr })
}

/// The first `/prefix` subnet of `cluster`, in [`carve_pod_subnets`]'
/// order, that overlaps none of `taken`: a later node's pod CIDR.
pub fn next_free_pod_subnet(cluster: Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Result<Ipv4Net, CidrError> {
    if prefix < cluster.prefix_len() || prefix > LONGEST_POD_PREFIX {
        return Err(CidrError::PodPrefixOutOfRange { cluster, prefix });
    }
    let mut subnets = cluster.subnets(prefix).map_err(|_| CidrError::PodPrefixOutOfRange { cluster, prefix })?;
    subnets
        .find(|subnet| !taken.iter().any(|used| overlaps(*subnet, *used)))
        .ok_or(CidrError::NoFreePodSubnet { cluster, prefix })
}

/// The cluster DNS service address: the [`DNS_OFFSET`]th address of the service CIDR.
pub fn dns_address(service: Ipv4Net) -> Result<Ipv4Addr, CidrError> {
    let network = u32::from(service.network());
    let broadcast = u32::from(service.broadcast());
    if broadcast - network <= DNS_OFFSET {
        return Err(CidrError::NoDnsAddress { cidr: service });
    }
    Ok(Ipv4Addr::from(network + DNS_OFFSET))
}

/// Whether two networks share any address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse_accepts_a_network_and_rejects_host_bits_and_garbage() {
        assert_eq!(parse_cidr("10.244.0.0/16").unwrap(), net("10.244.0.0/16"));
        assert_eq!(
            parse_cidr("10.244.1.0/16").unwrap_err().to_string(),
            "\"10.244.1.0/16\" has host bits set (the network is 10.244.0.0/16)"
        );
        assert_eq!(
            parse_cidr("10.244.0/16").unwrap_err().to_string(),
            "\"10.244.0/16\" is not an IPv4 CIDR like 10.244.0.0/16"
        );
        assert!(matches!(parse_cidr("10.244.0.0"), Err(CidrError::NotACidr { .. })));
        assert!(matches!(parse_cidr("fd00::/64"), Err(CidrError::NotACidr { .. })));
        assert!(matches!(parse_cidr("10.244.0.0/33"), Err(CidrError::NotACidr { .. })));
    }

    #[test]
    fn node_k_gets_the_kth_pod_subnet() {
        let subnets = carve_pod_subnets(net("10.244.0.0/16"), 24, 3).unwrap();
        assert_eq!(subnets, vec![net("10.244.0.0/24"), net("10.244.1.0/24"), net("10.244.2.0/24")]);
        let subnets = carve_pod_subnets(net("10.244.0.0/16"), 26, 5).unwrap();
        assert_eq!(subnets[4], net("10.244.1.0/26"));
    }

    #[test]
    fn a_cluster_cidr_can_be_filled_exactly() {
        let subnets = carve_pod_subnets(net("10.244.0.0/22"), 24, 4).unwrap();
        assert_eq!(subnets.last(), Some(&net("10.244.3.0/24")));
        let whole = carve_pod_subnets(net("10.244.0.0/24"), 24, 1).unwrap();
        assert_eq!(whole, vec![net("10.244.0.0/24")]);
    }

    #[test]
    fn a_cluster_cidr_too_small_for_the_nodes_is_refused() {
        let err = carve_pod_subnets(net("10.244.0.0/22"), 24, 5).unwrap_err();
        assert_eq!(err.to_string(), "cluster CIDR 10.244.0.0/22 holds 4 /24 pod subnets, fewer than the 5 nodes");
    }

    #[test]
    fn a_pod_prefix_outside_the_cluster_cidr_or_too_long_is_refused() {
        let err = carve_pod_subnets(net("10.244.0.0/16"), 12, 1).unwrap_err();
        assert_eq!(err.to_string(), "pod prefix /12 must be between cluster CIDR 10.244.0.0/16's /16 and /30");
        assert!(matches!(carve_pod_subnets(net("10.244.0.0/16"), 31, 1), Err(CidrError::PodPrefixOutOfRange { .. })));
    }

    #[test]
    fn node_addresses_start_at_ten_and_stop_before_broadcast() {
        let addrs = node_addresses(net("192.168.100.0/24"), 3).unwrap();
        assert_eq!(
            addrs,
            vec![Ipv4Addr::new(192, 168, 100, 10), Ipv4Addr::new(192, 168, 100, 11), Ipv4Addr::new(192, 168, 100, 12)]
        );
        // A /28 has offsets 10..=14 usable: five nodes fit, six do not.
        let five = node_addresses(net("192.168.100.0/28"), 5).unwrap();
        assert_eq!(five.last(), Some(&Ipv4Addr::new(192, 168, 100, 14)));
        let err = node_addresses(net("192.168.100.0/28"), 6).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node CIDR 192.168.100.0/28 holds 5 node addresses (from .10 on), fewer than the 6 nodes"
        );
    }

    #[test]
    fn a_node_cidr_smaller_than_the_offset_holds_no_nodes() {
        let err = node_addresses(net("192.168.100.0/29"), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node CIDR 192.168.100.0/29 holds 0 node addresses (from .10 on), fewer than the 1 nodes"
        );
        assert!(node_addresses(net("192.168.100.7/32"), 1).is_err());
    }

    #[test]
    fn the_next_free_address_fills_the_lowest_gap_and_skips_the_gateway() {
        let cidr = net("192.168.100.0/24");
        let at = |last: u8| Ipv4Addr::new(192, 168, 100, last);
        assert_eq!(next_free_address(cidr, &[]).unwrap(), at(10));
        assert_eq!(next_free_address(cidr, &[at(10), at(11), at(12)]).unwrap(), at(13));
        assert_eq!(next_free_address(cidr, &[at(10), at(12)]).unwrap(), at(11));
        assert_eq!(next_free_address(cidr, &[at(10), at(11)]).unwrap(), at(12));
        assert_eq!(next_free_address(cidr, &[at(11), at(10), at(12), at(13)]).unwrap(), at(14));
    }

    #[test]
    fn a_full_node_cidr_has_no_free_address() {
        let cidr = net("192.168.100.0/28");
        let taken: Vec<Ipv4Addr> = (10..=14).map(|last| Ipv4Addr::new(192, 168, 100, last)).collect();
        assert_eq!(
            next_free_address(cidr, &taken).unwrap_err().to_string(),
            "node CIDR 192.168.100.0/28 has no free node address: every one from .10 to the last before broadcast is a node's or the gateway's"
        );
        assert_eq!(next_free_address(cidr, &taken[..4]).unwrap(), Ipv4Addr::new(192, 168, 100, 14));
        assert!(next_free_address(net("192.168.100.0/29"), &[]).is_err());
        assert!(next_free_address(net("255.255.255.240/28"), &[]).is_ok());
    }

    #[test]
    fn the_next_free_pod_subnet_skips_any_that_overlaps_a_nodes() {
        let cluster = net("10.244.0.0/16");
        assert_eq!(next_free_pod_subnet(cluster, 24, &[]).unwrap(), net("10.244.0.0/24"));
        let taken = [net("10.244.0.0/24"), net("10.244.2.0/24")];
        assert_eq!(next_free_pod_subnet(cluster, 24, &taken).unwrap(), net("10.244.1.0/24"));
        // A node's wider CIDR (edited by hand) blocks every subnet inside it.
        assert_eq!(next_free_pod_subnet(cluster, 24, &[net("10.244.0.0/23")]).unwrap(), net("10.244.2.0/24"));
        let full = carve_pod_subnets(net("10.244.0.0/22"), 24, 4).unwrap();
        assert_eq!(
            next_free_pod_subnet(net("10.244.0.0/22"), 24, &full).unwrap_err().to_string(),
            "cluster CIDR 10.244.0.0/22 has no free /24 pod subnet: every one overlaps a node's pod CIDR"
        );
        assert!(matches!(next_free_pod_subnet(cluster, 31, &[]), Err(CidrError::PodPrefixOutOfRange { .. })));
    }

    #[test]
    fn dns_is_the_tenth_service_address() {
        assert_eq!(dns_address(net("10.96.0.0/12")).unwrap(), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(dns_address(net("10.96.0.0/28")).unwrap(), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(
            dns_address(net("10.96.0.0/29")).unwrap_err().to_string(),
            "service CIDR 10.96.0.0/29 is too small to hold the cluster DNS address (its 10th address)"
        );
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(overlaps(net("10.0.0.0/8"), net("10.96.0.0/12")));
        assert!(overlaps(net("10.96.0.0/12"), net("10.0.0.0/8")));
        assert!(!overlaps(net("10.244.0.0/16"), net("10.96.0.0/12")));
        assert!(!overlaps(net("10.0.0.0/24"), net("10.0.1.0/24")));
    }
}
