//! NodeResourcesFit: the pod's requests fit in what the node has left (CPU, memory, pods),
//! and LeastAllocated scoring (prefer the node with the most left).

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{Built, Code, CycleState, Filter, NodeInfo, Plugin, Score, Status};
use crate::resources::{requested, requested_in, Resources};

/// The plugin's registered name.
pub const NAME: &str = "NodeResourcesFit";

/// The NodeResourcesFit filter.
#[derive(Debug, Default)]
pub struct NodeResourcesFit;

/// Builds the plugin.
pub fn new() -> Built {
    let p = std::sync::Arc::new(NodeResourcesFit);
    Built {
        filter: Some(p.clone()),
        score: Some(p),
        ..Default::default()
    }
}

/// Why `pod` does not fit on `node`, with Kubernetes' wording; `None` if it fits.
pub fn misfit(pod: &Pod, node: &NodeInfo) -> Option<&'static str> {
    misfit_of(requested(pod), node)
}

/// Why requests `want` do not fit on `node`; `None` if they fit.
fn misfit_of(want: Resources, node: &NodeInfo) -> Option<&'static str> {
    let have = node.allocatable;
    let used = node.requested;
    if used.pods + want.pods > have.pods {
        return Some("Too many pods");
    }
    if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > have.milli_cpu {
        return Some("Insufficient cpu");
    }
    if want.memory > 0 && used.memory + want.memory > have.memory {
        return Some("Insufficient memory");
    }
    None
}

/// LeastAllocated: 0–100, higher for a node with more CPU and memory left after the pod.
pub fn score(pod: &Pod, node: &NodeInfo) -> u64 {
    score_of(requested(pod), node)
}

fn score_of(want: Resources, node: &NodeInfo) -> u64 {
    let have = node.allocatable;
    let free = |cap: u64, used: u64| {
        if cap == 0 {
            return 0;
        }
        cap.saturating_sub(used) * 100 / cap
    };
    let cpu = free(have.milli_cpu, node.requested.milli_cpu + want.milli_cpu);
    let mem = free(have.memory, node.requested.memory + want.memory);
    (cpu + mem) / 2
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Score for NodeResourcesFit {
    fn score(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        i64::try_from(score_of(requested_in(state, pod), node)).unwrap_or(0)
    }
}

impl Filter for NodeResourcesFit {
    fn filter(&self, state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        match misfit_of(requested_in(state, pod), node) {
            // Preemption could help: Unschedulable, not Unresolvable.
            Some(reason) => Status::new(Code::Unschedulable, reason),
            None => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(cpu: &str, mem: &str, pods: &str) -> NodeInfo {
        NodeInfo::new(
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods}}}))
            .unwrap(),
        )
    }

    fn pod(cpu: &str, mem: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}))
        .unwrap()
    }

    #[test]
    fn requests_must_fit_in_what_is_left() {
        let mut n = node("2", "4Gi", "3");
        assert_eq!(misfit(&pod("1500m", "1Gi"), &n), None);
        n.requested = Resources {
            milli_cpu: 1000,
            memory: 0,
            pods: 1,
        };
        assert_eq!(misfit(&pod("1500m", "1Gi"), &n), Some("Insufficient cpu"));
        assert_eq!(misfit(&pod("500m", "5Gi"), &n), Some("Insufficient memory"));
        n.requested.pods = 3;
        assert_eq!(misfit(&pod("0", "0"), &n), Some("Too many pods"));
        assert_eq!(
            NodeResourcesFit
                .filter(&CycleState::default(), &pod("0", "0"), &n)
                .code,
            Code::Unschedulable
        );
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let empty = node("4", "8Gi", "110");
        let mut busy = node("4", "8Gi", "110");
        busy.requested.milli_cpu = 3000;
        busy.requested.memory = 6 * 1024 * 1024 * 1024;
        let p = pod("500m", "512Mi");
        assert!(score(&p, &empty) > score(&p, &busy));
    }
}
