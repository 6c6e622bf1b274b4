//! Bounds what one message from a remote upstream can make gantry hold.
//!
//! An answer is read whole before it is relayed, and an event stream's parser keeps an
//! event's lines until the blank line that ends it. Neither has a bound of its own, so an
//! upstream that answers with gigabytes, or never ends its event, would take the memory
//! every other call needs. `Bounded` counts the bytes of the message being read (the
//! whole body, or the bytes since the stream's last event ended) and fails the body with
//! `TooLarge` past the upstream's `max_message_bytes`. stdio children get the same bound
//! on their lines (`stdio.rs`).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

/// One message was larger than the upstream's `max_message_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a message larger than {limit} bytes, the upstream's max_message_bytes")]
pub struct TooLarge {
    pub limit: usize,
}

/// Why a `Bounded` body failed: its message was too large, or the body itself broke.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// The `TooLarge` is this error's source, where `too_large` finds it.
    #[error("{0}")]
    TooLarge(#[source] TooLarge),
    #[error(transparent)]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// The `TooLarge` in an error's chain, if that is what failed.
pub fn too_large(e: &(dyn std::error::Error + 'static)) -> Option<TooLarge> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<TooLarge>() {
            return Some(*found);
        }
        cause = e.source();
    }
    None
}

/// What counts as one message.
#[derive(Clone, Copy, Debug)]
enum Unit {
    /// The whole body: a JSON answer.
    Body,
    /// One event of a `text/event-stream`: a blank line ends it.
    Event,
}

/// A body that fails once one message in it grows past `limit`; it ends after the error.
pub struct Bounded<B> {
    inner: B,
    unit: Unit,
    limit: usize,
    /// Bytes of the message being read.
    taken: usize,
    /// Whether the last byte ended a line, so that a line ending next is a blank line.
    at_line_start: bool,
    /// Whether that line ended with `\r`: a `\n` right after it is the same line end.
    after_cr: bool,
    failed: bool,
}

impl<B> Bounded<B> {
    /// For a JSON answer: the whole body is one message.
    pub fn body(inner: B, limit: usize) -> Self {
        Self::new(inner, Unit::Body, limit)
    }

    /// For an event stream: each event is one message, however long the stream.
    pub fn events(inner: B, limit: usize) -> Self {
        Self::new(inner, Unit::Event, limit)
    }

    fn new(inner: B, unit: Unit, limit: usize) -> Self {
        Self {
            inner,
            unit,
            limit,
            taken: 0,
            // The stream's start is a line start, but a blank first line ends no event:
            // counting from zero there is the same.
            at_line_start: true,
            after_cr: false,
            failed: false,
        }
    }

    /// Counts `chunk` into the message being read; false once it is over the limit.
    fn take(&mut self, chunk: &[u8]) -> bool {
        match self.unit {
            Unit::Body => {
                self.taken += chunk.len();
                self.taken <= self.limit
            }
            Unit::Event => self.take_event_bytes(chunk),
        }
    }

