//! DefaultPreemption: when no node fits a pod, find a node where evicting pods of lower
//! priority makes room, with the fewest and least important victims.
//!
//! For each node the filters rejected as `Unschedulable` (not `UnschedulableAndUnresolvable`:
//! no eviction helps a node the pod's affinity excludes; nor for pod anti-affinity or spread,
//! whose counts are not recomputed per eviction here), every lower-priority pod is taken
//! off in a what-if copy; if the pod then passes the filters, victims are given back one at
//! a time, most important first, while it still fits (the reprieve). Among the candidate
//! nodes the one whose most important victim matters least wins, then the lowest sum of
//! victim priorities, then the fewest victims. Pods with `preemptionPolicy: Never` never
//! preempt.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{
    run_filters, Built, Code, CycleState, Filter, Nomination, Plugin, PostFilter, Snapshot, Status,
};

/// The plugin's registered name.
pub const NAME: &str = "DefaultPreemption";

/// The DefaultPreemption plugin.
#[derive(Debug, Default)]
pub struct DefaultPreemption;

/// Builds the plugin.
pub fn new() -> Built {
    Built {
        post_filter: Some(Arc::new(DefaultPreemption)),
        ..Default::default()
    }
}

/// A pod's priority (`spec.priority`, set by the API server from its PriorityClass).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PostFilter for DefaultPreemption {
    fn post_filter(
        &self,
        state: &CycleState,
        pod: &Pod,
        snapshot: &Snapshot,
        statuses: &HashMap<String, Status>,
        filters: &[Arc<dyn Filter>],
    ) -> Option<Nomination> {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never")
        {
            return None;
        }
        let mine = priority(pod);
        let mut best: Option<((i32, i64, usize), Nomination)> = None;
        for node in snapshot.nodes {
            let Some(status) = statuses.get(node.name()) else {
                continue;
            };
            // Evicting pods helps only where resources were short: the affinity and spread
            // verdicts come from counts taken before any eviction, so they would not change.
            let counted = [
                crate::plugins::inter_pod_affinity::ANTI_AFFINITY,
                crate::plugins::inter_pod_affinity::EXISTING_ANTI_AFFINITY,
                crate::plugins::pod_topology_spread::REASON,
            ];
            if status.code != Code::Unschedulable || counted.contains(&status.reason.as_str()) {
                continue;
            }
            let mut lower: Vec<Arc<Pod>> = node
                .pods
                .iter()
                .filter(|q| priority(q) < mine && q.metadata.deletion_timestamp.is_none())
                .cloned()
                .collect();
            if lower.is_empty() {
                continue;
            }
            let mut what_if = node.clone();
            for q in &lower {
                what_if.remove_pod(q);
            }
            if !run_filters(filters, state, pod, &what_if).is_success() {
                continue;
            }
            // Reprieve the most important first.
            lower.sort_by_key(|q| std::cmp::Reverse(priority(q)));
            let mut victims = Vec::new();
            for q in lower {
                what_if.add_pod(q.clone());
                if !run_filters(filters, state, pod, &what_if).is_success() {
                    what_if.remove_pod(&q);
                    victims.push(q);
                }
            }
            let rank = (
                victims
                    .iter()
                    .map(|v| priority(v))
                    .max()
                    .unwrap_or(i32::MIN),
                victims.iter().map(|v| i64::from(priority(v))).sum::<i64>(),
                victims.len(),
            );
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((
                    rank,
                    Nomination {
                        node: node.name().to_string(),
                        victims,
                    },
                ));
            }
        }
        best.map(|(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::NodeInfo;
    use serde_json::json;

    fn node(name: &str, pods: Vec<Pod>) -> NodeInfo {
        let mut n = NodeInfo::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}}))
            .unwrap(),
        );
        for p in pods {
            n.add_pod(Arc::new(p));
        }
        n
    }

    fn pod(name: &str, cpu: &str, priority: i32) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": name, "uid": name, "namespace": "d"},
            "spec": {"priority": priority, "containers": [{"name": "c",
                "resources": {"requests": {"cpu": cpu}}}]}}),
        )
        .unwrap()
    }

    fn preempt(p: &Pod, nodes: &[NodeInfo]) -> Option<(String, Vec<String>)> {
        let filters = crate::plugins::registry()
            .filters(&["NodeResourcesFit"])
            .unwrap();
        let state = CycleState::default();
        let statuses: HashMap<String, Status> = nodes
            .iter()
            .map(|n| (n.name().to_string(), run_filters(&filters, &state, p, n)))
            .collect();
        let snap = Snapshot {
            nodes,
            any_required_anti_affinity: false,
        };
        DefaultPreemption
            .post_filter(&state, p, &snap, &statuses, &filters)
            .map(|n| {
                let mut v: Vec<String> = n
                    .victims
                    .iter()
                    .map(|v| v.metadata.name.clone().unwrap())
                    .collect();
                v.sort();
                (n.node, v)
            })
    }

    #[test]
    fn evicts_the_fewest_least_important_pods() {
        let nodes = [
            // Two 1-CPU pods of priority 100: one must go.
            node("a", vec![pod("a1", "1", 100), pod("a2", "1", 100)]),
            // One 2-CPU pod of priority 10: it must go, but it matters less.
            node("b", vec![pod("b1", "2", 10)]),
            // Only more important pods: no candidate.
            node("c", vec![pod("c1", "2", 5000)]),
        ];
        let p = pod("big", "1", 1000);
        assert_eq!(preempt(&p, &nodes), Some(("b".into(), vec!["b1".into()])));
        // Only node a: the reprieve keeps one of its two pods.
        let (node, victims) = preempt(&p, &nodes[..1]).unwrap();
        assert_eq!((node.as_str(), victims.len()), ("a", 1));
        // Nothing below priority 5: nobody to evict.
        assert_eq!(preempt(&pod("low", "1", 5), &nodes), None);
        let mut never = pod("never", "1", 1000);
        never.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert_eq!(preempt(&never, &nodes), None);
    }
}
