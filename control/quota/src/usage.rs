//! ResourceQuota arithmetic: what an object charges, which objects a quota covers, and whether
//! one more fits.
//!
//! Amounts are thousandths (see [`crate::quantity::milli`]): a count of 1 is 1000. The names
//! are Kubernetes': `pods`, `services`, `services.nodeports`, `services.loadbalancers`,
//! `configmaps`, `secrets`, `resourcequotas`, `count/<plural>[.<group>]`, and for pods
//! `requests.<r>` and `limits.<r>` for every resource their containers name, with `cpu`,
//! `memory` and `ephemeral-storage` also standing for their requests.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity;

/// Names and amounts.
pub type Amounts = BTreeMap<String, u128>;

const ONE: u128 = 1000;
/// What joins a storage class and a resource in a per-class quota name
/// (`fast.storageclass.storage.k8s.io/requests.storage`).
const STORAGE_CLASS: &str = ".storageclass.storage.k8s.io/";

fn count_key(plural: &str, group: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// Whether `pod` has finished (it no longer counts against quotas).
fn terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// Everything object `obj` (a `plural` of `group`) charges, whether or not a quota tracks it.
pub fn charges(plural: &str, group: &str, obj: &Value) -> Amounts {
    let mut out = Amounts::new();
    if (group, plural) == ("", "pods") {
        if terminal(obj) {
            return out;
        }
        out.insert("pods".into(), ONE);
        for (r, v) in crate::pod_resources(obj, "requests") {
            if matches!(r.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                out.insert(r.clone(), v);
            }
            out.insert(format!("requests.{r}"), v);
        }
        for (r, v) in crate::pod_resources(obj, "limits") {
            out.insert(format!("limits.{r}"), v);
        }
    }
    out.insert(count_key(plural, group), ONE);
    match (group, plural) {
        ("", "services") => {
            out.insert("services".into(), ONE);
            let kind = obj.pointer("/spec/type").and_then(Value::as_str);
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as u128;
            match kind {
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), ports * ONE);
                }
                Some("LoadBalancer") => {
                    out.insert("services.loadbalancers".into(), ONE);
                    let allocate = obj
                        .pointer("/spec/allocateLoadBalancerNodePorts")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    if allocate {
                        out.insert("services.nodeports".into(), ports * ONE);
                    }
                }
                _ => {}
            }
        }
        ("", "configmaps" | "secrets" | "resourcequotas" | "replicationcontrollers") => {
            out.insert(plural.to_string(), ONE);
        }
        // A claim counts, and so does the storage it requests, overall and per class.
        ("", "persistentvolumeclaims") => {
            out.insert(plural.to_string(), ONE);
            let storage = obj
                .pointer("/spec/resources/requests/storage")
                .and_then(Value::as_str)
                .and_then(quantity::milli);
            if let Some(s) = storage {
                out.insert("requests.storage".into(), s);
            }
            let class = obj
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            if let Some(c) = class {
                out.insert(format!("{c}{STORAGE_CLASS}persistentvolumeclaims"), ONE);
                if let Some(s) = storage {
                    out.insert(format!("{c}{STORAGE_CLASS}requests.storage"), s);
                }
            }
        }
        _ => {}
    }
    out
}

/// The kinds (`(plural, group)`) whose objects the quota names in `hard` count.
pub fn counted_kinds<'a>(hard: impl IntoIterator<Item = &'a String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for name in hard {
        let kind = match name.as_str() {
            "services" | "services.nodeports" | "services.loadbalancers" => {
                ("services".to_string(), String::new())
            }
            "configmaps" | "secrets" | "resourcequotas" | "replicationcontrollers" => {
                (name.clone(), String::new())
            }
            n if n == "persistentvolumeclaims"
                || n == "requests.storage"
                || n.contains(STORAGE_CLASS) =>
            {
                ("persistentvolumeclaims".to_string(), String::new())
            }
            n => match n.strip_prefix("count/") {
                Some(rest) => match rest.split_once('.') {
                    Some((plural, group)) => (plural.to_string(), group.to_string()),
                    None => (rest.to_string(), String::new()),
                },
                None => ("pods".to_string(), String::new()),
            },
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    out
}

/// `quota`'s `spec.hard`, parsed (names whose value does not parse are left out).
pub fn hard(quota: &Value) -> Amounts {
    amounts(quota.pointer("/spec/hard"))
}

/// A map of quantities (`status.used`, `spec.hard`), parsed.
pub fn amounts(map: Option<&Value>) -> Amounts {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), quantity::milli(v.as_str()?)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// `amounts` as a JSON map of quantities, as `status.used` holds them.
pub fn to_json(amounts: &Amounts) -> Value {
    Value::Object(
        amounts
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(format(k, *v))))
            .collect(),
    )
}

