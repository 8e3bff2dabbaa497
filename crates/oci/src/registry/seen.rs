//! What one process knows about the blobs of the repositories it pushes to: which repository
//! holds which blob (a HEAD answered 200, or the process mounted or uploaded it there), which it
//! lacked when asked (a HEAD answered 404), and which blobs are being sent to a registry now.
//!
//! A build sends the same new layer to several repositories of one registry: its layer cache
//! and the image's destination. Registries commit uploads one after another (measured on the
//! benchmark's registry: four small uploads at once take four times as long as one), so two
//! uploads of one layer cost twice what one upload and a cross-repository mount cost. A push
//! therefore claims a blob on its registry before it sends it; a second push of that blob waits
//! for the first, then mounts it from where it went ([`Seen::source`]) or, if it went nowhere,
//! claims it and sends it itself. A blob uploaded as it is written (a big layer beside its
//! compressor) has no digest until its writer finishes, so it cannot be claimed up front; it is
//! registered as a stream instead ([`Seen::stream`]), and once its writer has reported the
//! digest, a push of that digest waits for the stream as for a claim.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::auth::normalize_auth_key;
use super::{GrowingBlob, Reference};

/// (registry, repository, digest) of blobs known to be there, and the in-flight claims.
#[derive(Default)]
pub(super) struct Seen {
    present: Mutex<HashSet<(String, String, String)>>,
    /// Asked and not there: a push sends these without asking again (if another client put
    /// one there since, the registry takes the upload or mount all the same).
    absent: Mutex<HashSet<(String, String, String)>>,
    /// (registry, digest) of blobs a push is sending; the receiver ends when it is done.
    sending: Mutex<HashMap<(String, String), tokio::sync::watch::Receiver<()>>>,
    /// Uploads of blobs as they are written, by number: the registry, the writer's progress
    /// (its digest once finished) and a receiver that ends when the upload is done.
    streams: Mutex<HashMap<u64, StreamEntry>>,
    next_stream: std::sync::atomic::AtomicU64,
}

struct StreamEntry {
    registry: String,
    progress: tokio::sync::watch::Receiver<GrowingBlob>,
    done: tokio::sync::watch::Receiver<()>,
}

/// Held while a blob is uploaded as it is written; a push of its digest waits until it is
/// dropped.
pub(super) struct Stream<'a> {
    seen: &'a Seen,
    id: u64,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        lock(&self.seen.streams).remove(&self.id);
    }
}

/// Held while a blob is sent to a registry; other pushes of it wait until it is dropped.
pub(super) struct Claim<'a> {
    seen: &'a Seen,
    key: (String, String),
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // Dropping the sender (after this) ends every waiter's `changed()`.
        lock(&self.seen.sending).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn registry_key(r: &Reference) -> String {
    normalize_auth_key(r.registry())
}

/// (registry, repository, digest): where a blob is known to be, or to be missing.
fn blob_key(r: &Reference, digest: &str) -> (String, String, String) {
    (
        registry_key(r),
        r.repository().to_string(),
        digest.to_string(),
    )
}

impl Seen {
    /// Records that the repository of `r` holds blob `digest`.
    pub(super) fn note(&self, r: &Reference, digest: &str) {
        let key = blob_key(r, digest);
        lock(&self.absent).remove(&key);
        lock(&self.present).insert(key);
    }

    /// Records that the repository of `r` answered that it lacks blob `digest`.
    pub(super) fn note_absent(&self, r: &Reference, digest: &str) {
        lock(&self.absent).insert(blob_key(r, digest));
    }

    /// Whether the repository of `r` lacked blob `digest` when asked.
    pub(super) fn lacks(&self, r: &Reference, digest: &str) -> bool {
        lock(&self.absent).contains(&blob_key(r, digest))
    }

    /// Whether the repository of `r` is known to hold blob `digest`.
    pub(super) fn has(&self, r: &Reference, digest: &str) -> bool {
        lock(&self.present).contains(&blob_key(r, digest))
    }

    /// Another repository of `r`'s registry known to hold blob `digest`, to mount it from.
    pub(super) fn source(&self, r: &Reference, digest: &str) -> Option<String> {
        let registry = registry_key(r);
        lock(&self.present)
            .iter()
            .find(|(reg, repo, d)| *reg == registry && d == digest && repo != r.repository())
            .map(|(_, repo, _)| repo.clone())
    }

