//! The scheduling framework: extension-point traits, statuses, per-cycle state, the plugin
//! registry and profiles.
//!
//! A scheduling cycle for one pod runs, in order: **PreFilter** (once; computes what the
//! filters need into the [`CycleState`]), **Filter** (per node), **PostFilter** (only when no
//! node fits: preemption), **PreScore** (once, over the feasible nodes), **Score** (per
//! feasible node; each plugin's scores are normalized to 0–100 and weighted), **Reserve**
//! (the chosen node; undone by `unreserve` if a later step fails), **Permit** (allow, deny
//! or wait) and **Bind**. A plugin implements the traits of the points it takes part in and
//! is registered once by name; a [`Profile`] names the plugins to run (and the score
//! weights), and [`Framework::new`] builds the chain.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};

/// The outcome of a plugin at one extension point. The code tells the queue what to do with the
/// pod next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// The plugin is satisfied.
    Success,
    /// The pod does not fit this node; another node may do, and a cluster change may help
    /// (the pod waits in the unschedulable queue until one happens).
    Unschedulable,
    /// The pod does not fit and no cluster change will make this node fit; preemption is
    /// pointless here.
    UnschedulableAndUnresolvable,
    /// The plugin has nothing to do for this pod (PreFilter/PreScore): its later steps are
    /// skipped.
    Skip,
    /// The plugin failed; the pod is retried with backoff.
    Error,
}

/// A plugin's verdict with the reason a user sees (in FailedScheduling events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The verdict.
    pub code: Code,
    /// Why, in the words `kubectl describe pod` shows.
    pub reason: String,
}

impl Status {
    /// Success.
    pub fn success() -> Status {
        Status {
            code: Code::Success,
            reason: String::new(),
        }
    }

    /// Skip (nothing to do for this pod).
    pub fn skip() -> Status {
        Status {
            code: Code::Skip,
            reason: String::new(),
        }
    }

    /// A verdict with a reason.
    pub fn new(code: Code, reason: impl Into<String>) -> Status {
        Status {
            code,
            reason: reason.into(),
        }
    }

    /// Success if `fits`, else `code` with `reason`: the verdict of a filter built on a pure
    /// `fits()` helper.
    pub fn fits_or(fits: bool, code: Code, reason: &str) -> Status {
        if fits {
            Status::success()
        } else {
            Status::new(code, reason)
        }
    }

    /// Whether the plugin is satisfied.
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// Every plugin has a name, by which profiles choose it.
pub trait Plugin: Send + Sync {
    /// The plugin's registered name, e.g. `NodeUnschedulable`.
    fn name(&self) -> &'static str;
}

/// A node as the scheduler sees it: the Node, what the pods on it (bound, or assumed bound by
/// this scheduler) request, and those pods.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// The node (shared: the scheduler's cache hands it to every round without copying).
    pub node: Arc<Node>,
    /// What the node offers (its `status.allocatable`, parsed once).
    pub allocatable: crate::resources::Resources,
    /// The sum of its pods' requests (pods counted too).
    pub requested: crate::resources::Resources,
    /// The pods on it (bound or assumed).
    pub pods: Vec<Arc<Pod>>,
    /// How many of them have required pod anti-affinity terms (which every incoming pod must
    /// respect).
    pub required_anti_affinity: usize,
    /// Whether the node is cordoned (`spec.unschedulable`).
    pub unschedulable: bool,
    /// Whether the node has a NoSchedule or NoExecute taint.
    pub tainted: bool,
}

impl NodeInfo {
    /// A node with nothing on it yet.
    pub fn new(node: Node) -> NodeInfo {
        // The filters most pods need read these flags, not the node object: on thousands of
        // nodes, following every node's pointer for each pod cost more than the decisions.
        let allocatable = crate::resources::allocatable(&node);
        let spec = node.spec.as_ref();
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let tainted = spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
            ts.iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        });
        NodeInfo {
            node: Arc::new(node),
            allocatable,
            unschedulable,
            tainted,
            ..Default::default()
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// The value of the node's label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }

    /// Takes `pod` off the node (for preemption's what-if).
    pub fn remove_pod(&mut self, pod: &Pod) {
        if let Some(i) = self
            .pods
            .iter()
            .position(|p| p.metadata.uid == pod.metadata.uid)
        {
            let gone = self.pods.swap_remove(i);
            self.requested -= crate::resources::requested(&gone);
        }
    }

    /// Puts `pod` on the node (for preemption's what-if).
    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        self.requested += crate::resources::requested(&pod);
        self.pods.push(pod);
    }
}

