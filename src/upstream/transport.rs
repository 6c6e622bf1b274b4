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

    /// The transport is gone (process exited, stream ended, session expired).
    pub fn close(&self, reason: String) {
        if let Some(conn) = self.conn.upgrade() {
            conn.close(reason);
        }
    }
}

pub struct TransportHandle {
    pub outbox: Arc<dyn Outbox>,
    /// Ends the transport: kills a child's process group, or ends a remote session.
    pub shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
}
