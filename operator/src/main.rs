//! kiln-operator: parses flags, sets up logging, metrics and leader election, and runs the
//! controllers from the library until SIGTERM/SIGINT. No reconcile logic lives here.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kiln_operator::config::OperatorConfig;
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
    /// Default warmer image (a CacheWarm may override it with spec.warmerImage).
    #[arg(long, env = "KILN_WARMER_IMAGE", default_value_t = OperatorConfig::default().warmer_image)]
    warmer_image: String,
    /// Watch one namespace only (all namespaces when unset).
    #[arg(long, env = "KILN_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
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

fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let config = OperatorConfig {
        executor_image: args.executor_image.clone(),
        warmer_image: args.warmer_image.clone(),
        retry_backoff: Duration::from_secs(args.retry_backoff_seconds),
        ..Default::default()
    };
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
        namespace: args.watch_namespace.clone(),
        instance: Some(hostname.clone()),
    };
    let result = if args.no_leader_election {
        runtime::run(client, config, metrics, scope, stopped()).await;
        Ok(())
    } else {
        let namespace = args
            .leader_namespace
            .clone()
            .or_else(pod_namespace)
            .or_else(|| args.watch_namespace.clone())
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
        lock.run(stopped(), move |stop| async move {
            let mut stop = stop;
            runtime::run(client, config, metrics, scope, async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
        })
        .await
        .map_err(anyhow::Error::from)
    };
    server.abort();
    result
}
