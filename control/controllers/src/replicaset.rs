//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector. It runs
//! ReplicationControllers too, as the ReplicaSets they are equivalent to.
//!
//! The decision is a pure function ([`plan`]) of the ReplicaSet and the pods of its namespace:
//! which orphans to adopt (they match, have no controller), which owned pods to release (they
//! stopped matching), how many pods to create, which to delete — preferring pods that are not
//! yet on a node, then pending, then not ready, then the newest — and the status to report.
//! Pods are read through the API on every reconcile; Flotilla's lists are consistent reads,
//! so the controller never acts on a stale view and needs no "expectations" bookkeeping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::pod_is_ready as is_ready;

/// What to do for one ReplicaSet.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphans to adopt (names).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match, to release (names).
    pub release: Vec<String>,
    /// Pods to create.
    pub create: usize,
    /// Pods to delete (names), best candidates first.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: serde_json::Value,
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions); an empty selector
/// matches everything (as in affinity terms and spread constraints).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let have = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// Whether a workload's `selector` selects pods with `labels`: as [`selector_matches`], except
/// that an empty selector selects nothing (the API requires one).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    !empty && selector_matches(selector, labels)
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Lower ranks are deleted first: not on a node, pending, not ready, then the newest.
fn deletion_rank(pod: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (
        u8::from(assigned),
        u8::from(running),
        u8::from(is_ready(pod)),
        std::cmp::Reverse(created),
    )
}

/// The plan for `rs` given every pod of its namespace.
pub fn plan(rs: &ReplicaSet, pods: &[Pod]) -> Plan {
    let mut out = Plan::default();
    let uid = rs.metadata.uid.as_deref().unwrap_or("");
    let Some(spec) = rs.spec.as_ref() else {
        return out;
    };
    let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let empty = BTreeMap::new();
    let mut mine: Vec<&Pod> = Vec::new();
    for pod in pods {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let matches = selects(&spec.selector, labels);
        let name = pod.metadata.name.clone().unwrap_or_default();
        match controller_uid(pod) {
            Some(owner) if owner == uid => {
                if matches {
                    mine.push(pod);
                } else {
                    out.release.push(name);
                }
            }
            // Owned by another controller: not ours.
            Some(_) => {}
            None if matches && is_active(pod) && rs.metadata.deletion_timestamp.is_none() => {
                out.adopt.push(name);
                mine.push(pod);
            }
            None => {}
        }
    }
    let active: Vec<&Pod> = mine.iter().copied().filter(|p| is_active(p)).collect();
    if rs.metadata.deletion_timestamp.is_none() {
        if active.len() < want {
            out.create = want - active.len();
        } else if active.len() > want {
            let mut ranked = active.clone();
            ranked.sort_by_key(|p| deletion_rank(p));
            out.delete = ranked
                .iter()
                .take(active.len() - want)
                .filter_map(|p| p.metadata.name.clone())
                .collect();
        }
    }
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    out.status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs.metadata.generation,
    });
    out
}

/// The owner reference a ReplicaSet puts on its pods.
pub fn owner_ref(rs: &ReplicaSet) -> OwnerReference {
    owner_of("apps/v1", "ReplicaSet", rs)
}

