//! The manager's decisions against fakes: a runtime that records calls and
//! exits on command, images from a list, mounts that only make directories,
//! a prober answering what the test says, and a clock that moves when told.

use super::*;
use crate::manifest::{parse, LoadOptions};
use crate::spec::ProbeAction;
use crate::watch::ManifestEvent;
use crate::FakeClock;
use kelson_containers::store::ImageDefaults;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

#[derive(Default)]
struct RuntimeState {
    calls: Vec<String>,
    running: BTreeSet<String>,
    /// Containers that ignore SIGTERM (as a pid namespace's init without a
    /// handler does).
    deaf: bool,
    /// Restarts of a lost runtime that fail before one succeeds.
    failing_restarts: u32,
}

#[derive(Clone)]
struct Handle {
    state: Arc<Mutex<RuntimeState>>,
    exits: mpsc::UnboundedSender<Result<ExitInfo, String>>,
}

impl Handle {
    fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.calls().iter().filter(|c| c.starts_with(prefix)).count()
    }
    fn exit(&self, id: &str, exit: Exit, oom_killed: bool) {
        self.state.lock().unwrap().running.remove(id);
        self.exits.send(Ok(ExitInfo { id: id.into(), exit, oom_killed })).unwrap();
    }
    /// The runtime dies, as a killed shim does.
    fn lose(&self) {
        self.exits.send(Err("the shim closed its socket".into())).unwrap();
    }
    fn running(&self) -> Vec<String> {
        self.state.lock().unwrap().running.iter().cloned().collect()
    }
}

struct FakeRuntime {
    handle: Handle,
    exits: mpsc::UnboundedReceiver<Result<ExitInfo, String>>,
}

impl ContainerRuntime for FakeRuntime {
    async fn create(&mut self, id: &str, bundle: &Path, stdout: &Path, _stderr: &Path) -> Result<(), RuntimeError> {
        assert!(bundle.join("config.json").is_file(), "the bundle is written before create");
        assert!(stdout.exists(), "the output FIFO exists at create");
        let mut state = self.handle.state.lock().unwrap();
        state.calls.push(format!("create {id}"));
        state.running.insert(id.to_owned());
        Ok(())
    }
    async fn kill(&mut self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let deaf = {
            let mut state = self.handle.state.lock().unwrap();
            state.calls.push(format!("kill {id} {signal}"));
            state.deaf
        };
        if signal == 9 || !deaf {
            self.handle.exit(id, Exit::Signal(signal), false);
        }
        Ok(())
    }
    async fn delete(&mut self, id: &str) -> Result<(), RuntimeError> {
        self.handle.state.lock().unwrap().calls.push(format!("delete {id}"));
        Ok(())
    }
    async fn next_exit(&mut self) -> Result<ExitInfo, RuntimeError> {
        match self.exits.recv().await {
            Some(Ok(exit)) => Ok(exit),
            Some(Err(lost)) => {
                Err(RuntimeError { action: "waiting for the exit of", id: "any".into(), source: lost.into() })
            }
            None => std::future::pending().await,
        }
    }
    async fn restart(&mut self) -> Result<(), RuntimeError> {
        let mut state = self.handle.state.lock().unwrap();
        state.calls.push("restart".into());
        if state.failing_restarts > 0 {
            state.failing_restarts -= 1;
            return Err(RuntimeError {
                action: "restarting",
                id: "every".into(),
                source: "the new shim did not answer".into(),
            });
        }
        state.running.clear();
        Ok(())
    }
}

struct FakeImages {
    lower: PathBuf,
}

impl Images for FakeImages {
    fn prepare(&self, reference: &str) -> Result<PreparedImage, ImageError> {
        if reference.starts_with("missing") {
            return Err(ImageError::NotFound { reference: reference.into(), source: "not in the test's list".into() });
        }
        Ok(PreparedImage {
            lower: self.lower.clone(),
            defaults: ImageDefaults { entrypoint: vec!["/bin/app".into()], ..ImageDefaults::default() },
        })
    }
}

#[derive(Default)]
struct FakeHost {
    calls: Mutex<Vec<String>>,
    /// Making a container's output FIFOs fails.
    fifos_fail: AtomicBool,
}

