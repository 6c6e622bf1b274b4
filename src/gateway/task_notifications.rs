//! `notifications/tasks` for 2026-07-28 clients that listen for their tasks
//! (`subscriptions/listen` naming `taskIds`, the Tasks extension): each status a task
//! passes through is pushed on the listen stream, as `tasks/get` would have given it, so a
//! client need not poll.
//!
//! A 2025-11-25 server may push its tasks' statuses, but on the one upstream session every
//! caller shares, and need not push at all; so gantry asks the server itself, at the
//! interval the task asks its clients to poll at (within [`POLL_MIN`]..[`POLL_MAX`]), and
//! pushes what changed. A task runs on the upstream session of one replica; a listen that
//! reaches another (2026-07-28 requests carry no session a load balancer could keep on
//! one replica) asks that replica, with the listen's own credentials, as the client's
//! `tasks/get` would be carried there ([`super::replica_forward`]).
//!
//! A watch ends with the task, with the stream, or when the server no longer knows the
//! task (told as `failed`, with the server's error); one caller's streams watch a bounded
//! number of tasks in all.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};

use super::http::Ctx;
use super::per_caller::Slot;
use super::replica_forward::{self, Owner};
use super::tasks::{self, Opened};
use super::{Gateway, client_stream, era, jsonrpc, task_extension};
use crate::upstream::Upstream;

/// Most tasks one listen stream watches: each asks its server on its own.
pub const MAX_WATCHED: usize = 16;
/// Most task ids one listen may name: each is opened (decrypted) to find the caller's.
pub const MAX_NAMED: usize = 256;
/// Most tasks one caller's listen streams watch in all: a caller opening stream after
/// stream must not make gantry ask the servers without end.
pub const MAX_WATCHED_PER_CALLER: usize = 64;
/// How often a watched task's server is asked at most, whatever the task says.
const POLL_MIN: Duration = Duration::from_millis(500);
/// How long a watched task goes unasked at most, whatever the task says.
const POLL_MAX: Duration = Duration::from_secs(30);
/// How often when the task says nothing.
const POLL_DEFAULT: Duration = Duration::from_secs(1);

/// A task a listen stream watches.
pub struct Watched {
    task: Opened,
    upstream: Arc<Upstream>,
    /// The replica whose upstream session runs the task, when not this one.
    elsewhere: Option<Owner>,
    /// One of the caller's [`MAX_WATCHED_PER_CALLER`], held while it is watched.
    _slot: Slot,
}

/// The listen request's own headers (its credentials among them), for the `tasks/get`
/// requests carried to another replica on its behalf.
#[derive(Clone)]
pub struct Listener {
    pub headers: HeaderMap,
}

impl Watched {
    /// The task's id as its client knows it.
    pub fn id(&self) -> &str {
        &self.task.caller
    }
}

/// Of the task ids a listen names, those watched for the caller: its own tasks, the first
/// [`MAX_WATCHED`] of them that the caller's [`MAX_WATCHED_PER_CALLER`] leave room for.
pub fn watchable(gw: &Gateway, ctx: &Ctx, ids: &[Value]) -> Vec<Watched> {
    let mut watched: Vec<Watched> = Vec::new();
    for id in ids.iter().filter_map(Value::as_str) {
        if watched.len() == MAX_WATCHED {
            break;
        }
        if watched.iter().any(|w| w.id() == id) {
            continue;
        }
        let Some(task) = tasks::open_id(gw, ctx, id) else {
            continue;
        };
        let principal = &ctx.principal;
        let elsewhere = tasks::runs_elsewhere(gw, principal, &task, ctx.served_at);
        let Some(upstream) = gw.find(principal.access.as_deref(), &task.server) else {
            continue;
        };
        let Some(slot) = gw.task_watches.take(&principal.id) else {
            break;
        };
        watched.push(Watched {
            task,
            upstream,
            elsewhere,
            _slot: slot,
        });
    }
    watched
}

