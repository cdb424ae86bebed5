//! [`ContainerConfig`] → OCI runtime [`Spec`] → `config.json` in a bundle
//! directory. The same file runs under libcontainer (the shim) and Debian's
//! runc (the cross-check test).

use crate::config::{ContainerConfig, Mount, Namespace};
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Capability, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, PosixRlimit, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The capabilities a container gets unless it adds or drops some: the set
/// containerd and Docker give.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability a privileged container gets (Linux 5.9's set), as
/// Kubernetes names them (no `CAP_` prefix); also what pod validation
/// accepts in `capabilities.add`/`drop`.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Why a container's runtime config could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// container {id:?}: field {field}: {reason}
    #[error("container {id:?}: field {field}: {reason}")]
    Invalid { id: String, field: &'static str, reason: String },
    /// container {id:?}: building the OCI spec
    #[error("container {id:?}: building the OCI spec")]
    Spec { id: String, source: oci_spec::OciSpecError },
    /// {action} {path}
    #[error("{action} {path}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

/// The OCI runtime spec for `config`.
pub fn spec(config: &ContainerConfig) -> Result<Spec, BundleError> {
    validate(config)?;
    let id = &config.id;
    let spec_err = |source| BundleError::Spec { id: id.clone(), source };
    let security = &config.security;

    let capabilities: HashSet<Capability> = capability_set(config)?;
    let seccomp = if security.seccomp_runtime_default && !security.privileged {
        Some(crate::seccomp::runtime_default(&capabilities).map_err(spec_err)?)
    } else {
        None
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities.clone())
        .effective(capabilities.clone())
        .permitted(capabilities)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(spec_err)?;
    let mut user = UserBuilder::default().uid(config.user.uid).gid(config.user.gid);
    if !config.user.additional_gids.is_empty() {
        user = user.additional_gids(config.user.additional_gids.clone());
    }
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(spec_err)?)
        .args(config.args.clone())
        .env(env_with_home(config))
        .cwd(&config.cwd)
        .capabilities(capabilities)
        // None: the container inherits the shim's limits. Raising a limit past
        // the runtime's own hard limit needs CAP_SYS_RESOURCE, which a test
        // host may not grant; the builder's default (nofile 1024) is too low
        // for etcd. PID 1 gives the shim the limits containers should have.
        .rlimits(Vec::<PosixRlimit>::new())
        .build()
        .map_err(spec_err)?;
    // Kubernetes' allowPrivilegeEscalation defaults to true, so the flag is
    // only ever set. Unset rather than false: libcontainer 0.7 takes any
    // value as set and then loads a seccomp filter only after dropping
    // CAP_SYS_ADMIN, which the kernel refuses without the flag; runc reads
    // unset as false too.
    process.set_no_new_privileges(config.security.no_new_privileges.then_some(true));

    let mut namespaces = Vec::new();
    for (typ, source) in [
        (LinuxNamespaceType::Pid, &Namespace::New),
        (LinuxNamespaceType::Mount, &Namespace::New),
        (LinuxNamespaceType::Cgroup, &Namespace::New),
        (LinuxNamespaceType::Network, &config.namespaces.network),
        (LinuxNamespaceType::Ipc, &config.namespaces.ipc),
        (LinuxNamespaceType::Uts, &config.namespaces.uts),
    ] {
        match source {
            Namespace::Host => {}
            Namespace::New => namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build().map_err(spec_err)?),
            Namespace::Join(path) => {
                namespaces.push(LinuxNamespaceBuilder::default().typ(typ).path(path).build().map_err(spec_err)?)
            }
        }
    }

    let mut unified = HashMap::new();
    let resources = &config.resources;
    if let Some(weight) = resources.cpu_weight {
        unified.insert("cpu.weight".to_owned(), weight.to_string());
    }
    if let Some(cpu_max) = resources.cpu_max {
        let quota = cpu_max.quota_us.map_or_else(|| "max".to_owned(), |q| q.to_string());
        unified.insert("cpu.max".to_owned(), format!("{quota} {}", cpu_max.period_us));
    }
    if let Some(max) = resources.memory_max {
        unified.insert("memory.max".to_owned(), max.to_string());
    }
    if let Some(min) = resources.memory_min {
        unified.insert("memory.min".to_owned(), min.to_string());
    }
    // The cgroup v2 files by name (`unified`), not the v1-shaped cpu.shares and
    // memory.limit fields: those are converted by each runtime its own way, and
    // memory.min has no v1-shaped field at all.
    let mut linux_resources = LinuxResourcesBuilder::default();
    if !unified.is_empty() {
        linux_resources = linux_resources.unified(unified);
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(config.cgroups_path.clone())
        .resources(linux_resources.build().map_err(spec_err)?);
    linux = if security.privileged {
        linux.masked_paths(Vec::new()).readonly_paths(Vec::new())
    } else {
        linux.masked_paths(get_default_maskedpaths()).readonly_paths(get_default_readonly_paths())
    };
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }

    let spec = SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(&config.rootfs).readonly(security.readonly_rootfs).build().map_err(spec_err)?)
        .process(process)
        .mounts(mounts(config)?)
        .linux(linux.build().map_err(spec_err)?);
    let mut spec = spec.build().map_err(spec_err)?;
    // The builder's default names every container "youki"; a hostname without
    // a UTS namespace of its own is refused by runtimes.
    spec.set_hostname(config.hostname.clone());
    Ok(spec)
}

