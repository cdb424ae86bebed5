//! The OCI layouts the node image ships are ones this store reads. The image
//! build makes them with `image/oci-images.py` (run by mkosi.finalize on the
//! Debian root); here the same script runs on a small Debian-shaped root made
//! of this machine's programs, and every reference it promises resolves,
//! unpacks, and gives a root whose programs run (in a chroot).
//!
//! `KELSON_NODE_IMAGES=DIR` also checks the layouts of a real build (DIR is
//! the image's /usr/lib/kelson/images, e.g. from `unsquashfs`).
#![allow(clippy::unwrap_used)]

use kelson_containers::store::{ImageStore, ResolvedImage};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ETCD_REFS: [&str; 1] = ["registry.k8s.io/etcd:3.5.16-0"];
/// As pods write them: short names normalise to the full ones the script gives.
const BUSYBOX_REFS: [&str; 6] = [
    "docker.io/library/busybox:latest",
    "busybox",
    "busybox:latest",
    "busybox:test",
    "docker.io/library/busybox:test",
    "kelson/busybox:test",
];
const PAUSE_REFS: [&str; 1] = ["registry.k8s.io/pause:3.9"];
/// The control-plane image answers to each program's upstream name.
const CONTROL_PLANE_PROGRAMS: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];
/// The version the fake root's stand-in Kubernetes binary says it is.
const FAKE_KUBERNETES_VERSION: &str = "v1.36.3";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/oci-images.py")
}

fn run_script(root: &Path, out: &Path) -> Output {
    Command::new("python3")
        .arg(script())
        .args([root, out])
        .output()
        .expect("python3 must be installed to run image/oci-images.py (apt-get install python3)")
}

fn copy_host(from: &str, root: &Path, to: &str) {
    let target = root.join(to);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(from, &target).unwrap_or_else(|e| panic!("copying the host's {from}: {e}"));
}

