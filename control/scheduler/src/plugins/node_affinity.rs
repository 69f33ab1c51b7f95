//! NodeAffinity: the pod's `nodeSelector` and its required node affinity
//! (`requiredDuringSchedulingIgnoredDuringExecution`) must match the node's labels; nodes
//! matching its preferred terms score higher, by the terms' weights.

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{
    normalize_min_max, Built, Code, CycleState, Filter, NodeInfo, Plugin, PreScore, Score,
    Snapshot, Status,
};

/// The plugin's registered name.
pub const NAME: &str = "NodeAffinity";

/// The reason shown, as Kubernetes words it.
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

/// The NodeAffinity filter.
#[derive(Debug, Default)]
pub struct NodeAffinity;

/// Builds the plugin.
pub fn new() -> Built {
    let p = std::sync::Arc::new(NodeAffinity);
    Built {
        filter: Some(p.clone()),
        pre_score: Some(p.clone()),
        score: Some(p),
        ..Default::default()
    }
}

/// The sum of the weights of the pod's preferred node affinity terms `node` matches.
pub fn preferred_weight(pod: &Pod, node: &k8s_openapi::api::core::v1::Node) -> i64 {
    let terms = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let Some(terms) = terms else {
        return 0;
    };
    let empty = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    terms
        .iter()
        .filter(|t| flotilla_controllers::nodematch::term_matches(&t.preference, labels, name))
        .map(|t| i64::from(t.weight))
        .sum()
}

pub use flotilla_controllers::nodematch::fits;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

/// Without preferred terms there is nothing to score.
impl PreScore for NodeAffinity {
    fn pre_score(
        &self,
        _state: &mut CycleState,
        pod: &Pod,
        _snapshot: &Snapshot,
        _feasible: &[&NodeInfo],
    ) -> Status {
        let preferred = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty());
        if preferred {
            Status::success()
        } else {
            Status::skip()
        }
    }
}

/// Preferred node affinity: nodes matching heavier preferred terms score higher.
impl Score for NodeAffinity {
    fn score(&self, _state: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        preferred_weight(pod, &node.node)
    }

    fn normalize(&self, _state: &CycleState, scores: &mut [i64]) {
        if scores.iter().any(|s| *s != 0) {
            normalize_min_max(scores, false);
        }
    }
}

impl Filter for NodeAffinity {
    fn filter(&self, _state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        Status::fits_or(
            fits(pod, &node.node),
            Code::UnschedulableAndUnresolvable,
            REASON,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": labels}})).unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn selectors_and_required_terms_must_match() {
        let n = node(json!({"disk": "ssd", "zone": "a", "cores": "8"}));
        let base = json!({"containers": []});
        assert!(fits(&pod(base.clone()), &n));
        assert!(fits(
            &pod(json!({"containers": [], "nodeSelector": {"disk": "ssd"}})),
            &n
        ));
        assert!(!fits(
            &pod(json!({"containers": [], "nodeSelector": {"disk": "hdd"}})),
            &n
        ));
        let affinity = |exprs: serde_json::Value| {
            pod(json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": exprs}]}}}}))
        };
        assert!(fits(
            &affinity(json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])),
            &n
        ));
        assert!(!fits(
            &affinity(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])),
            &n
        ));
        assert!(fits(
            &affinity(json!([{"key": "gpu", "operator": "DoesNotExist"}])),
            &n
        ));
        assert!(fits(
            &affinity(json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])),
            &n
        ));
        assert!(!fits(
            &affinity(json!([{"key": "cores", "operator": "Lt", "values": ["4"]}])),
            &n
        ));
        assert_eq!(
            NodeAffinity
                .filter(
                    &CycleState::default(),
                    &affinity(json!([{"key": "x", "operator": "Exists"}])),
                    &NodeInfo::new(n)
                )
                .reason,
            REASON
        );
    }

    #[test]
    fn preferred_terms_add_their_weights() {
        let p = pod(json!({"containers": [], "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 3, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}}));
        assert_eq!(
            preferred_weight(&p, &node(json!({"disk": "ssd", "zone": "a"}))),
            13
        );
        assert_eq!(preferred_weight(&p, &node(json!({"zone": "a"}))), 3);
        assert_eq!(preferred_weight(&p, &node(json!({}))), 0);
    }
}
