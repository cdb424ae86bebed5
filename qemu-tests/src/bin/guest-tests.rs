//! `cargo xtask test`'s guest step: the host tests that need cgroup2 with
//! the memory and cpu controllers, run inside a guest of the node image.
//!
//! The development and CI hosts are cgroup v1 hybrids (cgroup2 at
//! /sys/fs/cgroup/unified with no controllers), where these tests can only
//! skip; the node's root cgroup has cpu, memory, pids and io enabled. So
//! this builds the test binaries (`cargo test --no-run
//! --message-format=json`), packs them (debug info stripped, to keep the
//! RAM-resident initramfs small) with busybox and the shim into a layer,
//! boots the image and runs each test through the in-guest agent with the
//! variables that turn a skip into a failure. It fails on any failed test,
//! any skip the guest reports, and a name that matched no test.
//!
//! Needs `KELSON_IMAGE_DIR` (as the QEMU tests do). Skips found in the guest
//! are also appended to `KELSON_TEST_SKIP_LOG` when set, so `cargo xtask
//! test`'s summary names them.

use anyhow::{bail, Context, Result};
use qemu_tests::{guest_layer_with_agent, serde_json, ImagePaths, Layer, Vm, VmBuilder, GUEST_BUSYBOX};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// (test target, exact test name): each skips on the host for want of
/// cgroup2 controllers. Target names are unique in the workspace.
const GUEST_TESTS: &[(&str, &str)] = &[
    ("runc", "the_shim_and_runc_run_one_bundle_alike"),
    ("shim", "a_container_over_its_memory_limit_is_reported_oom_killed"),
    ("processes", "the_child_runs_in_its_own_cgroup_on_a_real_cgroup2_mount"),
];

const BOOT: Duration = Duration::from_secs(300);
const PER_TEST: Duration = Duration::from_secs(600);
const GUEST_TEST_DIR: &str = "/kelson-test/tests";
const GUEST_SHIM: &str = "/kelson-test/kelson-shim";
const GUEST_SKIP_LOG: &str = "/tmp/kelson-test-skips";
/// Where the node image has Debian's runc (image/mkosi.conf installs it;
/// /usr/bin/runc is a link to it), for the runc cross-check.
const GUEST_RUNC: &str = "/usr/sbin/runc";

fn main() -> anyhow::Result<()> {
    let image = ImagePaths::from_env().context("the node image (run `cargo xtask image`)")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace root")?.to_owned();
    let built = build_test_binaries(&root)?;
    let staging = tempfile::tempdir().context("creating a staging directory")?;
    let mut layer = Layer::new();
    for (name, host_path) in &built {
        let guest_path = if name == "kelson-shim" { GUEST_SHIM.to_owned() } else { format!("{GUEST_TEST_DIR}/{name}") };
        let stripped = staging.path().join(name);
        strip(host_path, &stripped)?;
        layer = layer.file_from_host(&guest_path, &stripped, 0o755);
    }
    let mut vm = VmBuilder::from_image(&image)
        .name("guest-tests")
        .memory_mib(1536)
        .layer(guest_layer_with_agent("/bin/busybox"))
        .layer(layer)
        .boot()?;
    vm.expect("kelson: ready", BOOT)?;
    let controllers = sh(&mut vm, "cat /sys/fs/cgroup/cgroup.subtree_control")?;
    eprintln!("guest-tests: the guest's root cgroup enables: {controllers}");

    let mut failures = Vec::new();
    for (target, test) in GUEST_TESTS {
        match run_one(&mut vm, target, test) {
            Ok(()) => eprintln!("guest-tests: {target}::{test} passed in the guest"),
            Err(e) => {
                eprintln!("guest-tests: {target}::{test} FAILED in the guest: {e:#}");
                failures.push(format!("{target}::{test}"));
            }
        }
    }
    let _ = vm.quit();
    if !failures.is_empty() {
        bail!("{} of {} guest tests failed: {}", failures.len(), GUEST_TESTS.len(), failures.join(", "));
    }
    eprintln!("guest-tests: all {} passed in the guest, none skipped", GUEST_TESTS.len());
    Ok(())
}

