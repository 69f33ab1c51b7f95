//! Resources served in more than one version: HorizontalPodAutoscalers are stored as
//! autoscaling/v2 and also served as autoscaling/v1 (kubectl 1.27's `kubectl autoscale`
//! creates v1 objects), converted both ways as Kubernetes does. v1 only knows a CPU
//! utilization target; the v2 metrics and behavior it cannot express ride along in an
//! annotation, so that a v1 read-modify-write keeps them.

use serde_json::{json, Value};

/// The annotation carrying what v1 cannot express.
pub const V2_ANNOTATION: &str = "autoscaling.flotilla.dev/v2-spec";

/// The path prefix of the v1 autoscaler API, and the v2 one it is served from.
pub const V1_PREFIX: &str = "/apis/autoscaling/v1/";
/// See [`V1_PREFIX`].
pub const V2_PREFIX: &str = "/apis/autoscaling/v2/";

fn cpu_metric(metrics: &Value, field: &str) -> Option<Value> {
    metrics
        .as_array()?
        .iter()
        .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        .and_then(|m| {
            let v = &m["resource"][field]["averageUtilization"];
            (!v.is_null()).then(|| v.clone())
        })
}

/// An autoscaling/v2 HorizontalPodAutoscaler as autoscaling/v1.
pub fn hpa_to_v1(mut obj: Value) -> Value {
    if obj["kind"] != "HorizontalPodAutoscaler" {
        return obj;
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let status = obj.get("status").cloned().unwrap_or(Value::Null);
    let mut v1_spec = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
    });
    if !spec["minReplicas"].is_null() {
        v1_spec["minReplicas"] = spec["minReplicas"].clone();
    }
    if let Some(cpu) = cpu_metric(&spec["metrics"], "target") {
        v1_spec["targetCPUUtilizationPercentage"] = cpu;
    }
    let extra = json!({"metrics": spec["metrics"], "behavior": spec["behavior"]});
    if let Some(meta) = obj["metadata"].as_object_mut() {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        annotations[V2_ANNOTATION] = json!(extra.to_string());
    }
    let mut v1_status = json!({
        "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
        "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
    });
    for key in ["observedGeneration", "lastScaleTime"] {
        if !status[key].is_null() {
            v1_status[key] = status[key].clone();
        }
    }
    if let Some(cpu) = cpu_metric(&status["currentMetrics"], "current") {
        v1_status["currentCPUUtilizationPercentage"] = cpu;
    }
    obj["apiVersion"] = json!("autoscaling/v1");
    obj["spec"] = v1_spec;
    obj["status"] = v1_status;
    obj
}

/// An autoscaling/v1 HorizontalPodAutoscaler as autoscaling/v2 (what is stored).
pub fn hpa_to_v2(mut obj: Value) -> Value {
    if obj["kind"] != "HorizontalPodAutoscaler" {
        return obj;
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let carried: Value = obj["metadata"]["annotations"][V2_ANNOTATION]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let emptied = meta
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            .is_some_and(|a| {
                a.remove(V2_ANNOTATION);
                a.is_empty()
            });
        if emptied || meta.get("annotations").is_some_and(Value::is_null) {
            meta.remove("annotations");
        }
    }
    // The carried metrics, with the CPU target as v1 says now.
    let mut metrics: Vec<Value> = carried["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !(m["type"] == "Resource" && m["resource"]["name"] == "cpu"))
        .collect();
    if let Some(pct) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.insert(
            0,
            json!({"type": "Resource", "resource": {"name": "cpu",
                   "target": {"type": "Utilization", "averageUtilization": pct}}}),
        );
    }
    let mut v2_spec = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
        "metrics": metrics,
    });
    if !spec["minReplicas"].is_null() {
        v2_spec["minReplicas"] = spec["minReplicas"].clone();
    }
    if !carried["behavior"].is_null() {
        v2_spec["behavior"] = carried["behavior"].clone();
    }
    obj["apiVersion"] = json!("autoscaling/v2");
    obj["spec"] = v2_spec;
    if let Some(status) = obj.get("status").cloned().filter(|s| s.is_object()) {
        let mut v2_status = json!({
            "currentReplicas": status["currentReplicas"],
            "desiredReplicas": status["desiredReplicas"],
        });
        for key in ["observedGeneration", "lastScaleTime"] {
            if !status[key].is_null() {
                v2_status[key] = status[key].clone();
            }
        }
        obj["status"] = v2_status;
    }
    obj
}

/// A v2 answer (an object, a list, a watch event) as v1.
pub fn answer_to_v1(mut v: Value) -> Value {
    if v["kind"] == "HorizontalPodAutoscaler" {
        return hpa_to_v1(v);
    }
    if v["kind"] == "HorizontalPodAutoscalerList" {
        v["apiVersion"] = json!("autoscaling/v1");
        if let Some(items) = v["items"].as_array_mut() {
            for item in items.iter_mut() {
                *item = hpa_to_v1(std::mem::take(item));
            }
        }
        return v;
    }
    if v["object"]["kind"] == "HorizontalPodAutoscaler" {
        v["object"] = hpa_to_v1(v["object"].take());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 5,
                     "metrics": [
                        {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}},
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                       "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 80}}}]}})
    }

    #[test]
    fn v1_shows_the_cpu_target_and_keeps_the_rest_for_the_way_back() {
        let one = hpa_to_v1(v2());
        assert_eq!(one["apiVersion"], "autoscaling/v1");
        assert_eq!(one["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(one["status"]["currentCPUUtilizationPercentage"], 80);
        // A v1 client changes the CPU target; memory and behavior survive.
        let mut changed = one.clone();
        changed["spec"]["targetCPUUtilizationPercentage"] = json!(70);
        let back = hpa_to_v2(changed);
        assert_eq!(back["apiVersion"], "autoscaling/v2");
        let metrics = back["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
        assert_eq!(metrics[1]["resource"]["name"], "memory");
        assert_eq!(
            back["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            0
        );
        assert!(back["metadata"].get("annotations").is_none());
        let bare = hpa_to_v2(
            json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
            "spec": {"maxReplicas": 1}}),
        );
        assert!(bare["metadata"].get("annotations").is_none());
    }

    #[test]
    fn a_plain_v1_object_becomes_a_cpu_metric() {
        let created = hpa_to_v2(
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 4,
                     "targetCPUUtilizationPercentage": 50}}),
        );
        assert_eq!(
            created["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        assert_eq!(created["spec"]["maxReplicas"], 4);
        let list = answer_to_v1(json!({"kind": "HorizontalPodAutoscalerList", "items": [v2()]}));
        assert_eq!(
            list["items"][0]["spec"]["targetCPUUtilizationPercentage"],
            50
        );
        let event = answer_to_v1(json!({"type": "ADDED", "object": v2()}));
        assert_eq!(event["object"]["apiVersion"], "autoscaling/v1");
    }
}
