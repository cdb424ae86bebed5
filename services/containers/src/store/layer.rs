//! Applying one OCI layer (a tar stream) onto a directory: whiteouts delete
//! what lower layers put there, and no entry may land outside the root — not
//! by `..`, not by an absolute path, and not through a symlink an earlier
//! entry planted (the tar crate's own `unpack` follows those).

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// reading the tar stream
    #[error("reading the tar stream")]
    Tar(#[source] io::Error),
    /// entry {entry:?} would land outside the root: {reason}
    #[error("entry {entry:?} would land outside the root: {reason}")]
    Traversal { entry: PathBuf, reason: &'static str },
    /// entry {entry:?}: {action} {path}
    #[error("entry {entry:?}: {action} {path}")]
    Io { entry: PathBuf, action: &'static str, path: PathBuf, source: io::Error },
}

/// Applies the tar stream `layer` onto `root`, which holds the layers below it.
pub fn apply_layer(layer: impl Read, root: &Path) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(layer);
    // Paths this layer wrote: an opaque whiteout hides only what lower layers wrote.
    let mut written: HashSet<PathBuf> = HashSet::new();
    // Directory times are set last: creating entries inside would change them again.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries().map_err(LayerError::Tar)? {
        let mut entry = entry.map_err(LayerError::Tar)?;
        let raw = entry.path().map_err(LayerError::Tar)?.into_owned();
        let relative = clean(&raw)?;
        let Some(name) = relative.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            // The root itself (`./`): its metadata is the unpack directory's own.
            continue;
        };
        let parent_rel = relative.parent().unwrap_or(Path::new("")).to_owned();
        let parent = ensure_parents(root, &parent_rel, &raw)?;
        let io_err = |action, path: &Path| {
            let raw = raw.clone();
            let path = path.to_owned();
            move |source| LayerError::Io { entry: raw, action, path, source }
        };
        if name == OPAQUE_WHITEOUT {
            clear_lower(&parent, &parent_rel, &written).map_err(io_err("clearing opaque directory", &parent))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let victim = parent.join(hidden);
            remove_any(&victim).map_err(io_err("removing whited-out", &victim))?;
            continue;
        }
        let target = parent.join(&name);
        let header = entry.header().clone();
        let mode = header.mode().map_err(LayerError::Tar)? & 0o7777;
        let uid = header.uid().map_err(LayerError::Tar)?;
        let gid = header.gid().map_err(LayerError::Tar)?;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    remove_any(&target).map_err(io_err("replacing", &target))?;
                    fs::create_dir(&target).map_err(io_err("creating directory", &target))?;
                }
                Err(_) => fs::create_dir(&target).map_err(io_err("creating directory", &target))?,
            }
            set_owner_and_mode(&target, uid, gid, Some(mode)).map_err(io_err("setting owner and mode of", &target))?;
            dir_times.push((target.clone(), mtime));
        } else {
            remove_any(&target).map_err(io_err("replacing", &target))?;
            if kind.is_file() || kind == tar::EntryType::Continuous {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io_err("creating file", &target))?;
                io::copy(&mut entry, &mut file).map_err(io_err("writing", &target))?;
                drop(file);
                set_owner_and_mode(&target, uid, gid, Some(mode))
                    .map_err(io_err("setting owner and mode of", &target))?;
                set_mtime(&target, mtime).map_err(io_err("setting the time of", &target))?;
            } else if kind.is_symlink() {
                let link = entry.link_name().map_err(LayerError::Tar)?.unwrap_or_default().into_owned();
                symlink(&link, &target).map_err(io_err("creating symlink", &target))?;
                set_owner_and_mode(&target, uid, gid, None).map_err(io_err("setting owner of", &target))?;
                set_mtime(&target, mtime).map_err(io_err("setting the time of", &target))?;
            } else if kind.is_hard_link() {
                let link = entry.link_name().map_err(LayerError::Tar)?.unwrap_or_default().into_owned();
                let source_rel = clean(&link)?;
                let source_parent = ensure_parents(root, source_rel.parent().unwrap_or(Path::new("")), &raw)?;
                let source = match source_rel.file_name() {
                    Some(file_name) => source_parent.join(file_name),
                    None => return Err(LayerError::Traversal { entry: raw, reason: "hard link to the root" }),
                };
                fs::hard_link(&source, &target).map_err(io_err("hard-linking to", &source))?;
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                let file_type = if kind.is_character_special() {
                    SFlag::S_IFCHR
                } else if kind.is_block_special() {
                    SFlag::S_IFBLK
                } else {
                    SFlag::S_IFIFO
                };
                let major = u64::from(header.device_major().ok().flatten().unwrap_or(0));
                let minor = u64::from(header.device_minor().ok().flatten().unwrap_or(0));
                mknod(&target, file_type, Mode::from_bits_truncate(mode), libc::makedev(major as _, minor as _))
                    .map_err(|e| io::Error::from_raw_os_error(e as i32))
                    .map_err(io_err("creating device node", &target))?;
                set_owner_and_mode(&target, uid, gid, Some(mode))
                    .map_err(io_err("setting owner and mode of", &target))?;
            } else {
                // PAX/GNU metadata entries are consumed by the tar reader; anything else
                // (sparse, unknown) is not something an image layer needs.
                tracing::warn!(entry = %raw.display(), kind = ?kind, "skipping layer entry of unsupported type");
                continue;
            }
        }
        written.insert(relative);
    }
    for (dir, mtime) in dir_times.into_iter().rev() {
        let _ = set_mtime(&dir, mtime);
    }
    Ok(())
}

