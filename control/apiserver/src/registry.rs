//! Where API objects live in the store.
//!
//! As on Kubernetes with etcd: a namespaced object is at
//! `/registry/<resource>/<namespace>/<name>`, a cluster-scoped one at
//! `/registry/<resource>/<name>`. An object's `resourceVersion` is the store's `mod_revision`
//! of its key; a list's is the store revision it was read at (DESIGN.md, invariant 3).

use flotilla_store::KeyRange;

/// The root of every API object key.
pub const ROOT: &str = "/registry";

/// Which objects a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every object of the resource, in all namespaces.
    All,
    /// Every object of the resource in one namespace.
    Namespace(&'a str),
}

/// The key of one object. `namespace` is `None` for cluster-scoped resources.
pub fn object_key(resource: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ROOT}/{resource}/{ns}/{name}"),
        None => format!("{ROOT}/{resource}/{name}"),
    }
}

/// The key range holding the objects of `resource` in `scope`. The trailing `/` keeps
/// `pods` from matching `podsecuritypolicies` and namespace `a` from matching `ab`.
pub fn list_range(resource: &str, scope: Scope<'_>) -> KeyRange {
    let prefix = match scope {
        Scope::All => format!("{ROOT}/{resource}/"),
        Scope::Namespace(ns) => format!("{ROOT}/{resource}/{ns}/"),
    };
    KeyRange::prefix(prefix.as_bytes())
}

/// Parses a client's `resourceVersion`: empty means "any" (0); otherwise a decimal revision.
pub fn parse_resource_version(rv: &str) -> Result<u64, String> {
    if rv.is_empty() {
        return Ok(0);
    }
    rv.parse::<u64>().map_err(|_| {
        format!("invalid resourceVersion {rv:?}: expected the decimal number the server returned")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_kubernetes_layout() {
        assert_eq!(
            object_key("pods", Some("default"), "web-1"),
            "/registry/pods/default/web-1"
        );
        assert_eq!(object_key("nodes", None, "n1"), "/registry/nodes/n1");
    }

    #[test]
    fn list_ranges_do_not_leak_into_neighbours() {
        let ns_a = list_range("pods", Scope::Namespace("a"));
        assert!(ns_a.contains(b"/registry/pods/a/x"));
        assert!(!ns_a.contains(b"/registry/pods/ab/x"));
        let all = list_range("pods", Scope::All);
        assert!(all.contains(b"/registry/pods/ab/x"));
        assert!(!all.contains(b"/registry/podsecuritypolicies/p"));
    }

    #[test]
    fn resource_versions_parse_or_say_what_is_expected() {
        assert_eq!(parse_resource_version(""), Ok(0));
        assert_eq!(parse_resource_version("42"), Ok(42));
        assert!(parse_resource_version("abc")
            .unwrap_err()
            .contains("decimal"));
    }
}
