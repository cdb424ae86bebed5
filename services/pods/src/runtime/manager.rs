//! The pod manager: one task that owns every static pod. It takes manifest
//! events and shutdown requests on a channel, container exits from the
//! runtime, probe results from its probe tasks, and its own deadlines
//! (restarts after back-off, SIGKILL after a grace period) from the clock.
//!
//! Per container: image → overlay root → config.json → FIFOs for output
//! (pumped into CRI logs by this process, so lines get PID 1's timestamps)
//! → create. Per exit: restart policy and the crash-loop back-off. A pod
//! that is removed or replaced gets SIGTERM, its grace period, SIGKILL,
//! then its containers, mounts, volumes, cgroups and sandbox are removed.

use super::build::{container_config, container_id, memory_volume, pod_cgroup, ContainerPaths};
use super::{ContainerRuntime, ExitInfo, ImageError, Images, PodHost, Prober, Sandbox, SandboxNetwork};
use crate::crilog::{container_log_path, pump, ContainerLog, LogLimits, Stream};
use crate::hostpath::RealFs;
use crate::probe::{ContainerProbes, ProbeKind, ProbeVerdict};
use crate::restart::{NextStep, RestartTracker};
use crate::spec::{PodSpec, ProbeAction, ProbeSpec, VolumeSource};
use crate::status::{remove_status, PodStatus, TerminatedReason, WaitingReason};
use crate::watch::ManifestEvent;
use crate::Clock;
use kelson_base::error_chain;
use kelson_base::Exit;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// Where things go, and the knobs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Status files: `<dir>/<ns>_<name>.json`.
    pub status_dir: PathBuf,
    /// Per pod: `<dir>/<uid>/containers/<name>` (overlay, config.json) and
    /// `<dir>/<uid>/volumes/<name>` (emptyDirs).
    pub pods_dir: PathBuf,
    /// CRI logs: `<root>/<ns>_<name>_<uid>/<container>/<restarts>.log`.
    pub log_root: PathBuf,
    /// Output FIFOs: `<dir>/<uid>/<container>-<restarts>.{out,err}`.
    pub io_dir: PathBuf,
    /// The cgroup2 mount, to remove pod cgroups after their containers.
    pub cgroup_root: PathBuf,
    /// Pods' cgroups live under `<cgroup_root>/<parent>/<uid>/<container>`.
    pub cgroup_parent: String,
    pub host_ip: Option<String>,
    /// Replaces the crash-loop back-off with a fixed delay (a test knob).
    pub fixed_backoff: Option<Duration>,
    pub log_limits: LogLimits,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            status_dir: crate::status::STATUS_DIR.into(),
            pods_dir: "/var/lib/kelson/pods".into(),
            log_root: crate::crilog::LOG_ROOT.into(),
            io_dir: "/run/kelson/pod-io".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_parent: "kelson.slice/pods".into(),
            host_ip: None,
            fixed_backoff: None,
            log_limits: LogLimits::default(),
        }
    }
}

/// What the manager is told.
#[derive(Debug)]
pub enum ManagerCommand {
    Manifests(Vec<ManifestEvent>),
    /// Stop every pod, last started first, each within its grace period;
    /// the sender hears when all are gone and the manager has ended.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Never started, or waiting to start again (see `restart_at`).
    Idle,
    Running,
    /// Exited and deleted at the runtime.
    Exited,
    /// Cannot start until the manifest changes (unknown image, bad config).
    Blocked,
}

struct Ctr {
    name: String,
    id: String,
    run: Run,
    tracker: RestartTracker,
    starts: u32,
    restart_at: Option<Instant>,
    /// SIGKILL after a liveness failure's grace period.
    kill_at: Option<Instant>,
    probes: ContainerProbes,
    /// Bumped on each start, so results of an earlier run's probes are
    /// ignored.
    generation: u64,
    probe_tasks: Vec<JoinHandle<()>>,
}

struct Stopping {
    kill_at: Instant,
    killed: bool,
}

struct Pod {
    spec: PodSpec,
    status: PodStatus,
    sandbox: Option<Sandbox>,
    containers: Vec<Ctr>,
    stopping: Option<Stopping>,
    /// Started once this pod is gone (the manifest changed).
    then: Option<PodSpec>,
}

/// The runtime died; another is tried at `retry_at`.
struct RuntimeLost {
    retry_at: Instant,
    failures: u32,
}

/// The longest wait between attempts to start a new runtime.
const RUNTIME_RETRY_CAP: Duration = Duration::from_secs(30);

/// In the status of a container whose runtime died under it.
const LOST_MESSAGE: &str =
    "the container shim was lost; the container was killed and is started again under a new shim";

