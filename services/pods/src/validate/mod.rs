//! A k8s-openapi Pod checked field by field and mapped to Kelson's
//! [`PodSpec`] in the same pass, so a field cannot be checked one way and
//! used another. Every problem is collected with its field path.
//!
//! Kubernetes' defaults are applied here (namespace `default`, restart
//! policy `Always`, 30 s grace, probe timings, requests from limits), so
//! what the shim receives is complete.

mod container;
mod not_applied;
mod probe;

use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kelson_config::valid_dns_label as valid_label;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{FieldError, Problems};
use crate::manifest::LoadOptions;
use crate::quantity::{self, Unit};
use crate::spec::*;

pub(crate) fn pod(pod: &k8s::Pod, file: &Path, uid: PodUid, options: &LoadOptions) -> Result<PodSpec, Vec<FieldError>> {
    let mut p = Problems::default();
    let meta = &pod.metadata;
    let manifest_name = meta.name.clone().unwrap_or_default();
    if manifest_name.is_empty() {
        p.add("metadata.name", "is required");
    } else {
        check_subdomain(&mut p, "metadata.name", &manifest_name);
    }
    let node_name = options.node_name.clone().or_else(|| pod.spec.as_ref().and_then(|s| s.node_name.clone()));
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
    refuse_present(
        &mut p,
        "spec.initContainers",
        spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()),
        "init containers are not supported in Kelson's static pods",
    );
    refuse_present(
        &mut p,
        "spec.ephemeralContainers",
        spec.ephemeral_containers.as_ref().is_some_and(|v| !v.is_empty()),
        "ephemeral containers are not supported in Kelson's static pods",
    );
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
    let mut containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("spec.containers[{i}]");
            if !names.insert(c.name.as_str()) {
                p.add(format!("{at}.name"), format!("{:?} is used by another container of this pod", c.name));
            }
            container::container(&mut p, &at, c, &declared, &pod_security)
        })
        .collect::<Vec<_>>();
    let host_network = spec.host_network.unwrap_or(false);
    if host_network {
        host_ports(&mut p, &mut containers);
    }
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
        host_network,
        host_pid: spec.host_pid.unwrap_or(false),
        host_ipc: spec.host_ipc.unwrap_or(false),
        priority_class_name: spec.priority_class_name.clone(),
        priority: spec.priority,
        restart_policy,
        termination_grace_period: grace,
        volumes,
        containers,
        warnings: not_applied::warnings(spec),
    })
}

/// On the host's network a container port is a host port: Kubernetes
/// sets `hostPort` to `containerPort` and refuses any other value.
fn host_ports(p: &mut Problems, containers: &mut [ContainerSpec]) {
    for (i, c) in containers.iter_mut().enumerate() {
        for (j, port) in c.ports.iter_mut().enumerate() {
            match port.host_port {
                Some(host) if host != port.container_port => p.add(
                    format!("spec.containers[{i}].ports[{j}].hostPort"),
                    format!("is {host}; with hostNetwork it must equal containerPort {}", port.container_port),
                ),
                _ => port.host_port = Some(port.container_port),
            }
        }
    }
}

pub(super) fn refuse_present(p: &mut Problems, path: &str, present: bool, reason: &str) {
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
pub(super) fn seconds(p: &mut Problems, path: &str, value: i64, min: i64) -> Duration {
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
                p.add(
                    &at,
                    format!("volume {:?} has several sources ({}); it must have exactly one", v.name, many.join(", ")),
                );
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
        Ok(serde_json::Value::Object(fields)) => {
            fields.into_iter().filter(|(k, v)| k != "name" && !v.is_null()).map(|(k, _)| k).collect()
        }
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
    let size_limit = dir.size_limit.as_ref().and_then(|q| bytes(p, &format!("{at}.sizeLimit"), q));
    Some(VolumeSource::EmptyDir { medium, size_limit })
}

pub(super) fn bytes(p: &mut Problems, path: &str, q: &Quantity) -> Option<u64> {
    quantity::parse(&q.0, Unit::One).map_err(|e| p.add(path, e)).ok()
}
/// An RFC 1123 label: what container, volume and namespace names must be.
pub(super) fn check_label(p: &mut Problems, path: &str, name: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubernetes_rules() {
        assert!(valid_label("kube-apiserver"));
        assert!(valid_label("a"));
        assert!(!valid_label("Etcd"));
        assert!(!valid_label("-etcd"));
        assert!(!valid_label("etcd_1"));
        assert!(!valid_label(&"a".repeat(64)));
    }
}
