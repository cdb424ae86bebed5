//! Starting one run of one container: image → overlay root → bundle →
//! output FIFOs → create at the runtime → log pumps. Every failure says
//! whether it can pass by itself ([`StartFailure::Failed`], tried again
//! after the back-off) or needs a new manifest ([`StartFailure::Blocked`]).

use super::build::{container_config, pod_cgroup, ContainerPaths};
use super::logs::OutputPipes;
use super::manager::ManagerConfig;
use super::state::{StartFailure, StartRequest};
use super::{ContainerRuntime, ImageError, Images, PodHost};
use crate::crilog::container_log_path;
use crate::status::WaitingReason;
use crate::Clock;
use kelson_base::error_chain;
use std::sync::Arc;
use tracing::{info, warn};

/// What the pipeline works with besides the runtime.
pub(super) struct Starter<'a> {
    pub config: &'a ManagerConfig,
    pub images: &'a Arc<dyn Images>,
    pub host: &'a Arc<dyn PodHost>,
    pub clock: &'a Arc<dyn Clock>,
}

fn blocked(reason: WaitingReason, message: String) -> StartFailure {
    StartFailure::Blocked { reason, message }
}

fn failed(reason: WaitingReason, message: String) -> StartFailure {
    StartFailure::Failed { reason, message }
}

impl Starter<'_> {
    /// Starts `request`'s container; when this returns `Ok` it runs and its
    /// output is being logged.
    pub async fn start<R: ContainerRuntime>(
        &self,
        runtime: &mut R,
        request: &StartRequest,
    ) -> Result<(), StartFailure> {
        let spec = &request.spec;
        let Some(spec_c) = spec.containers.get(request.index) else {
            return Err(blocked(WaitingReason::CreateContainerConfigError, "no such container in the pod".into()));
        };
        let restarts = request.restarts;
        let full = format!("{}/{}", spec.namespace, spec.name);

        // Image: blocking (reading and perhaps unpacking layers).
        let images = self.images.clone();
        let reference = spec_c.image.clone();
        let image = match tokio::task::spawn_blocking(move || images.prepare(&reference)).await {
            Ok(Ok(image)) => image,
            Ok(Err(error)) => {
                let reason = match error {
                    ImageError::NotFound { .. } => WaitingReason::ErrImageNeverPull,
                    ImageError::Failed { .. } => WaitingReason::CreateContainerError,
                };
                return Err(blocked(reason, error_chain(&error)));
            }
            Err(join) => {
                return Err(blocked(WaitingReason::CreateContainerError, format!("preparing the image: {join}")));
            }
        };

        let container_dir = self.config.container_dir(spec, &spec_c.name);
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
            Ok(Err(error)) => return Err(failed(WaitingReason::CreateContainerError, error_chain(&error))),
            Err(join) => return Err(failed(WaitingReason::CreateContainerError, join.to_string())),
        };
        let paths = ContainerPaths {
            rootfs,
            volumes_dir: self.config.volumes_dir(spec),
            cgroups_path: pod_cgroup(&self.config.cgroup_parent, spec).join(&spec_c.name),
        };
        let host_ip = self.config.host_ip.as_deref();
        let mut config =
            container_config(spec, spec_c, &image, &request.sandbox, host_ip, &paths, self.host.host_paths())
                .map_err(|error| blocked(WaitingReason::CreateContainerConfigError, error_chain(&error)))?;
        self.drop_missing_controllers(&full, &spec_c.name, &mut config.resources);
        self.host
            .write_bundle(&container_dir, &config)
            .map_err(|error| failed(WaitingReason::CreateContainerError, error_chain(&error)))?;

        let pipes =
            OutputPipes::open(self.host.as_ref(), &self.config.io_dir.join(&spec.uid.0), &spec_c.name, restarts)
                .map_err(|error| failed(WaitingReason::CreateContainerError, error_chain(&error)))?;
        let log_path = container_log_path(&self.config.log_root, spec, &spec_c.name, restarts);
        let log = self
            .host
            .open_log(&log_path, self.config.log_limits)
            .map_err(|error| failed(WaitingReason::CreateContainerError, error_chain(&error)))?;

        let created = runtime.create(&config.id, &container_dir, &pipes.paths[0], &pipes.paths[1]).await;
        // Both ends are open now (or the create failed).
        pipes.unlink(self.host.as_ref());
        created.map_err(|error| failed(WaitingReason::RunContainerError, error_chain(&error)))?;
        pipes.pump_into(log, self.clock);
        info!("container started: {full}/{} (restarts {restarts}, log {})", spec_c.name, log_path.display());
        Ok(())
    }

    /// Leaves out resource values whose cgroup controller the kernel does
    /// not offer: the runtime would fail to write them and the container
    /// would not start at all, which is worse than running unlimited.
    fn drop_missing_controllers(&self, full: &str, container: &str, resources: &mut kelson_containers::Resources) {
        let Ok(controllers) = self.host.cgroup_controllers(&self.config.cgroup_root) else { return };
        let has = |name: &str| controllers.iter().any(|c| c == name);
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
}
