//! Managed fields: which field manager set which fields of an object
//! (`metadata.managedFields`), and what server-side apply builds on them:
//!
//! - **conflicts**: a manager that applies a value to a field another manager set to
//!   something else gets a 409 naming the field and the other manager, unless it forces
//!   (`force=true`), which takes the field over;
//! - **removal**: a field an applier set before and leaves out of its next configuration is
//!   removed from the object, unless another manager set it too;
//! - **ownership moves**: an update (create, replace, a non-apply patch) that changes a field
//!   makes its manager the field's owner, and the applier that owned it no longer does.
//!
//! A field set is a set of paths; a path is a list of fieldsV1 elements: `f:<field>`,
//! `k:<key fields as JSON>` for an element of a list keyed by fields (containers by `name`,
//! container ports by `containerPort` and `protocol`), `v:<value as JSON>` for an element of
//! a set-like list (`finalizers`). Other lists are atomic (owned whole), as are label
//! selectors and references to other objects, as Kubernetes' schemas mark them.
//!
//! Which objects are tracked: those a request names a `fieldManager` for (kubectl always
//! does), that are server-side applied, or that have managed fields already. Writes by
//! clients that name no manager to objects nobody tracks (the controllers' own pods, for
//! instance) carry no managedFields, so the hot paths pay nothing for them.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::objects::now;
use crate::status::ApiError;

/// One field path, as fieldsV1 elements.
type Path = Vec<String>;

/// A set of field paths. In the order of a `BTreeSet`, a path's descendants come right
/// after it.
type FieldSet = BTreeSet<Path>;

/// Who makes a change, and to what.
#[derive(Debug, Clone)]
pub struct Change {
    /// The field manager.
    pub manager: String,
    /// Whether the request named its manager (`fieldManager`), rather than it being derived
    /// from the User-Agent.
    pub named: bool,
    /// `group/version` of the object as written.
    pub api_version: String,
    /// The subresource written (`status`), if any.
    pub subresource: Option<String>,
}

impl Change {
    /// The manager of a request: its `fieldManager`, or else what precedes the first `/`
    /// of its User-Agent (`kubectl`, `kube-rs`), as Kubernetes derives it.
    pub fn new(
        field_manager: Option<&str>,
        user_agent: Option<&str>,
        api_version: &str,
        subresource: Option<&str>,
    ) -> Result<Change, ApiError> {
        let named = field_manager.is_some_and(|m| !m.is_empty());
        let manager = match field_manager {
            Some(m) if !m.is_empty() => {
                if m.chars().count() > 128 || m.chars().any(|c| c.is_control()) {
                    return Err(ApiError::BadRequest(format!(
                        "fieldManager {m:?} is invalid: it must be at most 128 printable \
                         characters"
                    )));
                }
                m.to_string()
            }
            _ => {
                let ua = user_agent.unwrap_or("");
                let prefix: String = ua
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(128)
                    .collect();
                if prefix.trim().is_empty() {
                    "unknown".to_string()
                } else {
                    prefix
                }
            }
        };
        Ok(Change {
            manager,
            named,
            api_version: api_version.to_string(),
            subresource: subresource.map(String::from),
        })
    }
}

/// Which part of an object a write covers: the main resource owns everything but
/// `status`, the `status` subresource only `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Main,
    Status,
}

impl Scope {
    fn of(change: &Change) -> Scope {
        match change.subresource.as_deref() {
            Some("status") => Scope::Status,
            _ => Scope::Main,
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, change: &Change, operation: &str) -> bool {
        self.manager == change.manager
            && self.operation == operation
            && self.subresource == change.subresource
    }

    fn to_json(&self) -> Value {
        let mut e = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_json(&self.fields),
        });
        if let Some(t) = &self.time {
            e["time"] = json!(t);
        }
        if let Some(s) = &self.subresource {
            e["subresource"] = json!(s);
        }
        e
    }
}

/// Lists of scalars that are sets (`x-kubernetes-list-type: set`).
fn is_set(field: &str) -> bool {
    field == "finalizers"
}

