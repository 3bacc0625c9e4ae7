//! `Connection: close` on answers given before the request body was read.
//!
//! A 401 or 413 is decided without reading the body. hyper then closes the
//! connection rather than read a body nobody wants, but HTTP/1.1 clients that
//! were not told will send their next request on it and see it fail. Saying
//! `Connection: close` makes them open a new one instead.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::CONNECTION;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tower::{Layer, Service};

use super::on_response::{OnResponse, Then};

/// API layer, outermost: marks the response `Connection: close` when the
/// request had a body that was not read to its end.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CloseIfBodyUnreadLayer;

impl<S> Layer<S> for CloseIfBodyUnreadLayer {
    type Service = CloseIfBodyUnread<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CloseIfBodyUnread { inner }
    }
}

/// A service behind [`CloseIfBodyUnreadLayer`].
#[derive(Debug, Clone)]
pub(crate) struct CloseIfBodyUnread<S> {
    inner: S,
}

impl<S> Service<Request> for CloseIfBodyUnread<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Then<S::Future, CloseIfUnread>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            return Then::new(self.inner.call(Request::from_parts(parts, body)), None);
        }
        let finished = Arc::new(AtomicBool::new(false));
        let body = Body::new(TrackedBody {
            inner: body,
            finished: Arc::clone(&finished),
        });
        Then::new(
            self.inner.call(Request::from_parts(parts, body)),
            Some(CloseIfUnread(finished)),
        )
    }
}

/// Marks the response `Connection: close` unless the body (whose end this
/// flag records) was read to its end.
pub(crate) struct CloseIfUnread(Arc<AtomicBool>);

impl OnResponse for CloseIfUnread {
    fn on_response(self, mut response: Response) -> Response {
        if !self.0.load(Ordering::Acquire) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A request body that records when it has been read to the end.
struct TrackedBody {
    inner: Body,
    finished: Arc<AtomicBool>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
