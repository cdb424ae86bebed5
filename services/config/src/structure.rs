//! Structural errors (a wrong type, an unknown or missing field), every one
//! of them with its field path.
//!
//! serde stops at a document's first error, and the YAML parser can only
//! say where it was (line and column). When the typed parse fails, the
//! document is read again as an untyped tree and walked against the JSON
//! Schema that `schemars` derives from the same types and serde attributes
//! (renames, `deny_unknown_fields`, defaults), so the check cannot drift
//! from the types. The walk collects every problem; the typed parse stays
//! the authority on what is accepted, so the walk only runs after it failed,
//! and if it finds nothing, serde's own error is reported.
//!
//! Values are never echoed (a mistyped field may hold a secret), except an
//! enum's, whose allowed values are listed.

use crate::error::{did_you_mean, from_parse_error, ConfigError, ConfigErrors};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Parses `text` strictly as a `T`; on failure, every structural problem.
pub(crate) fn parse_yaml<T: DeserializeOwned + schemars::JsonSchema>(
    document: &str,
    text: &str,
) -> Result<T, ConfigErrors> {
    let first = match serde_saphyr::from_str::<T>(text) {
        Ok(typed) => return Ok(typed),
        Err(e) => from_parse_error(document, &e.to_string()),
    };
    // A syntax error has no tree to walk: the parser's position is all.
    let tree = serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ConfigErrors::one(from_parse_error(document, &e.to_string())))?;
    Err(all_or(document, problems::<T>(&tree), first))
}

/// [`parse_yaml`] for a tree Kelson built itself.
pub(crate) fn from_tree<T: DeserializeOwned + schemars::JsonSchema>(
    document: &str,
    tree: Value,
) -> Result<T, ConfigErrors> {
    let found = problems::<T>(&tree);
    serde_json::from_value(tree)
        .map_err(|e| all_or(document, found, ConfigError::new(document, "document", e.to_string())))
}

fn all_or(document: &str, found: Vec<(String, String)>, fallback: ConfigError) -> ConfigErrors {
    if found.is_empty() {
        return ConfigErrors::one(fallback);
    }
    ConfigErrors::new(
        found.into_iter().map(|(path, reason)| ConfigError { document: document.to_owned(), path, reason }).collect(),
    )
}

/// Every structural problem of `value` as `T`: (field path, reason).
pub(crate) fn problems<T: schemars::JsonSchema>(value: &Value) -> Vec<(String, String)> {
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    let defs = root.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut out = Vec::new();
    Walk { defs: &defs, out: &mut out }.check(root, value, "");
    out
}

struct Walk<'a> {
    defs: &'a Map<String, Value>,
    out: &'a mut Vec<(String, String)>,
}

fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// How a value's kind reads in a message: "a string", "a list", ….
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true or false",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn expected(kind: &str) -> &'static str {
    match kind {
        "null" => "nothing",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        _ => "something else",
    }
}

fn matches_kind(kind: &str, value: &Value) -> bool {
    match (kind, value) {
        ("null", Value::Null) | ("boolean", Value::Bool(_)) | ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
        // A YAML plain scalar is text: the parser reads `vm.max_map_count:
        // 262144` or `mode: 0644` into a string field as written.
        ("string", Value::String(_) | Value::Number(_) | Value::Bool(_)) => true,
        ("array", Value::Array(_)) | ("object", Value::Object(_)) => true,
        _ => false,
    }
}

/// The range of an integer `format` as schemars writes it.
fn integer_range(format: &str) -> Option<(i128, i128)> {
    let range = match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" | "uint" => (0, u32::MAX.into()),
        "uint64" => (0, u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" | "int" => (i32::MIN.into(), i32::MAX.into()),
        "int64" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    };
    Some(range)
}

