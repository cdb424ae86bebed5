//! cloud-init NoCloud seeds: `meta-data`, `user-data` and `network-config`
//! turned into config layers. Finding the seed (a `cidata` volume or a URL)
//! is the caller's job; this is only the meaning of the files.
//!
//! What an appliance can honour is mapped onto the machine config; every
//! other key is listed in [`Seed::ignored`] by name so the node can log it,
//! never silently dropped. Within a seed, later wins: meta-data <
//! network-config < `#cloud-config` keys < a MachineConfig (`user-data`
//! itself, or the `kelson:` key of a `#cloud-config`).

use crate::error::{did_you_mean, ConfigError, ConfigErrors};
use crate::layers::{set_path, Layer, Source};
use base64::Engine;
use serde_json::{Map, Value};

/// The seed's files as found, and where (`/dev/sr0`, a URL).
#[derive(Debug, Clone, Default)]
pub struct SeedFiles {
    pub origin: String,
    pub meta_data: Option<String>,
    pub user_data: Option<String>,
    pub network_config: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Seed {
    pub instance_id: Option<String>,
    /// In precedence order, lowest first; all [`Source::CloudInit`].
    pub layers: Vec<Layer>,
    /// `file: key` for every key the seed sets that Kelson does not use,
    /// with why.
    pub ignored: Vec<String>,
}

impl Seed {
    /// The seed's layers merged into one, for keeping across boots.
    pub fn combined(&self, document: &str) -> Result<Layer, ConfigErrors> {
        let mut map = Map::new();
        for layer in &self.layers {
            merge(&mut map, layer.map());
        }
        Layer::from_value(Source::CloudInit, document, map)
    }
}

fn merge(target: &mut Map<String, Value>, incoming: &Map<String, Value>) {
    for (key, value) in incoming {
        match (target.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(inner)) => merge(existing, inner),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Collects problems and ignored keys for one file.
struct File<'a> {
    document: String,
    errors: &'a mut Vec<ConfigError>,
    ignored: &'a mut Vec<String>,
    name: &'static str,
}

impl File<'_> {
    fn error(&mut self, path: &str, reason: impl Into<String>) {
        self.errors.push(ConfigError::new(&self.document, path, reason.into()));
    }
    fn ignore(&mut self, path: &str, why: &str) {
        self.ignored.push(format!("{}: {path} ({why})", self.name));
    }
    fn string(&mut self, value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => {
                self.error(path, "expected a string");
                None
            }
        }
    }
    fn strings(&mut self, value: &Value, path: &str) -> Vec<String> {
        match value {
            Value::Array(items) => {
                items.iter().enumerate().filter_map(|(i, v)| self.string(v, &format!("{path}[{i}]"))).collect()
            }
            Value::String(s) => vec![s.clone()],
            _ => {
                self.error(path, "expected a list of strings");
                Vec::new()
            }
        }
    }
    fn map<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(m) => Some(m),
            _ => {
                self.error(path, "expected a mapping");
                None
            }
        }
    }
}

fn yaml(document: &str, text: &str) -> Result<Value, ConfigError> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| crate::error::from_parse_error(document, &e.to_string()))
}

/// Reads a seed's files into layers.
pub fn read_seed(files: &SeedFiles) -> Result<Seed, ConfigErrors> {
    let mut errors = Vec::new();
    let mut ignored = Vec::new();
    let mut layers = Vec::new();
    let mut instance_id = None;
    let origin = &files.origin;

    if let Some(text) = &files.meta_data {
        let document = format!("cloud-init meta-data ({origin})");
        let mut f = File { document: document.clone(), errors: &mut errors, ignored: &mut ignored, name: "meta-data" };
        let (id, map) = meta_data(&mut f, text);
        instance_id = id;
        push_layer(&mut layers, &mut errors, &document, map);
    }
    if let Some(text) = &files.network_config {
        let document = format!("cloud-init network-config ({origin})");
        let mut f =
            File { document: document.clone(), errors: &mut errors, ignored: &mut ignored, name: "network-config" };
        let map = network_config(&mut f, text);
        push_layer(&mut layers, &mut errors, &document, map);
    }
    if let Some(text) = &files.user_data {
        let document = format!("cloud-init user-data ({origin})");
        user_data(&document, text, &mut layers, &mut errors, &mut ignored);
    }
    if errors.is_empty() {
        Ok(Seed { instance_id, layers, ignored })
    } else {
        Err(ConfigErrors::new(errors))
    }
}