/// Maps and structs owned whole (`x-kubernetes-map-type: atomic`): label selectors and
/// references to other objects.
fn is_atomic_map(field: &str) -> bool {
    matches!(
        field,
        "selector"
            | "nodeSelector"
            | "fieldRef"
            | "resourceFieldRef"
            | "configMapKeyRef"
            | "secretKeyRef"
            | "configMapRef"
            | "secretRef"
    )
}

/// The value of key field `key` of a keyed-list element; a port's protocol defaults to TCP.
fn key_value(elem: &Value, key: &str) -> Option<Value> {
    match elem.get(key) {
        Some(v) => Some(v.clone()),
        None if key == "protocol" => Some(json!("TCP")),
        None => None,
    }
}

/// The `k:` element naming `elem` of a list keyed by `keys`, key fields in name order.
fn key_element(elem: &Value, keys: &[&str]) -> Option<String> {
    elem.as_object()?;
    let mut parts: Vec<(&str, Value)> = keys
        .iter()
        .filter_map(|k| key_value(elem, k).map(|v| (*k, v)))
        .collect();
    if parts.is_empty() {
        return None;
    }
    parts.sort_by_key(|(k, _)| *k);
    let inner: Vec<String> = parts
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    Some(format!("k:{{{}}}", inner.join(",")))
}

fn collect_map(map: &Map<String, Value>, path: &mut Path, out: &mut FieldSet) {
    for (k, v) in map {
        path.push(format!("f:{k}"));
        collect_value(k, v, path, out);
        path.pop();
    }
}

fn collect_value(field: &str, v: &Value, path: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() && !is_atomic_map(field) => collect_map(m, path, out),
        Value::Array(items) if !items.is_empty() => collect_list(field, items, path, out),
        _ => {
            out.insert(path.clone());
        }
    }
}

fn collect_list(field: &str, items: &[Value], path: &mut Path, out: &mut FieldSet) {
    if is_set(field) && items.iter().all(|i| !i.is_object() && !i.is_array()) {
        for i in items {
            path.push(format!("v:{i}"));
            out.insert(path.clone());
            path.pop();
        }
        return;
    }
    if let Some(keys) = crate::smp::list_keys(field, items.first()) {
        let elems: Option<Vec<(String, &Map<String, Value>)>> = items
            .iter()
            .map(|i| Some((key_element(i, keys)?, i.as_object()?)))
            .collect();
        if let Some(elems) = elems {
            for (key, m) in elems {
                path.push(key);
                out.insert(path.clone());
                collect_map(m, path, out);
                path.pop();
            }
            return;
        }
    }
    // Atomic: the list is one value.
    out.insert(path.clone());
}

/// The metadata fields a manager can own; the rest the server sets.
const OWNED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// The fields `obj` sets, within `scope`.
fn fields_of(obj: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    let mut path = Path::new();
    for (k, v) in map {
        let owned = match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", s) => s == Scope::Status,
            (_, s) => s == Scope::Main,
        };
        if !owned {
            continue;
        }
        path.push(format!("f:{k}"));
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for (mk, mv) in meta
                    .iter()
                    .filter(|(mk, _)| OWNED_METADATA.contains(&mk.as_str()))
                {
                    path.push(format!("f:{mk}"));
                    collect_value(mk, mv, &mut path, &mut out);
                    path.pop();
                }
            }
        } else {
            collect_value(k, v, &mut path, &mut out);
        }
        path.pop();
    }
    out
}

/// Where list element `el` (a `k:` or `v:` element) is in `items`.
fn position(items: &[Value], el: &str) -> Option<usize> {
    if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items.iter().position(|i| {
            i.is_object()
                && key
                    .iter()
                    .all(|(kk, kv)| key_value(i, kk).as_ref() == Some(kv))
        });
    }
    if let Some(v) = el.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        return items.iter().position(|i| *i == v);
    }
    None
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    match el.strip_prefix("f:") {
        Some(f) => cur.get(f),
        None => {
            let items = cur.as_array()?;
            items.get(position(items, el)?)
        }
    }
}

