//! The HorizontalPodAutoscaler controller (autoscaling/v2): scales a Deployment, ReplicaSet
//! or StatefulSet so that its pods' resource use meets the targets, from the
//! `metrics.k8s.io` PodMetrics the node agents report.
//!
//! Every 15 s (and whenever the autoscaler changes) it reads the target's `scale`
//! subresource (replicas and label selector), the running pods it selects and their
//! PodMetrics. For each Resource metric (cpu or memory, target `Utilization` — percent of the
//! pods' requests — or `AverageValue`) the pure [`recommend`] computes, as Kubernetes does,
//! `ceil(current × usage / target)`, left alone within a 10% tolerance; the largest
//! recommendation wins, within `minReplicas`..`maxReplicas`. Scaling down takes the highest
//! recommendation of the stabilization window (`behavior.scaleDown.stabilizationWindowSeconds`,
//! default 300 s) and scaling up is limited per step by the behavior's policies (default: to
//! double, or 4 more, whichever is more). Pods without metrics yet are left out of the average.
//! Status (`currentMetrics`, `currentReplicas`, `desiredReplicas`, `lastScaleTime`, the
//! AbleToScale/ScalingActive/ScalingLimited conditions) and `SuccessfulRescale` events are as
//! `kubectl describe hpa` shows them on Kubernetes. Other metric types (Pods, Object,
//! External, ContainerResource) are reported as not supported in ScalingActive.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::{json, Value};

use crate::events;
use crate::replicaset::ignore_gone;

const COMPONENT: &str = "horizontal-pod-autoscaler";
/// How often every autoscaler is evaluated (Kubernetes' default sync period).
pub const SYNC: Duration = Duration::from_secs(15);
/// Usage within this fraction of the target changes nothing.
const TOLERANCE: f64 = 0.1;

/// One pod's use and request of a resource (millicores or bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// What it uses.
    pub usage: f64,
    /// What it requests (0: none).
    pub request: f64,
}

/// The current value of one metric and the replicas it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `cpu` or `memory`.
    pub resource: String,
    /// Average utilization in percent of requests (for Utilization targets).
    pub utilization: Option<i64>,
    /// Average use per pod, in the resource's unit.
    pub average: f64,
    /// The replica count this metric alone asks for.
    pub replicas: i32,
}

/// What one Resource metric target asks for given `current` replicas and `samples` of the
/// pods with metrics; `Err` says why it cannot be computed.
pub fn recommend(
    current: i32,
    resource: &str,
    target: &Value,
    samples: &[Sample],
    missing: &[Sample],
) -> Result<Reading, String> {
    if samples.is_empty() {
        return Err(format!(
            "did not receive metrics for any ready pods ({resource})"
        ));
    }
    let n = samples.len() as f64;
    let average = samples.iter().map(|s| s.usage).sum::<f64>() / n;
    // The usage ratio over `pods` (and the utilization in percent, for Utilization targets).
    let ratio_of = |pods: &[Sample]| -> Result<(f64, Option<f64>), String> {
        let used: f64 = pods.iter().map(|s| s.usage).sum();
        match target["type"].as_str() {
            Some("Utilization") => {
                let want = target["averageUtilization"].as_f64().unwrap_or(0.0);
                if pods.iter().any(|s| s.request <= 0.0) {
                    return Err(format!("missing request for {resource} in some pods"));
                }
                if want <= 0.0 {
                    return Err("averageUtilization must be above 0".into());
                }
                let have = used * 100.0 / pods.iter().map(|s| s.request).sum::<f64>();
                Ok((have / want, Some(have)))
            }
            Some("AverageValue") => {
                let want = target["averageValue"]
                    .as_str()
                    .and_then(|q| parse(q, resource))
                    .unwrap_or(0.0);
                if want <= 0.0 {
                    return Err("averageValue must be above 0".into());
                }
                Ok((used / pods.len() as f64 / want, None))
            }
            other => Err(format!(
                "target type {other:?} is not supported for resource metrics"
            )),
        }
    };
    let (ratio, utilization) = ratio_of(samples)?;
    let mut replicas = if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        ((ratio * n).ceil() as i32).max(1)
    };
    if !missing.is_empty() && replicas != current {
        // As Kubernetes: pods without metrics count as using nothing when scaling up and
        // exactly the target when scaling down; if that turns the direction, stay.
        let share = target["averageUtilization"].as_f64().unwrap_or(0.0) / 100.0;
        let avg_value = target["averageValue"]
            .as_str()
            .and_then(|q| parse(q, resource));
        let filled: Vec<Sample> = samples
            .iter()
            .copied()
            .chain(missing.iter().map(|m| Sample {
                usage: if ratio > 1.0 {
                    0.0
                } else {
                    avg_value.unwrap_or(m.request * share)
                },
                request: m.request,
            }))
            .collect();
        let (adjusted, _) = ratio_of(&filled)?;
        replicas = if (adjusted - 1.0).abs() <= TOLERANCE || (adjusted > 1.0) != (ratio > 1.0) {
            current
        } else {
            ((adjusted * filled.len() as f64).ceil() as i32).max(1)
        };
    }
    Ok(Reading {
        resource: resource.into(),
        utilization: utilization.map(|u| u.round() as i64),
        average,
        replicas,
    })
}

