//! Checks against the built-in types. Every written object must decode into its
//! `k8s-openapi` type: a value of the wrong type is a 400 naming the field, as Kubernetes
//! cannot handle such a body either. Fields the type does not know are what field validation
//! (`?fieldValidation=`) decides: `Strict` (kubectl's default) refuses them with a 400 naming
//! each; `Warn` (the default when unset) drops them and warns (a `Warning` header per field);
//! `Ignore` drops them. Nothing a typed client cannot read is ever stored.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::status::ApiError;

/// What to do with fields the type does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Refuse the object, naming them.
    Strict,
    /// Drop them, with a warning each (Kubernetes' default).
    #[default]
    Warn,
    /// Drop them.
    Ignore,
}

impl Mode {
    /// The `fieldValidation` parameter's value.
    pub fn parse(v: &str) -> Result<Mode, ApiError> {
        match v {
            "Strict" => Ok(Mode::Strict),
            "Warn" | "" => Ok(Mode::Warn),
            "Ignore" => Ok(Mode::Ignore),
            other => Err(ApiError::BadRequest(format!(
                "fieldValidation {other:?} is not one of Strict, Warn, Ignore"
            ))),
        }
    }
}

/// One step of a field path: a field name, or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
}

fn steps(path: &serde_ignored::Path<'_>, out: &mut Vec<Step>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            steps(parent, out);
            out.push(Step::Index(*index));
        }
        Path::Map { parent, key } => {
            steps(parent, out);
            out.push(Step::Field(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => steps(parent, out),
    }
}

/// A path as Kubernetes prints it: `spec.template.spec.containers[0].imag`.
fn display(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(f);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// `path` as a JSON pointer into the object.
fn pointer(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        out.push('/');
        match step {
            Step::Field(f) => out.push_str(&f.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

/// Removes the field at `path` from `obj`, if it is there.
fn remove(obj: &mut Value, path: &[Step]) {
    if let Some((Step::Field(last), parent)) = path.split_last() {
        if let Some(m) = obj
            .pointer_mut(&pointer(parent))
            .and_then(Value::as_object_mut)
        {
            m.remove(last);
        }
    }
}

/// Decodes an object into a type, noting the fields the type does not know.
struct Decodes<'a> {
    obj: &'a Value,
    unknown: &'a mut Vec<Vec<Step>>,
}

impl crate::kinds::Visitor for Decodes<'_> {
    type Out = Result<(), String>;

    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Out {
        let Decodes { obj, unknown } = self;
        let mut note = |path: serde_ignored::Path<'_>| {
            let mut at = Vec::new();
            steps(&path, &mut at);
            unknown.push(at);
        };
        let decoded: Result<T, _> =
            T::deserialize(serde_ignored::Deserializer::new(obj, &mut note));
        if decoded.is_ok() {
            return Ok(());
        }
        // Only a failure pays for tracking where it happened.
        match serde_path_to_error::deserialize::<_, T>(obj) {
            Ok(_) => Ok(()),
            Err(e) if e.path().to_string() == "." => Err(e.inner().to_string()),
            Err(e) => Err(format!("{}: {}", e.path(), e.inner())),
        }
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

/// Checks that `obj` decodes as its kind (400 naming the field of the wrong type), and deals
/// with the fields its type does not know as `mode` says: a 400 naming them, or dropping
/// them from `obj`. Gives the warnings to send (one per dropped field, in `Warn` mode).
pub fn check(kind: &str, obj: &mut Value, mode: Mode) -> Result<Vec<String>, ApiError> {
    let mut unknown = Vec::new();
    let decoded = crate::kinds::visit(
        kind,
        "",
        Decodes {
            obj,
            unknown: &mut unknown,
        },
    );
    if let Some(Err(why)) = decoded {
        return Err(cannot_handle(kind, obj, &why));
    }
    // A field sent as null is as good as absent.
    unknown.retain(|path| obj.pointer(&pointer(path)).is_some_and(|v| !v.is_null()));
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let named: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field \"{}\"", display(p)))
        .collect();
    if mode == Mode::Strict {
        return Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            named.join(", ")
        )));
    }
    for path in &unknown {
        remove(obj, path);
    }
    Ok(if mode == Mode::Warn {
        named
    } else {
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"cpu": "100m"}}, "ports": [{"containerPort": 80}]}]}}}})
    }

    #[test]
    fn unknown_fields_are_refused_dropped_with_a_warning_or_dropped() {
        let mut ok = good();
        assert_eq!(
            check("Deployment", &mut ok, Mode::Strict).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(ok, good());
        let mut typo = good();
        typo["spec"]["replicaz"] = json!(3);
        typo["spec"]["template"]["spec"]["containers"][0]["imag"] = json!("x");
        // Sent as null: as good as absent.
        typo["spec"]["nothing"] = Value::Null;
        let err = check("Deployment", &mut typo.clone(), Mode::Strict)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("strict decoding error: "), "{err}");
        assert!(err.contains(r#"unknown field "spec.replicaz""#), "{err}");
        assert!(
            err.contains(r#"unknown field "spec.template.spec.containers[0].imag""#),
            "{err}"
        );
        assert!(!err.contains("nothing"), "{err}");
        let mut warned = typo.clone();
        let warnings = check("Deployment", &mut warned, Mode::Warn).unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warned["spec"].get("replicaz").is_none());
        assert!(warned["spec"]["template"]["spec"]["containers"][0]
            .get("imag")
            .is_none());
        assert_eq!(
            warned["spec"]["template"]["spec"]["containers"][0]["image"],
            "i"
        );
        let mut ignored = typo.clone();
        assert!(check("Deployment", &mut ignored, Mode::Ignore)
            .unwrap()
            .is_empty());
        assert!(ignored["spec"].get("replicaz").is_none());
        // Kinds without a type are left alone.
        let mut widget = json!({"anything": 1});
        check("Widget", &mut widget, Mode::Strict).unwrap();
    }

    #[test]
    fn a_wrong_type_is_refused_in_every_mode_naming_the_field() {
        for mode in [Mode::Strict, Mode::Warn, Mode::Ignore] {
            let mut wrong = good();
            wrong["spec"]["replicas"] = json!("two");
            let err = check("Deployment", &mut wrong, mode).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)));
            let err = err.to_string();
            assert!(
                err.starts_with(
                    r#"Deployment in version "v1" cannot be handled as a Deployment: spec.replicas: "#
                ),
                "{err}"
            );
            let mut label = good();
            label["metadata"]["labels"]["a"] = json!(true);
            let err = check("Deployment", &mut label, mode)
                .unwrap_err()
                .to_string();
            assert!(err.contains("metadata.labels.a: "), "{err}");
        }
        assert_eq!(Mode::parse("").unwrap(), Mode::Warn);
        assert!(Mode::parse("Loud").is_err());
    }
}