struct ProbeResult {
    uid: String,
    container: usize,
    generation: u64,
    kind: ProbeKind,
    result: Result<(), String>,
}

pub struct PodManager<R, N, P> {
    config: ManagerConfig,
    runtime: R,
    network: Arc<N>,
    prober: Arc<P>,
    images: Arc<dyn Images>,
    host: Arc<dyn PodHost>,
    clock: Arc<dyn Clock>,
    /// By UID, in start order.
    pods: BTreeMap<String, Pod>,
    order: Vec<String>,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
    probe_rx: mpsc::UnboundedReceiver<ProbeResult>,
    shutdown: Option<(VecDeque<String>, oneshot::Sender<()>)>,
    runtime_lost: Option<RuntimeLost>,
}

impl<R: ContainerRuntime, N: SandboxNetwork, P: Prober> PodManager<R, N, P> {
    pub fn new(
        config: ManagerConfig,
        runtime: R,
        network: Arc<N>,
        prober: Arc<P>,
        images: Arc<dyn Images>,
        host: Arc<dyn PodHost>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        PodManager {
            config,
            runtime,
            network,
            prober,
            images,
            host,
            clock,
            pods: BTreeMap::new(),
            order: Vec::new(),
            probe_tx,
            probe_rx,
            shutdown: None,
            runtime_lost: None,
        }
    }

    /// Runs until a [`ManagerCommand::Shutdown`] has been carried out, or
    /// the command channel closes (then the pods are left running).
    pub async fn run(mut self, mut commands: mpsc::Receiver<ManagerCommand>) {
        let mut commands_open = true;
        loop {
            if let Some((queue, _)) = &self.shutdown {
                if queue.is_empty() && self.pods.is_empty() {
                    if let Some((_, done)) = self.shutdown.take() {
                        let _ = done.send(());
                    }
                    info!("pods: all stopped");
                    return;
                }
            }
            if !commands_open && self.shutdown.is_none() {
                return;
            }
            let wait = self.next_deadline().map(|at| at.saturating_duration_since(self.clock.now()));
            let sleep = match wait {
                Some(wait) => self.clock.sleep(wait),
                None => Box::pin(std::future::pending()),
            };
            let runtime_up = self.runtime_lost.is_none();
            tokio::select! {
                command = commands.recv(), if commands_open => match command {
                    Some(ManagerCommand::Manifests(events)) => {
                        for event in events {
                            self.on_manifest(event).await;
                        }
                    }
                    Some(ManagerCommand::Shutdown(done)) => self.begin_shutdown(done).await,
                    None => commands_open = false,
                },
                exit = self.runtime.next_exit(), if runtime_up => match exit {
                    Ok(exit) => self.on_exit(exit).await,
                    Err(error) => self.on_runtime_lost(error).await,
                },
                Some(result) = self.probe_rx.recv() => self.on_probe(result).await,
                () = sleep => {}
            }
            self.on_deadlines().await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        // Without a runtime, restarts wait for the next attempt at one.
        let retry = self.runtime_lost.as_ref().map(|lost| lost.retry_at);
        self.pods
            .values()
            .flat_map(|pod| {
                let stop = pod.stopping.as_ref().filter(|s| !s.killed).map(|s| s.kill_at);
                pod.containers.iter().flat_map(|c| [c.restart_at.filter(|_| retry.is_none()), c.kill_at]).chain([stop])
            })
            .chain([retry])
            .flatten()
            .min()
    }

    /// The runtime died and its containers with it (the new one kills what
    /// is left of them): each running container has exited, and restarts
    /// as its policy says once a new runtime is up.
    async fn on_runtime_lost(&mut self, error: super::RuntimeError) {
        warn!(
            "pods: the container runtime is gone ({}); its containers count as killed and start again under a new one",
            error_chain(&error)
        );
        self.runtime_lost = Some(RuntimeLost { retry_at: self.clock.now(), failures: 0 });
        let running: Vec<(String, usize, String)> = self
            .pods
            .iter()
            .flat_map(|(uid, pod)| {
                pod.containers
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.run == Run::Running)
                    .map(|(i, c)| (uid.clone(), i, c.id.clone()))
            })
            .collect();
        for (uid, index, id) in running {
            let exit = ExitInfo { id, exit: Exit::Signal(SIGKILL), oom_killed: false };
            self.record_exit(&uid, index, exit, Some(LOST_MESSAGE.to_owned())).await;
        }
    }

