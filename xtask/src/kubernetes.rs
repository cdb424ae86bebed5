//! The Kubernetes programs the node ships, built with Go from the
//! `k8s.io/kubernetes` module at one pinned release.
//!
//! `image/kubernetes/go.mod` is a wrapper module: it requires
//! `k8s.io/kubernetes` and, because that module points its `k8s.io/*` staging
//! modules at local directories with `replace` (which a dependency's go.mod
//! cannot do for us), every staging module at the release's matching v0.x
//! version. `cargo xtask kubernetes pin VERSION` writes that file from the
//! release's own go.mod; nobody types the list by hand.
//!
//! Built programs are kept under /var/cache/kelson/kubernetes, keyed by a
//! fingerprint of the wrapper module and the build flags, so they are rebuilt
//! only when the pin changes; Go's own module and build caches (under $HOME)
//! are shared by every clone on the machine.

use crate::progress;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The programs, as the `k8s.io/kubernetes` main packages they are built from.
pub const PROGRAMS: &[&str] =
    &["kubelet", "kube-proxy", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"];

const WRAPPER_DIR: &str = "image/kubernetes";
const CACHE_DIR: &str = "/var/cache/kelson/kubernetes";
const GENERATED_HEADER: &str = "// Written by `cargo xtask kubernetes pin`";

/// A release such as `v1.36.3`, split so the staging modules' `v0.36.3` and
/// the version variables can be derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Release {
    pub fn parse(text: &str) -> Result<Release> {
        let bad = || anyhow::anyhow!("{text:?} is not a Kubernetes release like v1.36.3");
        let rest = text.strip_prefix('v').ok_or_else(bad)?;
        let mut parts = rest.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
        let (major, minor, patch) =
            (parts.next().ok_or_else(bad)??, parts.next().ok_or_else(bad)??, parts.next().ok_or_else(bad)??);
        if parts.next().is_some() || major != 1 {
            return Err(bad());
        }
        Ok(Release { major, minor, patch })
    }

    pub fn tag(&self) -> String {
        format!("v{}.{}.{}", self.major, self.minor, self.patch)
    }

    /// The staging modules (k8s.io/api, k8s.io/client-go, ...) are tagged
    /// v0.MINOR.PATCH for release v1.MINOR.PATCH.
    pub fn staging_tag(&self) -> String {
        format!("v0.{}.{}", self.minor, self.patch)
    }
}

/// The staging modules a release requires: those its go.mod requires at the
/// placeholder v0.0.0 and redirects to `./staging/src/...`. (Some staging
/// modules, the samples, are redirected but not required, and not every one
/// of those is published at every tag.)
pub fn staging_modules(release_go_mod: &str) -> Vec<String> {
    let required_at_placeholder: Vec<&str> = release_go_mod
        .lines()
        .filter_map(|line| {
            let mut words = line.trim().trim_start_matches("require").split_whitespace();
            let (module, version) = (words.next()?, words.next()?);
            (version == "v0.0.0").then_some(module)
        })
        .collect();
    let mut modules: Vec<String> = release_go_mod
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("replace").trim();
            let (module, target) = line.split_once("=>")?;
            let (module, target) = (module.trim(), target.trim());
            let wanted = target.starts_with("./staging/src/") && required_at_placeholder.contains(&module);
            wanted.then(|| module.to_owned())
        })
        .collect();
    modules.sort();
    modules.dedup();
    modules
}

/// The wrapper's go.mod for a release: the release, its staging modules at
/// the matching version, and the programs as `tool`s so `go mod tidy` keeps
/// exactly what they need.
pub fn wrapper_go_mod(release: &Release, staging: &[String], go_version: &str) -> String {
    let mut text = format!(
        "{GENERATED_HEADER} {tag} from k8s.io/kubernetes {tag}'s own go.mod:\n\
         // its staging modules at {staging_tag}. Edit the pin with that command, not by hand.\n\
         module kelson.invalid/image/kubernetes\n\ngo {go_version}\n\ntool (\n",
        tag = release.tag(),
        staging_tag = release.staging_tag(),
    );
    for program in PROGRAMS {
        text.push_str(&format!("\tk8s.io/kubernetes/cmd/{program}\n"));
    }
    text.push_str(")\n\nrequire (\n");
    text.push_str(&format!("\tk8s.io/kubernetes {}\n", release.tag()));
    for module in staging {
        text.push_str(&format!("\t{module} {}\n", release.staging_tag()));
    }
    text.push_str(")\n");
    text
}

/// The release the wrapper module pins, read back from its go.mod.
pub fn pinned(root: &Path) -> Result<Release> {
    let path = root.join(WRAPPER_DIR).join("go.mod");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default())
        .with_context(|| format!("{} requires no k8s.io/kubernetes version", path.display()))?;
    Release::parse(version).with_context(|| format!("reading the pin in {}", path.display()))
}

