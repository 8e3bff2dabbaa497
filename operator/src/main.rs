//! kiln-operator: parses flags, sets up logging, metrics and leader election, and runs the
//! controllers from the library until SIGTERM/SIGINT. No reconcile logic lives here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kiln_operator::config::{parse_resources, OperatorConfig, OverridePolicy};
use kiln_operator::image_build::retention::Effective;
use kiln_operator::leader::{LeaseConfig, LeaseLock};
use kiln_operator::metrics::Metrics;
use kiln_operator::runtime::{self, Scope};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "kiln-operator",
    version,
    about = "Reconciles ImageBuild and CacheWarm resources into Pods"
)]
struct Args {
    /// Default executor image (an ImageBuild may override it with spec.executorImage).
    #[arg(long, env = "KILN_EXECUTOR_IMAGE", default_value_t = OperatorConfig::default().executor_image)]
    executor_image: String,
    /// Registry (host[:port]) that executor and warmer Pods reach over plain HTTP, such as a
    /// registry inside the cluster; repeat or separate with commas.
    #[arg(
        long = "insecure-registry",
        env = "KILN_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Build queue: at most this many builds run at once in the cluster (0: no limit).
    #[arg(long, env = "KILN_MAX_CONCURRENT_BUILDS", default_value_t = 0)]
    max_concurrent_builds: usize,
    /// Build queue: at most this many builds run at once per namespace (0: no limit).
    #[arg(
        long,
        env = "KILN_MAX_CONCURRENT_BUILDS_PER_NAMESPACE",
        default_value_t = 0
    )]
    max_concurrent_builds_per_namespace: usize,
    /// Secrets (in each build's namespace) for pulling the executor image; repeatable.
    #[arg(
        long = "executor-image-pull-secret",
        env = "KILN_EXECUTOR_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    executor_image_pull_secrets: Vec<String>,
    /// Secrets (in each CacheWarm's namespace) for pulling the warmer image; repeatable.
    #[arg(
        long = "warmer-image-pull-secret",
        env = "KILN_WARMER_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    warmer_image_pull_secrets: Vec<String>,
    /// Default warmer image (a CacheWarm may override it with spec.warmerImage).
    #[arg(long, env = "KILN_WARMER_IMAGE", default_value_t = OperatorConfig::default().warmer_image)]
    warmer_image: String,
    /// Namespace to watch; repeat the flag or separate with commas for several (all namespaces
    /// when unset).
    #[arg(
        long = "watch-namespace",
        env = "KILN_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Resources of executor Pods whose ImageBuild sets none: JSON ResourceRequirements, e.g.
    /// `{"limits":{"memory":"2Gi"}}`.
    #[arg(long, env = "KILN_EXECUTOR_DEFAULT_RESOURCES")]
    executor_default_resources: Option<String>,
    /// dockerconfigjson Secret (in the build's namespace) used by ImageBuilds that name no
    /// pushSecret.
    #[arg(long, env = "KILN_EXECUTOR_DEFAULT_PUSH_SECRET")]
    executor_default_push_secret: Option<String>,
    /// PersistentVolumeClaim with the warmed base-image cache, mounted into builds that name no
    /// cache.warmClaim.
    #[arg(long, env = "KILN_EXECUTOR_CACHE_CLAIM")]
    executor_cache_claim: Option<String>,
    /// Registry (or registry path) of the layer cache of builds that enable it and name no
    /// cache.repository: `<this>/<namespace>/cache`, one repository per namespace. Unset: the
    /// executor's default, `<first destination>/cache`.
    #[arg(long, env = "KILN_CACHE_REGISTRY")]
    cache_registry: Option<String>,
    /// Delete a succeeded executor Pod this long after it finished, like `24h`, where the
    /// ImageBuild's spec.retention says nothing (unset: kept).
    #[arg(long, env = "KILN_RETENTION_TTL_AFTER_SUCCEEDED")]
    retention_ttl_after_succeeded: Option<String>,
    /// Delete a failed executor Pod this long after it finished (unset: kept).
    #[arg(long, env = "KILN_RETENTION_TTL_AFTER_FAILED")]
    retention_ttl_after_failed: Option<String>,
    /// Keep at most this many succeeded executor Pods per ImageBuild.
    #[arg(long, env = "KILN_RETENTION_SUCCEEDED_LIMIT", default_value_t = 10)]
    retention_succeeded_limit: usize,
    /// Keep at most this many failed executor Pods per ImageBuild.
    #[arg(long, env = "KILN_RETENTION_FAILED_LIMIT", default_value_t = 10)]
    retention_failed_limit: usize,
    /// allowPrivilegeEscalation of executor containers: whether RUN steps under a non-root USER
    /// may use setuid programs (sudo, su) as in `docker build`.
    #[arg(long, env = "KILN_EXECUTOR_PRIV_ESCALATION", action = clap::ArgAction::Set, default_value_t = true)]
    executor_allow_privilege_escalation: bool,
    /// Run executor Pods in a user namespace (hostUsers: false); the cluster must support it.
    #[arg(long, env = "KILN_EXECUTOR_USER_NAMESPACE", action = clap::ArgAction::Set, default_value_t = false)]
    executor_user_namespace: bool,
    /// Executor image an ImageBuild may name in spec.executorImage: exact, or a prefix ending in
    /// `*`; repeat or separate with commas. None by default.
    #[arg(
        long = "allowed-executor-image",
        env = "KILN_ALLOWED_EXECUTOR_IMAGES",
        value_delimiter = ','
    )]
    allowed_executor_images: Vec<String>,
    /// Warmer image a CacheWarm may name in spec.warmerImage (as --allowed-executor-image).
    #[arg(
        long = "allowed-warmer-image",
        env = "KILN_ALLOWED_WARMER_IMAGES",
        value_delimiter = ','
    )]
    allowed_warmer_images: Vec<String>,
    /// Service account an ImageBuild may name in spec.serviceAccountName (as
    /// --allowed-executor-image). None by default.
    #[arg(
        long = "allowed-service-account",
        env = "KILN_ALLOWED_SERVICE_ACCOUNTS",
        value_delimiter = ','
    )]
    allowed_service_accounts: Vec<String>,
    /// Capability an ImageBuild may add in spec.addCapabilities beyond the default set, like
    /// MKNOD; repeat or separate with commas. None by default.
    #[arg(
        long = "allowed-capability",
        env = "KILN_ALLOWED_CAPABILITIES",
        value_delimiter = ','
    )]
    allowed_capabilities: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KILN_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Delay before the first retry of a failed build, in seconds (doubles per retry).
    #[arg(long, default_value_t = 10)]
    retry_backoff_seconds: u64,
    /// Disable leader election (only for a single replica).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader election Lease (defaults to the Pod's namespace).
    #[arg(long, env = "KILN_LEADER_NAMESPACE")]
    leader_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "kiln-operator-leader")]
    leader_lease: String,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// The non-empty entries of a list flag (an empty environment variable gives one empty entry).
