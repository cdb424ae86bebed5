//! `config`: gathers the layers (image defaults, the `kelson.*` command line
//! keys, the cloud-init seed or the one saved from an earlier boot, the
//! config saved by the API), resolves them and keeps the result in the boot
//! context. It changes nothing on the node: if any layer is rejected, every
//! error is printed and the node stays in maintenance with nothing applied.
//! Only an accepted seed is saved, so a bad seed never replaces a good one.
//! The config's network section is planned here, once: a network kelson-net
//! could not apply is a config error like any other, and the plan is what
//! the network and pods stages read.

use crate::boot::{chain, BootContext, Done, StageError};
use crate::kernel::Kernel;
use crate::management::ConfigState;
use crate::{seed, seed_url};
use kelson_config::nocloud::read_seed;
use kelson_config::{resolve, ConfigError, Effective, Layer, Source, Store};
use kelson_net::NetPlan;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info, warn};

pub const IMAGE_DEFAULTS: &str = "/etc/kelson/machine-config.yaml";
/// The effective config (with secrets, so 0600) and where each value came
/// from (secrets redacted, and 0600 too), for people and for the API.
pub const EFFECTIVE_CONFIG: &str = "/run/kelson/config/effective.yaml";
pub const CONFIG_SOURCES: &str = "/run/kelson/config/sources.txt";
pub const SMBIOS_SERIAL: &str = "/sys/class/dmi/id/product_serial";

/// How long to wait for a seed volume to appear when the command line (or
/// SMBIOS) says one is expected (`ds=nocloud`) and none is there yet: a
/// device the kernel adds meanwhile is probed as it appears. Otherwise
/// there is no wait: the modules stage has loaded every storage driver,
/// and the kernel finishes a module's init only once the probes it started,
/// asynchronous ones included, are done, so the block devices of the
/// machine's storage are all there by now; only a hot-plugged one could
/// come later.
const SEED_WAIT_EXPECTED: Duration = Duration::from_secs(10);

/// Why the config was rejected, and the layers that were read (for the
/// management API, which lets a good config be sent to a node stopped by
/// a bad one).
struct Rejected {
    errors: Vec<ConfigError>,
    /// Every layer that parsed.
    layers: Vec<Layer>,
    /// The errors of layers that did not even parse.
    unreadable: Vec<ConfigError>,
}

/// The stage's error once every config error is logged.
#[derive(Debug, thiserror::Error)]
#[error("the machine config was rejected with {count} error(s), listed above; nothing was applied")]
pub struct ConfigRejected {
    pub count: usize,
}

impl Rejected {
    /// A rejection before any layer was read.
    fn early(error: ConfigError) -> Self {
        Rejected { errors: vec![error.clone()], layers: Vec::new(), unreadable: vec![error] }
    }

    fn into_stage_error(self, handles: &crate::management::Handles) -> StageError {
        for e in &self.errors {
            error!("config error: {e}");
        }
        let count = self.errors.len();
        handles.set_config(ConfigState { layers: self.layers, unreadable: self.unreadable, effective: None });
        ConfigRejected { count }.into()
    }
}

