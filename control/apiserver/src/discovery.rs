//! Discovery: what `/version`, `/api`, `/apis` and `/api(s)/<group>/<version>` answer.
//!
//! `/api` and `/apis` come in two forms. The plain one (`APIVersions`, `APIGroupList`) names
//! the group versions only, and a client then asks each group version for its resources. The
//! aggregated one (`APIGroupDiscoveryList` of `apidiscovery.k8s.io` `v2`, or `v2beta1` for
//! clients of Kubernetes 1.26–1.29) carries every group, version, resource and subresource in
//! one answer; a client asks for it in `Accept` (kubectl 1.30+ first offers `v2`, then
//! `v2beta1`, then plain JSON) and recognises it by the `Content-Type` of the answer.

use serde_json::{json, Value};

use crate::http::KUBE_VERSION;
use crate::resources::{self, Resource};

/// The group of the aggregated discovery types.
const GROUP: &str = "apidiscovery.k8s.io";
/// The aggregated discovery versions served, most preferred first.
const VERSIONS: &[&str] = &["v2", "v2beta1"];

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/version`.
pub fn version() -> Value {
    let (major, minor) = KUBE_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0-flotilla.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// Plain `/api`.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

/// The API groups other than the core group, each with its versions, preferred first.
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in resources::group_versions()
        .into_iter()
        .chain(crate::reviews::group_versions())
    {
        if g.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, versions)) => versions.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    groups
}

/// Plain `/apis`.
pub fn api_groups() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "preferredVersion": versions[0].clone(), "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// A subresource of a resource, as discovery announces it.
struct Subresource {
    name: &'static str,
    /// Group, version and kind of what it takes and answers.
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
}

/// The subresources of `r`.
fn subresources(r: &Resource) -> Vec<Subresource> {
    let own = |name, verbs| Subresource {
        name,
        group: r.group,
        version: r.version,
        kind: r.kind,
        verbs,
    };
    let mut out = vec![own("status", &["get", "patch", "update"][..])];
    match r.kind {
        "Pod" => {
            let core = |name, kind, verbs| Subresource {
                name,
                group: "",
                version: "v1",
                kind,
                verbs,
            };
            out.push(core("binding", "Binding", &["create"][..]));
            out.push(core("log", "Pod", &["get"]));
            out.push(core("exec", "PodExecOptions", &["create", "get"]));
            out.push(core("attach", "PodAttachOptions", &["create", "get"]));
            out.push(core(
                "ephemeralcontainers",
                "Pod",
                &["get", "patch", "update"],
            ));
            out.push(Subresource {
                name: "eviction",
                group: "policy",
                version: "v1",
                kind: "Eviction",
                verbs: &["create"],
            });
        }
        "Namespace" => out.push(own("finalize", &["update"])),
        "ServiceAccount" => out.push(Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: &["create"],
        }),
        _ => {}
    }
    if r.has_scale() {
        out.push(Subresource {
            name: "scale",
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: &["get", "patch", "update"],
        });
    }
    out
}

fn categories(r: &Resource) -> Vec<&'static str> {
    if r.in_all_category() {
        vec!["all"]
    } else {
        vec![]
    }
}

/// `/api/v1`, `/apis/<group>/<version>`: the `APIResourceList`.
pub fn resource_list(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources: Vec<Value> = Vec::new();
    for r in resources::in_group_version(group, version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
            "categories": categories(r),
        }));
        for sub in subresources(r) {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, sub.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": sub.kind,
                "verbs": sub.verbs,
            });
            if (sub.group, sub.version) != (r.group, r.version) {
                entry["group"] = json!(sub.group);
                entry["version"] = json!(sub.version);
            }
            resources.push(entry);
        }
    }
    for r in crate::reviews::in_group_version(group, version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create"],
        }));
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The aggregated discovery version `accept` asks for first (`v2` or `v2beta1`), or `None`
/// when plain JSON (or anything else) comes first or nothing aggregated in JSON is asked for.
/// Media ranges are taken by their `q` weight (default 1), then in the order given.
pub fn negotiate(accept: Option<&str>) -> Option<&'static str> {
    let mut ranges: Vec<(f32, usize, &str)> = accept?
        .split(',')
        .enumerate()
        .map(|(i, range)| {
            let q = range
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (q, i, range)
        })
        .filter(|(q, _, _)| *q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, range) in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let (mut g, mut v, mut as_) = (None, None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("g", x)) => g = Some(x),
                Some(("v", x)) => v = Some(x),
                Some(("as", x)) => as_ = Some(x),
                _ => {}
            }
        }
        let json = media == "application/json";
        match (g, as_) {
            (Some(GROUP), Some("APIGroupDiscoveryList")) if json => {
                if let Some(v) = VERSIONS.iter().find(|known| Some(**known) == v) {
                    return Some(v);
                }
            }
            (None, None) if json || media == "*/*" || media == "application/*" => return None,
            _ => {}
        }
    }
    None
}

/// The `Content-Type` of an aggregated discovery answer in `version`.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g={GROUP};v={version};as=APIGroupDiscoveryList")
}

fn kind(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn version_discovery(group: &str, version: &str) -> Value {
    let reviews = crate::reviews::in_group_version(group, version).map(|r| {
        json!({
            "resource": r.plural,
            "responseKind": kind(r.group, r.version, r.kind),
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.kind.to_lowercase(),
            "verbs": ["create"],
        })
    });
    let resources: Vec<Value> = resources::in_group_version(group, version)
        .map(|r| {
            let subs: Vec<Value> = subresources(r)
                .iter()
                .map(|s| {
                    json!({
                        "subresource": s.name,
                        "responseKind": kind(s.group, s.version, s.kind),
                        "verbs": s.verbs,
                    })
                })
                .collect();
            json!({
                "resource": r.plural,
                "responseKind": kind(r.group, r.version, r.kind),
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": VERBS,
                "shortNames": r.short_names,
                "categories": categories(r),
                "subresources": subs,
            })
        })
        .chain(reviews)
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// The aggregated answer (`APIGroupDiscoveryList` in `version`) for `/api` (`core`: the core
/// group alone) or `/apis` (every other group).
pub fn aggregated(core: bool, version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![json!({
            "metadata": {"creationTimestamp": null},
            "versions": [version_discovery("", "v1")],
        })]
    } else {
        groups()
            .into_iter()
            .map(|(g, versions)| {
                json!({
                    "metadata": {"name": g, "creationTimestamp": null},
                    "versions": versions.iter().map(|v| version_discovery(g, v)).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("{GROUP}/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
        application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
        application/json";

    #[test]
    fn accept_headers_choose_the_form() {
        assert_eq!(negotiate(Some(KUBECTL)), Some("v2"));
        assert_eq!(
            negotiate(Some(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
            )),
            Some("v2beta1")
        );
        assert_eq!(negotiate(None), None);
        assert_eq!(negotiate(Some("application/json")), None);
        assert_eq!(negotiate(Some("*/*")), None);
        // Plain first wins; weights reorder.
        assert_eq!(
            negotiate(Some(
                "application/json,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            )),
            None
        );
        assert_eq!(
            negotiate(Some(
                "application/json;q=0.5,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            )),
            Some("v2")
        );
        // Unknown versions and protobuf are passed over.
        assert_eq!(
            negotiate(Some(
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                 application/json;g=apidiscovery.k8s.io;v=v9;as=APIGroupDiscoveryList,\
                 application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            )),
            Some("v2beta1")
        );
        assert_eq!(
            negotiate(Some(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;q=0"
            )),
            None
        );
    }

    #[test]
    fn aggregated_discovery_lists_every_resource_once_with_its_subresources() {
        let core = aggregated(true, "v2");
        assert_eq!(core["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = core["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert!(items[0]["metadata"].get("name").is_none());
        let v1 = &items[0]["versions"][0];
        assert_eq!(v1["version"], "v1");
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        assert_eq!(pods["shortNames"][0], "po");
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert!(subs.contains(&"status") && subs.contains(&"binding"));

        let groups = aggregated(false, "v2beta1");
        let items = groups["items"].as_array().unwrap();
        let names: Vec<&str> = items
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(!names.contains(&""));
        let mut seen = 0;
        for g in items {
            for v in g["versions"].as_array().unwrap() {
                seen += v["resources"].as_array().unwrap().len();
            }
        }
        assert_eq!(
            seen + v1["resources"].as_array().unwrap().len(),
            resources::RESOURCES.len() + crate::reviews::REVIEWS.len()
        );
        // The review APIs, which are only created (`kubectl auth can-i`, `whoami`).
        let authz = items
            .iter()
            .find(|g| g["metadata"]["name"] == "authorization.k8s.io")
            .unwrap();
        let ssar = authz["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "selfsubjectaccessreviews")
            .unwrap();
        assert_eq!(
            (&ssar["verbs"], &ssar["scope"]),
            (&json!(["create"]), &json!("Cluster"))
        );
        let apps = items
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(deploy["categories"][0], "all");
    }

    #[test]
    fn plain_resource_lists_name_subresources_with_their_kinds() {
        let list = resource_list("", "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in [
            "pods",
            "pods/status",
            "pods/binding",
            "namespaces/finalize",
            "serviceaccounts/token",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let token = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "serviceaccounts/token")
            .unwrap();
        assert_eq!(token["group"], "authentication.k8s.io");
    }
}
