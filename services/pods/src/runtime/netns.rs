//! Namespace files for a pod sandbox, made like `ip netns add`: a
//! short-lived thread unshares the namespaces the pod gets of its own
//! (network, IPC, UTS: all three for a pod on cbr0, IPC alone for a
//! host-network pod without `hostIPC`), sets the pod's hostname in a new
//! UTS namespace and bind-mounts its `/proc/thread-self/ns/*` onto files,
//! which keep the namespaces alive after the thread is gone. A thread (not
//! the caller) so PID 1's own threads never change namespace.

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

/// Which new namespaces a sandbox gets; the others stay the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unshare {
    pub net: bool,
    pub ipc: bool,
    /// A new UTS namespace carries the pod's name as its hostname.
    pub uts: bool,
}

impl Unshare {
    /// A pod on the pod network: its own network and UTS namespaces, and
    /// its own IPC one unless it asks for the host's.
    pub fn pod_network(host_ipc: bool) -> Self {
        Unshare { net: true, ipc: !host_ipc, uts: true }
    }

    /// A host-network pod without `hostIPC`: the kubelet still gives its
    /// containers one IPC namespace of their own to share.
    pub const IPC_ONLY: Unshare = Unshare { net: false, ipc: true, uts: false };

    fn flags(self) -> CloneFlags {
        let mut flags = CloneFlags::empty();
        flags.set(CloneFlags::CLONE_NEWNET, self.net);
        flags.set(CloneFlags::CLONE_NEWIPC, self.ipc);
        flags.set(CloneFlags::CLONE_NEWUTS, self.uts);
        flags
    }

    fn wants(self, kind: &str) -> bool {
        match kind {
            "net" => self.net,
            "ipc" => self.ipc,
            _ => self.uts,
        }
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

/// Makes the namespaces `which` asks for and their files, a new UTS one
/// named `hostname`. Anything half made is removed again on failure.
pub fn create(files: &NamespaceFiles, which: Unshare, hostname: &str) -> Result<(), NetnsError> {
    for (_, path) in files.all().into_iter().filter(|(kind, _)| which.wants(kind)) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| NetnsError::Io {
                action: "creating",
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::File::create(path).map_err(|source| NetnsError::Io {
            action: "creating",
            path: path.to_owned(),
            source,
        })?;
    }
    // Errors about the sandbox as a whole name its first file.
    let named = if which.net { files.net.clone() } else { files.ipc.clone() };
    let (owned, thread_named) = (files.clone(), named.clone());
    let hostname = hostname.to_owned();
    let result = std::thread::spawn(move || -> Result<(), NetnsError> {
        let files = owned;
        unshare(which.flags()).map_err(io("unsharing namespaces for", &thread_named))?;
        if which.uts {
            nix::unistd::sethostname(&hostname).map_err(io("setting the hostname of", &files.uts))?;
        }
        for (kind, path) in files.all().into_iter().filter(|(kind, _)| which.wants(kind)) {
            let source = PathBuf::from(format!("/proc/thread-self/ns/{kind}"));
            mount(Some(&source), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(io("bind-mounting a namespace on", path))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or(Err(NetnsError::Thread { path: named }));
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
            kelson_test_support::report_skip("needs root to unshare and bind-mount namespaces");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files = NamespaceFiles::for_pod(dir.path(), "abc");
        create(&files, Unshare::pod_network(false), "pod-a").unwrap();
        use std::os::unix::fs::MetadataExt;
        for (kind, path) in files.all() {
            let ours = std::fs::metadata(format!("/proc/self/ns/{kind}")).unwrap();
            let theirs = std::fs::metadata(path).unwrap();
            assert_ne!(ours.ino(), theirs.ino(), "the {kind} file holds another namespace");
        }
        remove(&files).unwrap();
        assert!(!files.net.exists() && !files.uts.exists() && !files.ipc.exists());
        remove(&files).unwrap();
    }

    #[test]
    fn an_ipc_only_sandbox_makes_just_the_ipc_namespace() {
        if !nix::unistd::Uid::effective().is_root() {
            kelson_test_support::report_skip("needs root to unshare and bind-mount namespaces");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files = NamespaceFiles::for_pod(dir.path(), "def");
        create(&files, Unshare::IPC_ONLY, "unused").unwrap();
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata("/proc/self/ns/ipc").unwrap();
        assert_ne!(ours.ino(), std::fs::metadata(&files.ipc).unwrap().ino(), "a new IPC namespace");
        assert!(!files.net.exists() && !files.uts.exists(), "no network or UTS file for an IPC-only sandbox");
        remove(&files).unwrap();
        assert!(!files.ipc.exists());
    }
}
