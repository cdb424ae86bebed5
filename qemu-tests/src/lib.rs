//! QEMU test harness for Kelson.
//!
//! Boots a kernel and initrd under QEMU (always TCG: `-accel tcg -cpu max`,
//! q35, no display, no default devices, no network unless asked for) and
//! lets a test watch and drive the guest:
//!
//! - **Initrd layers** ([`Layer`]): uncompressed newc cpio archives built in
//!   Rust and appended after the image's (zstd) initrd. The kernel unpacks
//!   them in order and later entries win, so a test adds or replaces files
//!   (test hooks, busybox, fixtures) without rebuilding the image.
//! - **Console** ([`Vm::expect`]): serial port 0 goes to a log file in the
//!   VM's private temporary directory; `expect` waits for a line after a
//!   read cursor, pexpect-style, and fails fast if QEMU exits. Errors carry
//!   the console's last lines.
//! - **QMP** ([`Vm::qmp`], [`Vm::hmp`], [`Vm::system_powerdown`],
//!   [`Vm::send_ctrl_alt_delete`], [`Vm::quit`]) on a unix socket.
//! - **Agent** ([`Vm::agent_exec`]): serial port 1 is a unix socket; in the
//!   guest, the hook from [`guest_layer_with_agent`] runs a busybox shell on
//!   `/dev/ttyS1`, and `agent_exec` runs one shell command there and returns
//!   its exit status and output. Kelson's PID 1 runs the executables in
//!   `/kelson-test/hooks/` after boot; that directory only exists in
//!   test layers.
//! - **Networks**: virtio-net NICs on QEMU socket networks over 127.0.0.1
//!   ([`VmBuilder::socket_nic_listen`] / [`VmBuilder::socket_nic_connect`],
//!   or multicast), so several VMs can talk to each other and to nothing
//!   else.
//! - **Cleanup**: dropping a [`Vm`] kills QEMU and removes its directory;
//!   QEMU also gets `PR_SET_PDEATHSIG(SIGKILL)`, so a killed test runner
//!   leaves no VM behind.
//!
//! [`ImagePaths::from_env`] finds the artifacts of `cargo xtask image`
//! (`KELSON_IMAGE_DIR`, default `<workspace>/target/image`).
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_tests::{guest_layer_with_agent, ImagePaths, Layer, VmBuilder};
//!
//! # fn main() -> anyhow::Result<()> {
//! let image = ImagePaths::from_env()?;
//! let mut vm = VmBuilder::from_image(&image)
//!     .layer(guest_layer_with_agent("/bin/busybox"))
//!     .layer(Layer::new().file("/etc/kelson/test.conf", "x=1\n", 0o644))
//!     .boot()?;
//! vm.expect("kelson-init", Duration::from_secs(120))?;
//! let out = vm.agent_exec("cat /proc/cmdline", Duration::from_secs(30))?.ok()?;
//! assert!(out.output.contains("console=ttyS0"));
//! vm.system_powerdown()?;
//! vm.wait_exit(Duration::from_secs(60))?;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod agent;
mod cpio;
mod image;
mod qmp;
mod vm;

pub use agent::{agent_hook, guest_layer_with_agent, AgentOutput, AGENT_HOOK, GUEST_APPLET_DIR, GUEST_BUSYBOX};
pub use cpio::Layer;
pub mod bench;
pub mod kelsonctl;
pub mod oci;
pub mod seed;
pub mod systemd_node;
pub use image::{ImagePaths, IMAGE_DIR_ENV};
/// Re-exported for [`Vm::qmp`] arguments and results.
pub use serde_json;
pub use vm::{free_loopback_port, DiskFormat, Vm, VmBuilder, OVMF_CODE, OVMF_VARS};
