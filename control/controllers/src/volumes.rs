//! The PersistentVolume controller: binds claims to the volumes an administrator created
//! (static provisioning), as Kubernetes' does, and keeps both sides' phases.
//!
//! A pending claim binds to the smallest Available volume that fits it: the same storage
//! class (none counts as `""`), every access mode it asks for, the same volume mode, at
//! least the storage it requests, and labels its `selector` accepts; a claim naming a volume
//! (`spec.volumeName`) binds to that one only. Binding sets the volume's `claimRef` and the
//! claim's `volumeName` (with the `pv.kubernetes.io/bind-completed` annotations), then both
//! report `Bound`, the claim with the volume's capacity and access modes. A volume whose claim
//! is gone is `Released` under the `Retain` policy and deleted under `Delete` (nothing real
//! backs it to reclaim). Nothing provisions volumes dynamically yet: a claim no volume fits
//! stays `Pending`.
//!
//! It starts once some PersistentVolume or PersistentVolumeClaim exists.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

/// A volume's storage class, `""` when it names none (claims alike).
fn class_of_volume(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

fn class_of_claim(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// A volume's capacity in bytes.
fn capacity(pv: &PersistentVolume) -> f64 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| crate::quantity::parse(&q.0, 1.0))
        .unwrap_or(0.0)
}

/// Whether `pv` is free for `pvc`: no claim yet, or already meant for this one.
fn free_for(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
        None => true,
        Some(r) => {
            r.namespace == pvc.metadata.namespace
                && r.name == pvc.metadata.name
                && r.uid
                    .as_ref()
                    .is_none_or(|u| Some(u) == pvc.metadata.uid.as_ref())
        }
    }
}

/// Whether `pv` satisfies what `pvc` asks for.
pub fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    let modes = vs.access_modes.clone().unwrap_or_default();
    let wanted_modes = cs.access_modes.clone().unwrap_or_default();
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "Filesystem".into());
    let requested = cs
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| crate::quantity::parse(&q.0, 1.0))
        .unwrap_or(0.0);
    let labels = pv.labels();
    class_of_volume(pv) == class_of_claim(pvc)
        && wanted_modes.iter().all(|m| modes.contains(m))
        && mode(&vs.volume_mode) == mode(&cs.volume_mode)
        && capacity(pv) >= requested
        && cs
            .selector
            .as_ref()
            .is_none_or(|s| crate::replicaset::selector_matches(s, labels))
}

/// The volume `pvc` should bind to among `pvs`, if one fits.
pub fn choose<'a>(
    pvc: &PersistentVolumeClaim,
    pvs: &'a [PersistentVolume],
) -> Option<&'a PersistentVolume> {
    let named = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|n| !n.is_empty());
    pvs.iter()
        .filter(|pv| named.is_none_or(|n| pv.name_any() == n))
        .filter(|pv| pv.metadata.deletion_timestamp.is_none())
        .filter(|pv| free_for(pv, pvc) && fits(pv, pvc))
        .min_by(|a, b| capacity(a).total_cmp(&capacity(b)))
}

/// Whether `pvc` is bound to `pv` from both sides.
fn bound(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let claim_names = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    claim_names == Some(pv.name_any().as_str())
        && r.is_some_and(|r| r.uid.is_some() && r.uid == pvc.metadata.uid)
}

fn phase_of_volume(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref().and_then(|s| s.phase.as_deref())
}

