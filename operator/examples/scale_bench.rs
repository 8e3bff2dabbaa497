//! The operator at scale (run by `bash scripts/bench-operator.sh`, which starts a real API server
//! and a release kiln-operator against it): creates N ImageBuilds at once and prints the time
//! until every one has a status, the operator's peak RSS, its reconcile time quantiles and the
//! API requests per build. No kubelet runs: the executor Pods stay Pending, as on a busy cluster.
//!
//!   scale_bench --count 1000 --namespace bench --operator-pid PID \
//!       --operator-metrics http://127.0.0.1:18089/metrics

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use kiln_operator::crd::{BuildSource, ConfigMapSource, ImageBuild, ImageBuildSpec};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

struct Args {
    count: usize,
    namespace: String,
    pid: u32,
    metrics: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        count: 1000,
        namespace: "bench".into(),
        pid: 0,
        metrics: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--count" => a.count = value()?.parse()?,
            "--namespace" => a.namespace = value()?,
            "--operator-pid" => a.pid = value()?.parse()?,
            "--operator-metrics" => a.metrics = value()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(
        a.pid != 0 && !a.metrics.is_empty(),
        "--operator-pid and --operator-metrics are required"
    );
    Ok(a)
}

/// The API server's total of served requests (`apiserver_request_total`, all labels).
async fn apiserver_requests(client: &Client) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The operator's peak resident set (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// Quantile `q` of the ImageBuild reconcile time from the operator's histogram: the upper bound
/// of the bucket that holds it (buckets double from 1 ms).
fn reconcile_quantile(metrics: &str, q: f64) -> Option<f64> {
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix("kiln_reconcile_duration_seconds_bucket{") else {
            continue;
        };
        if !rest.contains("controller=\"ImageBuild\"") {
            continue;
        }
        let le = rest.split("le=\"").nth(1)?.split('"').next()?;
        let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
        let bound = if le == "+Inf" {
            u64::MAX
        } else {
            (le.parse::<f64>().ok()? * 1e6) as u64
        };
        buckets.insert(bound, count);
    }
    let total = *buckets.get(&u64::MAX)?;
    let want = total * q;
    buckets
        .iter()
        .find(|(_, c)| **c >= want)
        .map(|(b, _)| *b as f64 / 1e6)
}

fn http_get(url: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "10", url])
        .output()?;
    anyhow::ensure!(out.status.success(), "curl {url} failed");
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    // As the operator: kube's rustls with ring, chosen explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &a.namespace);
    // The API server's own background requests over a quiet second, to subtract.
    let q0 = apiserver_requests(&client).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let q1 = apiserver_requests(&client).await?;
    // q1 counts the scrape that read q0.
    let background_per_s = (q1 - q0 - 1.0).max(0.0) / 2.0;
    let before = apiserver_requests(&client).await?;
    let mut own = 1.0; // the scrape that read q1
    let start = Instant::now();
    let created: Vec<anyhow::Result<()>> = stream::iter(0..a.count)
        .map(|i| {
            let api = api.clone();
            async move {
                let b = ImageBuild::new(
                    &format!("scale-{i:05}"),
                    ImageBuildSpec {
                        source: BuildSource {
                            config_map: Some(ConfigMapSource {
                                name: "context".into(),
                            }),
                            ..Default::default()
                        },
                        destinations: vec![format!("reg.local/scale/app-{i}:1")],
                        ..Default::default()
                    },
                );
                api.create(&PostParams::default(), &b).await?;
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    own += a.count as f64;
    for r in created {
        r?;
    }
    let created_in = start.elapsed();
    let all_status = loop {
        let list = api.list(&ListParams::default()).await?;
        own += 1.0;
        let with_status = list
            .items
            .iter()
            .filter(|b| b.status.as_ref().and_then(|s| s.phase).is_some())
            .count();
        if with_status == a.count {
            break start.elapsed();
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "only {with_status} of {} ImageBuilds have a status after 600 s",
            a.count
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Let the reconciles the last statuses triggered (Pod events, Event writes) settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = apiserver_requests(&client).await?;
    own += 1.0;
    let elapsed = start.elapsed().as_secs_f64();
    let operator_requests = (after - before - own - background_per_s * elapsed).max(0.0);
    let metrics = http_get(&a.metrics)?;
    let rss = peak_rss_mib(a.pid)?;
    let p50 = reconcile_quantile(&metrics, 0.5);
    let p99 = reconcile_quantile(&metrics, 0.99);
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |s| format!("<= {:.0} ms", s * 1000.0));
    println!("ImageBuilds created at once:        {}", a.count);
    println!(
        "  created in:                       {:.1} s",
        created_in.as_secs_f64()
    );
    println!(
        "  every one with a status after:    {:.1} s   (target: 60 s)",
        all_status.as_secs_f64()
    );
    println!("operator peak RSS (VmHWM):          {rss:.0} MiB   (target: 100 MB)");
    println!("ImageBuild reconcile p50:           {}", fmt(p50));
    println!(
        "ImageBuild reconcile p99:           {}   (target: < 1 s)",
        fmt(p99)
    );
    println!(
        "API requests per build (operator): {:.1}   ({operator_requests:.0} in all; the API server's own {background_per_s:.1}/s subtracted)",
        operator_requests / a.count as f64
    );
    Ok(())
}
