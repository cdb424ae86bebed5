//! The layers a node must remember across reboots: the last cloud-init
//! seed it accepted (so it boots the same way once the seed is removed) and
//! the config applied over the API. Image defaults and the command line are
//! read afresh at every boot and never stored.
//!
//! Files are written through [`kelson_base::atomic::write_atomic`], mode 0600
//! because layers carry keys and tokens, so a power cut leaves the old
//! layer or the new one and never a torn file.

use crate::layers::{Layer, Source};
use crate::ConfigErrors;
use kelson_base::atomic::{write_atomic, AtomicWriteError};
use std::io;
use std::path::{Path, PathBuf};

pub const STATE_DIR: &str = "/var/lib/kelson/config";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the {source_label} layer is not kept across boots")]
    NotPersisted { source_label: &'static str },
    #[error("creating config directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("saving config layer to {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: AtomicWriteError,
    },
    #[error("reading saved config layer {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("saved config layer {path} no longer parses: {errors}")]
    Parse { path: PathBuf, errors: ConfigErrors },
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    pub fn path_for(&self, source: Source) -> Option<PathBuf> {
        let name = match source {
            Source::CloudInit => "cloud-init.yaml",
            Source::Api => "api.yaml",
            Source::ImageDefaults | Source::KernelCmdline => return None,
        };
        Some(self.dir.join(name))
    }

    pub fn save(&self, layer: &Layer) -> Result<PathBuf, StoreError> {
        self.save_with_header(layer, "")
    }

    /// Saves `layer` with `header` (YAML comment lines, each starting with
    /// `#` and ending with a newline) before it, in the same atomic write,
    /// so what the header says about the layer is replaced with it.
    pub fn save_with_header(&self, layer: &Layer, header: &str) -> Result<PathBuf, StoreError> {
        let path =
            self.path_for(layer.source).ok_or(StoreError::NotPersisted { source_label: layer.source.label() })?;
        std::fs::create_dir_all(&self.dir).map_err(|source| StoreError::CreateDir { dir: self.dir.clone(), source })?;
        let text = format!("{header}{}", layer.to_document());
        write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| StoreError::Save { path: path.clone(), source })?;
        Ok(path)
    }

    /// The saved layer of `source`, or `None` if there is none.
    pub fn load(&self, source: Source) -> Result<Option<Layer>, StoreError> {
        let Some(path) = self.path_for(source) else { return Ok(None) };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let document = format!("saved {} config ({})", source.label(), path.display());
        Layer::from_document(source, &document, &text).map(Some).map_err(|errors| StoreError::Parse { path, errors })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn seed() -> Layer {
        Layer::from_document(
            Source::CloudInit,
            "user-data",
            "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode:\n  hostname: saved\ncluster:\n  bootstrapToken: abcdef.0123456789abcdef\n",
        )
        .unwrap()
    }

    #[test]
    fn a_saved_layer_loads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("config"));
        assert!(store.load(Source::CloudInit).unwrap().is_none());
        let path = store.save(&seed()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = store.load(Source::CloudInit).unwrap().unwrap();
        assert_eq!(loaded.to_document(), seed().to_document());
        assert!(loaded.document.starts_with("saved cloud-init config ("), "{}", loaded.document);
    }

    #[test]
    fn a_header_is_saved_before_the_layer_and_the_layer_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let path = store.save_with_header(&seed(), "# instance-id: \"i-1\"\n").unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("# instance-id: \"i-1\"\napiVersion:"), "{text}");
        assert_eq!(store.load(Source::CloudInit).unwrap().unwrap().to_document(), seed().to_document());
    }

    #[test]
    fn a_leftover_temporary_file_from_a_torn_write_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.save(&seed()).unwrap();
        // What a power cut in the middle of the next save leaves behind.
        std::fs::write(dir.path().join(".cloud-init.yaml.tmp.77"), "apiVersion: kel").unwrap();
        let loaded = store.load(Source::CloudInit).unwrap().unwrap();
        assert_eq!(loaded.to_document(), seed().to_document());
    }

    #[test]
    fn image_defaults_and_the_command_line_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let layer = Layer::from_cmdline([("kelson.hostname", "x")]).unwrap();
        assert_eq!(
            store.save(&layer).unwrap_err().to_string(),
            "the kernel command line layer is not kept across boots"
        );
    }

    #[test]
    fn a_damaged_saved_layer_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        std::fs::write(dir.path().join("api.yaml"), "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\nnode: [\n")
            .unwrap();
        let err = store.load(Source::Api).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "saved config layer {}/api.yaml no longer parses: saved API config",
                dir.path().display()
            )),
            "{err}"
        );
    }
}
