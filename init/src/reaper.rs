//! The one reaper. PID 1 collects every exited child with `waitpid(-1)`,
//! its own children and orphans the kernel re-parented to it alike, and
//! routes each exit to whoever spawned that pid.
//!
//! Children are started with `std::process::Command` through
//! [`Reaper::spawn`], which holds the table lock across the spawn; the
//! reaper takes the same lock around each `waitpid`, so it can never reap a
//! pid before its owner is registered, nor race std's own wait on a child
//! whose exec failed.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// How a process ended.
/// How a child ended; the supervisor's type, so exits pass through unchanged.
pub use kelson_base::Exit;

/// A child started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
}

/// The output pipes of a child started with [`Reaper::spawn_with_output`].
#[derive(Debug)]
pub struct ChildPipes {
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

/// What one pass of reaping collected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub owned: usize,
    pub orphans: usize,
}

#[derive(Debug, Default)]
pub struct Reaper {
    owners: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `cmd` and registers its pid before anyone can reap it.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Spawned> {
        self.spawn_with_output(cmd).map(|(spawned, _)| spawned)
    }

    /// Like [`Reaper::spawn`], also handing back the pipes `cmd` was told to
    /// make (`Stdio::piped()`), which dropping std's `Child` would close.
    pub fn spawn_with_output(&self, cmd: &mut Command) -> io::Result<(Spawned, ChildPipes)> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let pipes = ChildPipes { stdout: child.stdout.take(), stderr: child.stderr.take() };
        // std's Child neither waits nor kills on drop; the reaper owns the
        // wait from here on.
        drop(child);
        let (tx, rx) = oneshot::channel();
        owners.insert(pid, tx);
        Ok((Spawned { pid, exit: rx }, pipes))
    }

    /// Starts `cmd` and blocks the calling (non-async) thread until it exits.
    pub fn run_blocking(&self, cmd: &mut Command) -> io::Result<Exit> {
        let spawned = self.spawn(cmd)?;
        spawned.exit.blocking_recv().map_err(|_| io::Error::other("the reaper stopped before the child exited"))
    }

    /// Pids of spawned children that have not exited yet.
    pub fn live_children(&self) -> Vec<i32> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    /// Collects every exited child without blocking.
    pub fn reap(&self) -> Reaped {
        let mut reaped = Reaped::default();
        loop {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
                Ok(_) => continue,
            };
            match owners.remove(&pid.as_raw()) {
                Some(tx) => {
                    reaped.owned += 1;
                    // The owner may have stopped listening; the child is
                    // reaped either way.
                    let _ = tx.send(exit);
                }
                None => reaped.orphans += 1,
            }
        }
    }
}
