//! Field validation against the built-in types (`?fieldValidation=Strict`, what kubectl
//! sends by default): an object is decoded into its `k8s-openapi` type and encoded again;
//! a field that does not survive the round trip is unknown, and a value of the wrong type
//! fails the decoding.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::status::ApiError;

fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// `obj` decoded as its kind and encoded again; `None` for kinds without a type here.
fn typed(kind: &str, obj: &Value) -> Option<Result<Value, String>> {
    use k8s_openapi::api::{apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch};
    use k8s_openapi::api::{coordination::v1 as coordination, core::v1 as core};
    use k8s_openapi::api::{discovery::v1 as discovery, rbac::v1 as rbac};
    Some(match kind {
        "Namespace" => round_trip::<core::Namespace>(obj),
        "Pod" => round_trip::<core::Pod>(obj),
        "Node" => round_trip::<core::Node>(obj),
        "Service" => round_trip::<core::Service>(obj),
        "Endpoints" => round_trip::<core::Endpoints>(obj),
        "ConfigMap" => round_trip::<core::ConfigMap>(obj),
        "Secret" => round_trip::<core::Secret>(obj),
        "Event" => round_trip::<core::Event>(obj),
        "ServiceAccount" => round_trip::<core::ServiceAccount>(obj),
        "ResourceQuota" => round_trip::<core::ResourceQuota>(obj),
        "LimitRange" => round_trip::<core::LimitRange>(obj),
        "Deployment" => round_trip::<apps::Deployment>(obj),
        "ReplicaSet" => round_trip::<apps::ReplicaSet>(obj),
        "DaemonSet" => round_trip::<apps::DaemonSet>(obj),
        "StatefulSet" => round_trip::<apps::StatefulSet>(obj),
        "ControllerRevision" => round_trip::<apps::ControllerRevision>(obj),
        "PriorityClass" => round_trip::<k8s_openapi::api::scheduling::v1::PriorityClass>(obj),
        "Job" => round_trip::<batch::Job>(obj),
        "CronJob" => round_trip::<batch::CronJob>(obj),
        "Lease" => round_trip::<coordination::Lease>(obj),
        "EndpointSlice" => round_trip::<discovery::EndpointSlice>(obj),
        "Role" => round_trip::<rbac::Role>(obj),
        "ClusterRole" => round_trip::<rbac::ClusterRole>(obj),
        "RoleBinding" => round_trip::<rbac::RoleBinding>(obj),
        "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(obj),
        "HorizontalPodAutoscaler" => round_trip::<autoscaling::HorizontalPodAutoscaler>(obj),
        _ => return None,
    })
}

/// Paths present (and not null) in `sent` but missing from `kept`.
fn missing(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (key, v) in s {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => missing(v, kv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (sv, kv)) in s.iter().zip(k).enumerate() {
                missing(sv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks `obj` strictly: 400 BadRequest naming unknown fields or a value of the wrong type.
pub fn strict(kind: &str, obj: &Value) -> Result<(), ApiError> {
    let Some(kept) = typed(kind, obj) else {
        return Ok(());
    };
    let kept =
        kept.map_err(|e| ApiError::BadRequest(format!("{kind} in version is invalid: {e}")))?;
    let mut unknown = Vec::new();
    missing(obj, &kept, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(());
    }
    let list = unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ApiError::BadRequest(format!(
        "strict decoding error: {list}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        let good = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"cpu": "100m"}}, "ports": [{"containerPort": 80}]}]}}}});
        strict("Deployment", &good).unwrap();
        let mut typo = good.clone();
        typo["spec"]["replicaz"] = json!(3);
        typo["spec"]["template"]["spec"]["containers"][0]["imag"] = json!("x");
        let err = strict("Deployment", &typo).unwrap_err().to_string();
        assert!(err.contains(r#"unknown field "spec.replicaz""#), "{err}");
        assert!(
            err.contains(r#"unknown field "spec.template.spec.containers[0].imag""#),
            "{err}"
        );
        let mut wrong = good.clone();
        wrong["spec"]["replicas"] = json!("two");
        assert!(matches!(
            strict("Deployment", &wrong),
            Err(ApiError::BadRequest(_))
        ));
        strict("Widget", &json!({"anything": 1})).unwrap();
    }
}
