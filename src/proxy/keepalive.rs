//! SSE keep-alive: comments on idle streams, so a stream that waits on a slow model survives
//! load-balancer idle timeouts and client stall watchdogs.
//!
//! ```text
//! upstream / translator bytes ─> KeepAlive ─> client
//!                                   │ no byte sent for `every`, and the bytes sent so far
//!                                   └ end at an event boundary ─> ": keep-alive\n\n"
//! ```
//!
//! [`dispatch`](super) wraps every successful `text/event-stream` response body (native
//! pass-through, Model Router pass-through and translated streams alike) unless the handler
//! marked the response with [`NoKeepAlive`]. A comment is only ever written where an event
//! may start (at the beginning of the stream or after a blank line), so it never splits an
//! event; while the stream stalls in the middle of an event, nothing is injected. Comment
//! lines (`:` first) are ignored by every SSE parser that follows the WHATWG rules, the
//! `openai`, `anthropic` and `cohere` SDKs included.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, StatusCode, header};
use tokio::time::{Instant, Sleep};

/// The comment sent on an idle stream.
pub const COMMENT: &[u8] = b": keep-alive\n\n";

/// Response extension: never inject keep-alive comments into this response.
#[derive(Clone, Copy, Debug)]
pub struct NoKeepAlive;

/// Whether a response gets keep-alive comments: a successful `text/event-stream` that no
/// handler opted out of.
pub fn applies(status: StatusCode, headers: &HeaderMap, extensions: &http::Extensions) -> bool {
    status.is_success()
        && extensions.get::<NoKeepAlive>().is_none()
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            })
}

/// Where the bytes sent so far end, as an SSE parser sees them (lines end in CRLF, LF or CR;
/// a blank line ends an event).
#[derive(Clone, Copy, Debug)]
pub struct EventBoundary {
    at_boundary: bool,
    line_open: bool,
    after_cr: bool,
}

impl Default for EventBoundary {
    fn default() -> Self {
        Self {
            at_boundary: true,
            line_open: false,
            after_cr: false,
        }
    }
}

impl EventBoundary {
    /// Account for bytes sent to the client.
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                // The LF of a CRLF: the line already ended at the CR.
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    if self.line_open {
                        self.line_open = false;
                    } else {
                        self.at_boundary = true;
                    }
                    self.after_cr = b == b'\r';
                }
                _ => {
                    self.line_open = true;
                    self.at_boundary = false;
                    self.after_cr = false;
                }
            }
        }
    }

    /// Whether a new event (or a comment) may start here.
    pub fn at_boundary(&self) -> bool {
        self.at_boundary
    }
}

/// A body stream that sends [`COMMENT`] when no byte went out for `every`, at event
/// boundaries only. Everything else passes through unchanged, chunk by chunk.
pub struct KeepAlive<S> {
    inner: S,
    every: Duration,
    timer: Pin<Box<Sleep>>,
    boundary: EventBoundary,
    ended: bool,
}

impl<S> KeepAlive<S> {
    /// Wrap `inner`; the first comment may go out `every` after this call.
    pub fn new(inner: S, every: Duration) -> Self {
        Self {
            inner,
            every,
            timer: Box::pin(tokio::time::sleep(every)),
            boundary: EventBoundary::default(),
            ended: false,
        }
    }

    fn rearm(&mut self) {
        let next = Instant::now() + self.every;
        self.timer.as_mut().reset(next);
    }
}

