//! Node lifecycle: notices nodes that stopped heartbeating, taints them, and evicts their pods
//! once the pods' tolerations run out — so that controllers recreate the pods elsewhere.
//!
//! - A node whose Lease in `kube-node-lease` (or Ready condition) has not been renewed for
//!   the grace period (`--node-monitor-grace-period`, 40 s by default as in Kubernetes) gets
//!   every condition set to `Unknown` ("Kubelet stopped posting node status.") and the taints
//!   `node.kubernetes.io/unreachable` `NoSchedule` and `NoExecute`. A node reporting
//!   `Ready=False` gets `node.kubernetes.io/not-ready` instead. A node reporting `Ready=True`
//!   loses both.
//! - The pods of a node whose Ready condition is `Unknown` get `Ready=False` (and a
//!   `NodeNotReady` event), as Kubernetes' node controller marks them, so that endpoints drop
//!   them at once; the node's agent reports them ready again when it is back.
//! - Pods on a node with `NoExecute` taints are deleted at once if they do not tolerate one,
//!   or when the shortest matching `tolerationSeconds` has passed since the taint was added
//!   (the API server gives every pod 300 s for not-ready and unreachable, as Kubernetes'
//!   DefaultTolerationSeconds admission does).
//!
//! The decisions are pure ([`assess`], [`eviction_due`]); the loop runs on watch-fed stores
//! and looks every half second. Heartbeats older than this controller's start count from the
//! start, so a new leader gives every node a full grace period before judging it.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

use crate::events;

/// The taint of a node that stopped heartbeating.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node that reports not ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const COMPONENT: &str = "node-controller";
const TICK: Duration = Duration::from_millis(500);

/// Settings of the node lifecycle controller.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a node may go without a heartbeat before it counts as unreachable.
    pub grace: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            grace: Duration::from_secs(40),
        }
    }
}

/// Whether toleration `t` tolerates taint `taint` (Kubernetes' rules: an empty key with
/// Exists tolerates everything; an empty effect matches every effect; Equal compares values).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let exists = t.operator.as_deref() == Some("Exists");
    match t.key.as_deref().filter(|k| !k.is_empty()) {
        None => exists,
        Some(k) if k != taint.key => false,
        Some(_) if exists => true,
        Some(_) => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// What to change on one node.
#[derive(Debug, Default, PartialEq)]
pub struct NodePlan {
    /// New conditions (all of them), when they change.
    pub conditions: Option<serde_json::Value>,
    /// New taints (all of them), when they change.
    pub taints: Option<Vec<Taint>>,
    /// An event to record: (reason, message).
    pub event: Option<(String, String)>,
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// The latest heartbeat of `node`: its Lease's renewTime or its Ready condition's
/// lastHeartbeatTime, whichever is later.
fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let posted = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renewed.max(posted)
}

fn taint(key: &str, effect: &str, now: Timestamp) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        time_added: (effect == "NoExecute").then_some(Time(now)),
        value: None,
    }
}

/// The plan for `node` with Lease `lease` at `now`; the controller started at `started`.
pub fn assess(
    node: &Node,
    lease: Option<&Lease>,
    now: Timestamp,
    started: Timestamp,
    grace: Duration,
) -> NodePlan {
    let mut plan = NodePlan::default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let seen = last_heartbeat(node, lease).unwrap_or(started).max(started);
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let stale = now.duration_since(seen) > grace;
    let ready = ready_status(node);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| t.key == UNREACHABLE || t.key == NOT_READY;
    let mut want: Vec<Taint> = taints.iter().filter(|t| !ours(t)).cloned().collect();
    let keep_or_add = |want: &mut Vec<Taint>, key: &str| {
        for effect in ["NoSchedule", "NoExecute"] {
            let existing = taints.iter().find(|t| t.key == key && t.effect == effect);
            want.push(existing.cloned().unwrap_or_else(|| taint(key, effect, now)));
        }
    };
    if stale {
        keep_or_add(&mut want, UNREACHABLE);
        if ready.as_deref() != Some("Unknown") {
            let conditions: Vec<serde_json::Value> = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                           "message": "Kubelet stopped posting node status.",
                           "lastHeartbeatTime": c.last_heartbeat_time,
                           "lastTransitionTime": now.to_string()})
                })
                .collect();
            plan.conditions = Some(json!(conditions));
            plan.event = Some((
                "NodeNotReady".into(),
                format!("Node {name} status is now: NodeNotReady"),
            ));
        }
    } else {
        match ready.as_deref() {
            Some("False") => keep_or_add(&mut want, NOT_READY),
            // Marked unknown and not yet reported again: keep what is there.
            Some("Unknown") => want = taints.clone(),
            _ => {}
        }
        if ready.as_deref() == Some("True") && taints.iter().any(ours) {
            plan.event = Some((
                "NodeReady".into(),
                format!("Node {name} status is now: NodeReady"),
            ));
        }
    }
    let same = want.len() == taints.len()
        && want.iter().all(|w| {
            taints
                .iter()
                .any(|t| t.key == w.key && t.effect == w.effect)
        });
    if !same {
        plan.taints = Some(want);
    }
    plan
}

