//! Service admission: ClusterIPs from the service range (10.96.0.0/12) and NodePorts from
//! 30000–32767, never handed out twice, released when the Service goes.
//!
//! Each allocation is a key in the store (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created in the same transaction as the
//! Service, so two masters can never give the same address to two Services: the loser's
//! transaction fails and it picks again.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::resources::Resource;
use crate::status::ApiError;
use crate::storage::{Backend, Storage};

/// The service range.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The `kubernetes` Service's address: the first of the range.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

fn ip_key(ip: Ipv4Addr) -> Vec<u8> {
    format!("{IP_PREFIX}{ip}").into_bytes()
}

fn port_key(port: u16) -> Vec<u8> {
    format!("{PORT_PREFIX}{port}").into_bytes()
}

fn in_range(ip: Ipv4Addr) -> bool {
    let (base, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base)
}

fn invalid(name: &str, field: &str, msg: String) -> ApiError {
    ApiError::Invalid {
        kind: "Service".into(),
        name: name.into(),
        causes: vec![(field.into(), msg)],
    }
}

fn random_ip(used: &[Vec<u8>]) -> Option<Ipv4Addr> {
    let (base, bits) = SERVICE_CIDR;
    let size = 1u32 << (32 - bits);
    let start = rand::random::<u32>() % size;
    (0..size)
        .map(|i| Ipv4Addr::from(u32::from(base) + (start + i) % size))
        .filter(|ip| {
            let last = u32::from(*ip) - u32::from(base);
            last != 0 && last != size - 1 && *ip != KUBERNETES_SERVICE_IP
        })
        .find(|ip| !used.contains(&ip_key(*ip)))
}

fn random_port(used: &[Vec<u8>], taken_here: &[u16]) -> Option<u16> {
    let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
    let start = rand::random::<u32>() % span;
    (0..span)
        .map(|i| NODE_PORTS.start() + ((start + i) % span) as u16)
        .find(|p| !used.contains(&port_key(*p)) && !taken_here.contains(p))
}

/// Defaults and allocations for a new Service; returns the claims to create with it.
fn admit(svc: &mut Value, ips: &[Vec<u8>], ports: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, ApiError> {
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !svc.get("spec").is_some_and(Value::is_object) {
        svc["spec"] = json!({});
    }
    let spec = svc["spec"].as_object_mut().expect("an object");
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if !matches!(
        ty.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(invalid(
            &name,
            "spec.type",
            format!("Unsupported value: {ty:?}"),
        ));
    }
    spec.insert("type".into(), json!(ty));
    let mut claims = Vec::new();
    if ty == "ExternalName" {
        return Ok(claims);
    }
    spec.entry("sessionAffinity").or_insert(json!("None"));
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    spec.entry("internalTrafficPolicy")
        .or_insert(json!("Cluster"));
    if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in list.iter_mut() {
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
            if p.get("targetPort").is_none() {
                p["targetPort"] = p.get("port").cloned().unwrap_or(json!(0));
            }
        }
    }
    let asked = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ip = match asked.as_str() {
        "None" => None,
        "" => Some(random_ip(ips).ok_or_else(|| {
            invalid(
                &name,
                "spec.clusterIP",
                "Internal error: the service range is full".into(),
            )
        })?),
        given => {
            let ip: Ipv4Addr = given.parse().map_err(|_| {
                invalid(
                    &name,
                    "spec.clusterIP",
                    format!("Invalid value: {given:?}: must be a valid IP address"),
                )
            })?;
            if !in_range(ip) {
                return Err(invalid(
                    &name,
                    "spec.clusterIPs",
                    format!("Invalid value: {given:?}: provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
                ));
            }
            Some(ip)
        }
    };
    match ip {
        Some(ip) => {
            spec.insert("clusterIP".into(), json!(ip.to_string()));
            spec.insert("clusterIPs".into(), json!([ip.to_string()]));
            claims.push(ip_key(ip));
        }
        None => {
            spec.insert("clusterIP".into(), json!("None"));
            spec.insert("clusterIPs".into(), json!(["None"]));
        }
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
        let mut here = Vec::new();
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let port = match p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) {
                0 => random_port(ports, &here).ok_or_else(|| {
                    invalid(
                        &name,
                        "spec.ports.nodePort",
                        "Internal error: the NodePort range is full".into(),
                    )
                })?,
                n => {
                    let n = u16::try_from(n).ok().filter(|n| NODE_PORTS.contains(n)).ok_or_else(|| {
                        invalid(&name, "spec.ports.nodePort", format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767"))
                    })?;
                    if here.contains(&n) {
                        return Err(invalid(
                            &name,
                            "spec.ports.nodePort",
                            format!("Duplicate value: {n}"),
                        ));
                    }
                    n
                }
            };
            p["nodePort"] = json!(port);
            here.push(port);
            claims.push(port_key(port));
        }
    }
    Ok(claims)
}

