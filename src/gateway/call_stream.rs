//! The SSE stream of one relayed call: what the upstream sends before its answer
//! (progress, logs, server requests), then the answer, queued for the client's connection.
//!
//! The relay takes the call's events as they come and never waits on the client: a stdio
//! upstream's events for every call come through one pipe (a legacy SSE upstream's through
//! one stream), so waiting for one slow client would either stall the other calls or pile
//! the events up unseen. Instead the queue is bounded: notifications that find it holding
//! [`BACKLOG_BYTES`] are dropped and counted (`mcp_notifications_dropped_total`), so a
//! client that stops reading costs a bounded amount of memory. The answer always gets in:
//! the call depends on it, and there is at most one. A server request is queued unless the
//! queue is already full ([`Sender::is_full`]); the relay then answers it for the client with
//! an error, since a request dropped unanswered would leave the server waiting.
//!
//! The client's connection drains the whole queue each time it can write, so a client
//! that keeps up loses nothing to a burst smaller than the bound.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;
use metrics::Counter;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How many bytes of JSON may wait for one call's client before its notifications are
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
    /// The client's side was dropped: its connection closed or gave up on the response.
    gone: CancellationToken,
}

/// The relay's side. Dropping it ends the stream after what is queued, and logs how many
/// notifications it dropped, however the call ended.
pub struct Sender {
    shared: Arc<Shared>,
    dropped: Counter,
    dropped_here: u64,
    /// The call's server and method, for that log line.
    server: Box<str>,
    method: Box<str>,
}

/// The client's side: JSON-RPC messages as JSON text, in the order they were queued.
pub struct Receiver {
    shared: Arc<Shared>,
}

/// A new stream for a call of `method` on `server`; notifications it drops count in
/// `dropped`.
pub fn channel(server: &str, method: &str, dropped: Counter) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        reader: AtomicWaker::new(),
        gone: CancellationToken::new(),
    });
    let sender = Sender {
        shared: Arc::clone(&shared),
        dropped,
        dropped_here: 0,
        server: server.into(),
        method: method.into(),
    };
    (sender, Receiver { shared })
}

impl Sender {
    /// Queues a notification, or drops it if the client is too far behind.
    pub fn notify(&mut self, message: &Value) {
        if !self.queue(to_json(message), Some(BACKLOG_BYTES)) {
            self.dropped.increment(1);
            self.dropped_here += 1;
        }
    }

    /// Queues a message the client must get: a server request or the answer.
    pub fn send(&mut self, message: &Value) {
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
        self.dropped_here
    }

    /// Resolves once the client's side is gone.
    pub async fn gone(&self) {
        self.shared.gone.cancelled().await;
    }

    /// Queues `text` unless that would take the queue past `limit` bytes.
    fn queue(&mut self, text: String, limit: Option<usize>) -> bool {
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
        if self.dropped_here > 0 {
            tracing::warn!(
                upstream = %self.server,
                method = %self.method,
                dropped = self.dropped_here,
                "the client read its stream too slowly: notifications were dropped"
            );
        }
    }
}

impl Stream for Receiver {
    type Item = String;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let take = |queue: &mut Queue| match queue.messages.pop_front() {
            Some(text) => {
                queue.bytes -= text.len();
                Poll::Ready(Some(text))
            }
            None if queue.ended => Poll::Ready(None),
            None => Poll::Pending,
        };
        if let Poll::Ready(item) = take(&mut self.shared.queue.lock().unwrap()) {
            return Poll::Ready(item);
        }
        // Registered before looking again, so a message queued in between wakes us.
        self.shared.reader.register(cx.waker());
        take(&mut self.shared.queue.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.gone.cancel();
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

    fn channel() -> (Sender, Receiver) {
        super::channel("test", "tools/call", Counter::noop())
    }

    #[tokio::test]
    async fn a_client_that_keeps_up_gets_everything_in_order_then_the_answer() {
        let (mut tx, mut rx) = channel();
        let sent = 10_000;
        let mut got = Vec::new();
        for i in 0..sent {
            tx.notify(&progress(i));
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
        let (mut tx, rx) = channel();
        let sent = 200_000;
        for i in 0..sent {
            tx.notify(&progress(i));
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
        let (mut tx, mut rx) = channel();
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
        let (mut tx, mut rx) = channel();
        let mut i = 0;
        while tx.dropped() == 0 {
            tx.notify(&progress(i));
            i += 1;
        }
        while let Some(Some(_)) = rx.next().now_or_never() {}
        tx.notify(&progress(i));
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
        let (mut tx, mut rx) = channel();
        let reader = tokio::spawn(async move { rx.next().await });
        tokio::task::yield_now().await;
        tx.notify(&progress(7));
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), reader)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.unwrap(), to_json(&progress(7)));
    }
}
