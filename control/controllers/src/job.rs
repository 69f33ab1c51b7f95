//! The Job controller: runs pods until `completions` of them succeed.
//!
//! A pure function ([`plan`]) of the Job, its pods and the time decides: how many pods to
//! start (up to `parallelism` at once, never more than the completions still missing), which
//! to delete (extra ones, or every running one once the Job is finished), and the status —
//! `active`, `ready`, `succeeded`, `failed`, `startTime`, `completionTime` and the `Complete`
//! or `Failed` condition (reasons `BackoffLimitExceeded` after more than `backoffLimit`
//! failed pods, `DeadlineExceeded` after `activeDeadlineSeconds`). A finished Job with
//! `ttlSecondsAfterFinished` is deleted (with its pods) once that time has passed. `suspend`
//! stops new pods and removes running ones. Pods are the Job's by controller owner
//! reference and carry the `batch.kubernetes.io/job-name` and `controller-uid` labels.
//! After a pod fails, the next one waits 10 s, doubling with each failure up to 6 minutes, as
//! in Kubernetes. Not yet: Indexed completion mode, pod failure policies.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::events;
use crate::pod_is_ready as is_ready;
use crate::replicaset::ignore_gone;

const COMPONENT: &str = "job-controller";

/// What to do for one Job.
#[derive(Debug, Default)]
pub struct Plan {
    /// Pods to start.
    pub create: usize,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    /// The new status.
    pub status: Value,
    /// The Job itself is to be deleted (its TTL after finishing has passed).
    pub delete_job: bool,
    /// An event to record: (type, reason, message).
    pub event: Option<(events::Kind, String, String)>,
    /// When to look again without a change (a deadline or a TTL).
    pub requeue: Option<Duration>,
}

fn condition(job: &Job, type_: &str) -> Option<(String, Option<Timestamp>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.last_transition_time.as_ref().map(|t| t.0),
            )
        })
}

fn owned_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn secs(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or_default()
}

/// How long after its `failures`-th failed pod a Job waits to start another: 10 s, doubling
/// per failure, at most 6 minutes.
pub fn backoff_delay(failures: usize) -> SignedDuration {
    let doublings = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(6);
    SignedDuration::from_secs((10i64 << doublings).min(360))
}

/// When the last of `pods` failed (its containers' finish time, else when it turned not ready).
fn last_failure(pods: &[&Pod]) -> Option<Timestamp> {
    pods.iter()
        .filter(|p| phase(p) == "Failed")
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let finished = status
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .map(|t| t.0)
                .max();
            finished.or_else(|| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Ready")
                    .and_then(|c| c.last_transition_time.as_ref())
                    .map(|t| t.0)
            })
        })
        .max()
}

