//! PID 1's side of the shim: how to start it and an async client for its
//! socket. Starting is left to the caller as a `std::process::Command`,
//! because PID 1 spawns every child through its own reaper.

use crate::protocol::{ContainerState, Envelope, ExitEvent, Request, ShimMessage};
use crate::shim::{ShimOptions, SUBCOMMAND};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Why talking to the shim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// connecting to the shim at {socket}
    #[error("connecting to the shim at {socket}")]
    Connect { socket: PathBuf, source: io::Error },
    /// talking to the shim at {socket}
    #[error("talking to the shim at {socket}")]
    Io { socket: PathBuf, source: io::Error },
    /// the shim at {socket} closed the connection
    #[error("the shim at {socket} closed the connection")]
    Closed { socket: PathBuf },
    /// the shim at {socket} sent something unreadable ({line:?})
    #[error("the shim at {socket} sent something unreadable ({line:?})")]
    Protocol { socket: PathBuf, line: String, source: serde_json::Error },
    /// the shim refused {request}: {reason}
    #[error("the shim refused {request}: {reason}")]
    Refused { request: String, reason: String },
}

impl ClientError {
    /// Whether connecting again may succeed: no shim listening yet, or a
    /// connection lost before the shim said hello.
    fn is_transient(&self) -> bool {
        use io::ErrorKind::{ConnectionRefused, ConnectionReset, NotFound};
        match self {
            ClientError::Connect { source, .. } => {
                matches!(source.kind(), NotFound | ConnectionRefused | ConnectionReset)
            }
            ClientError::Io { source, .. } => source.kind() == ConnectionReset,
            ClientError::Closed { .. } => true,
            ClientError::Protocol { .. } | ClientError::Refused { .. } => false,
        }
    }
}

/// How to start a shim: `program [prefix_args…] shim --socket … --state-dir …`.
/// In production `program` is `/sbin/init` (PID 1's own binary) and
/// `prefix_args` is empty.
#[derive(Debug, Clone)]
pub struct ShimCommand {
    pub program: PathBuf,
    /// Arguments before the subcommand (tests use them to start the shim
    /// through a wrapper such as `unshare`).
    pub prefix_args: Vec<OsString>,
    /// Whether to put the `shim` subcommand before the options: true for
    /// PID 1's binary, false for a program that is only the shim.
    pub with_subcommand: bool,
    pub options: ShimOptions,
}

impl ShimCommand {
    /// PID 1's binary re-executed as the shim.
    pub fn init(program: impl Into<PathBuf>, options: ShimOptions) -> Self {
        Self { program: program.into(), prefix_args: Vec::new(), with_subcommand: true, options }
    }

    /// The command to spawn (by exec, through the caller's reaper). stdin is
    /// /dev/null; stdout and stderr are the caller's to set (the shim logs to
    /// stderr).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix_args);
        if self.with_subcommand {
            command.arg(SUBCOMMAND);
        }
        command.args(self.options.to_args()).stdin(Stdio::null());
        command
    }
}

/// A connection to the shim. Requests are answered in order; exit events
/// that arrive meanwhile are kept for [`ShimClient::next_event`].
#[derive(Debug)]
pub struct ShimClient {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    seq: u64,
    events: VecDeque<ExitEvent>,
    /// A line being read; kept across calls so that a cancelled
    /// [`ShimClient::next_event`] loses nothing.
    line: String,
}

