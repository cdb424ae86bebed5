//! Meaning checks after parsing. Each returns (field path, reason) pairs;
//! all of them run, so every problem is reported at once.

use crate::schema::*;
use crate::{ETCD_STATIC_POD, KUBELET_CERTIFICATE};
use ipnet::IpNet;
use std::net::IpAddr;

type Problems = Vec<(String, String)>;

fn cidr(problems: &mut Problems, path: &str, value: &str) -> Option<IpNet> {
    match value.parse::<IpNet>() {
        Ok(net) if net.network() == net.addr() => Some(net),
        Ok(net) => {
            problems.push((path.to_owned(), format!("{value:?} has host bits set (the network is {})", net.trunc())));
            None
        }
        Err(_) => {
            problems.push((path.to_owned(), format!("{value:?} is not a CIDR (like 10.244.0.0/16)")));
            None
        }
    }
}

fn address(problems: &mut Problems, path: &str, value: &str) {
    if value.parse::<IpAddr>().is_err() {
        problems.push((path.to_owned(), format!("{value:?} is not an IP address")));
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub(crate) fn validate(c: &MachineConfig) -> Problems {
    let mut p = Problems::new();
    if c.api_version != crate::API_VERSION {
        p.push(("apiVersion".into(), format!("{:?} is not supported (use {:?})", c.api_version, crate::API_VERSION)));
    }
    if c.kind != crate::KIND {
        p.push(("kind".into(), format!("{:?} is not {:?}", c.kind, crate::KIND)));
    }
    if let Some(h) = &c.node.hostname {
        if !crate::valid_hostname(h) {
            p.push((
                "node.hostname".into(),
                format!("{h:?} is not a lowercase RFC 1123 name of at most 63 characters"),
            ));
        }
    }
    validate_network(&c.network, &mut p);
    validate_cluster(c, &mut p);
    for (i, f) in c.files.iter().enumerate() {
        if !f.path.starts_with('/') {
            p.push((format!("files[{i}].path"), format!("{:?} is not an absolute path", f.path)));
        }
        if let Some(mode) = &f.mode {
            if u32::from_str_radix(mode, 8).map_or(true, |m| m > 0o7777) {
                p.push((format!("files[{i}].mode"), format!("{mode:?} is not an octal file mode like \"0644\"")));
            }
        }
    }
    for (i, pod) in c.static_pods.iter().enumerate() {
        if pod.name.contains('/')
            || !(pod.name.ends_with(".yaml") || pod.name.ends_with(".yml") || pod.name.ends_with(".json"))
        {
            p.push((
                format!("staticPods[{i}].name"),
                format!("{:?} must be a file name ending in .yaml, .yml or .json", pod.name),
            ));
        }
    }
    if let Some(disk) = &c.install.disk {
        let name = disk.strip_prefix("/dev/").unwrap_or("");
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            p.push(("install.disk".into(), format!("{disk:?} is not a whole disk's device like /dev/vda")));
        }
    }
    if c.install.wipe && c.install.disk.is_none() {
        p.push(("install.wipe".into(), "set without install.disk (which disk to wipe?)".into()));
    }
    for (i, server) in c.time.servers.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() && !crate::valid_hostname(&server.to_ascii_lowercase()) {
            p.push((format!("time.servers[{i}]"), format!("{server:?} is neither an IP address nor a host name")));
        }
    }
    for key in c.sysctls.keys() {
        if key.is_empty() || key.contains('/') || key.contains("..") {
            p.push((format!("sysctls.{key}"), "not a sysctl name like net.ipv4.ip_forward".into()));
        }
    }
    p
}

