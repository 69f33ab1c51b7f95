//! The review APIs: objects that are created to ask a question and answered at once, never
//! stored — `kubectl auth can-i` (SelfSubjectAccessReview; with `--list`,
//! SelfSubjectRulesReview), a check on behalf of another user (SubjectAccessReview,
//! LocalSubjectAccessReview) and `kubectl auth whoami` (SelfSubjectReview). The answers come
//! from the same RBAC decision that guards every request.

use serde_json::{json, Value};

use crate::http::User;
use crate::rbac::{self, Attributes};
use crate::status::ApiError;
use crate::storage::{Backend, Storage};

/// One review resource, as discovery announces it (its only verb is `create`).
#[derive(Debug)]
pub struct Review {
    /// The API group.
    pub group: &'static str,
    /// The version.
    pub version: &'static str,
    /// The kind.
    pub kind: &'static str,
    /// The resource (plural).
    pub plural: &'static str,
    /// Whether it is created in a namespace.
    pub namespaced: bool,
}

const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";

const fn review(group: &'static str, kind: &'static str, plural: &'static str) -> Review {
    Review {
        group,
        version: "v1",
        kind,
        plural,
        namespaced: false,
    }
}

/// Every review resource served.
pub const REVIEWS: &[Review] = &[
    review(AUTHZ, "SelfSubjectAccessReview", "selfsubjectaccessreviews"),
    review(AUTHZ, "SelfSubjectRulesReview", "selfsubjectrulesreviews"),
    review(AUTHZ, "SubjectAccessReview", "subjectaccessreviews"),
    Review {
        namespaced: true,
        ..review(
            AUTHZ,
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
        )
    },
    review(AUTHN, "SelfSubjectReview", "selfsubjectreviews"),
    // kubectl 1.27 `auth whoami` asks v1beta1 (v1 is GA from 1.28).
    Review {
        version: "v1beta1",
        ..review(AUTHN, "SelfSubjectReview", "selfsubjectreviews")
    },
];

/// The review and namespace `path` names, if it names one.
pub fn find(path: &str) -> Option<(&'static Review, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, ns, plural) = match segs.as_slice() {
        ["apis", g, v, p] => (*g, *v, None, *p),
        ["apis", g, v, "namespaces", ns, p] => (*g, *v, Some(ns.to_string()), *p),
        _ => return None,
    };
    let r = REVIEWS
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)?;
    (r.namespaced == ns.is_some()).then_some((r, ns))
}

/// The group versions the reviews add to discovery.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    crate::resources::distinct(REVIEWS.iter().map(|r| (r.group, r.version)))
}

/// The reviews of one group version.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Review> + 'a {
    REVIEWS
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Answers the review `body` created by `user` (at `ns` for a namespaced one): the body with
/// its `status` filled in.
pub async fn create<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    r: &Review,
    ns: Option<&str>,
    body: Value,
) -> Result<Value, ApiError> {
    let kind = body.get("kind").and_then(Value::as_str);
    if kind.is_some_and(|k| k != r.kind) {
        return Err(ApiError::BadRequest(format!(
            "the body is a {}, but the URL names {}",
            kind.unwrap_or_default(),
            r.kind
        )));
    }
    let mut out = body;
    if !out.is_object() {
        return Err(ApiError::BadRequest(format!(
            "a {} must be an object",
            r.kind
        )));
    }
    out["apiVersion"] = json!(format!("{}/{}", r.group, r.version));
    out["kind"] = json!(r.kind);
    if !out.get("metadata").is_some_and(Value::is_object) {
        out["metadata"] = json!({});
    }
    out["metadata"]["creationTimestamp"] = Value::Null;
    let spec = out.get("spec").cloned().unwrap_or_else(|| json!({}));
    out["status"] = match r.kind {
        "SelfSubjectReview" => json!({"userInfo": {
            "username": user.name,
            "groups": groups_of(user),
        }}),
        "SelfSubjectRulesReview" => {
            let namespace = spec.get("namespace").and_then(Value::as_str);
            let rules = rbac::rules(storage, user, namespace).await?;
            let (resource, non_resource): (Vec<Value>, Vec<Value>) = rules
                .into_iter()
                .partition(|rule| rule.get("nonResourceURLs").is_none());
            json!({"resourceRules": resource, "nonResourceRules": non_resource,
                   "incomplete": false})
        }
        _ => {
            // Whose access: the caller's own, or the user the spec names.
            let subject = match r.kind {
                "SelfSubjectAccessReview" => user.clone(),
                _ => {
                    let name = text(&spec, "/user");
                    let groups: Vec<String> = spec
                        .get("groups")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str().map(String::from))
                        .collect();
                    if name.is_empty() && groups.is_empty() {
                        return Err(invalid(
                            r,
                            "spec.user",
                            "Invalid value: \"\": at least one of user or group must be specified",
                        ));
                    }
                    User {
                        name: name.to_string(),
                        groups,
                    }
                }
            };
            access(storage, r, ns, &subject, &mut out).await?
        }
    };
    Ok(out)
}

