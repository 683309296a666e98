use super::*;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn close(actual: f64, expected: f64) -> bool {
    // 3 significant digits: relative error below 0.1 %.
    (actual - expected).abs() <= expected * 0.001 + 0.001
}

#[test]
fn percentiles_of_a_known_distribution() {
    let mut recorder = Recorder::new(true);
    for i in 1..=1000 {
        recorder.success(Op::Get, us(i), false);
    }
    let report = BenchReport::from_recorder(
        "get".into(),
        "http://x".into(),
        1,
        &recorder,
        Duration::from_secs(2),
    );
    let l = report.latency_us;
    assert!(close(l.min, 1.0), "{l:?}");
    assert!(close(l.max, 1000.0), "{l:?}");
    assert!(close(l.p50, 500.0), "{l:?}");
    assert!(close(l.p90, 900.0), "{l:?}");
    assert!(close(l.p99, 990.0), "{l:?}");
    assert!(close(l.p999, 999.0), "{l:?}");
    assert!(close(l.mean, 500.5), "{l:?}");
    assert_eq!(report.requests, 1000);
    assert_eq!(report.throughput_ops, 500.0);
    assert_eq!(report.per_op.len(), 1);
    assert!(report.per_op.contains_key("get"));
}

#[test]
fn merging_per_connection_recorders_adds_counts_and_samples() {
    let mut merged = Recorder::new(true);
    for c in 0..4u64 {
        let mut recorder = Recorder::new(true);
        for i in 0..100 {
            recorder.success(Op::Get, us(10 + c), i % 10 == 0);
            recorder.success(Op::Set, us(100 + c), false);
        }
        recorder.failure(Op::Set);
        merged.merge(recorder);
    }
    assert_eq!(merged.get.requests, 400);
    assert_eq!(merged.get.not_found, 40);
    assert_eq!(merged.get.samples(), 400);
    assert_eq!(merged.set.requests, 404);
    assert_eq!(merged.set.errors, 4);
    assert_eq!(merged.set.samples(), 400);

    let report = BenchReport::from_recorder(
        "mixed:50".into(),
        "http://x".into(),
        4,
        &merged,
        Duration::from_millis(500),
    );
    assert_eq!(report.requests, 804);
    assert_eq!(report.errors, 4);
    assert_eq!(report.not_found, 40);
    assert!(close(report.throughput_ops, 1600.0));
    let get = &report.per_op["get"];
    let set = &report.per_op["set"];
    assert!(close(get.throughput_ops, 800.0));
    assert!(close(set.throughput_ops, 800.0));
    assert!(close(get.latency_us.min, 10.0) && close(get.latency_us.max, 13.0));
    assert!(close(set.latency_us.min, 100.0) && close(set.latency_us.max, 103.0));
    // The overall histogram holds both kinds: half the samples are GETs.
    assert!(close(report.latency_us.min, 10.0));
    assert!(close(report.latency_us.max, 103.0));
    assert!(report.latency_us.p50 <= 13.1);
    assert!(report.latency_us.p90 >= 100.0);
}

#[test]
fn counting_only_recorders_keep_no_latency() {
    let mut recorder = Recorder::new(false);
    recorder.success(Op::Set, us(5), false);
    assert_eq!(recorder.set.requests, 1);
    assert_eq!(recorder.set.samples(), 0);
}

#[test]
fn empty_report_is_all_zeros_not_nan() {
    let report = BenchReport::from_recorder(
        "set".into(),
        "http://x".into(),
        1,
        &Recorder::new(true),
        Duration::ZERO,
    );
    assert_eq!(report.throughput_ops, 0.0);
    assert_eq!(report.latency_us, LatencySummary::default());
    assert!(report.per_op.is_empty());
    assert!(report.to_json().starts_with('{'));
}

#[test]
fn json_has_the_documented_fields() -> Result<(), serde_json::Error> {
    let mut recorder = Recorder::new(true);
    recorder.success(Op::Set, us(50), false);
    let report = BenchReport::from_recorder(
        "set".into(),
        "http://127.0.0.1:1".into(),
        2,
        &recorder,
        Duration::from_secs(1),
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json())?;
    for field in [
        "workload",
        "url",
        "target",
        "connections",
        "requests",
        "errors",
        "not_found",
        "elapsed_secs",
        "throughput_ops",
        "latency_us",
        "per_op",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    for field in ["min", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_us"].get(field).is_some(), "missing {field}");
    }
    assert_eq!(json["per_op"]["set"]["requests"], 1);
    assert_eq!(json["target"], "limedb");
    Ok(())
}

#[test]
fn table_mentions_throughput_errors_and_percentiles() {
    let mut recorder = Recorder::new(true);
    recorder.success(Op::Get, us(20), false);
    recorder.success(Op::Set, us(40), false);
    let table = BenchReport::from_recorder(
        "mixed".into(),
        "http://x".into(),
        1,
        &recorder,
        Duration::from_secs(1),
    )
    .to_table();
    for needle in ["throughput", "errors", "p99", "p99.9", "all", "get", "set"] {
        assert!(table.contains(needle), "{needle} missing in\n{table}");
    }
}

#[test]
fn thousands_are_grouped() {
    assert_eq!(group_thousands(0), "0");
    assert_eq!(group_thousands(999), "999");
    assert_eq!(group_thousands(1000), "1,000");
    assert_eq!(group_thousands(1_234_567), "1,234,567");
}
