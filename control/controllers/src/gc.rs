//! The garbage collector (background propagation): a dependent whose owners are all gone is
//! deleted.
//!
//! Dependents are pods and ReplicaSets (the objects Flotilla's controllers create with owner
//! references). Deleting an owner triggers a collection of its namespace at once (the watch of
//! owners reports the deletion); a sweep every 30 s catches whatever a watch gap missed. An
//! owner counts as gone when reading it gives 404 or an object with another uid (a new object
//! of the same name). Foreground and Orphan propagation arrive with the rest of the
//! controllers issue.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher;

const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The kinds the collector deletes when their owners are gone: (group, version, kind, plural).
const DEPENDENTS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Pod", "pods"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
];

/// The plural of an owner kind the collector knows how to look up.
fn plural_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ReplicaSet" => "replicasets",
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "DaemonSet" => "daemonsets",
        "Job" => "jobs",
        "CronJob" => "cronjobs",
        "Pod" => "pods",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "Service" => "services",
        _ => return None,
    })
}

fn api_for(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
) -> Option<Api<DynamicObject>> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural_of(kind)?,
    );
    Some(match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    })
}

/// Whether the owner `o` (in namespace `ns`) still exists; unknown kinds count as existing.
async fn owner_alive(
    client: &kube::Client,
    ns: &str,
    o: &OwnerReference,
    seen: &mut HashMap<String, bool>,
) -> bool {
    if let Some(alive) = seen.get(&o.uid) {
        return *alive;
    }
    let Some(api) = api_for(client, &o.api_version, &o.kind, Some(ns)) else {
        return true;
    };
    let alive = match api.get_opt(&o.name).await {
        Ok(Some(obj)) => obj.metadata.uid.as_deref() == Some(o.uid.as_str()),
        Ok(None) => false,
        // Unsure: keep the dependent.
        Err(_) => true,
    };
    seen.insert(o.uid.clone(), alive);
    alive
}

/// Collects the dependents in `ns` (every namespace if `None`) whose owners are all gone.
async fn collect(client: &kube::Client, ns: Option<&str>) {
    let mut seen = HashMap::new();
    for (group, version, kind, _) in DEPENDENTS {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let Some(api) = api_for(client, &api_version, kind, ns) else {
            continue;
        };
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for obj in list.items {
            let owners = obj.metadata.owner_references.clone().unwrap_or_default();
            let (Some(name), Some(obj_ns)) =
                (obj.metadata.name.clone(), obj.metadata.namespace.clone())
            else {
                continue;
            };
            if owners.is_empty() || obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let mut any_alive = false;
            for o in &owners {
                if owner_alive(client, &obj_ns, o, &mut seen).await {
                    any_alive = true;
                    break;
                }
            }
            if any_alive {
                continue;
            }
            let Some(dependents) = api_for(client, &api_version, kind, Some(&obj_ns)) else {
                continue;
            };
            match dependents.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(kind, namespace = %obj_ns, name = %name, "garbage collector: deleted a dependent whose owners are gone")
                }
                Err(e) => {
                    tracing::debug!(kind, name = %name, error = %e, "garbage collector: delete failed")
                }
            }
        }
    }
}

/// The namespaces in which objects of `api` are deleted, as the watch reports them.
fn deletions<K>(api: Api<K>) -> futures::stream::BoxStream<'static, String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    watcher(api, watcher::Config::default())
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Delete(o)) => o.meta().namespace.clone(),
                _ => None,
            }
        })
        .boxed()
}

/// Runs the collector until its watches end.
pub async fn run(client: kube::Client) {
    let rs_deleted = deletions(Api::<ReplicaSet>::all(client.clone()));
    let deploy_deleted = deletions(Api::<Deployment>::all(client.clone()));
    let mut deleted = futures::stream::select(rs_deleted, deploy_deleted);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            ns = deleted.next() => match ns {
                Some(ns) => collect(&client, Some(&ns)).await,
                None => return,
            },
            _ = sweep.tick() => collect(&client, None).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_kinds_map_to_their_resources() {
        assert_eq!(plural_of("ReplicaSet"), Some("replicasets"));
        assert_eq!(plural_of("Deployment"), Some("deployments"));
        assert_eq!(plural_of("Widget"), None);
        assert!(DEPENDENTS.iter().any(|d| d.2 == "Pod"));
    }
}
