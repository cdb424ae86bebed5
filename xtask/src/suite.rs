//! `cargo xtask test`: the whole suite, in the order a failure is cheapest
//! to find, and the account of what it skipped.
//!
//! Tests that cannot check something on the host say so in one line,
//! `kelson-test-skip: <target>::<test>: <reason>`, appended to the file named
//! by `KELSON_TEST_SKIP_LOG`. Each step here gets its own log; the suite ends
//! with a summary naming every skip. Under CI (`CI` set) a skip fails the
//! run unless it is on [`ALLOWED_HOST_SKIPS`]: host-step skips of checks a
//! later step of the same run makes for real.

use crate::{deps, fuzz, image, progress, schemathesis};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Host-step skips CI accepts, each with the later step that runs the check.
/// The host is a cgroup v1 hybrid without the memory and cpu controllers, and
/// has no image until the image step.
pub const ALLOWED_HOST_SKIPS: &[(&str, &str)] = &[
    ("runc::the_shim_and_runc_run_one_bundle_alike", "runs in a node guest (guest cgroup tests step)"),
    (
        "shim::a_container_over_its_memory_limit_is_reported_oom_killed",
        "runs in a node guest (guest cgroup tests step)",
    ),
    (
        "processes::the_child_runs_in_its_own_cgroup_on_a_real_cgroup2_mount",
        "runs in a node guest (guest cgroup tests step)",
    ),
    (
        "node_images::the_layouts_of_a_real_image_build_when_given",
        "runs against the built image (node image layouts step)",
    ),
];

/// The QEMU tests: every file in qemu-tests/tests, each declared in
/// qemu-tests/Cargo.toml as needing the `boot` feature, so the host step
/// (which runs without it) does not boot anything.
fn qemu_test_targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("qemu-tests/tests");
    let manifest_path = root.join("qemu-tests/Cargo.toml");
    let manifest =
        std::fs::read_to_string(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        let (Some(stem), Some("rs")) =
            (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str()))
        else {
            continue;
        };
        let declared = format!("[[test]]\nname = \"{stem}\"\nrequired-features = [\"boot\"]");
        if !manifest.contains(&declared) {
            bail!(
                "{} is not declared in {} as a [[test]] with required-features = [\"boot\"]; without that the host \
                 step would boot it too",
                path.display(),
                manifest_path.display()
            );
        }
        targets.push(stem.to_owned());
    }
    targets.sort();
    Ok(targets)
}

/// What a whole run writes at its peak: target/ (test binaries, the image
/// outputs: 11 GiB at the end of a passing CI run) and mkosi's workspace
/// under /var/tmp (the image tree and its raw disk, about 4 GiB). A run that fills the disk fails in
/// whichever step writes next, often with an error that does not say why.
const DISK_A_RUN_NEEDS: u64 = 16 << 30;

/// Says up front when the disk is too full for a whole run; a warning, not a
/// failure, because space can be freed while the run goes on.
fn warn_if_disk_is_short(root: &Path) {
    if let Some(free) = progress::free_bytes(root) {
        let verdict = if free < DISK_A_RUN_NEEDS {
            "; a whole run needs about 16 GiB, so it may fail for want of space"
        } else {
            ""
        };
        eprintln!("xtask: {} free on the disk holding {}{verdict}", progress::gib(free), root.display());
    }
}

/// Runs the suite. `extra` goes to the QEMU tests' harness (a name filter).
pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    if !deps::is_root() {
        // Failing here, before any work, beats a suite whose host tests fail one by one:
        // they create network namespaces, mount overlayfs and run containers.
        bail!(
            "cargo xtask test must run as root: the host tests create network namespaces, \
             mount filesystems and run containers (sudo is not enough for them)"
        );
    }
    let qemu_tests = qemu_test_targets(root)?;
    warn_if_disk_is_short(root);
    let skip_dir = root.join("target/test-skips");
    let _ = std::fs::remove_dir_all(&skip_dir);
    std::fs::create_dir_all(&skip_dir).with_context(|| format!("creating {}", skip_dir.display()))?;
    let log = |step: &str| skip_dir.join(format!("{step}.log"));

    let mut steps = progress::Steps::new(10);
    steps.start("installing host packages that are missing");
    deps::ensure()?;

    steps.start("style gates: cargo fmt --check, cargo clippy -D warnings");
    progress::run(Command::new("cargo").current_dir(root).args(["fmt", "--all", "--check"]), "cargo fmt --check")?;
    progress::run(
        Command::new("cargo").current_dir(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            "qemu-tests/boot",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy -D warnings",
    )?;

    // Every cargo test below selects the whole workspace, so dependencies are
    // built once with one set of features; only the targets differ.
    steps.start("unit and host tests (cargo test --workspace; the QEMU tests need the boot feature)");
    progress::run(
        Command::new("cargo").current_dir(root).env("KELSON_TEST_SKIP_LOG", log("host")).args([
            "test",
            "--workspace",
            "--",
            "--test-threads=2",
        ]),
        "cargo test (unit and host tests)",
    )?;

    steps.start("the management API against its OpenAPI document (schemathesis on a fake node)");
    schemathesis::run(root)?;

    steps.start("fuzz targets, a fixed number of inputs each from the committed corpus");
    fuzz::smoke(root)?;

    steps.start("building the node image with mkosi");
    let paths = image::build(root, &image::Inputs::parse(&[])?)?;

    steps.start("checking the image kernel's configuration");
    progress::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["run", "--quiet", "-p", "kernel-config", "--"])
            .arg(&paths.kernel_config),
        "kernel config check",
    )?;

    steps.start("node image layouts: the image store's OCI layouts as built");
    progress::run(
        Command::new("cargo")
            .current_dir(root)
            .env("KELSON_NODE_IMAGES", &paths.images)
            .env("KELSON_TEST_SKIP_LOG", log("node-images"))
            .args(["test", "--workspace", "--test", "node_images"]),
        "cargo test --test node_images",
    )?;

    steps.start("guest cgroup tests: host tests that need cgroup2 controllers, run in a node guest");
    // Built with --workspace (cargo run has no such flag) for the same
    // dependency features as the other steps, then run directly.
    progress::run(
        Command::new("cargo").current_dir(root).args(["build", "--workspace", "--bin", "guest-tests"]),
        "cargo build --bin guest-tests",
    )?;
    progress::run(
        Command::new(root.join("target/debug/guest-tests"))
            .current_dir(root)
            .env("KELSON_IMAGE_DIR", &paths.dir)
            .env("KELSON_TEST_SKIP_LOG", log("guest")),
        "guest cgroup tests",
    )?;

    steps.start("QEMU tests: booting the image (TCG, about a minute per test)");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).env("KELSON_IMAGE_DIR", &paths.dir).env("KELSON_TEST_SKIP_LOG", log("qemu")).args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--features",
        "qemu-tests/boot",
    ]);
    for target in &qemu_tests {
        cmd.args(["--test", target]);
    }
    cmd.args(["--", "--test-threads=2"]).args(extra);
    progress::run(&mut cmd, "cargo test (QEMU tests)")?;
    steps.done();

    summarize_skips(&skip_dir, std::env::var_os("CI").is_some())
}

