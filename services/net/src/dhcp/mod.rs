//! A DHCPv4 client for one uplink (RFC 2131): DISCOVER, OFFER, REQUEST, ACK;
//! renews with the leasing server at T1, rebinds by broadcast at T2, starts
//! over when the lease runs out or a server NAKs, and releases the lease when
//! stopped. Runs as a tokio task; [`DhcpHandle`] stops it ([`DhcpHandle::release`]
//! or drop) and shows its state.
//!
//! What a lease sets, marked with [`KELSON_DHCP_PROTO`] so that static passes
//! leave it alone: the address, a default route via the first router, the MTU
//! (option 26, unless the config fixes the uplink's MTU), and resolv.conf
//! (only if the config names no nameservers).

mod socket;

use crate::apply::{chain, write_resolv_conf};
use crate::netlink::{Link, Netlink, Route, KELSON_DHCP_PROTO};
use crate::plan::MTU_RANGE;
use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ipnet::Ipv4Net;
use serde::Serialize;
use socket::{PacketSocket, BROADCAST_MAC};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep_until, timeout_at, Instant};

/// What the client needs to know about its uplink.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub link: Link,
    /// resolv.conf to write the lease's nameservers to; None leaves it alone.
    pub resolv_conf: Option<PathBuf>,
    /// The uplink's configured MTU: when set, option 26 is ignored.
    pub fixed_mtu: Option<u32>,
    /// Sent as option 12.
    pub hostname: Option<String>,
}

/// A lease as the server granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub address: Ipv4Net,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub mtu: Option<u16>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
}

/// The client's state, published on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpStatus {
    /// selecting, requesting, bound, renewing, rebinding, released, failed
    pub state: &'static str,
    pub lease: Option<Lease>,
    /// Successful renewals or rebinds of the current or earlier leases.
    pub renewals: u32,
    pub last_error: Option<String>,
}

/// The running client. Dropping it stops the client, which releases its
/// lease in the background; [`release`](Self::release) does the same and
/// waits for it.
pub struct DhcpHandle {
    status: watch::Receiver<DhcpStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DhcpHandle {
    pub fn status(&self) -> DhcpStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes (to wait for "bound", or a renewal).
    pub fn watch(&self) -> watch::Receiver<DhcpStatus> {
        self.status.clone()
    }

    /// Stops the client: sends RELEASE for a held lease, removes the address
    /// and route it set, and returns the final status.
    pub async fn release(mut self) -> DhcpStatus {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.status.borrow().clone()
    }
}

impl Drop for DhcpHandle {
    fn drop(&mut self) {
        // Dropping `stop` wakes the task, which releases on its own.
        self.stop.take();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("opening a packet socket on {link}")]
    Socket {
        link: String,
        #[source]
        source: std::io::Error,
    },
}

/// Starts a client on `config.link`. Call it in the link's network namespace
/// (the packet socket is opened there, now); `netlink` must act in it too.
pub fn spawn<N: Netlink + 'static>(netlink: N, config: DhcpConfig) -> Result<DhcpHandle, DhcpError> {
    let socket = PacketSocket::open(config.link.index)
        .map_err(|source| DhcpError::Socket { link: config.link.name.clone(), source })?;
    let (tx, rx) = watch::channel(DhcpStatus { state: "selecting", lease: None, renewals: 0, last_error: None });
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let mut client = Client { netlink, config, socket, status: tx, bound: None };
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = &mut stop_rx => {}
            _ = client.run() => {}
        }
        client.release().await;
    });
    Ok(DhcpHandle { status: rx, stop: Some(stop_tx), task: Some(task) })
}

struct Bound {
    lease: Lease,
    server_mac: [u8; 6],
    since: Instant,
}

struct Client<N> {
    netlink: N,
    config: DhcpConfig,
    socket: PacketSocket,
    status: watch::Sender<DhcpStatus>,
    bound: Option<Bound>,
}

/// How a request goes out: broadcast while the client has no usable server
/// (selecting, rebinding), unicast to the leasing server when renewing.
#[derive(Clone, Copy)]
enum Destination {
    Broadcast,
    Server { mac: [u8; 6], ip: Ipv4Addr },
}

/// Waits between DISCOVER retransmissions: 4, 8, 16, 32, 64 s (RFC 2131 4.1).
fn discover_backoff(attempt: u32) -> Duration {
    Duration::from_secs(4u64 << attempt.min(4))
}

/// Wait before retransmitting a renew/rebind: half the time left, but not
/// under a minute unless less than that is left (RFC 2131 4.4.5).
fn renew_backoff(left: Duration) -> Duration {
    (left / 2).max(left.min(Duration::from_secs(60)))
}