fn validate_network(n: &Network, p: &mut Problems) {
    let pod = n.pod_cidr.as_deref().and_then(|v| cidr(p, "network.podCIDR", v));
    let cluster = n.cluster_cidr.as_deref().and_then(|v| cidr(p, "network.clusterCIDR", v));
    let service = n.service_cidr.as_deref().and_then(|v| cidr(p, "network.serviceCIDR", v));
    if let (Some(pod), Some(cluster)) = (&pod, &cluster) {
        if !cluster.contains(pod) {
            p.push(("network.podCIDR".into(), format!("{pod} is not inside network.clusterCIDR {cluster}")));
        }
    }
    if let (Some(service), Some(cluster)) = (&service, &cluster) {
        if overlaps(service, cluster) {
            p.push(("network.serviceCIDR".into(), format!("{service} overlaps network.clusterCIDR {cluster}")));
        }
    }
    if let Some(mtu) = n.mtu {
        if !(576..=9000).contains(&mtu) {
            p.push(("network.mtu".into(), format!("{mtu} is outside 576..=9000")));
        }
    }
    for (i, ns) in n.nameservers.iter().enumerate() {
        address(p, &format!("network.nameservers[{i}]"), ns);
    }
    for (i, u) in n.uplinks.iter().enumerate() {
        let base = format!("network.uplinks[{i}]");
        if u.name.is_none() == u.mac.is_none() {
            p.push((base.clone(), "give exactly one of name or mac to pick the interface".into()));
        }
        if let Some(mac) = &u.mac {
            let parts: Vec<&str> = mac.split(':').collect();
            if parts.len() != 6 || !parts.iter().all(|x| x.len() == 2 && u8::from_str_radix(x, 16).is_ok()) {
                p.push((format!("{base}.mac"), format!("{mac:?} is not a MAC address like 52:54:00:12:34:56")));
            }
        }
        if u.dhcp4 && !u.addresses.is_empty() {
            p.push((format!("{base}.addresses"), "static addresses and dhcp4 together are not supported".into()));
        }
        for (j, a) in u.addresses.iter().enumerate() {
            if a.parse::<IpNet>().is_err() {
                p.push((
                    format!("{base}.addresses[{j}]"),
                    format!("{a:?} is not an address with a prefix length (10.0.0.5/24)"),
                ));
            }
        }
        if let Some(gw) = &u.gateway4 {
            address(p, &format!("{base}.gateway4"), gw);
        }
        for (j, r) in u.routes.iter().enumerate() {
            cidr(p, &format!("{base}.routes[{j}].to"), &r.to);
            address(p, &format!("{base}.routes[{j}].via"), &r.via);
        }
        if let Some(mtu) = u.mtu {
            if !(576..=9000).contains(&mtu) {
                p.push((format!("{base}.mtu"), format!("{mtu} is outside 576..=9000")));
            }
        }
    }
    let mut peers: Vec<(usize, IpNet)> = Vec::new();
    for (i, r) in n.peer_routes.iter().enumerate() {
        let base = format!("network.peerRoutes[{i}]");
        address(p, &format!("{base}.via"), &r.via);
        let Some(net) = cidr(p, &format!("{base}.podCIDR"), &r.pod_cidr) else { continue };
        if let Some(own) = &pod {
            if overlaps(own, &net) {
                p.push((format!("{base}.podCIDR"), format!("{net} overlaps this node's network.podCIDR {own}")));
            }
        }
        if let Some((j, _)) = peers.iter().find(|(_, other)| overlaps(other, &net)) {
            p.push((format!("{base}.podCIDR"), format!("{net} overlaps network.peerRoutes[{j}].podCIDR")));
        }
        peers.push((i, net));
    }
}

