//! Fields Kelson reads without error but does not carry out. Refusing them
//! would turn away manifests users write for any kubelet; ignoring them
//! silently would let a user believe a setting holds that does not. So each one that
//! is set is named in a warning, which PID 1 logs when the pod starts.

use crate::error::FieldError;
use k8s_openapi::api::core::v1 as k8s;

/// What the kubelet writes when the manifest leaves it out.
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

struct Found(Vec<FieldError>);

impl Found {
    fn when(&mut self, set: bool, path: impl Into<String>, reason: &str) {
        if set {
            self.0.push(FieldError::new(path, format!("not applied by Kelson ({reason}); ignored")));
        }
    }
}

/// RuntimeDefault is Kelson's own filter and Unconfined is none; a
/// Localhost profile file is not loaded.
fn localhost_seccomp(profile: Option<&k8s::SeccompProfile>) -> bool {
    profile.is_some_and(|p| p.type_ == "Localhost")
}

pub(super) fn warnings(spec: &k8s::PodSpec) -> Vec<FieldError> {
    let mut found = Found(Vec::new());
    if let Some(sc) = &spec.security_context {
        let at = "spec.securityContext";
        found.when(sc.fs_group.is_some(), format!("{at}.fsGroup"), "volumes keep their owners");
        found.when(sc.fs_group_change_policy.is_some(), format!("{at}.fsGroupChangePolicy"), "no fsGroup is applied");
        found.when(
            sc.sysctls.as_ref().is_some_and(|s| !s.is_empty()),
            format!("{at}.sysctls"),
            "set node sysctls in the machine config instead",
        );
        found.when(
            localhost_seccomp(sc.seccomp_profile.as_ref()),
            format!("{at}.seccompProfile"),
            "Localhost profiles are not loaded; the containers run without a seccomp filter",
        );
        found.when(sc.se_linux_options.is_some(), format!("{at}.seLinuxOptions"), "the node has no SELinux");
        found.when(sc.app_armor_profile.is_some(), format!("{at}.appArmorProfile"), "the node has no AppArmor");
    }
    let policy = spec.dns_policy.as_deref();
    found.when(
        policy.is_some_and(|p| p != "ClusterFirst" && p != "Default"),
        "spec.dnsPolicy",
        "containers use the node's resolv.conf",
    );
    found.when(spec.dns_config.is_some(), "spec.dnsConfig", "containers use the node's resolv.conf");
    found.when(
        spec.host_aliases.as_ref().is_some_and(|h| !h.is_empty()),
        "spec.hostAliases",
        "no /etc/hosts is written for pods",
    );
    found.when(
        spec.share_process_namespace == Some(true),
        "spec.shareProcessNamespace",
        "each container has its own PID namespace",
    );
    found.when(spec.runtime_class_name.is_some(), "spec.runtimeClassName", "there is one runtime");
    for (i, c) in spec.containers.iter().enumerate() {
        let at = format!("spec.containers[{i}]");
        let path = c.termination_message_path.as_deref();
        found.when(
            path.is_some_and(|p| p != DEFAULT_TERMINATION_MESSAGE_PATH),
            format!("{at}.terminationMessagePath"),
            "no termination message is read",
        );
        let policy = c.termination_message_policy.as_deref();
        found.when(
            policy == Some("FallbackToLogsOnError"),
            format!("{at}.terminationMessagePolicy"),
            "no termination message is read",
        );
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let propagation = m.mount_propagation.as_deref();
            found.when(
                propagation.is_some_and(|p| p != "None"),
                format!("{at}.volumeMounts[{j}].mountPropagation"),
                "mounts are private to the container",
            );
        }
        if let Some(sc) = &c.security_context {
            found.when(
                localhost_seccomp(sc.seccomp_profile.as_ref()),
                format!("{at}.securityContext.seccompProfile"),
                "Localhost profiles are not loaded; the container runs without a seccomp filter",
            );
            found.when(
                sc.se_linux_options.is_some(),
                format!("{at}.securityContext.seLinuxOptions"),
                "the node has no SELinux",
            );
            found.when(
                sc.app_armor_profile.is_some(),
                format!("{at}.securityContext.appArmorProfile"),
                "the node has no AppArmor",
            );
            found.when(
                sc.proc_mount.as_deref().is_some_and(|p| p != "Default"),
                format!("{at}.securityContext.procMount"),
                "/proc is masked as usual",
            );
        }
    }
    found.0
}

#[cfg(test)]
mod tests {
    use crate::manifest::{parse, LoadOptions};
    use std::path::Path;

    fn warnings(yaml: &str) -> Vec<String> {
        let spec = parse(Path::new("/m/p.yaml"), yaml.as_bytes(), &LoadOptions::default()).unwrap();
        spec.warnings.iter().map(|w| format!("{}: {}", w.path, w.reason)).collect()
    }

    #[test]
    fn fields_set_but_not_carried_out_are_named() {
        let found = warnings(
            "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  securityContext: {fsGroup: 2000, seccompProfile: {type: Localhost, localhostProfile: my.json}, sysctls: [{name: net.core.somaxconn, value: '1024'}]}
  hostAliases: [{ip: 10.0.0.1, hostnames: [db]}]
  containers:
  - name: c
    image: busybox
    terminationMessagePolicy: FallbackToLogsOnError
    volumeMounts: [{name: v, mountPath: /v, mountPropagation: HostToContainer}]
  volumes: [{name: v, emptyDir: {}}]
",
        );
        for field in [
            "spec.securityContext.fsGroup",
            "spec.securityContext.seccompProfile",
            "spec.securityContext.sysctls",
            "spec.hostAliases",
            "spec.containers[0].terminationMessagePolicy",
            "spec.containers[0].volumeMounts[0].mountPropagation",
        ] {
            assert!(
                found.iter().any(|w| w.starts_with(&format!("{field}: not applied"))),
                "{field} missing from {found:#?}"
            );
        }
        assert_eq!(found.len(), 6, "{found:#?}");
    }

    #[test]
    fn defaults_as_kubectl_writes_them_are_not_warned_about() {
        let found = warnings(
            "apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  dnsPolicy: ClusterFirst
  securityContext: {seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: busybox
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
    securityContext: {procMount: Default}
",
        );
        assert!(found.is_empty(), "{found:#?}");
    }
}
