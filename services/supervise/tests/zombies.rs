#![allow(clippy::unwrap_used, clippy::expect_used)]
//! In a test binary of its own, so no other test's children are counted.

mod common;

use common::*;
use kelson_supervise::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_kills_and_restarts_leave_no_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = ServiceSpec::new("short", ["sleep", "30"]);
    svc.restart.backoff = Backoff {
        initial: Duration::from_millis(1),
        factor: 2,
        cap: Duration::from_millis(2),
        reset_after: Duration::from_secs(60),
    };
    let sup =
        Supervisor::new(vec![svc], settings(dir.path()), Arc::new(ThreadLauncher), Arc::new(SystemClock)).unwrap();
    sup.start();
    let mut pids = std::collections::BTreeSet::new();
    for cycle in 0..100u32 {
        let s = wait_until(&sup, 10, "running", |s| {
            let v = &s.services["short"];
            v.state == ServiceState::Healthy && v.restarts == cycle
        })
        .await;
        let pid = s.services["short"].pid.unwrap();
        assert!(pids.insert(pid), "pid {pid} reused while the old one is tracked");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let s = wait_until(&sup, 10, "the 100th restart", |s| {
        s.services["short"].restarts == 100 && s.services["short"].state == ServiceState::Healthy
    })
    .await;
    assert_eq!(s.services["short"].restarts, 100);
    sup.shutdown().await;
    // The last exit is reaped by the time shutdown returns; give the
    // kernel a moment to update /proc.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(zombie_children(), Vec::<i32>::new());
    assert_eq!(children(), Vec::<(i32, char)>::new(), "no child of ours is left at all");
}
