//! Keep a client's kept-alive connection usable after an early answer.
//!
//! When the gateway answers before reading the request body (401, 404, 413, a refused
//! endpoint), hyper closes the connection if the unread body has not fully arrived, and the
//! client's next request on it fails ("Server disconnected"). [`DrainOnDrop`] wraps every
//! request body: dropped before its end, it reads and discards what is left in a background
//! task — at most [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`] — so a small body is consumed and
//! the connection stays open; anything larger or slower is left, and the connection closes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// Most bytes read and discarded after an early answer.
pub const DRAIN_LIMIT: u64 = 64 * 1024;
/// Longest time spent draining.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A request body that drains its unread rest (bounded) when dropped early.
pub struct DrainOnDrop {
    inner: Option<Body>,
    ended: bool,
}

impl DrainOnDrop {
    /// Wrap a request body.
    pub fn new(body: Body) -> Self {
        let ended = http_body::Body::is_end_stream(&body);
        Self {
            inner: Some(body),
            ended,
        }
    }
}

impl http_body::Body for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.ended = true,
            Poll::Ready(Some(Ok(_))) => {
                if self
                    .inner
                    .as_ref()
                    .is_some_and(http_body::Body::is_end_stream)
                {
                    self.ended = true;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || self
                .inner
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if self.ended || http_body::Body::is_end_stream(&body) {
            return;
        }
        // A body announced bigger than the limit is not worth reading: let the connection close.
        if http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > DRAIN_LIMIT)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(DRAIN_TIME, async move {
                let mut read = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        read += data.len() as u64;
                        if read > DRAIN_LIMIT {
                            break;
                        }
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reading_to_the_end_marks_the_body_ended() {
        let mut body = DrainOnDrop::new(Body::from("hello"));
        let bytes = (&mut body).collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.ok().as_deref(), Some(&b"hello"[..]));
        assert!(http_body::Body::is_end_stream(&body));
    }
}
