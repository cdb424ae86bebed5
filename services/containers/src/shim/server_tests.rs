//! The shim's protocol against a fake backend: no root, no containers. A
//! real server on a socket in a temporary directory, driven by plain
//! clients that speak the wire protocol line by line.

use super::server::{Backend, Reaped, Server, Started};
use crate::protocol::{ContainerState, Envelope, ExitEvent, Request, ShimMessage};
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct FakeState {
    calls: Vec<String>,
    started: i32,
    /// Exits the next reap returns.
    reaped: VecDeque<Reaped>,
    /// Cgroups that saw an OOM kill.
    oom: BTreeSet<PathBuf>,
}

/// A backend that records calls; a bundle named `broken` fails to create.
#[derive(Clone, Default)]
struct FakeBackend(Arc<Mutex<FakeState>>);

#[derive(Debug, thiserror::Error)]
#[error("container {id:?}: creating")]
struct FakeError {
    id: String,
    #[source]
    source: io::Error,
}

impl Backend for FakeBackend {
    type Error = FakeError;

    fn create(&mut self, id: &str, bundle: &Path, _: Option<&Path>, _: Option<&Path>) -> Result<Started, FakeError> {
        let mut state = self.0.lock().unwrap();
        state.calls.push(format!("create {id}"));
        if bundle.ends_with("broken") {
            return Err(FakeError { id: id.into(), source: io::Error::other("boom") });
        }
        state.started += 1;
        Ok(Started { pid: 100 + state.started, cgroup: Some(Path::new("/cg").join(id)) })
    }
    fn kill(&mut self, id: &str, pid: i32, signal: i32) -> Result<(), FakeError> {
        self.0.lock().unwrap().calls.push(format!("kill {id} {pid} {signal}"));
        Ok(())
    }
    fn delete(&mut self, id: &str) -> Result<(), FakeError> {
        self.0.lock().unwrap().calls.push(format!("delete {id}"));
        Ok(())
    }
    fn reap(&mut self) -> Vec<Reaped> {
        self.0.lock().unwrap().reaped.drain(..).collect()
    }
    fn oom_killed(&self, cgroup: &Path) -> bool {
        self.0.lock().unwrap().oom.contains(cgroup)
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    backend: FakeBackend,
    /// The write end of the server's wake-up pipe (SIGCHLD's stand-in).
    wake: OwnedFd,
    stop: Arc<AtomicBool>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shim.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (read, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let backend = FakeBackend::default();
        let mut server = Server::new(listener, read, backend.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // Ends within a tick of the rig's drop.
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                server.turn().unwrap();
            }
        });
        Rig { _dir: dir, socket, backend, wake, stop }
    }

    /// A client, and the containers its hello listed.
    fn connect(&self) -> (Conn, Vec<ContainerState>) {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut conn = Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            seq: 0,
            exits: VecDeque::new(),
        };
        match conn.read() {
            ShimMessage::Hello { containers } => (conn, containers),
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    /// The process `pid` ends, as the kernel would report it.
    fn exit(&self, pid: i32, code: Option<i32>, signal: Option<i32>) {
        self.backend.0.lock().unwrap().reaped.push_back(Reaped { pid, code, signal });
        nix::unistd::write(&self.wake, &[1]).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        self.backend.0.lock().unwrap().calls.clone()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    seq: u64,
    /// Exits that came while waiting for a reply.
    exits: VecDeque<ExitEvent>,
}

impl Conn {
    fn read(&mut self) -> ShimMessage {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a message within 5 s");
        serde_json::from_str(&line).unwrap()
    }

    fn call(&mut self, request: Request) -> Result<Vec<ContainerState>, String> {
        self.seq += 1;
        let mut line = serde_json::to_vec(&Envelope { seq: self.seq, request }).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).unwrap();
        loop {
            match self.read() {
                ShimMessage::Reply { seq, result } if seq == self.seq => return result,
                ShimMessage::Exit(exit) => self.exits.push_back(exit),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn next_exit(&mut self) -> ExitEvent {
        if let Some(exit) = self.exits.pop_front() {
            return exit;
        }
        match self.read() {
            ShimMessage::Exit(exit) => exit,
            other => panic!("expected an exit, got {other:?}"),
        }
    }
}

fn create(id: &str, bundle: &str) -> Request {
    Request::Create { id: id.into(), bundle: bundle.into(), stdout: None, stderr: None }
}

#[test]
fn a_container_is_created_signalled_reported_to_every_client_and_deleted() {
    let rig = Rig::new();
    let (mut a, hello) = rig.connect();
    assert!(hello.is_empty());
    let (mut b, _) = rig.connect();
    let created = a.call(create("c1", "/b/c1")).unwrap();
    assert_eq!(created, [ContainerState { id: "c1".into(), bundle: "/b/c1".into(), pid: 101, exit: None }]);
    assert_eq!(b.call(Request::List).unwrap(), created, "every client sees every container");

    a.call(Request::Kill { id: "c1".into(), signal: 9 }).unwrap();
    rig.backend.0.lock().unwrap().oom.insert("/cg/c1".into());
    rig.exit(101, None, Some(9));
    let exit = ExitEvent { id: "c1".into(), pid: 101, code: None, signal: Some(9), oom_killed: true };
    assert_eq!(a.next_exit(), exit);
    assert_eq!(b.next_exit(), exit, "the exit goes to every client");

    a.call(Request::Delete { id: "c1".into() }).unwrap();
    assert_eq!(a.call(Request::State { id: "c1".into() }), Err("no container \"c1\"".into()));
    assert_eq!(rig.calls(), ["create c1", "kill c1 101 9", "delete c1"]);
}

#[test]
fn requests_the_containers_state_forbids_are_refused_before_the_backend() {
    let rig = Rig::new();
    let (mut a, _) = rig.connect();
    a.call(create("c1", "/b/c1")).unwrap();
    assert_eq!(a.call(create("c1", "/b/c1")), Err("container \"c1\" exists (delete it first)".into()));
    assert_eq!(
        a.call(Request::Delete { id: "c1".into() }),
        Err("container \"c1\" is still running (kill it first)".into())
    );
    assert_eq!(a.call(Request::Kill { id: "x".into(), signal: 15 }), Err("no container \"x\"".into()));
    rig.exit(101, Some(0), None);
    assert_eq!(a.next_exit().code, Some(0));
    assert_eq!(
        a.call(Request::Kill { id: "c1".into(), signal: 15 }),
        Err("container \"c1\" has already exited".into())
    );
    assert_eq!(rig.calls(), ["create c1"], "no refused request reached the backend");
}

#[test]
fn a_backend_failure_is_refused_with_its_cause_said_once() {
    let rig = Rig::new();
    let (mut a, _) = rig.connect();
    assert_eq!(a.call(create("bad", "/b/broken")), Err("container \"bad\": creating: boom".into()));
    assert_eq!(a.call(Request::List), Ok(Vec::new()), "a failed create leaves no container");
}

#[test]
fn containers_outlive_a_client_and_a_new_one_is_told_every_state_exits_included() {
    let rig = Rig::new();
    let (mut a, _) = rig.connect();
    a.call(create("c1", "/b/c1")).unwrap();
    a.call(create("c2", "/b/c2")).unwrap();
    drop(a);
    rig.exit(101, Some(3), None);
    // A reap the server did with no client connected is in the next hello.
    let mut hello = Vec::new();
    for _ in 0..100 {
        hello = rig.connect().1;
        if hello.iter().any(|c| c.exit.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hello.len(), 2, "{hello:?}");
    assert_eq!(hello[0].exit.as_ref().and_then(|e| e.code), Some(3));
    assert_eq!(hello[1].exit, None, "c2 still runs");
}

#[test]
fn a_malformed_line_is_answered_with_sequence_zero_and_the_client_stays_connected() {
    let rig = Rig::new();
    let (mut a, _) = rig.connect();
    a.writer.write_all(b"not json\n").unwrap();
    match a.read() {
        ShimMessage::Reply { seq: 0, result: Err(reason) } => {
            assert!(reason.starts_with("malformed request: "), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(a.call(Request::List), Ok(Vec::new()));
}

#[test]
fn an_orphan_reaped_by_the_shim_is_not_reported() {
    let rig = Rig::new();
    let (mut a, _) = rig.connect();
    a.call(create("c1", "/b/c1")).unwrap();
    rig.exit(4242, Some(0), None);
    rig.exit(101, Some(1), None);
    assert_eq!(a.next_exit().id, "c1", "the first exit reported is the container's");
    assert!(a.exits.is_empty());
}
