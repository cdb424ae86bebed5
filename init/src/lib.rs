//! Kelson's PID 1 as a library: each module is one concern of the boot
//! sequence, and [`pid1::run`] reads top to bottom as that sequence.
//!
//! Kernel access goes through [`kernel::Kernel`] so the stage logic can be
//! tested without root against [`kernel::fake::FakeKernel`].

pub use kelson_base::atomic;
pub mod boot;
pub mod clock;
pub mod cmdline;
pub mod config_stage;
pub mod hooks;
pub mod identity;
pub mod kernel;
pub mod log;
pub mod modules;
pub mod mounts;
pub mod network_stage;
pub mod nsexec;
pub mod pid1;
pub mod pods_stage;
pub mod power;
pub mod power_cut;
pub mod procs;
pub mod reaper;
pub mod runner;
pub mod seed;
pub mod seed_url;
pub mod services_stage;
pub mod shutdown;
pub mod state_disk;
pub mod sysctl;
pub mod usr;

/// Whether a process with this pid should act as init. Pure so the decision
/// is testable; `main` passes `std::process::id()`.
pub fn is_pid1(pid: u32) -> bool {
    pid == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pid_one_acts_as_init() {
        assert!(is_pid1(1));
        assert!(!is_pid1(0));
        assert!(!is_pid1(2));
        assert!(!is_pid1(4242));
    }
}
