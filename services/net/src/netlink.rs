//! The kernel seam: the few rtnetlink operations Kelson needs, as a trait, so
//! the apply and attach logic runs against [`crate::fake::FakeNetlink`] in
//! unit tests and against [`crate::rtnl::RtNetlink`] on a real kernel.
//!
//! IPv4 only. Everything a handle does happens in the network namespace its
//! socket was opened in.

use ipnet::Ipv4Net;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;

/// Route and address protocol number marking what Kelson's static
/// configuration added (`ip route show proto 75`). Ownership rests on it:
/// a pass removes a route or address with this number that the plan no longer
/// wants, and never touches anything else. 75 is 'K' and is unused in
/// iproute2's rt_protos.
pub const KELSON_PROTO: u8 = 75;
/// The same for what Kelson's DHCP client added; static passes leave these to
/// the client.
pub const KELSON_DHCP_PROTO: u8 = 76;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// `bridge`, `veth`, ... (None for physical devices and lo).
    pub kind: Option<String>,
    /// The bridge this link is a port of.
    pub controller: Option<u32>,
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub link: u32,
    /// The address with its prefix length (host bits kept).
    pub addr: Ipv4Net,
    /// IFA_PROTO (Linux 6.1+); None when the kernel or its creator set none.
    pub protocol: Option<u8>,
}

/// An IPv4 unicast route in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub link: Option<u32>,
    pub protocol: u8,
}

/// A failed netlink request. `errno` is set when the kernel answered with one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NlError {
    pub errno: Option<i32>,
    pub message: String,
}

impl NlError {
    pub fn from_errno(errno: i32) -> Self {
        NlError { errno: Some(errno), message: std::io::Error::from_raw_os_error(errno).to_string() }
    }

    pub fn other(message: impl Into<String>) -> Self {
        NlError { errno: None, message: message.into() }
    }

    /// The object already exists (EEXIST): for an add, the wanted state.
    pub fn is_exists(&self) -> bool {
        self.errno == Some(libc::EEXIST)
    }

    /// The link or object is gone (ENODEV, ESRCH, EADDRNOTAVAIL).
    pub fn is_gone(&self) -> bool {
        matches!(self.errno, Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL))
    }
}

/// The rtnetlink operations Kelson uses. Futures are `Send` so callers can run
/// them in spawned tasks.
pub trait Netlink: Send + Sync {
    fn links(&self) -> impl Future<Output = Result<Vec<Link>, NlError>> + Send;
    /// The link named `name`, if there is one: one request, not a dump.
    fn link(&self, name: &str) -> impl Future<Output = Result<Option<Link>, NlError>> + Send;
    fn set_up(&self, link: u32) -> impl Future<Output = Result<(), NlError>> + Send;
    fn set_down(&self, link: u32) -> impl Future<Output = Result<(), NlError>> + Send;
    fn set_mtu(&self, link: u32, mtu: u32) -> impl Future<Output = Result<(), NlError>> + Send;
    fn rename(&self, link: u32, name: &str) -> impl Future<Output = Result<(), NlError>> + Send;
    /// Makes `link` a port of `bridge`.
    fn set_controller(&self, link: u32, bridge: u32) -> impl Future<Output = Result<(), NlError>> + Send;
    fn create_bridge(&self, name: &str) -> impl Future<Output = Result<(), NlError>> + Send;
    fn create_veth(&self, name: &str, peer: &str) -> impl Future<Output = Result<(), NlError>> + Send;
    fn delete_link(&self, link: u32) -> impl Future<Output = Result<(), NlError>> + Send;
    /// Moves `link` into the network namespace at `netns` (a bind-mounted
    /// nsfs file like /run/netns/NAME or /proc/PID/ns/net).
    fn move_to_netns(&self, link: u32, netns: &Path) -> impl Future<Output = Result<(), NlError>> + Send;
    fn addresses(&self) -> impl Future<Output = Result<Vec<Address>, NlError>> + Send;
    fn add_address(&self, link: u32, addr: Ipv4Net, protocol: u8) -> impl Future<Output = Result<(), NlError>> + Send;
    fn del_address(&self, link: u32, addr: Ipv4Net) -> impl Future<Output = Result<(), NlError>> + Send;
    fn routes(&self) -> impl Future<Output = Result<Vec<Route>, NlError>> + Send;
    /// Adds or replaces the main-table route to `route.dst`.
    fn replace_route(&self, route: Route) -> impl Future<Output = Result<(), NlError>> + Send;
    fn del_route(&self, route: Route) -> impl Future<Output = Result<(), NlError>> + Send;
    /// A handle of the same kind whose requests act in the namespace at `netns`.
    fn open_in_netns(&self, netns: &Path) -> impl Future<Output = Result<Self, NlError>> + Send
    where
        Self: Sized;
}

/// The link with this name, if any.
pub(crate) fn by_name<'a>(links: &'a [Link], name: &str) -> Option<&'a Link> {
    links.iter().find(|l| l.name == name)
}