    async fn restart_runtime(&mut self) {
        let Some(lost) = &mut self.runtime_lost else { return };
        match self.runtime.restart().await {
            Ok(()) => {
                info!("pods: a new container runtime is up");
                self.runtime_lost = None;
                self.remove_stale_cgroups();
            }
            Err(error) => {
                lost.failures += 1;
                let delay = Duration::from_secs(1u64 << lost.failures.min(5)).min(RUNTIME_RETRY_CAP);
                lost.retry_at = self.clock.now() + delay;
                warn!("pods: no container runtime, trying again in {} s: {}", delay.as_secs(), error_chain(&error));
            }
        }
    }

    async fn on_manifest(&mut self, event: ManifestEvent) {
        if self.shutdown.is_some() {
            return;
        }
        match event {
            ManifestEvent::Added(spec) => self.start_pod(spec).await,
            ManifestEvent::Changed { old, new } => {
                info!("pod changed: {}/{}: replacing it", new.namespace, new.name);
                if self.pods.contains_key(&old.uid.0) {
                    if let Some(pod) = self.pods.get_mut(&old.uid.0) {
                        pod.then = Some(*new);
                    }
                    self.stop_pod(&old.uid.0).await;
                } else {
                    self.start_pod(*new).await;
                }
            }
            ManifestEvent::Removed(spec) => {
                info!("pod removed: {}/{}: stopping it", spec.namespace, spec.name);
                self.stop_pod(&spec.uid.0).await;
            }
            ManifestEvent::Rejected(error) => {
                for field in error.errors() {
                    warn!("pod rejected: {}: {}: {}", error.file().display(), field.path, field.reason);
                }
                if error.errors().is_empty() {
                    warn!("pod rejected: {}: {}", error.file().display(), error_chain(&error));
                }
            }
        }
    }

    async fn start_pod(&mut self, spec: PodSpec) {
        let uid = spec.uid.0.clone();
        for warning in &spec.warnings {
            warn!("pod {}/{}: {}: {}", spec.namespace, spec.name, warning.path, warning.reason);
        }
        let mut status = PodStatus::new(&spec, self.config.host_ip.clone(), self.clock.wall());
        let containers = spec
            .containers
            .iter()
            .map(|c| Ctr {
                name: c.name.clone(),
                id: container_id(&spec, &c.name),
                run: Run::Idle,
                tracker: RestartTracker::new(),
                starts: 0,
                restart_at: None,
                kill_at: None,
                probes: ContainerProbes::new(c),
                generation: 0,
                probe_tasks: Vec::new(),
            })
            .collect();
        let sandbox = match self.network.create(&spec).await {
            Ok(sandbox) => {
                if let Some(ip) = &sandbox.pod_ip {
                    status.pod_ip = Some(ip.clone());
                }
                Some(sandbox)
            }
            Err(error) => {
                let message = error_chain(&error);
                warn!("pod {}/{}: sandbox not created: {message}", spec.namespace, spec.name);
                for c in &mut status.containers {
                    c.set_waiting(WaitingReason::CreateContainerError, Some(message.clone()));
                }
                status.message = Some(message);
                None
            }
        };
        let mut pod = Pod { spec, status, sandbox, containers, stopping: None, then: None };
        if pod.sandbox.is_some() {
            if let Err(message) = self.prepare_volumes(&pod.spec) {
                warn!("pod {}/{}: {message}", pod.spec.namespace, pod.spec.name);
                for c in &mut pod.status.containers {
                    c.set_waiting(WaitingReason::CreateContainerConfigError, Some(message.clone()));
                }
                pod.status.message = Some(message);
            }
        }
        let blocked = pod.sandbox.is_none() || pod.status.message.is_some();
        if blocked {
            for c in &mut pod.containers {
                c.run = Run::Blocked;
            }
        }
        info!(
            "pod started: {}/{} (uid {}, {} containers)",
            pod.spec.namespace,
            pod.spec.name,
            uid,
            pod.containers.len()
        );
        self.pods.insert(uid.clone(), pod);
        self.order.push(uid.clone());
        if !blocked {
            let count = self.pods.get(&uid).map_or(0, |p| p.containers.len());
            for index in 0..count {
                self.start_container(&uid, index).await;
            }
        }
        self.write_status(&uid);
    }

    /// The pod's emptyDirs: directories, tmpfs for medium Memory.
    fn prepare_volumes(&self, spec: &PodSpec) -> Result<(), String> {
        let dir = self.volumes_dir(spec);
        for volume in &spec.volumes {
            if !matches!(volume.source, VolumeSource::EmptyDir { .. }) {
                continue;
            }
            let path = dir.join(&volume.name);
            std::fs::create_dir_all(&path).map_err(|e| format!("creating emptyDir {}: {e}", path.display()))?;
            if let Some(size) = memory_volume(&volume.source) {
                self.host.mount_tmpfs(&path, size).map_err(|e| error_chain(&e))?;
            }
        }
        Ok(())
    }

