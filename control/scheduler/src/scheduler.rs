//! The scheduling loop: pending pods, the nodes, filters and a score, binding through
//! `pods/binding`, an assume-cache and backoff.
//!
//! State comes from two watches (nodes, pods). A pod without a node whose `schedulerName` is
//! ours waits in the queue; each round takes the pods whose backoff has passed, runs the
//! profile's filters on every node (a node's requests count the pods bound to it and the pods
//! this scheduler has just bound — the assume-cache — so consecutive pods never overcommit a
//! node before the binds are observed), picks the feasible node with the best LeastAllocated
//! score, and binds. A pod that fits nowhere gets a `FailedScheduling` event and a
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
    nodes: BTreeMap<String, Node>,
    /// Pods on nodes, bound or assumed: uid → (node, requests).
    placed: HashMap<String, (String, Resources)>,
    /// Requests per node.
    usage: HashMap<String, Resources>,
    pending: BTreeMap<String, Pending>,
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

impl Cache {
    fn unplace(&mut self, uid: &str) {
        if let Some((node, r)) = self.placed.remove(uid) {
            if let Some(u) = self.usage.get_mut(&node) {
                *u -= r;
            }
        }
    }

    fn place(&mut self, uid: &str, node: &str, r: Resources) {
        self.unplace(uid);
        *self.usage.entry(node.to_string()).or_default() += r;
        self.placed.insert(uid.to_string(), (node.to_string(), r));
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
            return;
        }
        match node {
            Some(node) => {
                self.pending.remove(&uid);
                self.place(&uid, &node, requested(&pod));
            }
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
        }
    }

    /// Takes in a node; a changed cluster retries every pending pod at once.
    pub fn observe_node(&mut self, node: Node, present: bool) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        if present {
            self.nodes.insert(name, node);
        } else {
            self.nodes.remove(&name);
        }
        let now = Instant::now();
        for p in self.pending.values_mut() {
            p.not_before = now;
        }
    }

    fn infos(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|(name, n)| NodeInfo {
                node: n.clone(),
                requested: self.usage.get(name).copied().unwrap_or_default(),
            })
            .collect()
    }
}

/// Where `pod` should go among `nodes`: the feasible node with the best score, or the
/// FailedScheduling message (`0/N nodes are available: …`).
pub fn decide(
    filters: &[Box<dyn Filter>],
    pod: &Pod,
    nodes: &[NodeInfo],
) -> Result<String, String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(u64, u64, &NodeInfo)> = None;
    for info in nodes {
        let status = run_filters(filters, pod, info);
        if !status.is_success() {
            *reasons.entry(status.reason).or_default() += 1;
            continue;
        }
        let score = node_resources_fit::score(pod, info);
        // Ties go to the node with fewer pods, spreading pods out.
        let key = (score, u64::MAX - info.requested.pods);
        if best.is_none_or(|(s, p, _)| key > (s, p)) {
            best = Some((key.0, key.1, info));
        }
    }
    if let Some((_, _, info)) = best {
        return Ok(info.node.metadata.name.clone().unwrap_or_default());
    }
    let detail = reasons
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(if nodes.is_empty() {
        "0/0 nodes are available: no nodes registered.".to_string()
    } else {
        format!("0/{} nodes are available: {detail}.", nodes.len())
    })
}

/// Runs the scheduler (the leader's work) until its watches end or a bind is fenced.
pub async fn run(client: kube::Client) {
    let filters = plugins::registry()
        .filters(DEFAULT_FILTERS)
        .expect("the default profile names built-in plugins");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let mut node_events = watcher(nodes, watcher::Config::default()).boxed();
    let mut pod_events = watcher(pods, watcher::Config::default()).boxed();
    let mut cache = Cache::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
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
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!(error = %e, "scheduler: pod watch"),
                None => return,
            },
            _ = tick.tick() => {
                if !schedule_due(&client, &filters, &mut cache).await {
                    return;
                }
            }
        }
    }
}

/// One round over the pods whose backoff has passed; false when this scheduler was fenced.
async fn schedule_due(
    client: &kube::Client,
    filters: &[Box<dyn Filter>],
    cache: &mut Cache,
) -> bool {
    let now = Instant::now();
    let due: Vec<String> = cache
        .pending
        .iter()
        .filter(|(_, p)| p.not_before <= now)
        .map(|(uid, _)| uid.clone())
        .collect();
    if due.is_empty() {
        return true;
    }
    let mut infos = cache.infos();
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
        match decide(filters, &pod, &infos) {
            Ok(node) => match bind(client, &ns, &name, &uid, &node).await {
                Ok(()) => {
                    let r = requested(&pod);
                    cache.place(&uid, &node, r);
                    cache.pending.remove(&uid);
                    if let Some(info) = infos
                        .iter_mut()
                        .find(|i| i.node.metadata.name.as_deref() == Some(&node))
                    {
                        info.requested += r;
                    }
                    tracing::debug!(pod = %name, %node, "scheduler: bound");
                }
                Err(kube::Error::Api(s)) if s.code == 409 && s.message.starts_with("fenced") => {
                    tracing::warn!("scheduler: a bind was fenced; this master no longer leads");
                    return false;
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    // Gone, or bound by someone else: the watch will say.
                    cache.pending.remove(&uid);
                }
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "scheduler: bind failed; retrying");
                    backoff(cache, &uid);
                }
            },
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
    true
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
    let now = Timestamp::now().to_string();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
                           "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version},
        "reason": "FailedScheduling", "message": message, "type": "Warning",
        "source": {"component": SCHEDULER_NAME},
        "reportingComponent": SCHEDULER_NAME, "reportingInstance": SCHEDULER_NAME,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    if let Ok(ev) = serde_json::from_value(event) {
        if let Err(e) = events.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, "scheduler: recording FailedScheduling");
        }
    }
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
            match decide(&filters, &p, &cache.infos()) {
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
            decide(&filters, &p, &cache.infos()).unwrap_err(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // The pod on small goes away: room again.
        cache.forget_pod(&pod("b", "1", Some("small")));
        assert_eq!(decide(&filters, &p, &cache.infos()).unwrap(), "small");
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