/// Pushes each status of `watched` on `out`, tagged with the subscription `sub`, from the
/// one it has now until it ends, the server no longer knows it, or the client leaves.
pub fn watch(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    listener: &Listener,
    sub: &Value,
    watched: Watched,
    out: &Arc<client_stream::Sender>,
) {
    let (gw, out, sub) = (Arc::clone(gw), Arc::clone(out), sub.clone());
    let listener = listener.clone();
    // Counted and audited as the polls they stand in for.
    let mut ctx = ctx.clone();
    ctx.method = "tasks/get".into();
    tokio::spawn(async move {
        let Watched {
            task,
            upstream,
            elsewhere,
            _slot,
        } = watched;
        let id = json!("gantry-task-watch");
        // The task as last pushed, and what told it from the one before.
        let mut last: Option<(Map<String, Value>, Value)> = None;
        let mut wait = POLL_DEFAULT;
        loop {
            let asked = async {
                match elsewhere {
                    None => task_extension::get(&gw, &ctx, &id, &upstream, &task)
                        .await
                        .map_err(drop),
                    Some(owner) => ask_replica(owner, &ctx, &listener, &task).await,
                }
            };
            let answer = tokio::select! {
                answer = asked => answer,
                () = out.gone() => return,
            };
            let dropped = upstream.metrics.notifications_dropped();
            match answer {
                // The server no longer knows the task (it restarted, or the task expired):
                // a client told of it must hear that it is gone.
                Ok(answer) if answer.get("error").is_some() => {
                    if let Some((told, _)) = last {
                        out.notify(&notification(gone(told, &answer), &sub), dropped);
                    }
                    return;
                }
                Ok(mut answer) => {
                    tasks::replace_strings(&mut answer, &task.upstream, &task.caller);
                    match answer.get_mut("result").map(Value::take) {
                        Some(Value::Object(detailed)) => {
                            wait = poll_interval(&detailed);
                            let ended = matches!(
                                detailed.get("status").and_then(Value::as_str),
                                Some("completed" | "failed" | "cancelled")
                            );
                            let seen = fingerprint(&detailed);
                            if last.as_ref().is_none_or(|(_, before)| *before != seen) {
                                out.notify(&notification(detailed.clone(), &sub), dropped);
                                last = Some((detailed, seen));
                            }
                            if ended {
                                return;
                            }
                        }
                        // Neither result nor error: asked again later, as when the server
                        // could not be asked.
                        _ => wait = (wait * 2).min(POLL_MAX),
                    }
                }
                // The server could not be asked this time (down, timed out): asked again
                // later, less often.
                Err(_) => wait = (wait * 2).min(POLL_MAX),
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = out.gone() => return,
            }
        }
    });
}

/// Most bytes of a `tasks/get` answer another replica gives: a finished task's result
/// is inlined, and results are bounded upstream by the same limit.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The task's status as the replica running it gives it, asked as the listening client's
/// own `tasks/get` would be; `Err` when it could not say this time.
async fn ask_replica(
    owner: Owner,
    ctx: &Ctx,
    listener: &Listener,
    task: &Opened,
) -> Result<Value, ()> {
    let mut headers = listener.headers.clone();
    let version = headers.get(era::HEADER_PROTOCOL_VERSION).cloned();
    headers.insert(era::HEADER_METHOD, HeaderValue::from_static("tasks/get"));
    let name = HeaderValue::from_str(&task.caller).map_err(drop)?;
    headers.insert(era::HEADER_NAME, name);
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let meta = json!({
        era::META_PROTOCOL_VERSION: version.as_ref().and_then(|v| v.to_str().ok()),
        era::META_CLIENT_CAPABILITIES: {"extensions": {task_extension::EXTENSION: {}}},
    });
    let body = jsonrpc::request("tasks/get", json!({"taskId": task.caller, "_meta": meta}));
    let body = Bytes::from(serde_json::to_vec(&body).expect("JSON values serialize"));
    let path = match ctx.route.server() {
        Some(server) => format!("/mcp/{server}"),
        None => "/mcp".into(),
    };
    let uri: Uri = path.parse().map_err(drop)?;
    let Some(response) = replica_forward::carry(owner, Method::POST, &uri, headers, body).await
    else {
        // Gone, and the task with it: as the client's own tasks/get would be told.
        let unreachable = owner.held.unreachable();
        let error =
            jsonrpc::error_response(&Value::Null, jsonrpc::INVALID_PARAMS, unreachable, None);
        return Ok(error);
    };
    // Refused there (a rate limit, say): nothing said of the task, asked again later.
    if response.status() != StatusCode::OK {
        return Err(());
    }
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(drop)?;
    serde_json::from_slice(&bytes).map_err(drop)
}

