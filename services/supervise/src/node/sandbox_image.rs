//! The pod sandbox (pause) image into containerd's store: a one-shot that
//! imports the node image's OCI layout of it into the CRI namespace once
//! containerd is healthy. No registry is reachable from the node, so
//! without it no pod sandbox can start; the kubelet waits for it.

use super::paths::*;
use crate::spec::{Requirement, RestartMode, ServiceSpec};

/// The service's name, which the kubelet's requirement names.
pub const NAME: &str = "sandbox-image";

/// Run by `/bin/sh -c` with the layout, the image, containerd's socket and
/// the namespace as `$1`..`$4`; one line, since the service's `starting`
/// reason (on the console) quotes it.
///
/// `ctr images import` takes a tar, not a layout directory. The tar is
/// streamed from the layout rather than shipped beside it: a `pause.tar`
/// in the image would cost ~1 MB more initramfs (RAM) and squashfs could
/// not share it with the layout's blob, while the stream costs a `tar`
/// process for a moment at boot. Only the layout's own entries go in, with
/// names relative to it, as the OCI archive format wants.
///
/// ctr's exit status decides (dash has no pipefail): a `tar` that fails
/// part way gives ctr a cut-short archive, which it refuses. The import
/// unpacks for the overlayfs snapshotter (ctr's default, named anyway: it
/// must be CRI's), and is idempotent, so a retry or a reboot with
/// containerd's store kept on /var does no harm. The label pins the image:
/// containerd's CRI then reports it as pinned and the kubelet's image
/// garbage collection leaves it alone, since nothing could pull it back.
/// `--timeout` bounds each call, so a containerd that stops answering
/// makes a failure to retry rather than a kubelet waiting for ever.
pub const IMPORT_SCRIPT: &str = concat!(
    "set -e; ",
    r#"tar -C "$1" -c oci-layout index.json blobs | "#,
    r#"ctr -a "$3" -n "$4" --timeout 2m images import --snapshotter overlayfs -; "#,
    r#"ctr -a "$3" -n "$4" --timeout 1m images label "$2" io.cri-containerd.pinned=pinned"#,
);

/// Requires containerd healthy; restarts only after a failure, with the
/// default back-off (1 s doubling to 60 s), so an import that fails is
/// retried, each failure logged with ctr's last words, and one that
/// succeeds leaves the service `completed`.
pub fn spec() -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        NAME,
        [
            "/bin/sh",
            "-c",
            IMPORT_SCRIPT,
            NAME, // $0
            PAUSE_LAYOUT,
            SANDBOX_IMAGE,
            CONTAINERD_SOCKET,
            CRI_NAMESPACE,
        ],
    );
    spec.requires = vec![Requirement::Healthy("containerd".to_owned())];
    spec.restart.mode = RestartMode::OnFailure;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn the_import_waits_for_containerd_and_is_retried_only_after_a_failure() {
        let s = spec();
        assert_eq!(s.name, "sandbox-image");
        assert_eq!(&s.argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(
            &s.argv[3..],
            [
                "sandbox-image",
                "/usr/lib/kelson/images/pause",
                "registry.k8s.io/pause:3.9",
                "/run/containerd/containerd.sock",
                "k8s.io"
            ]
        );
        assert_eq!(s.requires, [Requirement::Healthy("containerd".into())]);
        assert_eq!(s.restart.mode, RestartMode::OnFailure);
        assert!(s.health.is_none());
    }

    /// A layout with one blob, and a `ctr` on PATH that records its
    /// arguments (and, for an import, the tar it was given) and exits with
    /// `$FAKE_CTR_EXIT` when its first argument after the globals is the
    /// given subcommand.
    fn fake_node(dir: &Path, fail_on: &str) -> std::path::PathBuf {
        let layout = dir.join("pause");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        std::fs::write(layout.join("index.json"), "{}").unwrap();
        std::fs::write(layout.join("blobs/sha256/abc"), "layer").unwrap();
        std::fs::write(layout.join("stray"), "not part of the layout").unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let record = dir.join("record");
        let ctr = bin.join("ctr");
        std::fs::write(
            &ctr,
            format!(
                r#"#!/bin/sh
echo "$*" >> {record}
case "$*" in
  *" images import "*) tar -t >> {record} ;;
esac
case "$*" in
  *" images {fail_on} "*) echo "ctr: failed to {fail_on}: containerd said no" >&2; exit 1 ;;
esac
"#,
                record = record.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&ctr, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn run_script(dir: &Path, bin: &Path) -> std::process::Output {
        let mut argv = spec().argv;
        argv[4] = dir.join("pause").display().to_string();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        Command::new("sh").args(&argv[1..]).env_clear().env("PATH", path).output().unwrap()
    }

    #[test]
    fn the_script_streams_the_layout_to_ctr_import_then_pins_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_node(dir.path(), "none");
        let out = run_script(dir.path(), &bin);
        assert!(out.status.success(), "{out:?}");
        let record = std::fs::read_to_string(dir.path().join("record")).unwrap();
        let lines: Vec<&str> = record.lines().collect();
        let globals = "-a /run/containerd/containerd.sock -n k8s.io";
        assert_eq!(lines[0], format!("{globals} --timeout 2m images import --snapshotter overlayfs -"));
        // The tar holds the layout's entries, relative to it, and nothing else.
        let mut members: Vec<&str> = lines[1..lines.len() - 1].to_vec();
        members.sort();
        assert_eq!(members, ["blobs/", "blobs/sha256/", "blobs/sha256/abc", "index.json", "oci-layout"]);
        assert_eq!(
            lines[lines.len() - 1],
            format!("{globals} --timeout 1m images label registry.k8s.io/pause:3.9 io.cri-containerd.pinned=pinned")
        );
    }

    #[test]
    fn a_failed_import_fails_the_script_with_ctrs_reason_and_pins_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_node(dir.path(), "import");
        let out = run_script(dir.path(), &bin);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "ctr: failed to import: containerd said no");
        let record = std::fs::read_to_string(dir.path().join("record")).unwrap();
        assert!(!record.contains(" label "), "{record}");

        let dir = tempfile::tempdir().unwrap();
        let bin = fake_node(dir.path(), "label");
        assert_eq!(run_script(dir.path(), &bin).status.code(), Some(1));
    }
}
