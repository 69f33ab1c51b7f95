//! The scheduling loop: pending pods, the nodes, filters and a score, binding through
//! `pods/binding`, an assume-cache and backoff.
//!
//! State comes from two watches (nodes, pods). A pod without a node whose `schedulerName` is
//! ours waits in the queue; each round takes the pods whose backoff has passed, runs the
//! profile's filters on the nodes (a node's requests count the pods bound to it and the pods
//! this scheduler has just bound — the assume-cache — so consecutive pods never overcommit a
//! node before the binds are observed), picks the feasible node with the best LeastAllocated
//! score, assumes the pod there and binds it in the background (up to 256 binds in flight;
//! a failed bind unassumes the pod and requeues it). As in Kubernetes, a search in a large
//! cluster stops after enough feasible nodes ([`nodes_to_find`]: 500 of 5,000) and the next
//! search starts where it stopped, so pods still spread over every node. Successful binds get
//! a `Scheduled` event, recorded beside the binds. A pod that fits nowhere gets a `FailedScheduling` event and a
//! `PodScheduled=False` condition naming the reasons per node, as `kubectl describe pod`
//! shows on Kubernetes, and waits with exponential backoff (1 s doubling to 10 s) — or until
//! a node changes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::time::Instant;

use crate::framework::{run_filters, Filter, NodeInfo};
use crate::plugins::{self, node_resources_fit};
use crate::resources::{requested, Resources};

/// The scheduler name pods choose us by (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// The filters of the default profile, in order.
pub const DEFAULT_FILTERS: &[&str] = &[
    "NodeUnschedulable",
    "NodeName",
    "TaintToleration",
    "NodeAffinity",
    "NodeResourcesFit",
];

const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Pending {
    pod: Pod,
    not_before: Instant,
    attempts: u32,
    /// The last FailedScheduling message sent, so that retries do not repeat it.
    reported: Option<String>,
}

/// What the scheduler knows.
#[derive(Debug, Default)]
pub struct Cache {
    /// The nodes with their requests, in a vector the rounds scan without copying.
    nodes: Vec<NodeInfo>,
    /// Node name → index in `nodes`.
    index: HashMap<String, usize>,
    /// Pods on nodes, bound or assumed: uid → (node, requests).
    placed: HashMap<String, (String, Resources)>,
    /// Requests per node name (also for nodes not seen yet).
    usage: HashMap<String, Resources>,
    pending: BTreeMap<String, Pending>,
    /// Pods whose bind is in flight (uid → pod): assumed on their node, not pending.
    binding: HashMap<String, Pod>,
    /// Where the next round starts scanning nodes (rotates, as Kubernetes does).
    next_start: usize,
}

fn ours(pod: &Pod) -> bool {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(SCHEDULER_NAME);
    name == SCHEDULER_NAME || name.is_empty()
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// How many feasible nodes a pod's search stops at, out of `all` (Kubernetes' adaptive
/// percentageOfNodesToScore: every node below 100; else 50% minus 1% per 125 nodes, at least
/// 5% and at least 100 nodes).
pub fn nodes_to_find(all: usize) -> usize {
    if all < 100 {
        return all;
    }
    let percent = 50usize.saturating_sub(all / 125).max(5);
    (all * percent / 100).max(100)
}

impl Cache {
    fn set_usage(&mut self, node: &str) {
        let used = self.usage.get(node).copied().unwrap_or_default();
        if let Some(&i) = self.index.get(node) {
            self.nodes[i].requested = used;
        }
    }

    fn unplace(&mut self, uid: &str) {
        if let Some((node, r)) = self.placed.remove(uid) {
            if let Some(u) = self.usage.get_mut(&node) {
                *u -= r;
            }
            self.set_usage(&node);
        }
    }

    fn place(&mut self, uid: &str, node: &str, r: Resources) {
        self.unplace(uid);
        *self.usage.entry(node.to_string()).or_default() += r;
        self.placed.insert(uid.to_string(), (node.to_string(), r));
        self.set_usage(node);
    }

    /// Takes in a pod as the watch shows it.
    pub fn observe_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if finished(&pod) {
            self.unplace(&uid);
            self.pending.remove(&uid);
            self.binding.remove(&uid);
            return;
        }
        match node {
            Some(node) => {
                self.pending.remove(&uid);
                self.binding.remove(&uid);
                self.place(&uid, &node, requested(&pod));
            }
            // Assumed and being bound: an older version of the pod changes nothing.
            None if self.binding.contains_key(&uid) => {}
            None if ours(&pod) && pod.metadata.deletion_timestamp.is_none() => {
                match self.pending.get_mut(&uid) {
                    Some(p) => p.pod = pod,
                    None => {
                        self.pending.insert(
                            uid,
                            Pending {
                                pod,
                                not_before: Instant::now(),
                                attempts: 0,
                                reported: None,
                            },
                        );
                    }
                }
            }
            None => {
                self.pending.remove(&uid);
            }
        }
    }

    /// Forgets a deleted pod.
    pub fn forget_pod(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            self.unplace(uid);
            self.pending.remove(uid);
            self.binding.remove(uid);
        }
    }

    /// Takes in a node; a changed cluster retries every pending pod at once.
    pub fn observe_node(&mut self, node: Node, present: bool) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        if present {
            let mut info = NodeInfo::new(node);
            info.requested = self.usage.get(&name).copied().unwrap_or_default();
            match self.index.get(&name) {
                Some(&i) => self.nodes[i] = info,
                None => {
                    self.index.insert(name, self.nodes.len());
                    self.nodes.push(info);
                }
            }
        } else if let Some(i) = self.index.remove(&name) {
            self.nodes.swap_remove(i);
            if let Some(moved) = self.nodes.get(i) {
                self.index.insert(moved.name().to_string(), i);
            }
        }
        let now = Instant::now();
        for p in self.pending.values_mut() {
            p.not_before = now;
        }
    }

    /// The bind of `uid` failed: back to the queue (with backoff), unassumed.
    fn bind_failed(&mut self, uid: &str) {
        self.unplace(uid);
        if let Some(pod) = self.binding.remove(uid) {
            self.pending.insert(
                uid.to_string(),
                Pending {
                    pod,
                    not_before: Instant::now(),
                    attempts: 0,
                    reported: None,
                },
            );
            backoff(self, uid);
        }
    }
}

