//! Each service's own cgroup v2 directory under Kelson's system cgroup
//! (`/sys/fs/cgroup/kelson.slice/system/<service>` by default) and its
//! limits. The process joins it itself, between fork and exec (see
//! `command.rs`), so nothing it runs ever executes outside its cgroup.

use crate::spec::Resources;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the supervisor makes service cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// The cgroup2 mount, `/sys/fs/cgroup` on the node.
    pub mount: PathBuf,
    /// Relative to `mount`: the parent of all service cgroups.
    pub parent: PathBuf,
}

impl Default for CgroupRoot {
    fn default() -> Self {
        CgroupRoot { mount: PathBuf::from("/sys/fs/cgroup"), parent: PathBuf::from("kelson.slice/system") }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("enabling the {controller} controller in {path}")]
    EnableController {
        path: PathBuf,
        controller: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("the cgroup parent {parent} must be a relative path without '..'")]
    BadParent { parent: PathBuf },
}

impl CgroupRoot {
    /// The directory of `service`'s cgroup.
    pub fn service_dir(&self, service: &str) -> PathBuf {
        self.mount.join(&self.parent).join(service)
    }

    /// Creates `service`'s cgroup (and its ancestors), enables the
    /// controllers its limits need on the way down, and writes the limits.
    /// Returns the `cgroup.procs` file the process is to join through.
    pub fn prepare(&self, service: &str, resources: &Resources) -> Result<PathBuf, CgroupError> {
        if self.parent.is_absolute() || self.parent.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(CgroupError::BadParent { parent: self.parent.clone() });
        }
        let dir = self.service_dir(service);
        fs::create_dir_all(&dir).map_err(|source| CgroupError::Create { path: dir.clone(), source })?;

        // A controller's files appear in a cgroup only when every ancestor
        // has it in cgroup.subtree_control. The intermediate cgroups hold no
        // processes, so cgroup v2's no-internal-process rule allows this.
        let mut controllers = Vec::new();
        if resources.memory_max.is_some() {
            controllers.push("memory");
        }
        if resources.cpu_weight.is_some() {
            controllers.push("cpu");
        }
        let mut level = self.mount.clone();
        let mut levels = vec![level.clone()];
        for part in self.parent.components() {
            level.push(part);
            levels.push(level.clone());
        }
        for level in &levels {
            for controller in &controllers {
                let path = level.join("cgroup.subtree_control");
                write_file(&path, &format!("+{controller}")).map_err(|source| CgroupError::EnableController {
                    path,
                    controller,
                    source,
                })?;
            }
        }

        if let Some(bytes) = resources.memory_max {
            write_limit(&dir.join("memory.max"), bytes.to_string())?;
        }
        if let Some(weight) = resources.cpu_weight {
            write_limit(&dir.join("cpu.weight"), weight.clamp(1, 10_000).to_string())?;
        }
        Ok(dir.join("cgroup.procs"))
    }
}

fn write_limit(path: &Path, value: String) -> Result<(), CgroupError> {
    write_file(path, &value).map_err(|source| CgroupError::Write { path: path.to_owned(), value, source })
}

/// cgroupfs files exist already; `create` matters only for directories that
/// stand in for cgroupfs in tests, and is harmless on the real thing.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_controllers_are_written_into_a_directory_that_mimics_cgroupfs() {
        let mount = tempfile::tempdir().unwrap();
        let root = CgroupRoot { mount: mount.path().to_owned(), parent: "kelson.slice/system".into() };
        let resources = Resources { memory_max: Some(64 << 20), cpu_weight: Some(200), oom_score_adj: None };
        let procs = root.prepare("containerd", &resources).unwrap();
        let dir = mount.path().join("kelson.slice/system/containerd");
        assert_eq!(procs, dir.join("cgroup.procs"));
        assert_eq!(fs::read_to_string(dir.join("memory.max")).unwrap(), "67108864");
        assert_eq!(fs::read_to_string(dir.join("cpu.weight")).unwrap(), "200");
        // Each write to subtree_control adds one controller on cgroupfs; a
        // plain file keeps only the last one written.
        for level in ["", "kelson.slice", "kelson.slice/system"] {
            let control = fs::read_to_string(mount.path().join(level).join("cgroup.subtree_control")).unwrap();
            assert_eq!(control, "+cpu", "{level}");
        }
    }

    #[test]
    fn no_limits_means_no_controller_is_touched() {
        let mount = tempfile::tempdir().unwrap();
        let root = CgroupRoot { mount: mount.path().to_owned(), parent: "kelson.slice/system".into() };
        root.prepare("kubelet", &Resources::default()).unwrap();
        assert!(mount.path().join("kelson.slice/system/kubelet").is_dir());
        assert!(!mount.path().join("cgroup.subtree_control").exists());
        assert!(!mount.path().join("kelson.slice/system/kubelet/memory.max").exists());
    }

    #[test]
    fn a_parent_that_escapes_the_mount_is_refused() {
        let root = CgroupRoot { mount: "/sys/fs/cgroup".into(), parent: "../etc".into() };
        assert!(matches!(root.prepare("x", &Resources::default()), Err(CgroupError::BadParent { .. })));
    }
}
