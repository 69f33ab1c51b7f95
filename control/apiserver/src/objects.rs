//! What the API server does to an object before it is stored: server-set metadata
//! (uid, creationTimestamp, generation, generateName), checks that the body belongs at its
//! URL, name validation, and patches.

use serde_json::{json, Value};

use crate::resources::Resource;
use crate::status::ApiError;

fn invalid(res: &Resource, name: &str, field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.into(),
        name: name.into(),
        causes: vec![(field.into(), message)],
    }
}

/// Whether `name` is a DNS-1123 subdomain (what most object names must be).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Now, to the second, as Kubernetes writes timestamps.
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
}

/// Checks that `obj` is a `res` object that belongs in namespace `ns`.
fn check_kind(res: &Resource, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != res.kind => {
            return Err(ApiError::BadRequest(format!(
                "the body is a {k}, but the URL names {} (kind {})",
                res.plural, res.kind
            )))
        }
        _ => {}
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != res.api_version() => {
            return Err(ApiError::BadRequest(format!(
                "the body has apiVersion {v}, but the URL names {}",
                res.api_version()
            )))
        }
        _ => {}
    }
    obj["kind"] = json!(res.kind);
    obj["apiVersion"] = json!(res.api_version());
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let body_ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(String::from);
    match (res.namespaced, ns, body_ns) {
        (true, Some(url), Some(body)) if body != url => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        (true, Some(url), _) => {
            obj["metadata"]["namespace"] = json!(url);
            Ok(())
        }
        (true, None, _) => Err(ApiError::BadRequest(format!(
            "{} are namespaced: create them under /namespaces/<namespace>/{}",
            res.plural, res.plural
        ))),
        (false, _, _) => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            Ok(())
        }
    }
}

/// Empty label and annotation maps and empty finalizer and owner lists are left out, as
/// Kubernetes' `omitempty` leaves them out: removing an object's last label must not leave
/// `labels: {}` behind (`kubectl diff` showed it as a change).
fn drop_empty_metadata(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ] {
            let empty = match meta.get(field) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                meta.remove(field);
            }
        }
    }
}