    fn volumes_dir(&self, spec: &PodSpec) -> PathBuf {
        self.config.pods_dir.join(&spec.uid.0).join("volumes")
    }

    fn container_dir(&self, spec: &PodSpec, container: &str) -> PathBuf {
        self.config.pods_dir.join(&spec.uid.0).join("containers").join(container)
    }

    async fn start_container(&mut self, uid: &str, index: usize) {
        let Some(pod) = self.pods.get(uid) else { return };
        let Some(spec_c) = pod.spec.containers.get(index).cloned() else { return };
        let Some(sandbox) = pod.sandbox.clone() else { return };
        let spec = pod.spec.clone();
        let restarts = pod.containers[index].starts;
        let full = format!("{}/{}", spec.namespace, spec.name);

        // Image: blocking (reading and perhaps unpacking layers).
        let images = self.images.clone();
        let reference = spec_c.image.clone();
        let prepared = tokio::task::spawn_blocking(move || images.prepare(&reference)).await;
        let image = match prepared {
            Ok(Ok(image)) => image,
            Ok(Err(error)) => {
                let reason = match error {
                    ImageError::NotFound { .. } => WaitingReason::ErrImageNeverPull,
                    ImageError::Failed { .. } => WaitingReason::CreateContainerError,
                };
                let message = error_chain(&error);
                warn!("container {full}/{}: not started: {message}", spec_c.name);
                self.block(uid, index, reason, message);
                return;
            }
            Err(join) => {
                self.block(uid, index, WaitingReason::CreateContainerError, format!("preparing the image: {join}"));
                return;
            }
        };

        let container_dir = self.container_dir(&spec, &spec_c.name);
        // A restarted container starts from its image again, as the
        // kubelet's new container would.
        let host = self.host.clone();
        let lower = image.lower.clone();
        let dir = container_dir.clone();
        let rootfs = tokio::task::spawn_blocking(move || {
            host.remove_rootfs(&dir)?;
            host.mount_rootfs(&lower, &dir)
        })
        .await;
        let rootfs = match rootfs {
            Ok(Ok(rootfs)) => rootfs,
            Ok(Err(error)) => {
                return self.failed_start(uid, index, WaitingReason::CreateContainerError, error_chain(&error)).await
            }
            Err(join) => {
                return self.failed_start(uid, index, WaitingReason::CreateContainerError, join.to_string()).await
            }
        };
        let paths = ContainerPaths {
            rootfs,
            volumes_dir: self.volumes_dir(&spec),
            cgroups_path: pod_cgroup(&self.config.cgroup_parent, &spec).join(&spec_c.name),
        };
        let config =
            match container_config(&spec, &spec_c, &image, &sandbox, self.config.host_ip.as_deref(), &paths, &RealFs) {
                Ok(mut config) => {
                    self.drop_missing_controllers(&full, &spec_c.name, &mut config.resources);
                    config
                }
                Err(error) => {
                    let message = error_chain(&error);
                    warn!("container {full}/{}: not started: {message}", spec_c.name);
                    self.block(uid, index, WaitingReason::CreateContainerConfigError, message);
                    return;
                }
            };
        if let Err(error) = kelson_containers::bundle::write(&container_dir, &config) {
            return self.failed_start(uid, index, WaitingReason::CreateContainerError, error_chain(&error)).await;
        }

        // Output: FIFOs read by this process, opened before the shim opens
        // them for writing (it refuses a FIFO without a reader).
        let log_path = container_log_path(&self.config.log_root, &spec, &spec_c.name, restarts);
        let io_dir = self.config.io_dir.join(uid);
        let fifos = [Stream::Stdout, Stream::Stderr].map(|s| {
            io_dir.join(format!("{}-{restarts}.{}", spec_c.name, if s == Stream::Stdout { "out" } else { "err" }))
        });
        let readers = match open_fifos(&io_dir, &fifos) {
            Ok(readers) => readers,
            Err(message) => return self.failed_start(uid, index, WaitingReason::CreateContainerError, message).await,
        };
        let log = match ContainerLog::open(log_path.clone(), self.config.log_limits) {
            Ok(log) => Arc::new(Mutex::new(log)),
            Err(error) => {
                return self.failed_start(uid, index, WaitingReason::CreateContainerError, error_chain(&error)).await
            }
        };

        let id = config.id.clone();
        let created = self.runtime.create(&id, &container_dir, &fifos[0], &fifos[1]).await;
        for fifo in &fifos {
            // Both ends are open now (or the create failed): the names are
            // not needed any more.
            let _ = std::fs::remove_file(fifo);
        }
        if let Err(error) = created {
            return self.failed_start(uid, index, WaitingReason::RunContainerError, error_chain(&error)).await;
        }
        for (stream, reader) in [Stream::Stdout, Stream::Stderr].into_iter().zip(readers) {
            let log = log.clone();
            let clock = self.clock.clone();
            tokio::spawn(async move {
                if let Err(error) = pump(log, stream, reader, clock).await {
                    warn!("container log {}: {}", stream.as_str(), error_chain(&error));
                }
            });
        }

        let now = self.clock.wall();
        let generation = self.pods.get(uid).map_or(0, |p| p.containers[index].generation + 1);
        let probe_host = match &sandbox.pod_ip {
            Some(ip) if !spec.host_network => ip.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let mut probe_tasks = Vec::new();
        for (kind, probe) in [
            (ProbeKind::Startup, &spec_c.startup),
            (ProbeKind::Liveness, &spec_c.liveness),
            (ProbeKind::Readiness, &spec_c.readiness),
        ] {
            if let Some(probe) = probe {
                let cgroup = self.pod_cgroup_dir(&spec).join(&spec_c.name);
                probe_tasks.push(self.spawn_probe(
                    uid,
                    index,
                    generation,
                    kind,
                    probe.clone(),
                    probe_host.clone(),
                    cgroup,
                ));
            }
        }
        let Some(pod) = self.pods.get_mut(uid) else { return };
        let ctr = &mut pod.containers[index];
        ctr.tracker.started(self.clock.as_ref());
        ctr.starts += 1;
        ctr.run = Run::Running;
        ctr.restart_at = None;
        ctr.generation = generation;
        ctr.probes = ContainerProbes::new(&spec_c);
        ctr.probe_tasks = probe_tasks;
        let (started, ready) = (ctr.probes.started(), ctr.probes.ready());
        if let Some(status) = pod.status.container_mut(&spec_c.name) {
            status.set_running(now);
            status.set_probed(started, ready);
        }
        pod.status.message = None;
        info!("container started: {full}/{} (restarts {restarts}, log {})", spec_c.name, log_path.display());
        self.write_status(uid);
    }

    /// Leaves out resource values whose cgroup controller the kernel does
    /// not offer: the runtime would fail to write them and the container
    /// would not start at all, which is worse than running unlimited.
    fn drop_missing_controllers(&self, full: &str, container: &str, resources: &mut kelson_containers::Resources) {
        let Ok(text) = std::fs::read_to_string(self.config.cgroup_root.join("cgroup.controllers")) else { return };
        let has = |name: &str| text.split_whitespace().any(|c| c == name);
        if !has("cpu") && (resources.cpu_weight.is_some() || resources.cpu_max.is_some()) {
            warn!("container {full}/{container}: no cpu cgroup controller: cpu requests and limits are not applied");
            resources.cpu_weight = None;
            resources.cpu_max = None;
        }
        if !has("memory") && (resources.memory_max.is_some() || resources.memory_min.is_some()) {
            warn!(
                "container {full}/{container}: no memory cgroup controller: memory requests and limits are not applied"
            );
            resources.memory_max = None;
            resources.memory_min = None;
        }
    }

    /// Pod cgroups of pods this manager no longer has. A pod stopped while
    /// the runtime was lost could not remove its cgroup (the lost
    /// containers were still in it); the new runtime has killed and
    /// deleted those, so now the directories go. Busy ones stay.
    fn remove_stale_cgroups(&self) {
        let parent = self.config.cgroup_root.join(&self.config.cgroup_parent);
        let Ok(entries) = std::fs::read_dir(&parent) else { return };
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if self.pods.contains_key(&uid) || !entry.path().is_dir() {
                continue;
            }
            let dir = entry.path();
            match remove_pod_cgroup(&dir) {
                Ok(()) => info!("pods: removed cgroup {} of a pod stopped while the runtime was lost", dir.display()),
                Err(error) => warn!("pods: removing stale cgroup {}: {error}", dir.display()),
            }
        }
    }