/// The owner reference to `rs` as a `kind` object (a ReplicationController is planned as a
/// ReplicaSet).
fn owner_of(api_version: &str, kind: &str, rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from `rs`'s template.
pub fn new_pod(rs: &ReplicaSet) -> Pod {
    new_pod_of(rs, owner_ref(rs))
}

fn new_pod_of(rs: &ReplicaSet, owner: OwnerReference) -> Pod {
    let name = rs.metadata.name.clone().unwrap_or_default();
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    pod_from_template(template, &name, owner)
}

/// A pod from a workload's `template`, named `<owner>-<random>`, controlled by `owner`.
pub(crate) fn pod_from_template(
    template: k8s_openapi::api::core::v1::PodTemplateSpec,
    owner_name: &str,
    owner: OwnerReference,
) -> Pod {
    let mut pod = Pod {
        spec: template.spec,
        ..Default::default()
    };
    let meta = template.metadata.unwrap_or_default();
    pod.metadata.generate_name = Some(format!("{owner_name}-"));
    pod.metadata.labels = meta.labels;
    pod.metadata.annotations = meta.annotations;
    pod.metadata.owner_references = Some(vec![owner]);
    pod
}

async fn reconcile(
    rs: Arc<ReplicaSet>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    converge::<ReplicaSet>(&rs, "apps/v1", &client).await
}

/// Brings the pods of `rs` — a ReplicaSet, or a `K` seen as one — to its plan and records the
/// status on the `K` object; `api_version` is `K`'s, for the pods' owner references.
async fn converge<K>(
    rs: &ReplicaSet,
    api_version: &str,
    client: &kube::Client,
) -> Result<Action, crate::runner::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (Some(ns), Some(name)) = (
        rs.metadata.namespace.as_deref(),
        rs.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let kind = K::kind(&());
    let owner = owner_of(api_version, &kind, rs);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let all = pods.list(&ListParams::default()).await?.items;
    let p = plan(rs, &all);
    let pp = PatchParams::default();
    for pod in &p.adopt {
        let patch = json!({"metadata": {"ownerReferences": [owner]}});
        ignore_gone(pods.patch(pod, &pp, &Patch::Merge(&patch)).await)?;
    }
    for pod in &p.release {
        let patch = json!({"metadata": {"ownerReferences": null}});
        ignore_gone(pods.patch(pod, &pp, &Patch::Merge(&patch)).await)?;
    }
    for _ in 0..p.create {
        pods.create(&PostParams::default(), &new_pod_of(rs, owner.clone()))
            .await?;
    }
    for pod in &p.delete {
        ignore_gone(pods.delete(pod, &DeleteParams::default()).await.map(|_| ()))?;
    }
    if p.create > 0 || !p.delete.is_empty() {
        tracing::info!(
            kind = %kind,
            name,
            namespace = ns,
            created = p.create,
            deleted = p.delete.len(),
            "replica set: scaled"
        );
    }
    let sets: Api<K> = Api::namespaced(client.clone(), ns);
    let status = json!({"status": p.status});
    ignore_gone(sets.patch_status(name, &pp, &Patch::Merge(&status)).await)?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// A ReplicationController as the ReplicaSet it is equivalent to: its selector, a map of
/// labels, as `matchLabels`.
pub fn as_replica_set(rc: &ReplicationController) -> ReplicaSet {
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: rc.spec.as_ref().map(|s| ReplicaSetSpec {
            replicas: s.replicas,
            min_ready_seconds: s.min_ready_seconds,
            selector: LabelSelector {
                match_labels: s.selector.clone(),
                match_expressions: None,
            },
            template: s.template.clone(),
        }),
        status: None,
    }
}

async fn reconcile_rc(
    rc: Arc<ReplicationController>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    converge::<ReplicationController>(&as_replica_set(&rc), "v1", &client).await
}

/// Runs the ReplicationController controller (the same plan) until its streams end. It
/// starts once some ReplicationController exists: it watches every pod, which costs each pod
/// change one more decode, and most clusters have no ReplicationControllers.
pub async fn run_replication_controllers(client: kube::Client) {
    if !crate::runner::first::<ReplicationController>(&client).await {
        return;
    }
    crate::runner::run_adopting::<ReplicationController, _, _>(
        client,
        "replicationcontroller",
        |rc| Some(as_replica_set(rc).spec?.selector),
        reconcile_rc,
    )
    .await;
}

/// A 404 (the object went meanwhile) is not an error for a reconciler.
pub(crate) fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    crate::runner::run_adopting::<ReplicaSet, _, _>(
        client,
        "replicaset",
        |rs| rs.spec.as_ref().map(|s| s.selector.clone()),
        reconcile,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "rs-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "a", "image": "nginx"}]}}},
        }))
        .unwrap()
    }

    fn pod(name: &str, owner: Option<&str>, node: Option<&str>, ready: bool, created: &str) -> Pod {
        let owners = owner.map(|uid| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": uid,
                    "controller": true}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}, "ownerReferences": owners,
                         "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": if node.is_some() { "Running" } else { "Pending" },
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn creates_what_is_missing_and_adopts_orphans_but_not_others_pods() {
        let pods = [
            pod("a", Some("rs-uid"), Some("n"), true, "2026-01-01T00:00:00Z"),
            pod("orphan", None, Some("n"), true, "2026-01-01T00:00:00Z"),
            pod(
                "foreign",
                Some("other"),
                Some("n"),
                true,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let p = plan(&rs(4), &pods);
        assert_eq!(p.adopt, ["orphan"]);
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
        assert_eq!(p.status["replicas"], 2);
        assert_eq!(p.status["readyReplicas"], 2);
        assert_eq!(p.status["observedGeneration"], 2);
    }

    #[test]
    fn scales_down_unscheduled_then_not_ready_then_newest_first() {
        let pods = [
            pod(
                "old-ready",
                Some("rs-uid"),
                Some("n"),
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                Some("rs-uid"),
                Some("n"),
                true,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "not-ready",
                Some("rs-uid"),
                Some("n"),
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                Some("rs-uid"),
                None,
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        let p = plan(&rs(1), &pods);
        assert_eq!(p.delete, ["unscheduled", "not-ready", "new-ready"]);
        assert_eq!(p.create, 0);
    }

    #[test]
    fn releases_pods_that_stopped_matching_and_templates_carry_the_owner() {
        let mut relabeled = pod("x", Some("rs-uid"), Some("n"), true, "2026-01-01T00:00:00Z");
        relabeled.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
        let p = plan(&rs(0), &[relabeled]);
        assert_eq!(p.release, ["x"]);
        let created = new_pod(&rs(1));
        assert_eq!(created.metadata.generate_name.as_deref(), Some("web-"));
        let owner = &created.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("rs-uid", Some(true))
        );
        assert_eq!(created.metadata.labels.unwrap()["app"], "web");
    }
}
