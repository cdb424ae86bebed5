//! A k8s-openapi Pod checked field by field and mapped to Kelson's
//! [`PodSpec`] in the same pass, so a field cannot be checked one way and
//! used another. Every problem is collected with its field path.
//!
//! Kubernetes' defaults are applied here (namespace `default`, restart
//! policy `Always`, 30 s grace, probe timings, requests from limits), so
//! what the shim receives is complete.

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{FieldError, Problems};
use crate::manifest::LoadOptions;
use crate::probe::ProbeKind;
use crate::quantity::{self, Unit};
use crate::spec::*;

pub(crate) fn pod(
    pod: &k8s::Pod,
    file: &Path,
    uid: PodUid,
    options: &LoadOptions,
) -> Result<PodSpec, Vec<FieldError>> {
    let mut p = Problems::default();
    let meta = &pod.metadata;
    let manifest_name = meta.name.clone().unwrap_or_default();
    if manifest_name.is_empty() {
        p.add("metadata.name", "is required");
    } else {
        check_subdomain(&mut p, "metadata.name", &manifest_name);
    }
    let node_name = options
        .node_name
        .clone()
        .or_else(|| pod.spec.as_ref().and_then(|s| s.node_name.clone()));
    let name = match &options.node_name {
        Some(node) if !manifest_name.is_empty() => {
            let full = format!("{manifest_name}-{}", node.to_lowercase());
            if full.len() > 253 {
                p.add(
                    "metadata.name",
                    format!("with the node's name appended, {full:?} is longer than 253 characters"),
                );
            }
            full
        }
        _ => manifest_name.clone(),
    };
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_owned());
    check_label(&mut p, "metadata.namespace", &namespace);

    let Some(spec) = &pod.spec else {
        p.add("spec", "is required");
        return Err(p.0);
    };
    if spec.containers.is_empty() {
        p.add("spec.containers", "at least one container is required");
    }
    refuse_present(&mut p, "spec.initContainers", spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()), "init containers are not supported in Kelson's static pods");
    refuse_present(&mut p, "spec.ephemeralContainers", spec.ephemeral_containers.as_ref().is_some_and(|v| !v.is_empty()), "ephemeral containers are not supported in Kelson's static pods");
    let restart_policy = match spec.restart_policy.as_deref() {
        None => RestartPolicy::Always,
        Some(text) => restart_policy(&mut p, "spec.restartPolicy", text),
    };
    let grace = match spec.termination_grace_period_seconds {
        None => Duration::from_secs(30),
        Some(s) => seconds(&mut p, "spec.terminationGracePeriodSeconds", s, 0),
    };
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let k8s_volumes = spec.volumes.as_deref().unwrap_or_default();
    let volumes = volumes(&mut p, k8s_volumes);
    // Every declared name, including volumes refused above, so a mount of
    // one is not reported a second time as naming no volume.
    let declared: BTreeSet<&str> = k8s_volumes.iter().map(|v| v.name.as_str()).collect();
    let mut names = BTreeSet::new();
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("spec.containers[{i}]");
            if !names.insert(c.name.as_str()) {
                p.add(format!("{at}.name"), format!("{:?} is used by another container of this pod", c.name));
            }
            container(&mut p, &at, c, &declared, &pod_security)
        })
        .collect();
    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(PodSpec {
        manifest: file.to_owned(),
        name,
        manifest_name,
        namespace,
        uid,
        node_name,
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        host_network: spec.host_network.unwrap_or(false),
        host_pid: spec.host_pid.unwrap_or(false),
        host_ipc: spec.host_ipc.unwrap_or(false),
        priority_class_name: spec.priority_class_name.clone(),
        priority: spec.priority,
        restart_policy,
        termination_grace_period: grace,
        volumes,
        containers,
        warnings: Vec::new(),
    })
}

fn refuse_present(p: &mut Problems, path: &str, present: bool, reason: &str) {
    if present {
        p.add(path, reason);
    }
}

fn restart_policy(p: &mut Problems, path: &str, text: &str) -> RestartPolicy {
    match text {
        "Always" => RestartPolicy::Always,
        "OnFailure" => RestartPolicy::OnFailure,
        "Never" => RestartPolicy::Never,
        _ => {
            p.add(path, format!("{text:?} is not one of Always, OnFailure, Never"));
            RestartPolicy::Always
        }
    }
}

