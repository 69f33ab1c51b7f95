//! ResourceQuota and LimitRange admission, with real kubectl (1.27 and 1.33) against a
//! 3-master cluster: defaults and bounds from LimitRanges, quotas that hold under concurrent
//! creates through every master, usage given back when objects go, and bad objects refused.

use std::process::Command;
use std::time::Duration;

use flotilla_e2e::{kubectl_bin, kubectl_fails, kubectl_ok, show, wait_for, LocalCluster};

const OBJECTS: &str = r#"
apiVersion: v1
kind: ResourceQuota
metadata: {name: compute}
spec:
  hard: {pods: "4", requests.cpu: "2", requests.memory: 1Gi, limits.cpu: "4", count/configmaps: "2"}
---
apiVersion: v1
kind: LimitRange
metadata: {name: defaults}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 256Mi}
    defaultRequest: {cpu: 250m, memory: 128Mi}
    max: {cpu: "1"}
"#;

fn quota_used(cluster: &LocalCluster, ns: &str, what: &str) -> String {
    kubectl_ok(
        cluster,
        "1.33",
        &[
            "-n",
            ns,
            "get",
            "quota",
            "compute",
            "-o",
            &format!("jsonpath={{.status.used.{}}}", what.replace('.', "\\.")),
        ],
    )
}

