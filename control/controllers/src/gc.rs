//! The garbage collector: carries out the three deletion propagation policies.
//!
//! - **Background**: a dependent whose owners are all gone is deleted. Deleting an owner
//!   triggers a collection of its namespace at once (the watch of owners reports the
//!   deletion); a sweep every 30 s catches whatever a watch gap missed. An owner counts as gone
//!   when reading it gives 404 or an object with another uid (a new object of the same name).
//! - **Orphan**: the API server marks the owner deleted and adds the `orphan` finalizer; the
//!   collector removes the owner's reference from every dependent, then the finalizer, and the
//!   API server deletes the owner.
//! - **Foreground**: the `foregroundDeletion` finalizer; the collector deletes the dependents
//!   (foreground too, so the whole tree goes bottom-up) and removes the finalizer once none is
//!   left.
//!
//! Dependents are pods, ReplicaSets, Jobs, ControllerRevisions and EndpointSlices (the
//! objects Flotilla's controllers create with owner references); owners whose deletion is
//! watched are the workloads (ReplicationControllers included) and Services.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::watcher;

const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The kinds the collector deletes when their owners are gone: (group, version, kind, plural).
const DEPENDENTS: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Pod", "pods"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("apps", "v1", "ControllerRevision", "controllerrevisions"),
    ("batch", "v1", "Job", "jobs"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
];

/// The plural of an owner kind the collector knows how to look up.
fn plural_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "ReplicaSet" => "replicasets",
        "ReplicationController" => "replicationcontrollers",
        "Deployment" => "deployments",
        "StatefulSet" => "statefulsets",
        "DaemonSet" => "daemonsets",
        "Job" => "jobs",
        "CronJob" => "cronjobs",
        "Pod" => "pods",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        "ControllerRevision" => "controllerrevisions",
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

/// The finalizers through which the API server hands propagation policies to the collector.
pub const ORPHAN: &str = "orphan";
/// See [`ORPHAN`].
pub const FOREGROUND: &str = "foregroundDeletion";

/// The propagation finalizers among `meta`'s finalizers.
fn propagation_finalizers(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<String> {
    meta.finalizers
        .iter()
        .flatten()
        .filter(|f| *f == ORPHAN || *f == FOREGROUND)
        .cloned()
        .collect()
}

/// What the watches of owners report.
enum Seen {
    /// An owner went (its namespace is collected).
    Deleted(String),
    /// An owner is being deleted with a propagation finalizer.
    Finalizing(OwnerReference, String, Vec<String>),
}

/// The owner events of `api` the collector acts on.
fn owner_events<K>(
    api: Api<K>,
    api_version: &'static str,
) -> futures::stream::BoxStream<'static, Seen>
where
    K: crate::runner::Watched,
{
    watcher(api, watcher::Config::default())
        .filter_map(move |e| async move {
            match e {
                Ok(watcher::Event::Delete(o)) => o.meta().namespace.clone().map(Seen::Deleted),
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let m = o.meta();
                    let fins = propagation_finalizers(m);
                    if m.deletion_timestamp.is_none() || fins.is_empty() {
                        return None;
                    }
                    let owner = OwnerReference {
                        api_version: api_version.into(),
                        kind: K::kind(&()).into_owned(),
                        name: m.name.clone()?,
                        uid: m.uid.clone()?,
                        ..Default::default()
                    };
                    Some(Seen::Finalizing(owner, m.namespace.clone()?, fins))
                }
                _ => None,
            }
        })
        .boxed()
}

/// The dependents in `ns` that name `owner_uid` among their owners, as (api, object).
async fn dependents_of(
    client: &kube::Client,
    ns: &str,
    owner_uid: &str,
) -> Result<Vec<(Api<DynamicObject>, DynamicObject)>, kube::Error> {
    let mut out = Vec::new();
    for (group, version, kind, _) in DEPENDENTS {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let Some(api) = api_for(client, &api_version, kind, Some(ns)) else {
            continue;
        };
        for obj in api.list(&ListParams::default()).await?.items {
            let owned = obj
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner_uid);
            if owned {
                out.push((api.clone(), obj));
            }
        }
    }
    Ok(out)
}

/// Removes `finalizer` from the owner (the API server then deletes it if none is left).
async fn remove_finalizer(
    client: &kube::Client,
    owner: &OwnerReference,
    ns: &str,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let Some(api) = api_for(client, &owner.api_version, &owner.kind, Some(ns)) else {
        return Ok(());
    };
    for _ in 0..5 {
        let Some(obj) = api.get_opt(&owner.name).await? else {
            return Ok(());
        };
        if obj.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
            return Ok(());
        }
        let rest: Vec<String> = obj
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect();
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": obj.metadata.resource_version, "finalizers": rest}});
        match api
            .patch(&owner.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Orphan: drop `owner` from every dependent's owner references, then the finalizer.
async fn orphan(
    client: &kube::Client,
    owner: &OwnerReference,
    ns: &str,
) -> Result<(), kube::Error> {
    for (api, obj) in dependents_of(client, ns, &owner.uid).await? {
        let Some(name) = obj.metadata.name.clone() else {
            continue;
        };
        let rest: Vec<&OwnerReference> = obj
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|o| o.uid != owner.uid)
            .collect();
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": obj.metadata.resource_version,
            "ownerReferences": if rest.is_empty() { serde_json::Value::Null } else { serde_json::json!(rest) }}});
        crate::replicaset::ignore_gone(
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    remove_finalizer(client, owner, ns, ORPHAN).await?;
    tracing::info!(kind = %owner.kind, namespace = ns, name = %owner.name, "garbage collector: orphaned the dependents");
    Ok(())
}

