//! ControllerRevisions: the numbered history of a workload's pod templates (StatefulSets and
//! DaemonSets), what `kubectl rollout history` lists and `kubectl rollout undo` applies.
//!
//! A revision `<owner>-<hash>` is owned by its workload, carries the template's labels (kubectl
//! finds revisions by the workload's selector) and records the template as the strategic merge
//! patch kubectl applies to roll back: `{"spec": {"template": {…, "$patch": "replace"}}}`.
//! A template that becomes current again is renumbered as the newest, as Kubernetes does, so
//! "the previous revision" keeps meaning the one before; revisions beyond the history limit
//! that no pod uses go, oldest first.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::replicaset::ignore_gone;

/// What to do with a workload's ControllerRevisions.
#[derive(Debug, Default)]
pub struct Revisions {
    /// A revision to create (the update revision is new).
    pub create: Option<ControllerRevision>,
    /// A revision to renumber `(name, revision)`: an older template is the update revision
    /// again (a rollback), so it becomes the newest.
    pub renumber: Option<(String, i64)>,
    /// Old revisions beyond the history limit (names).
    pub delete: Vec<String>,
}

/// The template a revision records (`data.spec.template`).
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The bookkeeping for the workload `owner` whose current template `template` is revision
/// `name`, given the namespace's revisions; `keep` names revisions still in use (by pods or
/// as the current revision), which are never pruned.
pub fn plan(
    owner: &OwnerReference,
    namespace: Option<String>,
    template: &PodTemplateSpec,
    name: &str,
    history_limit: i32,
    keep: &[String],
    revs: &[ControllerRevision],
) -> Revisions {
    let mut out = Revisions::default();
    let mut owned: Vec<&ControllerRevision> = revs
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == owner.uid)
        })
        .collect();
    owned.sort_by_key(|r| r.revision);
    let newest = owned.last().map_or(0, |r| r.revision);
    match owned
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
    {
        None => {
            let mut recorded = serde_json::to_value(template).unwrap_or_default();
            recorded["$patch"] = json!("replace");
            out.create = Some(ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace,
                    labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                data: Some(RawExtension(json!({"spec": {"template": recorded}}))),
                revision: newest + 1,
            });
        }
        Some(r) if r.revision < newest => out.renumber = Some((name.to_string(), newest + 1)),
        Some(_) => {}
    }
    let limit = usize::try_from(history_limit.max(0)).unwrap_or(0);
    let old: Vec<&&ControllerRevision> = owned
        .iter()
        .filter(|r| {
            let n = r.metadata.name.as_deref().unwrap_or_default();
            n != name && !keep.iter().any(|k| k == n)
        })
        .collect();
    out.delete = old
        .iter()
        .take(old.len().saturating_sub(limit))
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    out
}

/// Carries out `r` through `api` (the workload's namespace).
pub async fn apply(api: &Api<ControllerRevision>, r: &Revisions) -> Result<(), kube::Error> {
    if let Some(rev) = &r.create {
        match api.create(&PostParams::default(), rev).await {
            Ok(_) => {}
            // Made by an earlier term: use it as it is.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    if let Some((rev, number)) = &r.renumber {
        let patch = json!({"revision": number});
        ignore_gone(
            api.patch(rev, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    for rev in &r.delete {
        ignore_gone(
            api.delete(rev, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
    }
    Ok(())
}