fn sh(vm: &mut Vm, cmd: &str) -> Result<String> {
    let out = vm.agent_exec(cmd, Duration::from_secs(60))?;
    if out.status != 0 {
        bail!("{cmd} failed in the guest ({}): {}", out.status, out.output);
    }
    Ok(out.output.trim().to_owned())
}

/// Runs one test in the guest; a skip line, a failure or no test run is an error.
fn run_one(vm: &mut Vm, target: &str, test: &str) -> Result<()> {
    let cmd = format!(
        "rm -f {GUEST_SKIP_LOG}; cd /tmp && \
         KELSON_REQUIRE_CGROUP2_MEMORY=1 KELSON_REQUIRE_CGROUP2=1 KELSON_TEST_BUSYBOX={GUEST_BUSYBOX} \
         KELSON_SHIM_BIN={GUEST_SHIM} KELSON_RUNC_BIN={GUEST_RUNC} KELSON_TEST_SKIP_LOG={GUEST_SKIP_LOG} RUST_BACKTRACE=1 \
         {GUEST_TEST_DIR}/{target} --exact {test} --test-threads=1 --color never 2>&1"
    );
    let out = vm.agent_exec(&cmd, PER_TEST)?;
    let skips = vm.agent_exec(&format!("cat {GUEST_SKIP_LOG} 2>/dev/null; true"), Duration::from_secs(60))?.output;
    if !skips.trim().is_empty() {
        record_skips(&skips)?;
    }
    if out.status != 0 {
        bail!("exit status {}:\n{}", out.status, out.output);
    }
    if !out.output.contains("test result: ok. 1 passed") {
        bail!("the name matched no test (or more than one):\n{}", out.output);
    }
    if !skips.trim().is_empty() {
        bail!("it skipped in the guest, where nothing should:\n{skips}");
    }
    Ok(())
}

/// Appends the guest's skip lines to the host's `KELSON_TEST_SKIP_LOG`.
fn record_skips(lines: &str) -> Result<()> {
    let Some(log) = std::env::var_os("KELSON_TEST_SKIP_LOG") else { return Ok(()) };
    use std::io::Write;
    let guest: String = lines.lines().map(|l| format!("{} (in the guest)\n", l.trim_end())).collect();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(guest.as_bytes()))
        .with_context(|| format!("appending the guest's skips to {}", Path::new(&log).display()))
}

/// Builds the test targets `GUEST_TESTS` names and returns each
/// executable by target name, plus the kelson-shim binary they start.
fn build_test_binaries(root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new("cargo");
    // --workspace, as every cargo test in `cargo xtask test`: the same
    // dependency features, so nothing is rebuilt for this step.
    cmd.current_dir(root).args(["test", "--no-run", "--workspace", "--message-format=json-render-diagnostics"]);
    let mut targets: Vec<&str> = GUEST_TESTS.iter().map(|(t, _)| *t).collect();
    targets.dedup();
    for target in &targets {
        cmd.args(["--test", target]);
    }
    let output = cmd.stderr(std::process::Stdio::inherit()).output().context("running cargo test --no-run")?;
    if !output.status.success() {
        bail!("cargo test --no-run for the guest tests failed ({})", output.status);
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(executable)) = (message["target"]["name"].as_str(), message["executable"].as_str())
        else {
            continue;
        };
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        if (is_test && targets.contains(&name)) || name == "kelson-shim" {
            found.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    for target in targets.iter().copied().chain(["kelson-shim"]) {
        if !found.contains_key(target) {
            bail!("cargo test --no-run built no executable for {target:?}");
        }
    }
    Ok(found)
}

/// Copies `from` to `to` without debug info.
fn strip(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .with_context(|| format!("running strip on {}", from.display()))?;
    if !status.success() {
        bail!("strip --strip-debug {} failed ({status})", from.display());
    }
    Ok(())
}
