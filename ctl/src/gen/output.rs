//! Writing a generated folder: refuses to mix a new generation into a
//! non-empty directory unless forced, and sets each file's mode exactly
//! (keys 0600, whatever the umask).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const SECRET_MODE: u32 = 0o600;
pub const PUBLIC_MODE: u32 = 0o644;

/// What `gen` owns inside an output directory; `--force` removes exactly
/// these, so files an operator keeps beside them survive and a smaller
/// new cluster leaves no stale nodes behind.
pub const GENERATED_ENTRIES: [&str; 7] =
    ["cluster.yaml", "admin.kubeconfig", "kelsonconfig", "kelsonconfig-read-only", "pki", "nodes", "join"];

/// One file of the output, its path relative to the output directory.
#[derive(Clone)]
pub struct OutputFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub secret: bool,
}

impl std::fmt::Debug for OutputFile {
    // Contents may be keys: show only their size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFile")
            .field("path", &self.path)
            .field("bytes", &self.contents.len())
            .field("secret", &self.secret)
            .finish()
    }
}

impl OutputFile {
    pub fn public(path: String, contents: impl Into<Vec<u8>>) -> Self {
        OutputFile { path, contents: contents.into(), secret: false }
    }
    pub fn secret(path: String, contents: impl Into<Vec<u8>>) -> Self {
        OutputFile { path, contents: contents.into(), secret: true }
    }
    pub fn mode(&self) -> u32 {
        if self.secret {
            SECRET_MODE
        } else {
            PUBLIC_MODE
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output directory {0} is not empty (pass --force to replace a previous generation in it)")]
    NotEmpty(PathBuf),
    #[error("output path {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{} exists: another `kelsonctl gen node` is changing this folder, or one was interrupted (then remove it)",
        .0.display()
    )]
    Busy(PathBuf),
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    #[error("moving {} into place{}", path.display(), undo_note(left_over))]
    Commit {
        path: PathBuf,
        /// Entries an undo could not restore.
        left_over: Vec<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn undo_note(left_over: &[PathBuf]) -> String {
    if left_over.is_empty() {
        " (the moves before it were undone)".to_owned()
    } else {
        let paths: Vec<String> = left_over.iter().map(|p| p.display().to_string()).collect();
        format!(" (undoing the moves before it failed for {}: check them by hand)", paths.join(", "))
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_owned();
    move |source| OutputError::Io { action, path, source }
}

/// Makes `dir` ready for a new generation: created if missing; if it has
/// anything in it, refused, or with `force` cleared of [`GENERATED_ENTRIES`].
pub fn prepare_dir(dir: &Path, force: bool) -> Result<(), OutputError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fs::create_dir_all(dir).map_err(io_error("creating", dir));
        }
        Err(e) => return Err(io_error("inspecting", dir)(e)),
        Ok(meta) if !meta.is_dir() => return Err(OutputError::NotADirectory(dir.to_owned())),
        Ok(_) => {}
    }
    let mut entries = fs::read_dir(dir).map_err(io_error("listing", dir))?;
    if entries.next().is_none() {
        return Ok(());
    }
    if !force {
        return Err(OutputError::NotEmpty(dir.to_owned()));
    }
    for entry in GENERATED_ENTRIES {
        let path = dir.join(entry);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("inspecting", &path)(e)),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path).map_err(io_error("removing", &path))?,
            Ok(_) => fs::remove_file(&path).map_err(io_error("removing", &path))?,
        }
    }
    Ok(())
}

/// Writes each file under `dir`, creating parent directories.
pub fn write_files(dir: &Path, files: &[OutputFile]) -> Result<(), OutputError> {
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
        }
        // Created with the final mode so a key is never readable by others,
        // not even between open and chmod.
        let mut handle = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode())
            .open(&path)
            .map_err(io_error("creating", &path))?;
        handle.write_all(&file.contents).map_err(io_error("writing", &path))?;
        // The umask may have narrowed a public file's mode.
        handle
            .set_permissions(fs::Permissions::from_mode(file.mode()))
            .map_err(io_error("setting the mode of", &path))?;
        handle.sync_all().map_err(io_error("syncing", &path))?;
    }
    Ok(())
}

/// The directory a change to an existing folder is written into first.
/// Creating it claims the folder: a second change at the same time is refused.
pub const STAGING_DIR: &str = ".kelsonctl-staging";

/// A change to an existing generated folder, made all or nothing: the
/// files are written into [`STAGING_DIR`] first, then each entry is moved
/// into place with rename(2), and a failed move undoes the ones before it.
/// The staging directory is removed when this is dropped.
#[derive(Debug)]
pub struct Staging {
    root: PathBuf,
    path: PathBuf,
}

/// How an entry was moved into place, to undo it.
enum Moved {
    Created(PathBuf),
    /// The previous file, kept in the staging directory.
    Replaced {
        target: PathBuf,
        previous: PathBuf,
    },
}