impl PodHost for FakeHost {
    fn mount_rootfs(&self, _lower: &Path, container_dir: &Path) -> Result<PathBuf, HostError> {
        let rootfs = container_dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        self.calls.lock().unwrap().push(format!("mount {}", container_dir.display()));
        Ok(rootfs)
    }
    fn remove_rootfs(&self, container_dir: &Path) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("remove {}", container_dir.display()));
        Ok(())
    }
    fn mount_tmpfs(&self, target: &Path, _size: Option<u64>) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("tmpfs {}", target.display()));
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("unmount {}", target.display()));
        Ok(())
    }

    // Files are real, inside the test's temporary directory: the tests
    // look at what is left there.

    fn create_dir(&self, dir: &Path) -> Result<(), HostError> {
        files::create_dir(dir)
    }
    fn remove_tree(&self, dir: &Path) -> Result<(), HostError> {
        files::remove_tree(dir)
    }
    fn remove_file(&self, path: &Path) -> Result<(), HostError> {
        files::remove_file(path)
    }
    fn open_fifo(&self, path: &Path) -> Result<OwnedFd, HostError> {
        if self.fifos_fail.load(Ordering::SeqCst) {
            return Err(HostError {
                action: "creating FIFO",
                path: path.to_owned(),
                source: "injected by the test".into(),
            });
        }
        files::open_fifo(path)
    }
    fn write_bundle(&self, dir: &Path, config: &ContainerConfig) -> Result<(), HostError> {
        files::write_bundle(dir, config)
    }
    fn open_log(&self, path: &Path, limits: LogLimits) -> Result<ContainerLog, HostError> {
        files::open_log(path, limits)
    }
    fn cgroup_controllers(&self, cgroup_root: &Path) -> Result<Vec<String>, HostError> {
        files::cgroup_controllers(cgroup_root)
    }
    fn remove_cgroup(&self, dir: &Path) -> Result<(), HostError> {
        self.calls.lock().unwrap().push(format!("rmdir {}", dir.display()));
        files::remove_cgroup(dir)
    }
    fn list_dirs(&self, dir: &Path) -> Result<Vec<PathBuf>, HostError> {
        files::list_dirs(dir)
    }
    fn write_status(&self, dir: &Path, status: &PodStatus) -> Result<(), StatusError> {
        files::write_status(dir, status)
    }
    fn remove_status(&self, dir: &Path, namespace: &str, name: &str) -> Result<(), StatusError> {
        files::remove_status_file(dir, namespace, name)
    }
    fn host_paths(&self) -> &dyn crate::hostpath::HostFs {
        &crate::hostpath::RealFs
    }
}

#[derive(Default)]
struct FakeProber {
    healthy: AtomicBool,
    /// Each exec probe run: its command and the cgroup it was aimed at.
    execs: Mutex<Vec<(Vec<String>, PathBuf)>>,
}

impl Prober for Arc<FakeProber> {
    async fn probe(&self, _action: &ProbeAction, _host: &str, _timeout: Duration) -> Result<(), String> {
        if self.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("connection refused".into())
        }
    }

    async fn exec(&self, command: &[String], cgroup: &Path, _timeout: Duration) -> Result<(), String> {
        self.execs.lock().unwrap().push((command.to_vec(), cgroup.to_owned()));
        if self.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("exited with code 1".into())
        }
    }
}

struct Rig {
    dir: tempfile::TempDir,
    clock: FakeClock,
    runtime: Handle,
    host: Arc<FakeHost>,
    prober: Arc<FakeProber>,
    commands: mpsc::Sender<ManagerCommand>,
    manager: tokio::task::JoinHandle<()>,
    /// The manager's published status.
    published: tokio::sync::watch::Receiver<PodsStatus>,
}

impl Rig {
    fn new(fixed_backoff: Option<Duration>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("image");
        std::fs::create_dir_all(&lower).unwrap();
        let clock = FakeClock::new();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let handle = Handle { state: Arc::default(), exits: exits_tx };
        let host = Arc::new(FakeHost::default());
        let prober = Arc::new(FakeProber::default());
        prober.healthy.store(true, Ordering::SeqCst);
        let config = ManagerConfig {
            status_dir: dir.path().join("status"),
            pods_dir: dir.path().join("pods"),
            log_root: dir.path().join("log"),
            io_dir: dir.path().join("io"),
            cgroup_root: dir.path().join("cgroup"),
            cgroup_parent: "kelson.slice/pods".into(),
            host_ip: Some("10.0.0.5".into()),
            fixed_backoff,
            log_limits: crate::crilog::LogLimits::default(),
        };
        let manager = PodManager::new(
            config,
            FakeRuntime { handle: handle.clone(), exits: exits_rx },
            Arc::new(HostOnlyNetwork { host_ip: Some("10.0.0.5".into()) }),
            Arc::new(prober.clone()),
            Arc::new(FakeImages { lower }),
            host.clone(),
            Arc::new(clock.clone()),
        );
        let published = manager.subscribe();
        let (commands, rx) = mpsc::channel(8);
        let manager = tokio::spawn(manager.run(rx));
        Rig { dir, clock, runtime: handle, host, prober, commands, manager, published }
    }