/// A count of seconds that must be at least `min`.
fn seconds(p: &mut Problems, path: &str, value: i64, min: i64) -> Duration {
    if value < min {
        p.add(path, format!("is {value}; must be at least {min}"));
        return Duration::ZERO;
    }
    Duration::from_secs(value.unsigned_abs())
}

fn volumes(p: &mut Problems, volumes: &[k8s::Volume]) -> Vec<VolumeSpec> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let at = format!("spec.volumes[{i}]");
        check_label(p, &format!("{at}.name"), &v.name);
        if !names.insert(v.name.as_str()) {
            p.add(format!("{at}.name"), format!("{:?} is declared twice", v.name));
        }
        let sources = volume_sources(v);
        let source = match (sources.as_slice(), &v.host_path, &v.empty_dir) {
            ([_], Some(host), None) => host_path(p, &format!("{at}.hostPath"), host),
            ([_], None, Some(dir)) => empty_dir(p, &format!("{at}.emptyDir"), dir),
            ([], ..) => {
                p.add(&at, format!("volume {:?} has no source; Kelson supports hostPath and emptyDir", v.name));
                None
            }
            ([one], ..) => {
                p.add(
                    format!("{at}.{one}"),
                    format!("volume {:?} is a {one} volume; only hostPath and emptyDir volumes are supported", v.name),
                );
                None
            }
            (many, ..) => {
                p.add(&at, format!("volume {:?} has several sources ({}); it must have exactly one", v.name, many.join(", ")));
                None
            }
        };
        if let Some(source) = source {
            out.push(VolumeSpec { name: v.name.clone(), source });
        }
    }
    out
}

/// The source fields a volume sets, by their manifest names: read from the
/// serialized volume so that every kind Kubernetes has is named, including
/// kinds newer than this code.
fn volume_sources(v: &k8s::Volume) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter(|(k, v)| k != "name" && !v.is_null())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

fn host_path(p: &mut Problems, at: &str, host: &k8s::HostPathVolumeSource) -> Option<VolumeSource> {
    let path = PathBuf::from(&host.path);
    if !path.is_absolute() {
        p.add(format!("{at}.path"), format!("{:?} is not an absolute path", host.path));
    } else if path.components().any(|c| c == Component::ParentDir) {
        p.add(format!("{at}.path"), format!("{:?} must not contain '..'", host.path));
    }
    let text = host.type_.as_deref().unwrap_or("");
    let Some(kind) = HostPathType::from_manifest(text) else {
        p.add(
            format!("{at}.type"),
            format!("{text:?} is not one of \"\", DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"),
        );
        return None;
    };
    Some(VolumeSource::HostPath { path, kind })
}

fn empty_dir(p: &mut Problems, at: &str, dir: &k8s::EmptyDirVolumeSource) -> Option<VolumeSource> {
    let medium = match dir.medium.as_deref().unwrap_or("") {
        "" => StorageMedium::Default,
        "Memory" => StorageMedium::Memory,
        other => {
            p.add(format!("{at}.medium"), format!("{other:?} is not supported; use \"\" (disk) or Memory"));
            return None;
        }
    };
    let size_limit = dir
        .size_limit
        .as_ref()
        .and_then(|q| bytes(p, &format!("{at}.sizeLimit"), q));
    Some(VolumeSource::EmptyDir { medium, size_limit })
}

fn bytes(p: &mut Problems, path: &str, q: &Quantity) -> Option<u64> {
    quantity::parse(&q.0, Unit::One).map_err(|e| p.add(path, e)).ok()
}

