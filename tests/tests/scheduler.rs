//! The scheduler against simulated nodes, driven with kubectl: pods are bound and reported
//! Running with an IP, spread over the nodes; nodeSelector, taints and cordons are honoured;
//! a pod that fits nowhere stays Pending with a FailedScheduling event that says why; a
//! deleted pod's deletion is finished by its (simulated) node.

use std::time::Duration;

use flotilla_e2e::{kubectl_ok, wait_for, LocalCluster};

fn kubectl(cluster: &LocalCluster, args: &[&str]) -> String {
    kubectl_ok(cluster, "1.33", args)
}

/// `pod → node` for running pods, from `kubectl get pods`.
fn placement(cluster: &LocalCluster) -> Vec<(String, String, String)> {
    kubectl(
        cluster,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
        ],
    )
    .lines()
    .filter_map(|l| {
        let mut f = l.split_whitespace();
        Some((
            f.next()?.to_string(),
            f.next().unwrap_or("").to_string(),
            f.next().unwrap_or("").to_string(),
        ))
    })
    .collect()
}

fn node_of(cluster: &LocalCluster, pod: &str) -> String {
    let mut node = String::new();
    wait_for(
        &format!("{pod} to run"),
        Duration::from_secs(20),
        || match placement(cluster).into_iter().find(|(p, _, _)| p == pod) {
            Some((_, n, phase)) if phase == "Running" => {
                node = n;
                true
            }
            _ => false,
        },
    );
    node
}

#[test]
fn pods_are_scheduled_onto_simulated_nodes_by_kubectl() {
    let cluster = LocalCluster::up(
        "scheduler",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "3"],
    );
    let nodes = kubectl(&cluster, &["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready ").count(), 3, "{nodes}");

    // Six pods spread two per node, each Running with an IP.
    for i in 0..6 {
        kubectl(&cluster, &["run", &format!("p{i}"), "--image=nginx"]);
    }
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..6 {
        *per_node
            .entry(node_of(&cluster, &format!("p{i}")))
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    let wide = kubectl(&cluster, &["get", "pod", "p0", "-o", "wide"]);
    assert!(wide.contains("10.88."), "{wide}");

    // nodeSelector.
    kubectl(
        &cluster,
        &[
            "run",
            "pinned",
            "--image=nginx",
            "--overrides",
            r#"{"spec":{"nodeSelector":{"kubernetes.io/hostname":"sim-2"}}}"#,
        ],
    );
    assert_eq!(node_of(&cluster, "pinned"), "sim-2");

    // A NoSchedule taint and a cordon leave one node.
    kubectl(
        &cluster,
        &["taint", "nodes", "sim-1", "dedicated=gpu:NoSchedule"],
    );
    kubectl(&cluster, &["cordon", "sim-3"]);
    for i in 0..3 {
        let name = format!("q{i}");
        kubectl(&cluster, &["run", &name, "--image=nginx"]);
        assert_eq!(node_of(&cluster, &name), "sim-2");
    }

    // Fits nowhere: Pending, and describe says why.
    let manifest = cluster.dir().join("huge.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec:\n  containers: [{name: a, image: x, resources: {requests: {cpu: \"64\"}}}]\n",
    )
    .unwrap();
    kubectl(&cluster, &["create", "-f", manifest.to_str().unwrap()]);
    let mut described = String::new();
    wait_for("a FailedScheduling event", Duration::from_secs(20), || {
        described = kubectl(&cluster, &["describe", "pod", "huge"]);
        described.contains("FailedScheduling")
    });
    assert!(
        described.contains("0/3 nodes are available:")
            && described.contains("Insufficient cpu")
            && described.contains("untolerated taint")
            && described.contains("unschedulable"),
        "{described}"
    );
    let events = kubectl(&cluster, &["get", "events"]);
    assert!(events.contains("FailedScheduling"), "{events}");
    let status = kubectl(&cluster, &["get", "pod", "huge"]);
    assert!(status.contains("Pending"), "{status}");

    // Uncordon: the pending pod stays pending (too big), new pods may use sim-3 again.
    kubectl(&cluster, &["uncordon", "sim-3"]);
    kubectl(&cluster, &["run", "after", "--image=nginx"]);
    let n = node_of(&cluster, "after");
    assert!(n == "sim-3" || n == "sim-2", "{n}");

    // Deletion is finished by the node.
    kubectl(
        &cluster,
        &["delete", "pod", "p0", "--wait=true", "--timeout=20s"],
    );
    assert!(!placement(&cluster).iter().any(|(p, _, _)| p == "p0"));
}
