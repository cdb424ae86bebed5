//! The shim's protocol: clients on a unix socket, requests answered with
//! replies, every exit broadcast to every client, a newcomer greeted with
//! every container's state. What creates, signals, deletes and reaps
//! containers is a [`Backend`] ([`super::libcontainer::Libcontainer`] for
//! real), so this is tested without root against a fake one.

use crate::error_chain;
use crate::protocol::{ContainerState, Envelope, ExitEvent, Request, ShimMessage};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest the shim waits on a client that does not read its messages
/// before dropping it: a stuck client must not stop reaping.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Reaping also happens on this tick, in case a SIGCHLD wake-up was missed.
const TICK_MS: u16 = 1000;
const MAX_LINE: usize = 1 << 20;

/// A container the backend has started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Started {
    pub pid: i32,
    /// Its cgroup directory, for OOM kills.
    pub cgroup: Option<PathBuf>,
}

/// A child the backend has reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    pub pid: i32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What runs containers for the shim.
pub(crate) trait Backend {
    type Error: std::error::Error + 'static;
    /// Creates and starts container `id` from `bundle`, its output going
    /// to `stdout`/`stderr` (/dev/null when `None`).
    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        stdout: Option<&Path>,
        stderr: Option<&Path>,
    ) -> Result<Started, Self::Error>;
    /// Sends `signal` to the container's process `pid`.
    fn kill(&mut self, id: &str, pid: i32, signal: i32) -> Result<(), Self::Error>;
    /// Removes an exited container (its cgroup and runtime state).
    fn delete(&mut self, id: &str) -> Result<(), Self::Error>;
    /// Children that have exited since the last call; never blocks.
    fn reap(&mut self) -> Vec<Reaped>;
    /// Whether the cgroup saw an OOM kill.
    fn oom_killed(&self, cgroup: &Path) -> bool;
}

/// Why a request was refused; the reply carries its whole chain.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal<E: std::error::Error + 'static> {
    #[error("container {0:?} exists (delete it first)")]
    Exists(String),
    #[error("no container {0:?}")]
    Unknown(String),
    #[error("container {0:?} has already exited")]
    Exited(String),
    #[error("container {0:?} is still running (kill it first)")]
    Running(String),
    #[error(transparent)]
    Backend(E),
}

struct Entry {
    state: ContainerState,
    cgroup: Option<PathBuf>,
}

struct Client {
    id: u64,
    stream: UnixStream,
    buffer: Vec<u8>,
}

pub(crate) struct Server<B> {
    listener: UnixListener,
    /// Readable when a child may have exited (SIGCHLD's handler writes).
    wake: OwnedFd,
    backend: B,
    /// Every connected client gets every exit; replies go to the asker.
    clients: Vec<Client>,
    next_client: u64,
    containers: BTreeMap<String, Entry>,
}

impl<B: Backend> Server<B> {
    /// Serves on `listener` (non-blocking), woken by `wake` for reaping.
    pub fn new(listener: UnixListener, wake: OwnedFd, backend: B) -> Self {
        Server { listener, wake, backend, clients: Vec::new(), next_client: 0, containers: BTreeMap::new() }
    }

    /// One turn of the loop: wait for a connection, a request or a child's
    /// exit, and handle what came.
    pub fn turn(&mut self) -> Result<(), Errno> {
        let (listener_ready, ready_clients) = {
            let mut fds = vec![
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(self.clients.iter().map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)));
            match poll(&mut fds, PollTimeout::from(TICK_MS)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => return Err(error),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let clients: Vec<u64> =
                fds[2..].iter().zip(&self.clients).filter(|(fd, _)| ready(fd)).map(|(_, c)| c.id).collect();
            (ready(&fds[0]), clients)
        };
        // Whatever woke us, reaping below covers it: the pipe only needs emptying.
        let mut drain = [0u8; 64];
        while nix::unistd::read(&self.wake, &mut drain).is_ok_and(|n| n > 0) {}
        self.reap();
        if listener_ready {
            self.accept();
        }
        for id in ready_clients {
            self.serve_client(id);
        }
        // Requests may have started and lost children; reap what they left.
        self.reap();
        Ok(())
    }

