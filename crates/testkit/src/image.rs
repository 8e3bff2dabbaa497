//! Small test images made without kiln's builder: layers from tar bytes or files, an OCI config
//! and manifest, written into an OCI layout or pushed with skopeo. It must stay deterministic
//! (fixed mtimes, seeded noise) and must not judge anything itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_oci::registry::{
    sha256_digest, Blob, BlobSource, OciLayout, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST,
};
use serde_json::json;

use crate::tools::skopeo_push_layout;

/// The media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// One layer blob on disk.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    /// The digest of the uncompressed tar.
    pub diff_id: String,
    pub media_type: String,
}

impl Layer {
    /// Gzips `tar` at `level` into a file under `work`.
    pub fn gzip(work: &Path, tar: &[u8], level: flate2::Compression) -> Layer {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
        gz.write_all(tar).expect("gzip in memory");
        let gz = gz.finish().expect("gzip in memory");
        let digest = sha256_digest(&gz);
        std::fs::create_dir_all(work).expect("layer directory");
        let path = work.join(format!("layer-{}.tar.gz", &digest["sha256:".len()..][..16]));
        std::fs::write(&path, &gz).expect("write layer");
        Layer {
            path,
            digest,
            size: gz.len() as u64,
            diff_id: sha256_digest(tar),
            media_type: MEDIA_TYPE_LAYER_GZIP.to_string(),
        }
    }
}

/// A tar holding one regular file `name` (mode 0644, a fixed mtime) with `content`.
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar);
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, content).expect("tar in memory");
        b.finish().expect("tar in memory");
    }
    tar
}

/// `len` incompressible, deterministic bytes (xorshift from `seed`).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An image: its layers, config and OCI manifest, with their digests.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

impl TestImage {
    /// The image of `layers` with `config` (a JSON object; its `rootfs` is filled in here).
    pub fn new(layers: Vec<Layer>, mut config: serde_json::Value) -> TestImage {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
        let config = serde_json::to_vec(&config).expect("config JSON");
        let config_digest = sha256_digest(&config);
        let descriptors: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_TYPE_OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": descriptors
        }))
        .expect("manifest JSON");
        TestImage {
            layers,
            config,
            config_digest,
            manifest_digest: sha256_digest(&manifest),
            manifest,
        }
    }

    /// One layer holding `hello.txt` with `content`, for `arch`: the small image of the
    /// registry tests.
    pub fn hello(work: &Path, arch: &str, content: &str) -> TestImage {
        let tar = tar_with_file("hello.txt", content.as_bytes());
        let layer = Layer::gzip(work, &tar, flate2::Compression::default());
        TestImage::new(
            vec![layer],
            json!({
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                "created": "2023-11-14T22:13:20Z",
                "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "kiln test"}]
            }),
        )
    }

    /// One layer holding 300,000 incompressible bytes made from `seed`, so bodies can be cut in
    /// the middle; different seeds make different images.
    pub fn noise(work: &Path, seed: u64) -> TestImage {
        let tar = tar_with_file("noise.bin", &noise(seed, 300_000));
        let layer = Layer::gzip(work, &tar, flate2::Compression::fast());
        TestImage::new(
            vec![layer],
            json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "history": [{"created_by": format!("kiln fault test {seed}")}]
            }),
        )
    }

    /// The first (for most test images, the only) layer.
    pub fn layer(&self) -> &Layer {
        &self.layers[0]
    }

    /// The config as a blob to push.
    pub fn config_blob(&self) -> Blob {
        Blob {
            digest: self.config_digest.clone(),
            size: self.config.len() as u64,
            source: BlobSource::Bytes(self.config.clone()),
            mount_from: None,
            fresh: false,
        }
    }

    /// Every blob to push, layers first, then the config; the layers name `mount_from` as the
    /// repository they may be mounted from.
    pub fn blobs(&self, mount_from: Option<&str>) -> Vec<Blob> {
        let mut blobs: Vec<Blob> = self
            .layers
            .iter()
            .map(|l| Blob {
                digest: l.digest.clone(),
                size: l.size,
                source: BlobSource::File(l.path.clone()),
                mount_from: mount_from.map(str::to_string),
                fresh: false,
            })
            .collect();
        blobs.push(self.config_blob());
        blobs
    }

    /// Writes the image into `layout` with kiln's layout writer, tagged `ref_name` when given.
    pub fn write_to_layout(&self, layout: &OciLayout, ref_name: Option<&str>) {
        for l in &self.layers {
            layout
                .write_blob_file(&l.path, &l.digest)
                .expect("write layer to the layout");
        }
        assert_eq!(
            layout
                .write_blob_bytes(&self.config)
                .expect("write config to the layout"),
            self.config_digest
        );
        let d = layout
            .add_manifest(&self.manifest, MEDIA_TYPE_OCI_MANIFEST, ref_name)
            .expect("add the manifest to the layout");
        assert_eq!(d, self.manifest_digest);
    }

    /// Puts the image into `reference` with skopeo, bypassing kiln's registry client (through an
    /// OCI layout at `work/layout`).
    pub fn skopeo_push(&self, work: &Path, reference: &str) {
        let dir = work.join("layout");
        let layout = OciLayout::create(&dir).expect("create the OCI layout");
        self.write_to_layout(&layout, Some("v1"));
        skopeo_push_layout(&dir, "v1", reference, &[]);
    }
}
