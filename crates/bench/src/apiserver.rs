//! The apiserver's own account of the work: its Prometheus metrics (`/metrics`, read with the
//! admin token), scraped before and after a phase and subtracted.
//!
//! - `apiserver_request_total{verb,resource,subresource,code,…}`: every request it served;
//! - `apiserver_watch_events_total{kind,…}`: watch events it sent to all watchers;
//! - `apiserver_registered_watchers{kind,…}`: watches open now.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use kube::Client;
use serde_json::{Value, json};

use crate::stats::round;

/// One sample of a metric family.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape(Vec<Sample>);

/// Verbs that change state (the apiserver reports its own verbs, upper case).
pub const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];

pub async fn scrape(admin: &Client) -> Result<Scrape> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = admin
        .request_text(req)
        .await
        .context("reading the apiserver's /metrics")?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Scrape {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (head, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Scrape(out)
}

/// `a="x",b="y"`; values here never contain quotes or commas we need to honour beyond escapes.
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

impl Scrape {
    fn sum(&self, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name && keep(&s.labels))
            .map(|s| s.value)
            .sum()
    }

    /// Watches open now, by kind.
    pub fn watchers(&self) -> BTreeMap<String, f64> {
        let mut by_kind = BTreeMap::new();
        for s in self
            .0
            .iter()
            .filter(|s| s.name == "apiserver_registered_watchers")
        {
            let kind = s.labels.get("kind").cloned().unwrap_or_default();
            *by_kind.entry(kind).or_insert(0.0) += s.value;
        }
        by_kind
    }

    /// Long-running WATCH requests in flight, all resources.
    pub fn watch_requests(&self) -> f64 {
        self.sum("apiserver_longrunning_gauge", |l| {
            l.get("verb").map(String::as_str) == Some("WATCH")
        })
    }
}

/// What the apiserver did between two scrapes.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Requests by "VERB resource[/subresource]" (watches count when they end).
    pub requests: BTreeMap<String, f64>,
    /// Requests answered 409 Conflict.
    pub conflicts: f64,
    /// Watch events sent, by kind.
    pub watch_events: BTreeMap<String, f64>,
}

pub fn delta(before: &Scrape, after: &Scrape) -> Delta {
    let mut d = Delta::default();
    for (s, inc) in increases(before, after, "apiserver_request_total") {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let resource = match (get("resource"), get("subresource")) {
            (r, _) if r.is_empty() => "(non-resource)".to_owned(),
            (r, sub) if sub.is_empty() => r,
            (r, sub) => format!("{r}/{sub}"),
        };
        // kube-apiserver 1.20 counts a GET of one custom resource as LIST (checked: n GETs of an
        // Abnormal add n to verb="LIST"), so for custom resources the two cannot be told apart.
        let group = get("group");
        let builtin = group.is_empty() || group.ends_with(".k8s.io") || group == "apps";
        let verb = match get("verb").as_str() {
            "LIST" if !builtin => "GET|LIST".to_owned(),
            v => v.to_owned(),
        };
        *d.requests
            .entry(format!("{verb} {resource}"))
            .or_insert(0.0) += inc;
        if get("code") == "409" {
            d.conflicts += inc;
        }
    }
    for (s, inc) in increases(before, after, "apiserver_watch_events_total") {
        let kind = s.labels.get("kind").cloned().unwrap_or_default();
        *d.watch_events.entry(kind).or_insert(0.0) += inc;
    }
    d
}

/// How much each series of counter `name` grew. Series are matched by their full label set, so
/// one that appears between the scrapes counts from zero.
fn increases<'a>(before: &Scrape, after: &'a Scrape, name: &str) -> Vec<(&'a Sample, f64)> {
    let id = |s: &Sample| -> String {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.join(",")
    };
    let old: BTreeMap<String, f64> = before
        .0
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (id(s), s.value))
        .collect();
    after
        .0
        .iter()
        .filter(|s| s.name == name)
        .map(|s| (s, s.value - old.get(&id(s)).copied().unwrap_or(0.0)))
        .filter(|(_, inc)| *inc > 0.0)
        .collect()
}

impl Delta {
    pub fn add(&mut self, other: &Delta) {
        for (k, v) in &other.requests {
            *self.requests.entry(k.clone()).or_insert(0.0) += v;
        }
        for (k, v) in &other.watch_events {
            *self.watch_events.entry(k.clone()).or_insert(0.0) += v;
        }
        self.conflicts += other.conflicts;
    }

    pub fn writes(&self) -> f64 {
        self.requests
            .iter()
            .filter(|(k, _)| WRITE_VERBS.iter().any(|v| k.starts_with(&format!("{v} "))))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every request except the scrapes of /metrics themselves.
    pub fn requests_total(&self) -> f64 {
        self.requests
            .iter()
            .filter(|(k, _)| !k.ends_with("(non-resource)"))
            .map(|(_, v)| v)
            .sum()
    }

    /// Requests except the scrapes and those on `resources` (any verb).
    pub fn requests_except(&self, resources: &[&str]) -> f64 {
        self.requests
            .iter()
            .filter(|(k, _)| !k.ends_with("(non-resource)"))
            .filter(|(k, _)| {
                let resource = k.split_once(' ').map_or("", |(_, r)| r);
                !resources.contains(&resource)
            })
            .map(|(_, v)| v)
            .sum()
    }

    pub fn watch_events_of(&self, kind: &str) -> f64 {
        self.watch_events.get(kind).copied().unwrap_or(0.0)
    }

    /// The delta divided by `n` (per Abnormal), as JSON.
    pub fn per(&self, n: usize) -> Value {
        let n = n.max(1) as f64;
        let requests: BTreeMap<&String, f64> = self
            .requests
            .iter()
            .filter(|(k, _)| !k.ends_with("(non-resource)"))
            .map(|(k, v)| (k, round(v / n)))
            .collect();
        let events: BTreeMap<&String, f64> = self
            .watch_events
            .iter()
            .map(|(k, v)| (k, round(v / n)))
            .collect();
        json!({
            "writes": round(self.writes() / n),
            "requests": round(self.requests_total() / n),
            "conflicts": round(self.conflicts / n),
            "byRequest": requests,
            "watchEventsByKind": events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts_counters() {
        let before = parse(
            "# HELP x\napiserver_request_total{code=\"201\",resource=\"abnormals\",subresource=\"\",verb=\"POST\"} 3\n",
        );
        let after = parse(
            "apiserver_request_total{code=\"201\",resource=\"abnormals\",subresource=\"\",verb=\"POST\"} 10\n\
             apiserver_request_total{code=\"409\",resource=\"abnormals\",subresource=\"status\",verb=\"PUT\"} 2\n\
             apiserver_request_total{code=\"200\",resource=\"\",subresource=\"\",verb=\"GET\"} 5\n\
             apiserver_watch_events_total{group=\"diagnosis.netease.com\",kind=\"Abnormal\",version=\"v1\"} 4\n",
        );
        let d = delta(&before, &after);
        assert_eq!(d.requests["POST abnormals"], 7.0);
        assert_eq!(d.requests["PUT abnormals/status"], 2.0);
        assert_eq!(d.writes(), 9.0);
        assert_eq!(d.requests_total(), 9.0);
        assert_eq!(d.conflicts, 2.0);
        assert_eq!(d.watch_events_of("Abnormal"), 4.0);
    }

    #[test]
    fn label_values_may_hold_escapes_and_commas() {
        let s = parse("m{a=\"x,\\\"y\",b=\"z\"} 1\n");
        assert_eq!(s.0[0].labels["a"], "x,\"y");
        assert_eq!(s.0[0].labels["b"], "z");
    }
}
