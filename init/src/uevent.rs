//! Block devices as the kernel announces them: its kobject uevents, read
//! from a netlink socket (what udev listens to; PID 1 runs without udev).
//! Waiting on these instead of polling /sys/class/block means a device is
//! seen the moment it is added, and nothing is slept when none comes.

use crate::kernel::{BlockDeviceEvents, BlockEvent};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The kernel's multicast group for uevents (udev's own re-broadcasts use
/// group 2, and only root may send to either).
const KERNEL_UEVENT_GROUP: u32 = 1;

/// A netlink socket subscribed to the kernel's uevents.
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl UeventSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket() takes plain integers and returns a new descriptor or -1.
        let raw = unsafe {
            libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_KOBJECT_UEVENT)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw was just returned by socket() and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is a plain C struct for which all zeroes is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = KERNEL_UEVENT_GROUP;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_nl of `len` bytes that outlives the call.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_nl).cast(), len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UeventSocket { fd, buf: vec![0; 16 * 1024] })
    }

    /// The next block device added or changed, or None once `timeout` has
    /// passed without one.
    pub fn next_block_event(&mut self, timeout: Duration) -> io::Result<Option<BlockEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pollfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // Rounded up, so a wait never ends just short of the deadline.
            let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            // SAFETY: pollfd is one valid struct, and 1 says so.
            let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                    // The socket's queue overflowed: some events are lost.
                    Some(libc::ENOBUFS) => return Ok(Some(BlockEvent::Missed)),
                    _ => return Err(e),
                }
            }
            if let Some(name) = added_block_device(&self.buf[..n as usize]) {
                return Ok(Some(BlockEvent::Device(name)));
            }
        }
    }
}

impl BlockDeviceEvents for UeventSocket {
    fn next(&mut self, timeout: Duration) -> io::Result<Option<BlockEvent>> {
        self.next_block_event(timeout)
    }
}

/// The device name in a kernel uevent (`add@/devices/...\0ACTION=add\0
/// SUBSYSTEM=block\0DEVNAME=sr0\0...`) when it adds a block device or
/// changes one (a CD drive's medium inserted).
pub fn added_block_device(message: &[u8]) -> Option<String> {
    let mut fields = message.split(|b| *b == 0).filter_map(|f| std::str::from_utf8(f).ok());
    // The header, `ACTION@DEVPATH`, is not a key.
    fields.next()?;
    let (mut action, mut block, mut name) = (None, false, None);
    for field in fields {
        match field.split_once('=') {
            Some(("ACTION", a)) => action = Some(a),
            Some(("SUBSYSTEM", s)) => block = s == "block",
            Some(("DEVNAME", n)) => name = Some(n),
            _ => {}
        }
    }
    let name = name?;
    // DEVNAME is relative to /dev; block devices sit at its top.
    (block && matches!(action, Some("add" | "change")) && !name.contains('/')).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(fields: &[&str]) -> Vec<u8> {
        fields.join("\0").into_bytes()
    }

    #[test]
    fn added_and_changed_block_devices_are_recognised() {
        let added = message(&[
            "add@/devices/pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0/block/sr0",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:01.1/ata2/host1/target1:0:0/1:0:0:0/block/sr0",
            "SUBSYSTEM=block",
            "MAJOR=11",
            "MINOR=0",
            "DEVNAME=sr0",
            "DEVTYPE=disk",
            "SEQNUM=1234",
        ]);
        assert_eq!(added_block_device(&added).as_deref(), Some("sr0"));
        let changed = message(&["change@/devices/x/block/sr0", "ACTION=change", "SUBSYSTEM=block", "DEVNAME=sr0"]);
        assert_eq!(added_block_device(&changed).as_deref(), Some("sr0"));
    }

    #[test]
    fn other_subsystems_and_removals_are_not() {
        let net = message(&["add@/devices/virtual/net/cbr0", "ACTION=add", "SUBSYSTEM=net", "INTERFACE=cbr0"]);
        assert_eq!(added_block_device(&net), None);
        let removed = message(&["remove@/devices/x/block/vdb", "ACTION=remove", "SUBSYSTEM=block", "DEVNAME=vdb"]);
        assert_eq!(added_block_device(&removed), None);
        let nameless = message(&["add@/devices/x/block/vdb", "ACTION=add", "SUBSYSTEM=block"]);
        assert_eq!(added_block_device(&nameless), None);
    }
}
