//! The Deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! Each distinct template gets a ReplicaSet `<deployment>-<pod-template-hash>` whose selector
//! and pods carry the `pod-template-hash` label, and a revision
//! (`deployment.kubernetes.io/revision`, the highest so far + 1 whenever a template becomes
//! current again, which is how `kubectl rollout undo` works: it copies an old ReplicaSet's
//! template back into the Deployment). The decision is a pure function ([`plan`]) of the
//! Deployment, its ReplicaSets and the pods of its namespace, with the same arithmetic as
//! Kubernetes:
//! - **RollingUpdate**: the new ReplicaSet grows while the sum of all ReplicaSets' replicas
//!   stays within `replicas + maxSurge` (percentages round up); old ReplicaSets shrink, oldest
//!   first, only as far as keeps `replicas - maxUnavailable` pods available (rounding down;
//!   both 0 means 1 unavailable). Unhealthy old pods go first.
//! - **Recreate**: old ReplicaSets go to 0, and the new one is created once their pods are
//!   gone.
//! - `paused` stops rollouts (scaling still applies); `revisionHistoryLimit` old, empty
//!   ReplicaSets are kept; status carries what `kubectl rollout status` reads, and the
//!   Available and Progressing conditions (`ProgressDeadlineExceeded` after
//!   `progressDeadlineSeconds` without progress).
//!
//! Availability is counted from the pods themselves (ready, and for `minReadySeconds`), read
//! consistently on each reconcile, so a stale ReplicaSet status can never make the controller
//! remove more available pods than allowed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::events;
use crate::replicaset::{ignore_gone, selects};

/// The label that tells ReplicaSets of one Deployment apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation on Deployments and their ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const COMPONENT: &str = "deployment-controller";

/// Deployment annotations a ReplicaSet does not copy (as Kubernetes).
fn copied_annotation(key: &str) -> bool {
    !matches!(
        key,
        "kubectl.kubernetes.io/last-applied-configuration"
            | REVISION
            | "deployment.kubernetes.io/revision-history"
            | DESIRED
            | MAX_REPLICAS
            | "deprecated.deployment.rollback.to"
    )
}

/// What to do for one Deployment.
#[derive(Debug, Default)]
pub struct Plan {
    /// A ReplicaSet to create (the first of a new template).
    pub create: Option<ReplicaSet>,
    /// New `spec.replicas` per ReplicaSet name, with the event message for the change.
    pub scale: Vec<(String, i32, String)>,
    /// Annotations to set on an existing ReplicaSet that became current (name, annotations).
    pub annotate: Option<(String, BTreeMap<String, String>)>,
    /// Old ReplicaSets beyond `revisionHistoryLimit` to delete.
    pub delete: Vec<String>,
    /// The revision to record on the Deployment, if it changed.
    pub revision: Option<String>,
    /// The Deployment's new status.
    pub status: Value,
    /// When to look again even without a change (a rollout in progress, a deadline).
    pub requeue: Option<Duration>,
}

