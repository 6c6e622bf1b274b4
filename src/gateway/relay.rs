//! Relaying one client request to one upstream and its answer back: plain JSON when the
//! upstream answers straight away, an SSE stream when it first sends progress, logs or
//! requests of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::audited::Audited;
use super::client_stream;
use super::era::{self, Era};
use super::http::{Ctx, json_bytes_response, json_response};
use super::jsonrpc;
use super::log_levels::{self, LogFilter};
use super::mrtr;
use super::param_headers;
use super::raw_response::RawResponse;
use super::resource_subscriptions::{self, Asked};
use super::result_cache::{CacheKeys, ResultCache};
use super::resumption::StreamKind;
use super::server_requests::{self, Answerer, Declines, MintedIds, client_can_answer};
use super::task_extension;
use crate::upstream::{Admission, Call, CallEvent, Connection, Upstream, UpstreamError};

/// An upstream's answer, relayed as it came (2026-07-28 clients get their result fields
/// added, which needs the tree).
fn finish_answer(ctx: &Ctx, response: RawResponse) -> Response {
    if ctx.era == Era::Modern {
        return finish(ctx, response.to_value());
    }
    json_bytes_response(StatusCode::OK, response.to_vec())
}

/// Final touches for the client's era.
pub fn finish(ctx: &Ctx, mut response: Value) -> Response {
    let mut status = StatusCode::OK;
    if ctx.era == Era::Modern {
        era::mark_complete(&mut response, &ctx.method);
        // 2026-07-28: an unimplemented method is an HTTP 404 carrying -32601, a request
        // needing a capability its client did not declare a 400 carrying -32021.
        match response.pointer("/error/code").and_then(Value::as_i64) {
            Some(jsonrpc::METHOD_NOT_FOUND) => status = StatusCode::NOT_FOUND,
            Some(jsonrpc::MISSING_CLIENT_CAPABILITY) => status = StatusCode::BAD_REQUEST,
            _ => {}
        }
    }
    json_response(status, &response)
}

pub fn upstream_error(id: &Value, error: &UpstreamError) -> Value {
    let (code, server) = match error {
        UpstreamError::Unavailable(s, _) | UpstreamError::CircuitOpen(s, ..) => {
            (jsonrpc::UPSTREAM_UNAVAILABLE, s)
        }
        UpstreamError::Timeout(s, _) => (jsonrpc::REQUEST_TIMEOUT, s),
        UpstreamError::Rejected(s, _) | UpstreamError::Invalid(s, _) => {
            (jsonrpc::INTERNAL_ERROR, s)
        }
    };
    jsonrpc::error_response(
        id,
        code,
        &error.to_string(),
        Some(json!({ "server": server })),
    )
}

/// A JSON-RPC error about an upstream: HTTP 200, since the gateway itself worked.
pub fn upstream_error_response(id: &Value, error: &UpstreamError) -> Response {
    json_response(StatusCode::OK, &upstream_error(id, error))
}

fn outcome_label(response: &Value) -> &'static str {
    error_outcome(response.pointer("/error/code").and_then(Value::as_i64))
}

pub(super) fn error_outcome(code: Option<i64>) -> &'static str {
    match code {
        None => "ok",
        Some(jsonrpc::REQUEST_TIMEOUT) => "timeout",
        Some(jsonrpc::UPSTREAM_UNAVAILABLE) => "unavailable",
        Some(_) => "error",
    }
}

/// A session-era call that the client may cancel with `notifications/cancelled`,
/// findable by (session, request id) until dropped. Stateless 2026-07-28 requests cancel
/// by closing their stream, so they register nothing.
struct Cancellable {
    gw: Arc<Gateway>,
    key: Option<(String, String)>,
    token: CancellationToken,
}

impl Cancellable {
    fn register(gw: &Arc<Gateway>, ctx: &Ctx, id: &Value) -> Self {
        let token = CancellationToken::new();
        let key = ctx
            .session
            .as_ref()
            .map(|s| (s.sid.clone(), id.to_string()));
        if let Some(key) = &key {
            gw.in_flight
                .lock()
                .unwrap()
                .insert(key.clone(), token.clone());
        }
        Self {
            gw: Arc::clone(gw),
            key,
            token,
        }
    }
}