/// The status of an access review: whether `subject` may do what the spec asks.
async fn access<B: Backend>(
    storage: &Storage<B>,
    r: &Review,
    ns: Option<&str>,
    subject: &User,
    review: &mut Value,
) -> Result<Value, ApiError> {
    if let Some(path) = review
        .pointer("/spec/nonResourceAttributes/path")
        .and_then(Value::as_str)
    {
        let verb = text(review, "/spec/nonResourceAttributes/verb");
        let allowed = rbac::allows_path(storage, subject, verb, path).await?;
        return Ok(json!({"allowed": allowed}));
    }
    let Some(attrs) = review.pointer_mut("/spec/resourceAttributes") else {
        return Err(invalid(
            r,
            "spec.resourceAttributes",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    // A local review is about its own namespace.
    if let Some(ns) = ns {
        match attrs.get("namespace").and_then(Value::as_str) {
            None | Some("") => attrs["namespace"] = json!(ns),
            Some(other) if other != ns => {
                return Err(invalid(
                    r,
                    "spec.resourceAttributes.namespace",
                    &format!("Invalid value: {other:?}: must match metadata.namespace"),
                ))
            }
            Some(_) => {}
        }
    }
    let attrs = attrs.clone();
    let field = |k: &str| {
        attrs
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let a = Attributes {
        verb: field("verb").unwrap_or_default(),
        group: field("group").unwrap_or_default(),
        resource: field("resource").unwrap_or_default(),
        subresource: field("subresource"),
        namespace: field("namespace"),
        name: field("name"),
    };
    Ok(match rbac::decide(storage, subject, &a).await? {
        Some(reason) => json!({"allowed": true, "reason": reason}),
        None => json!({"allowed": false}),
    })
}

/// The user's groups, with `system:authenticated` as Kubernetes adds it.
fn groups_of(user: &User) -> Vec<String> {
    let mut groups = user.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    groups
}

fn invalid(r: &Review, field: &str, message: &str) -> ApiError {
    ApiError::Invalid {
        kind: format!("{}.{}", r.kind, r.group),
        name: String::new(),
        causes: vec![(field.into(), message.into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_reviews_by_scope() {
        let (r, ns) = find("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews").unwrap();
        assert_eq!((r.kind, ns), ("SelfSubjectAccessReview", None));
        let (r, ns) =
            find("/apis/authorization.k8s.io/v1/namespaces/dev/localsubjectaccessreviews").unwrap();
        assert_eq!(
            (r.kind, ns.as_deref()),
            ("LocalSubjectAccessReview", Some("dev"))
        );
        assert!(
            find("/apis/authorization.k8s.io/v1/namespaces/dev/selfsubjectaccessreviews").is_none()
        );
        assert!(find("/apis/authorization.k8s.io/v1/localsubjectaccessreviews").is_none());
        assert!(find("/api/v1/pods").is_none());
        assert_eq!(
            group_versions(),
            [
                ("authorization.k8s.io", "v1"),
                ("authentication.k8s.io", "v1"),
                ("authentication.k8s.io", "v1beta1")
            ]
        );
    }
}
