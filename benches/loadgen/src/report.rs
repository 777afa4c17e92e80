//! Turns a run's `results.csv` (one row per figure per broker) into `summary.md`,
//! `summary.csv` (one row per figure, a column per broker, natter's ratios) and `latency.png`
//! (latency distributions by percentile).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::results::{distribution_file, CSV_HEADER};

/// Columns in this order; brokers not listed here follow in order of appearance.
const KNOWN: [&str; 9] = [
    "natter",
    "natter-pg",
    "natter-cluster",
    "natter-plain",
    "natter-nogc",
    "natter-norcpt",
    "mosquitto",
    "rumqttd",
    "raw",
];

/// The ratio columns (numerator, denominator), where both columns ran: the chat server against
/// mosquitto and rumqttd, natter's routing alone against rumqttd's, the history in PostgreSQL
/// against SQLite, three nodes over NATS against one on the same PostgreSQL, and what group
/// commit and delivered receipts are worth.
const RATIOS: [(&str, &str); 7] = [
    ("natter", "mosquitto"),
    ("natter-pg", "natter"),
    ("natter-cluster", "natter-pg"),
    ("natter", "rumqttd"),
    ("natter-plain", "rumqttd"),
    ("natter-nogc", "natter"),
    ("natter-norcpt", "natter"),
];

/// What each scenario is, for the Markdown.
fn describe(scenario: &str) -> (&'static str, &'static str) {
    match scenario {
        "p2p-max" => (
            "1:1, closed loop (maximum throughput)",
            "Publisher/subscriber pairs on their own topics, QoS 1, each publisher at most \
             `window` messages ahead of its subscriber.",
        ),
        "p2p-rate" => (
            "1:1, fixed rate (latency)",
            "The same pairs at a fixed total publish rate; latency is what matters here.",
        ),
        s if s.starts_with("p2p-rate-") => (
            "1:1 at another fixed rate (the latency curve)",
            "`p2p-rate` at the total rate the name says (`compare.sh`'s sweep): how latency \
             grows with the load.",
        ),
        "fanout" => (
            "Fan-out",
            "One publisher, many subscribers of one topic, QoS 1, closed loop on the slowest \
             subscriber. `delivered` counts deliveries (messages × subscribers).",
        ),
        "idle" => (
            "Idle connections",
            "Clients connect (clean session) and subscribe to a topic of their own, then sit \
             idle. RSS per connection = (RSS after − RSS before) / clients.",
        ),
        "storm" => (
            "Reconnect storm",
            "Clients with persistent sessions subscribe and disconnect; messages are queued for \
             them (QoS 1); then all reconnect at once. Time is counted from the start of the \
             reconnect.",
        ),
        _ => ("", ""),
    }
}

#[derive(Debug, Default)]
struct Figure {
    unit: String,
    better: String,
    values: BTreeMap<String, f64>,
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        return "—".to_string();
    }
    let a = v.abs();
    let s = if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    // Thousands separators for big integers.
    if a >= 10_000.0 {
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return format!("{sign}{out}");
    }
    s
}

fn ratio(f: &Figure, (num, den): (&str, &str)) -> Option<f64> {
    if f.better == "info" {
        return None;
    }
    let (n, o) = (*f.values.get(num)?, *f.values.get(den)?);
    (n.is_finite() && o.is_finite() && o != 0.0).then(|| n / o)
}

