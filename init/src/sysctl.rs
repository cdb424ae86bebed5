//! Sysctls a Kubernetes node needs, written straight to /proc/sys.

use crate::kernel::Kernel;
use std::io;
use std::path::PathBuf;

/// The node's sysctls. The bridge ones exist only once br_netfilter is
/// loaded, so the modules stage runs first.
pub const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.inotify.max_user_watches", "524288"),
];

/// `net.bridge.bridge-nf-call-iptables` → `/proc/sys/net/bridge/bridge-nf-call-iptables`.
pub fn proc_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

#[derive(Debug, thiserror::Error)]
#[error("setting sysctl {key}={value} ({path})")]
pub struct SysctlError {
    pub key: String,
    pub value: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Sets each sysctl; failures are collected, not fatal to the others.
pub fn apply(kernel: &dyn Kernel, sysctls: &[(&str, &str)]) -> Vec<SysctlError> {
    sysctls
        .iter()
        .filter_map(|(key, value)| {
            let path = proc_path(key);
            kernel.write_file(&path, value.as_bytes()).err().map(|source| SysctlError {
                key: key.to_string(),
                value: value.to_string(),
                path,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn dotted_keys_map_to_proc_sys_paths() {
        assert_eq!(
            proc_path("net.bridge.bridge-nf-call-iptables"),
            PathBuf::from("/proc/sys/net/bridge/bridge-nf-call-iptables")
        );
    }

    #[test]
    fn the_node_forwards_and_filters_bridged_traffic() {
        let keys: Vec<_> = NODE_SYSCTLS.iter().map(|(k, _)| *k).collect();
        assert!(keys.contains(&"net.ipv4.ip_forward"));
        assert!(keys.contains(&"net.bridge.bridge-nf-call-iptables"));
    }

    #[test]
    fn a_failing_sysctl_is_reported_and_the_rest_are_set() {
        let k = FakeKernel::default().failing("/proc/sys/net/ipv4/ip_forward", libc::EACCES);
        let errors = apply(&k, &[("net.ipv4.ip_forward", "1"), ("vm.overcommit_memory", "1")]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), "setting sysctl net.ipv4.ip_forward=1 (/proc/sys/net/ipv4/ip_forward)");
        assert_eq!(k.file("/proc/sys/vm/overcommit_memory").as_deref(), Some("1"));
    }
}
