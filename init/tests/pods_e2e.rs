//! Static pods end to end, as root: the pod manager with the real shim
//! (`kelson-init shim`, the subcommand PID 1 re-executes itself with), a
//! busybox image in an OCI layout built here, overlay roots, CRI logs and,
//! for a sandboxed pod, namespace files and kelson-net's veth on a cbr0.
#![allow(clippy::unwrap_used)]

use kelson_test_support as common;

use common::{tar, write_layout, Entry, TAR_GZIP};
use kelson_containers::shim::ShimOptions;
use kelson_containers::store::ImageStore;
use kelson_containers::{ShimClient, ShimCommand};
use kelson_init::pod_runtime::NodeSandboxes;
use kelson_net::plan::{AddressRange, BridgePlan};
use kelson_pods::manifest::{parse, LoadOptions};
use kelson_pods::runtime::probe_exec::NetProber;
use kelson_pods::runtime::shim::{ShimRuntime, StoreImages, SystemHost};
use kelson_pods::runtime::{HostOnlyNetwork, ManagerCommand, ManagerConfig, PodManager, SandboxNetwork};
use kelson_pods::watch::ManifestEvent;
use kelson_pods::{PodSpec, SystemClock};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const INNER: &str = "KELSON_PODS_E2E_INNER";

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Runs `body` as root in a network namespace and a private mount namespace
/// of its own, with cgroup2 at /sys/fs/cgroup (libcontainer looks nowhere
/// else): the test binary re-runs itself for the one test under `unshare`,
/// so the manager's overlay mounts, the shim and the pod network share one
/// view, and the host's network is never touched.
fn isolated(test: &str, body: fn()) {
    if !nix::unistd::Uid::effective().is_root() {
        common::report_skip("needs root (namespaces, overlay mounts, containers)");
        return;
    }
    if std::env::var_os(INNER).is_some() {
        assert!(is_cgroup2(Path::new("/sys/fs/cgroup")), "no cgroup2 at /sys/fs/cgroup in the test's mount namespace");
        return body();
    }
    let status = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "sh",
            "-c",
            "if [ -d /sys/fs/cgroup/unified ]; then mount -t cgroup2 cgroup2 /sys/fs/cgroup; fi && ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed in its own namespaces (see above)");
}

#[test]
fn a_host_network_pod_runs_restarts_and_is_removed_under_the_real_shim() {
    isolated("a_host_network_pod_runs_restarts_and_is_removed_under_the_real_shim", host_network_pod);
}

#[test]
fn a_sandboxed_pod_gets_its_own_namespaces_an_address_on_cbr0_and_a_passing_http_probe() {
    isolated("a_sandboxed_pod_gets_its_own_namespaces_an_address_on_cbr0_and_a_passing_http_probe", sandboxed_pod);
}

