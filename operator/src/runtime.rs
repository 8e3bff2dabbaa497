//! Runs the `ImageBuild` and `CacheWarm` controllers until told to stop. Used by the
//! `kiln-operator` binary (under leader election) and by the integration tests in-process.
//! Knows nothing about flags, signals or leases.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info};

use crate::config::OperatorConfig;
use crate::controller::{event_pod, WarningEvents, WARNING_EVENTS};
use crate::crd::{CacheWarm, ImageBuild};
use crate::metrics::Metrics;
use crate::{cache_warm, image_build, MANAGED_BY};

/// Where the controllers look.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Watch these namespaces only (a pair of controllers each); all namespaces when empty.
    pub namespaces: Vec<String>,
    /// Name the operator publishes Events under (`reportingInstance`).
    pub instance: Option<String>,
}

impl Scope {
    /// One entry per pair of controllers: `None` is every namespace.
    fn targets(&self) -> Vec<Option<String>> {
        let mut ns: Vec<Option<String>> = self
            .namespaces
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| Some(n.clone()))
            .collect();
        ns.sort();
        ns.dedup();
        if ns.is_empty() {
            ns.push(None);
        }
        ns
    }
}

/// Reconciles in flight at once, per controller. Unbounded, a burst of 1,000 new ImageBuilds
/// started 1,000 reconciles that all waited on the API server at once (p99 over 16 s each, and
/// more memory); bounded, each runs in milliseconds and the rest wait in the queue, which ends
/// the burst no later.
const RECONCILE_CONCURRENCY: u16 = 16;

fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// The kubelet's `FailedMount` Warnings in one namespace (or all), as a store the reconciles read
/// ([`WarningEvents`]) and a stream of the owners to reconcile at once: `owner_of` names the
/// object of `store` whose current Pod an Event is about (none for other Pods). One per
/// controller, so each wakes its own objects.
fn warning_events<K>(
    client: &Client,
    namespace: Option<&str>,
    warnings: &WarningEvents,
    owners: Store<K>,
    owner_of: fn(&K) -> String,
) -> impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    warnings.add_store(store);
    let cfg = watcher::Config::default().fields(WARNING_EVENTS);
    reflector(writer, watcher(api::<K8sEvent>(client, namespace), cfg))
        .applied_objects()
        .filter_map(move |e| {
            let hit = match e {
                Ok(e) => event_pod(&e).and_then(|(ns, pod)| {
                    owners
                        .state()
                        .into_iter()
                        .find(|o| o.namespace().as_deref() == Some(&ns) && owner_of(o) == pod)
                        .map(|o| Ok(K::clone(&o)))
                }),
                // The watcher retries by itself; the controller only logs it.
                Err(e) => Some(Err(e)),
            };
            async move { hit }
        })
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers until `shutdown` resolves, then lets in-flight reconciles finish.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let reporter = Reporter {
        controller: MANAGED_BY.into(),
        instance: scope.instance.clone(),
    };
    let instance = scope
        .instance
        .clone()
        .unwrap_or_else(|| MANAGED_BY.to_string());
    let recorder = Recorder::new(client.clone(), reporter);
    let pods_cfg =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));

    let queue = Arc::new(image_build::admission::BuildQueue::new(
        image_build::queue::Limits {
            cluster: config.max_concurrent_builds,
            per_namespace: config.max_concurrent_builds_per_namespace,
        },
    ));
    let warnings = Arc::new(WarningEvents::default());
    let ib_ctx = Arc::new(image_build::Context {
        client: client.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        recorder: recorder.clone(),
        instance: instance.clone(),
        queue: queue.clone(),
        warnings: warnings.clone(),
    });
    let cw_ctx = Arc::new(cache_warm::Context {
        client: client.clone(),
        config,
        metrics: metrics.clone(),
        recorder,
        instance,
        queue: queue.clone(),
        warnings: warnings.clone(),
    });
    // A kube-runtime Controller watches one Api: every namespace, or one. Several watched
    // namespaces get a pair of controllers each, all in this one process (and under one Lease).
    let mut controllers: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    for target in scope.targets() {
        let ns = target.as_deref();
        let controller =
            Controller::new(api::<ImageBuild>(&client, ns), watcher::Config::default())
                .with_config(controller_config());
        queue.add_store(controller.store());
        // Builds the queue lets start when a slot frees, in this controller's namespace.
        let only = target.clone();
        let wake = futures_util::stream::unfold(queue.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(r) => return Some((r, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |r: &ObjectRef<ImageBuild>| {
            let keep = only.is_none() || r.namespace == only;
            async move { keep }
        });
        let build_warnings = warning_events(
            &client,
            ns,
            &warnings,
            controller.store(),
            image_build::status::current_pod_name,
        );
        let builds = controller
            .owns(api::<Pod>(&client, ns), pods_cfg.clone())
            .watches_stream(build_warnings, |b| Some(ObjectRef::from_obj(&b)))
            .reconcile_on(wake)
            .graceful_shutdown_on(stop())
            .run(
                image_build::controller::reconcile,
                image_build::controller::error_policy,
                ib_ctx.clone(),
            )
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => debug!(build = %obj.name, "reconciled ImageBuild"),
                    Err(e) => debug!(error = %e, "ImageBuild controller"),
                }
            });
        let warms = Controller::new(api::<CacheWarm>(&client, ns), watcher::Config::default())
            .with_config(controller_config());
        let warm_warnings = warning_events(
            &client,
            ns,
            &warnings,
            warms.store(),
            cache_warm::status::current_pod_name,
        );
        let warms = warms
            .owns(api::<Pod>(&client, ns), pods_cfg.clone())
            .watches_stream(warm_warnings, |w| Some(ObjectRef::from_obj(&w)))
            .graceful_shutdown_on(stop())
            .run(
                cache_warm::controller::reconcile,
                cache_warm::controller::error_policy,
                cw_ctx.clone(),
            )
            .for_each(|r| async move {
                match r {
                    Ok((obj, _)) => debug!(cachewarm = %obj.name, "reconciled CacheWarm"),
                    Err(e) => debug!(error = %e, "CacheWarm controller"),
                }
            });
        controllers.push(Box::pin(builds));
        controllers.push(Box::pin(warms));
    }

    controllers.push(Box::pin(queue.clone().pump(stop())));
    info!(
        namespaces = %if scope.namespaces.is_empty() { "all".to_string() } else { scope.namespaces.join(",") },
        "controllers started"
    );
    metrics.leader.set(1);
    futures_util::future::join_all(controllers).await;
    metrics.leader.set(0);
    info!("controllers stopped");
}
