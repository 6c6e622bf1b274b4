//! Tasks (2025-11-25, SEP-1686) through a gateway whose upstream session is shared by every
//! caller of a server.
//!
//! The upstream sees one client, gantry, so it would show any caller's tasks to any other:
//! `tasks/list` lists them all, and anyone holding a task id could read its result or
//! cancel it. So the task id a caller gets is sealed (AES-GCM, the session key) around the
//! server, the upstream's id and the caller's principal: `tasks/get`, `tasks/result` and
//! `tasks/cancel` open it, refuse one that is not the caller's exactly as an unknown task
//! (-32602), and send the upstream its own id; answers carry the caller's id back.
//!
//! `tasks/list` is not offered (the capability is taken out of the server's, the method
//! answers -32601): the upstream's list is everyone's. Task status notifications are not
//! relayed either, for the same reason; the spec has requestors poll `tasks/get` anyway.
//!
//! A server request made for a task (an elicitation while it is `input_required`) names
//! the task in its `_meta`; it goes only to a client of the task's creator ([`TaskOwners`]),
//! with the task's id as that client knows it, and is declined when none is there.
//! A task lives on the upstream session of the gateway process that created it; its id
//! seals that process's address, and a request naming it that reaches another replica
//! (a stateless 2026-07-28 client's, or any after a rescale) is carried there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::auth::Principal;
use super::era::Era;
use super::http::{Ctx, no_such_server};
use super::replica_forward::{self, Held};
use super::{Gateway, jsonrpc, relay, task_extension};
use crate::upstream::connection::task_of;
use crate::upstream::{State, Upstream};

/// Binds sealed task ids to their purpose: never accepted as a session id or request state.
const TASK_PURPOSE: &[u8] = b"gantry-task-v1";

pub const STATUS_NOTIFICATION: &str = "notifications/tasks/status";

/// Tasks whose owner is remembered at once, and how long at most: past either, requests
/// made for a task nobody is remembered for are declined (deny by default).
const MAX_OWNED_TASKS: usize = 100_000;
pub const MAX_TASK_LIFE: Duration = Duration::from_secs(24 * 3600);
/// For a task whose server gave it no `ttl`.
pub const DEFAULT_TASK_LIFE: Duration = Duration::from_secs(3600);

/// Whose each task is, by upstream (its key: two tenants may each have a server of one
/// name) and the upstream's task id, and the id its owner knows it by.
#[derive(Default)]
pub struct TaskOwners(Mutex<HashMap<(String, String), Owner>>);

struct Owner {
    principal: String,
    caller: String,
    until: Instant,
}

impl TaskOwners {
    fn record(
        &self,
        server: &Upstream,
        upstream: &str,
        principal: &str,
        caller: &str,
        ttl: Option<Duration>,
    ) {
        let now = Instant::now();
        let mut owners = self.0.lock().unwrap();
        if owners.len() >= MAX_OWNED_TASKS {
            owners.retain(|_, owner| owner.until > now);
        }
        if owners.len() >= MAX_OWNED_TASKS {
            tracing::warn!(
                server = %server.name,
                "too many tasks to remember their owners: requests made for this one will be declined"
            );
            return;
        }
        let life = ttl.unwrap_or(DEFAULT_TASK_LIFE).min(MAX_TASK_LIFE);
        let owner = Owner {
            principal: principal.to_string(),
            caller: caller.to_string(),
            until: now + life,
        };
        owners.insert((server.key(), upstream.to_string()), owner);
    }

    /// The id `principal` knows a live task by, when the task is theirs.
    fn id_for(&self, server: &Upstream, upstream: &str, principal: &str) -> Option<String> {
        let owners = self.0.lock().unwrap();
        let owner = owners.get(&(server.key(), upstream.to_string()))?;
        (owner.until > Instant::now() && owner.principal == principal).then(|| owner.caller.clone())
    }
}

/// Whether `principal`'s client may be given `msg`, a server request from `server`: any
/// request but a task's, and a task's when the task is theirs.
pub fn may_see(gw: &Gateway, server: &Upstream, principal: &str, msg: &Value) -> bool {
    task_of(msg).is_none_or(|task| gw.task_owners.id_for(server, task, principal).is_some())
}

/// [`may_see`], and when so, `msg` with its task named as the client knows it.
pub fn for_caller(gw: &Gateway, server: &Upstream, principal: &str, msg: &mut Value) -> bool {
    let Some(task) = task_of(msg).map(str::to_string) else {
        return true;
    };
    let Some(caller) = gw.task_owners.id_for(server, &task, principal) else {
        return false;
    };
    replace_strings(msg, &task, &caller);
    true
}

/// What a caller's task id holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// The server, by the name its caller reaches it by.
    s: String,
    /// The upstream's own task id.
    t: String,
    /// The principal that created the task.
    p: String,
    /// The address the creating request reached its replica at: the task lives on that
    /// process's upstream session, so requests naming it are carried there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    own: Option<SocketAddr>,
}

