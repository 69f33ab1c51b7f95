//! The API server's watch cache and failover, with kube-rs against three real masters:
//! every master's lists reflect writes acknowledged by any other; a watch through a master
//! that is killed resumes on another master from its last resourceVersion with no change
//! missed or repeated; bookmarks arrive for clients that ask.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

use flotilla_e2e::{kube_clients, kubectl_ok, pid_alive, wait_for, LocalCluster};

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}}))
        .unwrap()
}

fn names(list: &[ConfigMap]) -> BTreeSet<String> {
    list.iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

#[test]
fn lists_and_watches_stay_consistent_across_masters_and_a_master_kill() {
    let cluster = LocalCluster::up(
        "api-failover",
        &["--masters", "3", "--nodes", "0", "--no-demo"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = kube_clients(&cluster).await;
        let api = |m: usize| -> Api<ConfigMap> { Api::namespaced(c[m].clone(), "default") };

        // Read your writes through any master: a create acknowledged by one master is in the
        // next list from another (the cache waits for the revision read through Raft).
        for i in 0..30 {
            let name = format!("ryw-{i}");
            api(i % 3)
                .create(&PostParams::default(), &cm(&name))
                .await
                .unwrap();
            let list = api((i + 1) % 3).list(&ListParams::default()).await.unwrap();
            assert!(
                names(&list.items).contains(&name),
                "{name} created through m{} is missing from a list through m{}",
                i % 3 + 1,
                (i + 1) % 3 + 1
            );
        }

        // A watch through m1, from a list's resourceVersion.
        let start = api(0).list(&ListParams::default()).await.unwrap();
        let start_rv = start.metadata.resource_version.unwrap();
        let mut stream = api(0)
            .watch(&WatchParams::default(), &start_rv)
            .await
            .unwrap()
            .boxed();
        let mut seen: Vec<(String, u64)> = Vec::new();
        let mut acknowledged = Vec::new();
        for i in 0..10 {
            let name = format!("w-{i}");
            api(1 + i % 2)
                .create(&PostParams::default(), &cm(&name))
                .await
                .unwrap();
            acknowledged.push(name);
        }
        let mut last_rv = start_rv.clone();
        while seen.len() < 10 {
            let e = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .expect("the watch delivers within 10 s")
                .unwrap()
                .expect("the watch is open");
            if let WatchEvent::Added(o) = e {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push((o.metadata.name.unwrap(), last_rv.parse().unwrap()));
            }
        }

        // Kill m1 (the master this watch talks to) while writes continue elsewhere.
        let pid = cluster.cluster_json()["processes"][0]["pid"]
            .as_u64()
            .unwrap() as u32;
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        wait_for("m1 to exit", Duration::from_secs(10), || !pid_alive(pid));
        for i in 10..30 {
            let name = format!("w-{i}");
            // Writes may meet the store's election; retry until acknowledged.
            let mut tries = 0;
            loop {
                match api(1 + i % 2)
                    .create(&PostParams::default(), &cm(&name))
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => break,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < 40, "create {name} kept failing: {e}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            acknowledged.push(name);
        }
        // The old stream ends (its master is gone); drain whatever it still had.
        while let Ok(Some(Ok(e))) =
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        {
            if let WatchEvent::Added(o) = e {
                last_rv = o.metadata.resource_version.clone().unwrap();
                seen.push((o.metadata.name.unwrap(), last_rv.parse().unwrap()));
            }
        }

        // Resume on m2 from the last resourceVersion seen.
        let mut resumed = api(1)
            .watch(&WatchParams::default(), &last_rv)
            .await
            .unwrap()
            .boxed();
        while seen.len() < 30 {
            let e = tokio::time::timeout(Duration::from_secs(10), resumed.try_next())
                .await
                .expect("the resumed watch delivers within 10 s")
                .unwrap()
                .expect("the resumed watch is open");
            if let WatchEvent::Added(o) = e {
                seen.push((
                    o.metadata.name.unwrap(),
                    o.metadata.resource_version.unwrap().parse().unwrap(),
                ));
            }
        }
        let seen_names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        let unique: BTreeSet<&str> = seen_names.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "an event came twice: {seen_names:?}"
        );
        let expected: BTreeSet<&str> = acknowledged.iter().map(String::as_str).collect();
        assert_eq!(unique, expected, "missed events");
        assert!(
            seen.windows(2).all(|w| w[0].1 < w[1].1),
            "events out of order: {seen:?}"
        );

        // Every acknowledged object is on the surviving masters — those acknowledged by the
        // killed m1 too (every third ryw-*) — for kube-rs and for kubectl of either version.
        acknowledged.extend((0..30).map(|i| format!("ryw-{i}")));
        for m in [1, 2] {
            let list = api(m).list(&ListParams::default()).await.unwrap();
            let have = names(&list.items);
            for name in &acknowledged {
                assert!(have.contains(name), "m{} lacks {name}", m + 1);
            }
        }
        for (version, context) in [("1.27", "m2"), ("1.33", "m3")] {
            let out = kubectl_ok(
                &cluster,
                version,
                &["--context", context, "get", "configmaps", "-o", "name"],
            );
            for name in &acknowledged {
                assert!(
                    out.lines().any(|l| l == format!("configmap/{name}")),
                    "kubectl {version} through {context} lacks {name}: {out}"
                );
            }
        }

        // Bookmarks for a client that asks (kube-rs asks by default; the cache asks the store
        // for progress every 5 s).
        let rv = api(2)
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut bookmarks = api(2)
            .watch(&WatchParams::default(), &rv)
            .await
            .unwrap()
            .boxed();
        let bookmark = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = bookmarks.try_next().await.unwrap() {
                if let WatchEvent::Bookmark(b) = e {
                    return b;
                }
            }
            panic!("the watch ended without a bookmark");
        })
        .await
        .expect("a bookmark within 20 s");
        let brv: u64 = bookmark.metadata.resource_version.parse().unwrap();
        assert!(brv >= rv.parse::<u64>().unwrap());
    });
}
