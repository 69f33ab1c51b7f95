//! Serving the API over TLS: each connection's client certificate becomes the [`User`] of its
//! requests (CN = user name, O = groups), as on Kubernetes.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::User;
use crate::lock;

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
            let ended = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                let (io, turns) = gather(tls);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let ended = turns.run(conn).await;
                turns.finish().await;
                ended
            } else {
                builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// Bytes an HTTP/2 connection may have gathered before its writes wait for the socket.
const GATHER_LIMIT: usize = 256 * 1024;

/// Capacity the gathering buffer keeps between turns; a larger one is freed once sent.
const GATHER_KEEP: usize = 64 * 1024;

/// A connection's output gathered during one poll of its connection task.
#[derive(Debug)]
struct Gathering<T> {
    io: T,
    /// Written to us; `buf[sent..]` has not reached `io` yet.
    buf: Vec<u8>,
    sent: usize,
    /// Why sending failed, reported to the next write.
    failed: Option<std::io::ErrorKind>,
}

impl<T: AsyncWrite + Unpin> Gathering<T> {
    /// Hands everything gathered to `io` and flushes it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.sent < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => return self.fail(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return self.fail(e),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.sent = 0;
        // An idle connection does not keep what a large answer needed.
        if self.buf.capacity() > GATHER_KEEP {
            self.buf = Vec::new();
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) => self.fail(e),
            other => other,
        }
    }

    fn fail(&mut self, e: std::io::Error) -> Poll<std::io::Result<()>> {
        self.failed = Some(e.kind());
        Poll::Ready(Err(e))
    }
}

/// The HTTP/2 side of a gathered connection. hyper's HTTP/2 writes and flushes after every data
/// frame over 256 bytes, so a change that reaches a thousand watches multiplexed on one
/// connection would be a thousand TLS records and `writev` calls. Here writes and flushes only
/// gather; [`Turns`] sends what one poll of the connection gathered when that poll returns.
#[derive(Debug)]
struct Gathered<T>(Arc<Mutex<Gathering<T>>>);

/// The connection task's side: sends after each poll what that poll gathered.
#[derive(Debug)]
struct Turns<T>(Arc<Mutex<Gathering<T>>>);

fn gather<T>(io: T) -> (Gathered<T>, Turns<T>) {
    let shared = Arc::new(Mutex::new(Gathering {
        io,
        buf: Vec::new(),
        sent: 0,
        failed: None,
    }));
    (Gathered(shared.clone()), Turns(shared))
}

impl<T: AsyncWrite + Unpin> Turns<T> {
    /// Polls `conn` to completion, sending what each poll gathered as that poll returns (a
    /// full socket wakes the task again when it can take more).
    async fn run<F: Future>(&self, conn: F) -> F::Output {
        let mut conn = std::pin::pin!(conn);
        std::future::poll_fn(|cx| {
            let out = conn.as_mut().poll(cx);
            // An error is kept and reported to the connection's next write.
            let _ = lock(&self.0).poll_send(cx);
            out
        })
        .await
    }

    /// Sends what is left once the connection has ended.
    async fn finish(&self) {
        let _ = std::future::poll_fn(|cx| lock(&self.0).poll_send(cx)).await;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gathered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Gathered<T> {
    /// Takes `bufs` once fewer than [`GATHER_LIMIT`] bytes wait (sending first otherwise).
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut g = lock(&self.0);
        if let Some(kind) = g.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if g.buf.len() - g.sent >= GATHER_LIMIT {
            ready!(g.poll_send(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            g.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gathered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_take(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_take(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Sent when the connection's poll returns (see `Turns::run`).
        match lock(&self.0).failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut g = lock(&self.0);
        ready!(g.poll_send(cx))?;
        Pin::new(&mut g.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_turns_writes_leave_together_when_it_returns() {
        let (a, mut peer) = tokio::io::duplex(1 << 20);
        let (mut io, turns) = gather(a);
        let got = turns
            .run(async {
                io.write_all(b"abc").await.unwrap();
                io.flush().await.unwrap();
                io.write_all(b"def").await.unwrap();
                io.flush().await.unwrap();
                // Still inside the turn (nothing has returned Pending): nothing has left.
                let mut one = [0u8; 1];
                let early = futures::FutureExt::now_or_never(peer.read(&mut one));
                assert!(early.is_none(), "sent before the turn ended");
                tokio::task::yield_now().await;
                // The turn that wrote has returned, so both writes are out.
                let mut got = [0u8; 6];
                peer.read_exact(&mut got).await.unwrap();
                got
            })
            .await;
        assert_eq!(&got, b"abcdef");
    }

    #[tokio::test]
    async fn what_is_left_is_sent_after_the_connection_ends_and_errors_reach_the_writer() {
        let (a, mut peer) = tokio::io::duplex(16);
        let (mut io, turns) = gather(a);
        let big = vec![7u8; 1000];
        // More than the pipe holds: the rest waits for the reader.
        turns.run(async { io.write_all(&big).await.unwrap() }).await;
        let reader = tokio::spawn(async move {
            let mut back = vec![0u8; 1000];
            peer.read_exact(&mut back).await.unwrap();
            back
        });
        turns.finish().await;
        assert_eq!(reader.await.unwrap(), big);
        // The reader is gone: the next send fails, and the next write hears of it.
        turns.run(async { io.write_all(b"x").await.unwrap() }).await;
        assert!(io.write_all(b"y").await.is_err());
    }
}
