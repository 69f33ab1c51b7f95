//! The disruption controller: keeps every PodDisruptionBudget's `status` — the pods it
//! expects, how many are healthy (Ready), how many must be, and so how many may be disrupted
//! now — which the API server's eviction checks and takes from (`pods/eviction`, as
//! `kubectl drain` evicts).
//!
//! The expected pods are the pods the budget selects that are not terminating (Kubernetes
//! reads the replica count of their controllers instead; the two agree once a rollout
//! settles). A pod an eviction listed in `disruptedPods` does not count as healthy until it is
//! gone or two minutes have passed. It starts once some budget exists: it watches every pod.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

/// How long an eviction's pod stays out of the healthy count if it is not deleted.
const DISRUPTED_FOR: SignedDuration = SignedDuration::from_secs(120);

/// A time as Kubernetes writes one (RFC 3339, whole seconds).
fn stamp(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether `budget` selects a pod with `labels` (policy/v1: no selector selects nothing, an
/// empty one every pod of the namespace).
fn selects(budget: &PodDisruptionBudget, labels: &BTreeMap<String, String>) -> bool {
    budget
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| crate::replicaset::selector_matches(s, labels))
}

/// `value` of `total`: a count, or a percentage rounded up, as Kubernetes scales both fields.
fn scaled(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((percent * i64::from(total) + 99) / 100) as i32
        }
    }
}

/// How many of `expected` pods must stay healthy.
pub fn desired_healthy(budget: &PodDisruptionBudget, expected: i32) -> i32 {
    let spec = budget.spec.as_ref();
    match (
        spec.and_then(|s| s.min_available.as_ref()),
        spec.and_then(|s| s.max_unavailable.as_ref()),
    ) {
        (Some(min), _) => scaled(min, expected),
        (None, Some(max)) => (expected - scaled(max, expected)).max(0),
        (None, None) => 0,
    }
}

/// The status `budget` should have with the namespace's `pods` at `now`.
pub fn status(budget: &PodDisruptionBudget, pods: &[Pod], now: Timestamp) -> Value {
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && selects(budget, p.labels()))
        .collect();
    let old = budget.status.as_ref();
    let disrupted: BTreeMap<String, String> = old
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            live.iter().any(|p| p.name_any() == *name) && now.duration_since(at.0) < DISRUPTED_FOR
        })
        .map(|(name, at)| (name, stamp(at.0)))
        .collect();
    let expected = live.len() as i32;
    let healthy = live
        .iter()
        .filter(|p| crate::pod_is_ready(p) && !disrupted.contains_key(&p.name_any()))
        .count() as i32;
    let desired = desired_healthy(budget, expected);
    let allowed = (healthy - desired).max(0);
    let (state, reason, message) = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        (
            "False",
            "InsufficientPods",
            "not enough healthy pods to allow a disruption",
        )
    };
    let since = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionAllowed"))
        .filter(|c| c.status == state)
        .map_or(now, |c| c.last_transition_time.0);
    let generation = budget.metadata.generation.unwrap_or(0);
    json!({
        "observedGeneration": generation,
        "disruptedPods": disrupted,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{
            "type": "DisruptionAllowed", "status": state, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": stamp(since),
        }],
    })
}

async fn reconcile(
    budget: Arc<PodDisruptionBudget>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some(ns) = budget.namespace() else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced((*client).clone(), &ns);
    let pods = pods.list(&ListParams::default()).await?.items;
    let next = status(&budget, &pods, Timestamp::now());
    let current = budget
        .status
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(kube::Error::SerdeError)?;
    // Look again when a disruption listed stops counting.
    let again = if next["disruptedPods"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        Action::requeue(Duration::from_secs(30))
    } else {
        Action::await_change()
    };
    if current.as_ref() == Some(&next) {
        return Ok(again);
    }
    let mut updated = (*budget).clone();
    updated.status = Some(serde_json::from_value(next).map_err(kube::Error::SerdeError)?);
    let api: Api<PodDisruptionBudget> = Api::namespaced((*client).clone(), &ns);
    match api
        .replace_status(&budget.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(again),
        // An eviction took a disruption meanwhile, or the budget went: look again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::requeue(Duration::from_millis(50))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the disruption controller until its watches end, from when the first
/// PodDisruptionBudget exists.
pub async fn run(client: kube::Client) {
    if !crate::runner::first::<PodDisruptionBudget>(&client).await {
        return;
    }
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace();
                store
                    .state()
                    .iter()
                    .filter(|b| b.namespace() == ns && selects(b, pod.labels()))
                    .map(|b| ObjectRef::from_obj(b.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            reconcile,
            crate::runner::retry("disruption"),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d", "labels": {"app": app}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn budget(spec: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "b", "namespace": "d", "generation": 3}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn allowed_disruptions_follow_min_available_and_max_unavailable() {
        let pods = [
            pod("a", "web", true),
            pod("b", "web", true),
            pod("c", "web", false),
            pod("x", "db", true),
        ];
        let now = Timestamp::now();
        let sel = json!({"matchLabels": {"app": "web"}});
        let s = status(
            &budget(json!({"selector": sel, "minAvailable": 2})),
            &pods,
            now,
        );
        assert_eq!(
            (
                &s["expectedPods"],
                &s["currentHealthy"],
                &s["desiredHealthy"],
                &s["disruptionsAllowed"]
            ),
            (&json!(3), &json!(2), &json!(2), &json!(0))
        );
        assert_eq!(s["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(s["observedGeneration"], 3);
        // 50% of 3 rounds up to 2 unavailable: 1 must stay, 1 of the 2 healthy may go.
        let s = status(
            &budget(json!({"selector": sel, "maxUnavailable": "50%"})),
            &pods,
            now,
        );
        assert_eq!(
            (&s["desiredHealthy"], &s["disruptionsAllowed"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(s["conditions"][0]["status"], "True");
        // An empty selector selects the whole namespace; none selects nothing.
        let s = status(
            &budget(json!({"selector": {}, "minAvailable": "50%"})),
            &pods,
            now,
        );
        assert_eq!(
            (&s["expectedPods"], &s["desiredHealthy"]),
            (&json!(4), &json!(2))
        );
        let s = status(&budget(json!({"minAvailable": 1})), &pods, now);
        assert_eq!(s["expectedPods"], 0);
    }

    #[test]
    fn an_evicted_pod_stops_counting_as_healthy_for_a_while() {
        let pods = [pod("a", "web", true), pod("b", "web", true)];
        let now = Timestamp::now();
        let mut b = budget(json!({"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 1}));
        b.status = serde_json::from_value(json!({
            "disruptedPods": {"a": stamp(now), "gone": stamp(now)},
            "disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2,
        }))
        .unwrap();
        let s = status(&b, &pods, now);
        assert_eq!(s["currentHealthy"], 1);
        assert_eq!(s["disruptionsAllowed"], 0);
        assert!(s["disruptedPods"].get("a").is_some() && s["disruptedPods"].get("gone").is_none());
        let later = now.checked_add(SignedDuration::from_secs(121)).unwrap();
        let s = status(&b, &pods, later);
        assert_eq!(
            (&s["currentHealthy"], &s["disruptionsAllowed"]),
            (&json!(2), &json!(1))
        );
    }
}
