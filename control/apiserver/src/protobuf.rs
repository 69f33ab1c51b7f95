//! Kubernetes' protobuf wire format for request bodies, decoded to the same JSON the rest of
//! the server works on.
//!
//! kubectl 1.33's typed clients (`kubectl create namespace|configmap|secret|deployment …`)
//! send `application/vnd.kubernetes.protobuf`: the magic `k8s\0`, then a `runtime.Unknown`
//! holding the TypeMeta and the object's own protobuf encoding. The field numbers, names and
//! types of every built-in message come from `k8s-proto-schema.json`, which
//! `scripts/gen-k8s-proto-schema` extracts from the descriptors compiled into kubectl.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::status::ApiError;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\x00";

#[derive(Debug, Deserialize)]
struct Message {
    map: bool,
    /// Field number → (JSON name, protobuf type, message type name, repeated).
    fields: HashMap<u32, (String, u32, String, bool)>,
}

static SCHEMA: LazyLock<HashMap<String, Message>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("k8s-proto-schema.json"))
        .expect("k8s-proto-schema.json is valid (scripts/gen-k8s-proto-schema writes it)")
});

fn bad(why: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("the protobuf body could not be decoded: {why}"))
}

/// One field as it is on the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, ApiError> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i).ok_or_else(|| bad("truncated varint"))?;
        *i += 1;
        out |= u64::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(bad("varint too long"))
}

fn wire_fields(b: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ApiError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let number = u32::try_from(key >> 3).map_err(|_| bad("field number"))?;
        let take = |i: &mut usize, n: usize| -> Result<&[u8], ApiError> {
            let s = b.get(*i..*i + n).ok_or_else(|| bad("truncated field"))?;
            *i += n;
            Ok(s)
        };
        let value = match key & 7 {
            0 => Wire::Varint(varint(b, &mut i)?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                take(&mut i, 8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).map_err(|_| bad("length"))?;
                Wire::Bytes(take(&mut i, n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                take(&mut i, 4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(bad(format!("wire type {other}"))),
        };
        out.push((number, value));
    }
    Ok(out)
}

/// The protobuf package of an `apiVersion`: `v1` → `k8s.io.api.core.v1`,
/// `rbac.authorization.k8s.io/v1` → `k8s.io.api.rbac.v1`.
fn package(api_version: &str) -> String {
    match api_version.split_once('/') {
        None => format!("k8s.io.api.core.{api_version}"),
        Some((group, version)) => {
            format!(
                "k8s.io.api.{}.{version}",
                group.split('.').next().unwrap_or(group)
            )
        }
    }
}

/// Decodes a `application/vnd.kubernetes.protobuf` body to JSON.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 magic"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in wire_fields(rest)? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                for (n, w) in wire_fields(type_meta)? {
                    if let Wire::Bytes(s) = w {
                        let s = String::from_utf8_lossy(s).into_owned();
                        match n {
                            1 => api_version = s,
                            2 => kind = s,
                            _ => {}
                        }
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let name = format!("{}.{kind}", package(&api_version));
    if !SCHEMA.contains_key(&name) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "protobuf bodies of {api_version} {kind} are not supported; send JSON"
        )));
    }
    let mut obj = message(&name, raw)?;
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(api_version));
        m.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

