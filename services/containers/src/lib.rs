//! Kelson's containers: the node's store of OCI image layouts ([`store`]),
//! each container's overlayfs root ([`rootfs`]), the OCI runtime bundle
//! written from a [`config::ContainerConfig`] ([`bundle`]), and the shim
//! process that runs containers with libcontainer outside PID 1's async
//! runtime, with its client ([`shim`], [`client`]).

pub mod bundle;
pub mod client;
pub mod config;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod store;

pub use client::{ClientError, ShimClient, ShimCommand};
pub use config::{ContainerConfig, CpuMax, Mount, Namespace, Namespaces, Resources, Security, User};
pub use protocol::{ContainerState, ExitEvent};

/// An error and its causes, `: `-separated, each said once (what a reply
/// or a log line carries).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
