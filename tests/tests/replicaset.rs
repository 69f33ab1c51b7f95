//! The ReplicaSet controller and the garbage collector against simulated nodes, with kubectl
//! 1.27: a ReplicaSet gets its pods (Running, on nodes), scales up and down, replaces a
//! deleted pod, adopts a matching orphan, and its pods go when it is deleted.

use std::process::Command;
use std::time::Duration;

use flotilla_e2e::{kubectl_bin, kubectl_ok, wait_for, LocalCluster};

fn kubectl(cluster: &LocalCluster, args: &[&str]) -> String {
    kubectl_ok(cluster, "1.27", args)
}

/// Names of the running pods labelled app=web.
fn running(cluster: &LocalCluster) -> Vec<String> {
    kubectl(
        cluster,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ],
    )
    .lines()
    .map(String::from)
    .collect()
}

fn wait_running(cluster: &LocalCluster, n: usize) -> Vec<String> {
    let mut pods = Vec::new();
    wait_for(
        &format!("{n} running pods"),
        Duration::from_secs(30),
        || {
            pods = running(cluster);
            pods.len() == n
        },
    );
    pods
}

#[test]
fn replicasets_keep_their_pods_and_take_them_along_when_deleted() {
    let cluster = LocalCluster::up(
        "replicaset",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "2"],
    );
    let manifest = cluster.dir().join("rs.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web}\nspec:\n  replicas: 3\n  \
         selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    \
         spec: {containers: [{name: web, image: nginx}]}\n",
    )
    .unwrap();
    kubectl(&cluster, &["apply", "-f", manifest.to_str().unwrap()]);
    let pods = wait_running(&cluster, 3);
    let owner = kubectl(
        &cluster,
        &[
            "get",
            &pods[0],
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}",
        ],
    );
    assert_eq!(owner, "ReplicaSet");
    wait_for("status.readyReplicas=3", Duration::from_secs(20), || {
        kubectl(
            &cluster,
            &["get", "rs", "web", "-o", "jsonpath={.status.readyReplicas}"],
        ) == "3"
    });

    kubectl(&cluster, &["scale", "rs", "web", "--replicas=5"]);
    wait_running(&cluster, 5);
    kubectl(&cluster, &["scale", "rs", "web", "--replicas=2"]);
    let pods = wait_running(&cluster, 2);

    // A deleted pod is replaced.
    kubectl(&cluster, &["delete", &pods[0]]);
    wait_for("a replacement", Duration::from_secs(30), || {
        let now = running(&cluster);
        now.len() == 2 && !now.contains(&pods[0])
    });

    // A matching orphan is adopted, and then one pod is too many.
    kubectl(
        &cluster,
        &["run", "stray", "--image=nginx", "--labels=app=web"],
    );
    wait_for(
        "the orphan adopted and the set back to 2",
        Duration::from_secs(30),
        || {
            let owner = Command::new(kubectl_bin("1.27"))
                .arg("--kubeconfig")
                .arg(cluster.dir().join("admin.kubeconfig"))
                .args([
                    "get",
                    "pod",
                    "stray",
                    "-o",
                    "jsonpath={.metadata.ownerReferences[0].name}",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let adopted_or_deleted = owner == "web" || owner.is_empty();
            adopted_or_deleted && running(&cluster).len() == 2
        },
    );

    // Deleting the ReplicaSet takes its pods (garbage collector, background).
    kubectl(&cluster, &["delete", "rs", "web"]);
    wait_for("the pods to go", Duration::from_secs(30), || {
        kubectl(&cluster, &["get", "pods", "-l", "app=web", "-o", "name"])
            .trim()
            .is_empty()
    });
}
