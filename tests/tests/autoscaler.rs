//! The HorizontalPodAutoscaler and the resource metrics API against 2 simulated nodes, whose
//! pods report the CPU their `flotilla.dev/simulate-cpu` annotation says: `kubectl top`
//! (1.27 and 1.33), `kubectl autoscale` with kubectl 1.27 (an autoscaling/v1 object, stored
//! as v2) scales a Deployment up to its maximum when its pods use 200% of their request
//! against a 50% target, `kubectl get hpa` shows the targets, and once usage falls the
//! autoscaler (given a zero scale-down window) scales back to the minimum. Bad autoscalers
//! are refused or reported.

use std::time::Duration;

use flotilla_e2e::{kubectl_fails, kubectl_ok, wait_for, LocalCluster};

const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {flotilla.dev/simulate-cpu: 200m, flotilla.dev/simulate-memory: 64Mi}
    spec:
      containers: [{name: web, image: nginx, resources: {requests: {cpu: 100m, memory: 128Mi}}}]
";

fn replicas(cluster: &LocalCluster) -> String {
    kubectl_ok(
        cluster,
        "1.33",
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
    )
}

#[test]
fn autoscalers_follow_pod_usage_from_the_metrics_api() {
    let cluster = LocalCluster::up(
        "autoscaler",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "2"],
    );
    let manifest = cluster.dir().join("web.yaml");
    std::fs::write(&manifest, WEB).unwrap();
    kubectl_ok(
        &cluster,
        "1.33",
        &["apply", "-f", manifest.to_str().unwrap()],
    );
    kubectl_ok(
        &cluster,
        "1.33",
        &["rollout", "status", "deploy/web", "--timeout=60s"],
    );

    // kubectl top reads the metrics the nodes report.
    wait_for("pod metrics", Duration::from_secs(30), || {
        let top = kubectl_ok(&cluster, "1.27", &["top", "pods", "-l", "app=web"]);
        top.contains("200m") && top.contains("64Mi")
    });
    let nodes = kubectl_ok(&cluster, "1.33", &["top", "nodes"]);
    assert!(
        nodes.contains("sim-1") && nodes.contains("sim-2"),
        "{nodes}"
    );

    // kubectl 1.27 creates an autoscaling/v1 autoscaler.
    kubectl_ok(
        &cluster,
        "1.27",
        &[
            "autoscale",
            "deploy",
            "web",
            "--cpu-percent=50",
            "--min=1",
            "--max=4",
        ],
    );
    wait_for("the scale-up to 4", Duration::from_secs(60), || {
        replicas(&cluster) == "4"
    });
    wait_for("the table's targets", Duration::from_secs(30), || {
        kubectl_ok(&cluster, "1.33", &["get", "hpa", "web"]).contains("cpu: 200%/50%")
    });
    let described = kubectl_ok(&cluster, "1.33", &["describe", "hpa", "web"]);
    assert!(
        described.contains("SuccessfulRescale") && described.contains("New size: 4"),
        "{described}"
    );
    let v1 = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "--raw",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web",
        ],
    );
    let v1: serde_json::Value = serde_json::from_str(&v1).unwrap();
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 200);

    // Usage falls; with no scale-down window the autoscaler goes to the minimum.
    kubectl_ok(
        &cluster,
        "1.33",
        &[
            "patch",
            "hpa",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}"#,
        ],
    );
    kubectl_ok(
        &cluster,
        "1.33",
        &[
            "annotate",
            "pods",
            "-l",
            "app=web",
            "flotilla.dev/simulate-cpu=5m",
            "--overwrite",
        ],
    );
    wait_for("the scale-down to 1", Duration::from_secs(60), || {
        replicas(&cluster) == "1"
    });

    // Bad input: refused with the field named; a missing target is reported.
    let hpa = |name: &str, target: &str, min: u32, max: u32| {
        format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: {name}}}\n\
             spec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}\n  \
             minReplicas: {min}\n  maxReplicas: {max}\n  metrics:\n  - type: Resource\n    \
             resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}\n"
        )
    };
    let bad = cluster.dir().join("bad.yaml");
    std::fs::write(&bad, hpa("bad", "web", 5, 2)).unwrap();
    let err = kubectl_fails(&cluster, "1.33", &["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("spec.maxReplicas: Invalid value"), "{err}");
    let ghost = cluster.dir().join("ghost.yaml");
    std::fs::write(&ghost, hpa("ghost", "nope", 1, 2)).unwrap();
    kubectl_ok(&cluster, "1.27", &["create", "-f", ghost.to_str().unwrap()]);
    wait_for(
        "the missing target reported",
        Duration::from_secs(30),
        || kubectl_ok(&cluster, "1.33", &["describe", "hpa", "ghost"]).contains("FailedGetScale"),
    );
}
