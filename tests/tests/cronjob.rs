//! The CronJob controller with kubectl 1.27 and 1.33 against simulated nodes: an every-minute
//! CronJob starts a Job at the next minute (named after the scheduled time, owned by the
//! CronJob), the Job completes, the CronJob's status and table show the run; `kubectl create
//! job --from=cronjob/…` runs it by hand; a bad schedule or time zone is refused with the
//! field named; deleting the CronJob takes its Jobs and their pods.

use std::time::Duration;

use flotilla_e2e::{kubectl_fails, kubectl_ok, wait_for, LocalCluster};

const MANIFEST: &str = "\
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: '*/1 * * * *'
  successfulJobsHistoryLimit: 2
  jobTemplate:
    metadata: {labels: {app: tick}}
    spec:
      template:
        metadata:
          annotations: {flotilla.dev/simulate-exit-code: '0', flotilla.dev/simulate-run-seconds: '1'}
        spec:
          restartPolicy: Never
          containers: [{name: tick, image: busybox}]
";

fn jobs(cluster: &LocalCluster) -> Vec<String> {
    kubectl_ok(
        cluster,
        "1.33",
        &[
            "get",
            "jobs",
            "-l",
            "app=tick",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .split_whitespace()
    .map(String::from)
    .collect()
}

#[test]
fn cronjobs_run_on_schedule_by_hand_and_cascade() {
    let cluster = LocalCluster::up(
        "cronjob",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "2"],
    );
    let manifest = cluster.dir().join("tick.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    kubectl_ok(
        &cluster,
        "1.27",
        &["apply", "-f", manifest.to_str().unwrap()],
    );

    // By hand: kubectl builds the Job from the template, owned by the CronJob.
    kubectl_ok(
        &cluster,
        "1.33",
        &["create", "job", "now", "--from=cronjob/tick"],
    );
    let waited = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/now",
            "--timeout=60s",
        ],
    );
    assert!(waited.contains("condition met"), "{waited}");

    // On schedule: within a minute (plus a little), a Job named after the minute.
    wait_for("a scheduled job", Duration::from_secs(90), || {
        jobs(&cluster).iter().any(|j| j.starts_with("tick-"))
    });
    let scheduled = jobs(&cluster)
        .into_iter()
        .find(|j| j.starts_with("tick-"))
        .unwrap();
    let minutes: i64 = scheduled["tick-".len()..]
        .parse()
        .expect("minutes since the epoch");
    let stamp = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "job",
            &scheduled,
            "-o",
            "jsonpath={.metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp} {.metadata.ownerReferences[0].kind}",
        ],
    );
    let (at, owner) = stamp.split_once(' ').unwrap();
    let at: k8s_openapi::jiff::Timestamp = at.parse().unwrap();
    assert_eq!(at.as_second(), minutes * 60, "{stamp}");
    assert_eq!(owner, "CronJob");
    kubectl_ok(
        &cluster,
        "1.27",
        &[
            "wait",
            "--for=condition=complete",
            &format!("job/{scheduled}"),
            "--timeout=60s",
        ],
    );
    wait_for("the cronjob's status", Duration::from_secs(30), || {
        let st = kubectl_ok(
            &cluster,
            "1.33",
            &[
                "get",
                "cronjob",
                "tick",
                "-o",
                "jsonpath={.status.lastScheduleTime}|{.status.lastSuccessfulTime}|{.status.active}",
            ],
        );
        let parts: Vec<&str> = st.split('|').collect();
        parts[0] == at.to_string() && !parts[1].is_empty() && parts[2].is_empty()
    });
    let table = kubectl_ok(&cluster, "1.27", &["get", "cronjob", "tick"]);
    assert!(
        table.contains("SCHEDULE") && table.contains("*/1 * * * *"),
        "{table}"
    );

    // Bad input: refused with the field named, nothing stored.
    let err = kubectl_fails(
        &cluster,
        "1.33",
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox",
            "--schedule=every minute",
        ],
    );
    assert!(err.contains("spec.schedule: Invalid value"), "{err}");
    let err = kubectl_fails(
        &cluster,
        "1.27",
        &[
            "patch",
            "cronjob",
            "tick",
            "-p",
            r#"{"spec":{"timeZone":"Mars/Olympus"}}"#,
        ],
    );
    assert!(err.contains("spec.timeZone"), "{err}");
    let names = kubectl_ok(&cluster, "1.33", &["get", "cronjobs", "-o", "name"]);
    assert_eq!(names.trim(), "cronjob.batch/tick");

    // Deleting the CronJob takes its Jobs and their pods.
    kubectl_ok(&cluster, "1.33", &["delete", "cronjob", "tick"]);
    wait_for("jobs and pods gone", Duration::from_secs(60), || {
        jobs(&cluster).is_empty()
            && kubectl_ok(&cluster, "1.33", &["get", "pods", "-o", "name"])
                .trim()
                .is_empty()
    });
}
