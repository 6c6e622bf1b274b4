//! Closes a connection that has waited too long on its client: one that connects and
//! sends nothing, trickles a request head or body (slowloris and its slow-body variant),
//! or sits idle between requests on a kept-alive connection; and one whose client takes
//! none of its answer's bytes for too long (it stopped reading, or vanished without a
//! FIN). A request whose answer gantry is still waiting for is not timed, however long the
//! upstream takes; nor is a client that keeps taking bytes, however slowly.
//!
//! One coarse watchdog per connection, in place of hyper's header read timeout: that one
//! makes, registers and drops a timer for every request (a few per cent of CPU per call
//! at concurrency 1 on one machine, within the noise on another: bench/README.md), and
//! does not time bodies. Here a request costs a few counter updates; the watchdog wakes
//! four times per timeout, however many requests pass.
//!
//! hyper serves an HTTP/1.1 connection's requests one at a time: it reads the next head
//! only once the previous answer is written and dropped. So one state per connection says
//! where it is.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, MissedTickBehavior};

/// The watchdog checks this many times per (shortest) timeout, so a connection closes
/// between one and 1 + 1/CHECKS timeouts after it began to wait on its client.
const CHECKS: u32 = 4;

/// Waiting for a request, or for the rest of one: timed by the read timeout.
const WAITING: u8 = 0;
/// A request is in, its answer not yet written to the end: not timed, unless the client
/// takes none of the bytes written.
const ANSWERING: u8 = 1;

/// How long a connection may wait on its client; `None` for ever.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// For each request, head and body, and for the next one on a kept-alive connection.
    pub read: Option<Duration>,
    /// For the client to take any of the bytes written to it.
    pub write: Option<Duration>,
}

/// Which wait on its client a connection ran out of time in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stall {
    /// For a request, or the rest of one.
    Read,
    /// For the client to take bytes written to it.
    Write,
}

impl Stall {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Stall::Read => "read",
            Stall::Write => "write",
        }
    }
}

impl Timeouts {
    /// The wait a connection is in and its timeout, if it is timed.
    fn of(&self, state: u8, blocked: bool) -> Option<(Stall, Duration)> {
        let write = self.write.filter(|_| blocked).map(|t| (Stall::Write, t));
        let read = self
            .read
            .filter(|_| state == WAITING)
            .map(|t| (Stall::Read, t));
        // Both: bytes of the last answer still unsent when the next request is awaited.
        match (read, write) {
            (Some(r), Some(w)) => Some(if w.1 <= r.1 { w } else { r }),
            (r, w) => r.or(w),
        }
    }
}

