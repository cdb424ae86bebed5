//! The kernel command line: `key=value` words, double quotes allowed around
//! values with spaces. Kelson's own keys start with `kelson.`.

/// The `kelson.*` keys PID 1 reads itself (the config's are
/// [`kelson_config::CMDLINE_KEYS`]), and whether a misspelling of the key
/// would change what the node does (a node booted without its state disk
/// keeps nothing across reboots), so that boot must stop rather than go on.
const OWN_KEYS: &[(&str, bool)] = &[
    ("kelson.state", true),
    ("kelson.shutdown_grace", false),
    (crate::stages::boot_entry::TRIAL_TIMEOUT_KEY, false),
    // Test knobs.
    (crate::hooks::ENABLE_KEY, false),
    ("kelson.test.panic_stage", false),
    (crate::stages::services::BACKOFF_KNOB, false),
    (crate::stages::pods::BACKOFF_KNOB, false),
    (crate::power_cut::KNOB, false),
];

/// Every `kelson.*` key Kelson knows, and whether a misspelling of it stops
/// boot. The config's keys set the node's identity and addresses: a typo
/// there would bring up a node that is not the one asked for.
fn known_keys() -> impl Iterator<Item = (&'static str, bool)> {
    kelson_config::CMDLINE_KEYS.iter().map(|(key, _)| (*key, true)).chain(OWN_KEYS.iter().copied())
}

/// A `kelson.*` key on the command line that Kelson does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    pub key: String,
    /// The known key it is close to, if it looks like a typo of one.
    pub suggestion: Option<&'static str>,
    /// Whether it is a near miss of a key that changes what the node does.
    pub stops_boot: bool,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown kernel command line key `{}`", self.key)?;
        match self.suggestion {
            Some(known) if self.stops_boot => write!(
                f,
                " (did you mean `{known}`?): booting without `{known}` would change what this node does, so boot stops \
                 here; fix the command line"
            ),
            Some(known) => write!(f, " (did you mean `{known}`?), ignored"),
            None => write!(f, ", ignored"),
        }
    }
}

/// A parsed kernel command line. Later words win for repeated keys, as the
/// kernel does for its own parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        let mut word = String::new();
        let mut in_quotes = false;
        let mut words = Vec::new();
        for c in text.chars() {
            match c {
                '"' => in_quotes = !in_quotes,
                c if c.is_whitespace() && !in_quotes => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        for w in words {
            match w.split_once('=') {
                Some((k, v)) => params.push((k.to_owned(), Some(v.to_owned()))),
                None => params.push((w, None)),
            }
        }
        Cmdline { params }
    }

    /// Reads `/proc/cmdline`; an unreadable command line is an empty one.
    pub fn from_proc() -> Self {
        std::fs::read_to_string("/proc/cmdline").map(|t| Self::parse(&t)).unwrap_or_default()
    }

    /// The value of the last `key=value`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
    }

    /// Every `key=value` word, in order (words without a value are left out).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().filter_map(|(k, v)| v.as_deref().map(|v| (k.as_str(), v)))
    }

    /// Each `kelson.*` key that Kelson does not know, in order.
    pub fn unknown_kelson_keys(&self) -> Vec<UnknownKey> {
        let mut unknown: Vec<UnknownKey> = Vec::new();
        for (key, _) in &self.params {
            let Some(name) = key.strip_prefix("kelson.") else { continue };
            if known_keys().any(|(k, _)| k == key) || unknown.iter().any(|u| u.key == *key) {
                continue;
            }
            // Compared without the common prefix, which would make any two
            // keys look alike.
            let short: Vec<(&'static str, &'static str, bool)> =
                known_keys().map(|(k, stops)| (k, k.trim_start_matches("kelson."), stops)).collect();
            let hint = kelson_config::did_you_mean(name, short.iter().map(|(_, s, _)| *s));
            let found = hint.and_then(|h| short.iter().find(|(_, s, _)| *s == h));
            unknown.push(UnknownKey {
                key: key.clone(),
                suggestion: found.map(|(k, _, _)| *k),
                stops_boot: found.is_some_and(|(_, _, stops)| *stops),
            });
        }
        unknown
    }

    /// Whether `key` appears at all, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_flags_are_split() {
        let c = Cmdline::parse("console=ttyS0 quiet kelson.state=/dev/vdb\n");
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert_eq!(c.get("kelson.state"), Some("/dev/vdb"));
        assert!(c.has("quiet"));
        assert_eq!(c.get("quiet"), None);
        assert!(!c.has("debug"));
    }

    #[test]
    fn quoted_values_keep_their_spaces() {
        let c = Cmdline::parse(r#"a=1 kelson.hostname="node one" b"#);
        assert_eq!(c.get("kelson.hostname"), Some("node one"));
        assert!(c.has("b"));
    }

    #[test]
    fn the_last_repeated_key_wins() {
        let c = Cmdline::parse("console=tty0 console=ttyS0");
        assert_eq!(c.get("console"), Some("ttyS0"));
    }

    #[test]
    fn unknown_kelson_keys_are_reported_and_near_misses_of_meaningful_keys_stop_boot() {
        let c = Cmdline::parse(
            "console=ttyS0 kelson.state=/dev/vdb kelson.stat=/dev/vdc kelson.shutdown_grac=3 kelson.podcidr=10.0.0.0/24 \
             kelson.banana=1 kelson.hostname=a kelson.flag",
        );
        let found: Vec<String> = c.unknown_kelson_keys().iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "unknown kernel command line key `kelson.stat` (did you mean `kelson.state`?): booting without \
                 `kelson.state` would change what this node does, so boot stops here; fix the command line",
                "unknown kernel command line key `kelson.shutdown_grac` (did you mean `kelson.shutdown_grace`?), ignored",
                "unknown kernel command line key `kelson.podcidr` (did you mean `kelson.podCIDR`?): booting without \
                 `kelson.podCIDR` would change what this node does, so boot stops here; fix the command line",
                "unknown kernel command line key `kelson.banana`, ignored",
                "unknown kernel command line key `kelson.flag`, ignored",
            ]
        );
        let stops: Vec<bool> = c.unknown_kelson_keys().iter().map(|u| u.stops_boot).collect();
        assert_eq!(stops, [true, false, true, false, false]);
        assert!(Cmdline::parse("kelson.state=/dev/vdb kelson.mtu=1400 kelson.test.panic_stage=x quiet")
            .unknown_kelson_keys()
            .is_empty());
    }

    /// Every `"kelson.…"` key named in PID 1's sources is a known key, so
    /// a key added later is not reported as unknown on the nodes using it.
    #[test]
    fn every_key_the_sources_read_is_known() {
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut files = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        assert!(files.iter().any(|f| f.ends_with("stages/state.rs")), "the stages are searched too");
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("get(\"kelson.") {
                let key: String = text[i + 5..].chars().take_while(|c| *c != '"').collect();
                assert!(known_keys().any(|(k, _)| k == key), "{key} (read in {}) is not in OWN_KEYS", path.display());
            }
        }
    }

    #[test]
    fn values_may_contain_equals_signs() {
        let c = Cmdline::parse("ds=nocloud;s=http://10.0.0.1/seed?a=b");
        assert_eq!(c.get("ds"), Some("nocloud;s=http://10.0.0.1/seed?a=b"));
    }
}
