//! One build for several platforms (`--custom-platform linux/amd64,linux/arm64`), as BuildKit
//! does it: the Dockerfile is built once per target platform, each with its own `TARGET*`
//! automatic ARGs and the same `BUILD*` ones; each platform's image is pushed by digest, then one
//! OCI image index naming them (with their platforms) is pushed to every destination with its
//! tag. `--oci-layout-path` holds every platform's blobs and the index (the layout's
//! `index.json` names the index, as BuildKit's OCI exporter writes it); `--tar-path` is then that
//! layout as a tar (an OCI archive: `podman load` and `skopeo copy oci-archive:` read it). The
//! result files name the index digest, which is what a client pulls by.
//!
//! The platforms are built one after the other.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use kiln_oci::registry::{Registry, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use serde_json::json;
use tracing::info;

use super::error::io_err;
use super::publish::{self, tag_of, ANNOTATION_CREATED};
use super::{secs, BuildError, BuildRequest, BuildResult};
use crate::output;

/// One platform's finished image.
struct Member {
    platform: kiln_oci::platform::Platform,
    result: BuildResult,
}

pub fn build_platforms(req: &BuildRequest) -> Result<BuildResult, BuildError> {
    let started = Instant::now();
    let count = req.platforms.len();
    let names: Vec<String> = req.platforms.iter().map(ToString::to_string).collect();
    info!("building for {count} platforms: {}", names.join(", "));
    // `--tar-path` is written from a layout the platform builds fill.
    let tar_layout = match &req.outputs.tar_path {
        Some(_) => {
            Some(tempfile::tempdir().map_err(io_err("creating a directory for --tar-path"))?)
        }
        None => None,
    };
    let layout_dir: Option<String> = req.outputs.oci_layout_path.clone().or_else(|| {
        tar_layout
            .as_ref()
            .map(|d| d.path().join("layout").display().to_string())
    });
    let mut members = Vec::new();
    for (n, platform) in req.platforms.iter().enumerate() {
        let one = Instant::now();
        info!("platform {}/{count}: {platform}", n + 1);
        let mut sub = req.clone();
        sub.platform = platform.clone();
        sub.platforms = vec![platform.clone()];
        sub.platform_explicit = true;
        sub.registry.platform = platform.clone();
        sub.index_member = true;
        sub.outputs = super::request::Outputs {
            oci_layout_path: layout_dir.clone(),
            ..Default::default()
        };
        let result = super::build(&sub)?;
        info!(
            "platform {}/{count}: {platform} built as {} in {}",
            n + 1,
            result.digest,
            secs(one.elapsed())
        );
        members.push(Member {
            platform: platform.clone(),
            result,
        });
    }
    let index = index_bytes(&members)?;
    let digest = kiln_oci::registry::sha256_digest(&index);
    let mut references = Vec::new();
    if !req.no_push && !req.destinations.is_empty() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting the async runtime"))?;
        let work = tempfile::tempdir().map_err(io_err("creating a work directory"))?;
        let registry = Registry::new(super::registry_options(req, work.path()))
            .map_err(BuildError::registry("setting up the registry client"))?;
        for dest in &req.destinations {
            let pushed = Instant::now();
            runtime
                .block_on(registry.push_image(dest, &[], &index, MEDIA_TYPE_OCI_INDEX))
                .map_err(BuildError::registry(format!(
                    "pushing the image index to {dest}"
                )))?;
            info!(
                "pushed {dest}@{digest} (image index of {count} platforms) in {}",
                secs(pushed.elapsed())
            );
            references.push(format!("{dest}@{digest}"));
        }
    }
    if let Some(dir) = &layout_dir {
        add_index_to_layout(req, dir, &index, &members)?;
    }
    if let (Some(tar), Some(dir)) = (&req.outputs.tar_path, &layout_dir) {
        output::write_dir_tar(Path::new(dir), Path::new(tar))
            .map_err(io_err(format!("writing --tar-path {tar}")))?;
        info!("wrote OCI archive {tar} (image index of {count} platforms)");
    }
    let cache = members
        .iter()
        .filter_map(|m| m.result.cache)
        .reduce(|a, b| kiln_common::termination::CacheCounts {
            hits: a.hits + b.hits,
            misses: a.misses + b.misses,
        });
    let result = BuildResult {
        digest: digest.clone(),
        references,
        manifest: index,
        config: Vec::new(),
        commit: members.first().and_then(|m| m.result.commit.clone()),
        cache,
        size: members.iter().map(|m| m.result.size).sum(),
    };
    info!(
        "built {digest} ({count} platforms) in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    publish::write_result_files(req, &result)?;
    Ok(result)
}

/// The OCI image index of the platform images, in the order the platforms were named.
fn index_bytes(members: &[Member]) -> Result<Vec<u8>, BuildError> {
    let manifests: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            let mut platform = json!({
                "architecture": m.platform.architecture,
                "os": m.platform.os,
            });
            if let Some(v) = &m.platform.variant {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": m.result.digest,
                "size": m.result.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec(&index).map_err(|source| BuildError::Serialize {
        what: "image index",
        source,
    })
}

/// Names the index in the layout's `index.json` (the platform builds wrote every blob), tagged
/// with the first destination's tag and dated like a single image's entry.
fn add_index_to_layout(
    req: &BuildRequest,
    dir: &str,
    index: &[u8],
    members: &[Member],
) -> Result<(), BuildError> {
    let layout_err = |source| BuildError::Layout {
        path: dir.to_string(),
        source,
    };
    let layout = kiln_oci::registry::layout::OciLayout::open(Path::new(dir)).map_err(layout_err)?;
    let ref_name = req
        .destinations
        .first()
        .and_then(|d| tag_of(d))
        .unwrap_or_else(|| "latest".to_string());
    let created = members
        .first()
        .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.result.config).ok())
        .and_then(|c| c.get("created")?.as_str().map(str::to_string))
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(&c).ok())
        .map(|c| {
            c.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
    let annotations: BTreeMap<String, String> = created
        .map(|c| (ANNOTATION_CREATED.to_string(), c))
        .into_iter()
        .collect();
    layout
        .add_manifest_annotated(index, MEDIA_TYPE_OCI_INDEX, Some(&ref_name), &annotations)
        .map_err(layout_err)?;
    info!("wrote OCI layout {dir} (ref {ref_name}: image index)");
    Ok(())
}
