//! containerd 1.7 (Debian's), config version 2.

use super::paths::*;
use super::RenderedFile;
use crate::spec::{HealthCheck, Probe, ServiceSpec};
use std::path::PathBuf;

/// `/etc/containerd/config.toml`. Written by hand rather than through a
/// TOML library: it is constant, and the tests parse it with one.
pub fn render() -> RenderedFile {
    let text = format!(
        r#"# Written by Kelson (kelson-supervise); changes are overwritten at boot.
version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"
# Debian's default config is empty, but be explicit: the CRI plugin is on.
disabled_plugins = []

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable from the node: this image must already be in
  # containerd's store, or pod sandboxes cannot start.
  sandbox_image = "{SANDBOX_IMAGE}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs, like the kubelet's cgroupDriver: there is no systemd.
        SystemdCgroup = false
        # The node's root is an initramfs, where pivot_root(2) fails.
        NoPivotRoot = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{CNI_CONF_DIR}"
"#
    );
    RenderedFile::new(CONTAINERD_CONFIG, text, 0o644)
}

/// Healthy when its socket accepts a connection. Requires nothing: CNI is
/// needed only when a pod sandbox is made.
pub fn spec() -> ServiceSpec {
    let mut spec = ServiceSpec::new("containerd", [CONTAINERD_BINARY, "--config", CONTAINERD_CONFIG]);
    spec.health = Some(HealthCheck::new(Probe::UnixConnect { path: PathBuf::from(CONTAINERD_SOCKET) }));
    spec.resources.oom_score_adj = Some(-999);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed() -> toml::Table {
        render().text().parse::<toml::Table>().unwrap()
    }

    fn at<'a>(table: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
        let (last, parents) = path.split_last().unwrap();
        let mut t = table;
        for key in parents {
            t = t.get(*key).and_then(|v| v.as_table()).unwrap_or_else(|| panic!("no table {key} in {path:?}"));
        }
        t.get(*last).unwrap_or_else(|| panic!("no {path:?}"))
    }

    #[test]
    fn the_config_is_version_2_with_the_socket_and_directories() {
        let t = parsed();
        assert_eq!(at(&t, &["version"]).as_integer(), Some(2));
        assert_eq!(at(&t, &["root"]).as_str(), Some("/var/lib/containerd"));
        assert_eq!(at(&t, &["state"]).as_str(), Some("/run/containerd"));
        assert_eq!(at(&t, &["disabled_plugins"]).as_array().map(Vec::len), Some(0));
        assert_eq!(at(&t, &["grpc", "address"]).as_str(), Some("/run/containerd/containerd.sock"));
    }

    #[test]
    fn the_cri_plugin_uses_overlayfs_runc_with_cgroupfs_and_debians_cni_plugins() {
        let t = parsed();
        let cri = ["plugins", "io.containerd.grpc.v1.cri"];
        let key = |rest: &[&'static str]| [&cri[..], rest].concat();
        assert_eq!(at(&t, &key(&["sandbox_image"])).as_str(), Some("registry.k8s.io/pause:3.9"));
        assert_eq!(at(&t, &key(&["containerd", "snapshotter"])).as_str(), Some("overlayfs"));
        assert_eq!(at(&t, &key(&["containerd", "default_runtime_name"])).as_str(), Some("runc"));
        let runc = key(&["containerd", "runtimes", "runc"]);
        assert_eq!(at(&t, &[&runc[..], &["runtime_type"]].concat()).as_str(), Some("io.containerd.runc.v2"));
        let options = [&runc[..], &["options"]].concat();
        assert_eq!(at(&t, &[&options[..], &["SystemdCgroup"]].concat()).as_bool(), Some(false));
        assert_eq!(at(&t, &[&options[..], &["NoPivotRoot"]].concat()).as_bool(), Some(true));
        assert_eq!(at(&t, &key(&["cni", "bin_dir"])).as_str(), Some("/usr/lib/cni"));
        assert_eq!(at(&t, &key(&["cni", "conf_dir"])).as_str(), Some("/etc/cni/net.d"));
    }

    #[test]
    fn containerd_is_healthy_when_its_socket_answers() {
        let s = spec();
        assert_eq!(s.argv, ["/usr/bin/containerd", "--config", "/etc/containerd/config.toml"]);
        assert_eq!(
            s.health.unwrap().probe,
            Probe::UnixConnect { path: PathBuf::from("/run/containerd/containerd.sock") }
        );
        assert!(s.requires.is_empty());
        assert_eq!(s.resources.oom_score_adj, Some(-999));
    }
}
