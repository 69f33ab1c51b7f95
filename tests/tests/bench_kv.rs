//! A smoke run of `flotilla bench kv`: both clusters start, the same workload runs against
//! each, every figure has a finite ratio, and nothing is left running.

use flotilla_e2e::{assert_nothing_running, flotilla, show};

#[test]
fn bench_kv_runs_both_sides_and_reports_ratios() {
    let out = flotilla(&[
        "bench",
        "kv",
        "--seconds",
        "0.5",
        "--clients",
        "1,8",
        "--read-clients",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["suite"], "kv");
    assert!(
        report["baseline"].as_str().unwrap().starts_with("etcd 3.4"),
        "{report}"
    );
    let figures = report["figures"].as_array().unwrap();
    // puts/s, p50, p99 per client level, then reads/s and read p99.
    assert_eq!(figures.len(), 2 * 3 + 2, "{report}");
    for f in figures {
        let (ours, theirs) = (
            f["flotilla"].as_f64().unwrap(),
            f["baseline"].as_f64().unwrap(),
        );
        assert!(ours > 0.0 && theirs > 0.0, "{f}");
        assert!(f["ratio"].as_f64().unwrap().is_finite(), "{f}");
    }
    // The run's clusters are gone: no etcd or flotilla server of the bench is left.
    assert_nothing_running("flotilla-bench-kv-");
}
