#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The rendered node services under the supervisor, with the doubles in
//! the kubelet's and kube-proxy's slots. containerd is a stand-in (`sleep`,
//! healthy when the test says so), so the order can be watched, and so is
//! the sandbox-image import (it succeeds at once, with the rendered
//! requirements and restart policy); the real containerd and import run
//! only in the QEMU tests. The rendered files are written
//! under a temporary root and the specs' paths pointed there; health ports
//! are moved off 10248/10256 so tests never collide with a real service.

use kelson_base::Exit;
use kelson_config::MachineConfig;
use kelson_supervise::node::{self, paths};
use kelson_supervise::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KUBELET: &str = env!("CARGO_BIN_EXE_kubelet-double");
const KUBE_PROXY: &str = env!("CARGO_BIN_EXE_kube-proxy-double");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config() -> MachineConfig {
    let mut c = kelson_config::parse(
        "test.yaml",
        r#"
apiVersion: kelson.dev/v1alpha1
kind: MachineConfig
network:
  uplinks: [{name: eth0, addresses: [192.168.100.11/24]}]
  podCIDR: 10.244.1.0/24
  clusterCIDR: 10.244.0.0/16
cluster:
  name: lab
  apiServerEndpoint: https://192.168.100.10:6443
  dnsAddress: 10.96.0.10
  bootstrapToken: abcdef.0123456789abcdef
pki:
  ca: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
"#,
    )
    .unwrap();
    c.kubelet.binary = Some(KUBELET.into());
    c.kube_proxy.binary = Some(KUBE_PROXY.into());
    c
}

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    record: PathBuf,
    containerd_ready: PathBuf,
    rendered: node::NodeServices,
    specs: Vec<ServiceSpec>,
    settings: Settings,
}

/// Renders, writes under a temp root, and adapts the specs for the host.
fn node(config: &MachineConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let record = dir.path().join("record");
    let containerd_ready = dir.path().join("containerd-ready");
    let rendered = node::render(config, "lab-worker-1");
    node::write_files(&root, &rendered.files).unwrap();
    let rooted = |arg: &str| -> String {
        rendered.files.iter().fold(arg.to_owned(), |a, f| {
            let p = f.path.to_str().unwrap();
            a.replace(p, root.join(p.trim_start_matches('/')).to_str().unwrap())
        })
    };
    let mut specs = Vec::new();
    for mut spec in rendered.services.clone() {
        if spec.name == "containerd" {
            // Same name, requirements and role; healthy on the test's word.
            let mut standin = ServiceSpec::new("containerd", ["sleep", "60"]);
            let mut check = HealthCheck::new(Probe::Exec {
                argv: vec!["test".into(), "-f".into(), containerd_ready.display().to_string()],
            });
            check.startup_interval = Duration::from_millis(30);
            standin.health = Some(check);
            specs.push(standin);
            continue;
        }
        if spec.name == node::sandbox_image::NAME {
            spec.argv = vec!["sh".into(), "-c".into(), "echo imported".into()];
            specs.push(spec);
            continue;
        }
        spec.argv = spec.argv.iter().map(|a| rooted(a)).collect();
        let port = free_port();
        spec.env.push(("KELSON_DOUBLE_HEALTHZ_PORT".into(), port.to_string()));
        spec.env.push(("KELSON_DOUBLE_RECORD_DIR".into(), record.display().to_string()));
        let health = spec.health.as_mut().unwrap();
        health.probe = Probe::HttpGet { url: format!("http://127.0.0.1:{port}/healthz") };
        health.startup_interval = Duration::from_millis(30);
        spec.restart.backoff.initial = Duration::from_millis(200);
        spec.stop.grace = Duration::from_millis(500);
        specs.push(spec);
    }
    let settings = Settings {
        state_dir: dir.path().join("state"),
        logs: LogSettings { dir: dir.path().join("log"), max_file_bytes: 1 << 20, keep_files: 1, ring_lines: 100 },
        cgroups: None,
        poll_interval: Duration::from_millis(20),
        kill_wait: Duration::from_secs(5),
    };
    Node { _dir: dir, root, record, containerd_ready, rendered, specs, settings }
}

async fn wait_until(sup: &Supervisor, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut rx = sup.watch();
    let result = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|s| pred(s))).await;
    match result {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out waiting for {what}: {:#?}", sup.snapshot().services),
    }
}

