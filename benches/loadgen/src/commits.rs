//! natter's history commits during a scenario, from its `/metrics` before and after: commits
//! per second, messages per commit, and the p50/p99 of each commit's parts (the oldest
//! message's wait in the writer's queue, the statements, the COMMIT with its fsync).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::chat;
use crate::results::{Better, Results};

/// natter's histograms of one commit, as named in `/metrics`, and the figure each becomes.
const PARTS: [(&str, &str); 3] = [
    ("history_commit_wait_milliseconds", "commit queue wait"),
    ("history_commit_sql_milliseconds", "commit SQL"),
    ("history_commit_sync_milliseconds", "commit fsync (COMMIT)"),
];
const BATCH: &str = "history_commit_batch_size";

/// (upper bound, cumulative count) per bucket, +Inf last.
type Buckets = Vec<(f64, f64)>;

/// One reading of natter's histograms.
pub struct Reading {
    at: Instant,
    /// Histogram name → its buckets and sum.
    histograms: HashMap<String, (Buckets, f64)>,
}

/// Reads natter's `/metrics` at `http`.
pub async fn read(http: SocketAddr) -> anyhow::Result<Reading> {
    let (status, body) = chat::get(http, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics: HTTP {status}");
    let mut histograms: HashMap<String, (Buckets, f64)> = HashMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("metrics line {line}"))?;
        let Some(key) = key.strip_prefix("natter_") else {
            continue;
        };
        if let Some((name, bound)) = key.split_once("_bucket{le=\"") {
            let bound = bound.trim_end_matches("\"}");
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse()?
            };
            let entry = histograms.entry(name.to_string()).or_default();
            entry.0.push((bound, value));
        } else if let Some(name) = key.strip_suffix("_sum") {
            histograms.entry(name.to_string()).or_default().1 = value;
        }
    }
    Ok(Reading {
        at: Instant::now(),
        histograms,
    })
}

impl Reading {
    /// What happened between `before` and this reading: (buckets, count, sum).
    fn since(&self, before: &Reading, name: &str) -> Option<(Buckets, f64, f64)> {
        let (now, sum) = self.histograms.get(name)?;
        let (then, sum_then) = before.histograms.get(name)?;
        let buckets: Buckets = now
            .iter()
            .zip(then)
            .map(|((bound, n), (_, m))| (*bound, n - m))
            .collect();
        let count = buckets.last()?.1;
        (count > 0.0).then_some((buckets, count, sum - sum_then))
    }

    /// Adds the commit figures between `before` and this reading to `r`.
    pub fn figures(&self, before: &Reading, r: &mut Results) {
        let Some((_, commits, messages)) = self.since(before, BATCH) else {
            return;
        };
        let secs = self
            .at
            .duration_since(before.at)
            .max(Duration::from_millis(1));
        r.add(
            "history commits (whole run)",
            "commits/s",
            Better::Info,
            commits / secs.as_secs_f64(),
        );
        r.add(
            "messages per commit",
            "msgs",
            Better::Info,
            messages / commits,
        );
        for (name, figure) in PARTS {
            let Some((buckets, count, _)) = self.since(before, name) else {
                continue;
            };
            for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
                let ms = quantile(&buckets, count * q);
                r.add(
                    &format!("{figure} {label}"),
                    "µs",
                    Better::Lower,
                    ms * 1000.0,
                );
            }
        }
    }
}

/// The value below which `rank` of the observations fall, interpolated linearly inside its
/// bucket (the last finite bound for the +Inf bucket).
fn quantile(buckets: &[(f64, f64)], rank: f64) -> f64 {
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            if !bound.is_finite() {
                return lower.0;
            }
            let inside = (cumulative - lower.1).max(1e-9);
            return lower.0 + (bound - lower.0) * (rank - lower.1) / inside;
        }
        lower = (bound, cumulative);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [
            (0.1, 0.0),
            (0.2, 50.0),
            (0.5, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&b, 25.0) - 0.15).abs() < 1e-9);
        assert!((quantile(&b, 50.0) - 0.2).abs() < 1e-9);
        assert!((quantile(&b, 99.0) - 0.494).abs() < 1e-9);
        let over = [(1.0, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&over, 5.0), 1.0);
    }
}