fn push_layer(layers: &mut Vec<Layer>, errors: &mut Vec<ConfigError>, document: &str, map: Map<String, Value>) {
    if map.is_empty() {
        return;
    }
    match Layer::from_value(Source::CloudInit, document, map) {
        Ok(layer) => layers.push(layer),
        Err(e) => errors.extend(e.0),
    }
}

fn meta_data(f: &mut File<'_>, text: &str) -> (Option<String>, Map<String, Value>) {
    let mut out = Map::new();
    let value = match yaml(&f.document, text) {
        Ok(Value::Null) => return (None, out),
        Ok(v) => v,
        Err(e) => {
            f.errors.push(e);
            return (None, out);
        }
    };
    let Some(map) = f.map(&value, "document") else { return (None, out) };
    let mut id = None;
    for (key, v) in map {
        match key.as_str() {
            "instance-id" => id = f.string(v, key),
            "local-hostname" => {
                if let Some(h) = f.string(v, key) {
                    set_path(&mut out, "node.hostname", Value::String(h));
                }
            }
            _ => f.ignore(key, "not used by Kelson"),
        }
    }
    (id, out)
}

fn user_data(
    document: &str,
    text: &str,
    layers: &mut Vec<Layer>,
    errors: &mut Vec<ConfigError>,
    ignored: &mut Vec<String>,
) {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if first.is_empty() {
        return;
    }
    let unsupported = |what: &str| {
        ConfigError::new(
            document,
            "document",
            format!("{what} user-data is not supported on Kelson (use a MachineConfig or #cloud-config)"),
        )
    };
    if first.starts_with("#cloud-config") {
        let mut f = File { document: document.to_owned(), errors, ignored, name: "user-data" };
        let (map, kelson) = cloud_config(&mut f, text);
        push_layer(layers, errors, document, map);
        if let Some(kelson) = kelson {
            match kelson {
                Value::Object(mut m) => {
                    m.shift_remove("apiVersion");
                    m.shift_remove("kind");
                    match Layer::from_value(Source::CloudInit, document, m) {
                        Ok(layer) => layers.push(layer),
                        Err(e) => errors.extend(e.0.into_iter().map(|mut e| {
                            e.path = "kelson".into();
                            e
                        })),
                    }
                }
                _ => errors.push(ConfigError::new(document, "kelson", "expected a MachineConfig mapping".into())),
            }
        }
    } else if first.starts_with("#!") {
        errors.push(unsupported("a shell script as"));
    } else if first.to_ascii_lowercase().starts_with("content-type:") || first.starts_with("MIME-Version") {
        errors.push(unsupported("multipart MIME"));
    } else if first.starts_with("#include")
        || first.starts_with("#cloud-boothook")
        || first.starts_with("#part-handler")
        || first.starts_with("## template")
    {
        errors.push(unsupported(first.split_whitespace().next().unwrap_or(first)));
    } else {
        match Layer::from_document(Source::CloudInit, document, text) {
            Ok(layer) => layers.push(layer),
            Err(e) => errors.extend(e.0),
        }
    }
}