/// The plan for `job` given the pods of its namespace at `now`.
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = job.spec.as_ref() else {
        return out;
    };
    let uid = job.metadata.uid.as_deref().unwrap_or("");
    let mine: Vec<&Pod> = pods.iter().filter(|p| owned_by(p, uid)).collect();
    let succeeded = mine.iter().filter(|p| phase(p) == "Succeeded").count();
    let failed = mine.iter().filter(|p| phase(p) == "Failed").count();
    let active: Vec<&Pod> = mine
        .iter()
        .copied()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .collect();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let completions = usize::try_from(spec.completions.unwrap_or(1).max(0)).unwrap_or(0);
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
    let backoff_limit = usize::try_from(spec.backoff_limit.unwrap_or(6).max(0)).unwrap_or(0);
    let suspended = spec.suspend.unwrap_or(false);
    let status = job.status.clone().unwrap_or_default();
    let start = status.start_time.as_ref().map(|t| t.0);
    let now_s = now.to_string();

    let mut conditions: Vec<Value> = status
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let finished = condition(job, "Complete").or_else(|| condition(job, "Failed"));
    let mut completion_time = status.completion_time.as_ref().map(|t| t.0.to_string());
    let all_active: Vec<String> = active
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();

    if let Some((_, at)) = &finished {
        // Finished: nothing runs any more; the TTL may delete the Job.
        out.delete = all_active;
        if let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, at) {
            let due = at
                .checked_add(SignedDuration::from_secs(i64::from(ttl)))
                .unwrap_or(now);
            if due <= now {
                out.delete_job = true;
            } else {
                out.requeue = Some(secs(due.duration_since(now)));
            }
        }
    } else {
        let mut failure = None;
        if failed > backoff_limit {
            failure = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ));
        } else if let (Some(deadline), Some(start)) = (spec.active_deadline_seconds, start) {
            let due = start
                .checked_add(SignedDuration::from_secs(deadline))
                .unwrap_or(now);
            if due <= now {
                failure = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".to_string(),
                ));
            } else {
                out.requeue = Some(secs(due.duration_since(now)));
            }
        }
        let cond = |type_: &str, reason: &str, message: &str| {
            json!({"type": type_, "status": "True", "reason": reason, "message": message,
                   "lastProbeTime": now_s, "lastTransitionTime": now_s})
        };
        if let Some((reason, message)) = failure {
            conditions.push(cond("Failed", reason, &message));
            out.delete = all_active;
            out.event = Some((events::Kind::Warning, reason.into(), message));
        } else if succeeded >= completions {
            conditions.push(cond(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            completion_time = Some(now_s.clone());
            out.delete = all_active;
            out.event = Some((
                events::Kind::Normal,
                "Completed".into(),
                "Job completed".into(),
            ));
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                out.requeue = Some(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
            }
        } else if suspended {
            out.delete = all_active;
        } else {
            let want = parallelism.min(completions - succeeded);
            // After failures, new pods wait: 10 s doubling per failure, at most 6 minutes,
            // from the last failure (Kubernetes' pod failure backoff).
            let wait = (failed > 0)
                .then(|| last_failure(&mine))
                .flatten()
                .and_then(|at| at.checked_add(backoff_delay(failed)).ok())
                .filter(|until| *until > now);
            if active.len() < want {
                match wait {
                    Some(until) => {
                        let left = secs(until.duration_since(now));
                        out.requeue = Some(out.requeue.map_or(left, |r| r.min(left)));
                    }
                    None => out.create = want - active.len(),
                }
            } else if active.len() > want {
                // The newest extra pods go.
                let mut newest: Vec<&&Pod> = active.iter().collect();
                newest.sort_by_key(|p| {
                    std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0))
                });
                out.delete = newest
                    .iter()
                    .take(active.len() - want)
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
            }
        }
    }
    let still_active = active.len().saturating_sub(out.delete.len()) + out.create;
    let mut new_status = json!({
        "active": still_active,
        "ready": ready,
        "succeeded": succeeded,
        "failed": failed,
        "conditions": conditions,
        "startTime": start.map(|t| t.to_string()).unwrap_or_else(|| now_s.clone()),
    });
    if suspended && finished.is_none() {
        new_status["startTime"] = json!(start.map(|t| t.to_string()));
    }
    if let Some(t) = completion_time {
        new_status["completionTime"] = json!(t);
    }
    out.status = new_status;
    out
}

/// A new pod for `job`: its template, owned by it, with the job labels.
pub fn new_pod(job: &Job) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut pod = crate::replicaset::pod_from_template(template, &name, owner);
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
    labels.insert("job-name".into(), name);
    labels.insert("controller-uid".into(), uid);
    pod
}

