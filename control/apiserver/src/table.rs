//! `as=Table` responses: the columns `kubectl get` prints for each kind, computed on the
//! server as Kubernetes does (without a Table, kubectl shows only NAME and AGE).

use serde_json::{json, Value};

/// One column: header, type, and whether only `-o wide` shows it (priority 1).
struct Column {
    name: &'static str,
    kind: &'static str,
    wide: bool,
}

const fn col(name: &'static str, kind: &'static str) -> Column {
    Column {
        name,
        kind,
        wide: false,
    }
}

const fn wide(name: &'static str, kind: &'static str) -> Column {
    Column {
        name,
        kind,
        wide: true,
    }
}

fn columns(kind: &str) -> Vec<Column> {
    let name = col("Name", "string");
    let age = col("Age", "string");
    match kind {
        "Pod" => vec![
            name,
            col("Ready", "string"),
            col("Status", "string"),
            col("Restarts", "string"),
            age,
            wide("IP", "string"),
            wide("Node", "string"),
        ],
        "Namespace" => vec![name, col("Status", "string"), age],
        "ConfigMap" => vec![name, col("Data", "integer"), age],
        "Secret" => vec![name, col("Type", "string"), col("Data", "integer"), age],
        "Deployment" => vec![
            name,
            col("Ready", "string"),
            col("Up-to-date", "integer"),
            col("Available", "integer"),
            age,
        ],
        "StatefulSet" => vec![name, col("Ready", "string"), age],
        "HorizontalPodAutoscaler" => vec![
            name,
            col("Reference", "string"),
            col("Targets", "string"),
            col("MinPods", "string"),
            col("MaxPods", "integer"),
            col("Replicas", "integer"),
            age,
        ],
        "PriorityClass" => vec![
            name,
            col("Value", "integer"),
            col("Global-Default", "boolean"),
            age,
            col("PreemptionPolicy", "string"),
        ],
        "DaemonSet" => vec![
            name,
            col("Desired", "integer"),
            col("Current", "integer"),
            col("Ready", "integer"),
            col("Up-to-date", "integer"),
            col("Available", "integer"),
            col("Node Selector", "string"),
            age,
        ],
        "CronJob" => vec![
            name,
            col("Schedule", "string"),
            col("Timezone", "string"),
            col("Suspend", "boolean"),
            col("Active", "integer"),
            col("Last Schedule", "string"),
            age,
        ],
        "ControllerRevision" => vec![
            name,
            col("Controller", "string"),
            col("Revision", "integer"),
            age,
        ],
        "ReplicaSet" => vec![
            name,
            col("Desired", "integer"),
            col("Current", "integer"),
            col("Ready", "integer"),
            age,
        ],
        "Service" => vec![
            name,
            col("Type", "string"),
            col("Cluster-IP", "string"),
            col("External-IP", "string"),
            col("Port(s)", "string"),
            age,
        ],
        "Node" => vec![
            name,
            col("Status", "string"),
            col("Roles", "string"),
            age,
            col("Version", "string"),
        ],
        "Endpoints" => vec![name, col("Endpoints", "string"), age],
        "Lease" => vec![name, col("Holder", "string"), age],
        "ResourceQuota" => vec![name, age, col("Request", "string"), col("Limit", "string")],
        "LimitRange" => vec![name, col("Created At", "date")],
        "Job" => vec![
            name,
            col("Status", "string"),
            col("Completions", "string"),
            age,
        ],
        "Event" => vec![
            col("Last Seen", "string"),
            col("Type", "string"),
            col("Reason", "string"),
            col("Object", "string"),
            col("Message", "string"),
        ],
        _ => vec![name, age],
    }
}

