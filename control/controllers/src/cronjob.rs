//! The CronJob controller: creates a Job from `jobTemplate` at every time the schedule names.
//!
//! A pure function ([`plan`]) of the CronJob, the Jobs of its namespace and the time decides:
//! - the latest scheduled time since `status.lastScheduleTime` (or the CronJob's creation)
//!   that has passed, if any; it is skipped when older than `startingDeadlineSeconds`, while
//!   `suspend` is set, or — with `concurrencyPolicy: Forbid` — while a Job it started still
//!   runs; `Replace` deletes the running Jobs first; `Allow` (the default) runs them side by
//!   side. Missed earlier times are not run (as in Kubernetes, only the latest one is);
//! - the Job `<cronjob>-<minutes since the epoch of the scheduled time>` (so two masters or a
//!   retried reconcile cannot start the same run twice), owned by the CronJob;
//! - the finished Jobs beyond `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit`
//!   (1), oldest first, to delete with their pods;
//! - the status: `active` (references to running Jobs), `lastScheduleTime`,
//!   `lastSuccessfulTime`; and when to look again (the next scheduled time).
//!
//! `spec.timeZone` (or a `CRON_TZ=` prefix) sets the zone the schedule is read in; UTC
//! otherwise. Jobs made by `kubectl create job --from=cronjob/<name>` are the CronJob's too.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::cron::Schedule;
use crate::events;
use crate::replicaset::ignore_gone;

const COMPONENT: &str = "cronjob-controller";
/// The annotation with the scheduled time a Job was started for.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// How many missed times are looked at before giving up on counting (as Kubernetes).
const MAX_MISSED: usize = 100;

/// What to do for one CronJob.
#[derive(Debug, Default)]
pub struct Plan {
    /// A Job to start.
    pub create: Option<Job>,
    /// Jobs to delete (names): replaced running ones and history beyond the limits.
    pub delete: Vec<String>,
    /// The new status.
    pub status: Value,
    /// Events to record: (type, reason, message).
    pub events: Vec<(events::Kind, String, String)>,
    /// When to look again (the next scheduled time), if ever.
    pub requeue: Option<Duration>,
}

fn owned_by(job: &Job, uid: &str) -> bool {
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// `Complete` or `Failed` with the time it finished, if the Job finished.
fn finished(job: &Job) -> Option<(&str, Option<Timestamp>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            (
                c.type_.as_str(),
                c.last_transition_time.as_ref().map(|t| t.0),
            )
        })
}

fn started(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// The zone `cj`'s schedule is read in.
fn zone_of(cj: &CronJob) -> Result<TimeZone, String> {
    match cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()) {
        Some(z) => TimeZone::get(z).map_err(|e| format!("unknown time zone {z:?}: {e}")),
        None => Ok(TimeZone::UTC),
    }
}

