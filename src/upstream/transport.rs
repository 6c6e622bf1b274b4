//! What every upstream transport hands to a [`Connection`](super::connection::Connection).

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

use super::connection::Inbound;

pub struct TransportHandle {
    /// Messages to the upstream.
    pub tx: mpsc::UnboundedSender<Value>,
    /// Messages from the upstream, then `Closed`.
    pub rx: mpsc::UnboundedReceiver<Inbound>,
    /// Ends the transport: kills a child's process group, or ends a remote session.
    pub shutdown: Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>,
    /// Process id of a stdio child (it is also its process group id).
    pub pid: Option<u32>,
}