/// The `#cloud-config` keys Kelson honours, mapped onto the config; the
/// `kelson:` key is returned separately as it is a config of its own.
fn cloud_config(f: &mut File<'_>, text: &str) -> (Map<String, Value>, Option<Value>) {
    let mut out = Map::new();
    let value = match yaml(&f.document, text) {
        Ok(Value::Null) => return (out, None),
        Ok(v) => v,
        Err(e) => {
            f.errors.push(e);
            return (out, None);
        }
    };
    let Some(map) = f.map(&value, "document") else { return (out, None) };
    let mut kelson = None;
    let mut hostname = None;
    let mut fqdn = None;
    for (key, v) in map {
        match key.as_str() {
            "hostname" => hostname = f.string(v, key),
            "fqdn" => fqdn = f.string(v, key),
            "write_files" => {
                let files = write_files(f, v);
                if !files.is_empty() {
                    out.insert("files".into(), Value::Array(files));
                }
            }
            "ntp" => {
                let Some(ntp) = f.map(v, "ntp") else { continue };
                let mut servers = Vec::new();
                for (k, list) in ntp {
                    match k.as_str() {
                        "servers" | "pools" => servers.extend(f.strings(list, &format!("ntp.{k}"))),
                        _ => f.ignore(&format!("ntp.{k}"), "Kelson only takes the server names"),
                    }
                }
                set_path(&mut out, "time.servers", Value::Array(servers.into_iter().map(Value::String).collect()));
            }
            "kelson" => kelson = Some(v.clone()),
            _ => f.ignore(key, "not supported on an appliance"),
        }
    }
    // cloud-init sets the short name from `fqdn` when `hostname` is absent.
    if let Some(name) = hostname.or_else(|| fqdn.map(|q| q.split('.').next().unwrap_or_default().to_owned())) {
        set_path(&mut out, "node.hostname", Value::String(name));
    }
    (out, kelson)
}

fn write_files(f: &mut File<'_>, value: &Value) -> Vec<Value> {
    let Value::Array(items) = value else {
        f.error("write_files", "expected a list");
        return Vec::new();
    };
    let mut files = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let base = format!("write_files[{i}]");
        let Some(entry) = f.map(item, &base) else { continue };
        let mut path = None;
        let mut content = String::new();
        let mut encoding = String::from("text/plain");
        let mut mode = None;
        for (k, v) in entry {
            let field = format!("{base}.{k}");
            match k.as_str() {
                "path" => path = f.string(v, &field),
                "content" => content = f.string(v, &field).unwrap_or_default(),
                "encoding" => encoding = f.string(v, &field).unwrap_or_default(),
                "permissions" => {
                    mode = match v {
                        // YAML reads an unquoted 0644 as the number 644.
                        Value::Number(n) => Some(format!("0{n}")),
                        Value::String(s) => Some(s.trim_start_matches("0o").to_owned()),
                        _ => {
                            f.error(&field, "expected an octal mode like '0644'");
                            None
                        }
                    }
                }
                "owner" => {
                    if f.string(v, &field).as_deref() != Some("root:root") {
                        f.ignore(&field, "files are written as root:root");
                    }
                }
                "defer" => f.ignore(&field, "files are written once the config is accepted"),
                "append" => {
                    if *v == Value::Bool(true) {
                        f.error(&field, "appending to files is not supported");
                    }
                }
                _ => {
                    let hint =
                        did_you_mean(k, ["path", "content", "encoding", "permissions", "owner", "defer", "append"]);
                    let reason = match hint {
                        Some(h) => format!("unknown write_files key (did you mean `{h}`?)"),
                        None => "unknown write_files key".to_owned(),
                    };
                    f.error(&field, reason);
                }
            }
        }
        let content = match encoding.as_str() {
            "text/plain" | "" => Some(content),
            "b64" | "base64" => match base64::engine::general_purpose::STANDARD.decode(content.trim()) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        f.error(&format!("{base}.content"), "base64 content is not UTF-8 text");
                        None
                    }
                },
                Err(e) => {
                    f.error(&format!("{base}.content"), format!("not valid base64: {e}"));
                    None
                }
            },
            other => {
                f.error(&format!("{base}.encoding"), format!("{other:?} is not supported (use text/plain or b64)"));
                None
            }
        };
        let Some(path) = path else {
            f.error(&format!("{base}.path"), "missing");
            continue;
        };
        let Some(content) = content else { continue };
        let mut file = Map::new();
        file.insert("path".into(), Value::String(path));
        file.insert("content".into(), Value::String(content));
        if let Some(mode) = mode {
            file.insert("mode".into(), Value::String(mode));
        }
        files.push(Value::Object(file));
    }
    files
}

