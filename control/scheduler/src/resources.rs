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

/// Parses a Kubernetes quantity (`100m`, `2`, `0.5`, `64Mi`, `1G`, `1e3`) scaled by `scale`
/// (1000 for millicores, 1 for bytes); `None` if it is not a quantity.
pub fn parse(q: &str, scale: f64) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some((n * factor * scale).ceil() as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse("100m", 1000.0), Some(100));
        assert_eq!(parse("2", 1000.0), Some(2000));
        assert_eq!(parse("0.5", 1000.0), Some(500));
        assert_eq!(parse("64Mi", 1.0), Some(64 * 1024 * 1024));
        assert_eq!(parse("1G", 1.0), Some(1_000_000_000));
        assert_eq!(parse("1e3", 1.0), Some(1000));
        assert_eq!(parse("12Xi", 1.0), None);
        assert_eq!(parse("-1", 1.0), None);
    }
}
