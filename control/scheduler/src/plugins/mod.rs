//! The built-in plugins, one file each, and the default profile.

pub mod balanced_allocation;
pub mod default_binder;
pub mod default_preemption;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

use crate::framework::{Profile, Registry};

/// A registry holding every built-in plugin.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(node_name::NAME, node_name::new);
    r.register(node_unschedulable::NAME, node_unschedulable::new);
    r.register(node_affinity::NAME, node_affinity::new);
    r.register(node_resources_fit::NAME, node_resources_fit::new);
    r.register(taint_toleration::NAME, taint_toleration::new);
    r.register(inter_pod_affinity::NAME, inter_pod_affinity::new);
    r.register(pod_topology_spread::NAME, pod_topology_spread::new);
    r.register(balanced_allocation::NAME, balanced_allocation::new);
    r.register(default_preemption::NAME, default_preemption::new);
    r.register(default_binder::NAME, default_binder::new);
    r
}

/// Kubernetes' default profile: its plugins in order, with its score weights.
pub fn default_profile() -> Profile {
    Profile {
        scheduler_name: crate::scheduler::SCHEDULER_NAME,
        plugins: vec![
            (node_unschedulable::NAME, 0),
            (node_name::NAME, 0),
            (taint_toleration::NAME, 0),
            (node_affinity::NAME, 2),
            (node_resources_fit::NAME, 1),
            (pod_topology_spread::NAME, 2),
            (inter_pod_affinity::NAME, 2),
            (balanced_allocation::NAME, 1),
            (default_preemption::NAME, 0),
            (default_binder::NAME, 0),
        ],
    }
}

/// Whether a label selector selects `labels` (an empty selector selects everything).
pub use flotilla_controllers::replicaset::selector_matches;

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
    use crate::framework::{run_filters, Code, CycleState, Framework};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    #[test]
    fn profiles_pick_plugins_by_name() {
        let r = registry();
        let filters = r.filters(&["NodeUnschedulable", "NodeName"]).unwrap();
        let mut pod = testing::pod();
        pod.spec.as_mut().unwrap().node_name = Some("other".into());
        let s = run_filters(
            &filters,
            &CycleState::default(),
            &pod,
            &crate::framework::NodeInfo::new(testing::node("n1")),
        );
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        let err = r.filters(&["Nope"]).err().unwrap();
        assert!(
            err.contains("InterPodAffinity, NodeAffinity, NodeName"),
            "{err}"
        );
        let f = Framework::new(&r, &default_profile()).unwrap();
        assert_eq!(f.filters.len(), 7);
        assert_eq!(f.scores.len(), 5);
        assert_eq!(f.post_filters.len(), 1);
        assert!(f.binder.is_some());
    }

    #[test]
    fn empty_selectors_select_everything_expressions_narrow() {
        let labels: BTreeMap<String, String> = [("app".into(), "web".into())].into();
        assert!(selector_matches(&LabelSelector::default(), &labels));
        let s: LabelSelector = serde_json::from_value(serde_json::json!({"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": ["db"]}, {"key": "tier", "operator": "DoesNotExist"}]}))
        .unwrap();
        assert!(selector_matches(&s, &labels));
    }
}