/// Foreground: delete the dependents (foreground too) and wait until none is left; then the
/// finalizer. Gives up after a while; the sweep starts it again.
async fn foreground(
    client: kube::Client,
    owner: OwnerReference,
    ns: String,
) -> Result<(), kube::Error> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(600);
    while tokio::time::Instant::now() < give_up {
        let left = dependents_of(&client, &ns, &owner.uid).await?;
        if left.is_empty() {
            remove_finalizer(&client, &owner, &ns, FOREGROUND).await?;
            tracing::info!(kind = %owner.kind, namespace = %ns, name = %owner.name, "garbage collector: dependents gone; deleting the owner");
            return Ok(());
        }
        for (api, obj) in left {
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(name) = obj.metadata.name {
                crate::replicaset::ignore_gone(
                    api.delete(&name, &DeleteParams::foreground()).await,
                )?;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Owners being deleted with a propagation finalizer, found by listing (for the sweep).
async fn finalizing(client: &kube::Client) -> Vec<Seen> {
    let mut out = Vec::new();
    for (api_version, kind) in [
        ("apps/v1", "Deployment"),
        ("apps/v1", "ReplicaSet"),
        ("apps/v1", "DaemonSet"),
        ("apps/v1", "StatefulSet"),
        ("batch/v1", "Job"),
        ("batch/v1", "CronJob"),
    ] {
        let Some(api) = api_for(client, api_version, kind, None) else {
            continue;
        };
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for o in list.items {
            let m = &o.metadata;
            let fins = propagation_finalizers(m);
            if let (Some(_), false, Some(name), Some(uid), Some(ns)) = (
                &m.deletion_timestamp,
                fins.is_empty(),
                m.name.clone(),
                m.uid.clone(),
                m.namespace.clone(),
            ) {
                let owner = OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name,
                    uid,
                    ..Default::default()
                };
                out.push(Seen::Finalizing(owner, ns, fins));
            }
        }
    }
    out
}

/// Runs the collector until its watches end.
pub async fn run(client: kube::Client) {
    let rs = owner_events(Api::<ReplicaSet>::all(client.clone()), "apps/v1");
    let deploys = owner_events(Api::<Deployment>::all(client.clone()), "apps/v1");
    let services = owner_events(
        Api::<k8s_openapi::api::core::v1::Service>::all(client.clone()),
        "v1",
    );
    let daemonsets = owner_events(
        Api::<k8s_openapi::api::apps::v1::DaemonSet>::all(client.clone()),
        "apps/v1",
    );
    let jobs = owner_events(
        Api::<k8s_openapi::api::batch::v1::Job>::all(client.clone()),
        "batch/v1",
    );
    let statefulsets = owner_events(
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(client.clone()),
        "apps/v1",
    );
    let cronjobs = owner_events(
        Api::<k8s_openapi::api::batch::v1::CronJob>::all(client.clone()),
        "batch/v1",
    );
    let rcs = owner_events(
        Api::<k8s_openapi::api::core::v1::ReplicationController>::all(client.clone()),
        "v1",
    );
    let mut seen = futures::stream::select_all([
        rs,
        rcs,
        deploys,
        services,
        daemonsets,
        jobs,
        statefulsets,
        cronjobs,
    ]);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    // Owners whose foreground deletion is being carried out (by uid); the tasks end with the
    // collector (a term that ends must not leave writers behind).
    let busy = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let events = tokio::select! {
            e = seen.next() => match e {
                Some(e) => vec![e],
                None => return,
            },
            _ = sweep.tick() => {
                collect(&client, None).await;
                finalizing(&client).await
            }
        };
        for e in events {
            match e {
                Seen::Deleted(ns) => collect(&client, Some(&ns)).await,
                Seen::Finalizing(owner, ns, fins) => {
                    if fins.iter().any(|f| f == ORPHAN) {
                        if let Err(e) = orphan(&client, &owner, &ns).await {
                            tracing::warn!(error = %e, name = %owner.name, "garbage collector: orphaning failed; the sweep retries");
                        }
                    }
                    if fins.iter().any(|f| f == FOREGROUND)
                        && busy.lock().is_ok_and(|mut b| b.insert(owner.uid.clone()))
                    {
                        let client = client.clone();
                        let busy = busy.clone();
                        tasks.spawn(async move {
                            let uid = owner.uid.clone();
                            if let Err(e) = foreground(client, owner, ns).await {
                                tracing::warn!(error = %e, "garbage collector: foreground deletion failed; the sweep retries");
                            }
                            if let Ok(mut b) = busy.lock() {
                                b.remove(&uid);
                            }
                        });
                    }
                }
            }
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
