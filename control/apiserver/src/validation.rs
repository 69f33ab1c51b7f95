//! Checks against the built-in types. Every written object must decode into its
//! `k8s-openapi` type (a value of the wrong type is a 400, as Kubernetes cannot handle such
//! a body either); field validation (`?fieldValidation=Strict`, what kubectl sends by
//! default) also decodes it and encodes it again: a field that does not survive the round
//! trip is unknown.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::status::ApiError;

/// Decodes an object into a type and encodes it again.
struct RoundTrip<'a>(&'a Value);

impl crate::kinds::Visitor for RoundTrip<'_> {
    type Out = Result<Value, String>;

    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Out {
        let typed: T = serde_json::from_value(self.0.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
}

/// Decodes an object into a type, keeping nothing.
struct Decodes<'a>(&'a Value);

impl crate::kinds::Visitor for Decodes<'_> {
    type Out = Result<(), String>;

    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Out {
        T::deserialize(self.0)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// What Kubernetes answers for a body that does not decode as its kind.
fn cannot_handle(kind: &str, obj: &Value, why: &str) -> ApiError {
    let version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(|v| v.rsplit('/').next().unwrap_or(v))
        .unwrap_or("");
    ApiError::BadRequest(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}"
    ))
}

/// Checks that `obj` decodes as its kind and, when `strict`, that it has no unknown fields:
/// 400 BadRequest naming the wrong type or the unknown fields.
pub fn check(kind: &str, obj: &Value, strict: bool) -> Result<(), ApiError> {
    if strict {
        return self::strict(kind, obj);
    }
    match crate::kinds::visit(kind, "", Decodes(obj)) {
        Some(Err(why)) => Err(cannot_handle(kind, obj, &why)),
        _ => Ok(()),
    }
}

/// `obj` decoded as its kind (as stored) and encoded again; `None` for kinds without a type.
fn typed(kind: &str, obj: &Value) -> Option<Result<Value, String>> {
    crate::kinds::visit(kind, "", RoundTrip(obj))
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
fn strict(kind: &str, obj: &Value) -> Result<(), ApiError> {
    let Some(kept) = typed(kind, obj) else {
        return Ok(());
    };
    let kept = kept.map_err(|why| cannot_handle(kind, obj, &why))?;
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
        // Without field validation unknown fields pass, but a wrong type never does.
        check("Deployment", &typo, false).unwrap();
        let err = check("Deployment", &wrong, false).unwrap_err().to_string();
        assert!(
            err.starts_with(r#"Deployment in version "v1" cannot be handled as a Deployment: "#),
            "{err}"
        );
        let mut label = good.clone();
        label["metadata"]["labels"]["a"] = json!(true);
        assert!(check("Deployment", &label, false).is_err());
    }
}