impl Walk<'_> {
    fn push(&mut self, path: &str, reason: String) {
        let path = if path.is_empty() { "document" } else { path };
        self.out.push((path.to_owned(), reason));
    }

    fn check(&mut self, schema: &Value, value: &Value, path: &str) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.trim_start_matches("#/$defs/");
                match self.defs.get(name) {
                    Some(def) => def.clone(),
                    None => return,
                }
            }
            None => schema.clone(),
        };
        if let Some(alternatives) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array) {
            // schemars writes `Option<T>` as `anyOf: [T, null]`.
            if value.is_null() && alternatives.iter().any(|a| a.get("type").and_then(Value::as_str) == Some("null")) {
                return;
            }
            if let Some(first) = alternatives.iter().find(|a| a.get("type").and_then(Value::as_str) != Some("null")) {
                self.check(first, value, path);
            }
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                let names: Vec<String> = allowed.iter().map(|a| format!("`{}`", a.as_str().unwrap_or("?"))).collect();
                let shown = match value {
                    Value::String(s) => format!("`{s}`"),
                    other => kind_of(other).to_owned(),
                };
                self.push(path, format!("{shown} is not one of {}", names.join(", ")));
            }
            return;
        }
        let kinds: Vec<&str> = match schema.get("type") {
            Some(Value::String(kind)) => vec![kind.as_str()],
            Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !kinds.is_empty() && !kinds.iter().any(|k| matches_kind(k, value)) {
            let wanted: Vec<&str> = kinds.iter().filter(|k| **k != "null").map(|k| expected(k)).collect();
            self.push(path, format!("expected {}, found {}", wanted.join(" or "), kind_of(value)));
            return;
        }
        match value {
            Value::Number(n) => {
                if let Some((low, high)) = schema.get("format").and_then(Value::as_str).and_then(integer_range) {
                    let inside = n.as_i64().map(i128::from).or(n.as_u64().map(i128::from));
                    if !inside.is_some_and(|v| (low..=high).contains(&v)) {
                        self.push(path, format!("expected an integer from {low} to {high}"));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, &format!("{path}[{i}]"));
                    }
                }
            }
            Value::Object(map) => self.check_object(&schema, map, path),
            _ => {}
        }
    }

    fn check_object(&mut self, schema: &Value, map: &Map<String, Value>, path: &str) {
        let empty = Map::new();
        let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        for (key, child) in map {
            let child_path = field(path, key);
            if let Some(child_schema) = properties.get(key) {
                self.check(child_schema, child, &child_path);
                continue;
            }
            match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    let reason = match did_you_mean(key, properties.keys().map(String::as_str)) {
                        Some(hint) => format!("unknown field (did you mean `{hint}`?)"),
                        None => {
                            let known: Vec<String> = properties.keys().map(|k| format!("`{k}`")).collect();
                            format!("unknown field (known: {})", known.join(", "))
                        }
                    };
                    self.push(&child_path, reason);
                }
                Some(extra @ Value::Object(_)) => self.check(extra, child, &child_path),
                _ => {}
            }
        }
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = required.as_str() {
                if !map.contains_key(name) {
                    self.push(&field(path, name), "missing (required)".to_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineConfig;

    fn problems_of(yaml: &str) -> Vec<String> {
        let value: Value = serde_saphyr::from_str(yaml).unwrap();
        problems::<MachineConfig>(&value).into_iter().map(|(p, r)| format!("{p}: {r}")).collect()
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let found = problems_of(
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostnam: a\n  role: master\n\
             network:\n  mtu: big\n  uplinks:\n    - name: eth0\n      dhcp4: [yes]\n      routes:\n        - to: 10.0.0.0/8\n\
             cluster:\n  bootstrapToken: [not, a, string]\nfiles: {}\nsysctls:\n  a.b: [1]\n  c.d: 5\n",
        );
        assert_eq!(
            found,
            [
                "node.hostnam: unknown field (did you mean `hostname`?)",
                "node.role: `master` is not one of `control-plane`, `worker`",
                "network.mtu: expected an integer, found a string",
                "network.uplinks[0].dhcp4: expected true or false, found a list",
                "network.uplinks[0].routes[0].via: missing (required)",
                "cluster.bootstrapToken: expected a string, found a list",
                "files: expected a list, found a mapping",
                "sysctls.a.b: expected a string, found a list",
            ]
        );
    }

    #[test]
    fn integers_out_of_range_and_unknown_top_level_fields() {
        assert_eq!(
            problems_of("apiVersion: x\nkind: y\nnetwork:\n  mtu: -1\nbanana: 1\n"),
            [
                "network.mtu: expected an integer from 0 to 4294967295",
                "banana: unknown field (known: `apiVersion`, `kind`, `node`, `network`, `cluster`, `pki`, `time`, \
                 `kubelet`, `kubeProxy`, `staticPods`, `files`, `sysctls`, `kernelModules`, `install`)",
            ]
        );
        assert_eq!(problems_of("node: {}\n"), ["apiVersion: missing (required)", "kind: missing (required)"]);
    }

    #[test]
    fn a_valid_document_has_no_problems() {
        assert!(problems_of("apiVersion: x\nkind: y\nsysctls:\n  vm.max_map_count: 262144\n").is_empty());
    }
}
