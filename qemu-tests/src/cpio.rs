//! Initramfs layers: uncompressed "newc" cpio archives built in memory.
//!
//! The Linux kernel unpacks every archive it finds in the initrd, one after
//! the other (compressed or not), and an entry of a later archive replaces
//! one of the same name from an earlier archive. Tests use that to put
//! test-only files on top of the image's own initrd without rebuilding it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;

/// Mode given to parent directories that a layer creates on its own.
const IMPLICIT_DIR_MODE: u32 = 0o755;

#[derive(Clone, Debug)]
enum Content {
    Dir,
    Bytes(Vec<u8>),
    HostFile(PathBuf),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    /// Permission bits only (`0o7777`); the file type comes from `content`.
    perm: u32,
    content: Content,
}

/// One initramfs layer: a set of directories, files, symlinks and device
/// nodes, encoded as an uncompressed newc cpio archive by [`Layer::to_bytes`]
/// or [`Layer::write_to`].
///
/// Guest paths are absolute or relative to the root (a leading `/` is
/// ignored); `.` and `..` components are refused. Parent directories are
/// emitted before their children automatically (mode 0755) unless added
/// explicitly. Adding a path twice replaces the earlier entry in place.
///
/// The builder methods never fail: a bad path, or a host file that cannot
/// be read, is reported by `to_bytes`/`write_to`.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    /// Paths that were only created as parents of something else.
    implicit: Vec<bool>,
    problems: Vec<String>,
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory with permission bits `mode` (e.g. `0o755`).
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.add(path, mode, Content::Dir);
        self
    }

    /// A regular file holding `bytes`, with permission bits `mode`.
    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.add(path, mode, Content::Bytes(bytes.into()));
        self
    }

    /// A regular file whose content is read from `host_path` when the
    /// archive is encoded.
    pub fn file_from_host(mut self, path: &str, host_path: impl AsRef<Path>, mode: u32) -> Self {
        self.add(path, mode, Content::HostFile(host_path.as_ref().to_path_buf()));
        self
    }

    /// A symbolic link at `path` pointing at `target` (stored verbatim).
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        if target.is_empty() {
            self.problems.push(format!("symlink {path:?} has an empty target"));
            return self;
        }
        self.add(path, 0o777, Content::Symlink(target.to_owned()));
        self
    }

    /// A character device node (e.g. `/dev/console` is 5:1).
    pub fn char_dev(mut self, path: &str, mode: u32, major: u32, minor: u32) -> Self {
        self.add(path, mode, Content::CharDev { major, minor });
        self
    }

    /// A block device node.
    pub fn block_dev(mut self, path: &str, mode: u32, major: u32, minor: u32) -> Self {
        self.add(path, mode, Content::BlockDev { major, minor });
        self
    }

    /// Adds every entry of `other` after this layer's own, as if they had
    /// been added here (same-path entries of `other` win).
    pub fn merge(mut self, other: Layer) -> Self {
        self.problems.extend(other.problems);
        for (entry, implicit) in other.entries.into_iter().zip(other.implicit) {
            if implicit {
                if let Ok(path) = normalize(&entry.path) {
                    self.ensure_parents_and_self_dir(&path);
                }
            } else {
                self.insert(entry);
            }
        }
        self
    }

    /// Guest paths (without a leading `/`) in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str())
    }

    /// Encodes the layer as a newc cpio archive, ending with the
    /// `TRAILER!!!` entry. The result's length is a multiple of 4.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if !self.problems.is_empty() {
            bail!("invalid initramfs layer: {}", self.problems.join("; "));
        }
        let mut out = Vec::new();
        // Inode numbers only need to be distinct within the archive; the
        // kernel uses them to detect hard links. Start high so they are
        // easy to tell apart from real ones when debugging.
        for (ino, entry) in (0x1001u32..).zip(&self.entries) {
            let (kind, data, nlink, dev): (u32, std::borrow::Cow<'_, [u8]>, u32, (u32, u32)) = match &entry.content {
                Content::Dir => (S_IFDIR, (&[][..]).into(), 2, (0, 0)),
                Content::Bytes(b) => (S_IFREG, b.as_slice().into(), 1, (0, 0)),
                Content::HostFile(host) => {
                    let bytes = std::fs::read(host).with_context(|| {
                        format!("reading host file {} for initramfs entry /{}", host.display(), entry.path)
                    })?;
                    (S_IFREG, bytes.into(), 1, (0, 0))
                }
                Content::Symlink(t) => (S_IFLNK, t.as_bytes().into(), 1, (0, 0)),
                Content::CharDev { major, minor } => (S_IFCHR, (&[][..]).into(), 1, (*major, *minor)),
                Content::BlockDev { major, minor } => (S_IFBLK, (&[][..]).into(), 1, (*major, *minor)),
            };
            let header = Header {
                ino,
                mode: kind | (entry.perm & 0o7777),
                nlink,
                filesize: u32::try_from(data.len())
                    .with_context(|| format!("initramfs entry /{} is larger than 4 GiB", entry.path))?,
                rdev: dev,
            };
            header.write(&mut out, &entry.path);
            out.extend_from_slice(&data);
            pad4(&mut out);
        }
        Header { ino: 0, mode: 0, nlink: 1, filesize: 0, rdev: (0, 0) }.write(&mut out, "TRAILER!!!");
        Ok(out)
    }

    /// Encodes the layer as a tar archive instead (for a disk image's boot,
    /// where PID 1 unpacks it from a disk: see `kelson_init::hooks`), padded
    /// with zeros to whole 512-byte sectors.
    pub fn to_tar(&self) -> Result<Vec<u8>> {
        if !self.problems.is_empty() {
            bail!("invalid test layer: {}", self.problems.join("; "));
        }
        let mut archive = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.perm & 0o7777);
            header.set_mtime(0);
            let data: Vec<u8> = match &entry.content {
                Content::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    Vec::new()
                }
                Content::Bytes(b) => b.clone(),
                Content::HostFile(host) => std::fs::read(host).with_context(|| {
                    format!("reading host file {} for test layer entry /{}", host.display(), entry.path)
                })?,
                Content::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_link_name(target).with_context(|| format!("symlink /{} -> {target}", entry.path))?;
                    Vec::new()
                }
                Content::CharDev { .. } | Content::BlockDev { .. } => {
                    bail!("test layer entry /{}: device nodes cannot go on a layer disk", entry.path)
                }
            };
            header.set_size(data.len() as u64);
            header.set_cksum();
            archive
                .append_data(&mut header, &entry.path, data.as_slice())
                .with_context(|| format!("adding /{} to the test layer archive", entry.path))?;
        }
        let mut bytes = archive.into_inner().context("finishing the test layer archive")?;
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        Ok(bytes)
    }

    /// Writes the encoded archive to `path` (see [`Layer::to_bytes`]).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes().with_context(|| format!("encoding initramfs layer for {}", path.display()))?;
        std::fs::write(path, bytes).with_context(|| format!("writing initramfs layer to {}", path.display()))
    }

    fn add(&mut self, path: &str, perm: u32, content: Content) {
        let path = match normalize(path) {
            Ok(p) => p,
            Err(e) => {
                self.problems.push(e);
                return;
            }
        };
        if perm & !0o7777 != 0 {
            self.problems
                .push(format!("mode {perm:#o} for /{path} has bits beyond 0o7777 (give permission bits only)"));
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.ensure_parents_and_self_dir(parent);
        }
        self.insert(Entry { path, perm, content });
    }

    /// Makes sure `dir` and all its ancestors exist as directories,
    /// creating missing ones as implicit 0755 directories.
    fn ensure_parents_and_self_dir(&mut self, dir: &str) {
        let mut prefix_end = 0;
        let components: Vec<&str> = dir.split('/').collect();
        for (i, comp) in components.iter().enumerate() {
            prefix_end += comp.len() + usize::from(i > 0);
            let prefix = &dir[..prefix_end];
            if let Some(&i) = self.index.get(prefix) {
                // A symlink may stand for a directory (e.g. /bin -> usr/bin):
                // the kernel follows it when it creates the child.
                if !matches!(self.entries[i].content, Content::Dir | Content::Symlink(_)) {
                    self.problems.push(format!("/{prefix} is not a directory but has entries below it"));
                }
            } else {
                self.index.insert(prefix.to_owned(), self.entries.len());
                self.entries.push(Entry { path: prefix.to_owned(), perm: IMPLICIT_DIR_MODE, content: Content::Dir });
                self.implicit.push(true);
            }
        }
    }

    fn insert(&mut self, entry: Entry) {
        match self.index.get(&entry.path) {
            Some(&i) => {
                let was_dir = matches!(self.entries[i].content, Content::Dir);
                let is_dir = matches!(entry.content, Content::Dir);
                if was_dir && !is_dir && self.has_children(&entry.path) {
                    self.problems
                        .push(format!("/{} is a directory with entries below it and cannot become a file", entry.path));
                    return;
                }
                self.entries[i] = entry;
                self.implicit[i] = false;
            }
            None => {
                self.index.insert(entry.path.clone(), self.entries.len());
                self.entries.push(entry);
                self.implicit.push(false);
            }
        }
    }

    fn has_children(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.entries.iter().any(|e| e.path.starts_with(&prefix))
    }
}

