//! Static pods end to end, as root: the pod manager with the real shim
//! (`kelson-init shim`, the subcommand PID 1 re-executes itself with), a
//! busybox image in an OCI layout built here, overlay roots and CRI logs.
//!
//! libcontainer only looks for cgroup2 at /sys/fs/cgroup. On a hybrid host
//! (cgroup2 at /sys/fs/cgroup/unified) the test re-runs itself in a private
//! mount namespace with cgroup2 mounted there, so the manager's overlay
//! mounts and the shim share one view of the filesystem.
#![allow(clippy::unwrap_used)]

#[path = "../../services/containers/tests/common/mod.rs"]
mod common;

use common::{tar, write_layout, Entry, TAR_GZIP};
use kelson_containers::shim::ShimOptions;
use kelson_containers::store::ImageStore;
use kelson_containers::{ShimClient, ShimCommand};
use kelson_pods::manifest::{parse, LoadOptions};
use kelson_pods::runtime::probe_exec::NetProber;
use kelson_pods::runtime::shim::{ShimRuntime, StoreImages, SystemHost};
use kelson_pods::runtime::{HostOnlyNetwork, ManagerCommand, ManagerConfig, PodManager};
use kelson_pods::watch::ManifestEvent;
use kelson_pods::SystemClock;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

const INNER: &str = "KELSON_PODS_E2E_INNER";
const TEST: &str = "a_host_network_pod_runs_restarts_and_is_removed_under_the_real_shim";

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

#[test]
fn a_host_network_pod_runs_restarts_and_is_removed_under_the_real_shim() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (overlay mounts, containers)");
        return;
    }
    if is_cgroup2(Path::new("/sys/fs/cgroup")) {
        return run();
    }
    assert!(std::env::var_os(INNER).is_none(), "the private mount namespace has no cgroup2 at /sys/fs/cgroup");
    assert!(is_cgroup2(Path::new("/sys/fs/cgroup/unified")), "no cgroup2 hierarchy on this host");
    let status = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .status()
        .unwrap();
    assert!(status.success(), "the test in its own mount namespace failed");
}

/// The shim process, killed on drop.
struct Shim(std::process::Child);

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let busybox = common::busybox();
    let layer = tar(&[
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/busybox", &busybox, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Symlink("bin/echo", "busybox"),
        Entry::Symlink("bin/sleep", "busybox"),
        Entry::Dir("etc/", 0o755),
        Entry::Dir("proc/", 0o755),
        Entry::Dir("sys/", 0o755),
        Entry::Dir("dev/", 0o755),
        Entry::Dir("tmp/", 0o1777),
    ]);
    write_layout(
        &root.join("layouts/busybox"),
        serde_json::json!({ "io.containerd.image.name": "docker.io/kelson/busybox:test" }),
        &[(TAR_GZIP, common::gzip(&layer))],
        serde_json::json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }),
    );

    let socket = root.join("shim.sock");
    let options = ShimOptions { socket: socket.clone(), state_dir: root.join("shim-state"), no_pivot: true };
    let child = ShimCommand::init(env!("CARGO_BIN_EXE_kelson-init"), options).command().stdout(Stdio::null()).spawn().unwrap();
    let _shim = Shim(child);

    let cgroup_parent = format!("kelson-test-{}-pods", std::process::id());
    let config = ManagerConfig {
        status_dir: root.join("status"),
        pods_dir: root.join("pods"),
        log_root: root.join("log"),
        io_dir: root.join("io"),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        cgroup_parent: cgroup_parent.clone(),
        host_ip: Some("127.0.0.1".into()),
        fixed_backoff: Some(Duration::from_millis(200)),
        ..ManagerConfig::default()
    };
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: kube-system}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: kelson/busybox:test
    command: ["sh", "-c", "echo hello out; echo hello err >&2; exit 3"]
"#;
    let pod = parse(Path::new("/etc/kubernetes/manifests/hello.yaml"), manifest.as_bytes(), &LoadOptions::default()).unwrap();
    let status_file = root.join("status/kube-system_hello.json");
    let log_dir = root.join(format!("log/kube-system_hello_{}/main", pod.uid));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (client, _) = ShimClient::connect(&socket, Duration::from_secs(10)).await.unwrap();
        let manager = PodManager::new(
            config,
            ShimRuntime::new(client),
            Arc::new(HostOnlyNetwork { host_ip: Some("127.0.0.1".into()) }),
            Arc::new(NetProber),
            Arc::new(StoreImages(ImageStore::new(root.join("layouts"), root.join("unpacked")))),
            Arc::new(SystemHost),
            Arc::new(SystemClock),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(manager.run(rx));
        tx.send(ManagerCommand::Manifests(vec![ManifestEvent::Added(pod.clone())])).await.unwrap();

        let status = wait_for("a restart after exit code 3", || {
            let status: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&status_file).ok()?).ok()?;
            (status["containers"][0]["restartCount"].as_u64()? >= 1).then_some(status)
        })
        .await;
        eprintln!("status file: {status:#}");
        let last = &status["containers"][0]["lastState"]["terminated"];
        assert_eq!(last["exitCode"], 3, "{status:#}");
        assert_eq!(last["reason"], "Error");
        assert_eq!(status["podIP"], "127.0.0.1");

        let log = wait_for("both lines in the first run's CRI log", || {
            let log = std::fs::read_to_string(log_dir.join("0.log")).ok()?;
            (log.contains(" stdout F hello out\n") && log.contains(" stderr F hello err\n")).then_some(log)
        })
        .await;
        assert!(log.lines().all(|l| l.split(' ').count() >= 4), "CRI lines: time stream tag message: {log}");

        tx.send(ManagerCommand::Manifests(vec![ManifestEvent::Removed(pod.clone())])).await.unwrap();
        wait_for("the status file removed", || (!status_file.exists()).then_some(())).await;
        assert!(!root.join("pods").join(&pod.uid.0).exists(), "the pod's overlay and volumes are gone");
        assert!(!Path::new("/sys/fs/cgroup").join(&cgroup_parent).join(&pod.uid.0).exists(), "the pod's cgroup is gone");

        let (done, finished) = tokio::sync::oneshot::channel();
        tx.send(ManagerCommand::Shutdown(done)).await.unwrap();
        finished.await.unwrap();
        task.await.unwrap();
    });
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&cgroup_parent));
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(found) = check() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