/// What the watchdog reads of one connection. Relaxed atomics suffice: hyper polls a
/// connection's requests and bodies on the connection's own task, where the watchdog runs.
pub(super) struct Activity {
    /// Bumped whenever the state changes: unchanged between two checks means the
    /// connection stayed where it was.
    events: AtomicU64,
    state: AtomicU8,
    /// The last write found the client's socket full: it took none of the bytes.
    blocked: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            events: AtomicU64::new(0),
            state: AtomicU8::new(WAITING),
            blocked: AtomicBool::new(false),
        })
    }

    fn enter(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// A request head has arrived with `body`: the request is in once the body has been
    /// read to its end, at once when it has none.
    pub(super) fn request<B>(self: &Arc<Self>, body: B) -> Body
    where
        B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.enter(if body.is_end_stream() {
            ANSWERING
        } else {
            WAITING
        });
        Body::new(RequestBody {
            inner: body,
            activity: Arc::clone(self),
        })
    }

    /// `body` answers the request in progress; the connection waits on its client again
    /// once hyper drops it, written or abandoned.
    pub(super) fn answer(self: &Arc<Self>, body: Body) -> AnswerBody {
        AnswerBody {
            inner: body,
            activity: Arc::clone(self),
        }
    }

    /// A write to the client was attempted: `taken` if the client's socket took bytes.
    fn wrote(&self, taken: bool) {
        // One relaxed load on the common path, where nothing changes.
        if self.blocked.load(Ordering::Relaxed) == taken {
            self.blocked.store(!taken, Ordering::Relaxed);
            self.events.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns, with the wait it ran out of, once the connection has waited on its client
    /// for that wait's timeout without a change; never if neither timeout is set.
    pub(super) async fn stalled_for(&self, timeouts: Timeouts) -> Stall {
        let Some(shortest) = [timeouts.read, timeouts.write].into_iter().flatten().min() else {
            return std::future::pending().await;
        };
        let period = shortest / CHECKS;
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        // A runtime too busy to tick on time checks late rather than in a burst that
        // would count one quiet period several times.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = self.events.load(Ordering::Relaxed);
        let mut quiet = Duration::ZERO;
        loop {
            ticks.tick().await;
            let events = self.events.load(Ordering::Relaxed);
            let timed = timeouts.of(
                self.state.load(Ordering::Relaxed),
                self.blocked.load(Ordering::Relaxed),
            );
            let Some((stall, limit)) = timed.filter(|_| events == seen) else {
                seen = events;
                quiet = Duration::ZERO;
                continue;
            };
            quiet += period;
            if quiet >= limit {
                return stall;
            }
        }
    }
}

/// A client connection whose writes tell the watchdog whether the client takes bytes.
pub(super) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(super) fn new(inner: T, activity: &Arc<Activity>) -> Self {
        Self {
            inner,
            activity: Arc::clone(activity),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(polled.is_ready());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(polled.is_ready());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that puts its connection in [`ANSWERING`] once read to the end.
struct RequestBody<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None))
            || matches!(polled, Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream())
        {
            // Only from WAITING: a handler may read its body after its answer has gone.
            if self
                .activity
                .state
                .compare_exchange(WAITING, ANSWERING, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.activity.events.fetch_add(1, Ordering::Relaxed);
            }
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

/// A response body that sets its connection waiting on its client again when dropped.
pub(super) struct AnswerBody {
    inner: Body,
    activity: Arc<Activity>,
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        self.activity.enter(WAITING);
    }
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use std::convert::Infallible;

    const TIMEOUT: Duration = Duration::from_secs(60);
    const BOTH: Timeouts = Timeouts {
        read: Some(TIMEOUT),
        write: Some(TIMEOUT),
    };

    /// A connection whose request is in and whose answer is being written, as long as
    /// the parts returned with it live.
    fn answering() -> (Arc<Activity>, Body, AnswerBody) {
        let activity = Activity::new();
        let request = activity.request(Empty::<Bytes>::new());
        let answer = activity.answer(Body::empty());
        (activity, request, answer)
    }

    /// How long `stalled_for` took to return, on paused time, or `None` if it had not
    /// within `limit`.
    async fn stalled_within(activity: &Activity, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        tokio::time::timeout(limit, activity.stalled_for(BOTH))
            .await
            .ok()
            .map(|_| started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_request_stalls_after_the_timeout() {
        let activity = Activity::new();
        assert_eq!(stalled_within(&activity, TIMEOUT * 2).await, Some(TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_never_stalls_however_long_it_takes() {
        let (activity, _request, _answer) = answering();
        assert_eq!(stalled_within(&activity, TIMEOUT * 10).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_answered_once_its_body_is_read_to_the_end() {
        let activity = Activity::new();
        let request = activity.request(Full::new(Bytes::from_static(b"{}")));
        assert_eq!(request.collect().await.unwrap().to_bytes(), "{}");
        let _answer = activity.answer(Body::empty());
        assert_eq!(stalled_within(&activity, TIMEOUT * 10).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_ends_stalls_after_the_timeout() {
        let activity = Activity::new();
        // One byte of the body, then nothing more: a client trickling its body.
        let trickle =
            futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{")))])
                .chain(futures::stream::pending());
        let mut request = activity.request(StreamBody::new(trickle));
        assert!(request.frame().await.is_some());
        assert_eq!(stalled_within(&activity, TIMEOUT * 2).await, Some(TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_runs_from_the_end_of_the_last_answer() {
        let activity = Activity::new();
        let _request = activity.request(Empty::<Bytes>::new());
        let answer = activity.answer(Body::empty());
        let watchdog = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                activity.stalled_for(BOTH).await;
                Instant::now()
            }
        });
        // The answer ends just before a check: the connection must still get a whole
        // timeout for its next request, not be closed under it.
        tokio::time::sleep(TIMEOUT * 3 - Duration::from_millis(1)).await;
        drop(answer);
        let answered = Instant::now();
        let waited = watchdog.await.unwrap() - answered;
        assert!(waited >= TIMEOUT, "closed {waited:?} after the answer");
        assert!(
            waited <= TIMEOUT + TIMEOUT / CHECKS,
            "closed {waited:?} after the answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_takes_none_of_stalls_after_the_write_timeout() {
        let (activity, _request, _answer) = answering();
        activity.wrote(false);
        assert_eq!(stalled_within(&activity, TIMEOUT * 2).await, Some(TIMEOUT));
        assert_eq!(activity.stalled_for(BOTH).await, Stall::Write);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_of_a_finished_answer_the_client_leaves_unsent_are_a_write_stall() {
        let activity = Activity::new();
        let _request = activity.request(Empty::<Bytes>::new());
        drop(activity.answer(Body::empty()));
        activity.wrote(false);
        let timeouts = Timeouts {
            read: Some(TIMEOUT * 2),
            write: Some(TIMEOUT),
        };
        let started = Instant::now();
        assert_eq!(activity.stalled_for(timeouts).await, Stall::Write);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_bytes_now_and_then_is_never_closed() {
        let (activity, _request, _answer) = answering();
        let reader = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                loop {
                    activity.wrote(false);
                    tokio::time::sleep(TIMEOUT / 2).await;
                    activity.wrote(true);
                }
            }
        });
        assert_eq!(stalled_within(&activity, TIMEOUT * 10).await, None);
        reader.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_has_its_own_timeout_and_none_means_for_ever() {
        let read_only = Timeouts {
            read: Some(TIMEOUT),
            write: None,
        };
        let (blocked, _request, _answer) = answering();
        blocked.wrote(false);
        let never = tokio::time::timeout(TIMEOUT * 10, blocked.stalled_for(read_only)).await;
        assert!(
            never.is_err(),
            "a blocked write is not timed without a write timeout"
        );

        let write_only = Timeouts {
            read: None,
            write: Some(TIMEOUT / 2),
        };
        let waiting = Activity::new();
        let never = tokio::time::timeout(TIMEOUT * 10, waiting.stalled_for(write_only)).await;
        assert!(
            never.is_err(),
            "a wait for a request is not timed without a read timeout"
        );

        let both = Timeouts {
            read: Some(TIMEOUT * 2),
            write: Some(TIMEOUT / 2),
        };
        let started = Instant::now();
        Activity::new().stalled_for(both).await;
        assert_eq!(
            started.elapsed(),
            TIMEOUT * 2,
            "the read timeout, on the write's ticks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_the_client_does_not_read_blocks_and_stalls() {
        let (activity, _request, _answer) = answering();
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = Watched::new(ours, &activity);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            ours.write_all(&[b'x'; 1024]).await
        });
        for _ in 0..100 {
            if activity.blocked.load(Ordering::Relaxed) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            activity.blocked.load(Ordering::Relaxed),
            "a write the client left waiting"
        );
        assert_eq!(stalled_within(&activity, TIMEOUT * 2).await, Some(TIMEOUT));
        // Once the client reads, the writes go through and the answer is timed no more.
        let mut sink = Vec::new();
        let reading = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            theirs.read_to_end(&mut sink).await.map(|_| sink.len())
        });
        writer.await.unwrap().unwrap();
        assert!(!activity.blocked.load(Ordering::Relaxed));
        reading.abort();
    }
}