fn container(
    p: &mut Problems,
    at: &str,
    c: &k8s::Container,
    volumes: &BTreeSet<&str>,
    pod_security: &k8s::PodSecurityContext,
) -> ContainerSpec {
    check_label(p, &format!("{at}.name"), &c.name);
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        p.add(format!("{at}.image"), "is required");
    } else if image.chars().any(char::is_whitespace) {
        p.add(format!("{at}.image"), format!("{image:?} contains whitespace"));
    }
    let image_pull_policy = match c.image_pull_policy.as_deref() {
        None => default_pull_policy(&image),
        Some("Always") => PullPolicy::Always,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        Some("Never") => PullPolicy::Never,
        Some(other) => {
            p.add(format!("{at}.imagePullPolicy"), format!("{other:?} is not one of Always, IfNotPresent, Never"));
            PullPolicy::IfNotPresent
        }
    };
    refuse_present(p, &format!("{at}.envFrom"), c.env_from.as_ref().is_some_and(|v| !v.is_empty()), "envFrom reads ConfigMaps or Secrets, which static pods cannot use");
    refuse_present(p, &format!("{at}.volumeDevices"), c.volume_devices.as_ref().is_some_and(|v| !v.is_empty()), "raw block volumes are not supported");
    refuse_present(p, &format!("{at}.lifecycle"), c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some() || l.pre_stop.is_some() || l.stop_signal.is_some()), "lifecycle hooks are not supported in Kelson's static pods");
    refuse_present(p, &format!("{at}.restartPolicy"), c.restart_policy.is_some(), "a container's own restartPolicy is only for init containers, which Kelson does not support");
    let working_dir = c.working_dir.as_ref().map(PathBuf::from);
    if let Some(dir) = &working_dir {
        if !dir.is_absolute() {
            p.add(format!("{at}.workingDir"), format!("{} is not an absolute path", dir.display()));
        }
    }
    let ports = ports(p, at, c.ports.as_deref().unwrap_or_default());
    let probe_at = |field: &str| format!("{at}.{field}");
    let liveness = c.liveness_probe.as_ref().and_then(|pr| probe(p, &probe_at("livenessProbe"), pr, ProbeKind::Liveness, &ports));
    let readiness = c.readiness_probe.as_ref().and_then(|pr| probe(p, &probe_at("readinessProbe"), pr, ProbeKind::Readiness, &ports));
    let startup = c.startup_probe.as_ref().and_then(|pr| probe(p, &probe_at("startupProbe"), pr, ProbeKind::Startup, &ports));
    ContainerSpec {
        name: c.name.clone(),
        image,
        image_pull_policy,
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        env: env(p, at, c.env.as_deref().unwrap_or_default()),
        working_dir,
        ports,
        mounts: mounts(p, at, c.volume_mounts.as_deref().unwrap_or_default(), volumes),
        resources: resources(p, &format!("{at}.resources"), c.resources.as_ref()),
        security: security(p, &format!("{at}.securityContext"), c.security_context.as_ref(), pod_security),
        liveness,
        readiness,
        startup,
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
    }
}

/// `:latest` or no tag means `Always`, anything else `IfNotPresent`.
fn default_pull_policy(image: &str) -> PullPolicy {
    if image.contains('@') {
        return PullPolicy::IfNotPresent;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
        _ => PullPolicy::Always,
    }
}

fn env(p: &mut Problems, at: &str, vars: &[k8s::EnvVar]) -> Vec<EnvVar> {
    let mut out = Vec::new();
    for (i, var) in vars.iter().enumerate() {
        let at = format!("{at}.env[{i}]");
        if var.name.is_empty() {
            p.add(format!("{at}.name"), "is required");
        } else if var.name.contains('=') || var.name.chars().any(|c| !c.is_ascii_graphic() && c != ' ') {
            p.add(format!("{at}.name"), format!("{:?} must be printable ASCII without '='", var.name));
        }
        let value = match (&var.value, &var.value_from) {
            (Some(_), Some(_)) => {
                p.add(&at, "value and valueFrom cannot both be set");
                continue;
            }
            (value, None) => EnvValue::Literal(value.clone().unwrap_or_default()),
            (None, Some(from)) => match env_source(p, &format!("{at}.valueFrom"), from) {
                Some(field) => EnvValue::Field(field),
                None => continue,
            },
        };
        out.push(EnvVar { name: var.name.clone(), value });
    }
    out
}

