//! Resource usage reports: `metrics.k8s.io/v1beta1` NodeMetrics and PodMetrics objects, which
//! `kubectl top` and the HorizontalPodAutoscaler read through the API server.
//!
//! Simulated pods use what their annotations say (`flotilla.dev/simulate-cpu`, e.g. `250m`,
//! and `flotilla.dev/simulate-memory`, e.g. `64Mi`, split evenly over the containers), else
//! a tenth of their CPU request (at least 1m) and half their memory request (at least 8Mi).
//! A simulated node uses 50m CPU and 256Mi of its own plus its pods'.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{json, Value};

/// The annotation with a simulated pod's CPU use.
pub const CPU_ANNOTATION: &str = "flotilla.dev/simulate-cpu";
/// The annotation with a simulated pod's memory use.
pub const MEMORY_ANNOTATION: &str = "flotilla.dev/simulate-memory";
/// The window a report covers, as metrics-server reports it.
pub const WINDOW: &str = "15s";

/// Parses a quantity (`250m`, `2`, `0.5`, `64Mi`, `1G`) times `scale` (1000 for millicores).
pub fn parse_quantity(q: &str, scale: f64) -> Option<u64> {
    flotilla_controllers::quantity::parse(q, scale).map(|v| v.round() as u64)
}

/// One pod's use: (container name, millicores, bytes) per container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The pod's labels (PodMetrics carry them, so selectors work).
    pub labels: BTreeMap<String, String>,
    /// Per container: (name, millicores, bytes).
    pub containers: Vec<(String, u64, u64)>,
}

fn request(pod: &Pod, resource: &str, scale: f64) -> u64 {
    flotilla_controllers::quantity::pod_request(pod, resource, scale).round() as u64
}

/// What simulated `pod` on `node` uses.
pub fn simulated_usage(pod: &Pod, node: &str) -> PodUsage {
    let annotation = |key: &str| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let cpu = annotation(CPU_ANNOTATION)
        .and_then(|q| parse_quantity(&q, 1000.0))
        .unwrap_or_else(|| (request(pod, "cpu", 1000.0) / 10).max(1));
    let memory = annotation(MEMORY_ANNOTATION)
        .and_then(|q| parse_quantity(&q, 1.0))
        .unwrap_or_else(|| (request(pod, "memory", 1.0) / 2).max(8 << 20));
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let n = u64::try_from(names.len().max(1)).unwrap_or(1);
    PodUsage {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        node: node.to_string(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        containers: names
            .into_iter()
            .map(|c| (c, cpu / n, memory / n))
            .collect(),
    }
}

fn usage(milli: u64, bytes: u64) -> Value {
    json!({"cpu": format!("{milli}m"), "memory": format!("{}Ki", bytes / 1024)})
}

/// The PodMetrics object for `u`.
pub fn pod_metrics(u: &PodUsage, at: Timestamp) -> Value {
    json!({
        "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
        "metadata": {"name": u.name, "namespace": u.namespace, "labels": u.labels},
        "timestamp": at.to_string(), "window": WINDOW,
        "containers": u.containers.iter().map(|(name, cpu, mem)| {
            json!({"name": name, "usage": usage(*cpu, *mem)})
        }).collect::<Vec<_>>(),
    })
}

/// The NodeMetrics object of `node` running `pods`.
pub fn node_metrics<'a>(
    node: &str,
    pods: impl Iterator<Item = &'a PodUsage>,
    at: Timestamp,
) -> Value {
    let (mut cpu, mut mem) = (50u64, 256u64 << 20);
    for p in pods.filter(|p| p.node == node) {
        for (_, c, m) in &p.containers {
            cpu += c;
            mem += m;
        }
    }
    json!({
        "apiVersion": "metrics.k8s.io/v1beta1", "kind": "NodeMetrics",
        "metadata": {"name": node},
        "timestamp": at.to_string(), "window": WINDOW,
        "usage": usage(cpu, mem),
    })
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", kind),
        plural,
    )
}

/// Writes `obj` (a PodMetrics or NodeMetrics): replaces it, or creates it the first time.
pub async fn publish(client: &kube::Client, obj: &Value) -> Result<(), kube::Error> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ar = if kind == "PodMetrics" {
        resource(kind, "pods")
    } else {
        resource(kind, "nodes")
    };
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let object: DynamicObject =
        serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
    flotilla_controllers::runner::upsert(&api, name, object).await
}

/// Deletes the PodMetrics of a pod that is gone.
pub async fn forget(client: &kube::Client, namespace: &str, name: &str) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource("PodMetrics", "pods"));
    if let Err(e) = api.delete(name, &Default::default()).await {
        tracing::debug!(pod = name, error = %e, "metrics: deleting a gone pod's metrics");
    }
}

/// The usage reported per pod uid, to publish only what changed.
pub type Reported = HashMap<String, PodUsage>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value, requests: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "labels": {"app": "web"},
                         "annotations": annotations},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": requests}},
                {"name": "b"}]},
        }))
        .unwrap()
    }

    #[test]
    fn annotations_set_the_use_else_a_share_of_the_requests() {
        let u = simulated_usage(
            &pod(
                json!({CPU_ANNOTATION: "300m", MEMORY_ANNOTATION: "64Mi"}),
                json!({}),
            ),
            "n1",
        );
        assert_eq!(
            u.containers,
            [("a".into(), 150, 32 << 20), ("b".into(), 150, 32 << 20)]
        );
        let u = simulated_usage(
            &pod(json!({}), json!({"cpu": "500m", "memory": "1Gi"})),
            "n1",
        );
        assert_eq!(u.containers[0].1 + u.containers[1].1, 50);
        assert_eq!(u.containers[0].2 + u.containers[1].2, 512 << 20);
        let m = pod_metrics(&u, "2026-06-01T00:00:00Z".parse().unwrap());
        assert_eq!(m["metadata"]["labels"]["app"], "web");
        assert_eq!(m["containers"][0]["usage"]["cpu"], "25m");
        assert_eq!(m["window"], "15s");
        let n = node_metrics("n1", [u].iter(), "2026-06-01T00:00:00Z".parse().unwrap());
        assert_eq!(n["usage"]["cpu"], "100m");
        assert_eq!(parse_quantity("1.5", 1000.0), Some(1500));
        assert_eq!(parse_quantity("12Xi", 1.0), None);
    }
}
