//! A layer blob on disk and its identities. Shared by snapshot, cache, registry and image code;
//! holds no logic that reads or writes layers.

use std::path::PathBuf;

/// Layer media types are defined once, with the other OCI media types.
pub use kiln_oci::image::{
    MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD,
};

/// A compressed layer stored in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Where the (compressed) blob is.
    pub path: PathBuf,
    /// `sha256:<hex>` of the compressed blob (the manifest descriptor digest).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the config `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Compressed size in bytes.
    pub size: u64,
    pub media_type: String,
}