fn lease_from(reply: &v4::Message) -> Option<Lease> {
    let opts = reply.opts();
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).leading_ones() as u8,
        _ => 24,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let t1_secs = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) if *t < lease_secs => *t,
        _ => lease_secs / 2,
    };
    let t2_secs = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) if *t < lease_secs && *t >= t1_secs => *t,
        _ => (lease_secs / 8 * 7).max(t1_secs),
    };
    Some(Lease {
        address: Ipv4Net::new(reply.yiaddr(), prefix).ok()?,
        router: match opts.get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.first().copied(),
            _ => None,
        },
        dns: match opts.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(d)) => d.clone(),
            _ => Vec::new(),
        },
        mtu: match opts.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(m)) => Some(*m),
            _ => None,
        },
        server,
        lease_secs,
        t1_secs,
        t2_secs,
    })
}

impl<N: Netlink> Client<N> {
    fn publish(&self, state: &'static str, error: Option<String>) {
        let lease = self.bound.as_ref().map(|b| b.lease.clone());
        self.status.send_modify(|s| {
            s.state = state;
            s.lease = lease;
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    fn message(&self, kind: MessageType, xid: u32, ciaddr: Ipv4Addr) -> v4::Message {
        let mut m = v4::Message::new_with_id(
            xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac(),
        );
        if ciaddr.is_unspecified() {
            // Without an address the reply must be broadcast to reach us at
            // all through the server's kernel.
            m.set_flags(v4::Flags::default().set_broadcast());
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.mac());
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        if kind != MessageType::Release {
            opts.insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::Router,
                OptionCode::DomainNameServer,
                OptionCode::InterfaceMtu,
                OptionCode::AddressLeaseTime,
                OptionCode::Renewal,
                OptionCode::Rebinding,
            ]));
            if let Some(name) = &self.config.hostname {
                opts.insert(DhcpOption::Hostname(name.clone()));
            }
        }
        m
    }

    fn mac(&self) -> [u8; 6] {
        self.config.link.mac.unwrap_or_default()
    }

    async fn send(&self, msg: &v4::Message, to: Destination, src: Ipv4Addr) -> Result<(), String> {
        let bytes = msg.to_vec().map_err(|e| format!("encoding DHCP message: {e}"))?;
        let (mac, ip) = match to {
            Destination::Broadcast => (BROADCAST_MAC, Ipv4Addr::BROADCAST),
            Destination::Server { mac, ip } => (mac, ip),
        };
        self.socket.send(mac, src, ip, &bytes).await.map_err(|e| format!("sending on {}: {e}", self.config.link.name))
    }

