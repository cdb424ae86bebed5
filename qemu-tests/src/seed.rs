//! NoCloud seed volumes for test nodes: a FAT image labelled CIDATA, made
//! with mkfs.fat and mtools (the build host has no vfat driver to mount).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `dir/seed.img`, holding `files` (name, content), e.g. `meta-data` and
/// `user-data`; the files are also left in `dir`.
pub fn fat_seed(dir: &Path, files: &[(&str, &str)]) -> Result<PathBuf> {
    let image = dir.join("seed.img");
    run(Command::new("mkfs.fat").args(["-C", "-n", "CIDATA"]).arg(&image).arg("2048"))?;
    for (name, content) in files {
        let local = dir.join(name);
        std::fs::write(&local, content).with_context(|| format!("writing {}", local.display()))?;
        run(Command::new("mcopy").arg("-i").arg(&image).arg(&local).arg(format!("::{name}")))?;
    }
    Ok(image)
}

/// A seed for the node `kelsonctl gen cluster` wrote into `node_dir`
/// (`DIR/nodes/<node>`), without the control plane: its machine config
/// minus `staticPods` and `files` (the control plane's certificates and
/// kubeconfigs), so a test about something else does not start etcd and
/// the API server on a control-plane node. Written to `node_dir/plain/`.
pub fn without_control_plane(node_dir: &Path) -> Result<PathBuf> {
    edited(node_dir, "plain", |config| {
        config.remove("staticPods");
        config.remove("files");
    })
}

/// A seed for the node `kelsonctl gen cluster` wrote into `node_dir`
/// (`DIR/nodes/<node>`) with its machine config changed by `edit` (the
/// config's top-level mapping, as JSON values): written to
/// `node_dir/<variant>/`, with an instance id of its own. The user-data is
/// JSON, which is YAML too.
pub fn edited(
    node_dir: &Path,
    variant: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<PathBuf> {
    let path = node_dir.join("machine-config.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(fields) = config.as_object_mut() else { bail!("{} is not a mapping", path.display()) };
    edit(fields);
    let name = node_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = node_dir.join(variant);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let user_data = serde_json::to_string_pretty(&config).context("writing the machine config as JSON")?;
    fat_seed(&dir, &[("meta-data", &format!("instance-id: {name}-{variant}\n")), ("user-data", &user_data)])
}
