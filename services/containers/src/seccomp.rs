//! Kelson's `RuntimeDefault` seccomp filter, built for one container's
//! capability set, with the semantics of containerd's default profile
//! (`contrib/seccomp`), which is what a pod asking for `RuntimeDefault`
//! gets on a containerd node:
//!
//! - an allow list: every call not named here fails with EPERM;
//! - calls allowed only when the container holds a capability (CAP_SYS_ADMIN
//!   for mount, unshare, setns and the new mount API; CAP_SYS_TIME for
//!   setting the clock; CAP_SYS_PTRACE for reading other processes' memory;
//!   and so on), as containerd decides from the bounding set;
//! - calls that exist on one architecture only (`arch_prctl` on x86-64,
//!   `cacheflush` on arm64);
//! - calls allowed only with certain arguments: `personality` with the
//!   handful of personas programs ask for, and, without CAP_SYS_ADMIN,
//!   `clone` without any new-namespace flag; `clone3`, whose flags sit in a
//!   struct the filter cannot read, then fails with ENOSYS so the C library
//!   falls back to `clone`.
//!
//! One deliberate difference: the `io_uring_*` calls stay refused (Kelson
//! refused them before, and Docker's profile dropped them in 2023): a ring's
//! submissions bypass the filter altogether.
//!
//! Privileged containers get no filter at all, as in Kubernetes.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};
use oci_spec::OciSpecError;
use std::collections::HashSet;

