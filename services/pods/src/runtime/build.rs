//! A container's runtime config from its pod spec, the image's defaults and
//! the pod's sandbox. Pure apart from the hostPath checks (over
//! [`HostFs`]) and reading the image's `/etc/passwd` for a named user.

use super::{PreparedImage, Sandbox};
use crate::env::{command_line, container_env, PodAddresses};
use crate::hostpath::{check_host_path, HostFs, HostPathError};
use crate::spec::{ContainerSpec, PodSpec, Seccomp, StorageMedium, VolumeSource};
use kelson_containers::store::UserError;
use kelson_containers::{ContainerConfig, CpuMax, Mount, Namespace, Namespaces, Resources, Security, User};
use std::path::{Path, PathBuf};

/// Where a container's pieces go on the host.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    /// The overlay's merged directory, the container's `/`.
    pub rootfs: PathBuf,
    /// The pod's emptyDir volumes: `<dir>/<volume name>`.
    pub volumes_dir: PathBuf,
    /// cgroupsPath: absolute within the cgroup2 mount.
    pub cgroups_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("container {container}: volumeMount {volume}: no such volume")]
    NoVolume { container: String, volume: String },
    #[error("container {container}: volume {volume}")]
    HostPath {
        container: String,
        volume: String,
        #[source]
        source: HostPathError,
    },
    #[error("container {container}: the user of image {image}")]
    User {
        container: String,
        image: String,
        #[source]
        source: Box<UserError>,
    },
    #[error("container {container}: no command: the image has no entrypoint or cmd and the pod gives none")]
    NoCommand { container: String },
    /// The kubelet refuses the same: only a known non-zero uid is allowed.
    #[error(
        "container {container}: runAsNonRoot is set but image {image} runs as root (give runAsUser a non-zero uid)"
    )]
    RunsAsRoot { container: String, image: String },
}

/// The container's id at the shim: readable in `ps`-like listings and
/// unique per pod instance (the UID's first 8 digits), so an old pod that
/// could not be deleted never blocks its replacement.
pub fn container_id(pod: &PodSpec, container: &str) -> String {
    let uid: String = pod.uid.0.chars().take(8).collect();
    format!("{}_{}_{}_{}", pod.namespace, pod.name, container, uid)
}

