//! InterPodAffinity: the pod's required pod affinity (run in a topology domain — a node, a
//! zone, whatever `topologyKey` names — where pods matching the term run) and anti-affinity
//! (not where they run), and the required anti-affinity of pods already placed (which an
//! incoming pod they match must keep out of their domain). Preferred terms score: each
//! matching pod in a node's domain adds the term's weight (affinity) or subtracts it
//! (anti-affinity).
//!
//! As in Kubernetes, a pod whose affinity matches no pod anywhere may still go where its own
//! labels satisfy its terms (the first pod of a group). Namespaces: a term's `namespaces`,
//! else the pod's own; a `namespaceSelector` of `{}` means every namespace, and other
//! namespace selectors are read against the `kubernetes.io/metadata.name` label only.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use super::selector_matches;
use crate::framework::{
    normalize_min_max, Built, Code, CycleState, Filter, NodeInfo, Plugin, PreFilter, PreScore,
    Score, Snapshot, Status,
};

/// The plugin's registered name.
pub const NAME: &str = "InterPodAffinity";

/// Reasons, as Kubernetes words them.
pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// See [`AFFINITY`].
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// See [`AFFINITY`].
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

const FILTER_KEY: &str = "InterPodAffinity/filter";
const SCORE_KEY: &str = "InterPodAffinity/score";

/// The InterPodAffinity plugin.
#[derive(Debug, Default)]
pub struct InterPodAffinity;

/// Builds the plugin.
pub fn new() -> Built {
    let p = Arc::new(InterPodAffinity);
    Built {
        pre_filter: Some(p.clone()),
        filter: Some(p.clone()),
        pre_score: Some(p.clone()),
        score: Some(p),
        ..Default::default()
    }
}

/// Whether `term` (of a pod in namespace `owner_ns`) selects `pod`.
pub fn term_selects(term: &PodAffinityTerm, owner_ns: &str, pod: &Pod) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let listed = term.namespaces.as_deref().unwrap_or_default();
    let by_selector = term.namespace_selector.as_ref().is_some_and(|s| {
        let labels = [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into();
        selector_matches(s, &labels)
    });
    let ns_ok = listed.iter().any(|n| n == ns)
        || by_selector
        || (listed.is_empty() && term.namespace_selector.is_none() && ns == owner_ns);
    let empty = Default::default();
    ns_ok
        && term
            .label_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, pod.metadata.labels.as_ref().unwrap_or(&empty)))
}

fn required(pod: &Pod) -> (Vec<&PodAffinityTerm>, Vec<&PodAffinityTerm>) {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let affinity = a
        .and_then(|a| a.pod_affinity.as_ref())
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let anti = a
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    (affinity, anti)
}

