//! Layer-cache lookups started ahead of the steps that need them: a bounded number run at once
//! on the build's runtime, and each answer is taken by key whenever the build reaches its step,
//! in whatever order the lookups finished. Each key is looked up once per build. It neither
//! computes keys nor decides what a hit or a miss means for the build.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Runtime;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::layer::{CacheHit, LayerCache, LayerCacheError};

/// How many lookups are in flight at once: enough to hide a registry's latency for a typical
/// stage, few enough not to look like a flood to a shared registry.
pub const LOOKUP_CONCURRENCY: usize = 8;

/// Where lookups go: the layer cache, or a fake in tests.
pub trait LookupSource: Send + Sync + 'static {
    fn lookup(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<CacheHit>, LayerCacheError>> + Send;
    /// Names the cache in warnings.
    fn describe(&self) -> String;
    /// Start getting a hit's layer ready where the build will read it (a download from a
    /// registry cache), so that the step finds it there. A failure is the step's to report
    /// when it fetches the layer itself; nothing by default.
    fn prepare(&self, _hit: &CacheHit) -> impl Future<Output = ()> + Send {
        async {}
    }
}

impl LookupSource for LayerCache {
    fn lookup(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<CacheHit>, LayerCacheError>> + Send {
        LayerCache::lookup(self, key)
    }

    fn describe(&self) -> String {
        LayerCache::describe(self)
    }

    /// A hit in a registry repository is downloaded after its lookup once the build wants its
    /// layers: the step that uses it then unpacks at once, and the downloads of a stage's hits
    /// run at the same time as each other and as the base image's. A layout repository's blobs
    /// are already files.
    async fn prepare(&self, hit: &CacheHit) {
        if !matches!(self.repo(), super::layer::CacheRepo::Registry(_)) {
            return;
        }
        // The build's blob directory may not be made yet.
        if let Some(dir) = hit.layer.as_ref().and_then(|l| l.path.parent()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = self.fetch(hit).await {
            tracing::debug!("layer cache: downloading {} ahead failed: {e}", hit.key);
        }
    }
}

/// A lookup's answer, and the download of its hit's layer when one was started.
type Answer = (
    Result<Option<CacheHit>, LayerCacheError>,
    Option<JoinHandle<()>>,
);
type Pending = JoinHandle<Answer>;

/// The lookups of one build: answered, in flight, or not asked yet.
pub struct Lookups<S: LookupSource> {
    source: Arc<S>,
    slots: Arc<Semaphore>,
    /// Answers already taken by the build; a failed lookup is remembered as a miss.
    answered: HashMap<String, Option<CacheHit>>,
    pending: HashMap<String, Pending>,
    /// Downloads of answered hits' layers, still running or not yet waited for.
    downloads: HashMap<String, JoinHandle<()>>,
    /// Whether hits' layers are downloaded: not until a stage is built on its root (a build
    /// whose steps are all hits reads none of them, and its lookups then have the registry to
    /// themselves).
    wanted: watch::Sender<bool>,
}

impl<S: LookupSource> Lookups<S> {
    pub fn new(source: Arc<S>, concurrency: usize) -> Lookups<S> {
        Lookups {
            source,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            answered: HashMap::new(),
            pending: HashMap::new(),
            downloads: HashMap::new(),
            wanted: watch::channel(false).0,
        }
    }

    /// Starts looking `key` up on `runtime` unless it is answered or already in flight. Returns
    /// at once; at most the concurrency given to [`Lookups::new`] run at the same time.
    pub fn start(&mut self, runtime: &Runtime, key: &str) {
        if self.answered.contains_key(key) || self.pending.contains_key(key) {
            return;
        }
        let source = self.source.clone();
        let slots = self.slots.clone();
        let owned = key.to_string();
        let mut wanted = self.wanted.subscribe();
        let task = runtime.spawn(async move {
            let answer = {
                // The semaphore is never closed, so this always yields a permit.
                let _slot = slots.clone().acquire_owned().await;
                source.lookup(&owned).await
            };
            // A hit's layer downloads on its own task, once wanted: the answer does not wait
            // for it (a build whose steps are all hits may never read the layers).
            let download = match &answer {
                Ok(Some(hit)) => {
                    let hit = hit.clone();
                    Some(tokio::spawn(async move {
                        // An error: the lookups are gone, and nothing will read the layer.
                        if wanted.wait_for(|w| *w).await.is_err() {
                            return;
                        }
                        let _slot = slots.acquire_owned().await;
                        source.prepare(&hit).await;
                    }))
                }
                _ => None,
            };
            (answer, download)
        });
        self.pending.insert(key.to_string(), task);
    }

    /// The answer for `key`: remembered, else awaited from its started lookup, else looked up
    /// now. A failed lookup is logged as a warning once and is a miss, as is every later ask.
    pub fn get(&mut self, runtime: &Runtime, key: &str) -> Option<CacheHit> {
        if let Some(known) = self.answered.get(key) {
            return known.clone();
        }
        let answer = match self.pending.remove(key) {
            Some(task) => match runtime.block_on(task) {
                Ok((answer, download)) => {
                    if let Some(download) = download {
                        self.downloads.insert(key.to_string(), download);
                    }
                    answer.map_err(|e| e.to_string())
                }
                Err(e) => Err(format!(
                    "layer cache {}: the lookup task failed: {e}",
                    self.source.describe()
                )),
            },
            None => runtime
                .block_on(self.source.lookup(key))
                .map_err(|e| e.to_string()),
        };
        let found = answer.unwrap_or_else(|e| {
            tracing::warn!(
                "layer cache lookup of {} failed, running the step: {e}",
                key.get(..12).unwrap_or(key)
            );
            None
        });
        self.answered.insert(key.to_string(), found.clone());
        found
    }

    /// How many lookups were started and not yet taken.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Wait for the download of `key`'s layer started with its lookup, if there is one (see
    /// [`LookupSource::prepare`]); the caller then fetches the layer, which is there unless the
    /// download failed.
    pub fn ready(&mut self, runtime: &Runtime, key: &str) {
        if let Some(download) = self.downloads.remove(key) {
            self.want_downloads();
            let _ = runtime.block_on(download);
        }
    }

    /// Start the downloads of hits' layers, those answered and those to come: a stage is built
    /// on its root, so its hits' layers are unpacked. Until then a hit's download waits.
    pub fn want_downloads(&self) {
        self.wanted.send_replace(true);
    }

    /// Stop the downloads no step will wait for (every step of a stage was a hit and its layers
    /// are left in the cache repository).
    pub fn drop_downloads(&mut self) {
        for (_, download) in self.downloads.drain() {
            download.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// Answers `hit-*` keys with a hit, `miss-*` with nothing and `fail-*` with an error, after
    /// a delay that makes earlier keys finish last; counts calls and the most at once.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        running: AtomicUsize,
        most: AtomicUsize,
        /// Hits made ready ([`LookupSource::prepare`]), each once the test opens `downloads`.
        prepared: Mutex<Vec<String>>,
        /// Closed until the test opens it: a download cannot finish before then.
        downloads: Gate,
    }

    /// A semaphore made with no permits.
    struct Gate(tokio::sync::Semaphore);

    impl Default for Gate {
        fn default() -> Self {
            Gate(tokio::sync::Semaphore::new(0))
        }
    }

    impl LookupSource for Fake {
        async fn lookup(&self, key: &str) -> Result<Option<CacheHit>, LayerCacheError> {
            self.calls.lock().unwrap().push(key.to_string());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let n: u64 = key.rsplit('-').next().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(20 * (12 - n))).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            match key.split('-').next().unwrap() {
                "hit" => Ok(Some(CacheHit {
                    key: key.to_string(),
                    layer: None,
                })),
                "miss" => Ok(None),
                _ => Err(LayerCacheError::Invalid {
                    repo: "fake".into(),
                    key: key.to_string(),
                    detail: "broken on purpose".into(),
                }),
            }
        }

        fn describe(&self) -> String {
            "fake".into()
        }

        async fn prepare(&self, hit: &CacheHit) {
            // The permit goes back when dropped: once open, every download passes.
            let _open = self.downloads.0.acquire().await;
            self.prepared.lock().unwrap().push(hit.key.clone());
        }
    }

    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A runtime, the fake, and lookups on it with `concurrency`.
    fn lookups(concurrency: usize) -> (Runtime, Arc<Fake>, Lookups<Fake>) {
        let fake = Arc::new(Fake::default());
        let lookups = Lookups::new(fake.clone(), concurrency);
        (runtime(), fake, lookups)
    }

    fn keys() -> Vec<String> {
        (0..12)
            .map(|n| match n {
                3 => format!("miss-{n}"),
                7 => format!("fail-{n}"),
                _ => format!("hit-{n}"),
            })
            .collect()
    }

    #[test]
    fn answers_match_their_keys_whatever_order_lookups_finish_in() {
        let (rt, fake, mut lookups) = lookups(4);
        let keys = keys();
        for k in &keys {
            lookups.start(&rt, k);
        }
        assert_eq!(lookups.in_flight(), keys.len());
        // Taken in step order; the first keys are the slowest, so later ones finished first.
        let answers: Vec<Option<CacheHit>> = keys.iter().map(|k| lookups.get(&rt, k)).collect();
        for (k, a) in keys.iter().zip(&answers) {
            match a {
                Some(hit) => {
                    assert!(k.starts_with("hit-"), "{k} answered with a hit");
                    assert_eq!(&hit.key, k, "an answer went to the wrong key");
                }
                None => assert!(!k.starts_with("hit-"), "{k} answered with a miss"),
            }
        }
        // The first miss is where a build starts running steps.
        assert_eq!(answers.iter().position(Option::is_none), Some(3));
        let most = fake.most.load(Ordering::SeqCst);
        assert!(most > 1, "lookups ran one at a time");
        assert!(most <= 4, "{most} lookups ran at once, more than allowed");
    }

    #[test]
    fn each_key_is_looked_up_once_and_a_failure_stays_a_miss() {
        let (rt, fake, mut lookups) = lookups(LOOKUP_CONCURRENCY);
        lookups.start(&rt, "hit-1");
        lookups.start(&rt, "hit-1");
        lookups.start(&rt, "fail-2");
        assert!(lookups.get(&rt, "hit-1").is_some());
        lookups.start(&rt, "hit-1");
        assert!(lookups.get(&rt, "hit-1").is_some());
        assert!(lookups.get(&rt, "fail-2").is_none());
        assert!(lookups.get(&rt, "fail-2").is_none());
        // Never started: looked up on demand, then remembered.
        assert!(lookups.get(&rt, "miss-3").is_none());
        assert!(lookups.get(&rt, "miss-3").is_none());
        let mut calls = fake.calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(calls, vec!["fail-2", "hit-1", "miss-3"]);
        assert_eq!(lookups.in_flight(), 0);
    }

    /// A started lookup that hits also makes the hit ready (downloads its layer) on a task of
    /// its own; misses and failures prepare nothing, and a lookup on demand neither.
    #[test]
    fn a_hit_started_ahead_is_prepared_and_ready_waits_for_it() {
        let (rt, fake, mut lookups) = lookups(LOOKUP_CONCURRENCY);
        for k in ["hit-10", "miss-11", "fail-9"] {
            lookups.start(&rt, k);
        }
        // The answer does not wait for the download (still closed); `ready` does.
        assert!(lookups.get(&rt, "hit-10").is_some());
        assert!(fake.prepared.lock().unwrap().is_empty());
        lookups.want_downloads();
        fake.downloads.0.add_permits(1);
        lookups.ready(&rt, "hit-10");
        assert_eq!(*fake.prepared.lock().unwrap(), vec!["hit-10"]);
        assert!(lookups.get(&rt, "miss-11").is_none());
        assert!(lookups.get(&rt, "fail-9").is_none());
        lookups.ready(&rt, "miss-11");
        assert!(lookups.get(&rt, "hit-11").is_some());
        lookups.ready(&rt, "hit-11");
        assert_eq!(*fake.prepared.lock().unwrap(), vec!["hit-10"]);
    }

    /// A hit's download waits until downloads are wanted (a stage is built on its root);
    /// waiting for a layer (`ready`) wants them too.
    #[test]
    fn downloads_start_once_wanted() {
        let (rt, fake, mut lookups) = lookups(LOOKUP_CONCURRENCY);
        fake.downloads.0.add_permits(1);
        lookups.start(&rt, "hit-10");
        lookups.start(&rt, "hit-11");
        assert!(lookups.get(&rt, "hit-10").is_some());
        assert!(lookups.get(&rt, "hit-11").is_some());
        // Open, but not wanted: a download that did not wait would finish in this time.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(80)).await });
        assert!(fake.prepared.lock().unwrap().is_empty());
        // Waiting for one layer wants them all.
        lookups.ready(&rt, "hit-11");
        assert!(fake
            .prepared
            .lock()
            .unwrap()
            .contains(&"hit-11".to_string()));
        lookups.ready(&rt, "hit-10");
        let mut prepared = fake.prepared.lock().unwrap().clone();
        prepared.sort();
        assert_eq!(prepared, vec!["hit-10", "hit-11"]);
    }

    /// Downloads no step waits for are stopped.
    #[test]
    fn dropped_downloads_do_not_finish() {
        let (rt, fake, mut lookups) = lookups(LOOKUP_CONCURRENCY);
        lookups.start(&rt, "hit-11");
        assert!(lookups.get(&rt, "hit-11").is_some());
        lookups.want_downloads();
        lookups.drop_downloads();
        // Opened after the drop: a download still running would finish now.
        fake.downloads.0.add_permits(1);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(80)).await });
        assert!(fake.prepared.lock().unwrap().is_empty());
        lookups.ready(&rt, "hit-11");
    }
}
