//! The node's image store: a directory of OCI image layouts (each
//! `<root>/<name>/` holding `oci-layout`, `index.json` and `blobs/sha256/…`)
//! shipped in the node image, because no registry can be reached. An image is
//! found by the name annotations of `index.json`; its layers are unpacked once
//! into a read-only directory keyed by the manifest digest, which every
//! container of that image uses as its overlayfs lower layer.

mod defaults;
mod layer;
mod reference;

pub use defaults::{ImageDefaults, UserError};
pub use layer::{apply_layer, LayerError};
pub use reference::{ImageReference, ReferenceError};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// Where the node image ships its OCI layouts.
pub use kelson_base::paths::IMAGE_LAYOUTS as DEFAULT_LAYOUTS_DIR;
/// Where unpacked images live, one directory per manifest digest.
pub const DEFAULT_UNPACK_DIR: &str = "/var/lib/kelson/images/unpacked";

/// containerd's annotation: the full reference (`docker.io/library/busybox:1.36`).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation: a full reference, or only a tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an image could not be resolved. [`ResolveError::NotFound`] is the one
/// the pods side reports as `ErrImageNeverPull`: the store is all there is.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// image {reference} is not in the image store {store} (no registry is reachable, so it is never pulled){unreadable}
    #[error(
        "image {reference} is not in the image store {store} (no registry is reachable, so it is never pulled){}",
        unreadable_note(unreadable)
    )]
    NotFound {
        reference: String,
        store: PathBuf,
        /// Layouts whose index.json could not be read, any of which might
        /// have held the image.
        unreadable: Vec<String>,
    },
    /// reading {path}
    #[error("reading {path}")]
    Read { path: PathBuf, source: io::Error },
    /// parsing {path}
    #[error("parsing {path}")]
    Parse { path: PathBuf, source: oci_spec::OciSpecError },
    /// blob {path} does not match its digest {expected} (found {actual})
    #[error("blob {path} does not match its digest {expected} (found {actual})")]
    DigestMismatch { path: PathBuf, expected: String, actual: String },
    /// {path}: {reason}
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
}

/// Why an image's layers could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// {action} {path}
    #[error("{action} {path}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// blob {path} does not match its digest {expected} (found {actual})
    #[error("blob {path} does not match its digest {expected} (found {actual})")]
    DigestMismatch { path: PathBuf, expected: String, actual: String },
    /// layer {digest} of {image}: media type {media_type} is not a tar, tar+gzip or tar+zstd layer
    #[error("layer {digest} of {image}: media type {media_type} is not a tar, tar+gzip or tar+zstd layer")]
    MediaType { image: String, digest: String, media_type: String },
    /// layer {digest} of {image}: {error}
    ///
    /// The layer's error is part of this message rather than its source:
    /// callers show this one line (the store's tests read it whole).
    #[error("layer {digest} of {image}: {error}")]
    Layer { image: String, digest: String, error: LayerError },
}

/// An image found in the store, with its manifest and config read and their
/// digests checked.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as asked for, normalised.
    pub reference: ImageReference,
    /// The OCI layout directory it was found in.
    pub layout: PathBuf,
    /// `sha256:…` of the manifest: the image's identity in the unpack cache.
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

impl ResolveError {
    /// Whether the image is simply not in the store (Kubernetes'
    /// `ErrImageNeverPull`), as opposed to a store that is broken.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

impl ResolvedImage {
    /// Entrypoint, Cmd, Env, WorkingDir and User from the image config.
    pub fn defaults(&self) -> ImageDefaults {
        let Some(config) = self.config.config() else { return ImageDefaults::default() };
        ImageDefaults {
            entrypoint: config.entrypoint().clone().unwrap_or_default(),
            cmd: config.cmd().clone().unwrap_or_default(),
            env: config.env().clone().unwrap_or_default(),
            working_dir: config.working_dir().clone().filter(|d| !d.is_empty()),
            user: config.user().clone().filter(|u| !u.is_empty()),
        }
    }
}

/// The image store: OCI layouts to read from, and a directory to unpack into.
#[derive(Debug, Clone)]
pub struct ImageStore {
    layouts: PathBuf,
    unpacked: PathBuf,
}

impl ImageStore {
    pub fn new(layouts: impl Into<PathBuf>, unpacked: impl Into<PathBuf>) -> Self {
        Self { layouts: layouts.into(), unpacked: unpacked.into() }
    }

