//! The machine config's `network` section turned into what the node will
//! apply. Pure: nothing here touches the kernel, so every problem the plan can
//! see is reported before `apply` changes anything.

use ipnet::Ipv4Net;
use kelson_config::Network;
use std::net::{IpAddr, Ipv4Addr};

/// The bridge's name, as in the seed notes and the CNI config.
pub const BRIDGE_NAME: &str = "cbr0";
/// MTU of cbr0 when `network.mtu` is not given.
pub const DEFAULT_MTU: u32 = 1500;
/// MTUs Kelson accepts (IPv4's minimum reassembly size up to jumbo frames),
/// the same range kelson-config checks.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;
/// The smallest pod CIDR (largest prefix length) the plan accepts: it is split
/// in two halves, Kelson's own pods and CNI's, and each needs a few addresses.
pub const MAX_POD_PREFIX: u8 = 28;

/// One reason the plan refuses the config, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PlanError {
    /// The field's path in the machine config, e.g. `network.podCIDR`.
    pub field: String,
    pub reason: String,
}

/// How an uplink's link is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSelector {
    Name(String),
    Mac([u8; 6]),
}

impl std::fmt::Display for LinkSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkSelector::Name(name) => write!(f, "name {name}"),
            LinkSelector::Mac(mac) => write!(f, "MAC {}", format_mac(mac)),
        }
    }
}

