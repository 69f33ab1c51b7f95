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
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::time::Instant;

use crate::framework::{
    run_filters, Code, CycleState, Framework, NodeInfo, Nomination, Permit, Snapshot, Status,
};
use crate::plugins::default_preemption::priority;
use crate::plugins::inter_pod_affinity::has_required_anti_affinity;
use crate::plugins::{self};
use crate::resources::{requested, Resources};

/// The scheduler name pods choose us by (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";

const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Pending {
    pod: Pod,
    /// The pod's priority (read once: the queue is ordered by it every round).
    priority: i32,
    not_before: Instant,
    attempts: u32,
    /// The last FailedScheduling message sent, so that retries do not repeat it.
    reported: Option<String>,
}

impl Pending {
    /// A pod due now.
    fn new(pod: Pod) -> Pending {
        Pending {
            priority: priority(&pod),
            pod,
            not_before: Instant::now(),
            attempts: 0,
            reported: None,
        }
    }
}

/// What is placed on one node (also for nodes not seen yet).
#[derive(Debug, Default)]
struct Usage {
    requested: Resources,
    pods: Vec<Arc<Pod>>,
    required_anti_affinity: usize,
}

/// What the scheduler knows.
#[derive(Debug, Default)]
pub struct Cache {
    /// The nodes with their requests and pods, in a vector the rounds scan without copying.
    nodes: Vec<NodeInfo>,
    /// Node name → index in `nodes`.
    index: HashMap<String, usize>,
    /// Pods on nodes, bound or assumed: uid → node.
    placed: HashMap<String, String>,
    /// What is placed per node name.
    usage: HashMap<String, Usage>,
    /// How many placed pods have required anti-affinity terms.
    required_anti_affinity: usize,
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
        let Some(&i) = self.index.get(node) else {
            return;
        };
        let info = &mut self.nodes[i];
        match self.usage.get(node) {
            Some(u) => {
                info.requested = u.requested;
                info.pods.clone_from(&u.pods);
                info.required_anti_affinity = u.required_anti_affinity;
            }
            None => {
                info.requested = Resources::default();
                info.pods.clear();
                info.required_anti_affinity = 0;
            }
        }
    }

    fn unplace(&mut self, uid: &str) {
        let Some(node) = self.placed.remove(uid) else {
            return;
        };
        if let Some(u) = self.usage.get_mut(&node) {
            if let Some(i) = u
                .pods
                .iter()
                .position(|p| p.metadata.uid.as_deref() == Some(uid))
            {
                let gone = u.pods.swap_remove(i);
                u.requested -= requested(&gone);
                if has_required_anti_affinity(&gone) {
                    u.required_anti_affinity -= 1;
                    self.required_anti_affinity -= 1;
                }
            }
        }
        self.set_usage(&node);
    }

    fn place(&mut self, uid: &str, node: &str, pod: Arc<Pod>) {
        self.unplace(uid);
        let u = self.usage.entry(node.to_string()).or_default();
        u.requested += requested(&pod);
        if has_required_anti_affinity(&pod) {
            u.required_anti_affinity += 1;
            self.required_anti_affinity += 1;
        }
        u.pods.push(pod);
        self.placed.insert(uid.to_string(), node.to_string());
        self.set_usage(node);
    }

    /// What a cycle sees.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            nodes: &self.nodes,
            any_required_anti_affinity: self.required_anti_affinity > 0,
        }
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
                self.place(&uid, &node, Arc::new(pod));
            }
            // Assumed and being bound: an older version of the pod changes nothing.
            None if self.binding.contains_key(&uid) => {}
            None if ours(&pod) && pod.metadata.deletion_timestamp.is_none() => {
                match self.pending.get_mut(&uid) {
                    Some(p) => {
                        // Priority is immutable on a pod; read it again all the same.
                        p.priority = priority(&pod);
                        p.pod = pod;
                    }
                    None => {
                        self.pending.insert(uid, Pending::new(pod));
                    }
                }
            }
            None => {
                self.pending.remove(&uid);
            }
        }
    }

    /// Forgets a deleted pod; room may have come free, so every pending pod is retried.
    pub fn forget_pod(&mut self, pod: &Pod) {
        if let Some(uid) = pod.metadata.uid.as_deref() {
            let was_placed = self.placed.contains_key(uid);
            self.unplace(uid);
            self.pending.remove(uid);
            self.binding.remove(uid);
            if was_placed {
                self.retry_all();
            }
        }
    }

    fn retry_all(&mut self) {
        let now = Instant::now();
        for p in self.pending.values_mut() {
            p.not_before = now;
        }
    }

    /// Takes in a node; a changed cluster retries every pending pod at once.
    pub fn observe_node(&mut self, node: Node, present: bool) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        if present {
            let info = NodeInfo::new(node);
            match self.index.get(&name) {
                Some(&i) => self.nodes[i] = info,
                None => {
                    self.index.insert(name.clone(), self.nodes.len());
                    self.nodes.push(info);
                }
            }
            self.set_usage(&name);
        } else if let Some(i) = self.index.remove(&name) {
            self.nodes.swap_remove(i);
            if let Some(moved) = self.nodes.get(i) {
                self.index.insert(moved.name().to_string(), i);
            }
        }
        self.retry_all();
    }

    /// The bind of `uid` failed: back to the queue (with backoff), unassumed.
    fn bind_failed(&mut self, uid: &str) {
        self.unplace(uid);
        if let Some(pod) = self.binding.remove(uid) {
            self.pending.insert(uid.to_string(), Pending::new(pod));
            backoff(self, uid);
        }
    }

    /// This master stopped leading: it forgets every pod (binds it started may or may not
    /// have happened; the pod watch of its next term lists them again) and keeps the nodes.
    fn forget_pods(&mut self) {
        self.placed.clear();
        self.usage.clear();
        self.required_anti_affinity = 0;
        self.pending.clear();
        self.binding.clear();
        let names: Vec<String> = self.index.keys().cloned().collect();
        for n in names {
            self.set_usage(&n);
        }
    }

    /// Whether `pod` already preempted and its victims are still terminating on its
    /// nominated node (then it waits rather than preempting again).
    fn awaiting_victims(&self, pod: &Pod) -> bool {
        let Some(node) = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
        else {
            return false;
        };
        let mine = priority(pod);
        self.usage.get(node).is_some_and(|u| {
            u.pods
                .iter()
                .any(|q| q.metadata.deletion_timestamp.is_some() && priority(q) < mine)
        })
    }
}