/// Calls every filtered container may make, by subject. Names of other
/// ABIs (`chown32`, `socketcall`, `_llseek`) are kept: the filter also
/// covers the 32-bit ABIs an x86-64 or arm64 kernel runs.
const ALLOWED: &[&[&str]] = &[
    // Files, directories and descriptors.
    &[
        "access",
        "chdir",
        "chmod",
        "chown",
        "chown32",
        "close",
        "close_range",
        "copy_file_range",
        "creat",
        "dup",
        "dup2",
        "dup3",
        "faccessat",
        "faccessat2",
        "fadvise64",
        "fadvise64_64",
        "fallocate",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchown",
        "fchown32",
        "fchownat",
        "fcntl",
        "fcntl64",
        "fdatasync",
        "flock",
        "fstat",
        "fstat64",
        "fstatat64",
        "fstatfs",
        "fstatfs64",
        "fsync",
        "ftruncate",
        "ftruncate64",
        "futimesat",
        "getcwd",
        "getdents",
        "getdents64",
        "ioctl",
        "lchown",
        "lchown32",
        "link",
        "linkat",
        "_llseek",
        "lseek",
        "lstat",
        "lstat64",
        "mkdir",
        "mkdirat",
        "mknod",
        "mknodat",
        "newfstatat",
        "open",
        "openat",
        "openat2",
        "pread64",
        "preadv",
        "preadv2",
        "pwrite64",
        "pwritev",
        "pwritev2",
        "read",
        "readahead",
        "readlink",
        "readlinkat",
        "readv",
        "rename",
        "renameat",
        "renameat2",
        "rmdir",
        "sendfile",
        "sendfile64",
        "splice",
        "stat",
        "stat64",
        "statfs",
        "statfs64",
        "statx",
        "symlink",
        "symlinkat",
        "sync",
        "sync_file_range",
        "syncfs",
        "tee",
        "truncate",
        "truncate64",
        "umask",
        "unlink",
        "unlinkat",
        "utime",
        "utimensat",
        "utimensat_time64",
        "utimes",
        "vmsplice",
        "write",
        "writev",
    ],
    // Extended attributes.
    &[
        "fgetxattr",
        "flistxattr",
        "fremovexattr",
        "fsetxattr",
        "getxattr",
        "lgetxattr",
        "listxattr",
        "llistxattr",
        "lremovexattr",
        "lsetxattr",
        "removexattr",
        "setxattr",
    ],
    // Waiting on descriptors and events; asynchronous I/O (not io_uring).
    &[
        "epoll_create",
        "epoll_create1",
        "epoll_ctl",
        "epoll_ctl_old",
        "epoll_pwait",
        "epoll_pwait2",
        "epoll_wait",
        "epoll_wait_old",
        "eventfd",
        "eventfd2",
        "fanotify_mark",
        "inotify_add_watch",
        "inotify_init",
        "inotify_init1",
        "inotify_rm_watch",
        "poll",
        "ppoll",
        "ppoll_time64",
        "pselect6",
        "pselect6_time64",
        "select",
        "_newselect",
        "signalfd",
        "signalfd4",
        "timerfd_create",
        "timerfd_gettime",
        "timerfd_gettime64",
        "timerfd_settime",
        "timerfd_settime64",
        "io_cancel",
        "io_destroy",
        "io_getevents",
        "io_pgetevents",
        "io_pgetevents_time64",
        "io_setup",
        "io_submit",
    ],
    // Memory.
    &[
        "brk",
        "madvise",
        "membarrier",
        "memfd_create",
        "memfd_secret",
        "mincore",
        "mlock",
        "mlock2",
        "mlockall",
        "mmap",
        "mmap2",
        "mprotect",
        "mremap",
        "msync",
        "munlock",
        "munlockall",
        "munmap",
        "remap_file_pages",
    ],
    // Processes and threads (clone itself is below: it depends on flags).
    &[
        "capget",
        "capset",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "fork",
        "vfork",
        "getpid",
        "getppid",
        "gettid",
        "getpgid",
        "getpgrp",
        "getsid",
        "setsid",
        "setpgid",
        "getpriority",
        "setpriority",
        "getrlimit",
        "setrlimit",
        "prlimit64",
        "ugetrlimit",
        "getrusage",
        "get_robust_list",
        "set_robust_list",
        "set_tid_address",
        "get_thread_area",
        "set_thread_area",
        "prctl",
        "pidfd_open",
        "pidfd_send_signal",
        "process_mrelease",
        "ptrace",
        "rseq",
        "seccomp",
        "wait4",
        "waitid",
        "waitpid",
        "times",
        "uname",
        "sysinfo",
        "getcpu",
        "getrandom",
        "ioprio_get",
        "ioprio_set",
        "landlock_add_rule",
        "landlock_create_ruleset",
        "landlock_restrict_self",
    ],
    // User and group ids.
    &[
        "getegid",
        "getegid32",
        "geteuid",
        "geteuid32",
        "getgid",
        "getgid32",
        "getgroups",
        "getgroups32",
        "getresgid",
        "getresgid32",
        "getresuid",
        "getresuid32",
        "getuid",
        "getuid32",
        "setfsgid",
        "setfsgid32",
        "setfsuid",
        "setfsuid32",
        "setgid",
        "setgid32",
        "setgroups",
        "setgroups32",
        "setregid",
        "setregid32",
        "setresgid",
        "setresgid32",
        "setresuid",
        "setresuid32",
        "setreuid",
        "setreuid32",
        "setuid",
        "setuid32",
    ],
    // Signals.
    &[
        "kill",
        "tkill",
        "tgkill",
        "pause",
        "restart_syscall",
        "rt_sigaction",
        "rt_sigpending",
        "rt_sigprocmask",
        "rt_sigqueueinfo",
        "rt_sigreturn",
        "rt_sigsuspend",
        "rt_sigtimedwait",
        "rt_sigtimedwait_time64",
        "rt_tgsigqueueinfo",
        "sigaltstack",
        "sigprocmask",
        "sigreturn",
    ],
    // Scheduling.
    &[
        "sched_getaffinity",
        "sched_getattr",
        "sched_getparam",
        "sched_get_priority_max",
        "sched_get_priority_min",
        "sched_getscheduler",
        "sched_rr_get_interval",
        "sched_rr_get_interval_time64",
        "sched_setaffinity",
        "sched_setattr",
        "sched_setparam",
        "sched_setscheduler",
        "sched_yield",
    ],
    // Time, timers and futexes (setting the clock needs CAP_SYS_TIME, and
    // the kernel checks it in adjtimex too).
    &[
        "adjtimex",
        "alarm",
        "clock_adjtime",
        "clock_adjtime64",
        "clock_getres",
        "clock_getres_time64",
        "clock_gettime",
        "clock_gettime64",
        "clock_nanosleep",
        "clock_nanosleep_time64",
        "getitimer",
        "setitimer",
        "gettimeofday",
        "nanosleep",
        "time",
        "timer_create",
        "timer_delete",
        "timer_getoverrun",
        "timer_gettime",
        "timer_gettime64",
        "timer_settime",
        "timer_settime64",
        "futex",
        "futex_time64",
        "futex_waitv",
    ],
    // Sockets and pipes.
    &[
        "accept",
        "accept4",
        "bind",
        "connect",
        "getpeername",
        "getsockname",
        "getsockopt",
        "listen",
        "recv",
        "recvfrom",
        "recvmmsg",
        "recvmmsg_time64",
        "recvmsg",
        "send",
        "sendmmsg",
        "sendmsg",
        "sendto",
        "setsockopt",
        "shutdown",
        "socket",
        "socketcall",
        "socketpair",
        "pipe",
        "pipe2",
    ],
    // System V IPC and POSIX message queues (the pod's IPC namespace).
    &[
        "ipc",
        "msgctl",
        "msgget",
        "msgrcv",
        "msgsnd",
        "semctl",
        "semget",
        "semop",
        "semtimedop",
        "semtimedop_time64",
        "shmat",
        "shmctl",
        "shmdt",
        "shmget",
        "mq_getsetattr",
        "mq_notify",
        "mq_open",
        "mq_timedreceive",
        "mq_timedreceive_time64",
        "mq_timedsend",
        "mq_timedsend_time64",
        "mq_unlink",
    ],
];

