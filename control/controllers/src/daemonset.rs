//! The DaemonSet controller: one pod on every eligible node.
//!
//! A node is eligible when the pod template's `nodeSelector` and required node affinity match
//! it and its `NoSchedule`/`NoExecute` taints are tolerated (by the template's tolerations plus
//! the ones Kubernetes gives every daemon pod: not-ready, unreachable, the pressure conditions
//! and unschedulable). As in Kubernetes, the pod is not bound by the controller: it gets a
//! required node affinity on `metadata.name` and the scheduler binds it, so resources are
//! checked like everyone else's. Pods carry `controller-revision-hash` (a hash of the
//! template; the templates are kept as ControllerRevisions `<ds>-<hash>` for `kubectl rollout
//! history` and `undo`, see [`crate::revisions`]); with the RollingUpdate strategy, pods of an older template are deleted — at
//! most `maxUnavailable` (default 1) unavailable at once, not-ready ones first — and replaced
//! by the current template; OnDelete leaves them until someone deletes them. The decision is
//! a pure function ([`plan`]) of the DaemonSet, the nodes and the pods of its namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use crate::nodelifecycle::tolerates;
use crate::pod_is_ready as is_ready;
use crate::replicaset::{ignore_gone, selects};

/// The label with the hash of the template a pod was made from.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// What to do for one DaemonSet.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes that need a pod.
    pub create: Vec<String>,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    /// The status to report.
    pub status: serde_json::Value,
}

/// The tolerations every daemon pod gets (Kubernetes' DaemonSet controller adds them).
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The owner reference a DaemonSet puts on its pods and revisions.
fn owner_ref(ds: &DaemonSet) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: ds.metadata.name.clone().unwrap_or_default(),
        uid: ds.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod `ds` would run on `node`, before it has a name.
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let mut pod = crate::replicaset::pod_from_template(template, &name, owner_ref(ds));
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    if let Some(spec) = pod.spec.as_mut() {
        // Pinned to the node by affinity (the scheduler binds it), as Kubernetes does.
        let pin: k8s_openapi::api::core::v1::Affinity = serde_json::from_value(json!({
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}
        }))
        .unwrap_or_default();
        let mut affinity = spec.affinity.clone().unwrap_or_default();
        affinity.node_affinity = pin.node_affinity;
        spec.affinity = Some(affinity);
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations() {
            if !tolerations.contains(&t) {
                tolerations.push(t);
            }
        }
    }
    pod
}

