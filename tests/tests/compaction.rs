//! History compaction and the watch and list edges around it, against three real masters
//! compacting every second (`flotilla up --compaction-interval 1`): a watch or an exact list
//! from a compacted resourceVersion gets 410 Expired on every master (kube-rs, kubectl and the
//! Python client see it as Kubernetes sends it), a resourceVersion ahead of the store is 504
//! Timeout with the ResourceVersionTooLarge cause, bad resourceVersionMatch values are 422, and a
//! watch with `timeoutSeconds` ends on time.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::WatchParams;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent};

use flotilla_e2e::{kube_clients, kubectl_fails, python, show, LocalCluster};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "0"}}))
        .unwrap()
}

#[test]
fn compacted_history_is_gone_everywhere_and_watches_end_on_time() {
    let cluster = LocalCluster::up(
        "compaction",
        &[
            "--masters",
            "3",
            "--nodes",
            "0",
            "--no-demo",
            "--compaction-interval",
            "1",
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let old_rv = rt.block_on(async {
        let c = kube_clients(&cluster).await;
        let api = |m: usize| -> Api<ConfigMap> { Api::namespaced(c[m].clone(), "default") };
        let created = api(0)
            .create(&PostParams::default(), &cm("history"))
            .await
            .unwrap();
        let old_rv = created.metadata.resource_version.unwrap();

        // Before compaction reaches it, a list at exactly that revision is served.
        let exact = ListParams::default()
            .at(&old_rv)
            .matching(VersionMatch::Exact);
        let then = api(1).list(&exact).await.unwrap();
        assert_eq!(
            then.metadata.resource_version.as_deref(),
            Some(old_rv.as_str())
        );
        assert_eq!(then.items.len(), 1);

        // Changes move the store on; within a few intervals a compaction passes old_rv.
        let deadline = Instant::now() + Duration::from_secs(30);
        let gone = loop {
            let patch =
                serde_json::json!({"data": {"k": Instant::now().elapsed().as_nanos().to_string()}});
            api(2)
                .patch("history", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            match api(1).list(&exact).await {
                Err(kube::Error::Api(s)) if s.code == 410 => break s,
                Ok(_) => {}
                Err(e) => panic!("an exact list failed with {e}"),
            }
            assert!(Instant::now() < deadline, "no compaction within 30 s");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(gone.reason, "Expired");

        // A watch from it: one ERROR event with the 410, on every master (the watch caches
        // still hold that change, but the store's history is what counts).
        for m in 0..3 {
            let mut events = api(m)
                .watch(&WatchParams::default(), &old_rv)
                .await
                .unwrap()
                .boxed();
            match tokio::time::timeout(Duration::from_secs(10), events.try_next())
                .await
                .expect("the watch answers within 10 s")
                .unwrap()
            {
                Some(WatchEvent::Error(e)) => {
                    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "m{}", m + 1)
                }
                other => panic!(
                    "m{}: a watch from a compacted revision gave {other:?}",
                    m + 1
                ),
            }
        }

        // timeoutSeconds ends a quiet watch on time.
        let current = api(0)
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let started = Instant::now();
        let mut quiet = api(1)
            .watch(&WatchParams::default().timeout(2), &current)
            .await
            .unwrap()
            .boxed();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = quiet.next().await {
                e.unwrap();
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "a watch with timeoutSeconds=2 still ran after 10 s"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
            "a watch with timeoutSeconds=2 ended after {took:?}"
        );
        old_rv
    });

    // kubectl: an exact list of the compacted revision reads as Expired; bad
    // resourceVersionMatch values are refused with Kubernetes' wording.
    let expired = format!(
        "/api/v1/namespaces/default/configmaps?resourceVersion={old_rv}&resourceVersionMatch=Exact"
    );
    // (path, what the error must say). A revision the store has not reached is 504 Timeout
    // with the ResourceVersionTooLarge cause, as on Kubernetes (clients such as kube-rs retry
    // it, so kubectl shows it here).
    let refusals: [(&str, &[&str]); 4] = [
        (&expired, &["(Expired)", "too old resource version"]),
        (
            "/api/v1/configmaps?resourceVersion=999999999&resourceVersionMatch=Exact",
            &["(Timeout)", "Too large resource version: 999999999"],
        ),
        (
            "/api/v1/configmaps?resourceVersionMatch=Exact",
            &["resourceVersionMatch is forbidden unless resourceVersion is provided"],
        ),
        (
            "/api/v1/configmaps?resourceVersion=0&resourceVersionMatch=Newest",
            &["Unsupported value: \"Newest\""],
        ),
    ];
    for version in ["1.27", "1.33"] {
        for (path, says) in refusals {
            let err = kubectl_fails(&cluster, version, &["get", "--raw", path]);
            assert!(says.iter().all(|s| err.contains(s)), "{path}: {err}");
        }
    }

    // The Python client: a watch from the compacted revision raises 410.
    let script = r#"
import sys
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
try:
    for _ in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                  resource_version=sys.argv[2], timeout_seconds=5):
        print("an event instead of 410")
        sys.exit(1)
    print("the watch ended without 410")
    sys.exit(1)
except ApiException as e:
    assert e.status == 410, e
    print("410", e.reason)
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(cluster.dir().join("admin.kubeconfig"))
        .arg(&old_rv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("410"),
        "{}",
        show(&out)
    );
}
