//! A smoke run of `flotilla bench scheduler` at a small scale: nodes and pending pods are
//! created with the scheduler held back, the scheduler is released and binds every pod, the
//! leaders of the scheduler and the controller manager are killed and succeeded; every figure
//! is measured, and nothing is left running.

use flotilla_e2e::{assert_nothing_running, bench_figure, flotilla, show};

#[test]
fn bench_scheduler_measures_throughput_and_failover() {
    let out = flotilla(&[
        "bench",
        "scheduler",
        "--nodes",
        "50",
        "--pods",
        "300",
        "--api-clients",
        "8",
        "--json",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["suite"], "scheduler");
    let metric = |prefix: &str| bench_figure(&report, prefix);
    let throughput = metric("scheduling throughput, 300 pods on 50 nodes");
    assert_eq!(throughput["baseline"], 2000.0);
    assert!(throughput["flotilla"].as_f64().unwrap() > 0.0);
    for lease in ["kube-scheduler", "kube-controller-manager"] {
        let f = metric(&format!("{lease} failover"));
        let secs = f["flotilla"].as_f64().unwrap();
        assert!(secs > 0.0 && secs < 10.0, "{f}");
    }
    assert_nothing_running("flotilla-bench-scheduler-");
}
