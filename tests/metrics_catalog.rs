//! Issue 12.5: every metric the shipped alert rules (`packaging/dashboards/alerts.yml`) and the
//! Grafana dashboard's panels (`packaging/dashboards/grafana-dashboard.json`) name exists in the
//! real daemon's `/metrics` (fetched over loopback after one cycle), and `build_info` carries
//! the package's version. Names are read out of the PromQL by a small tokenizer.

#![allow(clippy::unwrap_used)]

#[path = "common/proc.rs"]
mod proc;

use proc::{Env, bounded};
use std::collections::BTreeSet;
use std::time::Duration;

/// The project's metric prefix: the names worth checking.
const PREFIX: &str = "chatapp_kommo_sync_";
const RULES: &str = include_str!("../packaging/dashboards/alerts.yml");
const DASHBOARD: &str = include_str!("../packaging/dashboards/grafana-dashboard.json");

/// The metric names in a PromQL expression: identifiers starting with [`PREFIX`] outside quoted
/// strings (label values), whatever follows them (`{`, `[`, `(`, `)`, a space, the end).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut flush = |word: &mut String| {
        if word.starts_with(PREFIX) {
            names.insert(std::mem::take(word));
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            flush(&mut word);
            // a quoted string: skip to its end (backslash escapes inside)
            while let Some(d) = chars.next() {
                if d == '\\' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
        } else if ident(c) && !(word.is_empty() && c.is_ascii_digit()) {
            word.push(c);
        } else {
            flush(&mut word);
        }
    }
    flush(&mut word);
    names
}

/// The `expr:` values of a Prometheus rules file: one line, or a `|`/`>` block (the lines
/// indented deeper than `expr:`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = vec![];
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(v) = t.strip_prefix("expr:") else {
            continue;
        };
        let v = v.trim();
        if v.starts_with('|') || v.starts_with('>') {
            let indent = line.len() - t.len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else {
            out.push(v.to_string());
        }
    }
    out
}

/// Every `expr` of the dashboard (panels' targets) and its template variables' queries.
fn dashboard_exprs(json: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(json, &mut out);
    out
}

/// The names an exposition offers: the sample names, the declared families (`# TYPE`) and,
/// for a histogram, its `_bucket`, `_sum` and `_count` series.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut f = t.split(' ');
            let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#')
            && let Some(end) = line.find(['{', ' '])
        {
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The names `exprs` use that `exposed` lacks, each with the expression naming it.
fn missing(exprs: &[String], exposed: &BTreeSet<String>) -> Vec<String> {
    exprs
        .iter()
        .flat_map(|e| {
            metric_names(e)
                .into_iter()
                .filter(|n| !exposed.contains(n))
                .map(move |n| format!("{n} (in `{}`)", e.trim()))
        })
        .collect()
}

#[test]
fn the_tokenizer_finds_names_and_the_check_fails_on_a_made_up_one() {
    let names = metric_names(
        "sum by (api) (rate(chatapp_kommo_sync_rate_limited_total{api=\"chatapp_kommo_sync_x\"}[5m])) \
         / chatapp_kommo_sync_b or chatapp_kommo_sync_c[1h] > 0 unless other_metric",
    );
    let want: BTreeSet<String> = [
        "chatapp_kommo_sync_b",
        "chatapp_kommo_sync_c",
        "chatapp_kommo_sync_rate_limited_total",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    let exposed = exposed_names(
        "# HELP chatapp_kommo_sync_b B.\n# TYPE chatapp_kommo_sync_b gauge\nchatapp_kommo_sync_b 1\n",
    );
    let bad = vec!["chatapp_kommo_sync_b + chatapp_kommo_sync_made_up_total".to_string()];
    let m = missing(&bad, &exposed);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("chatapp_kommo_sync_made_up_total"),
        "{m:?}"
    );
    // a block expression of a rules file is read whole
    let yaml = "rules:\n  - alert: A\n    expr: |\n      chatapp_kommo_sync_a\n      > chatapp_kommo_sync_b\n    for: 1m\n  - alert: B\n    expr: chatapp_kommo_sync_c == 1\n";
    let exprs = rule_exprs(yaml);
    assert_eq!(exprs.len(), 2, "{exprs:?}");
    assert!(exprs[0].contains("chatapp_kommo_sync_b") && !exprs[0].contains("for:"));
    assert_eq!(exprs[1], "chatapp_kommo_sync_c == 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_rules_and_the_dashboard_is_exposed() {
    let rules = rule_exprs(RULES);
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let panels = dashboard_exprs(&dashboard);
    let named = |exprs: &[String]| -> BTreeSet<String> {
        exprs.iter().flat_map(|e| metric_names(e)).collect()
    };
    // the parsers found something worth checking (an empty list would pass anything)
    assert!(rules.len() >= 6, "alert expressions found: {rules:?}");
    assert!(named(&rules).len() >= 6, "{:?}", named(&rules));
    assert!(panels.len() >= 10, "panel expressions found: {panels:?}");
    assert!(named(&panels).len() >= 15, "{:?}", named(&panels));

    bounded(120, async {
        let (env, port) = Env::listening().await;
        let mut d = env.spawn(&[]);
        d.ready(Duration::from_secs(30)).await;
        d.signal("USR1");
        d.cycle_done(1, Duration::from_secs(30)).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let body = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap();
        let exposed = exposed_names(&body);
        let mut gaps = missing(&rules, &exposed);
        gaps.extend(missing(&panels, &exposed));
        assert!(
            gaps.is_empty(),
            "named by packaging/dashboards/ but not in /metrics:\n{}\n--- /metrics:\n{body}",
            gaps.join("\n")
        );
        let build = format!(
            "chatapp_kommo_sync_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(body.lines().any(|l| l == build), "{build} in:\n{body}");
        d.term(Duration::from_secs(10)).await;
    })
    .await;
}