fn env_source(p: &mut Problems, at: &str, from: &k8s::EnvVarSource) -> Option<PodField> {
    if from.config_map_key_ref.is_some() || from.secret_key_ref.is_some() {
        p.add(at, "ConfigMaps and Secrets cannot be used by static pods; use fieldRef or a literal value");
        return None;
    }
    if from.resource_field_ref.is_some() || from.file_key_ref.is_some() {
        p.add(at, "only fieldRef is supported in a static pod's valueFrom");
        return None;
    }
    let Some(field) = &from.field_ref else {
        p.add(at, "has no source; use fieldRef");
        return None;
    };
    if let Some(version) = field.api_version.as_deref().filter(|v| *v != "v1") {
        p.add(format!("{at}.fieldRef.apiVersion"), format!("{version:?} is not v1"));
    }
    let found = PodField::from_path(&field.field_path);
    if found.is_none() {
        let known: Vec<&str> = PodField::ALL.iter().map(|f| f.path()).collect();
        p.add(
            format!("{at}.fieldRef.fieldPath"),
            format!("{:?} is not available to a static pod; use one of {}", field.field_path, known.join(", ")),
        );
    }
    found
}

fn ports(p: &mut Problems, at: &str, ports: &[k8s::ContainerPort]) -> Vec<PortSpec> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("{at}.ports[{i}]");
        let container_port = port_number(p, &format!("{at}.containerPort"), port.container_port);
        let host_port = match port.host_port {
            None | Some(0) => None,
            Some(n) => port_number(p, &format!("{at}.hostPort"), n),
        };
        if let Some(name) = &port.name {
            if !valid_port_name(name) {
                p.add(format!("{at}.name"), format!("{name:?} is not a port name (at most 15 lowercase letters, digits and '-', with a letter)"));
            } else if !names.insert(name.as_str()) {
                p.add(format!("{at}.name"), format!("{name:?} is used by another port of this container"));
            }
        }
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                p.add(format!("{at}.protocol"), format!("{other:?} is not one of TCP, UDP, SCTP"));
                Protocol::Tcp
            }
        };
        if let Some(container_port) = container_port {
            out.push(PortSpec {
                name: port.name.clone(),
                container_port,
                host_port,
                host_ip: port.host_ip.clone(),
                protocol,
            });
        }
    }
    out
}

fn port_number(p: &mut Problems, path: &str, n: i32) -> Option<u16> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            p.add(path, format!("{n} is not a port number (1-65535)"));
            None
        }
    }
}

/// An IANA service name, as Kubernetes checks port names.
fn valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn mounts(p: &mut Problems, at: &str, mounts: &[k8s::VolumeMount], volumes: &BTreeSet<&str>) -> Vec<MountSpec> {
    let mut paths = BTreeSet::new();
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let at = format!("{at}.volumeMounts[{i}]");
        if !volumes.contains(m.name.as_str()) {
            p.add(format!("{at}.name"), format!("{:?} is not a volume of this pod", m.name));
        }
        let mount_path = PathBuf::from(&m.mount_path);
        if !mount_path.is_absolute() {
            p.add(format!("{at}.mountPath"), format!("{:?} is not an absolute path", m.mount_path));
        } else if !paths.insert(mount_path.clone()) {
            p.add(format!("{at}.mountPath"), format!("{:?} is mounted twice in this container", m.mount_path));
        }
        refuse_present(p, &format!("{at}.subPathExpr"), m.sub_path_expr.as_ref().is_some_and(|s| !s.is_empty()), "subPathExpr is not supported; use subPath");
        let sub_path = m.sub_path.as_ref().filter(|s| !s.is_empty()).map(PathBuf::from);
        if let Some(sub) = &sub_path {
            if sub.is_absolute() || sub.components().any(|c| c == Component::ParentDir) {
                p.add(format!("{at}.subPath"), format!("{} must be a relative path without '..'", sub.display()));
            }
        }
        out.push(MountSpec {
            volume: m.name.clone(),
            mount_path,
            read_only: m.read_only.unwrap_or(false),
            sub_path,
        });
    }
    out
}

const RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