/// Where `pod` should go among `nodes`, scanning from `start` (wrapping) and stopping after
/// `to_find` feasible nodes: the feasible node with the best score, or the FailedScheduling
/// message (`0/N nodes are available: …`). Also returns how many nodes were scanned.
pub fn decide(
    filters: &[Box<dyn Filter>],
    pod: &Pod,
    nodes: &[NodeInfo],
    start: usize,
    to_find: usize,
) -> (Result<String, String>, usize) {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(u64, u64, &NodeInfo)> = None;
    let mut feasible = 0;
    let mut scanned = 0;
    let n = nodes.len();
    for k in 0..n {
        if feasible >= to_find.max(1) {
            break;
        }
        let info = &nodes[(start + k) % n];
        scanned += 1;
        let status = run_filters(filters, pod, info);
        if !status.is_success() {
            *reasons.entry(status.reason).or_default() += 1;
            continue;
        }
        feasible += 1;
        let score = node_resources_fit::score(pod, info);
        // Ties go to the node with fewer pods, spreading pods out.
        let key = (score, u64::MAX - info.requested.pods);
        if best.is_none_or(|(s, p, _)| key > (s, p)) {
            best = Some((key.0, key.1, info));
        }
    }
    if let Some((_, _, info)) = best {
        return (Ok(info.name().to_string()), scanned);
    }
    let detail = reasons
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = if nodes.is_empty() {
        "0/0 nodes are available: no nodes registered.".to_string()
    } else {
        format!("0/{} nodes are available: {detail}.", nodes.len())
    };
    (Err(message), scanned)
}

/// How many binds may be in flight at once.
const MAX_BINDS_IN_FLIGHT: usize = 256;

/// The outcome of one bind: (pod uid, result).
type BindResult = (String, Result<(), kube::Error>);

