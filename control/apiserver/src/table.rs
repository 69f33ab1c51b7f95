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
            wide("Nominated Node", "string"),
            wide("Readiness Gates", "string"),
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
            wide("Containers", "string"),
            wide("Images", "string"),
            wide("Selector", "string"),
        ],
        "StatefulSet" => vec![
            name,
            col("Ready", "string"),
            age,
            wide("Containers", "string"),
            wide("Images", "string"),
        ],
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
            wide("Containers", "string"),
            wide("Images", "string"),
            wide("Selector", "string"),
        ],
        "CronJob" => vec![
            name,
            col("Schedule", "string"),
            col("Timezone", "string"),
            col("Suspend", "boolean"),
            col("Active", "integer"),
            col("Last Schedule", "string"),
            age,
            wide("Containers", "string"),
            wide("Images", "string"),
            wide("Selector", "string"),
        ],
        "ControllerRevision" => vec![
            name,
            col("Controller", "string"),
            col("Revision", "integer"),
            age,
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            name,
            col("Desired", "integer"),
            col("Current", "integer"),
            col("Ready", "integer"),
            age,
            wide("Containers", "string"),
            wide("Images", "string"),
            wide("Selector", "string"),
        ],
        "Service" => vec![
            name,
            col("Type", "string"),
            col("Cluster-IP", "string"),
            col("External-IP", "string"),
            col("Port(s)", "string"),
            age,
            wide("Selector", "string"),
        ],
        "Node" => vec![
            name,
            col("Status", "string"),
            col("Roles", "string"),
            age,
            col("Version", "string"),
            wide("Internal-IP", "string"),
            wide("External-IP", "string"),
            wide("OS-Image", "string"),
            wide("Kernel-Version", "string"),
            wide("Container-Runtime", "string"),
        ],
        "Endpoints" => vec![name, col("Endpoints", "string"), age],
        "EndpointSlice" => vec![
            name,
            col("AddressType", "string"),
            col("Ports", "string"),
            col("Endpoints", "string"),
            age,
        ],
        "ServiceAccount" => vec![name, col("Secrets", "string"), age],
        "Role" | "ClusterRole" => vec![name, col("Created At", "date")],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            col("Role", "string"),
            age,
            wide("Users", "string"),
            wide("Groups", "string"),
            wide("ServiceAccounts", "string"),
        ],
        "Lease" => vec![name, col("Holder", "string"), age],
        "PersistentVolumeClaim" => vec![
            name,
            col("Status", "string"),
            col("Volume", "string"),
            col("Capacity", "string"),
            col("Access Modes", "string"),
            col("StorageClass", "string"),
            col("VolumeAttributesClass", "string"),
            age,
            wide("VolumeMode", "string"),
        ],
        "PersistentVolume" => vec![
            name,
            col("Capacity", "string"),
            col("Access Modes", "string"),
            col("Reclaim Policy", "string"),
            col("Status", "string"),
            col("Claim", "string"),
            col("StorageClass", "string"),
            col("VolumeAttributesClass", "string"),
            col("Reason", "string"),
            age,
            wide("VolumeMode", "string"),
        ],
        "Ingress" => vec![
            name,
            col("Class", "string"),
            col("Hosts", "string"),
            col("Address", "string"),
            col("Ports", "string"),
            age,
        ],
        "IngressClass" => vec![
            name,
            col("Controller", "string"),
            col("Parameters", "string"),
            age,
        ],
        "NetworkPolicy" => vec![name, col("Pod-Selector", "string"), age],
        "PodDisruptionBudget" => vec![
            name,
            col("Min Available", "string"),
            col("Max Unavailable", "string"),
            col("Allowed Disruptions", "integer"),
            age,
        ],
        "StorageClass" => vec![
            name,
            col("Provisioner", "string"),
            col("ReclaimPolicy", "string"),
            col("VolumeBindingMode", "string"),
            col("AllowVolumeExpansion", "string"),
            age,
        ],
        // autoscaling/v1 Scale, as `kubectl get --subresource=scale` shows it.
        "Scale" => vec![name, col("Desired", "integer"), col("Available", "integer")],
        "ResourceQuota" => vec![name, age, col("Request", "string"), col("Limit", "string")],
        "LimitRange" => vec![name, col("Created At", "date")],
        "Job" => vec![
            name,
            col("Status", "string"),
            col("Completions", "string"),
            col("Duration", "string"),
            age,
            wide("Containers", "string"),
            wide("Images", "string"),
            wide("Selector", "string"),
        ],
        "Event" => vec![
            col("Last Seen", "string"),
            col("Type", "string"),
            col("Reason", "string"),
            col("Object", "string"),
            wide("Subobject", "string"),
            wide("Source", "string"),
            col("Message", "string"),
            wide("First Seen", "string"),
            wide("Count", "string"),
            wide("Name", "string"),
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

/// A Job's COMPLETIONS: `succeeded/completions`, or for a work queue (no completions)
/// `succeeded/1`, `of parallelism` when several pods run at once.
fn job_completions(o: &Value) -> String {
    let succeeded = n(o, "/status/succeeded");
    match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match o.pointer("/spec/parallelism").and_then(Value::as_i64) {
            Some(p) if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    }
}

/// A Job's DURATION: from its start to its completion, or to now while it runs.
fn job_duration(o: &Value, now: jiff::Timestamp) -> String {
    let Some(start) = time_at(o, "/status/startTime") else {
        return String::new();
    };
    let end = time_at(o, "/status/completionTime").unwrap_or(now);
    human_age(end.as_second() - start.as_second())
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

/// `<unset>` for an empty value, as kubectl shows an unset class.
fn unset(x: String) -> String {
    if x.is_empty() {
        "<unset>".into()
    } else {
        x
    }
}

/// Access modes as kubectl abbreviates them: `RWO,ROX,RWX,RWOP`.
fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

/// How kubectl shows an age or a duration (apimachinery's `HumanDuration`): `45s`, `3m20s`,
/// `12m`, `5h10m`, `20h`, `3d4h`, `30d`, `2y10d`; finer units while the number is small.
pub fn human_age(secs: i64) -> String {
    let secs = secs.max(0);
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The time at `pointer` in `obj`, if it is a valid timestamp.
fn time_at(obj: &Value, pointer: &str) -> Option<jiff::Timestamp> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
}

/// How long ago the time at `pointer` was, as kubectl shows it (`<unknown>` without one).
fn since(obj: &Value, pointer: &str, now: jiff::Timestamp) -> String {
    time_at(obj, pointer).map_or_else(
        || "<unknown>".into(),
        |t| human_age(now.as_second() - t.as_second()),
    )
}

/// A label selector as Kubernetes prints one in a table; `<none>` when empty or absent.
fn format_selector(selector: Option<&Value>) -> String {
    or_none(
        selector
            .map(crate::selectors::selector_string)
            .unwrap_or_default(),
    )
}

/// A map of labels as `k=v,…` in key order (a Service's selector); `<none>` when empty.
fn format_labels(labels: Option<&Value>) -> String {
    let mut pairs: Vec<String> = labels
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    or_none(pairs.join(","))
}

/// The CONTAINERS and IMAGES cells of a workload whose pod spec is at `spec`.
fn containers_and_images(o: &Value, spec: &str) -> [Value; 2] {
    let containers: Vec<&Value> = o
        .pointer(&format!("{spec}/containers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let field = |f: &str| {
        containers
            .iter()
            .map(|c| c[f].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    };
    [json!(field("name")), json!(field("image"))]
}

/// At most three items and how many more there are, as kubectl lists endpoints.
fn first_three(items: &[String]) -> String {
    match items.len() {
        0 => "<none>".into(),
        n if n <= 3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

/// A pod's STATUS as kubectl shows it: its phase, unless a reason says more — the pod's own
/// (`Evicted`), an init container still at work (`Init:0/1`, `Init:CrashLoopBackOff`), a
/// container waiting or terminated (`ContainerCreating`, `Completed`, `Error`,
/// `ExitCode:2`), or the pod being deleted (`Terminating`).
fn pod_status(o: &Value) -> String {
    let mut reason = s(o, "/status/phase");
    let pod_reason = s(o, "/status/reason");
    if !pod_reason.is_empty() {
        reason = pod_reason.clone();
    }
    let statuses = |p: &str| -> Vec<Value> {
        o.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let terminated_reason = |t: &Value, prefix: &str| -> String {
        match t["reason"].as_str().filter(|r| !r.is_empty()) {
            Some(r) => format!("{prefix}{r}"),
            None => match t["signal"].as_i64().filter(|s| *s != 0) {
                Some(sig) => format!("{prefix}Signal:{sig}"),
                None => format!("{prefix}ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            },
        }
    };
    let inits = statuses("/status/initContainerStatuses");
    let init_total = o
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let state = &c["state"];
        if let Some(t) = state.get("terminated") {
            if t["exitCode"].as_i64() == Some(0) {
                continue;
            }
            reason = terminated_reason(t, "Init:");
        } else if let Some(r) = state
            .pointer("/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{init_total}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        let mut running = false;
        for c in statuses("/status/containerStatuses").iter().rev() {
            let state = &c["state"];
            if let Some(r) = state
                .pointer("/waiting/reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                reason = r.to_string();
            } else if let Some(t) = state.get("terminated") {
                reason = terminated_reason(t, "");
            } else if state.get("running").is_some() && c["ready"].as_bool() == Some(true) {
                running = true;
            }
        }
        // A pod whose other containers still run is Running, not Completed.
        if reason == "Completed" && running {
            reason = "Running".into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if pod_reason == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

fn age(obj: &Value, now: jiff::Timestamp) -> String {
    since(obj, "/metadata/creationTimestamp", now)
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
            // `3 (2m ago)`: with the latest restart, as kubectl shows it.
            let last_restart = statuses
                .iter()
                .filter_map(|c| time_at(c, "/lastState/terminated/finishedAt"))
                .max();
            let restarts = match last_restart {
                Some(t) if restarts > 0 => format!(
                    "{restarts} ({} ago)",
                    human_age(now.as_second() - t.as_second())
                ),
                _ => restarts.to_string(),
            };
            let gates: Vec<&str> = o
                .pointer("/spec/readinessGates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| g["conditionType"].as_str())
                .collect();
            let gates_met = gates
                .iter()
                .filter(|g| {
                    o.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c["type"] == **g && c["status"] == "True")
                        })
                })
                .count();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts),
                age,
                json!(or_none(s(o, "/status/podIP"))),
                json!(or_none(s(o, "/spec/nodeName"))),
                json!(or_none(s(o, "/status/nominatedNodeName"))),
                json!(if gates.is_empty() {
                    "<none>".to_string()
                } else {
                    format!("{gates_met}/{}", gates.len())
                }),
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
        ]
        .into_iter()
        .chain(containers_and_images(o, "/spec/template/spec"))
        .chain([json!(format_selector(o.pointer("/spec/selector")))])
        .collect(),
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
        ]
        .into_iter()
        .chain(containers_and_images(o, "/spec/template/spec"))
        .collect(),
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
            .into_iter()
            .chain(containers_and_images(o, "/spec/template/spec"))
            .chain([json!(format_selector(o.pointer("/spec/selector")))])
            .collect()
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
            .into_iter()
            .chain(containers_and_images(
                o,
                "/spec/jobTemplate/spec/template/spec",
            ))
            .chain([json!(format_selector(
                o.pointer("/spec/jobTemplate/spec/selector")
            ))])
            .collect()
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
        "ReplicaSet" | "ReplicationController" => {
            let selector = crate::selectors::spec_selector(o, kind);
            vec![
                name,
                json!(o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                age,
            ]
            .into_iter()
            .chain(containers_and_images(o, "/spec/template/spec"))
            .chain([json!(format_selector(selector.as_ref()))])
            .collect()
        }
        "PersistentVolumeClaim" => vec![
            name,
            json!(s(o, "/status/phase")),
            json!(s(o, "/spec/volumeName")),
            json!(s(o, "/status/capacity/storage")),
            json!(access_modes(o.pointer("/status/accessModes"))),
            json!(s(o, "/spec/storageClassName")),
            json!(unset(s(o, "/spec/volumeAttributesClassName"))),
            age,
            json!(s(o, "/spec/volumeMode")),
        ],
        "PersistentVolume" => {
            let claim = match (
                s(o, "/spec/claimRef/namespace"),
                s(o, "/spec/claimRef/name"),
            ) {
                (_, n) if n.is_empty() => String::new(),
                (ns, n) => format!("{ns}/{n}"),
            };
            vec![
                name,
                json!(s(o, "/spec/capacity/storage")),
                json!(access_modes(o.pointer("/spec/accessModes"))),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(s(o, "/status/phase")),
                json!(claim),
                json!(s(o, "/spec/storageClassName")),
                json!(unset(s(o, "/spec/volumeAttributesClassName"))),
                json!(s(o, "/status/reason")),
                age,
                json!(s(o, "/spec/volumeMode")),
            ]
        }
        "Ingress" => {
            let list = |p: &str| {
                o.pointer(p)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            };
            let mut hosts: Vec<String> = list("/spec/rules")
                .iter()
                .filter_map(|r| r["host"].as_str().map(str::to_string))
                .collect();
            if hosts.is_empty() {
                hosts.push("*".into());
            }
            let address: Vec<String> = list("/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .map(str::to_string)
                })
                .collect();
            let ports = if list("/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                json!(or_none(s(o, "/spec/ingressClassName"))),
                json!(hosts.join(",")),
                json!(address.join(",")),
                json!(ports),
                age,
            ]
        }
        "NetworkPolicy" => {
            let selector = crate::selectors::selector_string(
                o.pointer("/spec/podSelector").unwrap_or(&Value::Null),
            );
            vec![name, json!(or_none(selector)), age]
        }
        "PodDisruptionBudget" => {
            let or_na = |x: String| if x.is_empty() { "N/A".to_string() } else { x };
            vec![
                name,
                json!(or_na(s(o, "/spec/minAvailable"))),
                json!(or_na(s(o, "/spec/maxUnavailable"))),
                json!(n(o, "/status/disruptionsAllowed")),
                age,
            ]
        }
        "StorageClass" => {
            let default = o
                .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true");
            let shown = if default {
                json!(format!("{} (default)", s(o, "/metadata/name")))
            } else {
                name
            };
            let expand = o
                .pointer("/allowVolumeExpansion")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            vec![
                shown,
                json!(s(o, "/provisioner")),
                json!(s(o, "/reclaimPolicy")),
                json!(s(o, "/volumeBindingMode")),
                json!(expand.to_string()),
                age,
            ]
        }
        "IngressClass" => {
            let params = match (s(o, "/spec/parameters/kind"), s(o, "/spec/parameters/name")) {
                (k, n) if !k.is_empty() && !n.is_empty() => {
                    let group = s(o, "/spec/parameters/apiGroup");
                    if group.is_empty() {
                        format!("{k}/{n}")
                    } else {
                        format!("{k}.{group}/{n}")
                    }
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(s(o, "/spec/controller")),
                json!(or_none(params)),
                age,
            ]
        }
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
            let ty = if ty.is_empty() {
                "ClusterIP".into()
            } else {
                ty
            };
            let list = |p: &str| -> Vec<String> {
                o.pointer(p)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            let mut external = list("/spec/externalIPs");
            let external = match ty.as_str() {
                "ExternalName" => s(o, "/spec/externalName"),
                "LoadBalancer" => {
                    let ingress = o
                        .pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                        .map(String::from);
                    let mut all: Vec<String> = ingress.collect();
                    all.append(&mut external);
                    if all.is_empty() {
                        "<pending>".into()
                    } else {
                        all.join(",")
                    }
                }
                _ => or_none(external.join(",")),
            };
            vec![
                name,
                json!(ty),
                json!(or_none(s(o, "/spec/clusterIP"))),
                json!(external),
                json!(or_none(ports)),
                age,
                json!(format_labels(o.pointer("/spec/selector"))),
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
            let address = |ty: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|a| a["type"] == ty))
                    .and_then(|a| a["address"].as_str())
                    .map_or_else(|| "<none>".to_string(), String::from)
            };
            let info = |f: &str| or_none(s(o, &format!("/status/nodeInfo/{f}")));
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(info("osImage")),
                json!(info("kernelVersion")),
                json!(info("containerRuntimeVersion")),
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
            vec![name, json!(first_three(&eps)), age]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .pointer("/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    p["port"]
                        .as_i64()
                        .map_or_else(|| "<unset>".to_string(), |n| n.to_string())
                })
                .collect();
            let addresses: Vec<String> = o
                .pointer("/endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let unset = |x: String| if x == "<none>" { "<unset>".into() } else { x };
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(unset(first_three(&addresses))),
                age,
            ]
        }
        "ServiceAccount" => {
            let secrets = o
                .pointer("/secrets")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            vec![name, json!(secrets.to_string()), age]
        }
        "Role" | "ClusterRole" => vec![name, json!(s(o, "/metadata/creationTimestamp"))],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects: Vec<&Value> = o
                .pointer("/subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            let of_kind = |kind: &str| -> String {
                subjects
                    .iter()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| {
                        let name = x["name"].as_str().unwrap_or_default();
                        match kind {
                            "ServiceAccount" => {
                                format!("{}/{name}", x["namespace"].as_str().unwrap_or_default())
                            }
                            _ => name.to_string(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                )),
                age,
                json!(of_kind("User")),
                json!(of_kind("Group")),
                json!(of_kind("ServiceAccount")),
            ]
        }
        "Lease" => vec![name, json!(or_none(s(o, "/spec/holderIdentity"))), age],
        "Scale" => vec![
            name,
            json!(o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)),
            json!(o
                .pointer("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)),
        ],
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
            json!(job_completions(o)),
            json!(job_duration(o, now)),
            age,
        ]
        .into_iter()
        .chain(containers_and_images(o, "/spec/template/spec"))
        .chain([json!(format_selector(o.pointer("/spec/selector")))])
        .collect(),
        "Event" => {
            // As kubectl: the last time it was seen (the series' if any), else the first.
            let first = [
                "/firstTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find(|p| time_at(o, p).is_some())
            .map_or_else(|| "<unknown>".to_string(), |p| since(o, p, now));
            let last = ["/series/lastObservedTime", "/lastTimestamp"]
                .iter()
                .find(|p| time_at(o, p).is_some())
                .map_or_else(|| first.clone(), |p| since(o, p, now));
            let count = o
                .pointer("/series/count")
                .or_else(|| o.pointer("/count"))
                .and_then(Value::as_i64)
                .filter(|c| *c > 0)
                .unwrap_or(1);
            let kind = s(o, "/involvedObject/kind").to_lowercase();
            let target = match s(o, "/involvedObject/name") {
                n if n.is_empty() => kind,
                n => format!("{kind}/{n}"),
            };
            let source = match (s(o, "/source/component"), s(o, "/reportingComponent")) {
                (c, _) if !c.is_empty() => match s(o, "/source/host") {
                    h if h.is_empty() => c,
                    h => format!("{c}, {h}"),
                },
                (_, r) => r,
            };
            vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(target),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(o, "/message").trim()),
                json!(first),
                json!(count.to_string()),
                name,
            ]
        }
        _ => vec![name, age],
    }
}

/// What each row of a Table carries as its `object` (the `includeObject` query parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Include {
    /// No object.
    None,
    /// The object's metadata as a PartialObjectMetadata (the default).
    #[default]
    Metadata,
    /// The whole object (what `kubectl get --sort-by` asks for, to sort rows by any field).
    Object,
}

impl Include {
    /// Parses `includeObject`, as Kubernetes' TableOptions does.
    pub fn parse(v: &str) -> Result<Include, String> {
        match v {
            "None" => Ok(Include::None),
            "Metadata" | "" => Ok(Include::Metadata),
            "Object" => Ok(Include::Object),
            other => Err(format!(
                "includeObject {other:?} is not one of \"None\", \"Metadata\", \"Object\""
            )),
        }
    }
}

/// The object a row carries.
fn row_object(o: &Value, include: Include) -> Value {
    match include {
        Include::None => Value::Null,
        Include::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(Value::Null),
        }),
        Include::Object => o.clone(),
    }
}

