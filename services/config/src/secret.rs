//! Secrecy as a property of a field's type. A field that holds a secret
//! (a private key, a token, a file's content) is a [`Secret`]: its `Debug`,
//! `Display` and ordinary serialization show [`REDACTED`], so a log line, a
//! provenance listing or an API answer cannot carry it, and a field added
//! later is safe by being declared a `Secret`, not by being remembered in a
//! list of paths. Parsing reads the value as written; only
//! [`crate::MachineConfig::to_yaml_with_secrets`], for files kept 0600,
//! writes it back out.

use serde::{Deserialize, Serialize, Serializer};
use std::cell::Cell;

/// What a secret looks like wherever it is shown.
pub const REDACTED: &str = "<secret>";

/// A secret string. Compare and use it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself: for writing it where it belongs (a 0600 file, a
    /// kubeconfig), never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

thread_local! {
    /// Set only while [`reveal_secrets`] runs its closure on this thread.
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REVEAL.with(Cell::get) {
            serializer.serialize_str(&self.0)
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

/// Runs `f` with secrets serialized as their values, on this thread only.
/// Serialization is synchronous, so nothing else serializes a `Secret` on
/// this thread meanwhile; the flag is restored even if `f` unwinds.
pub(crate) fn reveal_secrets<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REVEAL.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REVEAL.with(|r| r.replace(true)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialization_redact_unless_revealed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<secret> <secret>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<secret>\"");
        assert_eq!(reveal_secrets(|| serde_json::to_string(&s).unwrap()), "\"hunter2\"");
        // Revealing ends with the closure.
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<secret>\"");
        let parsed: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(parsed.expose(), "hunter2");
    }
}
