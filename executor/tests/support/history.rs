//! The layer structure of an image as an independent reader sees it: one step per history entry of
//! the config, with the kind of layer that entry added (none, an empty tar, or a tar with entries),
//! read from an OCI layout that skopeo wrote. It reads and compares only; it must not unpack.

use std::fmt;
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// What one history entry added to the image's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `empty_layer: true`: the entry has no layer.
    None,
    /// A layer whose tar has no entries.
    Empty,
    /// A layer with this many tar entries.
    Files(usize),
}

impl LayerKind {
    /// Whether the two kinds differ in a way the step comparison reports: a layer with entries on
    /// one side only, or a layer (even empty) against none. Entry counts are not compared: builders
    /// legitimately differ in which parent directories they repeat, and the tree comparison
    /// already checks the result path by path.
    pub fn same_as(self, other: LayerKind) -> bool {
        matches!(
            (self, other),
            (LayerKind::None, LayerKind::None)
                | (LayerKind::Empty, LayerKind::Empty)
                | (LayerKind::Files(_), LayerKind::Files(_))
        )
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerKind::None => write!(f, "no layer"),
            LayerKind::Empty => write!(f, "an empty layer"),
            LayerKind::Files(n) => write!(f, "a layer of {n} entries"),
        }
    }
}

/// One history entry of an image config and the layer it added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub created_by: String,
    pub layer: LayerKind,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.created_by, self.layer)
    }
}

/// The number of layers the steps add (what `rootfs.diff_ids` lists).
pub fn layer_count(steps: &[Step]) -> usize {
    steps.iter().filter(|s| s.layer != LayerKind::None).count()
}

fn json_at(path: &Path) -> Result<serde_json::Value, String> {
    let text = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> Result<std::path::PathBuf, String> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("`{digest}` is not a digest"))?;
    Ok(layout.join("blobs").join(algo).join(hex))
}

/// The steps of the image tagged `tag` in the OCI layout at `layout`: every history entry in order,
/// each non-empty one matched with the next layer of the manifest, as the image spec defines.
pub fn image_steps(layout: &Path, tag: &str) -> Result<Vec<Step>, String> {
    let index = json_at(&layout.join("index.json"))?;
    let manifest_digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .ok_or_else(|| format!("{} has no manifest tagged {tag}", layout.display()))?;
    let manifest = json_at(&blob_path(layout, manifest_digest)?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| format!("manifest {manifest_digest} names no config"))?;
    let config = json_at(&blob_path(layout, config_digest)?)?;
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["digest"].as_str())
        .collect();
    let history = config["history"].as_array().cloned().unwrap_or_default();
    let with_layer = history.iter().filter(|h| h["empty_layer"] != true).count();
    if with_layer != layers.len() {
        return Err(format!(
            "{tag}: {with_layer} history entries add a layer but the manifest lists {} layers",
            layers.len()
        ));
    }
    let mut layers = layers.into_iter();
    let mut steps = Vec::new();
    for h in &history {
        let created_by = h["created_by"].as_str().unwrap_or_default().to_string();
        let layer = if h["empty_layer"] == true {
            LayerKind::None
        } else {
            let digest = layers.next().expect("counted above");
            let path = blob_path(layout, digest)?;
            match tar_entries(&path) {
                Ok(0) => LayerKind::Empty,
                Ok(n) => LayerKind::Files(n),
                Err(e) => return Err(format!("cannot read layer {digest} of {tag}: {e}")),
            }
        };
        steps.push(Step { created_by, layer });
    }
    Ok(steps)
}

/// Counts the entries of a layer blob, which may be gzip, zstd or a plain tar: the first bytes
/// tell, whatever media type the manifest claims.
fn tar_entries(path: &Path) -> io::Result<usize> {
    let mut file = BufReader::new(fs::File::open(path)?);
    let mut magic = [0u8; 4];
    let n = {
        let buf = io::BufRead::fill_buf(&mut file)?;
        let n = buf.len().min(4);
        magic[..n].copy_from_slice(&buf[..n]);
        n
    };
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(file)?)
    } else {
        Box::new(file)
    };
    let mut count = 0;
    for entry in tar::Archive::new(reader).entries()? {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// One difference between two images' steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDiff {
    /// The entry at `index` is spelled differently (both histories have the same length).
    CreatedBy {
        index: usize,
        expected: String,
        actual: String,
    },
    /// The entry at `index` (spelled alike) adds a different kind of layer.
    Layer {
        index: usize,
        created_by: String,
        expected: LayerKind,
        actual: LayerKind,
    },
    /// An entry of the expected history that the actual one lacks.
    Missing { index: usize, step: Step },
    /// An entry of the actual history that the expected one lacks.
    Extra { index: usize, step: Step },
}

impl fmt::Display for StepDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepDiff::CreatedBy {
                index,
                expected,
                actual,
            } => write!(
                f,
                "  history[{index}].created_by: {expected:?} != {actual:?}"
            ),
            StepDiff::Layer {
                index,
                created_by,
                expected,
                actual,
            } => write!(
                f,
                "  history[{index}] {created_by:?}: {expected} != {actual}"
            ),
            StepDiff::Missing { index, step } => write!(f, "  missing  history[{index}] {step}"),
            StepDiff::Extra { index, step } => write!(f, "  extra    history[{index}] {step}"),
        }
    }
}

/// Compares two histories step by step. Histories of the same length are compared entry by entry
/// (spelling, then layer kind); otherwise they are aligned on equal `created_by` (a longest common
/// subsequence) so that one inserted step shows as one extra entry, not as every later one
/// differing. Callers normalise spellings first.
pub fn diff_steps(expected: &[Step], actual: &[Step]) -> Vec<StepDiff> {
    let mut out = Vec::new();
    let layer = |i: usize, e: &Step, a: &Step, out: &mut Vec<StepDiff>| {
        if !e.layer.same_as(a.layer) {
            out.push(StepDiff::Layer {
                index: i,
                created_by: e.created_by.clone(),
                expected: e.layer,
                actual: a.layer,
            });
        }
    };
    if expected.len() == actual.len() {
        for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
            if e.created_by != a.created_by {
                out.push(StepDiff::CreatedBy {
                    index: i,
                    expected: e.created_by.clone(),
                    actual: a.created_by.clone(),
                });
            }
            layer(i, e, a, &mut out);
        }
        return out;
    }
    // lcs[i][j]: the longest common subsequence of expected[i..] and actual[j..].
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i].created_by == actual[j].created_by {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i].created_by == actual[j].created_by {
            layer(i, &expected[i], &actual[j], &mut out);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(StepDiff::Extra {
                index: j,
                step: actual[j].clone(),
            });
            j += 1;
        } else {
            out.push(StepDiff::Missing {
                index: i,
                step: expected[i].clone(),
            });
            i += 1;
        }
    }
    out
}
