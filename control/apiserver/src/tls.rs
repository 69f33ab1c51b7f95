//! Serving the API over TLS: each connection's client certificate becomes the [`User`] of its
//! requests (CN = user name, O = groups), as on Kubernetes.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = Coalesce::new(tls, h2);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// Bytes an HTTP/2 connection gathers before a flush sends them at once.
const COALESCE_AT: usize = 32 * 1024;

/// An HTTP/2 connection whose small flushes wait for the connection task's next turn: hyper's
/// HTTP/2 flushes after every data frame over 256 bytes, so a change that reaches a thousand
/// watches multiplexed on one connection became a thousand TLS records and `writev` calls.
/// Here what the streams write in one turn leaves together (in records of up to 16 KiB), when
/// the task runs again — it wakes itself — or as soon as 32 KiB are waiting. HTTP/1.1
/// connections pass straight through.
#[derive(Debug)]
struct Coalesce<T> {
    inner: T,
    on: bool,
    /// Bytes written to us; `buf[sent..]` has not reached `inner` yet.
    buf: Vec<u8>,
    sent: usize,
}

impl<T> Coalesce<T> {
    fn new(inner: T, on: bool) -> Coalesce<T> {
        Coalesce {
            inner,
            on,
            buf: Vec::new(),
            sent: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Hands everything gathered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // The connection task's next turn: what the last one gathered goes out first (a full
        // socket registers for writability and does not hold up reading).
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        if self.buf.len() >= COALESCE_AT {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.buf.len() >= COALESCE_AT {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.on || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.on && self.sent < self.buf.len() && self.buf.len() - self.sent < COALESCE_AT {
            // Sent on the task's next turn (see `poll_read`), which this makes sure comes.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_writes_leave_on_the_next_turn_and_large_ones_at_once() {
        let (a, mut peer) = tokio::io::duplex(1 << 20);
        let mut conn = Coalesce::new(a, true);
        conn.write_all(b"abc").await.unwrap();
        conn.flush().await.unwrap();
        let mut got = [0u8; 3];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut got)).await;
        assert!(early.is_err(), "sent before the connection's next turn");
        // The next turn reads, and sends what was gathered first.
        let mut one = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(50), conn.read(&mut one)).await;
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        let big = vec![7u8; COALESCE_AT];
        conn.write_all(&big).await.unwrap();
        conn.flush().await.unwrap();
        let mut back = vec![0u8; COALESCE_AT];
        peer.read_exact(&mut back).await.unwrap();
        assert_eq!(back, big);
    }

    #[tokio::test]
    async fn http1_connections_pass_straight_through() {
        let (a, mut peer) = tokio::io::duplex(1 << 16);
        let mut conn = Coalesce::new(a, false);
        conn.write_all(b"abc").await.unwrap();
        conn.flush().await.unwrap();
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }
}
