//! The pod manager: one task that owns every static pod. It takes manifest
//! events and shutdown requests on a channel, container exits from the
//! runtime, probe results from its probe tasks, and its own deadlines
//! (restarts after back-off, SIGKILL after a grace period) from the clock.
//!
//! What to do about each of those is decided in [`super::state`]; this is
//! the executor of its actions: it starts pods (sandbox, volumes) and
//! containers ([`super::start`]), signals and deletes them at the runtime,
//! runs probe tasks, cleans up after stopped pods, and publishes the pods'
//! status on a `watch` channel, whose first subscriber writes the status
//! files ([`super::status_files`]).

use super::build::{memory_volume, pod_cgroup};
use super::probe_tasks::{spawn_probes, ProbeTarget};
use super::start::Starter;
use super::state::{Action, Pods, ProbeResult, StoppedPod};
use super::status_files::StatusFiles;
use super::{ContainerRuntime, Images, PodHost, PodsStatus, Prober, SandboxNetwork, VolumeError};
use crate::crilog::LogLimits;
use crate::spec::{PodSpec, VolumeSource};
use crate::watch::ManifestEvent;
use crate::Clock;
use kelson_base::error_chain;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

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

impl ManagerConfig {
    /// `<pods_dir>/<uid>/volumes`: the pod's emptyDirs.
    pub(super) fn volumes_dir(&self, spec: &PodSpec) -> PathBuf {
        self.pods_dir.join(&spec.uid.0).join("volumes")
    }

    /// `<pods_dir>/<uid>/containers/<name>`: overlay and bundle.
    pub(super) fn container_dir(&self, spec: &PodSpec, container: &str) -> PathBuf {
        self.pods_dir.join(&spec.uid.0).join("containers").join(container)
    }

    /// A pod's cgroup directory under the cgroup2 mount.
    pub(super) fn pod_cgroup_dir(&self, spec: &PodSpec) -> PathBuf {
        let relative = pod_cgroup(&self.cgroup_parent, spec);
        self.cgroup_root.join(relative.strip_prefix("/").unwrap_or(&relative))
    }
}

