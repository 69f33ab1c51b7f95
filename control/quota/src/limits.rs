//! LimitRanges: the defaults Kubernetes fills into a LimitRange's items, the requests and
//! limits they give containers that state none, and the bounds they hold pods to.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::quantity::milli;

/// The annotation that says what a LimitRange filled in.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

fn items(range: &Value) -> &[Value] {
    range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn map<'a>(item: &'a Value, field: &str) -> Option<&'a Map<String, Value>> {
    item.get(field).and_then(Value::as_object)
}

/// Fills in a LimitRange's defaults as Kubernetes does: for `Container` items, a missing
/// `default` limit is the `max`, a missing `defaultRequest` is the `default` limit, else the
/// `min`.
pub fn default_range(range: &mut Value) {
    let Some(items) = range
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in items {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let max = map(item, "max").cloned().unwrap_or_default();
        let min = map(item, "min").cloned().unwrap_or_default();
        let mut default = map(item, "default").cloned().unwrap_or_default();
        let mut request = map(item, "defaultRequest").cloned().unwrap_or_default();
        for (k, v) in max {
            default.entry(k).or_insert(v);
        }
        for (k, v) in default.iter().chain(min.iter()) {
            request.entry(k.clone()).or_insert(v.clone());
        }
        if !default.is_empty() {
            item["default"] = Value::Object(default);
        }
        if !request.is_empty() {
            item["defaultRequest"] = Value::Object(request);
        }
    }
}

/// What is wrong with LimitRange `range` (defaults filled in): field paths and messages, in
/// Kubernetes' words.
pub fn validate_range(range: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, item) in items(range).iter().enumerate() {
        let at = |field: &str, k: &str| format!("spec.limits[{i}].{field}[{k}]");
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "Pod" {
            for field in ["default", "defaultRequest"] {
                if map(item, field).is_some_and(|m| !m.is_empty()) {
                    out.push((
                        format!("spec.limits[{i}].{field}"),
                        "Forbidden: may not be specified when `type` is 'Pod'".into(),
                    ));
                }
            }
        }
        let get = |field: &str| -> BTreeMap<String, (String, Option<u128>)> {
            map(item, field)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let s = v.as_str().unwrap_or("").to_string();
                            let n = milli(&s);
                            (k.clone(), (s, n))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (min, max, default, request, ratio) = (
            get("min"),
            get("max"),
            get("default"),
            get("defaultRequest"),
            get("maxLimitRequestRatio"),
        );
        for (field, m) in [
            ("min", &min),
            ("max", &max),
            ("default", &default),
            ("defaultRequest", &request),
            ("maxLimitRequestRatio", &ratio),
        ] {
            for (k, (s, n)) in m {
                if n.is_none() {
                    out.push((
                        at(field, k),
                        format!("Invalid value: \"{s}\": must be a valid quantity"),
                    ));
                }
            }
        }
        // (lower field, upper field, message): lower must not exceed upper.
        let pairs: [(&str, &BTreeMap<_, _>, &str, &BTreeMap<_, _>, &str); 5] = [
            (
                "min",
                &min,
                "max",
                &max,
                "min value {lo} is greater than max value {hi}",
            ),
            (
                "defaultRequest",
                &request,
                "default",
                &default,
                "default request value {lo} is greater than default limit value {hi}",
            ),
            (
                "defaultRequest",
                &min,
                "defaultRequest",
                &request,
                "min value {lo} is greater than default request value {hi}",
            ),
            (
                "defaultRequest",
                &request,
                "max",
                &max,
                "default request value {lo} is greater than max value {hi}",
            ),
            (
                "default",
                &default,
                "max",
                &max,
                "default value {lo} is greater than max value {hi}",
            ),
        ];
        for (field, lo, _, hi, msg) in pairs {
            for (k, (ls, ln)) in lo {
                if let (Some(l), Some((hs, Some(h)))) = (ln, hi.get(k)) {
                    if l > h {
                        let m = msg.replace("{lo}", ls).replace("{hi}", hs);
                        out.push((at(field, k), format!("Invalid value: \"{ls}\": {m}")));
                    }
                }
            }
        }
        for (k, (ls, l)) in &default {
            if let (Some(l), Some((ms, Some(m)))) = (l, min.get(k)) {
                if l < m {
                    out.push((
                        at("default", k),
                        format!(
                            "Invalid value: \"{ls}\": min value {ms} is greater than default value {ls}"
                        ),
                    ));
                }
            }
        }
        for (k, (s, n)) in &ratio {
            if n.is_some_and(|n| n < 1000) {
                out.push((
                    at("maxLimitRequestRatio", k),
                    format!("Invalid value: \"{s}\": ratio {s} is less than 1"),
                ));
            }
        }
    }
    out
}

