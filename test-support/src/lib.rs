//! What Kelson's tests share, so no test borrows another crate's files:
//! OCI layouts and tar layers built in the test, a busybox root filesystem,
//! a minimal container config, a cgroup v2 hierarchy to run containers
//! under, and [`report_skip`], the one way a test says it skipped a check.
//! A dev-dependency only: a failed set-up here panics, failing the test.
#![allow(clippy::unwrap_used)]

use kelson_containers::config::{ContainerConfig, Namespaces, Resources, Security, User};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

mod skip;
pub use skip::{report_skip, test_target, SKIP_LOG};

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// One entry of a test layer.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    /// path, contents, mode, uid, gid
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar stream of `entries`, names written verbatim (so tests can write the
/// `..` and absolute names a hostile layer would hold, which the tar crate's
/// own path setter refuses).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, data, kind, mode, link, uid, gid): (&str, &[u8], tar::EntryType, u32, Option<&str>, u64, u64) =
            match entry {
                Entry::Dir(name, mode) => (name, b"", tar::EntryType::Directory, *mode, None, 0, 0),
                Entry::File(name, data, mode) => (name, data, tar::EntryType::Regular, *mode, None, 0, 0),
                Entry::Owned(name, data, mode, uid, gid) => {
                    (name, data, tar::EntryType::Regular, *mode, None, *uid, *gid)
                }
                Entry::Symlink(name, target) => (name, b"", tar::EntryType::Symlink, 0o777, Some(target), 0, 0),
                Entry::Hardlink(name, target) => (name, b"", tar::EntryType::Link, 0o644, Some(target), 0, 0),
            };
        let raw = &mut header.as_old_mut().name;
        raw.fill(0);
        raw[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            let raw = &mut header.as_old_mut().linkname;
            raw.fill(0);
            raw[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(d.trim_start_matches("sha256:")), bytes).unwrap();
    d
}

/// Writes an OCI layout at `layout` with one image of `layers` (media type,
/// blob) and `config` (the image config's `config` object), its index entry
/// annotated with `annotations`. Returns the manifest digest.
pub fn write_layout(
    layout: &Path,
    annotations: serde_json::Value,
    layers: &[(&str, Vec<u8>)],
    config: serde_json::Value,
) -> String {
    fs::create_dir_all(layout).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layer_descriptors = Vec::new();
    for (media_type, blob) in layers {
        let d = write_blob(layout, blob);
        layer_descriptors.push(json!({ "mediaType": media_type, "digest": d, "size": blob.len() }));
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [] },
    })
    .to_string();
    let config_digest = write_blob(layout, config.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": layer_descriptors,
    })
    .to_string();
    let manifest_digest = write_blob(layout, manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": annotations,
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    manifest_digest
}

/// A static busybox: `KELSON_TEST_BUSYBOX` names one (the QEMU guest's, where
/// qemu-tests' guest-tests runs these tests), else the host's /bin/busybox.
/// Whether containers here must start without pivot_root: when `/` is the
/// initramfs (rootfs), as in a node guest, pivot_root fails with EINVAL,
/// which is why the node's own shim runs with --no-pivot.
pub fn root_is_initramfs() -> bool {
    // The last mount on "/" is the one processes see.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = mountinfo.lines().rfind(|l| l.split_whitespace().nth(4) == Some("/")).unwrap();
    root.split_once(" - ").and_then(|(_, rest)| rest.split_whitespace().next()) == Some("rootfs")
}

pub fn busybox() -> Vec<u8> {
    let path = std::env::var_os("KELSON_TEST_BUSYBOX").map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    fs::read(&path).unwrap_or_else(|e| {
        panic!("reading {}: {e} (busybox-static must be installed: apt-get install busybox-static)", path.display())
    })
}

