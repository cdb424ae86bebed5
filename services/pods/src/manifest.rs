//! A manifest file (`.yaml`, `.yml` or `.json`) read into one Pod with
//! k8s-openapi's types, then checked and mapped to a [`PodSpec`] by
//! `validate`.
//!
//! The document is first read into a plain tree so that a file that is not
//! a Pod at all (`kind: Deployment`) gets that said plainly, and so that a
//! value of the wrong type is reported at its field path
//! (`spec.containers[0].ports[0].containerPort`) rather than at a line.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::error::{FieldError, ManifestError};
use crate::spec::{PodSpec, PodUid};

/// What the node tells every manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The node's name: static pods are named `<name>-<node>` and their
    /// `spec.nodeName` is set to it, as the kubelet does.
    pub node_name: Option<String>,
}

/// Whether a directory entry is a manifest: `.yaml`, `.yml` or `.json`,
/// and not hidden. Editors' swap and backup files (`.etcd.yaml.swp`,
/// `etcd.yaml~`) and `write_atomic`'s temporary files are hidden or have
/// another ending, so they are never read half-written.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && [".yaml", ".yml", ".json"].iter().any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Reads, checks and maps the manifest at `path`.
pub fn load(path: &Path, options: &LoadOptions) -> Result<PodSpec, ManifestError> {
    let bytes =
        std::fs::read(path).map_err(|e| ManifestError::Read { file: path.to_owned(), reason: e.to_string() })?;
    parse(path, &bytes, options)
}

/// Checks and maps a manifest's contents; `path` names it in errors, picks
/// the syntax (`.json` is JSON, anything else YAML) and goes into the UID.
pub fn parse(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<PodSpec, ManifestError> {
    let invalid = |errors: Vec<FieldError>| ManifestError::Invalid { file: path.to_owned(), errors };
    let tree = read_tree(path, bytes).map_err(|e| invalid(vec![e]))?;
    let pod = read_pod(tree.clone()).map_err(|e| invalid(vec![e]))?;
    let uid = pod_uid(path, &pod, options);
    let mut spec = crate::validate::pod(&pod, path, uid, options).map_err(invalid)?;
    if let Ok(typed) = serde_json::to_value(&pod) {
        unknown_fields(&tree, &typed, "", &mut spec.warnings);
    }
    Ok(spec)
}

/// Fields the document has that the Pod type does not (typos such as
/// `imagePullPolice`, or fields newer than this code): Kubernetes ignores
/// them, and so does Kelson, but it says so. Found by comparing the
/// document with the Pod written back out.
fn unknown_fields(original: &Value, typed: &Value, at: &str, out: &mut Vec<FieldError>) {
    match (original, typed) {
        (Value::Object(fields), Value::Object(known)) => {
            for (name, value) in fields {
                let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
                match known.get(name) {
                    Some(typed) => unknown_fields(value, typed, &path, out),
                    None if value.is_null() => {}
                    None => out.push(FieldError::new(path, "unknown field, ignored")),
                }
            }
        }
        (Value::Array(items), Value::Array(known)) => {
            for (i, (item, typed)) in items.iter().zip(known).enumerate() {
                unknown_fields(item, typed, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn read_pod(tree: Value) -> Result<Pod, FieldError> {
    let Value::Object(fields) = &tree else {
        return Err(FieldError::new(
            "document",
            if tree.is_null() { "is empty" } else { "is not a mapping of fields" },
        ));
    };
    match fields.get("kind") {
        None => return Err(FieldError::new("kind", "is required (kind: Pod)")),
        Some(Value::String(kind)) if kind == "Pod" => {}
        Some(other) => return Err(FieldError::new("kind", format!("is {other}; only a Pod can be a static pod"))),
    }
    match fields.get("apiVersion") {
        None => return Err(FieldError::new("apiVersion", "is required (apiVersion: v1)")),
        Some(Value::String(version)) if version == "v1" => {}
        Some(other) => return Err(FieldError::new("apiVersion", format!("is {other}; a Pod's is v1"))),
    }
    serde_path_to_error::deserialize::<_, Pod>(tree).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.inner().to_string();
        FieldError::new(if path == "." { "document".to_owned() } else { path }, reason)
    })
}

fn read_tree(path: &Path, bytes: &[u8]) -> Result<Value, FieldError> {
    let json = path.extension().is_some_and(|e| e == "json");
    if json {
        return serde_json::from_slice(bytes).map_err(|e| {
            let reason = e.to_string();
            // serde_json ends its message with " at line L column C".
            match reason.rsplit_once(" at line ") {
                Some((reason, position)) => FieldError::new(format!("line {position}"), reason),
                None => FieldError::new("document", reason),
            }
        });
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| FieldError::new("document", format!("is not UTF-8 text ({e})")))?;
    serde_saphyr::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde-saphyr's first line reads `error: line L column C: REASON`.
        let first = message.lines().next().unwrap_or(&message).trim_start_matches("error: ");
        match first.split_once(": ") {
            // The parser's own advice names its Rust API; say it for people.
            Some((position, reason)) if reason.starts_with("multiple YAML documents") => {
                FieldError::new(position, "a second YAML document starts here; a manifest holds exactly one Pod")
            }
            Some((position, reason)) if position.starts_with("line ") => FieldError::new(position, reason),
            _ => FieldError::new("document", first),
        }
    })
}

/// A digest of the node, the file's path and the pod the file describes
/// (not its bytes: a comment or reformatting does not restart anything).
/// 32 hex digits, the shape of the kubelet's static pod UIDs.
fn pod_uid(path: &Path, pod: &Pod, options: &LoadOptions) -> PodUid {
    let mut hash = Sha256::new();
    hash.update(b"host:");
    hash.update(options.node_name.as_deref().unwrap_or("").as_bytes());
    hash.update(b"\0file:");
    hash.update(path.as_os_str().as_encoded_bytes());
    hash.update(b"\0pod:");
    // The typed pod serializes fields in a fixed order and maps sorted, so
    // the same pod always gives the same bytes.
    hash.update(serde_json::to_vec(pod).unwrap_or_default());
    let digest = hash.finalize();
    PodUid(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}