impl Drop for Cancellable {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.gw.in_flight.lock().unwrap().remove(key);
        }
    }
}

/// Counts a request in `mcp_requests_in_flight` from when it is sent upstream until
/// it is answered or abandoned.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn start(upstream: &Upstream) -> Self {
        let gauge = upstream.metrics.in_flight().clone();
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Records a call's outcome: in the metrics, and for the upstream's circuit breaker.
fn settle(
    upstream: &Upstream,
    admission: Admission,
    method: &str,
    started: Instant,
    outcome: &'static str,
    audited: Option<Audited>,
) {
    upstream.record_outcome(outcome, admission);
    if let Some(audited) = audited {
        audited.record(&upstream.name, method, outcome, started);
    }
    upstream
        .metrics
        .record(metric_method(method), outcome, started.elapsed());
}

/// Method names are client input: only known ones become label values, so a hostile
/// client cannot blow up the metric cardinality.
pub fn metric_method(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "subscriptions/listen",
        "tasks/get",
        "tasks/result",
        "tasks/update",
        "tasks/cancel",
    ];
    KNOWN
        .iter()
        .find(|k| **k == method)
        .copied()
        .unwrap_or("other")
}

/// 2026-07-28 `server/discover` for one server, from its initialize result.
pub async fn discover_server(gw: &Gateway, ctx: &Ctx, name: &str, id: &Value) -> Response {
    let Some(upstream) = gw.find(ctx.principal.access.as_deref(), name) else {
        return super::http::no_such_server(id, name);
    };
    match upstream.connection(upstream.timeout()).await {
        Ok(conn) => {
            let init = conn.init().expect("initialized");
            let mut result = Map::new();
            result.insert("supportedVersions".into(), json!(era::all_versions()));
            for key in ["capabilities", "serverInfo", "instructions"] {
                if let Some(v) = init.result.get(key) {
                    result.insert(key.into(), v.clone());
                }
            }
            task_extension::offered(result.get_mut("capabilities"));
            finish(ctx, jsonrpc::result_response(id, Value::Object(result)))
        }
        Err(e) => upstream_error_response(id, &e),
    }
}

/// Everything that lives as long as one upstream call, whether it is being awaited or
/// parked for an MRTR round trip.
pub struct Running {
    call: Call,
    /// Events taken from the call while it was parked, given out before any new one.
    held: VecDeque<CallEvent>,
    /// Whose progress token the call's progress notifications carry to the client.
    progress_to: ProgressTo,
    pub(super) conn: Arc<Connection>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) method: String,
    pub(super) started: Instant,
    pub(super) timeout: Duration,
    /// The request's tool or prompt name, or resource URI.
    pub(super) target: String,
    /// A subscribe's hold, kept once the upstream accepts it (boxed: every call's future
    /// carries the field, few calls are subscribes).
    subscription: Option<Box<resource_subscriptions::Pending>>,
    admission: Admission,
    audited: Option<Audited>,
    /// Set when the server opted this tool in to result caching.
    cache_keys: Option<CacheKeys>,
    /// The session's log level, for the log messages the call brings.
    log_filter: Option<LogFilter>,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

/// Whose progress token a call's progress notifications carry to the client.
enum ProgressTo {
    /// The caller's that started the call: the upstream connection puts it back.
    Caller,
    /// The token of the retry that resumed the call.
    Retry(Value),
    /// Nobody's: the retry that resumed the call asked for no progress.
    Nobody,
}

fn is_progress(notification: &Value) -> bool {
    notification.get("method").and_then(Value::as_str) == Some("notifications/progress")
}

impl Running {
    /// Settles the call's final outcome (its audit record included).
    pub(super) fn settle(&mut self, outcome: &'static str) {
        settle(
            &self.upstream,
            self.admission,
            &self.method,
            self.started,
            outcome,
            self.audited.take(),
        );
    }