/// Prepares a new object for storage: kind and namespace checks, `generateName`, name
/// validation, uid, creationTimestamp, generation, and the defaults Kubernetes sets.
pub fn prepare_create(res: &Resource, ns: Option<&str>, mut obj: Value) -> Result<Value, ApiError> {
    check_kind(res, ns, &mut obj)?;
    drop_empty_metadata(&mut obj);
    let meta = obj["metadata"].as_object_mut().expect("checked above");
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                name = format!("{prefix}{}", random_suffix(5));
                meta.insert("name".into(), json!(name));
            }
            _ => {
                return Err(invalid(
                    res,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required".into(),
                ))
            }
        }
    }
    if !is_dns1123_subdomain(&name) {
        return Err(invalid(
            res,
            &name,
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    meta.insert("uid".into(), json!(uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    if obj.get("spec").is_some() {
        obj["metadata"]["generation"] = json!(1);
    }
    if res.kind == "Namespace" {
        obj["status"] = json!({"phase": "Active"});
        // Every namespace is emptied by the namespace controller before it goes.
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        let finalizers = obj["spec"]
            .as_object_mut()
            .map(|spec| spec.entry("finalizers").or_insert_with(|| json!([])));
        match finalizers {
            Some(Value::Array(list)) if !list.iter().any(|f| f == "kubernetes") => {
                list.push(json!("kubernetes"));
            }
            Some(Value::Array(_)) => {}
            Some(other) => *other = json!(["kubernetes"]),
            None => {}
        }
    }
    if res.kind == "Secret" && obj.get("type").is_none() {
        obj["type"] = json!("Opaque");
    }
    if res.kind == "Job" {
        job_selector(&mut obj);
    }
    crate::defaults::apply(res.kind, &mut obj);
    crate::specs::check(res, &obj, None)?;
    Ok(obj)
}

/// What Kubernetes gives a new Job unless it sets `spec.manualSelector`: template labels with
/// its name and uid (new and legacy keys), and a selector on the uid, so that its pods are
/// found by `-l job-name=NAME` and match no other Job.
fn job_selector(obj: &mut Value) {
    let (Some(name), Some(uid)) = (
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(String::from),
        obj.pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(String::from),
    ) else {
        return;
    };
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("manualSelector") == Some(&json!(true)) {
        return;
    }
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.get("metadata").is_some_and(Value::is_object) {
        template["metadata"] = json!({});
    }
    if !template["metadata"]
        .get("labels")
        .is_some_and(Value::is_object)
    {
        template["metadata"]["labels"] = json!({});
    }
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        for (key, value) in [
            ("batch.kubernetes.io/job-name", &name),
            ("job-name", &name),
            ("batch.kubernetes.io/controller-uid", &uid),
            ("controller-uid", &uid),
        ] {
            labels.entry(key).or_insert_with(|| json!(value));
        }
    }
    let selector = spec.entry("selector").or_insert_with(|| json!({}));
    if !selector.is_object() {
        *selector = json!({});
    }
    if !selector.get("matchLabels").is_some_and(Value::is_object) {
        selector["matchLabels"] = json!({});
    }
    if let Some(m) = selector["matchLabels"].as_object_mut() {
        m.entry("batch.kubernetes.io/controller-uid")
            .or_insert_with(|| json!(uid));
    }
}

/// Prepares a replacement of `current` (what is stored) by `obj`: same name, immutable
/// metadata kept, generation bumped when the spec changes. `sub` is the subresource
/// (`status` replaces only the status; the main resource keeps the stored status).
pub fn prepare_update(
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    current: &Value,
    mut obj: Value,
) -> Result<Value, ApiError> {
    check_kind(res, ns, &mut obj)?;
    drop_empty_metadata(&mut obj);
    let body_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    obj["metadata"]["name"] = json!(name);
    for keep in ["uid", "creationTimestamp", "deletionTimestamp"] {
        match current.pointer(&format!("/metadata/{keep}")) {
            Some(v) => obj["metadata"][keep] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(keep);
                }
            }
        }
    }
    let out = match sub {
        None => {
            if let Some(status) = current.get("status") {
                if res.kind != "Namespace" || obj.get("status").is_none() {
                    obj["status"] = status.clone();
                }
            }
            if res.kind == "Service" {
                keep_service_allocations(name, current, &mut obj)?;
            }
            if res.kind == "Namespace" {
                obj["spec"]["finalizers"] = current
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
            }
            crate::defaults::apply(res.kind, &mut obj);
            crate::specs::check(res, &obj, Some(current))?;
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64);
            if let Some(g) = generation {
                let changed = current.get("spec") != obj.get("spec");
                obj["metadata"]["generation"] = json!(if changed { g + 1 } else { g });
            }
            obj
        }
        Some("status") => {
            let mut next = current.clone();
            next["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
                next["metadata"]["resourceVersion"] = rv.clone();
            }
            next
        }
        // A pod's ephemeral containers (`kubectl debug`) are added only here; the rest of
        // the pod stays as it is.
        Some("ephemeralcontainers") if res.kind == "Pod" => {
            let mut next = current.clone();
            let mut wanted = obj
                .pointer("/spec/ephemeralContainers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            crate::defaults::containers(Some(&mut wanted));
            check_ephemeral_containers(res, name, current, &wanted)?;
            next["spec"]["ephemeralContainers"] = wanted;
            if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
                next["metadata"]["resourceVersion"] = rv.clone();
            }
            next
        }
        // A namespace's `spec.finalizers` change only here (the namespace controller).
        Some("finalize") if res.kind == "Namespace" => {
            let mut next = current.clone();
            next["spec"]["finalizers"] = obj
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
                next["metadata"]["resourceVersion"] = rv.clone();
            }
            next
        }
        Some(other) => {
            return Err(ApiError::NotFound {
                kind: format!("{}/{other}", res.plural),
                name: name.into(),
            })
        }
    };
    Ok(out)
}

