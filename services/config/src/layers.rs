//! Config layers and how they combine. A node's effective config is, later
//! winning: image defaults < kernel command line < cloud-init seed < config
//! applied over the API. Maps merge key by key; a list or a scalar set by a
//! later layer replaces the earlier one whole (two layers' uplink lists are
//! never interleaved).
//!
//! Each layer is checked for structure on its own, so a typo is reported
//! against the document it is in; meaning (overlapping CIDRs and so on) is
//! checked once on the merged result, and each problem is reported against
//! the document that supplied the offending value.

use crate::error::{from_parse_error, ConfigError, ConfigErrors};
use crate::{MachineConfig, REDACTED};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Where a layer came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    ImageDefaults,
    KernelCmdline,
    CloudInit,
    Api,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::ImageDefaults => "image defaults",
            Source::KernelCmdline => "kernel command line",
            Source::CloudInit => "cloud-init",
            Source::Api => "API",
        }
    }
}

/// One partial config and the document it was read from. Its values are
/// the document's as written, secrets included, so its `Debug` shows only
/// which fields it sets.
#[derive(Clone, PartialEq)]
pub struct Layer {
    pub source: Source,
    /// Names the document in errors and in [`Effective::explain`].
    pub document: String,
    value: Map<String, Value>,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut leaves = Vec::new();
        collect_leaves("", &Value::Object(self.value.clone()), &mut leaves);
        let sets: Vec<String> = leaves.into_iter().map(|(path, _)| path).collect();
        f.debug_struct("Layer")
            .field("source", &self.source)
            .field("document", &self.document)
            .field("sets", &sets)
            .finish()
    }
}

/// Kernel command line keys and the config field each sets.
pub const CMDLINE_KEYS: &[(&str, &str)] = &[
    ("kelson.hostname", "node.hostname"),
    ("kelson.role", "node.role"),
    ("kelson.podCIDR", "network.podCIDR"),
    ("kelson.clusterCIDR", "network.clusterCIDR"),
    ("kelson.serviceCIDR", "network.serviceCIDR"),
    ("kelson.mtu", "network.mtu"),
    ("kelson.install", "install.disk"),
];

impl Layer {
    /// A whole MachineConfig document (with `apiVersion` and `kind`),
    /// parsed strictly.
    pub fn from_document(source: Source, document: &str, text: &str) -> Result<Layer, ConfigErrors> {
        let config: MachineConfig = crate::structure::parse_yaml(document, text)?;
        let mut errors = Vec::new();
        if config.api_version != crate::API_VERSION {
            errors.push(ConfigError::new(
                document,
                "apiVersion",
                format!("{:?} is not supported (use {:?})", config.api_version, crate::API_VERSION),
            ));
        }
        if config.kind != crate::KIND {
            errors.push(ConfigError::new(document, "kind", format!("{:?} is not {:?}", config.kind, crate::KIND)));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors::new(errors));
        }
        // The raw tree, not the typed config: only what the document sets may
        // override earlier layers (a typed config would also carry defaults).
        let value: Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigErrors::one(from_parse_error(document, &e.to_string())))?;
        match value {
            Value::Object(map) => Ok(Layer::from_map(source, document, map)),
            _ => Err(ConfigErrors::one(ConfigError::new(document, "document", "not a mapping".into()))),
        }
    }

    /// A partial tree built by Kelson itself (command line, cloud-init
    /// translation). It is checked for structure like a document.
    pub fn from_value(source: Source, document: &str, value: Map<String, Value>) -> Result<Layer, ConfigErrors> {
        let layer = Layer::from_map(source, document, value);
        let mut whole = layer.value.clone();
        whole.insert("apiVersion".into(), Value::String(crate::API_VERSION.into()));
        whole.insert("kind".into(), Value::String(crate::KIND.into()));
        crate::structure::from_tree::<MachineConfig>(document, Value::Object(whole))?;
        Ok(layer)
    }

    /// The `kelson.*` keys of [`CMDLINE_KEYS`] found in `params`.
    pub fn from_cmdline<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Layer, ConfigErrors> {
        let mut map = Map::new();
        let mut errors = Vec::new();
        for (key, raw) in params {
            let Some((_, path)) = CMDLINE_KEYS.iter().find(|(k, _)| *k == key) else { continue };
            let value = if *path == "network.mtu" {
                match raw.parse::<u32>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        errors.push(ConfigError::new("kernel command line", key, format!("{raw:?} is not a number")));
                        continue;
                    }
                }
            } else {
                Value::String(raw.to_owned())
            };
            set_path(&mut map, path, value);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors::new(errors));
        }
        Layer::from_value(Source::KernelCmdline, "kernel command line", map)
    }

    fn from_map(source: Source, document: &str, mut value: Map<String, Value>) -> Layer {
        value.shift_remove("apiVersion");
        value.shift_remove("kind");
        Layer { source, document: document.to_owned(), value }
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The layer as a MachineConfig document that [`Layer::from_document`]
    /// reads back: what gets persisted.
    pub fn to_document(&self) -> String {
        let mut whole = Map::new();
        whole.insert("apiVersion".into(), Value::String(crate::API_VERSION.into()));
        whole.insert("kind".into(), Value::String(crate::KIND.into()));
        whole.extend(self.value.clone());
        serde_saphyr::to_string(&Value::Object(whole)).unwrap_or_default()
    }

    pub(crate) fn map(&self) -> &Map<String, Value> {
        &self.value
    }
}

