//! The shim: a separate, single-threaded process that owns a node's
//! containers. libcontainer forks and runs Rust code after `clone`, which is
//! unsafe in a multi-threaded process such as PID 1, so PID 1 starts this by
//! exec (re-executing `/sbin/init shim …`) and talks to it over a unix socket
//! with [`crate::protocol`].
//!
//! The shim is a child subreaper: each container's process becomes its child
//! once libcontainer's intermediate process exits, so the shim reaps it and
//! reports the exit (code or signal, and whether its cgroup saw an OOM kill).
//! It keeps running when clients go away; any number may be connected,
//! each gets every exit, and one that connects gets every container's
//! state first, exits included.

use crate::protocol::{ContainerState, Envelope, ExitEvent, Request, ShimMessage};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The subcommand PID 1 re-executes itself with: `/sbin/init shim ARGS…`.
pub const SUBCOMMAND: &str = "shim";
/// Where cgroup v2 is mounted; libcontainer assumes the same.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The longest the shim waits on a client that does not read its messages
/// before dropping it: a stuck client must not stop reaping.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Reaping also happens on this tick, in case a SIGCHLD wake-up was missed.
const TICK_MS: u16 = 1000;
const MAX_LINE: usize = 1 << 20;

/// How the shim is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimOptions {
    /// The unix socket to listen on.
    pub socket: PathBuf,
    /// libcontainer's state root (one directory per container), e.g.
    /// `/run/kelson/containers`.
    pub state_dir: PathBuf,
    /// Set up container roots without pivot_root, as an initramfs root needs.
    pub no_pivot: bool,
}

/// Why the shim could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// shim arguments: {0}
    #[error("shim arguments: {0}")]
    Usage(String),
    /// {action} {path}: {source}
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// {action}: {source}
    #[error("{action}: {source}")]
    Sys { action: &'static str, source: Errno },
    /// another shim is serving on {socket}; connect to it instead
    #[error("another shim is serving on {socket}; connect to it instead")]
    Busy { socket: PathBuf },
}

impl ShimOptions {
    /// The arguments that [`ShimOptions::parse`] reads back: what follows the
    /// subcommand on the shim's command line.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args =
            vec!["--socket".into(), self.socket.clone().into(), "--state-dir".into(), self.state_dir.clone().into()];
        if self.no_pivot {
            args.push("--no-pivot".into());
        }
        args
    }

    /// Reads `--socket PATH --state-dir PATH [--no-pivot]`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, ShimError> {
        let (mut socket, mut state_dir, mut no_pivot) = (None, None, false);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--socket") => socket = args.next().map(PathBuf::from),
                Some("--state-dir") => state_dir = args.next().map(PathBuf::from),
                Some("--no-pivot") => no_pivot = true,
                _ => return Err(ShimError::Usage(format!("unknown argument {arg:?}"))),
            }
        }
        Ok(Self {
            socket: socket.ok_or_else(|| ShimError::Usage("--socket PATH is required".into()))?,
            state_dir: state_dir.ok_or_else(|| ShimError::Usage("--state-dir PATH is required".into()))?,
            no_pivot,
        })
    }
}

