//! PodTopologySpread: `topologySpreadConstraints` — pods matching a constraint's selector (in
//! the pod's namespace) must stay within `maxSkew` of each other across the domains of
//! `topologyKey`. `whenUnsatisfiable: DoNotSchedule` filters; `ScheduleAnyway` scores
//! (fewer matching pods in the node's domain is better).
//!
//! Domains are the values of the key on the nodes that have it and, with the default
//! `nodeAffinityPolicy: Honor`, that the pod's node selector and required affinity accept
//! (`nodeTaintsPolicy: Honor` also leaves out nodes with untolerated taints). Fewer domains
//! than `minDomains` make the global minimum 0. `matchLabelKeys` adds the pod's own values
//! of those labels to the selector.
//!
//! Pods without constraints but with a controller (a ReplicaSet, StatefulSet…) get
//! Kubernetes' system defaults, scored only: hostname (maxSkew 3) and
//! `topology.kubernetes.io/zone` (maxSkew 5), over the pods of the same controller. Scoring
//! counts over the feasible nodes.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::selector_matches;
use crate::framework::{
    normalize_min_max, Built, Code, CycleState, Filter, NodeInfo, Plugin, PreFilter, PreScore,
    Score, Snapshot, Status,
};

/// The plugin's registered name.
pub const NAME: &str = "PodTopologySpread";

/// The reason when the skew would be exceeded.
pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
/// The reason when the node lacks the topology key.
pub const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const FILTER_KEY: &str = "PodTopologySpread/filter";
const SCORE_KEY: &str = "PodTopologySpread/score";

/// The PodTopologySpread plugin.
#[derive(Debug, Default)]
pub struct PodTopologySpread;

/// Builds the plugin.
pub fn new() -> Built {
    let p = Arc::new(PodTopologySpread);
    Built {
        pre_filter: Some(p.clone()),
        filter: Some(p.clone()),
        pre_score: Some(p.clone()),
        score: Some(p),
        ..Default::default()
    }
}

/// Which pods a constraint counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Selects {
    /// Pods matching a label selector.
    Labels(LabelSelector),
    /// Pods of the same controller (the system default constraints).
    Owner(String),
}

/// One constraint, resolved for a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    /// The allowed difference between domains.
    pub max_skew: i64,
    /// The node label whose values are the domains.
    pub key: String,
    /// The pods counted.
    pub selects: Selects,
    /// Domains below this make the minimum 0.
    pub min_domains: usize,
    /// DoNotSchedule (filter) rather than ScheduleAnyway (score).
    pub hard: bool,
    /// Count only nodes the pod's node affinity accepts.
    pub honor_affinity: bool,
    /// Count only nodes whose NoSchedule/NoExecute taints the pod tolerates.
    pub honor_taints: bool,
}

fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The constraints that apply to `pod` (its own, else the system defaults if it has a
/// controller).
pub fn constraints(pod: &Pod) -> Vec<Constraint> {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    if own.is_empty() {
        let Some(uid) = controller_uid(pod) else {
            return Vec::new();
        };
        return [
            ("kubernetes.io/hostname", 3),
            ("topology.kubernetes.io/zone", 5),
        ]
        .into_iter()
        .map(|(key, skew)| Constraint {
            max_skew: skew,
            key: key.into(),
            selects: Selects::Owner(uid.into()),
            min_domains: 1,
            hard: false,
            honor_affinity: true,
            honor_taints: false,
        })
        .collect();
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    own.iter()
        .map(|c| {
            let mut selector = c.label_selector.clone().unwrap_or_default();
            for key in c.match_label_keys.iter().flatten() {
                if let Some(v) = labels.get(key) {
                    selector
                        .match_labels
                        .get_or_insert_with(Default::default)
                        .insert(key.clone(), v.clone());
                }
            }
            Constraint {
                max_skew: i64::from(c.max_skew.max(1)),
                key: c.topology_key.clone(),
                selects: Selects::Labels(selector),
                min_domains: usize::try_from(c.min_domains.unwrap_or(1).max(1)).unwrap_or(1),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

impl Constraint {
    fn counts_pod(&self, incoming: &Pod, q: &Pod) -> bool {
        if q.metadata.deletion_timestamp.is_some()
            || q.metadata.namespace != incoming.metadata.namespace
        {
            return false;
        }
        match &self.selects {
            Selects::Labels(s) => {
                let empty = Default::default();
                selector_matches(s, q.metadata.labels.as_ref().unwrap_or(&empty))
            }
            Selects::Owner(uid) => controller_uid(q) == Some(uid.as_str()),
        }
    }

    fn node_counts(&self, pod: &Pod, node: &NodeInfo) -> bool {
        (!self.honor_affinity || super::node_affinity::fits(pod, &node.node))
            && (!self.honor_taints || super::taint_toleration::fits(pod, &node.node))
    }

    /// Matching pods per domain over `nodes` (every counted domain present, maybe with 0).
    fn count<'a>(
        &self,
        pod: &Pod,
        nodes: impl Iterator<Item = &'a NodeInfo>,
    ) -> HashMap<String, i64> {
        let mut out: HashMap<String, i64> = HashMap::new();
        for node in nodes {
            let Some(v) = node.label(&self.key) else {
                continue;
            };
            if !self.node_counts(pod, node) {
                continue;
            }
            let n = node.pods.iter().filter(|q| self.counts_pod(pod, q)).count();
            *out.entry(v.to_string()).or_default() += i64::try_from(n).unwrap_or(0);
        }
        out
    }
}

/// The hard constraints with their counts and global minimum.
type FilterState = Vec<(Constraint, HashMap<String, i64>, i64)>;

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PreFilter for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, snapshot: &Snapshot) -> Status {
        let hard: Vec<Constraint> = constraints(pod).into_iter().filter(|c| c.hard).collect();
        if hard.is_empty() {
            return Status::skip();
        }
        let s: FilterState = hard
            .into_iter()
            .map(|c| {
                let counts = c.count(pod, snapshot.nodes.iter());
                let min = if counts.len() < c.min_domains {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                };
                (c, counts, min)
            })
            .collect();
        state.write(FILTER_KEY, s);
        Status::success()
    }
}

impl Filter for PodTopologySpread {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(FILTER_KEY) else {
            return Status::success();
        };
        for (c, counts, min) in s {
            let Some(v) = node.label(&c.key) else {
                return Status::new(Code::UnschedulableAndUnresolvable, MISSING_LABEL);
            };
            let own = i64::from(c.counts_pod(pod, pod));
            let here = counts.get(v).copied().unwrap_or(0);
            if here + own - min > c.max_skew {
                return Status::new(Code::Unschedulable, REASON);
            }
        }
        Status::success()
    }
}

/// The soft constraints with their counts over the feasible nodes.
type ScoreState = Vec<(Constraint, HashMap<String, i64>)>;

impl PreScore for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        _snapshot: &Snapshot,
        feasible: &[&NodeInfo],
    ) -> Status {
        let soft: ScoreState = constraints(pod)
            .into_iter()
            .filter(|c| !c.hard)
            .filter_map(|c| {
                let counts = c.count(pod, feasible.iter().copied());
                // A key no feasible node has does not score.
                (!counts.is_empty()).then_some((c, counts))
            })
            .collect();
        if soft.is_empty() {
            return Status::skip();
        }
        state.write(SCORE_KEY, soft);
        Status::success()
    }
}