pub fn write(dir: &Path, header: Option<&Path>) -> anyhow::Result<()> {
    let csv_path = dir.join("results.csv");
    let text = std::fs::read_to_string(&csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    // (scenario, figure) in order of first appearance.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut figures: BTreeMap<(String, String), Figure> = BTreeMap::new();
    let mut brokers: Vec<String> = Vec::new();
    for line in text.lines() {
        if line == CSV_HEADER || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        let [scenario, figure, unit, better, broker, value] = cols[..] else {
            anyhow::bail!("malformed line in {}: {line}", csv_path.display());
        };
        let key = (scenario.to_string(), figure.to_string());
        if !figures.contains_key(&key) {
            order.push(key.clone());
        }
        let f = figures.entry(key).or_default();
        f.unit = unit.to_string();
        f.better = better.to_string();
        f.values
            .insert(broker.to_string(), value.parse().unwrap_or(f64::NAN));
        if !brokers.iter().any(|b| b == broker) {
            brokers.push(broker.to_string());
        }
    }
    // Each scenario's figures together, scenarios in the order they first ran: a figure only a
    // later broker has (natter-pg's all-server CPU) would otherwise open the section again
    // after the scenarios that ran in between (the sweep's rates).
    let mut scenarios: Vec<&str> = Vec::new();
    for (scenario, _) in &order {
        if !scenarios.contains(&scenario.as_str()) {
            scenarios.push(scenario);
        }
    }
    let rank: BTreeMap<String, usize> = scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), i))
        .collect();
    order.sort_by_key(|(scenario, _)| rank[scenario]);
    brokers.sort_by_key(|b| KNOWN.iter().position(|k| k == b).unwrap_or(KNOWN.len()));
    let ran = |name: &str| brokers.iter().any(|b| b == name);
    let ratios: Vec<(&str, &str)> = RATIOS
        .into_iter()
        .filter(|(n, d)| ran(n) && ran(d))
        .collect();

    // Markdown.
    let mut md = String::new();
    if let Some(h) = header {
        md.push_str(
            &std::fs::read_to_string(h).with_context(|| format!("cannot read {}", h.display()))?,
        );
        md.push('\n');
    }
    md.push_str(
        "Ratios are the first column ÷ the second: for a *higher is better* figure above 1 means \
         the first is ahead, for a *lower is better* figure below 1 does. `raw` is the TCP \
         forwarder baseline (no MQTT), shown where it applies.\n",
    );
    let mut current = String::new();
    for key in &order {
        let f = &figures[key];
        if key.0 != current {
            current = key.0.clone();
            let (title, text) = describe(&current);
            let _ = write!(
                md,
                "\n### `{current}`: {title}\n\n{text}\n\n| figure | unit | better |"
            );
            for b in &brokers {
                let _ = write!(md, " {b} |");
            }
            for (n, d) in &ratios {
                let _ = write!(md, " {n}/{d} |");
            }
            md.push_str("\n|---|---|---|");
            for _ in 0..brokers.len() + ratios.len() {
                md.push_str("--:|");
            }
            md.push('\n');
        }
        let _ = write!(md, "| {} | {} | {} |", key.1, f.unit, f.better);
        for b in &brokers {
            let _ = write!(
                md,
                " {} |",
                f.values.get(b).map_or("—".to_string(), |v| fmt_value(*v))
            );
        }
        for pair in &ratios {
            let _ = write!(
                md,
                " {} |",
                ratio(f, *pair).map_or("—".to_string(), |r| format!("{r:.2}×"))
            );
        }
        md.push('\n');
    }
    if dir.join("latency.png").exists() || has_distributions(dir) {
        md.push_str("\nLatency distributions: `latency.png`.\n");
    }

    // CSV, one row per figure.
    let mut csv = String::from("scenario,figure,unit,better");
    for b in &brokers {
        let _ = write!(csv, ",{b}");
    }
    for (n, d) in &ratios {
        let _ = write!(csv, ",{n}/{d}");
    }
    csv.push('\n');
    for key in &order {
        let f = &figures[key];
        let _ = write!(csv, "{},{},{},{}", key.0, key.1, f.unit, f.better);
        for b in &brokers {
            let _ = write!(
                csv,
                ",{}",
                f.values.get(b).map_or(String::new(), |v| v.to_string())
            );
        }
        for pair in &ratios {
            let _ = write!(
                csv,
                ",{}",
                ratio(f, *pair).map_or(String::new(), |r| format!("{r:.3}"))
            );
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("summary.md"), md)?;
    std::fs::write(dir.join("summary.csv"), csv)?;
    if has_distributions(dir) {
        plot(dir, &brokers).context("cannot draw latency.png")?;
    }
    eprintln!(
        "wrote {}",
        ["summary.md", "summary.csv", "latency.png"]
            .iter()
            .map(|f| dir.join(f).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn has_distributions(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("latency-"))
    })
}

