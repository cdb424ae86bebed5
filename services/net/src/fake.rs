//! An in-memory [`Netlink`] that keeps links, addresses and routes per
//! namespace, records every changing call, and can fail the next call of a
//! given operation with an errno. Public so crates that use kelson-net (pods,
//! init) can test against it too.

use crate::netlink::{Address, Link, Netlink, NlError, Route};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone)]
struct FakeLink {
    id: u64,
    peer: Option<u64>,
    ns: Option<PathBuf>,
    link: Link,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_index: u32,
    links: Vec<FakeLink>,
    addresses: Vec<(Option<PathBuf>, Address)>,
    routes: Vec<(Option<PathBuf>, Route)>,
    calls: Vec<String>,
    /// Reads: `links`, `addresses`, `routes` (dumps) and `link NAME`.
    reads: Vec<String>,
    failures: HashMap<String, i32>,
}

/// A fake kernel. Clones share state; [`Netlink::open_in_netns`] gives a
/// handle onto another namespace of the same fake kernel.
#[derive(Debug, Clone, Default)]
pub struct FakeNetlink {
    state: Arc<Mutex<State>>,
    ns: Option<PathBuf>,
}

impl FakeNetlink {
    /// A kernel with `lo` (down, as in a fresh namespace).
    pub fn new() -> Self {
        let fake = FakeNetlink::default();
        fake.add_link("lo", None, 65536, None);
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a link as if a driver had created it; returns its index.
    pub fn add_link(&self, name: &str, mac: Option<[u8; 6]>, mtu: u32, kind: Option<&str>) -> u32 {
        let mut s = self.lock();
        s.next_index += 1;
        s.next_id += 1;
        let (index, id) = (s.next_index, s.next_id);
        s.links.push(FakeLink {
            id,
            peer: None,
            ns: self.ns.clone(),
            link: Link { index, name: name.into(), mac, mtu, up: false, kind: kind.map(Into::into), controller: None },
        });
        index
    }

    /// Adds an address as if someone else had (protocol as given).
    pub fn add_foreign_address(&self, link: u32, addr: Ipv4Net, protocol: Option<u8>) {
        let ns = self.ns.clone();
        self.lock().addresses.push((ns, Address { link, addr, protocol }));
    }

    /// Adds a route as if someone else had.
    pub fn add_foreign_route(&self, route: Route) {
        let ns = self.ns.clone();
        self.lock().routes.push((ns, route));
    }

    /// Fails the next call of `op` (a method name like "add_address") with `errno`.
    pub fn fail_next(&self, op: &str, errno: i32) {
        self.lock().failures.insert(op.into(), errno);
    }

    /// The changing calls made so far, in order, like
    /// `add_address cbr0 10.244.1.1/24 proto 75` (with `[netns] ` in front
    /// for calls made in another namespace).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The reads made so far, in order: `links`, `addresses` and `routes`
    /// for dumps, `link NAME` for a single link.
    pub fn reads(&self) -> Vec<String> {
        self.lock().reads.clone()
    }

    pub fn clear_reads(&self) {
        self.lock().reads.clear();
    }

    /// The state of this handle's namespace, for assertions.
    pub fn snapshot(&self) -> (Vec<Link>, Vec<Address>, Vec<Route>) {
        let s = self.lock();
        let mut links: Vec<Link> = s.links.iter().filter(|l| l.ns == self.ns).map(|l| l.link.clone()).collect();
        links.sort_by_key(|l| l.index);
        let addresses = s.addresses.iter().filter(|(ns, _)| *ns == self.ns).map(|(_, a)| *a).collect();
        let routes = s.routes.iter().filter(|(ns, _)| *ns == self.ns).map(|(_, r)| *r).collect();
        (links, addresses, routes)
    }

    fn name_of(&self, s: &State, index: u32) -> String {
        s.links
            .iter()
            .find(|l| l.ns == self.ns && l.link.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.link.name.clone())
    }

    /// Records the call and returns the injected failure, if any.
    fn begin(&self, s: &mut State, op: &str, text: String) -> Result<(), NlError> {
        if let Some(errno) = s.failures.remove(op) {
            return Err(NlError::from_errno(errno));
        }
        let prefix = self.ns.as_ref().map(|p| format!("[{}] ", p.display())).unwrap_or_default();
        s.calls.push(format!("{prefix}{op} {text}"));
        Ok(())
    }

    fn read_failure(&self, op: &str) -> Result<(), NlError> {
        let mut s = self.lock();
        s.reads.push(op.to_owned());
        match s.failures.remove(op.split(' ').next().unwrap_or(op)) {
            Some(errno) => Err(NlError::from_errno(errno)),
            None => Ok(()),
        }
    }

    fn link_mut<'a>(&self, s: &'a mut State, index: u32) -> Result<&'a mut FakeLink, NlError> {
        let ns = self.ns.clone();
        s.links
            .iter_mut()
            .find(|l| l.ns == ns && l.link.index == index)
            .ok_or_else(|| NlError::from_errno(libc::ENODEV))
    }

    fn create(&self, s: &mut State, name: &str, kind: &str) -> Result<u64, NlError> {
        if s.links.iter().any(|l| l.ns == self.ns && l.link.name == name) {
            return Err(NlError::from_errno(libc::EEXIST));
        }
        s.next_index += 1;
        s.next_id += 1;
        let (index, id) = (s.next_index, s.next_id);
        let mac = [0x02, 0, 0, 0, (id >> 8) as u8, id as u8];
        s.links.push(FakeLink {
            id,
            peer: None,
            ns: self.ns.clone(),
            link: Link {
                index,
                name: name.into(),
                mac: Some(mac),
                mtu: 1500,
                up: false,
                kind: Some(kind.into()),
                controller: None,
            },
        });
        Ok(id)
    }
}