/// The status patch (strategic merge, by condition type) that marks `pod` not ready, if its
/// `Ready` condition is `True`: what Kubernetes' node controller does to the pods of a node
/// that stopped reporting, so that Services stop sending them traffic long before eviction.
pub fn not_ready_patch(pod: &Pod, now: Timestamp) -> Option<serde_json::Value> {
    crate::pod_is_ready(pod).then(|| {
        json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now.to_string()}
        ]}})
    })
}

/// The namespaced API of `pod`, with its namespace and name.
fn pod_api<'a>(client: &kube::Client, pod: &'a Pod) -> Option<(Api<Pod>, &'a str, &'a str)> {
    let ns = pod.metadata.namespace.as_deref()?;
    let name = pod.metadata.name.as_deref()?;
    Some((Api::namespaced(client.clone(), ns), ns, name))
}

/// Records an event about `pod` from the node controller.
async fn pod_event(client: &kube::Client, pod: &Pod, kind: events::Kind, reason: &str, msg: &str) {
    let about = events::reference("v1", "Pod", &pod.metadata);
    events::record(client, COMPONENT, &about, kind, reason, msg).await;
}

async fn mark_not_ready(client: &kube::Client, pod: &Pod, patch: &serde_json::Value) {
    let Some((pods, _, name)) = pod_api(client, pod) else {
        return;
    };
    let pp = PatchParams::default();
    match pods.patch_status(name, &pp, &Patch::Strategic(patch)).await {
        Ok(_) => {
            let kind = events::Kind::Warning;
            pod_event(client, pod, kind, "NodeNotReady", "Node is not ready").await;
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(pod = name, error = %e, "node lifecycle: marking a pod not ready"),
    }
}

/// When `pod`, on a node with `taints`, is to be evicted: `Some(now)`-or-earlier for at once,
/// a later time for when its tolerations run out, `None` for never.
pub fn eviction_due(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // Tolerated for the shortest of the matching tolerations' times (none: forever).
        let Some(seconds) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = added
            .checked_add(SignedDuration::from_secs(seconds.max(0)))
            .unwrap_or(now);
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due
}

async fn apply(client: &kube::Client, node: &Node, plan: NodePlan) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let nodes: Api<Node> = Api::all(client.clone());
    let pp = PatchParams::default();
    if let Some(conditions) = &plan.conditions {
        let patch = json!({"status": {"conditions": conditions}});
        if let Err(e) = nodes.patch_status(&name, &pp, &Patch::Merge(&patch)).await {
            tracing::warn!(node = %name, error = %e, "node lifecycle: setting conditions");
        }
    }
    if let Some(taints) = &plan.taints {
        // No taints left: the field goes, as Kubernetes leaves it.
        let value = if taints.is_empty() {
            serde_json::Value::Null
        } else {
            json!(taints)
        };
        let patch = json!({"spec": {"taints": value}});
        match nodes.patch(&name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(node = %name, taints = ?taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node lifecycle: taints set")
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "node lifecycle: setting taints"),
        }
    }
    if let Some((reason, message)) = &plan.event {
        let about = events::reference("v1", "Node", &node.metadata);
        events::record(
            client,
            COMPONENT,
            &about,
            events::Kind::Normal,
            reason,
            message,
        )
        .await;
    }
}

