//! The real backend: libcontainer creates, starts and deletes containers;
//! `waitpid` reaps them (the shim is their subreaper, see [`super::process`]).

use super::oom::oom_kills_seen;
use super::server::{Backend, Reaped, Started};
use super::CGROUP_ROOT;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Containers through libcontainer, with state under `state_dir`.
pub(crate) struct Libcontainer {
    pub state_dir: PathBuf,
    /// Container roots without pivot_root (an initramfs root).
    pub no_pivot: bool,
}

/// A container operation that failed, naming the container and the step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContainerError {
    #[error("container {id:?}: reading {}", path.display())]
    ReadSpec {
        id: String,
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("container {id:?}: opening /dev/null")]
    DevNull {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("container {id:?}")]
    Output {
        id: String,
        #[source]
        source: OutputError,
    },
    #[error("container {id:?}: {step} from bundle {}", bundle.display())]
    Build {
        id: String,
        step: &'static str,
        bundle: PathBuf,
        #[source]
        source: LibcontainerError,
    },
    #[error("container {id:?}: started but libcontainer reports no pid")]
    NoPid { id: String },
    #[error("container {id:?}: signal {signal}")]
    BadSignal {
        id: String,
        signal: i32,
        #[source]
        source: Errno,
    },
    #[error("container {id:?}: sending {signal} to pid {pid}")]
    Signal {
        id: String,
        signal: Signal,
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("container {id:?}: loading {}", root.display())]
    Load {
        id: String,
        root: PathBuf,
        #[source]
        source: LibcontainerError,
    },
    #[error("container {id:?}: deleting (cgroup and {})", root.display())]
    Delete {
        id: String,
        root: PathBuf,
        #[source]
        source: LibcontainerError,
    },
}

/// A container's stdout or stderr that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("opening output file {}", path.display())]
pub(crate) struct OutputError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl Backend for Libcontainer {
    type Error = ContainerError;

    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        stdout: Option<&Path>,
        stderr: Option<&Path>,
    ) -> Result<Started, ContainerError> {
        let config_path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config_path).map_err(|source| ContainerError::ReadSpec {
            id: id.to_owned(),
            path: config_path.clone(),
            source,
        })?;
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| Path::new(CGROUP_ROOT).join(p.strip_prefix("/").unwrap_or(&p)));
        let stdin = File::open("/dev/null").map_err(|source| ContainerError::DevNull { id: id.to_owned(), source })?;
        let output_error = |source| ContainerError::Output { id: id.to_owned(), source };
        let stdout = output(stdout).map_err(output_error)?;
        let stderr = output(stderr).map_err(output_error)?;
        let step = |step: &'static str| {
            move |source| ContainerError::Build { id: id.to_owned(), step, bundle: bundle.to_owned(), source }
        };
        let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.state_dir)
            .map_err(step("using the state directory"))?
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .validate_id()
            .map_err(step("checking the id"))?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(self.no_pivot)
            .build()
            .map_err(step("creating"))?;
        if let Err(source) = container.start() {
            let error = step("starting")(source);
            if let Err(cleanup) = container.delete(true) {
                tracing::warn!(id, error = %cleanup, "removing a container that failed to start");
            }
            return Err(error);
        }
        let pid = container.pid().map(|p| p.as_raw()).ok_or_else(|| ContainerError::NoPid { id: id.to_owned() })?;
        Ok(Started { pid, cgroup })
    }

    fn kill(&mut self, id: &str, pid: i32, signal: i32) -> Result<(), ContainerError> {
        let signal = Signal::try_from(signal).map_err(|source| ContainerError::BadSignal {
            id: id.to_owned(),
            signal,
            source,
        })?;
        // The pid cannot have been reused: it is our child and is only released when we reap it.
        signal::kill(Pid::from_raw(pid), signal).map_err(|source| ContainerError::Signal {
            id: id.to_owned(),
            signal,
            pid,
            source,
        })
    }

    fn delete(&mut self, id: &str) -> Result<(), ContainerError> {
        let root = self.state_dir.join(id);
        if root.exists() {
            let mut container = Container::load(root.clone()).map_err(|source| ContainerError::Load {
                id: id.to_owned(),
                root: root.clone(),
                source,
            })?;
            container.delete(true).map_err(|source| ContainerError::Delete { id: id.to_owned(), root, source })?;
        }
        Ok(())
    }

    fn reap(&mut self) -> Vec<Reaped> {
        let mut reaped = Vec::new();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    reaped.push(Reaped { pid: pid.as_raw(), code: Some(code), signal: None });
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    reaped.push(Reaped { pid: pid.as_raw(), code: None, signal: Some(signal as i32) });
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => {
                    tracing::warn!(%error, "waiting for children");
                    return reaped;
                }
            }
        }
    }

    fn oom_killed(&self, cgroup: &Path) -> bool {
        oom_kills_seen(cgroup)
    }
}

/// Containers a dead shim left in `state_dir`: no longer anyone's children
/// (the kernel gave them to PID 1) and no longer reported, so they are
/// killed and removed, cgroups too, before their ids are used again. Only
/// reached once no other shim answers on the socket.
pub(super) fn remove_leftovers(state_dir: &Path) {
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, state = %state_dir.display(), "listing containers left by an earlier shim");
            return;
        }
    };
    for entry in entries.flatten() {
        let root = entry.path();
        let id = entry.file_name().to_string_lossy().into_owned();
        let deleted = Container::load(root.clone())
            .map_err(|e| e.to_string())
            .and_then(|mut c| c.delete(true).map_err(|e| e.to_string()));
        match deleted {
            Ok(()) => tracing::warn!(id, "killed and deleted a container left by an earlier shim"),
            Err(error) => {
                tracing::warn!(id, error, "deleting a container left by an earlier shim; removing its state only");
                if let Err(error) = fs::remove_dir_all(&root) {
                    tracing::warn!(id, %error, state = %root.display(), "removing the state of a container left by an earlier shim");
                }
            }
        }
    }
}

/// Opens a container's stdout or stderr: a file appended to, or a FIFO
/// whose reader (a log collector) is already there. O_NONBLOCK keeps the
/// shim from hanging on a FIFO nobody reads (ENXIO instead); it is cleared
/// afterwards so the container's writes block as usual.
fn output(path: Option<&Path>) -> Result<File, OutputError> {
    let path = path.unwrap_or(Path::new("/dev/null"));
    let what = |source: io::Error| OutputError { path: path.to_owned(), source };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(what)?;
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| what(e.into()))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| what(e.into()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain;
    use std::io::Write;

    #[test]
    fn output_to_a_fifo_without_a_reader_fails_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = error_chain(&output(Some(&fifo)).unwrap_err());
        assert!(
            err.starts_with(&format!("opening output file {}: ", fifo.display()))
                && err.contains("No such device or address"),
            "{err}"
        );

        let _reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let writer = output(Some(&fifo)).unwrap();
        let flags = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0, "the container gets a blocking descriptor");
    }

    #[test]
    fn output_appends_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        fs::write(&log, "before\n").unwrap();
        output(Some(&log)).unwrap().write_all(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "before\nafter\n");
    }
}