/// A root shaped like the image's Debian trixie one (merged /usr, the loader
/// reached through `/lib64` and an absolute symlink, which must resolve in
/// this root and not on the host), with the host's dynamically linked
/// `true` and `echo` standing in for etcd and etcdctl, its static busybox
/// for busybox-static's and its catatonit (`cargo xtask deps` installs
/// it) for catatonit's. The Kubernetes multi-call binary is a script that
/// only says its version: the script asks it, and the layout is checked for
/// where it put it.
fn debian_root(root: &Path, with_busybox: bool) {
    copy_host("/usr/bin/true", root, "usr/bin/etcd");
    copy_host("/usr/bin/echo", root, "usr/bin/etcdctl");
    copy_host("/lib/x86_64-linux-gnu/libc.so.6", root, "usr/lib/x86_64-linux-gnu/libc.so.6");
    copy_host("/lib64/ld-linux-x86-64.so.2", root, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    fs::create_dir_all(root.join("usr/lib64")).unwrap();
    symlink("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root.join("usr/lib64/ld-linux-x86-64.so.2")).unwrap();
    for link in ["bin", "lib", "lib64"] {
        symlink(format!("usr/{link}"), root.join(link)).unwrap();
    }
    let info = root.join("var/lib/dpkg/info");
    fs::create_dir_all(&info).unwrap();
    let mut status = String::from(
        "Package: etcd-server\nStatus: install ok installed\nVersion: 3.5.16-4\n\n\
         Package: etcd-client\nStatus: install ok installed\nVersion: 3.5.16-4\n\n",
    );
    fs::write(info.join("etcd-server.list"), "/.\n/usr\n/usr/bin\n/usr/bin/etcd\n").unwrap();
    fs::write(info.join("etcd-client.list"), "/usr/bin/etcdctl\n").unwrap();
    if with_busybox {
        copy_host("/bin/busybox", root, "usr/bin/busybox");
        status.push_str("Package: busybox-static\nStatus: install ok installed\nVersion: 1:1.37.0-6+b9\n");
        fs::write(info.join("busybox-static.list"), "/usr/bin/busybox\n").unwrap();
    }
    copy_host("/usr/bin/catatonit", root, "usr/bin/catatonit");
    status.push_str("\nPackage: catatonit\nStatus: install ok installed\nVersion: 0.2.1-2\n");
    fs::write(info.join("catatonit.list"), "/usr/bin/catatonit\n").unwrap();
    let kubernetes = root.join("usr/bin/kubernetes");
    fs::write(&kubernetes, format!("#!/bin/sh\necho Kubernetes {FAKE_KUBERNETES_VERSION}\n")).unwrap();
    fs::set_permissions(&kubernetes, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
}

fn chroot(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot").arg(root).args(args).output().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn resolve_all(store: &ImageStore, refs: &[&str]) -> ResolvedImage {
    let first = store.resolve(refs[0]).unwrap_or_else(|e| panic!("{}: {e}", refs[0]));
    for reference in &refs[1..] {
        let image = store.resolve(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(image.manifest_digest, first.manifest_digest, "{reference} names the same image as {}", refs[0]);
    }
    first
}

/// Kills its child (by handle) when dropped, so a failed assertion leaves
/// no process behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to `pid` once it handles the signal (in SigCgt: a
/// handler; in SigBlk: blocked to be read from a signalfd, as catatonit
/// does), so the signal cannot arrive before the program is ready for it.
fn terminate_when_handled(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mask = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
                .unwrap_or(0)
        };
        if (mask("SigCgt:") | mask("SigBlk:")) & (1 << (libc::SIGTERM - 1)) != 0 {
            break;
        }
        assert!(Instant::now() < deadline, "pause never handled SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill only sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
}

/// Resolves every fixed reference in `layouts`, unpacks each image and runs
/// its programs in a chroot: what a node does with the image store.
fn check_layouts(layouts: &Path, unpacked: &Path) {
    let store = ImageStore::new(layouts, unpacked);

    let etcd = resolve_all(&store, &ETCD_REFS);
    assert_eq!(etcd.layout, layouts.join("etcd"));
    assert_eq!(etcd.defaults().entrypoint, ["/usr/bin/etcd"]);
    let root = store.unpack(&etcd).unwrap();
    assert_eq!((mode(&root.join("tmp")), mode(&root.join("var/lib/etcd"))), (0o1777, 0o700));
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("root:x:0:0:") && passwd.contains("\nnobody:x:65534:65534:"), "{passwd}");
    assert!(fs::read_to_string(root.join("etc/group")).unwrap().contains("nogroup:x:65534:"));
    assert_eq!(fs::read_link(root.join("usr/local/bin/etcd")).unwrap(), Path::new("../../bin/etcd"));
    // The loader and libraries came along: the binaries run in the image's root alone.
    let version = chroot(&root, &["/usr/bin/etcd", "--version"]);
    assert!(version.status.success(), "etcd in its image: {version:?}");
    // etcdctl only where the image build installed etcd-client (the fake root does).
    if root.join("usr/bin/etcdctl").exists() {
        let version = chroot(&root, &["/usr/local/bin/etcdctl", "version"]);
        assert!(version.status.success(), "etcdctl in the etcd image: {version:?}");
    }

    let busybox = resolve_all(&store, &BUSYBOX_REFS);
    assert_eq!(busybox.defaults().cmd, ["sh"]);
    let root = store.unpack(&busybox).unwrap();
    assert_eq!(mode(&root.join("tmp")), 0o1777);
    for applet in ["sh", "sleep", "httpd", "wget", "cat", "echo", "ls", "dd", "head", "nc", "mkdir", "kill"] {
        assert_eq!(fs::read_link(root.join("bin").join(applet)).unwrap(), Path::new("busybox"), "{applet}");
    }
    let shell = chroot(&root, &["/bin/sh", "-c", "echo $((6 * 7)) > /tmp/answer && cat /tmp/answer"]);
    assert_eq!(String::from_utf8_lossy(&shell.stdout), "42\n", "{shell:?}");

    // catatonit in pause mode: it runs as PID 1 of the sandbox and exits
    // on SIGTERM.
    let pause = resolve_all(&store, &PAUSE_REFS);
    let root = store.unpack(&pause).unwrap();
    let entrypoint = pause.defaults().entrypoint;
    assert_eq!(entrypoint.last().map(String::as_str), Some("-P"), "{entrypoint:?}");
    let mut child = KillOnDrop(Command::new("chroot").arg(&root).args(&entrypoint).spawn().unwrap());
    terminate_when_handled(child.0.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "pause did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    // catatonit passes the signal on and ends as if killed by it, or exits 0.
    assert!(
        status.success() || std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGTERM),
        "pause ends on SIGTERM: {status:?}"
    );

    // One image for the three control-plane programs: one unpack on a node.
    let refs: Vec<String> =
        CONTROL_PLANE_PROGRAMS.iter().map(|p| format!("registry.k8s.io/{p}:{}", kubernetes_tag(layouts))).collect();
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let control_plane = resolve_all(&store, &refs);
    assert_eq!(control_plane.layout, layouts.join("kubernetes"));
    assert!(control_plane.defaults().entrypoint.is_empty(), "manifests name their program in `command`");
    let root = store.unpack(&control_plane).unwrap();
    for program in CONTROL_PLANE_PROGRAMS {
        assert_eq!(fs::read_link(root.join("usr/local/bin").join(program)).unwrap(), Path::new("kubernetes"));
    }
    // A real build's binary is static: it runs in its image alone and
    // says the version its references carry.
    let binary = fs::read(root.join("usr/local/bin/kubernetes")).unwrap();
    if binary.starts_with(b"\x7fELF") {
        let version = chroot(&root, &["/usr/local/bin/kube-apiserver", "--version"]);
        let said = String::from_utf8_lossy(&version.stdout);
        assert_eq!(said.trim(), format!("Kubernetes {}", kubernetes_tag(layouts)), "{version:?}");
    }
}

/// The tag the control-plane layout's references carry.
fn kubernetes_tag(layouts: &Path) -> String {
    let index = fs::read_to_string(layouts.join("kubernetes/index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let name = index["manifests"][0]["annotations"]["io.containerd.image.name"].as_str().unwrap().to_owned();
    name.rsplit_once(':').unwrap().1.to_owned()
}

#[test]
fn the_layouts_the_image_build_writes_resolve_unpack_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    debian_root(&root, true);
    let out = dir.path().join("images");
    let run = run_script(&root, &out);
    assert!(run.status.success(), "oci-images.py failed: {}", String::from_utf8_lossy(&run.stderr));
    let mut names: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["busybox", "etcd", "kubernetes", "pause"], "one layout per image, and no staging left behind");
    check_layouts(&out, &dir.path().join("unpacked"));
    assert_eq!(kubernetes_tag(&out), FAKE_KUBERNETES_VERSION, "the version the binary says");

    // The Debian versions are names too (epoch dropped, '+' made '_'),
    // and a bare repository name does not reach an image under another registry.
    let store = ImageStore::new(&out, dir.path().join("unpacked"));
    assert_eq!(store.resolve("kelson.dev/etcd:3.5.16-4").unwrap().layout, out.join("etcd"));
    assert_eq!(store.resolve("kelson.dev/busybox:1.37.0-6_b9").unwrap().layout, out.join("busybox"));
    for other in ["etcd:3.5.16-0", "pause:3.9", "registry.k8s.io/etcd:3.5.15-0"] {
        assert!(store.resolve(other).unwrap_err().is_not_found(), "{other}");
    }
    // The loader is a regular file at its real path, reached by the root's symlinks.
    let etcd = store.unpack(&store.resolve(ETCD_REFS[0]).unwrap()).unwrap();
    assert_eq!(fs::read_link(etcd.join("lib64")).unwrap(), Path::new("usr/lib64"));
    assert!(fs::symlink_metadata(etcd.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")).unwrap().is_file());
    assert_eq!(fs::metadata(etcd.join("usr/bin/etcd")).unwrap().permissions().mode() & 0o777, 0o755);
    // etcd-client is installed in this root, so etcdctl came along.
    assert_eq!(fs::read_link(etcd.join("usr/local/bin/etcdctl")).unwrap(), Path::new("../../bin/etcdctl"));

    // Reproducible: the same root gives the same bytes, so the same digests.
    let again = dir.path().join("again");
    assert!(run_script(&root, &again).status.success());
    for name in ["etcd", "busybox", "pause", "kubernetes"] {
        assert_eq!(
            fs::read(out.join(name).join("index.json")).unwrap(),
            fs::read(again.join(name).join("index.json")).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn a_missing_package_fails_the_build_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    debian_root(&root, false);
    let run = run_script(&root, &dir.path().join("images"));
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("busybox-static is not installed") && stderr.contains("image/mkosi.conf"), "{stderr}");
}

#[test]
fn the_layouts_of_a_real_image_build_when_given() {
    let Some(layouts) = std::env::var_os("KELSON_NODE_IMAGES") else {
        kelson_test_support::report_skip("KELSON_NODE_IMAGES not set: not checking a real image build's layouts");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    check_layouts(Path::new(&layouts), &dir.path().join("unpacked"));
}