fn list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The reconcilers' settings from the flags; an empty value means "no default".
fn operator_config(args: &Args) -> anyhow::Result<OperatorConfig> {
    let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    Ok(OperatorConfig {
        executor_image: args.executor_image.clone(),
        warmer_image: args.warmer_image.clone(),
        retry_backoff: Duration::from_secs(args.retry_backoff_seconds),
        default_resources: match &args.executor_default_resources {
            Some(json) => parse_resources(json).context("--executor-default-resources")?,
            None => None,
        },
        default_push_secret: non_empty(&args.executor_default_push_secret),
        default_cache_claim: non_empty(&args.executor_cache_claim),
        insecure_registries: args.insecure_registries.clone(),
        executor_image_pull_secrets: list(&args.executor_image_pull_secrets),
        max_concurrent_builds: (args.max_concurrent_builds > 0)
            .then_some(args.max_concurrent_builds),
        max_concurrent_builds_per_namespace: (args.max_concurrent_builds_per_namespace > 0)
            .then_some(args.max_concurrent_builds_per_namespace),
        warmer_image_pull_secrets: list(&args.warmer_image_pull_secrets),
        cache_registry: non_empty(&args.cache_registry),
        retention: Effective {
            ttl_after_succeeded: parse_ttl(
                "--retention-ttl-after-succeeded",
                non_empty(&args.retention_ttl_after_succeeded).as_deref(),
            )?,
            ttl_after_failed: parse_ttl(
                "--retention-ttl-after-failed",
                non_empty(&args.retention_ttl_after_failed).as_deref(),
            )?,
            succeeded_limit: args.retention_succeeded_limit,
            failed_limit: args.retention_failed_limit,
        },
        executor_allow_privilege_escalation: args.executor_allow_privilege_escalation,
        executor_user_namespace: args.executor_user_namespace,
        overrides: OverridePolicy {
            executor_images: list(&args.allowed_executor_images),
            warmer_images: list(&args.allowed_warmer_images),
            service_accounts: list(&args.allowed_service_accounts),
            capabilities: list(&args.allowed_capabilities),
        },
        ..Default::default()
    })
}