fn format(name: &str, v: u128) -> String {
    quantity::format(v, crate::is_bytes(name))
}

fn cross_namespace_affinity(pod: &Value) -> bool {
    ["podAffinity", "podAntiAffinity"].iter().any(|a| {
        let Some(aff) = pod.pointer(&format!("/spec/affinity/{a}")) else {
            return false;
        };
        let required = aff
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let preferred = aff
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .map(|p| {
                p.iter()
                    .filter_map(|w| w.get("podAffinityTerm").cloned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        required.iter().chain(preferred.iter()).any(|t| {
            t.get("namespaceSelector").is_some_and(|s| !s.is_null())
                || t.get("namespaces")
                    .and_then(Value::as_array)
                    .is_some_and(|n| !n.is_empty())
        })
    })
}

fn scope_matches(scope: &str, operator: &str, values: &[&str], pod: &Value) -> bool {
    let holds = match scope {
        "Terminating" => pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|s| s >= 0),
        "NotTerminating" => pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64)
            .is_none_or(|s| s < 0),
        "BestEffort" => crate::qos_class(pod) == "BestEffort",
        "NotBestEffort" => crate::qos_class(pod) != "BestEffort",
        "CrossNamespacePodAffinity" => cross_namespace_affinity(pod),
        "PriorityClass" => {
            let class = pod
                .pointer("/spec/priorityClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            return match operator {
                "In" => class.is_some_and(|c| values.contains(&c)),
                "NotIn" => class.is_none_or(|c| !values.contains(&c)),
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                _ => false,
            };
        }
        _ => return false,
    };
    match operator {
        "Exists" | "In" => holds,
        "DoesNotExist" | "NotIn" => !holds,
        _ => false,
    }
}

/// Whether `quota`'s scopes (`spec.scopes`, `spec.scopeSelector`) cover object `obj` (a
/// `plural` of `group`). A quota without scopes covers everything; scopes speak of pods only.
pub fn covers(quota: &Value, plural: &str, group: &str, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let selector: Vec<&Value> = quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .map(|e| e.iter().collect())
        .unwrap_or_default();
    if scopes.is_empty() && selector.is_empty() {
        return true;
    }
    if (group, plural) != ("", "pods") {
        return false;
    }
    scopes.iter().all(|s| scope_matches(s, "Exists", &[], obj))
        && selector.iter().all(|e| {
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            scope_matches(
                e.get("scopeName").and_then(Value::as_str).unwrap_or(""),
                e.get("operator").and_then(Value::as_str).unwrap_or(""),
                &values,
                obj,
            )
        })
}

/// What object `obj` charges against `quota`: its [`charges`] that the quota limits, if its
/// scopes cover the object.
pub fn charged(quota: &Value, plural: &str, group: &str, obj: &Value) -> Amounts {
    if !covers(quota, plural, group, obj) {
        return Amounts::new();
    }
    let hard = hard(quota);
    charges(plural, group, obj)
        .into_iter()
        .filter(|(k, _)| hard.contains_key(k))
        .collect()
}

/// What `objects` (each a `(plural, group, object)`) use of `quota`: every name in its
/// `spec.hard`, zero where nothing is charged.
pub fn used<'a>(
    quota: &Value,
    objects: impl IntoIterator<Item = (&'a str, &'a str, &'a Value)>,
) -> Amounts {
    let mut out: Amounts = hard(quota).keys().map(|k| (k.clone(), 0)).collect();
    for (plural, group, obj) in objects {
        for (k, v) in charged(quota, plural, group, obj) {
            *out.entry(k).or_default() += v;
        }
    }
    out
}

/// Requests and limits a quota on compute resources needs every container to state: the
/// names among `hard` that say so, with the containers of `pod` that do not.
fn missing(hard: &Amounts, pod: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for name in hard.keys() {
        let (which, resource) = match name.split_once('.') {
            Some((w @ ("requests" | "limits"), r)) => (w, r),
            None if matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") => {
                ("requests", name.as_str())
            }
            _ => continue,
        };
        if !matches!(resource, "cpu" | "memory" | "ephemeral-storage") {
            continue;
        }
        let lacking: Vec<String> = crate::containers(pod, true)
            .iter()
            .chain(crate::containers(pod, false))
            .filter(|c| !crate::container_resources(c, which).contains_key(resource))
            .map(|c| {
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let required = format!("{which}.{resource}");
        if !lacking.is_empty() && !out.iter().any(|(r, _)| *r == required) {
            out.push((required, lacking));
        }
    }
    out
}

/// Whether object `obj` (a `plural` of `group`) still fits `quota` (named `name`), given what
/// is `used` of it: the quota's new usage, or why not, as Kubernetes words it.
pub fn admit(
    quota: &Value,
    name: &str,
    used: &Amounts,
    plural: &str,
    group: &str,
    obj: &Value,
) -> Result<Amounts, String> {
    let hard = hard(quota);
    if (group, plural) == ("", "pods") && covers(quota, plural, group, obj) {
        let missing = missing(&hard, obj);
        if !missing.is_empty() {
            let list: Vec<String> = missing
                .iter()
                .map(|(r, c)| format!("{r} for: {}", c.join(",")))
                .collect();
            return Err(format!(
                "failed quota: {name}: must specify {}",
                list.join("; ")
            ));
        }
    }
    charge(quota, name, used, &charged(quota, plural, group, obj))
}

/// Whether the change of an object (a `plural` of `group`) from `old` to `new` still fits
/// `quota` (named `name`), given what is `used` of it: as Kubernetes' quota admission does on
/// update, only what grew is charged (a Service that became a NodePort, a pod that came under
/// a quota's scope); what shrank is given back when the quota controller counts again.
pub fn admit_change(
    quota: &Value,
    name: &str,
    used: &Amounts,
    plural: &str,
    group: &str,
    old: &Value,
    new: &Value,
) -> Result<Amounts, String> {
    let before = charged(quota, plural, group, old);
    let grown: Amounts = charged(quota, plural, group, new)
        .into_iter()
        .filter_map(|(k, v)| {
            let was = before.get(&k).copied().unwrap_or(0);
            (v > was).then(|| (k, v - was))
        })
        .collect();
    charge(quota, name, used, &grown)
}

/// Adds `charged` to what is `used` of `quota` (named `name`): the new usage, or Kubernetes'
/// "exceeded quota" refusal naming every limit the charge goes over.
fn charge(quota: &Value, name: &str, used: &Amounts, charged: &Amounts) -> Result<Amounts, String> {
    let hard = hard(quota);
    let mut next = used.clone();
    let mut exceeded: Vec<&String> = Vec::new();
    for (k, v) in charged {
        let now = next.entry(k.clone()).or_default();
        *now += v;
        if *v > 0 && hard.get(k).is_some_and(|limit| *now > *limit) {
            exceeded.push(k);
        }
    }
    if exceeded.is_empty() {
        return Ok(next);
    }
    let list = |from: &dyn Fn(&String) -> u128| {
        exceeded
            .iter()
            .map(|k| format!("{k}={}", format(k, from(k))))
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        list(&|k| charged[k]),
        list(&|k| used.get(k).copied().unwrap_or(0)),
        list(&|k| hard[k]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_update_is_charged_only_for_what_grew() {
        let q = quota(json!({"services": "5", "services.nodeports": "1"}));
        let cluster_ip = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        let node_port = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let two_ports =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        let used = amounts(Some(&json!({"services": "1", "services.nodeports": "0"})));
        // ClusterIP → NodePort: one node port more; the service itself was counted already.
        let next = admit_change(&q, "q", &used, "services", "", &cluster_ip, &node_port).unwrap();
        assert_eq!(next["services"], 1000);
        assert_eq!(next["services.nodeports"], 1000);
        // A second port on it goes over services.nodeports=1.
        let err = admit_change(&q, "q", &next, "services", "", &node_port, &two_ports).unwrap_err();
        assert!(
            err.starts_with("exceeded quota: q, requested: services.nodeports=1"),
            "{err}"
        );
        // Back to ClusterIP charges nothing (the controller gives the port back).
        let back = admit_change(&q, "q", &next, "services", "", &node_port, &cluster_ip).unwrap();
        assert_eq!(back, next);
    }

    fn quota(hard: Value) -> Value {
        json!({"metadata": {"name": "q"}, "spec": {"hard": hard}})
    }

    fn pod(cpu: &str, mem: &str) -> Value {
        json!({"spec": {"containers": [{"name": "app", "resources": {
            "requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}}}]},
            "status": {"phase": "Pending"}})
    }

    #[test]
    fn pods_charge_counts_requests_and_limits() {
        let c = charges("pods", "", &pod("500m", "128Mi"));
        assert_eq!(c["pods"], 1000);
        assert_eq!(c["count/pods"], 1000);
        assert_eq!(c["requests.cpu"], 500);
        assert_eq!(c["cpu"], 500);
        assert_eq!(c["limits.memory"], 128 * 1024 * 1024 * 1000);
        let mut done = pod("1", "1Gi");
        done["status"]["phase"] = json!("Succeeded");
        assert!(charges("pods", "", &done).is_empty());
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let c = charges("services", "", &svc);
        assert_eq!((c["services"], c["services.nodeports"]), (1000, 2000));
        assert_eq!(
            charges("deployments", "apps", &json!({}))["count/deployments.apps"],
            1000
        );
    }

    #[test]
    fn claims_charge_their_storage_overall_and_per_class() {
        let claim = json!({"spec": {"storageClassName": "fast",
                                    "resources": {"requests": {"storage": "2Gi"}}}});
        let c = charges("persistentvolumeclaims", "", &claim);
        let gib2 = 2 * 1024 * 1024 * 1024 * 1000;
        assert_eq!(c["persistentvolumeclaims"], 1000);
        assert_eq!(c["requests.storage"], gib2);
        assert_eq!(c["fast.storageclass.storage.k8s.io/requests.storage"], gib2);
        assert_eq!(
            c["fast.storageclass.storage.k8s.io/persistentvolumeclaims"],
            1000
        );
        let names = [
            "requests.storage".to_string(),
            "fast.storageclass.storage.k8s.io/persistentvolumeclaims".to_string(),
            "pods".to_string(),
        ];
        assert_eq!(
            counted_kinds(names.iter()),
            [
                ("persistentvolumeclaims".to_string(), String::new()),
                ("pods".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn a_pod_past_the_hard_limit_is_refused_with_what_was_asked_used_and_allowed() {
        let q = quota(json!({"pods": "2", "requests.cpu": "1", "requests.memory": "1Gi"}));
        let used = used(
            &q,
            [
                ("pods", "", &pod("500m", "256Mi")),
                ("configmaps", "", &json!({})),
            ],
        );
        assert_eq!(
            to_json(&used),
            json!({"pods": "1", "requests.cpu": "500m", "requests.memory": "256Mi"})
        );
        let next = admit(&q, "q", &used, "pods", "", &pod("500m", "256Mi")).unwrap();
        assert_eq!(to_json(&next)["requests.cpu"], "1");
        let err = admit(&q, "q", &next, "pods", "", &pod("100m", "1Mi")).unwrap_err();
        assert_eq!(
            err,
            "exceeded quota: q, requested: pods=1,requests.cpu=100m, used: pods=2,requests.cpu=1, limited: pods=2,requests.cpu=1"
        );
        // A pod that does not say what it requests cannot be charged.
        let bare = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(
            admit(&q, "q", &used, "pods", "", &bare).unwrap_err(),
            "failed quota: q: must specify requests.cpu for: app; requests.memory for: app"
        );
        // Kinds the quota does not limit pass untouched.
        assert_eq!(
            admit(&q, "q", &used, "configmaps", "", &json!({})).unwrap(),
            used
        );
    }

    #[test]
    fn scopes_choose_the_pods_a_quota_covers() {
        let mut q = quota(json!({"pods": "1"}));
        q["spec"]["scopes"] = json!(["BestEffort"]);
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(covers(&q, "pods", "", &best));
        assert!(!covers(&q, "pods", "", &pod("1", "1Gi")));
        assert!(!covers(&q, "configmaps", "", &json!({})));
        let mut q = quota(json!({"pods": "1"}));
        q["spec"]["scopeSelector"] = json!({"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]});
        let mut high = best.clone();
        high["spec"]["priorityClassName"] = json!("high");
        assert!(covers(&q, "pods", "", &high));
        assert!(!covers(&q, "pods", "", &best));
    }

    #[test]
    fn quotas_name_the_kinds_they_count() {
        let names: Vec<String> = [
            "pods",
            "requests.cpu",
            "services.nodeports",
            "count/deployments.apps",
            "count/configmaps",
            "secrets",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            counted_kinds(&names),
            vec![
                ("pods".to_string(), String::new()),
                ("services".to_string(), String::new()),
                ("deployments".to_string(), "apps".to_string()),
                ("configmaps".to_string(), String::new()),
                ("secrets".to_string(), String::new()),
            ]
        );
    }
}
