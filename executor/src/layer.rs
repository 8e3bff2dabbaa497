//! The one record of a layer blob and its identities, used by snapshots (the layers steps
//! write), the layer cache (the layers it finds and stores), base images and publishing. Holds
//! no logic that reads or writes layers.

use std::path::PathBuf;

use kiln_oci::image::Descriptor;

/// Layer media types are defined once, with the other OCI media types.
pub use kiln_oci::image::{
    MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD,
};

/// A compressed layer stored in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Where the (compressed) blob is, or where it goes once fetched: a base image's or a cached
    /// step's layer the build has not needed to download (yet).
    pub path: PathBuf,
    /// `sha256:<hex>` of the compressed blob (the manifest descriptor digest).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the config `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Compressed size in bytes.
    pub size: u64,
    pub media_type: String,
}

impl LayerFile {
    /// The layer's entry in an image manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: None,
        }
    }
}
