//! What the pod manager runs on, on this node: the container shim (this
//! binary re-executed as `/proc/self/exe shim …`, started through the
//! reaper like every other child, unless one already answers on its
//! socket), sandboxes with kelson-net's veths on cbr0, and a prober whose
//! `exec` probes run through the reaper. The `pods` stage
//! ([`crate::stages::pods`]) puts them together.

use crate::reaper::Reaper;
use kelson_containers::shim::ShimOptions;
use kelson_containers::{ClientError, ShimClient, ShimCommand};
use kelson_net::plan::BridgePlan;
use kelson_net::{PodNetwork, RtNetlink};
use kelson_pods::runtime::netns::{self, NamespaceFiles, Unshare};
use kelson_pods::runtime::probe_exec::NetProber;
use kelson_pods::runtime::{host_sandbox, Prober, Sandbox, SandboxError, SandboxNetwork};
use kelson_pods::PodSpec;
use kelson_pods::ProbeAction;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Why the pods have no container shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("starting the container shim")]
    Start(#[source] std::io::Error),
    #[error("connecting to the container shim (pid {pid})")]
    Connect {
        pid: i32,
        #[source]
        source: ClientError,
    },
    #[error("clearing the running container shim: {what}")]
    Clear {
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("containers left in the shim did not exit within {seconds} s after SIGKILL")]
    ClearTimedOut { seconds: u64 },
}

pub const SHIM_SOCKET: &str = "/run/kelson/shim.sock";
pub const SHIM_STATE_DIR: &str = "/run/kelson/containers";

/// The node's prober: network probes by [`NetProber`], `exec` probes as a
/// re-exec of this program (`nsexec`, see [`crate::nsexec`]) started
/// through the reaper, which reaps every process on the node.
pub struct NodeProber {
    net: NetProber,
    reaper: Arc<Reaper>,
}

impl NodeProber {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        NodeProber { net: NetProber::new(), reaper }
    }
}

impl Prober for NodeProber {
    async fn probe(&self, action: &ProbeAction, host: &str, timeout: Duration) -> Result<(), String> {
        self.net.probe(action, host, timeout).await
    }

    async fn exec(&self, command: &[String], cgroup: &Path, timeout: Duration) -> Result<(), String> {
        let what = command.join(" ");
        let procs = cgroup.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(|e| format!("reading {}: {e}", procs.display()))?;
        let Some(target) = text.split_whitespace().next() else {
            return Err(format!("no process in {}", cgroup.display()));
        };
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg(crate::nsexec::SUBCOMMAND).arg(target).args(command);
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let spawned = self.reaper.spawn(&mut cmd).map_err(|e| format!("starting {what}: {e}"))?;
        match tokio::time::timeout(timeout, spawned.exit).await {
            Ok(Ok(exit)) if exit.success() => Ok(()),
            Ok(Ok(exit)) => Err(format!("{what} {exit}")),
            Ok(Err(_)) => Err(format!("{what}: its exit was lost")),
            Err(_) => {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawned.pid), nix::sys::signal::Signal::SIGKILL);
                Err(format!("{what} timed out after {timeout:?}"))
            }
        }
    }
}

const SHIM_LOG: &str = "/var/log/kelson/shim.log";

fn open_shim_log() -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all("/var/log/kelson")?;
    std::fs::OpenOptions::new().create(true).append(true).open(SHIM_LOG)
}

/// The shim that answers on its socket, or else a new one. Either way
/// the pod manager that asks starts with no containers (at boot, or after
/// it lost its shim and counted every container killed), so whatever a
/// running shim still has is killed and deleted first.
/// `stopping` says PID 1 is shutting the pods down, when the shim's exit
/// is expected.
pub async fn connect_or_start_shim(reaper: &Arc<Reaper>, stopping: &Arc<AtomicBool>) -> Result<ShimClient, ShimError> {
    let socket = Path::new(SHIM_SOCKET);
    if let Ok((mut client, containers)) = ShimClient::connect(socket, Duration::ZERO).await {
        info!("pods: using the running container shim ({} containers)", containers.len());
        clear_containers(&mut client, containers).await?;
        return Ok(client);
    }
    let options = ShimOptions { socket: socket.to_owned(), state_dir: PathBuf::from(SHIM_STATE_DIR), no_pivot: true };
    // Re-exec'd, never forked-and-continued: libcontainer must not run in
    // this multi-threaded process. Its log (libcontainer's own lines among
    // them) goes to a file: PID 1 already logs every container event that
    // matters on the console.
    let mut command = ShimCommand::init("/proc/self/exe", options).command();
    match open_shim_log() {
        Ok(log) => {
            command.stderr(log);
        }
        Err(e) => warn!("pods: the container shim logs to the console: opening {SHIM_LOG}: {e}"),
    }
    let spawned = reaper.spawn(&mut command).map_err(ShimError::Start)?;
    let pid = spawned.pid;
    let stopping = stopping.clone();
    tokio::spawn(async move {
        if let Ok(exit) = spawned.exit.await {
            // At shutdown the pods are stopped first; then the shim ends
            // with everything else, as expected.
            if stopping.load(Ordering::SeqCst) {
                info!("pods: the container shim (pid {pid}) exited: {exit}");
            } else {
                warn!("pods: the container shim (pid {pid}) exited: {exit}");
            }
        }
    });
    let (client, _) = ShimClient::connect(socket, Duration::from_secs(10))
        .await
        .map_err(|source| ShimError::Connect { pid, source })?;
    info!("pods: container shim started (pid {pid})");
    Ok(client)
}

