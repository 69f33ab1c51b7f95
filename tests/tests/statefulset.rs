//! The StatefulSet controller against 3 simulated nodes, with kubectl 1.33 and 1.27: ordered
//! creation (a kube-rs watch checks that no pod appears before every lower ordinal is
//! ready), stable names and hostnames published through the headless Service's Endpoints,
//! `kubectl rollout status`, a rolling update from the highest ordinal down, `rollout
//! history`/`undo` through ControllerRevisions, scale-down from the highest ordinal, a
//! forbidden spec change, a claim per ordinal from `volumeClaimTemplates`, and deletion taking
//! pods and revisions along (claims stay).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_e2e::{kubectl_fails, kubectl_ok, wait_for, LocalCluster};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;

const MANIFEST: &str = "\
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - {name: pg, image: 'postgres:15', ports: [{containerPort: 5432}],
         volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
";

/// What the watch saw: pods in the order they appeared and began to go, and whether a pod
/// ever appeared while a lower ordinal was not ready.
#[derive(Default)]
struct Seen {
    created: Vec<String>,
    deleting: Vec<String>,
    out_of_order: Vec<String>,
}

fn ordinal(name: &str) -> u32 {
    name.rsplit('-').next().unwrap().parse().unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn observe(cluster: &LocalCluster, rt: &tokio::runtime::Runtime) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    let kubeconfig_path = cluster.dir().join("admin.kubeconfig");
    rt.spawn(async move {
        let kubeconfig = Kubeconfig::read_from(kubeconfig_path).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
        let mut events = watcher(pods, watcher::Config::default().labels("app=db")).boxed();
        let mut state: BTreeMap<String, Pod> = BTreeMap::new();
        while let Some(e) = events.next().await {
            let (p, gone) = match e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                Ok(watcher::Event::Delete(p)) => (p, true),
                _ => continue,
            };
            let name = p.metadata.name.clone().unwrap_or_default();
            let mut s = out.lock().unwrap();
            let uid_changed = state.get(&name).map(|o| &o.metadata.uid) != Some(&p.metadata.uid);
            if !gone && uid_changed {
                s.created.push(name.clone());
                let n = ordinal(&name);
                let waiting: Vec<&String> = state
                    .iter()
                    .filter(|(other, o)| ordinal(other) < n && !ready(o))
                    .map(|(other, _)| other)
                    .collect();
                if !waiting.is_empty() {
                    s.out_of_order
                        .push(format!("{name} while {waiting:?} not ready"));
                }
            }
            let was_deleting = state
                .get(&name)
                .is_some_and(|o| o.metadata.deletion_timestamp.is_some() && !uid_changed);
            if (p.metadata.deletion_timestamp.is_some() || gone) && !was_deleting {
                s.deleting.push(name.clone());
            }
            if gone {
                state.remove(&name);
            } else {
                state.insert(name, p);
            }
        }
    });
    seen
}

