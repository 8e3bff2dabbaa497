//! The build queue's view of the cluster: every ImageBuild the controllers' caches hold (one
//! cache per watched namespace, or one for all), the decisions of [`super::queue`] on them, and
//! the wake-ups that start the next builds at once when a slot frees.

use std::sync::RwLock;

use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::broadcast;

use super::queue::{self, Key, Limits, Schedule};
use crate::crd::ImageBuild;

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
    /// written; at most 10 s are waited), reconciles the builds that may start now. The builds
    /// decide from the same caches, so they must not look before.
    pub fn wake_after(self: &std::sync::Arc<Self>, ended: Key) {
        if !self.limits.active() {
            return;
        }
        let q = self.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                if !q.holds_slot(&ended) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            for (ns, name) in q.schedule(None).admitted {
                let _ = q.wake.send(ObjectRef::new(&name).within(&ns));
            }
        });
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
