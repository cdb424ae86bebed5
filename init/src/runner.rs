//! Programs PID 1's services run to completion (iptables, mkfs), started
//! through the one reaper so their exits are collected by `waitpid(-1)` in
//! the main loop and never raced by std's own wait.

use crate::reaper::{Exit, Reaper};
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Arc;

#[derive(Clone)]
pub struct ReaperRunner {
    reaper: Arc<Reaper>,
}

impl ReaperRunner {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        ReaperRunner { reaper }
    }

    /// Runs `cmd` to completion and collects its output. Blocks the calling
    /// thread; the exit arrives from the main loop's reaping.
    pub fn output(&self, mut cmd: Command) -> io::Result<Output> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let (spawned, pipes) = self.reaper.spawn_with_output(&mut cmd)?;
        // Both pipes are drained at once: a child filling the one nobody
        // reads would block forever.
        let stderr_reader = pipes.stderr.map(|mut pipe| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut pipe) = pipes.stdout {
            pipe.read_to_end(&mut stdout)?;
        }
        let stderr = stderr_reader.and_then(|t| t.join().ok()).unwrap_or_default();
        // A plain executor: this may run inside a `Handle::block_on`, where
        // tokio's own blocking receive refuses to run.
        let exit = futures::executor::block_on(spawned.exit)
            .map_err(|_| io::Error::other("the reaper stopped before the child exited"))?;
        let status = match exit {
            Exit::Code(code) => ExitStatus::from_raw((code & 0xff) << 8),
            Exit::Signal(signal) => ExitStatus::from_raw(signal & 0x7f),
        };
        Ok(Output { status, stdout, stderr })
    }
}

impl kelson_net::CommandRunner for ReaperRunner {
    fn output(&self, cmd: Command) -> io::Result<Output> {
        ReaperRunner::output(self, cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test process is not PID 1, so a thread plays the main loop's
    /// part and reaps on a short interval.
    fn reaping(reaper: Arc<Reaper>) -> Arc<std::sync::atomic::AtomicBool> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                reaper.reap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        stop
    }

    #[test]
    fn output_and_exit_status_come_back_through_the_reaper() {
        let reaper = Arc::new(Reaper::new());
        let stop = reaping(reaper.clone());
        let runner = ReaperRunner::new(reaper);
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = runner.output(cmd).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "kill -9 $$"]);
        assert_eq!(runner.output(cmd).unwrap().status.signal(), Some(9));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
