//! NodeAffinity: the pod's `nodeSelector` and its required node affinity
//! (`requiredDuringSchedulingIgnoredDuringExecution`) must match the node's labels.

use k8s_openapi::api::core::v1::Pod;

use crate::framework::{Code, Filter, NodeInfo, Plugin, Status};

/// The plugin's registered name.
pub const NAME: &str = "NodeAffinity";

/// The reason shown, as Kubernetes words it.
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

/// The NodeAffinity filter.
#[derive(Debug, Default)]
pub struct NodeAffinity;

/// Builds the plugin.
pub fn new() -> Box<dyn Filter> {
    Box::new(NodeAffinity)
}

pub use flotilla_controllers::nodematch::fits;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for NodeAffinity {
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Status {
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
                    &affinity(json!([{"key": "x", "operator": "Exists"}])),
                    &NodeInfo::new(n)
                )
                .reason,
            REASON
        );
    }
}
