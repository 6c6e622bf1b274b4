//! Requests an upstream server makes of the client (sampling, elicitation, roots) on their
//! way to it: which clients can answer them, the ids they are relayed under, and the
//! bounds past which the gateway declines them for the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::Gateway;
use super::client_stream;
use super::session::ClientCaps;
use crate::upstream::{Connection, Upstream};

/// Whether a client with these capabilities can answer a server request.
pub fn client_can_answer(caps: &ClientCaps, method: &str) -> bool {
    match method {
        "sampling/createMessage" => caps.sampling,
        "elicitation/create" => caps.elicitation,
        "roots/list" => caps.roots,
        "ping" => true,
        _ => false,
    }
}

/// Most server requests of one call that may wait for the client's answer at a time.
/// Sampling and elicitation come one or a few at a time; past this the upstream is
/// flooding, and each waiting request is held by the gateway until the call ends.
pub const MAX_WAITING: usize = 64;

/// Why a server request is declined when its stream holds a whole backlog.
const NOT_READING: &str = "gantry: the client is not reading its stream";

/// Gives the server request `upstream_id` to the client on `out` under a gateway id, or
/// declines it for the client: when its stream holds the whole backlog, or [`MAX_WAITING`]
/// of the stream's requests wait for answers already.
pub fn relay(
    out: &client_stream::Sender,
    ids: &mut MintedIds,
    declines: &Declines,
    conn: &Arc<Connection>,
    upstream_id: &Value,
    mut msg: Value,
) {
    if out.is_full() {
        declines.decline(conn, upstream_id, NOT_READING);
    } else if let Some(id) = ids.mint(conn, upstream_id) {
        msg["id"] = Value::String(id);
        out.send(&msg);
    } else {
        declines.decline(conn, upstream_id, &MintedIds::too_many());
    }
}

/// Why a server request is declined when the stream that relayed it ends unanswered.
const STREAM_ENDED: &str = "gantry: the client's stream ended before it answered";

/// Gateway ids given to server requests relayed on one stream. When the stream ends, those
/// the client has not answered are answered upstream with an error, so the server is not
/// left waiting for a client that has gone.
pub struct MintedIds {
    gw: Arc<Gateway>,
    ids: Vec<String>,
}

impl MintedIds {
    pub fn new(gw: &Arc<Gateway>) -> Self {
        Self {
            gw: Arc::clone(gw),
            ids: Vec::new(),
        }
    }

    /// A gateway id for the server request `upstream_id`, or `None` when
    /// [`MAX_WAITING`] of this stream's requests wait for the client already:
    /// the caller then declines it.
    pub fn mint(&mut self, conn: &Arc<Connection>, upstream_id: &Value) -> Option<String> {
        if self.ids.len() >= MAX_WAITING {
            // Forget the ones the client has answered since.
            let pending = self.gw.server_requests.lock().unwrap();
            self.ids.retain(|id| pending.contains_key(id));
            if self.ids.len() >= MAX_WAITING {
                return None;
            }
        }
        let id = self.gw.register_server_request(conn, upstream_id.clone());
        self.ids.push(id.clone());
        Some(id)
    }

    /// The reason given to the upstream for a request [`MintedIds::mint`] refused.
    pub fn too_many() -> String {
        format!("gantry: {MAX_WAITING} earlier requests already wait for the client's answer")
    }
}

impl Drop for MintedIds {
    fn drop(&mut self) {
        let unanswered: Vec<_> = {
            let mut pending = self.gw.server_requests.lock().unwrap();
            self.ids
                .iter()
                .filter_map(|id| pending.remove(id))
                .collect()
        };
        for (conn, upstream_id) in unanswered {
            conn.decline(&upstream_id, STREAM_ENDED);
        }
    }
}

/// The server requests one stream declined for its client. Each is answered upstream with
/// the reason, so the server is not left waiting, and counted in
/// `mcp_server_requests_declined_total{server}`; how many is logged once, when the stream
/// ends, so that a flooding upstream makes one line, not one per request.
pub struct Declines {
    upstream: Arc<Upstream>,
    /// For the log: the call's method, or `GET` for a session's GET stream.
    method: String,
    count: AtomicU64,
}

impl Declines {
    pub fn new(upstream: &Arc<Upstream>, method: &str) -> Self {
        Self {
            upstream: Arc::clone(upstream),
            method: method.to_string(),
            count: AtomicU64::new(0),
        }
    }

    /// Answers the server request `upstream_id` with an error giving `reason`.
    pub fn decline(&self, conn: &Connection, upstream_id: &Value, reason: &str) {
        conn.decline(upstream_id, reason);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.upstream
            .metrics
            .server_requests_declined()
            .increment(1);
    }
}

impl Drop for Declines {
    fn drop(&mut self) {
        let declined = *self.count.get_mut();
        if declined > 0 {
            tracing::warn!(
                upstream = %self.upstream.name,
                method = %self.method,
                declined,
                "the client did not keep up with the server's requests: gantry declined them for it"
            );
        }
    }
}
