//! Measurement helpers for the benchmark (`cargo run --release -p ambient-tests --bin ambient-bench`):
//! latency samples with percentiles, and the markdown/JSON report. Timing lives here, never in
//! test assertions.

use std::time::Duration;

use serde::Serialize;

/// Latency samples of one measurement.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0..=1), nearest-rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort();
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }

    /// p50, p99 and max in milliseconds.
    pub fn summary(&self) -> Option<LatencySummary> {
        Some(LatencySummary {
            n: self.len(),
            p50_ms: ms(self.quantile(0.50)?),
            p99_ms: ms(self.quantile(0.99)?),
            max_ms: ms(self.quantile(1.0)?),
        })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// p50/p99/max of a latency measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub n: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// One row of the report: a measurement beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub what: String,
    /// The measured figure.
    pub value: Figure,
    /// The baseline measured in the same run, if the measurement has one.
    pub baseline: Option<(String, Figure)>,
    /// The target from the issue, as text.
    pub target: String,
    /// Whether the target was met, when it can be decided.
    pub met: Option<bool>,
}

/// A measured figure.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Figure {
    /// Latencies.
    Latency(LatencySummary),
    /// A single number with its unit.
    Scalar {
        /// The value.
        value: f64,
        /// Its unit.
        unit: String,
    },
    /// Not measured, with the reason.
    Missing {
        /// Why.
        missing: String,
    },
}

impl Figure {
    fn cell(&self) -> String {
        match self {
            Figure::Latency(l) => {
                format!("p50 {:.2} / p99 {:.2} / max {:.2} ms (n={})", l.p50_ms, l.p99_ms, l.max_ms, l.n)
            }
            Figure::Scalar { value, unit } => format!("{value:.1} {unit}"),
            Figure::Missing { missing } => format!("not measured: {missing}"),
        }
    }
}

/// Renders the rows as a markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| measurement | value | baseline (same run) | ratio p50 | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (bname, bcell, ratio) = match (&r.baseline, &r.value) {
            (Some((n, b @ Figure::Latency(bl))), Figure::Latency(l)) => (
                n.clone(),
                b.cell(),
                if bl.p50_ms > 0.0 { format!("{:.2}×", l.p50_ms / bl.p50_ms) } else { "—".into() },
            ),
            (Some((n, b)), _) => (n.clone(), b.cell(), "—".into()),
            (None, _) => ("—".into(), String::new(), "—".into()),
        };
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        let base = if bcell.is_empty() { bname } else { format!("{bname}: {bcell}") };
        s.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n", r.what, r.value.cell(), base, ratio, r.target, met));
    }
    s
}

/// CPU time (user + system, seconds) of one process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / tick)
}

/// CPU time of named processes at one instant; the difference of two tells where a run's CPU
/// went (on a small machine the API server, etcd and our services share the same cores).
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    at: Option<std::time::Instant>,
    used: Vec<(String, f64)>,
}

impl CpuSnapshot {
    /// Reads the CPU time of each `(name, pid)` now; processes that are gone are left out.
    pub fn take(processes: &[(String, u32)]) -> Self {
        let used = processes.iter().filter_map(|(n, pid)| Some((n.clone(), cpu_seconds(*pid)?))).collect();
        CpuSnapshot { at: Some(std::time::Instant::now()), used }
    }

    /// Cores used in all between `earlier` and this snapshot, and by each process, busiest
    /// first, as text ("kube-apiserver 1.21, etcd 0.30, …").
    pub fn cores_since(&self, earlier: &CpuSnapshot) -> (f64, String) {
        let (Some(now), Some(then)) = (self.at, earlier.at) else { return (0.0, String::new()) };
        let wall = now.duration_since(then).as_secs_f64().max(1e-3);
        let mut cores: Vec<(String, f64)> = self
            .used
            .iter()
            .filter_map(|(n, c)| {
                let before = earlier.used.iter().find(|(m, _)| m == n)?.1;
                Some((n.clone(), (c - before) / wall))
            })
            .collect();
        cores.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = cores.iter().map(|(_, c)| c).sum();
        let parts: Vec<String> = cores.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        (total, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_millis(i));
        }
        assert_eq!(s.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_millis(100)));
        assert!(Samples::default().summary().is_none());
    }

    #[test]
    fn cores_between_snapshots() {
        let t = std::time::Instant::now();
        let before =
            CpuSnapshot { at: Some(t), used: vec![("etcd".into(), 1.0), ("api".into(), 5.0), ("gone".into(), 1.0)] };
        let after = CpuSnapshot {
            at: Some(t + Duration::from_secs(10)),
            used: vec![("etcd".into(), 3.0), ("api".into(), 20.0), ("new".into(), 9.0)],
        };
        let (total, text) = after.cores_since(&before);
        assert!((total - 1.7).abs() < 1e-9, "{total}");
        assert_eq!(text, "api 1.50, etcd 0.20");
    }
}
