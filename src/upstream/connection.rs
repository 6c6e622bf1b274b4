//! One MCP client session to one upstream, shared by every downstream caller.
//!
//! Downstream requests are multiplexed onto it: each gets a fresh upstream id (and its
//! progress token is rewritten to that id), and whatever the upstream sends back is
//! routed to the call it belongs to — its response, its progress, and any request the
//! server makes of the client while the call runs (sampling, elicitation, roots).
//! Messages that belong to no call (list changes, resource updates) are broadcast.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc as call_events;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::transport::{Inbox, Outbox};
use crate::gateway::jsonrpc::{self, Message};
use crate::gateway::raw_response::{RawResponse, Shape};

/// What a caller sees while its request is in flight.
#[derive(Debug)]
pub enum CallEvent {
    /// A notification related to the call (progress with the caller's own token, logging).
    Notification(Value),
    /// The server asks the client something; answer with [`Connection::respond`].
    ServerRequest { upstream_id: Value, msg: Value },
    /// The final response, with the caller's original id restored, as the upstream
    /// wrote it.
    Response(RawResponse),
    /// The upstream went away before answering.
    Failed(String),
    /// The deadline given to [`Connection::start_call`] passed first; the upstream was
    /// told to cancel.
    TimedOut,
}

/// How often overdue calls are looked for. One sweep per connection replaces a timer per
/// call: arming a timer earlier than the runtime's next wake-up costs a self-wake (an
/// eventfd write and an extra epoll round) on every request.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

struct Pending {
    tx: call_events::UnboundedSender<CallEvent>,
    original_id: Value,
    original_token: Option<Value>,
    deadline: Instant,
    /// The task a `tasks/…` call names: requests made for that task come to it.
    task: Option<Box<str>>,
}

/// Result of the upstream's `initialize`.
#[derive(Debug, Clone)]
pub struct ServerInit {
    pub protocol_version: String,
    pub result: Map<String, Value>,
}

impl ServerInit {
    pub fn capabilities(&self) -> Value {
        self.result
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({}))
    }
    pub fn has_capability(&self, name: &str) -> bool {
        self.result
            .get("capabilities")
            .and_then(|c| c.get(name))
            .is_some_and(|v| !v.is_null())
    }
}

/// A client stream that can answer server requests made outside any call.
struct RequestListener {
    id: u64,
    can_answer: Box<dyn Fn(&Value) -> bool + Send + Sync>,
    tx: mpsc::Sender<(Value, Value)>,
    when_full: WhenFull,
}

/// The task a server request was made for (2025-11-25): its `_meta` names it.
pub fn task_of(msg: &Value) -> Option<&str> {
    msg.pointer("/params/_meta/io.modelcontextprotocol~1related-task/taskId")
        .and_then(Value::as_str)
}

/// What becomes of a server request (its upstream id given) that a listener could answer
/// but has no room for: its stream declines it, so it is counted where the stream's
/// other declines are.
pub type WhenFull = Arc<dyn Fn(&Connection, &Value) + Send + Sync>;

/// Unregisters its listener when dropped.
pub struct ListenerGuard {
    conn: std::sync::Weak<Connection>,
    id: u64,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.upgrade() {
            conn.listeners.lock().unwrap().retain(|l| l.id != self.id);
        }
    }
}

pub struct Connection {
    name: Arc<str>,
    listeners: Mutex<Vec<RequestListener>>,
    outbox: OnceLock<Arc<dyn Outbox>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    events: broadcast::Sender<Arc<Value>>,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
    init: OnceLock<ServerInit>,
}

/// A request in flight. Dropping it before the response cancels the upstream request.
pub struct Call {
    id: u64,
    conn: Arc<Connection>,
    rx: call_events::UnboundedReceiver<CallEvent>,
    finished: bool,
    /// The transport's exchange for this request, driven by whoever awaits the call, so
    /// the request's own I/O runs in the caller's task.
    exchange: Option<BoxFuture<'static, ()>>,
}

impl Call {
    pub async fn next(&mut self) -> Option<CallEvent> {
        let event = loop {
            match self.exchange.as_mut() {
                Some(exchange) => tokio::select! {
                    biased;
                    event = self.rx.next() => break event,
                    () = exchange => self.exchange = None,
                },
                None => break self.rx.next().await,
            }
        };
        if matches!(
            event,
            Some(CallEvent::Response(_) | CallEvent::Failed(_) | CallEvent::TimedOut) | None
        ) {
            self.finished = true;
        }
        event
    }
}

