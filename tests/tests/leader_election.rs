//! Fenced leader election of the controller manager, with real masters: exactly one holds
//! `kube-system/kube-controller-manager`; it reconciles (every namespace gets its `default`
//! ServiceAccount); after SIGKILL of its process another master takes over in under 3 s and
//! reconciliation continues; on SIGTERM it releases the Lease and the handover is immediate;
//! a leader paused with SIGSTOP loses the Lease, and its fencing token is refused by the API
//! server from the moment its successor acquired: resumed with a stale view of a ReplicaSet
//! scaled meanwhile, it adds no pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use flotilla_e2e::{flotilla, kubectl_bin, pid_alive, show, wait_for, LocalCluster};

const LEASE: &str = "kube-controller-manager";

async fn client(cluster: &LocalCluster, master: &str, fence: Option<String>) -> kube::Client {
    client_in(cluster.dir(), master, fence).await
}

/// A client for `master` as `DIR/admin.kubeconfig` names it now (restarted masters move).
async fn client_in(dir: &std::path::Path, master: &str, fence: Option<String>) -> kube::Client {
    let kc = Kubeconfig::read_from(dir.join("admin.kubeconfig")).unwrap();
    let opts = KubeConfigOptions {
        context: Some(master.into()),
        ..Default::default()
    };
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .unwrap();
    if let Some(f) = fence {
        cfg.headers.push((
            http::HeaderName::from_static("flotilla-fence"),
            http::HeaderValue::from_str(&f).unwrap(),
        ));
    }
    kube::Client::try_from(cfg).unwrap()
}