/// The outcome of one pod's cycle.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The best feasible node.
    Fits(String),
    /// No node fits: the FailedScheduling message (`0/N nodes are available: …`) and, if
    /// preemption found room, where and at whose expense.
    Fails(String, Option<Nomination>),
}

/// Runs `framework`'s cycle for `pod` over the snapshot's nodes, scanning from `start`
/// (wrapping) and stopping after `to_find` feasible nodes. Returns the outcome and how many
/// nodes were scanned. PostFilter (preemption) runs only if `may_preempt`.
pub fn decide(
    framework: &Framework,
    pod: &Pod,
    snapshot: &Snapshot,
    start: usize,
    to_find: usize,
    may_preempt: bool,
) -> (Outcome, usize) {
    let nodes = snapshot.nodes;
    let mut state = CycleState::default();
    state.pod_requests = Some(requested(pod));
    let n = nodes.len();
    let pre = framework.run_pre_filters(&mut state, pod, snapshot);
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut rejected: Vec<(usize, Status)> = Vec::new();
    let mut scanned = 0;
    let filters = match &pre {
        Ok(skipped) => framework.active_filters(skipped),
        Err(_) => framework.filters.clone(),
    };
    match &pre {
        Ok(_) => {
            for k in 0..n {
                if feasible.len() >= to_find.max(1) {
                    break;
                }
                let i = (start + k) % n;
                scanned += 1;
                let status = run_filters(&filters, &state, pod, &nodes[i]);
                if status.is_success() {
                    feasible.push(&nodes[i]);
                } else {
                    rejected.push((i, status));
                }
            }
        }
        Err(status) => rejected = (0..n).map(|i| (i, status.clone())).collect(),
    }
    if !feasible.is_empty() {
        let skipped = framework.run_pre_scores(&mut state, pod, snapshot, &feasible);
        let totals = framework.run_scores(&state, pod, &feasible, &skipped);
        // The best total; ties go to the node with fewer pods, then the first scanned.
        let best = feasible
            .iter()
            .zip(&totals)
            .enumerate()
            .max_by_key(|(k, (info, total))| {
                (
                    **total,
                    u64::MAX - info.requested.pods,
                    std::cmp::Reverse(*k),
                )
            })
            .map(|(_, (info, _))| info.name().to_string())
            .unwrap_or_default();
        return (Outcome::Fits(best), scanned);
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (_, s) in &rejected {
        *reasons.entry(s.reason.clone()).or_default() += 1;
    }
    let detail = reasons
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut message = if nodes.is_empty() {
        "0/0 nodes are available: no nodes registered.".to_string()
    } else {
        format!("0/{n} nodes are available: {detail}.")
    };
    let mut nomination = None;
    let resolvable = pre
        .as_ref()
        .err()
        .is_none_or(|s| s.code != Code::UnschedulableAndUnresolvable);
    if may_preempt && resolvable && !framework.post_filters.is_empty() {
        let statuses: HashMap<String, Status> = rejected
            .into_iter()
            .map(|(i, s)| (nodes[i].name().to_string(), s))
            .collect();
        nomination = framework
            .post_filters
            .iter()
            .find_map(|p| p.post_filter(&state, pod, snapshot, &statuses, &filters));
        if nomination.is_none() {
            message.push_str(&format!(
                " preemption: 0/{n} nodes are available: {n} No preemption victims found for incoming pod."
            ));
        }
    }
    (Outcome::Fails(message, nomination), scanned)
}

/// How many binds may be in flight at once.
const MAX_BINDS_IN_FLIGHT: usize = 256;

/// The outcome of one bind: (pod uid, result).
type BindResult = (String, Result<(), kube::Error>);

/// A scheduled pod's event to record: the (fenced) client, the pod, its node.
type ScheduledEvent = (kube::Client, Pod, String);

/// Runs the scheduler until its watches end. The node watch runs on every master, so that a
/// master that comes to lead need not first list every node; the pod watch — pods change
/// far more often, and decoding every change on standby masters cost the API's create
/// latency more than it saved — runs while this master leads, that is while `leading` holds
/// the leader's client (whose writes carry the fencing token). A fenced bind — another master
/// leads now — is reported on `fenced`, and scheduling stops until leadership comes again.
pub async fn run(
    client: kube::Client,
    mut leading: tokio::sync::watch::Receiver<Option<kube::Client>>,
    fenced: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let framework = Framework::new(&plugins::registry(), &plugins::default_profile())
        .expect("the default profile names built-in plugins");
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    // One list each (served from the API server's watch cache) rather than pages of 500.
    let config = watcher::Config::default().page_size(1_000_000);
    let mut node_events = watcher(nodes, config.clone()).boxed();
    let pod_watch = move || watcher(pods.clone(), config.clone()).boxed();
    let mut cache = Cache::default();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut binds: tokio::task::JoinSet<BindResult> = tokio::task::JoinSet::new();
    let mut leader: Option<kube::Client> = leading.borrow_and_update().clone();
    let mut pod_events = leader.as_ref().map(|_| pod_watch());
    // Whether the pod watch's initial list is complete: until then the pods bound to the
    // nodes are not all known, and placing one could overcommit a node.
    let mut synced = false;
    // Scheduled events are recorded beside the binds, never holding them up (as Kubernetes'
    // event broadcaster, they are dropped when too many are waiting).
    let (events, mut scheduled) = tokio::sync::mpsc::channel::<ScheduledEvent>(4096);
    let recorder = async move {
        while let Some((client, pod, node)) = scheduled.recv().await {
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
            e = async {
                match pod_events.as_mut() {
                    Some(events) => events.next().await,
                    None => std::future::pending().await,
                }
            } => match e {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => cache.observe_pod(p),
                Some(Ok(watcher::Event::Delete(p))) => cache.forget_pod(&p),
                Some(Ok(watcher::Event::Init)) => synced = false,
                Some(Ok(watcher::Event::InitDone)) => {
                    synced = true;
                    tracing::info!(
                        nodes = cache.nodes.len(),
                        pending = cache.pending.len(),
                        "scheduler: pods listed"
                    );
                }
                Some(Err(e)) => tracing::debug!(error = %e, "scheduler: pod watch"),
                None => return,
            },
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
                leader = leading.borrow_and_update().clone();
                if leader.is_none() {
                    binds.abort_all();
                    cache.forget_pods();
                    pod_events = None;
                    synced = false;
                } else if pod_events.is_none() {
                    pod_events = Some(pod_watch());
                    synced = false;
                }
            },
            Some(done) = binds.join_next(), if !binds.is_empty() => {
                let Ok((uid, result)) = done else { continue };
                match result {
                    Ok(()) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 && s.message.starts_with("fenced") => {
                        tracing::warn!("scheduler: a bind was fenced; this master no longer leads");
                        leader = None;
                        binds.abort_all();
                        cache.forget_pods();
                        pod_events = None;
                        synced = false;
                        let _ = fenced.send(());
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
            _ = tick.tick() => if let (Some(client), true) = (&leader, synced) {
                schedule_due(client, &framework, &mut cache, &mut binds, &events).await;
            },
        }
    }
}

/// One round over the pods whose backoff has passed, most important first: each is decided
/// in turn (and assumed on its node at once — the Reserve step), Permit plugins have their
/// say, and its bind starts in the background. A pod that fits nowhere may preempt.
async fn schedule_due(
    client: &kube::Client,
    framework: &Framework,
    cache: &mut Cache,
    binds: &mut tokio::task::JoinSet<BindResult>,
    events: &tokio::sync::mpsc::Sender<ScheduledEvent>,
) {
    let now = Instant::now();
    let room = MAX_BINDS_IN_FLIGHT.saturating_sub(binds.len());
    if room == 0 {
        // Every bind slot is taken: looking at the queue now would only be thrown away (with
        // 10,000 pods pending, that look cost more than the scheduling itself).
        return;
    }
    let due = most_important_due(&cache.pending, now, room);
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
        let may_preempt = !cache.awaiting_victims(&pod);
        let (outcome, scanned) = decide(
            framework,
            &pod,
            &cache.snapshot(),
            start,
            to_find,
            may_preempt,
        );
        if !cache.nodes.is_empty() {
            cache.next_start = (start + scanned) % cache.nodes.len();
        }
        match outcome {
            Outcome::Fits(node) => {
                let state = CycleState::default();
                // Reserve: the assume-cache, then the profile's Reserve plugins.
                let shared = Arc::new(pod.clone());
                cache.place(&uid, &node, shared.clone());
                let refused = framework
                    .reserves
                    .iter()
                    .map(|r| r.reserve(&state, &pod, &node))
                    .find(|s| !s.is_success())
                    .map(|s| s.reason)
                    .or_else(|| {
                        framework
                            .permits
                            .iter()
                            .find_map(|p| match p.permit(&state, &pod, &node) {
                                Permit::Allow => None,
                                Permit::Deny(reason) => Some(reason),
                                Permit::Wait(after) => {
                                    Some(format!("waiting {after:?} for permission"))
                                }
                            })
                    });
                if let Some(reason) = refused {
                    for r in &framework.reserves {
                        r.unreserve(&state, &pod, &node);
                    }
                    cache.unplace(&uid);
                    tracing::debug!(pod = %name, %reason, "scheduler: not bound now");
                    backoff(cache, &uid);
                    continue;
                }
                cache.pending.remove(&uid);
                cache.binding.insert(uid.clone(), pod.clone());
                let Some(binder) = framework.binder.clone() else {
                    tracing::warn!("scheduler: the profile has no Bind plugin");
                    continue;
                };
                let client = client.clone();
                let events = events.clone();
                binds.spawn(async move {
                    let r = binder.bind(client.clone(), shared, node.clone()).await;
                    if r.is_ok() {
                        let _ = events.try_send((client, pod, node));
                    }
                    (uid, r)
                });
            }
            Outcome::Fails(message, nomination) => {
                let repeat = cache.pending.get(&uid).and_then(|p| p.reported.as_deref())
                    == Some(message.as_str());
                if !repeat {
                    report_unschedulable(client, &pod, &ns, &name, &message).await;
                    if let Some(p) = cache.pending.get_mut(&uid) {
                        p.reported = Some(message);
                    }
                }
                if let Some(n) = nomination {
                    preempt(client, &pod, &ns, &name, n).await;
                }
                backoff(cache, &uid);
            }
        }
    }
}

/// The uids of at most `room` pods whose backoff has passed, higher priority first (ties in
/// no particular order). Compares priorities only, selects before it sorts, and clones only
/// what it returns: the queue can hold thousands of pods and this runs every round.
fn most_important_due(
    pending: &BTreeMap<String, Pending>,
    now: Instant,
    room: usize,
) -> Vec<String> {
    let mut due: Vec<(std::cmp::Reverse<i32>, &String)> = pending
        .iter()
        .filter(|(_, p)| p.not_before <= now)
        .map(|(uid, p)| (std::cmp::Reverse(p.priority), uid))
        .collect();
    if due.len() > room {
        due.select_nth_unstable_by_key(room, |(prio, _)| *prio);
        due.truncate(room);
    }
    due.sort_unstable_by_key(|(prio, _)| *prio);
    due.into_iter().map(|(_, uid)| uid.clone()).collect()
}

/// Carries out a preemption: `pod` is nominated to the node (`status.nominatedNodeName`) and
/// the victims are deleted (gracefully), each with a `Preempted` event.
async fn preempt(client: &kube::Client, pod: &Pod, ns: &str, name: &str, n: Nomination) {
    let status = json!({"status": {"nominatedNodeName": n.node}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Err(e) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::debug!(error = %e, "scheduler: nominating");
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    for victim in &n.victims {
        let (Some(vns), Some(vname)) = (
            victim.metadata.namespace.as_deref(),
            victim.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), vns);
        match api.delete(vname, &DeleteParams::default()).await {
            Ok(_) => {
                let about = flotilla_controllers::events::reference("v1", "Pod", &victim.metadata);
                flotilla_controllers::events::record(
                    client,
                    SCHEDULER_NAME,
                    &about,
                    flotilla_controllers::events::Kind::Normal,
                    "Preempted",
                    &format!("Preempted by pod {uid} on node {}", n.node),
                )
                .await;
                tracing::info!(victim = vname, preemptor = name, node = %n.node, "scheduler: preempted");
            }
            Err(e) => tracing::warn!(victim = vname, error = %e, "scheduler: preempting"),
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
    let (lead_tx, lead_rx) = tokio::sync::watch::channel(None);
    let (fenced_tx, fenced_rx) = tokio::sync::mpsc::unbounded_channel();
    let scheduling = Box::pin(run(connect(None)?, lead_rx, fenced_tx));
    let lead_tx = Arc::new(lead_tx);
    let fenced_rx = Arc::new(tokio::sync::Mutex::new(fenced_rx));
    let election = leader::run_elected(LEASE, connect, identity, shutdown, {
        move |lead: leader::Leadership| {
            let lead_tx = lead_tx.clone();
            let fenced_rx = fenced_rx.clone();
            async move {
                // Leading ends when the election says so (this future is dropped) or when a
                // bind was fenced; either way the scheduling loop stops scheduling.
                struct Stepped(Arc<tokio::sync::watch::Sender<Option<kube::Client>>>);
                impl Drop for Stepped {
                    fn drop(&mut self) {
                        self.0.send_replace(None);
                    }
                }
                let mut fenced = fenced_rx.lock().await;
                while fenced.try_recv().is_ok() {}
                lead_tx.send_replace(Some(lead.client));
                let _stepped = Stepped(lead_tx);
                let _ = fenced.recv().await;
            }
        }
    });
    tokio::select! {
        r = election => r,
        _ = scheduling => Ok(()),
    }
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

    fn framework() -> Framework {
        Framework::new(&plugins::registry(), &plugins::default_profile()).unwrap()
    }

    fn pick(
        f: &Framework,
        cache: &Cache,
        p: &Pod,
        start: usize,
        to_find: usize,
    ) -> (Result<String, String>, usize) {
        match decide(f, p, &cache.snapshot(), start, to_find, false) {
            (Outcome::Fits(n), scanned) => (Ok(n), scanned),
            (Outcome::Fails(m, _), scanned) => (Err(m), scanned),
        }
    }

    #[test]
    fn the_assume_cache_keeps_consecutive_pods_from_overcommitting_a_node() {
        let filters = framework();
        let mut cache = Cache::default();
        cache.observe_node(node("small", "1"), true);
        cache.observe_node(node("big", "2"), true);
        // Three pods of 1 CPU: big (emptier), then small (a tie, fewer pods), then big again.
        let mut placed = Vec::new();
        for uid in ["a", "b", "c"] {
            let p = pod(uid, "1", None);
            cache.observe_pod(p.clone());
            match pick(&filters, &cache, &p, 0, usize::MAX).0 {
                Ok(n) => {
                    cache.place(uid, &n, Arc::new(p.clone()));
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
            pick(&filters, &cache, &p, 0, usize::MAX).0.unwrap_err(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // The pod on small goes away: room again.
        cache.forget_pod(&pod("b", "1", Some("small")));
        assert_eq!(
            pick(&filters, &cache, &p, 0, usize::MAX).0.unwrap(),
            "small"
        );
    }

    #[test]
    fn large_clusters_are_sampled_as_kubernetes_does_and_scans_rotate() {
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(100_000), 5000);
        let filters = framework();
        let mut cache = Cache::default();
        for i in 0..10 {
            cache.observe_node(node(&format!("n{i}"), "4"), true);
        }
        let p = pod("x", "1", None);
        // Stopping after 3 feasible nodes from index 8: n8, n9, n0 scanned.
        let (chosen, scanned) = pick(&filters, &cache, &p, 8, 3);
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
        assert_eq!(cache.usage["n"].requested.milli_cpu, 1000);
        let mut done = pod("a", "1", Some("n"));
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        cache.observe_pod(done);
        assert_eq!(cache.usage["n"].requested.milli_cpu, 0);
        let mut other = pod("b", "1", None);
        other.spec.as_mut().unwrap().scheduler_name = Some("someone-else".into());
        cache.observe_pod(other);
        assert!(
            cache.pending.is_empty(),
            "pods of other schedulers are not ours"
        );
    }

    #[test]
    fn the_queue_hands_out_the_most_important_due_pods_first() {
        let now = Instant::now();
        let mut pending = BTreeMap::new();
        for (uid, prio, wait) in [
            ("a", 0, 0),
            ("b", 10, 0),
            ("c", 5, 0),
            ("d", 10, 60),
            ("e", 7, 0),
        ] {
            let mut p = pod(uid, "100m", None);
            p.spec.as_mut().unwrap().priority = Some(prio);
            let mut entry = Pending::new(p);
            entry.not_before = now + Duration::from_secs(wait);
            pending.insert(uid.to_string(), entry);
        }
        // "d" is the most important but still backing off.
        assert_eq!(most_important_due(&pending, now, 2), ["b", "e"]);
        assert_eq!(most_important_due(&pending, now, 10), ["b", "e", "c", "a"]);
    }

    #[test]
    fn cordoned_and_tainted_nodes_are_flagged_once() {
        let mut n = node("n", "2");
        let info = NodeInfo::new(n.clone());
        assert!(!info.unschedulable && !info.tainted);
        n.spec = Some(
            serde_json::from_value(json!({"unschedulable": true,
            "taints": [{"key": "k", "effect": "PreferNoSchedule"}]}))
            .unwrap(),
        );
        let info = NodeInfo::new(n.clone());
        assert!(
            info.unschedulable && !info.tainted,
            "PreferNoSchedule does not filter"
        );
        n.spec = Some(
            serde_json::from_value(json!({
            "taints": [{"key": "k", "effect": "NoExecute"}]}))
            .unwrap(),
        );
        let info = NodeInfo::new(n);
        assert!(!info.unschedulable && info.tainted);
        // The filters still refuse a pod that does not tolerate the taint.
        let f = framework();
        let mut cache = Cache::default();
        cache.observe_node(info.node.as_ref().clone(), true);
        let (picked, _) = pick(&f, &cache, &pod("p", "100m", None), 0, 1);
        assert!(picked.is_err(), "{picked:?}");
    }
}