    /// The call's next event: first those held while it was parked.
    pub(super) async fn next_event(&mut self) -> Option<CallEvent> {
        loop {
            let event = match self.held.pop_front() {
                Some(event) => Some(event),
                None => self.call.next().await,
            };
            match (event, &self.progress_to) {
                (Some(CallEvent::Notification(n)), _)
                    if self.log_filter.as_ref().is_some_and(|f| !f.wants(&n)) => {}
                (Some(CallEvent::Notification(mut n)), ProgressTo::Retry(token))
                    if is_progress(&n) =>
                {
                    if let Some(Value::Object(params)) = n.get_mut("params") {
                        params.insert("progressToken".into(), token.clone());
                    }
                    return Some(CallEvent::Notification(n));
                }
                (Some(CallEvent::Notification(n)), ProgressTo::Nobody) if is_progress(&n) => {}
                (event, _) => return event,
            }
        }
    }

    /// From now on the call's progress belongs to the retry that resumed it (2026-07-28):
    /// progress is a request's own, so it carries the retry's token, or, if the retry
    /// asked for none, is not relayed. Held progress included.
    pub(super) fn follow_retry_progress(&mut self, token: Option<Value>) {
        self.progress_to = token.map_or(ProgressTo::Nobody, ProgressTo::Retry);
    }

    /// Log messages, likewise, from now on at the level the retry asked for.
    pub(super) fn follow_retry_log_level(&mut self, gw: &Gateway, retry: &Ctx) {
        self.log_filter = LogFilter::of(gw, retry);
    }

    /// The upstream's next event for the call, past any held.
    pub(super) async fn next_from_upstream(&mut self) -> Option<CallEvent> {
        self.call.next().await
    }

    /// What is held for whoever drives the call next, oldest first.
    pub(super) fn held(&self) -> impl Iterator<Item = &CallEvent> {
        self.held.iter()
    }

    /// Keeps `event` for whoever drives the call next.
    pub(super) fn hold(&mut self, event: CallEvent) {
        self.held.push_back(event);
    }

    /// The error a call that ended without its answer (failed, timed out, its connection
    /// closed: `event`) leaves its client, and the outcome it is settled with.
    pub(super) fn error_of(&self, event: Option<CallEvent>) -> (UpstreamError, &'static str) {
        let name = self.upstream.name.clone();
        match event {
            Some(CallEvent::TimedOut) => (
                UpstreamError::Timeout(name, self.timeout.as_millis()),
                "timeout",
            ),
            Some(CallEvent::Failed(reason)) => {
                (UpstreamError::Unavailable(name, reason), "unavailable")
            }
            _ => (
                UpstreamError::Unavailable(name, "connection closed".into()),
                "unavailable",
            ),
        }
    }

    /// [`Self::error_of`], the call settled with its outcome.
    pub(super) fn unanswered(&mut self, event: Option<CallEvent>) -> UpstreamError {
        let (error, outcome) = self.error_of(event);
        self.settle(outcome);
        error
    }

    /// Settles the request that parked the call for a client's input; the request that
    /// resumes it settles again, with its own audit record.
    pub(super) fn settle_parked(&self) {
        settle(
            &self.upstream,
            self.admission,
            &self.method,
            self.started,
            "input_required",
            self.audited.clone(),
        );
    }
}

/// Relays a request to `upstream`, under the upstream's timeout and concurrency cap.
pub async fn relay(
    gw: Arc<Gateway>,
    mut ctx: Ctx,
    upstream: Arc<Upstream>,
    id: Value,
    mut body: Map<String, Value>,
) -> Response {
    if mrtr::is_retry(&ctx, &body) {
        return Box::pin(mrtr::resume(gw, ctx, id, body)).await;
    }
    if task_extension::may_run_as_task(&ctx, &upstream) {
        if let Err(refused) = Box::pin(task_extension::augment(
            &gw, &mut ctx, &upstream, &id, &mut body,
        ))
        .await
        {
            return refused;
        }
    }
    match start(&gw, &ctx, &upstream, &id, body).await {
        Started::Running(run) => drive(gw, ctx, id, run).await,
        Started::Answered(response) => response,
    }
}