fn go() -> Command {
    let mut cmd = Command::new("go");
    // Only the module proxy is reachable; a VCS fallback would hang on the network.
    cmd.env("GOPROXY", "https://proxy.golang.org").env("GOFLAGS", "-mod=mod").env("GOTOOLCHAIN", "local");
    cmd
}

/// `cargo xtask kubernetes pin VERSION`: rewrites the wrapper module for a release.
pub fn pin(root: &Path, version: &str) -> Result<()> {
    let release = Release::parse(version)?;
    let dir = root.join(WRAPPER_DIR);
    eprintln!("xtask: downloading k8s.io/kubernetes {} to read its go.mod", release.tag());
    let out = go()
        .args(["mod", "download", "-json", &format!("k8s.io/kubernetes@{}", release.tag())])
        .output()
        .context("running go mod download")?;
    if !out.status.success() {
        bail!(
            "go mod download k8s.io/kubernetes@{} failed: {}",
            release.tag(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info = String::from_utf8_lossy(&out.stdout);
    let go_mod_path = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"GoMod\": \""))
        .and_then(|rest| rest.strip_suffix("\","))
        .context("go mod download printed no GoMod path")?;
    let release_go_mod =
        std::fs::read_to_string(go_mod_path).with_context(|| format!("reading the release's go.mod {go_mod_path}"))?;
    let staging = staging_modules(&release_go_mod);
    if staging.is_empty() {
        bail!("k8s.io/kubernetes {}'s go.mod ({go_mod_path}) names no staging modules", release.tag());
    }
    let go_version = release_go_mod
        .lines()
        .find_map(|l| l.strip_prefix("go "))
        .map(str::trim)
        .context("the release's go.mod has no go line")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("go.mod"), wrapper_go_mod(&release, &staging, go_version))
        .with_context(|| format!("writing {}/go.mod", dir.display()))?;
    eprintln!(
        "xtask: {} staging modules at {}; go mod tidy (downloads the dependencies)",
        staging.len(),
        release.staging_tag()
    );
    progress::run(go().current_dir(&dir).args(["mod", "tidy"]), "go mod tidy in image/kubernetes")
}

/// The linker flags upstream's hack/lib/version.sh sets, so `--version`
/// says the release (v0.0.0-master otherwise, which fails version-skew checks).
pub fn version_ldflags(release: &Release) -> String {
    let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
    let values = [
        ("gitVersion", release.tag()),
        ("gitMajor", release.major.to_string()),
        ("gitMinor", release.minor.to_string()),
        ("gitTreeState", "clean".to_owned()),
        // The module zip carries no commit; the release tag identifies the source.
        ("gitCommit", release.tag()),
        ("buildDate", "1970-01-01T00:00:00Z".to_owned()),
    ];
    for package in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        for (key, value) in &values {
            flags.push(format!("-X={package}.{key}={value}"));
        }
    }
    flags.join(" ")
}

fn fingerprint_inputs(root: &Path, ldflags: &str, layout: Layout) -> Result<String> {
    let dir = root.join(WRAPPER_DIR);
    let mut parts = vec![layout.name().as_bytes().to_vec()];
    for file in ["go.mod", "go.sum", "multicall/main.go"] {
        let path = dir.join(file);
        parts.push(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    parts.push(ldflags.as_bytes().to_vec());
    parts.push(PROGRAMS.join(",").into_bytes());
    let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(crate::image::fingerprint(&slices))
}

/// How the programs are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One binary, `kubernetes`, run through a link per program name
    /// (`multicall/main.go`): the shared packages are linked once. Measured
    /// for v1.36.3: 139 MB against 489 MB for the six separate binaries.
    Multicall,
    /// Each program's own upstream main package, as upstream ships them.
    Separate,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Multicall => "multicall",
            Layout::Separate => "separate",
        }
    }
}

/// The multi-call binary's name in a `Layout::Multicall` build directory.
pub const MULTICALL_BINARY: &str = "kubernetes";

/// Where [`build`] keeps (or would keep) the programs of the current pin
/// and `layout`, whether or not they have been built.
pub fn build_dir(root: &Path, layout: Layout) -> Result<PathBuf> {
    let release = pinned(root)?;
    let key = fingerprint_inputs(root, &version_ldflags(&release), layout)?;
    Ok(Path::new(CACHE_DIR).join(format!("{}-{}-{key}", release.tag(), layout.name())))
}

