//! A smoke run of `flotilla bench api` at a small scale: a 3-master cluster starts, pods are
//! created at a fixed rate and then unpaced, listed, and watched by many watchers during a
//! burst; every figure is measured, and nothing is left running.

use flotilla_e2e::{assert_nothing_running, bench_figure, flotilla, show};

#[test]
fn bench_api_measures_creates_lists_and_watch_fan_out() {
    let out = flotilla(&[
        "bench",
        "api",
        "--seconds",
        "1",
        "--rate",
        "100",
        "--api-clients",
        "8",
        "--pods",
        "300",
        "--watchers",
        "30",
        "--burst",
        "50",
        "--burst-clients",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["suite"], "api");
    let figures = report["figures"].as_array().unwrap();
    let metric = |prefix: &str| bench_figure(&report, prefix);
    for f in figures {
        assert!(f["flotilla"].as_f64().unwrap() > 0.0, "{f}");
    }
    // The bars are the baselines.
    assert_eq!(metric("pod create p99 @")["baseline"], 50.0);
    assert_eq!(metric("LIST 300 pods p50")["baseline"], 300.0);
    // The watch burst runs twice: watches multiplexed on HTTP/2 (as client-go), and one
    // HTTP/1.1 connection per watch (as kube-rs and the Python client).
    assert_eq!(
        metric("watch delivery p99 (30 watchers, HTTP/2")["baseline"],
        100.0
    );
    assert_eq!(
        metric("watch delivery p99 (30 watchers, HTTP/1.1")["baseline"],
        100.0
    );
    // The paced phase kept (roughly) to its rate.
    let rate = metric("pod creates/s (target")["flotilla"]
        .as_f64()
        .unwrap();
    assert!(rate > 50.0, "{rate}");
    assert_nothing_running("flotilla-bench-api-");
}
