//! The host's files as the pod manager uses them: the real side of
//! [`PodHost`](super::PodHost)'s file methods. [`SystemHost`](super::shim::SystemHost)
//! calls these; the manager's tests call them too, inside a temporary
//! directory, behind a fake host that records and can fail them.

use super::HostError;
use crate::crilog::{ContainerLog, LogLimits};
use crate::status::{remove_status, PodStatus, StatusError};
use kelson_containers::ContainerConfig;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

fn host_error<'a, E>(action: &'static str, path: &'a Path) -> impl FnOnce(E) -> HostError + 'a
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| HostError { action, path: path.to_owned(), source: Box::new(source) }
}

/// Absent counts as removed.
fn absent_is_fine(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub fn create_dir(dir: &Path) -> Result<(), HostError> {
    std::fs::create_dir_all(dir).map_err(host_error("creating", dir))
}

pub fn remove_tree(dir: &Path) -> Result<(), HostError> {
    absent_is_fine(std::fs::remove_dir_all(dir)).map_err(host_error("removing", dir))
}

pub fn remove_file(path: &Path) -> Result<(), HostError> {
    absent_is_fine(std::fs::remove_file(path)).map_err(host_error("removing", path))
}

/// Makes a FIFO at `path` (in place of whatever is there) and opens its
/// read end non-blocking, so the open does not wait for a writer.
pub fn open_fifo(path: &Path) -> Result<OwnedFd, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(host_error("creating FIFO", path))?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .map(OwnedFd::from)
        .map_err(host_error("opening FIFO", path))
}

pub fn write_bundle(dir: &Path, config: &ContainerConfig) -> Result<(), HostError> {
    kelson_containers::bundle::write(dir, config).map(drop).map_err(host_error("writing the bundle in", dir))
}

pub fn open_log(path: &Path, limits: LogLimits) -> Result<ContainerLog, HostError> {
    ContainerLog::open(path.to_owned(), limits).map_err(host_error("opening the container log", path))
}

pub fn cgroup_controllers(cgroup_root: &Path) -> Result<Vec<String>, HostError> {
    let path = cgroup_root.join("cgroup.controllers");
    let text = std::fs::read_to_string(&path).map_err(host_error("reading", &path))?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// A pod's cgroup directory: first what is left of its containers' (the
/// runtime removes each at delete; one is left only if that failed, and
/// then its rmdir fails too, busy), then its own. Absent is fine.
pub fn remove_cgroup(dir: &Path) -> Result<(), HostError> {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let _ = std::fs::remove_dir(child.path());
        }
    }
    absent_is_fine(std::fs::remove_dir(dir)).map_err(host_error("removing cgroup", dir))
}

pub fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>, HostError> {
    let entries = std::fs::read_dir(dir).map_err(host_error("listing", dir))?;
    Ok(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
}

pub fn write_status(dir: &Path, status: &PodStatus) -> Result<(), StatusError> {
    status.write(dir).map(drop)
}

pub fn remove_status_file(dir: &Path, namespace: &str, name: &str) -> Result<(), StatusError> {
    remove_status(dir, namespace, name)
}
