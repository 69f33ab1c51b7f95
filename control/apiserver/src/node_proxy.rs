//! `pods/log`, `pods/exec` and `pods/attach`: the API server checks the request, finds the
//! pod's node, and proxies to that node's agent endpoint, as kube-apiserver proxies them to
//! the kubelet.
//!
//! The agent is reached at the node's first address of the types in [`ADDRESS_TYPES`] and the
//! port in `status.daemonEndpoints.kubeletEndpoint.Port`, over TLS: the agent's certificate
//! must chain to the cluster CA, and the API server presents the shared
//! [`flotilla_pki::NODE_CLIENT_USER`] certificate. Exec and attach are HTTP/1.1 upgrades
//! (WebSocket or SPDY): the upgrade request goes to the agent as it came, and once the agent
//! answers 101 the two connections are joined byte for byte.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::status::ApiError;

/// Node address types in the order the API server tries them. Kubernetes' default puts
/// Hostname first; node host names are often not resolvable from the masters, so (as many
/// clusters configure `--kubelet-preferred-address-types`) addresses come first here.
pub const ADDRESS_TYPES: [&str; 5] = [
    "InternalDNS",
    "InternalIP",
    "ExternalDNS",
    "ExternalIP",
    "Hostname",
];

/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Request headers that carry an upgrade to the agent.
const UPGRADE_REQUEST_HEADERS: [&str; 6] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
/// Response headers of an agent's 101 that go back to the client.
const UPGRADE_RESPONSE_HEADERS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Dials node agents.
#[derive(Clone)]
pub struct NodeClient {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient").finish_non_exhaustive()
    }
}

impl NodeClient {
    /// A client presenting the identity in `config` and trusting its roots.
    pub fn new(config: rustls::ClientConfig) -> NodeClient {
        NodeClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Sends `req` to the agent at `host:port` over a new connection.
    async fn send(
        &self,
        host: &str,
        port: u16,
        req: Request<Body>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::ServiceUnavailable(format!(
                "the node agent at {host}:{port} cannot be reached: {e}"
            ))
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| unreachable(&e))?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            self.tls.connect(name, tcp).await
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(&"timed out"))?
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node agent connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(|e| unreachable(&e))
    }
}

/// The container a request names (`container=`), else the pod's only one, else its
/// `kubectl.kubernetes.io/default-container`; anything else is a 400 that lists the choices.
fn container_of(pod: &Value, name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect()
    };
    let (main, init, ephemeral) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    if let Some(c) = wanted.filter(|c| !c.is_empty()) {
        if main.iter().chain(&init).chain(&ephemeral).any(|n| n == c) {
            return Ok(c.to_string());
        }
        return Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    let default = pod
        .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str);
    match (main.as_slice(), default) {
        (_, Some(d)) if main.iter().any(|n| n == d) => Ok(d.to_string()),
        ([only], _) => Ok(only.clone()),
        _ => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                main.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::BadRequest(msg))
        }
    }
}

/// Where the agent of `node` is reached.
fn agent_of(node: &Value) -> Result<(String, u16), ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host = ADDRESS_TYPES.iter().find_map(|t| {
        addresses
            .iter()
            .find(|a| a["type"] == *t)
            .and_then(|a| a["address"].as_str())
            .filter(|a| !a.is_empty())
    });
    match (host, u16::try_from(port)) {
        (Some(h), Ok(p)) if p > 0 => Ok((h.to_string(), p)),
        _ => Err(ApiError::ServiceUnavailable(format!(
            "node {name} publishes no agent endpoint (address and \
             status.daemonEndpoints.kubeletEndpoint.Port): its agent serves no logs or exec"
        ))),
    }
}

/// A query parameter's (first) value.
fn param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The pod, its container and the agent to ask, for a request on `pods/<name>/<sub>`.
async fn target<B: crate::storage::Backend>(
    api: &crate::http::Api<B>,
    ns: &str,
    name: &str,
    query: Option<&str>,
) -> Result<(String, String, u16), ApiError> {
    let pods = crate::resources::find("", "v1", "pods").expect("pods are served");
    let nodes = crate::resources::find("", "v1", "nodes").expect("nodes are served");
    let pod = api.storage().get(pods, Some(ns), name).await?;
    let container = container_of(&pod, name, param(query, "container").as_deref())?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?;
    let node = api.storage().get(nodes, None, node).await?;
    let (host, port) = agent_of(&node)?;
    Ok((container, host, port))
}

fn client<B: crate::storage::Backend>(api: &crate::http::Api<B>) -> Result<&NodeClient, ApiError> {
    api.node_client().ok_or_else(|| {
        ApiError::ServiceUnavailable(
            "this API server has no certificate for node agents (kubelet-client in its PKI \
             dir), so it cannot proxy logs or exec"
                .into(),
        )
    })
}

