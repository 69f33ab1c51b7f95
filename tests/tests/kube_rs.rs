//! kube-rs (the Rust Kubernetes client), unmodified, against a 3-master cluster's API through
//! the admin kubeconfig: typed CRUD, the three patch types, optimistic concurrency, a watch,
//! and the dynamic API (kinds from discovery, untyped objects).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;

use flotilla_e2e::LocalCluster;

#[test]
fn kube_rs_reads_writes_and_watches() {
    let cluster = LocalCluster::up("kube-rs", &["--masters", "3", "--nodes", "0", "--no-demo"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kubeconfig = Kubeconfig::read_from(cluster.dir().join("admin.kubeconfig")).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        let client = kube::Client::try_from(config).unwrap();

        let namespaces: Api<Namespace> = Api::all(client.clone());
        let names: Vec<String> = namespaces
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        assert!(names.contains(&"kube-system".to_string()), "{names:?}");

        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let watch = watcher(
            cms.clone(),
            watcher::Config::default().fields("metadata.name=kube-rs"),
        );
        let mut events = watch.boxed();

        let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kube-rs", "labels": {"from": "test"}},
            "data": {"a": "1"}
        }))
        .unwrap();
        let created = cms.create(&PostParams::default(), &cm).await.unwrap();
        assert!(created.metadata.uid.is_some());
        let rv = created.metadata.resource_version.clone().unwrap();

        // The watch sees the object.
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(e) = events.try_next().await.unwrap() {
                match e {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => return o,
                    _ => continue,
                }
            }
            panic!("the watch ended");
        })
        .await
        .expect("a watch event within 10 s");
        assert_eq!(seen.metadata.name.as_deref(), Some("kube-rs"));

        // Merge, strategic and JSON patches.
        let pp = PatchParams::default();
        cms.patch(
            "kube-rs",
            &pp,
            &Patch::Merge(serde_json::json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
        cms.patch(
            "kube-rs",
            &pp,
            &Patch::Strategic(serde_json::json!({"data": {"c": "3"}})),
        )
        .await
        .unwrap();
        let ops: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/data/d", "value": "4"}
        ]))
        .unwrap();
        let patched = cms
            .patch("kube-rs", &pp, &Patch::Json::<()>(ops))
            .await
            .unwrap();
        assert_eq!(patched.data.unwrap().len(), 4);

        // Server-side apply: creates what is not there, then merges into it; a field manager
        // is required.
        let applied = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied", "labels": {"by": "ssa"}},
            "data": {"x": "1"},
        });
        let ssa = PatchParams::apply("flotilla-e2e");
        let made = cms
            .patch("applied", &ssa, &Patch::Apply(&applied))
            .await
            .unwrap();
        assert_eq!(made.data.unwrap()["x"], "1");
        let mut more = applied.clone();
        more["data"]["y"] = serde_json::json!("2");
        let merged = cms
            .patch("applied", &ssa, &Patch::Apply(&more))
            .await
            .unwrap();
        let data = merged.data.unwrap();
        assert_eq!((data["x"].as_str(), data["y"].as_str()), ("1", "2"));
        assert_eq!(merged.metadata.labels.unwrap()["by"], "ssa");
        match cms
            .patch("applied", &PatchParams::default(), &Patch::Apply(&more))
            .await
        {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 400, "{e:?}"),
            other => panic!("an apply without a field manager must be refused, got {other:?}"),
        }
        // Another manager's different value for `x` is a conflict until it forces; the
        // first manager then leaving its data out removes `y` (it alone set it) but not `x`
        // (the other manager's now).
        let theirs = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": {"x": "7"},
        });
        match cms
            .patch(
                "applied",
                &PatchParams::apply("rival"),
                &Patch::Apply(&theirs),
            )
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"), "{e:?}");
                assert!(
                    e.message.contains("conflict with \"flotilla-e2e\""),
                    "{e:?}"
                );
            }
            other => panic!("expected an apply conflict, got {other:?}"),
        }
        let forced = cms
            .patch(
                "applied",
                &PatchParams::apply("rival").force(),
                &Patch::Apply(&theirs),
            )
            .await
            .unwrap();
        assert_eq!(forced.data.unwrap()["x"], "7");
        let mut only_labels = applied.clone();
        only_labels.as_object_mut().unwrap().remove("data");
        let trimmed = cms
            .patch("applied", &ssa, &Patch::Apply(&only_labels))
            .await
            .unwrap();
        let data = trimmed.data.unwrap();
        assert_eq!(
            (data.get("x").map(String::as_str), data.get("y")),
            (Some("7"), None)
        );
        let managers: Vec<(String, String)> = trimmed
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.manager.unwrap_or_default(),
                    m.operation.unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            managers,
            [
                ("flotilla-e2e".into(), "Apply".into()),
                ("rival".into(), "Apply".into())
            ]
        );
        cms.delete("applied", &DeleteParams::default())
            .await
            .unwrap();

        // A replace with the stale resourceVersion is a 409 Conflict.
        cm.metadata.resource_version = Some(rv);
        match cms.replace("kube-rs", &PostParams::default(), &cm).await {
            Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
            other => panic!("expected a conflict, got {other:?}"),
        }

        cms.delete("kube-rs", &DeleteParams::default())
            .await
            .unwrap();
        match cms.get("kube-rs").await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
            other => panic!("expected NotFound, got {other:?}"),
        }

        // The dynamic API: kinds found by discovery, objects as untyped JSON.
        let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
        let (deployments, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.group == "apps" && r.kind == "Deployment")
            .expect("discovery lists apps/v1 Deployment");
        assert_eq!(
            (deployments.version.as_str(), deployments.plural.as_str()),
            ("v1", "deployments")
        );
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        let dynamic: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &deployments);
        let body: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "dynamic", "labels": {"via": "dynamic"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "dynamic"}},
                     "template": {"metadata": {"labels": {"app": "dynamic"}},
                                  "spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
        }))
        .unwrap();
        let made = dynamic.create(&PostParams::default(), &body).await.unwrap();
        assert!(made.metadata.uid.is_some());
        assert_eq!(made.data["spec"]["replicas"], 1);
        let patched = dynamic
            .patch(
                "dynamic",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.data["spec"]["replicas"], 3);
        let listed = dynamic
            .list(&ListParams::default().labels("via=dynamic"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        // The typed view of the same object agrees.
        let typed: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(client.clone(), "default");
        assert_eq!(
            typed.get("dynamic").await.unwrap().spec.unwrap().replicas,
            Some(3)
        );
        dynamic
            .delete("dynamic", &DeleteParams::default())
            .await
            .unwrap();

        // A streaming list (`sendInitialEvents`, kube-rs' `streaming_lists`): the current
        // objects, the bookmark that ends them (the watcher's InitDone), then changes.
        let labeled = |name: &str| -> ConfigMap {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"via": "stream"}}
            }))
            .unwrap()
        };
        cms.create(&PostParams::default(), &labeled("stream-a"))
            .await
            .unwrap();
        // kube-rs streams from resourceVersion "0" (any state): a consistent list first makes
        // sure this master's cache holds the new object.
        let listed = cms
            .list(&ListParams::default().labels("via=stream"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        let mut stream = watcher(
            cms.clone(),
            watcher::Config::default()
                .labels("via=stream")
                .streaming_lists(),
        )
        .boxed();
        let mut initial = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(e) = stream.try_next().await.unwrap() {
                match e {
                    watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
                    watcher::Event::InitDone => return,
                    _ => {}
                }
            }
            panic!("the streaming watch ended");
        })
        .await
        .expect("the initial objects and their end within 10 s");
        assert_eq!(initial, ["stream-a"]);
        cms.create(&PostParams::default(), &labeled("stream-b"))
            .await
            .unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if let Some(watcher::Event::Apply(o)) = stream.try_next().await.unwrap() {
                    return o.metadata.name.unwrap();
                }
            }
        })
        .await
        .expect("a change within 10 s");
        assert_eq!(next, "stream-b");
        // Kubernetes' rules for the parameters: a streaming list needs NotOlderThan.
        let raw = http::Request::get(
            "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true",
        )
        .body(Vec::new())
        .unwrap();
        match client.request_text(raw).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"), "{e:?}");
                assert!(e.message.contains("NotOlderThan"), "{e:?}");
            }
            other => panic!("expected 422, got {other:?}"),
        }
    });
}