    /// Counts each line into the event it belongs to, a blank line starting the next:
    /// false once an event is over the limit, even one that ends within the chunk.
    fn take_event_bytes(&mut self, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
            let byte = rest[at];
            if at > 0 {
                self.at_line_start = false;
                self.after_cr = false;
            }
            if byte == b'\n' && self.after_cr {
                // The `\n` of a `\r\n`: the line had ended already.
                self.after_cr = false;
            } else if self.at_line_start {
                // A blank line: the event ends here, and the next begins after it.
                self.taken = 0;
                self.after_cr = byte == b'\r';
                rest = &rest[at + 1..];
                continue;
            } else {
                self.at_line_start = true;
                self.after_cr = byte == b'\r';
            }
            self.taken += at + 1;
            if self.taken > self.limit {
                return false;
            }
            rest = &rest[at + 1..];
        }
        if !rest.is_empty() {
            self.at_line_start = false;
            self.after_cr = false;
            self.taken += rest.len();
        }
        self.taken <= self.limit
    }

    fn fail(&mut self) -> BoundedError {
        self.failed = true;
        BoundedError::TooLarge(TooLarge { limit: self.limit })
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BoundedError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        // A declared length over the limit fails before anything is read.
        if matches!(this.unit, Unit::Body)
            && this.taken == 0
            && this.inner.size_hint().lower() > this.limit as u64
        {
            return Poll::Ready(Some(Err(this.fail())));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(BoundedError::Body(e.into())))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            if !this.take(data.chunk()) {
                return Poll::Ready(Some(Err(this.fail())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Chunks =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, TooLarge>>>>;

    /// A body delivering `chunks` as they are split.
    fn chunked(chunks: &[&'static [u8]]) -> Chunks {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn read_all<B>(body: Bounded<B>) -> Result<Bytes, Option<TooLarge>>
    where
        Bounded<B>: Body<Data = Bytes, Error = BoundedError>,
    {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| too_large(&e))
    }

    #[tokio::test]
    async fn a_body_up_to_the_limit_passes_whole() {
        let body = Bounded::body(chunked(&[b"0123", b"4567"]), 8);
        assert_eq!(read_all(body).await.unwrap(), &b"01234567"[..]);
    }

    #[tokio::test]
    async fn a_body_one_byte_over_the_limit_fails_naming_it() {
        let body = Bounded::body(chunked(&[b"0123", b"45678"]), 8);
        assert_eq!(read_all(body).await, Err(Some(TooLarge { limit: 8 })));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_fails_before_any_read() {
        let body = Bounded::body(Full::new(Bytes::from_static(b"0123456789")), 8);
        let mut body = std::pin::pin!(body);
        let first = body.frame().await.unwrap();
        assert_eq!(too_large(&first.unwrap_err()), Some(TooLarge { limit: 8 }));
        assert!(
            body.frame().await.is_none(),
            "the body ends after its error"
        );
    }

    #[tokio::test]
    async fn events_each_under_the_limit_pass_however_long_the_stream() {
        // Three events of 10 bytes with every kind of line end, split mid-line-end.
        let events: &[&'static [u8]] = &[
            b"data: aaaa\n\n",
            b"data: bbbb\r",
            b"\n\r\n",
            b"data: cccc\r\r",
            b"data: dddd\n",
            b"\n",
        ];
        let body = Bounded::events(chunked(events), 12);
        let sent: usize = events.iter().map(|c| c.len()).sum();
        assert_eq!(read_all(body).await.unwrap().len(), sent);
    }

    #[tokio::test]
    async fn an_event_that_never_ends_fails() {
        // Lines of 10 bytes with single line ends: one event, growing without a blank line.
        let lines: &[&'static [u8]] = &[b"data: aaa\n", b"data: bbb\r\n", b"data: ccc\r", b"\n"];
        let body = Bounded::events(chunked(lines), 25);
        assert_eq!(read_all(body).await, Err(Some(TooLarge { limit: 25 })));
    }

    #[tokio::test]
    async fn a_line_end_split_from_its_cr_does_not_end_the_event() {
        // "\r" then "\n" in the next chunk is one line end, not a blank line: the event
        // goes on, and its 24 bytes exceed 20.
        let lines: &[&'static [u8]] = &[b"data: a\r", b"\n", b"data: b\r", b"\ndata: c"];
        let body = Bounded::events(chunked(lines), 20);
        assert_eq!(read_all(body).await, Err(Some(TooLarge { limit: 20 })));
    }

    #[tokio::test]
    async fn an_event_over_the_limit_within_one_chunk_fails() {
        let body = Bounded::events(chunked(&[b"data: 0123456789\n\ndata: a\n\n"]), 12);
        assert_eq!(read_all(body).await, Err(Some(TooLarge { limit: 12 })));
    }

    #[test]
    fn the_message_names_the_setting() {
        let text = TooLarge { limit: 1024 }.to_string();
        assert!(text.contains("1024 bytes") && text.contains("max_message_bytes"));
    }
}