fn resources(p: &mut Problems, at: &str, r: Option<&k8s::ResourceRequirements>) -> Resources {
    let Some(r) = r else { return Resources::default() };
    refuse_present(p, &format!("{at}.claims"), r.claims.as_ref().is_some_and(|c| !c.is_empty()), "resource claims are not supported");
    let read = |p: &mut Problems, side: &str, values: Option<&BTreeMap<String, Quantity>>| {
        let mut got: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, q) in values.into_iter().flatten() {
            // Kubernetes writes keys that hold dots or slashes in brackets.
            let path = if name.contains(['.', '/']) { format!("{at}.{side}[{name}]") } else { format!("{at}.{side}.{name}") };
            let unit = match name.as_str() {
                "cpu" => Unit::Milli,
                "memory" | "ephemeral-storage" => Unit::One,
                _ => {
                    p.add(path, format!("resource {name:?} is not supported; use {}", RESOURCES.join(", ")));
                    continue;
                }
            };
            if let Ok(v) = quantity::parse(&q.0, unit).map_err(|e| p.add(path, e)) {
                got.insert(RESOURCES.iter().find(|r| **r == name).copied().unwrap_or("cpu"), v);
            }
        }
        got
    };
    let requests = read(p, "requests", r.requests.as_ref());
    let limits = read(p, "limits", r.limits.as_ref());
    for name in RESOURCES {
        if let (Some(req), Some(lim)) = (requests.get(name), limits.get(name)) {
            if req > lim {
                let text = |side: &BTreeMap<String, Quantity>| side.get(name).map(|q| q.0.clone()).unwrap_or_default();
                p.add(
                    format!("{at}.requests.{name}"),
                    format!(
                        "{} is more than the limit {}",
                        text(r.requests.as_ref().unwrap_or(&BTreeMap::new())),
                        text(r.limits.as_ref().unwrap_or(&BTreeMap::new()))
                    ),
                );
            }
        }
    }
    // An unset request takes the limit, as the API server's defaulting does.
    let request = |name| requests.get(name).or_else(|| limits.get(name)).copied();
    Resources {
        cpu_request_millis: request("cpu"),
        cpu_limit_millis: limits.get("cpu").copied(),
        memory_request_bytes: request("memory"),
        memory_limit_bytes: limits.get("memory").copied(),
        ephemeral_storage_request_bytes: request("ephemeral-storage"),
        ephemeral_storage_limit_bytes: limits.get("ephemeral-storage").copied(),
    }
}

/// Linux's capabilities, as Kubernetes names them (no `CAP_` prefix).
const CAPABILITIES: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];

fn capabilities(p: &mut Problems, at: &str, names: Option<&Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.into_iter().flatten().enumerate() {
        let bare = name.strip_prefix("CAP_").unwrap_or(name).to_ascii_uppercase();
        if bare == "ALL" || CAPABILITIES.contains(&bare.as_str()) {
            out.push(bare);
        } else {
            p.add(format!("{at}[{i}]"), format!("{name:?} is not a Linux capability"));
        }
    }
    out
}

fn security(
    p: &mut Problems,
    at: &str,
    c: Option<&k8s::SecurityContext>,
    pod: &k8s::PodSecurityContext,
) -> SecurityContext {
    let default = k8s::SecurityContext::default();
    let c = c.unwrap_or(&default);
    let caps = c.capabilities.clone().unwrap_or_default();
    let id = |p: &mut Problems, field: &str, own: Option<i64>, pod_value: Option<i64>| {
        let (value, path) = match (own, pod_value) {
            (Some(v), _) => (v, format!("{at}.{field}")),
            (None, Some(v)) => (v, format!("spec.securityContext.{field}")),
            (None, None) => return None,
        };
        match u32::try_from(value) {
            Ok(id) if value <= i64::from(i32::MAX) => Some(id),
            _ => {
                p.add(path, format!("{value} is not a user or group ID (0-2147483647)"));
                None
            }
        }
    };
    let run_as_user = id(p, "runAsUser", c.run_as_user, pod.run_as_user);
    let run_as_group = id(p, "runAsGroup", c.run_as_group, pod.run_as_group);
    let run_as_non_root = c.run_as_non_root.or(pod.run_as_non_root).unwrap_or(false);
    if run_as_non_root && run_as_user == Some(0) {
        p.add(format!("{at}.runAsNonRoot"), "is true but runAsUser is 0: the container could never start");
    }
    let privileged = c.privileged.unwrap_or(false);
    if privileged && c.allow_privilege_escalation == Some(false) {
        p.add(format!("{at}.allowPrivilegeEscalation"), "cannot be false for a privileged container");
    }
    let supplemental_groups = pod
        .supplemental_groups
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, g)| match u32::try_from(*g) {
            Ok(g) => Some(g),
            Err(_) => {
                p.add(format!("spec.securityContext.supplementalGroups[{i}]"), format!("{g} is not a group ID"));
                None
            }
        })
        .collect();
    let seccomp = match (&c.seccomp_profile, &pod.seccomp_profile) {
        (Some(own), _) => seccomp(p, &format!("{at}.seccompProfile"), own),
        (None, Some(pod)) => seccomp(p, "spec.securityContext.seccompProfile", pod),
        (None, None) => None,
    };
    SecurityContext {
        privileged,
        capabilities_add: capabilities(p, &format!("{at}.capabilities.add"), caps.add.as_ref()),
        capabilities_drop: capabilities(p, &format!("{at}.capabilities.drop"), caps.drop.as_ref()),
        run_as_user,
        run_as_group,
        run_as_non_root,
        read_only_root_filesystem: c.read_only_root_filesystem.unwrap_or(false),
        allow_privilege_escalation: c.allow_privilege_escalation,
        supplemental_groups,
        seccomp,
    }
}