/// What an upstream sent that is not JSON, and why.
#[derive(Debug)]
pub struct NotJson {
    pub bytes: bytes::Bytes,
    pub error: serde_json::Error,
}

/// Why a call the gateway made for itself ended without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    Failed(String),
    TimedOut,
}

impl Call {
    /// The answer to a call the gateway made for itself (handshake, lists, pings):
    /// notifications are skipped and server requests declined on the way.
    pub async fn answer(&mut self) -> Result<Value, NoAnswer> {
        loop {
            match self.next().await {
                Some(CallEvent::Response(r)) => return Ok(r.to_value()),
                Some(CallEvent::Failed(e)) => return Err(NoAnswer::Failed(e)),
                Some(CallEvent::TimedOut) => return Err(NoAnswer::TimedOut),
                None => return Err(NoAnswer::Failed("connection closed".into())),
                Some(CallEvent::ServerRequest { upstream_id, msg }) => {
                    self.conn.answer_unrouted(&upstream_id, &msg)
                }
                Some(CallEvent::Notification(_)) => {}
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.abandon(self.id);
        }
    }
}

impl Connection {
    /// A connection not yet wired to a transport; give the [`Inbox`] to the transport,
    /// then [`attach`](Self::attach) its outbox.
    pub fn new(name: &str) -> (Arc<Self>, Inbox) {
        let (events, _) = broadcast::channel(256);
        let conn = Arc::new(Self {
            name: Arc::from(name),
            listeners: Mutex::new(Vec::new()),
            outbox: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            events,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            init: OnceLock::new(),
        });
        let inbox = Inbox::new(Arc::downgrade(&conn));
        tokio::spawn(sweep_overdue(Arc::downgrade(&conn)));
        (conn, inbox)
    }

    /// Registers a client stream for server requests made outside any call; they are
    /// delivered as (upstream id, message) to the newest listener that can answer (and
    /// may see) the message.
    pub fn listen_for_requests(
        self: &Arc<Self>,
        can_answer: impl Fn(&Value) -> bool + Send + Sync + 'static,
        tx: mpsc::Sender<(Value, Value)>,
        when_full: WhenFull,
    ) -> ListenerGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.listeners.lock().unwrap().push(RequestListener {
            id,
            can_answer: Box::new(can_answer),
            tx,
            when_full,
        });
        ListenerGuard {
            conn: Arc::downgrade(self),
            id,
        }
    }