fn validate_cluster(c: &MachineConfig, p: &mut Problems) {
    let cl = &c.cluster;
    if let Some(dns) = &cl.dns_address {
        address(p, "cluster.dnsAddress", dns);
    }
    if let Some(token) = cl.bootstrap_token.as_ref().map(crate::Secret::expose) {
        let ok = token.len() == 23
            && token.as_bytes()[6] == b'.'
            && token.chars().enumerate().all(|(i, ch)| i == 6 || ch.is_ascii_lowercase() || ch.is_ascii_digit());
        if !ok {
            // The token itself is a secret and stays out of the message.
            p.push((
                "cluster.bootstrapToken".into(),
                "not a bootstrap token of the form [a-z0-9]{6}.[a-z0-9]{16}".into(),
            ));
        }
    }
    if let Some(expiration) = &cl.bootstrap_token_expiration {
        if !rfc3339_utc(expiration) {
            p.push((
                "cluster.bootstrapTokenExpiration".into(),
                format!("{expiration:?} is not an RFC 3339 UTC time like \"2026-12-09T10:00:00Z\""),
            ));
        }
        if cl.bootstrap_token.is_none() {
            p.push(("cluster.bootstrapTokenExpiration".into(), "set without cluster.bootstrapToken".into()));
        }
    }
    validate_token_join(c, p);
    if cl.etcd_join {
        if c.node.role != Role::ControlPlane {
            p.push(("cluster.etcdJoin".into(), "only a control-plane node runs an etcd member to join".into()));
        }
        if cl.etcd_endpoints.is_empty() {
            p.push((
                "cluster.etcdJoin".into(),
                "needs cluster.etcdEndpoints: the running members it adds itself through".into(),
            ));
        }
        if !c.static_pods.iter().any(|pod| pod.name == ETCD_STATIC_POD) {
            p.push((
                "cluster.etcdJoin".into(),
                format!("needs the static pod {ETCD_STATIC_POD} (staticPods), whose --initial-cluster it sets"),
            ));
        }
        for (i, endpoint) in cl.etcd_endpoints.iter().enumerate() {
            if !endpoint.starts_with("https://") {
                let reason = format!("{endpoint:?} is not an https:// URL (etcd is reached over mutual TLS)");
                p.push((format!("cluster.etcdEndpoints[{i}]"), reason));
            }
        }
    }
    if c.node.role == Role::Worker && cl.api_server_endpoint.is_none() && !cl.etcd_endpoints.is_empty() {
        p.push(("cluster.apiServerEndpoint".into(), "a worker needs the API server endpoint to join".into()));
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` with plausible fields: what a Secret's
/// `expiration` takes (Go's time.RFC3339), in UTC.
fn rfc3339_utc(value: &str) -> bool {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let number = |range: std::ops::Range<usize>| value.get(range).and_then(|d| d.parse::<u32>().ok()).unwrap_or(99);
    b.len() == 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'Z'
        && (1..=12).contains(&number(5..7))
        && (1..=31).contains(&number(8..10))
        && number(11..13) < 24
        && number(14..16) < 60
        && number(17..19) < 61
}

/// `sha256:` and 64 lowercase or uppercase hex digits, as kubeadm prints
/// `--discovery-token-ca-cert-hash`.
pub fn valid_ca_cert_hash(value: &str) -> bool {
    value.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `cluster.caCertHashes`: a worker joining by the token alone.
fn validate_token_join(c: &MachineConfig, p: &mut Problems) {
    let cl = &c.cluster;
    if cl.ca_cert_hashes.is_empty() {
        return;
    }
    for (i, hash) in cl.ca_cert_hashes.iter().enumerate() {
        if !valid_ca_cert_hash(hash) {
            p.push((
                format!("cluster.caCertHashes[{i}]"),
                format!("{hash:?} is not sha256:<64 hex digits> (kubeadm's --discovery-token-ca-cert-hash)"),
            ));
        }
    }
    if cl.bootstrap_token.is_none() {
        p.push((
            "cluster.caCertHashes".into(),
            "needs cluster.bootstrapToken: the token signs the cluster-info the hashes check".into(),
        ));
    }
    match cl.api_server_endpoint.as_deref() {
        None => {
            p.push(("cluster.caCertHashes".into(), "needs cluster.apiServerEndpoint to discover the cluster at".into()))
        }
        Some(endpoint) if !endpoint.starts_with("https://") => p.push((
            "cluster.apiServerEndpoint".into(),
            format!("{endpoint:?} is not an https:// URL (discovery reads cluster-info over TLS)"),
        )),
        Some(_) => {}
    }
    if c.node.role != Role::Worker {
        p.push((
            "cluster.caCertHashes".into(),
            "only a worker joins by token (a control-plane node carries the cluster's certificates)".into(),
        ));
    }
    if c.pki.certificates.contains_key(KUBELET_CERTIFICATE) {
        p.push((
            "cluster.caCertHashes".into(),
            "set beside pki.certificates.kubelet: a node joins with its own kubelet certificate or by the token, not both"
                .into(),
        ));
    }
}