/// Netplan-style version 2, or version 1, onto `network`.
fn network_config(f: &mut File<'_>, text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let value = match yaml(&f.document, text) {
        Ok(Value::Null) => return out,
        Ok(v) => v,
        Err(e) => {
            f.errors.push(e);
            return out;
        }
    };
    let Some(mut map) = f.map(&value, "document") else { return out };
    // Both `network: {version: 2, ...}` and the bare form are in use.
    if let Some(Value::Object(inner)) = map.get("network") {
        if map.len() == 1 {
            map = inner;
        }
    }
    if map.get("config").and_then(Value::as_str) == Some("disabled") {
        return out;
    }
    let NetworkOut { uplinks, nameservers, search } = match map.get("version").and_then(Value::as_u64) {
        Some(2) => network_v2(f, map),
        Some(1) => network_v1(f, map),
        _ => {
            f.error("version", "network-config must say version: 1 or version: 2");
            return out;
        }
    };
    if !uplinks.is_empty() {
        set_path(&mut out, "network.uplinks", Value::Array(uplinks));
    }
    if !nameservers.is_empty() {
        set_path(&mut out, "network.nameservers", Value::Array(nameservers.into_iter().map(Value::String).collect()));
    }
    if !search.is_empty() {
        set_path(&mut out, "network.searchDomains", Value::Array(search.into_iter().map(Value::String).collect()));
    }
    out
}

/// What a network-config gives the `network` section.
#[derive(Default)]
struct NetworkOut {
    uplinks: Vec<Value>,
    nameservers: Vec<String>,
    search: Vec<String>,
}

/// Appends `domains` to `search`, each once.
fn add_search(search: &mut Vec<String>, domains: Vec<String>) {
    for d in domains {
        if !search.contains(&d) {
            search.push(d);
        }
    }
}

/// netplan `ethernets` keys that Kelson does not act on and that cannot
/// change where traffic goes, so ignoring them (with a note) is safe. Any
/// other key it does not know is refused.
const V2_HARMLESS: &[(&str, &str)] = &[
    ("optional", "Kelson does not wait for links at boot"),
    ("critical", "Kelson never takes an uplink down"),
    ("wakeonlan", "not configured by Kelson"),
    ("dhcp-identifier", "Kelson's DHCP client sends the MAC as the client identifier"),
    ("link-local", "Kelson configures IPv4 only"),
    ("accept-ra", "Kelson configures IPv4 only"),
    ("ipv6-privacy", "Kelson configures IPv4 only"),
];

fn is_default_route(to: &str) -> bool {
    matches!(to, "default" | "0.0.0.0/0" | "0.0.0.0")
}

