//! Authorization by RBAC, as Kubernetes decides it: a request is allowed when a rule of a
//! Role or ClusterRole bound to the user (by name), to one of their groups, or to their
//! service account, covers its verb, API group, resource (or `resource/subresource`) and
//! name. Members of `system:masters` may do anything; every authenticated user may read
//! discovery, OpenAPI, version and health (Kubernetes' `system:discovery` and
//! `system:public-info-viewer` bindings).

use serde_json::Value;

use crate::http::User;
use crate::resources::{self, Resource};
use crate::status::ApiError;
use crate::storage::{Backend, Storage};

/// What a request asks to do, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: &'a str,
    /// The API group (`""` for core).
    pub group: &'a str,
    /// The resource (plural).
    pub resource: &'a str,
    /// The subresource, if any.
    pub subresource: Option<&'a str>,
    /// The namespace, for namespaced requests.
    pub namespace: Option<&'a str>,
    /// The object's name, for requests about one object.
    pub name: Option<&'a str>,
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn covers(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

/// Whether one PolicyRule allows `a`.
pub fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let resource = match a.subresource {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_string(),
    };
    let resources = strs(rule, "resources");
    let resource_ok = covers(&resources, &resource)
        || a.subresource
            .is_some_and(|sub| resources.iter().any(|r| r == &format!("*/{sub}")));
    let names = strs(rule, "resourceNames");
    covers(&strs(rule, "verbs"), a.verb)
        && covers(&strs(rule, "apiGroups"), a.group)
        && resource_ok
        && (names.is_empty() || a.name.is_some_and(|n| names.iter().any(|x| x == n)))
}

/// Whether a binding's subjects include `user`.
fn binds(binding: &Value, user: &User) -> bool {
    let binding_ns = binding
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            match s.get("kind").and_then(Value::as_str) {
                Some("User") => name == user.name,
                Some("Group") => user.groups.iter().any(|g| g == name),
                Some("ServiceAccount") => {
                    let ns = s
                        .get("namespace")
                        .and_then(Value::as_str)
                        .or(binding_ns)
                        .unwrap_or("");
                    user.name == format!("system:serviceaccount:{ns}:{name}")
                }
                _ => false,
            }
        })
}

fn res(group: &str, plural: &str) -> &'static Resource {
    resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .expect("RBAC resources are served")
}

const G: &str = "rbac.authorization.k8s.io";

/// The rules granted to `user` in `namespace` (cluster-wide ones alone for `None`), each with
/// what grants it (`ClusterRoleBinding "b" of ClusterRole "r"`).
/// With `until`, it stops at the first rule that allows that request (and returns only it), so
/// deciding one request reads no more roles than it needs.
async fn granted<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    namespace: Option<&str>,
    until: Option<&Attributes<'_>>,
) -> Result<Vec<(Value, String)>, ApiError> {
    let mut bindings: Vec<Value> = storage.list(res(G, "clusterrolebindings"), None).await?.0;
    if let Some(ns) = namespace {
        bindings.extend(storage.list(res(G, "rolebindings"), Some(ns)).await?.0);
    }
    let mut out = Vec::new();
    for b in bindings.iter().filter(|b| binds(b, user)) {
        let text = |p: &str| b.pointer(p).and_then(Value::as_str).unwrap_or("");
        let (kind, role_name) = (text("/roleRef/kind"), text("/roleRef/name"));
        let role = match kind {
            "ClusterRole" => storage.get(res(G, "clusterroles"), None, role_name).await,
            "Role" => {
                let ns = b.pointer("/metadata/namespace").and_then(Value::as_str);
                storage.get(res(G, "roles"), ns, role_name).await
            }
            _ => continue,
        };
        let Ok(role) = role else { continue };
        let binding_kind = if b.pointer("/metadata/namespace").is_some() {
            "RoleBinding"
        } else {
            "ClusterRoleBinding"
        };
        let by = format!(
            "{binding_kind} \"{}\" of {kind} \"{role_name}\"",
            text("/metadata/name")
        );
        for rule in role
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if until.is_some_and(|a| rule_allows(rule, a)) {
                return Ok(vec![(rule.clone(), by)]);
            }
            if until.is_none() {
                out.push((rule.clone(), by.clone()));
            }
        }
    }
    Ok(out)
}

/// The rules `user` has in `namespace`, as a SelfSubjectRulesReview lists them: everything for
/// `system:masters`, else the bound roles' rules plus what every authenticated user may do.
pub async fn rules<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    namespace: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(vec![
            serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
            serde_json::json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
        ]);
    }
    let mut out: Vec<Value> = granted(storage, user, namespace, None)
        .await?
        .into_iter()
        .map(|(rule, _)| rule)
        .collect();
    out.extend(basic_rules());
    Ok(out)
}

