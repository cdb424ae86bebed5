//! Becoming the shim: a session of its own, child subreaper for its
//! containers, SIGPIPE ignored, and SIGCHLD turned into a readable pipe
//! that wakes the server's poll.

use super::ShimError;
use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Where SIGCHLD's handler writes to wake the loop.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; errno is saved and restored
        // so the interrupted code never sees the handler's.
        unsafe {
            let errno = *libc::__errno_location();
            let byte = 1u8;
            libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// The wake-up pipe: `read` polls readable after a SIGCHLD. The write end
/// must live as long as the shim.
pub(super) struct Wake {
    pub read: OwnedFd,
    _write: OwnedFd,
}

pub(super) fn become_shim() -> Result<Wake, ShimError> {
    let sys = |action| move |source| ShimError::Sys { action, source };
    // A session of its own: signals for PID 1's process group are not the shim's.
    let _ = nix::unistd::setsid();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(ShimError::Sys { action: "becoming a child subreaper", source: Errno::last() });
    }
    // A client that vanishes mid-write must give EPIPE, not kill the shim.
    // SAFETY: SIG_IGN installs no code.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map_err(sys("ignoring SIGPIPE"))?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(sys("creating the wake-up pipe"))?;
    WAKE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
    let action = signal::SigAction::new(
        SigHandler::Handler(on_sigchld),
        signal::SaFlags::SA_RESTART | signal::SaFlags::SA_NOCLDSTOP,
        signal::SigSet::empty(),
    );
    // SAFETY: the handler only calls write(2) on a descriptor that lives as long as the shim.
    unsafe { signal::sigaction(Signal::SIGCHLD, &action) }.map_err(sys("installing the SIGCHLD handler"))?;
    // The signal mask survives exec: a parent that blocked SIGCHLD would
    // leave the shim reaping only on its tick.
    let mut chld = signal::SigSet::empty();
    chld.add(Signal::SIGCHLD);
    signal::sigprocmask(signal::SigmaskHow::SIG_UNBLOCK, Some(&chld), None).map_err(sys("unblocking SIGCHLD"))?;
    Ok(Wake { read, _write: write })
}

/// Containers inherit the shim's limits (their bundles set none). The
/// kernel's 1024 open files is far too few for etcd or an apiserver;
/// containerd and the kubelet run with as many as the kernel allows
/// (`fs.nr_open`), and so do Kelson's containers. Without
/// CAP_SYS_RESOURCE (a test host) the soft limit goes up to the hard one.
pub(super) fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let most =
        fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(1 << 20);
    if setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok() {
        return;
    }
    let raised = getrlimit(Resource::RLIMIT_NOFILE)
        .and_then(|(_, hard)| setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map(|()| hard));
    match raised {
        Ok(hard) => tracing::info!(limit = hard, "open files limited to the hard limit the shim was given"),
        Err(error) => tracing::warn!(%error, "raising the open files limit; containers get the shim's own"),
    }
}