fn network_v2(f: &mut File<'_>, map: &Map<String, Value>) -> NetworkOut {
    let mut uplinks = Vec::new();
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    for (key, v) in map {
        match key.as_str() {
            "version" => {}
            "renderer" => f.ignore(key, "Kelson configures interfaces itself"),
            "ethernets" => {
                let Some(ethernets) = f.map(v, key) else { continue };
                for (id, eth) in ethernets {
                    let base = format!("ethernets.{id}");
                    let Some(eth) = f.map(eth, &base) else { continue };
                    let mut uplink = Map::new();
                    let mut matched = false;
                    let mut set_name = None;
                    for (k, v) in eth {
                        let field = format!("{base}.{k}");
                        match k.as_str() {
                            "match" => {
                                let Some(m) = f.map(v, &field) else { continue };
                                for (mk, mv) in m {
                                    let mfield = format!("{field}.{mk}");
                                    match mk.as_str() {
                                        "macaddress" => {
                                            if let Some(mac) = f.string(mv, &mfield) {
                                                uplink.insert("mac".into(), Value::String(mac.to_ascii_lowercase()));
                                                matched = true;
                                            }
                                        }
                                        "name" => {
                                            if let Some(name) = f.string(mv, &mfield) {
                                                if name.contains(['*', '?', '[']) {
                                                    f.error(&mfield, format!("{name:?}: name patterns are not supported; give the interface name or its MAC"));
                                                } else if !uplink.contains_key("mac") {
                                                    uplink.insert("name".into(), Value::String(name));
                                                    matched = true;
                                                }
                                            }
                                        }
                                        _ => f.error(
                                            &mfield,
                                            "only name and macaddress matches are supported (a match Kelson ignored could configure another link)",
                                        ),
                                    }
                                }
                            }
                            "dhcp4" => match v {
                                Value::Bool(b) => {
                                    uplink.insert("dhcp4".into(), Value::Bool(*b));
                                }
                                Value::String(s) if matches!(s.as_str(), "true" | "yes") => {
                                    uplink.insert("dhcp4".into(), Value::Bool(true));
                                }
                                Value::String(s) if matches!(s.as_str(), "false" | "no") => {}
                                _ => f.error(&field, "expected true or false"),
                            },
                            "dhcp6" => match v {
                                Value::Bool(false) => {}
                                Value::String(s) if matches!(s.as_str(), "false" | "no") => {}
                                _ => f.error(&field, "IPv6 is not supported by Kelson yet"),
                            },
                            "dhcp4-overrides" => f.error(
                                &field,
                                "not supported: Kelson's DHCP client always installs the lease's router and nameservers, so overrides would be silently ignored",
                            ),
                            "addresses" => {
                                let addrs = f.strings(v, &field);
                                uplink.insert(
                                    "addresses".into(),
                                    Value::Array(addrs.into_iter().map(Value::String).collect()),
                                );
                            }
                            "gateway4" => {
                                if let Some(gw) = f.string(v, &field) {
                                    uplink.insert("gateway4".into(), Value::String(gw));
                                }
                            }
                            "mtu" => match v.as_u64() {
                                Some(n) => {
                                    uplink.insert("mtu".into(), Value::from(n));
                                }
                                None => f.error(&field, "expected a number"),
                            },
                            "routes" => {
                                let Value::Array(routes) = v else {
                                    f.error(&field, "expected a list");
                                    continue;
                                };
                                let mut out = Vec::new();
                                for (j, r) in routes.iter().enumerate() {
                                    let rfield = format!("{field}[{j}]");
                                    let Some(r) = f.map(r, &rfield) else { continue };
                                    let to = r.get("to").and_then(|v| f.string(v, &format!("{rfield}.to")));
                                    let via = r.get("via").and_then(|v| f.string(v, &format!("{rfield}.via")));
                                    // metric, table, on-link, scope... each changes
                                    // which route traffic takes: refused, not ignored.
                                    for k in r.keys().filter(|k| !matches!(k.as_str(), "to" | "via")) {
                                        f.error(
                                            &format!("{rfield}.{k}"),
                                            "not supported (routes take only to and via); ignoring it would change where traffic goes",
                                        );
                                    }
                                    match (to, via) {
                                        (Some(to), Some(via)) if is_default_route(&to) => {
                                            uplink.insert("gateway4".into(), Value::String(via));
                                        }
                                        (Some(to), Some(via)) => {
                                            let mut route = Map::new();
                                            route.insert("to".into(), Value::String(to));
                                            route.insert("via".into(), Value::String(via));
                                            out.push(Value::Object(route));
                                        }
                                        _ => f.error(&rfield, "a route needs both to and via"),
                                    }
                                }
                                uplink.insert("routes".into(), Value::Array(out));
                            }
                            "nameservers" => {
                                let Some(ns) = f.map(v, &field) else { continue };
                                for (nk, nv) in ns {
                                    match nk.as_str() {
                                        "addresses" => nameservers.extend(f.strings(nv, &format!("{field}.addresses"))),
                                        "search" => add_search(&mut search, f.strings(nv, &format!("{field}.search"))),
                                        _ => f.error(&format!("{field}.{nk}"), "only addresses and search are supported"),
                                    }
                                }
                            }
                            "set-name" => set_name = f.string(v, &field),
                            other => match V2_HARMLESS.iter().find(|(key, _)| *key == other) {
                                Some((_, why)) => f.ignore(&field, why),
                                None => f.error(
                                    &field,
                                    "not supported; it is refused rather than ignored because it could change where traffic goes",
                                ),
                            },
                        }
                    }
                    match (set_name, matched) {
                        (Some(new), true) => {
                            uplink.insert("setName".into(), Value::String(new));
                        }
                        // netplan applies set-name only to a link found by `match`.
                        (Some(_), false) => {
                            f.error(&format!("{base}.set-name"), "set-name needs a match (macaddress or name)")
                        }
                        (None, _) => {}
                    }
                    if !matched {
                        uplink.insert("name".into(), Value::String(id.clone()));
                    }
                    uplinks.push(Value::Object(uplink));
                }
            }
            _ => f.ignore(key, "only ethernets are supported"),
        }
    }
    NetworkOut { uplinks, nameservers, search }
}