fn seccomp(p: &mut Problems, at: &str, profile: &k8s::SeccompProfile) -> Option<Seccomp> {
    match (profile.type_.as_str(), &profile.localhost_profile) {
        ("RuntimeDefault", None) => Some(Seccomp::RuntimeDefault),
        ("Unconfined", None) => Some(Seccomp::Unconfined),
        ("Localhost", Some(file)) if !file.is_empty() => Some(Seccomp::Localhost(file.clone())),
        ("Localhost", _) => {
            p.add(format!("{at}.localhostProfile"), "is required with type Localhost");
            None
        }
        ("RuntimeDefault" | "Unconfined", Some(_)) => {
            p.add(format!("{at}.localhostProfile"), "is only for type Localhost");
            None
        }
        (other, _) => {
            p.add(format!("{at}.type"), format!("{other:?} is not one of RuntimeDefault, Unconfined, Localhost"));
            None
        }
    }
}

fn probe(p: &mut Problems, at: &str, pr: &k8s::Probe, kind: ProbeKind, ports: &[PortSpec]) -> Option<ProbeSpec> {
    let handlers = [
        pr.exec.is_some().then_some("exec"),
        pr.http_get.is_some().then_some("httpGet"),
        pr.tcp_socket.is_some().then_some("tcpSocket"),
        pr.grpc.is_some().then_some("grpc"),
    ];
    let set: Vec<&str> = handlers.into_iter().flatten().collect();
    let action = if set.len() != 1 {
        let found = if set.is_empty() { "none".to_owned() } else { set.join(", ") };
        p.add(at, format!("a probe needs exactly one of exec, httpGet, tcpSocket (found {found})"));
        None
    } else if let Some(exec) = &pr.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            p.add(format!("{at}.exec.command"), "is required");
        }
        Some(ProbeAction::Exec { command })
    } else if let Some(http) = &pr.http_get {
        let port = probe_port(p, &format!("{at}.httpGet.port"), &http.port, ports);
        let path = http.path.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "/".to_owned());
        if !path.starts_with('/') {
            p.add(format!("{at}.httpGet.path"), format!("{path:?} must start with '/'"));
        }
        let scheme = match http.scheme.as_deref().unwrap_or("HTTP") {
            "HTTP" => HttpScheme::Http,
            "HTTPS" => HttpScheme::Https,
            other => {
                p.add(format!("{at}.httpGet.scheme"), format!("{other:?} is not one of HTTP, HTTPS"));
                HttpScheme::Http
            }
        };
        let headers = http
            .http_headers
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, h)| {
                if h.name.is_empty() || !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)) {
                    p.add(format!("{at}.httpGet.httpHeaders[{i}].name"), format!("{:?} is not an HTTP header name", h.name));
                    return None;
                }
                Some((h.name.clone(), h.value.clone()))
            })
            .collect();
        port.map(|port| ProbeAction::HttpGet { host: http.host.clone().filter(|h| !h.is_empty()), port, path, scheme, headers })
    } else if let Some(tcp) = &pr.tcp_socket {
        let port = probe_port(p, &format!("{at}.tcpSocket.port"), &tcp.port, ports);
        port.map(|port| ProbeAction::TcpSocket { host: tcp.host.clone().filter(|h| !h.is_empty()), port })
    } else {
        p.add(format!("{at}.grpc"), "grpc probes are not supported; use httpGet, tcpSocket or exec");
        None
    };
    // Kubernetes treats 0 (or absent) as "the default".
    let count = |p: &mut Problems, field: &str, value: Option<i32>, default: u32| -> u32 {
        match value {
            None | Some(0) => default,
            Some(v) => u32::try_from(v).unwrap_or_else(|_| {
                p.add(format!("{at}.{field}"), format!("is {v}; must not be negative"));
                default
            }),
        }
    };
    let initial_delay = count(p, "initialDelaySeconds", pr.initial_delay_seconds, 0);
    let period = count(p, "periodSeconds", pr.period_seconds, 10);
    let timeout = count(p, "timeoutSeconds", pr.timeout_seconds, 1);
    let success_threshold = count(p, "successThreshold", pr.success_threshold, 1);
    let failure_threshold = count(p, "failureThreshold", pr.failure_threshold, 3);
    if kind != ProbeKind::Readiness && success_threshold != 1 {
        p.add(format!("{at}.successThreshold"), format!("is {success_threshold}; must be 1 for a liveness or startup probe"));
    }
    let termination_grace_period = match pr.termination_grace_period_seconds {
        None => None,
        Some(_) if kind == ProbeKind::Readiness => {
            p.add(format!("{at}.terminationGracePeriodSeconds"), "is only for liveness and startup probes");
            None
        }
        Some(s) => Some(seconds(p, &format!("{at}.terminationGracePeriodSeconds"), s, 1)),
    };
    Some(ProbeSpec {
        action: action?,
        initial_delay: Duration::from_secs(initial_delay.into()),
        period: Duration::from_secs(period.into()),
        timeout: Duration::from_secs(timeout.into()),
        success_threshold,
        failure_threshold,
        termination_grace_period,
    })
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(p: &mut Problems, path: &str, port: &IntOrString, ports: &[PortSpec]) -> Option<u16> {
    match port {
        IntOrString::Int(n) => port_number(p, path, *n),
        IntOrString::String(name) => {
            let found = ports.iter().find(|port| port.name.as_deref() == Some(name.as_str()));
            if found.is_none() {
                p.add(path, format!("{name:?} is not the name of one of this container's ports"));
            }
            found.map(|port| port.container_port)
        }
    }
}

