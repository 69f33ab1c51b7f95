//! `pods/log`, `pods/exec` and `pods/eviction` through a 3-master cluster to the simulated
//! nodes' agent endpoint, with real kubectl (1.27 and 1.33) and the Python client.
//!
//! Simulated nodes run no processes: a container's log holds what the simulation did with it
//! (started, stopped), written in the CRI's log layout and read back with the `pods/log`
//! options; exec reaches the agent (a WebSocket or SPDY upgrade proxied by the API server) and
//! gets a Status that says no command can run there.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_e2e::{kubectl_bin, kubectl_fails, kubectl_ok, show, wait_for, LocalCluster};

fn phase(cluster: &LocalCluster, pod: &str) -> String {
    kubectl_ok(
        cluster,
        "1.33",
        &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
    )
}

#[test]
fn logs_exec_and_eviction_reach_the_node_agent() {
    let cluster = LocalCluster::up(
        "streams",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "2"],
    );
    kubectl_ok(&cluster, "1.33", &["run", "web", "--image=nginx:1.27"]);
    wait_for("pod web running", Duration::from_secs(60), || {
        phase(&cluster, "web") == "Running"
    });

    // Logs, on both kubectl versions, with the usual options.
    for version in ["1.27", "1.33"] {
        let log = kubectl_ok(&cluster, version, &["logs", "web"]);
        assert!(
            log.contains("simulated container \"web\" (image nginx:1.27) started on node sim-"),
            "{version}: {log}"
        );
    }
    let stamped = kubectl_ok(&cluster, "1.33", &["logs", "web", "--timestamps"]);
    assert!(
        stamped.starts_with("20") && stamped.split(' ').next().unwrap().ends_with('Z'),
        "{stamped}"
    );
    let none = kubectl_ok(&cluster, "1.33", &["logs", "web", "--tail=0"]);
    assert_eq!(none, "");
    let cut = kubectl_ok(&cluster, "1.27", &["logs", "web", "--limit-bytes=9"]);
    assert_eq!(cut, "simulated");
    let err = kubectl_fails(&cluster, "1.33", &["logs", "web", "-c", "db"]);
    assert!(
        err.contains("container db is not valid for pod web"),
        "{err}"
    );
    let err = kubectl_fails(&cluster, "1.33", &["logs", "web", "--previous"]);
    assert!(
        err.contains("previous terminated container \"web\" in pod \"web\" not found"),
        "{err}"
    );
    let bad = "/api/v1/namespaces/default/pods/web/log?tailLines=x";
    let err = kubectl_fails(&cluster, "1.33", &["get", "--raw", bad]);
    assert!(err.contains("tailLines=\"x\" is not a number"), "{err}");

    // A pod that is not scheduled has no logs yet.
    kubectl_ok(
        &cluster,
        "1.33",
        &[
            "run",
            "nowhere",
            "--image=nginx",
            "--overrides",
            r#"{"spec":{"nodeSelector":{"no":"such-node"}}}"#,
        ],
    );
    let err = kubectl_fails(&cluster, "1.33", &["logs", "nowhere"]);
    assert!(
        err.contains("pod nowhere does not have a host assigned"),
        "{err}"
    );

    // Exec: kubectl 1.33 speaks WebSocket, kubectl 1.27 SPDY/3.1 (with and without stdin);
    // either way the upgrade goes through the API server to the agent, which answers on the
    // error channel.
    let said = "cannot run commands in container \"web\" of pod \"default/web\": it runs on a \
                simulated node";
    for (version, args) in [
        ("1.33", &["exec", "web", "--", "echo", "hi"][..]),
        ("1.27", &["exec", "web", "--", "echo", "hi"][..]),
        ("1.27", &["exec", "-i", "web", "--", "cat"][..]),
    ] {
        let err = kubectl_fails(&cluster, version, args);
        assert!(err.contains(said), "{version} {args:?}: {err}");
    }

    // `kubectl debug` adds an ephemeral container through `pods/ephemeralcontainers` (a
    // strategic merge patch), which the simulated node then reports running.
    for version in ["1.27", "1.33"] {
        let out = kubectl_ok(
            &cluster,
            version,
            &[
                "debug",
                "web",
                "--image=busybox",
                &format!("--container=dbg{}", &version[2..]),
                "--",
                "true",
            ],
        );
        assert_eq!(out, "", "{version}");
    }
    wait_for(
        "ephemeral containers running",
        Duration::from_secs(30),
        || {
            kubectl_ok(
                &cluster,
                "1.33",
                &[
                    "get",
                    "pod",
                    "web",
                    "-o",
                    "jsonpath={.status.ephemeralContainerStatuses[*].state.running}",
                ],
            )
            .matches("startedAt")
            .count()
                == 2
        },
    );
    let names = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.spec.ephemeralContainers[*].name}",
        ],
    );
    assert_eq!(names, "dbg27 dbg33");
    // Once added, an ephemeral container stays as it is: a patch that drops one is a 422.
    let server = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    let [ca, cert, key] = cluster.admin_pki();
    let patch = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
        ])
        .arg("--cacert")
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args([
            "--data",
            r#"{"spec":{"ephemeralContainers":[{"name":"x","image":"busybox"}]}}"#,
        ])
        .arg(format!(
            "{server}/api/v1/namespaces/default/pods/web/ephemeralcontainers"
        ))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&patch.stdout);
    assert!(
        body.contains("\"code\":422")
            && body.contains("existing ephemeral containers \\\"dbg27\\\" may not be changed"),
        "{}",
        show(&patch)
    );

    // The agent's endpoint serves the API servers only: the admin's certificate is refused.
    let port = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "node",
            "sim-1",
            "-o",
            "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
        ],
    );
    let direct = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!(
            "https://localhost:{port}/containerLogs/default/web/web"
        ))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&direct.stdout);
    assert!(
        body.contains("\"code\":403") && body.contains("kube-apiserver-kubelet-client"),
        "{}",
        show(&direct)
    );

    // The Python client: logs, and exec over WebSocket v4.
    python_logs_and_exec(&cluster);

    // Follow: the stream stays open until the container stops (the pod is deleted).
    let mut follow = Command::new(kubectl_bin("1.33"))
        .args(["--kubeconfig"])
        .arg(cluster.dir().join("admin.kubeconfig"))
        .args(["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "kubectl logs -f ended while the container runs"
    );
    kubectl_ok(&cluster, "1.33", &["delete", "pod", "web", "--wait=false"]);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = follow.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = follow.kill();
            let _ = follow.wait();
            panic!("kubectl logs -f did not end after the pod was deleted");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("started on node"), "{out}");
    assert!(
        out.contains("simulated container \"web\" stopped: the pod is being deleted"),
        "{out}"
    );

    // Eviction: kubectl drain evicts a node's pods through pods/eviction, and their
    // Deployment recreates them on the other node.
    kubectl_ok(
        &cluster,
        "1.33",
        &[
            "create",
            "deployment",
            "app",
            "--image=nginx",
            "--replicas=4",
        ],
    );
    wait_for("4 app pods running", Duration::from_secs(60), || {
        kubectl_ok(
            &cluster,
            "1.33",
            &[
                "get",
                "pods",
                "-l",
                "app=app",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
        )
        .split_whitespace()
        .filter(|p| *p == "Running")
        .count()
            == 4
    });
    // A PodDisruptionBudget lets the drain take one pod at a time: each eviction waits until
    // the replacement of the previous one is Running (kubectl retries the 429s).
    kubectl_ok(
        &cluster,
        "1.33",
        &[
            "create",
            "pdb",
            "app",
            "--selector=app=app",
            "--min-available=3",
        ],
    );
    wait_for(
        "the budget allows 1 disruption",
        Duration::from_secs(30),
        || {
            kubectl_ok(&cluster, "1.27", &["get", "pdb", "app"])
                .lines()
                .nth(1)
                .is_some_and(|row| {
                    row.split_whitespace().collect::<Vec<_>>()[1..4] == ["3", "N/A", "1"]
                })
        },
    );
    let out = kubectl_ok(
        &cluster,
        "1.27",
        &["drain", "sim-1", "--ignore-daemonsets", "--timeout=60s"],
    );
    assert!(out.contains("drained"), "{out}");
    wait_for("app pods back on sim-2", Duration::from_secs(60), || {
        let nodes = kubectl_ok(
            &cluster,
            "1.33",
            &[
                "get",
                "pods",
                "-l",
                "app=app",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].spec.nodeName}",
            ],
        );
        let nodes: Vec<&str> = nodes.split_whitespace().collect();
        nodes.len() == 4 && nodes.iter().all(|n| *n == "sim-2")
    });
    // With no disruption allowed, an eviction is a 429 that says why.
    kubectl_ok(
        &cluster,
        "1.33",
        &[
            "patch",
            "pdb",
            "app",
            "--type=merge",
            "-p",
            r#"{"spec":{"minAvailable":4}}"#,
        ],
    );
    wait_for("the budget allows none", Duration::from_secs(30), || {
        kubectl_ok(
            &cluster,
            "1.33",
            &[
                "get",
                "pdb",
                "app",
                "-o",
                "jsonpath={.status.observedGeneration} {.status.disruptionsAllowed}",
            ],
        ) == "2 0"
    });
    let victim = kubectl_ok(
        &cluster,
        "1.33",
        &[
            "get",
            "pods",
            "-l",
            "app=app",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    let eviction = cluster.dir().join("evict.json");
    std::fs::write(
        &eviction,
        format!(
            r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{victim}"}}}}"#
        ),
    )
    .unwrap();
    let err = kubectl_fails(
        &cluster,
        "1.33",
        &[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{victim}/eviction"),
            "-f",
            eviction.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    // An Eviction naming another pod is refused.
    let bad = cluster.dir().join("eviction.json");
    std::fs::write(
        &bad,
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"other"}}"#,
    )
    .unwrap();
    let path = "/api/v1/namespaces/default/pods/nowhere/eviction";
    let err = kubectl_fails(
        &cluster,
        "1.33",
        &["create", "--raw", path, "-f", bad.to_str().unwrap()],
    );
    assert!(
        err.contains("name in URL does not match name in Eviction"),
        "{err}"
    );
}

fn python_logs_and_exec(cluster: &LocalCluster) {
    let python = flotilla_e2e::python();
    let script = r#"
import json, sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
print("LOG:" + v1.read_namespaced_pod_log("web", "default", tail_lines=1))
ws = stream(v1.connect_get_namespaced_pod_exec, "web", "default", command=["echo", "hi"],
            stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
ws.run_forever(timeout=10)
print("EXEC:" + ws.read_channel(3))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(cluster.dir().join("admin.kubeconfig"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("LOG:simulated container \"web\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("EXEC:") && stdout.contains("it runs on a simulated node"),
        "{stdout}"
    );
}