fn preferred(pod: &Pod) -> Vec<(&WeightedPodAffinityTerm, i64)> {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let mut out: Vec<(&WeightedPodAffinityTerm, i64)> = Vec::new();
    if let Some(terms) = a.and_then(|a| a.pod_affinity.as_ref()).and_then(|p| {
        p.preferred_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        out.extend(terms.iter().map(|t| (t, 1)));
    }
    if let Some(terms) = a.and_then(|a| a.pod_anti_affinity.as_ref()).and_then(|p| {
        p.preferred_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        out.extend(terms.iter().map(|t| (t, -1)));
    }
    out
}

/// Whether `pod` has required anti-affinity terms (the cache counts such pods).
pub fn has_required_anti_affinity(pod: &Pod) -> bool {
    !required(pod).1.is_empty()
}

/// Matching pods per topology value, for each term.
type Counts = Vec<HashMap<String, usize>>;

/// What the filter needs, computed once per pod.
#[derive(Debug, Default)]
struct FilterState {
    affinity: Counts,
    anti: Counts,
    /// (topology key, value) domains that placed pods' anti-affinity forbids.
    forbidden: Vec<(String, String)>,
    /// No pod matches the affinity terms anywhere, and the pod matches them itself.
    first_of_group: bool,
}

fn count(terms: &[&PodAffinityTerm], ns: &str, q: &Pod, node: &NodeInfo, counts: &mut Counts) {
    for (i, t) in terms.iter().enumerate() {
        if let Some(v) = node.label(&t.topology_key) {
            if term_selects(t, ns, q) {
                *counts[i].entry(v.to_string()).or_default() += 1;
            }
        }
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PreFilter for InterPodAffinity {
    fn pre_filter(&self, state: &mut CycleState, pod: &Pod, snapshot: &Snapshot) -> Status {
        let (affinity, anti) = required(pod);
        if affinity.is_empty() && anti.is_empty() && !snapshot.any_required_anti_affinity {
            return Status::skip();
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut s = FilterState {
            affinity: vec![HashMap::new(); affinity.len()],
            anti: vec![HashMap::new(); anti.len()],
            ..Default::default()
        };
        let own_terms = !affinity.is_empty() || !anti.is_empty();
        for node in snapshot.nodes {
            if !own_terms && node.required_anti_affinity == 0 {
                continue;
            }
            for q in &node.pods {
                if node.required_anti_affinity > 0 {
                    let q_ns = q.metadata.namespace.as_deref().unwrap_or_default();
                    for t in required(q).1 {
                        if let Some(v) = node.label(&t.topology_key) {
                            if term_selects(t, q_ns, pod) {
                                s.forbidden.push((t.topology_key.clone(), v.to_string()));
                            }
                        }
                    }
                }
                count(&affinity, ns, q, node, &mut s.affinity);
                count(&anti, ns, q, node, &mut s.anti);
            }
        }
        s.first_of_group = s.affinity.iter().all(HashMap::is_empty)
            && affinity.iter().all(|t| term_selects(t, ns, pod));
        state.write(FILTER_KEY, s);
        Status::success()
    }
}

impl Filter for InterPodAffinity {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<FilterState>(FILTER_KEY) else {
            return Status::success();
        };
        // Kubernetes' order: the pod's affinity, its anti-affinity, then existing pods'.
        let (affinity, anti) = required(pod);
        for (t, counts) in affinity.iter().zip(&s.affinity) {
            let Some(v) = node.label(&t.topology_key) else {
                return Status::new(Code::UnschedulableAndUnresolvable, AFFINITY);
            };
            if counts.get(v).copied().unwrap_or(0) == 0 && !s.first_of_group {
                return Status::new(Code::UnschedulableAndUnresolvable, AFFINITY);
            }
        }
        for (t, counts) in anti.iter().zip(&s.anti) {
            if node
                .label(&t.topology_key)
                .is_some_and(|v| counts.get(v).copied().unwrap_or(0) > 0)
            {
                return Status::new(Code::Unschedulable, ANTI_AFFINITY);
            }
        }
        if s.forbidden
            .iter()
            .any(|(k, v)| node.label(k) == Some(v.as_str()))
        {
            return Status::new(Code::Unschedulable, EXISTING_ANTI_AFFINITY);
        }
        Status::success()
    }
}

/// For scoring: per preferred term, its signed weight, key and matching pods per value.
type ScoreState = Vec<(i64, String, HashMap<String, usize>)>;

impl PreScore for InterPodAffinity {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &Pod,
        snapshot: &Snapshot,
        _feasible: &[&NodeInfo],
    ) -> Status {
        let terms = preferred(pod);
        if terms.is_empty() {
            return Status::skip();
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut out: ScoreState = terms
            .iter()
            .map(|(t, sign)| {
                (
                    sign * i64::from(t.weight),
                    t.pod_affinity_term.topology_key.clone(),
                    HashMap::new(),
                )
            })
            .collect();
        for node in snapshot.nodes {
            for q in &node.pods {
                for ((t, _), (_, key, counts)) in terms.iter().zip(out.iter_mut()) {
                    if let Some(v) = node.label(key) {
                        if term_selects(&t.pod_affinity_term, ns, q) {
                            *counts.entry(v.to_string()).or_default() += 1;
                        }
                    }
                }
            }
        }
        state.write(SCORE_KEY, out);
        Status::success()
    }
}

impl Score for InterPodAffinity {
    fn score(&self, state: &CycleState, _pod: &Pod, node: &NodeInfo) -> i64 {
        let Some(terms) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        terms
            .iter()
            .map(|(w, key, counts)| {
                node.label(key)
                    .and_then(|v| counts.get(v))
                    .map_or(0, |n| w * i64::try_from(*n).unwrap_or(0))
            })
            .sum()
    }

    fn normalize(&self, _state: &CycleState, scores: &mut [i64]) {
        normalize_min_max(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::run_filters;
    use serde_json::{json, Value};

    fn node(name: &str, zone: &str, pods: Vec<Pod>) -> NodeInfo {
        let mut n = NodeInfo::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "zone": zone}}}))
            .unwrap(),
        );
        for p in pods {
            n.required_anti_affinity += usize::from(has_required_anti_affinity(&p));
            n.pods.push(Arc::new(p));
        }
        n
    }

    fn pod(name: &str, app: &str, affinity: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "d", "uid": name,
            "labels": {"app": app}}, "spec": {"containers": [], "affinity": affinity}}),
        )
        .unwrap()
    }

    fn term(app: &str, key: &str) -> Value {
        json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
    }

    fn feasible(p: &Pod, nodes: &[NodeInfo]) -> Vec<String> {
        let snap = Snapshot {
            nodes,
            any_required_anti_affinity: nodes.iter().any(|n| n.required_anti_affinity > 0),
        };
        let mut state = CycleState::default();
        InterPodAffinity.pre_filter(&mut state, p, &snap);
        let filters: Vec<Arc<dyn Filter>> = vec![Arc::new(InterPodAffinity)];
        nodes
            .iter()
            .filter(|n| run_filters(&filters, &state, p, n).is_success())
            .map(|n| n.name().to_string())
            .collect()
    }

    #[test]
    fn required_affinity_follows_matching_pods_by_topology() {
        let nodes = [
            node("a1", "a", vec![pod("db-0", "db", Value::Null)]),
            node("a2", "a", vec![]),
            node("b1", "b", vec![]),
        ];
        let web = pod(
            "web",
            "web",
            json!({"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}),
        );
        assert_eq!(feasible(&web, &nodes), ["a1", "a2"]);
        let same_node = pod(
            "web",
            "web",
            json!({"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term("db", "kubernetes.io/hostname")]}}),
        );
        assert_eq!(feasible(&same_node, &nodes), ["a1"]);
        // The first pod of a group that selects itself goes anywhere.
        let first = pod(
            "c-0",
            "cache",
            json!({"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}}),
        );
        assert_eq!(feasible(&first, &nodes), ["a1", "a2", "b1"]);
    }

    #[test]
    fn anti_affinity_keeps_pods_apart_both_ways() {
        let spread = |name: &str| {
            pod(
                name,
                "web",
                json!({"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [term("web", "kubernetes.io/hostname")]}}),
            )
        };
        let nodes = [
            node("a1", "a", vec![spread("web-0")]),
            node("a2", "a", vec![]),
            node("b1", "b", vec![pod("other", "db", Value::Null)]),
        ];
        assert_eq!(feasible(&spread("web-1"), &nodes), ["a2", "b1"]);
        // A plain web pod has no terms, but web-0's anti-affinity keeps it off a1.
        assert_eq!(
            feasible(&pod("web-2", "web", Value::Null), &nodes),
            ["a2", "b1"]
        );
        assert_eq!(
            feasible(&pod("x", "db", Value::Null), &nodes),
            ["a1", "a2", "b1"]
        );
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let nodes = [
            node("a1", "a", vec![pod("db-0", "db", Value::Null)]),
            node("b1", "b", vec![]),
        ];
        let p = pod(
            "web",
            "web",
            json!({"podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": term("db", "zone")}]}}),
        );
        let snap = Snapshot {
            nodes: &nodes,
            any_required_anti_affinity: false,
        };
        let mut state = CycleState::default();
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        assert!(InterPodAffinity
            .pre_score(&mut state, &p, &snap, &all)
            .is_success());
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| InterPodAffinity.score(&state, &p, n))
            .collect();
        assert_eq!(scores, [50, 0]);
        InterPodAffinity.normalize(&state, &mut scores);
        assert_eq!(scores, [100, 0]);
    }
}