fn pid_of(cluster: &LocalCluster, master: &str) -> u32 {
    let info = cluster.cluster_json();
    info["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == master)
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// The Lease's holder as seen through `leases` (empty if none or unreadable).
async fn holder(leases: &Api<Lease>) -> String {
    match leases.get_opt(LEASE).await {
        Ok(Some(l)) => l.spec.and_then(|s| s.holder_identity).unwrap_or_default(),
        Ok(None) => String::new(),
        Err(e) => {
            eprintln!("reading the Lease: {e}");
            String::new()
        }
    }
}

/// The holder, once there is one (at most 10 s).
async fn current_holder(leases: &Api<Lease>) -> String {
    successor(leases, "", Duration::from_secs(10)).await.0
}

/// Polls until the holder is someone other than `old` (and not empty); the new holder and
/// how long it took.
async fn successor(leases: &Api<Lease>, old: &str, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let h = holder(leases).await;
        if !h.is_empty() && h != old {
            return (h, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "no new holder within {limit:?} (last {h:?})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_default_sa(c: &kube::Client, ns: &str, limit: Duration) {
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
    let start = Instant::now();
    while sas.get_opt("default").await.ok().flatten().is_none() {
        assert!(
            start.elapsed() < limit,
            "namespace {ns} has no default ServiceAccount after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_ns(c: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(c.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.into());
    for _ in 0..40 {
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    panic!("could not create namespace {name}");
}

/// Sends SIGCONT to a paused process when dropped.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

fn other(than: &str) -> &'static str {
    if than == "m1" {
        "m2"
    } else {
        "m1"
    }
}

#[test]
fn one_fenced_controller_manager_leads_and_fails_over_fast() {
    let cluster = LocalCluster::up(
        "leader-election",
        &["--masters", "3", "--nodes", "0", "--no-demo"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c1 = client(&cluster, "m1", None).await;
        let leases: Api<Lease> = Api::namespaced(c1.clone(), "kube-system");

        // Every holder change, and the resourceVersion of the write that made it: the token.
        // The watch moves to the next master whenever its master goes away, resuming from the
        // last resourceVersion it saw.
        let tokens: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
        {
            let tokens = tokens.clone();
            let dir = cluster.dir().to_path_buf();
            tokio::spawn(async move {
                let (mut last, mut rv) = (String::new(), "0".to_string());
                let params = WatchParams::default().fields(&format!("metadata.name={LEASE}"));
                for m in ["m1", "m2", "m3"].iter().cycle() {
                    let leases =
                        Api::<Lease>::namespaced(client_in(&dir, m, None).await, "kube-system");
                    // A paused master accepts connections but never answers.
                    let opened =
                        tokio::time::timeout(Duration::from_secs(5), leases.watch(&params, &rv));
                    let opened = opened.await;
                    if let Ok(Err(e)) = &opened {
                        eprintln!("token watch from {rv}: {e}");
                    }
                    let Ok(Ok(stream)) = opened else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let mut stream = stream.boxed();
                    // Bookmarks come every 5 s: silence for longer means a paused master.
                    while let Ok(Ok(Some(e))) =
                        tokio::time::timeout(Duration::from_secs(7), stream.try_next()).await
                    {
                        let l = match e {
                            WatchEvent::Added(l) | WatchEvent::Modified(l) => l,
                            WatchEvent::Bookmark(b) => {
                                rv = b.metadata.resource_version;
                                continue;
                            }
                            WatchEvent::Error(e) => {
                                eprintln!("token watch from {rv}: {e:?}");
                                break;
                            }
                            _ => continue,
                        };
                        rv = l.metadata.resource_version.clone().unwrap();
                        let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                        if h != last && !h.is_empty() {
                            let token = rv.parse().unwrap();
                            tokens
                                .lock()
                                .unwrap()
                                .entry(h.clone())
                                .or_default()
                                .push(token);
                        }
                        last = h;
                    }
                }
            });
        }

        // One holder, which reconciles.
        let start = Instant::now();
        let mut first = holder(&leases).await;
        while first.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(20), "nobody leads");
            tokio::time::sleep(Duration::from_millis(100)).await;
            first = holder(&leases).await;
        }
        let out = std::process::Command::new(kubectl_bin("1.33"))
            .arg("--kubeconfig")
            .arg(cluster.dir().join("admin.kubeconfig"))
            .args(["get", "leases", "-n", "kube-system"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(LEASE) && text.contains(&first),
            "{}",
            show(&out)
        );
        create_ns(&c1, "before-kill").await;
        wait_default_sa(&c1, "before-kill", Duration::from_secs(10)).await;

        // SIGKILL of the leader's process: another master leads within 3 s, and acts.
        let survivor = other(&first);
        let cs = client(&cluster, survivor, None).await;
        let leases_s: Api<Lease> = Api::namespaced(cs.clone(), "kube-system");
        let pid = pid_of(&cluster, &first);
        signal(pid, "-KILL");
        let (second, took) = successor(&leases_s, &first, Duration::from_secs(10)).await;
        println!(
            "controller-manager failover after SIGKILL of {first}: {second} leads after {took:?}"
        );
        assert!(took < Duration::from_secs(3), "failover took {took:?}");
        create_ns(&cs, "after-kill").await;
        wait_default_sa(&cs, "after-kill", Duration::from_secs(10)).await;
        wait_for("the killed master to exit", Duration::from_secs(5), || {
            !pid_alive(pid)
        });
        let up = flotilla(&[
            "up",
            "--dir",
            &cluster.dir_str(),
            "--nodes",
            "0",
            "--no-demo",
        ]);
        assert!(up.status.success(), "{}", show(&up));

        // SIGTERM: the leader releases the Lease on its way out; the handover is immediate.
        let survivor = other(&second);
        let cs = client(&cluster, survivor, None).await;
        let leases_s: Api<Lease> = Api::namespaced(cs.clone(), "kube-system");
        // The successor's acquireTime (its clock at the winning write) says when it took
        // over; seeing that through the API can take longer when the stopped master also led
        // the store (its successor must be elected first).
        // Leadership may have moved meanwhile (that is allowed): stop whoever leads now.
        let second = current_holder(&leases_s).await;
        let survivor = other(&second);
        let cs = client(&cluster, survivor, None).await;
        let leases_s: Api<Lease> = Api::namespaced(cs.clone(), "kube-system");
        let pid = pid_of(&cluster, &second);
        let sent = k8s_openapi::jiff::Timestamp::now();
        signal(pid, "-TERM");
        let (third, seen) = successor(&leases_s, &second, Duration::from_secs(10)).await;
        let acquired = leases_s
            .get(LEASE)
            .await
            .unwrap()
            .spec
            .unwrap()
            .acquire_time
            .unwrap()
            .0;
        let took = acquired.duration_since(sent);
        println!(
            "controller-manager handover after SIGTERM of {second}: {third} acquired after \
             {took:?} (seen through the API after {seen:?})"
        );
        assert!(
            took < k8s_openapi::jiff::SignedDuration::from_secs(1),
            "handover took {took:?}"
        );
        wait_for(
            "the stopped master to exit",
            Duration::from_secs(15),
            || !pid_alive(pid),
        );
        let up = flotilla(&[
            "up",
            "--dir",
            &cluster.dir_str(),
            "--nodes",
            "0",
            "--no-demo",
        ]);
        assert!(up.status.success(), "{}", show(&up));

        // SIGSTOP: the paused leader loses the Lease; its token is refused from then on.
        // (A master restarted just before may have won the Lease and lost it again while it
        // caught up; whoever leads now is paused.)
        let paused = current_holder(&leases_s).await;
        if paused != third {
            println!("leadership moved from {third} to {paused} before the pause");
        }
        let old_token = *tokens.lock().unwrap()[&paused]
            .last()
            .expect("the holder's token was seen");
        let survivor = other(&paused);
        let cs = client(&cluster, survivor, None).await;
        let leases_s: Api<Lease> = Api::namespaced(cs.clone(), "kube-system");
        // Work for the controllers that a resumed, stale leader would get wrong: a ReplicaSet
        // of 2 now, scaled to 4 while the leader is paused. Resumed, its cache would still
        // say 2 pods when the scale arrives, and without fencing it would add two more.
        let rs_api: Api<ReplicaSet> = Api::namespaced(cs.clone(), "default");
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "during-pause"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "during-pause"}},
                     "template": {"metadata": {"labels": {"app": "during-pause"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .unwrap();
        rs_api.create(&PostParams::default(), &rs).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(cs.clone(), "default");
        let pause_pods = || async {
            pods.list(&ListParams::default().labels("app=during-pause"))
                .await
                .map(|l| l.items.len())
                .unwrap_or(usize::MAX)
        };
        let waiting = Instant::now();
        while pause_pods().await != 2 {
            assert!(
                waiting.elapsed() < Duration::from_secs(20),
                "the leader made no 2 pods"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let paused_pid = pid_of(&cluster, &paused);
        signal(paused_pid, "-STOP");
        // Resumed however this test ends.
        let _resume = Resume(paused_pid);
        let (fourth, took) = successor(&leases_s, &paused, Duration::from_secs(15)).await;
        println!("controller-manager takeover from paused {paused}: {fourth} leads after {took:?}");
        let stale = client(
            &cluster,
            survivor,
            Some(format!("kube-system/{LEASE}={old_token}")),
        )
        .await;
        let cms: Api<ConfigMap> = Api::namespaced(stale, "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("written-by-the-old-leader".into());
        match cms.create(&PostParams::default(), &cm).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 409, "{s:?}");
                assert!(s.message.contains("fenced"), "{s:?}");
            }
            other => panic!("a write with the deposed leader's token must be refused: {other:?}"),
        }
        let waiting = Instant::now();
        let new_token = loop {
            if let Some(t) = tokens
                .lock()
                .unwrap()
                .get(&fourth)
                .and_then(|v| v.last().copied())
            {
                if t > old_token {
                    break t;
                }
            }
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "the new holder's token was not seen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let fresh = client(
            &cluster,
            survivor,
            Some(format!("kube-system/{LEASE}={new_token}")),
        )
        .await;
        Api::<ConfigMap>::namespaced(fresh, "default")
            .create(&PostParams::default(), &cm)
            .await
            .expect("the current leader's token is accepted");
        rs_api
            .patch(
                "during-pause",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
            )
            .await
            .unwrap();
        let waiting = Instant::now();
        while pause_pods().await != 4 {
            assert!(
                waiting.elapsed() < Duration::from_secs(20),
                "the new leader made no 4 pods"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        signal(paused_pid, "-CONT");
        // Resumed, the old leader finds the Lease taken and stays a candidate; whatever its
        // stale controllers try meanwhile is refused, so the ReplicaSet keeps exactly 4 pods.
        let watching = Instant::now();
        while watching.elapsed() < Duration::from_secs(5) {
            let n = pause_pods().await;
            assert_eq!(
                n, 4,
                "the ReplicaSet has {n} pods after the old leader resumed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(holder(&leases_s).await, fourth);
        let log = std::fs::read_to_string(cluster.dir().join(&paused).join("server.log")).unwrap();
        println!(
            "writes the resumed {paused} tried and had refused as fenced: {}",
            log.lines()
                .filter(|l| l.contains("fenced: the Lease"))
                .count()
        );
        assert!(
            log.contains("the Lease was taken") || log.contains("could not renew"),
            "the resumed leader did not step down:\n{log}"
        );
    });
}