impl ShimClient {
    /// Connects to the shim at `socket`, retrying until `timeout` while it
    /// starts, and returns the client and every container the shim has
    /// (including any that exited while no client was connected).
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<(Self, Vec<ContainerState>), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match Self::connect_once(socket).await {
                Ok(connected) => return Ok(connected),
                // No shim yet, or the socket of one that just died: a
                // connection it accepted can be reset before the hello (a
                // container process not yet exec'd may still hold the
                // listening socket). A new shim may be coming up.
                Err(e) if tokio::time::Instant::now() < deadline && e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_once(socket: &Path) -> Result<(Self, Vec<ContainerState>), ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect { socket: socket.to_owned(), source })?;
        let (read, write) = stream.into_split();
        let mut client = Self {
            socket: socket.to_owned(),
            reader: BufReader::new(read),
            writer: write,
            seq: 0,
            events: VecDeque::new(),
            line: String::new(),
        };
        match client.read_message().await? {
            ShimMessage::Hello { containers } => Ok((client, containers)),
            other => Err(ClientError::Refused {
                request: "the connection".into(),
                reason: format!("expected hello, got {other:?}"),
            }),
        }
    }

    /// Creates and starts a container from `bundle`; its output is appended
    /// to `stdout` and `stderr` (or discarded).
    pub async fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        stdout: Option<&Path>,
        stderr: Option<&Path>,
    ) -> Result<ContainerState, ClientError> {
        let request = Request::Create {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            stdout: stdout.map(Path::to_owned),
            stderr: stderr.map(Path::to_owned),
        };
        let mut states = self.call(request).await?;
        states.pop().ok_or_else(|| ClientError::Refused {
            request: format!("create {id}"),
            reason: "no state in the reply".into(),
        })
    }

    /// Sends `signal` to container `id`'s process.
    pub async fn kill(&mut self, id: &str, signal: i32) -> Result<(), ClientError> {
        self.call(Request::Kill { id: id.to_owned(), signal }).await.map(drop)
    }

    /// Removes exited container `id` (its cgroup and runtime state).
    pub async fn delete(&mut self, id: &str) -> Result<(), ClientError> {
        self.call(Request::Delete { id: id.to_owned() }).await.map(drop)
    }

    pub async fn state(&mut self, id: &str) -> Result<ContainerState, ClientError> {
        let mut states = self.call(Request::State { id: id.to_owned() }).await?;
        states.pop().ok_or_else(|| ClientError::Refused {
            request: format!("state {id}"),
            reason: "no state in the reply".into(),
        })
    }

    pub async fn list(&mut self) -> Result<Vec<ContainerState>, ClientError> {
        self.call(Request::List).await
    }

    /// The next container exit, waiting for one if none is queued. Safe to
    /// cancel (e.g. under `tokio::time::timeout`).
    pub async fn next_event(&mut self) -> Result<ExitEvent, ClientError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            match self.read_message().await? {
                ShimMessage::Exit(event) => self.events.push_back(event),
                other => tracing::warn!(?other, "unexpected message from the shim outside a request"),
            }
        }
    }

    async fn call(&mut self, request: Request) -> Result<Vec<ContainerState>, ClientError> {
        self.seq += 1;
        let seq = self.seq;
        let describe = format!("{request:?}");
        let mut line = serde_json::to_vec(&Envelope { seq, request })
            .map_err(|e| ClientError::Io { socket: self.socket.clone(), source: io::Error::other(e) })?;
        line.push(b'\n');
        self.writer.write_all(&line).await.map_err(|source| ClientError::Io { socket: self.socket.clone(), source })?;
        loop {
            match self.read_message().await? {
                ShimMessage::Reply { seq: got, result } if got == seq => {
                    return result.map_err(|reason| ClientError::Refused { request: describe, reason });
                }
                ShimMessage::Exit(event) => self.events.push_back(event),
                other => tracing::warn!(?other, "unexpected message from the shim while waiting for reply {seq}"),
            }
        }
    }

    async fn read_message(&mut self) -> Result<ShimMessage, ClientError> {
        let n = self
            .reader
            .read_line(&mut self.line)
            .await
            .map_err(|source| ClientError::Io { socket: self.socket.clone(), source })?;
        if n == 0 {
            return Err(ClientError::Closed { socket: self.socket.clone() });
        }
        let line = std::mem::take(&mut self.line);
        serde_json::from_str(&line).map_err(|source| ClientError::Protocol {
            socket: self.socket.clone(),
            line,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_re_executes_itself_with_the_shim_subcommand() {
        let options = ShimOptions {
            socket: "/run/kelson/shim.sock".into(),
            state_dir: "/run/kelson/containers".into(),
            no_pivot: true,
        };
        let command = ShimCommand::init("/sbin/init", options).command();
        assert_eq!(command.get_program(), "/sbin/init");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(
            args,
            ["shim", "--socket", "/run/kelson/shim.sock", "--state-dir", "/run/kelson/containers", "--no-pivot"]
        );
    }

    #[tokio::test]
    async fn connecting_to_no_shim_fails_after_the_timeout_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = ShimClient::connect(&socket, Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(&err, ClientError::Connect { socket: s, .. } if s == &socket), "{err}");
    }
}
