//! Requests an upstream server makes of the client (sampling, elicitation, roots) on their
//! way to it: which clients can answer them, the ids they are relayed under and who may
//! answer them, and the bounds past which the gateway declines them for the client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::Gateway;
use super::auth::Principal;
use super::client_stream;
use super::replica_forward::OwnerMarks;
use super::session::{ClientCaps, SessionClaims, new_session_id};
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

/// Who may answer a server request: the caller it was relayed to, and, when it was
/// relayed on a session's stream, that session alone. The request may ask for consent
/// (elicitation) or for text the server will act on (sampling): another caller who
/// learned its id must not answer in its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answerer {
    principal: String,
    session: Option<String>,
}

impl Answerer {
    pub fn new(principal: &Principal, session: Option<&SessionClaims>) -> Self {
        Self {
            principal: principal.id.clone(),
            session: session.map(|claims| claims.sid.clone()),
        }
    }

    /// The client of a session: the principal that made it, on it alone.
    pub fn of_session(claims: &SessionClaims) -> Self {
        Self {
            principal: claims.sub.clone(),
            session: Some(claims.sid.clone()),
        }
    }

    fn admits(&self, principal: &Principal, session: Option<&SessionClaims>) -> bool {
        self.principal == principal.id
            && self
                .session
                .as_ref()
                .is_none_or(|sid| session.is_some_and(|claims| &claims.sid == sid))
    }
}

/// A server request relayed to a client, waiting for its answer.
struct Waiting {
    conn: Arc<Connection>,
    upstream_id: Value,
    answerer: Answerer,
}

/// The server requests relayed to clients and not answered yet, by the id each client
/// sees. Ids are random: one travels to one client, and is no use to another. Each ends
/// in the mark of the replica that relayed it, to which an answer that reaches another
/// replica is carried ([`super::replica_forward`]).
#[derive(Default)]
pub struct Pending {
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl Pending {
    /// Registers a server request relayed to `answerer` and returns the id it gets.
    fn register(
        &self,
        conn: &Arc<Connection>,
        upstream_id: Value,
        answerer: Answerer,
        mark: Option<&str>,
    ) -> String {
        let id = format!("gantry-{}-{}", conn.name(), new_session_id());
        let id = OwnerMarks::marked(id, mark);
        let waiting = Waiting {
            conn: Arc::clone(conn),
            upstream_id,
            answerer,
        };
        self.waiting.lock().unwrap().insert(id.clone(), waiting);
        id
    }

    /// Takes the request `id` for its answer, if it waits for this caller's. A request
    /// relayed to someone else stays, as if this caller had named none.
    pub fn answer(
        &self,
        id: &str,
        principal: &Principal,
        session: Option<&SessionClaims>,
    ) -> Option<(Arc<Connection>, Value)> {
        let mut waiting = self.waiting.lock().unwrap();
        if !waiting
            .get(id)
            .is_some_and(|w| w.answerer.admits(principal, session))
        {
            return None;
        }
        waiting.remove(id).map(|w| (w.conn, w.upstream_id))
    }

    /// Keeps in `ids` those still waiting for an answer.
    fn retain_waiting(&self, ids: &mut Vec<String>) {
        let waiting = self.waiting.lock().unwrap();
        ids.retain(|id| waiting.contains_key(id));
    }

    /// Takes those of `ids` still waiting, to answer them for the client.
    fn take_all(&self, ids: &[String]) -> Vec<(Arc<Connection>, Value)> {
        let mut waiting = self.waiting.lock().unwrap();
        ids.iter()
            .filter_map(|id| waiting.remove(id))
            .map(|w| (w.conn, w.upstream_id))
            .collect()
    }
}

/// Why a server request is declined when the stream that relayed it ends unanswered.
const STREAM_ENDED: &str = "gantry: the client's stream ended before it answered";

/// Gateway ids given to server requests relayed on one stream. When the stream ends, those
/// the client has not answered are answered upstream with an error, so the server is not
/// left waiting for a client that has gone.
pub struct MintedIds {
    gw: Arc<Gateway>,
    answerer: Answerer,
    /// This replica's mark, ending each id.
    mark: Option<Arc<str>>,
    ids: Vec<String>,
}

impl MintedIds {
    /// Ids for requests relayed to `answerer`, who alone may answer them, ending in
    /// `mark`.
    pub fn new(gw: &Arc<Gateway>, answerer: Answerer, mark: Option<Arc<str>>) -> Self {
        Self {
            gw: Arc::clone(gw),
            answerer,
            mark,
            ids: Vec::new(),
        }
    }

    /// A gateway id for the server request `upstream_id`, or `None` when
    /// [`MAX_WAITING`] of this stream's requests wait for the client already:
    /// the caller then declines it.
    pub fn mint(&mut self, conn: &Arc<Connection>, upstream_id: &Value) -> Option<String> {
        if self.ids.len() >= MAX_WAITING {
            // Forget the ones the client has answered since.
            self.gw.server_requests.retain_waiting(&mut self.ids);
            if self.ids.len() >= MAX_WAITING {
                return None;
            }
        }
        let id = self.gw.server_requests.register(
            conn,
            upstream_id.clone(),
            self.answerer.clone(),
            self.mark.as_deref(),
        );
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
        for (conn, upstream_id) in self.gw.server_requests.take_all(&self.ids) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session_of(principal: &str) -> SessionClaims {
        SessionClaims {
            sid: new_session_id(),
            ver: "2025-11-25".into(),
            srv: None,
            sub: principal.into(),
            caps: ClientCaps::default(),
            iat: 1,
        }
    }

    #[test]
    fn a_request_relayed_on_a_session_is_answered_on_that_session_by_its_caller_alone() {
        let mine = session_of("key:a");
        let answerer = Answerer::of_session(&mine);
        let me = Principal::new("key:a");
        assert!(answerer.admits(&me, Some(&mine)));
        assert_eq!(answerer, Answerer::new(&me, Some(&mine)));
        // The same caller outside the session, or on another of its sessions.
        assert!(!answerer.admits(&me, None));
        assert!(!answerer.admits(&me, Some(&session_of("key:a"))));
        // Another caller, with or without a session of its own.
        let other = Principal::new("key:b");
        assert!(!answerer.admits(&other, None));
        assert!(!answerer.admits(&other, Some(&session_of("key:b"))));
    }

    #[test]
    fn a_request_relayed_outside_sessions_is_answered_by_its_caller_alone() {
        let answerer = Answerer::new(&Principal::new("key:a"), None);
        assert!(answerer.admits(&Principal::new("key:a"), None));
        assert!(answerer.admits(&Principal::new("key:a"), Some(&session_of("key:a"))));
        assert!(!answerer.admits(&Principal::new("key:b"), None));
    }
}