/// The shim's entry point, for PID 1's binary to call when started as
/// `/sbin/init shim ARGS…` (with the arguments after `shim`) — before it
/// builds any async runtime or starts any thread. Returns only on a fatal
/// error.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // libcontainer says INFO on every cgroup it opens and WARN for each
    // controller it does not implement, on every create; what goes wrong
    // comes back as its errors, which the shim logs and replies with.
    let quiet = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("libcontainer", tracing::Level::ERROR)
        .with_target("libcgroups", tracing::Level::ERROR);
    let layer = tracing_subscriber::fmt::layer().with_writer(io::stderr).with_target(false).with_filter(quiet);
    let _ = tracing_subscriber::registry().with(layer).try_init();
    match ShimOptions::parse(args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("kelson shim: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `options.socket` until a fatal error.
pub fn run(options: ShimOptions) -> Result<(), ShimError> {
    let mut shim = Shim::start(options)?;
    loop {
        shim.turn()?;
    }
}

/// Where SIGCHLD's handler writes to wake the loop.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; errno is saved and restored
        // so the interrupted code never sees the handler's.
        unsafe {
            let errno = *libc::__errno_location();
            let byte = 1u8;
            libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

struct Entry {
    state: ContainerState,
    /// The container's cgroup directory, for `memory.events`.
    cgroup: Option<PathBuf>,
}

struct Shim {
    options: ShimOptions,
    listener: UnixListener,
    wake_read: OwnedFd,
    _wake_write: OwnedFd,
    /// Every connected client gets every exit; replies go to the asker.
    clients: Vec<Client>,
    next_client: u64,
    containers: BTreeMap<String, Entry>,
}

struct Client {
    id: u64,
    stream: UnixStream,
    buffer: Vec<u8>,
}

impl Shim {
    fn start(options: ShimOptions) -> Result<Self, ShimError> {
        let sys = |action| move |source| ShimError::Sys { action, source };
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| ShimError::Io { action, path, source }
        };
        // A session of its own: signals for PID 1's process group are not the shim's.
        let _ = nix::unistd::setsid();
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(ShimError::Sys { action: "becoming a child subreaper", source: Errno::last() });
        }
        // A client that vanishes mid-write must give EPIPE, not kill the shim.
        // SAFETY: SIG_IGN installs no code.
        unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.map_err(sys("ignoring SIGPIPE"))?;
        let (wake_read, wake_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(sys("creating the wake-up pipe"))?;
        WAKE_FD.store(wake_write.as_raw_fd(), Ordering::Relaxed);
        let action = signal::SigAction::new(
            SigHandler::Handler(on_sigchld),
            signal::SaFlags::SA_RESTART | signal::SaFlags::SA_NOCLDSTOP,
            signal::SigSet::empty(),
        );
        // SAFETY: the handler only calls write(2) on a descriptor that lives as long as the shim.
        unsafe { signal::sigaction(Signal::SIGCHLD, &action) }.map_err(sys("installing the SIGCHLD handler"))?;
        // The signal mask survives exec: a parent that blocked SIGCHLD would
        // leave the shim reaping only on its tick.
        let mut chld = signal::SigSet::empty();
        chld.add(Signal::SIGCHLD);
        signal::sigprocmask(signal::SigmaskHow::SIG_UNBLOCK, Some(&chld), None).map_err(sys("unblocking SIGCHLD"))?;

        fs::create_dir_all(&options.state_dir).map_err(io_err("creating the state directory", &options.state_dir))?;
        if let Some(parent) = options.socket.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating the socket's directory", parent))?;
        }
        // A socket that answers belongs to a shim that still runs and owns
        // containers: taking its path over would orphan them from any client.
        if UnixStream::connect(&options.socket).is_ok() {
            return Err(ShimError::Busy { socket: options.socket.clone() });
        }
        match fs::remove_file(&options.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ShimError::Io { action: "removing a stale socket", path: options.socket.clone(), source })
            }
        }
        let listener = UnixListener::bind(&options.socket).map_err(io_err("listening on", &options.socket))?;
        fs::set_permissions(&options.socket, fs::Permissions::from_mode(0o600))
            .map_err(io_err("restricting", &options.socket))?;
        listener.set_nonblocking(true).map_err(io_err("setting non-blocking", &options.socket))?;
        remove_leftovers(&options.state_dir);
        raise_open_files_limit();
        tracing::info!(socket = %options.socket.display(), state = %options.state_dir.display(), no_pivot = options.no_pivot, "shim listening");
        Ok(Self {
            options,
            listener,
            wake_read,
            _wake_write: wake_write,
            clients: Vec::new(),
            next_client: 0,
            containers: BTreeMap::new(),
        })
    }

    /// One turn of the loop: wait for a connection, a request or a child's
    /// exit, and handle what came.
    fn turn(&mut self) -> Result<(), ShimError> {
        let (listener_ready, ready_clients) = {
            let mut fds = vec![
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake_read.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(self.clients.iter().map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)));
            match poll(&mut fds, PollTimeout::from(TICK_MS)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(source) => return Err(ShimError::Sys { action: "waiting for work", source }),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let clients: Vec<u64> =
                fds[2..].iter().zip(&self.clients).filter(|(fd, _)| ready(fd)).map(|(_, c)| c.id).collect();
            (ready(&fds[0]), clients)
        };
        // Whatever woke us, reaping below covers it: the pipe only needs emptying.
        let mut drain = [0u8; 64];
        while nix::unistd::read(&self.wake_read, &mut drain).is_ok_and(|n| n > 0) {}
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
                Ok(envelope) => ShimMessage::Reply { seq: envelope.seq, result: self.handle(envelope.request) },
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

    fn handle(&mut self, request: Request) -> Result<Vec<ContainerState>, String> {
        match request {
            Request::Create { id, bundle, stdout, stderr } => {
                self.create(&id, &bundle, stdout.as_deref(), stderr.as_deref()).map(|s| vec![s])
            }
            Request::Kill { id, signal } => self.kill(&id, signal).map(|()| Vec::new()),
            Request::Delete { id } => self.delete(&id).map(|()| Vec::new()),
            Request::State { id } => {
                self.containers.get(&id).map(|e| vec![e.state.clone()]).ok_or_else(|| format!("no container {id:?}"))
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
    ) -> Result<ContainerState, String> {
        if self.containers.contains_key(id) {
            return Err(format!("container {id:?} exists (delete it first)"));
        }
        let config_path = bundle.join("config.json");
        let spec = oci_spec::runtime::Spec::load(&config_path)
            .map_err(|e| format!("container {id:?}: reading {}: {e}", config_path.display()))?;
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| Path::new(CGROUP_ROOT).join(p.strip_prefix("/").unwrap_or(&p)));
        let stdin = File::open("/dev/null").map_err(|e| format!("container {id:?}: opening /dev/null: {e}"))?;
        let stdout = output(stdout).map_err(|e| format!("container {id:?}: {e}"))?;
        let stderr = output(stderr).map_err(|e| format!("container {id:?}: {e}"))?;
        let what = |step: &str, e: libcontainer::error::LibcontainerError| {
            format!("container {id:?}: {step} from bundle {}: {e}", bundle.display())
        };
        let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.options.state_dir)
            .map_err(|e| what("using the state directory", e))?
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .validate_id()
            .map_err(|e| what("checking the id", e))?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(self.options.no_pivot)
            .build()
            .map_err(|e| what("creating", e))?;
        if let Err(e) = container.start() {
            let message = what("starting", e);
            if let Err(cleanup) = container.delete(true) {
                tracing::warn!(id, error = %cleanup, "removing a container that failed to start");
            }
            return Err(message);
        }
        let pid = container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| format!("container {id:?}: started but libcontainer reports no pid"))?;
        tracing::info!(id, pid, bundle = %bundle.display(), "container started");
        let state = ContainerState { id: id.to_owned(), bundle: bundle.to_owned(), pid, exit: None };
        self.containers.insert(id.to_owned(), Entry { state: state.clone(), cgroup });
        Ok(state)
    }

    fn kill(&mut self, id: &str, signal: i32) -> Result<(), String> {
        let entry = self.containers.get(id).ok_or_else(|| format!("no container {id:?}"))?;
        if entry.state.exit.is_some() {
            return Err(format!("container {id:?} has already exited"));
        }
        let signal = Signal::try_from(signal).map_err(|e| format!("container {id:?}: signal {signal}: {e}"))?;
        // The pid cannot have been reused: it is our child and is only released when we reap it.
        signal::kill(Pid::from_raw(entry.state.pid), signal)
            .map_err(|e| format!("container {id:?}: sending {signal} to pid {}: {e}", entry.state.pid))
    }

    fn delete(&mut self, id: &str) -> Result<(), String> {
        let entry = self.containers.get(id).ok_or_else(|| format!("no container {id:?}"))?;
        if entry.state.exit.is_none() {
            return Err(format!("container {id:?} is still running (kill it first)"));
        }
        let root = self.options.state_dir.join(id);
        if root.exists() {
            let mut container = Container::load(root.clone())
                .map_err(|e| format!("container {id:?}: loading {}: {e}", root.display()))?;
            container
                .delete(true)
                .map_err(|e| format!("container {id:?}: deleting (cgroup and {}): {e}", root.display()))?;
        }
        self.containers.remove(id);
        tracing::info!(id, "container deleted");
        Ok(())
    }

    fn reap(&mut self) {
        loop {
            let (pid, code, signal) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Some(code), None),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid.as_raw(), None, Some(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(error) => {
                    tracing::warn!(%error, "waiting for children");
                    return;
                }
            };
            let Some(entry) = self.containers.values_mut().find(|e| e.state.pid == pid && e.state.exit.is_none())
            else {
                // An orphan reparented to us (a container's stray descendant): reaped, nothing to report.
                continue;
            };
            let oom_killed = entry.cgroup.as_deref().is_some_and(oom_kills_seen);
            let event = ExitEvent { id: entry.state.id.clone(), pid, code, signal, oom_killed };
            tracing::info!(id = %event.id, pid, ?code, ?signal, oom_killed, "container exited");
            entry.state.exit = Some(event.clone());
            self.broadcast(&ShimMessage::Exit(event));
        }
    }
}

