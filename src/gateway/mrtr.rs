//! Multi round-trip requests (2026-07-28) in front of session-era upstreams.
//!
//! A session-era server asks its client for input with a request of its own (sampling,
//! elicitation, roots) while a call runs. A 2026-07-28 client cannot receive such a
//! request: it expects an `InputRequiredResult` and then retries the original request
//! with `inputResponses`. The gateway translates: it parks the upstream call, answers the
//! client with the input request and a sealed `requestState`, and on the retry answers
//! the upstream's pending request and carries on with the same call.
//!
//! Parked calls live in the process that parked them. The retry carries no session id a
//! load balancer could route by, so `requestState` seals the address the parking request
//! reached its replica at, and a replica that receives the retry carries it there
//! ([`super::replica_forward`]); one that cannot reach it answers with a clear error, and
//! the client starts over.
//!
//! While a call is parked its upstream goes on: a stdio or HTTP+SSE server's progress and
//! logs for it arrive through the connection's one reader whether or not anyone waits. A
//! task holds each parked call and takes them as they come, as a client's stream would,
//! within bounds: notifications up to [`HELD_NOTIFICATION_BYTES`], then dropped and
//! counted; server requests up to the number that may wait and [`HELD_REQUEST_BYTES`],
//! then declined. What it kept is relayed on the retry's stream, and what a retry parks
//! again still counts against the same bounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::Principal;
use super::client_stream;
use super::era::Era;
use super::http::{Ctx, json_response};
use super::jsonrpc;
use super::relay::{self, Running, finish};
use super::replica_forward::{Held as HeldBy, Owner};
use super::server_requests::{self, Declines, MintedIds, client_can_answer};
use super::session::{REQUEST_STATE_PURPOSE, new_session_id};
use super::{Gateway, unix_now};
use crate::upstream::CallEvent;

/// The requests that may answer with `InputRequiredResult`.
const METHODS: &[&str] = &["tools/call", "prompts/get", "resources/read"];
/// The key of the single input request the gateway asks for at a time.
const INPUT_KEY: &str = "upstream";
/// How much notification JSON a parked call keeps for its retry. Kept as parsed values,
/// which take several times their JSON's length (a 200,000-notification flood held up to
/// the stream's 4 MiB backlog grew gantry by 49 MiB), so an eighth of that backlog:
/// about 5,000 progress notifications.
const HELD_NOTIFICATION_BYTES: usize = client_stream::BACKLOG_BYTES / 8;
/// How much server-request JSON a parked call keeps for its retry: as much as a client's
/// stream would take before it declines them. Requests are what the call needs to go on,
/// so they get the whole backlog; one is held whatever its size while less is held.
const HELD_REQUEST_BYTES: usize = client_stream::BACKLOG_BYTES;
/// Why a server request is declined when those held already fill [`HELD_REQUEST_BYTES`].
const HELD_FULL: &str =
    "gantry: the requests already waiting for the client's input fill its backlog";

/// A call waiting for the client's input.
pub struct Parked {
    holder: Holder,
    upstream_id: Value,
    request: Value,
    expires: Instant,
}

/// The task that holds a parked call. Dropping it, when the park expires, ends the task,
/// and the call with it.
struct Holder {
    stop: CancellationToken,
    task: Option<JoinHandle<Running>>,
}