/// An autoscaler's TARGETS column: `cpu: 80%/50%` per resource metric (`<unknown>` before
/// the first reading), as kubectl shows it.
fn hpa_targets(o: &Value) -> String {
    let current = o
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = o
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "Resource")
        .map(|m| {
            let name = m["resource"]["name"].as_str().unwrap_or_default();
            let target = &m["resource"]["target"];
            let now = current
                .iter()
                .find(|c| c["resource"]["name"] == name)
                .map(|c| &c["resource"]["current"]);
            let (have, want) = if target["type"] == "Utilization" {
                (
                    now.and_then(|c| c["averageUtilization"].as_i64())
                        .map_or("<unknown>".to_string(), |u| format!("{u}%")),
                    format!("{}%", target["averageUtilization"].as_i64().unwrap_or(0)),
                )
            } else {
                (
                    now.and_then(|c| c["averageValue"].as_str())
                        .map_or("<unknown>".to_string(), String::from),
                    target["averageValue"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            };
            format!("{name}: {have}/{want}")
        })
        .collect();
    or_none(parts.join(", "))
}

/// A Job's STATUS column, from its conditions as kubectl shows it.
fn job_status(o: &Value) -> &'static str {
    let conditions = o.pointer("/status/conditions").and_then(Value::as_array);
    let has = |t: &str| {
        conditions.is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o.pointer("/spec/suspend") == Some(&json!(true)) {
        "Suspended"
    } else {
        "Running"
    }
}

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn n(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

/// Kubernetes' short age format: `45s`, `12m`, `5h`, `3d`, `2y`.
pub fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86_400 * 2 => format!("{}h", s / 3600),
        s if s < 86_400 * 365 * 2 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (86_400 * 365)),
    }
}

fn age(obj: &Value, now: jiff::Timestamp) -> String {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or_else(
            || "<unknown>".into(),
            |t| human_age(now.as_second() - t.as_second()),
        )
}