    /// Waits until `deadline` for a reply to `xid` of one of `kinds`.
    async fn reply(&self, xid: u32, kinds: &[MessageType], deadline: Instant) -> Option<(v4::Message, [u8; 6])> {
        let mac = self.mac();
        let wait = async {
            loop {
                let (payload, from) = match self.socket.recv().await {
                    Ok(received) => received,
                    Err(_) => {
                        // The link went away or down: don't spin; the
                        // deadline still ends the wait.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let Ok(msg) = v4::Message::decode(&mut Decoder::new(&payload)) else { continue };
                if msg.opcode() != v4::Opcode::BootReply || msg.xid() != xid || msg.chaddr().get(..6) != Some(&mac[..])
                {
                    continue;
                }
                if msg.opts().msg_type().is_some_and(|k| kinds.contains(&k)) {
                    return (msg, from);
                }
            }
        };
        timeout_at(deadline, wait).await.ok()
    }

    async fn run(&mut self) {
        loop {
            let Some((lease, server_mac)) = self.acquire().await else { continue };
            self.bind(lease, server_mac, false).await;
            self.keep().await;
            self.unbind().await;
        }
    }

    /// SELECTING and REQUESTING, until a lease is ACKed.
    async fn acquire(&mut self) -> Option<(Lease, [u8; 6])> {
        let mut attempt = 0;
        let (offer, xid) = loop {
            let xid: u32 = rand_xid();
            self.publish("selecting", None);
            let discover = self.message(MessageType::Discover, xid, Ipv4Addr::UNSPECIFIED);
            if let Err(e) = self.send(&discover, Destination::Broadcast, Ipv4Addr::UNSPECIFIED).await {
                self.publish("selecting", Some(e));
            }
            let deadline = Instant::now() + discover_backoff(attempt);
            if let Some((offer, _)) = self.reply(xid, &[MessageType::Offer], deadline).await {
                break (offer, xid);
            }
            sleep_until(deadline).await;
            attempt += 1;
        };
        let lease = lease_from(&offer)?;
        self.publish("requesting", None);
        let mut request = self.message(MessageType::Request, xid, Ipv4Addr::UNSPECIFIED);
        request.opts_mut().insert(DhcpOption::RequestedIpAddress(lease.address.addr()));
        request.opts_mut().insert(DhcpOption::ServerIdentifier(lease.server));
        for attempt in 0..4 {
            if let Err(e) = self.send(&request, Destination::Broadcast, Ipv4Addr::UNSPECIFIED).await {
                self.publish("requesting", Some(e));
            }
            let deadline = Instant::now() + discover_backoff(attempt);
            match self.reply(xid, &[MessageType::Ack, MessageType::Nak], deadline).await {
                Some((ack, mac)) if ack.opts().has_msg_type(MessageType::Ack) => {
                    return lease_from(&ack).map(|l| (l, mac))
                }
                Some(_nak) => {
                    self.publish("selecting", Some(format!("{} refused the offered address", lease.server)));
                    return None;
                }
                None => {}
            }
        }
        None
    }

    /// BOUND, RENEWING, REBINDING: returns when the lease is lost.
    async fn keep(&mut self) {
        loop {
            let Some(bound) = &self.bound else { return };
            let since = bound.since;
            let (lease, server_mac) = (bound.lease.clone(), bound.server_mac);
            let t1 = since + Duration::from_secs(u64::from(lease.t1_secs));
            let t2 = since + Duration::from_secs(u64::from(lease.t2_secs));
            let end = since + Duration::from_secs(u64::from(lease.lease_secs));
            sleep_until(t1).await;
            self.publish("renewing", None);
            let server = Destination::Server { mac: server_mac, ip: lease.server };
            match self.extend(&lease, server, t2).await {
                Some(Some(renewed)) => {
                    self.renewed(renewed).await;
                    continue;
                }
                Some(None) => return,
                None => {}
            }
            self.publish("rebinding", None);
            match self.extend(&lease, Destination::Broadcast, end).await {
                Some(Some(renewed)) => self.renewed(renewed).await,
                _ => return,
            }
        }
    }

    async fn renewed(&mut self, (lease, mac): (Lease, [u8; 6])) {
        self.status.send_modify(|s| s.renewals += 1);
        self.bind(lease, mac, true).await;
    }

    /// One REQUEST exchange for the held address until `until`:
    /// Some(Some(lease)) on ACK, Some(None) on NAK, None on silence.
    async fn extend(&self, lease: &Lease, to: Destination, until: Instant) -> Option<Option<(Lease, [u8; 6])>> {
        let xid = rand_xid();
        let request = self.message(MessageType::Request, xid, lease.address.addr());
        while Instant::now() < until {
            if let Err(e) = self.send(&request, to, lease.address.addr()).await {
                self.publish("renewing", Some(e));
            }
            let deadline = (Instant::now() + renew_backoff(until - Instant::now())).min(until);
            match self.reply(xid, &[MessageType::Ack, MessageType::Nak], deadline).await {
                Some((ack, mac)) if ack.opts().has_msg_type(MessageType::Ack) => {
                    return Some(lease_from(&ack).map(|l| (l, mac)))
                }
                Some(_nak) => return Some(None),
                None => {}
            }
        }
        None
    }

    /// Puts the lease on the link (replacing a previous one's address).
    async fn bind(&mut self, lease: Lease, server_mac: [u8; 6], renewal: bool) {
        let link = self.config.link.clone();
        let mut errors = Vec::new();
        if let Some(old) = self.bound.take() {
            if old.lease.address != lease.address {
                if let Err(e) = self.netlink.del_address(link.index, old.lease.address).await {
                    errors.push(format!("removing {} from {}: {e}", old.lease.address, link.name));
                }
            }
        }
        match self.netlink.add_address(link.index, lease.address, KELSON_DHCP_PROTO).await {
            Err(e) if !e.is_exists() => errors.push(format!("adding {} to {}: {e}", lease.address, link.name)),
            _ => {}
        }
        if let Some(mtu) = lease.mtu.map(u32::from).filter(|m| self.config.fixed_mtu.is_none() && MTU_RANGE.contains(m))
        {
            if let Err(e) = self.netlink.set_mtu(link.index, mtu).await {
                errors.push(format!("setting MTU {mtu} on {}: {e}", link.name));
            }
        }
        if let Some(router) = lease.router {
            let route = Route {
                dst: Ipv4Net::default(),
                gateway: Some(router),
                link: Some(link.index),
                protocol: KELSON_DHCP_PROTO,
            };
            if let Err(e) = self.netlink.replace_route(route).await {
                errors.push(format!("adding default route via {router}: {e}"));
            }
        }
        if let (Some(path), false) = (&self.config.resolv_conf, lease.dns.is_empty()) {
            let dns: Vec<IpAddr> = lease.dns.iter().map(|d| IpAddr::V4(*d)).collect();
            if let Err(e) = write_resolv_conf(path, &dns, &[], &format!("DHCP on {}", link.name)).0 {
                errors.push(chain(&e));
            }
        }
        if renewal {
            tracing::info!(link = %link.name, address = %lease.address, server = %lease.server, lease_secs = lease.lease_secs, "DHCP lease renewed");
        } else {
            // The router is logged because a server may leave it out (QEMU's
            // restricted user network does), and then there is no default route.
            let router = lease.router.map_or_else(|| "none".to_owned(), |r| r.to_string());
            tracing::info!(link = %link.name, address = %lease.address, server = %lease.server, router = %router, lease_secs = lease.lease_secs, "DHCP lease bound");
        }
        for e in &errors {
            tracing::error!(link = %link.name, error = %e, "applying DHCP lease");
        }
        self.bound = Some(Bound { lease, server_mac, since: Instant::now() });
        self.publish("bound", errors.into_iter().next());
    }

    /// Takes the lease's address and route off the link.
    async fn unbind(&mut self) {
        let Some(old) = self.bound.take() else { return };
        let link = &self.config.link;
        if let Some(router) = old.lease.router {
            let route = Route {
                dst: Ipv4Net::default(),
                gateway: Some(router),
                link: Some(link.index),
                protocol: KELSON_DHCP_PROTO,
            };
            let _ = self.netlink.del_route(route).await;
        }
        if let Err(e) = self.netlink.del_address(link.index, old.lease.address).await {
            if !e.is_gone() {
                tracing::error!(link = %link.name, address = %old.lease.address, error = %e, "removing DHCP address");
            }
        }
        tracing::info!(link = %link.name, address = %old.lease.address, "DHCP lease dropped");
        self.publish("selecting", None);
    }

    /// RELEASE to the server, then unbind.
    async fn release(&mut self) {
        if let Some(bound) = &self.bound {
            let mut msg = self.message(MessageType::Release, rand_xid(), bound.lease.address.addr());
            msg.opts_mut().insert(DhcpOption::ServerIdentifier(bound.lease.server));
            let to = Destination::Server { mac: bound.server_mac, ip: bound.lease.server };
            if let Err(e) = self.send(&msg, to, bound.lease.address.addr()).await {
                tracing::warn!(link = %self.config.link.name, error = %e, "sending DHCPRELEASE");
            }
        }
        self.unbind().await;
        self.publish("released", None);
    }
}

/// Transaction ids only need to differ between exchanges.
fn rand_xid() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(opts: Vec<DhcpOption>) -> v4::Message {
        let mut m = v4::Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            [10, 9, 0, 50].into(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        m.set_opcode(v4::Opcode::BootReply);
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn a_lease_takes_its_times_from_the_options_and_defaults_t1_t2() {
        let full = ack(vec![
            DhcpOption::MessageType(MessageType::Ack),
            DhcpOption::ServerIdentifier([10, 9, 0, 1].into()),
            DhcpOption::SubnetMask([255, 255, 255, 0].into()),
            DhcpOption::Router(vec![[10, 9, 0, 1].into()]),
            DhcpOption::DomainNameServer(vec![[10, 9, 0, 53].into()]),
            DhcpOption::InterfaceMtu(1400),
            DhcpOption::AddressLeaseTime(120),
            DhcpOption::Renewal(5),
            DhcpOption::Rebinding(8),
        ]);
        let lease = lease_from(&full).unwrap();
        assert_eq!(lease.address.to_string(), "10.9.0.50/24");
        assert_eq!((lease.lease_secs, lease.t1_secs, lease.t2_secs), (120, 5, 8));
        assert_eq!((lease.router, lease.mtu), (Some([10, 9, 0, 1].into()), Some(1400)));

        let bare = ack(vec![DhcpOption::ServerIdentifier([10, 9, 0, 1].into()), DhcpOption::AddressLeaseTime(800)]);
        let lease = lease_from(&bare).unwrap();
        assert_eq!((lease.t1_secs, lease.t2_secs), (400, 700));
        assert!(lease_from(&ack(vec![])).is_none(), "a reply without a server id is not a lease");
    }

    #[test]
    fn retransmission_waits_follow_rfc_2131() {
        let waits: Vec<u64> = (0..7).map(|a| discover_backoff(a).as_secs()).collect();
        assert_eq!(waits, [4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(renew_backoff(Duration::from_secs(3600)), Duration::from_secs(1800));
        assert_eq!(renew_backoff(Duration::from_secs(100)), Duration::from_secs(60));
        assert_eq!(renew_backoff(Duration::from_secs(3)), Duration::from_secs(3));
    }
}
