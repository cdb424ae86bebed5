#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Starting, stopping and restarting one service on request, with real
//! processes started through ThreadLauncher on the real clock.

mod common;

use common::*;
use kelson_supervise::*;
use std::time::Duration;

async fn healthy_pid(sup: &Supervisor, name: &str) -> i32 {
    let s = wait_until(sup, 10, &format!("{name} healthy"), |s| state_of(s, name) == ServiceState::Healthy).await;
    s.services[name].pid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_is_gone_until_started_again_with_a_new_pid() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let state_file = settings.state_dir.join("web.json");
    let sup = start(vec![ServiceSpec::new("web", ["sleep", "30"])], settings);
    let first_pid = healthy_pid(&sup, "web").await;
    let mut transitions = sup.transitions();

    let stopped = sup.control("web", ServiceAction::Stop).await.unwrap();
    assert_eq!(stopped.state, ServiceState::Stopped);
    assert!(stopped.reason.starts_with("stopped on request"), "{}", stopped.reason);
    assert_eq!(stopped.pid, None);
    assert_eq!(stopped.last_exit, Some(kelson_base::Exit::Signal(15)));
    // The process (the leader of its own group) has been reaped: nothing
    // of it is left.
    assert_eq!(processes_in_group(first_pid), Vec::<i32>::new());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(json["state"], "stopped");
    let log = drain(&mut transitions);
    assert_eq!(log.last().map(|t| (t.from, t.to)), Some((ServiceState::Healthy, ServiceState::Stopped)));

    let started = sup.control("web", ServiceAction::Start).await.unwrap();
    assert_eq!(started.state, ServiceState::Healthy);
    let second_pid = started.pid.unwrap();
    assert_ne!(second_pid, first_pid);
    assert_eq!(started.restarts, 1, "a start on request counts as a restart");
    assert_eq!(sup.status("web").unwrap().pid, Some(second_pid));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_stops_then_starts_and_counts_one_more_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sup = start(vec![ServiceSpec::new("web", ["sleep", "30"])], settings(dir.path()));
    let first_pid = healthy_pid(&sup, "web").await;
    let mut transitions = sup.transitions();

    let restarted = sup.control("web", ServiceAction::Restart).await.unwrap();
    assert_eq!(restarted.state, ServiceState::Healthy);
    assert_eq!(restarted.restarts, 1);
    assert_ne!(restarted.pid, Some(first_pid));
    assert_eq!(processes_in_group(first_pid), Vec::<i32>::new());
    let log = drain(&mut transitions);
    let states: Vec<_> = log.iter().map(|t| t.to).collect();
    assert_eq!(states, [ServiceState::Stopped, ServiceState::Starting, ServiceState::Running, ServiceState::Healthy]);

    // A stopped service may be restarted too: that is a start.
    sup.control("web", ServiceAction::Stop).await.unwrap();
    let again = sup.control("web", ServiceAction::Restart).await.unwrap();
    assert_eq!((again.state, again.restarts), (ServiceState::Healthy, 2));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_fit_the_state_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sup = unstarted(vec![ServiceSpec::new("web", ["sleep", "30"])], settings(dir.path()));
    let err = sup.control("web", ServiceAction::Stop).await.unwrap_err();
    assert!(matches!(err, ControlError::NotStarted { .. }), "{err}");
    sup.start();
    let pid = healthy_pid(&sup, "web").await;

    let err = sup.control("web", ServiceAction::Start).await.unwrap_err();
    assert_eq!(err.to_string(), "cannot start service web: it is healthy");
    assert_eq!(sup.status("web").unwrap().pid, Some(pid), "the refused start left it running");

    let err = sup.control("nginx", ServiceAction::Restart).await.unwrap_err();
    assert!(matches!(err, ControlError::UnknownService { ref service, .. } if service == "nginx"), "{err}");

    sup.control("web", ServiceAction::Stop).await.unwrap();
    let err = sup.control("web", ServiceAction::Stop).await.unwrap_err();
    assert!(
        matches!(err, ControlError::Conflict { action: ServiceAction::Stop, state: ServiceState::Stopped, .. }),
        "{err}"
    );

    sup.shutdown().await;
    let err = sup.control("web", ServiceAction::Start).await.unwrap_err();
    assert!(matches!(err, ControlError::ShuttingDown { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_and_blocked_services_cannot_be_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ServiceSpec::new("missing", ["/nonexistent/kelson/bin"]);
    let mut gated = ServiceSpec::new("gated", ["sleep", "30"]);
    gated.requires = vec![Requirement::Condition("network-ready".into())];
    let sup = start(vec![missing, gated], settings(dir.path()));
    sup.condition_unreachable("network-ready", "the network stage failed");
    wait_until(&sup, 10, "absent and blocked", |s| {
        state_of(s, "missing") == ServiceState::Absent && state_of(s, "gated") == ServiceState::Blocked
    })
    .await;

    for action in [ServiceAction::Start, ServiceAction::Stop, ServiceAction::Restart] {
        let err = sup.control("missing", action).await.unwrap_err();
        assert!(matches!(err, ControlError::Conflict { state: ServiceState::Absent, .. }), "{err}");
    }
    let err = sup.control("gated", ServiceAction::Restart).await.unwrap_err();
    assert!(matches!(err, ControlError::Conflict { state: ServiceState::Blocked, .. }), "{err}");

    // A blocked service can be stopped, and started again it waits anew.
    let stopped = sup.control("gated", ServiceAction::Stop).await.unwrap();
    assert_eq!(stopped.reason, "stopped on request before it was started");
    let started = sup.control("gated", ServiceAction::Start).await.unwrap();
    assert_eq!(started.state, ServiceState::Blocked);
    sup.set_condition("network-ready");
    wait_until(&sup, 10, "gated healthy", |s| state_of(s, "gated") == ServiceState::Healthy).await;
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stopped_while_backing_off_stays_stopped_past_its_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut crasher = sh("crasher", "exit 1");
    crasher.restart = quick_backoff(300);
    let sup = start(vec![crasher], settings(dir.path()));
    wait_until(&sup, 10, "crasher backing off", |s| state_of(s, "crasher") == ServiceState::BackingOff).await;
    let mut transitions = sup.transitions();

    let stopped = sup.control("crasher", ServiceAction::Stop).await.unwrap();
    assert_eq!(stopped.reason, "stopped on request while backing off");
    assert_eq!(stopped.backoff_ms, None);
    // Past the delay it was waiting out, and the next one: a restart
    // would have come.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(sup.status("crasher").unwrap().state, ServiceState::Stopped);
    let log = drain(&mut transitions);
    assert_eq!(log.iter().map(|t| t.to).collect::<Vec<_>>(), [ServiceState::Stopped], "{log:#?}");
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_request_begins_the_back_off_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut crasher = sh("crasher", "exit 1");
    crasher.restart = quick_backoff(20);
    let sup = start(vec![crasher], settings(dir.path()));
    wait_until(&sup, 10, "a grown back-off", |s| s.services["crasher"].backoff_ms.is_some_and(|ms| ms >= 80)).await;
    sup.control("crasher", ServiceAction::Stop).await.unwrap();
    let restarts_before = sup.status("crasher").unwrap().restarts;

    let started = sup.control("crasher", ServiceAction::Start).await.unwrap();
    assert_eq!(started.restarts, restarts_before + 1, "the restart count goes on");
    // It fails at once: its next back-off is the initial delay again.
    let s = wait_until(&sup, 10, "crasher backing off again", |s| {
        state_of(s, "crasher") == ServiceState::BackingOff && s.services["crasher"].restarts == restarts_before + 1
    })
    .await;
    assert_eq!(s.services["crasher"].backoff_ms, Some(20));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_one_shot_runs_again_when_started() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("runs");
    let mut import = sh("import", &format!("echo run >> {}", marker.display()));
    import.restart.mode = RestartMode::OnFailure;
    let sup = start(vec![import], settings(dir.path()));
    wait_until(&sup, 10, "import completed", |s| state_of(s, "import") == ServiceState::Completed).await;

    sup.control("import", ServiceAction::Start).await.unwrap();
    wait_until(&sup, 10, "import completed again", |s| {
        state_of(s, "import") == ServiceState::Completed && s.services["import"].restarts == 1
    })
    .await;
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\nrun\n");
    sup.shutdown().await;
}
