//! What waits for one client's SSE response: a relayed call's stream (what the upstream
//! sends before its answer — progress, logs, server requests — then the answer), a
//! session's GET stream, or a `subscriptions/listen` stream.
//!
//! The gateway takes an upstream's events as they come and never waits on a client: a
//! stdio upstream's events for every call come through one pipe (a legacy SSE upstream's
//! through one stream), and the events outside calls reach every stream from one
//! broadcast, so waiting for one slow client would either stall the others or pile the
//! events up unseen. Instead the queue is bounded: notifications that find it holding
//! [`BACKLOG_BYTES`] are dropped and counted (`mcp_notifications_dropped_total`), so a
//! client that stops reading costs a bounded amount of memory. The answer always gets in:
//! the call depends on it, and there is at most one. A server request is queued unless the
//! queue is already full ([`Sender::is_full`]); it is then answered for the client with an
//! error, since a request dropped unanswered would leave the server waiting.
//!
//! The client's connection drains the whole queue each time it can write, so a client
//! that keeps up loses nothing to a burst smaller than the bound.
//!
//! A session's streams can be resumed (2025-11-25 "Resumability and Redelivery"): each
//! event carries an id, the last of what was handed to the connection is kept
//! ([`REPLAY_BYTES`]), and a client that lost its connection takes the stream up again with a GET
//! naming the last id it got (`super::resumption`). Until then the stream stays open:
//! the call goes on and its events queue as usual.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use metrics::Counter;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::resumption::{self, ResumableStreams, StreamKind};
use super::sse_frames;

/// How much of what a resumable stream already handed to its connection is kept for a
/// resumption: what a dead connection can have held unread (socket buffers, a proxy's),
/// not a history. A GET stream lives as long as its session, so this is held for each one
/// however well its client keeps up.
pub const REPLAY_BYTES: usize = 256 << 10;

/// How many bytes of JSON may wait for one client's stream before its notifications are
/// dropped: about 27,000 progress notifications, several seconds of a flood that a client
/// in Python parses more slowly than gantry relays it.
pub const BACKLOG_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Queue {
    messages: VecDeque<String>,
    bytes: usize,
    /// No message will follow: the stream ends once `messages` is empty.
    ended: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    reader: AtomicWaker,
    /// The client's side was dropped: its connection closed or gave up on the response
    /// (for a resumable stream: and was not resumed in time).
    gone: CancellationToken,
    /// What a session's stream keeps for a client that resumes it; `None` elsewhere.
    replay: Option<Replay>,
}

/// A resumable stream's identity and what it has handed to client connections.
struct Replay {
    streams: Arc<ResumableStreams>,
    /// The session the stream belongs to: nobody else may resume it.
    sid: Box<str>,
    /// Names the stream in its event ids; random, so one stream's ids say nothing of another's.
    stream: u64,
    kind: StreamKind,
    keep_alive: Option<Duration>,
    /// The mark of the replica holding the stream, at the end of its event ids.
    mark: Option<Arc<str>>,
    log: Mutex<Log>,
}

/// The messages already handed to a client connection, which a resumption may need
/// again: the connection may have died with them unread.
struct Log {
    sent: VecDeque<String>,
    /// The sequence number of `sent[0]`. Numbers start at 1: 0 names the priming event,
    /// before any message.
    first: u64,
    bytes: usize,
    /// Which receiver holds the stream: a resumption takes it over from the last one.
    holder: u64,
}

impl Log {
    fn end(&self) -> u64 {
        self.first + self.sent.len() as u64
    }

    fn get(&self, seq: u64) -> Option<&String> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.sent.get(index)
    }

    /// Keeps what was sent, forgetting the oldest past [`REPLAY_BYTES`]: a client whose
    /// connection died holding more misses the older ones, as a slow client would.
    fn keep(&mut self, text: String) {
        self.bytes += text.len();
        self.sent.push_back(text);
        while self.bytes > REPLAY_BYTES && self.sent.len() > 1 {
            let oldest = self.sent.pop_front().expect("more than one");
            self.bytes -= oldest.len();
            self.first += 1;
        }
    }
}

/// The gateway's side, shared by whatever feeds the stream (for a GET stream on `/mcp`,
/// a task per upstream). Dropping it ends the stream after what is queued, and logs how
/// many notifications it dropped or missed, however the stream ended.
pub struct Sender {
    shared: Arc<Shared>,
    dropped: AtomicU64,
    missed: AtomicU64,
    /// The stream's server (`*` for every server's) and method, for that log line.
    server: Box<str>,
    method: Box<str>,
}

