//! Kelson's containers: the node's store of OCI image layouts ([`store`]),
//! each container's overlayfs root ([`rootfs`]), the OCI runtime bundle
//! written from a [`config::ContainerConfig`] ([`bundle`]), and the shim
//! process that runs containers with libcontainer outside PID 1's async
//! runtime, with its client ([`shim`], [`client`]).

pub mod bundle;
pub mod config;
pub mod rootfs;
pub mod store;

pub use config::{ContainerConfig, CpuMax, Mount, Namespace, Namespaces, Resources, Security, User};