/// Gives the containers of `pod` the default requests and limits of `ranges` (the
/// namespace's LimitRanges, defaults filled in) they do not state; the first range to name a
/// resource wins. Records what it set in the [`ANNOTATION`], as Kubernetes does.
pub fn apply_defaults(pod: &mut Value, ranges: &[Value]) {
    let mut notes: Vec<String> = Vec::new();
    for range in ranges {
        for item in items(range) {
            if item.get("type").and_then(Value::as_str) != Some("Container") {
                continue;
            }
            for init in [false, true] {
                let field = if init { "initContainers" } else { "containers" };
                let Some(list) = pod
                    .pointer_mut(&format!("/spec/{field}"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for c in list.iter_mut() {
                    let name = c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    for (which, from) in [("requests", "defaultRequest"), ("limits", "default")] {
                        let Some(defaults) = map(item, from) else {
                            continue;
                        };
                        let mut set: Vec<&str> = Vec::new();
                        if !c.get("resources").is_some_and(Value::is_object) {
                            c["resources"] = json!({});
                        }
                        if !c["resources"].get(which).is_some_and(Value::is_object) {
                            c["resources"][which] = json!({});
                        }
                        let target = c["resources"][which]
                            .as_object_mut()
                            .expect("made an object above");
                        for (k, v) in defaults {
                            if !target.contains_key(k) {
                                target.insert(k.clone(), v.clone());
                                set.push(k);
                            }
                        }
                        if target.is_empty() {
                            c["resources"]
                                .as_object_mut()
                                .expect("made an object above")
                                .remove(which);
                        }
                        if !set.is_empty() {
                            let singular = &which[..which.len() - 1];
                            notes.push(format!(
                                "{} {singular} for {} {name}",
                                set.join(", "),
                                if init { "init container" } else { "container" }
                            ));
                        }
                    }
                }
            }
        }
    }
    if !notes.is_empty() {
        let meta = &mut pod["metadata"];
        if !meta.get("annotations").is_some_and(Value::is_object) {
            meta["annotations"] = json!({});
        }
        meta["annotations"][ANNOTATION] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

/// Checks `amounts` (one container's, or the whole pod's) against one LimitRange item.
fn check(
    item: &Value,
    of: &str,
    requests: &BTreeMap<String, u128>,
    limits: &BTreeMap<String, u128>,
    shown: &dyn Fn(&str, &str) -> String,
    out: &mut Vec<String>,
) {
    let bound = |field: &str| -> Vec<(String, String, u128)> {
        map(item, field)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let s = v.as_str()?;
                        Some((k.clone(), s.to_string(), milli(s)?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for (k, s, min) in bound("min") {
        match requests.get(&k) {
            None => out.push(format!(
                "minimum {k} usage per {of} is {s}.  No request is specified"
            )),
            Some(r) if *r < min => out.push(format!(
                "minimum {k} usage per {of} is {s}, but request is {}",
                shown("requests", &k)
            )),
            _ => {}
        }
        if limits.get(&k).is_some_and(|l| *l < min) {
            out.push(format!(
                "minimum {k} usage per {of} is {s}, but limit is {}",
                shown("limits", &k)
            ));
        }
    }
    for (k, s, max) in bound("max") {
        match limits.get(&k) {
            None => out.push(format!(
                "maximum {k} usage per {of} is {s}.  No limit is specified"
            )),
            Some(l) if *l > max => out.push(format!(
                "maximum {k} usage per {of} is {s}, but limit is {}",
                shown("limits", &k)
            )),
            _ => {}
        }
        if requests.get(&k).is_some_and(|r| *r > max) {
            out.push(format!(
                "maximum {k} usage per {of} is {s}, but request is {}",
                shown("requests", &k)
            ));
        }
    }
    for (k, s, ratio) in bound("maxLimitRequestRatio") {
        let (req, lim) = (
            requests.get(&k).copied().unwrap_or(0),
            limits.get(&k).copied().unwrap_or(0),
        );
        if req == 0 {
            out.push(format!("{k} max limit to request ratio per {of} is {s}, but no request is specified or request is 0"));
        } else if lim == 0 {
            out.push(format!("{k} max limit to request ratio per {of} is {s}, but no limit is specified or limit is 0"));
        } else if lim * 1000 > ratio * req {
            out.push(format!(
                "{k} max limit to request ratio per {of} is {s}, but provided ratio is {:.6}",
                lim as f64 / req as f64
            ));
        }
    }
}

/// What in `pod` breaks the bounds of `ranges` (the namespace's LimitRanges): `min`, `max`
/// and `maxLimitRequestRatio` per container and per pod, in Kubernetes' words.
pub fn violations(pod: &Value, ranges: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for range in ranges {
        for item in items(range) {
            match item.get("type").and_then(Value::as_str) {
                Some("Container") => {
                    for c in crate::containers(pod, false)
                        .iter()
                        .chain(crate::containers(pod, true))
                    {
                        let shown = |which: &str, k: &str| {
                            c.pointer(&format!("/resources/{which}/{k}"))
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string()
                        };
                        check(
                            item,
                            "Container",
                            &crate::container_resources(c, "requests"),
                            &crate::container_resources(c, "limits"),
                            &shown,
                            &mut out,
                        );
                    }
                }
                Some("Pod") => {
                    let requests = crate::pod_resources(pod, "requests");
                    let limits = crate::pod_resources(pod, "limits");
                    let shown = |which: &str, k: &str| {
                        let m = if which == "requests" {
                            &requests
                        } else {
                            &limits
                        };
                        crate::quantity::format(m.get(k).copied().unwrap_or(0), crate::is_bytes(k))
                    };
                    check(item, "Pod", &requests, &limits, &shown, &mut out);
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(item: Value) -> Value {
        let mut r = json!({"metadata": {"name": "lr"}, "spec": {"limits": [item]}});
        default_range(&mut r);
        r
    }

    #[test]
    fn items_default_as_in_kubernetes() {
        let r = range(json!({"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}}));
        let item = &r["spec"]["limits"][0];
        assert_eq!(item["default"], json!({"cpu": "2"}));
        assert_eq!(
            item["defaultRequest"],
            json!({"cpu": "2", "memory": "64Mi"})
        );
        let pod_item = range(json!({"type": "Pod", "max": {"cpu": "2"}}));
        assert!(pod_item["spec"]["limits"][0].get("default").is_none());
    }

    #[test]
    fn containers_without_resources_get_the_defaults() {
        let r = range(json!({"type": "Container",
            "default": {"cpu": "500m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "100m"}}));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app"},
            {"name": "side", "resources": {"limits": {"cpu": "1"}}}]}});
        apply_defaults(&mut pod, &[r]);
        let app = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(app["requests"], json!({"cpu": "100m", "memory": "256Mi"}));
        assert_eq!(app["limits"], json!({"cpu": "500m", "memory": "256Mi"}));
        let side = &pod["spec"]["containers"][1]["resources"];
        assert_eq!(side["limits"], json!({"cpu": "1", "memory": "256Mi"}));
        assert_eq!(
            pod["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; cpu, memory request for container side; memory limit for container side"
        );
    }

    #[test]
    fn bounds_are_checked_per_container_and_per_pod() {
        let ranges = [
            range(
                json!({"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"},
                         "maxLimitRequestRatio": {"cpu": "4"}}),
            ),
            range(json!({"type": "Pod", "max": {"memory": "1Gi"}})),
        ];
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "50m", "memory": "1Gi"},
                                        "limits": {"cpu": "2", "memory": "1Gi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "400m", "memory": "512Mi"}}}]}});
        assert_eq!(
            violations(&pod, &ranges),
            vec![
                "minimum cpu usage per Container is 100m, but request is 50m".to_string(),
                "maximum cpu usage per Container is 1, but limit is 2".to_string(),
                "cpu max limit to request ratio per Container is 4, but provided ratio is 40.000000"
                    .to_string(),
                "maximum memory usage per Pod is 1Gi, but limit is 1536Mi".to_string(),
            ]
        );
    }

    #[test]
    fn inconsistent_ranges_are_invalid() {
        let r = range(
            json!({"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"},
                             "maxLimitRequestRatio": {"memory": "500m"}}),
        );
        let errs: Vec<String> = validate_range(&r).into_iter().map(|(f, _)| f).collect();
        assert!(
            errs.contains(&"spec.limits[0].min[cpu]".to_string()),
            "{errs:?}"
        );
        assert!(errs.contains(&"spec.limits[0].maxLimitRequestRatio[memory]".to_string()));
        let p = json!({"spec": {"limits": [{"type": "Pod", "default": {"cpu": "1"}}]}});
        assert_eq!(validate_range(&p)[0].0, "spec.limits[0].default");
        assert!(
            validate_range(&range(json!({"type": "Container", "max": {"cpu": "x"}})))
                .iter()
                .any(|(_, m)| m.contains("must be a valid quantity"))
        );
    }
}