    /// Registers an upload to `r`'s registry of the blob whose writer reports on `progress`,
    /// until the returned guard is dropped.
    pub(super) fn stream(
        &self,
        r: &Reference,
        progress: tokio::sync::watch::Receiver<GrowingBlob>,
    ) -> Stream<'_> {
        let id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, done) = tokio::sync::watch::channel(());
        let entry = StreamEntry {
            registry: registry_key(r),
            progress,
            done,
        };
        lock(&self.streams).insert(id, entry);
        Stream {
            seen: self,
            id,
            _done: tx,
        }
    }

    /// Claims blob `digest` for sending to `r`'s registry, after waiting for any push of it that
    /// holds the claim, or uploads it as it was written. `None` when, after such a wait, the
    /// repository of `r` holds the blob.
    pub(super) async fn claim(&self, r: &Reference, digest: &str) -> Option<Claim<'_>> {
        let key = (registry_key(r), digest.to_string());
        loop {
            if self.has(r, digest) {
                return None;
            }
            // A stream whose writer finished with this digest: its upload is under way.
            let streaming = lock(&self.streams)
                .values()
                .find(|s| {
                    s.registry == key.0 && s.progress.borrow().digest.as_deref() == Some(digest)
                })
                .map(|s| s.done.clone());
            if let Some(mut done) = streaming {
                while done.changed().await.is_ok() {}
                continue;
            }
            let mut other = {
                let mut sending = lock(&self.sending);
                match sending.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(());
                        sending.insert(key.clone(), rx);
                        return Some(Claim {
                            seen: self,
                            key,
                            _done: tx,
                        });
                    }
                }
            };
            // Ends (with an error) when the other push drops its claim.
            while other.changed().await.is_ok() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn reference(s: &str) -> Reference {
        super::super::parse_reference(s).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A push claiming `digest` for `r`, as a task: whether it got the claim.
    fn claim_later(
        seen: &Arc<Seen>,
        r: &Reference,
        digest: &'static str,
    ) -> tokio::task::JoinHandle<bool> {
        let (seen, r) = (Arc::clone(seen), r.clone());
        tokio::spawn(async move { seen.claim(&r, digest).await.is_some() })
    }

    #[test]
    fn a_blob_is_known_per_repository_and_found_elsewhere_on_its_registry() {
        let seen = Seen::default();
        let cache = reference("reg.local:5000/team/cache:k1");
        let app = reference("reg.local:5000/team/app:1");
        let other_registry = reference("other.local/team/app:1");
        seen.note(&cache, "sha256:aa");
        assert!(seen.has(&cache, "sha256:aa"));
        assert!(!seen.has(&app, "sha256:aa"));
        assert_eq!(
            seen.source(&app, "sha256:aa").as_deref(),
            Some("team/cache")
        );
        assert_eq!(seen.source(&cache, "sha256:aa"), None, "not from itself");
        assert_eq!(seen.source(&other_registry, "sha256:aa"), None);
        assert_eq!(seen.source(&app, "sha256:bb"), None);
        seen.note_absent(&app, "sha256:aa");
        assert!(seen.lacks(&app, "sha256:aa") && !seen.lacks(&cache, "sha256:aa"));
        seen.note(&app, "sha256:aa");
        assert!(
            !seen.lacks(&app, "sha256:aa"),
            "a blob sent there is no longer missing"
        );
    }

    #[test]
    fn a_second_claim_waits_for_the_first_and_sees_what_it_did() {
        let rt = runtime();
        let seen = Arc::new(Seen::default());
        let cache = reference("reg.local/team/cache:k1");
        let app = reference("reg.local/team/app:1");
        rt.block_on(async {
            let first = seen.claim(&cache, "sha256:aa").await.expect("free");
            let waiter = claim_later(&seen, &app, "sha256:aa");
            // The second push is still waiting while the first holds the claim.
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            seen.note(&cache, "sha256:aa");
            drop(first);
            // It gets the claim (to mount from the cache repository, the source now known).
            assert!(waiter.await.unwrap());
            assert_eq!(
                seen.source(&app, "sha256:aa").as_deref(),
                Some("team/cache")
            );
            // Once the app repository holds it too, a claim there is not needed.
            seen.note(&app, "sha256:aa");
            assert!(seen.claim(&app, "sha256:aa").await.is_none());
            // A different digest is claimed at once.
            assert!(seen.claim(&app, "sha256:bb").await.is_some());
        });
    }

    #[test]
    fn a_push_of_a_blob_being_streamed_waits_once_its_writer_named_it() {
        let rt = runtime();
        let seen = Arc::new(Seen::default());
        let app = reference("reg.local/team/app:1");
        let cache = reference("reg.local/team/cache:k1");
        let elsewhere = reference("other.local/team/cache:k1");
        let (writer, progress) = tokio::sync::watch::channel(GrowingBlob::default());
        rt.block_on(async {
            let stream = seen.stream(&app, progress);
            // Its writer has not finished: nothing tells which blob it is, so no push waits.
            assert!(seen.claim(&cache, "sha256:aa").await.is_some());
            writer.send_modify(|b| b.digest = Some("sha256:aa".into()));
            // On another registry, or for another blob, nothing waits either.
            assert!(seen.claim(&elsewhere, "sha256:aa").await.is_some());
            assert!(seen.claim(&cache, "sha256:bb").await.is_some());
            let waiter = claim_later(&seen, &cache, "sha256:aa");
            tokio::task::yield_now().await;
            assert!(
                !waiter.is_finished(),
                "a push of the streamed blob did not wait"
            );
            // The stream succeeded: the waiter claims it, to mount it from the app repository.
            seen.note(&app, "sha256:aa");
            drop(stream);
            assert!(waiter.await.unwrap());
            assert_eq!(
                seen.source(&cache, "sha256:aa").as_deref(),
                Some("team/app")
            );
            // A stream that failed (nothing noted) lets the waiter claim and send it itself.
            let (writer, progress) = tokio::sync::watch::channel(GrowingBlob::default());
            let stream = seen.stream(&app, progress);
            writer.send_modify(|b| b.digest = Some("sha256:cc".into()));
            let waiter = claim_later(&seen, &cache, "sha256:cc");
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            drop(stream);
            assert!(waiter.await.unwrap());
            assert_eq!(seen.source(&cache, "sha256:cc"), None);
        });
    }
}
