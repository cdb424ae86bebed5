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
//!
//! - `args`: the command line ([`ShimOptions`]).
//! - `process`: becoming the shim (session, subreaper, SIGCHLD wake-ups).
//! - `server`: the socket protocol over a backend trait, tested with a fake.
//! - `libcontainer`: the real backend (libcontainer and `waitpid`).
//! - `oom`: OOM kills read from `memory.events`.

mod args;
mod libcontainer;
mod oom;
mod process;
mod server;
#[cfg(test)]
mod server_tests;

pub use args::ShimOptions;
pub use oom::parse_oom_kills;

use crate::error_chain;

use nix::errno::Errno;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;

/// The subcommand PID 1 re-executes itself with: `/sbin/init shim ARGS…`.
pub const SUBCOMMAND: &str = "shim";
/// Where cgroup v2 is mounted; libcontainer assumes the same.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why the shim could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("shim arguments: {0}")]
    Usage(String),
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{action}")]
    Sys {
        action: &'static str,
        #[source]
        source: Errno,
    },
    #[error("another shim is serving on {}; connect to it instead", socket.display())]
    Busy { socket: PathBuf },
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
            tracing::error!("kelson shim: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Serves `options.socket` until a fatal error.
pub fn run(options: ShimOptions) -> Result<(), ShimError> {
    let wake = process::become_shim()?;
    let listener = listen(&options)?;
    libcontainer::remove_leftovers(&options.state_dir);
    process::raise_open_files_limit();
    tracing::info!(socket = %options.socket.display(), state = %options.state_dir.display(), no_pivot = options.no_pivot, "shim listening");
    let backend = libcontainer::Libcontainer { state_dir: options.state_dir, no_pivot: options.no_pivot };
    let mut server = server::Server::new(listener, wake.read, backend);
    loop {
        server.turn().map_err(|source| ShimError::Sys { action: "waiting for work", source })?;
    }
}

/// The state directory, and the socket: refused while another shim
/// answers on it, else taken over from a dead one.
fn listen(options: &ShimOptions) -> Result<UnixListener, ShimError> {
    let io_err = |action, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ShimError::Io { action, path, source }
    };
    std::fs::create_dir_all(&options.state_dir).map_err(io_err("creating the state directory", &options.state_dir))?;
    if let Some(parent) = options.socket.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("creating the socket's directory", parent))?;
    }
    // A socket that answers belongs to a shim that still runs and owns
    // containers: taking its path over would orphan them from any client.
    if UnixStream::connect(&options.socket).is_ok() {
        return Err(ShimError::Busy { socket: options.socket.clone() });
    }
    match std::fs::remove_file(&options.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ShimError::Io { action: "removing a stale socket", path: options.socket.clone(), source })
        }
    }
    let listener = UnixListener::bind(&options.socket).map_err(io_err("listening on", &options.socket))?;
    std::fs::set_permissions(&options.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restricting", &options.socket))?;
    listener.set_nonblocking(true).map_err(io_err("setting non-blocking", &options.socket))?;
    Ok(listener)
}
