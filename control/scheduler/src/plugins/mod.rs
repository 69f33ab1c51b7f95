//! The built-in plugins, one file each.

pub mod node_affinity;
pub mod node_name;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod taint_toleration;

use crate::framework::Registry;

/// A registry holding every built-in plugin.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register_filter(node_name::NAME, node_name::new);
    r.register_filter(node_unschedulable::NAME, node_unschedulable::new);
    r.register_filter(node_affinity::NAME, node_affinity::new);
    r.register_filter(node_resources_fit::NAME, node_resources_fit::new);
    r.register_filter(taint_toleration::NAME, taint_toleration::new);
    r
}

#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::api::core::v1::{Node, Pod};

    pub fn node(name: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n
    }

    pub fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.spec = Some(Default::default());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::{run_filters, Code};

    #[test]
    fn profiles_pick_plugins_by_name() {
        let r = registry();
        let filters = r.filters(&["NodeUnschedulable", "NodeName"]).unwrap();
        let mut pod = testing::pod();
        pod.spec.as_mut().unwrap().node_name = Some("other".into());
        let s = run_filters(
            &filters,
            &pod,
            &crate::framework::NodeInfo::new(testing::node("n1")),
        );
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        let err = r.filters(&["Nope"]).err().unwrap();
        assert!(
            err.contains("known: NodeAffinity, NodeName, NodeResourcesFit"),
            "{err}"
        );
    }
}
