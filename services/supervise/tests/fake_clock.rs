#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The back-off schedule with real processes and a fake clock: the
//! supervisor waits on the clock, the test moves it, nothing sleeps for
//! seconds.

mod common;

use common::*;
use kelson_base::Exit;
use kelson_supervise::*;
use std::sync::Arc;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Waits (real time) until the supervisor is sleeping on the fake clock
/// for exactly `delay`, then moves the clock past it.
async fn advance_through(clock: &FakeClock, delay: Duration) {
    for _ in 0..500 {
        if clock.pending_sleeps().contains(&delay) {
            clock.advance(delay);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nobody is sleeping {delay:?} on the fake clock; sleeps: {:?}", clock.pending_sleeps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_backs_off_10s_doubling_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let mut crasher = sh("crasher", "exit 1");
    crasher.restart.backoff = Backoff { initial: secs(10), factor: 2, cap: secs(40), reset_after: secs(60) };
    let sup = Supervisor::new(vec![crasher], settings(dir.path()), Arc::new(ThreadLauncher), Arc::new(clock.clone()))
        .unwrap();
    sup.start();
    let mut seen = Vec::new();
    for restarts in 0..5u32 {
        let s = wait_until(&sup, 10, "backing off", |s| {
            let c = &s.services["crasher"];
            c.state == ServiceState::BackingOff && c.restarts == restarts
        })
        .await;
        let delay = Duration::from_millis(s.services["crasher"].backoff_ms.unwrap());
        seen.push(delay.as_secs());
        // Not restarted before the clock moves: the delay is really waited.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sup.status("crasher").unwrap().state, ServiceState::BackingOff);
        advance_through(&clock, delay).await;
    }
    assert_eq!(seen, [10, 20, 40, 40, 40]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_as_long_as_the_stable_period_resets_the_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let mut svc = ServiceSpec::new("svc", ["sleep", "30"]);
    svc.restart.backoff = Backoff { initial: secs(10), factor: 2, cap: secs(300), reset_after: secs(60) };
    let sup =
        Supervisor::new(vec![svc], settings(dir.path()), Arc::new(ThreadLauncher), Arc::new(clock.clone())).unwrap();
    sup.start();

    let kill_and_read_delay = |restarts: u32| {
        let sup = &sup;
        async move {
            let s = healthy_after_restarts(sup, restarts).await;
            let pid = s.services["svc"].pid.unwrap();
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
            let s = wait_until(sup, 10, "backing off", |s| s.services["svc"].state == ServiceState::BackingOff).await;
            Duration::from_millis(s.services["svc"].backoff_ms.unwrap())
        }
    };
    let first = kill_and_read_delay(0).await;
    assert_eq!(first, secs(10));
    advance_through(&clock, first).await;
    let second = kill_and_read_delay(1).await;
    assert_eq!(second, secs(20));
    advance_through(&clock, second).await;

    // This run lasts 59 s of fake time: short of stable, the delay grows.
    healthy_after_restarts(&sup, 2).await;
    clock.advance(secs(59));
    let third = kill_and_read_delay(2).await;
    assert_eq!(third, secs(40));
    advance_through(&clock, third).await;

    // This one lasts the full 60 s stable period: back to the start.
    healthy_after_restarts(&sup, 3).await;
    clock.advance(secs(60));
    let fourth = kill_and_read_delay(3).await;
    assert_eq!(fourth, secs(10));
    sup.shutdown().await;
}

/// Waits until `svc` is healthy again after `restarts` restarts.
async fn healthy_after_restarts(sup: &Supervisor, restarts: u32) -> Snapshot {
    wait_until(sup, 10, "healthy", |s| {
        s.services["svc"].state == ServiceState::Healthy && s.services["svc"].restarts == restarts
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_is_measured_on_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let mut stubborn = sh("stubborn", "trap '' TERM; echo trapped; while :; do sleep 1; done");
    stubborn.stop.grace = secs(30);
    let sup = Supervisor::new(vec![stubborn], settings(dir.path()), Arc::new(ThreadLauncher), Arc::new(clock.clone()))
        .unwrap();
    sup.start();
    wait_until(&sup, 10, "healthy", |s| s.services["stubborn"].state == ServiceState::Healthy).await;
    for _ in 0..500 {
        if sup.logs("stubborn").unwrap().backlog.iter().any(|l| l.text == "trapped") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shutdown = sup.shutdown();
    tokio::pin!(shutdown);
    // Still running after real time passes: the grace is 30 s of clock time.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut shutdown).await;
    assert!(early.is_err(), "shutdown finished before the grace period");
    assert_eq!(sup.status("stubborn").unwrap().state, ServiceState::Healthy);
    advance_through(&clock, secs(30)).await;
    tokio::time::timeout(Duration::from_secs(10), shutdown).await.unwrap();
    assert_eq!(sup.status("stubborn").unwrap().last_exit, Some(Exit::Signal(9)));
}

fn state_file(dir: &std::path::Path, service: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("state").join(format!("{service}.json"))).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_kubelet_leaves_kube_proxy_blocked_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let kubelet = ServiceSpec::new("kubelet", ["/nonexistent/kelson-test/kubelet"]);
    let mut kube_proxy = ServiceSpec::new("kube-proxy", ["sleep", "30"]);
    kube_proxy.requires = vec![Requirement::Healthy("kubelet".into())];
    let sup = Supervisor::new(
        vec![kubelet, kube_proxy],
        settings(dir.path()),
        Arc::new(ThreadLauncher),
        Arc::new(clock.clone()),
    )
    .unwrap();
    sup.start();
    let s =
        wait_until(&sup, 10, "kube-proxy blocked", |s| s.services["kube-proxy"].state == ServiceState::Blocked).await;
    let expected =
        "cannot start: service kubelet is absent (program /nonexistent/kelson-test/kubelet is not on this node)";
    assert_eq!(s.services["kube-proxy"].reason, expected);
    let file = state_file(dir.path(), "kube-proxy");
    assert_eq!((file["state"].as_str(), file["reason"].as_str()), (Some("blocked"), Some(expected)));
    sup.shutdown().await;
    assert_eq!(sup.status("kube-proxy").unwrap().state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_condition_blocks_its_dependents_until_it_is_set_after_all() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new();
    let mut kubelet = ServiceSpec::new("kubelet", ["sleep", "30"]);
    kubelet.requires = vec![Requirement::Condition(NETWORK_READY.into())];
    let mut kube_proxy = ServiceSpec::new("kube-proxy", ["sleep", "30"]);
    kube_proxy.requires = vec![Requirement::Healthy("kubelet".into())];
    let sup = Supervisor::new(
        vec![kubelet, kube_proxy],
        settings(dir.path()),
        Arc::new(ThreadLauncher),
        Arc::new(clock.clone()),
    )
    .unwrap();
    sup.start();
    let s = wait_until(&sup, 10, "kubelet waiting for the network", |s| {
        s.services["kubelet"].reason == "waiting for condition network-ready"
    })
    .await;
    assert_eq!(s.services["kubelet"].state, ServiceState::Waiting);
    sup.condition_unreachable(NETWORK_READY, "the network stage failed: no netlink socket");
    let s = wait_until(&sup, 10, "both blocked", |s| {
        s.services["kubelet"].state == ServiceState::Blocked && s.services["kube-proxy"].state == ServiceState::Blocked
    })
    .await;
    assert_eq!(
        s.services["kubelet"].reason,
        "cannot start: condition network-ready is not set (the network stage failed: no netlink socket)"
    );
    assert!(
        s.services["kube-proxy"]
            .reason
            .starts_with("cannot start: service kubelet is blocked (cannot start: condition network-ready"),
        "{}",
        s.services["kube-proxy"].reason
    );
    assert_eq!(state_file(dir.path(), "kubelet")["state"], "blocked");
    // Blocked is not for ever: the condition set after all starts them.
    sup.set_condition(NETWORK_READY);
    wait_until(&sup, 10, "both healthy", |s| {
        s.services["kubelet"].state == ServiceState::Healthy && s.services["kube-proxy"].state == ServiceState::Healthy
    })
    .await;
    sup.shutdown().await;
}
