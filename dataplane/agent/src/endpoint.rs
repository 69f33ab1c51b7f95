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
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::logs::{self, LogOptions};
use crate::spdy;

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

/// Exec and attach. The answer goes on the error channel as a Status, over WebSocket (channel
/// protocol v5/v4: kubectl 1.30+, the Python client) or SPDY/3.1 (kubectl 1.29 and older).
async fn stream_command(
    State(ep): State<Arc<Endpoint>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
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
    // The outcome as a Status (v4 and v5 alike).
    let outcome = json!({"metadata": {}, "status": "Failure", "message": why,
                         "reason": "InternalError",
                         "details": {"causes": [{"message": why}]}});
    if upgrades_to_spdy(req.headers()) {
        return spdy_upgrade(req, query.as_deref(), outcome);
    }
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "{why} (and this request upgrades to neither WebSocket {} nor SPDY/3.1: {e})",
                    STREAM_PROTOCOLS.join("/")
                ),
            )
        }
    };
    let tty = flag(query.as_deref(), "tty");
    ws.protocols(STREAM_PROTOCOLS)
        .on_upgrade(move |mut socket| async move {
            // With a terminal the client sends its size (channel 4) first thing; take it
            // before closing, or its write meets a closed socket (and kubectl logs that).
            if tty {
                let sized = async {
                    while let Some(Ok(m)) = socket.recv().await {
                        if matches!(&m, Message::Binary(b) if b.first() == Some(&4)) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), sized).await;
            }
            // Channel 3 carries the outcome.
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

/// The channel protocols spoken over SPDY, preferred first: v4 sends a Status on the error
/// stream, v3 and v2 the message as text.
pub const SPDY_STREAM_PROTOCOLS: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];

/// How long a SPDY client may take to open its streams.
const SPDY_STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `headers` ask for an upgrade to SPDY/3.1.
fn upgrades_to_spdy(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("SPDY/3.1"))
}

/// A query flag such as `stdin=true` (kubectl) or `stdin=1` (kubelet's own form).
fn flag(query: Option<&str>, key: &str) -> bool {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| k == key && (v == "1" || v.eq_ignore_ascii_case("true")))
}

/// Answers a SPDY upgrade with 101 and the channel protocol chosen from the client's
/// `X-Stream-Protocol-Version`s, then serves the session: a reply to each stream the client
/// opens and, once they are all open, `outcome` on the error stream and the end of every
/// stream.
fn spdy_upgrade(mut req: Request, query: Option<&str>, outcome: serde_json::Value) -> Response {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(protocol) = SPDY_STREAM_PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
    else {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
                 server supports {SPDY_STREAM_PROTOCOLS:?}"
            ),
        );
    };
    // Error, then each of stdin, stdout, stderr asked for, and resize with a TTY.
    let expected = 1 + ["stdin", "stdout", "stderr", "tty"]
        .into_iter()
        .filter(|k| flag(query, k))
        .count();
    let message = if protocol == SPDY_STREAM_PROTOCOLS[0] {
        outcome.to_string().into_bytes()
    } else {
        outcome["message"]
            .as_str()
            .unwrap_or("")
            .as_bytes()
            .to_vec()
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade failed");
                return;
            }
        };
        if let Err(e) = spdy_outcome(io, expected, &message).await {
            tracing::debug!(error = %e, "SPDY session ended with an error");
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(axum::body::Body::empty())
        .expect("a valid response")
}