/// Pod counts of one ReplicaSet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    active: i32,
    ready: i32,
    available: i32,
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn controller_uid(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&str> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// A template as JSON without the `pod-template-hash` label, for comparison.
fn without_hash(t: &PodTemplateSpec) -> Value {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Whether two templates are equal once the `pod-template-hash` label is ignored.
pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The `pod-template-hash` of `template` (FNV-1a of its JSON and the collision count, in the
/// consonant-and-digit alphabet Kubernetes uses for generated names).
pub fn template_hash(template: &PodTemplateSpec, collisions: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let bytes = serde_json::to_vec(&without_hash(template)).unwrap_or_default();
    for b in bytes.iter().chain(collisions.to_string().as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// `value` (an absolute number or a percentage of `total`), rounding up or down.
fn scaled(value: Option<&IntOrString>, total: i32, default_percent: i32, round_up: bool) -> i32 {
    let percent = |p: i32| {
        let x = i64::from(p) * i64::from(total);
        let v = if round_up { (x + 99) / 100 } else { x / 100 };
        i32::try_from(v).unwrap_or(i32::MAX)
    };
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse().ok()) {
            Some(p) => percent(p),
            None => percent(default_percent),
        },
        None => percent(default_percent),
    }
}

/// `(maxSurge, maxUnavailable)` of a RollingUpdate Deployment with `replicas` replicas.
pub fn surge_and_unavailable(d: &Deployment, replicas: i32) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, 25, true).max(0);
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        25,
        false,
    )
    .max(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

fn ready_since(pod: &Pod) -> Option<Timestamp> {
    let conds = pod.status.as_ref()?.conditions.as_ref()?;
    let ready = conds
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// Counts the active, ready and available pods per ReplicaSet uid; also returns how long
/// until a ready pod becomes available (for `minReadySeconds`).
fn count_pods(
    pods: &[Pod],
    min_ready: i64,
    now: Timestamp,
) -> (BTreeMap<String, Counts>, Option<Duration>) {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    let mut soonest: Option<Duration> = None;
    for pod in pods {
        let Some(owner) = controller_uid(&pod.metadata) else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let c = out.entry(owner.to_string()).or_default();
        c.active += 1;
        if let Some(since) = ready_since(pod) {
            c.ready += 1;
            let ready_for = now.duration_since(since);
            let needed = SignedDuration::from_secs(min_ready);
            if ready_for >= needed {
                c.available += 1;
            } else {
                let left = Duration::try_from(needed - ready_for).unwrap_or_default();
                soonest = Some(soonest.map_or(left, |s| s.min(left)));
            }
        }
    }
    (out, soonest)
}

fn owner_ref(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The annotations a ReplicaSet of `d` carries at `revision`.
fn rs_annotations(
    d: &Deployment,
    revision: i64,
    existing: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut out = existing.cloned().unwrap_or_default();
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if copied_annotation(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let (surge, _) = surge_and_unavailable(d, replicas);
    out.insert(REVISION.into(), revision.to_string());
    out.insert(DESIRED.into(), replicas.to_string());
    out.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
    out
}

/// A new ReplicaSet of `d` for its current template.
pub fn new_replicaset(d: &Deployment, revision: i64, replicas: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let hash = template_hash(&spec.template, collisions);
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    meta.labels = Some(labels.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let name = d.metadata.name.clone().unwrap_or_default();
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{name}-{hash}"),
            "namespace": d.metadata.namespace,
            "labels": labels,
            "annotations": rs_annotations(d, revision, None),
            "ownerReferences": [owner_ref(d)],
        },
        "spec": {
            "replicas": replicas,
            "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
            "selector": selector,
            "template": template,
        },
    }))
    .unwrap_or_default()
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    previous: Option<&Value>,
    now: &str,
    progressed: bool,
) -> Value {
    let same_status = previous
        .and_then(|p| p.get("status"))
        .and_then(Value::as_str)
        == Some(status);
    let same_reason = previous
        .and_then(|p| p.get("reason"))
        .and_then(Value::as_str)
        == Some(reason);
    let transition = match previous.and_then(|p| p.get("lastTransitionTime")) {
        Some(t) if same_status => t.clone(),
        _ => json!(now),
    };
    let update = match previous.and_then(|p| p.get("lastUpdateTime")) {
        Some(t) if same_status && same_reason && !progressed => t.clone(),
        _ => json!(now),
    };
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastUpdateTime": update, "lastTransitionTime": transition})
}

/// The plan for `d` given the ReplicaSets and pods of its namespace at time `now`.
pub fn plan(d: &Deployment, sets: &[ReplicaSet], pods: &[Pod], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = d.spec.as_ref() else {
        return out;
    };
    let uid = d.metadata.uid.as_deref().unwrap_or("");
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let (counts, available_in) = count_pods(pods, min_ready, now);

    let mut owned: Vec<ReplicaSet> = sets
        .iter()
        .filter(|rs| controller_uid(&rs.metadata) == Some(uid))
        .cloned()
        .collect();
    // Oldest first: by revision, then creation.
    owned.sort_by_key(|rs| {
        (
            revision_of(rs),
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
    });
    let count = |rs: &ReplicaSet| {
        rs.metadata
            .uid
            .as_deref()
            .and_then(|u| counts.get(u))
            .copied()
            .unwrap_or_default()
    };
    let new_idx = owned.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignoring_hash(t, &spec.template))
    });
    let max_old_revision = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| revision_of(rs))
        .max()
        .unwrap_or(0);
    let deleting = d.metadata.deletion_timestamp.is_some();
    // Desired replicas per ReplicaSet name, starting from what they have.
    let mut desired: BTreeMap<String, i32> = owned
        .iter()
        .map(|rs| {
            (
                rs.metadata.name.clone().unwrap_or_default(),
                spec_replicas(rs),
            )
        })
        .collect();
    let old: Vec<&ReplicaSet> = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, rs)| rs)
        .collect();
    let old_active: i32 = old.iter().map(|rs| count(rs).active).sum();
    let mut created_name = None;
    let mut new_name = new_idx.and_then(|i| owned[i].metadata.name.clone());
    let mut new_revision = new_idx.map(|i| revision_of(&owned[i]));

    if !deleting && !paused {
        // The current template's ReplicaSet: created, or given the newest revision.
        match new_idx {
            Some(i) => {
                let rs = &owned[i];
                if revision_of(rs) <= max_old_revision {
                    let revision = max_old_revision + 1;
                    out.annotate = Some((
                        rs.metadata.name.clone().unwrap_or_default(),
                        rs_annotations(d, revision, rs.metadata.annotations.as_ref()),
                    ));
                    new_revision = Some(revision);
                }
            }
            None if !(recreate && old_active > 0) => {
                let revision = max_old_revision + 1;
                let rs = new_replicaset(d, revision, 0);
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                desired.insert(rs_name.clone(), 0);
                new_name = Some(rs_name.clone());
                created_name = Some(rs_name);
                new_revision = Some(revision);
                out.create = Some(rs);
            }
            None => {}
        }
        let old_names: Vec<String> = old
            .iter()
            .filter_map(|rs| rs.metadata.name.clone())
            .collect();
        if recreate {
            for n in &old_names {
                desired.insert(n.clone(), 0);
            }
            if old_active == 0 {
                if let Some(n) = &new_name {
                    desired.insert(n.clone(), replicas);
                }
            }
        } else if let Some(n) = new_name.clone() {
            let (surge, unavailable) = surge_and_unavailable(d, replicas);
            // Scale the new ReplicaSet up within replicas + maxSurge.
            let total: i32 = desired.values().sum();
            let current_new = desired.get(&n).copied().unwrap_or(0);
            let target_new = if current_new >= replicas {
                replicas
            } else {
                let room = (replicas + surge - total).max(0);
                (current_new + room).min(replicas)
            };
            desired.insert(n.clone(), target_new);
            // Scale old ReplicaSets down as far as availability allows.
            let min_available = replicas - unavailable;
            // A ReplicaSet above its desired size is about to lose pods (unready first): only
            // min(available, desired) of its pods can be counted on.
            let usable = |rs: &ReplicaSet, desired: &BTreeMap<String, i32>| {
                let n = rs.metadata.name.clone().unwrap_or_default();
                count(rs)
                    .available
                    .min(desired.get(&n).copied().unwrap_or(0))
            };
            let new_rs = new_idx.map(|i| &owned[i]);
            let new_unavailable = (target_new - new_rs.map_or(0, |rs| usable(rs, &desired))).max(0);
            let all: i32 = desired.values().sum();
            let mut budget = (all - min_available - new_unavailable).max(0);
            // First the unhealthy old pods (they count for nothing).
            for rs in &old {
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                let have = desired[&rs_name];
                let unhealthy = (have - usable(rs, &desired)).max(0).min(budget);
                if unhealthy > 0 {
                    desired.insert(rs_name, have - unhealthy);
                    budget -= unhealthy;
                }
            }
            // Then available ones, oldest first, keeping min_available.
            let available: i32 = owned.iter().map(|rs| usable(rs, &desired)).sum();
            let mut removable = (available - min_available).max(0);
            for rs in &old {
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                let have = desired[&rs_name];
                let take = have.min(removable);
                if take > 0 {
                    desired.insert(rs_name, have - take);
                    removable -= take;
                }
            }
        }
    } else if !deleting && paused {
        // Paused: no rollout, but a scale change reaches the newest active ReplicaSet.
        let active: Vec<&ReplicaSet> = owned.iter().filter(|rs| spec_replicas(rs) > 0).collect();
        let target = match (active.as_slice(), new_idx) {
            ([only], _) => only.metadata.name.clone(),
            ([], Some(i)) => owned[i].metadata.name.clone(),
            _ => None,
        };
        if let Some(t) = target {
            desired.insert(t, replicas);
        }
    }

    // Scale changes, with the events Kubernetes records.
    for rs in &owned {
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        let from = spec_replicas(rs);
        let to = desired.get(&rs_name).copied().unwrap_or(from);
        if to != from {
            let dir = if to > from { "up" } else { "down" };
            out.scale.push((
                rs_name.clone(),
                to,
                format!("Scaled {dir} replica set {rs_name} from {from} to {to}"),
            ));
        }
    }
    if let (Some(rs), Some(n)) = (out.create.as_mut(), created_name.as_ref()) {
        let to = desired.get(n).copied().unwrap_or(0);
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(to);
        }
        if to > 0 {
            out.scale.push((
                n.clone(),
                to,
                format!("Scaled up replica set {n} from 0 to {to}"),
            ));
        }
    }

    // Old, empty ReplicaSets beyond the history limit.
    if !deleting {
        let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
        let empty: Vec<&ReplicaSet> = old
            .iter()
            .copied()
            .filter(|rs| {
                let n = rs.metadata.name.clone().unwrap_or_default();
                desired.get(&n).copied().unwrap_or(0) == 0
                    && count(rs).active == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if empty.len() > limit {
            out.delete = empty[..empty.len() - limit]
                .iter()
                .filter_map(|rs| rs.metadata.name.clone())
                .collect();
        }
    }

    // Status, counted from the pods.
    let total = |f: fn(Counts) -> i32| -> i32 { owned.iter().map(|rs| f(count(rs))).sum() };
    let status_replicas = total(|c| c.active);
    let ready = total(|c| c.ready);
    let available = total(|c| c.available);
    let updated = new_idx.map_or(0, |i| count(&owned[i]).active);
    let previous = d.status.as_ref();
    let prev_conditions: Vec<Value> = previous
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    let prev = |t: &str| prev_conditions.iter().find(|c| c["type"] == t);
    let now_s = now.to_string();
    let (_, unavailable) = surge_and_unavailable(d, replicas);
    let available_cond = if available >= replicas - unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            prev("Available"),
            &now_s,
            false,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            prev("Available"),
            &now_s,
            false,
        )
    };
    let rs_label = new_name.clone().unwrap_or_default();
    let prev_progressing = prev("Progressing");
    let complete = updated == replicas
        && status_replicas == replicas
        && available == replicas
        && new_name.is_some()
        && out.scale.is_empty()
        && out.create.is_none();
    let was = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
        previous.and_then(f).unwrap_or(0)
    };
    let progressed = updated > was(|s| s.updated_replicas)
        || ready > was(|s| s.ready_replicas)
        || available > was(|s| s.available_replicas)
        || (status_replicas - updated) < (was(|s| s.replicas) - was(|s| s.updated_replicas))
        || !out.scale.is_empty();
    let deadline = spec.progress_deadline_seconds.unwrap_or(600);
    let progressing_cond = if paused {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            prev_progressing,
            &now_s,
            false,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_label}\" has successfully progressed."),
            prev_progressing,
            &now_s,
            false,
        )
    } else if created_name.is_some() {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{rs_label}\""),
            prev_progressing,
            &now_s,
            true,
        )
    } else if progressed
        || prev_progressing.is_none()
        || (out.annotate.is_some()
            && prev_progressing
                .and_then(|p| p.get("reason"))
                .and_then(Value::as_str)
                == Some("NewReplicaSetAvailable"))
    {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_label}\" is progressing."),
            prev_progressing,
            &now_s,
            true,
        )
    } else {
        let last_update = prev_progressing
            .and_then(|p| p.get("lastUpdateTime"))
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let reason = prev_progressing
            .and_then(|p| p.get("reason"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let timed_out = deadline < i32::MAX
            && reason != "NewReplicaSetAvailable"
            && last_update.is_some_and(|t| {
                now.duration_since(t) > SignedDuration::from_secs(i64::from(deadline))
            });
        if timed_out {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_label}\" has timed out progressing."),
                prev_progressing,
                &now_s,
                false,
            )
        } else {
            prev_progressing.cloned().unwrap_or(Value::Null)
        }
    };
    out.status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": status_replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": [available_cond, progressing_cond],
    });
    if let Some(c) = previous.and_then(|s| s.collision_count) {
        out.status["collisionCount"] = json!(c);
    }
    let current = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .cloned();
    if let Some(r) = new_revision {
        if current.as_deref() != Some(r.to_string().as_str()) {
            out.revision = Some(r.to_string());
        }
    }
    // A rollout in progress is looked at again soon (and at its deadline).
    if !complete && !paused && !deleting {
        out.requeue = Some(Duration::from_secs(5));
    }
    if let Some(left) = available_in {
        out.requeue = Some(out.requeue.map_or(left, |r| r.min(left)) + Duration::from_millis(50));
    }
    out
}

