//! One container's fields: image, command, env, ports, mounts, resources
//! and security context.

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, PathBuf};

use super::probe::probe;
use super::{check_label, refuse_present};
use crate::error::Problems;
use crate::probe::ProbeKind;
use crate::quantity::{self, Unit};
use crate::spec::*;

pub(super) fn container(
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
    refuse_present(
        p,
        &format!("{at}.envFrom"),
        c.env_from.as_ref().is_some_and(|v| !v.is_empty()),
        "envFrom reads ConfigMaps or Secrets, which static pods cannot use",
    );
    refuse_present(
        p,
        &format!("{at}.volumeDevices"),
        c.volume_devices.as_ref().is_some_and(|v| !v.is_empty()),
        "raw block volumes are not supported",
    );
    refuse_present(
        p,
        &format!("{at}.lifecycle"),
        c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some() || l.pre_stop.is_some() || l.stop_signal.is_some()),
        "lifecycle hooks are not supported in Kelson's static pods",
    );
    refuse_present(
        p,
        &format!("{at}.restartPolicy"),
        c.restart_policy.is_some(),
        "a container's own restartPolicy is only for init containers, which Kelson does not support",
    );
    let working_dir = c.working_dir.as_ref().map(PathBuf::from);
    if let Some(dir) = &working_dir {
        if !dir.is_absolute() {
            p.add(format!("{at}.workingDir"), format!("{} is not an absolute path", dir.display()));
        }
    }
    let ports = ports(p, at, c.ports.as_deref().unwrap_or_default());
    let probe_at = |field: &str| format!("{at}.{field}");
    let liveness =
        c.liveness_probe.as_ref().and_then(|pr| probe(p, &probe_at("livenessProbe"), pr, ProbeKind::Liveness, &ports));
    let readiness = c
        .readiness_probe
        .as_ref()
        .and_then(|pr| probe(p, &probe_at("readinessProbe"), pr, ProbeKind::Readiness, &ports));
    let startup =
        c.startup_probe.as_ref().and_then(|pr| probe(p, &probe_at("startupProbe"), pr, ProbeKind::Startup, &ports));
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
                p.add(
                    format!("{at}.name"),
                    format!(
                        "{name:?} is not a port name (at most 15 lowercase letters, digits and '-', with a letter)"
                    ),
                );
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

pub(super) fn port_number(p: &mut Problems, path: &str, n: i32) -> Option<u16> {
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
        refuse_present(
            p,
            &format!("{at}.subPathExpr"),
            m.sub_path_expr.as_ref().is_some_and(|s| !s.is_empty()),
            "subPathExpr is not supported; use subPath",
        );
        let sub_path = m.sub_path.as_ref().filter(|s| !s.is_empty()).map(PathBuf::from);
        if let Some(sub) = &sub_path {
            if sub.is_absolute() || sub.components().any(|c| c == Component::ParentDir) {
                p.add(format!("{at}.subPath"), format!("{} must be a relative path without '..'", sub.display()));
            }
        }
        out.push(MountSpec { volume: m.name.clone(), mount_path, read_only: m.read_only.unwrap_or(false), sub_path });
    }
    out
}

const RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

fn resources(p: &mut Problems, at: &str, r: Option<&k8s::ResourceRequirements>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    refuse_present(
        p,
        &format!("{at}.claims"),
        r.claims.as_ref().is_some_and(|c| !c.is_empty()),
        "resource claims are not supported",
    );
    let read = |p: &mut Problems, side: &str, values: Option<&BTreeMap<String, Quantity>>| {
        let mut got: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, q) in values.into_iter().flatten() {
            // Kubernetes writes keys that hold dots or slashes in brackets.
            let path =
                if name.contains(['.', '/']) { format!("{at}.{side}[{name}]") } else { format!("{at}.{side}.{name}") };
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

fn capabilities(p: &mut Problems, at: &str, names: Option<&Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.into_iter().flatten().enumerate() {
        let bare = name.strip_prefix("CAP_").unwrap_or(name).to_ascii_uppercase();
        if bare == "ALL" || kelson_containers::bundle::ALL_CAPABILITIES.contains(&bare.as_str()) {
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
    fn port_names_follow_kubernetes_rules() {
        assert!(valid_port_name("probe-port"));
        assert!(!valid_port_name("8080"));
        assert!(!valid_port_name("a--b"));
        assert!(!valid_port_name("sixteen-chars-xx"));
    }
}