/// What tells one status from the next: a client is told again only when one changed.
fn fingerprint(task: &Map<String, Value>) -> Value {
    let questions: Vec<&String> = task
        .get("inputRequests")
        .and_then(Value::as_object)
        .map(|q| q.keys().collect())
        .unwrap_or_default();
    json!([
        task.get("status"),
        task.get("statusMessage"),
        task.get("lastUpdatedAt"),
        questions
    ])
}

/// The task last told of, failed with the error the server now answers for it.
fn gone(mut task: Map<String, Value>, answer: &Value) -> Map<String, Value> {
    task.remove("inputRequests");
    task.remove("result");
    task.insert("status".into(), json!("failed"));
    task.insert(
        "statusMessage".into(),
        json!("the server no longer knows the task"),
    );
    let error = answer.get("error").cloned();
    task.insert("error".into(), error.unwrap_or_else(|| json!({})));
    task
}

fn poll_interval(task: &Map<String, Value>) -> Duration {
    task.get("pollIntervalMs")
        .and_then(Value::as_u64)
        .map_or(POLL_DEFAULT, Duration::from_millis)
        .clamp(POLL_MIN, POLL_MAX)
}

/// The `notifications/tasks` carrying `task` (a `tasks/get` result) for subscription `sub`.
fn notification(mut task: Map<String, Value>, sub: &Value) -> Value {
    // The notification carries the task, not a result of a request.
    task.remove("resultType");
    let meta = task.entry("_meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(era::META_SUBSCRIPTION_ID.into(), sub.clone());
    }
    jsonrpc::notification("notifications/tasks", Value::Object(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(fields: Value) -> Map<String, Value> {
        fields.as_object().unwrap().clone()
    }

    #[test]
    fn a_task_is_told_again_only_when_its_status_moved() {
        let working = task(json!({"taskId": "t", "status": "working", "lastUpdatedAt": "1"}));
        let asking = task(
            json!({"taskId": "t", "status": "input_required", "lastUpdatedAt": "2",
            "inputRequests": {"k1": {"method": "elicitation/create"}}}),
        );
        let asking_more = task(
            json!({"taskId": "t", "status": "input_required", "lastUpdatedAt": "2",
            "inputRequests": {"k1": {}, "k2": {}}}),
        );
        assert_eq!(fingerprint(&working), fingerprint(&working.clone()));
        assert_ne!(fingerprint(&working), fingerprint(&asking));
        assert_ne!(
            fingerprint(&asking),
            fingerprint(&asking_more),
            "a new question"
        );
        let mut later = working.clone();
        later.insert("ttlMs".into(), json!(5));
        assert_eq!(
            fingerprint(&working),
            fingerprint(&later),
            "the ttl is no news"
        );
    }

    #[test]
    fn a_task_the_server_forgot_is_told_as_failed_with_the_servers_error() {
        let told = task(
            json!({"taskId": "t", "status": "input_required", "createdAt": "c",
            "inputRequests": {"k": {}}}),
        );
        let answer = json!({"jsonrpc": "2.0", "id": 1,
            "error": {"code": -32602, "message": "Task not found"}});
        let failed = gone(told, &answer);
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["code"], -32602);
        assert_eq!(failed["createdAt"], "c", "the rest as last told");
        assert!(!failed.contains_key("inputRequests"));
    }

    #[test]
    fn the_task_sets_the_pace_within_bounds() {
        assert_eq!(
            poll_interval(&task(json!({"pollIntervalMs": 5000}))),
            Duration::from_secs(5)
        );
        assert_eq!(poll_interval(&task(json!({"pollIntervalMs": 1}))), POLL_MIN);
        assert_eq!(
            poll_interval(&task(json!({"pollIntervalMs": u64::MAX}))),
            POLL_MAX
        );
        assert_eq!(poll_interval(&task(json!({}))), POLL_DEFAULT);
    }

    #[test]
    fn the_notification_is_the_task_tagged_with_its_subscription() {
        let done = task(
            json!({"resultType": "complete", "taskId": "t", "status": "completed",
            "result": {"content": []}}),
        );
        let sent = notification(done, &json!("sub-1"));
        assert_eq!(sent["method"], "notifications/tasks");
        let params = sent["params"].as_object().unwrap();
        assert!(!params.contains_key("resultType"));
        assert_eq!(params["taskId"], "t");
        assert_eq!(params["result"], json!({"content": []}));
        assert_eq!(params["_meta"][era::META_SUBSCRIPTION_ID], "sub-1");
    }
}