fn images(cluster: &LocalCluster, version: &str) -> Vec<String> {
    let out = kubectl_ok(
        cluster,
        version,
        &[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}",
        ],
    );
    let mut v: Vec<String> = out.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn statefulsets_create_update_and_scale_in_order() {
    let cluster = LocalCluster::up(
        "statefulset",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "3"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen = observe(&cluster, &rt);
    let manifest = cluster.dir().join("db.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let new = "1.33";
    let old = "1.27";
    kubectl_ok(&cluster, new, &["apply", "-f", manifest.to_str().unwrap()]);
    let status = kubectl_ok(
        &cluster,
        new,
        &["rollout", "status", "sts/db", "--timeout=60s"],
    );
    assert!(
        status.contains("roll out complete") || status.contains("update complete"),
        "{status}"
    );
    let table = kubectl_ok(&cluster, old, &["get", "sts", "db"]);
    assert!(table.contains("READY") && table.contains("3/3"), "{table}");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.created, ["db-0", "db-1", "db-2"]);
        assert!(s.out_of_order.is_empty(), "{:?}", s.out_of_order);
    }
    // Stable identity: hostname, subdomain, labels; the headless Service names each pod.
    let ident = kubectl_ok(
        &cluster,
        new,
        &[
            "get",
            "pod",
            "db-1",
            "-o",
            "jsonpath={.spec.hostname} {.spec.subdomain} {.metadata.labels.statefulset\\.kubernetes\\.io/pod-name} {.metadata.labels.apps\\.kubernetes\\.io/pod-index}",
        ],
    );
    assert_eq!(ident, "db-1 db db-1 1");
    // Each ordinal has its claim, made from the template, mounted as the template's volume.
    let claims = kubectl_ok(&cluster, old, &["get", "pvc", "-o", "name"]);
    assert_eq!(
        claims.split_whitespace().collect::<Vec<_>>(),
        [
            "persistentvolumeclaim/data-db-0",
            "persistentvolumeclaim/data-db-1",
            "persistentvolumeclaim/data-db-2"
        ]
    );
    let volume = kubectl_ok(
        &cluster,
        new,
        &[
            "get",
            "pod",
            "db-1",
            "-o",
            "jsonpath={.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}",
        ],
    );
    assert_eq!(volume, "data-db-1");
    wait_for(
        "hostnames in the Endpoints",
        Duration::from_secs(20),
        || {
            let hosts = kubectl_ok(
                &cluster,
                new,
                &[
                    "get",
                    "endpoints",
                    "db",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].hostname}",
                ],
            );
            let mut h: Vec<&str> = hosts.split_whitespace().collect();
            h.sort();
            h == ["db-0", "db-1", "db-2"]
        },
    );

    // Rolling update: highest ordinal first.
    seen.lock().unwrap().deleting.clear();
    kubectl_ok(&cluster, new, &["set", "image", "sts/db", "pg=postgres:16"]);
    kubectl_ok(
        &cluster,
        new,
        &["rollout", "status", "sts/db", "--timeout=90s"],
    );
    wait_for("every pod on postgres:16", Duration::from_secs(60), || {
        images(&cluster, new) == ["db-0=postgres:16", "db-1=postgres:16", "db-2=postgres:16"]
    });
    assert_eq!(seen.lock().unwrap().deleting, ["db-2", "db-1", "db-0"]);
    let revs = kubectl_ok(
        &cluster,
        old,
        &["get", "controllerrevisions", "-l", "app=db"],
    );
    assert_eq!(revs.lines().count(), 3, "{revs}");
    let history = kubectl_ok(&cluster, new, &["rollout", "history", "sts/db"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Rollback (kubectl patches the template back from revision 1).
    kubectl_ok(&cluster, old, &["rollout", "undo", "sts/db"]);
    wait_for(
        "every pod back on postgres:15",
        Duration::from_secs(90),
        || images(&cluster, new) == ["db-0=postgres:15", "db-1=postgres:15", "db-2=postgres:15"],
    );
    kubectl_ok(
        &cluster,
        new,
        &["rollout", "status", "sts/db", "--timeout=60s"],
    );

    // Scale down: db-2 goes before db-1.
    seen.lock().unwrap().deleting.clear();
    kubectl_ok(&cluster, old, &["scale", "sts", "db", "--replicas=1"]);
    wait_for("one pod left", Duration::from_secs(60), || {
        images(&cluster, new) == ["db-0=postgres:15"]
    });
    assert_eq!(seen.lock().unwrap().deleting, ["db-2", "db-1"]);

    // The service name is part of the identity: changing it is refused, nothing changes.
    let err = kubectl_fails(
        &cluster,
        new,
        &[
            "patch",
            "sts",
            "db",
            "-p",
            r#"{"spec":{"serviceName":"other"}}"#,
        ],
    );
    assert!(
        err.contains("Forbidden: updates to statefulset spec"),
        "{err}"
    );
    let service = kubectl_ok(
        &cluster,
        new,
        &["get", "sts", "db", "-o", "jsonpath={.spec.serviceName}"],
    );
    assert_eq!(service, "db");

    // Deleting the set takes its pods and revisions; its claims stay (retained by default).
    kubectl_ok(&cluster, new, &["delete", "sts", "db"]);
    wait_for("pods and revisions gone", Duration::from_secs(60), || {
        images(&cluster, new).is_empty()
            && kubectl_ok(&cluster, new, &["get", "controllerrevisions", "-o", "name"])
                .trim()
                .is_empty()
    });
    let claims = kubectl_ok(&cluster, new, &["get", "pvc", "-o", "name"]);
    assert_eq!(claims.lines().count(), 3, "{claims}");
}