/// Parses a quantity in the resource's unit (millicores for cpu, bytes for memory).
fn parse(q: &str, resource: &str) -> Option<f64> {
    crate::quantity::parse(q, if resource == "cpu" { 1000.0 } else { 1.0 })
}

fn format_quantity(v: f64, resource: &str) -> String {
    if resource == "cpu" {
        format!("{}m", v.round() as i64)
    } else {
        format!("{}", v.round() as i64)
    }
}

/// The most a step may scale up from `current` under `rules` (Kubernetes' default: double or
/// 4 more, whichever is more); `None` when scaling up is disabled.
pub fn scale_up_limit(current: i32, rules: Option<&HPAScalingRules>) -> Option<i32> {
    let Some(rules) = rules.filter(|r| r.policies.as_ref().is_some_and(|p| !p.is_empty())) else {
        return Some((current * 2).max(current + 4));
    };
    let limits = rules
        .policies
        .iter()
        .flatten()
        .map(|p| match p.type_.as_str() {
            "Percent" => current + (f64::from(current) * f64::from(p.value) / 100.0).ceil() as i32,
            _ => current + p.value,
        });
    match rules.select_policy.as_deref() {
        Some("Disabled") => None,
        Some("Min") => limits.min(),
        _ => limits.max(),
    }
}

/// The fewest a step may scale down to from `current` under `rules` (default: no limit);
/// `None` when scaling down is disabled.
pub fn scale_down_limit(current: i32, rules: Option<&HPAScalingRules>) -> Option<i32> {
    let Some(rules) = rules.filter(|r| r.policies.as_ref().is_some_and(|p| !p.is_empty())) else {
        return Some(0);
    };
    let limits = rules
        .policies
        .iter()
        .flatten()
        .map(|p| match p.type_.as_str() {
            "Percent" => current - (f64::from(current) * f64::from(p.value) / 100.0).floor() as i32,
            _ => current - p.value,
        });
    match rules.select_policy.as_deref() {
        Some("Disabled") => None,
        Some("Min") => limits.max(),
        _ => limits.min(),
    }
}

/// Recommendations remembered per autoscaler (uid → (time, replicas)), for the scale-down
/// stabilization window.
pub type History = Arc<Mutex<HashMap<String, VecDeque<(Timestamp, i32)>>>>;

/// When each autoscaler (uid) was last evaluated, at which generation.
pub type Evaluated = Arc<Mutex<HashMap<String, (Timestamp, i64)>>>;

/// The replicas to set: `wanted` (from the metrics) clamped to min/max, stabilized against
/// `history` and limited by the behavior. Returns (replicas, the limiting condition if any).
pub fn decide(
    hpa: &HorizontalPodAutoscaler,
    current: i32,
    wanted: i32,
    history: &mut VecDeque<(Timestamp, i32)>,
    now: Timestamp,
) -> (i32, Option<&'static str>) {
    let spec = hpa.spec.clone().unwrap_or_default();
    let min = spec.min_replicas.unwrap_or(1).max(1);
    let max = spec.max_replicas.max(min);
    let behavior = spec.behavior.unwrap_or_default();
    let window = behavior
        .scale_down
        .as_ref()
        .and_then(|r| r.stabilization_window_seconds)
        .unwrap_or(300);
    history.push_back((now, wanted));
    while history
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t).as_secs() > i64::from(window.max(0)))
    {
        history.pop_front();
    }
    // Scaling down: the highest recommendation of the window.
    let stabilized = if wanted < current {
        history
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(wanted)
            .min(current)
    } else {
        wanted
    };
    let mut out = stabilized;
    let mut limited = None;
    if out > current {
        match scale_up_limit(current, behavior.scale_up.as_ref()) {
            None => {
                out = current;
                limited = Some("ScaleUpDisabled");
            }
            Some(l) if out > l => {
                out = l;
                limited = Some("ScaleUpLimit");
            }
            Some(_) => {}
        }
    } else if out < current {
        match scale_down_limit(current, behavior.scale_down.as_ref()) {
            None => {
                out = current;
                limited = Some("ScaleDownDisabled");
            }
            Some(l) if out < l => {
                out = l;
                limited = Some("ScaleDownLimit");
            }
            Some(_) => {}
        }
    }
    if out > max {
        out = max;
        limited = Some("TooManyReplicas");
    } else if out < min {
        out = min;
        limited = Some("TooFewReplicas");
    }
    (out, limited)
}

