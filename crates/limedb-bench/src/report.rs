//! Results: per-connection [`Recorder`]s (HDR histograms, no shared state),
//! merged after the run into a [`BenchReport`] that serialises to JSON and
//! renders as a table.
//!
//! Latencies are recorded in nanoseconds (HDR histogram, 3 significant
//! digits) and reported in microseconds as `f64`. Failed requests are counted
//! but not recorded in the histograms; an expected `404` on a GET (for etcd, a
//! range answer without `kvs`) counts as `not_found` and *is* recorded (the
//! server did the work).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Op;

/// Significant digits of every histogram.
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Highest latency the histograms track exactly (larger ones saturate): 10 min.
pub const HISTOGRAM_MAX_NS: u64 = 600 * 1_000_000_000;

fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, HISTOGRAM_SIGFIG).ok()
}

/// Counts and latencies of one operation kind on one connection.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    /// Requests attempted.
    pub requests: u64,
    /// Requests that failed (I/O, timeout, unexpected status).
    pub errors: u64,
    /// GETs that found no key (404; etcd: a range without `kvs`).
    pub not_found: u64,
    /// Latencies of the requests that did not fail; created on first use.
    histogram: Option<Histogram<u64>>,
}

impl OpStats {
    fn record_latency(&mut self, latency: Duration) {
        if self.histogram.is_none() {
            self.histogram = new_histogram();
        }
        if let Some(histogram) = &mut self.histogram {
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record(ns.max(1));
        }
    }

    fn merge(&mut self, other: OpStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.not_found += other.not_found;
        match (&mut self.histogram, other.histogram) {
            (_, None) => {}
            (None, Some(h)) => self.histogram = Some(h),
            (Some(mine), Some(theirs)) => {
                // Same bounds on both sides, so adding cannot fail; a failure
                // would only lose latency samples, never counts.
                let _ = mine.add(&theirs);
            }
        }
    }

    /// Number of latency samples.
    pub fn samples(&self) -> u64 {
        self.histogram.as_ref().map_or(0, Histogram::len)
    }
}

/// What one connection saw in one phase. Owned by its task: recording takes
/// no lock.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// GET statistics.
    pub get: OpStats,
    /// SET statistics.
    pub set: OpStats,
    /// Whether latencies are kept (false for prefill and warm-up).
    keep_latency: bool,
}

impl Recorder {
    /// A recorder; `keep_latency` false only counts.
    pub fn new(keep_latency: bool) -> Recorder {
        Recorder {
            keep_latency,
            ..Recorder::default()
        }
    }

    fn stats(&mut self, op: Op) -> &mut OpStats {
        match op {
            Op::Get => &mut self.get,
            Op::Set => &mut self.set,
        }
    }

    /// A request that got an expected answer (2xx, or 404 for a GET when `not_found`).
    pub fn success(&mut self, op: Op, latency: Duration, not_found: bool) {
        let keep = self.keep_latency;
        let stats = self.stats(op);
        stats.requests += 1;
        if not_found {
            stats.not_found += 1;
        }
        if keep {
            stats.record_latency(latency);
        }
    }

    /// A request that failed.
    pub fn failure(&mut self, op: Op) {
        let stats = self.stats(op);
        stats.requests += 1;
        stats.errors += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Recorder) {
        self.get.merge(other.get);
        self.set.merge(other.set);
    }

    /// Requests attempted, all kinds.
    pub fn requests(&self) -> u64 {
        self.get.requests + self.set.requests
    }

    /// Failed requests, all kinds.
    pub fn errors(&self) -> u64 {
        self.get.errors + self.set.errors
    }
}

/// Latency distribution in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Fastest request.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest request.
    pub max: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds; all zeros when it is empty.
    pub fn from_histogram_ns(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        LatencySummary {
            min: us(histogram.min()),
            mean: histogram.mean() / 1_000.0,
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        }
    }
}

/// Counts and latency of one operation kind over the whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpSummary {
    /// Requests attempted.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// GETs that found no key (404; etcd: a range without `kvs`).
    pub not_found: u64,
    /// Non-failed requests per second of wall time.
    pub throughput_ops: f64,
    /// Latency of the non-failed requests.
    pub latency_us: LatencySummary,
}