/// Runs the scheduler (the leader's work) until its watches end or a bind is fenced.
pub async fn run(client: kube::Client) {
    let filters = plugins::registry()
        .filters(DEFAULT_FILTERS)
        .expect("the default profile names built-in plugins");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    // One list each (served from the API server's watch cache) rather than pages of 500.
    let config = watcher::Config::default().page_size(1_000_000);
    let mut node_events = watcher(nodes, config.clone()).boxed();
    let mut pod_events = watcher(pods, config).boxed();
    let mut cache = Cache::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut binds: tokio::task::JoinSet<BindResult> = tokio::task::JoinSet::new();
    // Scheduled events are recorded beside the binds, never holding them up (as Kubernetes'
    // event broadcaster, they are dropped when too many are waiting).
    let (events, mut scheduled) = tokio::sync::mpsc::channel::<(Pod, String)>(4096);
    let recorder = {
        let client = client.clone();
        async move {
            while let Some((pod, node)) = scheduled.recv().await {
                let about = flotilla_controllers::events::reference("v1", "Pod", &pod.metadata);
                let ns = pod.metadata.namespace.as_deref().unwrap_or("");
                let name = pod.metadata.name.as_deref().unwrap_or("");
                flotilla_controllers::events::record(
                    &client,
                    SCHEDULER_NAME,
                    &about,
                    flotilla_controllers::events::Kind::Normal,
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node}"),
                )
                .await;
            }
        }
    };
    tokio::pin!(recorder);
    loop {
        tokio::select! {
            e = node_events.next() => match e {
                Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => cache.observe_node(n, true),
                Some(Ok(watcher::Event::Delete(n))) => cache.observe_node(n, false),
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "scheduler: node watch"),
                None => return,
            },
            e = pod_events.next() => match e {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => cache.observe_pod(p),
                Some(Ok(watcher::Event::Delete(p))) => cache.forget_pod(&p),
                Some(Ok(watcher::Event::InitDone)) => tracing::info!(
                    nodes = cache.nodes.len(),
                    pending = cache.pending.len(),
                    "scheduler: pods listed"
                ),
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "scheduler: pod watch"),
                None => return,
            },
            Some(done) = binds.join_next(), if !binds.is_empty() => {
                let Ok((uid, result)) = done else { continue };
                match result {
                    Ok(()) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 && s.message.starts_with("fenced") => {
                        tracing::warn!("scheduler: a bind was fenced; this master no longer leads");
                        return;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                        // Gone, or bound by someone else: the watch will say.
                        cache.binding.remove(&uid);
                    }
                    Err(e) => {
                        tracing::warn!(pod = %uid, error = %e, "scheduler: bind failed; retrying");
                        cache.bind_failed(&uid);
                    }
                }
            },
            _ = &mut recorder => {}
            _ = tick.tick() => schedule_due(&client, &filters, &mut cache, &mut binds, &events).await,
        }
    }
}

/// One round over the pods whose backoff has passed: each is decided in turn (and assumed
/// on its node at once), and its bind starts in the background.
async fn schedule_due(
    client: &kube::Client,
    filters: &[Box<dyn Filter>],
    cache: &mut Cache,
    binds: &mut tokio::task::JoinSet<BindResult>,
    events: &tokio::sync::mpsc::Sender<(Pod, String)>,
) {
    let now = Instant::now();
    let room = MAX_BINDS_IN_FLIGHT.saturating_sub(binds.len());
    let due: Vec<String> = cache
        .pending
        .iter()
        .filter(|(_, p)| p.not_before <= now)
        .map(|(uid, _)| uid.clone())
        .take(room)
        .collect();
    let to_find = nodes_to_find(cache.nodes.len());
    for uid in due {
        let Some(pending) = cache.pending.get(&uid) else {
            continue;
        };
        let pod = pending.pod.clone();
        let (Some(ns), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone())
        else {
            cache.pending.remove(&uid);
            continue;
        };
        let start = cache.next_start;
        let (decision, scanned) = decide(filters, &pod, &cache.nodes, start, to_find);
        if !cache.nodes.is_empty() {
            cache.next_start = (start + scanned) % cache.nodes.len();
        }
        match decision {
            Ok(node) => {
                cache.place(&uid, &node, requested(&pod));
                cache.pending.remove(&uid);
                cache.binding.insert(uid.clone(), pod.clone());
                let client = client.clone();
                let events = events.clone();
                binds.spawn(async move {
                    let r = bind(&client, &ns, &name, &uid, &node).await;
                    if r.is_ok() {
                        let _ = events.try_send((pod, node));
                    }
                    (uid, r)
                });
            }
            Err(message) => {
                let repeat = cache.pending.get(&uid).and_then(|p| p.reported.as_deref())
                    == Some(message.as_str());
                if !repeat {
                    report_unschedulable(client, &pod, &ns, &name, &message).await;
                    if let Some(p) = cache.pending.get_mut(&uid) {
                        p.reported = Some(message);
                    }
                }
                backoff(cache, &uid);
            }
        }
    }
}

fn backoff(cache: &mut Cache, uid: &str) {
    if let Some(p) = cache.pending.get_mut(uid) {
        p.attempts += 1;
        let delay = Duration::from_secs(1)
            .checked_mul(1 << p.attempts.min(4))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF);
        p.not_before = Instant::now() + delay;
    }
}

