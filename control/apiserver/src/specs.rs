//! Kind-specific checks of a spec that Kubernetes' validation makes and the typed round trip
//! cannot: workload selectors must select their template, CronJob schedules and time zones
//! must parse, and a StatefulSet's identity fields cannot change.

use serde_json::Value;

use crate::resources::Resource;
use crate::status::ApiError;

#[path = "../../controllers/src/cron.rs"]
#[allow(dead_code)]
mod cron;

fn invalid(res: &Resource, name: &str, causes: Vec<(String, String)>) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.into(),
        name: name.into(),
        causes,
    }
}

/// Whether a `metav1.LabelSelector` (as JSON) selects `labels`.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let by_label = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let by_expression = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .is_none_or(|es| {
            es.iter().all(|e| {
                let have = e["key"].as_str().and_then(|k| labels.get(k));
                let values = e["values"].as_array();
                let listed = |v: &Value| values.is_some_and(|vs| vs.contains(v));
                match e["operator"].as_str() {
                    Some("In") => have.is_some_and(listed),
                    Some("NotIn") => have.is_none_or(|v| !listed(v)),
                    Some("Exists") => have.is_some(),
                    Some("DoesNotExist") => have.is_none(),
                    _ => false,
                }
            })
        });
    by_label && by_expression
}

/// Whether a `metav1.LabelSelector` selects the labels `labels` (a JSON map).
pub fn selects_labels(selector: &Value, labels: &Value) -> bool {
    let empty = serde_json::Map::new();
    selects(selector, labels.as_object().unwrap_or(&empty))
}

fn empty_selector(selector: &Value) -> bool {
    let none = |key: &str| {
        selector.get(key).is_none_or(|v| match v {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => true,
        })
    };
    none("matchLabels") && none("matchExpressions")
}

/// The fields of a StatefulSet's spec an update may change.
const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
    "revisionHistoryLimit",
];

