//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes no new pods, unless the pod
//! tolerates the `node.kubernetes.io/unschedulable:NoSchedule` taint.

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::{Built, Code, CycleState, Filter, NodeInfo, Plugin, Status};

/// The plugin's registered name.
pub const NAME: &str = "NodeUnschedulable";

/// The taint key a cordoned node implies.
pub const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

/// The reason shown for a cordoned node.
pub const REASON: &str = "node(s) were unschedulable";

/// The NodeUnschedulable filter.
#[derive(Debug, Default)]
pub struct NodeUnschedulable;

/// Builds the plugin.
pub fn new() -> Built {
    Built {
        filter: Some(std::sync::Arc::new(NodeUnschedulable)),
        ..Default::default()
    }
}

/// Whether `pod` may run on `node` as far as cordoning goes.
pub fn fits(pod: &Pod, node: &Node) -> bool {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !cordoned {
        return true;
    }
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    tolerations.is_some_and(|ts| {
        ts.iter().any(|t| {
            let key_matches = match t.key.as_deref() {
                // An empty key with operator Exists tolerates every taint.
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == TAINT_KEY,
            };
            let effect_matches =
                matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
            key_matches && effect_matches
        })
    })
}

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for NodeUnschedulable {
    fn filter(&self, _state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        Status::fits_or(
            !node.unschedulable || fits(pod, &node.node),
            Code::UnschedulableAndUnresolvable,
            REASON,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod};
    use k8s_openapi::api::core::v1::{NodeSpec, Toleration};

    #[test]
    fn cordoned_nodes_refuse_pods_that_do_not_tolerate_it() {
        let mut n = node("a");
        let p = pod();
        assert!(fits(&p, &n));
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        assert!(!fits(&p, &n));
        let mut tolerant = pod();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(TAINT_KEY.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert!(fits(&tolerant, &n));
        assert_eq!(
            NodeUnschedulable
                .filter(&CycleState::default(), &p, &NodeInfo::new(n.clone()))
                .reason,
            "node(s) were unschedulable"
        );
    }
}