/// A caller's task, its id opened.
pub struct Opened {
    /// The server, by the name its caller reaches it by.
    pub server: String,
    /// The upstream's own task id.
    pub upstream: String,
    /// The id the caller knows it by.
    pub caller: String,
    /// The address the creating request reached its replica at.
    own: Option<SocketAddr>,
}

/// The caller's own task that a `tasks/…` request names in `params.taskId`, on the
/// request's endpoint; `None` for any other id (another's, tampered, not a task's).
pub fn open(gw: &Gateway, ctx: &Ctx, body: &Map<String, Value>) -> Option<Opened> {
    open_id(gw, ctx, jsonrpc::params(body)?.get("taskId")?.as_str()?)
}

/// The caller's own task whose id is `caller`, as [`open`] finds it.
pub fn open_id(gw: &Gateway, ctx: &Ctx, caller: &str) -> Option<Opened> {
    let sealed = gw
        .sessions
        .open_value::<Sealed>(caller, TASK_PURPOSE)
        .filter(|s| s.p == ctx.principal.id)
        .filter(|s| ctx.route.server().is_none_or(|name| name == s.s))?;
    Some(Opened {
        server: sealed.s,
        upstream: sealed.t,
        caller: caller.to_string(),
        own: sealed.own,
    })
}

/// The replica holding the task a `tasks/…` request names, when it is not this one (see
/// [`replica_forward`]); `None` for anything else, which is answered here.
pub fn held_elsewhere(
    gw: &Gateway,
    principal: &Principal,
    method: &str,
    body: &Map<String, Value>,
    served_at: Option<SocketAddr>,
) -> Option<replica_forward::Owner> {
    if !method.starts_with("tasks/") {
        return None;
    }
    let caller = jsonrpc::params(body)?.get("taskId")?.as_str()?;
    let sealed: Sealed = gw.sessions.open_value(caller, TASK_PURPOSE)?;
    if sealed.p != principal.id {
        return None;
    }
    owner(gw, principal, &sealed.s, sealed.own, served_at)
}

/// The replica running `task`, when it is not this one (reached at `served_at`).
pub fn runs_elsewhere(
    gw: &Gateway,
    principal: &Principal,
    task: &Opened,
    served_at: Option<SocketAddr>,
) -> Option<replica_forward::Owner> {
    owner(gw, principal, &task.server, task.own, served_at)
}

/// The replica a task of `server` created at `own` runs on, when not the one at
/// `served_at`.
fn owner(
    gw: &Gateway,
    principal: &Principal,
    server: &str,
    own: Option<SocketAddr>,
    served_at: Option<SocketAddr>,
) -> Option<replica_forward::Owner> {
    let addr = own.filter(|own| Some(*own) != served_at)?;
    // The holder asks its upstream at most twice (a task's status, then its result) and
    // may wait a moment for a task's questions.
    let timeout = gw
        .find(principal.access.as_deref(), server)
        .map_or(Duration::from_secs(60), |u| u.timeout());
    Some(replica_forward::Owner {
        addr,
        held: Held::Task,
        works_within: 2 * timeout + task_extension::QUESTIONS_WAIT,
    })
}

/// Unknown task: what any id that is not the caller's own gets.
pub fn unknown(ctx: &Ctx, id: &Value) -> Response {
    let error = jsonrpc::error_response(
        id,
        jsonrpc::INVALID_PARAMS,
        "Unknown task: params.taskId names no task of yours",
        None,
    );
    relay::finish(ctx, error)
}

/// What becomes of task ids in a request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskIds {
    /// The request asked for a task: the id the upstream gives is sealed for the caller.
    Create,
    /// The request named a task: the upstream's id goes back as the caller named it.
    Named { upstream: String, caller: String },
}

/// Whether a request asks to run as a task (`params.task`).
pub fn asks_for_task(body: &Map<String, Value>) -> bool {
    jsonrpc::params(body).is_some_and(|p| p.contains_key("task"))
}

