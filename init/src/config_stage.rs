//! The boot stages that read and apply the machine config.
//!
//! `config` gathers the layers (image defaults, the `kelson.*` command line
//! keys, the cloud-init seed or the one saved from an earlier boot, the
//! config saved by the API), resolves them and keeps the result in the boot
//! context. It changes nothing on the node: if any layer is rejected, every
//! error is printed and the node stays in maintenance with nothing applied.
//! Only an accepted seed is saved, so a bad seed never replaces a good one.
//!
//! `apply-config` then writes what the config asks for: files, the PKI,
//! static pod manifests, sysctls and extra kernel modules.

use crate::boot::{chain, BootContext, StageError};
use crate::kernel::Kernel;
use crate::{modules, seed, seed_url, sysctl};
use kelson_config::nocloud::read_seed;
use kelson_config::{resolve, ConfigError, Effective, Layer, MachineConfig, Source, Store};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info, warn};

pub const IMAGE_DEFAULTS: &str = "/etc/kelson/machine-config.yaml";
/// The effective config (with secrets, so 0600) and where each value came
/// from (secrets redacted, and 0600 too), for people and for the API.
pub const EFFECTIVE_CONFIG: &str = "/run/kelson/config/effective.yaml";
pub const CONFIG_SOURCES: &str = "/run/kelson/config/sources.txt";
pub const SMBIOS_SERIAL: &str = "/sys/class/dmi/id/product_serial";
use kelson_base::paths::{MANIFEST_DIR, PKI_DIR};

/// How long to look for a seed volume: block devices show up a little
/// after their drivers load; longer when the command line says a seed is
/// expected (`ds=nocloud`).
const SEED_WAIT: Duration = Duration::from_secs(1);
const SEED_WAIT_EXPECTED: Duration = Duration::from_secs(10);

struct Rejected(Vec<ConfigError>);

impl Rejected {
    fn into_stage_error(self) -> StageError {
        for e in &self.0 {
            error!("config error: {e}");
        }
        format!("the machine config was rejected with {} error(s), listed above; nothing was applied", self.0.len())
            .into()
    }
}

fn read_text(kernel: &dyn Kernel, path: &Path) -> Option<String> {
    kernel.read_file(path).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub fn stage_config(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let store = Store::new(kelson_config::STATE_DIR);
    let (effective, seed_to_save) = gather(ctx, &store).map_err(Rejected::into_stage_error)?;
    if let Some(seed) = seed_to_save {
        let path = save_seed(&store, &seed)?;
        info!(path = %path.display(), "cloud-init seed saved for later boots");
    }
    for line in effective.explain().lines() {
        // Secrets are already shown as <secret> by explain().
        if !line.contains("# built-in default") {
            info!("config: {line}");
        }
    }
    ctx.kernel.install_file(Path::new(EFFECTIVE_CONFIG), effective.config.to_yaml_with_secrets().as_bytes(), 0o600)?;
    // Secrets are redacted here too; 0600 all the same, so that a secret
    // leaking into the listing by a future mistake is still not world-readable.
    ctx.kernel.install_file(Path::new(CONFIG_SOURCES), effective.explain().as_bytes(), 0o600)?;
    info!(role = ?effective.config.node.role, "machine config accepted");
    ctx.config = Some(effective);
    Ok(())
}

/// The saved seed's instance-id (the layer, a MachineConfig document, has
/// no field for it) is the saved file's first line, a YAML comment, so the
/// layer and its id are replaced in one atomic write: a power cut leaves
/// both old or both new. Versions before this kept it in a file beside the
/// layer ([`LEGACY_INSTANCE_ID`]), still read when the header is missing.
const INSTANCE_ID_HEADER: &str = "# cloud-init instance-id: ";
const LEGACY_INSTANCE_ID: &str = "cloud-init.instance-id";

/// An accepted seed, to keep for later boots.
struct SeedToSave {
    layer: Layer,
    instance_id: Option<String>,
}

/// The header line for `id`: a JSON string (or `null`), so any id fits on
/// one line.
fn instance_id_header(id: Option<&str>) -> String {
    format!("{INSTANCE_ID_HEADER}{}\n", serde_json::to_string(&id).unwrap_or_else(|_| "null".into()))
}

/// The instance-id in a saved seed's text: `None` without the header,
/// `Some(None)` if it says the seed had none.
fn parse_instance_id_header(text: &str) -> Option<Option<String>> {
    let value = text.lines().next()?.strip_prefix(INSTANCE_ID_HEADER)?;
    serde_json::from_str::<Option<String>>(value).ok()
}

fn save_seed(store: &Store, seed: &SeedToSave) -> Result<PathBuf, StageError> {
    let path = store.save_with_header(&seed.layer, &instance_id_header(seed.instance_id.as_deref()))?;
    // The old separate file would be stale now; the header wins anyway.
    let _ = std::fs::remove_file(store.dir().join(LEGACY_INSTANCE_ID));
    Ok(path)
}

/// The saved seed's instance-id: `None` if no seed is saved, `Some(None)`
/// if one is but its instance-id is unknown (none, or saved by a version
/// that did not record it).
fn saved_instance_id(store: &Store) -> Option<Option<String>> {
    let saved = store.path_for(Source::CloudInit)?;
    let text = std::fs::read_to_string(saved).ok()?;
    let id = parse_instance_id_header(&text).unwrap_or_else(|| {
        std::fs::read_to_string(store.dir().join(LEGACY_INSTANCE_ID)).ok().map(|s| s.trim().to_owned())
    });
    Some(id.filter(|id| !id.is_empty()))
}

/// Fetches the seed at `url`, leasing an address for it; `Err` says why not.
fn fetch_url_seed(url: &str) -> Result<kelson_config::nocloud::SeedFiles, String> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("no async runtime to fetch with: {e}"))?;
    runtime
        .block_on(seed_url::with_dhcp(|| seed_url::fetch_seed(url, seed_url::ATTEMPTS)))
        .and_then(|r| r)
        .map_err(|e| chain(&e))
}