/// Sets `a.b.c` in `map`, making the intermediate maps.
pub(crate) fn set_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut cursor = map;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cursor.insert(part.to_owned(), value);
            return;
        }
        let entry = cursor.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        cursor = next;
    }
}

/// The merged, validated config and where each value came from.
#[derive(Debug, Clone)]
pub struct Effective {
    pub config: MachineConfig,
    /// Field path (`network.podCIDR`, or a whole list `network.uplinks`)
    /// → the layer that set it.
    provenance: BTreeMap<String, (Source, String)>,
}

impl Effective {
    /// The layer that set `path` (or the list or map it is inside).
    pub fn source_of(&self, path: &str) -> Option<(Source, &str)> {
        let mut best: Option<(&String, &(Source, String))> = None;
        for (key, origin) in &self.provenance {
            let covers = path == key
                || (path.starts_with(key.as_str())
                    && matches!(path.as_bytes().get(key.len()), Some(b'.') | Some(b'[')));
            if covers && best.is_none_or(|(k, _)| key.len() > k.len()) {
                best = Some((key, origin));
            }
        }
        best.map(|(_, (source, document))| (*source, document.as_str()))
    }

    /// Every value's path with the layer that set it (`None`: a built-in
    /// default), in the order [`Effective::explain`] lists them.
    pub fn leaf_origins(&self) -> Vec<(String, Option<(Source, &str)>)> {
        let value = serde_json::to_value(&self.config).unwrap_or(Value::Null);
        let mut leaves = Vec::new();
        collect_leaves("", &value, &mut leaves);
        leaves
            .into_iter()
            .filter(|(path, _)| path != "apiVersion" && path != "kind")
            .map(|(path, _)| {
                let origin = self.source_of(&path);
                (path, origin)
            })
            .collect()
    }

    /// Every value of the effective config, one per line, with the document
    /// it came from; every [`crate::Secret`] is shown as `<secret>` (that is
    /// how it serializes), wherever it sits, lists included.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let value = serde_json::to_value(&self.config).unwrap_or(Value::Null);
        let mut leaves = Vec::new();
        collect_leaves("", &value, &mut leaves);
        for (path, value) in leaves {
            if path == "apiVersion" || path == "kind" {
                continue;
            }
            let shown = match value {
                Value::String(s) if s == REDACTED => REDACTED.to_owned(),
                other => other.to_string(),
            };
            let origin = self.source_of(&path).map_or("built-in default", |(_, document)| document);
            out.push_str(&format!("{path} = {shown}  # {origin}\n"));
        }
        out
    }
}

/// Leaf paths of a tree: scalars and lists are leaves, maps are walked
/// (an empty map is a leaf too, so a layer that sets `labels: {}` counts).
fn collect_leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() || prefix.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                collect_leaves(&path, child, out);
            }
        }
        _ => out.push((prefix.to_owned(), value.clone())),
    }
}