/// The client's side: JSON-RPC messages as JSON text, in the order they were queued.
pub struct Receiver {
    shared: Arc<Shared>,
    /// Which holder of a resumable stream this is (see [`Log::holder`]).
    holder: u64,
    /// The sequence number of the next message to deliver.
    next: u64,
    prime: bool,
    /// Every message was delivered and none will follow.
    finished: bool,
}

/// One message for the client's connection: its sequence number on a resumable stream,
/// and its JSON text (empty for the priming event).
#[derive(Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: Option<u64>,
    pub text: String,
}

/// A session's stream as the resumption registry holds it.
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

/// A new stream for `method` (a call's, or `GET`, or `subscriptions/listen`) on `server`.
pub fn channel(server: &str, method: &str) -> (Sender, Receiver) {
    with_replay(server, method, None)
}

/// Where a session's stream is registered for resumption, and how it starts.
pub struct Resumable<'a> {
    pub streams: &'a Arc<ResumableStreams>,
    pub sid: &'a str,
    pub kind: StreamKind,
    pub keep_alive: Option<Duration>,
    /// Ends every event id: the mark of the replica holding the stream.
    pub mark: Option<Arc<str>>,
    /// Send the priming event first: an id before any message, so a client that loses
    /// the connection before the first one can still resume (2025-11-25 clients; older
    /// ones would take its empty data for a malformed message).
    pub prime: bool,
}

/// A new stream of a session, which its client may resume on another connection.
pub fn resumable(server: &str, method: &str, how: Resumable<'_>) -> (Sender, Receiver) {
    let replay = Replay {
        streams: Arc::clone(how.streams),
        sid: how.sid.into(),
        stream: rand::random(),
        kind: how.kind,
        keep_alive: how.keep_alive,
        mark: how.mark,
        log: Mutex::new(Log {
            sent: VecDeque::new(),
            first: 1,
            bytes: 0,
            holder: 0,
        }),
    };
    let (sender, mut receiver) = with_replay(server, method, Some(replay));
    receiver.prime = how.prime;
    how.streams.register(Handle(Arc::clone(&receiver.shared)));
    (sender, receiver)
}

fn with_replay(server: &str, method: &str, replay: Option<Replay>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        reader: AtomicWaker::new(),
        gone: CancellationToken::new(),
        replay,
    });
    let sender = Sender {
        shared: Arc::clone(&shared),
        dropped: AtomicU64::new(0),
        missed: AtomicU64::new(0),
        server: server.into(),
        method: method.into(),
    };
    let receiver = Receiver {
        shared,
        holder: 0,
        next: 1,
        prime: false,
        finished: false,
    };
    (sender, receiver)
}

