//! `kelson-init`: Kelson's PID 1, installed as `/sbin/init`.
//!
//! The binary is a thin shell. Its first act is to dispatch the container
//! shim (`kelson-init shim …`, see [`kelson_containers::shim`]): PID 1
//! re-executes itself for it, and libcontainer forks and runs Rust code after
//! `clone`, so the shim must start before any thread or runtime exists.
//! `kelson-init nsexec …` (exec probes, [`kelson_init::nsexec`]) must join
//! a mount namespace, which also needs a single-threaded process.
//! `kelson-init update BUNDLE` installs an update into the inactive /usr
//! slot ([`kelson_init::update`]).
//! Otherwise it answers `--version`, refuses to run as
//! anything but PID 1 (of the machine or of a PID namespace), and otherwise
//! hands over to [`kelson_init::pid1::run`], which never returns.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut raw = std::env::args_os().skip(1);
    if let Some(first) = raw.next() {
        if first == kelson_containers::shim::SUBCOMMAND {
            return kelson_containers::shim::main(raw);
        }
        if first == kelson_init::nsexec::SUBCOMMAND {
            return kelson_init::nsexec::main(raw.collect());
        }
        if first == kelson_init::update::SUBCOMMAND {
            return kelson_init::update::main(raw.map(|a| a.to_string_lossy().into_owned()).collect());
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("kelson-init {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !kelson_init::is_pid1(std::process::id()) {
        eprintln!(
            "kelson-init: refusing to start: this is pid {}, and kelson-init only runs as PID 1 \
             (boot it as the kernel's init, or under `unshare --pid --fork --mount-proc`)",
            std::process::id()
        );
        return ExitCode::from(2);
    }
    kelson_init::pid1::run()
}