/// Every layer, then the resolved config and the seed to save.
fn gather(ctx: &BootContext<'_>, store: &Store) -> Result<(Effective, Option<SeedToSave>), Rejected> {
    let kernel = ctx.kernel;
    let mut layers = Vec::new();
    let mut errors = Vec::new();
    let mut take = |result: Result<Layer, kelson_config::ConfigErrors>, layers: &mut Vec<Layer>| match result {
        Ok(layer) if !layer.is_empty() => layers.push(layer),
        Ok(_) => {}
        Err(e) => errors.extend(e.0),
    };

    if let Some(text) = read_text(kernel, Path::new(IMAGE_DEFAULTS)) {
        let document = format!("image defaults ({IMAGE_DEFAULTS})");
        take(Layer::from_document(Source::ImageDefaults, &document, &text), &mut layers);
    }
    take(Layer::from_cmdline(ctx.cmdline.pairs()), &mut layers);

    let ds = ctx.cmdline.get("ds").map(str::to_owned).or_else(|| {
        read_text(kernel, Path::new(SMBIOS_SERIAL))
            .map(|s| s.trim().to_owned())
            .filter(|s| s.starts_with("ds="))
            .map(|s| s.trim_start_matches("ds=").to_owned())
    });
    let seed_url = ds.as_deref().and_then(seed::url_setting);
    // A node that already has a saved seed does not wait for block devices
    // still appearing: its reboots stay fast. One that expects a seed, or
    // has none yet, gives them a moment.
    let saved = store.path_for(Source::CloudInit).is_some_and(|p| p.exists());
    let wait = match (ds.is_some(), saved) {
        (true, _) => SEED_WAIT_EXPECTED,
        (false, false) => SEED_WAIT,
        (false, true) => Duration::ZERO,
    };
    let mut seed_to_save = None;
    // A seed volume wins over a URL: it is what the operator attached.
    let volume = seed::find(
        kernel,
        Path::new(seed::SYS_BLOCK),
        Path::new("/dev"),
        if seed_url.is_some() { SEED_WAIT } else { wait },
    );
    let found =
        match (volume, seed_url) {
            (Some((device, fs)), _) => {
                info!(device = %device.display(), fs = fs.fstype(), "cloud-init seed found");
                Some(seed::read(kernel, &device, fs, Path::new(seed::SEED_MOUNT)).map_err(|e| {
                    Rejected(vec![ConfigError::new(&device.display().to_string(), "document", chain(&e))])
                })?)
            }
            (None, Some(url)) => {
                info!(url = url.as_str(), "fetching the cloud-init seed");
                match seed_url::decide(&url, fetch_url_seed(&url), saved) {
                    seed_url::UrlSeedDecision::UseFetched(files) => {
                        info!(url = url.as_str(), "cloud-init seed fetched");
                        Some(files)
                    }
                    // The saved seed is loaded below, as when no seed is attached.
                    seed_url::UrlSeedDecision::UseSaved { warning } => {
                        warn!("{warning}");
                        None
                    }
                    seed_url::UrlSeedDecision::Stop { reason } => {
                        return Err(Rejected(vec![ConfigError::new(&url, "document", reason)]));
                    }
                }
            }
            (None, None) => None,
        };
    match found {
        Some(files) => match read_seed(&files) {
            Ok(seed) => {
                for key in &seed.ignored {
                    warn!("cloud-init: ignored {key}");
                }
                info!(
                    instance_id = seed.instance_id.as_deref().unwrap_or("-"),
                    layers = seed.layers.len(),
                    "cloud-init seed read"
                );
                let saved_name = format!("cloud-init seed from {}", files.origin);
                let saved_id = saved_instance_id(store);
                if let Some(note) =
                    seed_url::replacement_note(saved_id.as_ref().map(Option::as_deref), seed.instance_id.as_deref())
                {
                    info!("cloud-init: {note}");
                }
                match seed.combined(&saved_name) {
                    Ok(layer) => seed_to_save = Some(SeedToSave { layer, instance_id: seed.instance_id.clone() }),
                    Err(e) => errors.extend(e.0),
                }
                layers.extend(seed.layers);
            }
            Err(e) => errors.extend(e.0),
        },
        None => match store.load(Source::CloudInit) {
            Ok(Some(layer)) => {
                info!(
                    document = layer.document.as_str(),
                    "no cloud-init seed attached; using the one saved at an earlier boot"
                );
                layers.push(layer);
            }
            Ok(None) => info!("no cloud-init seed attached and none saved"),
            Err(e) => errors.push(ConfigError::new(kelson_config::STATE_DIR, "cloud-init", chain(&e))),
        },
    }
    match store.load(Source::Api) {
        Ok(Some(layer)) => layers.push(layer),
        Ok(None) => {}
        Err(e) => errors.push(ConfigError::new(kelson_config::STATE_DIR, "api", chain(&e))),
    }
    if !errors.is_empty() {
        return Err(Rejected(errors));
    }
    let effective = resolve(&layers).map_err(|e| Rejected(e.0))?;
    // What the network stage could not apply is refused here, before
    // anything is touched, like any other config error.
    if let Err(problems) = kelson_net::NetPlan::from_config(&effective.config.network) {
        return Err(Rejected(
            problems
                .into_iter()
                .map(|p| {
                    let document = effective.source_of(&p.field).map_or("built-in default", |(_, d)| d).to_owned();
                    ConfigError { document, path: p.field, reason: p.reason }
                })
                .collect(),
        ));
    }
    Ok((effective, seed_to_save))
}

