//! The kernel options a Kelson node needs, and a checker for a kernel's
//! `.config`. The image's kernel is Debian's; `cargo xtask test` checks its
//! configuration against [`REQUIRED`] so a kernel update that drops
//! something the node relies on fails the build instead of a boot.

use std::collections::HashMap;

/// How an option must be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `=y`: needed before any module can be loaded.
    BuiltIn,
    /// `=y` or `=m`.
    Available,
}

/// (option, how, why)
pub const REQUIRED: &[(&str, Need, &str)] = &[
    ("CONFIG_DEVTMPFS", Need::BuiltIn, "PID 1 mounts /dev as devtmpfs; there is no udev"),
    ("CONFIG_BLK_DEV_INITRD", Need::BuiltIn, "the whole root is an initramfs"),
    ("CONFIG_RD_ZSTD", Need::BuiltIn, "the initramfs is zstd-compressed"),
    ("CONFIG_SERIAL_8250_CONSOLE", Need::BuiltIn, "the serial console QEMU tests read"),
    ("CONFIG_VIRTIO_PCI", Need::BuiltIn, "virtio devices are found before modules load"),
    ("CONFIG_MODULES", Need::BuiltIn, "kelson-init loads the node's modules"),
    ("CONFIG_CGROUPS", Need::BuiltIn, "cgroup v2 for pods and services"),
    ("CONFIG_MEMCG", Need::BuiltIn, "memory limits"),
    ("CONFIG_CGROUP_SCHED", Need::BuiltIn, "cpu.weight and cpu.max"),
    ("CONFIG_CGROUP_PIDS", Need::BuiltIn, "pids controller"),
    ("CONFIG_BLK_CGROUP", Need::BuiltIn, "io controller"),
    ("CONFIG_NAMESPACES", Need::BuiltIn, "containers"),
    ("CONFIG_NET_NS", Need::BuiltIn, "pod network namespaces"),
    ("CONFIG_PID_NS", Need::BuiltIn, "containers"),
    ("CONFIG_IPC_NS", Need::BuiltIn, "pod sandboxes"),
    ("CONFIG_UTS_NS", Need::BuiltIn, "pod sandboxes"),
    ("CONFIG_USER_NS", Need::BuiltIn, "containers"),
    ("CONFIG_SECCOMP", Need::BuiltIn, "container seccomp profiles"),
    ("CONFIG_INPUT_EVDEV", Need::Available, "the power button's event device"),
    ("CONFIG_ACPI_BUTTON", Need::Available, "ACPI power button (QEMU system_powerdown)"),
    ("CONFIG_VT", Need::BuiltIn, "ctrl-alt-del from the keyboard reaches PID 1"),
    ("CONFIG_VIRTIO_BLK", Need::Available, "state disk in VMs"),
    ("CONFIG_VIRTIO_NET", Need::Available, "uplink in VMs"),
    ("CONFIG_EXT4_FS", Need::Available, "the KELSON_STATE filesystem"),
    ("CONFIG_OVERLAY_FS", Need::Available, "container root filesystems"),
    ("CONFIG_SQUASHFS", Need::Available, "read-only image layers"),
    ("CONFIG_VFAT_FS", Need::Available, "cloud-init CIDATA seeds"),
    ("CONFIG_ISO9660_FS", Need::Available, "cloud-init ISO seeds"),
    ("CONFIG_DM_VERITY", Need::Available, "verified images"),
    ("CONFIG_BRIDGE", Need::Available, "the cbr0 bridge"),
    ("CONFIG_BRIDGE_NETFILTER", Need::Available, "bridge-nf-call-iptables"),
    ("CONFIG_VETH", Need::Available, "pod veth pairs"),
    ("CONFIG_NETFILTER_XT_TARGET_MASQUERADE", Need::Available, "the MASQUERADE rule"),
    ("CONFIG_NETFILTER_XT_MATCH_ADDRTYPE", Need::Available, "`-m addrtype ! --dst-type LOCAL`"),
    ("CONFIG_NETFILTER_XT_MATCH_CONNTRACK", Need::Available, "kube-proxy rules"),
    ("CONFIG_NETFILTER_XT_MATCH_COMMENT", Need::Available, "kube-proxy rules"),
    ("CONFIG_NETFILTER_XT_MATCH_STATISTIC", Need::Available, "kube-proxy load balancing"),
    ("CONFIG_NF_TABLES", Need::Available, "iptables' nft backend"),
    ("CONFIG_NFT_COMPAT", Need::Available, "xtables matches under nft"),
    ("CONFIG_NF_NAT", Need::Available, "NAT"),
    ("CONFIG_NF_CONNTRACK", Need::Available, "NAT and kube-proxy"),
    ("CONFIG_CRYPTO_CRC32C", Need::Available, "ext4 and nf_conntrack checksums"),
];

/// How a kernel configuration sets each option.
#[derive(Debug, Default)]
pub struct KernelConfig {
    values: HashMap<String, String>,
}

impl KernelConfig {
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| l.starts_with("CONFIG_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        KernelConfig { values }
    }

    pub fn value(&self, option: &str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }
}

/// One requirement the configuration does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub option: &'static str,
    pub need: Need,
    pub found: Option<String>,
    pub why: &'static str,
}

impl std::fmt::Display for Unmet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let want = match self.need {
            Need::BuiltIn => "=y",
            Need::Available => "=y or =m",
        };
        let found = self.found.as_deref().map_or("not set".to_owned(), |v| format!("={v}"));
        write!(f, "{} must be {want} but is {found} (needed for: {})", self.option, self.why)
    }
}

/// Every requirement in `required` that `config` does not meet.
pub fn check(config: &KernelConfig, required: &[(&'static str, Need, &'static str)]) -> Vec<Unmet> {
    required
        .iter()
        .filter_map(|(option, need, why)| {
            let found = config.value(option);
            let ok = match need {
                Need::BuiltIn => found == Some("y"),
                Need::Available => matches!(found, Some("y") | Some("m")),
            };
            (!ok).then(|| Unmet { option, need: *need, found: found.map(str::to_owned), why })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
CONFIG_DEVTMPFS=y
# CONFIG_DEVTMPFS_MOUNT is not set
CONFIG_BRIDGE=m
CONFIG_VETH=y
CONFIG_CMDLINE=\"console=ttyS0\"
";

    #[test]
    fn built_in_options_must_be_y_and_available_ones_y_or_m() {
        let config = KernelConfig::parse(SAMPLE);
        let required = [
            ("CONFIG_DEVTMPFS", Need::BuiltIn, "a"),
            ("CONFIG_BRIDGE", Need::Available, "b"),
            ("CONFIG_VETH", Need::Available, "c"),
        ];
        assert!(check(&config, &required).is_empty());
    }

    #[test]
    fn a_module_where_built_in_is_needed_and_a_missing_option_are_reported() {
        let config = KernelConfig::parse(SAMPLE);
        let required =
            [("CONFIG_BRIDGE", Need::BuiltIn, "the bridge"), ("CONFIG_DEVTMPFS_MOUNT", Need::Available, "automount")];
        let unmet = check(&config, &required);
        assert_eq!(unmet.len(), 2);
        assert_eq!(unmet[0].to_string(), "CONFIG_BRIDGE must be =y but is =m (needed for: the bridge)");
        assert_eq!(
            unmet[1].to_string(),
            "CONFIG_DEVTMPFS_MOUNT must be =y or =m but is not set (needed for: automount)"
        );
    }

    #[test]
    fn the_required_list_names_each_option_once() {
        let mut names: Vec<_> = REQUIRED.iter().map(|(n, _, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REQUIRED.len());
    }
}
