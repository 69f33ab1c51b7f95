//! TaintToleration: a node's NoSchedule and NoExecute taints keep off pods that do not
//! tolerate them.

use k8s_openapi::api::core::v1::{Pod, Taint};

use crate::framework::{Built, Code, CycleState, Filter, NodeInfo, Plugin, Status};

/// The plugin's registered name.
pub const NAME: &str = "TaintToleration";

/// The reason shown for a node with an untolerated taint.
pub const REASON: &str = "node(s) had untolerated taint(s)";

/// The TaintToleration filter.
#[derive(Debug, Default)]
pub struct TaintToleration;

/// Builds the plugin.
pub fn new() -> Built {
    Built {
        filter: Some(std::sync::Arc::new(TaintToleration)),
        ..Default::default()
    }
}

pub use flotilla_controllers::nodelifecycle::tolerates;

/// The first taint of the node that `pod` does not tolerate and that keeps pods off.
pub fn untolerated<'a>(pod: &Pod, taints: &'a [Taint]) -> Option<&'a Taint> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

/// Whether `pod` tolerates every NoSchedule/NoExecute taint of `node`.
pub fn fits(pod: &Pod, node: &k8s_openapi::api::core::v1::Node) -> bool {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    untolerated(pod, taints).is_none()
}

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl Filter for TaintToleration {
    fn filter(&self, _state: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        Status::fits_or(
            !node.tainted || fits(pod, &node.node),
            Code::UnschedulableAndUnresolvable,
            REASON,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Toleration;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some(op.into()),
            value: Some(value.into()),
            effect: Some(effect.into()),
            ..Default::default()
        }
    }

    #[test]
    fn tolerations_match_by_key_value_and_effect() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        assert!(tolerates(
            &tol("dedicated", "Equal", "gpu", "NoSchedule"),
            &t
        ));
        assert!(tolerates(&tol("dedicated", "Exists", "", ""), &t));
        assert!(tolerates(&tol("", "Exists", "", ""), &t));
        assert!(!tolerates(
            &tol("dedicated", "Equal", "cpu", "NoSchedule"),
            &t
        ));
        assert!(!tolerates(
            &tol("dedicated", "Equal", "gpu", "NoExecute"),
            &t
        ));
        let pod = Pod {
            spec: Some(Default::default()),
            ..Default::default()
        };
        let soft = [taint("x", "", "PreferNoSchedule")];
        assert!(
            untolerated(&pod, &soft).is_none(),
            "PreferNoSchedule only scores"
        );
        assert!(untolerated(&pod, std::slice::from_ref(&t)).is_some());
    }
}
