//! cloud-init NoCloud seed images: a small FAT filesystem labelled CIDATA
//! holding `meta-data` and `user-data`, built in memory with `fatfs`
//! (no mount, no loop device, no vfat driver needed on the host).

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};
use serde::Serialize;
use std::io::{Cursor, Write};

/// FAT12 fits comfortably: a machine config with its certificates is tens of KiB.
pub const SEED_IMAGE_BYTES: usize = 1024 * 1024;

/// The label cloud-init's NoCloud datasource looks for, space-padded to
/// FAT's 11 bytes.
pub const VOLUME_LABEL: &[u8; 11] = b"CIDATA     ";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("formatting the FAT filesystem")]
    Format(#[source] std::io::Error),
    #[error("opening the fresh FAT filesystem")]
    Open(#[source] std::io::Error),
    #[error("writing {file} into the seed image ({len} bytes; the image is {SEED_IMAGE_BYTES} bytes)")]
    WriteFile {
        file: &'static str,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("closing the FAT filesystem")]
    Close(#[source] std::io::Error),
    #[error("rendering meta-data")]
    MetaData(#[source] serde_saphyr::SerializeError),
}

/// NoCloud's meta-data keys, written as YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetaData {
    /// Changes whenever the seed's content should count as a new instance.
    pub instance_id: String,
    pub local_hostname: String,
}

impl MetaData {
    pub fn to_yaml(&self) -> Result<String, SeedError> {
        serde_saphyr::to_string(self).map_err(SeedError::MetaData)
    }
}

/// A seed image holding `meta-data` and `user-data`. `volume_id` is FAT's
/// serial number, which Linux shows as the filesystem UUID.
pub fn build_seed_image(meta_data: &MetaData, user_data: &str, volume_id: u32) -> Result<Vec<u8>, SeedError> {
    let mut image = Cursor::new(vec![0u8; SEED_IMAGE_BYTES]);
    let options = FormatVolumeOptions::new().fat_type(FatType::Fat12).volume_label(*VOLUME_LABEL).volume_id(volume_id);
    fatfs::format_volume(&mut image, options).map_err(SeedError::Format)?;
    let meta_data = meta_data.to_yaml()?;
    {
        let fs = FileSystem::new(&mut image, FsOptions::new()).map_err(SeedError::Open)?;
        for (file, content) in [("meta-data", meta_data.as_bytes()), ("user-data", user_data.as_bytes())] {
            let wrap = |source| SeedError::WriteFile { file, len: content.len(), source };
            let mut handle = fs.root_dir().create_file(file).map_err(wrap)?;
            handle.truncate().map_err(wrap)?;
            handle.write_all(content).map_err(wrap)?;
            handle.flush().map_err(wrap)?;
        }
        fs.unmount().map_err(SeedError::Close)?;
    }
    Ok(image.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn meta() -> MetaData {
        MetaData { instance_id: "kelson-0123456789abcdef-demo-cp-1".into(), local_hostname: "demo-cp-1".into() }
    }

    #[test]
    fn meta_data_is_yaml_with_cloud_init_key_names() {
        let yaml = meta().to_yaml().unwrap();
        assert_eq!(yaml, "instance-id: kelson-0123456789abcdef-demo-cp-1\nlocal-hostname: demo-cp-1\n");
    }

    #[test]
    fn the_image_reads_back_with_label_and_both_files() {
        let user_data = "apiVersion: kelson.dev/v1alpha1\nkind: MachineConfig\n";
        let image = build_seed_image(&meta(), user_data, 0x1234_5678).unwrap();
        assert_eq!(image.len(), SEED_IMAGE_BYTES);
        let fs = FileSystem::new(Cursor::new(image), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat12);
        assert_eq!(fs.volume_label(), "CIDATA");
        assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some("CIDATA"));
        assert_eq!(fs.volume_id(), 0x1234_5678);
        let mut text = String::new();
        fs.root_dir().open_file("user-data").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, user_data);
        text.clear();
        fs.root_dir().open_file("meta-data").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, meta().to_yaml().unwrap());
    }

    #[test]
    fn content_larger_than_the_image_is_an_error_naming_the_file() {
        let huge = "x".repeat(SEED_IMAGE_BYTES);
        let err = build_seed_image(&meta(), &huge, 1).unwrap_err();
        assert!(err.to_string().starts_with("writing user-data into the seed image"), "{err}");
    }
}