fn step_mut<'a>(cur: &'a mut Value, el: &str) -> Option<&'a mut Value> {
    match el.strip_prefix("f:") {
        Some(f) => cur.get_mut(f),
        None => {
            let items = cur.as_array_mut()?;
            let i = position(items, el)?;
            items.get_mut(i)
        }
    }
}

/// The value at `path` in `obj`.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, el| step(cur, el))
}

/// Removes what is at `path` from `obj` (a field, or a list element); nothing if absent.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for el in parent {
        match step_mut(cur, el) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(items) = cur.as_array_mut() {
        if let Some(i) = position(items, last) {
            items.remove(i);
        }
    }
}

/// Whether `path` is a key field of the keyed-list element it is in (`name` of a
/// container): that goes only with its element.
fn is_key_field(path: &[String]) -> bool {
    let [.., parent, last] = path else {
        return false;
    };
    let (Some(k), Some(field)) = (parent.strip_prefix("k:"), last.strip_prefix("f:")) else {
        return false;
    };
    serde_json::from_str::<Map<String, Value>>(k).is_ok_and(|key| key.contains_key(field))
}

/// The paths of `set` with nothing of `set` below them.
fn leaves(set: &FieldSet) -> Vec<&Path> {
    let mut out = Vec::new();
    let mut it = set.iter().peekable();
    while let Some(p) = it.next() {
        let has_child = it.peek().is_some_and(|next| next.starts_with(p));
        if !has_child {
            out.push(p);
        }
    }
    out
}

/// A path as Kubernetes prints it: `.spec.containers[name="app"].image`.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else {
            out.push_str(&format!("[{el}]"));
        }
    }
    out
}

/// A fieldsV1 document as a field set.
fn parse_fields(v: &Value, path: &mut Path, out: &mut FieldSet) -> Result<(), String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("{} is not an object", display(path)))?;
    if m.is_empty() && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in m {
        if k == "." {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            continue;
        }
        if !["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
            return Err(format!("unknown path element {k:?}"));
        }
        path.push(k.clone());
        parse_fields(child, path, out)?;
        path.pop();
    }
    Ok(())
}

/// A field set as a fieldsV1 document: nested elements, `.` marking a path that is itself
/// in the set and has members below it.
fn fields_json(set: &FieldSet) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[String]) {
        match path.split_first() {
            None => {
                node.insert(".".into(), json!({}));
            }
            Some((first, rest)) => {
                let child = node.entry(first.clone()).or_insert_with(|| json!({}));
                if let Some(child) = child.as_object_mut() {
                    insert(child, rest);
                }
            }
        }
    }
    fn tidy(node: &mut Map<String, Value>) {
        if node.len() == 1 && node.contains_key(".") {
            node.clear();
            return;
        }
        for (k, v) in node.iter_mut() {
            if k != "." {
                if let Some(m) = v.as_object_mut() {
                    tidy(m);
                }
            }
        }
    }
    let mut root = Map::new();
    for p in set {
        insert(&mut root, p);
    }
    tidy(&mut root);
    Value::Object(root)
}

fn bad_entries(msg: String) -> ApiError {
    ApiError::BadRequest(format!("metadata.managedFields is invalid: {msg}"))
}

/// The entries of a `managedFields` list.
fn parse_entries(list: &[Value]) -> Result<Vec<Entry>, ApiError> {
    list.iter()
        .map(|e| {
            let text = |k: &str| e.get(k).and_then(Value::as_str).map(String::from);
            let manager = text("manager").unwrap_or_default();
            let operation = text("operation").unwrap_or_default();
            if operation != "Apply" && operation != "Update" {
                return Err(bad_entries(format!(
                    "operation {operation:?} of manager {manager:?} must be Apply or Update"
                )));
            }
            let mut fields = FieldSet::new();
            if let Some(f) = e.get("fieldsV1") {
                parse_fields(f, &mut Path::new(), &mut fields).map_err(bad_entries)?;
            }
            Ok(Entry {
                manager,
                operation,
                api_version: text("apiVersion").unwrap_or_default(),
                time: text("time"),
                subresource: text("subresource").filter(|s| !s.is_empty()),
                fields,
            })
        })
        .collect()
}

