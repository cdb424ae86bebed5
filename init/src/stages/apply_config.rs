//! `apply-config`: writes what the accepted machine config asks for: files,
//! the PKI, static pod manifests, sysctls and extra kernel modules. One
//! part that fails does not stop the rest; each is named in the log.

use crate::boot::{chain, BootContext, Done, StageError};
use crate::kernel::Kernel;
use crate::{modules, sysctl};
use kelson_base::paths::{MANIFEST_DIR, PKI_DIR};
use kelson_config::MachineConfig;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
#[error("{failed} part(s) of the machine config were not applied")]
pub struct NotApplied {
    pub failed: usize,
}

/// What applying one part of the config did wrong.
#[derive(Debug)]
struct ApplyError {
    what: String,
    error: String,
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    let Some(effective) = &ctx.config else { return Ok(Done::Finished) };
    let failures = apply(ctx.kernel, &ctx.module_dir, &effective.config);
    if failures.is_empty() {
        return Ok(Done::Finished);
    }
    for f in &failures {
        warn!(what = f.what.as_str(), error = f.error.as_str(), "config not applied");
    }
    Err(NotApplied { failed: failures.len() }.into())
}

/// Writes the config's files, PKI and static pod manifests and sets its
/// sysctls (and loads its modules) again, as the stage does; the parts that
/// failed, each as `what: error`. For a config changed through the API.
pub fn apply_parts(kernel: &dyn Kernel, module_dir: &Path, config: &MachineConfig) -> Vec<String> {
    apply(kernel, module_dir, config).into_iter().map(|f| format!("{}: {}", f.what, f.error)).collect()
}

fn apply(kernel: &dyn Kernel, module_dir: &Path, config: &MachineConfig) -> Vec<ApplyError> {
    let mut failures = Vec::new();
    let mut install = |path: PathBuf, data: &[u8], mode: u32, what: String| {
        if let Err(e) = kernel.install_file(&path, data, mode) {
            failures.push(ApplyError { what, error: format!("writing {}: {e}", path.display()) });
        }
    };
    for (i, file) in config.files.iter().enumerate() {
        let mode = file.mode.as_deref().and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0o644);
        install(PathBuf::from(&file.path), file.content.expose().as_bytes(), mode, format!("files[{i}]"));
    }
    if let Some(ca) = &config.pki.ca {
        install(Path::new(PKI_DIR).join("ca.crt"), ca.as_bytes(), 0o644, "pki.ca".into());
    }
    for (name, pair) in &config.pki.certificates {
        install(
            Path::new(PKI_DIR).join(format!("{name}.crt")),
            pair.cert.as_bytes(),
            0o644,
            format!("pki.certificates.{name}.cert"),
        );
        install(
            Path::new(PKI_DIR).join(format!("{name}.key")),
            pair.key.expose().as_bytes(),
            0o600,
            format!("pki.certificates.{name}.key"),
        );
    }
    for (i, pod) in config.static_pods.iter().enumerate() {
        install(Path::new(MANIFEST_DIR).join(&pod.name), pod.manifest.as_bytes(), 0o644, format!("staticPods[{i}]"));
    }
    let sysctls: Vec<(&str, &str)> = config.sysctls.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for e in sysctl::apply(kernel, &sysctls) {
        failures.push(ApplyError { what: "sysctls".into(), error: chain(&e) });
    }
    if !config.kernel_modules.is_empty() {
        match modules::load_listed(kernel, module_dir, &config.kernel_modules) {
            Ok(report) => {
                for e in &report.failed {
                    failures.push(ApplyError { what: "kernelModules".into(), error: chain(e) });
                }
            }
            Err(e) => failures.push(ApplyError { what: "kernelModules".into(), error: chain(&e) }),
        }
    }
    if !config.time.servers.is_empty() {
        warn!(
            servers = config.time.servers.join(",").as_str(),
            "time.servers is accepted but the node has no NTP client yet"
        );
    }
    info!(
        files = config.files.len(),
        certificates = config.pki.certificates.len(),
        static_pods = config.static_pods.len(),
        sysctls = config.sysctls.len(),
        kernel_modules = config.kernel_modules.len(),
        "machine config applied"
    );
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    #[test]
    fn files_keys_and_manifests_are_written_with_their_modes() {
        let config = kelson_config::parse(
            "t",
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nfiles:\n  - path: /etc/a\n    content: x\n    mode: \"0600\"\n  - path: /etc/b\n    content: y\npki:\n  ca: CA\n  certificates:\n    api:\n      cert: C\n      key: K\nstaticPods:\n  - name: etcd.yaml\n    manifest: 'kind: Pod'\nsysctls:\n  vm.max_map_count: \"262144\"\n",
        )
        .unwrap();
        let kernel = FakeKernel::default().with_file("/proc/sys/vm/max_map_count", "65530");
        let failures = apply(&kernel, Path::new("/m"), &config);
        assert!(failures.is_empty(), "{failures:?}");
        let calls = kernel.calls();
        for expected in [
            "install /etc/a 600",
            "install /etc/b 644",
            "install /etc/kelson/pki/ca.crt 644",
            "install /etc/kelson/pki/api.crt 644",
            "install /etc/kelson/pki/api.key 600",
            "install /etc/kubernetes/manifests/etcd.yaml 644",
            "write /proc/sys/vm/max_map_count 262144",
        ] {
            assert!(calls.iter().any(|c| c == expected), "missing {expected:?} in {calls:?}");
        }
        assert_eq!(kernel.file("/etc/kelson/pki/api.key").as_deref(), Some("K"));
    }

    #[test]
    fn one_failed_file_does_not_stop_the_rest() {
        let config = kelson_config::parse(
            "t",
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nfiles:\n  - path: /ro/a\n    content: x\n  - path: /etc/b\n    content: y\n",
        )
        .unwrap();
        let kernel = FakeKernel::default().failing("/ro/a", libc::EROFS);
        let failures = apply(&kernel, Path::new("/m"), &config);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].what, "files[0]");
        assert_eq!(kernel.file("/etc/b").as_deref(), Some("y"));
    }
}
