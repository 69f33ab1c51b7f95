//! The Job controller against simulated nodes whose pods exit when asked (the
//! `flotilla.dev/simulate-exit-code` annotation), with kubectl 1.27: a Job of 3 completions,
//! 2 at a time, completes (`kubectl wait --for=condition=complete`) and is deleted by its
//! ttlSecondsAfterFinished; a Job whose pods fail stops at its backoffLimit.

use std::time::Duration;

use flotilla_e2e::{kubectl_ok, wait_for, LocalCluster};

fn kubectl(cluster: &LocalCluster, args: &[&str]) -> String {
    kubectl_ok(cluster, "1.27", args)
}

fn job_manifest(name: &str, exit_code: i32, extra: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  completions: 3\n  \
         parallelism: 2\n  backoffLimit: 1\n{extra}  template:\n    metadata:\n      \
         annotations: {{flotilla.dev/simulate-exit-code: \"{exit_code}\", \
         flotilla.dev/simulate-run-seconds: \"1\"}}\n    spec:\n      restartPolicy: Never\n      \
         containers: [{{name: work, image: busybox}}]\n"
    )
}

#[test]
fn jobs_complete_fail_at_their_backoff_limit_and_expire() {
    let cluster = LocalCluster::up(
        "job",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "2"],
    );
    let dir = cluster.dir().to_path_buf();
    let ok = dir.join("ok.yaml");
    std::fs::write(&ok, job_manifest("ok", 0, "  ttlSecondsAfterFinished: 3\n")).unwrap();
    kubectl(&cluster, &["apply", "-f", ok.to_str().unwrap()]);
    // Never more than 2 pods at once: watch the active count while it runs.
    let mut most_active = 0;
    wait_for("the job to complete", Duration::from_secs(60), || {
        let out = kubectl(
            &cluster,
            &[
                "get",
                "job",
                "ok",
                "-o",
                "jsonpath={.status.active}|{.status.succeeded}",
            ],
        );
        let (active, succeeded) = out.split_once('|').unwrap_or(("", ""));
        most_active = most_active.max(active.parse::<u32>().unwrap_or(0));
        succeeded == "3"
    });
    assert!(most_active <= 2, "parallelism 2 exceeded: {most_active}");
    let waited = kubectl(
        &cluster,
        &[
            "wait",
            "--for=condition=complete",
            "job/ok",
            "--timeout=30s",
        ],
    );
    assert!(waited.contains("condition met"), "{waited}");
    let table = kubectl(&cluster, &["get", "job", "ok"]);
    assert!(table.contains("3/3"), "{table}");
    let pods = kubectl(
        &cluster,
        &[
            "get",
            "pods",
            "-l",
            "job-name=ok",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    );
    assert_eq!(
        pods.split_whitespace()
            .filter(|p| *p == "Succeeded")
            .count(),
        3,
        "{pods}"
    );
    // ttlSecondsAfterFinished: the Job and its pods go.
    wait_for(
        "the finished job to expire",
        Duration::from_secs(30),
        || {
            kubectl(
                &cluster,
                &["get", "jobs,pods", "-l", "job-name=ok", "-o", "name"],
            )
            .trim()
            .is_empty()
                && !kubectl(&cluster, &["get", "jobs", "-o", "name"]).contains("job.batch/ok")
        },
    );

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, job_manifest("bad", 1, "")).unwrap();
    kubectl(&cluster, &["apply", "-f", bad.to_str().unwrap()]);
    let waited = kubectl(
        &cluster,
        &["wait", "--for=condition=failed", "job/bad", "--timeout=60s"],
    );
    assert!(waited.contains("condition met"), "{waited}");
    let reason = kubectl(
        &cluster,
        &[
            "get",
            "job",
            "bad",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
        ],
    );
    assert_eq!(reason, "BackoffLimitExceeded");
    let failed: u32 = kubectl(
        &cluster,
        &["get", "job", "bad", "-o", "jsonpath={.status.failed}"],
    )
    .parse()
    .unwrap();
    assert!(
        (2..=3).contains(&failed),
        "backoffLimit 1: 2 failures end it ({failed})"
    );
    assert!(kubectl(&cluster, &["get", "job", "bad"]).contains("Failed"));
}
