//! Real kubectl (the oldest and the newest supported, 1.27 and 1.33) against a 3-master
//! Flotilla cluster's Kubernetes API, through the admin kubeconfig `flotilla up` writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flotilla_e2e::{kubectl_bin, show, wait_for, Child, LocalCluster};

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn new(cluster: &LocalCluster, version: &str) -> Kubectl {
        Kubectl {
            bin: kubectl_bin(version),
            kubeconfig: cluster.dir().join("admin.kubeconfig"),
            cache: cluster.dir().join(format!("kube-cache-{version}")),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running kubectl")
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn kubectl_1_27_and_1_33_manage_objects_on_any_master() {
    let cluster = LocalCluster::up("kubectl", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    for version in ["1.27", "1.33"] {
        let k = Kubectl::new(&cluster, version);
        let ns = format!("demo-{}", version.replace('.', "-"));

        // Discovery comes aggregated, in the newest form each kubectl asks for (1.27 knows
        // v2beta1 only), and names every resource with its short names and scope.
        let out = k.run(&["api-resources", "-v=8"]);
        assert!(out.status.success(), "{}", show(&out));
        let log = String::from_utf8_lossy(&out.stderr);
        let form = if version == "1.27" { "v2beta1" } else { "v2" };
        assert!(
            log.contains(&format!(
                "Content-Type: application/json;g=apidiscovery.k8s.io;v={form};as=APIGroupDiscoveryList"
            )),
            "{log}"
        );
        let table = String::from_utf8_lossy(&out.stdout);
        for row in [
            "deployments                        deploy       apps/v1",
            "pods                               po           v1",
        ] {
            let words: Vec<&str> = row.split_whitespace().collect();
            assert!(
                table
                    .lines()
                    .any(|l| l.split_whitespace().take(3).eq(words.iter().copied())),
                "{row}: {table}"
            );
        }

        // The initial namespaces exist, as a table with kubectl's columns.
        let out = k.ok(&["get", "namespaces"]);
        assert!(out.starts_with("NAME"), "{out}");
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            assert!(out.contains(n), "{n} missing: {out}");
        }

        // Server-side apply creates, then updates.
        let ssa = write(
            cluster.dir(),
            &format!("ssa-{version}.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"1\"}\n",
        );
        let out = k.ok(&["apply", "--server-side", "-f", &ssa]);
        assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
        std::fs::write(
            &ssa,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"2\", b: \"3\"}\n",
        )
        .unwrap();
        k.ok(&["apply", "--server-side", "-f", &ssa]);
        assert_eq!(
            k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}{.data.b}"]),
            "23"
        );
        // A second field manager applying another value for a field the first one set is
        // refused with the field and its manager named, and wins when it forces.
        let other = write(
            cluster.dir(),
            &format!("ssa-other-{version}.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"9\"}\n",
        );
        let out = k.run(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &other,
        ]);
        assert!(!out.status.success(), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.a"
            ) && err.contains("--force-conflicts"),
            "{err}"
        );
        assert_eq!(k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "2");
        let forced = [
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
        ];
        k.ok(&[&forced[..], &["-f", &other]].concat());
        // The first manager drops `b` (it alone set it) and `a` (now the other's): `b` goes,
        // `a` stays.
        std::fs::write(
            &ssa,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {c: \"4\"}\n",
        )
        .unwrap();
        k.ok(&["apply", "--server-side", "-f", &ssa]);
        assert_eq!(
            k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data}"]),
            r#"{"a":"9","c":"4"}"#
        );
        let owners = k.ok(&[
            "get",
            "cm",
            "ssa",
            "--show-managed-fields",
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}={.fieldsV1}{\"\\n\"}{end}",
        ]);
        assert_eq!(
            owners,
            "kubectl/Apply={\"f:data\":{\"f:c\":{}}}\nother/Apply={\"f:data\":{\"f:a\":{}}}\n"
        );
        k.ok(&["delete", "cm", "ssa"]);
        // Updates are recorded for the manager kubectl names (kubectl-create, -label...).
        k.ok(&["create", "configmap", "made", "--from-literal=x=1"]);
        k.ok(&["label", "configmap", "made", "team=a"]);
        let owners = k.ok(&[
            "get",
            "cm",
            "made",
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}={.fieldsV1}{\"\\n\"}{end}",
        ]);
        assert_eq!(
            owners,
            "kubectl-create/Update={\"f:data\":{\"f:x\":{}}}\n\
             kubectl-label/Update={\"f:metadata\":{\"f:labels\":{\"f:team\":{}}}}\n"
        );
        k.ok(&["delete", "cm", "made"]);

        // `explain` reads the schemas in the OpenAPI v3 documents.
        let out = k.ok(&["explain", "deployment.spec.replicas"]);
        assert!(
            out.contains("FIELD: replicas <integer>") && out.contains("Number of desired pods"),
            "{out}"
        );
        let out = k.ok(&["explain", "pods.spec.containers.resources"]);
        assert!(out.contains("limits\t<map[string]Quantity>"), "{out}");

        // kubectl's generators (1.33's send protobuf bodies, 1.27's JSON).
        let gen = format!("{ns}-gen");
        k.ok(&["create", "namespace", &gen]);
        k.ok(&[
            "-n",
            &gen,
            "create",
            "configmap",
            "c",
            "--from-literal=a=1",
            "--from-literal=b=two",
        ]);
        k.ok(&[
            "-n",
            &gen,
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=pw=hunter2",
        ]);
        k.ok(&[
            "-n",
            &gen,
            "create",
            "deployment",
            "d",
            "--image=nginx:1",
            "--replicas=2",
            "--port=80",
        ]);
        assert_eq!(
            k.ok(&["-n", &gen, "get", "cm", "c", "-o", "jsonpath={.data.b}"]),
            "two"
        );
        assert_eq!(
            k.ok(&[
                "-n",
                &gen,
                "get",
                "secret",
                "s",
                "-o",
                "jsonpath={.data.pw}"
            ]),
            "aHVudGVyMg=="
        );
        assert_eq!(
            k.ok(&["-n", &gen, "get", "deploy", "d", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.selector.matchLabels.app}"]),
            "2 nginx:1 d"
        );
        k.ok(&["delete", "namespace", &gen]);

        // Objects from a file.
        let manifest = write(
            cluster.dir(),
            &format!("{ns}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n\
                 apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: {ns}\n\
                 data:\n  a: \"1\"\n---\n\
                 apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n\
                 spec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n\
                 \x20   metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n\
                 \x20     - name: web\n        image: nginx\n"
            ),
        );
        let out = k.ok(&["create", "-f", &manifest, "--validate=false"]);
        assert!(out.contains("configmap/cfg created"), "{out}");

        // get: table, -o yaml/json, -A, -l; label, annotate; all three patch types.
        let out = k.ok(&["-n", &ns, "get", "configmap", "cfg"]);
        assert!(out.contains("DATA") && out.contains("cfg"), "{out}");
        let yaml = k.ok(&["-n", &ns, "get", "cm", "cfg", "-o", "yaml"]);
        assert!(
            yaml.contains("resourceVersion:") && yaml.contains("uid:"),
            "{yaml}"
        );
        k.ok(&["-n", &ns, "label", "cm", "cfg", "tier=web"]);
        k.ok(&["-n", &ns, "annotate", "cm", "cfg", "note=hello"]);
        let out = k.ok(&[
            "-n",
            &ns,
            "get",
            "cm",
            "-l",
            "tier in (web,api)",
            "-o",
            "name",
        ]);
        assert_eq!(out.trim(), "configmap/cfg");
        let out = k.ok(&["-n", &ns, "get", "cm", "-l", "tier!=web", "-o", "name"]);
        assert_eq!(out.trim(), "");
        // Removing the last label and annotation leaves no empty maps behind, as on
        // Kubernetes (omitempty), so `kubectl diff` shows no phantom change.
        k.ok(&["-n", &ns, "create", "cm", "bare"]);
        k.ok(&["-n", &ns, "label", "cm", "bare", "x=1"]);
        k.ok(&["-n", &ns, "label", "cm", "bare", "x-"]);
        k.ok(&["-n", &ns, "annotate", "cm", "bare", "y=1"]);
        k.ok(&["-n", &ns, "annotate", "cm", "bare", "y-"]);
        let bare: serde_json::Value =
            serde_json::from_str(&k.ok(&["-n", &ns, "get", "cm", "bare", "-o", "json"])).unwrap();
        for gone in ["labels", "annotations"] {
            assert!(bare["metadata"].get(gone).is_none(), "{gone}: {bare}");
        }
        k.ok(&["-n", &ns, "delete", "cm", "bare"]);
        k.ok(&[
            "-n",
            &ns,
            "patch",
            "cm",
            "cfg",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"b":"2"}}"#,
        ]);
        k.ok(&[
            "-n",
            &ns,
            "patch",
            "cm",
            "cfg",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
        ]);
        k.ok(&[
            "-n",
            &ns,
            "patch",
            "cm",
            "cfg",
            "-p",
            r#"{"data":{"d":"4"}}"#,
        ]);
        let data = k.ok(&["-n", &ns, "get", "cm", "cfg", "-o", "jsonpath={.data}"]);
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"a": "1", "b": "2", "c": "3", "d": "4"})
        );
        let out = k.ok(&["get", "cm", "-A"]);
        assert!(out.contains(&ns) && out.starts_with("NAMESPACE"), "{out}");
        // --sort-by asks for the rows' whole objects (includeObject=Object) and sorts the
        // table by any field of them.
        k.ok(&["-n", &ns, "create", "configmap", "zz", "--from-literal=a=0"]);
        let out = k.ok(&["-n", &ns, "get", "cm", "--sort-by=.data.a"]);
        let at = |name: &str| out.lines().position(|l| l.starts_with(name));
        assert!(at("zz").is_some() && at("zz") < at("cfg"), "{out}");
        k.ok(&["-n", &ns, "delete", "cm", "zz"]);
        let out = k.ok(&["-n", &ns, "get", "deployments"]);
        assert!(out.contains("READY") && out.contains("web"), "{out}");
        // -o wide adds kubectl's wide columns; -o json is the object itself.
        let out = k.ok(&["-n", &ns, "get", "deployments", "-o", "wide"]);
        let head: Vec<&str> = out
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            head,
            [
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR"
            ],
            "{out}"
        );
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            (row[0], &row[5..]),
            ("web", &["web", "nginx", "app=web"][..]),
            "{out}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&k.ok(&["-n", &ns, "get", "cm", "cfg", "-o", "json"])).unwrap();
        assert_eq!(json["metadata"]["annotations"]["note"], "hello");
        assert_eq!(json["metadata"]["labels"]["tier"], "web");
        let out = k.ok(&["describe", "namespace", &ns]);
        assert!(out.contains("Status:") && out.contains("Active"), "{out}");
        let out = k.ok(&["-n", &ns, "describe", "deployment", "web"]);
        assert!(
            out.contains("Selector:") && out.contains("app=web") && out.contains("Replicas:"),
            "{out}"
        );
        // Subresources as tables: the scale's own columns, the status as the object's.
        let out = k.ok(&["-n", &ns, "get", "deployment", "web", "--subresource=scale"]);
        assert_eq!(
            out.lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["NAME", "DESIRED", "AVAILABLE"],
            "{out}"
        );
        let out = k.ok(&[
            "-n",
            &ns,
            "get",
            "deployment",
            "web",
            "--subresource=status",
        ]);
        assert!(
            out.starts_with("NAME") && out.contains("UP-TO-DATE"),
            "{out}"
        );

        // get -w (a table, as users run it) sees a create and a change made meanwhile through
        // other masters.
        let mut watcher = Child(
            k.command(&["-n", &ns, "get", "cm", "-w", "--request-timeout=20s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = watcher.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let first_word = |line: String| line.split_whitespace().next().unwrap_or("").to_string();
        let header = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["NAME", "DATA", "AGE"],
            "{header}"
        );
        assert_eq!(
            first_word(rx.recv_timeout(Duration::from_secs(10)).unwrap()),
            "cfg"
        );
        let second = write(
            cluster.dir(),
            &format!("{ns}-second.yaml"),
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: second\n  namespace: {ns}\n"
            ),
        );
        k.ok(&[
            "--context",
            "m2",
            "create",
            "-f",
            &second,
            "--validate=false",
        ]);
        assert_eq!(
            first_word(rx.recv_timeout(Duration::from_secs(10)).unwrap()),
            "second",
            "the watch did not see a create made on another master"
        );
        k.ok(&[
            "--context",
            "m3",
            "-n",
            &ns,
            "label",
            "cm",
            "second",
            "seen=yes",
        ]);
        assert_eq!(
            first_word(rx.recv_timeout(Duration::from_secs(10)).unwrap()),
            "second",
            "the watch did not see a change made on another master"
        );
        drop(watcher);

        // Bad input: a wrong name is 422 with the field, an unknown namespace 404.
        let bad = write(
            cluster.dir(),
            "bad.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n  namespace: {ns}\n"
            ),
        );
        let out = k.run(&["create", "-f", &bad, "--validate=false"]);
        assert!(!out.status.success());
        assert!(show(&out).contains("metadata.name"), "{}", show(&out));
        let out = k.run(&[
            "-n",
            "no-such-ns",
            "create",
            "-f",
            &manifest,
            "--validate=false",
        ]);
        assert!(!out.status.success());

        // apply with default (server-side) validation, then a changed manifest: the
        // strategic merge patch changes the image and keeps what it does not name.
        let app = |image: &str, replicas: u32| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  namespace: {ns}\n\
                 spec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: app}}\n  template:\n\
                 \x20   metadata:\n      labels: {{app: app}}\n    spec:\n      containers:\n\
                 \x20     - name: app\n        image: {image}\n        ports:\n        - containerPort: 80\n\
                 \x20     - name: side\n        image: busybox\n"
            )
        };
        let applied = write(cluster.dir(), &format!("{ns}-app.yaml"), &app("nginx:1", 2));
        let out = k.ok(&["apply", "-f", &applied]);
        assert!(out.contains("deployment.apps/app created"), "{out}");
        write(cluster.dir(), &format!("{ns}-app.yaml"), &app("nginx:2", 3));
        let out = k.ok(&["apply", "-f", &applied]);
        assert!(out.contains("deployment.apps/app configured"), "{out}");
        let got = k.ok(&[
            "-n", &ns, "get", "deploy", "app", "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].ports[0].containerPort}",
        ]);
        assert_eq!(got, "3 nginx:2 busybox 80");
        // Default validation is strict, done by the server: a misspelt field is refused.
        let typo = write(
            cluster.dir(),
            &format!("{ns}-typo.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\n  namespace: {ns}\ndatta:\n  a: b\n"),
        );
        let out = k.run(&["apply", "-f", &typo]);
        assert!(!out.status.success(), "{}", show(&out));
        assert!(
            show(&out).contains(r#"unknown field "datta""#),
            "{}",
            show(&out)
        );
        // Warn (and Kubernetes' default) drops the field and says so; Ignore drops it quietly.
        let out = k.run(&["apply", "--validate=warn", "-f", &typo]);
        assert!(out.status.success(), "{}", show(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(r#"Warning: unknown field "datta""#),
            "{}",
            show(&out)
        );
        let stored_without_datta = || {
            let got = k.ok(&[
                "-n",
                &ns,
                "get",
                "cm",
                "typo",
                "-o",
                "jsonpath={.datta}|{.kind}",
            ]);
            assert_eq!(got, "|ConfigMap");
        };
        stored_without_datta();
        k.ok(&["-n", &ns, "delete", "cm", "typo"]);
        let out = k.run(&["apply", "--validate=false", "-f", &typo]);
        assert!(out.status.success(), "{}", show(&out));
        assert!(!show(&out).contains("Warning"), "{}", show(&out));
        stored_without_datta();

        // scale (the autoscaling/v1 Scale subresource) and edit (KUBE_EDITOR).
        k.ok(&["-n", &ns, "scale", "deployment", "app", "--replicas=5"]);
        assert_eq!(
            k.ok(&[
                "-n",
                &ns,
                "get",
                "deploy",
                "app",
                "-o",
                "jsonpath={.spec.replicas}"
            ]),
            "5"
        );
        let editor = write(
            cluster.dir(),
            "editor.sh",
            "#!/bin/sh\nsed -i 's/replicas: [0-9]*/replicas: 7/' \"$1\"\n",
        );
        Command::new("chmod")
            .args(["+x", &editor])
            .status()
            .unwrap();
        let out = k
            .command(&["-n", &ns, "edit", "deployment", "app"])
            .env("KUBE_EDITOR", &editor)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(
            k.ok(&[
                "-n",
                &ns,
                "get",
                "deploy",
                "app",
                "-o",
                "jsonpath={.spec.replicas} {.metadata.generation}"
            ]),
            "7 4"
        );

        // delete: the object, then the namespace with everything in it.
        k.ok(&["-n", &ns, "delete", "cm", "cfg"]);
        let out = k.run(&["-n", &ns, "get", "cm", "cfg"]);
        assert!(
            show(&out).contains("NotFound") || show(&out).contains("not found"),
            "{}",
            show(&out)
        );
        k.ok(&["delete", "namespace", &ns]);
        wait_for("the namespace to go", Duration::from_secs(10), || {
            !k.run(&["get", "namespace", &ns]).status.success()
        });
        let out = k.ok(&["get", "deployments", "-A", "-o", "name"]);
        assert!(!out.contains("web"), "deleting the namespace left {out}");
    }
}

#[test]
fn the_api_refuses_strangers_and_bad_bodies_with_kubernetes_statuses() {
    let cluster = LocalCluster::up(
        "api-errors",
        &["--masters", "3", "--nodes", "0", "--no-demo"],
    );
    let api = cluster.cluster_json()["processes"][1]["endpoints"]["api"]
        .as_str()
        .unwrap()
        .to_string();
    let [ca, cert, key] = cluster.admin_pki();
    let curl = |with_cert: bool, method: &str, path: &str, body: &str, ctype: &str| {
        let mut c = Command::new("curl");
        c.args(["-s", "-w", "\n%{http_code}", "-X", method, "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Content-Type: {ctype}")]);
        if with_cert {
            c.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        if !body.is_empty() {
            c.args(["--data-binary", body]);
        }
        let out = c.arg(format!("{api}{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.to_string(),
            serde_json::from_str::<serde_json::Value>(body).unwrap_or_default(),
        )
    };
    let (code, status) = curl(false, "GET", "/api/v1/namespaces", "", "application/json");
    assert_eq!(
        (code.as_str(), &status["reason"]),
        ("401", &serde_json::json!("Unauthorized"))
    );
    let cms = "/api/v1/namespaces/default/configmaps";
    let (code, status) = curl(true, "POST", cms, "{not json", "application/json");
    assert_eq!(code, "400", "{status}");
    assert_eq!(status["kind"], "Status");
    let (code, status) = curl(
        true,
        "POST",
        cms,
        r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"x"}}"#,
        "application/json",
    );
    assert_eq!(code, "400", "{status}");
    // A value of the wrong type is refused whatever the field validation, and nothing is
    // stored (typed clients could not read it back).
    for validation in ["", "?fieldValidation=Ignore"] {
        let (code, status) = curl(
            true,
            "POST",
            &format!("{cms}{validation}"),
            r#"{"metadata":{"name":"typed"},"data":{"a":true}}"#,
            "application/json",
        );
        assert_eq!(code, "400", "{status}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(r#"ConfigMap in version "v1" cannot be handled as a ConfigMap"#),
            "{status}"
        );
    }
    let (code, _) = curl(true, "GET", &format!("{cms}/typed"), "", "application/json");
    assert_eq!(code, "404");
    let (code, _) = curl(
        true,
        "POST",
        cms,
        r#"{"metadata":{"name":"ok"}}"#,
        "application/json",
    );
    assert_eq!(code, "201");
    let (code, status) = curl(
        true,
        "POST",
        cms,
        r#"{"metadata":{"name":"ok"}}"#,
        "application/json",
    );
    assert_eq!(
        (code.as_str(), &status["reason"]),
        ("409", &serde_json::json!("AlreadyExists"))
    );
    // A stale resourceVersion is a conflict; nothing was half-written.
    let (code, status) = curl(
        true,
        "PUT",
        &format!("{cms}/ok"),
        r#"{"metadata":{"name":"ok","resourceVersion":"1"},"data":{"x":"y"}}"#,
        "application/json",
    );
    assert_eq!(
        (code.as_str(), &status["reason"]),
        ("409", &serde_json::json!("Conflict"))
    );
    let (code, obj) = curl(true, "GET", &format!("{cms}/ok"), "", "application/json");
    assert_eq!(code, "200");
    assert!(obj.get("data").is_none(), "{obj}");
    let big = format!(
        r#"{{"metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "a".repeat(3 * 1024 * 1024 + 10)
    );
    let file = cluster.dir().join("big.json");
    std::fs::write(&file, big).unwrap();
    let (code, _) = curl(
        true,
        "POST",
        cms,
        &format!("@{}", file.display()),
        "application/json",
    );
    assert_eq!(code, "413");
    let (code, _) = curl(true, "GET", &format!("{cms}/big"), "", "application/json");
    assert_eq!(code, "404", "a refused body was written");
    // A wrong apiVersion for the URL is 400; YAML bodies are taken, malformed YAML is 400.
    let (code, status) = curl(
        true,
        "POST",
        cms,
        r#"{"kind":"ConfigMap","apiVersion":"apps/v1","metadata":{"name":"w"}}"#,
        "application/json",
    );
    assert_eq!(code, "400", "{status}");
    assert!(
        status["message"].as_str().unwrap_or("").contains("apps/v1"),
        "{status}"
    );
    let (code, made) = curl(
        true,
        "POST",
        cms,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: \"1\"\n",
        "application/yaml",
    );
    assert_eq!(
        (code.as_str(), &made["data"]["a"]),
        ("201", &serde_json::json!("1")),
        "{made}"
    );
    let (code, status) = curl(
        true,
        "POST",
        cms,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [\n  name: bad\n",
        "application/yaml",
    );
    assert_eq!(
        (code.as_str(), &status["reason"]),
        ("400", &serde_json::json!("BadRequest")),
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("not valid YAML"),
        "{status}"
    );
    // Refused before its body is read, over and over: every answer arrives (HTTP/2, where the
    // stream's reset used to leave in the same packet as the answer and curl dropped it).
    for _ in 0..20 {
        let (code, status) = curl(true, "POST", cms, "x", "text/plain");
        assert_eq!(
            (code.as_str(), &status["reason"]),
            ("415", &serde_json::json!("UnsupportedMediaType"))
        );
        let (code, status) = curl(false, "POST", cms, "{}", "application/json");
        assert_eq!(
            (code.as_str(), &status["reason"]),
            ("401", &serde_json::json!("Unauthorized"))
        );
    }
    let (code, status) = curl(true, "GET", "/api/v1/widgets", "", "application/json");
    assert_eq!(
        (code.as_str(), &status["reason"]),
        ("404", &serde_json::json!("NotFound"))
    );
}

#[test]
fn services_get_unique_addresses_and_finalizers_hold_deletions() {
    let cluster = LocalCluster::up("services", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let k = Kubectl::new(&cluster, "1.33");
    // The kubernetes Service holds the first address of the range.
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}"
        ]),
        "10.96.0.1"
    );
    // Services created at once through all three masters get distinct ClusterIPs.
    let children: Vec<_> = (0..9)
        .map(|i| {
            let ctx = format!("m{}", i % 3 + 1);
            k.command(&[
                "--context",
                &ctx,
                "create",
                "service",
                "nodeport",
                &format!("s{i}"),
                "--tcp=80:8080",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
    let ips = k.ok(&["get", "svc", "-o", "jsonpath={.items[*].spec.clusterIP}"]);
    let mut ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 10);
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 10, "a ClusterIP was handed out twice: {ips:?}");
    // Paged lists (kubectl's --chunk-size is the API's limit/continue) return every object once.
    let paged = k.ok(&["get", "svc", "--chunk-size=3", "-o", "name"]);
    assert_eq!(paged.lines().count(), 10, "{paged}");
    // The pages are one list at the first page's revision: a Service created after the first
    // page is not in the next ones, whether the next page comes from the same master (its
    // cache kept the list) or from another (its store, at that revision).
    let page = |ctx: &str, path: &str| -> serde_json::Value {
        serde_json::from_str(&k.ok(&["--context", ctx, "get", "--raw", path])).unwrap()
    };
    let first = page("m1", "/api/v1/namespaces/default/services?limit=4");
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first["items"].as_array().unwrap().len(), 4);
    assert_eq!(
        first["metadata"]["remainingItemCount"], 6,
        "{}",
        first["metadata"]
    );
    k.ok(&["create", "service", "clusterip", "late", "--tcp=80"]);
    for ctx in ["m1", "m2"] {
        let mut names: Vec<String> = first["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
        while !token.is_empty() {
            let next = page(
                ctx,
                &format!("/api/v1/namespaces/default/services?limit=4&continue={token}"),
            );
            assert_eq!(next["metadata"]["resourceVersion"], rv.as_str(), "{ctx}");
            names.extend(
                next["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["metadata"]["name"].as_str().unwrap().to_string()),
            );
            token = next["metadata"]["continue"]
                .as_str()
                .unwrap_or("")
                .to_string();
        }
        assert_eq!(names.len(), 10, "{ctx}: {names:?}");
        assert!(!names.contains(&"late".to_string()), "{ctx}: {names:?}");
    }
    k.ok(&["delete", "service", "late"]);
    let ports = k.ok(&[
        "get",
        "svc",
        "-o",
        "jsonpath={.items[*].spec.ports[*].nodePort}",
    ]);
    let ports: Vec<u16> = ports
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 9);
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)),
        "{ports:?}"
    );

    // An address in use is refused; once its Service is deleted it can be asked for again.
    let taken = k.ok(&["get", "svc", "s0", "-o", "jsonpath={.spec.clusterIP}"]);
    let svc = |name: &str| {
        write(
            cluster.dir(),
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {taken}\n  ports:\n  - port: 80\n"),
        )
    };
    let out = k.run(&["create", "-f", &svc("again")]);
    assert!(!out.status.success());
    assert!(show(&out).contains("already allocated"), "{}", show(&out));
    k.ok(&["delete", "svc", "s0"]);
    k.ok(&["create", "-f", &svc("again")]);
    // The ClusterIP is immutable.
    let out = k.run(&[
        "patch",
        "svc",
        "again",
        "-p",
        r#"{"spec":{"clusterIP":"10.96.0.77"}}"#,
    ]);
    assert!(show(&out).contains("immutable"), "{}", show(&out));

    // A finalizer holds a deletion: the object gets a deletionTimestamp and goes when the
    // finalizer is removed.
    let held = write(
        cluster.dir(),
        "held.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: default\n  finalizers: [example.com/hold]\n",
    );
    k.ok(&["apply", "-f", &held]);
    k.ok(&["delete", "cm", "held", "--wait=false"]);
    assert!(!k
        .ok(&[
            "get",
            "cm",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_empty());
    k.ok(&[
        "patch",
        "cm",
        "held",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let out = k.run(&["get", "cm", "held"]);
    assert!(
        show(&out).contains("NotFound") || show(&out).contains("not found"),
        "{}",
        show(&out)
    );
}

/// A kubeconfig for a user with a client certificate from the cluster CA.
fn user_kubeconfig(cluster: &LocalCluster, user: &str, groups: &[&str]) -> PathBuf {
    let pki = cluster.dir().join("pki");
    let ca = flotilla_pki::ClusterCa::load(&pki).unwrap();
    ca.issue(&flotilla_pki::CertRequest::client(user, groups))
        .unwrap()
        .write(&pki, user)
        .unwrap();
    let api = cluster.cluster_json()["processes"][0]["endpoints"]["api"]
        .as_str()
        .unwrap()
        .to_string();
    let path = cluster.dir().join(format!("{user}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {api}\n    \
             certificate-authority: {ca}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             current-context: c\nusers:\n- name: u\n  user:\n    client-certificate: {cert}\n    \
             client-key: {key}\n",
            ca = pki.join("ca.crt").display(),
            cert = pki.join(format!("{user}.crt")).display(),
            key = pki.join(format!("{user}.key")).display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn rbac_decides_what_a_user_may_do() {
    let cluster = LocalCluster::up("rbac", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let admin = Kubectl::new(&cluster, "1.33");
    let alice = Kubectl {
        kubeconfig: user_kubeconfig(&cluster, "alice", &["devs"]),
        ..Kubectl::new(&cluster, "1.33")
    };
    admin.ok(&["create", "configmap", "cfg", "--from-literal=a=1"]);

    // Without a binding: 403 with Kubernetes' message; discovery still works.
    let out = alice.run(&["get", "configmaps"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(r#"User "alice" cannot list resource "configmaps""#),
        "{err}"
    );
    assert!(alice.run(&["api-resources"]).status.success());
    // `/metrics` on the API port: for whom RBAC lets `get` it (admins), 403 for others.
    let metrics = admin.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("# TYPE flotilla_raft_term gauge"),
        "{metrics}"
    );
    let out = alice.run(&["get", "--raw", "/metrics"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
        "{}",
        show(&out)
    );

    // A Role bound to alice's group lets her read config maps in default, nothing more.
    admin.ok(&[
        "create",
        "role",
        "reader",
        "--verb=get,list,watch",
        "--resource=configmaps",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "devs-read",
        "--role=reader",
        "--group=devs",
    ]);
    assert_eq!(
        alice.ok(&["get", "cm", "cfg", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    let out = alice.run(&["delete", "cm", "cfg"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot delete"),
        "{}",
        show(&out)
    );
    let out = alice.run(&["-n", "kube-system", "get", "cm"]);
    assert!(!out.status.success(), "{}", show(&out));
    // A ClusterRoleBinding to alice herself opens every namespace.
    admin.ok(&[
        "create",
        "clusterrole",
        "cm-reader",
        "--verb=list",
        "--resource=configmaps",
    ]);
    admin.ok(&[
        "create",
        "clusterrolebinding",
        "alice-cm",
        "--clusterrole=cm-reader",
        "--user=alice",
    ]);
    assert!(alice
        .run(&["-n", "kube-system", "get", "cm"])
        .status
        .success());

    // Service accounts: `kubectl create token` issues a bearer token that any master accepts;
    // RBAC applies to it like to a user; a forged token is 401.
    admin.ok(&["create", "serviceaccount", "bot"]);
    let token = admin.ok(&["create", "token", "bot"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let ca = cluster.dir().join("pki/ca.crt");
    let as_bot = |master: usize, token: &str, args: &[&str]| {
        let api = cluster.cluster_json()["processes"][master]["endpoints"]["api"]
            .as_str()
            .unwrap()
            .to_string();
        Command::new(&admin.bin)
            .args([
                "--kubeconfig",
                "/dev/null",
                "--server",
                &api,
                "--token",
                token,
            ])
            .arg(format!("--certificate-authority={}", ca.display()))
            .args(["--cache-dir"])
            .arg(cluster.dir().join("bot-cache"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_bot(1, &token, &["get", "cm", "cfg"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("system:serviceaccount:default:bot"),
        "{}",
        show(&out)
    );
    admin.ok(&[
        "create",
        "rolebinding",
        "bot-read",
        "--role=reader",
        "--serviceaccount=default:bot",
    ]);
    let out = as_bot(2, &token, &["get", "cm", "cfg", "-o", "name"]);
    assert!(out.status.success(), "{}", show(&out));
    let forged = format!("{token}x");
    let out = as_bot(0, &forged, &["get", "cm"]);
    assert!(!out.status.success());
    // kubectl's words for a 401.
    assert!(show(&out).contains("provide credentials"), "{}", show(&out));

    // `kubectl auth can-i` and `whoami` (the review APIs), for oneself, with `--list`, and as
    // someone else through impersonation (`--as`), which needs RBAC's `impersonate`.
    let out = as_bot(1, &token, &["auth", "whoami"]);
    assert!(
        show(&out).contains("system:serviceaccount:default:bot"),
        "{}",
        show(&out)
    );
    for version in ["1.27", "1.33"] {
        let admin = Kubectl::new(&cluster, version);
        let alice = Kubectl {
            kubeconfig: user_kubeconfig(&cluster, "alice", &["devs"]),
            ..Kubectl::new(&cluster, version)
        };
        let can = |k: &Kubectl, args: &[&str]| {
            let out = k.run(&[&["auth", "can-i"], args].concat());
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(can(&alice, &["get", "configmaps"]), "yes");
        assert_eq!(can(&alice, &["delete", "configmaps"]), "no");
        assert_eq!(
            can(&alice, &["list", "configmaps", "-n", "kube-system"]),
            "yes"
        );
        assert_eq!(
            can(&alice, &["get", "configmaps", "-n", "kube-system"]),
            "no"
        );
        assert_eq!(can(&admin, &["delete", "nodes"]), "yes");
        // 1.27 asks authentication.k8s.io/v1beta1, 1.33 v1.
        let me = alice.ok(&["auth", "whoami"]);
        assert!(
            me.contains("alice") && me.contains("devs"),
            "{version}: {me}"
        );
        let list = alice.ok(&["auth", "can-i", "--list"]);
        assert!(
            list.lines().any(|l| l.starts_with("configmaps ")
                && ["get", "list", "watch"].iter().all(|v| l.contains(v))),
            "{list}"
        );
        let bot = "system:serviceaccount:default:bot";
        assert_eq!(can(&admin, &["get", "configmaps", "--as", bot]), "yes");
        assert_eq!(can(&admin, &["delete", "configmaps", "--as", bot]), "no");
        let out = admin.run(&["delete", "cm", "cfg", "--as", bot]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                r#"User "{bot}" cannot delete resource "configmaps""#
            )),
            "{}",
            show(&out)
        );
        // alice may not impersonate anyone.
        let out = alice.run(&["get", "cm", "--as", "admin"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot impersonate resource \"users\""),
            "{}",
            show(&out)
        );
    }
    assert_eq!(
        admin.ok(&["get", "cm", "cfg", "-o", "name"]).trim(),
        "configmap/cfg",
        "a refused delete deleted"
    );
}

/// What `kubectl apply --prune` lists by default (its allow-list names ReplicationControllers,
/// PersistentVolumes and Claims, and Ingresses) is served; ReplicationControllers run pods;
/// claims bind to volumes.
#[test]
fn apply_prune_and_the_legacy_and_storage_kinds_work() {
    let cluster = LocalCluster::up("prune", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let manifest = |with_extras: bool| {
        let mut docs = vec![
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: legacy, labels: {app: demo}}\n\
             spec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: legacy}}\n    spec:\n      \
             containers: [{name: c, image: nginx}]\n",
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data, labels: {app: demo}}\n\
             spec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv-demo, labels: {app: demo}}\n\
             spec:\n  capacity: {storage: 5Gi}\n  accessModes: [ReadWriteOnce, ReadOnlyMany]\n  \
             hostPath: {path: /tmp/pv-demo}\n",
        ];
        if with_extras {
            docs.push(
                "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, labels: {app: demo}}\n\
                 spec:\n  rules:\n  - host: example.com\n    http:\n      paths:\n      - path: /\n        \
                 pathType: Prefix\n        backend: {service: {name: web, port: {number: 80}}}\n",
            );
            docs.push("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, labels: {app: demo}}\ndata: {a: b}\n");
        }
        docs.join("---\n")
    };
    let all = write(cluster.dir(), "all.yaml", &manifest(true));
    let fewer = write(cluster.dir(), "fewer.yaml", &manifest(false));
    for version in ["1.27", "1.33"] {
        let k = Kubectl::new(&cluster, version);
        k.ok(&["apply", "-f", &all]);
        let tables = k.ok(&["get", "rc,pvc,pv,ingress"]);
        // Column widths follow the values; compare with single spaces.
        let flat = tables.split_whitespace().collect::<Vec<_>>().join(" ");
        for header in [
            "DESIRED CURRENT READY",
            "STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS",
            "CAPACITY ACCESS MODES RECLAIM POLICY STATUS",
            "CLASS HOSTS ADDRESS PORTS",
        ] {
            assert!(
                flat.contains(header),
                "{version}: no {header:?} in\n{tables}"
            );
        }
        assert!(flat.contains("5Gi RWO,ROX Retain"), "{tables}");
        let out = k.ok(&["apply", "--prune", "-l", "app=demo", "-f", &fewer]);
        assert!(out.contains("configmap/cfg pruned"), "{version}: {out}");
        assert!(
            out.contains("ingress.networking.k8s.io/web pruned"),
            "{version}: {out}"
        );
        let left = k.run(&["get", "cm,ingress", "-l", "app=demo", "-o", "name"]);
        assert_eq!(String::from_utf8_lossy(&left.stdout), "", "{}", show(&left));
    }
    // The claim binds to the volume that fits it; once the claim goes, the volume (Retain)
    // is Released.
    let k = Kubectl::new(&cluster, "1.27");
    let get = |what: &str, path: &str| k.ok(&["get", what, "-o", &format!("jsonpath={path}")]);
    wait_for("the claim bound", Duration::from_secs(20), || {
        get(
            "pvc/data",
            "{.status.phase} {.spec.volumeName} {.status.capacity.storage}",
        ) == "Bound pv-demo 5Gi"
    });
    assert_eq!(
        get(
            "pv/pv-demo",
            "{.status.phase} {.spec.claimRef.namespace}/{.spec.claimRef.name}"
        ),
        "Bound default/data"
    );
    k.ok(&["delete", "pvc", "data"]);
    wait_for("the volume released", Duration::from_secs(20), || {
        get("pv/pv-demo", "{.status.phase}") == "Released"
    });
    // The ReplicationController keeps its pods (pending: no nodes), scales, and takes them
    // with it when deleted.
    let k = Kubectl::new(&cluster, "1.33");
    let pods = || {
        k.ok(&["get", "pods", "-l", "app=legacy", "-o", "name"])
            .lines()
            .count()
    };
    wait_for("the RC's two pods", Duration::from_secs(20), || pods() == 2);
    k.ok(&["scale", "rc", "legacy", "--replicas=3"]);
    wait_for("a third pod", Duration::from_secs(20), || {
        pods() == 3 && k.ok(&["get", "rc", "legacy", "-o", "jsonpath={.status.replicas}"]) == "3"
    });
    k.ok(&["delete", "rc", "legacy"]);
    wait_for("the RC's pods to go", Duration::from_secs(20), || {
        pods() == 0
    });
}
