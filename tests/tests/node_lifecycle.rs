//! Node lifecycle against simulated nodes (kubectl 1.33): a node that stops heartbeating
//! becomes NotReady (conditions Unknown) and tainted unreachable; its pods are marked not
//! ready at once (a pinned pod that tolerates the taint for good stays, and is reported ready
//! again when the node is back); its pods are evicted when
//! their tolerationSeconds run out and their Deployment recreates them on the other nodes;
//! when heartbeats resume the taints go and the evicted pods finish terminating.

use std::time::Duration;

use flotilla_e2e::{kubectl_ok, wait_for, LocalCluster};

fn kubectl(cluster: &LocalCluster, args: &[&str]) -> String {
    kubectl_ok(cluster, "1.33", args)
}

/// (name, node, terminating, running) of the pods labelled app=web.
fn pods_with_phase(cluster: &LocalCluster) -> Vec<(String, String, bool, bool)> {
    let out = kubectl(cluster, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["metadata"].get("deletionTimestamp").is_some(),
                p["status"]["phase"] == "Running",
            )
        })
        .collect()
}

/// (name, node, terminating) of the pods labelled app=web.
fn pods(cluster: &LocalCluster) -> Vec<(String, String, bool)> {
    pods_with_phase(cluster)
        .into_iter()
        .map(|(n, node, t, _)| (n, node, t))
        .collect()
}

/// Like [`pods`], only the Running ones.
fn running_on_nodes(cluster: &LocalCluster) -> Vec<(String, String, bool)> {
    pods_with_phase(cluster)
        .into_iter()
        .filter(|(_, _, _, running)| *running)
        .map(|(n, node, t, _)| (n, node, t))
        .collect()
}

/// The node's Ready condition status and its taints (as JSON, empty when none).
fn ready_and_taints(cluster: &LocalCluster, node: &str) -> (String, String) {
    let out = kubectl(
        cluster,
        &[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}|{.spec.taints}",
        ],
    );
    let (ready, taints) = out.split_once('|').unwrap_or((&out, ""));
    (ready.to_string(), taints.to_string())
}

#[test]
fn a_silent_node_is_tainted_and_its_pods_move_elsewhere() {
    let cluster = LocalCluster::up(
        "node-lifecycle",
        &[
            "--nodes",
            "0",
            "--no-demo",
            "--simulated-nodes",
            "3",
            "--node-monitor-grace-period",
            "4",
        ],
    );
    let manifest = cluster.dir().join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  \
         selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
         spec:\n      containers: [{name: web, image: nginx}]\n      tolerations:\n      - \
         {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, \
         tolerationSeconds: 2}\n",
    )
    .unwrap();
    kubectl(&cluster, &["apply", "-f", manifest.to_str().unwrap()]);
    kubectl(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    );
    let before = running_on_nodes(&cluster);
    assert_eq!(before.len(), 6, "{before:?}");
    let victim = before[0].1.clone();
    let on_victim: Vec<String> = before
        .iter()
        .filter(|(_, n, _)| *n == victim)
        .map(|(p, _, _)| p.clone())
        .collect();

    // A pod that tolerates the node's loss for good stays on it through what follows.
    let stay = cluster.dir().join("stay.yaml");
    std::fs::write(
        &stay,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: stay, labels: {{app: stay}}}}\nspec:\n  \
             nodeName: {victim}\n  containers: [{{name: c, image: nginx}}]\n  tolerations:\n  - \
             {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}}\n"
        ),
    )
    .unwrap();
    kubectl(&cluster, &["apply", "-f", stay.to_str().unwrap()]);
    let stay_ready = || {
        kubectl(
            &cluster,
            &[
                "get",
                "pod",
                "stay",
                "-o",
                "jsonpath={.status.phase}/{.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )
    };
    wait_for("the pinned pod to run", Duration::from_secs(30), || {
        stay_ready() == "Running/True"
    });

    // The node goes silent.
    kubectl(
        &cluster,
        &[
            "annotate",
            "node",
            &victim,
            "flotilla.dev/heartbeat=stopped",
        ],
    );
    wait_for("the node to be NotReady", Duration::from_secs(30), || {
        let table = kubectl(&cluster, &["get", "node", &victim]);
        ready_and_taints(&cluster, &victim).0 == "Unknown" && table.contains("NotReady")
    });
    let taints = kubectl(
        &cluster,
        &[
            "get",
            "node",
            &victim,
            "-o",
            "jsonpath={.spec.taints[*].key}:{.spec.taints[*].effect}",
        ],
    );
    assert!(
        taints.contains("node.kubernetes.io/unreachable") && taints.contains("NoExecute"),
        "{taints}"
    );

    // Its pods are marked not ready at once, as Kubernetes' node controller marks them.
    wait_for(
        "the silent node's pods to be not ready",
        Duration::from_secs(10),
        || stay_ready() == "Running/False",
    );

    // Its pods are evicted after 2 s and replaced on the other nodes.
    wait_for(
        "6 running pods, none on the silent node",
        Duration::from_secs(60),
        || {
            let now = running_on_nodes(&cluster);
            let live: Vec<_> = now.iter().filter(|(_, _, t)| !t).collect();
            live.len() == 6 && live.iter().all(|(_, n, _)| *n != victim)
        },
    );
    let now = pods(&cluster);
    for p in &on_victim {
        assert!(
            now.iter().any(|(n, _, t)| n == p && *t),
            "{p} was evicted (terminating, as its node cannot confirm): {now:?}"
        );
    }
    let events = kubectl(&cluster, &["get", "events", "-A"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
    assert!(events.contains("NodeNotReady"), "{events}");

    // Heartbeats resume: Ready again, taints gone, the evicted pods finish terminating.
    kubectl(
        &cluster,
        &["annotate", "node", &victim, "flotilla.dev/heartbeat-"],
    );
    wait_for(
        "the node to be Ready without taints",
        Duration::from_secs(30),
        || ready_and_taints(&cluster, &victim) == ("True".into(), String::new()),
    );
    wait_for(
        "the pinned pod to be reported ready again",
        Duration::from_secs(30),
        || stay_ready() == "Running/True",
    );
    wait_for(
        "the evicted pods to be gone",
        Duration::from_secs(30),
        || {
            let now = pods(&cluster);
            on_victim
                .iter()
                .all(|p| !now.iter().any(|(n, _, _)| n == p))
        },
    );
}
