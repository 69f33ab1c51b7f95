//! Checks against the built-in types. Every written object must decode into its
//! `k8s-openapi` type: a value of the wrong type is a 400, as Kubernetes cannot handle such a
//! body either. Fields the type does not know are what field validation (`?fieldValidation=`)
//! decides: `Strict` (what kubectl sends by default) refuses them with a 400 naming each;
//! `Warn` (the default when unset) drops them and warns (a `Warning` header per field);
//! `Ignore` drops them. Nothing a typed client cannot read back is stored.
//!
//! Unknown fields are found by walking the object along a tree of the fields its type knows,
//! compiled once per kind from the type's schema (the one the OpenAPI documents publish):
//! no second decode, no copy of the object.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

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

/// Gives a type's schema and every schema it refers to.
struct SchemaOf;

impl crate::kinds::Visitor for SchemaOf {
    type Out = (Value, Map<String, Value>);

    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Out {
        let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
        let root = gen.subschema_for::<T>();
        (root.to_value(), gen.take_definitions(true))
    }
}

/// What a schema lets a value hold, as far as finding unknown fields goes.
#[derive(Debug)]
enum Shape {
    /// Anything: scalars, int-or-string, free-form objects (`fieldsV1`, raw extensions).
    Any,
    /// An object with these fields (index of each field's shape).
    Fields(HashMap<String, usize>),
    /// A map: every value has this shape.
    Map(usize),
    /// A list: every item has this shape.
    List(usize),
}

/// The fields a kind's type knows, at every depth. Shape 0 is [`Shape::Any`].
#[derive(Debug)]
struct Tree {
    shapes: Vec<Shape>,
    root: usize,
}

impl Tree {
    /// Compiles the tree of `kind`'s type; `None` for kinds without a type.
    fn of(kind: &str) -> Option<Tree> {
        let (root, defs) = crate::kinds::visit(kind, "", SchemaOf)?;
        let mut tree = Tree {
            shapes: vec![Shape::Any],
            root: 0,
        };
        let mut named = HashMap::new();
        tree.root = tree.compile(&root, &defs, &mut named);
        Some(tree)
    }