/// Writes `config`'s spec as `<bundle>/config.json` (temp file, fsync,
/// rename) and returns the file's path.
/// The container's environment with HOME set when it does not set one: the
/// user's home from the rootfs's /etc/passwd, or `/` without an entry. runc
/// does this itself; libcontainer leaves HOME unset without an entry, so a
/// pod would see a different environment under Kelson than under
/// containerd with runc (found by the side-by-side test in tests/runc.rs).
fn env_with_home(config: &ContainerConfig) -> Vec<String> {
    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let passwd = fs::read_to_string(config.rootfs.join("etc/passwd")).unwrap_or_default();
        let home = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() >= 7 && fields[2].parse() == Ok(config.user.uid))
            .map(|fields| fields[5].to_owned())
            .filter(|home| !home.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        env.push(format!("HOME={home}"));
    }
    env
}

pub fn write(bundle: &Path, config: &ContainerConfig) -> Result<PathBuf, BundleError> {
    let spec = spec(config)?;
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| BundleError::Io {
        action: "serialising config.json for",
        path: bundle.to_owned(),
        source: io::Error::other(e),
    })?;
    let io_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { action, path, source }
    };
    fs::create_dir_all(bundle).map_err(io_err("creating bundle directory", bundle))?;
    let target = bundle.join("config.json");
    let temp = bundle.join(".config.json.tmp");
    let mut file = File::create(&temp).map_err(io_err("creating", &temp))?;
    file.write_all(&json).map_err(io_err("writing", &temp))?;
    file.sync_all().map_err(io_err("syncing", &temp))?;
    drop(file);
    fs::rename(&temp, &target).map_err(io_err("renaming into place", &target))?;
    File::open(bundle).and_then(|d| d.sync_all()).map_err(io_err("syncing", bundle))?;
    Ok(target)
}

fn validate(config: &ContainerConfig) -> Result<(), BundleError> {
    let invalid =
        |field, reason: &str| Err(BundleError::Invalid { id: config.id.clone(), field, reason: reason.to_owned() });
    if config.id.is_empty()
        || config.id.len() > 128
        || !config.id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return invalid("id", "must be 1-128 of [A-Za-z0-9_.-]");
    }
    if config.args.is_empty() {
        return invalid("args", "is empty: nothing to run");
    }
    if !config.cwd.starts_with('/') {
        return invalid("cwd", "must be an absolute path");
    }
    if !config.rootfs.is_absolute() {
        return invalid("rootfs", "must be an absolute path");
    }
    if !config.cgroups_path.is_absolute() {
        return invalid("cgroups_path", "must be absolute (relative to the cgroup2 mount)");
    }
    if config.env.iter().any(|e| !e.contains('=')) {
        return invalid("env", "every entry must be KEY=VALUE");
    }
    if let Some(weight) = config.resources.cpu_weight {
        if !(1..=10_000).contains(&weight) {
            return invalid("resources.cpu_weight", "must be 1-10000");
        }
    }
    if let Some(cpu_max) = config.resources.cpu_max {
        if !(1_000..=1_000_000).contains(&cpu_max.period_us) {
            return invalid("resources.cpu_max.period_us", "must be 1000-1000000");
        }
    }
    for mount in &config.mounts {
        let destination = match mount {
            Mount::Bind { destination, source, .. } => {
                if !source.is_absolute() {
                    return invalid("mounts.source", "bind sources must be absolute paths");
                }
                destination
            }
            Mount::Tmpfs { destination, .. } => destination,
        };
        if !destination.starts_with('/') || destination.split('/').any(|c| c == "..") {
            return invalid("mounts.destination", "must be an absolute path without '..'");
        }
    }
    if config.hostname.is_some() && config.namespaces.uts != Namespace::New {
        return invalid("hostname", "can only be set with a new UTS namespace");
    }
    Ok(())
}

