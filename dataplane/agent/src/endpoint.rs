//! The agent's own HTTPS endpoint, which the API servers proxy `pods/log`, `pods/exec` and
//! `pods/attach` to (kubelet's paths: `/containerLogs/<ns>/<pod>/<container>`,
//! `/exec/<ns>/<pod>/<container>`, `/attach/<ns>/<pod>/<container>`).
//!
//! TLS always; a client must present a certificate from the cluster CA naming the API
//! servers' user ([`flotilla_pki::NODE_CLIENT_USER`]): nobody else may read logs or run
//! commands through a node's agent.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::logs::{self, LogOptions};

/// The WebSocket subprotocols of exec and attach this endpoint speaks (kubectl 1.30+ asks
/// for v5, the Python client for v4).
pub const STREAM_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What the endpoint serves from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The root of the containers' CRI log files ([`crate::logs`]).
    pub logs: PathBuf,
    /// Why commands cannot run in containers here, if they cannot: simulated nodes run no
    /// processes.
    pub no_exec: Option<String>,
}

/// A Kubernetes `Status` failure response.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Failure", "message": message, "reason": reason,
                      "code": code.as_u16()});
    (code, axum::Json(body)).into_response()
}

/// The routes, for a client that has been authenticated as the API servers.
pub fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(stream_command).post(stream_command),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            get(stream_command).post(stream_command),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such path on a node agent",
            )
        })
        .with_state(Arc::new(endpoint))
}

async fn container_logs(
    State(ep): State<Arc<Endpoint>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let opts = match LogOptions::from_query(query.as_deref().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let path = match logs::find(&ep.logs, &ns, &pod, &container, opts.previous) {
        Ok(p) => p,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(logs::stream(path, opts, tx));
    let body = futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |chunk| {
        Ok::<_, std::io::Error>(axum::body::Bytes::from(chunk))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Exec and attach. A WebSocket client (channel protocol v4/v5) gets its answer on the error
/// channel, as a Status; SPDY (kubectl 1.29 and older) is not spoken here and is refused with
/// a Status that says so.
async fn stream_command(
    State(ep): State<Arc<Endpoint>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let why = match &ep.no_exec {
        Some(why) => {
            format!("cannot run commands in container \"{container}\" of pod \"{ns}/{pod}\": {why}")
        }
        None => format!(
            "cannot run commands in container \"{container}\" of pod \"{ns}/{pod}\": this agent \
             runs no containers"
        ),
    };
    let Ok(ws) = ws else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "{why} (and this endpoint speaks WebSocket {} for exec and attach, not SPDY)",
                STREAM_PROTOCOLS.join("/")
            ),
        );
    };
    ws.protocols(STREAM_PROTOCOLS)
        .on_upgrade(move |mut socket| async move {
            // Channel 3 carries the outcome as a Status (v4 and v5 alike).
            let outcome = json!({"metadata": {}, "status": "Failure", "message": why,
                                 "reason": "InternalError",
                                 "details": {"causes": [{"message": why}]}});
            let mut frame = vec![3u8];
            frame.extend_from_slice(outcome.to_string().as_bytes());
            let _ = socket.send(Message::Binary(frame.into())).await;
            // A normal closure (1000): clients read the end of every stream, not an error.
            let normal = axum::extract::ws::CloseFrame {
                code: axum::extract::ws::close_code::NORMAL,
                reason: "".into(),
            };
            let _ = socket.send(Message::Close(Some(normal))).await;
        })
}

/// Serves `endpoint` over TLS on `listener` until `shutdown` completes. Connections whose
/// certificate does not name the API servers' user get 403 on every request.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(endpoint);
    let refused = Router::new().fallback(|| async {
        status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "only the API servers (user {}) may use a node agent's endpoint",
                flotilla_pki::NODE_CLIENT_USER
            ),
        )
    });
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "agent endpoint: accept failed");
                    continue;
                }
            },
        };
        let (acceptor, app, refused) = (acceptor.clone(), app.clone(), refused.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "agent endpoint: TLS handshake failed");
                    return;
                }
            };
            let apiserver = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| flotilla_pki::subject_of(c.as_ref()))
                .is_some_and(|(user, _)| user == flotilla_pki::NODE_CLIENT_USER);
            let service = TowerToHyperService::new(if apiserver { app } else { refused });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}