async fn set_volume_phase(
    api: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    phase: &str,
) -> Result<(), kube::Error> {
    if phase_of_volume(pv) == Some(phase) {
        return Ok(());
    }
    let patch = json!({"status": {"phase": phase}});
    crate::replicaset::ignore_gone(
        api.patch_status(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await,
    )
}

/// Binds or reports one claim.
async fn reconcile_claim(
    pvc: Arc<PersistentVolumeClaim>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let Some(ns) = pvc.namespace() else {
        return Ok(Action::await_change());
    };
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pv_api: Api<PersistentVolume> = Api::all((*client).clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced((*client).clone(), &ns);
    let pvs = pv_api.list(&ListParams::default()).await?.items;
    let pp = PatchParams::default();
    let mine = pvs.iter().find(|pv| bound(pv, &pvc));
    let pv = match mine {
        Some(pv) => pv.clone(),
        None => {
            let Some(pv) = choose(&pvc, &pvs) else {
                return Ok(Action::await_change());
            };
            // The volume's side first: a claim must never name a volume that is not its own.
            let claim_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": ns, "name": pvc.name_any(), "uid": pvc.metadata.uid,
                "resourceVersion": pvc.metadata.resource_version});
            let patch = json!({"metadata": {"resourceVersion": pv.metadata.resource_version},
                               "spec": {"claimRef": claim_ref}});
            match pv_api
                .patch(&pv.name_any(), &pp, &Patch::Merge(&patch))
                .await
            {
                Ok(pv) => pv,
                // Taken or changed meanwhile: choose again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    return Ok(Action::requeue(Duration::from_millis(100)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let pv_name = pv.name_any();
    if pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()) != Some(pv_name.as_str()) {
        let patch = json!({"metadata": {"annotations": {
                               "pv.kubernetes.io/bind-completed": "yes",
                               "pv.kubernetes.io/bound-by-controller": "yes"}},
                           "spec": {"volumeName": pv_name}});
        crate::replicaset::ignore_gone(
            claims
                .patch(&pvc.name_any(), &pp, &Patch::Merge(&patch))
                .await,
        )?;
    }
    set_volume_phase(&pv_api, &pv, "Bound").await?;
    let spec = pv.spec.clone().unwrap_or_default();
    let status = json!({"status": {"phase": "Bound", "accessModes": spec.access_modes,
                                   "capacity": spec.capacity}});
    let current = pvc.status.as_ref();
    if current.and_then(|s| s.phase.as_deref()) != Some("Bound")
        || current.and_then(|s| s.capacity.as_ref()) != spec.capacity.as_ref()
    {
        crate::replicaset::ignore_gone(
            claims
                .patch_status(&pvc.name_any(), &pp, &Patch::Merge(&status))
                .await,
        )?;
    }
    Ok(Action::await_change())
}

/// Keeps one volume's phase: Available without a claim, Bound with its claim, Released (or
/// deleted, under the Delete policy) once the claim is gone.
async fn reconcile_volume(
    pv: Arc<PersistentVolume>,
    client: Arc<kube::Client>,
) -> Result<Action, crate::runner::Error> {
    let api: Api<PersistentVolume> = Api::all((*client).clone());
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        set_volume_phase(&api, &pv, "Available").await?;
        return Ok(Action::await_change());
    };
    let (Some(ns), Some(name)) = (r.namespace.as_deref(), r.name.as_deref()) else {
        return Ok(Action::await_change());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced((*client).clone(), ns);
    let claim = claims.get_opt(name).await?;
    let claim_there = claim
        .as_ref()
        .is_some_and(|c| r.uid.is_none() || c.metadata.uid == r.uid);
    if claim_there {
        // Pre-bound or being bound: the claim's side finishes it.
        return Ok(Action::await_change());
    }
    if r.uid.is_none() {
        // Reserved for a claim that does not exist yet.
        set_volume_phase(&api, &pv, "Available").await?;
        return Ok(Action::await_change());
    }
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    if policy == "Delete" {
        crate::replicaset::ignore_gone(
            api.delete(&pv.name_any(), &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    } else {
        set_volume_phase(&api, &pv, "Released").await?;
    }
    Ok(Action::await_change())
}

/// Runs the controller, from when the first volume or claim exists, until its watches end.
pub async fn run(client: kube::Client) {
    let started = tokio::select! {
        v = crate::runner::first::<PersistentVolume>(&client) => v,
        c = crate::runner::first::<PersistentVolumeClaim>(&client) => c,
    };
    if !started {
        return;
    }
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = claims.store();
    // A volume's change concerns its claim, or every claim still waiting for one.
    let claims = claims
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            move |pv: PersistentVolume| {
                let r = pv.spec.as_ref().and_then(|s| s.claim_ref.clone());
                store
                    .state()
                    .iter()
                    .filter(|c| match &r {
                        Some(r) => c.namespace() == r.namespace && Some(c.name_any()) == r.name,
                        None => c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound"),
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            reconcile_claim,
            crate::runner::retry("persistentvolume-binder"),
            Arc::new(client.clone()),
        )
        .for_each(|_| async {});
    // A claim's change (its deletion above all) concerns the volume it names.
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
        |pvc: PersistentVolumeClaim| {
            pvc.spec
                .and_then(|s| s.volume_name)
                .filter(|n| !n.is_empty())
                .map(|n| ObjectRef::<PersistentVolume>::new(&n))
        },
    )
    .run(
        reconcile_volume,
        crate::runner::retry("persistentvolume"),
        Arc::new(client),
    )
    .for_each(|_| async {});
    tokio::join!(claims, volumes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn pv(name: &str, size: &str, extra: Value) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name, "labels": {"disk": "ssd"}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                     "volumeMode": "Filesystem"}});
        for (k, x) in extra.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn pvc(extra: Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "d", "uid": "c1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}},
                     "volumeMode": "Filesystem"}});
        for (k, x) in extra.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn chosen(claim: &PersistentVolumeClaim, pvs: &[PersistentVolume]) -> Option<String> {
        choose(claim, pvs).map(|pv| pv.name_any())
    }

    #[test]
    fn a_claim_gets_the_smallest_volume_that_fits() {
        let pvs = [
            pv("small", "1Gi", json!({})),
            pv("big", "10Gi", json!({})),
            pv("mid", "5Gi", json!({})),
            pv("slow", "3Gi", json!({"storageClassName": "slow"})),
        ];
        assert_eq!(chosen(&pvc(json!({})), &pvs).as_deref(), Some("mid"));
        assert_eq!(
            chosen(&pvc(json!({"storageClassName": "slow"})), &pvs).as_deref(),
            Some("slow")
        );
        assert_eq!(
            chosen(&pvc(json!({"accessModes": ["ReadWriteMany"]})), &pvs),
            None
        );
        let big = pvc(json!({"resources": {"requests": {"storage": "20Gi"}}}));
        assert_eq!(chosen(&big, &pvs), None);
        let block = pvc(json!({"volumeMode": "Block"}));
        assert_eq!(chosen(&block, &pvs), None);
        let picky = pvc(json!({"selector": {"matchLabels": {"disk": "hdd"}}}));
        assert_eq!(chosen(&picky, &pvs), None);
        let named = pvc(json!({"volumeName": "big"}));
        assert_eq!(chosen(&named, &pvs).as_deref(), Some("big"));
    }

    #[test]
    fn a_volume_claimed_by_another_is_not_free() {
        let other = json!({"claimRef": {"namespace": "d", "name": "other", "uid": "c2"}});
        let mine = json!({"claimRef": {"namespace": "d", "name": "data"}});
        let pvs = [pv("taken", "5Gi", other), pv("reserved", "8Gi", mine)];
        assert_eq!(chosen(&pvc(json!({})), &pvs).as_deref(), Some("reserved"));
        let mut bound_pv = pvs[1].clone();
        bound_pv
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .uid = Some("c1".into());
        let mut claim = pvc(json!({}));
        assert!(!bound(&bound_pv, &claim));
        claim.spec.as_mut().unwrap().volume_name = Some("reserved".into());
        assert!(bound(&bound_pv, &claim));
    }
}
