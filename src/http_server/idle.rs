//! Closes a connection that has waited too long on its client: one that connects and
//! sends nothing, trickles a request head or body (slowloris and its slow-body variant),
//! or sits idle between requests on a kept-alive connection. A request whose body has
//! arrived is being answered, and is not timed however long the answer takes.
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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, MissedTickBehavior};

/// The watchdog checks this many times per timeout, so a connection closes between one
/// and 1 + 1/CHECKS timeouts after it began to wait on its client.
const CHECKS: u32 = 4;

/// Waiting for a request, or for the rest of one: timed.
const WAITING: u8 = 0;
/// A request is in, its answer not yet written to the end: not timed.
const ANSWERING: u8 = 1;

/// What the watchdog reads of one connection. Relaxed atomics suffice: hyper polls a
/// connection's requests and bodies on the connection's own task, where the watchdog runs.
pub(super) struct Activity {
    /// Bumped whenever the state changes: unchanged between two checks means the
    /// connection stayed where it was.
    events: AtomicU64,
    state: AtomicU8,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            events: AtomicU64::new(0),
            state: AtomicU8::new(WAITING),
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

    /// Returns once the connection has waited on its client for `timeout` without a
    /// change.
    pub(super) async fn stalled_for(&self, timeout: Duration) {
        let period = timeout / CHECKS;
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        // A runtime too busy to tick on time checks late rather than in a burst that
        // would count one quiet period several times.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = self.events.load(Ordering::Relaxed);
        let mut quiet = 0;
        loop {
            ticks.tick().await;
            let events = self.events.load(Ordering::Relaxed);
            if events != seen || self.state.load(Ordering::Relaxed) == ANSWERING {
                seen = events;
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet == CHECKS {
                return;
            }
        }
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

    /// How long `stalled_for` took to return, on paused time, or `None` if it had not
    /// within `limit`.
    async fn stalled_within(activity: &Activity, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        tokio::time::timeout(limit, activity.stalled_for(TIMEOUT))
            .await
            .ok()
            .map(|()| started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_request_stalls_after_the_timeout() {
        let activity = Activity::new();
        assert_eq!(stalled_within(&activity, TIMEOUT * 2).await, Some(TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_being_answered_never_stalls_however_long_it_takes() {
        let activity = Activity::new();
        let _request = activity.request(Empty::<Bytes>::new());
        let _answer = activity.answer(Body::empty());
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
                activity.stalled_for(TIMEOUT).await;
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
}