impl Sender {
    /// Queues a notification from an upstream, or drops it if the client is too far
    /// behind, counting it in that upstream's `dropped`.
    pub fn notify(&self, message: &Value, dropped: &Counter) {
        if !self.queue(to_json(message), Some(BACKLOG_BYTES)) {
            dropped.increment(1);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` notifications that never reached this stream's queue: the broadcast
    /// that feeds it passed them by before it could take them.
    pub fn missed(&self, n: u64, dropped: &Counter) {
        dropped.increment(n);
        self.missed.fetch_add(n, Ordering::Relaxed);
    }

    /// Queues a message the client must get: a server request or the answer.
    pub fn send(&self, message: &Value) {
        self.queue(to_json(message), None);
    }

    /// Whether the queue holds the whole backlog: a server request is then refused rather
    /// than queued. Below it one is queued whatever its size, so any request the upstream
    /// may send at all reaches a client that keeps up.
    pub fn is_full(&self) -> bool {
        self.shared.queue.lock().unwrap().bytes >= BACKLOG_BYTES
    }

    /// How many notifications this stream has dropped so far.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends the stream from this side: what feeds it stops as if the client had left.
    pub fn close(&self) {
        self.shared.gone.cancel();
    }

    /// Resolves once the client's side is gone.
    pub async fn gone(&self) {
        self.shared.gone.cancelled().await;
    }

    /// Queues `text` unless that would take the queue past `limit` bytes.
    fn queue(&self, text: String, limit: Option<usize>) -> bool {
        {
            let mut queue = self.shared.queue.lock().unwrap();
            if limit.is_some_and(|limit| queue.bytes + text.len() > limit) {
                return false;
            }
            queue.bytes += text.len();
            queue.messages.push_back(text);
        }
        self.shared.reader.wake();
        true
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap().ended = true;
        self.shared.reader.wake();
        let (dropped, missed) = (*self.dropped.get_mut(), *self.missed.get_mut());
        if dropped > 0 {
            tracing::warn!(
                upstream = %self.server,
                method = %self.method,
                dropped,
                "the client read its stream too slowly: notifications were dropped"
            );
        }
        if missed > 0 {
            tracing::warn!(
                upstream = %self.server,
                method = %self.method,
                missed,
                "the stream fell behind its upstream's notifications: some passed it by"
            );
        }
    }
}

impl Stream for Receiver {
    type Item = Outgoing;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Outgoing>> {
        let this = self.get_mut();
        let Some(replay) = &this.shared.replay else {
            let polled = poll_queue(&this.shared, cx);
            return polled.map(|text| text.map(|text| Outgoing { seq: None, text }));
        };
        if std::mem::take(&mut this.prime) {
            let seq = Some(this.next - 1);
            return Poll::Ready(Some(Outgoing {
                seq,
                text: String::new(),
            }));
        }
        let mut log = replay.log.lock().unwrap();
        if log.holder != this.holder {
            return Poll::Ready(None); // A resumption took the stream over.
        }
        // What the log no longer holds is lost to this client (see `Log::keep`).
        this.next = this.next.max(log.first);
        let seq = this.next;
        if let Some(text) = log.get(seq) {
            this.next += 1;
            return Poll::Ready(Some(Outgoing {
                seq: Some(seq),
                text: text.clone(),
            }));
        }
        match poll_queue(&this.shared, cx) {
            Poll::Ready(Some(text)) => {
                log.keep(text.clone());
                this.next += 1;
                Poll::Ready(Some(Outgoing {
                    seq: Some(seq),
                    text,
                }))
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The next queued message, or the end once none will follow.
fn poll_queue(shared: &Shared, cx: &mut Context<'_>) -> Poll<Option<String>> {
    let take = |queue: &mut Queue| match queue.messages.pop_front() {
        Some(text) => {
            queue.bytes -= text.len();
            Poll::Ready(Some(text))
        }
        None if queue.ended => Poll::Ready(None),
        None => Poll::Pending,
    };
    if let Poll::Ready(item) = take(&mut shared.queue.lock().unwrap()) {
        return Poll::Ready(item);
    }
    // Registered before looking again, so a message queued in between wakes us.
    shared.reader.register(cx.waker());
    take(&mut shared.queue.lock().unwrap())
}

impl Receiver {
    /// The SSE response that gives the client its messages; `keep_alive` for long-lived
    /// streams (a resumable stream keeps the one it was made with).
    pub fn into_response(self, keep_alive: Option<Duration>) -> Response {
        let (stream, keep_alive) = match &self.shared.replay {
            Some(replay) => (
                Some((replay.kind, replay.stream, replay.mark.clone())),
                replay.keep_alive,
            ),
            None => (None, keep_alive),
        };
        let events = self.map(move |out| {
            let id = stream
                .as_ref()
                .zip(out.seq)
                .map(|((kind, stream, mark), seq)| {
                    resumption::event_id(*kind, *stream, seq, mark.as_deref())
                });
            sse_frames::event(id.as_deref(), &out.text)
        });
        sse_frames::response(events, keep_alive)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let Some(replay) = &self.shared.replay else {
            self.shared.gone.cancel();
            return;
        };
        let (holder, bytes) = {
            let log = replay.log.lock().unwrap();
            (log.holder, log.bytes)
        };
        if holder != self.holder {
            return; // Another connection has the stream now.
        }
        if self.finished {
            self.shared.gone.cancel();
            // Handed to the connection is not yet received: kept a while all the same.
            replay.streams.finished(replay.stream, self.holder, bytes);
        } else {
            // The connection died or gave up mid-stream: the client may come back.
            replay.streams.park(replay.stream, self.holder);
        }
    }
}

impl Handle {
    pub fn stream(&self) -> u64 {
        self.replay().stream
    }

    pub fn sid(&self) -> &str {
        &self.replay().sid
    }

    pub fn kind(&self) -> StreamKind {
        self.replay().kind
    }

    /// Takes the stream over for a client that got every message up to `last`, from
    /// whichever connection held it; `None` when `last` was never sent.
    pub fn resume(&self, last: u64) -> Option<Receiver> {
        let replay = self.replay();
        let holder = {
            let mut log = replay.log.lock().unwrap();
            if last >= log.end() {
                return None;
            }
            log.holder += 1;
            log.holder
        };
        // The previous holder, if still attached, wakes to find it lost the stream.
        self.0.reader.wake();
        Some(Receiver {
            shared: Arc::clone(&self.0),
            holder,
            next: last + 1,
            prime: false,
            finished: false,
        })
    }

    /// Whether `holder` still holds the stream: nobody resumed it since it was parked.
    pub fn held_by(&self, holder: u64) -> bool {
        self.replay().log.lock().unwrap().holder == holder
    }

    /// Ends the stream for good: what feeds it learns the client is gone.
    pub fn close(&self) {
        self.0.gone.cancel();
    }

    fn replay(&self) -> &Replay {
        self.0
            .replay
            .as_ref()
            .expect("only resumable streams have handles")
    }
}

fn to_json(message: &Value) -> String {
    serde_json::to_string(message).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use serde_json::json;

    fn progress(i: usize) -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/progress",
               "params": {"progressToken": 1, "progress": i}})
    }

    /// The messages' text: what a stream without event ids delivers.
    type Texts = futures::stream::Map<Receiver, fn(Outgoing) -> String>;

    fn channel() -> (Sender, Texts) {
        let (tx, rx) = super::channel("test", "tools/call");
        (
            tx,
            rx.map((|out: Outgoing| out.text) as fn(Outgoing) -> String),
        )
    }

    #[tokio::test]
    async fn a_client_that_keeps_up_gets_everything_in_order_then_the_answer() {
        let (tx, mut rx) = channel();
        let sent = 10_000;
        let mut got = Vec::new();
        for i in 0..sent {
            tx.notify(&progress(i), &Counter::noop());
            if i % 100 == 99 {
                // The client reads as it goes: nothing is dropped however many pass.
                while let Some(Some(text)) = rx.next().now_or_never() {
                    got.push(text);
                }
            }
        }
        assert_eq!(tx.dropped(), 0);
        let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        tx.send(&answer);
        drop(tx);
        got.extend(rx.collect::<Vec<String>>().await);
        assert_eq!(got.pop().unwrap(), to_json(&answer));
        assert_eq!(got.len(), sent);
        for (i, text) in got.iter().enumerate() {
            assert_eq!(text, &to_json(&progress(i)));
        }
    }

    #[tokio::test]
    async fn a_stalled_client_costs_at_most_the_backlog_and_still_gets_the_answer() {
        let (tx, rx) = channel();
        let sent = 200_000;
        for i in 0..sent {
            tx.notify(&progress(i), &Counter::noop());
        }
        let answer =
            json!({"jsonrpc": "2.0", "id": 1, "result": {"big": "x".repeat(2 * BACKLOG_BYTES)}});
        tx.send(&answer);
        let dropped = tx.dropped();
        drop(tx);
        let got: Vec<String> = rx.collect().await;
        let (answer_text, notifications) = got.split_last().unwrap();
        assert_eq!(
            answer_text,
            &to_json(&answer),
            "the answer is never dropped"
        );
        let queued: usize = notifications.iter().map(String::len).sum();
        assert!(queued <= BACKLOG_BYTES, "{queued} bytes queued");
        assert!(
            queued > BACKLOG_BYTES - 200,
            "the backlog was used: {queued} bytes"
        );
        assert_eq!(notifications.len() as u64 + dropped, sent as u64);
        // The first ones are kept, in order: a gap, not a shuffle.
        for (i, text) in notifications.iter().enumerate() {
            assert_eq!(text, &to_json(&progress(i)));
        }
    }

    #[tokio::test]
    async fn the_queue_is_full_once_it_holds_the_backlog_until_the_client_reads() {
        let (tx, mut rx) = channel();
        let request = |size: usize| {
            json!({"jsonrpc": "2.0", "id": "s", "method": "sampling/createMessage",
                   "params": {"pad": "x".repeat(size)}})
        };
        tx.send(&request(BACKLOG_BYTES / 2));
        assert!(!tx.is_full(), "half the backlog");
        // One message may take the queue past the backlog; then nothing more fits.
        tx.send(&request(BACKLOG_BYTES));
        assert!(tx.is_full());
        rx.next().await.unwrap();
        rx.next().await.unwrap();
        assert!(!tx.is_full(), "read by the client");
    }

    #[tokio::test]
    async fn room_freed_by_the_client_takes_notifications_again() {
        let (tx, mut rx) = channel();
        let mut i = 0;
        while tx.dropped() == 0 {
            tx.notify(&progress(i), &Counter::noop());
            i += 1;
        }
        while let Some(Some(_)) = rx.next().now_or_never() {}
        tx.notify(&progress(i), &Counter::noop());
        assert_eq!(rx.next().await.unwrap(), to_json(&progress(i)));
        assert_eq!(tx.dropped(), 1);
    }

    #[tokio::test]
    async fn the_relay_learns_when_the_client_is_gone() {
        let (tx, rx) = channel();
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(1), tx.gone())
            .await
            .expect("gone resolves once the client side is dropped");
    }

    #[tokio::test]
    async fn a_waiting_client_is_woken_by_the_next_message() {
        let (tx, mut rx) = channel();
        let reader = tokio::spawn(async move { rx.next().await });
        tokio::task::yield_now().await;
        tx.notify(&progress(7), &Counter::noop());
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), reader)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.unwrap(), to_json(&progress(7)));
    }
}
