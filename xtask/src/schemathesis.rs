//! The API suite step: schemathesis, pinned in a venv under
//! /var/cache/kelson, against the kelson-api `fake-node` example, checking
//! every operation of the served OpenAPI document for server errors and
//! schema conformance. Any finding fails the step.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The schemathesis release the step runs; its CLI (4.x) is what the
/// arguments below are written for.
const VERSION: &str = "4.32.5";
const VENV: &str = "/var/cache/kelson/schemathesis/venv";
/// Examples per operation and phase: enough to find a 500 or a wrong
/// schema, short enough to run in well under a minute.
const MAX_EXAMPLES: &str = "50";

/// Kills the fake node when the step ends, however it ends.
struct FakeNode(Child);

impl Drop for FakeNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates the venv and installs the pinned schemathesis unless it is there.
fn ensure_installed() -> Result<PathBuf> {
    let venv = Path::new(VENV);
    let binary = venv.join("bin/schemathesis");
    let installed = Command::new(&binary)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().ends_with(VERSION))
        .unwrap_or(false);
    if installed {
        return Ok(binary);
    }
    eprintln!("xtask: installing schemathesis {VERSION} into {VENV} (for the API step)");
    crate::progress::run(Command::new("python3").args(["-m", "venv"]).arg(venv), "python3 -m venv")?;
    crate::progress::run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", &format!("schemathesis=={VERSION}")]),
        "pip install schemathesis",
    )?;
    Ok(binary)
}

/// Starts the fake node with its PKI in `dir`; returns it and its port.
fn start_fake_node(root: &Path, dir: &Path) -> Result<(FakeNode, u16)> {
    let binary = root.join("target/debug/examples/fake-node");
    let child = Command::new(&binary)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("fake-node.log"))
                .with_context(|| format!("creating {}", dir.join("fake-node.log").display()))?,
        ))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut node = FakeNode(child);
    let stdout = node.0.stdout.take().context("reading the fake node's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading the fake node's port")?;
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|port| port.parse().ok())
        .with_context(|| format!("the fake node printed {line:?}, not its port (its log: {})", dir.display()))?;
    Ok((node, port))
}

pub fn run(root: &Path) -> Result<()> {
    let schemathesis = ensure_installed()?;
    // --workspace, as the other steps build, so dependencies keep one set of features.
    crate::progress::run(
        Command::new("cargo").current_dir(root).args([
            "build",
            "--workspace",
            "--features",
            "kelson-api/fake",
            "--example",
            "fake-node",
        ]),
        "cargo build --example fake-node",
    )?;
    let dir = root.join("target/schemathesis");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (_node, port) = start_fake_node(root, &dir)?;

    let status = Command::new(&schemathesis)
        .current_dir(&dir)
        .arg("--config-file")
        .arg(root.join("services/api/schemathesis.toml"))
        .arg("run")
        .arg(format!("https://127.0.0.1:{port}/v1/openapi.json"))
        .arg("--request-cert")
        .arg(dir.join("admin.pem"))
        .arg("--request-cert-key")
        .arg(dir.join("admin-key.pem"))
        .arg("--tls-verify")
        .arg(dir.join("ca.pem"))
        // No --checks: schemathesis runs all of its checks (server errors,
        // response schemas, status codes, content types, …) but those the
        // config file turns off for one operation; the same inputs each run.
        .args(["--max-examples", MAX_EXAMPLES, "--generation-deterministic"])
        .args(["--request-timeout", "10", "--no-color"])
        .status()
        .context("running schemathesis")?;
    if !status.success() {
        bail!(
            "schemathesis found problems in the API (see above; the fake node's log is {})",
            dir.join("fake-node.log").display()
        );
    }
    Ok(())
}