/// Containers inherit the shim's limits (their bundles set none). The
/// kernel's 1024 open files is far too few for etcd or an apiserver;
/// containerd and the kubelet run with as many as the kernel allows
/// (`fs.nr_open`), and so do Kelson's containers. Without
/// CAP_SYS_RESOURCE (a test host) the soft limit goes up to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let most =
        fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(1 << 20);
    if setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok() {
        return;
    }
    let raised = getrlimit(Resource::RLIMIT_NOFILE)
        .and_then(|(_, hard)| setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map(|()| hard));
    match raised {
        Ok(hard) => tracing::info!(limit = hard, "open files limited to the hard limit the shim was given"),
        Err(error) => tracing::warn!(%error, "raising the open files limit; containers get the shim's own"),
    }
}

/// Containers a dead shim left in `state_dir`: no longer anyone's children
/// (the kernel gave them to PID 1) and no longer reported, so they are
/// killed and removed, cgroups too, before their ids are used again. Only
/// reached once no other shim answers on the socket.
fn remove_leftovers(state_dir: &Path) {
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, state = %state_dir.display(), "listing containers left by an earlier shim");
            return;
        }
    };
    for entry in entries.flatten() {
        let root = entry.path();
        let id = entry.file_name().to_string_lossy().into_owned();
        let deleted = Container::load(root.clone())
            .map_err(|e| e.to_string())
            .and_then(|mut c| c.delete(true).map_err(|e| e.to_string()));
        match deleted {
            Ok(()) => tracing::warn!(id, "killed and deleted a container left by an earlier shim"),
            Err(error) => {
                tracing::warn!(id, error, "deleting a container left by an earlier shim; removing its state only");
                if let Err(error) = fs::remove_dir_all(&root) {
                    tracing::warn!(id, %error, state = %root.display(), "removing the state of a container left by an earlier shim");
                }
            }
        }
    }
}

