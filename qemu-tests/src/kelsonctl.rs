//! kelsonctl on the host, driving a guest through a `hostfwd` to its
//! management API: the binary cargo built beside the tests, the kelsonconfig
//! `kelsonctl gen cluster` wrote, and the node reached at 127.0.0.1.

use crate::Vm;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Kelsonctl {
    pub binary: PathBuf,
    pub config: PathBuf,
    /// `NODE=127.0.0.1:PORT`, as `--nodes` takes it.
    pub node: String,
}

impl Kelsonctl {
    /// kelsonctl as built beside the running test (`target/debug/kelsonctl`,
    /// by `cargo build --workspace` or `cargo test --workspace`), for `node`
    /// reached at 127.0.0.1:`port`.
    pub fn beside_tests(config: &Path, node: &str, port: u16) -> Result<Kelsonctl> {
        let exe = std::env::current_exe().context("finding the test binary")?;
        // target/debug/deps/TEST-HASH → target/debug/kelsonctl
        let binary = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("kelsonctl"))
            .ok_or_else(|| anyhow!("{} is not under target/debug/deps", exe.display()))?;
        if !binary.exists() {
            bail!("{} is missing: build it with `cargo build --workspace`", binary.display());
        }
        Ok(Kelsonctl { binary, config: config.to_owned(), node: format!("{node}=127.0.0.1:{port}") })
    }

    /// The same node with another kelsonconfig (the read-only one).
    pub fn with_config(&self, config: &Path) -> Kelsonctl {
        Kelsonctl { binary: self.binary.clone(), config: config.to_owned(), node: self.node.clone() }
    }

    /// `kelsonctl ARGS --kelsonconfig CONFIG --nodes NODE`, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).arg("--kelsonconfig").arg(&self.config).args(["--nodes", &self.node]);
        cmd
    }

    /// Its stdout when it exits 0; else an error with its status and output
    /// (what a test matches refusals against).
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().with_context(|| format!("running {}", self.binary.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("kelsonctl {args:?}: {}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(stdout)
    }

    /// The answer to `ARGS -o json`.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all)?;
        serde_json::from_str(&out).with_context(|| format!("kelsonctl {args:?} printed no JSON: {out}"))
    }

    /// Asks `ARGS -o json` every 2 s until `done` accepts the answer; after
    /// `timeout`, an error with the last answer and the console's tail.
    pub fn until(
        &self,
        vm: &Vm,
        what: &str,
        args: &[&str],
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.json(args);
            if let Ok(answer) = &last {
                if done(answer) {
                    return Ok(answer.clone());
                }
            }
            if Instant::now() > deadline {
                let console = vm.console_text().unwrap_or_default();
                let tail: Vec<&str> = console.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{what}: not within {timeout:?}; last: {last:?}\nconsole tail:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
