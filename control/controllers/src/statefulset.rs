//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`, created and removed in
//! order.
//!
//! Each pod gets the hostname `<set>-<ordinal>` and, when the set names a `serviceName`, that
//! (headless) Service as its subdomain, so the Endpoints controller publishes the hostname.
//! Templates are kept as ControllerRevisions `<set>-<hash>` (numbered, owned by the set,
//! pruned to `revisionHistoryLimit`), which is what `kubectl rollout history` and
//! `kubectl rollout undo` read; pods carry their revision in `controller-revision-hash`.
//!
//! The decision is a pure function ([`plan`]) of the set, its pods and the template of its
//! current revision:
//! - with `OrderedReady` (the default), ordinal *n* is created only once every lower ordinal
//!   is Running and Ready; extra ordinals are deleted one at a time from the highest, only
//!   while every wanted pod is healthy. `Parallel` creates and deletes without waiting.
//! - a pod that failed or succeeded is deleted and made again under the same name.
//! - RollingUpdate replaces pods of an older revision from the highest ordinal down to
//!   `partition`, one at a time, each only once every pod is healthy; pods below the partition
//!   keep (and are recreated at) the current revision. OnDelete leaves old pods until someone
//!   deletes them. When every pod runs the update revision, it becomes the current one.
//!
//! Each of `volumeClaimTemplates` gives every ordinal a PersistentVolumeClaim
//! `<template>-<set>-<ordinal>` ([`claims`]), created before its pod and mounted by it as the
//! volume of the template's name; claims stay when pods go (and, unless
//! `persistentVolumeClaimRetentionPolicy.whenDeleted` is `Delete`, when the set goes), so a
//! recreated pod gets its data back.
//!
//! Not yet: `minReadySeconds`, `maxUnavailable` above one, `whenScaled: Delete`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::daemonset::HASH_LABEL;
use crate::events;
use crate::replicaset::{ignore_gone, selects};

const COMPONENT: &str = "statefulset-controller";
/// The label with a pod's name, so a Service can select one member.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What to do for one StatefulSet.
#[derive(Debug, Default)]
pub struct Plan {
    /// Orphan pods with one of the set's names and matching labels, to adopt (names).
    pub adopt: Vec<String>,
    /// Pods to create, complete with name and revision.
    pub create: Vec<Pod>,
    /// Pods to delete (names), in order.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: Value,
}