/// A root filesystem directory with a static busybox as /bin/sh and friends.
pub fn busybox_rootfs(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/busybox"), busybox()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for applet in ["sh", "echo", "sleep", "cat", "id", "dd", "head", "tail", "tr", "mkdir"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for dir in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    // As in real images. runc gives a tmpfs the mode of the directory it covers.
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

/// A minimal container config running `args` in `rootfs`.
pub fn container(id: &str, rootfs: &Path, args: &[&str], cgroups_path: PathBuf) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        rootfs: rootfs.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User::default(),
        security: Security::default(),
        mounts: vec![],
        cgroups_path,
        resources: Resources::default(),
        namespaces: Namespaces::default(),
        hostname: Some(id.into()),
    }
}

/// A cgroup v2 hierarchy the tests can use.
pub struct Cgroup2 {
    /// Where the hierarchy is mounted in the test's own mount namespace.
    pub mount: PathBuf,
    /// Whether /sys/fs/cgroup is that mount. Where it is not (a hybrid
    /// v1/v2 host, cgroup2 at /sys/fs/cgroup/unified), runtimes are started
    /// in a private mount namespace with cgroup2 mounted at /sys/fs/cgroup,
    /// because libcontainer and runc only look there.
    pub native: bool,
    /// Controllers available at the root (`memory`, `cpu`, …).
    pub controllers: Vec<String>,
    /// A directory of this test run's own, relative to the root: `/kelson-test-<pid>-<name>`.
    pub parent: PathBuf,
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

impl Cgroup2 {
    pub fn find(name: &str) -> Cgroup2 {
        assert!(nix::unistd::Uid::effective().is_root(), "these tests create containers and must run as root");
        let (mount, native) = if is_cgroup2(Path::new("/sys/fs/cgroup")) {
            (PathBuf::from("/sys/fs/cgroup"), true)
        } else if is_cgroup2(Path::new("/sys/fs/cgroup/unified")) {
            (PathBuf::from("/sys/fs/cgroup/unified"), false)
        } else {
            panic!("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified");
        };
        let controllers = fs::read_to_string(mount.join("cgroup.controllers"))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let parent = PathBuf::from(format!("/kelson-test-{}-{name}", std::process::id()));
        Cgroup2 { mount, native, controllers, parent }
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The cgroupsPath for container `id`.
    pub fn path_for(&self, id: &str) -> PathBuf {
        self.parent.join(id)
    }

    /// Where a cgroupsPath is in this process's view.
    pub fn host_path(&self, cgroups_path: &Path) -> PathBuf {
        self.mount.join(cgroups_path.strip_prefix("/").unwrap())
    }

    /// `program args…` wrapped so that it sees cgroup2 at /sys/fs/cgroup.
    pub fn wrap(&self, program: &Path, args: &[OsString]) -> (PathBuf, Vec<OsString>) {
        if self.native {
            return (program.to_owned(), args.to_vec());
        }
        let mut wrapped: Vec<OsString> = [
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        wrapped.push(program.into());
        wrapped.extend(args.iter().cloned());
        (PathBuf::from("unshare"), wrapped)
    }

    /// Says why a check is skipped, or fails when `KELSON_REQUIRE_CGROUP2_MEMORY=1`.
    pub fn skip(&self, what: &str) {
        skip_for_want_of_controllers(&format!(
            "{what}: the cgroup2 hierarchy at {} has controllers {:?}, without memory (a cgroup v1 host: memory is bound to v1)",
            self.mount.display(),
            self.controllers
        ));
    }
}

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        let parent = self.host_path(&self.parent.clone());
        // A failed test may leave containers running: end them before removing their cgroups.
        if fs::write(parent.join("cgroup.kill"), "1").is_ok() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while fs::read_to_string(parent.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        if let Ok(children) = fs::read_dir(&parent) {
            for child in children.flatten() {
                if child.path().is_dir() {
                    let _ = fs::remove_dir(child.path());
                }
            }
        }
        let _ = fs::remove_dir(&parent);
    }
}

/// Reports a skip for want of cgroup2 controllers, or fails when
/// `KELSON_REQUIRE_CGROUP2_MEMORY=1` (as in the node guest, which has them).
pub fn skip_for_want_of_controllers(message: &str) {
    assert!(std::env::var("KELSON_REQUIRE_CGROUP2_MEMORY").as_deref() != Ok("1"), "{message}");
    report_skip(message);
}
