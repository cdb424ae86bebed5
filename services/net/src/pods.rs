//! Pod networking for pods Kelson runs itself (static pods): a veth pair per
//! pod network namespace, the host end on cbr0, the pod end named eth0 with an
//! address from the lower half of the node's pod CIDR (see
//! [`BridgePlan::kelson_range`]) and a default route via the bridge address.
//!
//! Allocations live in `pods.json` under the state directory and are saved
//! (atomically) before the kernel is touched, so a restart never hands the
//! same address to two pods. CNI's pods use the upper half, so the two never
//! collide.

use crate::apply::chain;
use crate::netlink::{by_name, Netlink, NlError, Route, KELSON_PROTO};
use crate::plan::BridgePlan;
use ipnet::Ipv4Net;
use kelson_base::atomic::{write_atomic, AtomicWriteError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where allocations are kept on a node.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kelson/net";
const STORE_FILE: &str = "pods.json";
/// The pod end's name inside the pod.
pub const POD_IFNAME: &str = "eth0";

/// What a pod got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAttachment {
    /// The pod's address with the pod CIDR's prefix length.
    pub ip: Ipv4Net,
    /// The bridge address, the pod's default gateway.
    pub gateway: Ipv4Addr,
    /// The host end of the veth pair, a port of cbr0.
    pub host_veth: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Allocation {
    ip: Ipv4Addr,
    host_veth: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    pods: BTreeMap<String, Allocation>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("reading the pod address store {path}")]
    ReadStore {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod address store {path} is not valid (left as it is)")]
    CorruptStore {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("saving the pod address store")]
    WriteStore(#[source] AtomicWriteError),
    #[error("no free address left in {first}-{last} for pod {pod_id}")]
    Exhausted { pod_id: String, first: Ipv4Addr, last: Ipv4Addr },
    #[error("pod {pod_id} (netns {netns}): {action}")]
    Kernel {
        pod_id: String,
        netns: PathBuf,
        action: String,
        #[source]
        source: NlError,
    },
}

/// Attaches and detaches pod network namespaces. One per node; calls are
/// serialised so two pods never race for an address.
pub struct PodNetwork<N> {
    netlink: N,
    bridge: BridgePlan,
    store_path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

/// A stable, short host veth name for a pod: "kv" and 8 hex digits (FNV-1a of
/// the pod id), with a digit added on the rare collision.
fn veth_name(pod_id: &str, taken: &[&str]) -> String {
    let hash = pod_id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let base = format!("kv{hash:08x}");
    (0..10u32)
        .map(|n| if n == 0 { base.clone() } else { format!("{base}{n}") })
        .find(|name| !taken.contains(&name.as_str()))
        .unwrap_or(base)
}

impl<N: Netlink> PodNetwork<N> {
    /// `bridge` is the plan's cbr0 (the node's pod CIDR); `state_dir` holds
    /// the allocations ([`DEFAULT_STATE_DIR`] on a node).
    pub fn new(netlink: N, bridge: BridgePlan, state_dir: &Path) -> Self {
        PodNetwork { netlink, bridge, store_path: state_dir.join(STORE_FILE), lock: tokio::sync::Mutex::new(()) }
    }

    fn load(&self) -> Result<Store, PodNetError> {
        match std::fs::read(&self.store_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| PodNetError::CorruptStore { path: self.store_path.clone(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(source) => Err(PodNetError::ReadStore { path: self.store_path.clone(), source }),
        }
    }

    fn save(&self, store: &Store) -> Result<(), PodNetError> {
        // Serializing a map of strings and addresses cannot fail.
        let text = serde_json::to_vec_pretty(store).unwrap_or_default();
        write_atomic(&self.store_path, &text, 0o600).map_err(PodNetError::WriteStore)
    }

    /// Addresses handed out, by pod id.
    pub async fn allocations(&self) -> Result<BTreeMap<String, Ipv4Addr>, PodNetError> {
        let _guard = self.lock.lock().await;
        Ok(self.load()?.pods.into_iter().map(|(id, a)| (id, a.ip)).collect())
    }

    /// Gives the network namespace at `netns` an eth0 on cbr0. Attaching a
    /// pod that is already attached returns its attachment unchanged.
    pub async fn attach(&self, netns: &Path, pod_id: &str) -> Result<PodAttachment, PodNetError> {
        let _guard = self.lock.lock().await;
        let mut store = self.load()?;
        let prefix = self.bridge.pod_cidr.prefix_len();
        let gateway = self.bridge.address.addr();
        let kernel = |action: String| {
            let (pod_id, netns) = (pod_id.to_owned(), netns.to_owned());
            move |source| PodNetError::Kernel { pod_id, netns, action, source }
        };

        let existing = store.pods.get(pod_id).cloned();
        let allocation = match &existing {
            Some(a) => a.clone(),
            None => {
                let used: Vec<Ipv4Addr> = store.pods.values().map(|a| a.ip).collect();
                let range = self.bridge.kelson_range;
                let ip = range.iter().find(|ip| !used.contains(ip)).ok_or_else(|| PodNetError::Exhausted {
                    pod_id: pod_id.to_owned(),
                    first: range.first,
                    last: range.last,
                })?;
                let taken: Vec<&str> = store.pods.values().map(|a| a.host_veth.as_str()).collect();
                let allocation = Allocation { ip, host_veth: veth_name(pod_id, &taken) };
                store.pods.insert(pod_id.to_owned(), allocation.clone());
                // Saved before the kernel changes: a crash from here on
                // leaves the address reserved, never handed out twice.
                self.save(&store)?;
                allocation
            }
        };
        let attachment = PodAttachment {
            ip: Ipv4Net::new(allocation.ip, prefix).unwrap_or_default(),
            gateway,
            host_veth: allocation.host_veth.clone(),
        };

        let links = self.netlink.links().await.map_err(kernel("listing links".into()))?;
        if by_name(&links, &allocation.host_veth).is_some() {
            if self.pod_side_is_configured(netns, &attachment).await {
                return Ok(attachment);
            }
            // A half-made pair from an interrupted attach: start over.
            if let Some(stale) = by_name(&links, &allocation.host_veth) {
                let _ = self.netlink.delete_link(stale.index).await;
            }
        }
        match self.plumb(netns, &attachment, &kernel).await {
            Ok(()) => Ok(attachment),
            Err(e) => {
                if let Ok(links) = self.netlink.links().await {
                    if let Some(l) = by_name(&links, &allocation.host_veth) {
                        let _ = self.netlink.delete_link(l.index).await;
                    }
                }
                if existing.is_none() {
                    store.pods.remove(pod_id);
                    if let Err(save) = self.save(&store) {
                        tracing::error!(pod = pod_id, error = %chain(&save), "could not free the address of a failed attach");
                    }
                }
                Err(e)
            }
        }
    }

    async fn pod_side_is_configured(&self, netns: &Path, attachment: &PodAttachment) -> bool {
        let Ok(pod) = self.netlink.open_in_netns(netns).await else { return false };
        let (Ok(links), Ok(addresses)) = (pod.links().await, pod.addresses().await) else { return false };
        by_name(&links, POD_IFNAME)
            .is_some_and(|eth0| eth0.up && addresses.iter().any(|a| a.link == eth0.index && a.addr == attachment.ip))
    }

    async fn plumb<F, E>(&self, netns: &Path, attachment: &PodAttachment, kernel: &F) -> Result<(), PodNetError>
    where
        F: Fn(String) -> E,
        E: FnOnce(NlError) -> PodNetError,
    {
        let nl = &self.netlink;
        let host = attachment.host_veth.as_str();
        // The pod end gets a unique name on the host side, where eth0 may exist.
        let peer = format!("kp{}", &host[2..]);
        nl.create_veth(host, &peer).await.map_err(kernel(format!("creating veth pair {host}/{peer}")))?;
        let links = nl.links().await.map_err(kernel("listing links".into()))?;
        let find = |name: &str| by_name(&links, name).map(|l| l.index).ok_or_else(|| NlError::from_errno(libc::ENODEV));
        let bridge = find(&self.bridge.name).map_err(kernel(format!("finding bridge {}", self.bridge.name)))?;
        let host_index = find(host).map_err(kernel(format!("finding {host}")))?;
        let peer_index = find(&peer).map_err(kernel(format!("finding {peer}")))?;
        let mtu = self.bridge.mtu;
        nl.set_mtu(host_index, mtu).await.map_err(kernel(format!("setting MTU {mtu} on {host}")))?;
        nl.set_mtu(peer_index, mtu).await.map_err(kernel(format!("setting MTU {mtu} on {peer}")))?;
        nl.set_controller(host_index, bridge)
            .await
            .map_err(kernel(format!("adding {host} to {}", self.bridge.name)))?;
        nl.set_up(host_index).await.map_err(kernel(format!("setting {host} up")))?;
        nl.move_to_netns(peer_index, netns).await.map_err(kernel(format!("moving {peer} into the pod's namespace")))?;

        let pod = nl.open_in_netns(netns).await.map_err(kernel("opening netlink in the pod's namespace".into()))?;
        let links = pod.links().await.map_err(kernel("listing the pod's links".into()))?;
        let find = |name: &str| by_name(&links, name).map(|l| l.index).ok_or_else(|| NlError::from_errno(libc::ENODEV));
        let eth0 = find(&peer).map_err(kernel(format!("finding {peer} in the pod")))?;
        let lo = find("lo").map_err(kernel("finding lo in the pod".into()))?;
        pod.rename(eth0, POD_IFNAME).await.map_err(kernel(format!("renaming {peer} to {POD_IFNAME}")))?;
        match pod.add_address(eth0, attachment.ip, KELSON_PROTO).await {
            Err(e) if !e.is_exists() => return Err(kernel(format!("adding {} to {POD_IFNAME}", attachment.ip))(e)),
            _ => {}
        }
        pod.set_up(eth0).await.map_err(kernel(format!("setting {POD_IFNAME} up")))?;
        pod.set_up(lo).await.map_err(kernel("setting lo up".into()))?;
        let default = Route {
            dst: Ipv4Net::default(),
            gateway: Some(attachment.gateway),
            link: Some(eth0),
            protocol: KELSON_PROTO,
        };
        pod.replace_route(default)
            .await
            .map_err(kernel(format!("adding the default route via {}", attachment.gateway)))?;
        Ok(())
    }

    /// Removes the pod's veth pair and frees its address. Detaching a pod
    /// that is not attached does nothing.
    pub async fn detach(&self, pod_id: &str) -> Result<(), PodNetError> {
        let _guard = self.lock.lock().await;
        let mut store = self.load()?;
        let Some(allocation) = store.pods.get(pod_id).cloned() else { return Ok(()) };
        let kernel = |action: &str, source| PodNetError::Kernel {
            pod_id: pod_id.to_owned(),
            netns: PathBuf::new(),
            action: action.to_owned(),
            source,
        };
        let links = self.netlink.links().await.map_err(|e| kernel("listing links", e))?;
        // Gone already when the pod's namespace was destroyed (that takes
        // the pair with it).
        if let Some(link) = by_name(&links, &allocation.host_veth) {
            match self.netlink.delete_link(link.index).await {
                Err(e) if !e.is_gone() => return Err(kernel(&format!("deleting {}", allocation.host_veth), e)),
                _ => {}
            }
        }
        store.pods.remove(pod_id);
        self.save(&store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeNetlink;
    use crate::plan::NetPlan;

    fn bridge() -> BridgePlan {
        let network = kelson_config::Network {
            pod_cidr: Some("10.244.1.0/28".into()),
            cluster_cidr: Some("10.244.0.0/16".into()),
            mtu: Some(1460),
            ..Default::default()
        };
        NetPlan::from_config(&network).unwrap().bridge.unwrap()
    }

    fn node() -> (FakeNetlink, tempfile::TempDir) {
        let nl = FakeNetlink::new();
        nl.add_link("cbr0", None, 1460, Some("bridge"));
        (nl, tempfile::tempdir().unwrap())
    }

    #[tokio::test]
    async fn attach_makes_a_veth_on_cbr0_and_configures_eth0_in_the_pod() {
        let (nl, dir) = node();
        let pods = PodNetwork::new(nl.clone(), bridge(), dir.path());
        let a = pods.attach(Path::new("/run/netns/pod-a"), "pod-a").await.unwrap();
        assert_eq!(a.ip.to_string(), "10.244.1.2/28");
        assert_eq!(a.gateway.to_string(), "10.244.1.1");
        let host = a.host_veth.clone();
        let peer = format!("kp{}", &host[2..]);
        assert_eq!(
            nl.calls(),
            [
                format!("create_veth {host} {peer}"),
                format!("set_mtu {host} 1460"),
                format!("set_mtu {peer} 1460"),
                format!("set_controller {host} cbr0"),
                format!("set_up {host}"),
                format!("move_to_netns {peer} /run/netns/pod-a"),
                format!("[/run/netns/pod-a] rename {peer} eth0"),
                "[/run/netns/pod-a] add_address eth0 10.244.1.2/28 proto 75".into(),
                "[/run/netns/pod-a] set_up eth0".into(),
                "[/run/netns/pod-a] set_up lo".into(),
                "[/run/netns/pod-a] replace_route 0.0.0.0/0 via 10.244.1.1 dev eth0 proto 75".into(),
            ]
        );
    }

    #[tokio::test]
    async fn addresses_come_from_the_lower_half_and_run_out_cleanly() {
        let (nl, dir) = node();
        let pods = PodNetwork::new(nl, bridge(), dir.path());
        // A /28: .2 to .7 are Kelson's (.8 to .14 are CNI's).
        let mut ips = Vec::new();
        for i in 0..6 {
            ips.push(
                pods.attach(Path::new(&format!("/run/netns/p{i}")), &format!("p{i}"))
                    .await
                    .unwrap()
                    .ip
                    .addr()
                    .to_string(),
            );
        }
        assert_eq!(ips, ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6", "10.244.1.7"]);
        let err = pods.attach(Path::new("/run/netns/p6"), "p6").await.unwrap_err();
        assert_eq!(err.to_string(), "no free address left in 10.244.1.2-10.244.1.7 for pod p6");
    }

    #[tokio::test]
    async fn a_restart_does_not_hand_out_an_address_twice_and_detach_frees_it() {
        let (nl, dir) = node();
        let first = PodNetwork::new(nl.clone(), bridge(), dir.path());
        let a = first.attach(Path::new("/run/netns/a"), "a").await.unwrap();
        drop(first);
        let restarted = PodNetwork::new(nl.clone(), bridge(), dir.path());
        let b = restarted.attach(Path::new("/run/netns/b"), "b").await.unwrap();
        assert_ne!(a.ip, b.ip);
        assert_eq!(restarted.attach(Path::new("/run/netns/a"), "a").await.unwrap(), a, "re-attach returns the same");

        restarted.detach("a").await.unwrap();
        assert!(nl.snapshot().0.iter().all(|l| l.name != a.host_veth));
        assert_eq!(restarted.allocations().await.unwrap().keys().collect::<Vec<_>>(), ["b"]);
        let c = restarted.attach(Path::new("/run/netns/c"), "c").await.unwrap();
        assert_eq!(c.ip, a.ip, "the freed address is reused");
        restarted.detach("never-attached").await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_attach_removes_the_pair_and_frees_the_address() {
        let (nl, dir) = node();
        let pods = PodNetwork::new(nl.clone(), bridge(), dir.path());
        nl.fail_next("move_to_netns", libc::EINVAL);
        let err = pods.attach(Path::new("/run/netns/x"), "x").await.unwrap_err();
        let host = veth_name("x", &[]);
        assert_eq!(
            chain(&err),
            format!(
                "pod x (netns /run/netns/x): moving kp{} into the pod's namespace: Invalid argument (os error 22)",
                &host[2..]
            )
        );
        assert!(nl.snapshot().0.iter().all(|l| l.kind.as_deref() != Some("veth")));
        assert!(pods.allocations().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_store_is_reported_and_left_alone() {
        let (nl, dir) = node();
        std::fs::write(dir.path().join("pods.json"), "{not json").unwrap();
        let pods = PodNetwork::new(nl, bridge(), dir.path());
        let err = pods.attach(Path::new("/run/netns/x"), "x").await.unwrap_err();
        assert!(err.to_string().starts_with("the pod address store"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("pods.json")).unwrap(), "{not json");
    }
}
