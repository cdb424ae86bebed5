//! Each container's root filesystem: an overlayfs whose lower layer is the
//! image's unpacked (shared, read-only) tree and whose upper and work
//! directories are the container's own. Mounting goes through [`Mounter`] so
//! the layout logic is tested without root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a container's root filesystem could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// {action} {path}
    #[error("{action} {path}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// overlay layer path {path} contains ',' or ':', which overlayfs options cannot hold
    #[error("overlay layer path {path} contains ',' or ':', which overlayfs options cannot hold")]
    UnsafePath { path: PathBuf },
}

/// The directories of one container's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayout {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the merged tree is mounted: the container's root.
    pub merged: PathBuf,
}

impl OverlayLayout {
    /// The layout for a container whose own state lives in `container_dir`.
    pub fn new(lower: impl Into<PathBuf>, container_dir: &Path) -> Self {
        Self {
            lower: lower.into(),
            upper: container_dir.join("upper"),
            work: container_dir.join("work"),
            merged: container_dir.join("rootfs"),
        }
    }

    /// The overlayfs mount options for this layout.
    pub fn options(&self) -> Result<String, RootfsError> {
        for path in [&self.lower, &self.upper, &self.work] {
            let text = path.to_string_lossy();
            if text.contains(',') || text.contains(':') {
                return Err(RootfsError::UnsafePath { path: path.clone() });
            }
        }
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        ))
    }
}

/// Mounts and unmounts container root filesystems.
pub trait Mounter {
    fn mount_overlay(&self, layout: &OverlayLayout) -> Result<(), RootfsError>;
    fn unmount(&self, target: &Path) -> Result<(), RootfsError>;
}

/// The real thing: overlayfs through mount(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount_overlay(&self, layout: &OverlayLayout) -> Result<(), RootfsError> {
        let options = layout.options()?;
        nix::mount::mount(
            Some("overlay"),
            &layout.merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| RootfsError::Io {
            action: "mounting overlayfs on",
            path: layout.merged.clone(),
            source: io::Error::from_raw_os_error(e as i32),
        })
    }

    fn unmount(&self, target: &Path) -> Result<(), RootfsError> {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            // Not mounted (already taken down, or never set up): nothing to do.
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(RootfsError::Io {
                action: "unmounting",
                path: target.to_owned(),
                source: io::Error::from_raw_os_error(e as i32),
            }),
        }
    }
}

/// Creates `container_dir`'s upper, work and mount point directories and
/// mounts the overlay; returns the layout, whose `merged` is the root to give
/// the container. A container restarted with the same directory keeps what
/// it wrote in its upper layer.
pub fn prepare(mounter: &dyn Mounter, lower: &Path, container_dir: &Path) -> Result<OverlayLayout, RootfsError> {
    let layout = OverlayLayout::new(lower, container_dir);
    layout.options()?;
    for dir in [&layout.upper, &layout.work, &layout.merged] {
        fs::create_dir_all(dir).map_err(|source| RootfsError::Io { action: "creating", path: dir.clone(), source })?;
    }
    mounter.mount_overlay(&layout)?;
    Ok(layout)
}

/// Unmounts the container's root and removes its upper, work and mount
/// point directories.
pub fn remove(mounter: &dyn Mounter, container_dir: &Path) -> Result<(), RootfsError> {
    let layout = OverlayLayout::new(PathBuf::new(), container_dir);
    mounter.unmount(&layout.merged)?;
    for dir in [&layout.upper, &layout.work, &layout.merged] {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(RootfsError::Io { action: "removing", path: dir.clone(), source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
    }

    impl Mounter for Recorder {
        fn mount_overlay(&self, layout: &OverlayLayout) -> Result<(), RootfsError> {
            self.calls.borrow_mut().push(format!("mount {} {}", layout.merged.display(), layout.options()?));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), RootfsError> {
            self.calls.borrow_mut().push(format!("umount {}", target.display()));
            Ok(())
        }
    }

    #[test]
    fn prepare_creates_the_container_directories_and_mounts_image_below_them() {
        let dir = tempfile::tempdir().unwrap();
        let container = dir.path().join("c1");
        let recorder = Recorder::default();
        let layout = prepare(&recorder, Path::new("/images/sha256-abc"), &container).unwrap();
        assert!(layout.upper.is_dir() && layout.work.is_dir() && layout.merged.is_dir());
        let c = container.display();
        assert_eq!(
            recorder.calls.borrow().as_slice(),
            [format!("mount {c}/rootfs lowerdir=/images/sha256-abc,upperdir={c}/upper,workdir={c}/work")]
        );
        remove(&recorder, &container).unwrap();
        assert!(!layout.upper.exists() && !layout.merged.exists());
        assert_eq!(recorder.calls.borrow().last().unwrap(), &format!("umount {c}/rootfs"));
    }

    #[test]
    fn paths_overlayfs_would_misread_are_refused_before_mounting() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::default();
        let err = prepare(&recorder, Path::new("/images/a,b"), dir.path()).unwrap_err();
        assert!(matches!(err, RootfsError::UnsafePath { ref path } if path == Path::new("/images/a,b")), "{err}");
        assert!(recorder.calls.borrow().is_empty());
    }
}
