//! Kelson's `RuntimeDefault` seccomp filter, built for one container's
//! capability set.
//!
//! A deny list over an allowing default: each rule turns away a system
//! call that reaches kernel state a container does not own (the key
//! rings, module loading, the clock, new namespaces, io_uring, which
//! seccomp cannot see into) unless the container holds the capability
//! that makes the call legitimate. A container given CAP_SYS_ADMIN may
//! mount and make namespaces, one given CAP_SYS_TIME may set the clock,
//! and so on; privileged containers get no filter at all, as in
//! Kubernetes. Most of these calls already fail without their capability;
//! the filter makes the few that do not (user namespaces, key rings,
//! userfaultfd, io_uring, unprivileged BPF) fail too, and keeps a kernel
//! bug in a capability check from being reachable.
//!
//! Refused calls return EPERM, except `clone3`, which returns ENOSYS: its
//! flags sit in a struct the filter cannot read, and ENOSYS makes the C
//! library fall back to `clone`, whose flags the filter can check.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};
use oci_spec::OciSpecError;
use std::collections::HashSet;

/// Calls refused unless the container holds `capability` (`None`: always
/// refused in a filtered container).
const RULES: &[(Option<Capability>, &[&str])] = &[
    (
        Some(Capability::SysAdmin),
        &[
            "mount",
            "umount2",
            "pivot_root",
            "swapon",
            "swapoff",
            "quotactl",
            "lookup_dcookie",
            "fanotify_init",
            "setns",
        ],
    ),
    (
        Some(Capability::SysAdmin),
        &["fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr"],
    ),
    (Some(Capability::SysBoot), &["reboot", "kexec_load", "kexec_file_load"]),
    (Some(Capability::SysModule), &["init_module", "finit_module", "delete_module"]),
    (Some(Capability::SysTime), &["settimeofday", "clock_settime"]),
    (Some(Capability::SysRawio), &["iopl", "ioperm"]),
    (Some(Capability::SysPacct), &["acct"]),
    (Some(Capability::Syslog), &["syslog"]),
    (Some(Capability::DacReadSearch), &["open_by_handle_at"]),
    (Some(Capability::Bpf), &["bpf"]),
    (Some(Capability::Perfmon), &["perf_event_open"]),
    (
        None,
        &["keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"],
    ),
    (None, &["uselib", "ustat", "sysfs", "_sysctl"]),
];

/// `CLONE_NEWNS`, `CLONE_NEWCGROUP`, `CLONE_NEWUTS`, `CLONE_NEWIPC`,
/// `CLONE_NEWUSER`, `CLONE_NEWPID`, `CLONE_NEWNET`: refused in `clone`
/// and `unshare` without CAP_SYS_ADMIN.
const NAMESPACE_FLAGS: [u64; 7] =
    [0x0002_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000];

fn syscall(names: &[&str], errno: i32, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| (*n).to_owned()).collect());
    rule.set_action(LinuxSeccompAction::ScmpActErrno);
    rule.set_errno_ret(Some(errno.unsigned_abs()));
    rule.set_args(args);
    rule
}

/// The filter for a container holding `capabilities`.
pub fn runtime_default(capabilities: &HashSet<Capability>) -> Result<LinuxSeccomp, OciSpecError> {
    let has = |cap: &Option<Capability>| cap.as_ref().is_some_and(|c| capabilities.contains(c));
    let mut syscalls: Vec<LinuxSyscall> =
        RULES.iter().filter(|(cap, _)| !has(cap)).map(|(_, names)| syscall(names, libc::EPERM, None)).collect();
    if !capabilities.contains(&Capability::SysAdmin) {
        for flag in NAMESPACE_FLAGS {
            // (flags & flag) == flag, whichever of value and valueTwo a
            // runtime takes for the mask: both are the flag.
            let arg = LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?;
            syscalls.push(syscall(&["clone", "unshare"], libc::EPERM, Some(vec![arg])));
        }
        syscalls.push(syscall(&["clone3"], libc::ENOSYS, None));
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActAllow);
    seccomp.set_architectures(architectures());
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}

/// The native ABI and, on x86-64, the 32-bit ones its kernel also runs, so
/// their calls meet the same rules instead of a bad-architecture kill.
fn architectures() -> Option<Vec<Arch>> {
    if cfg!(target_arch = "x86_64") {
        Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
    } else if cfg!(target_arch = "aarch64") {
        Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(seccomp: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        seccomp.syscalls().iter().flatten().filter(|s| s.names().iter().any(|n| n == name)).cloned().collect()
    }

    #[test]
    fn without_capabilities_namespaces_keyrings_and_mounts_are_refused() {
        let seccomp = runtime_default(&HashSet::new()).unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        for name in ["keyctl", "mount", "io_uring_setup", "reboot", "bpf", "setns"] {
            let rules = refused(&seccomp, name);
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(rules[0].errno_ret(), Some(libc::EPERM as u32), "{name}");
            assert!(rules[0].args().is_none(), "{name} is refused whatever its arguments");
        }
        let unshare = refused(&seccomp, "unshare");
        assert_eq!(unshare.len(), NAMESPACE_FLAGS.len(), "one rule per namespace flag");
        let user = unshare
            .iter()
            .flat_map(|r| r.args().clone().unwrap_or_default())
            .find(|a| a.value() == 0x1000_0000)
            .expect("CLONE_NEWUSER");
        assert_eq!(
            (user.index(), user.value_two(), user.op()),
            (0, Some(0x1000_0000), LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        assert_eq!(refused(&seccomp, "clone3")[0].errno_ret(), Some(libc::ENOSYS as u32));
        assert!(refused(&seccomp, "ptrace").is_empty() && refused(&seccomp, "read").is_empty());
    }

    #[test]
    fn a_capability_lifts_the_rules_it_makes_legitimate_and_no_others() {
        let seccomp = runtime_default(&HashSet::from([Capability::SysAdmin, Capability::SysTime])).unwrap();
        for name in ["mount", "setns", "unshare", "clone", "clone3", "settimeofday"] {
            assert!(refused(&seccomp, name).is_empty(), "{name} is allowed with its capability");
        }
        for name in ["keyctl", "reboot", "init_module", "io_uring_enter"] {
            assert_eq!(refused(&seccomp, name).len(), 1, "{name} is still refused");
        }
    }
}
