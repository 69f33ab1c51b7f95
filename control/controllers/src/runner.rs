//! Running a reconciler: a kube-runtime `Controller` over one kind that also watches the kind
//! it owns, with one error type and one retry policy for every controller.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

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
pub fn retry<K>(what: &'static str) -> impl Fn(Arc<K>, &Error, Arc<kube::Client>) -> Action {
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