/// Checks `obj` (defaults applied) of kind `res`; `current` is the stored object on update.
pub fn check(res: &Resource, obj: &Value, current: Option<&Value>) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(spec) = obj.get("spec") else {
        return Ok(());
    };
    match res.kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "ReplicationController" => {
            let selector = crate::selectors::spec_selector(obj, res.kind).unwrap_or_default();
            let empty = serde_json::Map::new();
            let labels = spec
                .pointer("/template/metadata/labels")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if empty_selector(&selector) {
                return Err(invalid(
                    res,
                    name,
                    vec![(
                        "spec.selector".into(),
                        "Required value: a non-empty selector is required".into(),
                    )],
                ));
            }
            if !selects(&selector, labels) {
                return Err(invalid(
                    res,
                    name,
                    vec![(
                        "spec.template.metadata.labels".into(),
                        format!(
                            "Invalid value: {}: `selector` does not match template `labels`",
                            Value::Object(labels.clone())
                        ),
                    )],
                ));
            }
            if let Some(old) = current.and_then(|c| c.get("spec")) {
                let mutable = matches!(res.kind, "StatefulSet" | "ReplicationController");
                if !mutable && old.get("selector") != spec.get("selector") {
                    return Err(invalid(
                        res,
                        name,
                        vec![(
                            "spec.selector".into(),
                            "Invalid value: field is immutable".into(),
                        )],
                    ));
                }
                if res.kind == "StatefulSet" {
                    let fixed = |s: &Value| {
                        let mut s = s.clone();
                        if let Some(m) = s.as_object_mut() {
                            m.retain(|k, _| !STATEFULSET_MUTABLE.contains(&k.as_str()));
                        }
                        s
                    };
                    if fixed(old) != fixed(spec) {
                        return Err(invalid(
                            res,
                            name,
                            vec![(
                                "spec".into(),
                                "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
                            )],
                        ));
                    }
                }
            }
        }
        "HorizontalPodAutoscaler" => {
            let mut causes = Vec::new();
            let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
            let min = spec.get("minReplicas").and_then(Value::as_i64);
            if max < 1 {
                causes.push((
                    "spec.maxReplicas".into(),
                    format!("Invalid value: {max}: must be greater than or equal to 1"),
                ));
            }
            if let Some(min) = min {
                if min < 1 {
                    causes.push((
                        "spec.minReplicas".into(),
                        format!("Invalid value: {min}: must be greater than or equal to 1"),
                    ));
                } else if min > max && max >= 1 {
                    causes.push((
                        "spec.maxReplicas".into(),
                        format!(
                            "Invalid value: {max}: must be greater than or equal to `minReplicas`"
                        ),
                    ));
                }
            }
            for field in ["kind", "name"] {
                if spec
                    .pointer(&format!("/scaleTargetRef/{field}"))
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push((
                        format!("spec.scaleTargetRef.{field}"),
                        "Required value".into(),
                    ));
                }
            }
            if !causes.is_empty() {
                return Err(invalid(res, name, causes));
            }
        }
        "CronJob" => {
            let schedule = spec.get("schedule").and_then(Value::as_str).unwrap_or("");
            let mut causes = Vec::new();
            if schedule.is_empty() {
                causes.push(("spec.schedule".into(), "Required value".into()));
            } else if let Err(e) = cron::Schedule::parse(schedule) {
                causes.push((
                    "spec.schedule".into(),
                    format!("Invalid value: {schedule:?}: {e}"),
                ));
            }
            if let Some(z) = spec.get("timeZone").and_then(Value::as_str) {
                if jiff::tz::TimeZone::get(z).is_err() {
                    causes.push((
                        "spec.timeZone".into(),
                        format!("Invalid value: {z:?}: unknown time zone {z}"),
                    ));
                }
            }
            if !causes.is_empty() {
                return Err(invalid(res, name, causes));
            }
        }
        "LimitRange" => {
            let causes = flotilla_quota::limits::validate_range(obj);
            if !causes.is_empty() {
                return Err(invalid(res, name, causes));
            }
        }
        "ResourceQuota" => {
            let causes: Vec<(String, String)> = spec
                .get("hard")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter(|(_, v)| {
                    v.as_str()
                        .and_then(flotilla_quota::quantity::milli)
                        .is_none()
                })
                .map(|(k, v)| {
                    (
                        format!("spec.hard[{k}]"),
                        format!("Invalid value: {v}: must be a valid quantity"),
                    )
                })
                .collect();
            if !causes.is_empty() {
                return Err(invalid(res, name, causes));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(kind: &str) -> Resource {
        *crate::resources::RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("a built-in kind")
    }

    fn cause(e: ApiError) -> String {
        match e {
            ApiError::Invalid { causes, .. } => format!("{}: {}", causes[0].0, causes[0].1),
            other => panic!("not Invalid: {other:?}"),
        }
    }

    #[test]
    fn workload_selectors_must_select_their_template() {
        let d = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}}}});
        let e = check(&res("Deployment"), &d, None).unwrap_err();
        assert!(cause(e).contains("`selector` does not match template `labels`"));
        let none = json!({"metadata": {"name": "web"}, "spec": {"selector": {},
            "template": {"metadata": {"labels": {"app": "web"}}}}});
        assert!(
            cause(check(&res("ReplicaSet"), &none, None).unwrap_err()).starts_with("spec.selector")
        );
        let ok = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
            "template": {"metadata": {"labels": {"app": "web"}}}}});
        check(&res("DaemonSet"), &ok, None).unwrap();
        let mut changed = ok.clone();
        changed["spec"]["selector"] = json!({"matchLabels": {"app": "web"}});
        let e = check(&res("DaemonSet"), &changed, Some(&ok)).unwrap_err();
        assert!(cause(e).contains("immutable"));
    }

    #[test]
    fn statefulsets_change_only_what_kubernetes_allows() {
        let s = json!({"metadata": {"name": "db"}, "spec": {"replicas": 1, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}}}});
        let mut scaled = s.clone();
        scaled["spec"]["replicas"] = json!(3);
        check(&res("StatefulSet"), &scaled, Some(&s)).unwrap();
        let mut renamed = s.clone();
        renamed["spec"]["serviceName"] = json!("other");
        let e = check(&res("StatefulSet"), &renamed, Some(&s)).unwrap_err();
        assert!(cause(e).starts_with("spec: Forbidden"));
    }

    #[test]
    fn autoscalers_need_sane_bounds_and_a_target() {
        let hpa = |min: i64, max: i64| {
            json!({"metadata": {"name": "web"}, "spec": {"minReplicas": min, "maxReplicas": max,
                "scaleTargetRef": {"kind": "Deployment", "name": "web"}}})
        };
        check(&res("HorizontalPodAutoscaler"), &hpa(1, 3), None).unwrap();
        let e = check(&res("HorizontalPodAutoscaler"), &hpa(4, 3), None).unwrap_err();
        assert!(cause(e).contains("greater than or equal to `minReplicas`"));
        let e = check(&res("HorizontalPodAutoscaler"), &hpa(1, 0), None).unwrap_err();
        assert!(cause(e).starts_with("spec.maxReplicas"));
        let no_target =
            json!({"metadata": {"name": "web"}, "spec": {"maxReplicas": 2, "scaleTargetRef": {}}});
        let e = check(&res("HorizontalPodAutoscaler"), &no_target, None).unwrap_err();
        assert!(cause(e).starts_with("spec.scaleTargetRef.kind"));
    }

    #[test]
    fn cronjob_schedules_and_zones_must_parse() {
        let cj = |schedule: &str, zone: Value| {
            json!({"metadata": {"name": "tick"}, "spec": {"schedule": schedule, "timeZone": zone,
                "jobTemplate": {"spec": {}}}})
        };
        check(&res("CronJob"), &cj("*/5 * * * *", Value::Null), None).unwrap();
        check(&res("CronJob"), &cj("@daily", json!("Europe/Paris")), None).unwrap();
        let e = check(&res("CronJob"), &cj("every minute", Value::Null), None).unwrap_err();
        assert!(cause(e).starts_with("spec.schedule: Invalid value"));
        let e = check(&res("CronJob"), &cj("@daily", json!("Mars/Base")), None).unwrap_err();
        assert!(cause(e).starts_with("spec.timeZone"));
    }
}
