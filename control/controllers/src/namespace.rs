//! The Namespace controller: empties a namespace being deleted, then lets it go.
//!
//! Deleting a namespace only marks it (`deletionTimestamp`, phase `Terminating`) while its
//! `spec.finalizers` holds `kubernetes`. This controller then deletes everything in it — every
//! namespaced resource the API server's discovery lists as deletable, each object with the
//! background propagation policy, so pods terminate gracefully and finalizers run — and
//! reports what remains in the `NamespaceContentRemaining` condition. Once nothing is left it
//! removes `kubernetes` through the `finalize` subresource, and the API server deletes the
//! namespace.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::replicaset::ignore_gone;

/// The finalizer the API server puts in every namespace's `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// A summary of what is left, as Kubernetes words it (`pods. has 2 resource instances`).
fn remaining_message(left: &[(String, usize)]) -> String {
    let parts: Vec<String> = left
        .iter()
        .map(|(what, n)| format!("{what} has {n} resource instances"))
        .collect();
    format!("Some resources are remaining: {}", parts.join(", "))
}

/// Deletes what is in `ns`; returns what is still there per resource (`plural.group`).
async fn delete_contents(
    client: &kube::Client,
    ns: &str,
) -> Result<Vec<(String, usize)>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut left = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let items = match api.list(&ListParams::default()).await {
                Ok(l) => l.items,
                // A resource that cannot be listed here holds nothing to wait for.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => continue,
                Err(e) => return Err(e),
            };
            if items.is_empty() {
                continue;
            }
            for item in &items {
                if item.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some(name) = item.metadata.name.as_deref() else {
                    continue;
                };
                ignore_gone(
                    api.delete(name, &DeleteParams::background())
                        .await
                        .map(|_| ()),
                )?;
            }
            left.push((format!("{}.{}", ar.plural, ar.group), items.len()));
        }
    }
    Ok(left)
}

async fn reconcile(
    ns: Arc<Namespace>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some(name) = ns.metadata.name.as_deref() else {
        return Ok(Action::await_change());
    };
    let client = (*client).clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(ns) = namespaces.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let left = delete_contents(&client, name).await?;
    // A condition that keeps its status keeps its transition time (so an unchanged report is
    // no write, and no new event for this controller to wake up on).
    let now = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "NamespaceContentRemaining"))
        .filter(|c| c.status == if left.is_empty() { "False" } else { "True" })
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or_else(|| Timestamp::now().to_string(), |t| t.0.to_string());
    let (status, reason, message) = if left.is_empty() {
        (
            "False",
            "ContentRemoved",
            "All content successfully removed".to_string(),
        )
    } else {
        ("True", "SomeResourcesRemain", remaining_message(&left))
    };
    let condition = json!({"status": {"phase": "Terminating", "conditions": [{
        "type": "NamespaceContentRemaining", "status": status, "reason": reason,
        "message": message, "lastTransitionTime": now}]}});
    ignore_gone(
        namespaces
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&condition))
            .await,
    )?;
    if !left.is_empty() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // Empty: remove our finalizer; the API server deletes the namespace when none is left.
    let Some(current) = namespaces.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let mut finalized = current;
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    ignore_gone(
        namespaces
            .replace_subresource("finalize", name, &PostParams::default(), &finalized)
            .await,
    )?;
    tracing::info!(namespace = name, "namespace: emptied and finalized");
    Ok(Action::await_change())
}

/// Runs the controller until its watch ends.
pub async fn run(client: kube::Client) {
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile,
        crate::runner::retry("namespace"),
        Arc::new(client),
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remaining_content_reads_like_kubernetes() {
        let left = [
            ("pods.".to_string(), 2),
            ("deployments.apps".to_string(), 1),
        ];
        assert_eq!(
            remaining_message(&left),
            "Some resources are remaining: pods. has 2 resource instances, deployments.apps has 1 resource instances"
        );
    }
}