/// One skip line read back from a step's log.
#[derive(Debug, PartialEq, Eq)]
struct Skip {
    step: String,
    test: String,
    reason: String,
}

fn parse_skips(step: &str, log: &str) -> Vec<Skip> {
    log.lines()
        .filter_map(|line| line.trim().strip_prefix("kelson-test-skip: "))
        .map(|rest| {
            let (test, reason) = rest.split_once(": ").unwrap_or((rest, ""));
            Skip { step: step.to_owned(), test: test.to_owned(), reason: reason.to_owned() }
        })
        .collect()
}

/// Whether CI accepts `skip`: only on [`ALLOWED_HOST_SKIPS`], and only in the host step.
fn allowed(skip: &Skip) -> Option<&'static str> {
    if skip.step != "host" {
        return None;
    }
    ALLOWED_HOST_SKIPS.iter().find(|(test, _)| *test == skip.test).map(|(_, why)| *why)
}

/// Prints every skip the steps logged; under CI, fails on one not allowed.
fn summarize_skips(dir: &Path, ci: bool) -> Result<()> {
    let mut skips = Vec::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    logs.sort();
    for path in logs {
        let step = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_owned();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        skips.extend(parse_skips(&step, &text));
    }
    if skips.is_empty() {
        eprintln!("xtask: no test skipped anything");
        return Ok(());
    }
    eprintln!("xtask: {} skip(s) reported:", skips.len());
    let mut refused = Vec::new();
    for skip in &skips {
        match allowed(skip) {
            Some(why) => eprintln!("  [{}] {}: {} (allowed: {why})", skip.step, skip.test, skip.reason),
            None => {
                eprintln!("  [{}] {}: {} (NOT on the allow-list)", skip.step, skip.test, skip.reason);
                refused.push(format!("{} in the {} step", skip.test, skip.step));
            }
        }
    }
    if ci && !refused.is_empty() {
        bail!(
            "under CI a skip is a failure unless allowed (xtask/src/suite.rs ALLOWED_HOST_SKIPS): {}",
            refused.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_are_parsed_and_only_listed_host_skips_are_allowed() {
        let log = "kelson-test-skip: runc::the_shim_and_runc_run_one_bundle_alike: no memory controller\n\
                   noise\n\
                   kelson-test-skip: store::something: needs root\n";
        let skips = parse_skips("host", log);
        assert_eq!(skips.len(), 2);
        assert_eq!(skips[0].test, "runc::the_shim_and_runc_run_one_bundle_alike");
        assert_eq!(skips[0].reason, "no memory controller");
        assert!(allowed(&skips[0]).is_some());
        assert!(allowed(&skips[1]).is_none());
        let in_guest = parse_skips("guest", log);
        assert!(allowed(&in_guest[0]).is_none(), "an allowed host skip is refused in another step");
    }

    #[test]
    fn under_ci_a_skip_off_the_list_fails_the_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("host.log"), "kelson-test-skip: store::x: needs root\n").expect("write");
        assert!(summarize_skips(dir.path(), false).is_ok());
        let err = summarize_skips(dir.path(), true).expect_err("refused under CI");
        assert!(err.to_string().contains("store::x in the host step"), "{err}");
    }

    #[test]
    fn every_qemu_test_file_is_declared_with_the_boot_feature() {
        let root = crate::workspace_root();
        let targets = qemu_test_targets(&root).expect("qemu-tests targets");
        assert!(targets.contains(&"node_boot".to_owned()), "{targets:?}");
    }
}