fn owner_ref(sts: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: sts.metadata.name.clone().unwrap_or_default(),
        uid: sts.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn controller_uid(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The revision name (`<set>-<hash>`) of `sts`'s current template.
pub fn update_revision(sts: &StatefulSet) -> String {
    let spec = sts.spec.clone().unwrap_or_default();
    let hash = crate::deployment::template_hash(
        &spec.template,
        sts.status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0),
    );
    format!(
        "{}-{hash}",
        sts.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The ordinal of `pod` if its name is `<set>-<ordinal>`.
fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    let name = pod.metadata.name.as_deref()?;
    let digits = name.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Running, Ready and not being deleted.
fn healthy(pod: &Pod) -> bool {
    !terminating(pod) && phase(pod) == "Running" && crate::pod_is_ready(pod)
}

fn revision_of(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .map_or("", String::as_str)
}

/// The claims ordinal `ord` of `sts` uses, one per volume claim template:
/// `<template>-<set>-<ord>`, labelled with the set's selector, owned by the set only when
/// `persistentVolumeClaimRetentionPolicy.whenDeleted` is `Delete`.
pub fn claims(sts: &StatefulSet, ord: i32) -> Vec<PersistentVolumeClaim> {
    let set = sts.metadata.name.clone().unwrap_or_default();
    let Some(spec) = sts.spec.as_ref() else {
        return Vec::new();
    };
    let deleted_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let mut claim = t.clone();
            let template = t.metadata.name.clone().unwrap_or_default();
            claim.metadata.name = Some(format!("{template}-{set}-{ord}"));
            claim.metadata.namespace.clone_from(&sts.metadata.namespace);
            claim.metadata.resource_version = None;
            claim.metadata.uid = None;
            claim.status = None;
            let labels = claim.metadata.labels.get_or_insert_with(Default::default);
            for (k, v) in spec.selector.match_labels.iter().flatten() {
                labels.insert(k.clone(), v.clone());
            }
            claim.metadata.owner_references = deleted_with_set.then(|| {
                vec![OwnerReference {
                    controller: None,
                    ..owner_ref(sts)
                }]
            });
            claim
        })
        .collect()
}

/// Pod `<set>-<ordinal>` from `template` at `revision`.
pub fn new_pod(sts: &StatefulSet, ord: i32, template: &PodTemplateSpec, revision: &str) -> Pod {
    let set = sts.metadata.name.clone().unwrap_or_default();
    let mut pod = crate::replicaset::pod_from_template(template.clone(), &set, owner_ref(sts));
    let name = format!("{set}-{ord}");
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    labels.insert(HASH_LABEL.into(), revision.into());
    if let Some(spec) = pod.spec.as_mut() {
        // Each claim template's volume is the ordinal's claim.
        for claim in claims(sts, ord) {
            let template = claim
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_suffix(&format!("-{name}")))
                .unwrap_or_default()
                .to_string();
            let volumes = spec.volumes.get_or_insert_with(Vec::new);
            volumes.retain(|v| v.name != template);
            volumes.push(Volume {
                name: template,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.metadata.name.unwrap_or_default(),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        spec.hostname = Some(name);
        let service = sts
            .spec
            .as_ref()
            .and_then(|s| s.service_name.clone())
            .filter(|s| !s.is_empty());
        if service.is_some() {
            spec.subdomain = service;
        }
    }
    pod
}

/// The plan for `sts` given the pods of its namespace and the template of its current
/// revision (`None`: the current revision is the update revision or is gone).
pub fn plan(sts: &StatefulSet, pods: &[Pod], current_template: Option<&PodTemplateSpec>) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = sts.spec.as_ref() else {
        return out;
    };
    let set = sts.metadata.name.as_deref().unwrap_or_default();
    let uid = sts.metadata.uid.as_deref().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let wanted = start..start.saturating_add(replicas);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let update_rev = update_revision(sts);
    let status = sts.status.clone().unwrap_or_default();
    let current_rev = status
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_rev.clone());

    // The set's pods by ordinal: owned ones, and orphans with one of its names to adopt.
    let mut mine: BTreeMap<i32, &Pod> = BTreeMap::new();
    for pod in pods {
        let Some(ord) = ordinal(set, pod) else {
            continue;
        };
        match controller_uid(&pod.metadata) {
            Some(owner) if owner == uid => {}
            None if !terminating(pod)
                && selects(
                    &spec.selector,
                    pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                ) =>
            {
                out.adopt.extend(pod.metadata.name.clone());
            }
            _ => continue,
        }
        mine.insert(ord, pod);
    }

    // Wanted ordinals, lowest first: create what is missing, replace what finished.
    let mut blocked = false;
    for ord in wanted.clone() {
        match mine.get(&ord) {
            None => {
                let keep_current = !on_delete && ord < partition && current_rev != update_rev;
                let pod = match (keep_current, current_template) {
                    (true, Some(t)) => new_pod(sts, ord, t, &current_rev),
                    _ => new_pod(sts, ord, &spec.template, &update_rev),
                };
                out.create.push(pod);
                blocked = true;
            }
            Some(pod) if finished(pod) && !terminating(pod) => {
                out.delete.extend(pod.metadata.name.clone());
                blocked = true;
            }
            Some(pod) if !healthy(pod) => blocked = true,
            Some(_) => {}
        }
        if blocked && !parallel {
            break;
        }
    }

    // Ordinals no longer wanted, highest first.
    let mut condemned: Vec<&Pod> = mine
        .iter()
        .filter(|(ord, _)| !wanted.contains(ord))
        .map(|(_, p)| *p)
        .collect();
    condemned.reverse();
    if parallel {
        out.delete.extend(
            condemned
                .iter()
                .filter(|p| !terminating(p))
                .filter_map(|p| p.metadata.name.clone()),
        );
    } else if !blocked {
        if let Some(top) = condemned.first() {
            if !terminating(top) {
                out.delete.extend(top.metadata.name.clone());
            }
        }
    }

    // Rolling update: once everything wanted is healthy and nothing extra is left, replace the
    // highest pod of an older revision at or above the partition.
    let all_healthy = wanted
        .clone()
        .all(|ord| mine.get(&ord).is_some_and(|p| healthy(p)));
    if !on_delete && all_healthy && condemned.is_empty() {
        if let Some(pod) = wanted
            .clone()
            .rev()
            .filter(|ord| *ord >= partition)
            .filter_map(|ord| mine.get(&ord))
            .find(|p| revision_of(p) != update_rev)
        {
            out.delete.extend(pod.metadata.name.clone());
        }
    }

    // Status, from the pods as they are now.
    let live: Vec<&Pod> = mine.values().copied().filter(|p| !finished(p)).collect();
    let ready = live.iter().filter(|p| healthy(p)).count();
    let at = |rev: &str| {
        live.iter()
            .filter(|p| !terminating(p) && revision_of(p) == rev)
            .count()
    };
    let updated = at(&update_rev);
    let mut current = at(&current_rev);
    let mut current_revision = current_rev.clone();
    let done = usize::try_from(replicas).unwrap_or(0);
    if updated == done && ready == done && condemned.is_empty() {
        current_revision = update_rev.clone();
        current = updated;
    }
    out.status = json!({
        "observedGeneration": sts.metadata.generation,
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update_rev,
        "collisionCount": status.collision_count.unwrap_or(0),
    });
    out
}

/// The template a ControllerRevision of a StatefulSet records (`data.spec.template`).
pub use crate::revisions::template_of as revision_template;

/// The revision bookkeeping for `sts` given its ControllerRevisions and pods.
pub fn revisions(
    sts: &StatefulSet,
    revs: &[ControllerRevision],
    pods: &[Pod],
) -> crate::revisions::Revisions {
    let spec = sts.spec.clone().unwrap_or_default();
    let mut keep: Vec<String> = pods.iter().map(|p| revision_of(p).to_string()).collect();
    keep.extend(sts.status.as_ref().and_then(|s| s.current_revision.clone()));
    crate::revisions::plan(
        &owner_ref(sts),
        sts.metadata.namespace.clone(),
        &spec.template,
        &update_revision(sts),
        spec.revision_history_limit.unwrap_or(10),
        &keep,
        revs,
    )
}

async fn reconcile(
    sts: Arc<StatefulSet>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some((sts, sets, ns, name)) = crate::runner::stored(sts.as_ref(), &client).await? else {
        return Ok(Action::await_change());
    };
    let (ns, name) = (ns.as_str(), name.as_str());
    let client = (*client).clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let pods = pods_api.list(&ListParams::default()).await?.items;
    let revs = revs_api.list(&ListParams::default()).await?.items;
    let pp = PatchParams::default();

    crate::revisions::apply(&revs_api, &revisions(&sts, &revs, &pods)).await?;

    let current = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .and_then(|c| revs.iter().find(|r| r.metadata.name.as_deref() == Some(c)))
        .and_then(revision_template);
    let p = plan(&sts, &pods, current.as_ref());
    let about = events::reference("apps/v1", "StatefulSet", &sts.metadata);
    let normal = |reason: &'static str, message: String| {
        let (client, about) = (&client, &about);
        async move {
            events::record(
                client,
                COMPONENT,
                about,
                events::Kind::Normal,
                reason,
                &message,
            )
            .await
        }
    };
    for pod in &p.adopt {
        let patch = json!({"metadata": {"ownerReferences": [owner_ref(&sts)]}});
        ignore_gone(pods_api.patch(pod, &pp, &Patch::Merge(&patch)).await)?;
    }
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    for pod in &p.create {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        // The pod's claims first (they outlive pods: one may be there already).
        let ord = pod_name
            .rsplit('-')
            .next()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        for claim in claims(&sts, ord) {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            match claims_api.create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    let message = format!(
                        "create Claim {claim_name} Pod {pod_name} in StatefulSet {name} success"
                    );
                    normal("SuccessfulCreate", message).await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        match pods_api.create(&PostParams::default(), pod).await {
            Ok(_) => {}
            // The old pod of that name is still being deleted: wait for it to go.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        let message = format!("create Pod {pod_name} in StatefulSet {name} successful");
        normal("SuccessfulCreate", message).await;
    }
    for pod in &p.delete {
        ignore_gone(
            pods_api
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
        let message = format!("delete Pod {pod} in StatefulSet {name} successful");
        normal("SuccessfulDelete", message).await;
    }
    if !p.create.is_empty() || !p.delete.is_empty() {
        tracing::info!(
            statefulset = name,
            namespace = ns,
            created = p.create.len(),
            deleted = p.delete.len(),
            "statefulset: reconciled"
        );
    }
    let status = json!({"status": p.status});
    ignore_gone(sets.patch_status(name, &pp, &Patch::Merge(&status)).await)?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    crate::runner::run_adopting::<StatefulSet, _, _>(
        client,
        "statefulset",
        |sts| sts.spec.as_ref().map(|s| s.selector.clone()),
        reconcile,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i32, image: &str, extra: Value) -> StatefulSet {
        let mut spec = json!({
            "replicas": replicas, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                         "spec": {"containers": [{"name": "c", "image": image}]}},
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "d", "uid": "sts-uid", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn running(sts: &StatefulSet, ord: i32, ready: bool) -> Pod {
        let rev = update_revision(sts);
        let mut pod = new_pod(sts, ord, &sts.spec.as_ref().unwrap().template, &rev);
        pod.status = serde_json::from_value(json!({"phase": "Running", "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }}]}))
        .unwrap();
        pod
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn claim_templates_give_each_ordinal_its_claim_and_volume() {
        let template = json!([{"metadata": {"name": "data", "labels": {"tier": "db"}},
                               "spec": {"accessModes": ["ReadWriteOnce"],
                                        "resources": {"requests": {"storage": "1Gi"}}}}]);
        let s = sts(2, "pg:1", json!({"volumeClaimTemplates": template}));
        let c = claims(&s, 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].metadata.name.as_deref(), Some("data-db-1"));
        assert_eq!(c[0].metadata.namespace.as_deref(), Some("d"));
        let labels = c[0].metadata.labels.clone().unwrap();
        assert_eq!(
            (labels["app"].as_str(), labels["tier"].as_str()),
            ("db", "db")
        );
        // Retained by default: not owned by the set.
        assert!(c[0].metadata.owner_references.is_none());
        let pod = new_pod(&s, 1, &s.spec.as_ref().unwrap().template, "r");
        let volumes = pod.spec.unwrap().volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "data");
        let source = volumes[0].persistent_volume_claim.as_ref().unwrap();
        assert_eq!(source.claim_name, "data-db-1");
        // Deleted with the set: owned by it (not as its controller).
        let s = sts(
            1,
            "pg:1",
            json!({"volumeClaimTemplates": template,
                   "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}),
        );
        let owners = claims(&s, 0)[0].metadata.owner_references.clone().unwrap();
        assert_eq!(
            (owners[0].uid.as_str(), owners[0].controller),
            ("sts-uid", None)
        );
    }

    #[test]
    fn ordered_ready_creates_one_ordinal_at_a_time() {
        let s = sts(3, "pg:1", json!({}));
        let p = plan(&s, &[], None);
        assert_eq!(names(&p.create), ["db-0"]);
        let pod = &p.create[0];
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("db-0"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POD_NAME_LABEL], "db-0");
        assert_eq!(labels[POD_INDEX_LABEL], "0");
        assert_eq!(labels[HASH_LABEL], update_revision(&s));
        // db-0 not ready yet: nothing more.
        let p = plan(&s, &[running(&s, 0, false)], None);
        assert!(p.create.is_empty() && p.delete.is_empty());
        // db-0 ready: db-1 next.
        let p = plan(&s, &[running(&s, 0, true)], None);
        assert_eq!(names(&p.create), ["db-1"]);
        // Parallel: everything at once.
        let par = sts(3, "pg:1", json!({"podManagementPolicy": "Parallel"}));
        assert_eq!(
            names(&plan(&par, &[], None).create),
            ["db-0", "db-1", "db-2"]
        );
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let s = sts(1, "pg:1", json!({}));
        let pods = [
            running(&s, 0, true),
            running(&s, 1, true),
            running(&s, 2, true),
        ];
        let p = plan(&s, &pods, None);
        assert_eq!(p.delete, ["db-2"]);
        assert_eq!(p.status["replicas"], 3);
        // While db-2 terminates, db-1 waits.
        let mut going = pods.clone();
        going[2].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert!(plan(&s, &going, None).delete.is_empty());
        // A failed pod is replaced under its name.
        let mut failed = running(&s, 0, false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(plan(&s, &[failed], None).delete, ["db-0"]);
    }

    #[test]
    fn rolling_update_goes_from_the_highest_ordinal_down_to_the_partition() {
        let old = sts(3, "pg:1", json!({}));
        let pods: Vec<Pod> = (0..3).map(|o| running(&old, o, true)).collect();
        let mut new = sts(3, "pg:2", json!({}));
        new.status =
            serde_json::from_value(json!({"currentRevision": update_revision(&old)})).unwrap();
        let p = plan(&new, &pods, None);
        assert_eq!(p.delete, ["db-2"]);
        assert_eq!(p.status["updatedReplicas"], 0);
        assert_eq!(p.status["currentReplicas"], 3);
        assert_eq!(p.status["currentRevision"], json!(update_revision(&old)));
        // db-2 at the new revision and ready: db-1 next.
        let pods2 = vec![pods[0].clone(), pods[1].clone(), running(&new, 2, true)];
        assert_eq!(plan(&new, &pods2, None).delete, ["db-1"]);
        // With partition 2 only db-2 is updated; a missing db-0 comes back at the old revision.
        let mut part = sts(
            3,
            "pg:2",
            json!({"updateStrategy": {"type": "RollingUpdate",
                                               "rollingUpdate": {"partition": 2}}}),
        );
        part.status = new.status.clone();
        assert!(plan(&part, &pods2, None).delete.is_empty());
        let old_template = old.spec.as_ref().unwrap().template.clone();
        let p = plan(&part, &pods2[1..], Some(&old_template));
        assert_eq!(names(&p.create), ["db-0"]);
        assert_eq!(
            p.create[0].metadata.labels.as_ref().unwrap()[HASH_LABEL],
            update_revision(&old)
        );
        // Everything updated and ready: the update revision becomes current.
        let done: Vec<Pod> = (0..3).map(|o| running(&new, o, true)).collect();
        let p = plan(&new, &done, None);
        assert_eq!(p.status["currentRevision"], json!(update_revision(&new)));
        assert_eq!(p.status["currentReplicas"], 3);
        // OnDelete: nothing is replaced by the controller.
        let mut od = sts(3, "pg:2", json!({"updateStrategy": {"type": "OnDelete"}}));
        od.status = new.status.clone();
        assert!(plan(&od, &pods, None).delete.is_empty());
    }

    #[test]
    fn revisions_are_created_renumbered_on_rollback_and_pruned() {
        let v1 = sts(1, "pg:1", json!({"revisionHistoryLimit": 1}));
        let r = revisions(&v1, &[], &[]);
        let first = r.create.expect("a first revision");
        assert_eq!(first.revision, 1);
        assert_eq!(first.metadata.name, Some(update_revision(&v1)));
        assert_eq!(
            revision_template(&first),
            Some(v1.spec.as_ref().unwrap().template.clone())
        );
        let v2 = sts(1, "pg:2", json!({"revisionHistoryLimit": 1}));
        let second = revisions(&v2, std::slice::from_ref(&first), &[])
            .create
            .unwrap();
        assert_eq!(second.revision, 2);
        // Back to pg:1 (rollback): revision 1 becomes revision 3.
        let r = revisions(&v1, &[first.clone(), second.clone()], &[]);
        assert!(r.create.is_none());
        assert_eq!(r.renumber, Some((update_revision(&v1), 3)));
        // Three old templates unused by any pod and a limit of one: the two oldest go.
        let v3 = sts(1, "pg:3", json!({"revisionHistoryLimit": 1}));
        let third = revisions(&v3, &[first.clone(), second.clone()], &[])
            .create
            .unwrap();
        let v4 = sts(1, "pg:4", json!({"revisionHistoryLimit": 1}));
        let r = revisions(&v4, &[first.clone(), second, third], &[]);
        assert_eq!(r.delete, [update_revision(&v1), update_revision(&v2)]);
    }

    #[test]
    fn orphans_with_a_set_name_are_adopted_others_ignored() {
        let s = sts(2, "pg:1", json!({}));
        let mut orphan = running(&s, 0, true);
        orphan.metadata.owner_references = None;
        let mut stranger = running(&s, 1, true);
        stranger.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let p = plan(&s, &[orphan, stranger], None);
        assert_eq!(p.adopt, ["db-0"]);
        // db-1 belongs to someone else: creating it is tried (and will conflict), not stolen.
        assert_eq!(names(&p.create), ["db-1"]);
    }
}
