//! Request bodies an answer left unread.
//!
//! A request refused before its body is read (401, 415, 413 past the limit…) still has a client
//! sending that body. On HTTP/2, hyper resets the stream (`RST_STREAM NO_ERROR`) the moment the
//! body is dropped, which often leaves in the same packet as the answer; curl 7.88 (Debian 12's)
//! then reports "stream 1 closed" and loses the answer. So the rest of such a body is read after
//! the answer has been handed on, up to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIME`]: the client
//! finishes sending, reads the answer, and the stream ends normally.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::lock;

/// Bytes of an unread body read after the answer; past them the stream is reset as before.
const DRAIN_LIMIT: usize = 8 << 20;
/// How long an unread body is read after the answer.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Middleware: runs the request, then reads what its handler left of the body.
pub(crate) async fn finish_unread(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(body));
    let reader = shared.clone();
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| {
        next_data(&mut lock(&reader), cx)
    }));
    let answer = next.run(Request::from_parts(parts, body)).await;
    if !lock(&shared).is_end_stream() {
        tokio::spawn(async move {
            let mut read = 0;
            let drained = std::future::poll_fn(|cx| loop {
                match ready!(next_data(&mut lock(&shared), cx)) {
                    Some(Ok(data)) if read + data.len() <= DRAIN_LIMIT => read += data.len(),
                    _ => return Poll::Ready(()),
                }
            });
            let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
        });
    }
    answer
}

/// The body's next data frame (trailers are skipped).
fn next_data(body: &mut Body, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, axum::Error>>> {
    loop {
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Poll::Ready(Some(Ok(data)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::Router;
    use hyper::service::Service;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A body of `chunks` chunks that counts how many were read.
    fn counted(chunks: usize, read: Arc<AtomicUsize>) -> Body {
        Body::from_stream(futures::stream::iter((0..chunks).map(move |_| {
            read.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
        })))
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/refuse",
                axum::routing::post(|| async { StatusCode::UNSUPPORTED_MEDIA_TYPE }),
            )
            .route(
                "/read",
                axum::routing::post(|body: Bytes| async move { body.len().to_string() }),
            )
            .layer(axum::middleware::from_fn(finish_unread))
    }

    async fn call(path: &str, body: Body) -> Response {
        let svc = hyper_util::service::TowerToHyperService::new(app());
        let req = Request::post(path).body(body).unwrap();
        svc.call(req).await.unwrap().into_response()
    }

    #[tokio::test]
    async fn a_body_the_answer_left_unread_is_read_afterwards() {
        let read = Arc::new(AtomicUsize::new(0));
        let answer = call("/refuse", counted(5, read.clone())).await;
        assert_eq!(answer.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        for _ in 0..100 {
            if read.load(Ordering::SeqCst) == 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of 5 chunks read", read.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn handlers_still_read_the_whole_body() {
        let read = Arc::new(AtomicUsize::new(0));
        let answer = call("/read", counted(7, read.clone())).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let text = axum::body::to_bytes(answer.into_body(), 100).await.unwrap();
        assert_eq!(&text[..], b"7");
    }
}