fn go_duration(ns: i64) -> String {
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Kubernetes' special messages, which JSON writes as scalars.
fn special(name: &str, b: &[u8]) -> Result<Option<Value>, ApiError> {
    let f = wire_fields(b)?;
    let int = |n: u32| {
        f.iter().find_map(|(k, w)| match w {
            Wire::Varint(v) if *k == n => Some(*v as i64),
            _ => None,
        })
    };
    let bytes = |n: u32| {
        f.iter().find_map(|(k, w)| match w {
            Wire::Bytes(v) if *k == n => Some(*v),
            _ => None,
        })
    };
    Ok(Some(match name {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (secs, nanos) = (int(1).unwrap_or(0), int(2).unwrap_or(0));
            if secs == 0 && nanos == 0 {
                return Ok(Some(Value::Null));
            }
            let t = jiff::Timestamp::new(secs, nanos as i32).map_err(bad)?;
            json!(t.to_string())
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => match int(1).unwrap_or(0) {
            0 => json!(int(2).unwrap_or(0)),
            _ => json!(String::from_utf8_lossy(bytes(3).unwrap_or_default())),
        },
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            json!(String::from_utf8_lossy(bytes(1).unwrap_or_default()))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => json!(go_duration(int(1).unwrap_or(0))),
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => match bytes(1) {
            Some(raw) if !raw.is_empty() => serde_json::from_slice(raw).map_err(bad)?,
            _ => Value::Null,
        },
        _ => return Ok(None),
    }))
}

fn scalar(ty: u32, w: &Wire<'_>) -> Result<Value, ApiError> {
    Ok(match (ty, w) {
        (9, Wire::Bytes(b)) => json!(String::from_utf8_lossy(b)),
        (12, Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (8, Wire::Varint(v)) => json!(*v != 0),
        (3 | 5, Wire::Varint(v)) => json!(*v as i64),
        (4 | 13 | 14, Wire::Varint(v)) => json!(*v),
        (17 | 18, Wire::Varint(v)) => json!(((*v >> 1) as i64) ^ -((*v & 1) as i64)),
        (1, Wire::Fixed64(v)) => json!(f64::from_bits(*v)),
        (2, Wire::Fixed32(v)) => json!(f32::from_bits(*v)),
        (6, Wire::Fixed64(v)) => json!(*v),
        (16, Wire::Fixed64(v)) => json!(*v as i64),
        (7, Wire::Fixed32(v)) => json!(*v),
        (15, Wire::Fixed32(v)) => json!(*v as i32),
        (t, _) => return Err(bad(format!("a field of type {t} has the wrong wire type"))),
    })
}

/// Unpacks a packed repeated scalar field.
fn unpack(ty: u32, b: &[u8]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let w = match ty {
            1 | 6 | 16 => {
                let v = b.get(i..i + 8).ok_or_else(|| bad("packed"))?;
                i += 8;
                Wire::Fixed64(u64::from_le_bytes(v.try_into().expect("8 bytes")))
            }
            2 | 7 | 15 => {
                let v = b.get(i..i + 4).ok_or_else(|| bad("packed"))?;
                i += 4;
                Wire::Fixed32(u32::from_le_bytes(v.try_into().expect("4 bytes")))
            }
            _ => Wire::Varint(varint(b, &mut i)?),
        };
        out.push(scalar(ty, &w)?);
    }
    Ok(out)
}

/// Fields of the built-in types that are pointers in Go, where a zero or `false` is a value
/// the client set (protobuf carries pointers and plain values alike).
const POINTER_FIELDS: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "backoffLimit",
    "parallelism",
    "completions",
    "suspend",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "automountServiceAccountToken",
    "immutable",
    "readOnlyRootFilesystem",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "allowPrivilegeEscalation",
    "fsGroup",
    "tolerationSeconds",
    "deletionGracePeriodSeconds",
    "gracePeriodSeconds",
    "holderIdentity",
    "leaseDurationSeconds",
    "leaseTransitions",
    "ready",
    "serving",
    "terminating",
    "optional",
    "defaultMode",
    "mode",
    "priority",
    "shareProcessNamespace",
    "enableServiceLinks",
];

/// Whether Go's JSON encoding would leave `field` out: unset non-pointer fields arrive as
/// zero values in protobuf, and their `omitempty` JSON drops them.
fn omitted(field: &str, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(false) => !POINTER_FIELDS.contains(&field),
        Value::Number(n) => n.as_f64() == Some(0.0) && !POINTER_FIELDS.contains(&field),
        _ => false,
    }
}

