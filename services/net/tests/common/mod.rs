//! Network namespaces for the root-only host tests. Each test makes its own
//! (named after the test and the process id) and a guard deletes them, also
//! when the test fails.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Fails the test (never skips it) when not root: CI runs as root, and a
/// silently skipped kernel test would read as a pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kelson-net's host tests create network namespaces, links and iptables rules and need root; \
         run them as root (CI does), or run only the unit tests with `cargo test -p kelson-net --lib`"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        // Tests in one binary run in parallel in one process: the counter
        // keeps their namespaces apart.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("kt-{tag}-{}-{n}", std::process::id());
        // A leftover from a killed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let path = PathBuf::from(format!("/run/netns/{name}"));
        Netns { name, path }
    }

    /// `ip netns exec NAME args...`, asserting success; stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        text(run(Command::new("ip").args(["netns", "exec", &self.name]).args(args)))
    }

    /// Runs `body` on a thread inside this namespace with its own
    /// single-threaded tokio runtime: netlink sockets, /proc/sys/net and
    /// child processes (iptables, CNI plugins) all land in the namespace.
    pub fn block_on<F, Fut>(&self, body: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&self.path).expect("opening the test namespace");
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("joining the test namespace");
                    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    runtime.block_on(body())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Kills a child (dnsmasq) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
