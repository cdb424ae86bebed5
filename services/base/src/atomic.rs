//! Atomic file replacement (write a temporary file, fsync, rename, fsync the
//! directory): anything kept under /var/lib/kelson, and the files Kelson
//! renders, goes through here so a power cut leaves the old or the new file,
//! never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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

/// The points in [`write_atomic`] a power-cut test holds a write at: the
/// temporary file written but not synced, synced but not renamed, renamed
/// but the directory not synced, and the whole write done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePhase {
    Written,
    Synced,
    Renamed,
    Done,
}

impl WritePhase {
    pub const ALL: [WritePhase; 4] = [WritePhase::Written, WritePhase::Synced, WritePhase::Renamed, WritePhase::Done];

    pub fn name(self) -> &'static str {
        match self {
            WritePhase::Written => "written",
            WritePhase::Synced => "synced",
            WritePhase::Renamed => "renamed",
            WritePhase::Done => "done",
        }
    }

    pub fn from_name(name: &str) -> Option<WritePhase> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A test-only observer of every atomic write, called with the target path
/// at each [`WritePhase`]. PID 1 sets it once, and only under a test knob on
/// the kernel command line; a node without the knob pays one load of an
/// unset cell per phase.
pub type WriteHook = Box<dyn Fn(&Path, WritePhase) + Send + Sync>;

static TEST_HOOK: OnceLock<WriteHook> = OnceLock::new();

/// Installs the test hook; `false` if one was already installed (the first
/// stays).
pub fn set_test_hook(hook: WriteHook) -> bool {
    TEST_HOOK.set(hook).is_ok()
}

fn reached(path: &Path, phase: WritePhase) {
    if let Some(hook) = TEST_HOOK.get() {
        hook(path, phase);
    }
}

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
        let create = || OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp);
        // The name is unique among this process's writes, but not across
        // boots: PID 1 is always pid 1 and counts from 0 again, so a power
        // cut after the temporary file reached the disk leaves one with the
        // name a later boot picks. It is stale by then: replace it.
        let mut f = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp)?;
                create()?
            }
            other => other?,
        };
        f.write_all(data)?;
        reached(path, WritePhase::Written);
        f.sync_all()?;
        reached(path, WritePhase::Synced);
        Ok(())
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(AtomicWriteError::Write { path: path.to_owned(), tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(AtomicWriteError::Rename { path: path.to_owned(), tmp, source });
    }
    reached(path, WritePhase::Renamed);
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|source| AtomicWriteError::SyncDir { dir, source })?;
    reached(path, WritePhase::Done);
    Ok(())
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
    fn a_temporary_file_left_by_a_cut_at_an_earlier_boot_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud-init.yaml");
        // The names this process's next writes will pick (the counter is
        // shared with the other tests, which write far fewer files).
        for seq in 0..2000 {
            fs::write(dir.path().join(format!(".cloud-init.yaml.tmp.{}.{seq}", std::process::id())), "stale").unwrap();
        }
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    /// What the test hook saw for files named `hooked-*`: the phase and
    /// whether the target held the new data at that moment.
    static SEEN: std::sync::Mutex<Vec<(WritePhase, bool)>> = std::sync::Mutex::new(Vec::new());

    fn record(path: &Path, phase: WritePhase) {
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("hooked-")) {
            let new = fs::read(path).is_ok_and(|d| d == b"new");
            SEEN.lock().unwrap().push((phase, new));
        }
    }

    #[test]
    fn the_test_hook_sees_each_phase_in_order_and_the_target_changes_only_at_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooked-state");
        fs::write(&path, "old").unwrap();
        assert!(set_test_hook(Box::new(record)));
        write_atomic(&path, b"new", 0o600).unwrap();
        use WritePhase::*;
        assert_eq!(*SEEN.lock().unwrap(), [(Written, false), (Synced, false), (Renamed, true), (Done, true)]);
        assert_eq!(WritePhase::from_name("renamed"), Some(Renamed));
        assert_eq!(WritePhase::from_name("torn"), None);
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
