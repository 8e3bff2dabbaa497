//! Pushing: blobs (present, mounted from another repository of the same registry, or uploaded
//! as one streamed request) and then the manifest, only once every blob it names is there.

use futures_util::{StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::Client;
use oci_spec::image::ImageManifest;
use tokio::io::AsyncReadExt;

use super::error::Attempt;
use super::reference::sha256_hex;
use super::{
    auth, parse_reference, sha256_digest, sniff_media_type, Blob, BlobSource, Direction, Reference,
    Registry, RegistryError, Side, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_MANIFEST,
};

/// Size of the pieces a file is read in when uploading; memory per upload stays at this.
const UPLOAD_READ_CHUNK: usize = 1 << 20;

/// The pieces a blob uploaded as it is written is read in (a piece is sent once that much more
/// of the file is written, or the file is finished).
pub const STREAM_PIECE: usize = 4 << 20;

/// A blob being written to a file, as its writer reports it through a watch channel: the file,
/// how many bytes of it are written, and its digest once it is complete (the file may then
/// have been renamed: `path` is the final name; a reader keeps the file it opened).
#[derive(Clone, Debug, Default)]
pub struct GrowingBlob {
    pub path: Option<std::path::PathBuf>,
    pub written: u64,
    pub digest: Option<String>,
}

/// How many blobs are uploaded (or mounted) at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// How many blobs of one push are looked at at once: a HEAD request is cheap for the client and
/// the registry, so an image's blobs are checked in one wave rather than behind each other.
const CHECK_CONCURRENCY: usize = 16;

/// A blob the build made (an image config, a layer its steps wrote: in-memory blobs and those
/// marked `fresh`) up to this size is uploaded without asking first whether the repository has
/// it: it is new in almost every push (its history and files have the build's times), so the
/// HEAD request would only add a round trip before the two of the upload.
pub(crate) const ASK_FIRST_ABOVE: u64 = 64 << 10;

/// What happened to one blob of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobOutcome {
    Present,
    Mounted,
    Uploaded,
}

impl Registry {
    /// Pushes an image: every blob the repository does not have yet (checked with HEAD;
    /// mounted from `Blob::mount_from` when that repository is on the same registry, else
    /// uploaded), then `manifest_bytes` exactly as given, only once every blob the manifest
    /// names is confirmed in the repository, so a push that fails half-way never leaves a
    /// manifest pointing at a missing blob. Blobs named by the manifest but not in `blobs`
    /// must already exist there. Each request is retried `push_retries` times on transient
    /// failures. Returns the manifest digest (`sha256:` of `manifest_bytes`).
    pub async fn push_image(
        &self,
        reference: &str,
        blobs: &[Blob],
        manifest_bytes: &[u8],
        manifest_media_type: &str,
    ) -> Result<String, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let manifest_digest = sha256_digest(manifest_bytes);
        if let Some(d) = r.digest() {
            if d != manifest_digest {
                return Err(self
                    .push_ctx(&r, &normalized, "manifest")
                    .mismatch(d, &manifest_digest));
            }
        }
        for b in blobs {
            if sha256_hex(&b.digest).is_none() {
                return Err(RegistryError::InvalidBlob {
                    blob: b.digest.clone(),
                    detail: format!("not a sha256:<64 hex> digest (pushing {normalized})"),
                });
            }
        }
        let client = self.prepared(&r, Side::Push).await?;

        // Any failure here returns before the manifest is sent; the blobs still in flight
        // are dropped with the stream. Every blob is checked at once; at most
        // UPLOAD_CONCURRENCY of them send data at a time.
        let uploads = tokio::sync::Semaphore::new(UPLOAD_CONCURRENCY);
        let outcomes: Vec<BlobOutcome> = futures_util::stream::iter(blobs.iter())
            .map(|b| self.push_blob(client, &r, &normalized, b, &uploads))
            .buffered(CHECK_CONCURRENCY)
            .try_collect()
            .await?;
        let count = |o: BlobOutcome| outcomes.iter().filter(|x| **x == o).count();
        tracing::info!(
            reference = %normalized,
            uploaded = count(BlobOutcome::Uploaded),
            mounted = count(BlobOutcome::Mounted),
            present = count(BlobOutcome::Present),
            "blobs pushed"
        );

