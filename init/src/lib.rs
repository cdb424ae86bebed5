//! Kelson's PID 1 as a library. [`pid1::run`] reads top to bottom as PID
//! 1's life; [`boot`] is the runner and the table of boot stages, each one
//! file under [`stages`]; the other modules are the concerns stages draw on
//! (mounts, modules, the state disk, the seed, the reaper…).
//!
//! Kernel access goes through [`kernel::Kernel`] so every stage is tested
//! without root against [`kernel::fake::FakeKernel`].

pub mod boot;
pub mod boot_entry;
pub mod clock;
pub mod cmdline;
pub mod esp;
pub mod etcd_join;
pub mod hooks;
pub mod identity;
pub mod install;
pub mod kernel;
pub mod live;
pub mod log;
pub mod management;
pub mod modules;
pub mod mounts;
pub mod nsexec;
pub mod pid1;
pub mod pod_runtime;
pub mod power;
pub mod power_cut;
pub mod procs;
pub mod reaper;
pub mod runner;
pub mod seed;
pub mod seed_url;
pub mod shutdown;
pub mod stages;
pub mod state_disk;
pub mod state_part;
pub mod status;
pub mod sysctl;
pub mod token_join;
pub mod uevent;
pub mod update;
pub mod usr;
pub mod verity;

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
