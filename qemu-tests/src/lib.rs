#![cfg_attr(test, allow(clippy::unwrap_used))]

mod agent;
mod cpio;
mod image;
mod qmp;
mod vm;

pub use agent::{guest_layer_with_agent, AgentOutput, AGENT_HOOK, GUEST_APPLET_DIR, GUEST_BUSYBOX};
pub use cpio::Layer;
pub use image::{ImagePaths, IMAGE_DIR_ENV};
pub use vm::{free_loopback_port, DiskFormat, Vm, VmBuilder};
