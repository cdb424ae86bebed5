//! Config errors: document, field path, reason.

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{document}: {path}: {reason}")]
pub struct ConfigError {
    pub document: String,
    /// Dotted path of the field, `network.uplinks[0].mtu`; for a syntax
    /// error, `line L column C`.
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(document: &str, path: &str, reason: String) -> Self {
        ConfigError { document: document.to_owned(), path: path.to_owned(), reason }
    }
}

/// All problems found in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn new(errors: Vec<ConfigError>) -> Self {
        ConfigErrors(errors)
    }
    pub fn one(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(!ca.eq_ignore_ascii_case(cb));
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `candidates` to `name`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Turns the YAML parser's message into a [`ConfigError`]: its first line
/// reads `error: line L column C: REASON`; unknown fields get a suggestion.
pub(crate) fn from_parse_error(document: &str, message: &str) -> ConfigError {
    let first = message.lines().next().unwrap_or(message).trim_start_matches("error: ");
    let (position, reason) = match first.split_once(": ") {
        Some((pos, reason)) if pos.starts_with("line ") => (pos.to_owned(), reason.to_owned()),
        _ => ("document".to_owned(), first.to_owned()),
    };
    let mut reason = reason;
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once("`, expected one of ") {
            let candidates: Vec<&str> = expected.split(", ").map(|c| c.trim_matches('`')).collect();
            if let Some(hint) = did_you_mean(field, candidates) {
                reason = format!("unknown field `{field}` (did you mean `{hint}`?)");
            }
        }
    }
    ConfigError { document: document.to_owned(), path: position, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_unrelated_names_do_not() {
        assert_eq!(did_you_mean("podCidr", ["podCIDR", "clusterCIDR", "mtu"]), Some("podCIDR"));
        assert_eq!(did_you_mean("hostnme", ["hostname", "role"]), Some("hostname"));
        assert_eq!(did_you_mean("banana", ["hostname", "role"]), None);
    }
}
