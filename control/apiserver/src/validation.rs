//! Field validation against the built-in types (`?fieldValidation=Strict`, what kubectl
//! sends by default): an object is decoded into its `k8s-openapi` type and encoded again;
//! a field that does not survive the round trip is unknown, and a value of the wrong type
//! fails the decoding.

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