fn read_text(kernel: &dyn Kernel, path: &Path) -> Option<String> {
    kernel.read_file(path).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

pub fn run(ctx: &mut BootContext<'_>) -> Result<Done, StageError> {
    read_config(ctx, &Store::new(kelson_config::STATE_DIR))
}

/// The stage with the store of saved layers given.
fn read_config(ctx: &mut BootContext<'_>, store: &Store) -> Result<Done, StageError> {
    let (effective, net_plan, seed_to_save, layers) =
        gather(ctx, store).map_err(|rejected| rejected.into_stage_error(&ctx.handles))?;
    if let Some(seed) = seed_to_save {
        let path = save_seed(store, &seed)?;
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
    ctx.handles.set_config(ConfigState { layers, unreadable: Vec::new(), effective: Some(effective.clone()) });
    ctx.config = Some(effective);
    ctx.net_plan = Some(net_plan);
    Ok(Done::Finished)
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

/// What [`gather`] found: the config, its network plan, the seed to save
/// and the layers it was resolved from.
type Gathered = (Effective, NetPlan, Option<SeedToSave>, Vec<Layer>);

/// Every layer, then the resolved config and the seed to save.
fn gather(ctx: &BootContext<'_>, store: &Store) -> Result<Gathered, Rejected> {
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
    let saved = store.path_for(Source::CloudInit).is_some_and(|p| p.exists());
    // Only `ds=nocloud` without a URL says a volume is coming; with a URL
    // the seed is fetched when no volume is attached.
    let wait = if ds.is_some() && seed_url.is_none() { SEED_WAIT_EXPECTED } else { Duration::ZERO };
    let mut seed_to_save = None;
    // A seed volume wins over a URL: it is what the operator attached.
    let volume = seed::find(kernel, Path::new(seed::SYS_BLOCK), Path::new("/dev"), wait);
    let found =
        match (volume, seed_url) {
            (Some((device, fs)), _) => {
                info!(device = %device.display(), fs = fs.fstype(), "cloud-init seed found");
                Some(seed::read(kernel, &device, fs, Path::new(seed::SEED_MOUNT)).map_err(|e| {
                    Rejected::early(ConfigError::new(&device.display().to_string(), "document", chain(&e)))
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
                        return Err(Rejected::early(ConfigError::new(&url, "document", reason)));
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
        return Err(Rejected { errors: errors.clone(), layers, unreadable: errors });
    }
    let effective = match resolve(&layers) {
        Ok(effective) => effective,
        Err(e) => return Err(Rejected { errors: e.0, layers, unreadable: Vec::new() }),
    };
    // What the network stage could not apply is refused here, before
    // anything is touched, like any other config error.
    let net_plan = match plan_network(&effective) {
        Ok(plan) => plan,
        Err(errors) => return Err(Rejected { errors, layers, unreadable: Vec::new() }),
    };
    Ok((effective, net_plan, seed_to_save, layers))
}

/// The config's network as kelson-net would apply it; each problem as a
/// config error naming the document that set the field.
pub fn plan_network(effective: &Effective) -> Result<NetPlan, Vec<ConfigError>> {
    NetPlan::from_config(&effective.config.network).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| {
                let document = effective.source_of(&p.field).map_or("built-in default", |(_, d)| d).to_owned();
                ConfigError { document, path: p.field, reason: p.reason }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

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

    const DEFAULTS: &str = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: from-image\nnetwork:\n  podCIDR: 10.244.3.0/24\n  clusterCIDR: 10.244.0.0/16\n";

    #[test]
    fn the_resolved_config_and_its_network_plan_reach_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // A seed saved earlier: the stage then waits for no seed volume.
        store.save(&Layer::from_document(Source::CloudInit, "user-data", SAVED_SEED_DOCUMENT).unwrap()).unwrap();
        let k = FakeKernel::default().with_file(IMAGE_DEFAULTS, DEFAULTS);
        let mut ctx = crate::boot::tests::ctx(&k, "");
        read_config(&mut ctx, &store).unwrap();
        let effective = ctx.config.as_ref().expect("the config is in the context");
        // The saved seed is a later layer than the image defaults.
        assert_eq!(effective.config.node.hostname.as_deref(), Some("a"));
        let bridge = ctx.net_plan.as_ref().and_then(|p| p.bridge.as_ref()).expect("the plan has cbr0");
        assert_eq!(bridge.address.to_string(), "10.244.3.1/24");
        assert!(k.calls().contains(&format!("install {EFFECTIVE_CONFIG} 600")), "{:?}", k.calls());
        assert!(k.calls().contains(&format!("install {CONFIG_SOURCES} 600")), "{:?}", k.calls());
    }

    #[test]
    fn a_rejected_config_writes_nothing_and_leaves_the_context_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save(&Layer::from_document(Source::CloudInit, "user-data", SAVED_SEED_DOCUMENT).unwrap()).unwrap();
        let k = FakeKernel::default().with_file(IMAGE_DEFAULTS, &DEFAULTS.replace("10.244.3.0/24", "10.244.3.0/33"));
        let mut ctx = crate::boot::tests::ctx(&k, "");
        let err = read_config(&mut ctx, &store).err().expect("rejected");
        assert!(err.to_string().starts_with("the machine config was rejected with 1 error(s)"), "{err}");
        assert!(ctx.config.is_none() && ctx.net_plan.is_none());
        assert!(!k.calls().iter().any(|c| c.starts_with("install")), "{:?}", k.calls());
    }

    #[test]
    fn a_rejected_config_leaves_its_layers_for_the_api_and_an_accepted_one_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save(&Layer::from_document(Source::CloudInit, "user-data", SAVED_SEED_DOCUMENT).unwrap()).unwrap();
        let k = FakeKernel::default().with_file(IMAGE_DEFAULTS, &DEFAULTS.replace("10.244.3.0/24", "10.244.3.0/33"));
        let mut ctx = crate::boot::tests::ctx(&k, "");
        read_config(&mut ctx, &store).err().expect("rejected");
        let state = ctx.handles.config();
        assert!(state.effective.is_none());
        assert!(state.unreadable.is_empty(), "every layer parsed: {:?}", state.unreadable);
        let sources: Vec<Source> = state.layers.iter().map(|l| l.source).collect();
        assert_eq!(sources, vec![Source::ImageDefaults, Source::CloudInit]);

        let with_cert = format!(
            "{DEFAULTS}pki:\n  ca: CA PEM\n  certificates:\n    management-api:\n      cert: CERT PEM\n      key: KEY PEM\n"
        );
        let k = FakeKernel::default().with_file(IMAGE_DEFAULTS, &with_cert);
        let mut ctx = crate::boot::tests::ctx(&k, "");
        let tls = ctx.handles.tls();
        assert!(tls.borrow().is_none());
        read_config(&mut ctx, &store).unwrap();
        let material = tls.borrow().clone().expect("the API serves with the config's certificate");
        assert_eq!((material.ca_pem.as_str(), material.cert_pem.as_str()), ("CA PEM", "CERT PEM"));
        assert!(ctx.handles.config().effective.is_some());
    }
}