/// Registers a TrueType font for the plot's text; `false` if none was found (the plot is then
/// drawn without text). `LOADGEN_FONT` names one explicitly.
fn load_font() -> bool {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(f) = std::env::var("LOADGEN_FONT") {
        candidates.push(f);
    }
    candidates.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
            "/Library/Fonts/Arial.ttf",
        ]
        .map(String::from),
    );
    for path in candidates {
        if let Ok(bytes) = std::fs::read(&path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

fn color(broker: &str) -> RGBColor {
    match broker {
        "natter" => RGBColor(220, 50, 47),
        "natter-pg" => RGBColor(181, 137, 0),
        "natter-cluster" => RGBColor(147, 161, 161),
        "natter-plain" => RGBColor(203, 75, 22),
        "natter-nogc" => RGBColor(211, 54, 130),
        "natter-norcpt" => RGBColor(42, 161, 152),
        "mosquitto" => RGBColor(38, 139, 210),
        "rumqttd" => RGBColor(133, 153, 0),
        "raw" => RGBColor(88, 88, 88),
        _ => RGBColor(108, 113, 196),
    }
}

/// `-log10(1 - q)`: 0 at the median's left end, 1 at p90, 2 at p99, ...
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-9).log10()
}

fn nines_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{q:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn read_distribution(path: &Path) -> Option<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let pts: Vec<(f64, f64)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (q, v) = l.split_once(',')?;
            Some((q.parse().ok()?, v.parse().ok()?))
        })
        .filter(|(q, v): &(f64, f64)| *q < 1.0 && *v > 0.0)
        .map(|(q, v)| (nines(q), v))
        .collect();
    (!pts.is_empty()).then_some(pts)
}

fn plot(dir: &Path, brokers: &[String]) -> anyhow::Result<()> {
    let text = load_font();
    if !text {
        eprintln!(
            "no TrueType font found (set LOADGEN_FONT=/path/to/font.ttf): latency.png has no text"
        );
    }
    let panels = [
        (
            "p2p-rate",
            "end-to-end",
            "1:1 at a fixed rate: end-to-end latency",
        ),
        ("p2p-rate", "PUBACK", "1:1 at a fixed rate: PUBACK latency"),
        (
            "p2p-max",
            "end-to-end",
            "1:1 closed loop (max throughput): end-to-end",
        ),
        ("fanout", "end-to-end", "fan-out: end-to-end latency"),
    ];
    let path = dir.join("latency.png");
    let root = BitMapBackend::new(&path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, (scenario, what, title)) in root.split_evenly((2, 2)).iter().zip(panels) {
        let series: Vec<(&String, Vec<(f64, f64)>)> = brokers
            .iter()
            .filter_map(|b| {
                read_distribution(&distribution_file(dir, scenario, what, b)).map(|pts| (b, pts))
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let all = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, v)| v));
        let lo = all.clone().fold(f64::INFINITY, f64::min).max(1.0) / 1.5;
        let hi = all.fold(0.0, f64::max).max(lo * 10.0) * 1.5;
        let mut builder = ChartBuilder::on(area);
        builder.margin(18).margin_right(45);
        if text {
            builder
                .caption(title, ("sans-serif", 22))
                .x_label_area_size(45)
                .y_label_area_size(75);
        }
        let mut chart = builder.build_cartesian_2d(0f64..5f64, (lo..hi).log_scale())?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("percentile")
                .y_desc("latency (µs, log scale)")
                .x_labels(6)
                .x_label_formatter(&|x| nines_label(*x))
                .y_label_formatter(&|y| fmt_value(*y));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        for (broker, pts) in series {
            let c = color(broker);
            let drawn = chart.draw_series(LineSeries::new(pts, c.stroke_width(3)))?;
            if text {
                drawn.label(broker.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 16))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