/// Builds the config the shim runs `container` of `pod` with.
pub fn container_config(
    pod: &PodSpec,
    container: &ContainerSpec,
    image: &PreparedImage,
    sandbox: &Sandbox,
    host_ip: Option<&str>,
    paths: &ContainerPaths,
    fs: &dyn HostFs,
) -> Result<ContainerConfig, ConfigError> {
    let addresses = PodAddresses { pod_ip: sandbox.pod_ip.clone(), host_ip: host_ip.map(str::to_owned) };
    let env = container_env(pod, container, &addresses);
    let (command, args) = command_line(container, &env);
    let args = image.defaults.argv(&command, &args);
    if args.is_empty() {
        return Err(ConfigError::NoCommand { container: container.name.clone() });
    }
    let overrides: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut env = image.defaults.env_with(&overrides);
    // Kubernetes gives every container HOSTNAME; PATH comes from the image
    // or a sane default, as containerd does.
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", pod.name));
    }
    let cwd = container
        .working_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .or_else(|| image.defaults.working_dir.clone())
        .unwrap_or_else(|| "/".into());

    let security = &container.security;
    let (image_uid, image_gid) = match (&image.defaults.user, security.run_as_user) {
        // runAsUser wins over the image's user; the group still comes from
        // runAsGroup or 0, as containerd does for a numeric user.
        (_, Some(uid)) => (uid, 0),
        (Some(_), None) => image.defaults.ids(&image.lower).map_err(|source| ConfigError::User {
            container: container.name.clone(),
            image: container.image.clone(),
            source: Box::new(source),
        })?,
        (None, None) => (0, 0),
    };
    if security.run_as_non_root && image_uid == 0 {
        return Err(ConfigError::RunsAsRoot { container: container.name.clone(), image: container.image.clone() });
    }
    let user = User {
        uid: image_uid,
        gid: security.run_as_group.unwrap_or(image_gid),
        additional_gids: security.supplemental_groups.clone(),
    };

    let mut mounts = Vec::new();
    for mount in &container.mounts {
        let volume = pod
            .volume(&mount.volume)
            .ok_or_else(|| ConfigError::NoVolume { container: container.name.clone(), volume: mount.volume.clone() })?;
        let source = match &volume.source {
            VolumeSource::HostPath { path, kind } => {
                check_host_path(*kind, path, fs).map_err(|source| ConfigError::HostPath {
                    container: container.name.clone(),
                    volume: volume.name.clone(),
                    source,
                })?;
                path.clone()
            }
            VolumeSource::EmptyDir { .. } => paths.volumes_dir.join(&volume.name),
        };
        let source = match &mount.sub_path {
            Some(sub) => source.join(sub),
            None => source,
        };
        mounts.push(Mount::Bind {
            source,
            destination: mount.mount_path.display().to_string(),
            readonly: mount.read_only,
        });
    }

    let values = container.resources.cgroup();
    let resources = Resources {
        cpu_weight: Some(values.cpu_weight),
        cpu_max: values
            .cpu_max_quota_us
            .map(|quota| CpuMax { quota_us: Some(quota), period_us: crate::spec::CPU_PERIOD_US }),
        memory_max: values.memory_max,
        memory_min: values.memory_min,
    };

    Ok(ContainerConfig {
        id: container_id(pod, &container.name),
        rootfs: paths.rootfs.clone(),
        args,
        env,
        cwd,
        user,
        security: Security {
            privileged: security.privileged,
            capabilities_add: security.capabilities_add.clone(),
            capabilities_drop: security.capabilities_drop.clone(),
            readonly_rootfs: security.read_only_root_filesystem,
            no_new_privileges: security.allow_privilege_escalation == Some(false),
            seccomp_runtime_default: matches!(security.seccomp, Some(Seccomp::RuntimeDefault)),
        },
        mounts,
        cgroups_path: paths.cgroups_path.clone(),
        resources,
        namespaces: Namespaces { network: sandbox.network.clone(), ipc: sandbox.ipc.clone(), uts: sandbox.uts.clone() },
        // A runtime sets the hostname only in a UTS namespace of the
        // container's own; a joined sandbox namespace got it when it was made.
        hostname: (sandbox.uts == Namespace::New).then(|| pod.name.clone()),
    })
}

/// Whether an emptyDir lives in memory, and its size bound.
pub(crate) fn memory_volume(source: &VolumeSource) -> Option<Option<u64>> {
    match source {
        VolumeSource::EmptyDir { medium: StorageMedium::Memory, size_limit } => Some(*size_limit),
        _ => None,
    }
}

