//! The endpoints of the `default/kubernetes` Service: every live API server.
//!
//! As Kubernetes' lease endpoint reconciler, every master (not only the leader) keeps a Lease
//! `kube-system/apiserver-<master>` labelled `apiserver.kubernetes.io/identity=kube-apiserver`
//! and annotated with the address it serves on, renewed every 10 s for 30 s; and writes the
//! `default/kubernetes` Endpoints and EndpointSlice from the Leases that have not expired, so a
//! master that dies drops out within 30 s, and one that stops cleanly deletes its Lease and
//! drops out at once. Unchanged endpoints are not rewritten (the API server skips no-op
//! updates), so the masters' reconciles do not fight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{json, Value};

/// The label on API server Leases.
pub const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
/// The annotation with the address a master serves the API on.
pub const ENDPOINT_ANNOTATION: &str = "flotilla.dev/api-endpoint";
const RENEW: Duration = Duration::from_secs(10);
const TTL_SECS: i32 = 30;

/// The live API servers' addresses among `leases` at `now`, sorted.
pub fn live(leases: &[Lease], now: Timestamp) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = leases
        .iter()
        .filter(|l| {
            let spec = l.spec.as_ref();
            let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
            let ttl = spec
                .and_then(|s| s.lease_duration_seconds)
                .unwrap_or(TTL_SECS);
            renewed.is_some_and(|r| {
                r.checked_add(SignedDuration::from_secs(i64::from(ttl)))
                    .is_ok_and(|until| until > now)
            })
        })
        .filter_map(|l| {
            l.metadata
                .annotations
                .as_ref()?
                .get(ENDPOINT_ANNOTATION)?
                .parse()
                .ok()
        })
        .collect();
    out.sort();
    out
}

/// The `default/kubernetes` Endpoints subsets for `servers` (one subset per port).
pub fn subsets(servers: &[SocketAddr]) -> Value {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for s in servers {
        by_port
            .entry(s.port())
            .or_default()
            .push(s.ip().to_string());
    }
    json!(by_port
        .into_iter()
        .map(|(port, ips)| json!({
            "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }))
        .collect::<Vec<_>>())
}

async fn renew(
    leases: &Api<Lease>,
    name: &str,
    identity: &str,
    addr: SocketAddr,
) -> Result<(), kube::Error> {
    let mut lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {IDENTITY_LABEL: "kube-apiserver"},
                     "annotations": {ENDPOINT_ANNOTATION: addr.to_string()}},
    }))
    .map_err(kube::Error::SerdeError)?;
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(TTL_SECS),
        renew_time: Some(MicroTime(Timestamp::now())),
        ..Default::default()
    });
    crate::runner::upsert(leases, name, lease).await
}

/// Writes `object` (JSON of a `K` named `name`) through `api`, creating it if needed.
async fn upsert<K>(api: &Api<K>, name: &str, object: Value) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
    crate::runner::upsert(api, name, object).await
}

async fn live_servers(leases: &Api<Lease>) -> Result<Vec<SocketAddr>, kube::Error> {
    let list = leases
        .list(&ListParams::default().labels(&format!("{IDENTITY_LABEL}=kube-apiserver")))
        .await?
        .items;
    Ok(live(&list, Timestamp::now()))
}

/// Writes the endpoints from the live Leases. Every master does this, so one that listed the
/// Leases before another master's Lease appeared can overwrite newer endpoints; each therefore
/// lists again after writing and writes again while the live set moved under it, so the last
/// writer always leaves the current set.
async fn reconcile(client: &kube::Client, leases: &Api<Lease>) -> Result<(), kube::Error> {
    let mut servers = live_servers(leases).await?;
    for _ in 0..5 {
        write_endpoints(client, &servers).await?;
        let now = live_servers(leases).await?;
        if now == servers {
            break;
        }
        servers = now;
    }
    Ok(())
}

async fn write_endpoints(client: &kube::Client, servers: &[SocketAddr]) -> Result<(), kube::Error> {
    let labels = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
    upsert(
        &Api::<Endpoints>::namespaced(client.clone(), "default"),
        "kubernetes",
        json!({"metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
               "subsets": subsets(servers)}),
    )
    .await?;
    // One EndpointSlice per port (a slice has one port list): `kubernetes` for the first,
    // `kubernetes-<port>` for others; slices of ports no longer served go.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for s in servers {
        by_port
            .entry(s.port())
            .or_default()
            .push(s.ip().to_string());
    }
    let mut wanted = Vec::new();
    for (i, (port, ips)) in by_port.iter().enumerate() {
        let name = if i == 0 {
            "kubernetes".to_string()
        } else {
            format!("kubernetes-{port}")
        };
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        upsert(
            &slices,
            &name,
            json!({"metadata": {"name": name, "namespace": "default",
                                "labels": {"kubernetes.io/service-name": "kubernetes"}},
                   "addressType": "IPv4", "endpoints": endpoints,
                   "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
        )
        .await?;
        wanted.push(name);
    }
    let existing = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await?;
    for slice in existing.items {
        let name = slice.metadata.name.unwrap_or_default();
        if !wanted.contains(&name) && (name == "kubernetes" || name.starts_with("kubernetes-")) {
            if let Err(e) = slices.delete(&name, &DeleteParams::default()).await {
                tracing::debug!(error = %e, slice = %name, "apiserver endpoints: removing a slice");
            }
        }
    }
    Ok(())
}

/// Advertises master `identity`, serving the API on `addr`, until `shutdown` completes; then
/// deletes its Lease and takes it out of the endpoints.
pub async fn run(
    client: kube::Client,
    identity: &str,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let name = format!("apiserver-{identity}");
    let work = async {
        loop {
            // Until the API takes the writes (at start), try again every second.
            let mut next = RENEW;
            if let Err(e) = renew(&leases, &name, identity, addr).await {
                tracing::debug!(error = %e, "apiserver endpoints: renewing the Lease");
                next = Duration::from_secs(1);
            }
            if let Err(e) = reconcile(&client, &leases).await {
                tracing::debug!(error = %e, "apiserver endpoints: writing default/kubernetes");
                next = Duration::from_secs(1);
            }
            tokio::time::sleep(next).await;
        }
    };
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
    if let Err(e) = leases.delete(&name, &DeleteParams::default()).await {
        tracing::debug!(error = %e, "apiserver endpoints: deleting the Lease");
    }
    if let Err(e) = reconcile(&client, &leases).await {
        tracing::debug!(error = %e, "apiserver endpoints: writing default/kubernetes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(addr: &str, renewed: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "apiserver-x", "annotations": {ENDPOINT_ANNOTATION: addr}},
            "spec": {"holderIdentity": "x", "leaseDurationSeconds": 30, "renewTime": renewed},
        }))
        .unwrap()
    }

    #[test]
    fn only_unexpired_leases_count_and_ports_group_addresses() {
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let leases = [
            lease("127.0.0.1:6443", "2026-06-01T11:59:50.000000Z"),
            lease("10.0.0.2:6443", "2026-06-01T11:59:45.000000Z"),
            lease("127.0.0.1:7443", "2026-06-01T11:59:55.000000Z"),
            lease("10.0.0.9:6443", "2026-06-01T11:59:00.000000Z"),
        ];
        let servers = live(&leases, now);
        assert_eq!(servers.len(), 3, "the lease renewed a minute ago expired");
        let s = subsets(&servers);
        assert_eq!(s[0]["ports"][0]["port"], 6443);
        assert_eq!(s[0]["addresses"].as_array().unwrap().len(), 2);
        assert_eq!(s[1]["ports"][0]["port"], 7443);
    }
}