        // The registry would refuse a manifest naming a missing blob, but saying which
        // blob is missing is more useful than its error. Checked several at a time; the
        // first missing one in manifest order is reported.
        let unlisted: Vec<String> = manifest_blob_digests(manifest_bytes)
            .into_iter()
            .filter(|d| !blobs.iter().any(|b| b.digest == *d))
            .collect();
        let checks: Vec<Result<(), RegistryError>> = futures_util::stream::iter(unlisted)
            .map(|d| {
                let (r, normalized) = (&r, &normalized);
                async move {
                    let what = format!("blob {d} (named by the manifest but not given)");
                    let ctx = self.push_ctx(r, normalized, &what);
                    let present = self
                        .retrying(Direction::Push, &ctx, || async {
                            client.blob_exists(r, &d).await.map_err(|e| ctx.attempt(e))
                        })
                        .await?;
                    if present {
                        Ok(())
                    } else {
                        Err(RegistryError::NotFound {
                            registry: r.registry().to_string(),
                            reference: normalized.clone(),
                            what,
                        })
                    }
                }
            })
            .buffered(UPLOAD_CONCURRENCY)
            .collect()
            .await;
        checks.into_iter().collect::<Result<(), RegistryError>>()?;

        let ctx = self.push_ctx(&r, &normalized, "manifest");
        let invalid_type = || {
            ctx.other(format!(
                "invalid manifest media type {manifest_media_type:?}"
            ))
        };
        self.retrying(Direction::Push, &ctx, || async {
            let content_type = manifest_media_type
                .parse()
                .map_err(|_| Attempt::fatal(invalid_type()))?;
            client
                .push_manifest_raw(&r, manifest_bytes.to_vec(), content_type)
                .await
                .map_err(|e| ctx.attempt(e))
        })
        .await?;
        tracing::info!(reference = %normalized, digest = %manifest_digest, "pushed manifest");
        Ok(manifest_digest)
    }

    /// Uploads one blob to the repository of `reference` before the image is pushed (a layer
    /// sent while later build steps run). [`Registry::push_image`] then finds it there with one
    /// HEAD request; a failure here only means that push uploads it itself.
    pub async fn push_blob_ahead(&self, reference: &str, blob: &Blob) -> Result<(), RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        let client = self.prepared(&r, Side::Push).await?;
        let uploads = tokio::sync::Semaphore::new(1);
        self.push_blob(client, &r, &normalized, blob, &uploads)
            .await
            .map(|_| ())
    }

    /// Asks the repository of `reference` for each of `digests` (several at a time), so that a
    /// later push of an image naming them neither asks again nor sends those it holds: started
    /// while the build still runs, for the layers the image takes from its base and its cache
    /// hits. Failures are left to the push, which asks again.
    pub async fn check_blobs(&self, reference: &str, digests: Vec<String>) {
        futures_util::stream::iter(digests)
            .map(|digest| async move {
                if let Err(e) = self.blob_exists(reference, &digest).await {
                    tracing::debug!(blob = %digest, "early check of {reference} failed: {e}");
                }
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect::<()>()
            .await
    }

    /// Uploads a blob while its writer is still producing it (a layer being compressed), so that
    /// the upload runs beside the writing instead of after it: one upload session, one PATCH
    /// request whose body is the file read as it grows (in pieces of [`STREAM_PIECE`], the last
    /// one smaller), committed with the digest the writer reports at the end (which the
    /// registry checks against what it received). Not retried, as a stream cannot be replayed: on any failure the caller uploads
    /// the finished file instead. Fails when the writer stops without finishing (drops its
    /// sender before setting the digest). Returns the blob's digest.
    pub async fn push_growing_blob(
        &self,
        reference: &str,
        progress: tokio::sync::watch::Receiver<GrowingBlob>,
    ) -> Result<String, RegistryError> {
        let r = parse_reference(reference)?;
        let normalized = r.whole();
        // Before anything is awaited: from the moment the writer reports the digest, another
        // push of that blob to this registry (the layer cache's) waits for this upload and
        // then mounts the blob, instead of uploading it a second time.
        let _stream = self.seen.stream(&r, progress.clone());
        let client = self.prepared(&r, Side::Push).await?;
        let path = progress
            .borrow()
            .path
            .clone()
            .ok_or_else(|| RegistryError::InvalidBlob {
                blob: "(being written)".into(),
                detail: "its writer named no file".into(),
            })?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| RegistryError::io("cannot open blob file", &path, e))?;
        let stream = futures_util::stream::try_unfold(
            (file, 0u64, progress.clone()),
            |(mut file, offset, mut rx)| async move {
                loop {
                    let (written, done) = {
                        let blob = rx.borrow_and_update();
                        (blob.written, blob.digest.is_some())
                    };
                    let ready = written.saturating_sub(offset);
                    if ready >= STREAM_PIECE as u64 || (done && ready > 0) {
                        let mut buf = vec![0u8; ready.min(STREAM_PIECE as u64) as usize];
                        file.read_exact(&mut buf).await?;
                        let next = offset + buf.len() as u64;
                        return Ok(Some((buf.into(), (file, next, rx))));
                    }
                    if done {
                        return Ok(None);
                    }
                    if rx.changed().await.is_err() && rx.borrow().digest.is_none() {
                        return Err(OciDistributionError::GenericError(Some(
                            "the blob's writer stopped before finishing it".into(),
                        )));
                    }
                }
            },
        );
        let what = "blob (uploaded as it is written)";
        let ctx = self.push_ctx(&r, &normalized, what);
        // The registry checks the digest against what it received when it commits the blob.
        let digest = || progress.borrow().digest.clone();
        client
            .push_blob_stream_then_commit(&r, stream, digest)
            .await
            .map_err(|e| ctx.map(e))?;
        let digest = progress.borrow().digest.clone().unwrap_or_default();
        self.seen.note(&r, &digest);
        Ok(digest)
    }

    /// Makes one blob present in the repository of `r`: nothing to do when it is there,
    /// else a cross-repository mount when possible, else an upload (a small in-memory blob is
    /// uploaded without asking first, see [`ASK_FIRST_ABOVE`]). A mount or upload holds a
    /// permit of `uploads`.
    async fn push_blob(
        &self,
        client: &Client,
        r: &Reference,
        normalized: &str,
        blob: &Blob,
        uploads: &tokio::sync::Semaphore,
    ) -> Result<BlobOutcome, RegistryError> {
        let what = format!("blob {}", blob.digest);
        let ctx = self.push_ctx(r, normalized, &what);
        // Another push sending this blob to the registry (to the layer cache, say) is waited
        // for: it is then mounted from where that one sent it.
        let Some(_claim) = self.seen.claim(r, &blob.digest).await else {
            tracing::debug!(blob = %blob.digest, "blob known to be in the repository, skipped");
            return Ok(BlobOutcome::Present);
        };
        let seen_elsewhere = match blob.mount_from {
            Some(_) => None,
            None => self.seen.source(r, &blob.digest),
        };
        let made_here = blob.fresh || matches!(blob.source, BlobSource::Bytes(_));
        // A mount of a blob the repository has already is answered like any other mount; a
        // blob the repository lacked when asked during the build is not asked about again.
        let ask_first = seen_elsewhere.is_none()
            && !self.seen.lacks(r, &blob.digest)
            && (!made_here || blob.size > ASK_FIRST_ABOVE || blob.mount_from.is_some());
        let exists = if ask_first {
            self.retrying(Direction::Push, &ctx, || async {
                client
                    .blob_exists(r, &blob.digest)
                    .await
                    .map_err(|e| ctx.attempt(e))
            })
            .await
        } else {
            Ok(false)
        };
        match exists {
            Ok(true) => {
                tracing::debug!(blob = %blob.digest, "blob already in the repository, skipped");
                self.seen.note(r, &blob.digest);
                return Ok(BlobOutcome::Present);
            }
            Ok(false) => self.seen.note_absent(r, &blob.digest),
            // A token scoped for push may not allow HEAD on a repository that does not
            // exist yet; uploading is then the right move.
            Err(RegistryError::Unauthorized { .. } | RegistryError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // Never closed, so acquiring only waits.
        let _permit = uploads.acquire().await.ok();
        let source = self.mount_source(r, blob).or_else(|| {
            let repository = seen_elsewhere?;
            parse_reference(&format!("{}/{repository}", r.registry())).ok()
        });
        if let Some(source) = source {
            let mounted = self
                .retrying(Direction::Push, &ctx, || async {
                    client
                        .mount_blob(r, &source, &blob.digest)
                        .await
                        .map_err(|e| ctx.attempt(e))
                })
                .await;
            match mounted {
                Ok(()) => {
                    tracing::debug!(blob = %blob.digest, from = source.repository(), "mounted blob");
                    self.seen.note(r, &blob.digest);
                    return Ok(BlobOutcome::Mounted);
                }
                // 202 (the registry started an upload instead: no access to the source,
                // or it does not have the blob) and every other refusal fall back to an
                // upload, which reports real problems itself.
                Err(e) => {
                    tracing::debug!(blob = %blob.digest, from = source.repository(), error = %e, "mount refused, uploading");
                }
            }
        }
        let invalid = |detail: String| RegistryError::InvalidBlob {
            blob: blob.digest.clone(),
            detail,
        };
        match &blob.source {
            BlobSource::Bytes(data) => {
                if data.len() as u64 != blob.size {
                    return Err(invalid(format!(
                        "{} bytes given but size says {}",
                        data.len(),
                        blob.size
                    )));
                }
                let actual = sha256_digest(data);
                if actual != blob.digest {
                    return Err(invalid(format!("the given bytes hash to {actual}")));
                }
            }
            BlobSource::File(path) => {
                let len = std::fs::metadata(path)
                    .map_err(|e| RegistryError::io("cannot stat blob file", path, e))?
                    .len();
                if len != blob.size {
                    return Err(invalid(format!(
                        "{} has {len} bytes but size says {}",
                        path.display(),
                        blob.size
                    )));
                }
            }
        }
        // Every attempt starts a new upload session with a fresh stream from the start of
        // the source. The registry checks the digest of what it receives when the upload
        // is committed, so the file is not hashed a second time here.
        self.retrying(Direction::Push, &ctx, || async {
            match &blob.source {
                BlobSource::Bytes(data) => client
                    .push_blob_stream(r, bytes_stream(data.clone()), &blob.digest, Some(blob.size))
                    .await
                    .map_err(|e| ctx.attempt(e)),
                BlobSource::File(path) => {
                    let file = tokio::fs::File::open(path).await.map_err(|e| {
                        Attempt::fatal(RegistryError::io("cannot open blob file", path, e))
                    })?;
                    client
                        .push_blob_stream(r, file_stream(file), &blob.digest, Some(blob.size))
                        .await
                        .map_err(|e| ctx.attempt(e))
                }
            }
        })
        .await?;
        tracing::debug!(blob = %blob.digest, bytes = blob.size, "uploaded blob");
        self.seen.note(r, &blob.digest);
        Ok(BlobOutcome::Uploaded)
    }

    /// The repository to mount `blob` from: its `mount_from` when that parses, is on the
    /// same registry as `r` and is another repository.
    fn mount_source(&self, r: &Reference, blob: &Blob) -> Option<Reference> {
        let source = parse_reference(blob.mount_from.as_deref()?).ok()?;
        let same_registry =
            auth::normalize_auth_key(source.registry()) == auth::normalize_auth_key(r.registry());
        (same_registry && source.repository() != r.repository()).then_some(source)
    }
}

/// Config and layer digests named by an image manifest (empty for other documents).
fn manifest_blob_digests(bytes: &[u8]) -> Vec<String> {
    let media = sniff_media_type(bytes);
    if media != MEDIA_TYPE_OCI_MANIFEST && media != MEDIA_TYPE_DOCKER_MANIFEST {
        return Vec::new();
    }
    match serde_json::from_slice::<ImageManifest>(bytes) {
        Ok(m) => std::iter::once(m.config().digest().to_string())
            .chain(m.layers().iter().map(|l| l.digest().to_string()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

// The upload streams are generic over the byte type so that oci-client's `bytes::Bytes`
// is inferred at the call site without a direct dependency on the `bytes` crate.
fn bytes_stream<B: From<Vec<u8>> + Send + 'static>(
    data: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<B, OciDistributionError>> + Send + 'static {
    futures_util::stream::once(async move { Ok(B::from(data)) })
}

fn file_stream<B: From<Vec<u8>> + Send + 'static>(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<B, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; UPLOAD_READ_CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((B::from(buf), file)))
    })
}
