//! Running a reconciler: a kube-runtime `Controller` over one kind that also watches the kind
//! it owns, with one error type and one retry policy for every controller.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

/// A built-in kind the controllers watch (what kube-runtime's watchers and reflectors need).
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A reconcile that failed (it is retried after a second).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(#[from] pub kube::Error);

/// The retry policy of every controller: log, and look again after a second.
pub fn retry<K, C>(what: &'static str) -> impl Fn(Arc<K>, &Error, Arc<C>) -> Action {
    move |_, e, _| {
        tracing::warn!(error = %e, "{what} controller: retrying");
        Action::requeue(Duration::from_secs(1))
    }
}

/// Runs `reconcile` for every `K`, triggered by changes to it and to the `O`s it controls,
/// until the watches end. `what` names the controller in logs.
pub async fn run_owning<K, O, F, Fut>(client: kube::Client, what: &'static str, reconcile: F)
where
    K: Watched,
    O: Watched,
    F: FnMut(Arc<K>, Arc<kube::Client>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    Controller::new(Api::<K>::all(client.clone()), watcher::Config::default())
        .owns(Api::<O>::all(client.clone()), watcher::Config::default())
        .run(reconcile, retry(what), Arc::new(client))
        .for_each(|_| async {})
        .await;
}

/// Like [`run_owning`] with pods, for controllers that adopt orphans: a pod change triggers
/// its controller (by owner reference), and an orphan pod triggers every `K` of its
/// namespace whose selector (`selector_of`) matches its labels — as Kubernetes' controllers
/// watch every pod, not only their own.
pub async fn run_adopting<K, F, Fut>(
    client: kube::Client,
    what: &'static str,
    selector_of: fn(&K) -> Option<LabelSelector>,
    reconcile: F,
) where
    K: Watched,
    F: FnMut(Arc<K>, Arc<kube::Client>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    let kind = K::kind(&()).into_owned();
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                if let Some(owner) = pod
                    .owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true))
                {
                    return if owner.kind == kind {
                        vec![ObjectRef::<K>::new(&owner.name).within(&ns)]
                    } else {
                        Vec::new()
                    };
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    return Vec::new();
                }
                let labels = pod.labels().clone();
                store
                    .state()
                    .iter()
                    .filter(|k| k.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|k| {
                        selector_of(k).is_some_and(|s| crate::replicaset::selects(&s, &labels))
                    })
                    .map(|k| ObjectRef::from_obj(k.as_ref()))
                    .collect()
            },
        )
        .run(reconcile, retry(what), Arc::new(client))
        .for_each(|_| async {})
        .await;
}

/// Waits until some `K` exists (a watch sees one); false if the watch ended first. For
/// controllers that watch every pod but have nothing to do in most clusters.
pub async fn first<K: Watched>(client: &kube::Client) -> bool {
    use kube::runtime::WatchStreamExt;
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .filter_map(|k| async move { k.ok() })
        .boxed()
        .next()
        .await
        .is_some()
}

/// Replaces `name` with `object` (at the current resourceVersion), or creates it the first
/// time: for objects a component owns outright and rewrites whole (reports, endpoints).
pub async fn upsert<K>(api: &Api<K>, name: &str, mut object: K) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(current) => {
            object.meta_mut().resource_version = current.meta().resource_version.clone();
            api.replace(name, &kube::api::PostParams::default(), &object)
                .await?;
        }
        None => {
            api.create(&kube::api::PostParams::default(), &object)
                .await?;
        }
    }
    Ok(())
}

/// What a reconciler of `obj` works on: the stored object (not the event's copy, which may be
/// old), the API of its kind in its namespace, its namespace and its name; `None` when it is
/// gone or being deleted (then there is nothing to do).
pub async fn stored<K>(
    obj: &K,
    client: &kube::Client,
) -> Result<Option<(K, Api<K>, String, String)>, kube::Error>
where
    K: Watched + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let (Some(ns), Some(name)) = (obj.meta().namespace.clone(), obj.meta().name.clone()) else {
        return Ok(None);
    };
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    Ok(api
        .get_opt(&name)
        .await?
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .map(|o| (o, api, ns, name)))
}