/// A `meta.k8s.io/v1` Table of `objects` of `kind`; `resource_version` for the list; each
/// row carries what `include` says.
pub fn table(
    kind: &str,
    objects: &[Value],
    resource_version: Option<u64>,
    include: Include,
) -> Value {
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
        .map(|o| json!({"cells": cells(kind, o, now), "object": row_object(o, include)}))
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
    fn rows_carry_the_object_include_object_asks_for() {
        let ev = json!({"kind": "Event", "apiVersion": "v1", "lastTimestamp": "2020-01-01T00:00:00Z",
                        "metadata": {"name": "e1", "namespace": "default"}});
        let row =
            |include| table("Event", std::slice::from_ref(&ev), None, include)["rows"][0].clone();
        assert_eq!(row(Include::Object)["object"], ev);
        assert_eq!(
            row(Include::Metadata)["object"]["kind"],
            "PartialObjectMetadata"
        );
        assert_eq!(row(Include::Metadata)["object"]["metadata"]["name"], "e1");
        assert!(row(Include::Metadata)["object"]
            .get("lastTimestamp")
            .is_none());
        assert!(row(Include::None)["object"].is_null());
        assert_eq!(Include::parse("Object"), Ok(Include::Object));
        assert_eq!(Include::parse(""), Ok(Include::Metadata));
        assert!(Include::parse("Everything")
            .unwrap_err()
            .contains("includeObject"));
    }

    #[test]
    fn pods_get_kubectls_columns_and_wide_ones_are_priority_one() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}
        });
        let t = table("Pod", &[pod], Some(7), Include::Metadata);
        let heads: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            heads,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
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
        assert_eq!(human_age(119), "119s");
        assert_eq!(human_age(150), "2m30s");
        assert_eq!(human_age(180), "3m");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(3 * 3600), "3h");
        assert_eq!(human_age(3 * 3600 + 20 * 60), "3h20m");
        assert_eq!(human_age(30 * 3600), "30h");
        assert_eq!(human_age(50 * 3600), "2d2h");
        assert_eq!(human_age(5 * 86_400), "5d");
        assert_eq!(human_age(40 * 86_400), "40d");
        assert_eq!(human_age(800 * 86_400), "2y70d");
    }

    fn cells_of(kind: &str, o: Value) -> Vec<Value> {
        let t = table(kind, &[o], None, Include::Metadata);
        assert_eq!(
            t["columnDefinitions"].as_array().unwrap().len(),
            t["rows"][0]["cells"].as_array().unwrap().len(),
            "{kind}: a cell per column"
        );
        t["rows"][0]["cells"].as_array().unwrap().clone()
    }

    #[test]
    fn workloads_show_containers_images_and_selectors_when_wide() {
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "canary", "operator": "DoesNotExist"}]},
            "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.25"}, {"name": "log", "image": "busybox"}]}}},
            "status": {"readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}});
        let c = cells_of("Deployment", d.clone());
        assert_eq!(c[1], "1/2");
        assert_eq!(c[5], "nginx,log");
        assert_eq!(c[6], "nginx:1.25,busybox");
        assert_eq!(c[7], "app=web,!canary,tier in (a,b)");
        let rs = cells_of("ReplicaSet", d);
        assert_eq!(rs[7], "app=web,!canary,tier in (a,b)");
        let svc = cells_of(
            "Service",
            json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer",
                "clusterIP": "10.96.0.9", "selector": {"b": "2", "a": "1"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}}),
        );
        assert_eq!(svc[3], "<pending>");
        assert_eq!(svc[4], "80:30080/TCP");
        assert_eq!(svc[6], "a=1,b=2");
    }

    #[test]
    fn pod_statuses_say_what_kubectl_says() {
        let pod = |status: Value| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}],
                   "initContainers": [{"name": "i"}]}, "status": status})
        };
        let status = |p: Value| cells_of("Pod", p)[2].as_str().unwrap().to_string();
        assert_eq!(status(pod(json!({"phase": "Pending"}))), "Pending");
        assert_eq!(
            status(pod(json!({"phase": "Pending", "initContainerStatuses": [
                {"state": {"waiting": {"reason": "PodInitializing"}}}]}))),
            "Init:0/1"
        );
        assert_eq!(
            status(pod(json!({"phase": "Pending", "initContainerStatuses": [
                {"state": {"terminated": {"exitCode": 0}}}], "containerStatuses": [
                {"state": {"waiting": {"reason": "ContainerCreating"}}}]}))),
            "ContainerCreating"
        );
        assert_eq!(
            status(pod(json!({"phase": "Failed", "containerStatuses": [
                {"state": {"terminated": {"exitCode": 2}}}]}))),
            "ExitCode:2"
        );
        assert_eq!(
            status(pod(json!({"phase": "Succeeded", "containerStatuses": [
                {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}))),
            "Completed"
        );
        assert_eq!(
            status(pod(json!({"phase": "Failed", "reason": "Evicted"}))),
            "Evicted"
        );
        let mut deleting = pod(json!({"phase": "Running"}));
        deleting["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        assert_eq!(status(deleting), "Terminating");
    }

    #[test]
    fn budgets_policies_and_storage_classes_read_like_kubectls() {
        let pdb = json!({"metadata": {"name": "web"}, "spec": {"minAvailable": 2},
                         "status": {"disruptionsAllowed": 1}});
        assert_eq!(
            cells_of("PodDisruptionBudget", pdb)[..4],
            [json!("web"), json!("2"), json!("N/A"), json!(1)]
        );
        let pdb = json!({"metadata": {"name": "web"}, "spec": {"maxUnavailable": "25%"}});
        assert_eq!(
            cells_of("PodDisruptionBudget", pdb)[1..3],
            [json!("N/A"), json!("25%")]
        );
        let netpol = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(cells_of("NetworkPolicy", netpol)[1], json!("<none>"));
        let sc = json!({"metadata": {"name": "fast", "annotations": {
                            "storageclass.kubernetes.io/is-default-class": "true"}},
                        "provisioner": "example.com/fast", "reclaimPolicy": "Delete",
                        "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            cells_of("StorageClass", sc)[..5],
            [
                json!("fast (default)"),
                json!("example.com/fast"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!("false")
            ]
        );
    }

    #[test]
    fn jobs_show_completions_and_duration() {
        let job = json!({"metadata": {"name": "j"}, "spec": {"completions": 3, "template":
            {"spec": {"containers": [{"name": "w", "image": "busybox"}]}}},
            "status": {"succeeded": 3, "startTime": "2020-01-01T00:00:00Z",
                       "completionTime": "2020-01-01T00:02:30Z",
                       "conditions": [{"type": "Complete", "status": "True"}]}});
        let c = cells_of("Job", job);
        assert_eq!(c[1], "Complete");
        assert_eq!(c[2], "3/3");
        assert_eq!(c[3], "2m30s");
        assert_eq!(c[5], "w");
        let queue = json!({"metadata": {"name": "q"}, "spec": {"parallelism": 4}});
        let c = cells_of("Job", queue);
        assert_eq!(c[2], "0/1 of 4");
        assert_eq!(c[3], "");
    }

    #[test]
    fn slices_endpoints_and_events_read_like_kubectls() {
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"port": 8080}], "endpoints": (1..=5).map(|i| json!({"addresses": [format!("10.0.0.{i}")]})).collect::<Vec<_>>()});
        let c = cells_of("EndpointSlice", slice);
        assert_eq!(c[1], "IPv4");
        assert_eq!(c[2], "8080");
        assert_eq!(c[3], "10.0.0.1,10.0.0.2,10.0.0.3 + 2 more...");
        let empty = cells_of(
            "EndpointSlice",
            json!({"metadata": {"name": "x"}, "addressType": "IPv4"}),
        );
        assert_eq!(
            (&empty[2], &empty[3]),
            (&json!("<unset>"), &json!("<unset>"))
        );
        let now = jiff::Timestamp::now();
        let ago = |secs: i64| (now - jiff::SignedDuration::from_secs(secs)).to_string();
        let event = json!({"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled",
            "involvedObject": {"kind": "Pod", "name": "web"}, "message": " assigned ",
            "firstTimestamp": ago(600), "lastTimestamp": ago(30), "count": 3,
            "source": {"component": "default-scheduler"}});
        let c = cells_of("Event", event);
        assert_eq!(c[0], "30s");
        assert_eq!(c[3], "pod/web");
        assert_eq!(c[5], "default-scheduler");
        assert_eq!(c[6], "assigned");
        assert_eq!(c[7], "10m");
        assert_eq!(c[8], "3");
        assert_eq!(c[9], "web.1");
    }
}
