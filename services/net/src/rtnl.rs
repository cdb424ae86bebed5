//! [`Netlink`] over the `rtnetlink` crate. A handle's socket belongs to the
//! network namespace it was opened in, whatever thread later uses it.

use crate::netlink::{Address, Link, Netlink, NlError, Route};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressProtocol};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// A netlink connection; cheap to clone (clones share the socket).
#[derive(Clone, Debug)]
pub struct RtNetlink {
    handle: rtnetlink::Handle,
}

fn nl(e: rtnetlink::Error) -> NlError {
    match &e {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => NlError {
            errno: Some(-msg.raw_code()),
            message: std::io::Error::from_raw_os_error(-msg.raw_code()).to_string(),
        },
        _ => NlError::other(e.to_string()),
    }
}

impl RtNetlink {
    /// Opens a connection in the caller's current network namespace and
    /// drives it on the current tokio runtime.
    pub fn open() -> std::io::Result<RtNetlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(RtNetlink { handle })
    }

    /// Opens a connection in the namespace at `netns`. The socket is created
    /// on a short-lived thread that joins the namespace, so neither the
    /// caller's threads nor the process change namespace.
    pub fn open_in(netns: &Path) -> std::io::Result<RtNetlink> {
        let runtime = tokio::runtime::Handle::current();
        let netns = netns.to_owned();
        let joined = std::thread::spawn(move || -> std::io::Result<RtNetlink> {
            let file = std::fs::File::open(&netns)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let _entered = runtime.enter();
            RtNetlink::open()
        })
        .join();
        joined.unwrap_or_else(|_| Err(std::io::Error::other("the thread opening the netlink socket panicked")))
    }

    async fn set(&self, message: rtnetlink::packet_route::link::LinkMessage) -> Result<(), NlError> {
        self.handle.link().set(message).execute().await.map_err(nl)
    }
}

fn parse_link(msg: rtnetlink::packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        controller: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_route(msg: rtnetlink::packet_route::route::RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut link = None;
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(a),
            RouteAttribute::Oif(i) => link = Some(i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(Route { dst, gateway, link, protocol: msg.header.protocol.into() })
}

fn route_message(route: &Route) -> rtnetlink::packet_route::route::RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix_len())
        .protocol(RouteProtocol::from(route.protocol));
    if let Some(gw) = route.gateway {
        builder = builder.gateway(gw);
    }
    if let Some(link) = route.link {
        builder = builder.output_interface(link);
    }
    builder.build()
}

impl Netlink for RtNetlink {
    async fn links(&self) -> Result<Vec<Link>, NlError> {
        let messages: Vec<_> = self.handle.link().get().execute().try_collect().await.map_err(nl)?;
        Ok(messages.into_iter().map(parse_link).collect())
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NlError> {
        match self.handle.link().get().match_name(name.to_owned()).execute().try_next().await.map_err(nl) {
            Ok(message) => Ok(message.map(parse_link)),
            Err(e) if e.errno == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn set_up(&self, link: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(link).up().build()).await
    }

    async fn set_down(&self, link: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(link).down().build()).await
    }

    async fn set_mtu(&self, link: u32, mtu: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(link).mtu(mtu).build()).await
    }

    async fn rename(&self, link: u32, name: &str) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(link).name(name.to_owned()).build()).await
    }

    async fn set_controller(&self, link: u32, bridge: u32) -> Result<(), NlError> {
        self.set(LinkUnspec::new_with_index(link).controller(bridge).build()).await
    }

    async fn create_bridge(&self, name: &str) -> Result<(), NlError> {
        // Created down: the caller sets MTU and address first, then up.
        let message = rtnetlink::LinkMessageBuilder::<LinkBridge>::new(name).build();
        self.handle.link().add(message).execute().await.map_err(nl)
    }

    async fn create_veth(&self, name: &str, peer: &str) -> Result<(), NlError> {
        self.handle.link().add(LinkVeth::new(name, peer).build()).execute().await.map_err(nl)
    }

    async fn delete_link(&self, link: u32) -> Result<(), NlError> {
        self.handle.link().del(link).execute().await.map_err(nl)
    }

    async fn move_to_netns(&self, link: u32, netns: &Path) -> Result<(), NlError> {
        let file = std::fs::File::open(netns)
            .map_err(|e| NlError { errno: e.raw_os_error(), message: format!("opening {}: {e}", netns.display()) })?;
        // The fd stays open (file lives) until the request is answered.
        let result = self.set(LinkUnspec::new_with_index(link).setns_by_fd(file.as_raw_fd()).build()).await;
        drop(file);
        result
    }

    async fn addresses(&self) -> Result<Vec<Address>, NlError> {
        let messages: Vec<_> = self.handle.address().get().execute().try_collect().await.map_err(nl)?;
        Ok(messages
            .into_iter()
            .filter_map(|msg| {
                let mut local = None;
                let mut protocol = None;
                for attr in &msg.attributes {
                    match attr {
                        AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
                        AddressAttribute::Address(IpAddr::V4(a)) if local.is_none() => local = Some(*a),
                        AddressAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
                        _ => {}
                    }
                }
                let addr = Ipv4Net::new(local?, msg.header.prefix_len).ok()?;
                Some(Address { link: msg.header.index, addr, protocol })
            })
            .collect())
    }

    async fn add_address(&self, link: u32, addr: Ipv4Net, protocol: u8) -> Result<(), NlError> {
        let mut request = self.handle.address().add(link, IpAddr::V4(addr.addr()), addr.prefix_len());
        request.message_mut().attributes.push(AddressAttribute::Protocol(AddressProtocol::from(protocol)));
        request.execute().await.map_err(nl)
    }

    async fn del_address(&self, link: u32, addr: Ipv4Net) -> Result<(), NlError> {
        let message =
            AddressMessageBuilder::<Ipv4Addr>::new().index(link).address(addr.addr(), addr.prefix_len()).build();
        self.handle.address().del(message).execute().await.map_err(nl)
    }

    async fn routes(&self) -> Result<Vec<Route>, NlError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<_> = self.handle.route().get(query).execute().try_collect().await.map_err(nl)?;
        Ok(messages.into_iter().filter_map(parse_route).collect())
    }

    async fn replace_route(&self, route: Route) -> Result<(), NlError> {
        self.handle.route().add(route_message(&route)).replace().execute().await.map_err(nl)
    }

    async fn del_route(&self, route: Route) -> Result<(), NlError> {
        self.handle.route().del(route_message(&route)).execute().await.map_err(nl)
    }

    async fn open_in_netns(&self, netns: &Path) -> Result<Self, NlError> {
        RtNetlink::open_in(netns).map_err(|e| NlError {
            errno: e.raw_os_error(),
            message: format!("opening netlink in {}: {e}", netns.display()),
        })
    }
}