/// An RFC 1123 label: what container, volume and namespace names must be.
fn check_label(p: &mut Problems, path: &str, name: &str) {
    if name.is_empty() {
        p.add(path, "is required");
    } else if !valid_label(name) {
        p.add(
            path,
            format!("{name:?} is not a DNS label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"),
        );
    }
}

/// An RFC 1123 subdomain: what pod names must be.
fn check_subdomain(p: &mut Problems, path: &str, name: &str) {
    if name.len() > 253 || !name.split('.').all(valid_label) {
        p.add(
            path,
            format!("{name:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters, each part starting and ending with a letter or digit)"),
        );
    }
}

fn valid_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_without_a_tag_or_with_latest_are_pulled_always() {
        assert_eq!(default_pull_policy("busybox"), PullPolicy::Always);
        assert_eq!(default_pull_policy("busybox:latest"), PullPolicy::Always);
        assert_eq!(default_pull_policy("localhost:5000/busybox"), PullPolicy::Always);
        assert_eq!(default_pull_policy("registry.k8s.io/etcd:3.5.15-0"), PullPolicy::IfNotPresent);
        assert_eq!(default_pull_policy("localhost:5000/etcd:3.5"), PullPolicy::IfNotPresent);
        assert_eq!(default_pull_policy("etcd@sha256:abcd"), PullPolicy::IfNotPresent);
    }

    #[test]
    fn labels_and_port_names_follow_kubernetes_rules() {
        assert!(valid_label("kube-apiserver"));
        assert!(valid_label("a"));
        assert!(!valid_label("Etcd"));
        assert!(!valid_label("-etcd"));
        assert!(!valid_label("etcd_1"));
        assert!(!valid_label(&"a".repeat(64)));
        assert!(valid_port_name("probe-port"));
        assert!(!valid_port_name("8080"));
        assert!(!valid_port_name("a--b"));
        assert!(!valid_port_name("sixteen-chars-xx"));
    }
}