/// Whether the daemon pod (`probe`, built for `node`) may start there (`new`), or keep
/// running there: as in Kubernetes, an untolerated NoSchedule taint keeps new pods off but
/// leaves a running one alone; NoExecute does both.
fn eligible(probe: &Pod, node: &Node, new: bool) -> bool {
    if !crate::nodematch::fits(probe, node) {
        return false;
    }
    let tolerations = probe
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoExecute" || (new && t.effect == "NoSchedule"))
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The node a daemon pod is on or pinned to.
fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.as_ref()?.iter().find_map(|f| {
            (f.key == "metadata.name")
                .then(|| f.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

/// The plan for `ds` given every node and the pods of its namespace.
pub fn plan(ds: &DaemonSet, nodes: &[Node], pods: &[Pod]) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = ds.spec.as_ref() else {
        return out;
    };
    let uid = ds.metadata.uid.as_deref().unwrap_or("");
    let hash = crate::deployment::template_hash(&spec.template, 0);
    let empty = BTreeMap::new();
    // This set's live pods, by node.
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        let owned = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !owned
            || pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
            || !selects(
                &spec.selector,
                pod.metadata.labels.as_ref().unwrap_or(&empty),
            )
        {
            continue;
        }
        if let Some(n) = node_of(pod) {
            by_node.entry(n).or_default().push(pod);
        }
    }
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let mut desired = 0;
    let (mut scheduled, mut misscheduled, mut ready, mut updated, mut available) = (0, 0, 0, 0, 0);
    // Old-template pods on eligible nodes, candidates for a rolling update.
    let mut outdated: Vec<&Pod> = Vec::new();
    let mut unavailable = 0;
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let probe = pod_for(ds, &name, &hash);
        let here = by_node.remove(&name).unwrap_or_default();
        if !eligible(&probe, node, here.is_empty()) {
            misscheduled += here
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            out.delete
                .extend(here.iter().filter_map(|p| p.metadata.name.clone()));
            continue;
        }
        desired += 1;
        match here.as_slice() {
            [] => {
                unavailable += 1;
                if !deleting {
                    out.create.push(name);
                }
            }
            [first, rest @ ..] => {
                // One pod per node: the oldest stays.
                let mut sorted: Vec<&&Pod> = std::iter::once(first).chain(rest).collect();
                sorted.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let keep = sorted[0];
                out.delete
                    .extend(sorted[1..].iter().filter_map(|p| p.metadata.name.clone()));
                scheduled += 1;
                let is_current = hash_of(keep) == Some(hash.as_str());
                if is_ready(keep) {
                    ready += 1;
                    available += 1;
                } else {
                    unavailable += 1;
                }
                if is_current {
                    updated += 1;
                } else {
                    outdated.push(keep);
                }
            }
        }
    }
    // Pods on nodes that no longer exist go too.
    for pods in by_node.values() {
        out.delete
            .extend(pods.iter().filter_map(|p| p.metadata.name.clone()));
    }
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling && !deleting {
        let max_unavailable = match strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
        {
            Some(IntOrString::Int(n)) => (*n).max(0),
            Some(IntOrString::String(p)) => {
                let percent: i32 = p.trim_end_matches('%').parse().unwrap_or(0);
                (percent * desired / 100).max(1)
            }
            None => 1,
        };
        // Not-ready outdated pods first: replacing them costs no availability.
        outdated.sort_by_key(|p| is_ready(p));
        let mut budget = (max_unavailable - unavailable).max(0);
        for pod in outdated {
            if !is_ready(pod) {
                out.delete.extend(pod.metadata.name.clone());
            } else if budget > 0 {
                budget -= 1;
                out.delete.extend(pod.metadata.name.clone());
            }
        }
    }
    out.status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "observedGeneration": ds.metadata.generation,
    });
    out
}