    async fn send(&self, events: Vec<ManifestEvent>) {
        self.commands.send(ManagerCommand::Manifests(events)).await.unwrap();
    }

    fn status(&self, name: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("status").join(format!("default_{name}.json"))).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    /// Moves the fake clock once the manager sleeps on it, then lets it act.
    async fn advance(&self, by: Duration) {
        settle().await;
        self.clock.advance(by);
        settle().await;
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn pod(file: &str, yaml: &str) -> PodSpec {
    parse(Path::new(file), yaml.as_bytes(), &LoadOptions::default()).unwrap()
}

/// A host-network pod with one container, `main`; `extra` goes into the
/// pod's spec.
fn simple(name: &str, image: &str, extra: &str) -> PodSpec {
    with_container(name, image, extra, "")
}

/// [`simple`]'s pod with `container_extra` (indented for it) in `main`.
fn with_container(name: &str, image: &str, extra: &str, container_extra: &str) -> PodSpec {
    pod(
        &format!("/m/{name}.yaml"),
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  hostNetwork: true\n{extra}  containers:\n  - name: main\n    image: {image}\n{container_extra}"
        ),
    )
}

fn id(pod: &PodSpec) -> String {
    super::build::container_id(pod, "main")
}

#[tokio::test]
async fn a_crashing_container_restarts_after_a_doubling_back_off() {
    let rig = Rig::new(None);
    let p = simple("crash", "busybox", "");
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("the container is created", || rig.runtime.count("create") == 1).await;
    assert_eq!(rig.status("crash").unwrap()["phase"], "Running");

    rig.runtime.exit(&id(&p), Exit::Code(3), false);
    eventually("the exit is in the status", || {
        rig.status("crash").is_some_and(|s| s["containers"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff")
    })
    .await;
    let status = rig.status("crash").unwrap();
    assert_eq!(
        status["containers"][0]["state"]["waiting"]["message"],
        "back-off 10s restarting failed container=main pod=crash"
    );
    assert_eq!(status["containers"][0]["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(status["containers"][0]["lastState"]["terminated"]["reason"], "Error");
    assert!(
        rig.runtime.calls().contains(&format!("delete {}", id(&p))),
        "an exited container is deleted before it is made again"
    );

    rig.advance(Duration::from_secs(9)).await;
    assert_eq!(rig.runtime.count("create"), 1, "no restart before 10 s");
    rig.advance(Duration::from_secs(1)).await;
    eventually("restarted after 10 s", || rig.runtime.count("create") == 2).await;
    eventually("restartCount 1", || rig.status("crash").is_some_and(|s| s["containers"][0]["restartCount"] == 1)).await;

    rig.runtime.exit(&id(&p), Exit::Code(3), false);
    rig.advance(Duration::from_secs(10)).await;
    assert_eq!(rig.runtime.count("create"), 2, "the second back-off is 20 s");
    rig.advance(Duration::from_secs(10)).await;
    eventually("restarted after 20 s", || rig.runtime.count("create") == 3).await;
    assert!(rig.dir.path().join(format!("log/default_crash_{}/main/2.log", p.uid)).is_file(), "one CRI log per run");
}

#[tokio::test]
async fn a_fixed_back_off_replaces_the_schedule_and_oom_kills_are_reported() {
    let rig = Rig::new(Some(Duration::from_millis(500)));
    let p = simple("oom", "busybox", "");
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("created", || rig.runtime.count("create") == 1).await;
    rig.runtime.exit(&id(&p), Exit::Signal(9), true);
    eventually("OOMKilled", || {
        rig.status("oom").is_some_and(|s| s["containers"][0]["lastState"]["terminated"]["reason"] == "OOMKilled")
    })
    .await;
    assert_eq!(rig.status("oom").unwrap()["containers"][0]["lastState"]["terminated"]["exitCode"], 137);
    rig.advance(Duration::from_millis(500)).await;
    eventually("restarted after the fixed back-off", || rig.runtime.count("create") == 2).await;
}

#[tokio::test]
async fn restart_policy_never_leaves_a_finished_container_terminated() {
    let rig = Rig::new(Some(Duration::from_millis(1)));
    let p = simple("once", "busybox", "  restartPolicy: Never\n");
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("created", || rig.runtime.count("create") == 1).await;
    rig.runtime.exit(&id(&p), Exit::Code(0), false);
    eventually("Succeeded", || rig.status("once").is_some_and(|s| s["phase"] == "Succeeded")).await;
    rig.advance(Duration::from_secs(60)).await;
    assert_eq!(rig.runtime.count("create"), 1);
    assert_eq!(rig.status("once").unwrap()["containers"][0]["state"]["terminated"]["reason"], "Completed");
}

#[tokio::test]
async fn a_removed_pod_gets_sigterm_then_sigkill_after_its_grace_and_is_cleaned_up() {
    let rig = Rig::new(None);
    rig.runtime.state.lock().unwrap().deaf = true;
    let p = simple(
        "slow",
        "busybox",
        "  terminationGracePeriodSeconds: 5\n  volumes:\n  - {name: shm, emptyDir: {medium: Memory}}\n",
    );
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("created", || rig.runtime.count("create") == 1).await;
    assert!(rig.host.calls.lock().unwrap().iter().any(|c| c.starts_with("tmpfs") && c.ends_with("volumes/shm")));

    rig.send(vec![ManifestEvent::Removed(p.clone())]).await;
    eventually("SIGTERM", || rig.runtime.count(&format!("kill {} 15", id(&p))) == 1).await;
    rig.advance(Duration::from_secs(4)).await;
    assert_eq!(rig.runtime.count("kill"), 1, "no SIGKILL within the grace period");
    assert!(rig.status("slow").is_some(), "the pod is still there while it stops");
    rig.advance(Duration::from_secs(1)).await;
    eventually("SIGKILL after 5 s", || rig.runtime.count(&format!("kill {} 9", id(&p))) == 1).await;
    eventually("status file removed", || rig.status("slow").is_none()).await;
    assert!(rig.runtime.calls().contains(&format!("delete {}", id(&p))));
    assert!(!rig.dir.path().join("pods").join(&p.uid.0).exists(), "the pod's directory is gone");
    let host = rig.host.calls.lock().unwrap().clone();
    assert!(host.iter().any(|c| c.starts_with("unmount") && c.ends_with("volumes/shm")), "{host:?}");
    assert!(host.iter().any(|c| c.starts_with("remove") && c.ends_with("containers/main")), "{host:?}");
}

#[tokio::test]
async fn a_changed_manifest_stops_the_old_pod_before_starting_the_new_one() {
    let rig = Rig::new(None);
    let old = simple("web", "busybox", "");
    let new = simple("web", "busybox:1.36", "");
    assert_ne!(old.uid, new.uid);
    rig.send(vec![ManifestEvent::Added(old.clone())]).await;
    eventually("created", || rig.runtime.count("create") == 1).await;
    rig.send(vec![ManifestEvent::Changed { old: Box::new(old.clone()), new: Box::new(new.clone()) }]).await;
    eventually("the new one is created", || rig.runtime.count("create") == 2).await;
    let calls = rig.runtime.calls();
    let killed = calls.iter().position(|c| *c == format!("kill {} 15", id(&old))).unwrap();
    let created = calls.iter().position(|c| *c == format!("create {}", id(&new))).unwrap();
    assert!(killed < created, "{calls:?}");
    eventually("status shows the new pod", || rig.status("web").is_some_and(|s| s["uid"] == new.uid.0.as_str())).await;
    assert_eq!(rig.runtime.running(), vec![id(&new)]);
}

#[tokio::test]
async fn an_unknown_image_waits_with_err_image_never_pull_and_other_pods_run() {
    let rig = Rig::new(None);
    let bad = simple("bad", "missing/image:1", "");
    let good = simple("good", "busybox", "");
    rig.send(vec![ManifestEvent::Added(bad.clone()), ManifestEvent::Added(good.clone())]).await;
    eventually("the good pod runs", || rig.status("good").is_some_and(|s| s["phase"] == "Running")).await;
    let status = rig.status("bad").unwrap();
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["containers"][0]["state"]["waiting"]["reason"], "ErrImageNeverPull");
    assert!(status["containers"][0]["state"]["waiting"]["message"].as_str().unwrap().contains("missing/image:1"));
    assert_eq!(rig.runtime.running(), vec![id(&good)]);
}

#[tokio::test]
async fn a_rejected_manifest_leaves_running_pods_alone() {
    let rig = Rig::new(None);
    let good = simple("good", "busybox", "");
    rig.send(vec![ManifestEvent::Added(good.clone())]).await;
    eventually("running", || rig.runtime.count("create") == 1).await;
    let error = parse(
        Path::new("/m/broken.yaml"),
        b"kind: Pod\napiVersion: v1\nspec: {containers: 3}\n",
        &LoadOptions::default(),
    )
    .unwrap_err();
    rig.send(vec![ManifestEvent::Rejected(error)]).await;
    settle().await;
    assert_eq!(rig.runtime.count("kill"), 0);
    assert_eq!(rig.runtime.running(), vec![id(&good)]);
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container_and_readiness_sets_ready() {
    let rig = Rig::new(Some(Duration::from_millis(1)));
    let probes = "    livenessProbe: {tcpSocket: {port: 80}, periodSeconds: 1, failureThreshold: 2}\n    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}\n";
    let p = with_container("live", "busybox", "", probes);
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("ready", || {
        rig.status("live").is_some_and(|s| s["containers"][0]["ready"] == true && s["ready"] == true)
    })
    .await;
    rig.prober.healthy.store(false, Ordering::SeqCst);
    rig.advance(Duration::from_secs(1)).await;
    assert_eq!(rig.runtime.count("kill"), 0, "one failure is below the threshold of two");
    // Periods pass until the second failure (a loaded machine may need more
    // than one advance for the probe task to be asleep on the clock).
    for _ in 0..20 {
        if rig.runtime.count("kill") > 0 {
            break;
        }
        rig.advance(Duration::from_secs(1)).await;
    }
    eventually("SIGTERM after two failures", || rig.runtime.count(&format!("kill {} 15", id(&p))) == 1).await;
    rig.prober.healthy.store(true, Ordering::SeqCst);
    rig.advance(Duration::from_millis(1)).await;
    eventually("restarted", || rig.runtime.count("create") == 2).await;
}

#[tokio::test]
async fn an_exec_probe_runs_its_command_against_the_containers_cgroup() {
    let rig = Rig::new(Some(Duration::from_millis(1)));
    let probe = "    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}\n";
    let p = with_container("ex", "busybox", "", probe);
    rig.prober.healthy.store(true, Ordering::SeqCst);
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("ready through the exec probe", || rig.status("ex").is_some_and(|s| s["ready"] == true)).await;
    let execs = rig.prober.execs.lock().unwrap().clone();
    let (command, cgroup) = execs.first().expect("an exec probe ran");
    assert_eq!(command, &["cat".to_owned(), "/tmp/ready".to_owned()]);
    assert!(cgroup.ends_with(format!("kelson.slice/pods/{}/main", p.uid)), "{}", cgroup.display());
}

#[tokio::test]
async fn shutdown_stops_pods_last_started_first_and_ends_the_manager() {
    let rig = Rig::new(None);
    let first = simple("etcd", "busybox", "");
    let second = simple("apiserver", "busybox", "");
    rig.send(vec![ManifestEvent::Added(first.clone()), ManifestEvent::Added(second.clone())]).await;
    eventually("both run", || rig.runtime.count("create") == 2).await;
    let (tx, rx) = oneshot::channel();
    rig.commands.send(ManagerCommand::Shutdown(tx)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    let kills: Vec<String> = rig.runtime.calls().into_iter().filter(|c| c.starts_with("kill")).collect();
    assert_eq!(kills, [format!("kill {} 15", id(&second)), format!("kill {} 15", id(&first))]);
    assert!(rig.status("etcd").is_none() && rig.status("apiserver").is_none());
    tokio::time::timeout(Duration::from_secs(5), rig.manager).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_lost_runtime_is_replaced_and_its_containers_restart_as_their_policy_says() {
    let rig = Rig::new(Some(Duration::from_millis(100)));
    let always = simple("etcd", "busybox", "");
    let never = simple("once", "busybox", "  restartPolicy: Never\n");
    rig.send(vec![ManifestEvent::Added(always.clone()), ManifestEvent::Added(never.clone())]).await;
    eventually("both run", || rig.runtime.count("create") == 2).await;
    rig.runtime.state.lock().unwrap().failing_restarts = 1;

    // A cgroup left by a pod stopped while the runtime was lost; the live
    // pod's own stays.
    let pods_cgroup = rig.dir.path().join("cgroup/kelson.slice/pods");
    std::fs::create_dir_all(pods_cgroup.join("gone-pod/main")).unwrap();
    std::fs::create_dir_all(pods_cgroup.join(&always.uid.0).join("main")).unwrap();
    rig.runtime.lose();
    eventually("the lost container is terminated in the status", || {
        rig.status("etcd").is_some_and(|s| s["containers"][0]["lastState"]["terminated"]["exitCode"] == 137)
    })
    .await;
    let etcd = rig.status("etcd").unwrap();
    assert!(
        etcd["containers"][0]["lastState"]["terminated"]["message"].as_str().unwrap().contains("shim was lost"),
        "{etcd:#}"
    );
    let once = rig.status("once").unwrap();
    assert_eq!(once["phase"], "Failed", "restartPolicy Never: a killed container stays terminated: {once:#}");
    eventually("a new runtime was tried at once", || rig.runtime.count("restart") == 1).await;

    // The first attempt failed: the next is 2 s later, and no container
    // is started without a runtime, although its back-off has passed.
    rig.advance(Duration::from_secs(1)).await;
    assert_eq!((rig.runtime.count("restart"), rig.runtime.count("create")), (1, 2));
    rig.advance(Duration::from_secs(1)).await;
    eventually("the second attempt", || rig.runtime.count("restart") == 2).await;
    eventually("etcd started again under the new runtime", || rig.runtime.count("create") == 3).await;
    eventually("restartCount 1", || {
        rig.status("etcd").is_some_and(|s| s["containers"][0]["restartCount"] == 1 && s["phase"] == "Running")
    })
    .await;
    assert_eq!(rig.runtime.running(), vec![id(&always)]);
    assert!(
        !rig.runtime.calls().iter().any(|c| c.starts_with("delete")),
        "lost containers are not the new runtime's to delete"
    );
    assert!(!pods_cgroup.join("gone-pod").exists(), "a stale pod cgroup is removed once a runtime is back");
    assert!(pods_cgroup.join(&always.uid.0).exists(), "a live pod's cgroup stays");

    // The new runtime reports exits as the old one did.
    rig.runtime.exit(&id(&always), Exit::Code(1), false);
    rig.advance(Duration::from_millis(100)).await;
    eventually("restarted again", || rig.runtime.count("create") == 4).await;
}

#[tokio::test]
async fn a_host_failure_before_create_is_retried_after_the_back_off_and_published_as_it_is_written() {
    let rig = Rig::new(Some(Duration::from_millis(100)));
    rig.host.fifos_fail.store(true, Ordering::SeqCst);
    let p = simple("fifo", "busybox", "");
    rig.send(vec![ManifestEvent::Added(p.clone())]).await;
    eventually("the failure is in the status file", || {
        rig.status("fifo").is_some_and(|s| s["containers"][0]["state"]["waiting"]["reason"] == "CreateContainerError")
    })
    .await;
    let message = rig.status("fifo").unwrap()["containers"][0]["state"]["waiting"]["message"].clone();
    let message = message.as_str().unwrap().to_owned();
    assert!(message.starts_with("creating FIFO ") && message.ends_with(": injected by the test"), "{message}");
    assert_eq!(rig.runtime.count("create"), 0, "nothing is created without its output FIFOs");
    let published = rig.published.borrow().clone();
    assert_eq!(published.pods.len(), 1);
    assert_eq!(
        serde_json::to_value(&published.pods[0]).unwrap(),
        rig.status("fifo").unwrap(),
        "the channel and the file say the same"
    );

    rig.host.fifos_fail.store(false, Ordering::SeqCst);
    rig.advance(Duration::from_millis(100)).await;
    eventually("created once the host works", || rig.runtime.count("create") == 1).await;
    eventually("running", || rig.status("fifo").is_some_and(|s| s["phase"] == "Running")).await;
    assert_eq!(rig.published.borrow().pods[0].phase, crate::status::PodPhase::Running);
}