/// Kills (SIGKILL) and deletes every container a running shim reports.
async fn clear_containers(
    client: &mut ShimClient,
    containers: Vec<kelson_containers::ContainerState>,
) -> Result<(), ShimError> {
    const LIMIT: Duration = Duration::from_secs(10);
    let mut running: Vec<String> = Vec::new();
    for container in &containers {
        if container.exit.is_none() {
            warn!("pods: killing container {} left in the shim", container.id);
            client
                .kill(&container.id, nix::sys::signal::Signal::SIGKILL as i32)
                .await
                .map_err(|source| ShimError::Clear { what: format!("killing container {}", container.id), source })?;
            running.push(container.id.clone());
        }
    }
    let waited = tokio::time::timeout(LIMIT, async {
        while !running.is_empty() {
            let exit = client
                .next_event()
                .await
                .map_err(|source| ShimError::Clear { what: "waiting for killed containers".into(), source })?;
            running.retain(|id| *id != exit.id);
        }
        Ok::<_, ShimError>(())
    })
    .await;
    match waited {
        Ok(result) => result?,
        Err(_) => return Err(ShimError::ClearTimedOut { seconds: LIMIT.as_secs() }),
    }
    for container in &containers {
        client
            .delete(&container.id)
            .await
            .map_err(|source| ShimError::Clear { what: format!("deleting container {}", container.id), source })?;
    }
    Ok(())
}

/// Sandboxes on this node: host-network pods use the host's network and
/// UTS namespaces and, unless `hostIPC`, an IPC namespace file of their
/// own; others get namespace files and an eth0 on cbr0 from kelson-net.
pub struct NodeSandboxes {
    pods: Option<PodNetwork<RtNetlink>>,
    host_ip: Option<String>,
    netns_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl NodeSandboxes {
    /// `bridge` is the plan's cbr0 (none: only host-network pods run);
    /// namespace files go to `netns_dir`, address allocations to
    /// `state_dir`. Must be called inside a tokio runtime (netlink).
    pub fn new(bridge: Option<BridgePlan>, host_ip: Option<String>, netns_dir: &Path, state_dir: &Path) -> Self {
        let pods = bridge.and_then(|bridge| match RtNetlink::open() {
            Ok(netlink) => Some(PodNetwork::new(netlink, bridge, state_dir)),
            Err(e) => {
                warn!("pods: no netlink socket for pod networking: {e}");
                None
            }
        });
        NodeSandboxes { pods, host_ip, netns_dir: netns_dir.to_owned() }
    }
}

fn sandbox_error(
    action: &'static str,
    pod: &PodSpec,
    source: impl std::error::Error + Send + Sync + 'static,
) -> SandboxError {
    SandboxError { action, pod: pod.full_name(), source: Box::new(source) }
}

impl NodeSandboxes {
    async fn make_namespaces(&self, pod: &PodSpec, which: Unshare) -> Result<NamespaceFiles, SandboxError> {
        let files = NamespaceFiles::for_pod(&self.netns_dir, &pod.uid.0);
        let (made, name) = (files.clone(), pod.name.clone());
        tokio::task::spawn_blocking(move || netns::create(&made, which, &name))
            .await
            .map_err(|e| sandbox_error("creating namespaces for", pod, Message(e.to_string())))?
            .map_err(|e| sandbox_error("creating namespaces for", pod, e))?;
        Ok(files)
    }
}

impl SandboxNetwork for NodeSandboxes {
    async fn create(&self, pod: &PodSpec) -> Result<Sandbox, SandboxError> {
        use kelson_containers::Namespace::Join;
        if pod.host_network {
            let mut sandbox = host_sandbox(pod, self.host_ip.clone());
            if !pod.host_ipc {
                sandbox.ipc = Join(self.make_namespaces(pod, Unshare::IPC_ONLY).await?.ipc);
            }
            return Ok(sandbox);
        }
        let Some(network) = &self.pods else {
            return Err(sandbox_error(
                "creating",
                pod,
                Message("the node has no pod network (no podCIDR/bridge configured)".into()),
            ));
        };
        let files = self.make_namespaces(pod, Unshare::pod_network(pod.host_ipc)).await?;
        let attachment = match network.attach(&files.net, &pod.uid.0).await {
            Ok(attachment) => attachment,
            Err(e) => {
                let _ = netns::remove(&files);
                return Err(sandbox_error("attaching to cbr0", pod, e));
            }
        };
        Ok(Sandbox {
            network: Join(files.net),
            ipc: if pod.host_ipc { kelson_containers::Namespace::Host } else { Join(files.ipc) },
            uts: Join(files.uts),
            pod_ip: Some(attachment.ip.addr().to_string()),
        })
    }

    async fn release(&self, pod: &PodSpec) -> Result<(), SandboxError> {
        if !pod.host_network {
            if let Some(network) = &self.pods {
                network.detach(&pod.uid.0).await.map_err(|e| sandbox_error("detaching", pod, e))?;
            }
        }
        // Whatever files the pod had (a host-network pod at most its IPC
        // one); missing ones are fine.
        let files = NamespaceFiles::for_pod(&self.netns_dir, &pod.uid.0);
        netns::remove(&files).map_err(|e| sandbox_error("removing namespaces of", pod, e))
    }
}
