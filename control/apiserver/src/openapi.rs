//! OpenAPI documents, enough for kubectl's request checks.
//!
//! kubectl (1.29+) fetches `/openapi/v3`, then the document of an object's group version, and
//! looks for the PATCH operation of the object's kind with a `fieldValidation` parameter: if
//! the server lists it, kubectl leaves field validation to the server (`fieldValidation=
//! Strict`) instead of validating against schemas itself. These documents list every path and
//! operation of every served resource with Kubernetes' `x-kubernetes-group-version-kind` and
//! `x-kubernetes-action` extensions.
//!
//! Each document also carries the component schemas of its kinds and everything they refer
//! to, from `k8s-openapi`'s (Kubernetes' own descriptions), the kinds marked with
//! `x-kubernetes-group-version-kind`: what `kubectl explain` reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

use crate::resources::{self, Resource};

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "schema": {"type": "string", "uniqueItems": true}})
}

fn op(r: &Resource, action: &str, id: &str, extra: &[&str]) -> Value {
    let mut params: Vec<Value> = extra.iter().map(|p| param(p, "query")).collect();
    params.push(param("dryRun", "query"));
    params.push(param("fieldManager", "query"));
    json!({
        "operationId": id,
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    })
}

fn pascal(s: &str) -> String {
    s.split(['.', '-'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The paths of one resource: its collection and its objects.
fn paths_of(r: &Resource, paths: &mut Map<String, Value>) {
    let base = r.group_version_path();
    let (collection, object) = if r.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", r.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{base}/{}", r.plural),
            format!("{base}/{}/{{name}}", r.plural),
        )
    };
    let group = if r.group.is_empty() {
        "Core".to_string()
    } else {
        pascal(r.group.split('.').next().unwrap_or(""))
    };
    let scope = if r.namespaced { "Namespaced" } else { "" };
    let name = format!("{group}{}{scope}{}", pascal(r.version), r.kind);
    let validation = ["fieldValidation"];
    paths.insert(
        collection,
        json!({
            "get": op(r, "list", &format!("list{name}"), &["labelSelector", "fieldSelector", "watch"]),
            "post": op(r, "post", &format!("create{name}"), &validation),
            "delete": op(r, "deletecollection", &format!("deleteCollection{name}"), &[]),
        }),
    );
    paths.insert(
        object,
        json!({
            "get": op(r, "get", &format!("read{name}"), &[]),
            "put": op(r, "put", &format!("replace{name}"), &validation),
            "patch": op(r, "patch", &format!("patch{name}"), &["fieldValidation", "force"]),
            "delete": op(r, "delete", &format!("delete{name}"), &[]),
        }),
    );
}

/// Registers a kind's schema with a generator; gives the schema's name.
struct SchemaOf<'a>(&'a mut schemars::SchemaGenerator);

impl crate::kinds::Visitor for SchemaOf<'_> {
    type Out = String;

    fn visit<T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema>(
        self,
    ) -> String {
        self.0.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

/// The component schemas of one group version: its kinds (with their group, version and
/// kind) and every schema they refer to, as OpenAPI 3.0 wants them.
fn schemas(group: &str, version: &str) -> Map<String, Value> {
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    for r in resources::in_group_version(group, version) {
        if let Some(name) = crate::kinds::visit(r.kind, r.version, SchemaOf(&mut gen)) {
            kinds.push((name, r));
        }
    }
    let mut defs = gen.take_definitions(true);
    for (name, r) in kinds {
        if let Some(Value::Object(schema)) = defs.get_mut(&name) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk(r)]));
        }
    }
    defs
}

