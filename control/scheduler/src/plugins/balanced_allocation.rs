//! NodeResourcesBalancedAllocation: prefers nodes whose CPU and memory would be used in equal
//! shares after placing the pod (score 100 minus the standard deviation of the two
//! fractions, in percent), so neither runs out while the other idles.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{Built, CycleState, NodeInfo, Plugin, Score};
use crate::resources::{requested, requested_in, Resources};

/// The plugin's registered name.
pub const NAME: &str = "NodeResourcesBalancedAllocation";

/// The BalancedAllocation scorer.
#[derive(Debug, Default)]
pub struct BalancedAllocation;

/// Builds the plugin.
pub fn new() -> Built {
    Built {
        score: Some(Arc::new(BalancedAllocation)),
        ..Default::default()
    }
}

/// 0–100: how evenly `node`'s CPU and memory would be used with `pod` on it.
pub fn score(pod: &Pod, node: &NodeInfo) -> i64 {
    score_of(requested(pod), node)
}

fn score_of(want: Resources, node: &NodeInfo) -> i64 {
    let fraction = |used: u64, cap: u64| {
        if cap == 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    };
    let cpu = fraction(
        node.requested.milli_cpu + want.milli_cpu,
        node.allocatable.milli_cpu,
    );
    let mem = fraction(node.requested.memory + want.memory, node.allocatable.memory);
    // The standard deviation of two values is half their distance.
    let std = (cpu - mem).abs() / 2.0;
    ((1.0 - std) * 100.0).round() as i64
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Score for BalancedAllocation {
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        score_of(requested_in(state, pod), node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(cpu_used: u64, mem_used_gi: u64) -> NodeInfo {
        let mut n = NodeInfo::new(
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"}}}))
            .unwrap(),
        );
        n.requested.milli_cpu = cpu_used;
        n.requested.memory = mem_used_gi << 30;
        n
    }

    #[test]
    fn even_use_scores_higher() {
        let p: Pod = serde_json::from_value(json!({"spec": {"containers": [{"name": "a",
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}))
        .unwrap();
        // After the pod: 50% CPU and 50% memory — perfectly balanced.
        assert_eq!(score(&p, &node(1000, 1)), 100);
        // 100% CPU, 25% memory: 62.5 off by half the gap.
        assert_eq!(score(&p, &node(3000, 0)), 63);
        assert!(score(&p, &node(1000, 1)) > score(&p, &node(3000, 0)));
    }
}