    /// A pod's cgroup directory under the cgroup2 mount.
    fn pod_cgroup_dir(&self, spec: &PodSpec) -> PathBuf {
        let relative = pod_cgroup(&self.config.cgroup_parent, spec);
        self.config.cgroup_root.join(relative.strip_prefix("/").unwrap_or(&relative))
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_probe(
        &self,
        uid: &str,
        container: usize,
        generation: u64,
        kind: ProbeKind,
        probe: ProbeSpec,
        host: String,
        cgroup: PathBuf,
    ) -> JoinHandle<()> {
        let prober = self.prober.clone();
        let clock = self.clock.clone();
        let tx = self.probe_tx.clone();
        let uid = uid.to_owned();
        tokio::spawn(async move {
            clock.sleep(probe.initial_delay).await;
            loop {
                let limit = probe.timeout.max(Duration::from_millis(1));
                let attempt = async {
                    match &probe.action {
                        ProbeAction::Exec { command } => prober.exec(command, &cgroup, probe.timeout).await,
                        action => prober.probe(action, &host, probe.timeout).await,
                    }
                };
                let result = match tokio::time::timeout(limit, attempt).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("timed out after {:?}", probe.timeout)),
                };
                let sent = tx.send(ProbeResult { uid: uid.clone(), container, generation, kind, result });
                if sent.is_err() {
                    return;
                }
                clock.sleep(probe.period).await;
            }
        })
    }

    /// The container cannot start until its manifest changes.
    fn block(&mut self, uid: &str, index: usize, reason: WaitingReason, message: String) {
        let Some(pod) = self.pods.get_mut(uid) else { return };
        let ctr = &mut pod.containers[index];
        ctr.run = Run::Blocked;
        let name = ctr.name.clone();
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_waiting(reason, Some(message));
        }
        pod.status.update_phase(pod.spec.restart_policy);
        self.write_status(uid);
    }

    /// A start that failed in a way that may pass: tried again after the
    /// back-off, as a crashed container would be.
    async fn failed_start(&mut self, uid: &str, index: usize, reason: WaitingReason, message: String) {
        let Some(pod) = self.pods.get_mut(uid) else { return };
        let full = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        let policy = pod.spec.restart_policy;
        let ctr = &mut pod.containers[index];
        warn!("container {full}/{}: not started: {message}", ctr.name);
        ctr.tracker.started(self.clock.as_ref());
        ctr.starts += 1;
        ctr.run = Run::Exited;
        let name = ctr.name.clone();
        match ctr.tracker.exited(policy, Some(Exit::Code(128)), self.clock.as_ref()) {
            NextStep::Restart { delay } => {
                let delay = self.config.fixed_backoff.unwrap_or(delay);
                ctr.restart_at = Some(self.clock.now() + delay);
                ctr.run = Run::Idle;
            }
            NextStep::Stay => {}
        }
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_waiting(reason, Some(message));
        }
        pod.status.update_phase(policy);
        self.write_status(uid);
    }

    fn find(&self, id: &str) -> Option<(String, usize)> {
        self.pods.iter().find_map(|(uid, pod)| pod.containers.iter().position(|c| c.id == id).map(|i| (uid.clone(), i)))
    }

    async fn on_exit(&mut self, exit: ExitInfo) {
        let Some((uid, index)) = self.find(&exit.id) else { return };
        if let Err(error) = self.runtime.delete(&exit.id).await {
            warn!("pods: {}", error_chain(&error));
        }
        self.record_exit(&uid, index, exit, None).await;
    }

    /// A container has exited: its status, and a restart if its policy
    /// wants one.
    async fn record_exit(&mut self, uid: &str, index: usize, exit: ExitInfo, message: Option<String>) {
        let now = self.clock.wall();
        let backoff = self.config.fixed_backoff;
        let Some(pod) = self.pods.get_mut(uid) else { return };
        let full = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        let policy = pod.spec.restart_policy;
        let ctr = &mut pod.containers[index];
        for task in ctr.probe_tasks.drain(..) {
            task.abort();
        }
        ctr.run = Run::Exited;
        ctr.kill_at = None;
        let name = ctr.name.clone();
        let reason = crate::status::terminated_reason(exit.exit, exit.oom_killed);
        let code = match exit.exit {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        };
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_terminated(exit.exit, exit.oom_killed, now, message);
        }
        let reason = match reason {
            TerminatedReason::Completed => "Completed",
            TerminatedReason::Error => "Error",
            TerminatedReason::OomKilled => "OOMKilled",
        };
        info!("container exited: {full}/{name}: exit code {code}, reason {reason}");
        if pod.stopping.is_none() {
            match ctr.tracker.exited(policy, Some(exit.exit), self.clock.as_ref()) {
                NextStep::Restart { delay } => {
                    let delay = backoff.unwrap_or(delay);
                    ctr.restart_at = Some(self.clock.now() + delay);
                    ctr.run = Run::Idle;
                    info!("container restarting: {full}/{name} in {} ms", delay.as_millis());
                    if let Some(status) = pod.status.container_mut(&name) {
                        status.set_waiting(
                            WaitingReason::CrashLoopBackOff,
                            Some(format!(
                                "back-off {} restarting failed container={name} pod={}",
                                seconds(delay),
                                pod.spec.name
                            )),
                        );
                    }
                }
                NextStep::Stay => {}
            }
        }
        pod.status.update_phase(policy);
        self.write_status(uid);
        self.finish_stop_if_done(uid).await;
    }

    async fn on_probe(&mut self, result: ProbeResult) {
        let Some(pod) = self.pods.get_mut(&result.uid) else { return };
        if pod.stopping.is_some() {
            return;
        }
        let full = format!("{}/{}", pod.spec.namespace, pod.spec.name);
        let grace = pod.spec.termination_grace_period;
        let Some(ctr) = pod.containers.get_mut(result.container) else { return };
        if ctr.generation != result.generation || ctr.run != Run::Running {
            return;
        }
        let name = ctr.name.clone();
        let verdict = ctr.probes.record(result.kind, result.result.is_ok());
        let (started, ready) = (ctr.probes.started(), ctr.probes.ready());
        match verdict {
            ProbeVerdict::Nothing => return,
            ProbeVerdict::Started => info!("container {full}/{name}: startup probe succeeded"),
            ProbeVerdict::Ready(ready) => info!("container {full}/{name}: ready {ready}"),
            ProbeVerdict::Restart(kind) => {
                let why = result.result.err().unwrap_or_default();
                info!("container {full}/{name}: {kind:?} probe failed ({why}), restarting it");
                let probe = match kind {
                    ProbeKind::Startup => pod.spec.container(&name).and_then(|c| c.startup.as_ref()),
                    _ => pod.spec.container(&name).and_then(|c| c.liveness.as_ref()),
                };
                let grace = probe.and_then(|p| p.termination_grace_period).unwrap_or(grace);
                ctr.kill_at = Some(self.clock.now() + grace);
                for task in ctr.probe_tasks.drain(..) {
                    task.abort();
                }
                let id = ctr.id.clone();
                if let Err(error) = self.runtime.kill(&id, SIGTERM).await {
                    warn!("pods: {}", error_chain(&error));
                }
            }
        }
        let Some(pod) = self.pods.get_mut(&result.uid) else { return };
        if let Some(status) = pod.status.container_mut(&name) {
            status.set_probed(started, ready);
        }
        pod.status.update_phase(pod.spec.restart_policy);
        self.write_status(&result.uid);
    }

    async fn on_deadlines(&mut self) {
        if self.runtime_lost.as_ref().is_some_and(|lost| lost.retry_at <= self.clock.now()) {
            self.restart_runtime().await;
        }
        let now = self.clock.now();
        let runtime_up = self.runtime_lost.is_none();
        let mut restarts = Vec::new();
        let mut kills = Vec::new();
        for (uid, pod) in &mut self.pods {
            if let Some(stopping) = &mut pod.stopping {
                if !stopping.killed && stopping.kill_at <= now {
                    stopping.killed = true;
                    info!("pod {}/{}: grace period over, killing its containers", pod.spec.namespace, pod.spec.name);
                    kills.extend(pod.containers.iter().filter(|c| c.run == Run::Running).map(|c| c.id.clone()));
                }
                continue;
            }
            for (index, ctr) in pod.containers.iter_mut().enumerate() {
                if runtime_up && ctr.restart_at.is_some_and(|at| at <= now) {
                    ctr.restart_at = None;
                    restarts.push((uid.clone(), index));
                }
                if ctr.kill_at.is_some_and(|at| at <= now) {
                    ctr.kill_at = None;
                    if ctr.run == Run::Running {
                        kills.push(ctr.id.clone());
                    }
                }
            }
        }
        for id in kills {
            if let Err(error) = self.runtime.kill(&id, SIGKILL).await {
                warn!("pods: {}", error_chain(&error));
            }
        }
        for (uid, index) in restarts {
            self.start_container(&uid, index).await;
        }
    }

    async fn stop_pod(&mut self, uid: &str) {
        let kill_at = self.clock.now();
        let Some(pod) = self.pods.get_mut(uid) else { return };
        if pod.stopping.is_some() {
            return;
        }
        pod.stopping = Some(Stopping { kill_at: kill_at + pod.spec.termination_grace_period, killed: false });
        let mut running = Vec::new();
        for ctr in &mut pod.containers {
            ctr.restart_at = None;
            ctr.kill_at = None;
            for task in ctr.probe_tasks.drain(..) {
                task.abort();
            }
            if ctr.run == Run::Running {
                running.push(ctr.id.clone());
            }
        }
        for id in running {
            if let Err(error) = self.runtime.kill(&id, SIGTERM).await {
                warn!("pods: {}", error_chain(&error));
            }
        }
        self.finish_stop_if_done(uid).await;
    }

    async fn finish_stop_if_done(&mut self, uid: &str) {
        let done = self
            .pods
            .get(uid)
            .is_some_and(|pod| pod.stopping.is_some() && pod.containers.iter().all(|c| c.run != Run::Running));
        if !done {
            return;
        }
        let Some(pod) = self.pods.remove(uid) else { return };
        self.order.retain(|u| u != uid);
        self.clean_up(&pod).await;
        info!("pod stopped: {}/{}", pod.spec.namespace, pod.spec.name);
        if let Some(next) = pod.then {
            self.start_pod(next).await;
        }
        self.shutdown_next().await;
    }

    /// Everything a stopped pod leaves: overlays, volumes, cgroups, FIFOs,
    /// the sandbox and the status file. Failures are logged and the rest
    /// goes on.
    async fn clean_up(&mut self, pod: &Pod) {
        let spec = &pod.spec;
        let full = format!("{}/{}", spec.namespace, spec.name);
        for ctr in &pod.containers {
            if let Err(error) = self.host.remove_rootfs(&self.container_dir(spec, &ctr.name)) {
                warn!("pod {full}: {}", error_chain(&error));
            }
        }
        for volume in &spec.volumes {
            if memory_volume(&volume.source).is_some() {
                if let Err(error) = self.host.unmount(&self.volumes_dir(spec).join(&volume.name)) {
                    warn!("pod {full}: {}", error_chain(&error));
                }
            }
        }
        let pod_dir = self.config.pods_dir.join(&spec.uid.0);
        remove_tree(&pod_dir, &full);
        remove_tree(&self.config.io_dir.join(&spec.uid.0), &full);
        let cgroup = self.pod_cgroup_dir(spec);
        if let Err(error) = remove_pod_cgroup(&cgroup) {
            if error.kind() != std::io::ErrorKind::NotFound {
                warn!("pod {full}: removing cgroup {}: {error}", cgroup.display());
            }
        }
        if pod.sandbox.is_some() {
            if let Err(error) = self.network.release(spec).await {
                warn!("pod {full}: {}", error_chain(&error));
            }
        }
        if let Err(error) = remove_status(&self.config.status_dir, &spec.namespace, &spec.name) {
            warn!("pod {full}: {}", error_chain(&error));
        }
    }

    async fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        info!("pods: stopping {} pods", self.order.len());
        // Last started first: a control plane's apiserver goes before the
        // etcd it writes to.
        let queue: VecDeque<String> = self.order.iter().rev().cloned().collect();
        for pod in self.pods.values_mut() {
            pod.then = None;
        }
        self.shutdown = Some((queue, done));
        self.shutdown_next().await;
    }

    async fn shutdown_next(&mut self) {
        loop {
            let Some((queue, _)) = &mut self.shutdown else { return };
            // One pod at a time: the next starts stopping when this one is gone.
            if queue.front().is_some_and(|uid| self.pods.get(uid).is_some_and(|p| p.stopping.is_some())) {
                return;
            }
            let Some(uid) = queue.pop_front() else { return };
            if self.pods.contains_key(&uid) {
                // Boxed: stopping may finish the pod at once and come back here.
                Box::pin(self.stop_pod(&uid)).await;
            }
        }
    }

    fn write_status(&mut self, uid: &str) {
        let Some(pod) = self.pods.get_mut(uid) else { return };
        pod.status.update_phase(pod.spec.restart_policy);
        if let Err(error) = pod.status.write(&self.config.status_dir) {
            warn!("pod {}/{}: {}", pod.spec.namespace, pod.spec.name, error_chain(&error));
        }
    }
}

