//! Serving the API over TLS: each connection's client certificate becomes the [`User`] of its
//! requests (CN = user name, O = groups), as on Kubernetes.

use std::future::Future;
use std::sync::Arc;

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::User;

/// The user a client certificate (DER) names: CN is the user, each O a group.
pub fn user_of(cert_der: &[u8]) -> Option<User> {
    let (name, groups) = flotilla_pki::subject_of(cert_der)?;
    Some(User { name, groups })
}

/// Concurrent requests on one HTTP/2 connection, as kube-apiserver allows: an informer-heavy
/// client keeps all its watches on one connection (hyper's default is 200).
const HTTP2_MAX_STREAMS: u32 = 1000;

/// Serves `app` on `listener` over TLS (`config` decides whether client certificates are
/// required) until `shutdown` completes. Connections without a certificate get no [`User`]
/// and are answered 401 by the API.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| user_of(c.as_ref()));
            let app = match user {
                Some(u) => app.layer(Extension(u)),
                None => app,
            };
            let service = TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(HTTP2_MAX_STREAMS);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
}