/// Ephemeral containers may be added, never changed or removed; each needs a name (a DNS
/// label no other container of the pod has) and an image.
fn check_ephemeral_containers(
    res: &Resource,
    name: &str,
    current: &Value,
    wanted: &Value,
) -> Result<(), ApiError> {
    let field = "spec.ephemeralContainers";
    let Some(list) = wanted.as_array() else {
        return Err(invalid(
            res,
            name,
            field,
            "Invalid value: must be a list".into(),
        ));
    };
    let name_of = |c: &Value| c["name"].as_str().unwrap_or_default().to_string();
    for old in current
        .pointer("/spec/ephemeralContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if !list.contains(old) {
            let message = format!(
                "Forbidden: existing ephemeral containers \"{}\" may not be changed",
                name_of(old)
            );
            return Err(invalid(res, name, field, message));
        }
    }
    let mut names: Vec<String> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| {
            current
                .pointer(&format!("/spec/{f}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .map(name_of)
        .collect();
    for (i, c) in list.iter().enumerate() {
        let n = name_of(c);
        let at = |f: &str| format!("{field}[{i}].{f}");
        if !is_dns1123_subdomain(&n) || n.contains('.') || n.len() > 63 {
            let message = format!("Invalid value: \"{n}\": a lowercase RFC 1123 label is required");
            return Err(invalid(res, name, &at("name"), message));
        }
        if names.contains(&n) {
            let message = format!("Duplicate value: \"{n}\"");
            return Err(invalid(res, name, &at("name"), message));
        }
        names.push(n);
        if c["image"].as_str().unwrap_or_default().is_empty() {
            return Err(invalid(res, name, &at("image"), "Required value".into()));
        }
    }
    Ok(())
}

/// A Service keeps its ClusterIP (immutable) and, for ports that name none, its NodePorts.
fn keep_service_allocations(name: &str, current: &Value, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.get("spec").is_some_and(Value::is_object) {
        return Ok(());
    }
    let old_ip = current
        .pointer("/spec/clusterIP")
        .cloned()
        .unwrap_or(Value::Null);
    let new_ip = obj
        .pointer("/spec/clusterIP")
        .cloned()
        .unwrap_or(Value::Null);
    if new_ip.is_null() || new_ip == json!("") {
        obj["spec"]["clusterIP"] = old_ip;
        obj["spec"]["clusterIPs"] = current
            .pointer("/spec/clusterIPs")
            .cloned()
            .unwrap_or(Value::Null);
    } else if new_ip != old_ip {
        return Err(ApiError::Invalid {
            kind: "Service".into(),
            name: name.into(),
            causes: vec![(
                "spec.clusterIPs[0]".into(),
                "Invalid value: field is immutable".into(),
            )],
        });
    }
    let old_ports = current
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) == 0 {
                let kept = old_ports
                    .iter()
                    .find(|o| o.get("port") == p.get("port"))
                    .and_then(|o| o.get("nodePort"));
                if let Some(np) = kept {
                    p["nodePort"] = np.clone();
                }
            }
        }
    }
    Ok(())
}

/// Applies a PATCH body to `current`, by content type: JSON patch (RFC 6902), JSON merge
/// patch (RFC 7386), or strategic merge patch ([`crate::smp`]).
/// The media type of server-side apply (`kubectl apply --server-side`, kube-rs
/// `Patch::Apply`); the body is JSON, which is YAML too.
pub const APPLY_PATCH: &str = "application/apply-patch+yaml";

