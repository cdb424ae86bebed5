//! The real seams: the container shim, kelson-containers' image store and
//! the host's mounts.

use super::{
    files, ContainerRuntime, ExitInfo, HostError, ImageError, Images, NotRestartable, PodHost, PreparedImage,
    RuntimeError,
};
use crate::crilog::{ContainerLog, LogLimits};
use crate::hostpath::{HostFs, RealFs};
use crate::status::{PodStatus, StatusError};
use kelson_base::Exit;
use kelson_containers::rootfs::{self, Mounter, SystemMounter};
use kelson_containers::store::ImageStore;
use kelson_containers::ContainerConfig;
use kelson_containers::{ExitEvent, ShimClient};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// Why [`StartShim`] could not give a new shim: the caller's own error.
pub type StartShimError = Box<dyn std::error::Error + Send + Sync>;

/// Starts a new shim (after the last one died) and connects to it.
pub type StartShim =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<ShimClient, StartShimError>> + Send>> + Send>;

/// Containers through the shim over its socket.
pub struct ShimRuntime {
    client: ShimClient,
    start: Option<StartShim>,
}

impl ShimRuntime {
    /// A runtime that cannot be restarted once its shim is gone.
    pub fn new(client: ShimClient) -> Self {
        ShimRuntime { client, start: None }
    }

    /// A runtime that calls `start` for a new shim when this one dies.
    pub fn restartable(client: ShimClient, start: StartShim) -> Self {
        ShimRuntime { client, start: Some(start) }
    }
}

fn runtime_error<'a>(
    action: &'static str,
    id: &'a str,
) -> impl FnOnce(kelson_containers::ClientError) -> RuntimeError + 'a {
    move |e| RuntimeError { action, id: id.to_owned(), source: Box::new(e) }
}

/// An exit as the status wants it. Neither code nor signal (the shim
/// could not tell) counts as a failure.
pub fn exit_info(event: ExitEvent) -> ExitInfo {
    let exit = match (event.code, event.signal) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(255),
    };
    ExitInfo { id: event.id, exit, oom_killed: event.oom_killed }
}

impl ContainerRuntime for ShimRuntime {
    async fn create(&mut self, id: &str, bundle: &Path, stdout: &Path, stderr: &Path) -> Result<(), RuntimeError> {
        self.client
            .create(id, bundle, Some(stdout), Some(stderr))
            .await
            .map(drop)
            .map_err(runtime_error("creating", id))
    }

    async fn kill(&mut self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.client.kill(id, signal).await.map_err(runtime_error("signalling", id))
    }

    async fn delete(&mut self, id: &str) -> Result<(), RuntimeError> {
        self.client.delete(id).await.map_err(runtime_error("deleting", id))
    }

    async fn next_exit(&mut self) -> Result<ExitInfo, RuntimeError> {
        self.client.next_event().await.map(exit_info).map_err(runtime_error("waiting for the exit of", "any"))
    }

    async fn restart(&mut self) -> Result<(), RuntimeError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError {
            action: "restarting the shim of",
            id: "every".into(),
            source,
        };
        let Some(start) = self.start.as_mut() else { return Err(failed(Box::new(NotRestartable))) };
        self.client = start().await.map_err(failed)?;
        Ok(())
    }
}

/// Images from the node's store of OCI layouts, unpacked on first use.
pub struct StoreImages(pub ImageStore);

impl Images for StoreImages {
    fn prepare(&self, reference: &str) -> Result<PreparedImage, ImageError> {
        let image = self.0.resolve(reference).map_err(|e| {
            if e.is_not_found() {
                ImageError::NotFound { reference: reference.to_owned(), source: Box::new(e) }
            } else {
                ImageError::Failed { reference: reference.to_owned(), source: Box::new(e) }
            }
        })?;
        let lower = self
            .0
            .unpack(&image)
            .map_err(|e| ImageError::Failed { reference: reference.to_owned(), source: Box::new(e) })?;
        Ok(PreparedImage { lower, defaults: image.defaults() })
    }
}

/// Real mounts: overlayfs through kelson-containers, tmpfs through mount(2).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemHost;

fn host_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(rootfs::RootfsError) -> HostError + 'a {
    move |e| HostError { action, path: path.to_owned(), source: Box::new(e) }
}

impl PodHost for SystemHost {
    fn mount_rootfs(&self, lower: &Path, container_dir: &Path) -> Result<PathBuf, HostError> {
        rootfs::prepare(&SystemMounter, lower, container_dir)
            .map(|layout| layout.merged)
            .map_err(host_error("mounting the root filesystem in", container_dir))
    }

    fn remove_rootfs(&self, container_dir: &Path) -> Result<(), HostError> {
        rootfs::remove(&SystemMounter, container_dir)
            .map_err(host_error("removing the root filesystem in", container_dir))
    }

    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> Result<(), HostError> {
        let options = match size_bytes {
            Some(size) => format!("mode=0777,size={size}"),
            None => "mode=0777".to_owned(),
        };
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| HostError { action: "mounting tmpfs on", path: target.to_owned(), source: Box::new(e) })
    }

    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        SystemMounter.unmount(target).map_err(host_error("unmounting", target))
    }

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

    fn host_paths(&self) -> &dyn HostFs {
        &RealFs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_exits_become_codes_signals_or_a_failure() {
        let event = |code, signal| ExitEvent { id: "c".into(), pid: 1, code, signal, oom_killed: false };
        assert_eq!(exit_info(event(Some(3), None)).exit, Exit::Code(3));
        assert_eq!(exit_info(event(None, Some(9))).exit, Exit::Signal(9));
        assert_eq!(exit_info(event(None, None)).exit, Exit::Code(255), "an exit the shim could not read is a failure");
    }
}