/// What a cycle sees of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// Every node.
    pub nodes: &'a [NodeInfo],
    /// Whether any pod in the cluster has required anti-affinity terms.
    pub any_required_anti_affinity: bool,
}

/// Data the plugins keep for one pod's cycle (PreFilter writes, Filter and Score read), by key.
#[derive(Default)]
pub struct CycleState {
    /// The pod's requests, computed once per cycle (every resource plugin needs them).
    pub pod_requests: Option<crate::resources::Resources>,
    data: HashMap<&'static str, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for CycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleState")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CycleState {
    /// Stores `value` under `key`.
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        self.data.insert(key, Box::new(value));
    }

    /// The value under `key`, if it is a `T`.
    pub fn read<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.data.get(key).and_then(|v| v.downcast_ref())
    }
}

/// The PreFilter extension point: once per cycle, before the filters.
pub trait PreFilter: Plugin {
    /// Prepares (into `state`) what the filters need; a failure rejects every node.
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, snapshot: &Snapshot) -> Status;
}

/// The Filter extension point: can `pod` run on `node`?
pub trait Filter: Plugin {
    /// Decides for one node.
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status;
}

/// What a PostFilter found: a node the pod may have once `victims` are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Nomination {
    /// The node.
    pub node: String,
    /// The pods to evict there.
    pub victims: Vec<Arc<Pod>>,
}

/// The PostFilter extension point: runs when no node fits (preemption).
pub trait PostFilter: Plugin {
    /// Looks for a way to make room; `statuses` holds each rejected node's verdict by name.
    fn post_filter(
        &self,
        state: &CycleState,
        pod: &Pod,
        snapshot: &Snapshot,
        statuses: &HashMap<String, Status>,
        filters: &[Arc<dyn Filter>],
    ) -> Option<Nomination>;
}

/// The PreScore extension point: once per cycle over the feasible nodes.
pub trait PreScore: Plugin {
    /// Prepares (into `state`) what scoring needs; `Skip` leaves the plugin's Score out.
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        snapshot: &Snapshot,
        feasible: &[&NodeInfo],
    ) -> Status;
}

/// The Score extension point: how good `node` is for `pod`.
pub trait Score: Plugin {
    /// A raw score; see [`Score::normalize`].
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> i64;

    /// Maps the raw scores of every feasible node to 0–100 (by default they already are).
    fn normalize(&self, _state: &CycleState, _scores: &mut [i64]) {}
}

/// The Reserve extension point: the node is chosen; claim what the pod needs there.
pub trait Reserve: Plugin {
    /// Claims; a failure unreserves every plugin and requeues the pod.
    fn reserve(&self, state: &CycleState, pod: &Pod, node: &str) -> Status;
    /// Undoes `reserve` (a later step failed).
    fn unreserve(&self, state: &CycleState, pod: &Pod, node: &str);
}

/// The Permit extension point's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Permit {
    /// Bind now.
    Allow,
    /// Do not bind; requeue with the reason.
    Deny(String),
    /// Ask again after this long (the pod stays reserved meanwhile).
    Wait(std::time::Duration),
}

/// The Permit extension point: the last word before binding.
pub trait PermitPlugin: Plugin {
    /// Allows, denies or delays binding `pod` to `node`.
    fn permit(&self, state: &CycleState, pod: &Pod, node: &str) -> Permit;
}

/// The Bind extension point: makes the assignment real.
pub trait Bind: Plugin {
    /// Binds `pod` to `node`.
    fn bind(
        &self,
        client: kube::Client,
        pod: Arc<Pod>,
        node: String,
    ) -> BoxFuture<'static, Result<(), kube::Error>>;
}

/// A registered plugin: its implementations of each extension point (one object may serve
/// several).
#[derive(Default, Clone)]
pub struct Built {
    /// PreFilter.
    pub pre_filter: Option<Arc<dyn PreFilter>>,
    /// Filter.
    pub filter: Option<Arc<dyn Filter>>,
    /// PostFilter.
    pub post_filter: Option<Arc<dyn PostFilter>>,
    /// PreScore.
    pub pre_score: Option<Arc<dyn PreScore>>,
    /// Score.
    pub score: Option<Arc<dyn Score>>,
    /// Reserve.
    pub reserve: Option<Arc<dyn Reserve>>,
    /// Permit.
    pub permit: Option<Arc<dyn PermitPlugin>>,
    /// Bind.
    pub bind: Option<Arc<dyn Bind>>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("filter", &self.filter.as_ref().map(|p| p.name()))
            .field("score", &self.score.as_ref().map(|p| p.name()))
            .finish_non_exhaustive()
    }
}