/// Strips leading slashes and checks the components of a guest path.
fn normalize(path: &str) -> std::result::Result<String, String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!("initramfs path {path:?} names the root itself"));
    }
    if trimmed.contains('\0') {
        return Err(format!("initramfs path {path:?} contains a NUL byte"));
    }
    for comp in trimmed.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(format!("initramfs path {path:?} has an empty, '.' or '..' component"));
        }
    }
    Ok(trimmed.to_owned())
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
}

impl Header {
    /// Appends the 110-byte header, the NUL-terminated name and the padding
    /// that brings the data to a 4-byte boundary.
    fn write(&self, out: &mut Vec<u8>, name: &str) {
        let namesize = name.len() + 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        let fields: [u32; 13] = [
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            0, // mtime: fixed, so layers are reproducible
            self.filesize,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            // Names are far below 4 GiB: the path came from a &str that
            // passed `normalize`, and the trailer name is fixed.
            namesize as u32,
            0, // check: only used by the "070702" (crc) variant
        ];
        for f in fields {
            // Writing into a String cannot fail.
            let _ = write!(h, "{f:08x}");
        }
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
    }
}

fn pad4(out: &mut Vec<u8>) {
    let pad = (4 - out.len() % 4) % 4;
    out.resize(out.len() + pad, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    fn sample() -> Layer {
        Layer::new()
            .file("/etc/deep/nested/hello.txt", "hello\nworld\n", 0o644)
            .dir("/etc", 0o750)
            .file("/usr/bin/tool", vec![0u8, 1, 2, 3, 4], 0o755)
            .file("/empty", "", 0o600)
            .symlink("/bin", "usr/bin")
            .dir("/var/lib/state", 0o700)
    }

    #[test]
    fn parents_come_before_children() {
        let layer = sample();
        let paths: Vec<&str> = layer.paths().collect();
        for (i, p) in paths.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                let pi = paths.iter().position(|q| *q == parent).unwrap();
                assert!(pi < i, "{parent} after {p} in {paths:?}");
            }
        }
        // Explicit mode for an implicitly created parent wins, in place.
        assert_eq!(paths[0], "etc");
    }

    #[test]
    fn a_layer_becomes_a_sector_padded_tar_with_its_modes_and_links() {
        let layer = Layer::new().file("/kelson-test/hooks/10-x", "run", 0o750).symlink("/kelson-test/sh", "busybox");
        let bytes = layer.to_tar().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let link = entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            seen.push((entry.path().unwrap().to_string_lossy().into_owned(), header.mode().unwrap(), link));
        }
        assert_eq!(
            seen,
            vec![
                ("kelson-test".to_owned(), 0o755, None),
                ("kelson-test/hooks".to_owned(), 0o755, None),
                ("kelson-test/hooks/10-x".to_owned(), 0o750, None),
                ("kelson-test/sh".to_owned(), 0o777, Some("busybox".to_owned())),
            ]
        );
        assert!(Layer::new().char_dev("/dev/x", 0o600, 1, 3).to_tar().unwrap_err().to_string().contains("device"));
    }

    #[test]
    fn header_layout() {
        let bytes = Layer::new().file("a", "xyz", 0o644).to_bytes().unwrap();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let mode = std::str::from_utf8(&bytes[14..22]).unwrap();
        assert_eq!(u32::from_str_radix(mode, 16).unwrap(), 0o100_644);
        let filesize = std::str::from_utf8(&bytes[54..62]).unwrap();
        assert_eq!(filesize, "00000003");
        let namesize = std::str::from_utf8(&bytes[94..102]).unwrap();
        assert_eq!(namesize, "00000002");
        // 110 header + "a\0" = 112, already aligned; then data + 1 pad.
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..115], b"xyz");
        assert_eq!(bytes[115], 0);
        assert_eq!(&bytes[116..122], b"070701");
        let tail = b"TRAILER!!!\0";
        let pos = bytes.windows(tail.len()).position(|w| w == tail).unwrap();
        assert!(pos > 116);
    }

    #[test]
    fn bad_paths_are_reported_at_encode_time() {
        let layer = Layer::new().file("/a/../b", "x", 0o644).dir("/", 0o755);
        let err = layer.to_bytes().unwrap_err().to_string();
        assert!(err.contains("/a/../b"), "{err}");
        assert!(err.contains("root"), "{err}");

        let layer = Layer::new().file("/x", "", 0o100_644);
        assert!(layer.to_bytes().is_err());

        let layer = Layer::new().file("/d/f", "", 0o644).file("/d", "", 0o644);
        assert!(layer.to_bytes().is_err());

        let layer = Layer::new().file_from_host("/f", "/nonexistent/kelson-test", 0o644);
        let err = format!("{:#}", layer.to_bytes().unwrap_err());
        assert!(err.contains("/nonexistent/kelson-test"), "{err}");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let layer = Layer::new().file("/f", "one", 0o644).file("/g", "g", 0o644).file("/f", "two", 0o600);
        let paths: Vec<&str> = layer.paths().collect();
        assert_eq!(paths, ["f", "g"]);
        let merged = layer.merge(Layer::new().file("/g", "G", 0o644).dir("/f2", 0o700));
        assert_eq!(merged.paths().collect::<Vec<_>>(), ["f", "g", "f2"]);
    }

    /// Round trip through the host's GNU cpio: list, then extract and
    /// compare contents, modes and link targets.
    #[test]
    fn host_cpio_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let host_src = tmp.path().join("src.bin");
        let big: Vec<u8> = (0..10_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&host_src, &big).unwrap();
        let layer = sample().file_from_host("/opt/big.bin", &host_src, 0o640);
        let archive = tmp.path().join("layer.cpio");
        layer.write_to(&archive).unwrap();

        let list = Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&archive).output().unwrap();
        assert!(list.status.success(), "{list:?}");
        let listed: Vec<String> = String::from_utf8(list.stdout).unwrap().lines().map(str::to_owned).collect();
        let expected: Vec<String> = layer.paths().map(str::to_owned).collect();
        assert_eq!(listed, expected);

        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let extract = Command::new("cpio")
            .args(["-i", "-d", "-m", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .current_dir(&out)
            .output()
            .unwrap();
        assert!(extract.status.success(), "{extract:?}");

        let read = |p: &str| std::fs::read(out.join(p)).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(read("etc/deep/nested/hello.txt"), b"hello\nworld\n");
        assert_eq!(read("usr/bin/tool"), [0, 1, 2, 3, 4]);
        assert_eq!(read("empty"), b"");
        assert_eq!(read("opt/big.bin"), big);
        assert_eq!(mode("etc"), 0o750);
        assert_eq!(mode("etc/deep"), 0o755);
        assert_eq!(mode("usr/bin/tool"), 0o755);
        assert_eq!(mode("empty"), 0o600);
        assert_eq!(mode("opt/big.bin"), 0o640);
        assert_eq!(mode("var/lib/state"), 0o700);
        assert_eq!(std::fs::read_link(out.join("bin")).unwrap(), Path::new("usr/bin"));
        assert!(std::fs::metadata(out.join("var/lib/state")).unwrap().is_dir());
        assert_eq!(std::fs::metadata(out.join("empty")).unwrap().mtime(), 0);
    }

    #[test]
    fn device_nodes_list_with_their_type() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("dev.cpio");
        Layer::new().char_dev("/dev/console", 0o600, 5, 1).write_to(&archive).unwrap();
        let list = Command::new("cpio").args(["-t", "-v", "--quiet", "-F"]).arg(&archive).output().unwrap();
        let text = String::from_utf8(list.stdout).unwrap();
        let line = text.lines().find(|l| l.ends_with("dev/console")).unwrap();
        assert!(line.starts_with("crw-------"), "{line}");
        assert!(line.contains("5,"), "{line}");
    }
}