/// `255.255.255.0` → 24.
fn prefix_of(netmask: &str) -> Option<u32> {
    let addr: std::net::Ipv4Addr = netmask.parse().ok()?;
    let bits = u32::from(addr);
    (bits.leading_ones() + bits.trailing_zeros() == 32).then_some(bits.leading_ones())
}

fn network_v1(f: &mut File<'_>, map: &Map<String, Value>) -> NetworkOut {
    let mut uplinks = Vec::new();
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    for key in map.keys().filter(|k| !matches!(k.as_str(), "version" | "config")) {
        f.ignore(key, "not supported");
    }
    let Some(Value::Array(entries)) = map.get("config") else {
        f.error("config", "version 1 needs a config list");
        return NetworkOut::default();
    };
    for (i, entry) in entries.iter().enumerate() {
        let base = format!("config[{i}]");
        let Some(entry) = f.map(entry, &base) else { continue };
        let kind = entry.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "physical" => {
                let mut uplink = Map::new();
                let name = entry.get("name").and_then(|v| f.string(v, &format!("{base}.name")));
                let mac = entry.get("mac_address").and_then(|v| f.string(v, &format!("{base}.mac_address")));
                match (mac, name) {
                    // As in cloud-init, the link with that MAC gets that name.
                    (Some(mac), name) => {
                        uplink.insert("mac".into(), Value::String(mac.to_ascii_lowercase()));
                        if let Some(name) = name {
                            uplink.insert("setName".into(), Value::String(name));
                        }
                    }
                    (None, Some(name)) => {
                        uplink.insert("name".into(), Value::String(name));
                    }
                    (None, None) => f.error(&base, "a physical interface needs name or mac_address"),
                }
                if let Some(mtu) = entry.get("mtu") {
                    match mtu.as_u64() {
                        Some(n) => {
                            uplink.insert("mtu".into(), Value::from(n));
                        }
                        None => f.error(&format!("{base}.mtu"), "expected a number"),
                    }
                }
                for k in
                    entry.keys().filter(|k| !matches!(k.as_str(), "type" | "name" | "mac_address" | "mtu" | "subnets"))
                {
                    f.ignore(&format!("{base}.{k}"), "not supported");
                }
                let mut addresses = Vec::new();
                let mut routes = Vec::new();
                let subnets = match entry.get("subnets") {
                    Some(Value::Array(s)) => s.as_slice(),
                    Some(_) => {
                        f.error(&format!("{base}.subnets"), "expected a list");
                        &[]
                    }
                    None => &[],
                };
                for (j, subnet) in subnets.iter().enumerate() {
                    let sbase = format!("{base}.subnets[{j}]");
                    let Some(subnet) = f.map(subnet, &sbase) else { continue };
                    match subnet.get("type").and_then(Value::as_str).unwrap_or_default() {
                        "dhcp" | "dhcp4" => {
                            uplink.insert("dhcp4".into(), Value::Bool(true));
                        }
                        "static" | "static4" => {
                            let Some(address) =
                                subnet.get("address").and_then(|v| f.string(v, &format!("{sbase}.address")))
                            else {
                                f.error(&format!("{sbase}.address"), "missing");
                                continue;
                            };
                            let address = match subnet.get("netmask").and_then(Value::as_str) {
                                Some(mask) if !address.contains('/') => match prefix_of(mask) {
                                    Some(p) => format!("{address}/{p}"),
                                    None => {
                                        f.error(&format!("{sbase}.netmask"), format!("{mask:?} is not a netmask"));
                                        continue;
                                    }
                                },
                                _ => address,
                            };
                            addresses.push(Value::String(address));
                            if let Some(gw) =
                                subnet.get("gateway").and_then(|v| f.string(v, &format!("{sbase}.gateway")))
                            {
                                uplink.insert("gateway4".into(), Value::String(gw));
                            }
                            if let Some(ns) = subnet.get("dns_nameservers") {
                                nameservers.extend(f.strings(ns, &format!("{sbase}.dns_nameservers")));
                            }
                            if let Some(domains) = subnet.get("dns_search") {
                                add_search(&mut search, f.strings(domains, &format!("{sbase}.dns_search")));
                            }
                            if let Some(Value::Array(rs)) = subnet.get("routes") {
                                for (k, r) in rs.iter().enumerate() {
                                    let rbase = format!("{sbase}.routes[{k}]");
                                    let Some(r) = f.map(r, &rbase) else { continue };
                                    let net = r
                                        .get("network")
                                        .or(r.get("destination"))
                                        .and_then(Value::as_str)
                                        .unwrap_or_default();
                                    let gw = r.get("gateway").and_then(Value::as_str).unwrap_or_default();
                                    for k in r.keys().filter(|k| {
                                        !matches!(k.as_str(), "network" | "destination" | "netmask" | "gateway")
                                    }) {
                                        f.error(
                                            &format!("{rbase}.{k}"),
                                            "not supported (routes take network, netmask and gateway); ignoring it would change where traffic goes",
                                        );
                                    }
                                    let to = match (
                                        net.contains('/'),
                                        r.get("netmask").and_then(Value::as_str).and_then(prefix_of),
                                    ) {
                                        (true, _) => net.to_owned(),
                                        (false, Some(p)) => format!("{net}/{p}"),
                                        (false, None) => format!("{net}/32"),
                                    };
                                    if is_default_route(net) || to == "0.0.0.0/0" {
                                        uplink.insert("gateway4".into(), Value::String(gw.to_owned()));
                                    } else {
                                        let mut route = Map::new();
                                        route.insert("to".into(), Value::String(to));
                                        route.insert("via".into(), Value::String(gw.to_owned()));
                                        routes.push(Value::Object(route));
                                    }
                                }
                            }
                            for k in subnet.keys().filter(|k| {
                                !matches!(
                                    k.as_str(),
                                    "type"
                                        | "address"
                                        | "netmask"
                                        | "gateway"
                                        | "dns_nameservers"
                                        | "dns_search"
                                        | "routes"
                                )
                            }) {
                                f.ignore(&format!("{sbase}.{k}"), "not supported");
                            }
                        }
                        other => f.error(
                            &format!("{sbase}.type"),
                            format!("{other:?}: only static and dhcp subnets are supported"),
                        ),
                    }
                }
                if !addresses.is_empty() {
                    uplink.insert("addresses".into(), Value::Array(addresses));
                }
                if !routes.is_empty() {
                    uplink.insert("routes".into(), Value::Array(routes));
                }
                uplinks.push(Value::Object(uplink));
            }
            "nameserver" => {
                if let Some(a) = entry.get("address") {
                    nameservers.extend(f.strings(a, &format!("{base}.address")));
                }
                if let Some(domains) = entry.get("search") {
                    add_search(&mut search, f.strings(domains, &format!("{base}.search")));
                }
            }
            other => f.ignore(&format!("{base} (type {other})"), "only physical and nameserver entries are supported"),
        }
    }
    NetworkOut { uplinks, nameservers, search }
}
