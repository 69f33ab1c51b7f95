//! Randomized inputs for the decoders that read what clients send: none may panic, whatever
//! the bytes (protobuf, JSON and YAML bodies, strategic merge patches, JSON patches,
//! selectors, URL paths and query strings, and new objects through defaulting and validation).
//! Deterministic (a fixed-seed generator), so a failure reproduces.

#![cfg(test)]

use serde_json::{json, Value};

/// xorshift64*: small, deterministic, good enough to shake decoders.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn text(&mut self, alphabet: &[u8], max: u64) -> String {
        let n = self.below(max);
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len() as u64) as usize] as char)
            .collect()
    }

    fn value(&mut self, depth: u32) -> Value {
        let keys = [
            "a",
            "name",
            "containers",
            "ports",
            "$patch",
            "$setElementOrder/containers",
            "$retainKeys",
            "$deleteFromPrimitiveList/finalizers",
            "finalizers",
            "port",
        ];
        match if depth == 0 {
            self.below(4)
        } else {
            self.below(7)
        } {
            0 => Value::Null,
            1 => json!(self.below(3) == 0),
            2 => json!(self.below(100)),
            3 => json!(["replace", "delete", "merge", "x"][self.below(4) as usize]),
            4 | 5 => {
                let n = self.below(4);
                let mut m = serde_json::Map::new();
                for _ in 0..n {
                    let k = keys[self.below(keys.len() as u64) as usize];
                    m.insert(k.into(), self.value(depth - 1));
                }
                Value::Object(m)
            }
            _ => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
        }
    }
}

#[test]
fn protobuf_bodies_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000 {
        let mut body = b"k8s\x00".to_vec();
        if i % 2 == 0 {
            // A valid envelope around random object bytes.
            let kinds: [&[u8]; 3] = [b"ConfigMap", b"Deployment", b"Pod"];
            let kind = kinds[rng.below(3) as usize];
            let api = if kind == b"Deployment" {
                &b"apps/v1"[..]
            } else {
                &b"v1"[..]
            };
            let mut tm = vec![0x0a, api.len() as u8];
            tm.extend_from_slice(api);
            tm.extend_from_slice(&[0x12, kind.len() as u8]);
            tm.extend_from_slice(kind);
            body.extend_from_slice(&[0x0a, tm.len() as u8]);
            body.extend(tm);
            let raw = rng.bytes(200);
            body.push(0x12);
            body.push(raw.len() as u8);
            body.extend(raw);
        } else {
            body.extend(rng.bytes(300));
        }
        let _ = crate::protobuf::decode(&body);
    }
}

#[test]
fn patches_and_selectors_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let original = rng.value(4);
        let patch = rng.value(4);
        let _ = crate::smp::apply(&original, &patch);
        for ct in [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ] {
            let _ = crate::objects::apply_patch(ct, &original, &patch);
        }
        let sel = rng.text(b"ab=!,() in notin!x.-/", 30);
        if let Ok(s) = crate::selectors::LabelSelector::parse(&sel) {
            let _ = s.matches(Some(&original));
        }
        if let Ok(s) = crate::selectors::FieldSelector::parse(&sel) {
            let _ = s.matches(&original);
        }
    }
}

#[test]
fn yaml_bodies_paths_and_queries_never_panic() {
    let mut rng = Rng(7);
    let yaml = b"ab: -[]{}\n\"'&*!|>#%@`,?~0.9e";
    let path = b"/apisv1namespacepodsx-.%_";
    let query = b"watch=1&resourceVersion0Match=ExactlabelSelectortimeoutSeconds%+-";
    for _ in 0..20_000 {
        let _ = crate::http::parse_yaml(rng.text(yaml, 80).as_bytes());
        let _ = crate::http::parse_yaml(&rng.bytes(60));
        let _ = crate::http::parse_path(&rng.text(path, 60));
        let _ = crate::http::parse_query(Some(&rng.text(query, 80)));
    }
    // Deeply nested documents are refused, not a stack overflow.
    let deep = "[".repeat(100_000);
    assert!(crate::http::parse_yaml(deep.as_bytes()).is_err());
}

#[test]
fn new_objects_of_every_kind_never_panic_defaulting_or_validation() {
    let mut rng = Rng(2024);
    for _ in 0..3_000 {
        for res in crate::resources::RESOURCES {
            let mut obj = json!({"metadata": {"name": "x"}, "spec": rng.value(3)});
            if rng.below(2) == 0 {
                obj["status"] = rng.value(2);
            }
            let ns = res.namespaced.then_some("default");
            if let Ok(mut o) = crate::objects::prepare_create(res, ns, obj) {
                let strict = crate::validation::Mode::Strict;
                let _ = crate::validation::check(res.kind, &mut o.clone(), strict);
                let _ = crate::validation::check(res.kind, &mut o, Default::default());
                let _ = crate::table::table(res.kind, &[o], None, crate::table::Include::Object);
            }
        }
    }
}