/// The shim process, killed on drop.
struct Shim(std::process::Child);

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A busybox image layout, a shim, and where the manager keeps things.
struct Rig {
    dir: tempfile::TempDir,
    cgroup_parent: String,
    _shim: Shim,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let busybox = common::busybox();
        let mut entries = vec![Entry::Dir("bin/", 0o755), Entry::File("bin/busybox", &busybox, 0o755)];
        let applets = ["sh", "echo", "sleep", "hostname", "httpd", "cat", "grep"];
        let links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
        entries.extend(links.iter().map(|l| Entry::Symlink(l, "busybox")));
        for d in ["etc/", "proc/", "sys/", "dev/", "www/"] {
            entries.push(Entry::Dir(d, 0o755));
        }
        entries.push(Entry::File("www/index.html", b"ok\n", 0o644));
        entries.push(Entry::Dir("tmp/", 0o1777));
        write_layout(
            &root.join("layouts/busybox"),
            serde_json::json!({ "io.containerd.image.name": "docker.io/kelson/busybox:test" }),
            &[(TAR_GZIP, common::gzip(&tar(&entries)))],
            serde_json::json!({ "Cmd": ["sh"], "Env": ["PATH=/bin"] }),
        );
        let options =
            ShimOptions { socket: root.join("shim.sock"), state_dir: root.join("shim-state"), no_pivot: true };
        // KELSON_INIT_BIN runs the shim of another build (the image's static one).
        let binary = std::env::var_os("KELSON_INIT_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kelson-init")), PathBuf::from);
        let child = ShimCommand::init(binary, options).command().stdout(Stdio::null()).spawn().unwrap();
        Rig { dir, cgroup_parent: format!("kelson-test-{}-pods", std::process::id()), _shim: Shim(child) }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the manager with `network` on the current runtime.
    async fn manager<N: SandboxNetwork>(
        &self,
        network: N,
        host_ip: &str,
    ) -> (mpsc::Sender<ManagerCommand>, tokio::task::JoinHandle<()>) {
        let root = self.root();
        let config = ManagerConfig {
            status_dir: root.join("status"),
            pods_dir: root.join("pods"),
            log_root: root.join("log"),
            io_dir: root.join("io"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: self.cgroup_parent.clone(),
            host_ip: Some(host_ip.into()),
            fixed_backoff: Some(Duration::from_millis(200)),
            ..ManagerConfig::default()
        };
        let (client, _) = ShimClient::connect(&root.join("shim.sock"), Duration::from_secs(10)).await.unwrap();
        let manager = PodManager::new(
            config,
            ShimRuntime::new(client),
            Arc::new(network),
            Arc::new(NetProber::new()),
            Arc::new(StoreImages(ImageStore::new(root.join("layouts"), root.join("unpacked")))),
            Arc::new(SystemHost),
            Arc::new(SystemClock),
        );
        let (tx, rx) = mpsc::channel(4);
        (tx, tokio::spawn(manager.run(rx)))
    }

    fn status(&self, pod: &PodSpec) -> Option<serde_json::Value> {
        let file = self.root().join(format!("status/{}_{}.json", pod.namespace, pod.name));
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
    }

    fn log(&self, pod: &PodSpec, restarts: u32) -> Option<String> {
        std::fs::read_to_string(
            self.root().join(format!("log/{}_{}_{}/main/{restarts}.log", pod.namespace, pod.name, pod.uid)),
        )
        .ok()
    }

    /// Removes the pod and checks that what it had is gone, then ends the manager.
    async fn remove(&self, pod: &PodSpec, tx: mpsc::Sender<ManagerCommand>, task: tokio::task::JoinHandle<()>) {
        tx.send(ManagerCommand::Manifests(vec![ManifestEvent::Removed(pod.clone())])).await.unwrap();
        wait_for("the status file removed", || self.status(pod).is_none().then_some(())).await;
        assert!(!self.root().join("pods").join(&pod.uid.0).exists(), "the pod's overlay and volumes are gone");
        assert!(
            !Path::new("/sys/fs/cgroup").join(&self.cgroup_parent).join(&pod.uid.0).exists(),
            "the pod's cgroup is gone"
        );
        let (done, finished) = tokio::sync::oneshot::channel();
        tx.send(ManagerCommand::Shutdown(done)).await.unwrap();
        finished.await.unwrap();
        task.await.unwrap();
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn pod(name: &str, yaml: &str) -> PodSpec {
    parse(&PathBuf::from(format!("/etc/kubernetes/manifests/{name}.yaml")), yaml.as_bytes(), &LoadOptions::default())
        .unwrap()
}

fn host_network_pod() {
    let rig = Rig::new();
    let pod = pod(
        "hello",
        r#"
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
"#,
    );
    runtime().block_on(async {
        let (tx, task) = rig.manager(HostOnlyNetwork { host_ip: Some("127.0.0.1".into()) }, "127.0.0.1").await;
        tx.send(ManagerCommand::Manifests(vec![ManifestEvent::Added(pod.clone())])).await.unwrap();

        let status = wait_for("a restart after exit code 3", || {
            let status = rig.status(&pod)?;
            (status["containers"][0]["restartCount"].as_u64()? >= 1).then_some(status)
        })
        .await;
        eprintln!("status file: {status:#}");
        let last = &status["containers"][0]["lastState"]["terminated"];
        assert_eq!(last["exitCode"], 3, "{status:#}");
        assert_eq!(last["reason"], "Error");
        assert_eq!(status["podIP"], "127.0.0.1");

        let log = wait_for("both lines in the first run's CRI log", || {
            let log = rig.log(&pod, 0)?;
            (log.contains(" stdout F hello out\n") && log.contains(" stderr F hello err\n")).then_some(log)
        })
        .await;
        assert!(log.lines().all(|l| l.split(' ').count() >= 4), "CRI lines: time stream tag message: {log}");
        rig.remove(&pod, tx, task).await;
    });
}

fn sandboxed_pod() {
    let rig = Rig::new();
    for args in [
        &["link", "add", "cbr0", "type", "bridge"][..],
        &["addr", "add", "10.244.0.1/24", "dev", "cbr0"],
        &["link", "set", "cbr0", "up"],
    ] {
        assert!(std::process::Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    }
    let bridge = BridgePlan {
        name: "cbr0".into(),
        mtu: 1500,
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
        address: "10.244.0.1/24".parse().unwrap(),
        kelson_range: AddressRange { first: "10.244.0.2".parse().unwrap(), last: "10.244.0.127".parse().unwrap() },
        cni_range: AddressRange { first: "10.244.0.128".parse().unwrap(), last: "10.244.0.254".parse().unwrap() },
    };
    let pod = pod(
        "web",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kelson/busybox:test
    command: ["sh", "-c", "echo host=$(hostname); grep -c eth0 /proc/net/dev; exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 1
"#,
    );
    runtime().block_on(async {
        let network = NodeSandboxes::new(
            Some(bridge),
            Some("10.0.0.1".into()),
            &rig.root().join("netns"),
            &rig.root().join("net-state"),
        );
        let (tx, task) = rig.manager(network, "10.0.0.1").await;
        tx.send(ManagerCommand::Manifests(vec![ManifestEvent::Added(pod.clone())])).await.unwrap();
        let status = wait_for("the pod ready through its HTTP probe", || {
            let status = rig.status(&pod)?;
            (status["ready"] == true).then_some(status)
        })
        .await;
        eprintln!("status file: {status:#}");
        assert_eq!(status["podIP"], "10.244.0.2", "the first address of the lower half of the pod CIDR");
        let log = wait_for("the container's output", || rig.log(&pod, 0).filter(|l| l.contains(" stdout F 1\n"))).await;
        assert!(log.contains(" stdout F host=web\n"), "the pod's hostname in its UTS namespace: {log}");
        assert!(rig.root().join(format!("netns/{}-net", pod.uid)).exists());
        rig.remove(&pod, tx, task).await;
        assert!(!rig.root().join(format!("netns/{}-net", pod.uid)).exists(), "namespace files removed");
        let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains(" kv"), "the host veth is gone: {links}");
    });
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