async fn reconcile(
    ds: Arc<DaemonSet>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let (Some(ns), Some(name)) = (
        ds.metadata.namespace.as_deref(),
        ds.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let client = (*client).clone();
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let Some(ds) = sets.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods_api.list(&ListParams::default()).await?.items;
    let p = plan(&ds, &nodes, &pods);
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let hash = crate::deployment::template_hash(&template, 0);
    // The template history `kubectl rollout history/undo ds` works on.
    let revs_api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let revs = revs_api.list(&ListParams::default()).await?.items;
    let in_use: Vec<String> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == ds.metadata.uid.as_ref())
        })
        .filter_map(|p| p.metadata.labels.as_ref()?.get(HASH_LABEL))
        .map(|h| format!("{name}-{h}"))
        .collect();
    let history = crate::revisions::plan(
        &owner_ref(&ds),
        Some(ns.to_string()),
        &template,
        &format!("{name}-{hash}"),
        ds.spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10),
        &in_use,
        &revs,
    );
    crate::revisions::apply(&revs_api, &history).await?;
    for node in &p.create {
        pods_api
            .create(&PostParams::default(), &pod_for(&ds, node, &hash))
            .await?;
    }
    for pod in &p.delete {
        ignore_gone(
            pods_api
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    if !p.create.is_empty() || !p.delete.is_empty() {
        tracing::info!(
            daemonset = name,
            namespace = ns,
            created = p.create.len(),
            deleted = p.delete.len(),
            "daemonset: reconciled"
        );
    }
    let status = json!({"status": p.status});
    ignore_gone(
        sets.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await,
    )?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    let sets: Api<DaemonSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(pods, watcher::Config::default())
        // A node that comes, goes or changes concerns every DaemonSet.
        .watches(nodes, watcher::Config::default(), move |_: Node| {
            store
                .state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(
            reconcile,
            crate::runner::retry("daemonset"),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(template_image: &str, strategy: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "d", "uid": "ds-uid", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": strategy,
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"nodeSelector": {"pool": "a"},
                                           "containers": [{"name": "a", "image": template_image}]}}},
        }))
        .unwrap()
    }

    fn node(name: &str, pool: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"pool": pool}},
                                      "spec": {"taints": taints}}))
        .unwrap()
    }

    fn running(d: &DaemonSet, node: &str, name: &str, ready: bool) -> Pod {
        let hash = crate::deployment::template_hash(&d.spec.as_ref().unwrap().template, 0);
        let mut p = pod_for(d, node, &hash);
        p.metadata.name = Some(name.into());
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p.status = serde_json::from_value(json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]}))
        .unwrap();
        p
    }

    #[test]
    fn one_pod_per_eligible_node_pinned_by_affinity() {
        let d = ds("v1", json!({"type": "RollingUpdate"}));
        let nodes = [
            node("n1", "a", json!([])),
            node("n2", "b", json!([])),
            node(
                "n3",
                "a",
                json!([{"key": "dedicated", "effect": "NoSchedule"}]),
            ),
            node(
                "n4",
                "a",
                json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
            ),
        ];
        let p = plan(&d, &nodes, &[]);
        // n2: wrong pool; n3: untolerated taint; n4: daemon pods tolerate unreachable.
        assert_eq!(p.create, ["n1", "n4"]);
        assert_eq!(p.status["desiredNumberScheduled"], 2);
        let hash = crate::deployment::template_hash(&d.spec.as_ref().unwrap().template, 0);
        let pod = pod_for(&d, "n1", &hash);
        assert_eq!(node_of(&pod).as_deref(), Some("n1"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[HASH_LABEL], hash);
        assert!(
            pod.spec.unwrap().node_name.is_none(),
            "the scheduler binds it"
        );
    }

    #[test]
    fn extra_and_misplaced_pods_go_and_status_counts() {
        let d = ds("v1", json!({"type": "RollingUpdate"}));
        let nodes = [node("n1", "a", json!([])), node("n2", "b", json!([]))];
        let mut older = running(&d, "n1", "old", true);
        older.metadata.creation_timestamp =
            serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
        let mut newer = running(&d, "n1", "dup", true);
        newer.metadata.creation_timestamp =
            serde_json::from_value(json!("2026-01-02T00:00:00Z")).unwrap();
        let wrong = running(&d, "n2", "wrong", true);
        let mut keeps = node(
            "n3",
            "a",
            json!([{"key": "dedicated", "effect": "NoSchedule"}]),
        );
        keeps.metadata.name = Some("n3".into());
        let stays = running(&d, "n3", "stays", true);
        let nodes = [nodes[0].clone(), nodes[1].clone(), keeps];
        let p = plan(&d, &nodes, &[older, newer, wrong, stays]);
        assert!(p.create.is_empty());
        // A NoSchedule taint keeps new daemon pods off, not a running one.
        assert_eq!(p.delete, ["dup", "wrong"]);
        assert_eq!(p.status["numberReady"], 2);
        assert_eq!(p.status["updatedNumberScheduled"], 2);
        assert_eq!(p.status["numberMisscheduled"], 1);
    }

    #[test]
    fn rolling_updates_replace_within_max_unavailable_and_on_delete_waits() {
        let old = ds("v1", json!({"type": "RollingUpdate"}));
        let nodes = [
            node("n1", "a", json!([])),
            node("n2", "a", json!([])),
            node("n3", "a", json!([])),
        ];
        let pods = [
            running(&old, "n1", "p1", true),
            running(&old, "n2", "p2", true),
            running(&old, "n3", "p3", false),
        ];
        let new = ds(
            "v2",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}),
        );
        // p3 is not ready (1 unavailable): it goes, plus one ready pod within maxUnavailable 2.
        let p = plan(&new, &nodes, &pods);
        assert_eq!(p.delete.len(), 2, "{:?}", p.delete);
        assert!(p.delete.contains(&"p3".to_string()));
        assert_eq!(p.status["updatedNumberScheduled"], 0);
        let on_delete = ds("v2", json!({"type": "OnDelete"}));
        assert!(plan(&on_delete, &nodes, &pods).delete.is_empty());
    }
}
