//! The seam between a [`Connection`](super::connection::Connection) and the wire.
//!
//! Messages go out through an [`Outbox`]; messages come in through an [`Inbox`], which
//! routes them straight away in the task that read them. Requests are sent with
//! [`Outbox::exchange`], whose future the caller drives itself, so a call through an HTTP
//! upstream runs its POST inside the caller's own task: no hand-off between tasks on the
//! hot path.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use serde_json::Value;

use super::connection::{Connection, NotJson};

pub trait Outbox: Send + Sync {
    /// Sends a request; the returned future carries the exchange and must be polled by
    /// the caller until its answer has arrived (through the inbox).
    fn exchange(&self, msg: Value) -> BoxFuture<'static, ()>;

    /// Sends a message nobody waits on (notifications, answers to server requests).
    fn send(&self, msg: Value) {
        tokio::spawn(self.exchange(msg));
    }
}

/// Where a transport delivers what it reads.
#[derive(Clone)]
pub struct Inbox {
    conn: Weak<Connection>,
}

impl Inbox {
    pub(super) fn new(conn: Weak<Connection>) -> Self {
        Self { conn }
    }

    /// A message from the upstream; `related` names the upstream request id whose HTTP
    /// response carried it, when the transport knows.
    pub fn deliver(&self, msg: Value, related: Option<u64>) {
        if let Some(conn) = self.conn.upgrade() {
            conn.route(msg, related);
        }
    }

    /// A message from the upstream as read from the wire; the id of the response
    /// delivered, if it was one.
    pub fn deliver_bytes(
        &self,
        bytes: bytes::Bytes,
        related: Option<u64>,
    ) -> Result<Option<Value>, NotJson> {
        match self.conn.upgrade() {
            Some(conn) => conn.route_bytes(bytes, related),
            None => Ok(None),
        }
    }

    /// Whether the upstream request `id` still has a caller waiting for its answer.
    pub fn awaits(&self, id: u64) -> bool {
        self.conn.upgrade().is_some_and(|conn| conn.awaits(id))
    }

    /// The transport is gone (process exited, stream ended, session expired).
    pub fn close(&self, reason: String) {
        if let Some(conn) = self.conn.upgrade() {
            conn.close(reason);
        }
    }
}

/// Awaited by a transport's reader after each message it delivers. A reader often finds a
/// burst of messages in its buffer and, never waiting on I/O, would route them all in one
/// go; the streams fed by the connection's broadcast (which keeps 256 messages for them)
/// would be overrun before they could run, and lose what their clients read in time. This
/// lets them run once the reader's cooperative budget (128 units) is spent.
pub async fn delivered() {
    tokio::task::consume_budget().await;
}

pub struct TransportHandle {
    pub outbox: Arc<dyn Outbox>,
    /// Ends the transport: kills a child's process group, or ends a remote session.
    pub shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}