/// One SPDY session of a command that cannot run: replies to the client's streams until
/// `expected` are open (or a second passes without another once the error stream is), then
/// writes `message` on the error stream, ends every stream, and says goodbye.
async fn spdy_outcome<S>(io: S, expected: usize, message: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut r, mut w) = tokio::io::split(io);
    let mut codec = spdy::HeaderCodec::new();
    // Stream ids and their `streamtype`s, as opened.
    let mut streams: Vec<(u32, String)> = Vec::new();
    let has_error = |s: &[(u32, String)]| s.iter().any(|(_, t)| t == "error");
    loop {
        if has_error(&streams) && streams.len() >= expected {
            break;
        }
        let wait = if has_error(&streams) {
            Duration::from_secs(1)
        } else {
            SPDY_STREAMS_TIMEOUT
        };
        let frame = match tokio::time::timeout(wait, spdy::read_frame(&mut r)).await {
            Err(_) if has_error(&streams) => break,
            Err(_) => return Ok(()),
            Ok(frame) => match frame? {
                Some(f) => f,
                None => return Ok(()),
            },
        };
        let spdy::Frame::Control { kind, payload, .. } = frame else {
            continue; // stdin or resize data: nothing runs to take it
        };
        match kind {
            spdy::SYN_STREAM => {
                let id = spdy::stream_of(&payload)?;
                let headers = codec.decode(spdy::syn_stream_block(&payload)?)?;
                let kind = headers
                    .into_iter()
                    .find(|(n, _)| n == "streamtype")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                w.write_all(&spdy::syn_reply(id, &codec.encode(&[])))
                    .await?;
                streams.push((id, kind));
            }
            spdy::PING => w.write_all(&spdy::control(spdy::PING, 0, &payload)).await?,
            spdy::GOAWAY => return Ok(()),
            _ => {}
        }
    }
    // With a terminal the client sends its size as soon as the resize stream is open; take it
    // before ending, or its write meets a closed connection (and kubectl logs an EOF).
    if let Some(resize) = streams
        .iter()
        .find(|(_, t)| t == "resize")
        .map(|(id, _)| *id)
    {
        let sized = async {
            while let Some(frame) = spdy::read_frame(&mut r).await? {
                if matches!(frame, spdy::Frame::Data { stream, .. } if stream == resize) {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), sized).await;
    }
    for (id, kind) in &streams {
        let body: &[u8] = if kind == "error" { message } else { b"" };
        w.write_all(&spdy::data(*id, true, body)).await?;
    }
    let last = streams.iter().map(|(id, _)| *id).max().unwrap_or(0);
    w.write_all(&spdy::goaway(last)).await?;
    w.shutdown().await
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn spdy_upgrades_and_flags_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "SPDY/3.1".parse().unwrap());
        assert!(upgrades_to_spdy(&h));
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!upgrades_to_spdy(&h));
        let q = Some("command=ls&stdin=true&stdout=1&stderr=false");
        assert!(flag(q, "stdin") && flag(q, "stdout"));
        assert!(!flag(q, "stderr") && !flag(q, "tty"));
    }

    /// A client as kubectl's SPDY executor: opens error, stdout and stderr streams, waits
    /// for their replies, and reads until the server is done.
    #[tokio::test]
    async fn a_spdy_session_replies_to_each_stream_and_ends_them_with_the_outcome() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(spdy_outcome(server, 3, b"{\"status\":\"Failure\"}"));
        let (mut r, mut w) = tokio::io::split(client);
        let mut codec = spdy::HeaderCodec::new();
        for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
            let block = codec.encode(&[("streamType", kind)]);
            w.write_all(&spdy::syn_stream(id, &block)).await.unwrap();
            if id == 1 {
                // A ping while streams open is answered in turn.
                let ping = spdy::control(spdy::PING, 0, &[0, 0, 0, 1]);
                w.write_all(&ping).await.unwrap();
            }
        }
        let (mut replies, mut ended, mut error, mut pong, mut goaway) =
            (Vec::new(), Vec::new(), Vec::new(), false, false);
        while let Some(frame) = spdy::read_frame(&mut r).await.unwrap() {
            match frame {
                spdy::Frame::Control { kind, payload, .. } => match kind {
                    spdy::SYN_REPLY => {
                        replies.push(spdy::stream_of(&payload).unwrap());
                        let headers = codec.decode(&payload[4..]).unwrap();
                        assert!(headers.is_empty(), "{headers:?}");
                    }
                    spdy::PING => pong = payload == [0, 0, 0, 1],
                    spdy::GOAWAY => goaway = true,
                    other => panic!("control frame {other}"),
                },
                spdy::Frame::Data {
                    stream,
                    flags,
                    payload,
                } => {
                    assert_eq!(flags, spdy::FLAG_FIN);
                    if stream == 1 {
                        error = payload;
                    }
                    ended.push(stream);
                }
            }
        }
        session.await.unwrap().unwrap();
        assert_eq!(replies, [1, 3, 5]);
        assert_eq!(ended, [1, 3, 5]);
        assert_eq!(error, b"{\"status\":\"Failure\"}");
        assert!(pong && goaway);
    }

    /// A client that opens only the error stream gets its answer a second later; one that
    /// sends garbage ends the session with an error, and one that goes away ends it quietly.
    #[tokio::test]
    async fn spdy_sessions_end_on_fewer_streams_garbage_or_a_gone_client() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(spdy_outcome(server, 3, b"no"));
        let (mut r, mut w) = tokio::io::split(client);
        let mut codec = spdy::HeaderCodec::new();
        let block = codec.encode(&[("streamtype", "error")]);
        w.write_all(&spdy::syn_stream(1, &block)).await.unwrap();
        let mut data = Vec::new();
        while let Some(frame) = spdy::read_frame(&mut r).await.unwrap() {
            if let spdy::Frame::Data { payload, .. } = frame {
                data = payload;
            }
        }
        assert_eq!(data, b"no");
        session.await.unwrap().unwrap();

        let (client, server) = tokio::io::duplex(1024);
        let session = tokio::spawn(spdy_outcome(server, 3, b"no"));
        let (_r, mut w) = tokio::io::split(client);
        w.write_all(&[0x80, 2, 0, 1, 0, 0, 0, 0]).await.unwrap();
        assert!(session.await.unwrap().is_err());

        let (client, server) = tokio::io::duplex(1024);
        let session = tokio::spawn(spdy_outcome(server, 3, b"no"));
        drop(client);
        session.await.unwrap().unwrap();
    }
}