fn message(name: &str, b: &[u8]) -> Result<Value, ApiError> {
    if let Some(v) = special(name, b)? {
        return Ok(v);
    }
    let schema = SCHEMA
        .get(name)
        .ok_or_else(|| bad(format!("unknown message {name}")))?;
    let mut out = Map::new();
    for (number, w) in wire_fields(b)? {
        // Fields this schema does not know (newer clients) are skipped, as protobuf does.
        let Some((field, ty, type_name, repeated)) = schema.fields.get(&number) else {
            continue;
        };
        let value = match (ty, &w) {
            (11, Wire::Bytes(inner)) => {
                let entry_schema = SCHEMA.get(type_name.as_str());
                if entry_schema.is_some_and(|m| m.map) {
                    let entry = message(type_name, inner)?;
                    let key = entry
                        .get("key")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let val = entry.get("value").cloned().unwrap_or(json!(""));
                    let map = out.entry(field.clone()).or_insert_with(|| json!({}));
                    if let Some(m) = map.as_object_mut() {
                        m.insert(key, val);
                    }
                    continue;
                }
                message(type_name, inner)?
            }
            (9 | 12, _) => scalar(*ty, &w)?,
            (_, Wire::Bytes(packed)) if *repeated => {
                let items = unpack(*ty, packed)?;
                let list = out.entry(field.clone()).or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.extend(items);
                }
                continue;
            }
            _ => scalar(*ty, &w)?,
        };
        if *repeated {
            let list = out.entry(field.clone()).or_insert_with(|| json!([]));
            if let Some(l) = list.as_array_mut() {
                l.push(value);
            }
        } else if !omitted(field, &value) {
            out.insert(field.clone(), value);
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    fn varint_field(n: u32, v: u8) -> Vec<u8> {
        vec![(n << 3) as u8, v]
    }

    #[test]
    fn a_configmap_as_kubectl_sends_it() {
        // ConfigMap{metadata{name "cfg", namespace "", labels{app: web}}, data{a: "1"}}
        let mut meta = field(1, b"cfg");
        meta.extend(field(3, b""));
        let mut label = field(1, b"app");
        label.extend(field(2, b"web"));
        meta.extend(field(11, &label));
        meta.extend(field(8, b"")); // a zero creationTimestamp
        let mut entry = field(1, b"a");
        entry.extend(field(2, b"1"));
        let mut raw = field(1, &meta);
        raw.extend(field(2, &entry));
        let mut type_meta = field(1, b"v1");
        type_meta.extend(field(2, b"ConfigMap"));
        let mut body = MAGIC.to_vec();
        body.extend(field(1, &type_meta));
        body.extend(field(2, &raw));
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"a": "1"}})
        );
    }

    #[test]
    fn special_types_and_bad_bodies() {
        let int_or_string = [varint_field(1, 0), varint_field(2, 80)].concat();
        assert_eq!(
            message(
                "k8s.io.apimachinery.pkg.util.intstr.IntOrString",
                &int_or_string
            )
            .unwrap(),
            json!(80)
        );
        let named = [varint_field(1, 1), field(3, b"http")].concat();
        assert_eq!(
            message("k8s.io.apimachinery.pkg.util.intstr.IntOrString", &named).unwrap(),
            json!("http")
        );
        assert_eq!(
            message(
                "k8s.io.apimachinery.pkg.api.resource.Quantity",
                &field(1, b"100m")
            )
            .unwrap(),
            json!("100m")
        );
        assert!(decode(b"not protobuf").is_err());
        assert!(decode(b"k8s\x00\x0a\xff").is_err());
        let mut type_meta = field(1, b"example.com/v1");
        type_meta.extend(field(2, b"Widget"));
        let mut body = MAGIC.to_vec();
        body.extend(field(1, &type_meta));
        assert!(matches!(
            decode(&body),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
    }
}