async fn evict(client: &kube::Client, pod: &Pod) {
    let Some((pods, ns, name)) = pod_api(client, pod) else {
        return;
    };
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(
                pod = name,
                namespace = ns,
                "node lifecycle: evicted a pod from a tainted node"
            );
            let msg = format!("Marking for deletion Pod {ns}/{name}");
            let kind = events::Kind::Normal;
            pod_event(client, pod, kind, "TaintManagerEviction", &msg).await;
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(pod = name, error = %e, "node lifecycle: eviction failed"),
    }
}

fn store<K: crate::runner::Watched>(
    api: Api<K>,
) -> (Store<K>, futures::stream::BoxStream<'static, ()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .applied_objects()
        .map(|_| ())
        .boxed();
    (reader, stream)
}

/// Runs the controller until its watches end.
pub async fn run(client: kube::Client, settings: Settings) {
    let started = Timestamp::now();
    let (nodes, nodes_feed) = store(Api::<Node>::all(client.clone()));
    let (leases, leases_feed) = store(Api::<Lease>::namespaced(client.clone(), "kube-node-lease"));
    let (pods, pods_feed) = store(Api::<Pod>::all(client.clone()));
    let mut feeds = futures::stream::select_all([nodes_feed, leases_feed, pods_feed]);
    let ready = async {
        let _ = nodes.wait_until_ready().await;
        let _ = leases.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
    };
    tokio::pin!(ready);
    // Feed the stores until all three have listed.
    loop {
        tokio::select! {
            _ = &mut ready => break,
            x = feeds.next() => if x.is_none() { return },
        }
    }
    let mut tick = tokio::time::interval(TICK);
    // Evictions already asked for (pod uid), so a slow delete is not repeated every tick.
    let mut evicted: HashMap<String, Timestamp> = HashMap::new();
    // Pods marked not ready (uid), likewise.
    let mut unready: HashMap<String, Timestamp> = HashMap::new();
    loop {
        tokio::select! {
            x = feeds.next() => {
                if x.is_none() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = Timestamp::now();
        let lease_of: HashMap<String, std::sync::Arc<Lease>> = leases
            .state()
            .into_iter()
            .filter_map(|l| Some((l.metadata.name.clone()?, l)))
            .collect();
        let mut no_execute: HashMap<String, Vec<Taint>> = HashMap::new();
        // Nodes not reporting (Ready Unknown): nobody keeps their pods' status but us.
        let mut silent: std::collections::HashSet<String> = std::collections::HashSet::new();
        for node in nodes.state() {
            let name = node.metadata.name.clone().unwrap_or_default();
            if ready_status(&node).as_deref() == Some("Unknown") {
                silent.insert(name.clone());
            }
            let plan = assess(
                &node,
                lease_of.get(&name).map(|l| l.as_ref()),
                now,
                started,
                settings.grace,
            );
            let taints = plan.taints.clone().unwrap_or_else(|| {
                node.spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default()
            });
            if plan.conditions.is_some() {
                silent.insert(name.clone());
            }
            if plan != NodePlan::default() {
                apply(&client, &node, plan).await;
            }
            let taints: Vec<Taint> = taints
                .into_iter()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            if !taints.is_empty() {
                no_execute.insert(name, taints);
            }
        }
        evicted.retain(|_, at| now.duration_since(*at) < SignedDuration::from_secs(30));
        unready.retain(|_, at| now.duration_since(*at) < SignedDuration::from_secs(30));
        if no_execute.is_empty() && silent.is_empty() {
            continue;
        }
        for pod in pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if silent.contains(node) {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let (false, Some(patch)) =
                    (unready.contains_key(&uid), not_ready_patch(&pod, now))
                {
                    unready.insert(uid, now);
                    mark_not_ready(&client, &pod, &patch).await;
                }
            }
            let Some(taints) = no_execute.get(node) else {
                continue;
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || evicted.contains_key(&uid) {
                continue;
            }
            if eviction_due(&pod, taints, now).is_some_and(|at| at <= now) {
                evicted.insert(uid, now);
                evict(&client, &pod).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node(ready: &str, heartbeat: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": taints},
            "status": {"conditions": [
                {"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat,
                 "lastTransitionTime": heartbeat},
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat,
                 "lastTransitionTime": heartbeat}]},
        }))
        .unwrap()
    }

    fn lease(renewed: &str) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"renewTime": renewed}}))
            .unwrap()
    }

    const GRACE: Duration = Duration::from_secs(40);

    #[test]
    fn a_node_without_heartbeats_becomes_unknown_and_unreachable() {
        let n = node("True", "2026-01-01T00:00:00Z", json!([]));
        let l = lease("2026-01-01T00:00:10Z");
        let start = ts("2026-01-01T00:00:00Z");
        // Within the grace period of the lease: nothing.
        let p = assess(&n, Some(&l), ts("2026-01-01T00:00:45Z"), start, GRACE);
        assert_eq!(p, NodePlan::default());
        // Past it: Unknown everywhere and both unreachable taints.
        let p = assess(&n, Some(&l), ts("2026-01-01T00:00:51Z"), start, GRACE);
        let conds = p.conditions.unwrap();
        assert!(conds
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "Unknown"));
        assert_eq!(conds[0]["reason"], "NodeStatusUnknown");
        let taints = p.taints.unwrap();
        assert_eq!(taints.len(), 2);
        assert!(taints.iter().all(|t| t.key == UNREACHABLE));
        assert!(taints
            .iter()
            .any(|t| t.effect == "NoExecute" && t.time_added.is_some()));
        // A controller that just started gives the node a full grace period.
        let p = assess(
            &n,
            Some(&l),
            ts("2026-01-01T00:00:51Z"),
            ts("2026-01-01T00:00:30Z"),
            GRACE,
        );
        assert_eq!(p, NodePlan::default());
    }

    #[test]
    fn taints_follow_the_ready_condition_and_other_taints_stay() {
        let user = json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]);
        let start = ts("2026-01-01T00:00:00Z");
        let now = ts("2026-01-01T00:00:05Z");
        let n = node("False", "2026-01-01T00:00:04Z", user.clone());
        let taints = assess(&n, None, now, start, GRACE).taints.unwrap();
        assert_eq!(taints.len(), 3);
        assert!(taints.iter().any(|t| t.key == "dedicated"));
        assert!(taints
            .iter()
            .any(|t| t.key == NOT_READY && t.effect == "NoExecute"));
        // Ready again: our taints go, the user's stays.
        let mut tainted = user.as_array().unwrap().clone();
        tainted.push(
            json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:01Z"}),
        );
        let n = node("True", "2026-01-01T00:00:04Z", json!(tainted));
        let p = assess(&n, None, now, start, GRACE);
        assert_eq!(p.taints.unwrap().len(), 1);
        assert_eq!(p.event.unwrap().0, "NodeReady");
    }

    #[test]
    fn pods_are_evicted_when_their_tolerations_run_out() {
        let taints: Vec<Taint> = serde_json::from_value(json!([
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}]))
        .unwrap();
        let now = ts("2026-01-01T00:00:10Z");
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}}))
                .unwrap()
        };
        assert_eq!(eviction_due(&pod(json!([])), &taints, now), Some(now));
        let five = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": 5}]),
        );
        assert_eq!(
            eviction_due(&five, &taints, now),
            Some(ts("2026-01-01T00:00:05Z"))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_due(&forever, &taints, now), None);
        let other = pod(json!([{"key": "x", "operator": "Exists"}]));
        assert_eq!(eviction_due(&other, &taints, now), Some(now));
    }

    #[test]
    fn only_ready_pods_are_marked_not_ready() {
        let now = ts("2026-01-01T00:00:10Z");
        let pod = |ready: &str| -> Pod {
            serde_json::from_value(
                json!({"spec": {"containers": []}, "status": {"conditions": [
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready}]}}),
            )
            .unwrap()
        };
        let patch = not_ready_patch(&pod("True"), now).unwrap();
        assert_eq!(
            patch,
            json!({"status": {"conditions": [{"type": "Ready", "status": "False",
                                              "lastTransitionTime": "2026-01-01T00:00:10Z"}]}})
        );
        assert_eq!(not_ready_patch(&pod("False"), now), None);
        let no_status: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        assert_eq!(not_ready_patch(&no_status, now), None);
    }
}