async fn reconcile(
    d: Arc<Deployment>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let (Some(ns), Some(name)) = (d.metadata.namespace.as_deref(), d.metadata.name.as_deref())
    else {
        return Ok(Action::await_change());
    };
    let client = (*client).clone();
    let sets_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    // The Deployment as it is now (the trigger may be older), then what it owns.
    let Some(d) = deploys.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let selector = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let sets = sets_api.list(&ListParams::default()).await?.items;
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| selects(&selector, l))
        })
        .collect();
    let p = plan(&d, &sets, &pods, Timestamp::now());
    let pp = PatchParams::default();
    let about = events::reference("apps/v1", "Deployment", &d.metadata);
    if let Some(rs) = &p.create {
        match sets_api.create(&PostParams::default(), rs).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                // A ReplicaSet of that name with another template: count the collision so
                // the next hash differs.
                let rs_name = rs.metadata.name.as_deref().unwrap_or("");
                let existing = sets_api.get_opt(rs_name).await?;
                let ours = existing
                    .as_ref()
                    .is_some_and(|e| controller_uid(&e.metadata) == d.metadata.uid.as_deref());
                if !ours {
                    let c = d
                        .status
                        .as_ref()
                        .and_then(|s| s.collision_count)
                        .unwrap_or(0);
                    let patch = json!({"status": {"collisionCount": c + 1}});
                    deploys
                        .patch_status(name, &pp, &Patch::Merge(&patch))
                        .await?;
                }
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some((rs_name, annotations)) = &p.annotate {
        let patch = json!({"metadata": {"annotations": annotations}});
        ignore_gone(sets_api.patch(rs_name, &pp, &Patch::Merge(&patch)).await)?;
    }
    if let Some(r) = &p.revision {
        let patch = json!({"metadata": {"annotations": {REVISION: r}}});
        ignore_gone(deploys.patch(name, &pp, &Patch::Merge(&patch)).await)?;
    }
    for (rs_name, replicas, message) in &p.scale {
        let created = p
            .create
            .as_ref()
            .is_some_and(|c| c.metadata.name.as_deref() == Some(rs_name.as_str()));
        if !created {
            let mut annotations = BTreeMap::new();
            let replicas_d = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let (surge, _) = surge_and_unavailable(&d, replicas_d);
            annotations.insert(DESIRED.to_string(), replicas_d.to_string());
            annotations.insert(MAX_REPLICAS.to_string(), (replicas_d + surge).to_string());
            let patch =
                json!({"metadata": {"annotations": annotations}, "spec": {"replicas": replicas}});
            ignore_gone(sets_api.patch(rs_name, &pp, &Patch::Merge(&patch)).await)?;
        }
        events::record(
            &client,
            COMPONENT,
            &about,
            events::Kind::Normal,
            "ScalingReplicaSet",
            message,
        )
        .await;
        tracing::info!(deployment = name, namespace = ns, "{message}");
    }
    for rs_name in &p.delete {
        ignore_gone(
            sets_api
                .delete(rs_name, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
    }
    let status = json!({"status": p.status});
    ignore_gone(
        deploys
            .patch_status(name, &pp, &Patch::Merge(&status))
            .await,
    )?;
    Ok(match p.requeue {
        Some(after) => Action::requeue(after),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    crate::runner::run_owning::<Deployment, ReplicaSet, _, _>(client, "deployment", reconcile)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-06-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn deployment(replicas: i32, image: &str, strategy: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "d-uid", "generation": 3,
                         "annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": strategy, "revisionHistoryLimit": 1,
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "a", "image": image}]}}},
        }))
        .unwrap()
    }

    fn rolling(surge: Value, unavailable: Value) -> Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
    }

    /// A ReplicaSet of `d`'s template with `image`, at `revision` with `replicas`.
    fn set(image: &str, revision: i64, replicas: i32) -> ReplicaSet {
        let d = deployment(replicas, image, rolling(json!(1), json!(0)));
        let mut rs = new_replicaset(&d, revision, replicas);
        rs.metadata.uid = Some(format!("rs-{image}"));
        rs
    }

    fn pods_of(rs: &ReplicaSet, n: usize, ready: bool) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                serde_json::from_value(json!({
                    "metadata": {"name": format!("{}-{i}", rs.metadata.name.as_deref().unwrap()),
                                 "labels": {"app": "web"},
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                    "name": "x", "uid": rs.metadata.uid, "controller": true}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready",
                        "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": "2026-06-01T11:00:00Z"}]},
                }))
                .unwrap()
            })
            .collect()
    }

    fn scaled_to(p: &Plan, name: &str) -> Option<i32> {
        p.scale
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, r, _)| *r)
    }

    #[test]
    fn a_new_deployment_gets_a_replicaset_at_revision_one_with_the_hash_label() {
        let d = deployment(3, "v1", rolling(json!("25%"), json!("25%")));
        let p = plan(&d, &[], &[], now());
        let rs = p.create.expect("a ReplicaSet is created");
        let name = rs.metadata.name.clone().unwrap();
        let hash = template_hash(&d.spec.as_ref().unwrap().template, 0);
        assert_eq!(name, format!("web-{hash}"));
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
        let selector = &rs.spec.as_ref().unwrap().selector;
        assert_eq!(selector.match_labels.as_ref().unwrap()[HASH_LABEL], hash);
        let annotations = rs.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[REVISION], "1");
        assert_eq!(annotations["kubernetes.io/change-cause"], "v2");
        assert_eq!(
            rs.metadata.owner_references.as_ref().unwrap()[0].uid,
            "d-uid"
        );
        assert_eq!(p.revision.as_deref(), Some("1"));
        assert_eq!(p.status["conditions"][1]["reason"], "NewReplicaSetCreated");
        assert!(equal_ignoring_hash(
            rs.spec.as_ref().unwrap().template.as_ref().unwrap(),
            &d.spec.as_ref().unwrap().template
        ));
    }

    #[test]
    fn rolling_update_respects_max_surge_and_max_unavailable() {
        // 4 replicas of v1, all available; the template changes to v2 with surge 1, unavailable 0.
        let old = set("v1", 1, 4);
        let pods = pods_of(&old, 4, true);
        let d = deployment(4, "v2", rolling(json!(1), json!(0)));
        let p = plan(&d, std::slice::from_ref(&old), &pods, now());
        let new = p.create.as_ref().unwrap();
        let new_name = new.metadata.name.clone().unwrap();
        // Surge 1: the new ReplicaSet starts at 1; nothing old may go (0 unavailable).
        assert_eq!(new.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(scaled_to(&p, "web-old"), None);
        assert_eq!(scaled_to(&p, old.metadata.name.as_deref().unwrap()), None);
        assert_eq!(p.revision.as_deref(), Some("2"));

        // The new pod is up but not ready: still nothing old goes, nothing more is added.
        let mut new_rs = new.clone();
        new_rs.metadata.uid = Some("rs-v2".into());
        let mut all = pods.clone();
        all.extend(pods_of(&new_rs, 1, false));
        let p = plan(&d, &[old.clone(), new_rs.clone()], &all, now());
        assert!(p.scale.is_empty(), "{:?}", p.scale);

        // Once it is ready, one old pod may go (4 available, 4 required, 5 in total).
        let mut all = pods.clone();
        all.extend(pods_of(&new_rs, 1, true));
        let p = plan(&d, &[old.clone(), new_rs.clone()], &all, now());
        assert_eq!(
            scaled_to(&p, old.metadata.name.as_deref().unwrap()),
            Some(3)
        );
        assert_eq!(scaled_to(&p, &new_name), None);
        assert_eq!(p.status["updatedReplicas"], 1);
        assert_eq!(p.status["replicas"], 5);
    }

    #[test]
    fn a_replicaset_above_its_size_is_not_counted_twice() {
        // The old ReplicaSet was just scaled 4 -> 3 and still has 4 ready pods: with
        // maxUnavailable 1, one more may go (3 of its pods count), not two.
        let mut old = set("v1", 1, 3);
        old.spec.as_mut().unwrap().replicas = Some(3);
        let pods = pods_of(&old, 4, true);
        let d = deployment(4, "v2", rolling(json!(0), json!(1)));
        let mut new_rs = new_replicaset(&d, 2, 1);
        new_rs.metadata.uid = Some("rs-v2".into());
        let p = plan(&d, &[old.clone(), new_rs], &pods, now());
        // usable: old min(4, 3) = 3, new 0 of 1; min available 3 → nothing more may go.
        assert_eq!(scaled_to(&p, old.metadata.name.as_deref().unwrap()), None);
    }

    #[test]
    fn unhealthy_old_pods_go_first_and_recreate_waits_for_old_pods() {
        let old = set("v1", 1, 2);
        let pods = pods_of(&old, 2, false);
        let d = deployment(2, "v2", rolling(json!(0), json!(1)));
        let p = plan(&d, std::slice::from_ref(&old), &pods, now());
        // Nothing old is available, so both unhealthy pods may go within the budget
        // (2 desired in all - 1 min available - 0 new unavailable... the new one starts at 0).
        assert!(scaled_to(&p, old.metadata.name.as_deref().unwrap()).unwrap() < 2);

        let d = deployment(2, "v2", json!({"type": "Recreate"}));
        let p = plan(&d, std::slice::from_ref(&old), &pods, now());
        assert!(
            p.create.is_none(),
            "the new ReplicaSet waits for old pods to go"
        );
        assert_eq!(
            scaled_to(&p, old.metadata.name.as_deref().unwrap()),
            Some(0)
        );
        let mut emptied = old.clone();
        emptied.spec.as_mut().unwrap().replicas = Some(0);
        let p = plan(&d, &[emptied], &[], now());
        assert_eq!(p.create.unwrap().spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn rollback_reuses_the_old_replicaset_with_the_next_revision() {
        // Revisions 1 (v1, empty) and 2 (v2, current); the template goes back to v1.
        let v1 = set("v1", 1, 0);
        let v2 = set("v2", 2, 2);
        let pods = pods_of(&v2, 2, true);
        let d = deployment(2, "v1", rolling(json!(1), json!(0)));
        let p = plan(&d, &[v1.clone(), v2.clone()], &pods, now());
        assert!(p.create.is_none());
        let (name, annotations) = p
            .annotate
            .clone()
            .expect("the old ReplicaSet becomes current");
        assert_eq!(Some(name.as_str()), v1.metadata.name.as_deref());
        assert_eq!(annotations[REVISION], "3");
        assert_eq!(p.revision.as_deref(), Some("3"));
        assert_eq!(scaled_to(&p, &name), Some(1));
    }

    #[test]
    fn complete_rollouts_report_what_kubectl_rollout_status_reads_and_prune_history() {
        let v1 = set("v1", 1, 0);
        let v2 = set("v2", 2, 0);
        let v3 = set("v3", 3, 2);
        let pods = pods_of(&v3, 2, true);
        let mut d = deployment(2, "v3", rolling(json!(1), json!(0)));
        d.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REVISION.into(), "3".into());
        let p = plan(&d, &[v1.clone(), v2, v3], &pods, now());
        assert!(p.scale.is_empty() && p.create.is_none() && p.revision.is_none());
        assert_eq!(p.status["observedGeneration"], 3);
        assert_eq!(p.status["updatedReplicas"], 2);
        assert_eq!(p.status["availableReplicas"], 2);
        assert_eq!(p.status["conditions"][0]["status"], "True");
        assert_eq!(
            p.status["conditions"][1]["reason"],
            "NewReplicaSetAvailable"
        );
        // revisionHistoryLimit 1: the oldest empty ReplicaSet goes.
        assert_eq!(p.delete, [v1.metadata.name.clone().unwrap()]);
        assert!(p.requeue.is_none());
    }

    #[test]
    fn no_progress_past_the_deadline_is_reported() {
        let v1 = set("v1", 1, 2);
        let pods = pods_of(&v1, 2, false);
        let mut d = deployment(2, "v1", rolling(json!(1), json!(0)));
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(60);
        d.status = serde_json::from_value(json!({"replicas": 2, "updatedReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                            "lastUpdateTime": "2026-06-01T11:58:00Z",
                            "lastTransitionTime": "2026-06-01T11:58:00Z"}]}))
        .unwrap();
        let p = plan(&d, &[v1], &pods, now());
        assert_eq!(
            p.status["conditions"][1]["reason"],
            "ProgressDeadlineExceeded"
        );
        assert_eq!(p.status["conditions"][1]["status"], "False");
    }

    #[test]
    fn paused_deployments_scale_but_do_not_roll_out() {
        let v1 = set("v1", 1, 2);
        let pods = pods_of(&v1, 2, true);
        let mut d = deployment(5, "v2", rolling(json!(1), json!(0)));
        d.spec.as_mut().unwrap().paused = Some(true);
        let p = plan(&d, std::slice::from_ref(&v1), &pods, now());
        assert!(p.create.is_none());
        assert_eq!(scaled_to(&p, v1.metadata.name.as_deref().unwrap()), Some(5));
        assert_eq!(p.status["conditions"][1]["reason"], "DeploymentPaused");
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        let d = deployment(10, "v1", rolling(json!("25%"), json!("25%")));
        assert_eq!(surge_and_unavailable(&d, 10), (3, 2));
        let d = deployment(3, "v1", rolling(json!(0), json!(0)));
        assert_eq!(surge_and_unavailable(&d, 3), (0, 1));
        assert_ne!(
            template_hash(&d.spec.as_ref().unwrap().template, 0),
            template_hash(&d.spec.as_ref().unwrap().template, 1)
        );
    }
}
