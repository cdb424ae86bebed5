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
pub const GENERATED_ENTRIES: [&str; 6] =
    ["cluster.yaml", "admin.kubeconfig", "kelsonconfig", "kelsonconfig-read-only", "pki", "nodes"];

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
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
}
