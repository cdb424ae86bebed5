//! Running programs (iptables). PID 1 reaps every child itself with
//! `waitpid(-1)`, so this crate never calls `Command::output` or `spawn`: it
//! hands the command to a [`CommandRunner`], and PID 1 supplies one backed by
//! its reaper. [`StdRunner`] is for tests and tools that own their children.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output};
use std::sync::{Arc, Mutex};

pub trait CommandRunner: Send + Sync {
    /// Runs `cmd` to completion with stdout and stderr captured, like
    /// [`Command::output`].
    fn output(&self, cmd: Command) -> io::Result<Output>;
}

/// `Command::output`, for processes that are not PID 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdRunner;

impl CommandRunner for StdRunner {
    fn output(&self, mut cmd: Command) -> io::Result<Output> {
        cmd.output()
    }
}

impl<R: CommandRunner + ?Sized> CommandRunner for Arc<R> {
    fn output(&self, cmd: Command) -> io::Result<Output> {
        (**self).output(cmd)
    }
}

/// The command line as one string, for messages and fakes.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An [`Output`] with this exit code and text, for fakes.
pub fn fake_output(code: i32, stdout: &str, stderr: &str) -> Output {
    Output { status: ExitStatus::from_raw(code << 8), stdout: stdout.into(), stderr: stderr.into() }
}

type Respond = dyn Fn(&[String]) -> Output + Send + Sync;

/// Records each command line (program and arguments) and answers with a
/// function of them.
#[derive(Clone)]
pub struct FakeRunner {
    calls: Arc<Mutex<Vec<String>>>,
    respond: Arc<Respond>,
}

impl FakeRunner {
    pub fn new(respond: impl Fn(&[String]) -> Output + Send + Sync + 'static) -> Self {
        FakeRunner { calls: Arc::default(), respond: Arc::new(respond) }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl CommandRunner for FakeRunner {
    fn output(&self, cmd: Command) -> io::Result<Output> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(command_line(&cmd));
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        Ok((self.respond)(&argv))
    }
}