/// An upstream call under way, or the answer that settled the request without one.
// Not boxed: every relayed request takes the large variant, and moves it once.
#[allow(clippy::large_enum_variant)]
pub(super) enum Started {
    Running(Running),
    Answered(Response),
}

/// Sends a request to `upstream` once the result cache, rate limit, circuit breaker and
/// concurrency cap let it through.
pub(super) async fn start(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    upstream: &Arc<Upstream>,
    id: &Value,
    mut body: Map<String, Value>,
) -> Started {
    let started = Instant::now();
    let method = body
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if param_headers::applies(ctx, &method) {
        // Boxed: it may fetch the server's tool list, and every call's future would grow.
        if let Err(refusal) = Box::pin(param_headers::verify(ctx, upstream, id, &body)).await {
            return Started::Answered(refusal);
        }
    }
    let audited = Audited::new(gw, ctx, &body);
    let cache_keys = ResultCache::keys(upstream, &ctx.principal, &body);
    if let Some(result) = cache_keys.as_ref().and_then(|k| gw.results.get(k)) {
        settle(
            upstream,
            Admission::default(),
            &method,
            started,
            "cached",
            audited,
        );
        return Started::Answered(finish(ctx, jsonrpc::result_response(id, result)));
    }
    if let Err(refusal) = gw.limits.admit_server(upstream).await {
        settle(
            upstream,
            Admission::default(),
            &method,
            started,
            "rate_limited",
            audited,
        );
        return Started::Answered(refusal.into_response());
    }
    let admission = match upstream.admit() {
        Ok(admission) => admission,
        Err(e) => {
            settle(
                upstream,
                Admission::default(),
                &method,
                started,
                "circuit_open",
                audited,
            );
            return Started::Answered(upstream_error_response(id, &e));
        }
    };
    let timeout = upstream.timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let permit = match upstream.permit(timeout).await {
        Ok(p) => p,
        Err(e) => {
            // Waiting for a slot is the gateway's queue, not a failure of the upstream.
            settle(upstream, admission, &method, started, "overloaded", audited);
            return Started::Answered(upstream_error_response(id, &e));
        }
    };
    let conn = match upstream
        .connection(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            settle(
                upstream,
                admission,
                &method,
                started,
                "unavailable",
                audited,
            );
            return Started::Answered(upstream_error_response(id, &e));
        }
    };
    if method == "logging/setLevel"
        && let Some((answer, outcome)) = log_levels::asked(gw, ctx, upstream, &conn, id, &body)
    {
        settle(upstream, admission, &method, started, outcome, audited);
        return Started::Answered(finish(ctx, answer));
    }
    if let Some(severity) = ctx.log_level
        && log_levels::must_ask(upstream, &conn, severity)
    {
        // Boxed: few requests ask a server for more, and every call's future would grow.
        Box::pin(log_levels::tell(upstream, &conn, severity)).await;
    }
    let subscription = match resource_subscriptions::asked(gw, ctx, upstream, &method, &body) {
        Asked::Other => None,
        Asked::Subscribe(pending) => Some(Box::new(pending)),
        Asked::HeldByOthers => {
            settle(
                upstream,
                admission,
                &method,
                started,
                "held_by_others",
                audited,
            );
            let answer = jsonrpc::result_response(id, json!({}));
            return Started::Answered(finish(ctx, answer));
        }
        Asked::TooMany => {
            settle(upstream, admission, &method, started, "too_many", audited);
            let message = format!(
                "this session holds {} resource subscriptions, the most gantry keeps for one: unsubscribe from one first",
                resource_subscriptions::MAX_PER_HOLDER
            );
            let answer = jsonrpc::error_response(id, jsonrpc::INVALID_PARAMS, &message, None);
            return Started::Answered(finish(ctx, answer));
        }
    };
    let target = mrtr::target(&body);
    body.insert("id".into(), id.clone());
    // The connection enforces the deadline; no timer is armed per request.
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let call = conn.start_call(body, remaining);
    let running = Running {
        call,
        held: VecDeque::new(),
        progress_to: ProgressTo::Caller,
        conn,
        _in_flight: InFlight::start(upstream),
        upstream: Arc::clone(upstream),
        method,
        started,
        timeout,
        target,
        subscription,
        admission,
        audited,
        cache_keys,
        log_filter: LogFilter::of(gw, ctx),
        _permit: permit,
    };
    Started::Running(running)
}

