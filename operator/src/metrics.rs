//! Prometheus metrics and the small HTTP server that serves `/metrics`, `/healthz` and
//! `/readyz`. Counts what reconcilers report; it never talks to the API server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// A reconcile's controller and result (`success` or `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    pub result: &'static str,
}

/// A reconcile's controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

/// A finished build's namespace and result (`succeeded`, `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub namespace: String,
    pub result: &'static str,
}

/// A namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub namespace: String,
}

/// Operator metrics; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub builds_started: Counter,
    pub builds_succeeded: Counter,
    pub builds_failed: Counter,
    pub build_duration: Histogram,
    pub reconcile_errors: Family<KindLabel, Counter>,
    pub warms_started: Counter,
    /// `kiln_reconcile_total{controller,result}`.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// `kiln_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: Family<ControllerLabel, Histogram>,
    /// `kiln_build_run_duration_seconds{namespace,result}`: time from the first attempt's start
    /// to the build's end.
    pub build_runs: Family<BuildLabels, Histogram>,
    /// `kiln_build_cache_hits_total{namespace}` / `_misses_total`: layer-cache lookups of
    /// succeeded builds (the hit ratio is hits / (hits + misses)).
    pub cache_hits: Family<NamespaceLabel, Counter>,
    pub cache_misses: Family<NamespaceLabel, Counter>,
    /// `kiln_cache_warms_failed_total{namespace}`.
    pub warms_failed: Family<NamespaceLabel, Counter>,
    /// `kiln_build_queue_depth`: builds waiting in the build queue.
    pub queue_depth: Gauge,
    /// `kiln_build_queue_wait_seconds`: time from Queued to start.
    pub queue_wait: Histogram,
    /// Set while the process is up and doing its job: the API server answered and either the
    /// lease loop runs (a standby waiting for leadership is ready too) or the controllers run.
    pub ready: Arc<AtomicBool>,
    /// `kiln_operator_leader`: 1 while this replica runs the controllers, else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let builds_started = Counter::default();
        let builds_succeeded = Counter::default();
        let builds_failed = Counter::default();
        // 10 s .. ~2.8 h
        let build_duration = Histogram::new(exponential_buckets(10.0, 2.0, 11));
        let reconcile_errors = Family::<KindLabel, Counter>::default();
        let warms_started = Counter::default();
        let leader = Gauge::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        // 1 ms .. ~16 s
        let reconcile_duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let build_runs = Family::<BuildLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(10.0, 2.0, 11))
        });
        let cache_hits = Family::<NamespaceLabel, Counter>::default();
        let cache_misses = Family::<NamespaceLabel, Counter>::default();
        let warms_failed = Family::<NamespaceLabel, Counter>::default();
        let queue_depth = Gauge::default();
        // 1 s .. ~4.5 h
        let queue_wait = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "build_queue_depth",
            "ImageBuilds waiting for a slot of the build queue (with queue limits)",
            queue_depth.clone(),
        );
        registry.register(
            "build_queue_wait_seconds",
            "Time an ImageBuild waited in the build queue before it started",
            queue_wait.clone(),
        );
        registry.register(
            "reconcile",
            "Reconciles by controller and result (success, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "build_run_duration_seconds",
            "Time from a build's first attempt to its end, by namespace and result",
            build_runs.clone(),
        );
        registry.register(
            "build_cache_hits",
            "Steps of succeeded builds taken from the layer cache, by namespace",
            cache_hits.clone(),
        );
        registry.register(
            "build_cache_misses",
            "Steps of succeeded builds that ran (layer cache enabled), by namespace",
            cache_misses.clone(),
        );
        registry.register(
            "cache_warms_failed",
            "Warm runs that failed, by namespace",
            warms_failed.clone(),
        );
        registry.register(
            "operator_leader",
            "1 while this replica holds the leader Lease and runs the controllers, else 0",
            leader.clone(),
        );
        registry.register(
            "builds_started",
            "Executor Pods created (every attempt)",
            builds_started.clone(),
        );
        registry.register(
            "builds_succeeded",
            "ImageBuilds that pushed their image",
            builds_succeeded.clone(),
        );
        registry.register(
            "builds_failed",
            "ImageBuilds that failed for good (after retries)",
            builds_failed.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Time from the first attempt's start to the build's end",
            build_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that returned an error, by resource kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "cache_warms_started",
            "Warmer Pods created",
            warms_started.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            builds_started,
            builds_succeeded,
            builds_failed,
            build_duration,
            reconcile_errors,
            warms_started,
            reconciles,
            reconcile_duration,
            build_runs,
            cache_hits,
            cache_misses,
            warms_failed,
            queue_depth,
            queue_wait,
            ready: Arc::new(AtomicBool::new(false)),
            leader,
        }
    }

    /// Records a finished build of `namespace`, with its layer-cache counts when it had some.
    pub fn build_finished(
        &self,
        namespace: &str,
        succeeded: bool,
        took: Option<Duration>,
        cache: Option<(u64, u64)>,
    ) {
        if succeeded {
            self.builds_succeeded.inc();
        } else {
            self.builds_failed.inc();
        }
        if let Some(d) = took {
            self.build_duration.observe(d.as_secs_f64());
            self.build_runs
                .get_or_create(&BuildLabels {
                    namespace: namespace.to_string(),
                    result: if succeeded { "succeeded" } else { "failed" },
                })
                .observe(d.as_secs_f64());
        }
        if let Some((hits, misses)) = cache {
            let ns = NamespaceLabel {
                namespace: namespace.to_string(),
            };
            self.cache_hits.get_or_create(&ns).inc_by(hits);
            self.cache_misses.get_or_create(&ns).inc_by(misses);
        }
    }

    /// Records one reconcile of `controller`.
    pub fn reconciled(&self, controller: &'static str, ok: bool, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                controller,
                result: if ok { "success" } else { "error" },
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabel { controller })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (code, ctype, body) = match path {
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.render(),
            ),
            "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                (StatusCode::OK, "text/plain", "ok\n".to_string())
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: not connected to the API server yet, or shutting down\n".to_string(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_string(),
            ),
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    }

    /// Serves the endpoints on `addr` until `shutdown` resolves.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_on(listener, shutdown).await
    }

    /// Serves the endpoints on a socket that is already listening, until `shutdown` resolves.
    /// Connections made before this runs wait in the socket's backlog, so a caller that binds
    /// first can connect at once instead of retrying until the server is up.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => r?,
                () = &mut shutdown => return Ok(()),
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = me.respond(req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.builds_started.inc();
        m.build_finished("team-a", true, Some(Duration::from_secs(30)), Some((3, 1)));
        m.build_finished("team-a", false, Some(Duration::from_secs(5)), None);
        m.reconcile_errors
            .get_or_create(&KindLabel { kind: "ImageBuild" })
            .inc();
        m.reconciled("ImageBuild", true, Duration::from_millis(3));
        m.reconciled("ImageBuild", false, Duration::from_millis(3));
        m.warms_failed
            .get_or_create(&NamespaceLabel {
                namespace: "team-b".into(),
            })
            .inc();
        let t = m.render();
        for want in [
            r#"kiln_reconcile_total{controller="ImageBuild",result="success"} 1"#,
            r#"kiln_reconcile_total{controller="ImageBuild",result="error"} 1"#,
            r#"kiln_reconcile_duration_seconds_count{controller="ImageBuild"} 2"#,
            r#"kiln_build_run_duration_seconds_count{namespace="team-a",result="succeeded"} 1"#,
            r#"kiln_build_run_duration_seconds_count{namespace="team-a",result="failed"} 1"#,
            r#"kiln_build_cache_hits_total{namespace="team-a"} 3"#,
            r#"kiln_build_cache_misses_total{namespace="team-a"} 1"#,
            r#"kiln_cache_warms_failed_total{namespace="team-b"} 1"#,
        ] {
            assert!(t.contains(want), "{want} missing:\n{t}");
        }
        assert!(t.contains("kiln_builds_started_total 1"), "{t}");
        assert!(t.contains("kiln_builds_succeeded_total 1"), "{t}");
        assert!(t.contains("kiln_build_duration_seconds_count 2"), "{t}");
        assert!(
            t.contains(r#"kiln_reconcile_errors_total{kind="ImageBuild"} 1"#),
            "{t}"
        );
    }

    #[tokio::test]
    async fn serves_endpoints() {
        let m = Metrics::new();
        // Bound before the server task starts: the first connection waits in the backlog, so
        // there is no window in which the server may or may not be up yet.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(m.clone().serve_on(listener, async {
            let _ = rx.await;
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let exchange = async {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await?;
                let mut out = String::new();
                s.read_to_string(&mut out).await?;
                std::io::Result::Ok(out)
            };
            // A bound on a hang, not a window the server must answer in.
            tokio::time::timeout(Duration::from_secs(60), exchange)
                .await
                .unwrap_or_else(|_| {
                    panic!("GET {path} from the metrics server on {addr} hung for 60s")
                })
                .unwrap_or_else(|e| panic!("GET {path} from the metrics server on {addr}: {e}"))
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        m.ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let text = get("/metrics").await;
        assert!(text.contains("kiln_builds_started_total 0"), "{text}");
        assert!(text.contains("kiln_operator_leader 0"), "{text}");
        m.leader.set(1);
        assert!(get("/metrics").await.contains("kiln_operator_leader 1"));
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