fn state(s: &Snapshot, name: &str) -> ServiceState {
    s.services[name].state
}

fn on(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_double_starts_only_after_containerd_is_healthy_and_gets_the_rendered_config() {
    let n = node(&config());
    let sup =
        Supervisor::new(n.specs.clone(), n.settings.clone(), Arc::new(ThreadLauncher), Arc::new(SystemClock)).unwrap();
    let mut transitions = sup.transitions();
    sup.start();
    sup.set_condition(NETWORK_READY);
    let s = wait_until(&sup, "kubelet waiting on containerd", |s| {
        s.services["kubelet"].reason
            == "waiting for service containerd to be healthy (it is running), \
                service sandbox-image to complete (it is waiting)"
    })
    .await;
    assert_eq!(state(&s, "kube-proxy"), ServiceState::Waiting);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sup.status("kubelet").unwrap().state, ServiceState::Waiting);
    assert!(!n.record.join("kubelet-double.argv").exists(), "the kubelet ran before containerd was healthy");

    std::fs::write(&n.containerd_ready, "").unwrap();
    wait_until(&sup, "all healthy, the import completed", |s| {
        s.services.values().all(|v| {
            v.state == if v.name == node::sandbox_image::NAME { ServiceState::Completed } else { ServiceState::Healthy }
        })
    })
    .await;
    let mut log = Vec::new();
    while let Ok(t) = transitions.try_recv() {
        log.push(t);
    }
    let at = |svc: &str, to| log.iter().position(|t| t.service == svc && t.to == to).unwrap();
    assert!(at("containerd", ServiceState::Healthy) < at("sandbox-image", ServiceState::Starting));
    assert!(at("sandbox-image", ServiceState::Completed) < at("kubelet", ServiceState::Starting));
    assert!(at("kubelet", ServiceState::Healthy) < at("kube-proxy", ServiceState::Starting));

    // The double got exactly the rendered config and the rendered flags.
    let recorded = std::fs::read(n.record.join("kubelet-double.config")).unwrap();
    assert_eq!(recorded, n.rendered.file(paths::KUBELET_CONFIG).unwrap().contents);
    let argv = std::fs::read_to_string(n.record.join("kubelet-double.argv")).unwrap();
    let config_flag = format!("--config={}", on(&n.root, paths::KUBELET_CONFIG).display());
    let bootstrap_flag =
        format!("--bootstrap-kubeconfig={}", on(&n.root, paths::KUBELET_BOOTSTRAP_KUBECONFIG).display());
    for expected in [
        &config_flag,
        &bootstrap_flag,
        "--node-ip=192.168.100.11",
        "--hostname-override=lab-worker-1",
        "--root-dir=/var/lib/kubelet",
    ] {
        assert!(argv.lines().any(|l| l == expected), "{expected} missing from {argv}");
    }
    let proxy_config = std::fs::read(n.record.join("kube-proxy-double.config")).unwrap();
    assert_eq!(proxy_config, n.rendered.file(paths::KUBE_PROXY_CONFIG).unwrap().contents);
    // Its output reached the supervisor's log.
    let lines = sup.logs("kubelet").unwrap().backlog;
    assert!(lines.iter().any(|l| l.text.contains("TEST DOUBLE")), "{lines:?}");

    // kill -9 of the kubelet: back-off in its state, then back; kube-proxy untouched.
    let pid = sup.status("kubelet").unwrap().pid.unwrap();
    let proxy_pid = sup.status("kube-proxy").unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = wait_until(&sup, "kubelet backing off", |s| state(s, "kubelet") == ServiceState::BackingOff).await;
    assert_eq!(s.services["kubelet"].last_exit, Some(Exit::Signal(9)));
    assert_eq!(s.services["kubelet"].backoff_ms, Some(200));
    let s = wait_until(&sup, "kubelet back", |s| {
        state(s, "kubelet") == ServiceState::Healthy && s.services["kubelet"].restarts == 1
    })
    .await;
    assert_eq!(s.services["kube-proxy"].pid, Some(proxy_pid));

    let mut stops = sup.transitions();
    sup.shutdown().await;
    let mut order = Vec::new();
    while let Ok(t) = stops.try_recv() {
        if t.to == ServiceState::Stopped {
            order.push(t.service);
        }
    }
    assert_eq!(order, ["kube-proxy", "kubelet", "containerd"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_that_hangs_on_sigterm_is_killed_after_its_grace_and_a_crashing_one_backs_off() {
    let mut config = config();
    // Flags reach a double through extraArgs, as on the node.
    config.kube_proxy.extra_args = vec!["--double-ignore-sigterm".into()];
    config.kubelet.extra_args = vec!["--double-crash-after=0.3".into(), "--double-exit-code=5".into()];
    let n = node(&config);
    std::fs::write(&n.containerd_ready, "").unwrap();
    let sup =
        Supervisor::new(n.specs.clone(), n.settings.clone(), Arc::new(ThreadLauncher), Arc::new(SystemClock)).unwrap();
    sup.start();
    sup.set_condition(NETWORK_READY);
    let s = wait_until(&sup, "the kubelet crashed twice", |s| s.services["kubelet"].restarts >= 2).await;
    assert_eq!(s.services["kubelet"].last_exit, Some(Exit::Code(5)));
    wait_until(&sup, "kube-proxy up between crashes", |s| state(s, "kube-proxy") == ServiceState::Healthy).await;
    // Let kube-proxy install its SIG_IGN before shutdown.
    for _ in 0..200 {
        if sup.logs("kube-proxy").unwrap().backlog.iter().any(|l| l.text.contains("ignoring SIGTERM")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let began = std::time::Instant::now();
    sup.shutdown().await;
    assert!(began.elapsed() >= Duration::from_millis(500), "{:?}", began.elapsed());
    assert_eq!(sup.status("kube-proxy").unwrap().last_exit, Some(Exit::Signal(9)));
    assert!(sup.snapshot().services.values().all(|v| v.state
        == if v.name == node::sandbox_image::NAME { ServiceState::Completed } else { ServiceState::Stopped }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kubelet_it_is_absent_kube_proxy_is_blocked_on_it_and_containerd_runs() {
    let mut config = config();
    config.kubelet.binary = None;
    let n = node(&config);
    std::fs::write(&n.containerd_ready, "").unwrap();
    let mut specs = n.specs.clone();
    // The default path, unless this host happens to have a kubelet.
    if Path::new(paths::KUBELET_BINARY).exists() {
        let kubelet = specs.iter_mut().find(|s| s.name == "kubelet").unwrap();
        kubelet.argv[0] = "/nonexistent/kubelet".into();
    }
    let sup = Supervisor::new(specs, n.settings.clone(), Arc::new(ThreadLauncher), Arc::new(SystemClock)).unwrap();
    sup.start();
    sup.set_condition(NETWORK_READY);
    let s = wait_until(&sup, "kubelet absent, kube-proxy blocked on it", |s| {
        state(s, "kubelet") == ServiceState::Absent && state(s, "kube-proxy") == ServiceState::Blocked
    })
    .await;
    assert!(s.services["kubelet"].reason.contains("is not on this node"), "{}", s.services["kubelet"].reason);
    // kube-proxy needs a healthy kubelet, which can no longer come: blocked, naming why.
    let proxy = &s.services["kube-proxy"];
    assert!(
        proxy.reason.starts_with("cannot start: service kubelet is absent (program ")
            && proxy.reason.ends_with("kubelet is not on this node)"),
        "{}",
        proxy.reason
    );
    assert_eq!(proxy.restarts, 0, "kube-proxy was never started");
    assert_eq!(proxy.pid, None, "kube-proxy must not run without a kubelet");
    assert_eq!(state(&s, "containerd"), ServiceState::Healthy);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_kubelet_running_a_missing_kube_proxy_binary_is_absent() {
    let mut config = config();
    config.kube_proxy.binary = Some("/nonexistent/kube-proxy".into());
    let n = node(&config);
    std::fs::write(&n.containerd_ready, "").unwrap();
    let sup =
        Supervisor::new(n.specs.clone(), n.settings.clone(), Arc::new(ThreadLauncher), Arc::new(SystemClock)).unwrap();
    sup.start();
    sup.set_condition(NETWORK_READY);
    let s = wait_until(&sup, "kube-proxy absent", |s| state(s, "kube-proxy") == ServiceState::Absent).await;
    let proxy = &s.services["kube-proxy"];
    assert_eq!(proxy.reason, "program /nonexistent/kube-proxy is not on this node");
    assert_eq!(proxy.pid, None);
    assert_eq!(state(&s, "kubelet"), ServiceState::Healthy, "the kubelet runs without kube-proxy");
    sup.shutdown().await;
}
