//! Image references as a pod writes them (`busybox`, `registry.k8s.io/etcd:3.5.16-0`,
//! `name@sha256:…`), normalised the way Docker and containerd do so that
//! `busybox` and `docker.io/library/busybox:latest` are the same image.

use std::fmt;

const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// Why an image reference could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// image reference {reference:?}: {reason}
    #[error("image reference {reference:?}: {reason}")]
    Invalid { reference: String, reason: &'static str },
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// e.g. `docker.io`, `registry.k8s.io`, `localhost:5000`.
    pub registry: String,
    /// e.g. `library/busybox`, `etcd`.
    pub repository: String,
    /// `None` only when the reference names a digest and no tag.
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference pins content.
    pub digest: Option<String>,
}

impl ImageReference {
    /// Reads `reference`, filling in Docker's defaults: registry `docker.io`,
    /// the `library/` namespace for single-name Docker Hub images, and tag
    /// `latest` unless a digest is given.
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason| ReferenceError::Invalid { reference: reference.to_owned(), reason };
        let trimmed = reference.trim();
        if trimmed.is_empty() {
            return Err(invalid("empty"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace"));
        }
        let (name_and_tag, digest) = match trimmed.split_once('@') {
            Some((name, digest)) => {
                (name, Some(parse_digest(digest).ok_or_else(|| invalid("digest is not sha256:<64 hex digits>"))?))
            }
            None => (trimmed, None),
        };
        // A ':' after the last '/' is a tag; one before it is a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            if tag.is_empty()
                || tag.len() > 128
                || !tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                return Err(invalid("tag must be 1-128 of [A-Za-z0-9_.-]"));
            }
        }
        if name.is_empty() {
            return Err(invalid("no repository name"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
        };
        if !repository.split('/').all(valid_component) {
            return Err(invalid("repository components must be lowercase [a-z0-9._-]"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self { registry, repository, tag, digest })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether `other` names the same image: same name, and the same tag or
    /// digest where `self` has one.
    pub fn matches(&self, other: &ImageReference) -> bool {
        if self.name() != other.name() {
            return false;
        }
        match (&self.digest, &self.tag) {
            (Some(digest), _) => other.digest.as_ref() == Some(digest),
            (None, tag) => tag == &other.tag,
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:<64 lowercase hex>`, the only algorithm Kelson's store holds.
pub(crate) fn parse_digest(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))).then(|| digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_short_names_get_library_namespace_and_latest() {
        assert_eq!(parse("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(parse("busybox:1.36").to_string(), "docker.io/library/busybox:1.36");
        assert_eq!(parse("kelson/busybox:test").to_string(), "docker.io/kelson/busybox:test");
        assert_eq!(parse("docker.io/busybox"), parse("busybox"));
    }

    #[test]
    fn registry_is_recognised_by_dot_port_or_localhost() {
        let etcd = parse("registry.k8s.io/etcd:3.5.16-0");
        assert_eq!(
            (etcd.registry.as_str(), etcd.repository.as_str(), etcd.tag.as_deref()),
            ("registry.k8s.io", "etcd", Some("3.5.16-0"))
        );
        let local = parse("localhost:5000/app");
        assert_eq!(
            (local.registry.as_str(), local.repository.as_str(), local.tag.as_deref()),
            ("localhost:5000", "app", Some("latest"))
        );
    }

    #[test]
    fn digest_references_have_no_default_tag() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("registry.k8s.io/pause@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        let both = parse(&format!("busybox:1.36@{d}"));
        assert_eq!(both.tag.as_deref(), Some("1.36"));
    }

    #[test]
    fn matching_is_by_name_and_tag_or_digest() {
        let d = format!("sha256:{}", "b".repeat(64));
        let stored = ImageReference { digest: Some(d.clone()), ..parse("busybox:1.36") };
        assert!(parse("busybox:1.36").matches(&stored));
        assert!(!parse("busybox").matches(&stored));
        assert!(parse(&format!("busybox@{d}")).matches(&stored));
        assert!(!parse("alpine:1.36").matches(&stored));
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("Busybox", "repository components must be lowercase [a-z0-9._-]"),
            ("busybox:", "tag must be 1-128 of [A-Za-z0-9_.-]"),
            ("busybox@sha256:abc", "digest is not sha256:<64 hex digits>"),
            ("bad name", "contains whitespace"),
        ] {
            assert_eq!(
                ImageReference::parse(bad),
                Err(ReferenceError::Invalid { reference: bad.to_owned(), reason }),
                "{bad}"
            );
        }
    }
}