pub struct PodManager<R, N, P> {
    config: ManagerConfig,
    runtime: R,
    network: Arc<N>,
    prober: Arc<P>,
    images: Arc<dyn Images>,
    host: Arc<dyn PodHost>,
    clock: Arc<dyn Clock>,
    pods: Pods,
    /// Each running container's probe tasks, by (pod UID, index).
    probe_tasks: BTreeMap<(String, usize), Vec<JoinHandle<()>>>,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
    probe_rx: mpsc::UnboundedReceiver<ProbeResult>,
    status: watch::Sender<PodsStatus>,
    files: StatusFiles,
    /// Told when a shutdown has stopped every pod.
    shutdown_done: Option<oneshot::Sender<()>>,
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
        let (status, files_rx) = watch::channel(PodsStatus::default());
        let files = StatusFiles::new(config.status_dir.clone(), host.clone(), files_rx);
        PodManager {
            pods: Pods::new(config.host_ip.clone(), config.fixed_backoff),
            config,
            runtime,
            network,
            prober,
            images,
            host,
            clock,
            probe_tasks: BTreeMap::new(),
            probe_tx,
            probe_rx,
            status,
            files,
            shutdown_done: None,
        }
    }

    /// Every pod's status, now and as it changes (also after the manager
    /// has ended: the last status stays).
    pub fn subscribe(&self) -> watch::Receiver<PodsStatus> {
        self.status.subscribe()
    }

    /// Runs until a [`ManagerCommand::Shutdown`] has been carried out, or
    /// the command channel closes (then the pods are left running).
    pub async fn run(mut self, mut commands: mpsc::Receiver<ManagerCommand>) {
        let mut commands_open = true;
        loop {
            if self.pods.shutdown_finished() {
                if let Some(done) = self.shutdown_done.take() {
                    let _ = done.send(());
                }
                info!("pods: all stopped");
                return;
            }
            if !commands_open && !self.pods.shutting_down() {
                return;
            }
            let wait = self.pods.next_deadline().map(|at| at.saturating_duration_since(self.clock.now()));
            let sleep = match wait {
                Some(wait) => self.clock.sleep(wait),
                None => Box::pin(std::future::pending()),
            };
            let runtime_up = self.pods.runtime_up();
            let actions = tokio::select! {
                command = commands.recv(), if commands_open => match command {
                    Some(ManagerCommand::Manifests(events)) => {
                        for event in events {
                            let actions = self.pods.on_manifest(event, self.clock.as_ref());
                            self.apply(actions).await;
                        }
                        Vec::new()
                    }
                    Some(ManagerCommand::Shutdown(done)) => {
                        self.shutdown_done = Some(done);
                        self.pods.begin_shutdown(self.clock.as_ref())
                    }
                    None => {
                        commands_open = false;
                        Vec::new()
                    }
                },
                exit = self.runtime.next_exit(), if runtime_up => match exit {
                    Ok(exit) => self.pods.on_exit(exit, self.clock.as_ref()),
                    Err(error) => self.pods.on_runtime_lost(&error_chain(&error), self.clock.as_ref()),
                },
                Some(result) = self.probe_rx.recv() => self.pods.on_probe(result, self.clock.as_ref()),
                () = sleep => Vec::new(),
            };
            self.apply(actions).await;
            if self.pods.runtime_retry_due(self.clock.now()) {
                self.apply(vec![Action::RestartRuntime]).await;
            }
            let actions = self.pods.on_deadlines(self.clock.as_ref());
            self.apply(actions).await;
        }
    }

    /// Carries out `actions` in order; one whose outcome the state wants
    /// to hear is reported at once, and what that asks for is done before
    /// the next.
    fn apply(&mut self, actions: Vec<Action>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            for action in actions {
                let next = match action {
                    Action::StartPod(spec) => self.start_pod(*spec).await,
                    Action::StartContainer { uid, index } => self.start_container(&uid, index).await,
                    Action::StartProbes { uid, index, generation } => {
                        self.start_probes(&uid, index, generation);
                        Vec::new()
                    }
                    Action::StopProbes { uid, index } => {
                        for task in self.probe_tasks.remove(&(uid, index)).into_iter().flatten() {
                            task.abort();
                        }
                        Vec::new()
                    }
                    Action::Kill { id, signal } => {
                        if let Err(error) = self.runtime.kill(&id, signal).await {
                            warn!("pods: {}", error_chain(&error));
                        }
                        Vec::new()
                    }
                    Action::Delete { id } => {
                        if let Err(error) = self.runtime.delete(&id).await {
                            warn!("pods: {}", error_chain(&error));
                        }
                        Vec::new()
                    }
                    Action::CleanUp(pod) => {
                        self.clean_up(&pod).await;
                        info!("pod stopped: {}/{}", pod.spec.namespace, pod.spec.name);
                        Vec::new()
                    }
                    Action::RestartRuntime => {
                        let result = self.runtime.restart().await.map_err(|e| error_chain(&e));
                        self.pods.runtime_restarted(result, self.clock.as_ref())
                    }
                    Action::RemoveStaleCgroups { live } => {
                        self.remove_stale_cgroups(&live);
                        Vec::new()
                    }
                    Action::Publish => {
                        self.status.send_replace(self.pods.snapshot());
                        self.files.sync();
                        Vec::new()
                    }
                };
                if !next.is_empty() {
                    self.apply(next).await;
                }
            }
        })
    }

    /// The pod's sandbox and volumes, then the state's decision.
    async fn start_pod(&mut self, spec: PodSpec) -> Vec<Action> {
        for warning in &spec.warnings {
            warn!("pod {}/{}: {}: {}", spec.namespace, spec.name, warning.path, warning.reason);
        }
        let sandbox = self.network.create(&spec).await.inspect_err(|error| {
            warn!("pod {}/{}: sandbox not created: {}", spec.namespace, spec.name, error_chain(error));
        });
        let volumes = match &sandbox {
            Ok(_) => self.prepare_volumes(&spec).inspect_err(|error| {
                warn!("pod {}/{}: {}", spec.namespace, spec.name, error_chain(error));
            }),
            Err(_) => Ok(()),
        };
        self.pods.add_pod(spec, sandbox, volumes, self.clock.as_ref())
    }

    /// The pod's emptyDirs: directories, tmpfs for medium Memory.
    fn prepare_volumes(&self, spec: &PodSpec) -> Result<(), VolumeError> {
        let dir = self.config.volumes_dir(spec);
        for volume in &spec.volumes {
            if !matches!(volume.source, VolumeSource::EmptyDir { .. }) {
                continue;
            }
            let failed = |source| VolumeError { volume: volume.name.clone(), source };
            let path = dir.join(&volume.name);
            self.host.create_dir(&path).map_err(failed)?;
            if let Some(size) = memory_volume(&volume.source) {
                self.host.mount_tmpfs(&path, size).map_err(failed)?;
            }
        }
        Ok(())
    }

    async fn start_container(&mut self, uid: &str, index: usize) -> Vec<Action> {
        let Some(request) = self.pods.start_request(uid, index) else { return Vec::new() };
        let starter = Starter { config: &self.config, images: &self.images, host: &self.host, clock: &self.clock };
        match starter.start(&mut self.runtime, &request).await {
            Ok(()) => self.pods.container_started(uid, index, self.clock.as_ref()),
            Err(failure) => self.pods.start_failed(uid, index, failure, self.clock.as_ref()),
        }
    }

    fn start_probes(&mut self, uid: &str, index: usize, generation: u64) {
        let Some(request) = self.pods.start_request(uid, index) else { return };
        let spec = &request.spec;
        let Some(spec_c) = spec.containers.get(index) else { return };
        let target = ProbeTarget {
            uid: uid.to_owned(),
            container: index,
            generation,
            host: match &request.sandbox.pod_ip {
                Some(ip) if !spec.host_network => ip.clone(),
                _ => "127.0.0.1".to_owned(),
            },
            cgroup: self.config.pod_cgroup_dir(spec).join(&spec_c.name),
        };
        let tasks = spawn_probes(spec_c, &target, &self.prober, &self.clock, &self.probe_tx);
        for task in self.probe_tasks.insert((uid.to_owned(), index), tasks).into_iter().flatten() {
            task.abort();
        }
    }

    /// Everything a stopped pod leaves: overlays, volumes, cgroups, FIFOs
    /// and the sandbox (its status file goes with the next publish).
    /// Failures are logged and the rest goes on.
    async fn clean_up(&mut self, pod: &StoppedPod) {
        let spec = &pod.spec;
        let full = format!("{}/{}", spec.namespace, spec.name);
        for name in &pod.containers {
            if let Err(error) = self.host.remove_rootfs(&self.config.container_dir(spec, name)) {
                warn!("pod {full}: {}", error_chain(&error));
            }
        }
        for volume in &spec.volumes {
            if memory_volume(&volume.source).is_some() {
                if let Err(error) = self.host.unmount(&self.config.volumes_dir(spec).join(&volume.name)) {
                    warn!("pod {full}: {}", error_chain(&error));
                }
            }
        }
        for dir in [self.config.pods_dir.join(&spec.uid.0), self.config.io_dir.join(&spec.uid.0)] {
            if let Err(error) = self.host.remove_tree(&dir) {
                warn!("pod {full}: {}", error_chain(&error));
            }
        }
        if let Err(error) = self.host.remove_cgroup(&self.config.pod_cgroup_dir(spec)) {
            warn!("pod {full}: {}", error_chain(&error));
        }
        if pod.had_sandbox {
            if let Err(error) = self.network.release(spec).await {
                warn!("pod {full}: {}", error_chain(&error));
            }
        }
    }

    /// Pod cgroups of pods this manager no longer has. A pod stopped while
    /// the runtime was lost could not remove its cgroup (the lost
    /// containers were still in it); the new runtime has killed and
    /// deleted those, so now the directories go. Busy ones stay.
    fn remove_stale_cgroups(&self, live: &std::collections::BTreeSet<String>) {
        let parent = self.config.cgroup_root.join(&self.config.cgroup_parent);
        let Ok(dirs) = self.host.list_dirs(&parent) else { return };
        for dir in dirs {
            let uid = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if live.contains(&uid) {
                continue;
            }
            match self.host.remove_cgroup(&dir) {
                Ok(()) => info!("pods: removed cgroup {} of a pod stopped while the runtime was lost", dir.display()),
                Err(error) => warn!("pods: stale pod cgroup: {}", error_chain(&error)),
            }
        }
    }
}
