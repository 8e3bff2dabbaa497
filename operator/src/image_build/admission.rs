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

    /// After a run ended: reconciles the builds that may start now.
    pub fn wake_admitted(&self, ended: Option<&Key>) {
        if !self.limits.active() {
            return;
        }
        for (ns, name) in self.schedule(ended).admitted {
            let _ = self.wake.send(ObjectRef::new(&name).within(&ns));
        }
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
