//! Manifest errors: every one names the file, the field's path in the
//! document (`spec.containers[0].resources.limits.memory`) and the reason.

use std::fmt;
use std::path::PathBuf;

/// One problem with one field of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// The field, as Kubernetes spells it: `spec.volumes[1].hostPath.type`.
    /// `document` when the problem is with the document as a whole.
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { path: path.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// A manifest file that does not give a pod Kelson can run. Cloneable and
/// comparable so the manifest set can tell a new problem from one already
/// reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The io error is kept as text: an `io::Error` can be neither cloned
    /// nor compared.
    #[error("{}: cannot be read: {reason}", file.display())]
    Read { file: PathBuf, reason: String },
    /// Every problem found in the file, one per line.
    #[error("{}", render(file, errors))]
    Invalid { file: PathBuf, errors: Vec<FieldError> },
}

impl ManifestError {
    pub fn file(&self) -> &std::path::Path {
        match self {
            ManifestError::Read { file, .. } | ManifestError::Invalid { file, .. } => file,
        }
    }

    /// The field errors (empty for a read error).
    pub fn errors(&self) -> &[FieldError] {
        match self {
            ManifestError::Read { .. } => &[],
            ManifestError::Invalid { errors, .. } => errors,
        }
    }
}

fn render(file: &std::path::Path, errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {e}", file.display())).collect::<Vec<_>>().join("\n")
}

/// Collects field errors while a manifest is checked, so that one pass
/// reports all of a file's problems, not only the first.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<FieldError>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(path, reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_manifest_lists_each_problem_on_its_own_line_with_the_file() {
        let err = ManifestError::Invalid {
            file: PathBuf::from("/m/etcd.yaml"),
            errors: vec![
                FieldError::new("metadata.name", "is required"),
                FieldError::new("spec.containers", "at least one container is required"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "/m/etcd.yaml: metadata.name: is required\n\
             /m/etcd.yaml: spec.containers: at least one container is required"
        );
        assert_eq!(err.errors().len(), 2);
    }
}
