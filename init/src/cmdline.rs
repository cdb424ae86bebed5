//! The kernel command line: `key=value` words, double quotes allowed around
//! values with spaces. Kelson's own keys start with `kelson.`.

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
    fn values_may_contain_equals_signs() {
        let c = Cmdline::parse("ds=nocloud;s=http://10.0.0.1/seed?a=b");
        assert_eq!(c.get("ds"), Some("nocloud;s=http://10.0.0.1/seed?a=b"));
    }
}
