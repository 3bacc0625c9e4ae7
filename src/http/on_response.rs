//! The response future the API layers share: when the inner service's
//! response is ready, one last step with the request's own state (mark
//! `Connection: close`, hold the in-flight slot).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::response::Response;
use pin_project_lite::pin_project;

/// A layer's step on the response of one request.
pub(crate) trait OnResponse {
    fn on_response(self, response: Response) -> Response;
}

pin_project! {
    /// `inner`, then `step` (if any) on its response.
    pub(crate) struct Then<F, T> {
        #[pin]
        inner: F,
        step: Option<T>,
    }
}

impl<F, T> Then<F, T> {
    pub(crate) fn new(inner: F, step: Option<T>) -> Self {
        Self { inner, step }
    }
}

impl<F, E, T> Future for Then<F, T>
where
    F: Future<Output = Result<Response, E>>,
    T: OnResponse,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(match this.step.take() {
            Some(step) => step.on_response(response),
            None => response,
        }))
    }
}