/// The allocation records a stored Service holds.
pub fn claims_of(svc: &Value) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
    {
        out.push(ip_key(ip));
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(port) = p
            .get("nodePort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
        {
            if port != 0 {
                out.push(port_key(port));
            }
        }
    }
    out
}

/// Creates a Service with its ClusterIP and NodePorts; allocations that another Service took
/// meanwhile are picked again, ones the client asked for are refused with 422.
pub async fn create_service<B: Backend>(
    storage: &Storage<B>,
    res: &Resource,
    ns: Option<&str>,
    svc: Value,
) -> Result<Value, ApiError> {
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    for _ in 0..8 {
        let ips = storage.keys(IP_PREFIX).await?;
        let ports = storage.keys(PORT_PREFIX).await?;
        let mut candidate = svc.clone();
        let claims = admit(&mut candidate, &ips, &ports)?;
        match storage
            .create_claiming(res, ns, &candidate, &claims)
            .await?
        {
            Ok(created) => return Ok(created),
            Err(taken) => {
                let asked_ip = svc
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty() && s != "None");
                let asked_port = svc
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|p| p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) != 0);
                let ip_taken = taken.iter().any(|k| k.starts_with(IP_PREFIX.as_bytes()));
                if (ip_taken && asked_ip) || (!ip_taken && asked_port) {
                    let what =
                        String::from_utf8_lossy(taken.first().map_or(&[][..], |k| k.as_slice()))
                            .rsplit('/')
                            .next()
                            .unwrap_or("")
                            .to_string();
                    return Err(invalid(
                        &name,
                        if ip_taken {
                            "spec.clusterIPs"
                        } else {
                            "spec.ports.nodePort"
                        },
                        format!(
                            "Invalid value: {what:?}: provided {} is already allocated",
                            if ip_taken { "IP" } else { "port" }
                        ),
                    ));
                }
            }
        }
    }
    Err(ApiError::Internal(
        "could not allocate an address for the Service; retry".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_and_node_ports_come_from_their_ranges() {
        let mut svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort",
            "ports": [{"port": 80}, {"port": 443, "nodePort": 30443}]}});
        let claims = admit(&mut svc, &[], &[]).unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(in_range(ip) && ip != KUBERNETES_SERVICE_IP);
        let np = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORTS.contains(&np) && np != 30443);
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30443);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(claims.len(), 3);
        assert_eq!(claims_of(&svc).len(), 3);

        let mut headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        assert!(admit(&mut headless, &[], &[]).unwrap().is_empty());
        let mut outside = json!({"metadata": {"name": "o"}, "spec": {"clusterIP": "192.168.0.1"}});
        assert!(matches!(
            admit(&mut outside, &[], &[]),
            Err(ApiError::Invalid { .. })
        ));
        let mut bad_port = json!({"metadata": {"name": "p"}, "spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}});
        assert!(matches!(
            admit(&mut bad_port, &[], &[]),
            Err(ApiError::Invalid { .. })
        ));
    }

    #[test]
    fn a_used_address_is_never_picked() {
        let used: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| ip_key(Ipv4Addr::from(u32::from(SERVICE_CIDR.0) + i)))
            .collect();
        for _ in 0..50 {
            let ip = random_ip(&used).unwrap();
            assert!(!used.contains(&ip_key(ip)));
        }
    }
}