/// Calls allowed only to a container whose capabilities include the one
/// named, as containerd grants them.
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "init_module", "finit_module"]),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// Calls of this architecture only.
#[cfg(target_arch = "x86_64")]
const ARCH_ONLY: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCH_ONLY: &[&str] =
    &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ONLY: &[&str] = &[];

/// The personas `personality` may set: Linux, Linux32, each with
/// UNAME26, and 0xffffffff, which only asks for the current one.
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`: without CAP_SYS_ADMIN,
/// `clone` is allowed only with none of them.
const NAMESPACE_FLAGS: u64 = 0x7e02_0000;

fn rule(names: &[&str], action: LinuxSeccompAction, args: Option<Vec<LinuxSeccompArg>>) -> LinuxSyscall {
    let mut rule = LinuxSyscall::default();
    rule.set_names(names.iter().map(|n| (*n).to_owned()).collect());
    rule.set_action(action);
    rule.set_args(args);
    rule
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> Result<LinuxSeccompArg, OciSpecError> {
    LinuxSeccompArgBuilder::default().index(index).op(op).value(value).value_two(value_two).build()
}

/// The filter for a container holding `capabilities`.
pub fn runtime_default(capabilities: &HashSet<Capability>) -> Result<LinuxSeccomp, OciSpecError> {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let everyone: Vec<&str> =
        ALLOWED.iter().flat_map(|group| group.iter().copied()).chain(ARCH_ONLY.iter().copied()).collect();
    let mut syscalls = vec![rule(&everyone, allow, None)];
    for persona in PERSONALITIES {
        let equal = arg(0, LinuxSeccompOperator::ScmpCmpEq, persona, 0)?;
        syscalls.push(rule(&["personality"], allow, Some(vec![equal])));
    }
    for (capability, names) in BY_CAPABILITY {
        if capabilities.contains(capability) {
            syscalls.push(rule(names, allow, None));
        }
    }
    if !capabilities.contains(&Capability::SysAdmin) {
        // (flags & NAMESPACE_FLAGS) == 0. Runtimes disagree on which of
        // value and valueTwo is the mask in SCMP_CMP_MASKED_EQ (runc takes
        // value, libcontainer valueTwo), so the rule is written both ways:
        // read the other way round, each one asks (flags & 0) == mask,
        // which no call matches, so the pair allows exactly what one would.
        for (value, value_two) in [(NAMESPACE_FLAGS, 0), (0, NAMESPACE_FLAGS)] {
            let no_namespace = arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, value, value_two)?;
            syscalls.push(rule(&["clone"], allow, Some(vec![no_namespace])));
        }
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno, None);
        clone3.set_errno_ret(Some(libc::ENOSYS.unsigned_abs()));
        syscalls.push(clone3);
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActErrno);
    seccomp.set_default_errno_ret(Some(libc::EPERM.unsigned_abs()));
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

    /// The rules that name `name`.
    fn rules_for(seccomp: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        seccomp.syscalls().iter().flatten().filter(|s| s.names().iter().any(|n| n == name)).cloned().collect()
    }

    /// Whether `name` is allowed whatever its arguments.
    fn allowed(seccomp: &LinuxSeccomp, name: &str) -> bool {
        rules_for(seccomp, name).iter().any(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
    }

    #[test]
    fn everything_not_listed_is_refused_with_eperm() {
        let seccomp = runtime_default(&HashSet::new()).unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(libc::EPERM as u32));
        for name in ["read", "openat", "execve", "futex", "epoll_pwait", "socket", "ptrace", "arch_prctl", "rseq"] {
            assert!(allowed(&seccomp, name), "{name} is allowed");
        }
        // Not on the list at all, and no capability makes them legitimate.
        for name in ["keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "kexec_load", "swapon"] {
            assert!(rules_for(&seccomp, name).is_empty(), "{name} falls to the default action");
        }
    }

    #[test]
    fn without_capabilities_mounts_namespaces_and_the_clock_are_refused() {
        let seccomp = runtime_default(&HashSet::new()).unwrap();
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "sethostname",
            "settimeofday",
            "reboot",
            "init_module",
            "bpf",
            "chroot",
            "syslog",
            "kcmp",
        ] {
            assert!(rules_for(&seccomp, name).is_empty(), "{name} falls to the default action");
        }
        // clone only without namespace flags, written for both readings of
        // the mask (see runtime_default).
        let clone = rules_for(&seccomp, "clone");
        let masks: Vec<_> = clone
            .iter()
            .map(|r| {
                let args = r.args().clone().unwrap();
                assert_eq!((args.len(), args[0].index(), args[0].op()), (1, 0, LinuxSeccompOperator::ScmpCmpMaskedEq));
                (args[0].value(), args[0].value_two())
            })
            .collect();
        assert_eq!(masks, [(NAMESPACE_FLAGS, Some(0)), (0, Some(NAMESPACE_FLAGS))]);
        let clone3 = rules_for(&seccomp, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(
            (clone3[0].action(), clone3[0].errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32))
        );
    }

    #[test]
    fn personality_is_allowed_only_for_the_usual_personas() {
        let seccomp = runtime_default(&HashSet::new()).unwrap();
        let personas: Vec<u64> = rules_for(&seccomp, "personality")
            .iter()
            .map(|r| {
                let args = r.args().clone().unwrap();
                assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpEq);
                args[0].value()
            })
            .collect();
        assert_eq!(personas, PERSONALITIES);
    }

    #[test]
    fn a_capability_allows_the_calls_it_makes_legitimate_and_no_others() {
        let seccomp = runtime_default(&HashSet::from([Capability::SysAdmin, Capability::SysTime])).unwrap();
        for name in ["mount", "setns", "unshare", "clone", "clone3", "settimeofday", "clock_settime", "syslog"] {
            assert!(allowed(&seccomp, name), "{name} is allowed with its capability");
        }
        assert!(rules_for(&seccomp, "clone").iter().all(|r| r.args().is_none()), "no flag check with CAP_SYS_ADMIN");
        for name in ["reboot", "init_module", "keyctl", "io_uring_enter"] {
            assert!(!allowed(&seccomp, name), "{name} is still refused");
        }
        let ptrace = runtime_default(&HashSet::from([Capability::SysPtrace])).unwrap();
        assert!(allowed(&ptrace, "process_vm_readv") && !allowed(&ptrace, "mount"));
    }
}