/// `/openapi/v3`: where each group version's document is.
pub fn v3_root() -> Value {
    let mut paths = Map::new();
    for (g, v) in resources::group_versions() {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        // The hash names the content (clients cache by it): the version, and the layout.
        let url = format!(
            "/openapi/v3/{key}?hash={}-schemas",
            env!("CARGO_PKG_VERSION").replace('.', "")
        );
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/g/v>`: the document of one group version, or `None`. Built
/// once per group version and kept (the core group's is about a megabyte).
pub fn v3_group_version(path: &str) -> Option<Arc<Value>> {
    static DOCS: OnceLock<Mutex<HashMap<String, Option<Arc<Value>>>>> = OnceLock::new();
    let docs = DOCS.get_or_init(Default::default);
    if let Some(doc) = docs.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        return doc.clone();
    }
    let doc = build_v3(path).map(Arc::new);
    docs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_string(), doc.clone());
    doc
}

fn build_v3(path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let mut paths = Map::new();
    let mut any = false;
    for r in resources::in_group_version(group, version) {
        paths_of(r, &mut paths);
        any = true;
    }
    any.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::http::KUBE_VERSION.0, crate::http::KUBE_VERSION.1)},
            "paths": paths,
            "components": {"schemas": schemas(group, version)},
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_lists_a_patch_with_field_validation() {
        let root = v3_root();
        assert!(root["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
        let apps = v3_group_version("apis/apps/v1").unwrap();
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        let core = v3_group_version("api/v1").unwrap();
        assert!(core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(v3_group_version("apis/nope/v1").is_none());
    }

    #[test]
    fn documents_carry_the_schemas_of_their_kinds_and_what_they_refer_to() {
        let core = v3_group_version("api/v1").unwrap();
        let schemas = core["components"]["schemas"].as_object().unwrap();
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert!(pod["description"].as_str().unwrap().starts_with("Pod is"));
        // Every reference resolves within the document.
        let text = serde_json::to_string(&core["components"]).unwrap();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "{name}");
        }
        assert!(schemas.contains_key("io.k8s.api.core.v1.PodSpec"));
        assert!(schemas.contains_key("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        let hpa1 = v3_group_version("apis/autoscaling/v1").unwrap();
        assert!(hpa1["components"]["schemas"]
            .get("io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler")
            .is_some());
    }
}

/// The OpenAPI v2 document as gnostic's `openapi.v2.Document` protobuf, which kubectl 1.27 and
/// 1.28 ask for (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`). Only
/// the parts kubectl reads are encoded: the paths, each operation's query parameters and its
/// `x-kubernetes-group-version-kind` extension. Field numbers are gnostic's.
pub mod v2 {
    use prost::Message;

    /// `openapi.v2.Document`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
    }

    /// `openapi.v2.Info`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    /// `openapi.v2.Paths`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }

    /// `openapi.v2.NamedPathItem`.
    #[derive(Clone, PartialEq, Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }

    /// `openapi.v2.PathItem`.
    #[derive(Clone, PartialEq, Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "3")]
        pub put: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        pub post: Option<Operation>,
        #[prost(message, optional, tag = "5")]
        pub delete: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }

    /// `openapi.v2.Operation`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Operation {
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, optional, tag = "9")]
        pub responses: Option<Responses>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }

    /// `openapi.v2.ParametersItem` (the `parameter` case of its oneof).
    #[derive(Clone, PartialEq, Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }

    /// `openapi.v2.Parameter` (the `non_body_parameter` case).
    #[derive(Clone, PartialEq, Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }

    /// `openapi.v2.NonBodyParameter` (the `query_parameter_sub_schema` case).
    #[derive(Clone, PartialEq, Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }

    /// `openapi.v2.QueryParameterSubSchema`.
    #[derive(Clone, PartialEq, Message)]
    pub struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
        #[prost(bool, tag = "20")]
        pub unique_items: bool,
    }

    /// `openapi.v2.Responses`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Responses {
        #[prost(message, repeated, tag = "1")]
        pub response_code: Vec<NamedResponseValue>,
    }

    /// `openapi.v2.NamedResponseValue`.
    #[derive(Clone, PartialEq, Message)]
    pub struct NamedResponseValue {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<ResponseValue>,
    }

    /// `openapi.v2.ResponseValue` (the `response` case).
    #[derive(Clone, PartialEq, Message)]
    pub struct ResponseValue {
        #[prost(message, optional, tag = "1")]
        pub response: Option<Response>,
    }

    /// `openapi.v2.Response`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Response {
        #[prost(string, tag = "1")]
        pub description: String,
    }

    /// `openapi.v2.NamedAny`.
    #[derive(Clone, PartialEq, Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }

    /// `openapi.v2.Any` (its YAML form).
    #[derive(Clone, PartialEq, Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }
}