impl Netlink for FakeNetlink {
    async fn links(&self) -> Result<Vec<Link>, NlError> {
        self.read_failure("links")?;
        Ok(self.snapshot().0)
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NlError> {
        self.read_failure(&format!("link {name}"))?;
        Ok(self.snapshot().0.into_iter().find(|l| l.name == name))
    }

    async fn set_up(&self, link: u32) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "set_up", name)?;
        self.link_mut(&mut s, link)?.link.up = true;
        Ok(())
    }

    async fn set_down(&self, link: u32) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "set_down", name)?;
        self.link_mut(&mut s, link)?.link.up = false;
        Ok(())
    }

    async fn set_mtu(&self, link: u32, mtu: u32) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "set_mtu", format!("{name} {mtu}"))?;
        self.link_mut(&mut s, link)?.link.mtu = mtu;
        Ok(())
    }

    async fn rename(&self, link: u32, name: &str) -> Result<(), NlError> {
        let mut s = self.lock();
        let old = self.name_of(&s, link);
        // As Linux: a link that is up cannot be renamed.
        if self.link_mut(&mut s, link)?.link.up {
            return Err(NlError::from_errno(libc::EBUSY));
        }
        self.begin(&mut s, "rename", format!("{old} {name}"))?;
        self.link_mut(&mut s, link)?.link.name = name.into();
        Ok(())
    }

    async fn set_controller(&self, link: u32, bridge: u32) -> Result<(), NlError> {
        let mut s = self.lock();
        let (name, bridge_name) = (self.name_of(&s, link), self.name_of(&s, bridge));
        self.begin(&mut s, "set_controller", format!("{name} {bridge_name}"))?;
        self.link_mut(&mut s, link)?.link.controller = Some(bridge);
        Ok(())
    }

    async fn create_bridge(&self, name: &str) -> Result<(), NlError> {
        let mut s = self.lock();
        self.begin(&mut s, "create_bridge", name.into())?;
        self.create(&mut s, name, "bridge").map(drop)
    }

    async fn create_veth(&self, name: &str, peer: &str) -> Result<(), NlError> {
        let mut s = self.lock();
        self.begin(&mut s, "create_veth", format!("{name} {peer}"))?;
        if s.links.iter().any(|l| l.ns == self.ns && l.link.name == peer) {
            return Err(NlError::from_errno(libc::EEXIST));
        }
        let a = self.create(&mut s, name, "veth")?;
        let b = self.create(&mut s, peer, "veth")?;
        for l in s.links.iter_mut() {
            if l.id == a {
                l.peer = Some(b);
            } else if l.id == b {
                l.peer = Some(a);
            }
        }
        Ok(())
    }

    async fn delete_link(&self, link: u32) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "delete_link", name)?;
        let gone = self.link_mut(&mut s, link)?.clone();
        let doomed: Vec<(Option<PathBuf>, u32)> = s
            .links
            .iter()
            .filter(|l| l.id == gone.id || Some(l.id) == gone.peer)
            .map(|l| (l.ns.clone(), l.link.index))
            .collect();
        s.links.retain(|l| l.id != gone.id && Some(l.id) != gone.peer);
        s.addresses.retain(|(ns, a)| !doomed.contains(&(ns.clone(), a.link)));
        s.routes.retain(|(ns, r)| r.link.is_none_or(|i| !doomed.contains(&(ns.clone(), i))));
        Ok(())
    }

    async fn move_to_netns(&self, link: u32, netns: &Path) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "move_to_netns", format!("{name} {}", netns.display()))?;
        s.next_index += 1;
        let index = s.next_index;
        let moved = self.link_mut(&mut s, link)?;
        moved.ns = Some(netns.to_owned());
        moved.link.index = index;
        moved.link.up = false;
        moved.link.controller = None;
        let ns = self.ns.clone();
        s.addresses.retain(|(n, a)| !(*n == ns && a.link == link));
        s.routes.retain(|(n, r)| !(*n == ns && r.link == Some(link)));
        Ok(())
    }

    async fn addresses(&self) -> Result<Vec<Address>, NlError> {
        self.read_failure("addresses")?;
        Ok(self.snapshot().1)
    }

    async fn add_address(&self, link: u32, addr: Ipv4Net, protocol: u8) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "add_address", format!("{name} {addr} proto {protocol}"))?;
        self.link_mut(&mut s, link)?;
        let ns = self.ns.clone();
        if s.addresses.iter().any(|(n, a)| *n == ns && a.link == link && a.addr == addr) {
            return Err(NlError::from_errno(libc::EEXIST));
        }
        s.addresses.push((ns.clone(), Address { link, addr, protocol: Some(protocol) }));
        // As the kernel does: the prefix route, protocol "kernel".
        s.routes.push((ns, Route { dst: addr.trunc(), gateway: None, link: Some(link), protocol: 2 }));
        Ok(())
    }

    async fn del_address(&self, link: u32, addr: Ipv4Net) -> Result<(), NlError> {
        let mut s = self.lock();
        let name = self.name_of(&s, link);
        self.begin(&mut s, "del_address", format!("{name} {addr}"))?;
        let ns = self.ns.clone();
        let before = s.addresses.len();
        s.addresses.retain(|(n, a)| !(*n == ns && a.link == link && a.addr == addr));
        if s.addresses.len() == before {
            return Err(NlError::from_errno(libc::EADDRNOTAVAIL));
        }
        s.routes.retain(|(n, r)| !(*n == ns && r.link == Some(link) && r.protocol == 2 && r.dst == addr.trunc()));
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<Route>, NlError> {
        self.read_failure("routes")?;
        Ok(self.snapshot().2)
    }

    async fn replace_route(&self, route: Route) -> Result<(), NlError> {
        let mut s = self.lock();
        let via = route.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let dev = route.link.map(|l| format!(" dev {}", self.name_of(&s, l))).unwrap_or_default();
        self.begin(&mut s, "replace_route", format!("{}{via}{dev} proto {}", route.dst, route.protocol))?;
        let ns = self.ns.clone();
        s.routes.retain(|(n, r)| !(*n == ns && r.dst == route.dst));
        s.routes.push((ns, route));
        Ok(())
    }

    async fn del_route(&self, route: Route) -> Result<(), NlError> {
        let mut s = self.lock();
        let via = route.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.begin(&mut s, "del_route", format!("{}{via} proto {}", route.dst, route.protocol))?;
        let ns = self.ns.clone();
        let before = s.routes.len();
        s.routes.retain(|(n, r)| !(*n == ns && r.dst == route.dst && r.protocol == route.protocol));
        if s.routes.len() == before {
            return Err(NlError::from_errno(libc::ESRCH));
        }
        Ok(())
    }

    async fn open_in_netns(&self, netns: &Path) -> Result<Self, NlError> {
        let other = FakeNetlink { state: self.state.clone(), ns: Some(netns.to_owned()) };
        let has_lo = other.lock().links.iter().any(|l| l.ns == other.ns && l.link.name == "lo");
        if !has_lo {
            other.add_link("lo", None, 65536, None);
        }
        Ok(other)
    }
}