/// The Job `cj` starts for `scheduled`.
pub fn job_for(cj: &CronJob, scheduled: Timestamp) -> Job {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_ANNOTATION.into(), scheduled.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{}", scheduled.as_second() / 60)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name,
                uid: cj.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn reference(job: &Job) -> Value {
    json!({"kind": "Job", "apiVersion": "batch/v1", "name": job.metadata.name,
           "namespace": job.metadata.namespace, "uid": job.metadata.uid,
           "resourceVersion": job.metadata.resource_version})
}

fn secs(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or_default()
}

/// The plan for `cj` given the Jobs of its namespace at `now`.
pub fn plan(cj: &CronJob, jobs: &[Job], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = cj.spec.as_ref() else {
        return out;
    };
    let uid = cj.metadata.uid.as_deref().unwrap_or_default();
    let mine: Vec<&Job> = jobs.iter().filter(|j| owned_by(j, uid)).collect();
    let mut active: Vec<&Job> = mine
        .iter()
        .copied()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .collect();
    let status = cj.status.clone().unwrap_or_default();
    let mut last_schedule = status.last_schedule_time.as_ref().map(|t| t.0);
    let last_success = mine
        .iter()
        .filter_map(|j| match finished(j) {
            Some(("Complete", at)) => at.or_else(|| {
                j.status
                    .as_ref()
                    .and_then(|s| s.completion_time.as_ref())
                    .map(|t| t.0)
            }),
            _ => None,
        })
        .max()
        .or(status.last_successful_time.as_ref().map(|t| t.0));

    let schedule = Schedule::parse(&spec.schedule).and_then(|s| Ok((s, zone_of(cj)?)));
    match schedule {
        Err(e) => out.events.push((
            events::Kind::Warning,
            "UnparseableSchedule".into(),
            format!("unparseable schedule {:?}: {e}", spec.schedule),
        )),
        Ok((schedule, zone)) => {
            // The latest time that has come since the last run (or since creation).
            let since = last_schedule
                .or(cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(now);
            let mut due = None;
            let mut missed = 0;
            let mut t = since;
            while let Some(next) = schedule.next_after(t, &zone) {
                if next > now {
                    out.requeue = Some(secs(next.duration_since(now)));
                    break;
                }
                due = Some(next);
                missed += 1;
                t = next;
                if missed > MAX_MISSED {
                    // Far behind: jump to the latest time before now.
                    out.events.push((
                        events::Kind::Warning,
                        "TooManyMissedTimes".into(),
                        format!("too many missed start times ({missed}+); check clock skew or the schedule"),
                    ));
                    t = now.checked_sub(SignedDuration::from_mins(1)).unwrap_or(now);
                    missed = 0;
                }
            }
            let too_late = |at: Timestamp| {
                spec.starting_deadline_seconds.is_some_and(|d| {
                    at.checked_add(SignedDuration::from_secs(d))
                        .is_ok_and(|deadline| deadline < now)
                })
            };
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            match due {
                None => {}
                Some(_) if spec.suspend == Some(true) => {}
                Some(at) if too_late(at) => {
                    out.events.push((
                        events::Kind::Warning,
                        "MissSchedule".into(),
                        format!("Missed scheduled time to start a job: {at}"),
                    ));
                    last_schedule = Some(at);
                }
                Some(_) if policy == "Forbid" && !active.is_empty() => {
                    out.events.push((
                        events::Kind::Normal,
                        "JobAlreadyActive".into(),
                        "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                    ));
                    // Look again soon: the running Job may finish before the next time.
                    out.requeue = Some(
                        out.requeue
                            .map_or(Duration::from_secs(10), |r| r.min(Duration::from_secs(10))),
                    );
                }
                Some(at) => {
                    let job = job_for(cj, at);
                    if policy == "Replace" {
                        // Not this run's own Job (made by an attempt whose status was lost).
                        let (mine_now, others): (Vec<&Job>, Vec<&Job>) = active
                            .drain(..)
                            .partition(|j| j.metadata.name == job.metadata.name);
                        out.delete
                            .extend(others.iter().filter_map(|j| j.metadata.name.clone()));
                        active = mine_now;
                    }
                    if !mine.iter().any(|j| j.metadata.name == job.metadata.name) {
                        out.events.push((
                            events::Kind::Normal,
                            "SuccessfulCreate".into(),
                            format!(
                                "Created job {}",
                                job.metadata.name.as_deref().unwrap_or_default()
                            ),
                        ));
                        out.create = Some(job);
                    }
                    last_schedule = Some(at);
                }
            }
        }
    }

    // History: keep the newest finished Jobs up to the limits.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&&Job> = mine
            .iter()
            .filter(|j| {
                j.metadata.deletion_timestamp.is_none() && finished(j).is_some_and(|f| f.0 == kind)
            })
            .collect();
        done.sort_by_key(|j| started(j));
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        out.delete.extend(
            done.iter()
                .take(extra)
                .filter_map(|j| j.metadata.name.clone()),
        );
    }

    let mut refs: Vec<Value> = active.iter().map(|j| reference(j)).collect();
    if let Some(j) = &out.create {
        refs.push(reference(j));
    }
    out.status = json!({
        "active": if refs.is_empty() { Value::Null } else { json!(refs) },
        "lastScheduleTime": last_schedule.map(|t| t.to_string()),
        "lastSuccessfulTime": last_success.map(|t| t.to_string()),
    });
    out
}

async fn reconcile(
    cj: Arc<CronJob>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some((cj, cronjobs, ns, name)) = crate::runner::stored(cj.as_ref(), &client).await? else {
        return Ok(Action::await_change());
    };
    let (ns, name) = (ns.as_str(), name.as_str());
    let client = (*client).clone();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), ns);
    let jobs = jobs_api.list(&ListParams::default()).await?.items;
    let mut p = plan(&cj, &jobs, Timestamp::now());
    for job in &p.delete {
        ignore_gone(
            jobs_api
                .delete(job, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
    }
    if let Some(job) = &p.create {
        match jobs_api.create(&PostParams::default(), job).await {
            Ok(made) => {
                // The status refers to the Job as created (with its uid).
                if let Some(refs) = p.status["active"].as_array_mut() {
                    if let Some(last) = refs.last_mut() {
                        *last = reference(&made);
                    }
                }
            }
            // Started by an earlier reconcile whose status write was lost: it exists.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let about = events::reference("batch/v1", "CronJob", &cj.metadata);
    for (kind, reason, message) in &p.events {
        events::record(&client, COMPONENT, &about, *kind, reason, message).await;
    }
    let status = json!({"status": p.status});
    ignore_gone(
        cronjobs
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await,
    )?;
    Ok(match p.requeue {
        Some(after) => Action::requeue(after + Duration::from_millis(200)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Runs the controller until its streams end.
pub async fn run(client: kube::Client) {
    crate::runner::run_owning::<CronJob, Job, _, _>(client, "cronjob", reconcile).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = "2026-06-01T11:58:30Z";

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cronjob(spec: Value, status: Value) -> CronJob {
        let mut full = json!({"schedule": "*/1 * * * *",
            "jobTemplate": {"metadata": {"labels": {"app": "tick"}},
                            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                     "containers": [{"name": "a", "image": "x"}]}}}}});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        serde_json::from_value(json!({
            "metadata": {"name": "tick", "namespace": "d", "uid": "cj-uid",
                         "creationTimestamp": CREATED},
            "spec": full, "status": status,
        }))
        .unwrap()
    }

    fn job(name: &str, condition: Option<&str>, start: &str) -> Job {
        let conditions = match condition {
            Some(c) => json!([{"type": c, "status": "True", "lastTransitionTime": start}]),
            None => json!([]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d", "uid": format!("{name}-uid"),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                                              "name": "tick", "uid": "cj-uid", "controller": true}]},
            "status": {"startTime": start, "conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn starts_the_latest_due_run_once_and_waits_for_the_next() {
        let cj = cronjob(json!({}), json!({}));
        // Created 11:58:30; at 12:00:10 both 11:59 and 12:00 passed: only 12:00 runs.
        let p = plan(&cj, &[], at("2026-06-01T12:00:10Z"));
        let made = p.create.expect("a job");
        let minutes = at("2026-06-01T12:00:00Z").as_second() / 60;
        assert_eq!(made.metadata.name, Some(format!("tick-{minutes}")));
        assert_eq!(
            made.metadata.annotations.as_ref().unwrap()[SCHEDULED_ANNOTATION],
            "2026-06-01T12:00:00Z"
        );
        assert_eq!(made.metadata.labels.as_ref().unwrap()["app"], "tick");
        assert_eq!(p.status["lastScheduleTime"], "2026-06-01T12:00:00Z");
        assert_eq!(p.status["active"][0]["name"], format!("tick-{minutes}"));
        assert_eq!(p.requeue, Some(Duration::from_secs(50)));
        // Once the status says 12:00 ran, nothing until 12:01.
        let ran = cronjob(
            json!({}),
            json!({"lastScheduleTime": "2026-06-01T12:00:00Z"}),
        );
        assert!(plan(&ran, &[], at("2026-06-01T12:00:30Z")).create.is_none());
        // A Job of that name already exists (an earlier attempt): not created twice.
        let name = format!("tick-{minutes}");
        assert!(plan(
            &cj,
            &[job(&name, None, "2026-06-01T12:00:01Z")],
            at("2026-06-01T12:00:10Z")
        )
        .create
        .is_none());
    }

    #[test]
    fn concurrency_policies_suspend_and_the_starting_deadline() {
        let status = json!({"lastScheduleTime": "2026-06-01T11:59:00Z"});
        let running = [job("tick-1", None, "2026-06-01T11:59:01Z")];
        let now = at("2026-06-01T12:00:05Z");
        let allow = plan(&cronjob(json!({}), status.clone()), &running, now);
        assert!(allow.create.is_some() && allow.delete.is_empty());
        assert_eq!(allow.status["active"].as_array().unwrap().len(), 2);
        let forbid = plan(
            &cronjob(json!({"concurrencyPolicy": "Forbid"}), status.clone()),
            &running,
            now,
        );
        assert!(forbid.create.is_none());
        assert_eq!(forbid.events[0].1, "JobAlreadyActive");
        let replace = plan(
            &cronjob(json!({"concurrencyPolicy": "Replace"}), status.clone()),
            &running,
            now,
        );
        assert!(replace.create.is_some());
        assert_eq!(replace.delete, ["tick-1"]);
        let suspended = plan(&cronjob(json!({"suspend": true}), status.clone()), &[], now);
        assert!(suspended.create.is_none());
        // Due at 12:00:00, a 3 s deadline, now 12:00:05: missed.
        let late = plan(
            &cronjob(json!({"startingDeadlineSeconds": 3}), status),
            &[],
            now,
        );
        assert!(late.create.is_none());
        assert_eq!(late.events[0].1, "MissSchedule");
        assert_eq!(late.status["lastScheduleTime"], "2026-06-01T12:00:00Z");
    }

    #[test]
    fn history_keeps_the_newest_finished_jobs() {
        let cj = cronjob(
            json!({"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1}),
            json!({"lastScheduleTime": "2026-06-01T12:00:00Z"}),
        );
        let jobs = [
            job("a", Some("Complete"), "2026-06-01T11:55:00Z"),
            job("b", Some("Complete"), "2026-06-01T11:56:00Z"),
            job("c", Some("Complete"), "2026-06-01T11:57:00Z"),
            job("d", Some("Failed"), "2026-06-01T11:58:00Z"),
            job("e", Some("Failed"), "2026-06-01T11:59:00Z"),
        ];
        let p = plan(&cj, &jobs, at("2026-06-01T12:00:30Z"));
        assert_eq!(p.delete, ["a", "d"]);
        assert_eq!(p.status["lastSuccessfulTime"], "2026-06-01T11:57:00Z");
        assert!(p.status["active"].is_null());
    }

    #[test]
    fn a_bad_schedule_is_reported_not_run() {
        let cj = cronjob(json!({"schedule": "every minute"}), json!({}));
        let p = plan(&cj, &[], at("2026-06-01T12:00:10Z"));
        assert!(p.create.is_none());
        assert_eq!(p.events[0].1, "UnparseableSchedule");
        let tz = cronjob(json!({"timeZone": "Nowhere/Special"}), json!({}));
        assert_eq!(
            plan(&tz, &[], at("2026-06-01T12:00:10Z")).events[0].1,
            "UnparseableSchedule"
        );
    }
}
