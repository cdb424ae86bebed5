//! Turning a spec into a ready `std::process::Command`: a cleared
//! environment, stdin from /dev/null, stdout and stderr into one pipe (so
//! the log keeps their interleaving), and, between fork and exec, a new
//! session, the cgroup join and the OOM score.

use crate::spec::{ServiceSpec, DEFAULT_PATH};
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where `argv[0]` resolves, or `None` if there is no such program.
pub fn find_program(spec: &ServiceSpec) -> Option<PathBuf> {
    let program = spec.argv.first()?;
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = spec.env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
    path.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

/// A command for `spec` whose output goes to a new pipe; returns the
/// command and the pipe's read end. `cgroup_procs` is the cgroup's
/// `cgroup.procs` file to join, if the service has a cgroup.
pub fn build(spec: &ServiceSpec, cgroup_procs: Option<&Path>) -> io::Result<(Command, OwnedFd)> {
    let program = spec.argv.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]);
    cmd.env_clear().env("PATH", DEFAULT_PATH);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    // O_CLOEXEC keeps the write end out of every other child started
    // meanwhile; std dups it onto fds 1 and 2 of this child only.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    cmd.stdin(Stdio::null());
    cmd.stdout(Stdio::from(write.try_clone()?));
    cmd.stderr(Stdio::from(write));

    let procs = cgroup_procs.map(|p| CString::new(p.as_os_str().as_bytes())).transpose()?;
    let oom = spec.resources.oom_score_adj.map(|v| v.clamp(-1000, 1000));
    // SAFETY: the closure runs in the forked child of a multi-threaded
    // process, so it may only make async-signal-safe calls: setsid, getpid,
    // open, write and close through libc, on buffers prepared before the
    // fork (the CStrings) or on the stack. It allocates nothing and takes
    // no locks.
    unsafe {
        cmd.pre_exec(move || {
            // A session (and process group) of its own: the SIGKILL after
            // the grace period reaches the service's children too.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(procs) = &procs {
                let mut buf = [0u8; 24];
                write_to(procs.as_ptr(), format_decimal(i64::from(libc::getpid()), &mut buf))?;
            }
            if let Some(score) = oom {
                let mut buf = [0u8; 24];
                // Lowering the score needs CAP_SYS_RESOURCE, which PID 1
                // has but a test host or container may not: a refused
                // score must not keep the service from running. The
                // supervisor compares the score after spawn and warns.
                let path = c"/proc/self/oom_score_adj".as_ptr();
                match write_to(path, format_decimal(i64::from(score), &mut buf)) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {}
                    other => other?,
                }
            }
            Ok(())
        });
    }
    Ok((cmd, read))
}

/// Writes `data` to the file at `path` with raw syscalls (see the SAFETY
/// note in [`build`]).
fn write_to(path: *const libc::c_char, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` points at a NUL-terminated string that outlives the
    // call; `data` is a valid slice; the descriptor is closed on every path.
    unsafe {
        let fd = libc::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o644);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        let result = if written < 0 {
            Err(io::Error::last_os_error())
        } else if written as usize != data.len() {
            Err(io::Error::new(io::ErrorKind::WriteZero, "short write"))
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

/// Formats `n` in decimal into `buf` without allocating.
fn format_decimal(n: i64, buf: &mut [u8; 24]) -> &[u8] {
    let negative = n < 0;
    let mut value = n.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_formatted_without_allocation() {
        let mut buf = [0u8; 24];
        assert_eq!(format_decimal(0, &mut buf), b"0");
        assert_eq!(format_decimal(-999, &mut buf), b"-999");
        assert_eq!(format_decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(format_decimal(i64::MIN, &mut buf), b"-9223372036854775808");
    }

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        let sh = find_program(&ServiceSpec::new("a", ["sh"])).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(find_program(&ServiceSpec::new("a", ["/nonexistent/kubelet"])), None);
        assert_eq!(find_program(&ServiceSpec::new("a", ["no-such-program-kelson"])), None);
        let mut spec = ServiceSpec::new("a", ["only-here"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("only-here"), "").unwrap();
        spec.env.push(("PATH".into(), dir.path().display().to_string()));
        assert_eq!(find_program(&spec), Some(dir.path().join("only-here")));
    }
}
