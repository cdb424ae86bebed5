//! `kelson-init nsexec PID COMMAND...`: runs COMMAND inside the container
//! whose process is PID, as `exec` probes need: in its cgroup, its IPC, UTS,
//! network, PID and mount namespaces, under its root directory and with its
//! environment. Exits with the command's exit code (128 + signal if it was
//! killed, 126 if it could not be started).
//!
//! PID 1 runs this as a fresh exec of itself, so the process is
//! single-threaded, which joining a mount namespace requires.

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

/// The subcommand's name on `/sbin/init`'s command line.
pub const SUBCOMMAND: &str = "nsexec";

/// Namespaces joined, the mount namespace last: after it, the target's
/// /proc entries are no longer where they were.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

pub fn main(args: Vec<OsString>) -> ExitCode {
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kelson-init nsexec: {e:#}");
            ExitCode::from(126)
        }
    }
}

fn run(args: Vec<OsString>) -> Result<u8> {
    let mut args = args.into_iter();
    let pid = args.next().context("usage: nsexec PID COMMAND...")?;
    let pid: u32 = pid.to_str().and_then(|p| p.parse().ok()).with_context(|| format!("{pid:?} is not a process id"))?;
    let command: Vec<OsString> = args.collect();
    let Some((program, arguments)) = command.split_first() else { bail!("nsexec {pid}: no command given") };
    let proc = format!("/proc/{pid}");

    // The command is charged to the container's cgroup, like the container.
    let cgroup = std::fs::read_to_string(format!("{proc}/cgroup")).with_context(|| format!("reading {proc}/cgroup"))?;
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("{proc}/cgroup has no cgroup2 line"))?;
    let procs = format!("/sys/fs/cgroup{}/cgroup.procs", path.trim_end_matches('/'));
    std::fs::write(&procs, std::process::id().to_string()).with_context(|| format!("joining {procs}"))?;

    let environ = std::fs::read(format!("{proc}/environ")).with_context(|| format!("reading {proc}/environ"))?;
    let env: Vec<(OsString, OsString)> = environ
        .split(|b| *b == 0)
        .filter_map(|pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            Some((OsString::from_vec(pair[..at].to_vec()), OsString::from_vec(pair[at + 1..].to_vec())))
        })
        .collect();

    // Everything is opened before the first namespace is joined.
    let root = File::open(format!("{proc}/root")).with_context(|| format!("opening {proc}/root"))?;
    let mut files = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("{proc}/ns/{name}");
        files.push((File::open(&path).with_context(|| format!("opening {path}"))?, *flag, path));
    }
    for (file, flag, path) in &files {
        setns(file, *flag).with_context(|| format!("joining {path}"))?;
    }
    // A container started without pivot_root has its root filesystem
    // mounted over the namespace's own root: only its root directory (as
    // chroot made it) shows the container's files.
    nix::unistd::fchdir(&root).context("entering the container's root")?;
    nix::unistd::chroot(".").context("chroot to the container's root")?;
    std::env::set_current_dir("/").context("chdir /")?;

    // Joining a PID namespace takes effect for children: the command runs
    // in one, and this process waits for it.
    let status = Command::new(program)
        .args(arguments)
        .env_clear()
        .envs(env)
        .status()
        .with_context(|| format!("starting {program:?} in the container of pid {pid}"))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(255),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 255,
    })
}