/// The result of [`run`](crate::run()); serialises to the JSON `limedb bench --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Workload as written on the command line (`set`, `get`, `mixed`, `mixed:NN`).
    pub workload: String,
    /// Base URL.
    pub url: String,
    /// API of the server: `limedb` or `etcd` ([`Api`](crate::Api));
    /// [`from_recorder`](Self::from_recorder) fills in `limedb`, and
    /// [`run`](crate::run()) the one it used.
    pub target: String,
    /// Concurrent connections.
    pub connections: usize,
    /// Measured requests attempted.
    pub requests: u64,
    /// Failed requests: I/O errors, timeouts, statuses other than 2xx (and
    /// other than 404 on a LimeDB GET), etcd error answers.
    pub errors: u64,
    /// GETs that found no key: 404 from LimeDB, a range without `kvs` from etcd.
    pub not_found: u64,
    /// Wall time of the measured phase.
    pub elapsed_secs: f64,
    /// Non-failed requests per second.
    pub throughput_ops: f64,
    /// Latency over all operation kinds.
    pub latency_us: LatencySummary,
    /// Per operation kind (`get`, `set`), only the kinds that ran.
    pub per_op: BTreeMap<String, OpSummary>,
}

impl BenchReport {
    /// Builds the report from the merged recorder of the measured phase.
    pub fn from_recorder(
        workload: String,
        url: String,
        connections: usize,
        recorder: &Recorder,
        elapsed: Duration,
    ) -> BenchReport {
        let elapsed_secs = elapsed.as_secs_f64();
        let rate = |ok: u64| {
            if elapsed_secs > 0.0 {
                ok as f64 / elapsed_secs
            } else {
                0.0
            }
        };

        let mut all = new_histogram();
        let mut per_op = BTreeMap::new();
        for (name, stats) in [("get", &recorder.get), ("set", &recorder.set)] {
            if stats.requests == 0 {
                continue;
            }
            let latency_us = match &stats.histogram {
                Some(h) => {
                    if let Some(all) = &mut all {
                        let _ = all.add(h);
                    }
                    LatencySummary::from_histogram_ns(h)
                }
                None => LatencySummary::default(),
            };
            per_op.insert(
                name.to_owned(),
                OpSummary {
                    requests: stats.requests,
                    errors: stats.errors,
                    not_found: stats.not_found,
                    throughput_ops: rate(stats.requests - stats.errors),
                    latency_us,
                },
            );
        }

        let requests = recorder.requests();
        let errors = recorder.errors();
        BenchReport {
            workload,
            url,
            target: crate::Api::default().to_string(),
            connections,
            requests,
            errors,
            not_found: recorder.get.not_found + recorder.set.not_found,
            elapsed_secs,
            throughput_ops: rate(requests - errors),
            latency_us: all
                .as_ref()
                .map(LatencySummary::from_histogram_ns)
                .unwrap_or_default(),
            per_op,
        }
    }

    /// One line of JSON (what `limedb bench --json` prints).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A human summary: throughput, errors, latency percentiles.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "workload     {}", self.workload);
        let _ = writeln!(out, "url          {}", self.url);
        let _ = writeln!(out, "target       {}", self.target);
        let _ = writeln!(out, "connections  {}", self.connections);
        let _ = writeln!(
            out,
            "requests     {} in {:.2} s",
            self.requests, self.elapsed_secs
        );
        let _ = writeln!(
            out,
            "throughput   {} ops/s",
            group_thousands(self.throughput_ops.round() as u64)
        );
        let _ = writeln!(
            out,
            "errors       {}   not found {}",
            self.errors, self.not_found
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<8}{:>10}{:>12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency", "ops/s", "count", "min", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, ops: f64, count: u64, l: &LatencySummary| {
            let _ = writeln!(
                out,
                "{:<8}{:>10}{:>12}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
                name,
                group_thousands(ops.round() as u64),
                count,
                l.min,
                l.mean,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            );
        };
        if self.per_op.len() > 1 {
            row(
                "all",
                self.throughput_ops,
                self.requests - self.errors,
                &self.latency_us,
            );
        }
        for (name, op) in &self.per_op {
            row(
                name,
                op.throughput_ops,
                op.requests - op.errors,
                &op.latency_us,
            );
        }
        let _ = writeln!(out, "(latencies in microseconds)");
        out
    }
}

/// `1234567` → `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
