//! Resource quantities ([`flotilla_quota::quantity`]) and what a pod requests.

pub use flotilla_quota::quantity::{parse, parse_ceil};

/// The sum of `pod`'s containers' requests of `resource` (`cpu`, `memory`), times `scale`.
pub fn pod_request(pod: &k8s_openapi::api::core::v1::Pod, resource: &str, scale: f64) -> f64 {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
        .filter_map(|q| parse(&q.0, scale))
        .sum()
}