fn target_api(
    client: &kube::Client,
    ns: &str,
    api_version: &str,
    kind: &str,
) -> Option<Api<DynamicObject>> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "ReplicationController" => "replicationcontrollers",
        "StatefulSet" => "statefulsets",
        _ => return None,
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Some(Api::namespaced_with(client.clone(), ns, &ar))
}

fn metrics_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Per pod name: (resource → usage) summed over containers.
fn usage_by_pod(metrics: &[DynamicObject]) -> HashMap<String, BTreeMap<String, f64>> {
    let mut out: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
    for m in metrics {
        let Some(name) = m.metadata.name.clone() else {
            continue;
        };
        let entry = out.entry(name).or_default();
        for c in m.data["containers"].as_array().into_iter().flatten() {
            for resource in ["cpu", "memory"] {
                if let Some(v) = c["usage"][resource]
                    .as_str()
                    .and_then(|q| parse(q, resource))
                {
                    *entry.entry(resource.into()).or_default() += v;
                }
            }
        }
    }
    out
}

fn requests(pod: &Pod, resource: &str) -> f64 {
    crate::quantity::pod_request(pod, resource, if resource == "cpu" { 1000.0 } else { 1.0 })
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
           "message": message, "lastTransitionTime": now})
}

async fn reconcile(
    hpa: Arc<HorizontalPodAutoscaler>,
    ctx: Arc<(kube::Client, History, Evaluated)>,
) -> Result<Action, crate::runner::Error> {
    let (client, history) = (&ctx.0, &ctx.1);
    let (Some(ns), Some(name)) = (
        hpa.metadata.namespace.as_deref(),
        hpa.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let Some(hpa) = hpas.get_opt(name).await? else {
        return Ok(Action::await_change());
    };
    let spec = hpa.spec.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let now = Timestamp::now();
    let now_s = now.to_string();
    // Evaluated at most once per sync period unless the spec changed: the status this
    // controller writes wakes it up too, and must not become another scaling step.
    let uid = hpa.metadata.uid.clone().unwrap_or_default();
    let generation = hpa.metadata.generation.unwrap_or(0);
    {
        let mut last = ctx.2.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, seen)) = last.get(&uid) {
            let since = now.duration_since(*at);
            let period = SignedDuration::try_from(SYNC).unwrap_or_default();
            if *seen == generation && since < period {
                let left = Duration::try_from(period - since).unwrap_or(SYNC);
                return Ok(Action::requeue(left));
            }
        }
        last.insert(uid.clone(), (now, generation));
    }
    let about = events::reference("autoscaling/v2", "HorizontalPodAutoscaler", &hpa.metadata);
    let status_patch = |status: Value| json!({"status": status});
    // The target cannot be scaled: say so in the status (and an event), look again later.
    let already_unable = hpa
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "AbleToScale"))
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0.to_string()));
    let unable = |message: String| {
        let hpas = hpas.clone();
        let about = about.clone();
        // Still unable: same transition time, no new event (no write, no wake-up).
        let now_s = already_unable.clone().unwrap_or_else(|| now_s.clone());
        let first = already_unable.is_none();
        async move {
            if first {
                events::record(
                    client,
                    COMPONENT,
                    &about,
                    events::Kind::Warning,
                    "FailedGetScale",
                    &message,
                )
                .await;
            }
            let status = json!({"status": {"currentReplicas": 0, "desiredReplicas": 0, "conditions": [
                condition("AbleToScale", false, "FailedGetScale", &message, &now_s)]}});
            ignore_gone(
                hpas.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await,
            )?;
            Ok::<_, crate::runner::Error>(Action::requeue(SYNC))
        }
    };
    let api_version = target.api_version.as_deref().unwrap_or("apps/v1");
    let Some(targets) = target_api(client, ns, api_version, &target.kind) else {
        return unable(format!("the HPA controller cannot scale a {}", target.kind)).await;
    };
    let scale = match targets.get_scale(&target.name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return unable(format!(
                "the HPA controller was unable to get the target's current scale: {} {:?} not found",
                target.kind, target.name
            ))
            .await;
        }
        Err(e) => return Err(e.into()),
    };
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let running: Vec<Pod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect();
    let metrics = metrics_api(client, ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let usage = usage_by_pod(&metrics);

    let mut readings = Vec::new();
    let mut problems = Vec::new();
    for m in spec.metrics.iter().flatten() {
        let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
            problems.push(format!("metric type {} is not supported", m.type_));
            continue;
        };
        // Pods with metrics, and running pods without (yet).
        let mut samples = Vec::new();
        let mut missing = Vec::new();
        for p in &running {
            let used = p
                .metadata
                .name
                .as_deref()
                .and_then(|n| usage.get(n))
                .and_then(|u| u.get(&res.name));
            let sample = Sample {
                usage: used.copied().unwrap_or(0.0),
                request: requests(p, &res.name),
            };
            if used.is_some() {
                samples.push(sample);
            } else {
                missing.push(sample);
            }
        }
        let target_json = serde_json::to_value(&res.target).unwrap_or_default();
        match recommend(current, &res.name, &target_json, &samples, &missing) {
            Ok(r) => readings.push(r),
            Err(e) => problems.push(format!("failed to get {} utilization: {e}", res.name)),
        }
    }
    if spec.metrics.as_ref().is_none_or(|m| m.is_empty()) {
        problems.push("no metrics to scale on".into());
    }

    let mut conditions = vec![condition(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
        &now_s,
    )];
    let mut desired = current;
    let mut status =
        json!({"observedGeneration": hpa.metadata.generation, "currentReplicas": current});
    if current == 0 {
        conditions.push(condition(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
            &now_s,
        ));
    } else if readings.is_empty() {
        let message = problems.join("; ");
        conditions.push(condition(
            "ScalingActive",
            false,
            "FailedGetResourceMetric",
            &message,
            &now_s,
        ));
        events::record(
            client,
            COMPONENT,
            &about,
            events::Kind::Warning,
            "FailedGetResourceMetric",
            &message,
        )
        .await;
    } else {
        conditions.push(condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count from resource metrics",
            &now_s,
        ));
        let wanted = readings.iter().map(|r| r.replicas).max().unwrap_or(current);
        let (replicas, limited) = {
            let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
            decide(&hpa, current, wanted, h.entry(uid).or_default(), now)
        };
        desired = replicas;
        conditions.push(match limited {
            Some(reason) => condition(
                "ScalingLimited",
                true,
                reason,
                "the desired replica count is limited",
                &now_s,
            ),
            None => condition(
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
                &now_s,
            ),
        });
        status["currentMetrics"] =
            json!(readings.iter().map(|r| {
            let mut current = json!({"averageValue": format_quantity(r.average, &r.resource)});
            if let Some(u) = r.utilization {
                current["averageUtilization"] = json!(u);
            }
            json!({"type": "Resource", "resource": {"name": r.resource, "current": current}})
        }).collect::<Vec<_>>());
        if desired != current {
            let reason = readings
                .iter()
                .max_by_key(|r| r.replicas)
                .map(|r| {
                    let what = if r.utilization.is_some() {
                        " resource utilization (percentage of request)"
                    } else {
                        " resource"
                    };
                    format!(
                        "{}{what} {} target",
                        r.resource,
                        if desired > current { "above" } else { "below" }
                    )
                })
                .unwrap_or_default();
            let patch = json!({"spec": {"replicas": desired}});
            targets
                .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let message = format!("New size: {desired}; reason: {reason}");
            events::record(
                client,
                COMPONENT,
                &about,
                events::Kind::Normal,
                "SuccessfulRescale",
                &message,
            )
            .await;
            tracing::info!(
                hpa = name,
                namespace = ns,
                from = current,
                to = desired,
                "autoscaler: rescaled"
            );
            status["lastScaleTime"] = json!(now_s);
        }
    }
    status["desiredReplicas"] = json!(desired);
    // A condition that keeps its status keeps its transition time.
    let before: Vec<Value> = hpa
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.conditions).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    for c in conditions.iter_mut() {
        if let Some(old) = before
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
        {
            c["lastTransitionTime"] = old["lastTransitionTime"].clone();
        }
    }
    if let Some(t) = hpa.status.as_ref().and_then(|s| s.last_scale_time.as_ref()) {
        if status.get("lastScaleTime").is_none() {
            status["lastScaleTime"] = json!(t.0.to_string());
        }
    }
    status["conditions"] = json!(conditions);
    ignore_gone(
        hpas.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(status)),
        )
        .await,
    )?;
    Ok(Action::requeue(SYNC))
}