/// Builds every program (or reuses the cached build of the same pin and
/// layout) and returns the directory holding them: for `Multicall`, the
/// `kubernetes` binary and a symbolic link to it per program.
pub fn build(root: &Path, layout: Layout) -> Result<PathBuf> {
    let release = pinned(root)?;
    let ldflags = version_ldflags(&release);
    let out = build_dir(root, layout)?;
    if PROGRAMS.iter().all(|p| out.join(p).is_file()) {
        eprintln!("xtask: Kubernetes {} programs already built in {}", release.tag(), out.display());
        return Ok(out);
    }
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    eprintln!(
        "xtask: building Kubernetes {} ({}; {} layout) with Go: tens of minutes the first time on 2 cores, \
         under a minute with a warm Go build cache",
        release.tag(),
        PROGRAMS.join(", "),
        layout.name()
    );
    let started = std::time::Instant::now();
    let mut cmd = go();
    cmd.current_dir(root.join(WRAPPER_DIR)).env("CGO_ENABLED", "0").args([
        "build",
        "-v",
        "-trimpath",
        "-ldflags",
        &ldflags,
        "-o",
    ]);
    match layout {
        Layout::Multicall => {
            cmd.arg(partial.join(MULTICALL_BINARY)).arg("./multicall");
        }
        Layout::Separate => {
            cmd.arg(format!("{}/", partial.display()))
                .args(PROGRAMS.iter().map(|p| format!("k8s.io/kubernetes/cmd/{p}")));
        }
    }
    let compiled = run_go_build(&mut cmd, started)?;
    if layout == Layout::Multicall {
        for program in PROGRAMS {
            std::os::unix::fs::symlink(MULTICALL_BINARY, partial.join(program))
                .with_context(|| format!("linking {program} to the multi-call binary in {}", partial.display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&partial, &out).with_context(|| format!("moving {} to {}", partial.display(), out.display()))?;
    eprintln!("xtask: compiled {compiled} packages in {:.0}s into {}", started.elapsed().as_secs_f64(), out.display());
    Ok(out)
}

/// Runs `go build -v`, showing progress from the package names it prints,
/// and returns how many packages it compiled.
fn run_go_build(cmd: &mut Command, started: std::time::Instant) -> Result<usize> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting go build")?;
    let mut compiled = 0usize;
    let mut diagnostics = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            // -v names each package as it is compiled; anything else is a diagnostic.
            if !line.contains(' ') && !line.starts_with('#') {
                compiled += 1;
                if compiled.is_multiple_of(100) {
                    eprintln!("  go build: {compiled} packages compiled, {:.0}s", started.elapsed().as_secs_f64());
                }
            } else {
                diagnostics.push(line);
            }
        }
    }
    let status = child.wait().context("waiting for go build")?;
    if !status.success() {
        for line in diagnostics.iter().rev().take(40).rev() {
            eprintln!("  {line}");
        }
        bail!("go build of the Kubernetes programs failed ({status})");
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE_GO_MOD: &str = "module k8s.io/kubernetes\n\ngo 1.26.0\n\nrequire (\n\tk8s.io/api v0.0.0\n\
        \tk8s.io/client-go v0.0.0\n\tgithub.com/x/y v1.0.0\n)\n\nrequire k8s.io/kubelet v0.0.0\n\n\
        replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n\
        \tgithub.com/x/y => github.com/x/y v1.2.3\n\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin\n)\n\nreplace k8s.io/kubelet => ./staging/src/k8s.io/kubelet\n";

    #[test]
    fn staging_modules_are_the_required_placeholders_that_point_into_staging() {
        assert_eq!(staging_modules(RELEASE_GO_MOD), ["k8s.io/api", "k8s.io/client-go", "k8s.io/kubelet"]);
    }

    #[test]
    fn a_release_maps_to_its_staging_tag_and_bad_versions_are_refused() {
        let release = Release::parse("v1.36.3").unwrap();
        assert_eq!((release.tag(), release.staging_tag()), ("v1.36.3".to_owned(), "v0.36.3".to_owned()));
        for bad in ["1.36.3", "v1.36", "v2.0.0", "v1.36.3.1", "v1.x.3"] {
            assert!(Release::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_wrapper_requires_the_release_and_each_staging_module_and_round_trips_its_pin() {
        let release = Release::parse("v1.36.3").unwrap();
        let text = wrapper_go_mod(&release, &staging_modules(RELEASE_GO_MOD), "1.26.0");
        assert!(text.contains("\tk8s.io/kubernetes v1.36.3\n"));
        assert!(text.contains("\tk8s.io/client-go v0.36.3\n"));
        assert!(text.contains("\tk8s.io/kubernetes/cmd/kube-apiserver\n"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(WRAPPER_DIR)).unwrap();
        std::fs::write(dir.path().join(WRAPPER_DIR).join("go.mod"), text).unwrap();
        assert_eq!(pinned(dir.path()).unwrap(), release);
    }

    #[test]
    fn the_version_variables_are_set_in_both_version_packages() {
        let flags = version_ldflags(&Release::parse("v1.36.3").unwrap());
        assert!(flags.contains("-X=k8s.io/component-base/version.gitVersion=v1.36.3"));
        assert!(flags.contains("-X=k8s.io/client-go/pkg/version.gitMinor=36"));
        assert!(flags.starts_with("-s -w "));
    }
}