/// Whether `cgroup`'s `memory.events` counts an OOM kill.
fn oom_kills_seen(cgroup: &Path) -> bool {
    let path = cgroup.join("memory.events");
    match fs::read_to_string(&path) {
        Ok(events) => parse_oom_kills(&events) > 0,
        Err(error) => {
            // No memory controller in this cgroup: nothing can have been OOM-killed by its limit.
            tracing::debug!(path = %path.display(), %error, "reading memory.events");
            false
        }
    }
}

/// The `oom_kill` count of a `memory.events` file.
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == "oom_kill")
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Opens a container's stdout or stderr: a file appended to, or a FIFO
/// whose reader (a log collector) is already there. O_NONBLOCK keeps the
/// shim from hanging on a FIFO nobody reads (ENXIO instead); it is cleared
/// afterwards so the container's writes block as usual.
fn output(path: Option<&Path>) -> Result<File, String> {
    let path = path.unwrap_or(Path::new("/dev/null"));
    let what = |e: &dyn std::fmt::Display| format!("opening output file {}: {e}", path.display());
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| what(&e))?;
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| what(&e))?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| what(&e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_arguments() {
        let options = ShimOptions {
            socket: "/run/kelson/shim.sock".into(),
            state_dir: "/run/kelson/containers".into(),
            no_pivot: true,
        };
        assert_eq!(ShimOptions::parse(options.to_args()).unwrap(), options);
        let plain = ShimOptions { no_pivot: false, ..options };
        assert_eq!(ShimOptions::parse(plain.to_args()).unwrap(), plain);
    }

    #[test]
    fn missing_or_unknown_arguments_are_usage_errors() {
        let err = ShimOptions::parse(["--socket".into(), "/s".into()]).unwrap_err();
        assert_eq!(err.to_string(), "shim arguments: --state-dir PATH is required");
        let err = ShimOptions::parse(["--bogus".into()]).unwrap_err();
        assert_eq!(err.to_string(), "shim arguments: unknown argument \"--bogus\"");
    }

    #[test]
    fn oom_kill_count_is_read_from_memory_events() {
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(parse_oom_kills("low 0\noom 0\noom_kill 0\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
    }

    #[test]
    fn output_to_a_fifo_without_a_reader_fails_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = output(Some(&fifo)).unwrap_err();
        assert!(
            err.starts_with(&format!("opening output file {}: ", fifo.display()))
                && err.contains("No such device or address"),
            "{err}"
        );

        let _reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let writer = output(Some(&fifo)).unwrap();
        let flags = nix::fcntl::fcntl(&writer, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0, "the container gets a blocking descriptor");
    }

    #[test]
    fn output_appends_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        fs::write(&log, "before\n").unwrap();
        output(Some(&log)).unwrap().write_all(b"after\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "before\nafter\n");
    }
}