#[test]
fn quotas_and_limit_ranges_hold_on_every_master() {
    let cluster = LocalCluster::up("quota", &["--nodes", "0", "--no-demo"]);
    let file = cluster.dir().join("quota.yaml");
    std::fs::write(&file, OBJECTS).unwrap();
    let apis: Vec<String> = cluster.cluster_json()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "master")
        .map(|p| p["endpoints"]["api"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(apis.len(), 3);

    for version in ["1.27", "1.33"] {
        let ns = format!("q-{}", version.replace('.', "-"));
        kubectl_ok(&cluster, version, &["create", "namespace", &ns]);
        // Default client-side validation: the kinds are in the OpenAPI documents.
        kubectl_ok(
            &cluster,
            version,
            &["-n", &ns, "apply", "-f", file.to_str().unwrap()],
        );
        wait_for("the quota's usage counted", Duration::from_secs(10), || {
            quota_used(&cluster, &ns, "pods") == "0"
        });

        // A container without resources gets the LimitRange's defaults, and says so.
        kubectl_ok(&cluster, version, &["-n", &ns, "run", "a", "--image=nginx"]);
        let got = kubectl_ok(
            &cluster,
            version,
            &[
                "-n",
                &ns,
                "get",
                "pod",
                "a",
                "-o",
                "jsonpath={.spec.containers[0].resources.requests.cpu} {.spec.containers[0].resources.limits.memory} {.status.qosClass}",
            ],
        );
        assert_eq!(got, "250m 256Mi Burstable");
        let note = kubectl_ok(
            &cluster,
            version,
            &[
                "-n",
                &ns,
                "get",
                "pod",
                "a",
                "-o",
                "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}",
            ],
        );
        assert!(note.starts_with("LimitRanger plugin set:"), "{note}");
        // Above the LimitRange's max: 403 naming the bound.
        let err = kubectl_fails(
            &cluster,
            version,
            &[
                "-n",
                &ns,
                "run",
                "big",
                "--image=nginx",
                "--overrides",
                r#"{"spec":{"containers":[{"name":"big","image":"nginx","resources":{"limits":{"cpu":"2"}}}]}}"#,
            ],
        );
        assert!(
            err.contains("is forbidden")
                && err.contains("maximum cpu usage per Container is 1, but limit is 2"),
            "{err}"
        );

        // Three more pods through the three masters at once: the quota (4 pods) takes
        // exactly three of six, whichever master each went to.
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let kubeconfig = cluster.dir().join("admin.kubeconfig");
                let server = apis[i % 3].clone();
                let ns = ns.clone();
                let bin = kubectl_bin(version);
                std::thread::spawn(move || {
                    Command::new(bin)
                        .arg("--kubeconfig")
                        .arg(kubeconfig)
                        .args(["--server", &server, "-n", &ns, "run", &format!("p{i}")])
                        .arg("--image=nginx")
                        .output()
                        .unwrap()
                })
            })
            .collect();
        let outs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let created = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(
            created,
            3,
            "{:?}",
            outs.iter().map(show).collect::<Vec<_>>()
        );
        for o in outs.iter().filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains(
                    "exceeded quota: compute, requested: pods=1, used: pods=4, limited: pods=4"
                ),
                "{err}"
            );
        }
        assert_eq!(quota_used(&cluster, &ns, "requests.cpu"), "1");
        assert_eq!(quota_used(&cluster, &ns, "requests.memory"), "512Mi");
        let table = kubectl_ok(&cluster, version, &["-n", &ns, "get", "quota"]);
        assert!(table.contains("pods: 4/4"), "{table}");
        assert!(table.contains("limits.cpu: 2/4"), "{table}");

        // A deleted pod gives its share back.
        kubectl_ok(&cluster, version, &["-n", &ns, "delete", "pod", "a"]);
        wait_for("the quota given back", Duration::from_secs(10), || {
            quota_used(&cluster, &ns, "pods") == "3"
        });
        kubectl_ok(
            &cluster,
            version,
            &["-n", &ns, "run", "again", "--image=nginx"],
        );

        // Object counts.
        for c in ["c1", "c2"] {
            kubectl_ok(&cluster, version, &["-n", &ns, "create", "configmap", c]);
        }
        let err = kubectl_fails(&cluster, version, &["-n", &ns, "create", "configmap", "c3"]);
        assert!(
            err.contains("configmaps \"c3\" is forbidden: exceeded quota: compute, requested: count/configmaps=1"),
            "{err}"
        );
    }

    // Bad quotas and ranges are 422 with the field, and nothing is written.
    let bad = cluster.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad}\nspec:\n  limits:\n  - type: Container\n    min: {cpu: \"2\"}\n    max: {cpu: \"1\"}\n",
    )
    .unwrap();
    let err = kubectl_fails(&cluster, "1.33", &["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        err.contains("spec.limits[0].min[cpu]")
            && err.contains("min value 2 is greater than max value 1"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: bad}\nspec:\n  hard: {pods: lots}\n",
    )
    .unwrap();
    let err = kubectl_fails(
        &cluster,
        "1.33",
        &["apply", "--validate=false", "-f", bad.to_str().unwrap()],
    );
    assert!(
        err.contains("spec.hard[pods]") || err.contains("quantities must match"),
        "{err}"
    );
    let none = kubectl_ok(&cluster, "1.33", &["get", "quota,limits", "-o", "name"]);
    assert_eq!(none.trim(), "", "{none}");

    // Updates are charged for what they add: a Service turned NodePort takes a node port.
    kubectl_ok(&cluster, "1.33", &["create", "namespace", "ports"]);
    fn in_ports<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [&["-n", "ports"][..], args].concat()
    }
    kubectl_ok(
        &cluster,
        "1.33",
        &in_ports(&["create", "quota", "ports", "--hard=services.nodeports=1"]),
    );
    for svc in ["a", "b"] {
        let create = ["create", "service", "clusterip", svc, "--tcp=80"];
        kubectl_ok(&cluster, "1.33", &in_ports(&create));
    }
    let node_port = r#"{"spec":{"type":"NodePort"}}"#;
    kubectl_ok(
        &cluster,
        "1.27",
        &in_ports(&["patch", "service", "a", "-p", node_port]),
    );
    let err = kubectl_fails(
        &cluster,
        "1.33",
        &in_ports(&["patch", "service", "b", "-p", node_port]),
    );
    assert!(
        err.contains("services \"b\" is forbidden: exceeded quota: ports, requested: services.nodeports=1, used: services.nodeports=1"),
        "{err}"
    );
    let get_type = ["get", "service", "b", "-o", "jsonpath={.spec.type}"];
    let b = kubectl_ok(&cluster, "1.33", &in_ports(&get_type));
    assert_eq!(b.trim(), "ClusterIP", "the refused update wrote nothing");

    // A server-side dry run of an update is admitted and answered, and writes nothing.
    let dry = ["patch", "service", "b", "-p", node_port, "--dry-run=server"];
    let err = kubectl_fails(&cluster, "1.33", &in_ports(&dry));
    assert!(err.contains("exceeded quota: ports"), "{err}");
    let dry = ["label", "service", "b", "tier=web", "--dry-run=server"];
    kubectl_ok(&cluster, "1.27", &in_ports(&dry));
    let labels = [
        "get",
        "service",
        "b",
        "-o",
        "jsonpath={.metadata.labels.tier}",
    ];
    let tier = kubectl_ok(&cluster, "1.33", &in_ports(&labels));
    assert_eq!(tier.trim(), "", "a dry run wrote the label");

    // … and so is a dry run of a delete, of one object, of a selection, and of a namespace.
    let dry = ["delete", "service", "b", "--dry-run=server"];
    let out = kubectl_ok(&cluster, "1.27", &in_ports(&dry));
    assert!(out.contains("deleted (server dry run)"), "{out}");
    let dry = ["delete", "services", "--all", "--dry-run=server"];
    kubectl_ok(&cluster, "1.33", &in_ports(&dry));
    kubectl_ok(
        &cluster,
        "1.33",
        &["delete", "namespace", "ports", "--dry-run=server"],
    );
    let left = kubectl_ok(
        &cluster,
        "1.33",
        &in_ports(&["get", "services", "-o", "name"]),
    );
    assert_eq!(
        left.trim(),
        "service/a\nservice/b",
        "a dry run deleted: {left}"
    );
    // deletecollection: a dry run keeps everything, a real one takes what its selector picks.
    for (cm, label) in [("keep", "x=1"), ("drop", "x=2")] {
        kubectl_ok(&cluster, "1.33", &in_ports(&["create", "configmap", cm]));
        kubectl_ok(
            &cluster,
            "1.33",
            &in_ports(&["label", "configmap", cm, label]),
        );
    }
    let cms = "/api/v1/namespaces/ports/configmaps";
    let all_dry = format!("{cms}?dryRun=All");
    kubectl_ok(&cluster, "1.33", &["delete", "--raw", &all_dry]);
    let picked = format!("{cms}?labelSelector=x%3D2");
    kubectl_ok(&cluster, "1.27", &["delete", "--raw", &picked]);
    let names = ["get", "configmaps", "-l", "x", "-o", "name"];
    let left = kubectl_ok(&cluster, "1.33", &in_ports(&names));
    assert_eq!(left.trim(), "configmap/keep", "{left}");
    let phase = [
        "get",
        "namespace",
        "ports",
        "-o",
        "jsonpath={.status.phase}",
    ];
    let phase = kubectl_ok(&cluster, "1.33", &phase);
    assert_eq!(phase.trim(), "Active", "a dry run marked the namespace");
}