/// `/<parent>/<pod uid>`, the pod's cgroup, within the cgroup2 mount.
pub(crate) fn pod_cgroup(parent: &str, pod: &PodSpec) -> PathBuf {
    Path::new("/").join(parent.trim_matches('/')).join(&pod.uid.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostpath::RealFs;
    use crate::manifest::{parse, LoadOptions};
    use kelson_containers::store::ImageDefaults;

    fn pod(yaml: &str) -> PodSpec {
        parse(Path::new("/etc/kubernetes/manifests/p.yaml"), yaml.as_bytes(), &LoadOptions::default()).unwrap()
    }

    fn image() -> PreparedImage {
        PreparedImage {
            lower: PathBuf::from("/nonexistent"),
            defaults: ImageDefaults {
                entrypoint: vec!["/bin/server".into()],
                cmd: vec!["--default".into()],
                env: vec!["PATH=/bin".into(), "MODE=image".into()],
                working_dir: Some("/srv".into()),
                user: None,
            },
        }
    }

    fn paths() -> ContainerPaths {
        ContainerPaths {
            rootfs: "/var/lib/kelson/pods/u/containers/c/rootfs".into(),
            volumes_dir: "/var/lib/kelson/pods/u/volumes".into(),
            cgroups_path: "/kelson.slice/pods/u/c".into(),
        }
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: kube-system}
spec:
  hostNetwork: true
  volumes:
  - {name: cache, emptyDir: {}}
  - {name: etc, hostPath: {path: /etc, type: Directory}}
  containers:
  - name: c
    image: busybox
    args: ["--port=$(PORT)"]
    env: [{name: PORT, value: "80"}, {name: MODE, value: pod}]
    securityContext: {runAsUser: 1000, runAsGroup: 2000, readOnlyRootFilesystem: true}
    resources: {limits: {cpu: 500m, memory: 64Mi}}
    volumeMounts:
    - {name: cache, mountPath: /cache}
    - {name: etc, mountPath: /host-etc, readOnly: true}
"#;

    #[test]
    fn a_host_network_container_gets_image_defaults_pod_overrides_and_its_volumes() {
        let pod = pod(POD);
        let sandbox = super::super::host_sandbox(&pod, Some("10.0.0.5".into()));
        let config =
            container_config(&pod, &pod.containers[0], &image(), &sandbox, Some("10.0.0.5"), &paths(), &RealFs)
                .unwrap();
        assert_eq!(config.args, ["/bin/server", "--port=80"], "args replace cmd and expand $(PORT)");
        assert!(config.env.contains(&"MODE=pod".to_string()) && config.env.contains(&"PATH=/bin".to_string()));
        assert!(config.env.contains(&"HOSTNAME=web".to_string()));
        assert_eq!(config.cwd, "/srv");
        assert_eq!((config.user.uid, config.user.gid), (1000, 2000));
        assert!(config.security.readonly_rootfs);
        assert!(!config.security.no_new_privileges, "privilege escalation is allowed unless the pod says otherwise");
        assert_eq!(config.namespaces.network, Namespace::Host);
        assert_eq!(config.hostname, None, "the host's UTS namespace keeps the host's name");
        assert_eq!(config.resources.memory_max, Some(64 << 20));
        assert_eq!(config.resources.cpu_max, Some(CpuMax { quota_us: Some(50_000), period_us: 100_000 }));
        assert_eq!(config.cgroups_path, Path::new("/kelson.slice/pods/u/c"));
        assert_eq!(
            config.mounts,
            [
                Mount::Bind {
                    source: "/var/lib/kelson/pods/u/volumes/cache".into(),
                    destination: "/cache".into(),
                    readonly: false
                },
                Mount::Bind { source: "/etc".into(), destination: "/host-etc".into(), readonly: true },
            ]
        );
        assert!(config.id.starts_with("kube-system_web_c_"));
    }

    #[test]
    fn a_sandboxed_container_joins_the_sandbox_namespaces() {
        let pod = pod(&POD.replace("hostNetwork: true", "hostNetwork: false"));
        let sandbox = Sandbox {
            network: Namespace::Join("/run/kelson/pods/netns/x-net".into()),
            ipc: Namespace::Join("/run/kelson/pods/netns/x-ipc".into()),
            uts: Namespace::Join("/run/kelson/pods/netns/x-uts".into()),
            pod_ip: Some("10.244.0.9".into()),
        };
        let config = container_config(&pod, &pod.containers[0], &image(), &sandbox, None, &paths(), &RealFs).unwrap();
        assert_eq!(config.namespaces.network, Namespace::Join("/run/kelson/pods/netns/x-net".into()));
        assert_eq!(config.hostname, None);
    }

    /// The first container's config for `yaml` as a host-network pod.
    fn host_config(yaml: &str) -> Result<ContainerConfig, ConfigError> {
        let pod = pod(yaml);
        let sandbox = super::super::host_sandbox(&pod, None);
        container_config(&pod, &pod.containers[0], &image(), &sandbox, None, &paths(), &RealFs)
    }

    #[test]
    fn run_as_non_root_refuses_a_root_image_user_and_allows_a_non_zero_uid() {
        let error = host_config(&POD.replace("runAsUser: 1000, ", "runAsNonRoot: true, ")).unwrap_err();
        assert!(error.to_string().contains("runAsNonRoot is set but image"), "{error}");
        assert!(host_config(&POD.replace("runAsUser: 1000, ", "runAsNonRoot: true, runAsUser: 1000, ")).is_ok());
    }

    #[test]
    fn allow_privilege_escalation_false_sets_no_new_privileges() {
        let config = host_config(&POD.replace(
            "readOnlyRootFilesystem: true}",
            "readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}",
        ))
        .unwrap();
        assert!(config.security.no_new_privileges);
    }

    #[test]
    fn a_missing_host_path_names_container_and_volume() {
        let error = host_config(&POD.replace("path: /etc, type: Directory", "path: /no/such/dir, type: Directory"))
            .unwrap_err();
        assert!(error.to_string().contains("container c: volume etc"), "{error}");
    }
}
