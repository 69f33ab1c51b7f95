//! NodeName: a pod that names its node (`spec.nodeName`) fits only that node.

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::framework::{Built, Code, CycleState, Filter, NodeInfo, Plugin, Status};

/// The plugin's registered name.
pub const NAME: &str = "NodeName";

/// The reason shown when the pod names another node.
pub const REASON: &str = "node(s) didn't match the requested node name";

/// The NodeName filter.
#[derive(Debug, Default)]
pub struct NodeName;

/// Builds the plugin.
pub fn new() -> Built {
    Built {
        filter: Some(std::sync::Arc::new(NodeName)),
        ..Default::default()
    }
}

/// Whether `pod` may run on `node` as far as `spec.nodeName` goes.
pub fn fits(pod: &Pod, node: &Node) -> bool {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None | Some("") => true,
        Some(wanted) => node.metadata.name.as_deref() == Some(wanted),
    }
}

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for NodeName {
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
    use crate::plugins::testing::{node, pod};

    #[test]
    fn only_the_named_node_fits() {
        let mut p = pod();
        assert!(fits(&p, &node("a")));
        p.spec.as_mut().unwrap().node_name = Some("b".into());
        assert!(!fits(&p, &node("a")));
        assert!(fits(&p, &node("b")));
    }
}