    pub fn attach(&self, outbox: Arc<dyn Outbox>) {
        let _ = self.outbox.set(outbox);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn init(&self) -> Option<&ServerInit> {
        self.init.get()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.events.subscribe()
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    pub fn close_reason(&self) -> String {
        self.close_reason
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "closed".into())
    }

    /// Runs the MCP handshake; the gateway declares every client capability so the
    /// upstream will use them, and answers on behalf of clients that lack one.
    pub async fn initialize(self: &Arc<Self>, client_name: &str) -> Result<(), String> {
        let body = jsonrpc::request(
            "initialize",
            json!({
                "protocolVersion": crate::gateway::era::LATEST_LEGACY,
                "capabilities": { "sampling": {}, "elicitation": {}, "roots": { "listChanged": true } },
                "clientInfo": { "name": client_name, "version": env!("CARGO_PKG_VERSION") }
            }),
        );
        // The supervisor bounds the handshake; this deadline is only a backstop.
        let mut call = self.start_call(body, Duration::from_secs(3600));
        let response = match call.answer().await {
            Ok(response) => response,
            Err(NoAnswer::Failed(e)) => return Err(format!("initialize failed: {e}")),
            Err(NoAnswer::TimedOut) => return Err("initialize timed out".into()),
        };
        let result = match response.get("result") {
            Some(Value::Object(r)) => r.clone(),
            _ => {
                let err = response.get("error").cloned().unwrap_or(Value::Null);
                return Err(format!("initialize failed: {err}"));
            }
        };
        let protocol_version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(crate::gateway::era::LATEST_LEGACY)
            .to_string();
        let _ = self.init.set(ServerInit {
            protocol_version,
            result,
        });
        self.send(jsonrpc::notification(
            "notifications/initialized",
            json!({}),
        ));
        Ok(())
    }

    /// Sends a request upstream under a fresh id; the caller's id and progress token are
    /// restored on everything routed back.
    pub fn start_call(self: &Arc<Self>, mut body: Map<String, Value>, timeout: Duration) -> Call {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // A linked queue, allocated per event: most calls see one event (their answer),
        // and tokio's channel allocates room for 32 of them up front (5 KB a call).
        let (tx, rx) = call_events::unbounded();
        let original_id = body.insert("id".into(), json!(id)).unwrap_or(Value::Null);
        // Only a caller that asked for progress gets it: the upstream sees a token, its
        // id, only in place of the caller's own.
        let original_token = body
            .get_mut("params")
            .and_then(|p| p.get_mut("_meta"))
            .and_then(|meta| meta.get_mut("progressToken"))
            .map(|token| std::mem::replace(token, json!(id)));
        let mut call = Call {
            id,
            conn: Arc::clone(self),
            rx,
            finished: false,
            exchange: None,
        };
        if self.closed.is_cancelled() {
            let _ = tx.unbounded_send(CallEvent::Failed(self.close_reason()));
            return call;
        }
        let task = body
            .get("method")
            .and_then(Value::as_str)
            .filter(|m| m.starts_with("tasks/"))
            .and_then(|_| body.get("params")?.get("taskId")?.as_str())
            .map(Box::from);
        self.pending.lock().unwrap().insert(
            id,
            Pending {
                tx,
                original_id,
                original_token,
                deadline: Instant::now() + timeout,
                task,
            },
        );
        call.exchange = self.outbox.get().map(|o| o.exchange(Value::Object(body)));
        call
    }

    /// Relays a notification from a client (cancellation, roots change) upstream.
    pub fn notify(&self, body: Map<String, Value>) {
        self.send(Value::Object(body));
    }

    /// Answers a server-to-client request with the client's result or error.
    pub fn respond(&self, upstream_id: Value, mut body: Map<String, Value>) {
        body.insert("id".into(), upstream_id);
        self.send(Value::Object(body));
    }

    fn send(&self, msg: Value) {
        if let Some(outbox) = self.outbox.get() {
            outbox.send(msg);
        }
    }

    /// Whether the request gantry sent upstream as `id` still waits for its answer.
    pub(super) fn awaits(&self, id: u64) -> bool {
        self.pending.lock().unwrap().contains_key(&id)
    }

    fn abandon(&self, id: u64) {
        if self.pending.lock().unwrap().remove(&id).is_some() && !self.closed.is_cancelled() {
            self.send(jsonrpc::notification(
                "notifications/cancelled",
                json!({ "requestId": id, "reason": "client went away" }),
            ));
        }
    }

    pub(super) fn close(&self, reason: String) {
        *self.close_reason.lock().unwrap() = Some(reason.clone());
        self.closed.cancel();
        let pending: Vec<Pending> = self
            .pending
            .lock()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in pending {
            let _ = p.tx.unbounded_send(CallEvent::Failed(reason.clone()));
        }
    }

    /// Routes one message as the transport read it: answers go to their call without
    /// being parsed into a tree ([`RawResponse`]), anything else through [`route`].
    /// The id of the response delivered, if it was one.
    ///
    /// [`route`]: Self::route
    pub(super) fn route_bytes(
        &self,
        bytes: bytes::Bytes,
        related: Option<u64>,
    ) -> Result<Option<Value>, NotJson> {
        match RawResponse::classify(bytes) {
            Shape::Response(response) => {
                let id = response.id();
                self.route_response(response);
                Ok(Some(id))
            }
            Shape::Other(bytes) => {
                let msg: Value = match serde_json::from_slice(&bytes) {
                    Ok(msg) => msg,
                    Err(error) => return Err(NotJson { bytes, error }),
                };
                let id = msg
                    .get("id")
                    .filter(|_| msg.get("method").is_none())
                    .cloned();
                self.route(msg, related);
                Ok(id)
            }
        }
    }

    fn route_response(&self, mut response: RawResponse) {
        let Some(n) = response.id().as_u64() else {
            return;
        };
        let Some(p) = self.pending.lock().unwrap().remove(&n) else {
            return;
        };
        response.set_id(p.original_id);
        let _ = p.tx.unbounded_send(CallEvent::Response(response));
    }

    pub(super) fn route(&self, msg: Value, related: Option<u64>) {
        let message = match jsonrpc::classify(msg) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(upstream = %self.name, error = %e.message, "upstream sent an invalid message");
                return;
            }
        };
        match message {
            Message::Response { body, .. } => {
                // Rare here (answers the transport made up, the handshake): the common
                // case arrives as bytes, through route_bytes.
                let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
                if let Shape::Response(response) = RawResponse::classify(bytes.into()) {
                    self.route_response(response);
                }
            }
            Message::Notification { method, mut body } => {
                if method == "notifications/progress" {
                    let token = jsonrpc::params(&body)
                        .and_then(|p| p.get("progressToken"))
                        .and_then(Value::as_u64);
                    let pending = self.pending.lock().unwrap();
                    // Progress for a call whose caller gave no token is for nobody.
                    if let Some(p) = token.and_then(|t| pending.get(&t)) {
                        if let (Some(original), Some(Value::Object(params))) =
                            (&p.original_token, body.get_mut("params"))
                        {
                            params.insert("progressToken".into(), original.clone());
                            let _ =
                                p.tx.unbounded_send(CallEvent::Notification(Value::Object(body)));
                        }
                    }
                    return;
                }
                if let Some(r) = related {
                    if let Some(p) = self.pending.lock().unwrap().get(&r) {
                        let _ =
                            p.tx.unbounded_send(CallEvent::Notification(Value::Object(body)));
                        return;
                    }
                }
                let _ = self.events.send(Arc::new(Value::Object(body)));
            }
            Message::Request { id, body, .. } => {
                let msg = Value::Object(body);
                let pending = self.pending.lock().unwrap();
                // Over stdio nothing ties a server request to the call that caused it;
                // the most recent call in flight is the one that is waiting on it. Not for
                // a task's request: the call that created the task has long been answered;
                // the task's `tasks/result` (its owner's) is waiting on it, else the
                // listeners, which know whose task it is.
                let target =
                    related
                        .and_then(|r| pending.get(&r))
                        .or_else(|| match task_of(&msg) {
                            Some(task) => {
                                pending.values().find(|p| p.task.as_deref() == Some(task))
                            }
                            None => pending.iter().max_by_key(|(k, _)| **k).map(|(_, p)| p),
                        });
                match target {
                    Some(p) => {
                        let _ = p.tx.unbounded_send(CallEvent::ServerRequest {
                            upstream_id: id,
                            msg,
                        });
                    }
                    None => {
                        drop(pending);
                        self.offer_to_listeners(id, msg);
                    }
                }
            }
        }
    }

    fn offer_to_listeners(&self, id: Value, msg: Value) {
        let mut full = None;
        for listener in self.listeners.lock().unwrap().iter().rev() {
            if !(listener.can_answer)(&msg) {
                continue;
            }
            match listener.tx.try_send((id.clone(), msg.clone())) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    full.get_or_insert_with(|| Arc::clone(&listener.when_full));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        match full {
            Some(when_full) => when_full(self, &id),
            None => self.answer_unrouted(&id, &msg),
        }
    }

    /// Answers a server request that no client can take (or may see): pings succeed, roots are empty,
    /// anything else is refused.
    pub fn answer_unrouted(&self, id: &Value, msg: &Value) {
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let reply = match method {
            "ping" => jsonrpc::result_response(id, json!({})),
            "roots/list" => jsonrpc::result_response(id, json!({ "roots": [] })),
            _ => jsonrpc::error_response(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!("no client connected through the gateway can answer {method}"),
                None,
            ),
        };
        self.send(reply);
    }

    /// Answers a server request for a client that cannot take it now.
    pub fn decline(&self, id: &Value, reason: &str) {
        self.send(jsonrpc::error_response(
            id,
            jsonrpc::INTERNAL_ERROR,
            reason,
            None,
        ));
    }
}

/// Expires overdue calls of one connection until it is dropped or closed.
async fn sweep_overdue(conn: std::sync::Weak<Connection>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conn) = conn.upgrade() else { return };
        if conn.closed.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let overdue: Vec<(u64, Pending)> = {
            let mut pending = conn.pending.lock().unwrap();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (id, p) in overdue {
            let _ = p.tx.unbounded_send(CallEvent::TimedOut);
            conn.send(jsonrpc::notification(
                "notifications/cancelled",
                json!({ "requestId": id, "reason": "timed out in the gateway" }),
            ));
        }
    }
}
