//! The Grafana dashboard the chart ships (`charts/kiln/dashboards/kiln-operator.json`) and the
//! metrics table of the chart's README against what the operator really exposes: every metric a
//! panel queries is one the operator registers (with the suffix its type gives it), every
//! registered metric is in the README, and the panels cover what a build platform watches.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln_operator::metrics::{KindLabel, Metrics, NamespaceLabel};
use kiln_testkit::repo_root;
use serde_json::Value;

/// Metric families of the operator: name and OpenMetrics type, from `# TYPE` lines. A labelled
/// family is only rendered once it has a series, so one of each is recorded first.
fn families() -> Vec<(String, String)> {
    let m = Metrics::new();
    m.reconciled("ImageBuild", true, Duration::from_millis(5));
    m.build_finished("team-a", true, Some(Duration::from_secs(9)), Some((1, 2)));
    m.reconcile_errors
        .get_or_create(&KindLabel { kind: "CacheWarm" })
        .inc();
    m.warms_failed
        .get_or_create(&NamespaceLabel {
            namespace: "team-a".into(),
        })
        .inc();
    m.render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, ty) = l.split_once(' ').expect("# TYPE name type");
            (name.to_string(), ty.to_string())
        })
        .collect()
}

/// The series names a family of this type exposes.
fn series(name: &str, ty: &str) -> Vec<String> {
    match ty {
        "counter" => vec![format!("{name}_total")],
        "histogram" => ["_bucket", "_count", "_sum"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        _ => vec![name.to_string()],
    }
}

/// Every `kiln_…` identifier in `text`.
fn kiln_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("kiln_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_panel_queries_metrics_the_operator_exposes() {
    let path = repo_root().join("charts/kiln/dashboards/kiln-operator.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exposed: BTreeSet<String> = families().iter().flat_map(|(n, t)| series(n, t)).collect();
    assert!(exposed.contains("kiln_reconcile_total"), "{exposed:?}");
    let mut all = Vec::new();
    exprs(&dash["panels"], &mut all);
    assert!(all.len() >= 10, "too few queries: {all:?}");
    let mut used = BTreeSet::new();
    for e in &all {
        for name in kiln_names(e) {
            assert!(
                exposed.contains(&name),
                "panel query {e:?} uses {name}, which the operator does not expose ({exposed:?})"
            );
            used.insert(name);
        }
    }
    // What the issue asks a build platform to see: queue depth and wait, build duration by
    // namespace and result, cache hit ratio, warm failures, reconcile totals and durations.
    for needed in [
        "kiln_build_queue_depth",
        "kiln_build_queue_wait_seconds_bucket",
        "kiln_build_run_duration_seconds_bucket",
        "kiln_build_run_duration_seconds_count",
        "kiln_build_cache_hits_total",
        "kiln_build_cache_misses_total",
        "kiln_cache_warms_failed_total",
        "kiln_reconcile_total",
        "kiln_reconcile_duration_seconds_bucket",
        "kiln_operator_leader",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
    // Every query reads the data source chosen in the dashboard, not one of the author's.
    let mut sources = Vec::new();
    collect_uids(&dash["panels"], &mut sources);
    assert!(!sources.is_empty());
    assert!(sources.iter().all(|u| u == "${datasource}"), "{sources:?}");
}

fn collect_uids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(ds)) = m.get("datasource") {
                if let Some(Value::String(u)) = ds.get("uid") {
                    out.push(u.clone());
                }
            }
            m.values().for_each(|v| collect_uids(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_uids(v, out)),
        _ => {}
    }
}

#[test]
fn the_chart_readme_lists_every_metric() {
    let readme = std::fs::read_to_string(repo_root().join("charts/kiln/README.md")).unwrap();
    let listed = kiln_names(&readme);
    for (name, ty) in families() {
        let shown = series(&name, &ty);
        // A histogram is listed by its family name, a counter by its `_total` series.
        assert!(
            listed.contains(&name) || shown.iter().any(|s| listed.contains(s)),
            "charts/kiln/README.md does not list {name} ({ty})"
        );
    }
}