async fn reconcile(
    job: Arc<Job>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some((job, jobs, ns, name)) = crate::runner::stored(job.as_ref(), &client).await? else {
        return Ok(Action::await_change());
    };
    let (ns, name) = (ns.as_str(), name.as_str());
    let client = (*client).clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods_api.list(&ListParams::default()).await?.items;
    let p = plan(&job, &pods, Timestamp::now());
    if p.delete_job {
        ignore_gone(
            jobs.delete(name, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
        tracing::info!(
            job = name,
            namespace = ns,
            "job: deleted after ttlSecondsAfterFinished"
        );
        return Ok(Action::await_change());
    }
    for _ in 0..p.create {
        pods_api
            .create(&PostParams::default(), &new_pod(&job))
            .await?;
    }
    for pod in &p.delete {
        ignore_gone(
            pods_api
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    if p.create > 0 {
        let about = events::reference("batch/v1", "Job", &job.metadata);
        let message = format!("Created {} pod(s)", p.create);
        events::record(
            &client,
            COMPONENT,
            &about,
            events::Kind::Normal,
            "SuccessfulCreate",
            &message,
        )
        .await;
    }
    if let Some((kind, reason, message)) = &p.event {
        let about = events::reference("batch/v1", "Job", &job.metadata);
        events::record(&client, COMPONENT, &about, *kind, reason, message).await;
    }
    let status = json!({"status": p.status});
    ignore_gone(
        jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await,
    )?;
    Ok(match p.requeue {
        Some(after) => Action::requeue(after + Duration::from_millis(100)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    crate::runner::run_owning::<Job, Pod, _, _>(client, "job", reconcile).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-06-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn job(spec: Value, status: Value) -> Job {
        let mut full = json!({"completions": 3, "parallelism": 2, "backoffLimit": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x"}]}}});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "d", "uid": "job-uid"},
            "spec": full, "status": status,
        }))
        .unwrap()
    }

    fn pod(name: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": "2026-06-01T11:59:00Z",
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                                              "uid": "job-uid", "controller": true}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn runs_up_to_parallelism_and_no_more_than_the_missing_completions() {
        let j = job(json!({}), json!({}));
        let p = plan(&j, &[], now());
        assert_eq!(p.create, 2);
        assert_eq!(p.status["active"], 2);
        assert_eq!(p.status["startTime"], NOW);
        // Two succeeded, one running: the last completion is under way, nothing more.
        let pods = [
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Running"),
        ];
        let p = plan(&j, &pods, now());
        assert_eq!((p.create, p.delete.len()), (0, 0));
        let labels = new_pod(&j).metadata.labels.unwrap();
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["controller-uid"], "job-uid");
    }

    #[test]
    fn completes_after_enough_successes() {
        let j = job(
            json!({"ttlSecondsAfterFinished": 30}),
            json!({"startTime": "2026-06-01T11:00:00Z"}),
        );
        let pods = [
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Succeeded"),
        ];
        let p = plan(&j, &pods, now());
        assert_eq!(p.status["conditions"][0]["type"], "Complete");
        assert_eq!(p.status["completionTime"], NOW);
        assert_eq!(p.status["succeeded"], 3);
        assert_eq!(p.requeue, Some(Duration::from_secs(30)));
        // Finished 31 s ago with a 30 s TTL: the Job goes.
        let done = job(
            json!({"ttlSecondsAfterFinished": 30}),
            json!({"conditions": [{"type": "Complete", "status": "True",
                                   "lastTransitionTime": "2026-06-01T11:59:29Z"}]}),
        );
        assert!(plan(&done, &pods, now()).delete_job);
    }

    #[test]
    fn fails_past_the_backoff_limit_or_the_deadline() {
        let j = job(json!({}), json!({"startTime": "2026-06-01T11:59:00Z"}));
        let pods = [pod("a", "Failed"), pod("b", "Failed"), pod("c", "Running")];
        let p = plan(&j, &pods, now());
        assert_eq!(p.status["conditions"][0]["reason"], "BackoffLimitExceeded");
        assert_eq!(p.delete, ["c"]);
        assert_eq!(p.create, 0);
        let j = job(
            json!({"activeDeadlineSeconds": 30}),
            json!({"startTime": "2026-06-01T11:59:00Z"}),
        );
        let p = plan(&j, &[pod("c", "Running")], now());
        assert_eq!(p.status["conditions"][0]["reason"], "DeadlineExceeded");
        assert_eq!(p.delete, ["c"]);
    }

    #[test]
    fn failed_pods_delay_the_next_one_exponentially() {
        assert_eq!(backoff_delay(1), SignedDuration::from_secs(10));
        assert_eq!(backoff_delay(3), SignedDuration::from_secs(40));
        assert_eq!(backoff_delay(20), SignedDuration::from_secs(360));
        let j = job(
            json!({"backoffLimit": 6, "parallelism": 1}),
            json!({"startTime": "2026-06-01T11:58:00Z"}),
        );
        let mut failed = pod("a", "Failed");
        failed.status = serde_json::from_value(json!({"phase": "Failed", "containerStatuses": [
            {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-06-01T11:59:55Z"}}}]}))
        .unwrap();
        // One failure 5 s ago: 5 s more to wait.
        let p = plan(&j, std::slice::from_ref(&failed), now());
        assert_eq!(p.create, 0);
        assert_eq!(p.requeue, Some(Duration::from_secs(5)));
        // Once the delay has passed, the next pod starts.
        let later: Timestamp = "2026-06-01T12:00:06Z".parse().unwrap();
        assert_eq!(plan(&j, &[failed], later).create, 1);
    }

    #[test]
    fn suspended_jobs_stop_their_pods() {
        let j = job(json!({"suspend": true}), json!({}));
        let p = plan(&j, &[pod("c", "Running")], now());
        assert_eq!(p.delete, ["c"]);
        assert_eq!(p.create, 0);
    }
}