fn cells(kind: &str, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age = json!(age(o, now));
    match kind {
        "Pod" => {
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let mut status = s(o, "/status/phase");
            if let Some(reason) = statuses
                .iter()
                .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str))
            {
                status = reason.to_string();
            }
            if o.pointer("/metadata/deletionTimestamp").is_some() {
                status = "Terminating".into();
            }
            if status.is_empty() {
                status = "Pending".into();
            }
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age,
                json!(or_none(s(o, "/status/podIP"))),
                json!(or_none(s(o, "/spec/nodeName"))),
            ]
        }
        "Namespace" => {
            let phase = s(o, "/status/phase");
            vec![
                name,
                json!(if phase.is_empty() {
                    "Active".into()
                } else {
                    phase
                }),
                age,
            ]
        }
        "ConfigMap" => {
            let count = ["/data", "/binaryData"]
                .iter()
                .filter_map(|p| o.pointer(p).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(count), age]
        }
        "Secret" => {
            let count = o
                .pointer("/data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(o, "/type")), json!(count), age]
        }
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                o.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            json!(n(o, "/status/updatedReplicas")),
            json!(n(o, "/status/availableReplicas")),
            age,
        ],
        "PriorityClass" => vec![
            name,
            json!(n(o, "/value")),
            json!(o.get("globalDefault") == Some(&json!(true))),
            age,
            json!(o
                .get("preemptionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("PreemptLowerPriority")),
        ],
        "HorizontalPodAutoscaler" => vec![
            name,
            json!(format!(
                "{}/{}",
                s(o, "/spec/scaleTargetRef/kind"),
                s(o, "/spec/scaleTargetRef/name")
            )),
            json!(hpa_targets(o)),
            json!(o
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()),
            json!(n(o, "/spec/maxReplicas")),
            json!(n(o, "/status/currentReplicas")),
            age,
        ],
        "StatefulSet" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(o, "/status/readyReplicas"),
                o.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            age,
        ],
        "DaemonSet" => {
            let selector: Vec<String> = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(or_none(selector.join(","))),
                age,
            ]
        }
        "CronJob" => {
            let last = o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or_else(
                    || "<none>".to_string(),
                    |t| human_age(now.as_second() - t.as_second()),
                );
            vec![
                name,
                json!(s(o, "/spec/schedule")),
                json!(or_none(s(o, "/spec/timeZone"))),
                json!(o.pointer("/spec/suspend") == Some(&json!(true))),
                json!(o
                    .pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)),
                json!(last),
                age,
            ]
        }
        "ControllerRevision" => {
            let owner = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|os| os.iter().find(|r| r["controller"] == json!(true)))
                .map(|r| {
                    format!(
                        "{}.{}/{}",
                        r["kind"].as_str().unwrap_or_default().to_lowercase(),
                        r["apiVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .split('/')
                            .next()
                            .unwrap_or_default(),
                        r["name"].as_str().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            vec![name, json!(or_none(owner)), json!(n(o, "/revision")), age]
        }
        "ReplicaSet" => vec![
            name,
            json!(o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)),
            json!(n(o, "/status/replicas")),
            json!(n(o, "/status/readyReplicas")),
            age,
        ],
        "Service" => {
            let ports = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                                None => format!("{}/{proto}", p["port"]),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let ty = s(o, "/spec/type");
            vec![
                name,
                json!(if ty.is_empty() {
                    "ClusterIP".into()
                } else {
                    ty
                }),
                json!(or_none(s(o, "/spec/clusterIP"))),
                json!("<none>"),
                json!(or_none(ports)),
                age,
            ]
        }
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map_or("Unknown", |c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                });
            let mut status = ready.to_string();
            if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            // Roles come from node-role.kubernetes.io/<role> labels, as kubectl shows them.
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .collect();
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
            ]
        }
        "Endpoints" => {
            let eps: Vec<String> = o
                .pointer("/subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|ss| {
                    let ports: Vec<i64> = ss["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_i64())
                        .collect();
                    ss["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(move |a| {
                            let ip = a["ip"].as_str().unwrap_or("").to_string();
                            ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            vec![name, json!(or_none(eps.join(","))), age]
        }
        "Lease" => vec![name, json!(or_none(s(o, "/spec/holderIdentity"))), age],
        "ResourceQuota" => {
            // `name: used/hard` for every limited name, requests and limits apart.
            let hard = o.pointer("/status/hard").and_then(Value::as_object);
            let used = o.pointer("/status/used");
            let mut request = Vec::new();
            let mut limit = Vec::new();
            for (k, h) in hard.into_iter().flatten() {
                let u = used
                    .and_then(|u| u.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("0");
                let cell = format!("{k}: {u}/{}", h.as_str().unwrap_or(""));
                if k.starts_with("limits.") {
                    limit.push(cell);
                } else {
                    request.push(cell);
                }
            }
            vec![
                name,
                age,
                json!(request.join(", ")),
                json!(limit.join(", ")),
            ]
        }
        "LimitRange" => vec![name, json!(s(o, "/metadata/creationTimestamp"))],
        "Job" => vec![
            name,
            json!(job_status(o)),
            json!(format!(
                "{}/{}",
                n(o, "/status/succeeded"),
                o.pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            age,
        ],
        "Event" => vec![
            json!(age),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            )),
            json!(s(o, "/message")),
        ],
        _ => vec![name, age],
    }
}

/// The partial object a row carries (`includeObject=Metadata`, kubectl's default).
fn row_object(o: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": o.get("metadata").cloned().unwrap_or(Value::Null),
    })
}

/// A `meta.k8s.io/v1` Table of `objects` of `kind`; `resource_version` for the list.
pub fn table(kind: &str, objects: &[Value], resource_version: Option<u64>) -> Value {
    let now = jiff::Timestamp::now();
    let defs: Vec<Value> = columns(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": if c.wide { 1 } else { 0 },
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": cells(kind, o, now), "object": row_object(o)}))
        .collect();
    let mut meta = serde_json::Map::new();
    if let Some(rv) = resource_version {
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_kubectls_columns_and_wide_ones_are_priority_one() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}
        });
        let t = table("Pod", &[pod], Some(7));
        let heads: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            heads,
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        );
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web-1");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn ages_read_like_kubectls() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(3 * 3600), "3h");
        assert_eq!(human_age(5 * 86_400), "5d");
    }
}