/// `path` made relative and checked: no `..`, no absolute path.
fn clean(path: &Path) -> Result<PathBuf, LayerError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(LayerError::Traversal { entry: path.to_owned(), reason: "contains '..'" })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(LayerError::Traversal { entry: path.to_owned(), reason: "is an absolute path" })
            }
        }
    }
    Ok(out)
}

/// Creates the directories of `relative` under `root` that are missing and
/// refuses to pass through a symlink, which could point anywhere.
fn ensure_parents(root: &Path, relative: &Path, entry: &Path) -> Result<PathBuf, LayerError> {
    let mut current = root.to_owned();
    for part in relative.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(LayerError::Traversal {
                    entry: entry.to_owned(),
                    reason: "a parent directory is a symlink",
                })
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(LayerError::Io {
                    entry: entry.to_owned(),
                    action: "using as a directory",
                    path: current.clone(),
                    source: io::Error::from_raw_os_error(libc::ENOTDIR),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| LayerError::Io {
                    entry: entry.to_owned(),
                    action: "creating directory",
                    path: current.clone(),
                    source,
                })?;
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755)).map_err(|source| LayerError::Io {
                    entry: entry.to_owned(),
                    action: "setting mode of",
                    path: current.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(LayerError::Io {
                    entry: entry.to_owned(),
                    action: "inspecting",
                    path: current.clone(),
                    source,
                })
            }
        }
    }
    Ok(current)
}

/// Removes the children of `dir` that this layer did not write.
fn clear_lower(dir: &Path, dir_rel: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(dir)? {
        let child = child?;
        if !written.contains(&dir_rel.join(child.file_name())) {
            remove_any(&child.path())?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_owner_and_mode(path: &Path, uid: u64, gid: u64, mode: Option<u32>) -> io::Result<()> {
    let (uid, gid) = (
        u32::try_from(uid).map_err(|_| io::Error::other("uid out of range"))?,
        u32::try_from(gid).map_err(|_| io::Error::other("gid out of range"))?,
    );
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    // chown clears set-uid/set-gid bits, so the mode goes on after it.
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let time = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    utimensat(nix::fcntl::AT_FDCWD, path, &time, &time, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}