    /// The shape of `schema`, compiling what it refers to once (`named`: by definition name).
    fn compile(
        &mut self,
        schema: &Value,
        defs: &Map<String, Value>,
        named: &mut HashMap<String, usize>,
    ) -> usize {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            if let Some(&at) = named.get(name) {
                return at;
            }
            let Some(def) = defs.get(name) else {
                return 0;
            };
            // Reserved before compiling, so that a type that contains itself ends.
            let at = self.shapes.len();
            self.shapes.push(Shape::Any);
            named.insert(name.to_string(), at);
            let shape = self.compile(def, defs, named);
            let fresh = shape > at
                && shape == self.shapes.len() - 1
                && !named.values().any(|&v| v == shape);
            if fresh {
                self.shapes[at] = self.shapes.pop().unwrap_or(Shape::Any);
                return at;
            }
            // The definition is free-form, or another definition: use that one.
            named.insert(name.to_string(), shape);
            return shape;
        }
        if let Some([only]) = schema
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            return self.compile(only, defs, named);
        }
        let shape = if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let fields = props
                .iter()
                .map(|(k, v)| (k.clone(), self.compile(v, defs, named)))
                .collect();
            Shape::Fields(fields)
        } else if let Some(items) = schema.get("items") {
            match self.compile(items, defs, named) {
                0 => return 0,
                at => Shape::List(at),
            }
        } else if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            match self.compile(values, defs, named) {
                0 => return 0,
                at => Shape::Map(at),
            }
        } else {
            return 0;
        };
        self.shapes.push(shape);
        self.shapes.len() - 1
    }

    /// Notes in `out` the path of every field in `value` that shape `at` does not know,
    /// removing each when `drop`. `path` is `value`'s own path, as Kubernetes prints them
    /// (`spec.template.spec.containers[0].imag`).
    fn unknown(
        &self,
        at: usize,
        value: &mut Value,
        path: &mut String,
        drop: bool,
        out: &mut Vec<String>,
    ) {
        let len = path.len();
        match (&self.shapes[at], value) {
            (Shape::Fields(fields), Value::Object(m)) => {
                let before = out.len();
                for (k, v) in m.iter_mut() {
                    push_field(path, k);
                    match fields.get(k) {
                        Some(&0) => {}
                        Some(&inner) => self.unknown(inner, v, path, drop, out),
                        None => out.push(path.clone()),
                    }
                    path.truncate(len);
                }
                if drop && out.len() > before {
                    m.retain(|k, _| fields.contains_key(k));
                }
            }
            (&Shape::Map(inner), Value::Object(m)) => {
                for (k, v) in m.iter_mut() {
                    push_field(path, k);
                    self.unknown(inner, v, path, drop, out);
                    path.truncate(len);
                }
            }
            (&Shape::List(inner), Value::Array(items)) => {
                for (i, v) in items.iter_mut().enumerate() {
                    path.push_str(&format!("[{i}]"));
                    self.unknown(inner, v, path, drop, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
}

fn push_field(path: &mut String, field: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(field);
}

/// The tree of `kind`, compiled on first use and kept.
fn tree(kind: &str) -> Option<Arc<Tree>> {
    static TREES: OnceLock<RwLock<HashMap<String, Option<Arc<Tree>>>>> = OnceLock::new();
    let trees = TREES.get_or_init(Default::default);
    if let Some(t) = trees.read().unwrap_or_else(|p| p.into_inner()).get(kind) {
        return t.clone();
    }
    let t = Tree::of(kind).map(Arc::new);
    trees
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(kind.to_string(), t.clone());
    t
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

/// Checks `obj` against its kind's type: 400 BadRequest for a value of the wrong type, or,
/// under `Strict`, naming every unknown field. Otherwise unknown fields are removed from `obj`
/// and the warnings for them given (none under `Ignore`).
pub fn check(kind: &str, obj: &mut Value, mode: Mode) -> Result<Vec<String>, ApiError> {
    if let Some(Err(why)) = crate::kinds::visit(kind, "", Decodes(obj)) {
        return Err(cannot_handle(kind, obj, &why));
    }
    let Some(tree) = tree(kind) else {
        return Ok(Vec::new());
    };
    let mut unknown = Vec::new();
    tree.unknown(
        tree.root,
        obj,
        &mut String::new(),
        mode != Mode::Strict,
        &mut unknown,
    );
    let texts = unknown.iter().map(|p| format!("unknown field \"{p}\""));
    match mode {
        _ if unknown.is_empty() => Ok(Vec::new()),
        Mode::Strict => Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            texts.collect::<Vec<_>>().join(", ")
        ))),
        Mode::Warn => Ok(texts.collect()),
        Mode::Ignore => Ok(Vec::new()),
    }
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
        let strict = |o: &Value| check("Deployment", &mut o.clone(), Mode::Strict);
        assert_eq!(strict(&good).unwrap(), Vec::<String>::new());
        let mut typo = good.clone();
        typo["spec"]["replicaz"] = json!(3);
        typo["spec"]["template"]["spec"]["containers"][0]["imag"] = json!("x");
        let err = strict(&typo).unwrap_err().to_string();
        assert!(err.contains(r#"unknown field "spec.replicaz""#), "{err}");
        assert!(
            err.contains(r#"unknown field "spec.template.spec.containers[0].imag""#),
            "{err}"
        );
        let mut wrong = good.clone();
        wrong["spec"]["replicas"] = json!("two");
        assert!(matches!(strict(&wrong), Err(ApiError::BadRequest(_))));
        check("Widget", &mut json!({"anything": 1}), Mode::Strict).unwrap();
        // Warn drops unknown fields and names them; Ignore drops them silently.
        let mut warned = typo.clone();
        let texts = check("Deployment", &mut warned, Mode::Warn).unwrap();
        assert_eq!(
            texts,
            [
                r#"unknown field "spec.replicaz""#,
                r#"unknown field "spec.template.spec.containers[0].imag""#
            ]
        );
        assert_eq!(warned, good);
        let mut ignored = typo.clone();
        assert!(check("Deployment", &mut ignored, Mode::Ignore)
            .unwrap()
            .is_empty());
        assert_eq!(ignored, good);
        // A wrong type is refused whatever the mode.
        let err = check("Deployment", &mut wrong.clone(), Mode::Ignore)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(r#"Deployment in version "v1" cannot be handled as a Deployment: "#),
            "{err}"
        );
        let mut label = good.clone();
        label["metadata"]["labels"]["a"] = json!(true);
        assert!(check("Deployment", &mut label, Mode::Warn).is_err());
    }

    #[test]
    fn free_form_fields_maps_and_int_or_string_hold_anything() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"any-key": "v"}, "annotations": {"x/y": "z"},
                "managedFields": [{"manager": "m", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}}}}}}]},
            "spec": {"nodeSelector": {"disk": "ssd"}, "overhead": {"cpu": "1"},
                "containers": [{"name": "c", "image": "i",
                    "readinessProbe": {"httpGet": {"port": "http", "path": "/"}},
                    "resources": {"requests": {"memory": "1Gi"}}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let sent = pod.clone();
        assert!(check("Pod", &mut pod, Mode::Strict).unwrap().is_empty());
        assert_eq!(pod, sent);
        pod["status"]["conditions"][0]["extra"] = json!(1);
        pod["metadata"]["bogus"] = json!(null);
        let texts = check("Pod", &mut pod, Mode::Warn).unwrap();
        assert_eq!(
            texts,
            [
                r#"unknown field "metadata.bogus""#,
                r#"unknown field "status.conditions[0].extra""#
            ]
        );
        assert_eq!(pod, sent);
    }

    #[test]
    fn every_kind_compiles_to_a_tree_that_knows_its_top_level_fields() {
        for r in crate::resources::RESOURCES {
            let Some(tree) = tree(r.kind) else { continue };
            let Shape::Fields(fields) = &tree.shapes[tree.root] else {
                panic!("{}: root is {:?}", r.kind, tree.shapes[tree.root]);
            };
            for f in ["apiVersion", "kind", "metadata"] {
                assert!(fields.contains_key(f), "{} lacks {f}", r.kind);
            }
        }
    }
}
