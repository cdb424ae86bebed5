//! Test-only guest program (it goes into the QEMU tests' image layer, never
//! into the node image). `orphan-maker make N MS` starts N middle processes
//! that each start a leaf sleeping MS milliseconds and exit at once, so the
//! leaves are orphaned and re-parented to PID 1; it reports how many were.
//! `orphan-maker zombies` counts zombie processes; `orphan-maker
//! ignore-term` sleeps forever ignoring SIGTERM.

use kelson_init::procs;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let me = args.first().cloned().unwrap_or_default();
    let ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    match args.get(1).map(String::as_str) {
        Some("--leaf") => {
            std::thread::sleep(Duration::from_millis(ms));
            ExitCode::SUCCESS
        }
        // The leaf must not hold the middle's stdout open, or reading the
        // middle's output would wait for the leaf to end.
        Some("--middle") => match Command::new(&me)
            .args(["--leaf", &ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(leaf) => {
                println!("{}", leaf.id());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("orphan-maker: starting a leaf: {e}");
                ExitCode::FAILURE
            }
        },
        Some("make") => {
            let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
            let ms: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(500);
            let mut leaves = Vec::new();
            for _ in 0..n {
                let out = Command::new(&me).args(["--middle", &ms.to_string()]).stdout(Stdio::piped()).output();
                match out {
                    Ok(o) if o.status.success() => {
                        if let Ok(pid) = String::from_utf8_lossy(&o.stdout).trim().parse::<i32>() {
                            leaves.push(pid);
                        }
                    }
                    Ok(o) => eprintln!("orphan-maker: middle failed: {}", o.status),
                    Err(e) => eprintln!("orphan-maker: starting a middle: {e}"),
                }
            }
            let all = procs::all(Path::new("/proc"));
            let reparented = leaves.iter().filter(|pid| all.iter().any(|p| p.pid == **pid && p.ppid == 1)).count();
            println!("orphans={} reparented_to_pid1={reparented}", leaves.len());
            ExitCode::SUCCESS
        }
        Some("ignore-term") => {
            // A process that outlives SIGTERM, for the shutdown tests. It
            // ignores SIGHUP too: the agent shell it was started from dies
            // first and takes its terminal's process group with it.
            use nix::sys::signal::{signal, SigHandler, Signal};
            for sig in [Signal::SIGTERM, Signal::SIGHUP] {
                // SAFETY: installing SIG_IGN runs no handler code.
                let _ = unsafe { signal(sig, SigHandler::SigIgn) };
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("zombies") => {
            let zombies: Vec<_> = procs::all(Path::new("/proc")).into_iter().filter(|p| p.state == 'Z').collect();
            println!("zombies={}", zombies.len());
            for z in zombies {
                println!("zombie pid={} ppid={} comm={}", z.pid, z.ppid, z.comm);
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: orphan-maker make N MS | zombies | ignore-term");
            ExitCode::from(2)
        }
    }
}
