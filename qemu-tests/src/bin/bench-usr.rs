//! `cargo xtask bench usr`: squashfs against erofs for the read-only /usr.
//!
//! The same tree, the image's /usr (`usr.squashfs` as built, unpacked with
//! unsquashfs), is packed as erofs with each compressor that both the host's
//! mkfs.erofs writes and the guest kernel reads. For each image the host
//! reports its size; one guest (direct boot) gets every image as a read-only
//! virtio disk, mounts them all, and times reading each whole tree cold
//! (`tar -cf - . | wc -c`, caches dropped before each read), in rounds that
//! alternate between the images.

use anyhow::{bail, Context, Result};
use qemu_tests::bench::median;
use qemu_tests::{guest_layer_with_agent, ImagePaths, Vm, VmBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROUNDS: usize = 3;
const MEMORY_MIB: u32 = 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// One image of the tree.
struct Variant {
    /// What it is, exactly as made.
    label: String,
    /// `mount -t` type.
    fs_type: &'static str,
    file: PathBuf,
    /// Seconds each cold read took, one per round.
    reads: Vec<f64>,
    /// Bytes of the tar stream (the same tree gives the same count).
    tar_bytes: u64,
}

fn run(command: &mut Command, what: &str) -> Result<String> {
    let out = command.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// "zstd, 128 KiB blocks" from `unsquashfs -s`.
fn squashfs_settings(file: &Path) -> Result<String> {
    let out = run(Command::new("unsquashfs").arg("-s").arg(file), "unsquashfs -s")?;
    let value = |key: &str| {
        out.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned()).unwrap_or_else(|| "?".into())
    };
    let block = value("Block size").parse::<u64>().map_or("? KiB".into(), |b| format!("{} KiB", b / 1024));
    Ok(format!("{}, {block} blocks", value("Compression")))
}

/// Where mkfs.erofs comes from: the image's tools tree (Debian trixie,
/// whose erofs-utils writes every compressor the node kernel reads) run
/// through bubblewrap with the tree as its root, when `KELSON_TOOLS_TREE`
/// names it (`cargo xtask bench usr` does); else the host's.
struct Mkfs {
    tools_tree: Option<PathBuf>,
    /// The directory holding the tree and the images.
    work: PathBuf,
}

impl Mkfs {
    /// Where `work` is seen by mkfs.erofs.
    fn work_seen(&self) -> PathBuf {
        match self.tools_tree {
            Some(_) => PathBuf::from("/tmp/bench-usr"),
            None => self.work.clone(),
        }
    }

    fn command(&self) -> Command {
        match &self.tools_tree {
            Some(tree) => {
                let mut command = Command::new("bwrap");
                command
                    .arg("--ro-bind")
                    .arg(tree)
                    .arg("/")
                    .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--bind"])
                    .arg(&self.work)
                    .arg(self.work_seen())
                    .args(["--", "mkfs.erofs"]);
                command
            }
            None => Command::new("mkfs.erofs"),
        }
    }

    fn source(&self) -> String {
        match &self.tools_tree {
            Some(tree) => format!("the tools tree's mkfs.erofs ({})", tree.display()),
            None => "the host's mkfs.erofs".to_owned(),
        }
    }

    /// Packs `work/usr` into `work/name` with `options`; its first line of
    /// output (`mkfs.erofs <version>`) on success, its error otherwise.
    fn make(&self, options: &[&str], name: &str) -> Result<std::result::Result<String, String>> {
        let seen = self.work_seen();
        let out = self
            .command()
            .args(options)
            .arg(seen.join(name))
            .arg(seen.join("usr"))
            .output()
            .with_context(|| format!("running {}", self.source()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(Ok(stdout.lines().next().unwrap_or("").trim().to_owned()))
        } else {
            let why = stderr.lines().chain(stdout.lines()).find(|l| !l.trim().is_empty()).unwrap_or("");
            Ok(Err(format!("{} ({})", why.trim(), out.status)))
        }
    }
}

/// Whether the guest kernel's configuration has `option=y`.
fn kernel_has(config: &str, option: &str) -> bool {
    config.lines().any(|l| l == format!("{option}=y"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// QEMU arguments for a read-only virtio disk holding `file`, which the
/// guest finds by `serial`.
fn serial_disk(serial: &str, file: &Path) -> [String; 4] {
    [
        "-drive".to_owned(),
        format!("file={},if=none,format=raw,readonly=on,id={serial}", file.display()),
        "-device".to_owned(),
        format!("virtio-blk-pci,drive={serial},serial={serial}"),
    ]
}

fn mount_point(index: usize) -> String {
    format!("/run/bench-usr-{index}")
}

/// Reads variant `index`'s whole tree cold in the guest: (seconds, tar bytes).
fn cold_read(vm: &mut Vm, index: usize) -> Result<(f64, u64)> {
    let dir = mount_point(index);
    let out = vm
        .agent_exec(
            &format!(
                "sync; echo 3 > /proc/sys/vm/drop_caches; read a _ < /proc/uptime; \
                 n=$(tar -cf - -C {dir} . | wc -c); read b _ < /proc/uptime; echo \"bench-usr-read $a $b $n\""
            ),
            READ_TIMEOUT,
        )?
        .ok()
        .with_context(|| format!("reading {dir} in the guest"))?;
    let Some(fields) = out.output.lines().find_map(|l| l.strip_prefix("bench-usr-read ")) else {
        bail!("reading {dir}: no result line in {:?}", out.output);
    };
    let values: Vec<&str> = fields.split_whitespace().collect();
    let (Some(start), Some(end), Some(bytes)) = (
        values.first().and_then(|v| v.parse::<f64>().ok()),
        values.get(1).and_then(|v| v.parse::<f64>().ok()),
        values.get(2).and_then(|v| v.parse::<u64>().ok()),
    ) else {
        bail!("reading {dir}: unexpected result line {fields:?}");
    };
    Ok((end - start, bytes))
}

fn main() -> Result<()> {
    let image = ImagePaths::from_env()?;
    let squashfs = image.dir.join("usr.squashfs");
    let kernel_config = std::fs::read_to_string(image.dir.join("kernel.config"))
        .with_context(|| format!("reading {}", image.dir.join("kernel.config").display()))?;
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let tree = work.path().join("usr");
    run(
        Command::new("unsquashfs").args(["-q", "-no-progress", "-d"]).arg(&tree).arg(&squashfs),
        &format!("unsquashfs of {}", squashfs.display()),
    )?;

    let mut variants = vec![Variant {
        label: format!("squashfs {} (usr.squashfs as built)", squashfs_settings(&squashfs)?),
        fs_type: "squashfs",
        file: squashfs.clone(),
        reads: Vec::new(),
        tar_bytes: 0,
    }];
    let mkfs =
        Mkfs { tools_tree: std::env::var_os("KELSON_TOOLS_TREE").map(PathBuf::from), work: work.path().to_owned() };
    let mut mkfs_version = String::new();
    // (compressor, mkfs.erofs options, the kernel option that reads it)
    let candidates: &[(&str, &[&str], &str)] = &[
        ("lz4hc", &["-zlz4hc,12"], "CONFIG_EROFS_FS_ZIP"),
        ("lz4hc", &["-zlz4hc,12", "-C65536"], "CONFIG_EROFS_FS_ZIP"),
        ("lzma", &["-zlzma", "-C65536"], "CONFIG_EROFS_FS_ZIP_LZMA"),
        ("deflate", &["-zdeflate,9", "-C65536"], "CONFIG_EROFS_FS_ZIP_DEFLATE"),
        // Level 15 is mksquashfs's zstd default, so as usr.squashfs.
        ("zstd", &["-zzstd,15", "-C65536"], "CONFIG_EROFS_FS_ZIP_ZSTD"),
    ];
    let mut not_compared = Vec::new();
    for (compressor, options, kernel_option) in candidates {
        if !kernel_has(&kernel_config, kernel_option) {
            not_compared.push(format!("erofs {compressor}: the guest kernel lacks {kernel_option}"));
            continue;
        }
        let name = format!("usr-{}.erofs", variants.len());
        eprintln!("bench-usr: mkfs.erofs {} ...", options.join(" "));
        match mkfs.make(options, &name)? {
            Ok(version) => mkfs_version = version,
            Err(why) => {
                not_compared.push(format!(
                    "erofs {compressor}: the guest kernel reads it ({kernel_option}=y), but {} {} failed: {why}",
                    mkfs.source(),
                    options.join(" ")
                ));
                continue;
            }
        }
        variants.push(Variant {
            label: format!("erofs, mkfs.erofs {}", options.join(" ")),
            fs_type: "erofs",
            file: work.path().join(name),
            reads: Vec::new(),
            tar_bytes: 0,
        });
    }
    // The unpacked tree is only the source of the images.
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;

    let mut builder = VmBuilder::from_image(&image)
        .name("bench-usr")
        .memory_mib(MEMORY_MIB)
        .layer(guest_layer_with_agent("/bin/busybox"));
    for (index, variant) in variants.iter().enumerate() {
        builder = builder.qemu_args(serial_disk(&format!("usr{index}"), &variant.file));
    }
    let mut vm = builder.boot().context("booting the guest")?;
    vm.expect("kelson: ready", Duration::from_secs(300))?;
    vm.agent_exec("/usr/sbin/modprobe erofs && grep -w erofs /proc/filesystems", Duration::from_secs(120))?
        .ok()
        .context("loading the erofs module in the guest")?;
    for (index, variant) in variants.iter().enumerate() {
        let dir = mount_point(index);
        vm.agent_exec(
            &format!(
                "d=$(for b in /sys/block/*; do [ \"$(cat $b/serial 2>/dev/null)\" = usr{index} ] && echo /dev/${{b##*/}}; done); \
                 mkdir -p {dir} && mount -t {} -o ro $d {dir}",
                variant.fs_type
            ),
            Duration::from_secs(120),
        )?
        .ok()
        .with_context(|| format!("mounting {} in the guest", variant.label))?;
    }
    for round in 1..=ROUNDS {
        for (index, variant) in variants.iter_mut().enumerate() {
            let (secs, bytes) = cold_read(&mut vm, index)?;
            eprintln!("bench-usr: round {round}/{ROUNDS}: {}: {secs:.2} s, {bytes} bytes", variant.label);
            variant.reads.push(secs);
            variant.tar_bytes = bytes;
        }
    }
    let _ = vm.kill();

    let squashfs_size = std::fs::metadata(&squashfs).map(|m| m.len()).unwrap_or(0);
    println!(
        "/usr benchmark: one tree (the image's /usr, {:.1} MiB as a tar stream), each image a read-only \
         virtio disk in one guest (direct boot, TCG, 1 vCPU, {MEMORY_MIB} MiB); cold read = `tar -cf - . | wc -c` \
         after drop_caches, median of {ROUNDS} alternating rounds",
        mib(variants[0].tar_bytes)
    );
    println!("{:<58} {:>10} {:>8} {:>14}", "image", "size MiB", "vs sqfs", "cold read s");
    for variant in &variants {
        let size = std::fs::metadata(&variant.file).map(|m| m.len()).unwrap_or(0);
        println!(
            "{:<58} {:>10.1} {:>7.0}% {:>14.2}",
            variant.label,
            mib(size),
            100.0 * size as f64 / squashfs_size as f64,
            median(&variant.reads)
        );
    }
    for variant in variants.iter().filter(|v| v.tar_bytes != variants[0].tar_bytes) {
        println!(
            "  warning: {} gave a {} byte tar stream, squashfs {}",
            variant.label, variant.tar_bytes, variants[0].tar_bytes
        );
    }
    println!("  erofs images made by {} ({mkfs_version})", mkfs.source());
    for reason in &not_compared {
        println!("  not compared: {reason}");
    }
    Ok(())
}
