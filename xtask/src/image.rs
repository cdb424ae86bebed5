//! Building the node image: kelson-init in release mode, then mkosi (in a
//! tools tree of Kelson's own, cached under /var/cache/kelson) builds the
//! Debian trixie root and packs it as a UKI; its split kernel and initramfs
//! are the direct-boot artifacts.

use crate::progress;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where mkosi keeps packages, incremental images and the tools tree
/// between builds (and between clones on the same machine).
pub(crate) const CACHE_ROOT: &str = "/var/cache/kelson";
const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, Clone)]
pub struct ImagePaths {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub uki: PathBuf,
    pub kernel_config: PathBuf,
    /// A copy of the image store's OCI layouts (/usr/lib/kelson/images).
    pub images: PathBuf,
    /// The GPT disk image (raw, sparse) and the same as qcow2.
    pub disk_raw: PathBuf,
    pub disk_qcow2: PathBuf,
    /// The root hash of the disk image's /usr, as its UKI's `usrhash=`.
    pub usr_hash: PathBuf,
    /// The disk image's /usr (squashfs) and its small initrd, for sizes.
    pub usr_image: PathBuf,
    pub disk_initrd: PathBuf,
    /// The hybrid live/installer ISO and the root hash of its /usr.
    pub iso: PathBuf,
    pub iso_usr_hash: PathBuf,
    /// This version as an update bundle (init/src/update.rs).
    pub update_bundle: PathBuf,
    /// Bundles for the A/B tests: a newer version, and a newer one that
    /// cannot boot.
    pub test_bundles: PathBuf,
}

impl ImagePaths {
    pub fn in_dir(dir: &Path) -> Self {
        ImagePaths {
            dir: dir.to_owned(),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("kelson.initrd"),
            uki: dir.join("kelson.efi"),
            kernel_config: dir.join("kernel.config"),
            images: dir.join("images"),
            disk_raw: dir.join("kelson.raw"),
            disk_qcow2: dir.join("kelson.qcow2"),
            usr_hash: dir.join("kelson.usrhash"),
            usr_image: dir.join("usr.squashfs"),
            disk_initrd: dir.join("kelson-disk.initrd"),
            iso: dir.join("kelson.iso"),
            iso_usr_hash: dir.join("kelson-iso.usrhash"),
            update_bundle: dir.join("kelson-update.tar"),
            test_bundles: dir.join("test-bundles"),
        }
    }
}