impl Staging {
    /// Claims `dir` (which must exist) for one change.
    pub fn begin(dir: &Path) -> Result<Self, OutputError> {
        let path = dir.join(STAGING_DIR);
        match fs::create_dir(&path) {
            Ok(()) => Ok(Staging { root: dir.to_owned(), path }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(OutputError::Busy(path)),
            Err(e) => Err(io_error("creating", &path)(e)),
        }
    }

    /// Writes `files` (paths relative to the folder) into the staging
    /// directory, then moves each of `entries` into place, in order: every
    /// file must lie under one of them. An entry that does not exist yet
    /// (a new node's directory) is created; an existing one must be a file,
    /// and is replaced whole. Order the entries so that the folder is
    /// consistent at each step.
    pub fn commit(self, files: &[OutputFile], entries: &[&str]) -> Result<(), OutputError> {
        write_files(&self.path, files)?;
        let previous_dir = self.path.join(".previous");
        fs::create_dir(&previous_dir).map_err(io_error("creating", &previous_dir))?;
        let mut moved = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let staged = self.path.join(entry);
            let target = self.root.join(entry);
            match self.move_into_place(&staged, &target, &previous_dir.join(index.to_string())) {
                Ok(done) => moved.push(done),
                Err(source) => {
                    let left_over = undo(moved);
                    return Err(OutputError::Commit { path: target, left_over, source });
                }
            }
        }
        Ok(())
    }

    fn move_into_place(&self, staged: &Path, target: &Path, previous: &Path) -> std::io::Result<Moved> {
        match fs::symlink_metadata(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::rename(staged, target)?;
                Ok(Moved::Created(target.to_owned()))
            }
            Err(e) => Err(e),
            Ok(meta) if meta.is_dir() => {
                Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a directory is in the way"))
            }
            Ok(_) => {
                // A second name for the old file, so the undo can put it back.
                fs::hard_link(target, previous)?;
                fs::rename(staged, target)?;
                Ok(Moved::Replaced { target: target.to_owned(), previous: previous.to_owned() })
            }
        }
    }
}

/// Undoes `moved`, last first; returns what could not be undone.
fn undo(moved: Vec<Moved>) -> Vec<PathBuf> {
    let mut left_over = Vec::new();
    for step in moved.into_iter().rev() {
        let (target, result) = match step {
            Moved::Created(target) => {
                let result = if target.is_dir() { fs::remove_dir_all(&target) } else { fs::remove_file(&target) };
                (target, result)
            }
            Moved::Replaced { target, previous } => {
                let result = fs::rename(&previous, &target);
                (target, result)
            }
        };
        if result.is_err() {
            left_over.push(target);
        }
    }
    left_over
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: what is left here was never moved into place, and
        // the next change's `begin` names the directory if it stays.
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_created_and_an_empty_one_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        prepare_dir(&dir, false).unwrap();
        assert!(dir.is_dir());
        prepare_dir(&dir, false).unwrap();
    }

    #[test]
    fn a_non_empty_directory_is_refused_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let err = prepare_dir(tmp.path(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "output directory {} is not empty (pass --force to replace a previous generation in it)",
                tmp.path().display()
            )
        );
    }

    #[test]
    fn force_removes_only_what_gen_wrote() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        fs::write(tmp.path().join("cluster.yaml"), "old").unwrap();
        fs::create_dir_all(tmp.path().join("nodes/old-worker-9")).unwrap();
        prepare_dir(tmp.path(), true).unwrap();
        assert!(tmp.path().join("notes.txt").exists());
        assert!(!tmp.path().join("cluster.yaml").exists());
        assert!(!tmp.path().join("nodes").exists());
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(matches!(prepare_dir(&file, true), Err(OutputError::NotADirectory(_))));
    }

    #[test]
    fn files_get_their_exact_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let files = [OutputFile::secret("pki/x.key".into(), "k"), OutputFile::public("pki/x.crt".into(), "c")];
        write_files(tmp.path(), &files).unwrap();
        let mode = |p: &str| fs::metadata(tmp.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("pki/x.key"), 0o600);
        assert_eq!(mode("pki/x.crt"), 0o644);
        assert_eq!(fs::read_to_string(tmp.path().join("pki/x.crt")).unwrap(), "c");
    }

    fn staged_change() -> Vec<OutputFile> {
        vec![
            OutputFile::secret("nodes/new/seed.img".into(), "seed"),
            OutputFile::public("cluster.yaml".into(), "new summary"),
        ]
    }

    #[test]
    fn a_staged_change_creates_new_entries_and_replaces_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("nodes")).unwrap();
        fs::write(tmp.path().join("cluster.yaml"), "old summary").unwrap();
        let staging = Staging::begin(tmp.path()).unwrap();
        staging.commit(&staged_change(), &["nodes/new", "cluster.yaml"]).unwrap();
        assert_eq!(fs::read_to_string(tmp.path().join("cluster.yaml")).unwrap(), "new summary");
        assert_eq!(fs::read_to_string(tmp.path().join("nodes/new/seed.img")).unwrap(), "seed");
        assert_eq!(fs::metadata(tmp.path().join("nodes/new/seed.img")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!tmp.path().join(STAGING_DIR).exists(), "the staging directory is removed");
    }

    #[test]
    fn a_failed_move_undoes_the_ones_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        // No nodes/ directory: moving nodes/new into place fails (ENOENT)
        // after cluster.yaml has been replaced.
        fs::write(tmp.path().join("cluster.yaml"), "old summary").unwrap();
        let staging = Staging::begin(tmp.path()).unwrap();
        let err = staging.commit(&staged_change(), &["cluster.yaml", "nodes/new"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("moving {} into place (the moves before it were undone)", tmp.path().join("nodes/new").display())
        );
        assert_eq!(fs::read_to_string(tmp.path().join("cluster.yaml")).unwrap(), "old summary");
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["cluster.yaml"], "nothing else is left behind");
    }

    #[test]
    fn a_second_change_at_once_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Staging::begin(tmp.path()).unwrap();
        let err = Staging::begin(tmp.path()).unwrap_err();
        assert!(matches!(&err, OutputError::Busy(path) if path.ends_with(STAGING_DIR)), "{err}");
        drop(first);
        Staging::begin(tmp.path()).unwrap();
    }
}
