//! The scheduler's placement policies with kubectl 1.33 and 1.27 against 3 simulated nodes
//! (8 CPUs each): required pod anti-affinity (one pod per node, the fourth stays Pending
//! with the reason), required pod affinity (next to a given pod), topology spread
//! constraints (2-2-2), and priority with preemption (a high-priority pod evicts a
//! low-priority one from a full node and takes its place; an unknown PriorityClass is
//! refused).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_e2e::{kubectl_fails, kubectl_ok, wait_for, LocalCluster};

fn apply(cluster: &LocalCluster, name: &str, yaml: &str) {
    let path = cluster.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    kubectl_ok(cluster, "1.33", &["apply", "-f", path.to_str().unwrap()]);
}

/// Pods with label `app` per node (bound ones), and how many are not bound.
fn spread(cluster: &LocalCluster, app: &str) -> (BTreeMap<String, usize>, usize) {
    let out = kubectl_ok(
        cluster,
        "1.33",
        &[
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}|{end}",
        ],
    );
    let mut per_node = BTreeMap::new();
    let mut unbound: usize = 0;
    for n in out.split('|').filter(|_| !out.is_empty()) {
        if n.is_empty() {
            unbound += 1;
        } else {
            *per_node.entry(n.to_string()).or_default() += 1;
        }
    }
    // The split leaves one empty tail after the last separator.
    (per_node, unbound.saturating_sub(1))
}

fn deployment(name: &str, replicas: u32, cpu: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  \
         selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    \
         spec:\n{spec_extra}      containers: [{{name: c, image: nginx, resources: {{requests: {{cpu: '{cpu}'}}}}}}]\n"
    )
}

#[test]
fn affinity_spread_and_preemption_place_pods_as_kubernetes_does() {
    let cluster = LocalCluster::up(
        "scheduling-policies",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "3"],
    );

    // Anti-affinity on the hostname: one per node; a fourth has nowhere to go.
    let anti = "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          \
                - labelSelector: {matchLabels: {app: solo}}\n            topologyKey: kubernetes.io/hostname\n";
    apply(&cluster, "solo", &deployment("solo", 3, "100m", anti));
    wait_for(
        "three solo pods on three nodes",
        Duration::from_secs(30),
        || {
            let (per_node, unbound) = spread(&cluster, "solo");
            per_node.len() == 3 && per_node.values().all(|n| *n == 1) && unbound == 0
        },
    );
    kubectl_ok(
        &cluster,
        "1.27",
        &["scale", "deploy", "solo", "--replicas=4"],
    );
    wait_for(
        "the fourth solo pod to be refused",
        Duration::from_secs(30),
        || {
            kubectl_ok(
                &cluster,
                "1.33",
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "reason=FailedScheduling",
                    "-o",
                    "jsonpath={.items[*].message}",
                ],
            )
            .contains("didn't match pod anti-affinity rules")
        },
    );
    assert_eq!(spread(&cluster, "solo").1, 1, "one solo pod stays Pending");
    kubectl_ok(&cluster, "1.33", &["delete", "deploy", "solo"]);

    // Affinity: next to the db pod.
    kubectl_ok(
        &cluster,
        "1.33",
        &["run", "db", "--image=postgres", "--labels=app=db"],
    );
    wait_for("db to be bound", Duration::from_secs(30), || {
        !kubectl_ok(
            &cluster,
            "1.33",
            &["get", "pod", "db", "-o", "jsonpath={.spec.nodeName}"],
        )
        .is_empty()
    });
    let db_node = kubectl_ok(
        &cluster,
        "1.33",
        &["get", "pod", "db", "-o", "jsonpath={.spec.nodeName}"],
    );
    let near = "      affinity:\n        podAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          \
                - labelSelector: {matchLabels: {app: db}}\n            topologyKey: kubernetes.io/hostname\n";
    apply(&cluster, "near", &deployment("near", 3, "100m", near));
    wait_for("the near pods next to db", Duration::from_secs(30), || {
        let (per_node, unbound) = spread(&cluster, "near");
        unbound == 0 && per_node.get(&db_node) == Some(&3)
    });

    // Topology spread: maxSkew 1 over hostnames, 6 replicas: 2-2-2.
    let even = "      topologySpreadConstraints:\n      - maxSkew: 1\n        topologyKey: kubernetes.io/hostname\n        \
                whenUnsatisfiable: DoNotSchedule\n        labelSelector: {matchLabels: {app: even}}\n";
    apply(&cluster, "even", &deployment("even", 6, "100m", even));
    wait_for("the even pods 2-2-2", Duration::from_secs(30), || {
        let (per_node, unbound) = spread(&cluster, "even");
        unbound == 0 && per_node.len() == 3 && per_node.values().all(|n| *n == 2)
    });
    kubectl_ok(&cluster, "1.33", &["delete", "deploy", "near", "even"]);
    kubectl_ok(&cluster, "1.33", &["delete", "pod", "db"]);

    // Priority and preemption: fill every node with a 7-CPU low-priority pod.
    let classes = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 10\n---\n\
                   apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n";
    apply(&cluster, "classes", classes);
    let pcs = kubectl_ok(&cluster, "1.27", &["get", "priorityclasses", "-o", "name"]);
    assert!(
        pcs.contains("system-node-critical") && pcs.contains("high"),
        "{pcs}"
    );
    apply(
        &cluster,
        "filler",
        &deployment("filler", 3, "7", "      priorityClassName: low\n"),
    );
    wait_for("the fillers on every node", Duration::from_secs(30), || {
        let (per_node, unbound) = spread(&cluster, "filler");
        unbound == 0 && per_node.len() == 3
    });
    let prio = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "pods",
            "-l",
            "app=filler",
            "-o",
            "jsonpath={.items[0].spec.priority}",
        ],
    );
    assert_eq!(prio, "10");
    apply(
        &cluster,
        "vip",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: vip, labels: {app: vip}}\nspec:\n  priorityClassName: high\n  \
         containers: [{name: c, image: nginx, resources: {requests: {cpu: '4'}}}]\n",
    );
    wait_for("the vip pod to run", Duration::from_secs(60), || {
        kubectl_ok(
            &cluster,
            "1.33",
            &["get", "pod", "vip", "-o", "jsonpath={.status.phase}"],
        ) == "Running"
    });
    let preempted = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "reason=Preempted",
            "-o",
            "jsonpath={.items[*].message}",
        ],
    );
    assert!(preempted.contains("Preempted by pod"), "{preempted}");
    let vip_node = kubectl_ok(
        &cluster,
        "1.33",
        &["get", "pod", "vip", "-o", "jsonpath={.spec.nodeName}"],
    );
    let nominated = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "pod",
            "vip",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ],
    );
    assert_eq!(vip_node, nominated);
    // The evicted filler was recreated by its ReplicaSet and waits: no room anywhere.
    wait_for("one filler pending", Duration::from_secs(30), || {
        spread(&cluster, "filler").1 == 1
    });

    // Bad input: an unknown class is refused and nothing is stored.
    let err = kubectl_fails(
        &cluster,
        "1.33",
        &[
            "run",
            "nope",
            "--image=nginx",
            "--overrides",
            r#"{"spec":{"priorityClassName":"missing"}}"#,
        ],
    );
    assert!(
        err.contains("no PriorityClass with name missing was found"),
        "{err}"
    );
    let err = kubectl_fails(&cluster, "1.33", &["get", "pod", "nope"]);
    assert!(err.contains("not found"), "{err}");
}
