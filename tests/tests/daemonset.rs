//! The DaemonSet controller against simulated nodes (kubectl 1.33): one pod per node, bound by
//! the scheduler; `set image` rolls every pod over within
//! maxUnavailable and `rollout status` follows; `rollout history` lists the two templates and
//! `rollout undo` (kubectl 1.27) brings the first back; deleting the DaemonSet takes its pods
//! and revisions.

use std::time::Duration;

use flotilla_e2e::{kubectl_ok, wait_for, LocalCluster};

fn kubectl(cluster: &LocalCluster, args: &[&str]) -> String {
    kubectl_ok(cluster, "1.33", args)
}

/// (node, image) of the live, running app=agent pods, sorted.
fn agents(cluster: &LocalCluster) -> Vec<(String, String)> {
    let out = kubectl(cluster, &["get", "pods", "-l", "app=agent", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut v: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter(|p| p["status"]["phase"] == "Running")
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn daemonsets_run_one_pod_per_node_and_roll_over() {
    let cluster = LocalCluster::up(
        "daemonset",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "3"],
    );
    let manifest = cluster.dir().join("ds.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: \
         {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    \
         spec: {containers: [{name: agent, image: 'agent:1'}]}\n",
    )
    .unwrap();
    kubectl(&cluster, &["apply", "-f", manifest.to_str().unwrap()]);
    let status = kubectl(
        &cluster,
        &["rollout", "status", "ds/agent", "--timeout=60s"],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let want: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("sim-{i}"), "agent:1".to_string()))
        .collect();
    wait_for("one agent:1 pod per node", Duration::from_secs(30), || {
        agents(&cluster) == want
    });
    let desired = kubectl(
        &cluster,
        &[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.status.desiredNumberScheduled}/{.status.numberReady}",
        ],
    );
    assert_eq!(desired, "3/3");

    kubectl(&cluster, &["set", "image", "ds/agent", "agent=agent:2"]);
    let status = kubectl(
        &cluster,
        &["rollout", "status", "ds/agent", "--timeout=90s"],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    let want2: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("sim-{i}"), "agent:2".to_string()))
        .collect();
    wait_for("one agent:2 pod per node", Duration::from_secs(60), || {
        agents(&cluster) == want2
    });

    // The template history: two revisions; undo goes back to the first template.
    let history = kubectl(&cluster, &["rollout", "history", "ds/agent"]);
    let numbers: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(numbers, ["1", "2"], "{history}");
    flotilla_e2e::kubectl_ok(&cluster, "1.27", &["rollout", "undo", "ds/agent"]);
    let want1: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("sim-{i}"), "agent:1".to_string()))
        .collect();
    wait_for(
        "one agent:1 pod per node again",
        Duration::from_secs(90),
        || agents(&cluster) == want1,
    );
    let history = kubectl(&cluster, &["rollout", "history", "ds/agent"]);
    assert!(
        history.contains('3'),
        "the rolled-back template is revision 3: {history}"
    );

    kubectl(&cluster, &["delete", "ds", "agent"]);
    wait_for(
        "the daemon pods and revisions to go",
        Duration::from_secs(30),
        || {
            kubectl(&cluster, &["get", "pods", "-l", "app=agent", "-o", "name"])
                .trim()
                .is_empty()
                && kubectl(&cluster, &["get", "controllerrevisions", "-o", "name"])
                    .trim()
                    .is_empty()
        },
    );
}
