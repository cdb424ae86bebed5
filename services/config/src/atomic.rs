//! Atomic file replacement (write a temporary file, fsync, rename, fsync the
//! directory): anything kept under /var/lib/kelson, and the files Kelson
//! renders, goes through here so a power cut leaves the old or the new file,
//! never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("creating directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing temporary file {tmp} for {path}")]
    Write {
        path: PathBuf,
        tmp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("renaming {tmp} over {path}")]
    Rename {
        path: PathBuf,
        tmp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("syncing directory {dir}")]
    SyncDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Two writers in one process (apply and a DHCP client both write
/// resolv.conf) must not share a temporary file.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `data` (mode `mode` if the file is new), creating the
/// parent directory if needed.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|source| AtomicWriteError::CreateDir { dir: dir.clone(), source })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
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
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|source| AtomicWriteError::SyncDir { dir, source })
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
    fn a_missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net/pods.json");
        write_atomic(&path, b"x", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "x");
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let err = write_atomic(&blocker.join("x"), b"x", 0o644).unwrap_err();
        assert_eq!(err.to_string(), format!("creating directory {}", blocker.display()));
    }
}