    fn accept(&mut self) {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) => {
                tracing::warn!(%error, "accepting a client");
                return;
            }
        };
        if let Err(error) = stream.set_nonblocking(true) {
            tracing::warn!(%error, "setting a client non-blocking");
            return;
        }
        self.next_client += 1;
        let id = self.next_client;
        self.clients.push(Client { id, stream, buffer: Vec::new() });
        tracing::info!(client = id, connected = self.clients.len(), "client connected");
        let hello = ShimMessage::Hello { containers: self.containers.values().map(|e| e.state.clone()).collect() };
        self.send(id, &hello);
    }

    fn serve_client(&mut self, id: u64) {
        let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else { return };
        let mut chunk = [0u8; 8192];
        let mut closed = false;
        loop {
            match client.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => client.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(client = id, %error, "reading from a client");
                    closed = true;
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = client.buffer.iter().position(|b| *b == b'\n') {
            lines.push(client.buffer.drain(..=end).collect::<Vec<u8>>());
        }
        if client.buffer.len() > MAX_LINE {
            tracing::warn!(
                client = id,
                bytes = client.buffer.len(),
                "a client sent an over-long line; disconnecting it"
            );
            closed = true;
        }
        for line in lines {
            let reply = match serde_json::from_slice::<Envelope>(&line) {
                Ok(envelope) => ShimMessage::Reply {
                    seq: envelope.seq,
                    result: self.handle(envelope.request).map_err(|refusal| error_chain(&refusal)),
                },
                Err(error) => {
                    tracing::warn!(client = id, %error, "malformed request");
                    ShimMessage::Reply { seq: 0, result: Err(format!("malformed request: {error}")) }
                }
            };
            self.send(id, &reply);
        }
        if closed {
            self.drop_client(id);
        }
    }

    fn drop_client(&mut self, id: u64) {
        let before = self.clients.len();
        self.clients.retain(|c| c.id != id);
        if self.clients.len() < before {
            tracing::info!(client = id, connected = self.clients.len(), "client disconnected; containers keep running");
        }
    }

    /// Sends `message` to every connected client.
    fn broadcast(&mut self, message: &ShimMessage) {
        let ids: Vec<u64> = self.clients.iter().map(|c| c.id).collect();
        for id in ids {
            self.send(id, message);
        }
    }

    /// Sends `message` to client `id`; a client that fails or stalls is
    /// dropped (its state is offered again when it reconnects).
    fn send(&mut self, id: u64, message: &ShimMessage) {
        let Some(client) = self.clients.iter_mut().find(|c| c.id == id) else { return };
        let mut line = match serde_json::to_vec(message) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "serialising a message");
                return;
            }
        };
        line.push(b'\n');
        let deadline = Instant::now() + SEND_TIMEOUT;
        let mut written = 0;
        while written < line.len() {
            match client.stream.write(&line[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    let mut fds = [PollFd::new(client.stream.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(error) => {
                    tracing::warn!(client = id, %error, "writing to a client; dropping it");
                    self.drop_client(id);
                    return;
                }
            }
        }
    }

    fn handle(&mut self, request: Request) -> Result<Vec<ContainerState>, Refusal<B::Error>> {
        match request {
            Request::Create { id, bundle, stdout, stderr } => {
                self.create(&id, &bundle, stdout.as_deref(), stderr.as_deref()).map(|s| vec![s])
            }
            Request::Kill { id, signal } => self.kill(&id, signal).map(|()| Vec::new()),
            Request::Delete { id } => self.delete(&id).map(|()| Vec::new()),
            Request::State { id } => {
                self.containers.get(&id).map(|e| vec![e.state.clone()]).ok_or(Refusal::Unknown(id))
            }
            Request::List => Ok(self.containers.values().map(|e| e.state.clone()).collect()),
        }
    }

    fn create(
        &mut self,
        id: &str,
        bundle: &Path,
        stdout: Option<&Path>,
        stderr: Option<&Path>,
    ) -> Result<ContainerState, Refusal<B::Error>> {
        if self.containers.contains_key(id) {
            return Err(Refusal::Exists(id.to_owned()));
        }
        let started = self.backend.create(id, bundle, stdout, stderr).map_err(Refusal::Backend)?;
        tracing::info!(id, pid = started.pid, bundle = %bundle.display(), "container started");
        let state = ContainerState { id: id.to_owned(), bundle: bundle.to_owned(), pid: started.pid, exit: None };
        self.containers.insert(id.to_owned(), Entry { state: state.clone(), cgroup: started.cgroup });
        Ok(state)
    }

    fn kill(&mut self, id: &str, signal: i32) -> Result<(), Refusal<B::Error>> {
        let entry = self.containers.get(id).ok_or_else(|| Refusal::Unknown(id.to_owned()))?;
        if entry.state.exit.is_some() {
            return Err(Refusal::Exited(id.to_owned()));
        }
        self.backend.kill(id, entry.state.pid, signal).map_err(Refusal::Backend)
    }

    fn delete(&mut self, id: &str) -> Result<(), Refusal<B::Error>> {
        let entry = self.containers.get(id).ok_or_else(|| Refusal::Unknown(id.to_owned()))?;
        if entry.state.exit.is_none() {
            return Err(Refusal::Running(id.to_owned()));
        }
        self.backend.delete(id).map_err(Refusal::Backend)?;
        self.containers.remove(id);
        tracing::info!(id, "container deleted");
        Ok(())
    }

    fn reap(&mut self) {
        for Reaped { pid, code, signal } in self.backend.reap() {
            let Some(entry) = self.containers.values_mut().find(|e| e.state.pid == pid && e.state.exit.is_none())
            else {
                // An orphan reparented to us (a container's stray descendant): reaped, nothing to report.
                continue;
            };
            let oom_killed = entry.cgroup.as_deref().is_some_and(|cgroup| self.backend.oom_killed(cgroup));
            let event = ExitEvent { id: entry.state.id.clone(), pid, code, signal, oom_killed };
            tracing::info!(id = %event.id, pid, ?code, ?signal, oom_killed, "container exited");
            entry.state.exit = Some(event.clone());
            self.broadcast(&ShimMessage::Exit(event));
        }
    }
}
