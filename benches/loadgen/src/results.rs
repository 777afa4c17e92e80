//! Figures as the scenarios produce them: rows appended to `results.csv`, and latency
//! distributions written as percentile tables for the plot.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;

/// Which way a figure is better; `Info` figures get no ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    Info,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Info => "info",
        }
    }
}

/// One figure of one scenario on one broker.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub unit: String,
    pub better: Better,
    pub value: f64,
}

/// The header of `results.csv`.
pub const CSV_HEADER: &str = "scenario,figure,unit,better,broker,value";

/// Collects the figures of one `loadgen run`.
pub struct Results {
    pub scenario: String,
    pub broker: String,
    pub rows: Vec<Row>,
    latency_dir: Option<PathBuf>,
}

/// A new histogram of nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Results {
    pub fn new(scenario: &str, broker: &str, latency_dir: Option<PathBuf>) -> Results {
        Results {
            scenario: scenario.to_string(),
            broker: broker.to_string(),
            rows: Vec::new(),
            latency_dir,
        }
    }

    pub fn add(&mut self, figure: &str, unit: &str, better: Better, value: f64) {
        self.rows.push(Row {
            scenario: self.scenario.clone(),
            figure: figure.to_string(),
            unit: unit.to_string(),
            better,
            value,
        });
    }

    /// p50/p99/p99.9 (and max) of a latency histogram, in microseconds; the full distribution
    /// goes to the latency directory for the plot.
    pub fn latency(
        &mut self,
        what: &str,
        h: &Histogram<u64>,
        with_max: bool,
    ) -> anyhow::Result<()> {
        if h.is_empty() {
            return Ok(());
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        self.add(&format!("{what} p50"), "µs", Better::Lower, us(0.50));
        self.add(&format!("{what} p99"), "µs", Better::Lower, us(0.99));
        self.add(&format!("{what} p99.9"), "µs", Better::Lower, us(0.999));
        if with_max {
            self.add(
                &format!("{what} max"),
                "µs",
                Better::Lower,
                h.max() as f64 / 1000.0,
            );
        }
        if let Some(dir) = &self.latency_dir {
            write_distribution(dir, &self.scenario, what, &self.broker, h)?;
        }
        Ok(())
    }

    /// Appends the rows to `path` (writing the header first if the file is new).
    pub fn append_csv(&self, path: &Path) -> anyhow::Result<()> {
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut out = String::new();
        if new {
            out.push_str(CSV_HEADER);
            out.push('\n');
        }
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{}",
                r.scenario,
                r.figure,
                r.unit,
                r.better.as_str(),
                self.broker,
                r.value
            );
        }
        f.write_all(out.as_bytes())?;
        Ok(())
    }

    pub fn print(&self) {
        for r in &self.rows {
            eprintln!(
                "  {:<10} {:<28} {:>14.2} {}",
                self.broker, r.figure, r.value, r.unit
            );
        }
    }
}

/// File name of a latency distribution.
pub fn distribution_file(dir: &Path, scenario: &str, what: &str, broker: &str) -> PathBuf {
    let what: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("latency-{scenario}-{what}-{broker}.csv"))
}

/// Writes `quantile,latency_us` at evenly spaced "nines" (0, 90%, 99%, ... 99.999%) and the max.
fn write_distribution(
    dir: &Path,
    scenario: &str,
    what: &str,
    broker: &str,
    h: &Histogram<u64>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut out = String::from("quantile,latency_us\n");
    for i in 0..=100 {
        let nines = f64::from(i) * 0.05;
        let q = 1.0 - 10f64.powf(-nines);
        let _ = writeln!(out, "{q},{}", h.value_at_quantile(q) as f64 / 1000.0);
    }
    let _ = writeln!(out, "1,{}", h.max() as f64 / 1000.0);
    let path = distribution_file(dir, scenario, what, broker);
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
}
