//! Host packages. Every command that needs something from the host calls
//! [`ensure`], which installs what is missing with apt and says what and why
//! before it does.
//!
//! On Debian bookworm two groups come from bookworm-backports, which this adds
//! to apt's sources: mkosi (24 or newer is needed; bookworm has 14) and QEMU.
//! QEMU's packages must all come from one suite: a machine may already carry
//! backports' `qemu-utils` (10.x), whose `Breaks: qemu-system-common (<< 8.0)`
//! makes apt refuse bookworm's `qemu-system-x86` 7.2. Backports' QEMU is also
//! the better one, so every QEMU package is taken from there.

use crate::progress;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// (package, why Kelson needs it on the build host)
const PACKAGES: &[(&str, &str)] = &[
    ("ovmf", "UEFI firmware for booting the UKI"),
    ("busybox-static", "the shell in the QEMU tests' test-only image layer, and the kelson-containers tests' container root"),
    ("libseccomp-dev", "building kelson-containers: libcontainer's seccomp support links libseccomp (libseccomp.a for a static binary)"),
    ("libclang-dev", "building kelson-init: the devicemapper crate generates its ioctl bindings from the kernel's dm-ioctl.h with bindgen, which needs libclang"),
    ("protobuf-compiler", "building the QEMU tests: the etcd-client crate compiles etcd's gRPC definitions with protoc"),
    ("runc", "kelson-containers host tests: Debian's runc runs the config.json Kelson writes, as a cross-check of libcontainer"),
    ("cpio", "inspecting the initramfs"),
    ("zstd", "inspecting the initramfs"),
    ("squashfs-tools", "reading the image's /usr (usr.squashfs) in tests"),
    ("e2fsprogs", "mkfs.ext4 for the state disk tests"),
    ("bubblewrap", "mkosi's build sandbox"),
    ("debian-archive-keyring", "verifying the Debian trixie packages the image is built from"),
    ("dosfstools", "FAT images for tests"),
    ("fdisk", "sfdisk: the disk image's partition table read back in the disk image tests"),
    ("mtools", "FAT images without mounting"),
    ("xorriso", "ISO images without mounting"),
    ("cloud-image-utils", "cloud-localds, to test that the node reads the seeds it makes"),
    ("iproute2", "kelson-net host tests: `ip netns` namespaces, veth pairs, reading links, addresses and routes back"),
    ("iptables", "kelson-net host tests: the MASQUERADE chain set and read back with iptables-save (nft backend)"),
    ("dnsmasq-base", "kelson-net host tests: the DHCP server the DHCPv4 client leases, renews and releases against"),
    ("containernetworking-plugins", "kelson-net host tests: the real CNI bridge plugin run with Kelson's conflist"),
    ("python3-venv", "the management API step: a venv for the pinned schemathesis (cargo xtask test)"),
    ("catatonit", "the node-images host test: packed as the pause image from a Debian-shaped root, as the image build does"),
];

/// Taken together from bookworm-backports on bookworm (see the module doc).
const QEMU_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "boots node images (cargo xtask run/test)"),
    ("qemu-system-common", "QEMU's shared files, from the same suite as qemu-system-x86"),
    ("qemu-system-data", "QEMU's firmware blobs and keymaps, from the same suite as qemu-system-x86"),
    ("qemu-utils", "qemu-img: qcow2 images and state disks"),
];

/// Installed after QEMU, from bookworm-backports on bookworm: libdevmapper-dev
/// needs libudev-dev at exactly the version of libudev1, which backports'
/// QEMU brings in.
const DEVMAPPER_PACKAGES: &[(&str, &str)] = &[
    ("libdevmapper-dev", "building kelson-init: the devicemapper crate's build finds the device-mapper headers through libdevmapper's pkg-config file (nothing of libdevmapper is linked)"),
    ("libudev-dev", "libdevmapper-dev's dependency, at the version of libudev1"),
];

/// The QEMU major version every QEMU package must have on bookworm: the one
/// bookworm-backports carries (bookworm itself has 7.2).
const QEMU_BACKPORTS_MIN_MAJOR: u32 = 8;

const MKOSI_MIN_MAJOR: u32 = 24;

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// The installed version of a package, e.g. `1:10.0.2+ds-1~bpo12+1`.
fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}|${Version}", package]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = text.split_once('|')?;
    status.contains("install ok installed").then(|| version.to_owned())
}

/// The upstream major version in a Debian version string (`1:10.0.2+ds-1` → 10).
fn upstream_major(version: &str) -> Option<u32> {
    let without_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    without_epoch.split(['.', '+', '-', '~']).next()?.parse().ok()
}

