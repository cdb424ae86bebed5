//! The early mounts, as data: one [`MountSpec`] per filesystem, mounted in
//! order. A target that is already mounted (EBUSY, as under a test's
//! `unshare --mount-proc` or a kernel that mounted devtmpfs itself) counts
//! as done.

use crate::kernel::{Kernel, MountFlags};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
#[error("mounting {} ({}) on {}", spec.fstype, spec.source, spec.target)]
pub struct MountError {
    pub spec: MountSpec,
    #[source]
    pub source: io::Error,
}

const NODEV_NOSUID_NOEXEC: MountFlags =
    MountFlags { readonly: false, nosuid: true, nodev: true, noexec: true, relatime: true };
const NOSUID: MountFlags = MountFlags { readonly: false, nosuid: true, nodev: false, noexec: false, relatime: true };
const NOSUID_NODEV: MountFlags =
    MountFlags { readonly: false, nosuid: true, nodev: true, noexec: false, relatime: true };

/// Everything PID 1 mounts before it reads any configuration. `/var` is not
/// here: it depends on the state disk (see `state_disk`).
pub const EARLY_MOUNTS: &[MountSpec] = &[
    MountSpec { source: "proc", target: "/proc", fstype: "proc", flags: NODEV_NOSUID_NOEXEC, data: None },
    MountSpec { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NODEV_NOSUID_NOEXEC, data: None },
    MountSpec { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: NOSUID, data: Some("mode=0755") },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags { readonly: false, nosuid: true, nodev: false, noexec: true, relatime: true },
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    MountSpec { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID_NODEV, data: Some("mode=1777") },
    MountSpec { source: "run", target: "/run", fstype: "tmpfs", flags: NOSUID_NODEV, data: Some("mode=0755") },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NODEV_NOSUID_NOEXEC,
        data: Some("nsdelegate"),
    },
    MountSpec { source: "tmp", target: "/tmp", fstype: "tmpfs", flags: NOSUID_NODEV, data: Some("mode=1777") },
];

/// Mounts one spec, creating its target first.
pub fn mount_one(kernel: &dyn Kernel, spec: &MountSpec) -> Result<MountOutcome, MountError> {
    let target = Path::new(spec.target);
    kernel.create_dir_all(target).map_err(|source| MountError { spec: spec.clone(), source })?;
    match kernel.mount(spec.source, target, spec.fstype, spec.flags, spec.data) {
        Ok(()) => Ok(MountOutcome::Mounted),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(MountOutcome::AlreadyMounted),
        Err(source) => Err(MountError { spec: spec.clone(), source }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    Mounted,
    AlreadyMounted,
}

/// Mounts all specs in order, stopping at the first failure: later mounts
/// sit on earlier ones (/dev/pts on /dev, cgroup2 on /sys).
pub fn mount_all(kernel: &dyn Kernel, specs: &[MountSpec]) -> Result<Vec<(PathBuf, MountOutcome)>, MountError> {
    specs.iter().map(|spec| mount_one(kernel, spec).map(|o| (PathBuf::from(spec.target), o))).collect()
}

/// The cgroup v2 controllers PID 1 hands down to the cgroups below the root.
pub const CGROUP_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading the available cgroup controllers from {path}")]
    ReadControllers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup controller {controller} is not available (the kernel offers: {available})")]
    Missing { controller: String, available: String },
    #[error("enabling cgroup controller {controller} in {path}")]
    Enable {
        controller: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Enables [`CGROUP_CONTROLLERS`] for the root cgroup's children. Every
/// controller is attempted; the first problem is returned after the rest
/// were tried.
pub fn enable_cgroup_controllers(kernel: &dyn Kernel, root: &Path) -> Result<(), CgroupError> {
    let controllers_path = root.join("cgroup.controllers");
    let available = kernel
        .read_file(&controllers_path)
        .map_err(|source| CgroupError::ReadControllers { path: controllers_path.clone(), source })?;
    let available = String::from_utf8_lossy(&available).trim().to_owned();
    let subtree = root.join("cgroup.subtree_control");
    let mut first_error = None;
    for controller in CGROUP_CONTROLLERS {
        let result = if !available.split_whitespace().any(|c| c == *controller) {
            Err(CgroupError::Missing { controller: controller.to_string(), available: available.clone() })
        } else {
            kernel.write_file(&subtree, format!("+{controller}").as_bytes()).map_err(|source| CgroupError::Enable {
                controller: controller.to_string(),
                path: subtree.clone(),
                source,
            })
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn early_mounts_put_dev_before_its_children_and_sys_before_cgroup() {
        let pos = |t: &str| EARLY_MOUNTS.iter().position(|m| m.target == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        for t in ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/sys/fs/cgroup", "/tmp"] {
            pos(t);
        }
    }

    #[test]
    fn each_mount_creates_its_target_then_mounts() {
        let k = FakeKernel::default();
        mount_all(&k, EARLY_MOUNTS).unwrap();
        let calls = k.calls();
        assert_eq!(calls[0], "mkdir /proc");
        assert_eq!(calls[1], "mount proc /proc proc -");
        assert!(calls.contains(&"mount cgroup2 /sys/fs/cgroup cgroup2 nsdelegate".to_string()));
    }

    #[test]
    fn an_already_mounted_target_counts_as_done() {
        let k = FakeKernel::default().failing("/proc", libc::EBUSY);
        let outcomes = mount_all(&k, EARLY_MOUNTS).unwrap();
        assert_eq!(outcomes[0], (PathBuf::from("/proc"), MountOutcome::AlreadyMounted));
        assert_eq!(outcomes[1].1, MountOutcome::Mounted);
    }

    #[test]
    fn a_failed_mount_names_the_filesystem_and_target_and_stops() {
        let k = FakeKernel::default().failing("/dev", libc::ENODEV);
        let err = mount_all(&k, EARLY_MOUNTS).unwrap_err();
        assert_eq!(err.to_string(), "mounting devtmpfs (devtmpfs) on /dev");
        assert!(!k.calls().iter().any(|c| c.contains("/dev/pts")));
    }

    #[test]
    fn cgroup_controllers_are_enabled_one_by_one() {
        let k = FakeKernel::default().with_file("/cg/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma\n");
        enable_cgroup_controllers(&k, Path::new("/cg")).unwrap();
        let writes: Vec<_> = k.calls().into_iter().filter(|c| c.starts_with("write")).collect();
        assert_eq!(
            writes,
            vec![
                "write /cg/cgroup.subtree_control +cpu",
                "write /cg/cgroup.subtree_control +memory",
                "write /cg/cgroup.subtree_control +pids",
                "write /cg/cgroup.subtree_control +io",
            ]
        );
    }

    #[test]
    fn a_missing_controller_is_named_and_the_others_still_enabled() {
        let k = FakeKernel::default().with_file("/cg/cgroup.controllers", "cpu memory pids\n");
        let err = enable_cgroup_controllers(&k, Path::new("/cg")).unwrap_err();
        assert!(err.to_string().contains("io is not available"), "{err}");
        assert!(k.calls().contains(&"write /cg/cgroup.subtree_control +pids".to_string()));
    }
}
