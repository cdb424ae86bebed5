//! Namespace files for a pod sandbox, made like `ip netns add`: a
//! short-lived thread unshares new network, IPC and UTS namespaces, sets
//! the pod's hostname in the new UTS namespace and bind-mounts its
//! `/proc/thread-self/ns/*` onto files, which keep the namespaces alive
//! after the thread is gone. A thread (not the caller) so PID 1's own
//! threads never change namespace.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::{Path, PathBuf};

/// Where namespace files go on a node.
pub const NETNS_DIR: &str = "/run/kelson/pods/netns";

/// A pod's namespace files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceFiles {
    pub net: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

impl NamespaceFiles {
    /// `<dir>/<pod uid>-{net,ipc,uts}`.
    pub fn for_pod(dir: &Path, uid: &str) -> Self {
        NamespaceFiles {
            net: dir.join(format!("{uid}-net")),
            ipc: dir.join(format!("{uid}-ipc")),
            uts: dir.join(format!("{uid}-uts")),
        }
    }

    fn all(&self) -> [(&'static str, &Path); 3] {
        [("net", &self.net), ("ipc", &self.ipc), ("uts", &self.uts)]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread making namespaces for {} died", path.display())]
    Thread { path: PathBuf },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(nix::errno::Errno) -> NetnsError + 'a {
    move |e| NetnsError::Io { action, path: path.to_owned(), source: e.into() }
}

/// Makes the three namespaces and their files, the UTS one named
/// `hostname`. Anything half made is removed again on failure.
pub fn create(files: &NamespaceFiles, hostname: &str) -> Result<(), NetnsError> {
    for (_, path) in files.all() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| NetnsError::Io { action: "creating", path: dir.to_owned(), source })?;
        }
        std::fs::File::create(path).map_err(|source| NetnsError::Io { action: "creating", path: path.to_owned(), source })?;
    }
    let owned = files.clone();
    let hostname = hostname.to_owned();
    let result = std::thread::spawn(move || -> Result<(), NetnsError> {
        let files = owned;
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(io("unsharing namespaces for", &files.net))?;
        nix::unistd::sethostname(&hostname).map_err(io("setting the hostname of", &files.uts))?;
        for (kind, path) in files.all() {
            let source = PathBuf::from(format!("/proc/thread-self/ns/{kind}"));
            mount(Some(&source), path, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(io("bind-mounting a namespace on", path))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(NetnsError::Thread { path: files.net.clone() }));
    if result.is_err() {
        let _ = remove(files);
    }
    result
}

/// Unmounts and removes the files; missing ones are fine.
pub fn remove(files: &NamespaceFiles) -> Result<(), NetnsError> {
    for (_, path) in files.all() {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(io("unmounting", path)(e)),
        }
        match std::fs::remove_file(path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(NetnsError::Io { action: "removing", path: path.to_owned(), source })
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_files_hold_new_namespaces_and_are_removed_again() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to unshare and bind-mount namespaces");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files = NamespaceFiles::for_pod(dir.path(), "abc");
        create(&files, "pod-a").unwrap();
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let theirs = std::fs::metadata(&files.net).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), theirs.ino(), "the file holds another network namespace");
        remove(&files).unwrap();
        assert!(!files.net.exists() && !files.uts.exists() && !files.ipc.exists());
        remove(&files).unwrap();
    }
}