/// The stored entries of `obj`.
fn stored_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .and_then(|l| parse_entries(l).ok())
        .unwrap_or_default()
}

/// Writes `entries` (those that still own something) into `obj`'s metadata.
fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Gives `change`'s entry for `operation` (made if missing) `fields`. An update moves its
/// time (it changed something); an apply's time moves only when what it owns does, so
/// applying the same configuration again writes nothing.
fn set_entry(entries: &mut Vec<Entry>, change: &Change, operation: &str, fields: FieldSet) {
    match entries.iter_mut().find(|e| e.is(change, operation)) {
        Some(e) => {
            if operation == "Update" || e.fields != fields {
                e.time = Some(now());
            }
            e.fields = fields;
            e.api_version = change.api_version.clone();
        }
        None => entries.push(Entry {
            manager: change.manager.clone(),
            operation: operation.into(),
            api_version: change.api_version.clone(),
            time: Some(now()),
            subresource: change.subresource.clone(),
            fields,
        }),
    }
}

/// Records an update (a create when `current` is `None`, a replace, or a patch other than
/// apply) by `change` in the managedFields of `next`, the object about to be stored.
///
/// The managedFields a client sends are kept if it sends some (a client may rewrite them);
/// none or an empty list keep the stored ones; a list of one empty entry removes them all.
pub fn record_update(
    current: Option<&Value>,
    next: &mut Value,
    change: &Change,
) -> Result<(), ApiError> {
    let sent = next.pointer("/metadata/managedFields").cloned();
    let mut entries = match sent.as_ref().and_then(Value::as_array) {
        Some(list) if list.len() == 1 && list[0].as_object().is_some_and(Map::is_empty) => {
            store_entries(next, Vec::new());
            return Ok(());
        }
        Some(list) if !list.is_empty() => parse_entries(list)?,
        _ => current.map(stored_entries).unwrap_or_default(),
    };
    if !change.named && entries.is_empty() {
        store_entries(next, entries);
        return Ok(());
    }
    let scope = Scope::of(change);
    let empty = Value::Null;
    let before = current.unwrap_or(&empty);
    let old = fields_of(before, scope);
    let new = fields_of(next, scope);
    let new_leaves: BTreeSet<&Path> = leaves(&new).into_iter().collect();
    let changed: FieldSet = new
        .iter()
        .filter(|p| {
            !old.contains(*p)
                || (new_leaves.contains(p) && value_at(before, p) != value_at(next, p))
        })
        .cloned()
        .collect();
    let removed: FieldSet = old.difference(&new).cloned().collect();
    for e in entries.iter_mut() {
        let mine = e.is(change, "Update");
        e.fields
            .retain(|p| !removed.contains(p) && (mine || !changed.contains(p)));
    }
    if !changed.is_empty() {
        let mut fields = entries
            .iter()
            .find(|e| e.is(change, "Update"))
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        fields.extend(changed);
        set_entry(&mut entries, change, "Update", fields);
    }
    store_entries(next, entries);
    Ok(())
}

/// One field that an apply would set to a value another manager set differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The API version it wrote the field with.
    pub api_version: String,
    /// The field, as `.spec.replicas`.
    pub field: String,
}

