//! The Deployment controller and the garbage collector's propagation policies against
//! simulated nodes, with kubectl 1.33 and 1.27: `create deployment`, `rollout status`,
//! `set image` rolling within maxSurge/maxUnavailable (checked on every pod change a watch
//! reports), `rollout history`, `rollout undo` (previous and `--to-revision`), `scale`, and
//! deletion with `--cascade=orphan`, `background` and `foreground`; the Endpoints and
//! EndpointSlice of a Service in front of it follow the pods.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;

use flotilla_e2e::{kubectl_ok, wait_for, LocalCluster};

fn kubectl(cluster: &LocalCluster, args: &[&str]) -> String {
    kubectl_ok(cluster, "1.33", args)
}

fn jsonpath(cluster: &LocalCluster, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let path = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &path]);
    kubectl(cluster, &args)
}

/// The images of the live (not terminating) pods labelled app=`app`, sorted.
fn live_images_of(cluster: &LocalCluster, app: &str) -> Vec<String> {
    let label = format!("app={app}");
    let out = kubectl(cluster, &["get", "pods", "-l", &label, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut images: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    images.sort();
    images
}

fn live_images(cluster: &LocalCluster) -> Vec<String> {
    live_images_of(cluster, "web")
}

/// What a watch of the app=web pods saw: the most pods alive at once and the fewest
/// available at once (both after it was armed).
#[derive(Debug, Default)]
struct Extremes {
    armed: bool,
    most_alive: usize,
    fewest_available: Option<usize>,
}

/// Watches the app=web pods in `default` and keeps [`Extremes`] over every state it sees.
fn observe(cluster: &LocalCluster, rt: &tokio::runtime::Runtime) -> Arc<Mutex<Extremes>> {
    let extremes = Arc::new(Mutex::new(Extremes::default()));
    let kubeconfig_path = cluster.dir().join("admin.kubeconfig");
    let seen = extremes.clone();
    rt.spawn(async move {
        let kubeconfig = Kubeconfig::read_from(kubeconfig_path).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let mut events = watcher(pods, watcher::Config::default().labels("app=web")).boxed();
        let mut state: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listed = false;
        while let Some(e) = events.next().await {
            match e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    state.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    state.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                Ok(watcher::Event::Init) => state.clear(),
                Ok(watcher::Event::InitDone) => listed = true,
                Err(_) => continue,
            }
            if !listed {
                continue;
            }
            let alive: Vec<&Pod> = state
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let available = alive
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .count();
            let mut x = seen.lock().unwrap();
            if x.armed {
                x.most_alive = x.most_alive.max(alive.len());
                x.fewest_available =
                    Some(x.fewest_available.map_or(available, |f| f.min(available)));
            }
        }
    });
    extremes
}

/// The ready addresses of the Endpoints `web`, sorted.
fn endpoint_ips(cluster: &LocalCluster) -> Vec<String> {
    let mut ips: Vec<String> = jsonpath(
        cluster,
        &["endpoints", "web"],
        "{.subsets[*].addresses[*].ip}",
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    ips.sort();
    ips
}

#[test]
fn deployments_roll_out_roll_back_and_cascade() {
    let cluster = LocalCluster::up(
        "deployment",
        &["--nodes", "0", "--no-demo", "--simulated-nodes", "3"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    kubectl(
        &cluster,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1",
            "--replicas=4",
        ],
    );
    let status = kubectl(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(live_images(&cluster), ["nginx:1"; 4]);
    assert_eq!(
        jsonpath(
            &cluster,
            &["deployment", "web"],
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "1"
    );
    // A Service in front of it: Endpoints and an EndpointSlice list the four pods.
    kubectl(
        &cluster,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ],
    );
    wait_for(
        "Endpoints with 4 ready addresses",
        Duration::from_secs(20),
        || endpoint_ips(&cluster).len() == 4,
    );
    let pod_ips: Vec<String> = {
        let mut ips: Vec<String> = jsonpath(
            &cluster,
            &["pods", "-l", "app=web"],
            "{.items[*].status.podIP}",
        )
        .split_whitespace()
        .map(String::from)
        .collect();
        ips.sort();
        ips
    };
    assert_eq!(endpoint_ips(&cluster), pod_ips);
    let slice = jsonpath(
        &cluster,
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        "{.items[0].ports[0].port}:{.items[0].endpoints[*].conditions.ready}",
    );
    assert_eq!(slice, "8080:true true true true");
    let rs_labels = jsonpath(
        &cluster,
        &["rs", "-l", "app=web"],
        "{.items[0].metadata.labels.pod-template-hash}",
    );
    assert!(
        !rs_labels.is_empty(),
        "the ReplicaSet carries pod-template-hash"
    );

    // Roll out nginx:2 with maxSurge 1, maxUnavailable 0; a watch checks every state.
    kubectl(
        &cluster,
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#,
        ],
    );
    let extremes = observe(&cluster, &rt);
    // Armed once the watch has listed (it only records after its initial list anyway).
    std::thread::sleep(Duration::from_secs(1));
    extremes.lock().unwrap().armed = true;
    kubectl(
        &cluster,
        &["set", "image", "deployment/web", "nginx=nginx:2"],
    );
    let status = kubectl(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    wait_for("only nginx:2 pods", Duration::from_secs(30), || {
        live_images(&cluster) == ["nginx:2"; 4]
    });
    {
        let x = extremes.lock().unwrap();
        eprintln!(
            "rolling update: at most {} pods alive, at least {:?} available",
            x.most_alive, x.fewest_available
        );
        assert!(x.most_alive <= 5, "maxSurge 1 exceeded: {x:?}");
        assert!(
            x.fewest_available.is_some_and(|f| f >= 4),
            "maxUnavailable 0 violated: {x:?}"
        );
    }
    let history = kubectl(&cluster, &["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    let events = kubectl(
        &cluster,
        &["get", "events", "--field-selector=involvedObject.name=web"],
    );
    assert!(events.contains("ScalingReplicaSet"), "{events}");

    // Undo with kubectl 1.27 (its own client-side rollback): back to nginx:1, revision 3.
    let undo = kubectl_ok(&cluster, "1.27", &["rollout", "undo", "deployment/web"]);
    assert!(undo.contains("rolled back"), "{undo}");
    let status = kubectl_ok(
        &cluster,
        "1.27",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    assert!(status.contains("successfully rolled out"), "{status}");
    wait_for("only nginx:1 pods again", Duration::from_secs(30), || {
        live_images(&cluster) == ["nginx:1"; 4]
    });
    assert_eq!(
        jsonpath(
            &cluster,
            &["deployment", "web"],
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "3"
    );
    // Two ReplicaSets: the rollback reused revision 1's.
    assert_eq!(
        kubectl(&cluster, &["get", "rs", "-l", "app=web", "-o", "name"])
            .lines()
            .count(),
        2
    );
    kubectl(
        &cluster,
        &["rollout", "undo", "deployment/web", "--to-revision=2"],
    );
    kubectl(
        &cluster,
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    wait_for("nginx:2 by --to-revision", Duration::from_secs(30), || {
        live_images(&cluster) == ["nginx:2"; 4]
    });

    // Scale.
    kubectl(&cluster, &["scale", "deployment", "web", "--replicas=2"]);
    wait_for("2 pods", Duration::from_secs(30), || {
        live_images(&cluster).len() == 2
    });
    wait_for("status 2/2", Duration::from_secs(20), || {
        jsonpath(
            &cluster,
            &["deployment", "web"],
            "{.status.availableReplicas}",
        ) == "2"
    });

    wait_for(
        "Endpoints follow the scale-down",
        Duration::from_secs(20),
        || endpoint_ips(&cluster).len() == 2,
    );

    // Orphan: the Deployment goes, its ReplicaSets and pods stay, without owner.
    kubectl(
        &cluster,
        &["delete", "deployment", "web", "--cascade=orphan"],
    );
    let left = kubectl(&cluster, &["get", "deployments", "-o", "name"]);
    assert!(!left.contains("web"), "{left}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(live_images(&cluster).len(), 2, "orphaned pods stay");
    let owners = jsonpath(
        &cluster,
        &["rs", "-l", "app=web"],
        "{.items[*].metadata.ownerReferences}",
    );
    assert!(
        owners.trim().is_empty(),
        "orphaned ReplicaSets have no owner: {owners}"
    );
    kubectl(&cluster, &["delete", "rs", "-l", "app=web"]);
    wait_for(
        "the orphans' pods to go with their ReplicaSets",
        Duration::from_secs(30),
        || live_images(&cluster).is_empty(),
    );

    // Foreground: the Deployment is gone only after its ReplicaSets and pods.
    kubectl(
        &cluster,
        &[
            "create",
            "deployment",
            "fg",
            "--image=nginx:1",
            "--replicas=2",
        ],
    );
    kubectl(
        &cluster,
        &["rollout", "status", "deployment/fg", "--timeout=60s"],
    );
    kubectl(
        &cluster,
        &[
            "delete",
            "deployment",
            "fg",
            "--cascade=foreground",
            "--timeout=60s",
        ],
    );
    let rs = kubectl(&cluster, &["get", "rs", "-l", "app=fg", "-o", "name"]);
    let pods = kubectl(&cluster, &["get", "pods", "-l", "app=fg", "-o", "name"]);
    assert!(
        rs.trim().is_empty() && pods.trim().is_empty(),
        "{rs} {pods}"
    );

    // Background (kubectl's default): the ReplicaSets and pods follow.
    kubectl(
        &cluster,
        &[
            "create",
            "deployment",
            "bg",
            "--image=nginx:1",
            "--replicas=2",
        ],
    );
    kubectl(
        &cluster,
        &["rollout", "status", "deployment/bg", "--timeout=60s"],
    );
    kubectl(&cluster, &["delete", "deployment", "bg"]);
    wait_for(
        "bg's ReplicaSets and pods to go",
        Duration::from_secs(30),
        || {
            kubectl(&cluster, &["get", "rs,pods", "-l", "app=bg", "-o", "name"])
                .trim()
                .is_empty()
        },
    );
}