pub fn apply_patch(content_type: &str, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    let ct = content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| ApiError::Invalid {
                kind: current["kind"].as_str().unwrap_or("").into(),
                name: current
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                causes: vec![("patch".into(), e.to_string())],
            })?;
        }
        "application/merge-patch+json" => {
            json_patch::merge(&mut doc, patch);
        }
        // Server-side apply merges the applied configuration into the object by the built-in
        // types' merge keys; field ownership (managedFields) is not tracked, so fields an
        // applier stops naming are kept rather than removed, and there are no conflicts.
        "application/strategic-merge-patch+json" | APPLY_PATCH => {
            doc = crate::smp::apply(current, patch)?;
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format ({other:?}) - accepted media \
                 types include: application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json"
            )))
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn ephemeral_containers_are_added_but_never_changed() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "web", "namespace": "d", "uid": "u",
                                      "resourceVersion": "5"},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                         "status": {"phase": "Running"}});
        let with = |list: Value| {
            let mut p = pod.clone();
            p["spec"]["ephemeralContainers"] = list;
            p
        };
        let debug = json!({"name": "dbg", "image": "busybox"});
        let sub = Some("ephemeralcontainers");
        let added = prepare_update(pods, Some("d"), "web", sub, &pod, with(json!([debug])));
        let added = added.unwrap();
        assert_eq!(added["spec"]["ephemeralContainers"][0]["name"], "dbg");
        // Defaulted as containers are, and nothing else of the pod moved.
        assert_eq!(
            added["spec"]["ephemeralContainers"][0]["terminationMessagePolicy"],
            "File"
        );
        assert_eq!(added["spec"]["containers"], pod["spec"]["containers"]);
        assert_eq!(added["status"], pod["status"]);
        let err = |current: &Value, list: Value| {
            let e = prepare_update(pods, Some("d"), "web", sub, current, with(list)).unwrap_err();
            assert!(matches!(e, ApiError::Invalid { .. }), "{e}");
            e.to_string()
        };
        let changed = json!([{"name": "dbg", "image": "alpine"}]);
        assert!(err(&added, changed).contains("may not be changed"));
        assert!(err(&added, json!([])).contains("may not be changed"));
        assert!(err(&pod, json!([{"name": "web", "image": "busybox"}])).contains("Duplicate"));
        assert!(err(&pod, json!([{"name": "Bad_Name", "image": "x"}])).contains("RFC 1123"));
        assert!(err(&pod, json!([{"name": "dbg"}])).contains("Required value"));
        // Elsewhere than on a pod the subresource does not exist.
        let cms = resources::find("", "v1", "configmaps").unwrap();
        let e = prepare_update(cms, Some("d"), "c", sub, &json!({}), json!({})).unwrap_err();
        assert!(matches!(e, ApiError::NotFound { .. }), "{e}");
    }

    #[test]
    fn empty_metadata_collections_are_left_out_as_omitempty_does() {
        let cms = resources::find("", "v1", "configmaps").unwrap();
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c",
            "labels": {}, "annotations": {}, "finalizers": [], "ownerReferences": []}});
        let made = prepare_create(cms, Some("default"), body).unwrap();
        let meta = made["metadata"].as_object().unwrap();
        for gone in ["labels", "annotations", "finalizers", "ownerReferences"] {
            assert!(!meta.contains_key(gone), "{gone} kept: {made}");
        }
        let mut next = made.clone();
        next["metadata"]["labels"] = json!({"a": "1"});
        next["metadata"]["annotations"] = json!({});
        let updated = prepare_update(cms, Some("default"), "c", None, &made, next).unwrap();
        assert_eq!(updated["metadata"]["labels"], json!({"a": "1"}));
        assert!(
            updated["metadata"].get("annotations").is_none(),
            "{updated}"
        );
    }

    #[test]
    fn jobs_get_kubernetes_generated_selector_unless_manual() {
        let jobs = resources::find("batch", "v1", "jobs").unwrap();
        let body = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi"},
            "spec": {"template": {"spec": {"containers": [{"name": "pi", "image": "perl"}],
                                           "restartPolicy": "Never"}}}});
        let o = prepare_create(jobs, Some("default"), body.clone()).unwrap();
        let uid = o["metadata"]["uid"].as_str().unwrap();
        assert_eq!(
            o["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        );
        let labels = &o["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["controller-uid"], uid);
        let mut manual = body;
        manual["spec"]["manualSelector"] = json!(true);
        manual["spec"]["selector"] = json!({"matchLabels": {"app": "pi"}});
        manual["spec"]["template"]["metadata"] = json!({"labels": {"app": "pi"}});
        let o = prepare_create(jobs, Some("default"), manual).unwrap();
        assert_eq!(o["spec"]["selector"], json!({"matchLabels": {"app": "pi"}}));
        assert!(o["spec"]["template"]["metadata"]["labels"]
            .get("job-name")
            .is_none());
    }

    #[test]
    fn create_sets_server_fields_and_checks_the_body() {
        let cms = resources::find("", "v1", "configmaps").unwrap();
        let o = prepare_create(
            cms,
            Some("default"),
            json!({"metadata": {"generateName": "x-"}}),
        )
        .unwrap();
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("x-") && name.len() == 7, "{name}");
        assert_eq!(o["kind"], "ConfigMap");
        assert_eq!(o["metadata"]["namespace"], "default");
        assert_eq!(o["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert!(o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
        let bad = prepare_create(
            cms,
            Some("default"),
            json!({"metadata": {"name": "Bad_Name"}}),
        );
        assert!(matches!(bad, Err(ApiError::Invalid { .. })), "{bad:?}");
        let wrong_kind = prepare_create(
            cms,
            Some("default"),
            json!({"kind": "Secret", "metadata": {"name": "a"}}),
        );
        assert!(matches!(wrong_kind, Err(ApiError::BadRequest(_))));
        let wrong_ns = prepare_create(
            cms,
            Some("default"),
            json!({"metadata": {"name": "a", "namespace": "kube-system"}}),
        );
        assert!(matches!(wrong_ns, Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn updates_keep_immutable_metadata_and_count_spec_changes() {
        let deploys = resources::find("apps", "v1", "deployments").unwrap();
        let current = prepare_create(
            deploys,
            Some("d"),
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}}}}),
        )
        .unwrap();
        let mut next =
            json!({"metadata": {"name": "web", "uid": "forged"}, "spec": current["spec"]});
        next["spec"]["replicas"] = json!(3);
        next = prepare_update(deploys, Some("d"), "web", None, &current, next).unwrap();
        assert_eq!(next["metadata"]["uid"], current["metadata"]["uid"]);
        assert_eq!(next["metadata"]["generation"], 2);
        let renamed = prepare_update(
            deploys,
            Some("d"),
            "web",
            None,
            &current,
            json!({"metadata": {"name": "other"}}),
        );
        assert!(matches!(renamed, Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn patches_by_content_type() {
        let cur = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let merged = apply_patch(
            "application/merge-patch+json",
            &cur,
            &json!({"metadata": {"labels": {"y": "2", "x": null}}}),
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2"}));
        let patched = apply_patch(
            "application/json-patch+json",
            &cur,
            &json!([{"op": "replace", "path": "/data/k", "value": "w"}]),
        )
        .unwrap();
        assert_eq!(patched["data"]["k"], "w");
        assert!(apply_patch(
            "application/json-patch+json",
            &cur,
            &json!([{"op": "remove", "path": "/nope"}])
        )
        .is_err());
        assert!(matches!(
            apply_patch("text/plain", &cur, &json!({})),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
