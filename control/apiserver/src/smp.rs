//! Strategic merge patch, as kubectl sends it for built-in kinds.
//!
//! Like a JSON merge patch (maps merge, `null` deletes), except that lists whose elements
//! have a merge key merge element by element (a container patch names the container it
//! changes), some primitive lists merge as sets (`finalizers`), and the directives
//! `$patch` (`replace`, `delete`, `merge`), `$setElementOrder/<list>`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<list>` apply. The merge keys are those of the built-in types.

use serde_json::{Map, Value};

use crate::status::ApiError;

/// The fields that tell apart the elements of list field `field` (whose elements look like
/// `sample`), if the built-in types key it (`patchMergeKey`, and server-side apply's
/// `x-kubernetes-list-map-keys`; the first is the merge key).
pub(crate) fn list_keys(field: &str, sample: Option<&Value>) -> Option<&'static [&'static str]> {
    let has = |k: &str| sample.and_then(|s| s.get(k)).is_some();
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "containerStatuses"
        | "initContainerStatuses" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "hostAliases" => &["ip"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        "readinessGates" => &["conditionType"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "ports" if has("containerPort") => &["containerPort", "protocol"],
        "ports" if has("port") => &["port", "protocol"],
        _ => return None,
    })
}

/// The merge key of list field `field` whose elements look like `sample`.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    list_keys(field, sample).map(|keys| keys[0])
}

/// Primitive lists that merge as sets.
fn merges_as_set(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(format!("invalid strategic merge patch: {msg}"))
}

/// Applies strategic merge patch `patch` to `original`.
pub fn apply(original: &Value, patch: &Value) -> Result<Value, ApiError> {
    match (original, patch) {
        (Value::Object(o), Value::Object(p)) => Ok(Value::Object(merge_map(o, p)?)),
        (_, Value::Object(p)) => {
            // Nothing to merge into: the patch (without directives) is the value.
            Ok(Value::Object(merge_map(&Map::new(), p)?))
        }
        _ => Err(bad("the patch must be a JSON object".into())),
    }
}

fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut out = patch.clone();
            out.remove("$patch");
            return Ok(out);
        }
        Some("delete") => return Ok(Map::new()),
        Some("merge") | None => {}
        Some(other) => return Err(bad(format!("unknown $patch directive {other:?}"))),
    }
    let mut out = original.clone();
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), value.clone()));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(drop)) = (out.get_mut(field), value.as_array()) {
                list.retain(|v| !drop.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                out.remove(key);
            }
            Value::Object(p) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    out.remove(key);
                    continue;
                }
                let merged = match out.get(key) {
                    Some(Value::Object(o)) => merge_map(o, p)?,
                    _ => merge_map(&Map::new(), p)?,
                };
                out.insert(key.clone(), Value::Object(merged));
            }
            Value::Array(p) => {
                let merged = merge_list(key, out.get(key).and_then(Value::as_array), p)?;
                out.insert(key.clone(), Value::Array(merged));
            }
            other => {
                out.insert(key.clone(), other.clone());
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (out.get_mut(&field), order.as_array()) {
            reorder(&field, list, order);
        }
    }
    Ok(out)
}

fn merge_list(
    field: &str,
    original: Option<&Vec<Value>>,
    patch: &[Value],
) -> Result<Vec<Value>, ApiError> {
    let original = original.cloned().unwrap_or_default();
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .collect());
    }
    if merges_as_set(field) {
        let mut out = original;
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(out);
    }
    let Some(key) = merge_key(field, patch.first().or(original.first())) else {
        return Ok(patch.to_vec());
    };
    let mut out = original;
    for elem in patch {
        let Some(obj) = elem.as_object() else {
            return Err(bad(format!(
                "{field} elements must be objects with {key:?}"
            )));
        };
        let id = obj.get(key);
        let pos = out.iter().position(|o| o.get(key) == id && id.is_some());
        if obj.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                out.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => {
                let merged = match &out[i] {
                    Value::Object(o) => merge_map(o, obj)?,
                    _ => merge_map(&Map::new(), obj)?,
                };
                out[i] = Value::Object(merged);
            }
            None => out.push(Value::Object(merge_map(&Map::new(), obj)?)),
        }
    }
    Ok(out)
}

/// Orders `list` as `order` names its elements (by merge key, or by value for primitive
/// lists); elements `order` does not name keep their relative order at the end.
fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let key = merge_key(field, list.first());
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let rank = |v: &Value| {
        let i = id(v);
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k).cloned() == i,
                None => Some(o.clone()) == i,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_other_lists_replace() {
        let deploy = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "busybox"}
        ], "tolerations": [{"key": "a"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "nginx:2"}],
            "tolerations": [{"key": "b"}]
        }}}});
        let out = apply(&deploy, &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            cs[0],
            json!({"name": "web", "image": "nginx:2", "ports": [{"containerPort": 80}]})
        );
        assert_eq!(cs[1]["name"], "side");
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "b"}])
        );
    }

    #[test]
    fn directives_delete_replace_and_order() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
                          "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let out = apply(
            &orig,
            &json!({
                "metadata": {"labels": {"a": null}, "finalizers": ["y"]},
                "spec": {"containers": [{"name": "a", "$patch": "delete"}, {"name": "c"}],
                         "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}]}
            }),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "b"}])
        );
        let replaced = apply(
            &orig,
            &json!({"spec": {"$patch": "replace", "paused": true}}),
        )
        .unwrap();
        assert_eq!(replaced["spec"], json!({"paused": true}));
        let service = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}});
        let out = apply(
            &service,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"][0],
            json!({"port": 80, "name": "http", "targetPort": 8080})
        );
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert!(apply(&orig, &json!([1])).is_err());
    }
}