impl<S, E> Stream for KeepAlive<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                if !bytes.is_empty() {
                    this.boundary.push(&bytes);
                    this.rearm();
                }
                return Poll::Ready(Some(Ok(bytes)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        loop {
            match this.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    this.rearm();
                    if this.boundary.at_boundary() {
                        this.boundary.push(COMMENT);
                        return Poll::Ready(Some(Ok(Bytes::from_static(COMMENT))));
                    }
                    // In the middle of an event: wait for the upstream (the re-armed timer
                    // is polled once more so that it wakes this task again).
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    fn boundary_after(chunks: &[&[u8]]) -> bool {
        let mut b = EventBoundary::default();
        for c in chunks {
            b.push(c);
        }
        b.at_boundary()
    }

    #[test]
    fn boundaries_follow_sse_line_endings() {
        assert!(boundary_after(&[]));
        assert!(boundary_after(&[b"data: {}\n\n"]));
        assert!(boundary_after(&[b"data: {}\r\n\r\n"]));
        assert!(boundary_after(&[b"data: {}\r\r"]));
        assert!(boundary_after(&[b"data: {}\r\n", b"\r\n"]));
        assert!(boundary_after(&[b"event: x\ndata: 1\n", b"\n"]));
        assert!(!boundary_after(&[b"data: {}\n"]));
        assert!(!boundary_after(&[b"data: {}\r\n"]));
        assert!(!boundary_after(&[b"data: {}\r"]));
        assert!(!boundary_after(&[b"data: {\"a\""]));
        assert!(!boundary_after(&[b"data: 1\n\ndata: 2"]));
        assert!(!boundary_after(&[b"event: x\n"]));
    }

    #[test]
    fn applies_to_successful_event_streams_only() {
        let sse = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                ct.parse().unwrap_or_else(|_| unreachable!()),
            );
            h
        };
        let none = http::Extensions::new();
        assert!(applies(StatusCode::OK, &sse("text/event-stream"), &none));
        assert!(applies(
            StatusCode::OK,
            &sse("Text/Event-Stream; charset=utf-8"),
            &none
        ));
        assert!(!applies(StatusCode::OK, &sse("application/json"), &none));
        assert!(!applies(
            StatusCode::OK,
            &sse("application/vnd.amazon.eventstream"),
            &none
        ));
        assert!(!applies(
            StatusCode::TOO_MANY_REQUESTS,
            &sse("text/event-stream"),
            &none
        ));
        assert!(!applies(StatusCode::OK, &HeaderMap::new(), &none));
        let mut off = http::Extensions::new();
        off.insert(NoKeepAlive);
        assert!(!applies(StatusCode::OK, &sse("text/event-stream"), &off));
        use crate::formats::Format;
        assert!(!Format::Gemini.sse_comments_safe());
        assert!(!Format::Bedrock.sse_comments_safe());
        assert!(Format::OpenAi.sse_comments_safe());
        assert!(Format::Anthropic.sse_comments_safe());
    }

    type Tx = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

    fn wrapped(
        every: Duration,
    ) -> (
        Tx,
        KeepAlive<impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        (tx, KeepAlive::new(inner, every))
    }

    async fn next_text(
        s: &mut (impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin),
    ) -> Option<String> {
        match s.next().await {
            Some(Ok(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            Some(Err(e)) => Some(format!("error: {e}")),
            None => None,
        }
    }

    #[tokio::test]
    async fn idle_stream_at_a_boundary_gets_comments() {
        let every = Duration::from_millis(100);
        let (tx, mut s) = wrapped(every);
        let _ = tx.send(Ok(Bytes::from_static(b"data: 1\n\n")));
        assert_eq!(next_text(&mut s).await.as_deref(), Some("data: 1\n\n"));
        let before = Instant::now();
        assert_eq!(next_text(&mut s).await.as_deref(), Some(": keep-alive\n\n"));
        assert!(Instant::now() - before >= every);
        assert_eq!(next_text(&mut s).await.as_deref(), Some(": keep-alive\n\n"));
        let _ = tx.send(Ok(Bytes::from_static(b"data: 2\n\n")));
        assert_eq!(next_text(&mut s).await.as_deref(), Some("data: 2\n\n"));
        drop(tx);
        assert_eq!(next_text(&mut s).await, None);
        assert_eq!(next_text(&mut s).await, None);
    }

    #[tokio::test]
    async fn no_comment_in_the_middle_of_an_event() {
        let every = Duration::from_millis(50);
        let (tx, mut s) = wrapped(every);
        let _ = tx.send(Ok(Bytes::from_static(b"data: {\"half\":")));
        assert_eq!(next_text(&mut s).await.as_deref(), Some("data: {\"half\":"));
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let _ = tx.send(Ok(Bytes::from_static(b" 1}\n\n")));
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(tx);
        });
        // About twelve intervals pass while the event is open: nothing is injected.
        assert_eq!(next_text(&mut s).await.as_deref(), Some(" 1}\n\n"));
        // Now at a boundary, the next idle interval brings a comment, later the end.
        assert_eq!(next_text(&mut s).await.as_deref(), Some(": keep-alive\n\n"));
        let mut rest = Vec::new();
        while let Some(text) = next_text(&mut s).await {
            rest.push(text);
        }
        assert!(rest.iter().all(|t| t == ": keep-alive\n\n"), "{rest:?}");
        let _ = sender.await;
    }

    #[tokio::test]
    async fn a_busy_stream_gets_no_comment() {
        let every = Duration::from_secs(2);
        let (tx, mut s) = wrapped(every);
        let feeder = tokio::spawn(async move {
            for i in 0..10 {
                let _ = tx.send(Ok(Bytes::from(format!("data: {i}\n\n"))));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut seen = Vec::new();
        while let Some(text) = next_text(&mut s).await {
            seen.push(text);
        }
        let _ = feeder.await;
        assert_eq!(seen.len(), 10, "{seen:?}");
        assert!(seen.iter().all(|t| t.starts_with("data: ")), "{seen:?}");
    }
}
