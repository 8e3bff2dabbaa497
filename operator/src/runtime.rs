//! Runs the `ImageBuild` and `CacheWarm` controllers until told to stop. Used by the
//! `kiln-operator` binary (under leader election) and by the integration tests in-process.
//! Knows nothing about flags, signals or leases.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use tracing::{debug, info};

use crate::config::OperatorConfig;
use crate::crd::{CacheWarm, ImageBuild};
use crate::metrics::Metrics;
use crate::{cache_warm, image_build, MANAGED_BY};

/// Where the controllers look.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Watch one namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Name the operator publishes Events under (`reportingInstance`).
    pub instance: Option<String>,
}

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match &scope.namespace {
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
    let recorder = Recorder::new(client.clone(), reporter);
    let pods_cfg =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));

    let ib_ctx = Arc::new(image_build::Context {
        client: client.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
        recorder: recorder.clone(),
    });
    let builds = Controller::new(
        api::<ImageBuild>(&client, &scope),
        watcher::Config::default(),
    )
    .owns(api::<Pod>(&client, &scope), pods_cfg.clone())
    .graceful_shutdown_on(stop())
    .run(
        image_build::controller::reconcile,
        image_build::controller::error_policy,
        ib_ctx,
    )
    .for_each(|r| async move {
        match r {
            Ok((obj, _)) => debug!(build = %obj.name, "reconciled ImageBuild"),
            Err(e) => debug!(error = %e, "ImageBuild controller"),
        }
    });

    let cw_ctx = Arc::new(cache_warm::Context {
        client: client.clone(),
        config,
        metrics: metrics.clone(),
        recorder,
    });
    let warms = Controller::new(
        api::<CacheWarm>(&client, &scope),
        watcher::Config::default(),
    )
    .owns(api::<Pod>(&client, &scope), pods_cfg)
    .graceful_shutdown_on(stop())
    .run(
        cache_warm::controller::reconcile,
        cache_warm::controller::error_policy,
        cw_ctx,
    )
    .for_each(|r| async move {
        match r {
            Ok((obj, _)) => debug!(cachewarm = %obj.name, "reconciled CacheWarm"),
            Err(e) => debug!(error = %e, "CacheWarm controller"),
        }
    });

    info!(namespace = ?scope.namespace, "controllers started");
    metrics.ready.store(true, Ordering::Relaxed);
    tokio::join!(builds, warms);
    metrics.ready.store(false, Ordering::Relaxed);
    info!("controllers stopped");
}
