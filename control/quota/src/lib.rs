//! The resource arithmetic of admission, shared by the API server and the controllers:
//! [`quantity`] (parsing and printing quantities), [`usage`] (what an object charges against a
//! ResourceQuota, whether a quota's scopes cover it, whether it still fits) and [`limits`]
//! (LimitRange defaults and bounds for pods' containers). Objects are JSON, as stored.

#![forbid(unsafe_code)]

pub mod limits;
pub mod quantity;
pub mod usage;

use std::collections::BTreeMap;

use serde_json::Value;

/// The containers of `pod` (`spec.containers`, or `spec.initContainers` when `init`).
pub fn containers(pod: &Value, init: bool) -> &[Value] {
    let field = if init { "initContainers" } else { "containers" };
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Container `c`'s `resources.<which>` (`requests` or `limits`), in thousandths.
pub fn container_resources(c: &Value, which: &str) -> BTreeMap<String, u128> {
    c.pointer(&format!("/resources/{which}"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), quantity::milli(v.as_str()?)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// What `pod` as a whole requests or limits (`which`), as Kubernetes counts it: the larger of
/// the sum over its containers and any single init container (they run one at a time, before
/// the others), plus the pod's `overhead`.
pub fn pod_resources(pod: &Value, which: &str) -> BTreeMap<String, u128> {
    let mut sum: BTreeMap<String, u128> = BTreeMap::new();
    for c in containers(pod, false) {
        for (k, v) in container_resources(c, which) {
            *sum.entry(k).or_default() += v;
        }
    }
    for c in containers(pod, true) {
        for (k, v) in container_resources(c, which) {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    if let Some(overhead) = pod.pointer("/spec/overhead").and_then(Value::as_object) {
        for (k, v) in overhead {
            if let Some(v) = v.as_str().and_then(quantity::milli) {
                *sum.entry(k.clone()).or_default() += v;
            }
        }
    }
    sum
}

/// The QoS class of `pod`: `Guaranteed` when every container limits CPU and memory and
/// requests (if given) equal the limits, `BestEffort` when no container requests or limits
/// either, `Burstable` otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let all: Vec<&Value> = containers(pod, false)
        .iter()
        .chain(containers(pod, true))
        .collect();
    let compute = |m: &BTreeMap<String, u128>| {
        m.iter()
            .filter(|(k, v)| (*k == "cpu" || *k == "memory") && **v > 0)
            .count()
    };
    let mut any = false;
    let mut guaranteed = !all.is_empty();
    for c in &all {
        let requests = container_resources(c, "requests");
        let limits = container_resources(c, "limits");
        if compute(&requests) + compute(&limits) > 0 {
            any = true;
        }
        for r in ["cpu", "memory"] {
            match (requests.get(r), limits.get(r)) {
                (_, None) => guaranteed = false,
                (Some(req), Some(lim)) if req != lim => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Whether `res` is memory- or storage-like (printed with binary suffixes).
pub fn is_bytes(resource: &str) -> bool {
    resource.contains("memory") || resource.contains("storage")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: Value, init: Value) -> Value {
        json!({"spec": {"containers": containers, "initContainers": init}})
    }

    #[test]
    fn pod_totals_take_the_larger_of_containers_and_init_containers() {
        let p = pod(
            json!([
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}}}
            ]),
            json!([{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "32Mi"}}}]),
        );
        let r = pod_resources(&p, "requests");
        assert_eq!(r["cpu"], 1000);
        assert_eq!(r["memory"], 64 * 1024 * 1024 * 1000);
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&pod(json!([{"name": "a"}]), json!([]))),
            "BestEffort"
        );
        let g = pod(
            json!([{"name": "a", "resources": {
                "limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "1000m", "memory": "1Gi"}}}]),
            json!([]),
        );
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = pod(
            json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]),
            json!([]),
        );
        assert_eq!(qos_class(&b), "Burstable");
    }
}