    /// Finds `reference` in the store. A layout's manifests are named by
    /// `io.containerd.image.name`, or by `org.opencontainers.image.ref.name`
    /// holding either a full reference or only a tag (then the layout's
    /// directory name is the repository, so `busybox/` with ref name `1.36`
    /// is `busybox:1.36`). A digest reference matches the manifest digest.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ResolveError> {
        let wanted = ImageReference::parse(reference)?;
        let mut layouts: Vec<PathBuf> = match fs::read_dir(&self.layouts) {
            Ok(entries) => {
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("index.json").is_file()).collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ResolveError::Read { path: self.layouts.clone(), source }),
        };
        // Sorted so that two layouts naming the same image resolve the same way on every boot.
        layouts.sort();
        // One broken layout must not make every other image unresolvable.
        let mut unreadable = Vec::new();
        for layout in layouts {
            let index_path = layout.join("index.json");
            let index = match ImageIndex::from_file(&index_path) {
                Ok(index) => index,
                Err(error) => {
                    let error = crate::error_chain(&error);
                    tracing::warn!(path = %index_path.display(), %error, "skipping an unreadable image layout");
                    unreadable.push(format!("{}: {error}", index_path.display()));
                    continue;
                }
            };
            for descriptor in index.manifests() {
                if names_of(&layout, descriptor).iter().any(|stored| wanted.matches(stored)) {
                    return self.load(wanted, &layout, descriptor);
                }
            }
        }
        Err(ResolveError::NotFound { reference: wanted.to_string(), store: self.layouts.clone(), unreadable })
    }

    fn load(
        &self,
        reference: ImageReference,
        layout: &Path,
        descriptor: &Descriptor,
    ) -> Result<ResolvedImage, ResolveError> {
        let mut descriptor = descriptor.clone();
        // A multi-platform index: descend to this machine's manifest.
        if *descriptor.media_type() == MediaType::ImageIndex
            || matches!(descriptor.media_type(), MediaType::Other(t) if t == "application/vnd.docker.distribution.manifest.list.v2+json")
        {
            let path = blob_path(layout, descriptor.digest().as_ref());
            let bytes = read_verified(&path, descriptor.digest().as_ref())?;
            let nested = ImageIndex::from_reader(bytes.as_slice())
                .map_err(|source| ResolveError::Parse { path: path.clone(), source })?;
            descriptor = nested
                .manifests()
                .iter()
                .find(|d| {
                    d.platform()
                        .as_ref()
                        .is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == oci_arch())
                })
                .cloned()
                .ok_or_else(|| ResolveError::Unsupported {
                    path: path.clone(),
                    reason: format!("no manifest for linux/{}", oci_arch()),
                })?;
        }
        let manifest_digest = descriptor.digest().to_string();
        let manifest_path = blob_path(layout, &manifest_digest);
        let bytes = read_verified(&manifest_path, &manifest_digest)?;
        let manifest = ImageManifest::from_reader(bytes.as_slice())
            .map_err(|source| ResolveError::Parse { path: manifest_path.clone(), source })?;
        let config_digest = manifest.config().digest().to_string();
        let config_path = blob_path(layout, &config_digest);
        let bytes = read_verified(&config_path, &config_digest)?;
        let config = ImageConfiguration::from_reader(bytes.as_slice())
            .map_err(|source| ResolveError::Parse { path: config_path, source })?;
        Ok(ResolvedImage { reference, layout: layout.to_owned(), manifest_digest, manifest, config })
    }

    /// The directory `image` is unpacked in, whether or not it exists yet.
    pub fn unpacked_dir(&self, image: &ResolvedImage) -> PathBuf {
        self.unpacked.join(image.manifest_digest.replace(':', "-"))
    }

    /// Unpacks `image`'s layers in order into its read-only lower directory
    /// and returns it; an image unpacked before is not unpacked again. The
    /// layers go into a temporary directory renamed into place at the end, so
    /// a crash halfway never leaves a partial tree that looks complete.
    pub fn unpack(&self, image: &ResolvedImage) -> Result<PathBuf, UnpackError> {
        let target = self.unpacked_dir(image);
        if target.is_dir() {
            return Ok(target);
        }
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| UnpackError::Io { action, path, source }
        };
        fs::create_dir_all(&self.unpacked).map_err(io_err("creating", &self.unpacked))?;
        let prefix = format!(".partial-{}-", image.manifest_digest.replace(':', "-"));
        self.remove_stale_partials(&prefix)?;
        let temp = self.unpacked.join(format!("{prefix}{}", std::process::id()));
        if temp.exists() {
            fs::remove_dir_all(&temp).map_err(io_err("removing a stale", &temp))?;
        }
        fs::create_dir(&temp).map_err(io_err("creating", &temp))?;
        let result = self.unpack_into(image, &temp).and_then(|()| {
            // Every file of the tree must be on disk before the rename makes it look complete.
            syncfs(&temp).map_err(io_err("syncing the filesystem of", &temp))?;
            match fs::rename(&temp, &target) {
                Ok(()) => Ok(()),
                // Another unpacker finished first: its tree is as good as ours.
                Err(_) if target.is_dir() => fs::remove_dir_all(&temp).map_err(io_err("removing", &temp)),
                Err(source) => Err(UnpackError::Io { action: "renaming into place", path: target.clone(), source }),
            }
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result?;
        sync_dir(&self.unpacked).map_err(io_err("syncing", &self.unpacked))?;
        Ok(target)
    }

    /// Removes what unpacks of this image by processes no longer running left
    /// behind (a crash or power loss mid-unpack); a live process's is its own.
    fn remove_stale_partials(&self, prefix: &str) -> Result<(), UnpackError> {
        let entries = fs::read_dir(&self.unpacked).map_err(|source| UnpackError::Io {
            action: "listing",
            path: self.unpacked.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
            if pid
                .parse::<u32>()
                .is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
            {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|source| UnpackError::Io {
                    action: "removing a stale",
                    path,
                    source,
                })?;
            }
        }
        Ok(())
    }

    fn unpack_into(&self, image: &ResolvedImage, root: &Path) -> Result<(), UnpackError> {
        let image_name = image.reference.to_string();
        for layer in image.manifest.layers() {
            let digest = layer.digest().to_string();
            let path = blob_path(&image.layout, &digest);
            verify_file(&path, &digest)?;
            let file = File::open(&path).map_err(|source| UnpackError::Io {
                action: "opening",
                path: path.clone(),
                source,
            })?;
            let reader = BufReader::new(file);
            let layer_err = |error| UnpackError::Layer { image: image_name.clone(), digest: digest.clone(), error };
            match Compression::of(layer.media_type()) {
                Some(Compression::None) => apply_layer(reader, root).map_err(layer_err)?,
                Some(Compression::Gzip) => {
                    apply_layer(flate2::bufread::MultiGzDecoder::new(reader), root).map_err(layer_err)?
                }
                Some(Compression::Zstd) => {
                    let decoder = zstd::stream::read::Decoder::with_buffer(reader)
                        .map_err(|source| UnpackError::Io { action: "starting zstd on", path: path.clone(), source })?;
                    apply_layer(decoder, root).map_err(layer_err)?
                }
                None => {
                    return Err(UnpackError::MediaType {
                        image: image_name,
                        digest,
                        media_type: layer.media_type().to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn of(media_type: &MediaType) -> Option<Self> {
        match media_type {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Self::None),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Some(Self::Gzip),
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Some(Self::Zstd),
            MediaType::Other(t) => match t.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
                "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Self::Gzip),
                "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Self::Zstd),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The names a manifest descriptor of `layout` answers to.
fn names_of(layout: &Path, descriptor: &Descriptor) -> Vec<ImageReference> {
    let digest = descriptor.digest().to_string();
    let with_digest = |r: ImageReference| ImageReference { digest: Some(digest.clone()), ..r };
    let mut names = Vec::new();
    let annotations = descriptor.annotations().clone().unwrap_or_default();
    if let Some(full) = annotations.get(ANNOTATION_CONTAINERD_NAME).and_then(|n| ImageReference::parse(n).ok()) {
        names.push(with_digest(full));
    }
    if let Some(ref_name) = annotations.get(ANNOTATION_REF_NAME) {
        let is_bare_tag = !ref_name.contains('/') && !ref_name.contains(':') && !ref_name.contains('@');
        let dir_name = layout.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let candidate = if is_bare_tag { format!("{dir_name}:{ref_name}") } else { ref_name.clone() };
        if let Ok(reference) = ImageReference::parse(&candidate) {
            names.push(with_digest(reference));
        }
    }
    names
}

fn unreadable_note(unreadable: &[String]) -> String {
    if unreadable.is_empty() {
        String::new()
    } else {
        format!("; unreadable layouts: {}", unreadable.join("; "))
    }
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(algorithm).join(hex)
}

fn read_verified(path: &Path, digest: &str) -> Result<Vec<u8>, ResolveError> {
    let bytes = fs::read(path).map_err(|source| ResolveError::Read { path: path.to_owned(), source })?;
    let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
    if actual != digest {
        return Err(ResolveError::DigestMismatch { path: path.to_owned(), expected: digest.to_owned(), actual });
    }
    Ok(bytes)
}

fn verify_file(path: &Path, digest: &str) -> Result<(), UnpackError> {
    let io_err = |source| UnpackError::Io { action: "reading", path: path.to_owned(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != digest {
        return Err(UnpackError::DigestMismatch { path: path.to_owned(), expected: digest.to_owned(), actual });
    }
    Ok(())
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn syncfs(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path)?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
