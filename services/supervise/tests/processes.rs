#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The supervisor with real processes (sh, sleep), started through
//! ThreadLauncher, on the real clock with short delays.

mod common;

use common::*;
use kelson_base::Exit;
use kelson_supervise::*;
use std::time::{Duration, Instant};

fn file_check(path: &std::path::Path) -> HealthCheck {
    let mut check =
        HealthCheck::new(Probe::Exec { argv: vec!["test".into(), "-f".into(), path.display().to_string()] });
    check.startup_interval = Duration::from_millis(30);
    check
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_starts_only_after_the_one_it_requires_is_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("a-ready");
    let saw = dir.path().join("b-saw");
    let mut a = sh("a", &format!("sleep 0.3; touch {}; exec sleep 30", ready.display()));
    a.health = Some(file_check(&ready));
    let mut b = sh("b", &format!("test -f {} && echo yes > {}; exec sleep 30", ready.display(), saw.display()));
    b.requires = vec![Requirement::Healthy("a".into())];

    let sup = unstarted(vec![b, a], settings(dir.path()));
    let mut transitions = sup.transitions();
    sup.start();
    wait_until(&sup, 10, "b running", |s| state_of(s, "b") == ServiceState::Healthy).await;
    let log = drain(&mut transitions);
    assert!(position(&log, "a", ServiceState::Healthy) < position(&log, "b", ServiceState::Starting), "{log:#?}");
    // b itself saw a's readiness marker when it started.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(std::fs::read_to_string(&saw).unwrap(), "yes\n");
    let b_status = sup.status("b").unwrap();
    assert_eq!(b_status.restarts, 0);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_services_start_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for name in ["x", "y"] {
        let ready = dir.path().join(format!("{name}-ready"));
        let mut spec = sh(name, &format!("sleep 0.4; touch {}; exec sleep 30", ready.display()));
        spec.health = Some(file_check(&ready));
        specs.push(spec);
    }
    let sup = unstarted(specs, settings(dir.path()));
    let mut transitions = sup.transitions();
    sup.start();
    wait_until(&sup, 10, "both healthy", |s| {
        state_of(s, "x") == ServiceState::Healthy && state_of(s, "y") == ServiceState::Healthy
    })
    .await;
    let log = drain(&mut transitions);
    // Each was running before the other was healthy: neither waited.
    assert!(position(&log, "x", ServiceState::Running) < position(&log, "y", ServiceState::Healthy), "{log:#?}");
    assert!(position(&log, "y", ServiceState::Running) < position(&log, "x", ServiceState::Healthy), "{log:#?}");
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_is_restarted_with_back_off_visible_in_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = ServiceSpec::new("victim", ["sleep", "30"]);
    svc.restart = quick_backoff(300);
    let settings = settings(dir.path());
    let state_file = settings.state_dir.join("victim.json");
    let sup = start(vec![svc], settings);

    let s = wait_until(&sup, 10, "victim healthy", |s| state_of(s, "victim") == ServiceState::Healthy).await;
    let first_pid = s.services["victim"].pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first_pid), nix::sys::signal::Signal::SIGKILL).unwrap();

    let s = wait_until(&sup, 10, "victim backing off", |s| state_of(s, "victim") == ServiceState::BackingOff).await;
    let backing_off = &s.services["victim"];
    assert_eq!(backing_off.last_exit, Some(Exit::Signal(9)));
    assert_eq!(backing_off.backoff_ms, Some(300));
    assert_eq!(backing_off.pid, None);
    assert!(backing_off.reason.contains("killed by signal 9 (SIGKILL)"), "{}", backing_off.reason);
    assert!(backing_off.reason.contains("restarting in 300ms"), "{}", backing_off.reason);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(json["state"], "backing-off");
    assert_eq!(json["backoffMs"], 300);
    assert_eq!(json["lastExit"]["signal"], 9);

    let s = wait_until(&sup, 10, "victim back", |s| {
        state_of(s, "victim") == ServiceState::Healthy && s.services["victim"].restarts == 1
    })
    .await;
    let second_pid = s.services["victim"].pid.unwrap();
    assert_ne!(second_pid, first_pid);

    // A second quick death doubles the delay.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let s =
        wait_until(&sup, 10, "victim backing off again", |s| state_of(s, "victim") == ServiceState::BackingOff).await;
    assert_eq!(s.services["victim"].backoff_ms, Some(600));
    sup.shutdown().await;
    assert_eq!(sup.status("victim").unwrap().state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_service_does_not_delay_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut crasher = sh("crasher", "echo crashing; exit 3");
    crasher.restart = quick_backoff(20);
    let steady = ServiceSpec::new("steady", ["sleep", "30"]);
    let mut dependent = ServiceSpec::new("dependent", ["sleep", "30"]);
    dependent.requires = vec![Requirement::Healthy("steady".into())];
    let started = Instant::now();
    let sup = start(vec![crasher, steady, dependent], settings(dir.path()));
    wait_until(&sup, 5, "steady and dependent healthy", |s| {
        state_of(s, "steady") == ServiceState::Healthy && state_of(s, "dependent") == ServiceState::Healthy
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let s = wait_until(&sup, 10, "crasher restarted 3 times", |s| s.services["crasher"].restarts >= 3).await;
    assert_eq!(s.services["crasher"].last_exit, Some(Exit::Code(3)));
    assert_eq!(state_of(&s, "steady"), ServiceState::Healthy);
    assert_eq!(state_of(&s, "dependent"), ServiceState::Healthy);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_dependents_first_and_kills_what_ignores_sigterm_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let base = ServiceSpec::new("base", ["sleep", "30"]);
    let mut stubborn = sh("stubborn", "trap '' TERM; echo ignoring; while :; do sleep 5; done");
    stubborn.requires = vec![Requirement::Healthy("base".into())];
    stubborn.stop.grace = Duration::from_millis(400);
    let mut leaf = ServiceSpec::new("leaf", ["sleep", "30"]);
    leaf.requires = vec![Requirement::Healthy("stubborn".into())];
    let sup = start(vec![base, stubborn, leaf], settings(dir.path()));
    let s =
        wait_until(&sup, 10, "all healthy", |s| s.services.values().all(|v| v.state == ServiceState::Healthy)).await;
    let stubborn_group = s.services["stubborn"].pid.unwrap();
    // Let sh install its trap before it is asked to stop.
    wait_for_log_line(&sup, "stubborn", "ignoring").await;

    let mut transitions = sup.transitions();
    let began = Instant::now();
    sup.shutdown().await;
    let took = began.elapsed();
    let log = drain(&mut transitions);
    let stopped = |name| position(&log, name, ServiceState::Stopped);
    assert!(stopped("leaf") < stopped("stubborn") && stopped("stubborn") < stopped("base"), "{log:#?}");
    assert!(took >= Duration::from_millis(400), "shutdown took {took:?}, less than the grace period");
    let s = sup.snapshot();
    assert_eq!(s.services["stubborn"].last_exit, Some(Exit::Signal(9)));
    assert_eq!(s.services["base"].last_exit, Some(Exit::Signal(15)));
    assert_eq!(s.services["leaf"].last_exit, Some(Exit::Signal(15)));
    assert!(s.services.values().all(|v| v.state == ServiceState::Stopped));
    // The SIGKILL went to the process group: the loop's sleeps are gone too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(processes_in_group(stubborn_group), Vec::<i32>::new());
}

async fn wait_for_log_line(sup: &Supervisor, service: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if sup.logs(service).unwrap().backlog.iter().any(|l| l.text == text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{service} never printed {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reaches_the_log_file_and_the_ring_and_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let talker = sh("talker", "echo to-stdout; echo to-stderr >&2; read _ignored; exec sleep 30");
    let settings = settings(dir.path());
    let log_file = settings.logs.dir.join("talker.log");
    let sup = start(vec![talker], settings);
    wait_for_log_line(&sup, "talker", "to-stderr").await;
    let sub = sup.logs("talker").unwrap();
    let texts: Vec<_> = sub.backlog.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["to-stdout", "to-stderr"]);
    assert_eq!(std::fs::read_to_string(&log_file).unwrap(), "to-stdout\nto-stderr\n");
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_absent_with_the_reason_and_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ServiceSpec::new("kubelet", ["/nonexistent/usr/bin/kubelet", "--config=x"]);
    let mut after = ServiceSpec::new("kube-proxy", ["sleep", "30"]);
    after.requires = vec![Requirement::Healthy("kubelet".into())];
    let other = ServiceSpec::new("containerd", ["sleep", "30"]);
    let settings = settings(dir.path());
    let state_dir = settings.state_dir.clone();
    let sup = start(vec![missing, after, other], settings);
    let s = wait_until(&sup, 10, "kubelet absent, containerd healthy", |s| {
        state_of(s, "kubelet") == ServiceState::Absent && state_of(s, "containerd") == ServiceState::Healthy
    })
    .await;
    assert_eq!(s.services["kubelet"].reason, "program /nonexistent/usr/bin/kubelet is not on this node");
    let s = wait_until(&sup, 5, "kube-proxy blocked by the absent kubelet", |s| {
        state_of(s, "kube-proxy") == ServiceState::Blocked
    })
    .await;
    assert_eq!(
        s.services["kube-proxy"].reason,
        "cannot start: service kubelet is absent (program /nonexistent/usr/bin/kubelet is not on this node)"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("kubelet.json")).unwrap()).unwrap();
    assert_eq!(json["state"], "absent");
    sup.shutdown().await;
    assert_eq!(sup.status("kubelet").unwrap().state, ServiceState::Absent, "absent stays absent");
    assert_eq!(sup.status("kube-proxy").unwrap().state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_is_retried_until_it_succeeds_and_only_then_its_dependent_starts() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    // Fails twice (saying why on stderr, as ctr does), then succeeds.
    let mut import = sh(
        "import",
        &format!(
            "echo attempt >> {a}; n=$(wc -l < {a}); echo working; \
             if [ $n -lt 3 ]; then echo \"ctr: attempt $n: connection refused\" >&2; exit 1; fi; echo imported",
            a = attempts.display()
        ),
    );
    import.restart = quick_backoff(100);
    import.restart.mode = RestartMode::OnFailure;
    let mut kubelet = ServiceSpec::new("kubelet", ["sleep", "30"]);
    kubelet.requires = vec![Requirement::Completed("import".into())];
    let settings = settings(dir.path());
    let state_dir = settings.state_dir.clone();
    let sup = unstarted(vec![kubelet, import], settings);
    let mut transitions = sup.transitions();
    sup.start();
    let s = wait_until(&sup, 10, "kubelet healthy", |s| state_of(s, "kubelet") == ServiceState::Healthy).await;
    let log = drain(&mut transitions);

    // Each failure backed off, with the program's last words in the reason.
    let failures: Vec<&Transition> =
        log.iter().filter(|t| t.service == "import" && t.to == ServiceState::BackingOff).collect();
    assert_eq!(failures.len(), 2, "{log:#?}");
    for (n, t) in failures.iter().enumerate() {
        assert!(
            t.reason.contains("exited with code 1 after")
                && t.reason
                    .contains(&format!("(last output: ctr: attempt {}: connection refused); restarting in", n + 1)),
            "{}",
            t.reason
        );
    }
    // Completed, not stopped or failed; the kubelet waited for exactly that.
    let import = &s.services["import"];
    assert_eq!(import.state, ServiceState::Completed);
    assert_eq!(import.restarts, 2);
    assert_eq!(import.last_exit, Some(Exit::Code(0)));
    assert!(import.reason.contains("exited with code 0"), "{}", import.reason);
    assert!(
        position(&log, "import", ServiceState::Completed) < position(&log, "kubelet", ServiceState::Starting),
        "{log:#?}"
    );
    assert!(log.iter().any(|t| t.service == "kubelet"
        && t.to == ServiceState::Waiting
        && t.reason.starts_with("waiting for service import to complete (it is ")));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("import.json")).unwrap()).unwrap();
    assert_eq!(json["state"], "completed");
    assert_eq!(std::fs::read_to_string(&attempts).unwrap().lines().count(), 3);

    // A restart of the kubelet does not wait for (or rerun) the import.
    let pid = sup.status("kubelet").unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until(&sup, 10, "kubelet back", |s| {
        state_of(s, "kubelet") == ServiceState::Healthy && s.services["kubelet"].restarts == 1
    })
    .await;
    assert_eq!(std::fs::read_to_string(&attempts).unwrap().lines().count(), 3);

    sup.shutdown().await;
    assert_eq!(sup.status("import").unwrap().state, ServiceState::Completed, "completed stays completed at shutdown");
    assert_eq!(sup.status("kubelet").unwrap().state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_that_never_succeeds_keeps_its_dependent_waiting_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut import = sh("import", "echo 'ctr: image not found' >&2; exit 3");
    import.restart = quick_backoff(50);
    import.restart.mode = RestartMode::OnFailure;
    let mut kubelet = ServiceSpec::new("kubelet", ["sleep", "30"]);
    kubelet.requires = vec![Requirement::Completed("import".into())];
    let containerd = ServiceSpec::new("containerd", ["sleep", "30"]);
    let sup = start(vec![import, kubelet, containerd], settings(dir.path()));
    let s = wait_until(&sup, 10, "three failed imports", |s| s.services["import"].restarts >= 3).await;
    assert_eq!(state_of(&s, "kubelet"), ServiceState::Waiting);
    assert_eq!(state_of(&s, "containerd"), ServiceState::Healthy);
    let containerd_pid = s.services["containerd"].pid;
    let s = wait_until(&sup, 10, "backing off", |s| state_of(s, "import") == ServiceState::BackingOff).await;
    assert!(s.services["import"].reason.contains("exited with code 3 after"), "{}", s.services["import"].reason);
    assert!(
        s.services["import"].reason.contains("(last output: ctr: image not found)"),
        "{}",
        s.services["import"].reason
    );
    assert_eq!(sup.status("containerd").unwrap().pid, containerd_pid);
    sup.shutdown().await;
    assert_eq!(sup.status("import").unwrap().state, ServiceState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_paths_gate_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let mut gated = ServiceSpec::new("gated", ["sleep", "30"]);
    gated.requires = vec![Requirement::Condition(NETWORK_READY.into()), Requirement::PathExists(flag.clone())];
    let sup = start(vec![gated], settings(dir.path()));
    let s = wait_until(&sup, 5, "gated waiting", |s| {
        state_of(s, "gated") == ServiceState::Waiting && s.services["gated"].reason.contains("condition network-ready")
    })
    .await;
    assert!(s.services["gated"].reason.contains("flag to exist"), "{}", s.services["gated"].reason);
    sup.set_condition(NETWORK_READY);
    let s = wait_until(&sup, 5, "only the path left", |s| !s.services["gated"].reason.contains("condition")).await;
    assert_eq!(state_of(&s, "gated"), ServiceState::Waiting);
    std::fs::write(&flag, "").unwrap();
    wait_until(&sup, 5, "gated healthy", |s| state_of(s, "gated") == ServiceState::Healthy).await;
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_describes_a_healthy_service() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let state_dir = settings.state_dir.clone();
    let sup = start(vec![ServiceSpec::new("svc", ["sleep", "30"])], settings);
    let s = wait_until(&sup, 5, "svc healthy", |s| state_of(s, "svc") == ServiceState::Healthy).await;
    let pid = s.services["svc"].pid.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(state_dir.join("svc.json")).unwrap()).unwrap();
    assert_eq!(json["name"], "svc");
    assert_eq!(json["state"], "healthy");
    assert_eq!(json["pid"], pid);
    assert_eq!(json["restarts"], 0);
    assert_eq!(json["reason"], format!("started as pid {pid}; no health check"));
    assert!(json["lastExit"].is_null());
    assert!(json["sinceUnixMs"].as_u64().unwrap() > 1_600_000_000_000);
    // Only the state file: the temporary file was renamed over it.
    let names: Vec<_> = std::fs::read_dir(&state_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["svc.json"]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_joins_its_cgroup_before_exec_in_a_directory_that_mimics_cgroupfs() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("cgroupfs");
    let mut settings = settings(dir.path());
    settings.cgroups = Some(CgroupRoot { mount: mount.clone(), parent: "kelson.slice/system".into() });
    let mut svc = ServiceSpec::new("limited", ["sleep", "30"]);
    svc.resources = Resources { memory_max: Some(128 << 20), cpu_weight: Some(50), oom_score_adj: Some(500) };
    let sup = start(vec![svc], settings);
    let s = wait_until(&sup, 5, "limited healthy", |s| state_of(s, "limited") == ServiceState::Healthy).await;
    let pid = s.services["limited"].pid.unwrap();
    let cg = mount.join("kelson.slice/system/limited");
    assert_eq!(std::fs::read_to_string(cg.join("cgroup.procs")).unwrap(), pid.to_string());
    assert_eq!(std::fs::read_to_string(cg.join("memory.max")).unwrap(), "134217728");
    assert_eq!(std::fs::read_to_string(cg.join("cpu.weight")).unwrap(), "50");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim(), "500");
    // Its own session: the process group the SIGKILL goes to.
    assert_eq!(nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap().as_raw(), pid);
    sup.shutdown().await;
}

/// Runs only where /sys/fs/cgroup (or `KELSON_CGROUP2_MOUNT`) is a
/// writable cgroup2 mount; set
/// `KELSON_REQUIRE_CGROUP2=1` to make its absence a failure (CI on a
/// cgroup2 host should). This host may be cgroup v1, where it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_runs_in_its_own_cgroup_on_a_real_cgroup2_mount() {
    // KELSON_CGROUP2_MOUNT points it elsewhere, e.g. a hybrid host's
    // /sys/fs/cgroup/unified.
    let mount = std::env::var_os("KELSON_CGROUP2_MOUNT").map(std::path::PathBuf::from);
    let mount = mount.as_deref().unwrap_or(std::path::Path::new("/sys/fs/cgroup"));
    let is_cgroup2 = nix::sys::statfs::statfs(mount)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    let writable = is_cgroup2 && nix::unistd::access(mount, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable {
        let why = if is_cgroup2 { "is cgroup2 but not writable" } else { "is not a cgroup2 mount" };
        if std::env::var_os("KELSON_REQUIRE_CGROUP2").is_some() {
            panic!("KELSON_REQUIRE_CGROUP2 is set but {} {why}", mount.display());
        }
        kelson_test_support::report_skip(&format!(
            "{} {why} (set KELSON_REQUIRE_CGROUP2=1 to fail instead)",
            mount.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let parent = format!("kelson-supervise-test-{}", std::process::id());
    let mut settings = settings(dir.path());
    settings.cgroups = Some(CgroupRoot { mount: mount.to_owned(), parent: parent.clone().into() });
    // Placement only: enabling controllers fails where the mount's root
    // holds processes (a container's cgroup namespace), which is the
    // host's business; writing limits is covered by the mimic test.
    let svc = ServiceSpec::new("real", ["sleep", "30"]);
    let sup = start(vec![svc], settings);
    let s = wait_until(&sup, 5, "real healthy", |s| state_of(s, "real") == ServiceState::Healthy).await;
    let pid = s.services["real"].pid.unwrap();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    sup.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir(mount.join(&parent).join("real"));
    let _ = std::fs::remove_dir(mount.join(&parent));
    assert!(membership.trim().ends_with(&format!("/{parent}/real")), "{membership}");
}

#[tokio::test]
async fn shutdown_before_start_returns_and_nothing_runs_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let sup = unstarted(vec![ServiceSpec::new("never", ["sleep", "30"])], settings(dir.path()));
    tokio::time::timeout(Duration::from_secs(5), sup.shutdown()).await.expect("shutdown hung");
    sup.start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sup.status("never").unwrap().state, ServiceState::Waiting);
    assert_eq!(sup.status("never").unwrap().pid, None);
}