/// A server-side apply of `config` by `change` to `current`: refuses (409) to change fields
/// other managers own unless `force`, removes the fields this manager applied before and
/// no longer does (unless another manager owns them too), merges the configuration in, and
/// gives the object with its managedFields updated. An object applied for the first time
/// has `current` null.
pub fn apply(
    current: &Value,
    config: &Value,
    change: &Change,
    force: bool,
) -> Result<Value, ApiError> {
    let scope = Scope::of(change);
    let mut entries = stored_entries(current);
    let applied = fields_of(config, scope);
    let mut conflicts = Vec::new();
    for leaf in leaves(&applied) {
        if value_at(current, leaf) == value_at(config, leaf) {
            continue;
        }
        for e in entries.iter_mut() {
            if e.manager != change.manager && e.fields.contains(leaf) {
                conflicts.push(FieldConflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field: display(leaf),
                });
                if force {
                    e.fields.remove(leaf);
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::ApplyConflict(conflicts));
    }
    let previous = entries
        .iter()
        .find(|e| e.is(change, "Apply"))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: FieldSet = entries
        .iter()
        .filter(|e| !e.is(change, "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut merged = if current.is_object() {
        current.clone()
    } else {
        json!({})
    };
    // Deepest first: a removed list element's fields go before the element.
    // Ancestors first: a removed list element takes its fields with it.
    let mut removed: Vec<&Path> = Vec::new();
    for gone in previous.difference(&applied) {
        if removed.iter().any(|r| gone.starts_with(r)) || is_key_field(gone) {
            continue;
        }
        let owned_below = |set: &FieldSet| {
            set.range(gone.clone()..)
                .next()
                .is_some_and(|p| p.starts_with(gone))
        };
        if !owned_below(&others) && !owned_below(&applied) {
            remove_at(&mut merged, gone);
            removed.push(gone);
        }
    }
    let mut config = config.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let mut merged = crate::smp::apply(&merged, &config)?;
    set_entry(&mut entries, change, "Apply", applied);
    if !merged.get("metadata").is_some_and(Value::is_object) {
        merged["metadata"] = json!({});
    }
    store_entries(&mut merged, entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(manager: &str) -> Change {
        Change::new(Some(manager), None, "apps/v1", None).unwrap()
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image,
                                             "ports": [{"containerPort": 80}]}]}
                }
            }
        })
    }

    fn managers(obj: &Value) -> Vec<(String, String)> {
        stored_entries(obj)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    #[test]
    fn field_sets_follow_the_list_types_and_round_trip_through_fields_v1() {
        let set = fields_of(&deployment(2, "nginx"), Scope::Main);
        let doc = fields_json(&set);
        let c = &doc["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert_eq!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"],
            json!({})
        );
        // A selector is owned whole; apiVersion, kind and the name are the server's.
        assert_eq!(doc["f:spec"]["f:selector"], json!({}));
        assert!(doc.get("f:apiVersion").is_none());
        assert_eq!(doc["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        let mut back = FieldSet::new();
        parse_fields(&doc, &mut Path::new(), &mut back).unwrap();
        assert_eq!(back, set);
        let leaf = set
            .iter()
            .find(|p| p.last().is_some_and(|l| l == "f:image"))
            .unwrap();
        assert_eq!(
            display(leaf),
            ".spec.template.spec.containers[name=\"app\"].image"
        );
    }

    #[test]
    fn a_second_applier_conflicts_on_a_different_value_and_wins_when_forced() {
        let first = apply(
            &Value::Null,
            &deployment(2, "nginx"),
            &change("alice"),
            false,
        )
        .unwrap();
        // The same value is no conflict: the field is shared.
        let shared = apply(&first, &deployment(2, "nginx"), &change("bob"), false).unwrap();
        assert_eq!(managers(&shared).len(), 2);
        let err = apply(&shared, &deployment(3, "nginx"), &change("bob"), false).unwrap_err();
        let ApiError::ApplyConflict(conflicts) = &err else {
            panic!("expected a conflict, got {err:?}");
        };
        assert_eq!(
            conflicts,
            &vec![FieldConflict {
                manager: "alice".into(),
                api_version: "apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert_eq!(err.code_and_reason().0.as_u16(), 409);
        let forced = apply(&shared, &deployment(3, "nginx"), &change("bob"), true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let alice = stored_entries(&forced)
            .into_iter()
            .find(|e| e.manager == "alice")
            .unwrap();
        assert!(!alice
            .fields
            .contains(&vec!["f:spec".to_string(), "f:replicas".to_string()]));
    }

    #[test]
    fn fields_an_applier_leaves_out_are_removed_unless_someone_else_owns_them() {
        let mut config = deployment(2, "nginx");
        config["metadata"]["labels"]["tier"] = json!("front");
        config["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        let first = apply(&Value::Null, &config, &change("alice"), false).unwrap();
        // Bob also applies the label; alice then drops the label and the sidecar.
        let bob_config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"tier": "front"}}});
        let both = apply(&first, &bob_config, &change("bob"), false).unwrap();
        let second = apply(&both, &deployment(2, "nginx"), &change("alice"), false).unwrap();
        assert_eq!(
            second["metadata"]["labels"]["tier"], "front",
            "bob still owns it"
        );
        let containers = second["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1, "{containers:?}");
        assert_eq!(containers[0]["name"], "app");
        // Bob drops it too: now it goes.
        let bob_empty = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"x": "y"}}});
        let third = apply(&second, &bob_empty, &change("bob"), false).unwrap();
        assert!(third["metadata"]["labels"].get("tier").is_none(), "{third}");
    }

    #[test]
    fn an_update_takes_over_the_fields_it_changes() {
        let applied = apply(
            &Value::Null,
            &deployment(2, "nginx"),
            &change("alice"),
            false,
        )
        .unwrap();
        let mut next = applied.clone();
        next["spec"]["replicas"] = json!(5);
        record_update(Some(&applied), &mut next, &change("kubectl-scale")).unwrap();
        let entries = stored_entries(&next);
        let replicas = vec!["f:spec".to_string(), "f:replicas".to_string()];
        let scaler = entries
            .iter()
            .find(|e| e.manager == "kubectl-scale")
            .unwrap();
        assert_eq!(scaler.operation, "Update");
        assert_eq!(scaler.fields, FieldSet::from([replicas.clone()]));
        let alice = entries.iter().find(|e| e.manager == "alice").unwrap();
        assert!(!alice.fields.contains(&replicas));
        // Alice applying her old value again now conflicts with the scaler.
        let err = apply(&next, &deployment(2, "nginx"), &change("alice"), false).unwrap_err();
        assert!(err.to_string().contains("kubectl-scale"), "{err}");
        // Leaving replicas out does not remove them: alice no longer owns them.
        let mut without = deployment(2, "nginx");
        without["spec"].as_object_mut().unwrap().remove("replicas");
        let kept = apply(&next, &without, &change("alice"), false).unwrap();
        assert_eq!(kept["spec"]["replicas"], 5);
    }

    #[test]
    fn untracked_objects_stay_untracked_and_a_single_empty_entry_resets() {
        let anon = Change::new(None, Some("kube-rs/0.99 x"), "v1", None).unwrap();
        assert_eq!(anon.manager, "kube-rs");
        assert!(!anon.named);
        let mut obj = json!({"metadata": {"name": "a"}, "data": {"k": "v", "l": "w"}});
        record_update(None, &mut obj, &anon).unwrap();
        assert!(obj["metadata"].get("managedFields").is_none());
        let named = Change::new(Some("kubectl-create"), None, "v1", None).unwrap();
        record_update(None, &mut obj, &named).unwrap();
        assert_eq!(
            managers(&obj),
            vec![("kubectl-create".into(), "Update".into())]
        );
        // Once tracked, an unnamed manager's change is recorded too, and takes over what
        // it changed.
        let mut next = obj.clone();
        next["data"]["k"] = json!("w");
        record_update(Some(&obj), &mut next, &anon).unwrap();
        let entries = stored_entries(&next);
        assert_eq!(entries.len(), 2);
        let data = |e: &Entry| fields_json(&e.fields)["f:data"].clone();
        assert_eq!(data(&entries[0]), json!({"f:l": {}}));
        assert_eq!(data(&entries[1]), json!({"f:k": {}}));
        let mut reset = next.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        record_update(Some(&next), &mut reset, &named).unwrap();
        assert!(reset["metadata"].get("managedFields").is_none());
        let mut broken = next.clone();
        broken["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Patch"}]);
        assert!(record_update(Some(&next), &mut broken, &named).is_err());
        assert!(Change::new(Some(&"m".repeat(129)), None, "v1", None).is_err());
    }
}
