//! Resource quantities the scheduler adds up: CPU in millicores, memory in bytes, pod count.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// An amount of the resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Pods.
    pub pods: u64,
}

impl std::ops::AddAssign for Resources {
    fn add_assign(&mut self, o: Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }
}

impl std::ops::SubAssign for Resources {
    fn sub_assign(&mut self, o: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.pods = self.pods.saturating_sub(o.pods);
    }
}

/// `pod`'s requests, from the cycle state when the cycle put them there.
pub fn requested_in(state: &crate::framework::CycleState, pod: &Pod) -> Resources {
    state.pod_requests.unwrap_or_else(|| requested(pod))
}

/// Parses a Kubernetes quantity scaled by `scale` (1000 for millicores, 1 for bytes).
pub fn parse(q: &str, scale: f64) -> Option<u64> {
    flotilla_controllers::quantity::parse_ceil(q, scale)
}

fn quantity(q: Option<&Quantity>, scale: f64) -> u64 {
    q.and_then(|q| parse(&q.0, scale)).unwrap_or(0)
}

/// What `pod` requests: the sum over its containers, or its largest init container if that
/// is more (as Kubernetes counts it), and one pod.
pub fn requested(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        Resources {
            milli_cpu: quantity(req.and_then(|r| r.get("cpu")), 1000.0),
            memory: quantity(req.and_then(|r| r.get("memory")), 1.0),
            pods: 0,
        }
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum += of(c);
    }
    for c in spec.init_containers.iter().flatten() {
        let r = of(c);
        sum.milli_cpu = sum.milli_cpu.max(r.milli_cpu);
        sum.memory = sum.memory.max(r.memory);
    }
    sum.pods = 1;
    sum
}

/// What `node` offers to pods (`status.allocatable`, else `status.capacity`).
pub fn allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    let map = status
        .and_then(|s| s.allocatable.as_ref())
        .or_else(|| status.and_then(|s| s.capacity.as_ref()));
    Resources {
        milli_cpu: quantity(map.and_then(|m| m.get("cpu")), 1000.0),
        memory: quantity(map.and_then(|m| m.get("memory")), 1.0),
        pods: quantity(map.and_then(|m| m.get("pods")), 1.0),
    }
}