/// Runs the controller until its watch ends.
pub async fn run(client: kube::Client) {
    let history: History = Arc::default();
    Controller::new(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile,
        |_, e, _| {
            tracing::warn!(error = %e, "autoscaler controller: retrying");
            Action::requeue(Duration::from_secs(1))
        },
        Arc::new((client, history, Evaluated::default())),
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(usage: &[f64], request: f64) -> Vec<Sample> {
        usage
            .iter()
            .map(|u| Sample { usage: *u, request })
            .collect()
    }

    fn hpa(min: i32, max: i32, behavior: Value) -> HorizontalPodAutoscaler {
        serde_json::from_value(json!({"metadata": {"name": "web", "uid": "u"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "minReplicas": min, "maxReplicas": max, "behavior": behavior}}))
        .unwrap()
    }

    #[test]
    fn utilization_scales_in_proportion_with_a_tolerance() {
        let target = json!({"type": "Utilization", "averageUtilization": 50});
        // 2 pods at 200m of 100m requested: 200% for a 50% target → 8 pods.
        let r = recommend(2, "cpu", &target, &samples(&[200.0, 200.0], 100.0), &[]).unwrap();
        assert_eq!((r.replicas, r.utilization), (8, Some(200)));
        // 54% against 50%: within 10%, unchanged.
        let r = recommend(3, "cpu", &target, &samples(&[54.0, 54.0, 54.0], 100.0), &[]).unwrap();
        assert_eq!(r.replicas, 3);
        // 10% of requests: down to 1.
        let r = recommend(4, "cpu", &target, &samples(&[10.0; 4], 100.0), &[]).unwrap();
        assert_eq!(r.replicas, 1);
        // AverageValue in memory.
        let avg = json!({"type": "AverageValue", "averageValue": "100Mi"});
        let r = recommend(
            1,
            "memory",
            &avg,
            &samples(&[300.0 * 1024.0 * 1024.0], 0.0),
            &[],
        )
        .unwrap();
        assert_eq!(r.replicas, 3);
        assert!(recommend(1, "cpu", &target, &samples(&[10.0], 0.0), &[])
            .unwrap_err()
            .contains("missing request"));
        assert!(recommend(1, "cpu", &target, &[], &[])
            .unwrap_err()
            .contains("did not receive metrics"));
        // 10 pods, 2 reporting at 60% of a 50% target: the 8 silent ones count as 0% for a
        // scale-up, which turns it around, so nothing changes.
        let silent = samples(&[0.0; 8], 100.0);
        let up = recommend(10, "cpu", &target, &samples(&[60.0, 60.0], 100.0), &silent);
        assert_eq!(up.unwrap().replicas, 10);
        // 2 reporting at 10%: the silent ones count as at the target: 10 → 9, not 1.
        let down = recommend(10, "cpu", &target, &samples(&[10.0, 10.0], 100.0), &silent);
        assert_eq!(down.unwrap().replicas, 9);
    }

    #[test]
    fn bounds_stabilization_and_rate_limits() {
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let mut h = VecDeque::new();
        // Up from 2 to 20: the default limit is max(2×2, 2+4) = 6, then the max of 10.
        assert_eq!(
            decide(&hpa(1, 10, Value::Null), 2, 20, &mut h, now),
            (6, Some("ScaleUpLimit"))
        );
        assert_eq!(
            decide(&hpa(1, 10, Value::Null), 8, 20, &mut h, now),
            (10, Some("TooManyReplicas"))
        );
        // Down: the window (300 s) still remembers 20, so no change yet.
        let later = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60))
            .unwrap();
        assert_eq!(decide(&hpa(1, 10, Value::Null), 10, 2, &mut h, later).0, 10);
        // With a zero window it goes at once, to the minimum at most.
        let mut h = VecDeque::new();
        let fast = hpa(
            2,
            10,
            json!({"scaleDown": {"stabilizationWindowSeconds": 0}}),
        );
        assert_eq!(
            decide(&fast, 10, 1, &mut h, later),
            (2, Some("TooFewReplicas"))
        );
        // A policy of 1 pod per step down.
        let slow = hpa(
            1,
            10,
            json!({"scaleDown": {"stabilizationWindowSeconds": 0,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}),
        );
        assert_eq!(
            decide(&slow, 5, 1, &mut VecDeque::new(), later),
            (4, Some("ScaleDownLimit"))
        );
        let off = hpa(
            1,
            10,
            json!({"scaleUp": {"selectPolicy": "Disabled", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]}}),
        );
        assert_eq!(
            decide(&off, 3, 6, &mut VecDeque::new(), later),
            (3, Some("ScaleUpDisabled"))
        );
    }
}
