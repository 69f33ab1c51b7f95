//! Namespace deletion through the namespace controller, with kubectl 1.33 and 1.27 against 2
//! simulated nodes: `kubectl delete namespace` marks it Terminating, new content is refused,
//! the controller deletes what is inside (running pods terminate gracefully), an object held
//! by a finalizer keeps the namespace (the `NamespaceContentRemaining` condition names it)
//! until the finalizer goes, then the `finalize` subresource lets the namespace go. The
//! built-in namespaces cannot be deleted.

use std::time::Duration;

use flotilla_e2e::{kubectl_fails, kubectl_ok, wait_for, LocalCluster};

#[test]
fn deleting_a_namespace_empties_it_first() {
    let cluster = LocalCluster::up(
        "namespace",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "2"],
    );
    let k = |args: &[&str]| kubectl_ok(&cluster, "1.33", args);
    k(&["create", "namespace", "shop"]);
    k(&[
        "-n",
        "shop",
        "create",
        "deployment",
        "web",
        "--image=nginx:1",
        "--replicas=2",
    ]);
    k(&[
        "-n",
        "shop",
        "rollout",
        "status",
        "deploy/web",
        "--timeout=60s",
    ]);
    k(&["-n", "shop", "create", "configmap", "held"]);
    k(&[
        "-n",
        "shop",
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);

    k(&["delete", "namespace", "shop", "--wait=false"]);
    let phase = k(&["get", "namespace", "shop", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Terminating");
    let err = kubectl_fails(
        &cluster,
        "1.27",
        &["-n", "shop", "create", "configmap", "late"],
    );
    assert!(err.contains("because it is being terminated"), "{err}");

    // Everything but the held ConfigMap goes; the condition says what remains.
    wait_for(
        "the namespace's pods and deployment to go",
        Duration::from_secs(60),
        || {
            kubectl_ok(
                &cluster,
                "1.27",
                &["-n", "shop", "get", "all", "-o", "name"],
            )
            .trim()
            .is_empty()
        },
    );
    wait_for(
        "the remaining-content condition",
        Duration::from_secs(20),
        || {
            k(&[
                "get",
                "namespace",
                "shop",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"NamespaceContentRemaining\")].message}",
            ])
            .contains("configmaps")
        },
    );
    let held = k(&[
        "-n",
        "shop",
        "get",
        "configmap",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(
        !held.is_empty(),
        "the held ConfigMap is marked for deletion"
    );
    assert_eq!(
        k(&[
            "get",
            "namespace",
            "shop",
            "-o",
            "jsonpath={.spec.finalizers[0]}"
        ]),
        "kubernetes"
    );

    // Releasing the finalizer lets the ConfigMap, then the namespace, go.
    k(&[
        "-n",
        "shop",
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    wait_for("the namespace to go", Duration::from_secs(30), || {
        !k(&["get", "namespaces", "-o", "name"]).contains("namespace/shop")
    });

    // The built-in namespaces stay.
    for ns in ["default", "kube-system"] {
        let err = kubectl_fails(&cluster, "1.33", &["delete", "namespace", ns]);
        assert!(err.contains("may not be deleted"), "{err}");
    }
    // kubectl's own wait (the default) returns once the namespace is gone.
    kubectl_ok(&cluster, "1.27", &["create", "namespace", "brief"]);
    kubectl_ok(
        &cluster,
        "1.27",
        &["-n", "brief", "create", "configmap", "c"],
    );
    kubectl_ok(
        &cluster,
        "1.27",
        &["delete", "namespace", "brief", "--timeout=60s"],
    );
    assert!(!k(&["get", "namespaces", "-o", "name"]).contains("namespace/brief"));
}
