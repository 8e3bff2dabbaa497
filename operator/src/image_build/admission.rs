//! The build queue's view of the cluster: every ImageBuild the controllers' caches hold (one
//! cache per watched namespace, or one for all), the decisions of [`super::queue`] on them, and
//! the wake-ups that start the next builds at once when a slot frees.

use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::queue::{self, Key, Limits, Schedule};
use crate::crd::ImageBuild;

/// How often [`BuildQueue::pump`] looks for builds that may start and have not.
const PUMP_EVERY: Duration = Duration::from_secs(5);
/// How long [`BuildQueue::wake_after`] waits for the caches to show a run ended.
const CACHE_LAG_LIMIT: Duration = Duration::from_secs(60);

/// Shared by every ImageBuild reconcile of the process.
pub struct BuildQueue {
    pub limits: Limits,
    stores: RwLock<Vec<Store<ImageBuild>>>,
    wake: broadcast::Sender<ObjectRef<ImageBuild>>,
}

impl BuildQueue {
    pub fn new(limits: Limits) -> BuildQueue {
        let (wake, _) = broadcast::channel(1024);
        BuildQueue {
            limits,
            stores: RwLock::new(Vec::new()),
            wake,
        }
    }

    /// Adds a controller's cache of ImageBuilds.
    pub fn add_store(&self, store: Store<ImageBuild>) {
        if let Ok(mut s) = self.stores.write() {
            s.push(store);
        }
    }

    /// The builds to reconcile because they may start now.
    pub fn subscribe(&self) -> broadcast::Receiver<ObjectRef<ImageBuild>> {
        self.wake.subscribe()
    }

    /// Waits until every cache holds the API server's full list (at start, the first reconciles
    /// run while it is still being read: deciding then would see an empty queue).
    pub async fn wait_ready(&self) {
        let stores: Vec<Store<ImageBuild>> =
            self.stores.read().map(|s| s.clone()).unwrap_or_default();
        for s in stores {
            let _ = s.wait_until_ready().await;
        }
    }

    /// The queue's decisions on the cached ImageBuilds; `ended`, a build whose run just ended
    /// (its new status may not be in the cache yet), holds no slot.
    pub fn schedule(&self, ended: Option<&Key>) -> Schedule {
        let entries: Vec<queue::Entry> = self
            .stores
            .read()
            .map(|stores| {
                stores
                    .iter()
                    .flat_map(|s| s.state())
                    .filter_map(|b| queue::entry(&b))
                    .filter(|e| Some(&e.key) != ended || !e.active)
                    .collect()
            })
            .unwrap_or_default();
        queue::schedule(&entries, &self.limits)
    }

    /// After the run of `ended` ended (or the build was deleted): once the caches show it no
    /// longer holds a slot (its new status arrives through the watch a moment after it is
    /// written), reconciles the builds that may start now. The builds decide from the same
    /// caches, so they must not look before.
    pub fn wake_after(self: &std::sync::Arc<Self>, ended: Key) {
        if !self.limits.active() {
            return;
        }
        let q = self.clone();
        tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            while q.holds_slot(&ended) {
                if t.elapsed() > CACHE_LAG_LIMIT {
                    warn!(namespace = %ended.0, build = %ended.1, "the ImageBuild cache still shows the ended run holding a slot after {CACHE_LAG_LIMIT:?}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            q.wake_admitted("a slot freed");
        });
    }

    /// Reconciles the builds the caches say may start now.
    fn wake_admitted(&self, why: &str) {
        for (ns, name) in self.schedule(None).admitted {
            debug!(namespace = %ns, build = %name, "{why}: the queue lets the build start");
            let _ = self.wake.send(ObjectRef::new(&name).within(&ns));
        }
    }

    /// A safety net under [`Self::wake_after`], until `stop` resolves: every few seconds, the
    /// builds the caches say may start now are reconciled. Nothing is sent while no build may
    /// start, so an idle or full queue costs no API request; a wake-up that came too early
    /// (a reconcile that still saw the old state) is made good within seconds, not at the next
    /// 30 s recheck of a queued build.
    pub async fn pump(self: std::sync::Arc<Self>, stop: impl Future<Output = ()>) {
        if !self.limits.active() {
            return;
        }
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(PUMP_EVERY) => {}
            }
            tokio::select! {
                () = &mut stop => return,
                () = self.wait_ready() => {}
            }
            self.wake_admitted("queue check");
        }
    }

    /// Whether the caches show `key` holding a slot.
    fn holds_slot(&self, key: &Key) -> bool {
        self.stores
            .read()
            .map(|stores| {
                stores
                    .iter()
                    .flat_map(|s| s.state())
                    .filter_map(|b| queue::entry(&b))
                    .any(|e| &e.key == key && e.active)
            })
            .unwrap_or(false)
    }

    /// The limits as a status message says them.
    pub fn describe(&self) -> String {
        let part = |n: Option<usize>, what: &str| n.map(|n| format!("at most {n} {what}"));
        [
            part(self.limits.cluster, "in the cluster"),
            part(self.limits.per_namespace, "per namespace"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }
}