/// What applying one part of the config did wrong.
#[derive(Debug)]
struct ApplyError {
    what: String,
    error: String,
}

pub fn stage_apply(ctx: &mut BootContext<'_>) -> Result<(), StageError> {
    let Some(effective) = &ctx.config else { return Ok(()) };
    let failures = apply(ctx.kernel, &ctx.module_dir, &effective.config);
    if failures.is_empty() {
        return Ok(());
    }
    for f in &failures {
        warn!(what = f.what.as_str(), error = f.error.as_str(), "config not applied");
    }
    Err(format!("{} part(s) of the machine config were not applied", failures.len()).into())
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

    const SAVED_SEED_DOCUMENT: &str = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: a\n";

    #[test]
    fn the_saved_seed_carries_its_instance_id_in_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let layer = Layer::from_document(Source::CloudInit, "user-data", SAVED_SEED_DOCUMENT).unwrap();
        std::fs::write(dir.path().join(LEGACY_INSTANCE_ID), "legacy-1").unwrap();
        let seed = SeedToSave { layer: layer.clone(), instance_id: Some("i-\"2\"".into()) };
        let path = save_seed(&store, &seed).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# cloud-init instance-id: \"i-\\\"2\\\"\"\n"), "{text}");
        assert_eq!(saved_instance_id(&store), Some(Some("i-\"2\"".into())));
        assert!(!dir.path().join(LEGACY_INSTANCE_ID).exists());
        assert_eq!(store.load(Source::CloudInit).unwrap().unwrap().to_document(), layer.to_document());

        save_seed(&store, &SeedToSave { layer, instance_id: None }).unwrap();
        assert_eq!(saved_instance_id(&store), Some(None));
    }

    #[test]
    fn a_seed_saved_by_an_older_version_has_its_instance_id_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(saved_instance_id(&store), None);
        let layer = Layer::from_document(Source::CloudInit, "user-data", SAVED_SEED_DOCUMENT).unwrap();
        store.save(&layer).unwrap();
        assert_eq!(saved_instance_id(&store), Some(None));
        std::fs::write(dir.path().join(LEGACY_INSTANCE_ID), "old-1\n").unwrap();
        assert_eq!(saved_instance_id(&store), Some(Some("old-1".into())));
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