/// `tasks/get`, `tasks/result`, `tasks/cancel` on the caller's own task, relayed to its
/// server with the upstream's id; `tasks/list` and the rest are not offered. 2026-07-28
/// clients speak the Tasks extension instead ([`task_extension`]).
pub async fn handle(
    gw: Arc<Gateway>,
    mut ctx: Ctx,
    id: Value,
    method: &str,
    mut body: Map<String, Value>,
) -> Response {
    if ctx.era == Era::Modern {
        return task_extension::handle(gw, ctx, id, method, body).await;
    }
    if !matches!(method, "tasks/get" | "tasks/result" | "tasks/cancel") {
        let message = format!(
            "Method not found: {} is not offered through the gateway (a server's task list holds every caller's tasks); poll your own with tasks/get",
            jsonrpc::quoted(method)
        );
        let error = jsonrpc::error_response(&id, jsonrpc::METHOD_NOT_FOUND, &message, None);
        return relay::finish(&ctx, error);
    }
    let Some(task) = open(&gw, &ctx, &body) else {
        return unknown(&ctx, &id);
    };
    let Some(upstream) = gw.find(ctx.principal.access.as_deref(), &task.server) else {
        return no_such_server(&id, &task.server);
    };
    if let Some(params) = body.get_mut("params").and_then(Value::as_object_mut) {
        params.insert("taskId".into(), Value::String(task.upstream.clone()));
    }
    ctx.tasks = Some(Box::new(TaskIds::Named {
        upstream: task.upstream,
        caller: task.caller,
    }));
    relay::relay(gw, ctx, upstream, id, body).await
}

/// Puts the caller's task ids into an answer from `server` (see [`TaskIds`]).
pub fn rewrite(gw: &Gateway, ctx: &Ctx, server: &Upstream, response: &mut Value) {
    match ctx.tasks.as_deref() {
        None => {}
        Some(TaskIds::Create) => {
            let Some(upstream) = response
                .pointer("/result/task/taskId")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return; // Answered at once, not as a task.
            };
            let sealed = Sealed {
                s: server.name.clone(),
                t: upstream.clone(),
                p: ctx.principal.id.clone(),
                own: ctx.served_at,
            };
            let caller = gw.sessions.seal_value(&sealed, TASK_PURPOSE);
            let ttl = response
                .pointer("/result/task/ttl")
                .and_then(Value::as_u64)
                .map(Duration::from_millis);
            let principal = &ctx.principal.id;
            gw.task_owners
                .record(server, &upstream, principal, &caller, ttl);
            replace_strings(response, &upstream, &caller);
            if ctx.era == Era::Modern {
                task_extension::created(response);
            }
        }
        Some(TaskIds::Named { upstream, caller }) => replace_strings(response, upstream, caller),
    }
}

/// Every string value equal to `from` becomes `to`: the id in a task's fields and in the
/// `io.modelcontextprotocol/related-task` metadata of its result alike.
pub fn replace_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => *s = to.to_string(),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_strings(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_strings(v, from, to)),
        _ => {}
    }
}

/// Whether `upstream`'s server runs tool calls as tasks.
pub fn runs_tool_tasks(upstream: &Upstream) -> bool {
    match upstream.state() {
        State::Up(conn) => conn.init().is_some_and(|init| {
            init.result
                .get("capabilities")
                .and_then(|c| c.pointer("/tasks/requests/tools/call"))
                .is_some_and(|v| !v.is_null())
        }),
        _ => false,
    }
}

/// The aggregate's `tasks` capability: tool calls run as tasks when any server the caller
/// may use runs them (the others answer a task request with a plain result, as the spec
/// lets them), and tasks can be cancelled; never listed.
pub fn offered_by_any<'a>(
    capabilities: &mut Value,
    upstreams: impl IntoIterator<Item = &'a Arc<Upstream>>,
) {
    if upstreams.into_iter().any(|u| runs_tool_tasks(u)) {
        capabilities["tasks"] =
            serde_json::json!({"requests": {"tools": {"call": {}}}, "cancel": {}});
    }
}

/// A server's capabilities as its callers see them through the gateway: without
/// `tasks.list` (see the module's notes).
pub fn offered(capabilities: Option<&mut Value>) {
    if let Some(tasks) = capabilities
        .and_then(|c| c.get_mut("tasks"))
        .and_then(Value::as_object_mut)
    {
        tasks.remove("list");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tasks_id_is_replaced_wherever_it_appears_and_nothing_else() {
        let mut answer = json!({"jsonrpc": "2.0", "id": 1, "result": {
            "taskId": "up-1", "status": "completed",
            "content": [{"type": "text", "text": "up-1 is done"}],
            "_meta": {"io.modelcontextprotocol/related-task": {"taskId": "up-1"}}}});
        replace_strings(&mut answer, "up-1", "mine");
        assert_eq!(answer["result"]["taskId"], "mine");
        assert_eq!(
            answer["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
            "mine"
        );
        assert_eq!(
            answer["result"]["content"][0]["text"], "up-1 is done",
            "only whole values"
        );
    }

    #[test]
    fn the_task_list_is_not_offered() {
        let mut caps = json!({"tools": {}, "tasks": {"list": {}, "cancel": {},
                              "requests": {"tools": {"call": {}}}}});
        offered(Some(&mut caps));
        assert_eq!(
            caps["tasks"],
            json!({"cancel": {}, "requests": {"tools": {"call": {}}}})
        );
        let mut none = json!({"tools": {}});
        offered(Some(&mut none));
        assert_eq!(none, json!({"tools": {}}));
    }
}