fn parse_ttl(flag: &str, value: Option<&str>) -> anyhow::Result<Option<Duration>> {
    value
        .map(|v| kiln_operator::duration::parse(v).with_context(|| format!("{flag} {v:?}")))
        .transpose()
}

fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // kube uses rustls with ring; choose it explicitly so a build that also links aws-lc-rs
    // (feature unification) does not panic on the first TLS connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        // Colour only on a terminal: a Pod's log (a file or pipe) gets plain text.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let config = operator_config(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server (in-cluster config or KUBECONFIG)")?;
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let server = tokio::spawn(metrics.clone().serve(args.metrics_addr, stopped()));
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let hostname = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kiln-operator".into());
    let scope = Scope {
        namespaces: args.watch_namespaces.clone(),
        instance: Some(hostname.clone()),
    };
    // Ready means "up and doing its job": the API server answers, and this replica either runs
    // the controllers or waits for the Lease. A standby is ready; leadership is the
    // kiln_operator_leader metric.
    client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    metrics.ready.store(true, Ordering::Relaxed);
    let result = if args.no_leader_election {
        runtime::run(client, config, metrics.clone(), scope, stopped()).await;
        Ok(())
    } else {
        let namespace = args
            .leader_namespace
            .clone()
            .or_else(pod_namespace)
            .or_else(|| args.watch_namespaces.first().cloned())
            .unwrap_or_else(|| "default".into());
        let lock = LeaseLock::new(
            client.clone(),
            LeaseConfig {
                namespace,
                name: args.leader_lease.clone(),
                identity: format!("{hostname}_{}", std::process::id()),
                lease_duration: Duration::from_secs(args.lease_duration_seconds),
                retry_period: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
            },
        );
        let m = metrics.clone();
        lock.run(stopped(), move |stop| async move {
            let mut stop = stop;
            runtime::run(client, config, m, scope, async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        })
        .await
        .map_err(anyhow::Error::from)
    };
    metrics.ready.store(false, Ordering::Relaxed);
    server.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_settings_from_flags() {
        let args = Args::try_parse_from([
            "kiln-operator",
            "--executor-allow-privilege-escalation=false",
            "--executor-user-namespace=true",
            "--cache-registry=cache.local:5000/kiln",
            "--allowed-executor-image=reg.local/kiln/*,reg.local/other:1",
            "--allowed-capability",
            "MKNOD",
            "--allowed-capability=SYS_CHROOT",
            "--allowed-service-account=builder",
            "--allowed-warmer-image=",
        ])
        .unwrap();
        let cfg = operator_config(&args).unwrap();
        assert!(!cfg.executor_allow_privilege_escalation);
        assert!(cfg.executor_user_namespace);
        assert_eq!(cfg.cache_registry.as_deref(), Some("cache.local:5000/kiln"));
        assert_eq!(
            cfg.overrides,
            OverridePolicy {
                executor_images: vec!["reg.local/kiln/*".into(), "reg.local/other:1".into()],
                warmer_images: vec![],
                service_accounts: vec!["builder".into()],
                capabilities: vec!["MKNOD".into(), "SYS_CHROOT".into()],
            }
        );
    }

    #[test]
    fn secure_defaults() {
        let cfg = operator_config(&Args::try_parse_from(["kiln-operator"]).unwrap()).unwrap();
        assert_eq!(cfg.overrides, OverridePolicy::default());
        assert!(cfg.executor_allow_privilege_escalation);
        assert!(!cfg.executor_user_namespace);
        assert_eq!(cfg.cache_registry, None);
    }
}