/// FNV-1a: a stable fingerprint of the tools tree's configuration, so a
/// cached tools tree is reused exactly while its configuration is unchanged.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Runs mkosi, keeping its full output in `log` and showing its step lines.
pub(crate) fn mkosi(args: &[String], cwd: &Path, log: &Path, what: &str) -> Result<()> {
    eprintln!("xtask: mkosi {} (full log: {})", args.join(" "), log.display());
    // mkosi reports its steps on stderr and the tools' chatter on stdout;
    // both go to the log, and only the step lines to the terminal.
    let mut child = Command::new("sh")
        .args(["-c", "exec mkosi \"$@\" 2>&1", "mkosi"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("PYTHONUNBUFFERED", "1")
        .spawn()
        .with_context(|| format!("starting mkosi for {what}"))?;
    let mut log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(log_file, "{line}");
            if line.starts_with('‣') {
                eprintln!("  {line}");
            }
        }
    }
    let status = child.wait().with_context(|| format!("waiting for mkosi ({what})"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("--- last lines of {} ---", log.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        // A full disk shows in mkosi's log only as a script's exit code.
        let free = progress::free_bytes(log).map(|b| format!("; {} free on its disk now", progress::gib(b)));
        bail!("mkosi failed building {what} ({status}); see {}{}", log.display(), free.unwrap_or_default());
    }
    Ok(())
}

/// Holds an exclusive lock on the shared cache while mkosi works in it:
/// several clones (a developer's tree, CI's fresh clone, a helper's worktree)
/// may build on one machine, and two mkosi runs in one cache directory
/// corrupt each other. The lock is released when the guard is dropped.
pub(crate) fn lock_cache() -> Result<std::fs::File> {
    std::fs::create_dir_all(CACHE_ROOT).with_context(|| format!("creating {CACHE_ROOT}"))?;
    let path = Path::new(CACHE_ROOT).join("build.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if file.try_lock().is_err() {
        eprintln!("xtask: another image build holds {}; waiting for it", path.display());
        file.lock().with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

/// The tools tree mkosi builds the node image in, built once per
/// configuration and kept in the cache.
pub fn tools_tree(root: &Path, log_dir: &Path) -> Result<PathBuf> {
    let conf_dir = root.join("image/tools");
    let conf = std::fs::read(conf_dir.join("mkosi.conf")).context("reading image/tools/mkosi.conf")?;
    let sources = std::fs::read(conf_dir.join("mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources"))
        .context("reading image/tools/mkosi.pkgmngr sources")?;
    let out_dir = PathBuf::from(CACHE_ROOT).join(format!("tools-{}", fingerprint(&[&conf, &sources])));
    let tree = out_dir.join("kelson-tools");
    let stamp = out_dir.join("complete");
    if stamp.exists() && tree.is_dir() {
        eprintln!("xtask: reusing the tools tree {}", tree.display());
        return Ok(tree);
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let args = vec![
        format!("--output-dir={}", out_dir.display()),
        format!("--cache-dir={CACHE_ROOT}/mkosi-tools-cache"),
        "--force".into(),
        "build".into(),
    ];
    mkosi(&args, &conf_dir, &log_dir.join("mkosi-tools.log"), "the tools tree")?;
    std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    Ok(tree)
}

/// The node programs in /usr/bin that come from the pinned Kubernetes
/// build (`cargo xtask kubernetes build`) rather than a Debian package.
pub const NODE_PROGRAMS: &[&str] = &["kubelet", "kube-proxy", "kubectl"];

/// What the image takes from the builder because no package has it: the
/// pinned Kubernetes build (built, or reused from its cache, by
/// [`build`]) and any program given in its place (`--kubelet PATH`,
/// `--kube-proxy PATH`, `--kubectl PATH`, or `KELSON_KUBELET`,
/// `KELSON_KUBE_PROXY`, `KELSON_KUBECTL`).
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// Program name → the file to ship in its place.
    pub overrides: Vec<(&'static str, PathBuf)>,
}

impl Inputs {
    pub fn parse(args: &[String]) -> Result<Inputs> {
        let env_name = |program: &str| format!("KELSON_{}", program.replace('-', "_").to_uppercase());
        let mut overrides: Vec<(&'static str, PathBuf)> = NODE_PROGRAMS
            .iter()
            .filter_map(|&program| std::env::var_os(env_name(program)).map(|path| (program, PathBuf::from(path))))
            .collect();
        let known = NODE_PROGRAMS.iter().map(|p| format!("--{p} PATH")).collect::<Vec<_>>().join(", ");
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let Some(&program) = NODE_PROGRAMS.iter().find(|p| arg.strip_prefix("--") == Some(**p)) else {
                anyhow::bail!("image: unknown option {arg:?} (known: {known})");
            };
            let Some(path) = args.next() else { anyhow::bail!("image: {arg} needs a path") };
            overrides.retain(|(name, _)| *name != program);
            overrides.push((program, PathBuf::from(path)));
        }
        for (name, path) in &overrides {
            if !path.is_file() {
                anyhow::bail!("image: the {name} binary {} does not exist", path.display());
            }
        }
        Ok(Inputs { overrides })
    }

    fn override_for(&self, program: &str) -> Option<&Path> {
        self.overrides.iter().find(|(name, _)| *name == program).map(|(_, path)| path.as_path())
    }
}

/// Lays out what the image gets on top of the Debian packages: kelson-init
/// as /sbin/init and /init (the kernel runs /init from an initramfs), and
/// the Kubernetes multi-call binary as /usr/bin/kubernetes with a link per
/// node program (mkosi.finalize builds the control-plane image from the
/// same file), or the program given in a link's place.
fn extra_tree(root: &Path, init_binary: &Path, kubernetes: &Path, inputs: &Inputs) -> Result<PathBuf> {
    let extra = root.join("target/image-extra");
    if extra.exists() {
        std::fs::remove_dir_all(&extra).with_context(|| format!("clearing {}", extra.display()))?;
    }
    let sbin = extra.join("usr/sbin");
    std::fs::create_dir_all(&sbin).with_context(|| format!("creating {}", sbin.display()))?;
    std::fs::copy(init_binary, sbin.join("init"))
        .with_context(|| format!("copying {} into the image", init_binary.display()))?;
    std::os::unix::fs::symlink("usr/sbin/init", extra.join("init")).context("linking /init to /usr/sbin/init")?;
    let bin = extra.join("usr/bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let multicall = kubernetes.join(crate::kubernetes::MULTICALL_BINARY);
    std::fs::copy(&multicall, bin.join(crate::kubernetes::MULTICALL_BINARY))
        .with_context(|| format!("copying {} into the image", multicall.display()))?;
    for &program in NODE_PROGRAMS {
        match inputs.override_for(program) {
            Some(path) => {
                std::fs::copy(path, bin.join(program))
                    .with_context(|| format!("copying {} into the image", path.display()))?;
                eprintln!("xtask: /usr/bin/{program} from {}", path.display());
            }
            None => std::os::unix::fs::symlink(crate::kubernetes::MULTICALL_BINARY, bin.join(program))
                .with_context(|| format!("linking /usr/bin/{program} to the multi-call binary"))?,
        }
    }
    Ok(extra)
}

fn size_mib(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0)))
        .unwrap_or("missing".into())
}

/// Builds everything into target/image/ and returns the artifact paths.
pub fn build(root: &Path, inputs: &Inputs) -> Result<ImagePaths> {
    let image_dir = root.join("target/image");
    std::fs::create_dir_all(&image_dir).with_context(|| format!("creating {}", image_dir.display()))?;

    // Static, because it runs before the read-only /usr (and its shared
    // libraries) is mounted. An explicit --target keeps the static flag
    // away from build scripts and proc macros.
    eprintln!("xtask: building kelson-init (release, statically linked)");
    progress::run(
        Command::new("cargo")
            .current_dir(root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            // The shim (kelson-init's `shim` subcommand) links libseccomp
            // through libcontainer; libseccomp-sys links it dynamically
            // unless told otherwise, which a static binary cannot.
            .env("LIBSECCOMP_LINK_TYPE", "static")
            .env("LIBSECCOMP_LIB_PATH", "/usr/lib/x86_64-linux-gnu")
            .args(["build", "--release", "--quiet", "-p", "kelson-init", "--target", INIT_TARGET]),
        "cargo build --release -p kelson-init (static)",
    )?;
    let init_binary = root.join("target").join(INIT_TARGET).join("release/kelson-init");
    let kubernetes = crate::kubernetes::build(root, crate::kubernetes::Layout::Multicall)?;
    let extra = extra_tree(root, &init_binary, &kubernetes, inputs)?;
    // The same kubectl as the node's, for the host side of the cluster
    // tests and for `cargo xtask run`'s user.
    let kubectl = image_dir.join("kubectl");
    let _ = std::fs::remove_file(&kubectl);
    std::os::unix::fs::symlink(kubernetes.join("kubectl"), &kubectl)
        .with_context(|| format!("linking {} to the pinned build's kubectl", kubectl.display()))?;

    let _cache_lock = lock_cache()?;
    let tools = tools_tree(root, &image_dir)?;

    let out = root.join("target/mkosi-out");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let args = vec![
        format!("--tools-tree={}", tools.display()),
        format!("--extra-tree={}", extra.display()),
        format!("--image-version={}", init_version(root)?),
        format!("--output-dir={}", out.display()),
        format!("--cache-dir={CACHE_ROOT}/mkosi-cache"),
        "--force".into(),
        "build".into(),
    ];
    mkosi(&args, &root.join("image"), &image_dir.join("mkosi.log"), "the node image")?;

    let paths = ImagePaths::in_dir(&image_dir);
    for (from, to) in [
        ("kelson.vmlinuz", &paths.kernel),
        ("kelson.initrd", &paths.initrd),
        ("kelson.efi", &paths.uki),
        ("kernel.config", &paths.kernel_config),
        ("kelson.usrhash", &paths.usr_hash),
        ("usr.squashfs", &paths.usr_image),
        ("kelson-disk.initrd", &paths.disk_initrd),
        ("kelson-iso.usrhash", &paths.iso_usr_hash),
        ("kelson-update.tar", &paths.update_bundle),
    ] {
        let src = out.join(from);
        std::fs::copy(&src, to).with_context(|| format!("copying {} to {}", src.display(), to.display()))?;
    }
    copy_tree(&out.join("images"), &paths.images)?;
    copy_tree(&out.join("test-bundles"), &paths.test_bundles)?;
    // Moved, not copied: the raw image is sparse and gigabytes long.
    let raw = out.join("kelson.raw");
    std::fs::rename(&raw, &paths.disk_raw)
        .with_context(|| format!("moving {} to {}", raw.display(), paths.disk_raw.display()))?;
    let iso = out.join("kelson.iso");
    std::fs::rename(&iso, &paths.iso)
        .with_context(|| format!("moving {} to {}", iso.display(), paths.iso.display()))?;
    let _ = std::fs::remove_file(&paths.disk_qcow2);
    progress::run(
        Command::new("qemu-img")
            .arg("convert")
            .args(["-f", "raw", "-O", "qcow2"])
            .arg(&paths.disk_raw)
            .arg(&paths.disk_qcow2),
        "qemu-img convert kelson.raw to kelson.qcow2",
    )?;
    eprintln!("xtask: image built in {}:", image_dir.display());
    eprintln!("  vmlinuz             {}  (kernel)", size_mib(&paths.kernel));
    eprintln!("  kelson.initrd       {}  (the whole root, zstd cpio: the direct boot)", size_mib(&paths.initrd));
    eprintln!("  kelson.efi          {}  (UKI: kernel + initramfs + command line)", size_mib(&paths.uki));
    eprintln!(
        "  kelson.raw          {}  (GPT disk image: ESP, /usr A + verity, empty slot B)",
        size_mib(&paths.disk_raw)
    );
    eprintln!("  kelson.qcow2        {}  (the same disk as qcow2)", size_mib(&paths.disk_qcow2));
    eprintln!(
        "  kelson-disk.initrd  {}  (the disk image's initrd: the root without /usr)",
        size_mib(&paths.disk_initrd)
    );
    eprintln!("  usr.squashfs        {}  (the disk image's /usr)", size_mib(&paths.usr_image));
    eprintln!("  kelson.iso          {}  (hybrid live/installer ISO, UEFI and BIOS)", size_mib(&paths.iso));
    eprintln!("  kelson-update.tar   {}  (this version as an update bundle)", size_mib(&paths.update_bundle));
    Ok(paths)
}

/// The image's version: kelson-init's, from init/Cargo.toml.
fn init_version(root: &Path) -> Result<String> {
    let manifest = root.join("init/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned))
        .with_context(|| format!("{} has no version line", manifest.display()))
}

/// Replaces `to` with a copy of the directory `from` (`cp -a`: symlinks and modes kept).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing the old {}", to.display()))?;
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .with_context(|| format!("running cp -a {} {}", from.display(), to.display()))?;
    if !status.success() {
        bail!("cp -a {} {} failed with {status}", from.display(), to.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_changes_with_any_byte_and_is_stable() {
        let a = fingerprint(&[b"Packages=apt", b"trixie"]);
        assert_eq!(a, fingerprint(&[b"Packages=apt", b"trixie"]));
        assert_ne!(a, fingerprint(&[b"Packages=apu", b"trixie"]));
        assert_eq!(fingerprint(&[]), "cbf29ce484222325");
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;

    #[test]
    fn node_programs_link_to_the_multicall_binary_unless_given_and_bad_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (init, kubelet, build) = (dir.path().join("init"), dir.path().join("my-kubelet"), dir.path().join("k8s"));
        std::fs::create_dir(&build).unwrap();
        std::fs::write(build.join("kubernetes"), "multicall").unwrap();
        std::fs::write(&init, "init").unwrap();
        std::fs::write(&kubelet, "kubelet").unwrap();
        let args: Vec<String> = vec!["--kubelet".into(), kubelet.display().to_string()];
        let inputs = Inputs::parse(&args).unwrap();
        let extra = extra_tree(dir.path(), &init, &build, &inputs).unwrap();
        let bin = extra.join("usr/bin");
        assert_eq!(std::fs::read_to_string(bin.join("kubelet")).unwrap(), "kubelet");
        assert!(!bin.join("kubelet").is_symlink());
        for program in ["kube-proxy", "kubectl"] {
            assert_eq!(std::fs::read_link(bin.join(program)).unwrap(), Path::new("kubernetes"));
        }
        assert_eq!(std::fs::read_to_string(bin.join("kubectl")).unwrap(), "multicall");
        assert_eq!(std::fs::read_to_string(extra.join("usr/sbin/init")).unwrap(), "init");
        let err = Inputs::parse(&["--kube-proxy".into(), "/nonexistent/kube-proxy".into()]).unwrap_err().to_string();
        assert_eq!(err, "image: the kube-proxy binary /nonexistent/kube-proxy does not exist");
        let err = Inputs::parse(&["--kube-apiserver".into()]).unwrap_err().to_string();
        assert_eq!(
            err,
            "image: unknown option \"--kube-apiserver\" (known: --kubelet PATH, --kube-proxy PATH, --kubectl PATH)"
        );
    }
}

#[cfg(test)]
mod module_list_tests {
    /// The image keeps only the modules mkosi.conf includes; PID 1 loads the
    /// ones /etc/kelson/modules lists. A name in the list but not in the
    /// image fails only at boot, so the two are checked against each other.
    #[test]
    fn every_module_pid1_loads_is_kept_in_the_image() {
        let root = crate::workspace_root();
        let conf = std::fs::read_to_string(root.join("image/mkosi.conf")).expect("image/mkosi.conf");
        let list = std::fs::read_to_string(root.join("image/mkosi.extra/etc/kelson/modules")).expect("module list");
        let included: Vec<&str> = conf
            .split("KernelModulesInclude=")
            .nth(1)
            .expect("a KernelModulesInclude setting")
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .map(str::trim)
            .collect();
        let missing: Vec<String> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|name| format!("/{}\\.ko", name.replace(['_', '-'], "[-_]")))
            .filter(|pattern| !included.contains(&pattern.as_str()))
            .collect();
        assert!(missing.is_empty(), "listed in /etc/kelson/modules but not kept by image/mkosi.conf: {missing:?}");
    }
}

#[cfg(test)]
mod image_store_tests {
    /// image/oci-images.py builds the node's OCI layouts from packages that
    /// mkosi.conf installs (etcd-client only if etcdctl is wanted), and
    /// mkosi.finalize deletes every one of them from the root once the script
    /// has run. A required package missing from the first list fails the
    /// image build; one missing from the second ships its binaries twice (in
    /// the root and in a layout); the script running after the deletion
    /// finds nothing to build from.
    #[test]
    fn the_image_store_packages_are_installed_then_dropped_after_the_layouts_are_built() {
        let root = crate::workspace_root();
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (script, conf, finalize) =
            (read("image/oci-images.py"), read("image/mkosi.conf"), read("image/mkosi.finalize"));
        let mut packages: Vec<&str> =
            script.split("package_version(root, \"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        packages.sort_unstable();
        packages.dedup();
        assert_eq!(packages, ["busybox-static", "catatonit", "etcd-client", "etcd-server"]);
        let installed: Vec<&str> = conf
            .split("\nPackages=")
            .nth(1)
            .expect("a Packages setting")
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .map(str::trim)
            .collect();
        let dropped: Vec<&str> = finalize
            .split("drop_packages=(")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .expect("a drop_packages list")
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(str::split_whitespace)
            .collect();
        for package in ["busybox-static", "etcd-server"] {
            assert!(installed.contains(&package), "{package} is not in image/mkosi.conf's Packages=");
        }
        for package in &packages {
            assert!(dropped.contains(package), "{package} is not in image/mkosi.finalize's drop_packages");
        }
        let built = finalize.find("oci-images.py").expect("mkosi.finalize runs oci-images.py");
        let deleted = finalize.find("for pkg in \"${drop_packages[@]}\"").expect("the drop loop");
        let packed = finalize.find("mksquashfs").expect("the squashfs step");
        assert!(
            built < deleted && built < packed,
            "the layouts are built before the packages go and before /usr is packed"
        );
    }
}
