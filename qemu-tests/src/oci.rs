//! A one-layer OCI image archive (the layout `ctr images import` takes)
//! holding a static busybox, built on the host so container tests need no
//! registry. The layer is an uncompressed tar.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn tar_with(entries: &[(&str, &[u8], u32)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).with_context(|| format!("adding {path} to a tar"))?;
    }
    builder.into_inner().context("finishing a tar")
}

/// An OCI archive of one image, `name` (e.g. `docker.io/kelson/busybox:test`),
/// whose root holds `/bin/busybox` from `busybox` (a static binary).
pub fn busybox_archive(busybox: &Path, name: &str) -> Result<Vec<u8>> {
    let binary = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let layer = tar_with(&[("bin/busybox", &binary, 0o755)])?;
    let layer_digest = digest(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/busybox", "sh"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    })
    .to_string();
    let config_digest = digest(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }],
    })
    .to_string();
    let manifest_digest = digest(manifest.as_bytes());
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag },
        }],
    })
    .to_string();
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let (layer_path, config_path, manifest_path) = (blob(&layer_digest), blob(&config_digest), blob(&manifest_digest));
    tar_with(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        ("index.json", index.as_bytes(), 0o644),
        (&manifest_path, manifest.as_bytes(), 0o644),
        (&config_path, config.as_bytes(), 0o644),
        (&layer_path, &layer, 0o644),
    ])
}