/// Sends a request to `upstream` and waits for its answer, which comes back whole for the
/// gateway to read rather than relayed: progress and logs are not passed on, and server
/// requests are answered as no client is there to (`Err` is the answer for the client
/// when the call could not be made or ended without an answer).
pub(super) async fn exchange(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    upstream: &Arc<Upstream>,
    id: &Value,
    body: Map<String, Value>,
) -> Result<Value, Response> {
    let mut run = match start(gw, ctx, upstream, id, body).await {
        Started::Running(run) => run,
        Started::Answered(response) => return Err(response),
    };
    loop {
        match run.next_event().await {
            Some(CallEvent::Response(response)) => {
                run.settle(error_outcome(response.error_code()));
                let mut response = response.to_value();
                response["id"] = id.clone();
                return Ok(response);
            }
            Some(CallEvent::Notification(_)) => {}
            Some(CallEvent::ServerRequest { upstream_id, msg }) => {
                run.conn.answer_unrouted(&upstream_id, &msg);
            }
            unanswered => return Err(upstream_error_response(id, &run.unanswered(unanswered))),
        }
    }
}

/// Waits for a call's answer and relays it as `id`: plain JSON when it comes first, an
/// SSE stream when progress, logs or server requests come before it, or (2026-07-28
/// clients) an `InputRequiredResult` when the upstream needs the client's input.
pub async fn drive(gw: Arc<Gateway>, ctx: Ctx, id: Value, mut run: Running) -> Response {
    let cancel = Cancellable::register(&gw, &ctx, &id);

    // Fast path: most calls answer with nothing in between, and get plain JSON. Server
    // requests the gateway answers itself need nothing sent, so they stay on it too.
    let first = loop {
        let event = tokio::select! {
            event = run.next_event() => event,
            _ = cancel.token.cancelled() => {
                run.settle("cancelled");
                // Dropping the call tells the upstream (notifications/cancelled).
                drop(run);
                let response = jsonrpc::error_response(&id, jsonrpc::REQUEST_CANCELLED, "Request cancelled by the client", None);
                return json_response(StatusCode::OK, &response);
            }
        };
        match event {
            Some(CallEvent::ServerRequest { upstream_id, msg })
                if !mrtr::applies(&ctx, &msg) && !relays_to_client(&ctx, &msg) =>
            {
                run.conn.answer_unrouted(&upstream_id, &msg);
                if let Some(refusal) = mrtr::missing_capability(&ctx, &id, &msg) {
                    run.settle("missing_capability");
                    // Dropping the call tells the upstream (notifications/cancelled).
                    drop(run);
                    return finish(&ctx, refusal);
                }
            }
            other => break other,
        }
    };
    let first = match first {
        Some(CallEvent::Response(mut response)) => {
            response.set_id(id);
            run.settle(error_outcome(response.error_code()));
            if ctx.tasks.is_some() {
                let mut response = response.to_value();
                super::tasks::rewrite(&gw, &ctx, &run.upstream, &mut response);
                return finish(&ctx, response);
            }
            if let Some(keys) = &run.cache_keys {
                gw.results.put(keys, &response.to_value());
            }
            if let (Some(pending), true) = (run.subscription.take(), response.has_result()) {
                pending.keep(&run.upstream, &run.conn, gw.shutdown.clone());
            }
            return finish_answer(&ctx, response);
        }
        Some(CallEvent::ServerRequest { upstream_id, msg }) if mrtr::applies(&ctx, &msg) => {
            return finish(&ctx, mrtr::park(&gw, &ctx, &id, run, upstream_id, msg));
        }
        unanswered @ (Some(CallEvent::Failed(_) | CallEvent::TimedOut) | None) => {
            return upstream_error_response(&id, &run.unanswered(unanswered));
        }
        Some(event) => event,
    };

    // Something arrives before the answer: stream it, then the answer, over SSE.
    // Event ids and relayed server requests' ids name this replica, for the one a
    // resumption or an answer reaches after a rescale.
    let mark = gw.owner_marks.mark(ctx.served_at);
    let (out, stream) = match &ctx.session {
        Some(claims) => {
            let (server, method) = (&run.upstream.name, &run.method);
            let mark = mark.clone();
            gw.resumable
                .channel(server, method, claims, StreamKind::Call, None, mark)
        }
        None => client_stream::channel(&run.upstream.name, &run.method),
    };
    tokio::spawn(async move {
        let answerer = Answerer::new(&ctx.principal, ctx.session.as_deref());
        let mut minted = MintedIds::new(&gw, answerer, mark);
        let declines = Declines::new(&run.upstream, &run.method);
        let mut event = Some(first);
        let outcome = loop {
            let current = match event.take() {
                Some(e) => Some(e),
                None => tokio::select! {
                    e = run.next_event() => e,
                    _ = cancel.token.cancelled() => break "cancelled",
                    () = out.gone() => break "cancelled",
                },
            };
            match current {
                Some(CallEvent::Notification(n)) => {
                    out.notify(&n, run.upstream.metrics.notifications_dropped())
                }
                Some(CallEvent::ServerRequest { upstream_id, msg })
                    if mrtr::applies(&ctx, &msg) =>
                {
                    // The input request ends this response; the call waits, parked.
                    out.send(&mrtr::park(&gw, &ctx, &id, run, upstream_id, msg));
                    return;
                }
                Some(CallEvent::ServerRequest {
                    upstream_id,
                    mut msg,
                }) => {
                    let server = &run.upstream;
                    if relays_to_client(&ctx, &msg)
                        && super::tasks::for_caller(&gw, server, &ctx.principal.id, &mut msg)
                    {
                        server_requests::relay(
                            &out,
                            &mut minted,
                            &declines,
                            &run.conn,
                            &upstream_id,
                            msg,
                        );
                    } else {
                        run.conn.answer_unrouted(&upstream_id, &msg);
                        if let Some(refusal) = mrtr::missing_capability(&ctx, &id, &msg) {
                            out.send(&refusal);
                            break "missing_capability";
                        }
                    }
                }
                Some(CallEvent::Response(response)) => {
                    let mut response = response.to_value();
                    response["id"] = id.clone();
                    super::tasks::rewrite(&gw, &ctx, &run.upstream, &mut response);
                    let label = outcome_label(&response);
                    if let (Some(pending), true) = (run.subscription.take(), label == "ok") {
                        pending.keep(&run.upstream, &run.conn, gw.shutdown.clone());
                    }
                    if ctx.era == Era::Modern {
                        era::mark_complete(&mut response, &ctx.method);
                    }
                    out.send(&response);
                    break label;
                }
                unanswered => {
                    let (error, outcome) = run.error_of(unanswered);
                    out.send(&upstream_error(&id, &error));
                    break outcome;
                }
            }
        };
        // The answer is queued for the client: the upstream's slot is free from here,
        // however long the client takes to read it.
        drop(out);
        drop(minted);
        run.settle(outcome);
    });
    stream.into_response(None)
}

/// Whether a server request met during a session-era call goes to the client on the
/// call's SSE stream.
fn relays_to_client(ctx: &Ctx, server_request: &Value) -> bool {
    let method = server_request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ctx.era == Era::Legacy && ctx.accepts_sse && client_can_answer(&ctx.caps, method)
}
