//! One file per boot stage, each with a `run` that [`crate::boot::STAGES`]
//! names in its row. A stage reads what it needs from the
//! [`crate::boot::BootContext`], touches the kernel only through
//! [`crate::kernel::Kernel`], and returns [`crate::boot::Done`]: finished,
//! or with a handle to what it left running.

pub mod apply_config;
pub mod boot_entry;
pub mod cgroups;
pub mod cmdline;
pub mod config;
pub mod identity;
pub mod install;
pub mod kernel_log;
pub mod modules;
pub mod mounts;
pub mod network;
pub mod pods;
pub mod services;
pub mod state;
pub mod sysctls;
pub mod usr;