impl Holder {
    fn start(run: Running) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(hold(run, stop.clone()));
        Self {
            stop,
            task: Some(task),
        }
    }

    /// The call back, with what was held for it; `None` if the task failed.
    async fn release(mut self) -> Option<Running> {
        self.stop.cancel();
        self.task.take()?.await.ok()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Takes a parked call's events until `stop`. Once the call has ended (answered, failed,
/// timed out) nothing more comes, and the task only waits.
async fn hold(mut run: Running, stop: CancellationToken) -> Running {
    let mut held = Held::of(&run);
    let mut dropped = 0u64;
    let declines = Declines::new(&run.upstream, &run.method);
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            event = run.next_from_upstream() => event,
        };
        match event {
            Some(CallEvent::Notification(n)) => {
                if held.admit_notification(&n) {
                    run.hold(CallEvent::Notification(n));
                } else {
                    dropped += 1;
                    run.upstream.metrics.notifications_dropped().increment(1);
                }
            }
            Some(CallEvent::ServerRequest { upstream_id, msg }) => match held.admit_request(&msg) {
                Ok(()) => run.hold(CallEvent::ServerRequest { upstream_id, msg }),
                Err(reason) => declines.decline(&run.conn, &upstream_id, &reason),
            },
            // The call ended: answered, failed, timed out, or its connection closed.
            end => {
                if let Some(end) = end {
                    run.hold(end);
                }
                stop.cancelled().await;
                break;
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(
            upstream = %run.upstream.name,
            method = %run.method,
            dropped,
            "notifications of a call waiting for the client's input were dropped"
        );
    }
    run
}

/// What a parked call holds, against the bounds it is held within.
#[derive(Default)]
struct Held {
    notification_bytes: usize,
    requests: usize,
    request_bytes: usize,
}

impl Held {
    /// What `run` holds already: a retry that parks the call again has not taken all.
    fn of(run: &Running) -> Self {
        let mut held = Self::default();
        for event in run.held() {
            match event {
                CallEvent::Notification(n) => held.notification_bytes += jsonrpc::json_len(n),
                CallEvent::ServerRequest { msg, .. } => {
                    held.requests += 1;
                    held.request_bytes += jsonrpc::json_len(msg);
                }
                _ => {}
            }
        }
        held
    }

    /// Counts the notification `n` in if it fits within [`HELD_NOTIFICATION_BYTES`].
    fn admit_notification(&mut self, n: &Value) -> bool {
        let size = jsonrpc::json_len(n);
        let fits = self.notification_bytes + size <= HELD_NOTIFICATION_BYTES;
        if fits {
            self.notification_bytes += size;
        }
        fits
    }

    /// Counts the server request `msg` in, or says why it must be declined.
    fn admit_request(&mut self, msg: &Value) -> Result<(), String> {
        if self.requests >= server_requests::MAX_WAITING {
            return Err(MintedIds::too_many());
        }
        if self.request_bytes >= HELD_REQUEST_BYTES {
            return Err(HELD_FULL.to_string());
        }
        self.requests += 1;
        self.request_bytes += jsonrpc::json_len(msg);
        Ok(())
    }
}

/// What `requestState` carries, sealed: which parked call, for whom, for what.
#[derive(Serialize, Deserialize)]
struct State {
    /// The parking token.
    tok: String,
    /// The principal that made the request.
    sub: String,
    /// The request's method and its name or URI: a state is only good for its request.
    m: String,
    n: String,
    /// Unix seconds after which the state is refused.
    exp: u64,
    /// The address the parking request reached its replica at, where the retry must go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    own: Option<SocketAddr>,
}

/// The name or URI a request is about: a request state is only good for its request.
pub fn target(body: &Map<String, Value>) -> String {
    let params = jsonrpc::params(body);
    params
        .and_then(|p| p.get("name").or_else(|| p.get("uri")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether a server request met during this call becomes an MRTR round trip.
pub fn applies(ctx: &Ctx, server_request: &Value) -> bool {
    let method = server_request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    ctx.era == Era::Modern
        && METHODS.contains(&ctx.method.as_str())
        && method != "ping"
        && client_can_answer(&ctx.caps, method)
}

/// The answer for a 2026-07-28 client whose call the upstream cannot finish without a
/// capability the client did not declare (it asked the client's model or user): -32021
/// naming the capability. Rather than the upstream's own answer to a declined request,
/// which tells the client nothing it can act on: declared on a retry, it gets asked. A
/// REST bridge caller can declare nothing: the server's answer is its to keep.
pub fn missing_capability(ctx: &Ctx, id: &Value, server_request: &Value) -> Option<Value> {
    let method = server_request.get("method").and_then(Value::as_str)?;
    if client_can_answer(&ctx.caps, method) {
        return None;
    }
    let capability = match method {
        "sampling/createMessage" => "sampling",
        "elicitation/create" => "elicitation",
        // A client without roots has none: the empty list the gateway answers is true.
        _ => return None,
    };
    if !ctx.over_mcp_http() || !METHODS.contains(&ctx.method.as_str()) {
        return None;
    }
    let message = format!(
        "Missing required client capability: the server asks the client for {capability}, which its request's _meta did not declare"
    );
    Some(jsonrpc::error_response(
        id,
        jsonrpc::MISSING_CLIENT_CAPABILITY,
        &message,
        Some(json!({ "requiredCapabilities": { capability: {} } })),
    ))
}

/// Whether this request is the retry of an earlier `InputRequiredResult`.
pub fn is_retry(ctx: &Ctx, body: &Map<String, Value>) -> bool {
    ctx.era == Era::Modern
        && METHODS.contains(&ctx.method.as_str())
        && jsonrpc::params(body).is_some_and(|p| p.contains_key("requestState"))
}

/// The replica holding the call this request retries, when it is not this one: the
/// address sealed in its `requestState`, unless the request reached this process there.
/// Anything else (no state, a state that does not open, has expired or is another
/// principal's) is left for [`resume`] to answer.
pub fn held_elsewhere(
    gw: &Gateway,
    principal: &Principal,
    method: &str,
    body: &Map<String, Value>,
    headers: &HeaderMap,
    served_at: Option<SocketAddr>,
) -> Option<Owner> {
    if !METHODS.contains(&method) {
        return None;
    }
    let sealed = jsonrpc::params(body)?.get("requestState")?.as_str()?;
    if super::era::detect(method, body, headers) != Era::Modern {
        return None;
    }
    let state: State = gw.sessions.open_value(sealed, REQUEST_STATE_PURPOSE)?;
    let addr = state.own.filter(|own| Some(*own) != served_at)?;
    let now = unix_now();
    (state.sub == principal.id && state.exp >= now).then_some(Owner {
        addr,
        held: HeldBy::ParkedCall,
        works_within: std::time::Duration::from_secs(state.exp - now),
    })
}

/// Parks `run` and returns the `InputRequiredResult` answering request `id`.
pub fn park(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    id: &Value,
    run: Running,
    upstream_id: Value,
    msg: Value,
) -> Value {
    let request = json!({
        "method": msg.get("method").cloned().unwrap_or(Value::Null),
        "params": msg.get("params").cloned().unwrap_or_else(|| json!({})),
    });
    run.settle_parked();
    let remaining = run.timeout.saturating_sub(run.started.elapsed());
    let name = run.target.clone();
    let parked = Parked {
        holder: Holder::start(run),
        upstream_id,
        request,
        expires: Instant::now() + remaining,
    };
    store(gw, ctx, id, parked, name)
}

/// Puts a parked call away under a fresh token and answers with its input request.
fn store(gw: &Arc<Gateway>, ctx: &Ctx, id: &Value, parked: Parked, name: String) -> Value {
    let token = new_session_id();
    let remaining = parked.expires.saturating_duration_since(Instant::now());
    let state = State {
        tok: token.clone(),
        sub: ctx.principal.id.clone(),
        m: ctx.method.clone(),
        n: name,
        exp: unix_now() + remaining.as_secs().max(1),
        own: ctx.served_at,
    };
    let request = parked.request.clone();
    gw.parked.lock().unwrap().insert(token.clone(), parked);
    // A call the client never comes back for is dropped when it expires: that cancels
    // it upstream and gives back its concurrency slot.
    let weak = Arc::downgrade(gw);
    tokio::spawn(async move {
        tokio::time::sleep(remaining).await;
        if let Some(gw) = weak.upgrade() {
            let abandoned = gw.parked.lock().unwrap().remove(&token);
            drop(abandoned);
        }
    });
    jsonrpc::result_response(
        id,
        json!({
            "resultType": "input_required",
            "inputRequests": { INPUT_KEY: request },
            "requestState": gw.sessions.seal_value(&state, REQUEST_STATE_PURPOSE),
        }),
    )
}

fn invalid(id: &Value, message: &str) -> Response {
    json_response(
        StatusCode::OK,
        &jsonrpc::error_response(id, jsonrpc::INVALID_PARAMS, message, None),
    )
}

/// Continues a parked call with the client's input.
pub async fn resume(gw: Arc<Gateway>, ctx: Ctx, id: Value, body: Map<String, Value>) -> Response {
    let params = jsonrpc::params(&body).cloned().unwrap_or_default();
    let Some(sealed) = params.get("requestState").and_then(Value::as_str) else {
        return invalid(&id, "Invalid params: requestState must be a string");
    };
    let state: Option<State> = gw.sessions.open_value(sealed, REQUEST_STATE_PURPOSE);
    let valid = state.filter(|s| {
        s.sub == ctx.principal.id
            && s.m == ctx.method
            && s.n == target(&body)
            && s.exp >= unix_now()
    });
    let Some(state) = valid else {
        return invalid(
            &id,
            "Invalid params: requestState is not valid for this request",
        );
    };
    let Some(parked) = gw.parked.lock().unwrap().remove(&state.tok) else {
        return invalid(
            &id,
            "Invalid params: requestState has expired, was already used, or was issued by another gateway replica; send the request again without it",
        );
    };
    let answer = params
        .get("inputResponses")
        .and_then(|r| r.get(INPUT_KEY))
        .cloned();
    let Some(answer) = answer else {
        // The input is still missing: ask again rather than fail, as the spec advises.
        return finish(&ctx, store(&gw, &ctx, &id, parked, state.n));
    };
    let Parked {
        holder,
        upstream_id,
        ..
    } = parked;
    let Some(mut run) = holder.release().await else {
        let error = jsonrpc::error_response(
            &id,
            jsonrpc::INTERNAL_ERROR,
            "Internal error: the waiting call was lost; send the request again without requestState",
            None,
        );
        return json_response(StatusCode::OK, &error);
    };
    run.follow_retry_progress(
        params
            .get("_meta")
            .and_then(|m| m.get("progressToken"))
            .cloned(),
    );
    run.follow_retry_log_level(&gw, &ctx);
    let mut reply = Map::new();
    reply.insert("jsonrpc".into(), json!("2.0"));
    reply.insert("result".into(), answer);
    run.conn.respond(upstream_id, reply);
    relay::drive(gw, ctx, id, run).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(size: usize) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage",
               "params": {"messages": [], "maxTokens": 1, "systemPrompt": "s".repeat(size)}})
    }

    #[test]
    fn a_request_larger_than_the_budget_is_held_when_nothing_else_is() {
        let mut held = Held::default();
        assert_eq!(
            held.admit_request(&sampling(HELD_REQUEST_BYTES * 2)),
            Ok(())
        );
        assert_eq!(
            held.admit_request(&sampling(10)),
            Err(HELD_FULL.to_string())
        );
    }

    #[test]
    fn requests_are_held_until_their_bytes_reach_the_budget() {
        let mut held = Held::default();
        // A little under a quarter of the budget each: four leave room, so a fifth gets
        // in and passes it; the sixth finds it full.
        let one = sampling(HELD_REQUEST_BYTES / 4 - 200);
        assert!(4 * jsonrpc::json_len(&one) < HELD_REQUEST_BYTES);
        let mut admitted = 0;
        while held.admit_request(&one).is_ok() {
            admitted += 1;
        }
        assert_eq!(admitted, 5);
        assert!(held.request_bytes >= HELD_REQUEST_BYTES);
    }

    #[test]
    fn small_requests_are_held_up_to_the_number_that_may_wait() {
        let mut held = Held::default();
        for _ in 0..server_requests::MAX_WAITING {
            assert_eq!(held.admit_request(&sampling(0)), Ok(()));
        }
        assert_eq!(held.admit_request(&sampling(0)), Err(MintedIds::too_many()));
    }

    #[test]
    fn notifications_are_held_while_they_fit_and_then_refused() {
        let mut held = Held::default();
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                              "params": {"progressToken": "p", "progress": 1, "pad": "x".repeat(1000)}});
        let size = jsonrpc::json_len(&progress);
        let mut admitted = 0;
        while held.admit_notification(&progress) {
            admitted += 1;
        }
        assert_eq!(admitted, HELD_NOTIFICATION_BYTES / size);
        // A refused notification takes nothing from the budget: a smaller one still fits
        // if there is room for it.
        let room = HELD_NOTIFICATION_BYTES - held.notification_bytes;
        let small = json!({"m": "x".repeat(room.saturating_sub(8))});
        assert_eq!(
            held.admit_notification(&small),
            jsonrpc::json_len(&small) <= room
        );
    }
}
