//! Atomic file replacement: anything kept under /var/lib/kelson goes through
//! here so a power cut leaves either the old or the new file, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error("writing temporary file {tmp} for {path}")]
    Write { path: PathBuf, tmp: PathBuf, #[source] source: io::Error },
    #[error("renaming {tmp} over {path}")]
    Rename { path: PathBuf, tmp: PathBuf, #[source] source: io::Error },
    #[error("syncing directory {dir}")]
    SyncDir { dir: PathBuf, #[source] source: io::Error },
}

/// Writes `data` to `path` via a temporary file in the same directory:
/// write, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let dir = path
        .parent()
        .ok_or_else(|| AtomicWriteError::NoParent { path: path.to_owned() })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(AtomicWriteError::Write { path: path.to_owned(), tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(AtomicWriteError::Rename { path: path.to_owned(), tmp, source });
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AtomicWriteError::SyncDir { dir: dir.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        fs::write(&path, "old contents that are longer").unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn new_files_get_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"x", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_missing_directory_is_reported_with_the_path() {
        let err = write_atomic(Path::new("/nonexistent-kelson-dir/x"), b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-kelson-dir/x"), "{err}");
    }
}