/// Builds a plugin.
pub type Factory = fn() -> Built;

/// Plugins by name. Profiles pick from here.
#[derive(Default)]
pub struct Registry {
    plugins: BTreeMap<&'static str, Factory>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// Registers a plugin under `name`.
    pub fn register(&mut self, name: &'static str, factory: Factory) {
        self.plugins.insert(name, factory);
    }

    /// Builds plugin `name`; an unknown name is an error that lists the known ones.
    pub fn build(&self, name: &str) -> Result<Built, String> {
        self.plugins.get(name).map(|f| f()).ok_or_else(|| {
            format!(
                "unknown scheduler plugin {name:?}; known: {}",
                self.plugins.keys().copied().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Builds the filters `names` lists, in that order.
    pub fn filters(&self, names: &[&str]) -> Result<Vec<Arc<dyn Filter>>, String> {
        names
            .iter()
            .map(|n| {
                self.build(n)?
                    .filter
                    .ok_or_else(|| format!("plugin {n:?} has no Filter"))
            })
            .collect()
    }
}

/// A profile: the plugins to run, in order, each with its score weight (ignored for plugins
/// that do not score).
#[derive(Debug, Clone)]
pub struct Profile {
    /// The `schedulerName` pods choose the profile by.
    pub scheduler_name: &'static str,
    /// (plugin name, score weight).
    pub plugins: Vec<(&'static str, i64)>,
}

/// A profile's plugins, per extension point, ready to run.
#[derive(Default, Clone)]
pub struct Framework {
    /// PreFilter plugins.
    pub pre_filters: Vec<Arc<dyn PreFilter>>,
    /// Filter plugins.
    pub filters: Vec<Arc<dyn Filter>>,
    /// PostFilter plugins.
    pub post_filters: Vec<Arc<dyn PostFilter>>,
    /// PreScore plugins.
    pub pre_scores: Vec<Arc<dyn PreScore>>,
    /// Score plugins with their weights.
    pub scores: Vec<(Arc<dyn Score>, i64)>,
    /// Reserve plugins.
    pub reserves: Vec<Arc<dyn Reserve>>,
    /// Permit plugins.
    pub permits: Vec<Arc<dyn PermitPlugin>>,
    /// The binder (the first Bind plugin of the profile).
    pub binder: Option<Arc<dyn Bind>>,
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: Vec<&'static str>| v.join(",");
        f.debug_struct("Framework")
            .field(
                "filters",
                &names(self.filters.iter().map(|p| p.name()).collect()),
            )
            .field(
                "scores",
                &names(self.scores.iter().map(|p| p.0.name()).collect()),
            )
            .finish()
    }
}

impl Framework {
    /// Builds `profile`'s plugins from `registry`.
    pub fn new(registry: &Registry, profile: &Profile) -> Result<Framework, String> {
        let mut f = Framework::default();
        for (name, weight) in &profile.plugins {
            let b = registry.build(name)?;
            f.pre_filters.extend(b.pre_filter);
            f.filters.extend(b.filter);
            f.post_filters.extend(b.post_filter);
            f.pre_scores.extend(b.pre_score);
            if let Some(s) = b.score {
                f.scores.push((s, *weight));
            }
            f.reserves.extend(b.reserve);
            f.permits.extend(b.permit);
            if f.binder.is_none() {
                f.binder = b.bind;
            }
        }
        Ok(f)
    }

    /// Runs the PreFilter plugins: the first failure, or success with the names of the
    /// plugins that skip (their filters need not run for this pod).
    pub fn run_pre_filters(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        snapshot: &Snapshot,
    ) -> Result<Vec<&'static str>, Status> {
        let mut skipped = Vec::new();
        for p in &self.pre_filters {
            let s = p.pre_filter(state, pod, snapshot);
            match s.code {
                Code::Success => {}
                Code::Skip => skipped.push(p.name()),
                _ => return Err(s),
            }
        }
        Ok(skipped)
    }

    /// The filters to run for a pod whose PreFilter step skipped `skipped`.
    pub fn active_filters(&self, skipped: &[&'static str]) -> Vec<Arc<dyn Filter>> {
        self.filters
            .iter()
            .filter(|f| !skipped.contains(&f.name()))
            .cloned()
            .collect()
    }

    /// Runs the PreScore plugins; returns the names of those that skip.
    pub fn run_pre_scores(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        snapshot: &Snapshot,
        feasible: &[&NodeInfo],
    ) -> Vec<&'static str> {
        self.pre_scores
            .iter()
            .filter(|p| p.pre_score(state, pod, snapshot, feasible).code == Code::Skip)
            .map(|p| p.name())
            .collect()
    }

    /// The weighted total score of each feasible node (same order), skipping `skipped` plugins.
    pub fn run_scores(
        &self,
        state: &CycleState,
        pod: &Pod,
        feasible: &[&NodeInfo],
        skipped: &[&'static str],
    ) -> Vec<i64> {
        let mut total = vec![0i64; feasible.len()];
        for (plugin, weight) in &self.scores {
            if skipped.contains(&plugin.name()) {
                continue;
            }
            let mut scores: Vec<i64> = feasible
                .iter()
                .map(|n| plugin.score(state, pod, n))
                .collect();
            plugin.normalize(state, &mut scores);
            for (t, s) in total.iter_mut().zip(scores) {
                *t += s.clamp(0, 100) * weight;
            }
        }
        total
    }
}

/// Runs `filters` for `pod` on `node`, stopping at the first that rejects it.
pub fn run_filters(
    filters: &[Arc<dyn Filter>],
    state: &CycleState,
    pod: &Pod,
    node: &NodeInfo,
) -> Status {
    for f in filters {
        let s = f.filter(state, pod, node);
        if !s.is_success() {
            return s;
        }
    }
    Status::success()
}

/// Min–max normalization of raw scores to 0–100 (higher raw is better unless `reverse`).
pub fn normalize_min_max(scores: &mut [i64], reverse: bool) {
    let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else {
        return;
    };
    for s in scores.iter_mut() {
        *s = if max == min {
            100
        } else if reverse {
            (max - *s) * 100 / (max - min)
        } else {
            (*s - min) * 100 / (max - min)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter;
    impl Plugin for Counter {
        fn name(&self) -> &'static str {
            "Counter"
        }
    }
    impl PreFilter for Counter {
        fn pre_filter(&self, state: &mut CycleState, _: &Pod, snapshot: &Snapshot) -> Status {
            state.write("Counter", snapshot.nodes.len());
            Status::success()
        }
    }
    impl Score for Counter {
        fn score(&self, state: &CycleState, _: &Pod, node: &NodeInfo) -> i64 {
            let n = *state.read::<usize>("Counter").unwrap() as i64;
            n * 10 + node.pods.len() as i64
        }
        fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
            normalize_min_max(scores, false);
        }
    }

    #[test]
    fn profiles_wire_one_plugin_into_several_points_and_weigh_scores() {
        let mut r = Registry::default();
        r.register("Counter", || {
            let p = Arc::new(Counter);
            Built {
                pre_filter: Some(p.clone()),
                score: Some(p),
                ..Default::default()
            }
        });
        let profile = Profile {
            scheduler_name: "x",
            plugins: vec![("Counter", 3)],
        };
        let f = Framework::new(&r, &profile).unwrap();
        assert_eq!(
            (f.pre_filters.len(), f.scores.len(), f.filters.len()),
            (1, 1, 0)
        );
        let mut busy = NodeInfo::default();
        busy.pods.push(Arc::new(Pod::default()));
        let nodes = [NodeInfo::default(), busy];
        let snap = Snapshot {
            nodes: &nodes,
            any_required_anti_affinity: false,
        };
        let mut state = CycleState::default();
        let pod = Pod::default();
        assert_eq!(f.run_pre_filters(&mut state, &pod, &snap), Ok(vec![]));
        let feasible: Vec<&NodeInfo> = nodes.iter().collect();
        assert_eq!(f.run_scores(&state, &pod, &feasible, &[]), [0, 300]);
        assert_eq!(f.run_scores(&state, &pod, &feasible, &["Counter"]), [0, 0]);
        let err = Framework::new(
            &r,
            &Profile {
                scheduler_name: "x",
                plugins: vec![("Nope", 1)],
            },
        )
        .err()
        .unwrap();
        assert!(err.contains("known: Counter"), "{err}");
    }
}