/// Percent-encodes a path segment (names are DNS labels, but be safe).
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Relays an agent's answer that is not a success: its `Status`, or its text in one.
async fn agent_failure(resp: hyper::Response<hyper::body::Incoming>) -> Response {
    let code = resp.status();
    let body = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024)
        .await
        .unwrap_or_default();
    if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["kind"] == "Status") {
        return (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let text = String::from_utf8_lossy(&body).trim().to_string();
    crate::http::error_response(&ApiError::Internal(format!(
        "the node agent answered {code}: {text}"
    )))
}

/// `GET pods/<name>/log`: the container's log from its node's agent, streamed as it comes
/// (with `follow=true`, until the container stops or the client goes).
pub async fn log<B: crate::storage::Backend>(
    api: &crate::http::Api<B>,
    ns: &str,
    name: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let client = client(api)?;
    let (container, host, port) = target(api, ns, name, query).await?;
    let mut uri = format!(
        "/containerLogs/{}/{}/{}",
        segment(ns),
        segment(name),
        segment(&container)
    );
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(q);
    }
    let req = Request::get(uri)
        .header(header::HOST, format!("{host}:{port}"))
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = client.send(&host, port, req).await?;
    if resp.status() != StatusCode::OK {
        return Ok(agent_failure(resp).await);
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        Body::new(resp.into_body()),
    )
        .into_response())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// `pods/<name>/exec` and `pods/<name>/attach` (`sub`): the client's upgrade request goes to
/// the agent; on its 101 both connections are joined.
pub async fn stream<B: crate::storage::Backend>(
    api: &crate::http::Api<B>,
    ns: &str,
    name: &str,
    sub: &str,
    mut req: Request<Body>,
) -> Result<Response, ApiError> {
    if !is_upgrade(req.headers()) {
        return Err(ApiError::BadRequest(format!(
            "{sub} needs a connection upgrade to a streaming protocol: WebSocket \
             (v5.channel.k8s.io or v4.channel.k8s.io) or SPDY/3.1 over HTTP/1.1"
        )));
    }
    let client = client(api)?;
    let query = req.uri().query().map(String::from);
    if param(query.as_deref(), "command").is_none() && sub == "exec" {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    let (container, host, port) = target(api, ns, name, query.as_deref()).await?;
    let mut uri = format!(
        "/{sub}/{}/{}/{}",
        segment(ns),
        segment(name),
        segment(&container)
    );
    if let Some(q) = query.as_deref().filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(q);
    }
    let method = if req.method() == Method::POST {
        Method::POST
    } else {
        Method::GET
    };
    let mut forward = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, format!("{host}:{port}"));
    for h in UPGRADE_REQUEST_HEADERS {
        for v in req.headers().get_all(h) {
            forward = forward.header(h, v.clone());
        }
    }
    let forward = forward
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let downstream = hyper::upgrade::on(&mut req);
    let mut resp = client.send(&host, port, forward).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(agent_failure(resp).await);
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for h in UPGRADE_RESPONSE_HEADERS {
        for v in resp.headers().get_all(h) {
            answer = answer.header(h, v.clone());
        }
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "exec/attach upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "exec/attach stream ended with an error");
        }
    });
    answer
        .header("x-flotilla-proxied", HeaderValue::from_static("agent"))
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_named_single_or_defaulted() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "app");
        let two = json!({"spec": {"containers": [{"name": "app"}, {"name": "side"}],
                                  "initContainers": [{"name": "init"}]}});
        let err = container_of(&two, "p", None).unwrap_err().to_string();
        assert_eq!(
            err,
            "a container name must be specified for pod p, choose one of: [app side] or one \
             of the init containers: [init]"
        );
        assert_eq!(container_of(&two, "p", Some("init")).unwrap(), "init");
        let err = container_of(&two, "p", Some("db")).unwrap_err().to_string();
        assert_eq!(err, "container db is not valid for pod p");
        let mut defaulted = two.clone();
        defaulted["metadata"] =
            json!({"annotations": {"kubectl.kubernetes.io/default-container": "side"}});
        assert_eq!(container_of(&defaulted, "p", None).unwrap(), "side");
    }

    #[test]
    fn the_agent_is_found_by_address_type_and_port() {
        let node = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n1"},
                          {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(agent_of(&node).unwrap(), ("10.0.0.5".to_string(), 10250));
        let mut no_port = node.clone();
        no_port["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(0);
        let err = agent_of(&no_port).unwrap_err();
        assert!(matches!(err, ApiError::ServiceUnavailable(_)), "{err}");
    }
}