fn merge_into(target: &mut Map<String, Value>, layer: &Map<String, Value>) {
    for (key, value) in layer {
        match (target.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(incoming)) => merge_into(existing, incoming),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Merges `layers` (in any order: they are applied by precedence, and
/// layers of the same source in the order given) and validates the result.
pub fn resolve(layers: &[Layer]) -> Result<Effective, ConfigErrors> {
    let mut ordered: Vec<&Layer> = layers.iter().collect();
    ordered.sort_by_key(|l| l.source);
    let mut merged = Map::new();
    merged.insert("apiVersion".into(), Value::String(crate::API_VERSION.into()));
    merged.insert("kind".into(), Value::String(crate::KIND.into()));
    let mut provenance: BTreeMap<String, (Source, String)> = BTreeMap::new();
    for layer in ordered {
        merge_into(&mut merged, layer.map());
        let mut leaves = Vec::new();
        collect_leaves("", &Value::Object(layer.map().clone()), &mut leaves);
        for (path, _) in leaves {
            // A value replaced whole also replaces the origins of what was
            // inside it.
            provenance.retain(|k, _| {
                !(k.starts_with(&path) && matches!(k.as_bytes().get(path.len()), Some(b'.') | Some(b'[')))
            });
            provenance.insert(path, (layer.source, layer.document.clone()));
        }
    }
    let config: MachineConfig = serde_json::from_value(Value::Object(merged))
        .map_err(|e| ConfigErrors::one(ConfigError::new("merged config", "document", e.to_string())))?;
    let effective = Effective { config, provenance };
    let problems = crate::validate::validate(&effective.config);
    if problems.is_empty() {
        return Ok(effective);
    }
    Err(ConfigErrors::new(
        problems
            .into_iter()
            .map(|(path, reason)| {
                let document = effective.source_of(&path).map_or("built-in default", |(_, d)| d).to_owned();
                ConfigError { document, path, reason }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_leaf_names_the_layer_that_set_it_or_none_for_a_default() {
        let a = Layer::from_document(
            Source::ImageDefaults,
            "defaults",
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: a\n",
        )
        .unwrap();
        let b = Layer::from_document(
            Source::Api,
            "API config",
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: b\n",
        )
        .unwrap();
        let effective = resolve(&[a, b]).unwrap();
        let origins = effective.leaf_origins();
        let hostname = origins.iter().find(|(p, _)| p == "node.hostname").expect("node.hostname is listed");
        assert_eq!(hostname.1, Some((Source::Api, "API config")));
        let role = origins.iter().find(|(p, _)| p == "node.role").expect("node.role is listed");
        assert_eq!(role.1, None);
        assert!(origins.iter().all(|(p, _)| p != "apiVersion" && p != "kind"));
    }

    fn doc(source: Source, name: &str, body: &str) -> Layer {
        Layer::from_document(source, name, &format!("apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\n{body}"))
            .unwrap()
    }

    #[test]
    fn later_layers_win_field_by_field() {
        let image = doc(Source::ImageDefaults, "image", "network:\n  mtu: 1500\n  clusterCIDR: 10.244.0.0/16\n");
        let cmdline =
            Layer::from_cmdline([("kelson.hostname", "from-cmdline"), ("kelson.mtu", "1400"), ("quiet", "")]).unwrap();
        let seed = doc(Source::CloudInit, "seed", "node:\n  hostname: from-seed\nnetwork:\n  podCIDR: 10.244.3.0/24\n");
        // Given out of order on purpose: precedence comes from the source.
        let e = resolve(&[seed, image, cmdline]).unwrap();
        assert_eq!(e.config.node.hostname.as_deref(), Some("from-seed"));
        assert_eq!(e.config.network.mtu, Some(1400));
        assert_eq!(e.config.network.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(e.config.network.pod_cidr.as_deref(), Some("10.244.3.0/24"));
        assert_eq!(e.source_of("node.hostname"), Some((Source::CloudInit, "seed")));
        assert_eq!(e.source_of("network.mtu"), Some((Source::KernelCmdline, "kernel command line")));
        assert_eq!(e.source_of("network.clusterCIDR"), Some((Source::ImageDefaults, "image")));
        assert_eq!(e.source_of("cluster.name"), None);
    }

    #[test]
    fn kelson_install_on_the_command_line_is_install_disk_and_a_seed_may_add_wipe() {
        let cmdline = Layer::from_cmdline([("kelson.install", "/dev/vda")]).unwrap();
        let e = resolve(std::slice::from_ref(&cmdline)).unwrap();
        assert_eq!((e.config.install.disk.as_deref(), e.config.install.wipe), (Some("/dev/vda"), false));
        assert_eq!(e.source_of("install.disk"), Some((Source::KernelCmdline, "kernel command line")));
        let seed = doc(Source::CloudInit, "seed", "install:\n  wipe: true\n");
        let e = resolve(&[cmdline, seed]).unwrap();
        assert_eq!((e.config.install.disk.as_deref(), e.config.install.wipe), (Some("/dev/vda"), true));
        let err = resolve(&[Layer::from_cmdline([("kelson.install", "vda")]).unwrap()]).unwrap_err().to_string();
        assert!(err.contains("install.disk: \"vda\" is not a whole disk's device like /dev/vda"), "{err}");
    }

    #[test]
    fn a_later_list_replaces_an_earlier_one_whole() {
        let image = doc(
            Source::ImageDefaults,
            "image",
            "network:\n  uplinks:\n    - name: eth0\n      dhcp4: true\n    - name: eth1\n      dhcp4: true\n",
        );
        let api = doc(Source::Api, "api", "network:\n  uplinks:\n    - name: eth9\n      addresses: [192.0.2.9/24]\n");
        let e = resolve(&[image, api]).unwrap();
        assert_eq!(e.config.network.uplinks.len(), 1);
        assert_eq!(e.config.network.uplinks[0].name.as_deref(), Some("eth9"));
        assert_eq!(e.source_of("network.uplinks[0].addresses[0]"), Some((Source::Api, "api")));
    }

    #[test]
    fn meaning_errors_name_the_document_that_set_the_value() {
        let image = doc(Source::ImageDefaults, "image", "network:\n  clusterCIDR: 10.244.0.0/16\n");
        let seed = doc(Source::CloudInit, "cloud-init user-data", "network:\n  podCIDR: 10.9.0.0/24\n  mtu: 70000\n");
        let errors = resolve(&[image, seed]).unwrap_err().to_string();
        assert_eq!(
            errors,
            "cloud-init user-data: network.podCIDR: 10.9.0.0/24 is not inside network.clusterCIDR 10.244.0.0/16\n\
             cloud-init user-data: network.mtu: 70000 is outside 576..=9000"
        );
    }

    #[test]
    fn structure_errors_name_the_layer_document() {
        let err = Layer::from_document(
            Source::Api,
            "api request",
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostnam: x\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "api request: node.hostnam: unknown field (did you mean `hostname`?)");
        let err = Layer::from_cmdline([("kelson.mtu", "big")]).unwrap_err().to_string();
        assert_eq!(err, "kernel command line: kelson.mtu: \"big\" is not a number");
    }

    #[test]
    fn explain_shows_origins_and_hides_secrets() {
        let seed = doc(
            Source::CloudInit,
            "seed",
            "cluster:\n  bootstrapToken: abcdef.0123456789abcdef\npki:\n  certificates:\n    api:\n      cert: CERT\n      key: SUPERSECRET\n",
        );
        let e = resolve(&[seed]).unwrap();
        let text = e.explain();
        assert!(text.contains("cluster.bootstrapToken = <secret>  # seed"), "{text}");
        assert!(text.contains("pki.certificates.api.key = <secret>  # seed"), "{text}");
        assert!(text.contains("pki.certificates.api.cert = \"CERT\"  # seed"), "{text}");
        assert!(text.contains("node.role = \"worker\"  # built-in default"), "{text}");
        assert!(!text.contains("SUPERSECRET") && !text.contains("0123456789abcdef"), "{text}");
    }

    const MARKED: &str = "cluster:\n  bootstrapToken: abcdef.0123456789abcdef\n\
        pki:\n  certificates:\n    api:\n      cert: CERT\n      key: MARKER-KEY\n\
        files:\n  - path: /etc/app/key.pem\n    content: MARKER-FILE\n    mode: \"0600\"\n";
    const MARKERS: [&str; 3] = ["MARKER-KEY", "MARKER-FILE", "0123456789abcdef"];

    fn assert_no_marker(what: &str, text: &str) {
        for marker in MARKERS {
            assert!(!text.contains(marker), "{what} shows {marker}: {text}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_display_sources_or_plain_yaml() {
        let seed = doc(Source::CloudInit, "seed", MARKED);
        assert_no_marker("a layer's Debug", &format!("{seed:?}"));
        let e = resolve(&[seed]).unwrap();
        assert_no_marker("the effective config's Debug", &format!("{e:?}"));
        assert_no_marker("the config's Debug", &format!("{:#?}", e.config));
        assert_no_marker("a file's content", &format!("{} {:?}", e.config.files[0].content, e.config.files[0]));
        assert_no_marker("the sources listing", &e.explain());
        assert_no_marker("the plain YAML", &e.config.to_yaml());
        assert!(
            e.explain().contains("files = [{\"path\":\"/etc/app/key.pem\",\"content\":\"<secret>\""),
            "{}",
            e.explain()
        );
        // The secrets are kept, and written by to_yaml_with_secrets (the 0600 file).
        let full = e.config.to_yaml_with_secrets();
        for marker in MARKERS {
            assert!(full.contains(marker), "{marker} missing from {full}");
        }
        assert_eq!(crate::parse("effective", &full).unwrap(), e.config);
        assert_eq!(e.config.files[0].content.expose(), "MARKER-FILE");
    }

    #[test]
    fn a_layer_survives_being_written_and_read_back() {
        let seed = doc(Source::CloudInit, "seed", "node:\n  hostname: a\n  labels: {}\nnetwork:\n  mtu: 1460\n");
        let again = Layer::from_document(Source::CloudInit, "seed", &seed.to_document()).unwrap();
        assert_eq!(again, seed);
    }
}
