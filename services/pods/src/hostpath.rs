//! `hostPath.type` checks, made just before a container starts (the path
//! may appear or vanish between loading a manifest and starting its pod).
//! The filesystem is behind [`HostFs`] so the checks run against a temp
//! directory, or a fake, without root.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::spec::HostPathType;

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    /// A FIFO or anything else no hostPath type asks for.
    Other,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::File => "a regular file",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Other => "another kind of file",
        })
    }
}

pub trait HostFs {
    /// What `path` is, following symlinks (a hostPath names what a link
    /// points to); `Ok(None)` when nothing is there.
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>>;
    /// Creates `path` and its missing parents as directories, mode 0755.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates an empty file, mode 0644, failing if the parent is missing.
    fn create_file(&self, path: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl HostFs for RealFs {
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let t = meta.file_type();
        Ok(Some(if t.is_dir() {
            FileKind::Directory
        } else if t.is_file() {
            FileKind::File
        } else if t.is_socket() {
            FileKind::Socket
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else {
            FileKind::Other
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(path)
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        // create (not create_new): another writer may have made it since
        // `kind` looked, which is as good as creating it.
        fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(path).map(drop)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathOutcome {
    /// The check passed on what was there (or there was no check).
    Present,
    /// `DirectoryOrCreate` or `FileOrCreate` made it.
    Created,
}

#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("hostPath {path} (type {kind:?}) does not exist")]
    Missing { path: PathBuf, kind: HostPathType },
    #[error("hostPath {path} (type {kind:?}) is {found}")]
    WrongKind { path: PathBuf, kind: HostPathType, found: FileKind },
    #[error("checking hostPath {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating hostPath {path} (type {kind:?})")]
    Create {
        path: PathBuf,
        kind: HostPathType,
        #[source]
        source: io::Error,
    },
}

/// Checks (and for the `…OrCreate` types, makes) `path` as `kind` asks.
/// Like the kubelet, `FileOrCreate` does not create missing parents.
pub fn check_host_path(kind: HostPathType, path: &Path, fs: &dyn HostFs) -> Result<HostPathOutcome, HostPathError> {
    if kind == HostPathType::Unchecked {
        return Ok(HostPathOutcome::Present);
    }
    let found = fs.kind(path).map_err(|source| HostPathError::Stat { path: path.to_owned(), source })?;
    let wanted = match kind {
        HostPathType::Unchecked => return Ok(HostPathOutcome::Present),
        HostPathType::DirectoryOrCreate | HostPathType::Directory => FileKind::Directory,
        HostPathType::FileOrCreate | HostPathType::File => FileKind::File,
        HostPathType::Socket => FileKind::Socket,
        HostPathType::CharDevice => FileKind::CharDevice,
        HostPathType::BlockDevice => FileKind::BlockDevice,
    };
    let create = |result: io::Result<()>| {
        result.map(|()| HostPathOutcome::Created).map_err(|source| HostPathError::Create {
            path: path.to_owned(),
            kind,
            source,
        })
    };
    match (found, kind) {
        (Some(found), _) if found == wanted => Ok(HostPathOutcome::Present),
        (Some(found), _) => Err(HostPathError::WrongKind { path: path.to_owned(), kind, found }),
        (None, HostPathType::DirectoryOrCreate) => create(fs.create_dir_all(path)),
        (None, HostPathType::FileOrCreate) => create(fs.create_file(path)),
        (None, _) => Err(HostPathError::Missing { path: path.to_owned(), kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn or_create_types_make_what_is_missing_and_accept_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("var/lib/etcd");
        assert_eq!(
            check_host_path(HostPathType::DirectoryOrCreate, &nested, &RealFs).unwrap(),
            HostPathOutcome::Created
        );
        assert!(nested.is_dir());
        assert_eq!(
            check_host_path(HostPathType::DirectoryOrCreate, &nested, &RealFs).unwrap(),
            HostPathOutcome::Present
        );

        let lock = dir.path().join("xtables.lock");
        assert_eq!(check_host_path(HostPathType::FileOrCreate, &lock, &RealFs).unwrap(), HostPathOutcome::Created);
        assert!(lock.is_file());
        fs::write(&lock, "kept").unwrap();
        assert_eq!(check_host_path(HostPathType::FileOrCreate, &lock, &RealFs).unwrap(), HostPathOutcome::Present);
        assert_eq!(fs::read_to_string(&lock).unwrap(), "kept", "an existing file is not truncated");
    }

    #[test]
    fn file_or_create_does_not_make_missing_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/parent/file");
        let err = check_host_path(HostPathType::FileOrCreate, &path, &RealFs).unwrap_err();
        assert!(matches!(err, HostPathError::Create { .. }), "{err}");
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn strict_types_refuse_what_is_missing_or_of_another_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.conf");
        fs::write(&file, "x").unwrap();
        let missing = dir.path().join("nothing");
        let err = check_host_path(HostPathType::Directory, &file, &RealFs).unwrap_err();
        assert_eq!(err.to_string(), format!("hostPath {} (type Directory) is a regular file", file.display()));
        let err = check_host_path(HostPathType::File, &missing, &RealFs).unwrap_err();
        assert_eq!(err.to_string(), format!("hostPath {} (type File) does not exist", missing.display()));
        let err = check_host_path(HostPathType::DirectoryOrCreate, &file, &RealFs).unwrap_err();
        assert!(matches!(err, HostPathError::WrongKind { found: FileKind::File, .. }), "{err}");
        assert!(check_host_path(HostPathType::CharDevice, &file, &RealFs).is_err());
        assert_eq!(check_host_path(HostPathType::File, &file, &RealFs).unwrap(), HostPathOutcome::Present);
        assert_eq!(check_host_path(HostPathType::Directory, dir.path(), &RealFs).unwrap(), HostPathOutcome::Present);
    }

    #[test]
    fn sockets_and_devices_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("containerd.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        assert_eq!(check_host_path(HostPathType::Socket, &sock, &RealFs).unwrap(), HostPathOutcome::Present);
        assert!(check_host_path(HostPathType::File, &sock, &RealFs).is_err());
        let null = Path::new("/dev/null");
        assert_eq!(check_host_path(HostPathType::CharDevice, null, &RealFs).unwrap(), HostPathOutcome::Present);
        let err = check_host_path(HostPathType::BlockDevice, null, &RealFs).unwrap_err();
        assert!(matches!(err, HostPathError::WrongKind { found: FileKind::CharDevice, .. }), "{err}");
    }

    #[test]
    fn an_unchecked_host_path_is_not_even_looked_at() {
        struct Refuses;
        impl HostFs for Refuses {
            fn kind(&self, _: &Path) -> io::Result<Option<FileKind>> {
                Err(io::Error::other("looked"))
            }
            fn create_dir_all(&self, _: &Path) -> io::Result<()> {
                Err(io::Error::other("created"))
            }
            fn create_file(&self, _: &Path) -> io::Result<()> {
                Err(io::Error::other("created"))
            }
        }
        assert_eq!(
            check_host_path(HostPathType::Unchecked, Path::new("/nowhere"), &Refuses).unwrap(),
            HostPathOutcome::Present
        );
        let err = check_host_path(HostPathType::Directory, Path::new("/nowhere"), &Refuses).unwrap_err();
        assert_eq!(err.to_string(), "checking hostPath /nowhere");
    }
}
