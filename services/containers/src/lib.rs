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

/// Shim replies and store warnings carry a whole error chain, each cause once.
pub(crate) use kelson_base::error_chain;