fn v2_operation(doc: &Value) -> Option<v2::Operation> {
    let op = doc.as_object()?;
    let gvk = &op["x-kubernetes-group-version-kind"];
    let yaml = format!(
        "group: \"{}\"\nkind: {}\nversion: {}\n",
        gvk["group"].as_str().unwrap_or(""),
        gvk["kind"].as_str().unwrap_or(""),
        gvk["version"].as_str().unwrap_or("")
    );
    let parameters = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| v2::ParametersItem {
            parameter: Some(v2::Parameter {
                non_body_parameter: Some(v2::NonBodyParameter {
                    query_parameter_sub_schema: Some(v2::QueryParameterSubSchema {
                        r#in: "query".into(),
                        name: p["name"].as_str().unwrap_or("").into(),
                        r#type: "string".into(),
                        unique_items: true,
                    }),
                }),
            }),
        })
        .collect();
    Some(v2::Operation {
        operation_id: op["operationId"].as_str().unwrap_or("").into(),
        parameters,
        responses: Some(v2::Responses {
            response_code: vec![v2::NamedResponseValue {
                name: "200".into(),
                value: Some(v2::ResponseValue {
                    response: Some(v2::Response {
                        description: "OK".into(),
                    }),
                }),
            }],
        }),
        vendor_extension: vec![
            v2::NamedAny {
                name: "x-kubernetes-action".into(),
                value: Some(v2::Any {
                    yaml: format!("{}\n", op["x-kubernetes-action"].as_str().unwrap_or("")),
                }),
            },
            v2::NamedAny {
                name: "x-kubernetes-group-version-kind".into(),
                value: Some(v2::Any { yaml }),
            },
        ],
    })
}

/// `/openapi/v2` as protobuf: every group version's paths in one document.
pub fn v2_protobuf() -> Vec<u8> {
    use prost::Message;
    let mut paths = Vec::new();
    for (g, v) in resources::group_versions() {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let Some(doc) = v3_group_version(&key) else {
            continue;
        };
        for (name, item) in doc["paths"].as_object().into_iter().flatten() {
            let op = |m: &str| item.get(m).and_then(v2_operation);
            paths.push(v2::NamedPathItem {
                name: name.clone(),
                value: Some(v2::PathItem {
                    get: op("get"),
                    put: op("put"),
                    post: op("post"),
                    delete: op("delete"),
                    patch: op("patch"),
                }),
            });
        }
    }
    v2::Document {
        swagger: "2.0".into(),
        info: Some(v2::Info {
            title: "Kubernetes".into(),
            version: format!(
                "v{}.{}.0",
                crate::http::KUBE_VERSION.0,
                crate::http::KUBE_VERSION.1
            ),
        }),
        paths: Some(v2::Paths { path: paths }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod v2_tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_v2_protobuf_names_patch_operations_with_their_kind_and_field_validation() {
        let doc = v2::Document::decode(v2_protobuf().as_slice()).unwrap();
        assert_eq!(doc.swagger, "2.0");
        let paths = doc.paths.unwrap().path;
        let item = paths
            .iter()
            .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .unwrap();
        let patch = item.value.as_ref().unwrap().patch.as_ref().unwrap();
        let gvk = patch
            .vendor_extension
            .iter()
            .find(|e| e.name == "x-kubernetes-group-version-kind")
            .unwrap();
        assert!(gvk
            .value
            .as_ref()
            .unwrap()
            .yaml
            .contains("kind: Deployment"));
        assert!(patch.parameters.iter().any(|p| {
            p.parameter
                .as_ref()
                .and_then(|p| p.non_body_parameter.as_ref())
                .and_then(|n| n.query_parameter_sub_schema.as_ref())
                .is_some_and(|q| q.name == "fieldValidation")
        }));
    }
}