/// What every authenticated user may do: Kubernetes' system:basic-user, system:discovery and
/// system:public-info-viewer.
fn basic_rules() -> [Value; 3] {
    [
        serde_json::json!({"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]}),
        serde_json::json!({"verbs": ["create"], "apiGroups": ["authentication.k8s.io"],
            "resources": ["selfsubjectreviews"]}),
        serde_json::json!({"verbs": ["get"], "nonResourceURLs": PUBLIC_PATHS}),
    ]
}

/// Paths every authenticated user may read (discovery, OpenAPI, version, health).
const PUBLIC_PATHS: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/openapi",
    "/openapi/*",
    "/version",
    "/version/",
];

/// Whether `user` may `verb` the non-resource `path` (`/healthz`, `/metrics`…).
pub async fn allows_path<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    verb: &str,
    path: &str,
) -> Result<bool, ApiError> {
    let rules = rules(storage, user, None).await?;
    Ok(rules.iter().any(|r| {
        covers(&strs(r, "verbs"), verb)
            && strs(r, "nonResourceURLs").iter().any(|u| {
                u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
            })
    }))
}

/// Decides `a` for `user`: `Some(why)` when allowed (RBAC's reason, as Kubernetes words it),
/// `None` when not.
pub async fn decide<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    a: &Attributes<'_>,
) -> Result<Option<String>, ApiError> {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Ok(Some("the user is in system:masters".into()));
    }
    if basic_rules().iter().any(|rule| rule_allows(rule, a)) {
        return Ok(Some(
            "RBAC: allowed by ClusterRoleBinding \"system:basic-user\" of ClusterRole \
             \"system:basic-user\" to Group \"system:authenticated\""
                .into(),
        ));
    }
    let rules = granted(storage, user, a.namespace, Some(a)).await?;
    Ok(rules
        .into_iter()
        .find(|(rule, _)| rule_allows(rule, a))
        .map(|(_, by)| format!("RBAC: allowed by {by} to User \"{}\"", user.name)))
}

/// Decides `a` for `user`: `Ok(())` or 403 Forbidden with Kubernetes' message.
pub async fn authorize<B: Backend>(
    storage: &Storage<B>,
    user: &User,
    a: &Attributes<'_>,
) -> Result<(), ApiError> {
    if decide(storage, user, a).await?.is_some() {
        return Ok(());
    }
    let what = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.to_string(),
    };
    let group = if a.group.is_empty() {
        "\"\"".to_string()
    } else {
        format!("\"{}\"", a.group)
    };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".into(),
    };
    let target = match a.name {
        Some(n) => format!("{what} \"{n}\" is forbidden"),
        None => format!("{what} is forbidden"),
    };
    Err(ApiError::Forbidden(format!(
        "{target}: User \"{}\" cannot {} resource \"{what}\" in API group {group}{scope}",
        user.name, a.verb
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(verb: &'a str, resource: &'a str, name: Option<&'a str>) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource,
            subresource: None,
            namespace: Some("default"),
            name,
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        assert!(rule_allows(&rule, &attrs("get", "pods", Some("a"))));
        assert!(!rule_allows(&rule, &attrs("delete", "pods", Some("a"))));
        assert!(!rule_allows(&rule, &attrs("get", "secrets", Some("a"))));
        let mut log = attrs("get", "pods", Some("a"));
        log.subresource = Some("log");
        assert!(rule_allows(&rule, &log));
        let named = json!({"apiGroups": ["*"], "resources": ["configmaps"], "verbs": ["*"], "resourceNames": ["one"]});
        assert!(rule_allows(
            &named,
            &attrs("update", "configmaps", Some("one"))
        ));
        assert!(!rule_allows(
            &named,
            &attrs("update", "configmaps", Some("two"))
        ));
        assert!(!rule_allows(&named, &attrs("list", "configmaps", None)));
    }

    #[test]
    fn subjects_are_users_groups_and_service_accounts() {
        let b = json!({"metadata": {"namespace": "team"}, "subjects": [
            {"kind": "User", "name": "alice"},
            {"kind": "Group", "name": "devs"},
            {"kind": "ServiceAccount", "name": "bot"}]});
        let user = |n: &str, g: &[&str]| User {
            name: n.into(),
            groups: g.iter().map(|s| s.to_string()).collect(),
        };
        assert!(binds(&b, &user("alice", &[])));
        assert!(binds(&b, &user("bob", &["devs"])));
        assert!(binds(&b, &user("system:serviceaccount:team:bot", &[])));
        assert!(!binds(&b, &user("system:serviceaccount:other:bot", &[])));
        assert!(!binds(&b, &user("mallory", &["ops"])));
    }
}