/// `10s` as the kubelet writes it; a test knob's sub-second delays as `0.2s`.
fn seconds(delay: Duration) -> String {
    if delay.subsec_millis() == 0 {
        format!("{}s", delay.as_secs())
    } else {
        format!("{}s", delay.as_secs_f64())
    }
}

/// A pod's cgroup directory: first what is left of its containers' (the
/// runtime removes each at delete; one is left only if that failed, and
/// then its rmdir fails too, busy), then its own.
fn remove_pod_cgroup(dir: &Path) -> std::io::Result<()> {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let _ = std::fs::remove_dir(child.path());
        }
    }
    std::fs::remove_dir(dir)
}

fn remove_tree(path: &Path, full: &str) {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            warn!("pod {full}: removing {}: {error}", path.display());
        }
        _ => {}
    }
}

/// Makes the two FIFOs and opens their read ends (non-blocking, so the
/// open does not wait for a writer).
fn open_fifos(dir: &Path, fifos: &[PathBuf; 2]) -> Result<[OwnedFd; 2], String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let open = |path: &PathBuf| -> Result<OwnedFd, String> {
        let _ = std::fs::remove_file(path);
        nix::unistd::mkfifo(path.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("creating FIFO {}: {e}", path.display()))?;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| format!("opening FIFO {}: {e}", path.display()))
    };
    Ok([open(&fifos[0])?, open(&fifos[1])?])
}
