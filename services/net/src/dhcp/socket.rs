//! A packet socket for DHCP on one link. Before it has an address the client
//! can neither send from 0.0.0.0 reliably nor receive replies addressed to an
//! address the kernel does not have yet, so it builds and parses the IPv4 and
//! UDP headers itself (SOCK_DGRAM: the kernel adds the Ethernet header). Needs
//! CONFIG_PACKET (af_packet).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

pub(crate) const CLIENT_PORT: u16 = 68;
pub(crate) const SERVER_PORT: u16 = 67;
pub(crate) const BROADCAST_MAC: [u8; 6] = [0xff; 6];

pub(crate) struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
}

fn sockaddr(ifindex: i32, mac: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr_bytes = [0u8; 8];
    addr_bytes[..6].copy_from_slice(&mac);
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: (libc::ETH_P_IP as u16).to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr_bytes,
    }
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut pairs = chunk.chunks_exact(2);
        for pair in &mut pairs {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = pairs.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + UDP (68 → 67) datagram around `payload`.
pub(crate) fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let total = 20 + udp_len;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let udp_sum = match checksum(&[&pseudo, &udp, payload]) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());

    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&ip);
    packet.extend_from_slice(&udp);
    packet.extend_from_slice(payload);
    packet
}

/// The payload of a UDP datagram to the client port, or None for anything else.
pub(crate) fn dhcp_payload(packet: &[u8]) -> Option<&[u8]> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != 17 || ihl < 20 {
        return None;
    }
    let udp = packet.get(ihl..ihl + 8)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != CLIENT_PORT {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    packet.get(ihl + 8..ihl + len.max(8))
}

impl PacketSocket {
    /// Must be called in the namespace the link lives in.
    pub(crate) fn open(ifindex: u32) -> io::Result<PacketSocket> {
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let protocol = i32::from((libc::ETH_P_IP as u16).to_be());
        // SAFETY: plain socket(2) call with constant arguments; the result is
        // checked before use.
        let raw = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, protocol)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr(ifindex, [0; 6]);
        // SAFETY: `addr` is a properly initialised sockaddr_ll and the length
        // passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: OwnedFd's descriptor is valid and open, and it is the same
        // descriptor for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PacketSocket { fd, ifindex })
    }

    pub(crate) async fn send(&self, dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> io::Result<()> {
        let packet = udp_packet(src, dst, payload);
        let addr = sockaddr(self.ifindex, dst_mac);
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                // SAFETY: `packet` and `addr` outlive the call; lengths match them.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        std::ptr::addr_of!(addr).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match sent {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// The next DHCP payload for the client port, and the sender's MAC.
    pub(crate) async fn recv(&self) -> io::Result<(Vec<u8>, [u8; 6])> {
        let mut buf = vec![0u8; 65536];
        loop {
            let mut guard = self.fd.readable().await?;
            let received = guard.try_io(|fd| {
                // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `from` are valid for writes of the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::addr_of_mut!(from).cast(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&from.sll_addr[..6]);
                Ok((n as usize, from.sll_pkttype, mac))
            });
            let Ok(result) = received else { continue };
            let (n, pkttype, mac) = result?;
            // Our own transmissions come back on a packet socket too.
            if pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if let Some(payload) = dhcp_payload(&buf[..n]) {
                return Ok((payload.to_vec(), mac));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back_and_carry_valid_checksums() {
        let packet = udp_packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, b"hello");
        assert_eq!(checksum(&[&packet[..20]]), 0, "IP header checksum verifies");
        let mut pseudo = [0u8; 12];
        pseudo[4..8].copy_from_slice(&[255; 4]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&13u16.to_be_bytes());
        assert_eq!(checksum(&[&pseudo, &packet[20..]]), 0, "UDP checksum verifies");
        // A reply is the same shape with the ports swapped.
        let mut reply = packet.clone();
        reply[20..22].copy_from_slice(&SERVER_PORT.to_be_bytes());
        reply[22..24].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        assert_eq!(dhcp_payload(&reply), Some(&b"hello"[..]));
        assert_eq!(dhcp_payload(&packet), None, "to the server port: not for us");
        assert_eq!(dhcp_payload(&reply[..10]), None);
    }
}