/// A static route on an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    pub to: Ipv4Net,
    pub via: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkMode {
    Dhcp4,
    Static { addresses: Vec<Ipv4Net>, gateway: Option<Ipv4Addr>, routes: Vec<StaticRoute> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPlan {
    /// `network.uplinks[i]`, for messages.
    pub field: String,
    pub select: LinkSelector,
    /// The name the selected link is given before it is configured
    /// (netplan's `set-name`).
    pub rename: Option<String>,
    pub mode: UplinkMode,
    pub mtu: Option<u32>,
}

/// cbr0 and the split of the pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePlan {
    pub name: String,
    pub mtu: u32,
    pub pod_cidr: Ipv4Net,
    /// The first address of the pod CIDR, with the pod CIDR's prefix length.
    pub address: Ipv4Net,
    /// Addresses `attach` hands out: the lower half of the pod CIDR without
    /// the network and bridge addresses.
    pub kelson_range: AddressRange,
    /// Addresses CNI's host-local IPAM hands out: the upper half without the
    /// broadcast address.
    pub cni_range: AddressRange,
}

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddressRange {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.first <= addr && addr <= self.last
    }

    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoutePlan {
    pub pod_cidr: Ipv4Net,
    pub via: Ipv4Addr,
}

/// Everything `apply` sets up, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub uplinks: Vec<UplinkPlan>,
    /// Written to resolv.conf; empty means resolv.conf is left to DHCP (or alone).
    pub nameservers: Vec<IpAddr>,
    /// resolv.conf's `search` line, written with `nameservers`.
    pub search: Vec<String>,
    /// Absent when the config has no pod CIDR (a node without pods).
    pub bridge: Option<BridgePlan>,
    /// The MASQUERADE rule's exemption; absent means no rule.
    pub cluster_cidr: Option<Ipv4Net>,
    pub peer_routes: Vec<PeerRoutePlan>,
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Collects problems; every check runs so the operator sees all of them.
#[derive(Default)]
struct Problems(Vec<PlanError>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(PlanError { field: field.into(), reason: reason.into() });
    }

    fn cidr(&mut self, field: &str, text: &str) -> Option<Ipv4Net> {
        match text.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(net)) if net.network() == net.addr() => Some(net),
            Ok(ipnet::IpNet::V4(net)) => {
                self.push(field, format!("{text:?} has host bits set (the network is {})", net.trunc()));
                None
            }
            Ok(ipnet::IpNet::V6(_)) => {
                self.push(field, format!("{text:?} is IPv6, which kelson-net does not support yet"));
                None
            }
            Err(_) => {
                self.push(field, format!("{text:?} is not a CIDR (like 10.244.0.0/16)"));
                None
            }
        }
    }

    fn ipv4(&mut self, field: &str, text: &str) -> Option<Ipv4Addr> {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Some(a),
            Ok(IpAddr::V6(_)) => {
                self.push(field, format!("{text:?} is IPv6, which kelson-net does not support yet"));
                None
            }
            Err(_) => {
                self.push(field, format!("{text:?} is not an IP address"));
                None
            }
        }
    }

    fn mtu(&mut self, field: &str, mtu: u32) -> Option<u32> {
        if MTU_RANGE.contains(&mtu) {
            Some(mtu)
        } else {
            self.push(field, format!("{mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end()));
            None
        }
    }
}

impl NetPlan {
    /// Validates `network` and builds the plan, or returns every problem.
    ///
    /// kelson-config validates the same section; this checks again what
    /// `apply` depends on (a config may reach here without `parse`), plus what
    /// only the plan knows: IPv4 only, a pod CIDR big enough to split, a
    /// cluster CIDR whenever there is a pod CIDR, uplink subnets clear of the
    /// cluster CIDR.
    pub fn from_config(network: &Network) -> Result<NetPlan, Vec<PlanError>> {
        let mut p = Problems::default();
        let pod = network.pod_cidr.as_deref().and_then(|v| p.cidr("network.podCIDR", v));
        let cluster = network.cluster_cidr.as_deref().and_then(|v| p.cidr("network.clusterCIDR", v));
        let service = network.service_cidr.as_deref().and_then(|v| p.cidr("network.serviceCIDR", v));
        let mtu = network.mtu.map_or(Some(DEFAULT_MTU), |m| p.mtu("network.mtu", m));

        if network.pod_cidr.is_some() && network.cluster_cidr.is_none() {
            p.push("network.clusterCIDR", "required when network.podCIDR is set (the MASQUERADE rule exempts it)");
        }
        if let (Some(pod), Some(cluster)) = (&pod, &cluster) {
            if !cluster.contains(pod) {
                p.push("network.podCIDR", format!("{pod} is not inside network.clusterCIDR {cluster}"));
            }
        }
        if let (Some(service), Some(cluster)) = (&service, &cluster) {
            if overlaps(service, cluster) {
                p.push("network.serviceCIDR", format!("{service} overlaps network.clusterCIDR {cluster}"));
            }
        }
        let bridge = match (pod, mtu) {
            (Some(pod), Some(mtu)) => bridge_plan(&mut p, pod, mtu),
            _ => None,
        };

        let mut nameservers = Vec::new();
        for (i, ns) in network.nameservers.iter().enumerate() {
            // resolv.conf takes IPv6 nameservers too, and no route depends on them.
            match ns.parse::<IpAddr>() {
                Ok(addr) => nameservers.push(addr),
                Err(_) => p.push(format!("network.nameservers[{i}]"), format!("{ns:?} is not an IP address")),
            }
        }

        let mut search = Vec::new();
        for (i, domain) in network.search_domains.iter().enumerate() {
            if is_search_domain(domain) {
                search.push(domain.clone());
            } else {
                p.push(
                    format!("network.searchDomains[{i}]"),
                    format!(
                        "{domain:?} is not a domain name (labels of letters, digits and '-', up to 253 characters)"
                    ),
                );
            }
        }
        if !network.search_domains.is_empty() && network.nameservers.is_empty() {
            p.push(
                "network.searchDomains",
                "needs network.nameservers: Kelson writes search domains with the nameservers it is given, and a DHCP lease's resolv.conf would leave them out",
            );
        }

        let mut uplinks: Vec<UplinkPlan> = Vec::new();
        for (i, u) in network.uplinks.iter().enumerate() {
            if let Some(plan) = uplink_plan(&mut p, i, u, cluster.as_ref()) {
                if let Some(other) = uplinks.iter().find(|o| o.select == plan.select) {
                    p.push(&plan.field, format!("selects the same link ({}) as {}", plan.select, other.field));
                }
                if let Some(new) = &plan.rename {
                    let clash = uplinks
                        .iter()
                        .find(|o| o.rename.as_ref() == Some(new) || o.select == LinkSelector::Name(new.clone()));
                    if let Some(other) = clash {
                        p.push(format!("{}.setName", plan.field), format!("{new} is also the name of {}", other.field));
                    }
                }
                uplinks.push(plan);
            }
        }

        let mut peer_routes: Vec<PeerRoutePlan> = Vec::new();
        let mut peer_fields: Vec<String> = Vec::new();
        for (i, r) in network.peer_routes.iter().enumerate() {
            let base = format!("network.peerRoutes[{i}]");
            let via = p.ipv4(&format!("{base}.via"), &r.via);
            let Some(net) = p.cidr(&format!("{base}.podCIDR"), &r.pod_cidr) else { continue };
            if let Some(own) = &pod {
                if overlaps(own, &net) {
                    p.push(format!("{base}.podCIDR"), format!("{net} overlaps this node's network.podCIDR {own}"));
                }
                if let Some(via) = via.filter(|v| own.contains(v)) {
                    p.push(format!("{base}.via"), format!("{via} is inside this node's network.podCIDR {own}"));
                }
            }
            if let Some(cluster) = &cluster {
                if !cluster.contains(&net) {
                    p.push(format!("{base}.podCIDR"), format!("{net} is not inside network.clusterCIDR {cluster}"));
                }
            }
            if let Some(j) = peer_routes.iter().position(|other| overlaps(&other.pod_cidr, &net)) {
                p.push(format!("{base}.podCIDR"), format!("{net} overlaps {}.podCIDR", peer_fields[j]));
            }
            if let Some(via) = via {
                peer_routes.push(PeerRoutePlan { pod_cidr: net, via });
                peer_fields.push(base);
            }
        }

        if p.0.is_empty() {
            Ok(NetPlan { uplinks, nameservers, search, bridge, cluster_cidr: cluster, peer_routes })
        } else {
            Err(p.0)
        }
    }

    /// The uplink plan for a config field path like `network.uplinks[0]`.
    pub fn uplink(&self, field: &str) -> Option<&UplinkPlan> {
        self.uplinks.iter().find(|u| u.field == field)
    }
}

fn bridge_plan(p: &mut Problems, pod: Ipv4Net, mtu: u32) -> Option<BridgePlan> {
    if pod.prefix_len() > MAX_POD_PREFIX {
        p.push(
            "network.podCIDR",
            format!("{pod} is too small: Kelson splits it between its own pods and CNI's and needs at least a /{MAX_POD_PREFIX}"),
        );
        return None;
    }
    let network = u32::from(pod.network());
    let broadcast = u32::from(pod.broadcast());
    let bridge_addr = Ipv4Addr::from(network + 1);
    let address = Ipv4Net::new(bridge_addr, pod.prefix_len()).ok()?;
    // Derived, so it cannot fall outside today; kept so a future explicit
    // bridge address gets the same check.
    if !pod.contains(&bridge_addr) {
        p.push("network.podCIDR", format!("the bridge address {bridge_addr} is outside {pod}"));
        return None;
    }
    // In u64: a /0 has 2^32 addresses.
    let size = u64::from(broadcast) - u64::from(network) + 1;
    let half = (size / 2) as u32;
    Some(BridgePlan {
        name: BRIDGE_NAME.to_owned(),
        mtu,
        pod_cidr: pod,
        address,
        kelson_range: AddressRange { first: Ipv4Addr::from(network + 2), last: Ipv4Addr::from(network + half - 1) },
        cni_range: AddressRange { first: Ipv4Addr::from(network + half), last: Ipv4Addr::from(broadcast - 1) },
    })
}

fn is_interface_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 16 && !name.contains(['/', ' ', ':']) && name != "." && name != ".."
}