async fn bind(
    client: &kube::Client,
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

/// A FailedScheduling event and the PodScheduled=False condition, as Kubernetes reports them.
async fn report_unschedulable(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    name: &str,
    message: &str,
) {
    let about = flotilla_controllers::events::reference("v1", "Pod", &pod.metadata);
    flotilla_controllers::events::record(
        client,
        SCHEDULER_NAME,
        &about,
        flotilla_controllers::events::Kind::Warning,
        "FailedScheduling",
        message,
    )
    .await;
    let now = Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": message, "lastProbeTime": null,
        "lastTransitionTime": now}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Err(e) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::debug!(error = %e, "scheduler: setting PodScheduled=False");
    }
}

/// Runs the scheduler of master `identity` under leader election (`kube-system/kube-scheduler`)
/// until `shutdown` completes; see `flotilla_controllers::leader::run_elected` for `connect`.
pub async fn run_elected(
    connect: impl Fn(Option<&str>) -> Result<kube::Client, kube::Error>,
    identity: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), kube::Error> {
    use flotilla_controllers::leader;
    leader::run_elected(
        LEASE,
        connect,
        identity,
        shutdown,
        |lead: leader::Leadership| async move { run(lead.client).await },
    )
    .await
}

/// The Lease the schedulers campaign for.
pub const LEASE: &str = "kube-scheduler";

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10"}}}))
        .unwrap()
    }

    fn pod(uid: &str, cpu: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": uid, "namespace": "d", "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "a",
                "resources": {"requests": {"cpu": cpu}}}]}}),
        )
        .unwrap()
    }

    #[test]
    fn the_assume_cache_keeps_consecutive_pods_from_overcommitting_a_node() {
        let filters = plugins::registry().filters(DEFAULT_FILTERS).unwrap();
        let mut cache = Cache::default();
        cache.observe_node(node("small", "1"), true);
        cache.observe_node(node("big", "2"), true);
        // Three pods of 1 CPU: big (emptier), then small (a tie, fewer pods), then big again.
        let mut placed = Vec::new();
        for uid in ["a", "b", "c"] {
            let p = pod(uid, "1", None);
            cache.observe_pod(p.clone());
            match decide(&filters, &p, &cache.nodes, 0, usize::MAX).0 {
                Ok(n) => {
                    cache.place(uid, &n, requested(&p));
                    cache.pending.remove(uid);
                    placed.push(n);
                }
                Err(m) => placed.push(m),
            }
        }
        assert_eq!(placed[0], "big");
        assert_eq!(placed[1], "small");
        assert_eq!(placed[2], "big");
        let p = pod("d", "1", None);
        assert_eq!(
            decide(&filters, &p, &cache.nodes, 0, usize::MAX)
                .0
                .unwrap_err(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // The pod on small goes away: room again.
        cache.forget_pod(&pod("b", "1", Some("small")));
        assert_eq!(
            decide(&filters, &p, &cache.nodes, 0, usize::MAX).0.unwrap(),
            "small"
        );
    }

    #[test]
    fn large_clusters_are_sampled_as_kubernetes_does_and_scans_rotate() {
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(100_000), 5000);
        let filters = plugins::registry().filters(DEFAULT_FILTERS).unwrap();
        let mut cache = Cache::default();
        for i in 0..10 {
            cache.observe_node(node(&format!("n{i}"), "4"), true);
        }
        let p = pod("x", "1", None);
        // Stopping after 3 feasible nodes from index 8: n8, n9, n0 scanned.
        let (chosen, scanned) = decide(&filters, &p, &cache.nodes, 8, 3);
        assert_eq!(scanned, 3);
        assert!(["n8", "n9", "n0"].contains(&chosen.unwrap().as_str()));
        // A node that goes keeps the index consistent.
        cache.observe_node(node("n0", "4"), false);
        assert_eq!(cache.nodes.len(), 9);
        for (name, &i) in &cache.index {
            assert_eq!(cache.nodes[i].name(), name);
        }
    }

    #[test]
    fn bound_and_finished_pods_leave_the_queue() {
        let mut cache = Cache::default();
        cache.observe_pod(pod("a", "1", None));
        assert_eq!(cache.pending.len(), 1);
        cache.observe_pod(pod("a", "1", Some("n")));
        assert!(cache.pending.is_empty());
        assert_eq!(cache.usage["n"].milli_cpu, 1000);
        let mut done = pod("a", "1", Some("n"));
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        cache.observe_pod(done);
        assert_eq!(cache.usage["n"].milli_cpu, 0);
        let mut other = pod("b", "1", None);
        other.spec.as_mut().unwrap().scheduler_name = Some("someone-else".into());
        cache.observe_pod(other);
        assert!(
            cache.pending.is_empty(),
            "pods of other schedulers are not ours"
        );
    }
}