fn capability_set(config: &ContainerConfig) -> Result<HashSet<Capability>, BundleError> {
    let parse = |field, name: &str| {
        let bare = name.trim().to_ascii_uppercase();
        let bare = bare.strip_prefix("CAP_").unwrap_or(&bare).to_owned();
        Capability::from_str(&bare).map_err(|_| BundleError::Invalid {
            id: config.id.clone(),
            field,
            reason: format!("unknown capability {name:?}"),
        })
    };
    let security = &config.security;
    let names = if security.privileged { ALL_CAPABILITIES } else { DEFAULT_CAPABILITIES };
    let mut set = HashSet::new();
    for name in names {
        set.insert(parse("security.capabilities", name)?);
    }
    if security.privileged {
        return Ok(set);
    }
    for name in &security.capabilities_add {
        if name.eq_ignore_ascii_case("ALL") {
            for all in ALL_CAPABILITIES {
                set.insert(parse("security.capabilities_add", all)?);
            }
        } else {
            set.insert(parse("security.capabilities_add", name)?);
        }
    }
    for name in &security.capabilities_drop {
        if name.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(&parse("security.capabilities_drop", name)?);
        }
    }
    Ok(set)
}

fn mounts(config: &ContainerConfig) -> Result<Vec<oci_spec::runtime::Mount>, BundleError> {
    let spec_err = |source| BundleError::Spec { id: config.id.clone(), source };
    let mount = |destination: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(destination)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
            .build()
            .map_err(spec_err)
    };
    let sys_mode = if config.security.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", sys_mode])?,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", sys_mode])?,
    ];
    // mqueue belongs to an IPC namespace: the host's is not the container's to mount.
    if config.namespaces.ipc != Namespace::Host {
        mounts.push(mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?);
    }
    for m in &config.mounts {
        mounts.push(match m {
            Mount::Bind { source, destination, readonly } => {
                let source = source.to_string_lossy();
                mount(destination, "bind", &source, &["rbind", "rprivate", if *readonly { "ro" } else { "rw" }])?
            }
            Mount::Tmpfs { destination, size_bytes } => {
                let size = size_bytes.map(|s| format!("size={s}"));
                let mut options = vec!["nosuid", "nodev", "mode=1777"];
                if let Some(size) = &size {
                    options.push(size);
                }
                mount(destination, "tmpfs", "tmpfs", &options)?
            }
        });
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpuMax, Namespaces, Resources, Security, User};

    pub(crate) fn sample() -> ContainerConfig {
        ContainerConfig {
            id: "etcd-0".into(),
            rootfs: "/var/lib/kelson/pods/etcd/etcd/rootfs".into(),
            args: vec!["etcd".into(), "--data-dir=/var/lib/etcd".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            user: User { uid: 0, gid: 0, additional_gids: vec![] },
            security: Security::default(),
            mounts: vec![
                Mount::Bind { source: "/var/lib/etcd".into(), destination: "/var/lib/etcd".into(), readonly: false },
                Mount::Tmpfs { destination: "/tmp".into(), size_bytes: Some(1 << 20) },
            ],
            cgroups_path: "/kelson.slice/pods/etcd/etcd".into(),
            resources: Resources::default(),
            namespaces: Namespaces {
                network: Namespace::Host,
                ipc: Namespace::Join("/proc/42/ns/ipc".into()),
                uts: Namespace::Join("/proc/42/ns/uts".into()),
            },
            hostname: None,
        }
    }

    fn json(config: &ContainerConfig) -> serde_json::Value {
        serde_json::to_value(spec(config).unwrap()).unwrap()
    }

    #[test]
    fn host_network_omits_the_namespace_and_joined_ones_carry_their_path() {
        let v = json(&sample());
        let namespaces = v["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = namespaces.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["pid", "mount", "cgroup", "ipc", "uts"]);
        assert_eq!(namespaces[3]["path"], "/proc/42/ns/ipc");
        assert!(namespaces[0].get("path").is_none());
        assert_eq!(v["linux"]["cgroupsPath"], "/kelson.slice/pods/etcd/etcd");
    }

    #[test]
    fn resources_become_cgroup_v2_files() {
        let mut c = sample();
        c.resources = Resources {
            cpu_weight: Some(100),
            cpu_max: Some(CpuMax { quota_us: Some(50_000), period_us: 100_000 }),
            memory_max: Some(64 << 20),
            memory_min: Some(16 << 20),
        };
        let unified = &json(&c)["linux"]["resources"]["unified"];
        assert_eq!(unified["cpu.weight"], "100");
        assert_eq!(unified["cpu.max"], "50000 100000");
        assert_eq!(unified["memory.max"], (64u64 << 20).to_string());
        assert_eq!(unified["memory.min"], (16u64 << 20).to_string());
        c.resources.cpu_max = Some(CpuMax { quota_us: None, period_us: 100_000 });
        assert_eq!(json(&c)["linux"]["resources"]["unified"]["cpu.max"], "max 100000");
    }

    #[test]
    fn capabilities_add_and_drop_apply_to_the_default_set() {
        let mut c = sample();
        c.security.capabilities_add = vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()];
        c.security.capabilities_drop = vec!["net_raw".into()];
        let v = json(&c);
        let caps: HashSet<String> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        assert!(caps.contains("CAP_NET_ADMIN") && caps.contains("CAP_SYS_TIME") && caps.contains("CAP_CHOWN"));
        assert!(!caps.contains("CAP_NET_RAW"));
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len() + 1);
        c.security.capabilities_drop = vec!["ALL".into()];
        assert_eq!(json(&c)["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn the_runtime_default_filter_fits_the_capabilities_and_privileged_gets_none() {
        let mut c = sample();
        assert!(json(&c)["linux"].get("seccomp").is_none(), "no filter unless asked for");
        c.security.seccomp_runtime_default = true;
        let seccomp = &json(&c)["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let names = |s: &serde_json::Value| -> Vec<String> {
            s["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()))
                .collect()
        };
        assert!(!names(seccomp).contains(&"mount".to_owned()), "mount is not on the allow list");
        c.security.capabilities_add = vec!["SYS_ADMIN".into()];
        assert!(names(&json(&c)["linux"]["seccomp"]).contains(&"mount".to_owned()), "CAP_SYS_ADMIN may mount");
        c.security.privileged = true;
        assert!(json(&c)["linux"].get("seccomp").is_none(), "privileged containers are unconfined");
    }

    #[test]
    fn privileged_gets_every_capability_and_no_masked_paths() {
        let mut c = sample();
        c.security.privileged = true;
        let v = json(&c);
        assert_eq!(v["process"]["capabilities"]["effective"].as_array().unwrap().len(), ALL_CAPABILITIES.len());
        assert_eq!(v["linux"]["maskedPaths"], serde_json::json!([]));
        assert_eq!(v["linux"]["readonlyPaths"], serde_json::json!([]));
        let sys = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&"rw".into()));
        let plain = json(&sample());
        assert!(plain["linux"]["maskedPaths"].as_array().unwrap().contains(&"/proc/kcore".into()));
    }

    #[test]
    fn user_readonly_root_and_mounts_are_carried() {
        let mut c = sample();
        c.user = User { uid: 1000, gid: 2000, additional_gids: vec![3000] };
        c.security.readonly_rootfs = true;
        let v = json(&c);
        assert_eq!(
            (v["process"]["user"]["uid"].as_u64(), v["process"]["user"]["gid"].as_u64()),
            (Some(1000), Some(2000))
        );
        assert_eq!(v["process"]["user"]["additionalGids"][0], 3000);
        assert_eq!(v["root"]["readonly"], true);
        assert!(
            v["process"].get("noNewPrivileges").is_none(),
            "Kubernetes allows privilege escalation unless told not to"
        );
        c.security.no_new_privileges = true;
        assert_eq!(json(&c)["process"]["noNewPrivileges"], true);
        let v = json(&c);
        let mounts = v["mounts"].as_array().unwrap();
        let bind = mounts.iter().find(|m| m["destination"] == "/var/lib/etcd").unwrap();
        assert_eq!(bind["options"], serde_json::json!(["rbind", "rprivate", "rw"]));
        let tmp = mounts.iter().find(|m| m["destination"] == "/tmp").unwrap();
        assert!(tmp["options"].as_array().unwrap().contains(&"size=1048576".into()));
        // Host IPC is not ours to mount mqueue for; a joined one is.
        assert!(mounts.iter().any(|m| m["destination"] == "/dev/mqueue"));
        c.namespaces.ipc = Namespace::Host;
        assert!(!json(&c)["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/dev/mqueue"));
    }

    #[test]
    fn invalid_fields_are_named() {
        type Change = Box<dyn Fn(&mut ContainerConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.id = "a/b".into()), "id"),
            (Box::new(|c| c.args.clear()), "args"),
            (Box::new(|c| c.cgroups_path = "pods/x".into()), "cgroups_path"),
            (Box::new(|c| c.resources.cpu_weight = Some(0)), "resources.cpu_weight"),
            (Box::new(|c| c.security.capabilities_add = vec!["FLY".into()]), "security.capabilities_add"),
            (Box::new(|c| c.hostname = Some("x".into())), "hostname"),
            (
                Box::new(|c| c.mounts.push(Mount::Tmpfs { destination: "/a/../etc".into(), size_bytes: None })),
                "mounts.destination",
            ),
        ];
        for (change, field) in cases {
            let mut c = sample();
            change(&mut c);
            match spec(&c) {
                Err(BundleError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn write_puts_a_parseable_config_json_in_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir.path().join("b"), &sample()).unwrap();
        let loaded = Spec::load(&path).unwrap();
        assert_eq!(loaded.process().as_ref().unwrap().args().as_ref().unwrap()[0], "etcd");
        assert!(!dir.path().join("b/.config.json.tmp").exists());
    }
}