/// QEMU packages that are missing, or (on bookworm) older than backports'.
fn qemu_to_install(on_bookworm: bool) -> Vec<&'static (&'static str, &'static str)> {
    QEMU_PACKAGES
        .iter()
        .filter(|(p, _)| match installed_version(p) {
            None => true,
            Some(v) => on_bookworm && upstream_major(&v).is_none_or(|m| m < QEMU_BACKPORTS_MIN_MAJOR),
        })
        .collect()
}

fn codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default()
}

/// mkosi's major version, if it is installed.
pub fn mkosi_major() -> Option<u32> {
    let out = Command::new("mkosi").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.split('.').next()?.parse().ok()
}

pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // `id -u` keeps xtask free of a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}

fn apt(args: &[&str]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["-y", "-q"]).args(args);
    progress::run(&mut cmd, &format!("apt-get {}", args.join(" ")))
}

const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/kelson-bookworm-backports.sources";

fn ensure_backports() -> Result<()> {
    if std::path::Path::new(BACKPORTS_SOURCES).exists() {
        return Ok(());
    }
    let already = Command::new("grep")
        .args(["-rqs", "bookworm-backports", "/etc/apt/sources.list", "/etc/apt/sources.list.d/"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if already {
        return Ok(());
    }
    eprintln!(
        "xtask: adding bookworm-backports to apt's sources ({BACKPORTS_SOURCES}): mkosi >= 24 and QEMU come from there"
    );
    let text = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
                Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
    std::fs::write(BACKPORTS_SOURCES, text).with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
    Ok(())
}

/// Installs whatever is missing. Cheap when nothing is.
pub fn ensure() -> Result<()> {
    let code = codename();
    let on_bookworm = code == "bookworm";
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    let qemu = qemu_to_install(on_bookworm);
    let devmapper: Vec<&(&str, &str)> = DEVMAPPER_PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    let mkosi_ok = mkosi_major().is_some_and(|m| m >= MKOSI_MIN_MAJOR);
    if missing.is_empty() && qemu.is_empty() && devmapper.is_empty() && mkosi_ok {
        return Ok(());
    }
    eprintln!("xtask: installing host packages Kelson's build and tests need:");
    for (p, why) in missing.iter().chain(qemu.iter()).chain(devmapper.iter()) {
        eprintln!("  {p:<24} {why}");
    }
    if !mkosi_ok {
        eprintln!("  {:<24} builds the node image (version {MKOSI_MIN_MAJOR} or newer)", "mkosi");
    }
    if on_bookworm && (!mkosi_ok || !qemu.is_empty() || !devmapper.is_empty()) {
        ensure_backports()?;
        if !qemu.is_empty() {
            eprintln!(
                "xtask: all of QEMU comes from bookworm-backports: its qemu-utils (often preinstalled) \
                 breaks bookworm's qemu-system 7.2, and backports' QEMU is the newer one"
            );
        }
    }
    apt(&["update"])?;
    if !missing.is_empty() {
        let mut args = vec!["install", "--no-install-recommends"];
        args.extend(missing.iter().map(|(p, _)| *p));
        apt(&args)?;
    }
    if !qemu.is_empty() {
        // Every QEMU package in one transaction from one suite, so apt never
        // has to mix 7.2 and backports' version.
        let mut args = vec!["install", "--no-install-recommends"];
        if on_bookworm {
            args.extend(["-t", "bookworm-backports"]);
        }
        args.extend(QEMU_PACKAGES.iter().map(|(p, _)| *p));
        apt(&args)?;
    }
    if !devmapper.is_empty() {
        let mut args = vec!["install", "--no-install-recommends"];
        if on_bookworm {
            args.extend(["-t", "bookworm-backports"]);
        }
        args.extend(DEVMAPPER_PACKAGES.iter().map(|(p, _)| *p));
        apt(&args)?;
    }
    if !mkosi_ok {
        if on_bookworm {
            apt(&["install", "--no-install-recommends", "-t", "bookworm-backports", "mkosi", "python3-pefile"])?;
        } else {
            apt(&["install", "--no-install-recommends", "mkosi", "python3-pefile"])?;
        }
        match mkosi_major() {
            Some(m) if m >= MKOSI_MIN_MAJOR => {}
            found => bail!(
                "mkosi {MKOSI_MIN_MAJOR} or newer is needed and apt provided {found:?} on {code:?}; \
                 use Debian bookworm (with backports) or trixie"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::upstream_major;

    #[test]
    fn upstream_major_reads_debian_versions() {
        assert_eq!(upstream_major("1:10.0.2+ds-1~bpo12+1"), Some(10));
        assert_eq!(upstream_major("1:7.2+dfsg-7+deb12u18+b3"), Some(7));
        assert_eq!(upstream_major("25.3-1~bpo12+1"), Some(25));
        assert_eq!(upstream_major("garbage"), None);
    }
}