fn is_search_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn uplink_plan(p: &mut Problems, i: usize, u: &kelson_config::Uplink, cluster: Option<&Ipv4Net>) -> Option<UplinkPlan> {
    let field = format!("network.uplinks[{i}]");
    let before = p.0.len();
    let select = match (&u.name, &u.mac) {
        (Some(name), None) if !name.is_empty() && name.len() < 16 && !name.contains(['/', ' ']) => {
            Some(LinkSelector::Name(name.clone()))
        }
        (Some(name), None) => {
            p.push(
                format!("{field}.name"),
                format!("{name:?} is not an interface name (1 to 15 characters, no '/' or spaces)"),
            );
            None
        }
        (None, Some(mac)) => match parse_mac(mac) {
            Some(mac) => Some(LinkSelector::Mac(mac)),
            None => {
                p.push(format!("{field}.mac"), format!("{mac:?} is not a MAC address like 52:54:00:12:34:56"));
                None
            }
        },
        _ => {
            p.push(&field, "give exactly one of name or mac to pick the interface");
            None
        }
    };
    let rename = match &u.set_name {
        Some(new) if is_interface_name(new) => Some(new.clone()),
        Some(new) => {
            p.push(
                format!("{field}.setName"),
                format!("{new:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
            );
            None
        }
        None => None,
    };
    if rename.as_deref() == Some(BRIDGE_NAME) {
        p.push(format!("{field}.setName"), format!("{BRIDGE_NAME} is the pod bridge's name"));
    }
    let mtu = u.mtu.and_then(|m| p.mtu(&format!("{field}.mtu"), m));
    let mode = if u.dhcp4 {
        if !u.addresses.is_empty() {
            p.push(format!("{field}.addresses"), "static addresses and dhcp4 together are not supported");
        }
        if u.gateway4.is_some() {
            p.push(format!("{field}.gateway4"), "a static gateway and dhcp4 together are not supported");
        }
        UplinkMode::Dhcp4
    } else {
        let mut addresses = Vec::new();
        for (j, a) in u.addresses.iter().enumerate() {
            let path = format!("{field}.addresses[{j}]");
            match a.parse::<ipnet::IpNet>() {
                Ok(ipnet::IpNet::V4(net)) => {
                    if let Some(cluster) = cluster.filter(|c| overlaps(c, &net.trunc())) {
                        p.push(path, format!("{a} overlaps network.clusterCIDR {cluster}"));
                    } else {
                        addresses.push(net);
                    }
                }
                Ok(ipnet::IpNet::V6(_)) => {
                    p.push(path, format!("{a:?} is IPv6, which kelson-net does not support yet"))
                }
                Err(_) => p.push(path, format!("{a:?} is not an address with a prefix length (10.0.0.5/24)")),
            }
        }
        let gateway = u.gateway4.as_deref().and_then(|g| p.ipv4(&format!("{field}.gateway4"), g));
        let mut routes = Vec::new();
        for (j, r) in u.routes.iter().enumerate() {
            let to = p.cidr(&format!("{field}.routes[{j}].to"), &r.to);
            let via = p.ipv4(&format!("{field}.routes[{j}].via"), &r.via);
            if let (Some(to), Some(via)) = (to, via) {
                routes.push(StaticRoute { to, via });
            }
        }
        UplinkMode::Static { addresses, gateway, routes }
    };
    if p.0.len() != before {
        return None;
    }
    Some(UplinkPlan { field, select: select?, rename, mode, mtu })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_config::{PeerRoute, Route, Uplink};

    fn network() -> Network {
        Network {
            uplinks: vec![Uplink {
                name: Some("eth0".into()),
                addresses: vec!["192.168.10.5/24".into()],
                gateway4: Some("192.168.10.1".into()),
                routes: vec![Route { to: "172.16.0.0/12".into(), via: "192.168.10.254".into() }],
                mtu: Some(1500),
                ..Default::default()
            }],
            pod_cidr: Some("10.244.1.0/24".into()),
            cluster_cidr: Some("10.244.0.0/16".into()),
            service_cidr: Some("10.96.0.0/12".into()),
            mtu: Some(1460),
            nameservers: vec!["192.168.10.1".into()],
            search_domains: vec![],
            peer_routes: vec![PeerRoute { pod_cidr: "10.244.2.0/24".into(), via: "192.168.10.6".into() }],
        }
    }

    fn errors(n: &Network) -> Vec<String> {
        NetPlan::from_config(n).err().unwrap_or_default().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_valid_network_becomes_a_plan_with_the_bridge_on_the_first_pod_address() {
        let plan = NetPlan::from_config(&network()).unwrap();
        let bridge = plan.bridge.unwrap();
        assert_eq!(bridge.address.to_string(), "10.244.1.1/24");
        assert_eq!(bridge.mtu, 1460);
        assert_eq!(
            bridge.kelson_range,
            AddressRange { first: "10.244.1.2".parse().unwrap(), last: "10.244.1.127".parse().unwrap() }
        );
        assert_eq!(
            bridge.cni_range,
            AddressRange { first: "10.244.1.128".parse().unwrap(), last: "10.244.1.254".parse().unwrap() }
        );
        assert_eq!(plan.cluster_cidr.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(plan.uplinks[0].select, LinkSelector::Name("eth0".into()));
        assert_eq!(plan.peer_routes[0].via.to_string(), "192.168.10.6");
    }

    #[test]
    fn pod_cidr_outside_the_cluster_cidr_is_refused_naming_the_field() {
        let mut n = network();
        n.pod_cidr = Some("10.250.1.0/24".into());
        n.peer_routes.clear();
        assert_eq!(errors(&n), ["network.podCIDR: 10.250.1.0/24 is not inside network.clusterCIDR 10.244.0.0/16"]);
    }

    #[test]
    fn overlapping_cidrs_are_each_reported() {
        let mut n = network();
        n.service_cidr = Some("10.0.0.0/8".into());
        n.peer_routes = vec![
            PeerRoute { pod_cidr: "10.244.1.0/25".into(), via: "192.168.10.6".into() },
            PeerRoute { pod_cidr: "10.244.2.0/24".into(), via: "192.168.10.7".into() },
            PeerRoute { pod_cidr: "10.244.2.0/23".into(), via: "192.168.10.8".into() },
        ];
        assert_eq!(
            errors(&n),
            [
                "network.serviceCIDR: 10.0.0.0/8 overlaps network.clusterCIDR 10.244.0.0/16",
                "network.peerRoutes[0].podCIDR: 10.244.1.0/25 overlaps this node's network.podCIDR 10.244.1.0/24",
                "network.peerRoutes[2].podCIDR: 10.244.2.0/23 overlaps network.peerRoutes[1].podCIDR",
            ]
        );
    }

    #[test]
    fn mtu_out_of_range_is_refused_for_the_bridge_and_uplinks() {
        let mut n = network();
        n.mtu = Some(100);
        n.uplinks[0].mtu = Some(65536);
        assert_eq!(
            errors(&n),
            ["network.mtu: 100 is outside 576..=9000", "network.uplinks[0].mtu: 65536 is outside 576..=9000"]
        );
    }

    #[test]
    fn a_pod_cidr_too_small_to_split_is_refused() {
        let mut n = network();
        n.pod_cidr = Some("10.244.1.0/30".into());
        n.peer_routes.clear();
        assert_eq!(
            errors(&n),
            ["network.podCIDR: 10.244.1.0/30 is too small: Kelson splits it between its own pods and CNI's and needs at least a /28"]
        );
    }

    #[test]
    fn a_pod_cidr_without_a_cluster_cidr_is_refused() {
        let mut n = network();
        n.cluster_cidr = None;
        assert_eq!(
            errors(&n),
            ["network.clusterCIDR: required when network.podCIDR is set (the MASQUERADE rule exempts it)"]
        );
    }

    #[test]
    fn ipv6_and_malformed_values_name_their_fields() {
        let mut n = network();
        n.uplinks[0].addresses = vec!["fd00::5/64".into(), "nonsense".into()];
        n.uplinks[0].gateway4 = Some("fd00::1".into());
        n.peer_routes[0].via = "x".into();
        n.nameservers = vec!["dns.example".into()];
        assert_eq!(
            errors(&n),
            [
                "network.nameservers[0]: \"dns.example\" is not an IP address",
                "network.uplinks[0].addresses[0]: \"fd00::5/64\" is IPv6, which kelson-net does not support yet",
                "network.uplinks[0].addresses[1]: \"nonsense\" is not an address with a prefix length (10.0.0.5/24)",
                "network.uplinks[0].gateway4: \"fd00::1\" is IPv6, which kelson-net does not support yet",
                "network.peerRoutes[0].via: \"x\" is not an IP address",
            ]
        );
    }

    #[test]
    fn uplinks_must_pick_one_distinct_link_each() {
        let mut n = network();
        n.uplinks.push(Uplink { name: Some("eth0".into()), dhcp4: true, ..Default::default() });
        n.uplinks.push(Uplink {
            name: Some("eth1".into()),
            mac: Some("52:54:00:00:00:01".into()),
            ..Default::default()
        });
        n.uplinks.push(Uplink { mac: Some("52:54:00:00:00:zz".into()), ..Default::default() });
        assert_eq!(
            errors(&n),
            [
                "network.uplinks[1]: selects the same link (name eth0) as network.uplinks[0]",
                "network.uplinks[2]: give exactly one of name or mac to pick the interface",
                "network.uplinks[3].mac: \"52:54:00:00:00:zz\" is not a MAC address like 52:54:00:12:34:56",
            ]
        );
    }

    #[test]
    fn an_uplink_address_inside_the_cluster_cidr_is_refused() {
        let mut n = network();
        n.uplinks[0].addresses = vec!["10.244.200.5/24".into()];
        assert_eq!(
            errors(&n),
            ["network.uplinks[0].addresses[0]: 10.244.200.5/24 overlaps network.clusterCIDR 10.244.0.0/16"]
        );
    }

    #[test]
    fn dhcp_with_a_static_gateway_is_refused() {
        let mut n = network();
        n.uplinks[0].addresses.clear();
        n.uplinks[0].dhcp4 = true;
        assert_eq!(errors(&n), ["network.uplinks[0].gateway4: a static gateway and dhcp4 together are not supported"]);
    }

    #[test]
    fn set_name_and_search_domains_reach_the_plan() {
        let mut n = network();
        n.uplinks[0].name = None;
        n.uplinks[0].mac = Some("52:54:00:00:00:01".into());
        n.uplinks[0].set_name = Some("lan0".into());
        n.search_domains = vec!["corp.example".into(), "lab.example.".into()];
        let plan = NetPlan::from_config(&n).unwrap();
        assert_eq!(plan.uplinks[0].rename.as_deref(), Some("lan0"));
        assert_eq!(plan.search, vec!["corp.example", "lab.example."]);
    }

    #[test]
    fn bad_set_names_and_search_domains_are_refused_naming_the_field() {
        let mut n = network();
        n.uplinks[0].set_name = Some("a-name-far-too-long".into());
        n.uplinks.push(Uplink { name: Some("eth1".into()), set_name: Some("cbr0".into()), ..Default::default() });
        n.uplinks.push(Uplink { name: Some("eth2".into()), dhcp4: true, ..Default::default() });
        n.uplinks.push(Uplink { name: Some("eth3".into()), set_name: Some("eth2".into()), ..Default::default() });
        n.search_domains = vec!["bad domain".into()];
        assert_eq!(
            errors(&n),
            [
                "network.searchDomains[0]: \"bad domain\" is not a domain name (labels of letters, digits and '-', up to 253 characters)",
                "network.uplinks[0].setName: \"a-name-far-too-long\" is not an interface name (1 to 15 characters, no '/', ':' or spaces)",
                "network.uplinks[1].setName: cbr0 is the pod bridge's name",
                "network.uplinks[3].setName: eth2 is also the name of network.uplinks[2]",
            ]
        );
        let mut n = network();
        n.nameservers.clear();
        n.search_domains = vec!["corp.example".into()];
        assert_eq!(
            errors(&n),
            ["network.searchDomains: needs network.nameservers: Kelson writes search domains with the nameservers it is given, and a DHCP lease's resolv.conf would leave them out"]
        );
    }

    #[test]
    fn an_empty_network_section_is_a_plan_that_sets_up_only_lo() {
        let plan = NetPlan::from_config(&Network::default()).unwrap();
        assert!(plan.bridge.is_none() && plan.uplinks.is_empty() && plan.cluster_cidr.is_none());
    }
}