impl Score for PodTopologySpread {
    /// Matching pods in the node's domains, weighted by each constraint's skew allowance
    /// (lower is better; see `normalize`).
    fn score(&self, state: &CycleState, _pod: &Pod, node: &NodeInfo) -> i64 {
        let Some(s) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        s.iter()
            .map(|(c, counts)| {
                let here = node.label(&c.key).and_then(|v| counts.get(v)).copied();
                // A node outside every domain gets the worst count.
                here.unwrap_or_else(|| counts.values().copied().max().unwrap_or(0) + 1) * 10
                    / c.max_skew
            })
            .sum()
    }

    fn normalize(&self, _state: &CycleState, scores: &mut [i64]) {
        normalize_min_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::run_filters;
    use serde_json::{json, Value};

    fn node(name: &str, zone: Option<&str>, pods: Vec<Pod>) -> NodeInfo {
        let mut labels = json!({"kubernetes.io/hostname": name});
        if let Some(z) = zone {
            labels["zone"] = json!(z);
        }
        let mut n = NodeInfo::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap(),
        );
        n.pods = pods.into_iter().map(Arc::new).collect();
        n
    }

    fn pod(name: &str, constraints: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "d", "uid": name,
            "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                 "uid": "rs-uid", "controller": true}]},
            "spec": {"containers": [], "topologySpreadConstraints": constraints}}),
        )
        .unwrap()
    }

    fn zone_constraint(skew: i64, min_domains: Option<i64>) -> Value {
        json!([{"maxSkew": skew, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                "minDomains": min_domains,
                "labelSelector": {"matchLabels": {"app": "web"}}}])
    }

    fn feasible(p: &Pod, nodes: &[NodeInfo]) -> Vec<String> {
        let snap = Snapshot {
            nodes,
            any_required_anti_affinity: false,
        };
        let mut state = CycleState::default();
        PodTopologySpread.pre_filter(&mut state, p, &snap);
        let filters: Vec<Arc<dyn Filter>> = vec![Arc::new(PodTopologySpread)];
        nodes
            .iter()
            .filter(|n| run_filters(&filters, &state, p, n).is_success())
            .map(|n| n.name().to_string())
            .collect()
    }

    #[test]
    fn hard_constraints_keep_the_skew_and_need_the_key() {
        let nodes = [
            node(
                "a1",
                Some("a"),
                vec![pod("w0", Value::Null), pod("w1", Value::Null)],
            ),
            node("b1", Some("b"), vec![pod("w2", Value::Null)]),
            node("c1", Some("c"), vec![]),
            node("x", None, vec![]),
        ];
        // Counts a=2, b=1, c=0: with maxSkew 1 only c takes the next pod.
        assert_eq!(
            feasible(&pod("new", zone_constraint(1, None)), &nodes),
            ["c1"]
        );
        // maxSkew 2: b (1+1-0) and c too, a (2+1-0) not.
        assert_eq!(
            feasible(&pod("new", zone_constraint(2, None)), &nodes),
            ["b1", "c1"]
        );
        // Three domains but minDomains 4: the minimum counts as 0 (same here, c is empty).
        assert_eq!(
            feasible(&pod("new", zone_constraint(1, Some(4))), &nodes),
            ["c1"]
        );
    }

    #[test]
    fn soft_and_default_constraints_score_emptier_domains_higher() {
        let nodes = [
            node(
                "a1",
                Some("a"),
                vec![pod("w0", Value::Null), pod("w1", Value::Null)],
            ),
            node("b1", Some("b"), vec![]),
        ];
        // No constraints of its own but a controller: the system defaults (hostname).
        let p = pod("new", Value::Null);
        assert!(constraints(&p).iter().all(|c| !c.hard));
        let snap = Snapshot {
            nodes: &nodes,
            any_required_anti_affinity: false,
        };
        let mut state = CycleState::default();
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        assert!(PodTopologySpread
            .pre_score(&mut state, &p, &snap, &all)
            .is_success());
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(&state, &p, n))
            .collect();
        PodTopologySpread.normalize(&state, &mut scores);
        assert_eq!(scores, [0, 100]);
    }
}
