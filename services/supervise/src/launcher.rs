//! Starting processes. PID 1 reaps every child with `waitpid(-1)`, so a
//! `std::process::Child::wait` (or tokio::process) would race it for the
//! exit status; the supervisor therefore never waits itself. It hands a
//! ready `Command` to a [`Launcher`] and gets back the pid and a future of
//! the exit. PID 1's launcher registers the pid with its reaper;
//! [`ThreadLauncher`] is for tests and for use outside PID 1.

use kelson_base::Exit;
use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Command;
use tokio::sync::oneshot;

/// Resolves when the process has exited and been reaped. `None` means the
/// launcher stopped tracking it (its reaper went away) and the exit status
/// is unknown.
pub type ExitFuture = Pin<Box<dyn Future<Output = Option<Exit>> + Send>>;

pub struct Launched {
    pub pid: i32,
    pub exit: ExitFuture,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched").field("pid", &self.pid).finish_non_exhaustive()
    }
}

pub trait Launcher: Send + Sync + 'static {
    /// Spawns `cmd` and arranges for its exit to be reported. The command's
    /// stdout and stderr are already the write end of the service's output
    /// pipe: the launcher must drop `cmd` once spawned (taking it by value
    /// does that), so the supervisor's reader sees end-of-file when the
    /// service and its children are gone.
    fn spawn(&self, cmd: Command) -> io::Result<Launched>;
}

/// Spawns with std and waits for each child on a thread of its own
/// (`waitpid` on that one pid). Not for PID 1, whose `waitpid(-1)` would
/// steal these exits.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadLauncher;

impl Launcher for ThreadLauncher {
    fn spawn(&self, mut cmd: Command) -> io::Result<Launched> {
        let mut child = cmd.spawn()?;
        drop(cmd);
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new().name(format!("wait-{pid}")).spawn(move || {
            let exit = child.wait().ok().and_then(|status| match (status.code(), status.signal()) {
                (Some(code), _) => Some(Exit::Code(code)),
                (None, Some(signal)) => Some(Exit::Signal(signal)),
                (None, None) => None,
            });
            let _ = tx.send(exit);
        })?;
        Ok(Launched { pid, exit: Box::pin(async move { rx.await.ok().flatten() }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exits_are_reported_as_codes_and_signals() {
        let mut ok = Command::new("true");
        ok.stdin(std::process::Stdio::null());
        let ok = ThreadLauncher.spawn(ok).unwrap();
        assert!(ok.pid > 0);
        assert_eq!(ok.exit.await, Some(Exit::Code(0)));
        let mut killed = Command::new("sh");
        killed.args(["-c", "kill -9 $$"]);
        assert_eq!(ThreadLauncher.spawn(killed).unwrap().exit.await, Some(Exit::Signal(9)));
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let err = ThreadLauncher.spawn(Command::new("/nonexistent/kelson-program")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
