//! The Tasks extension (`io.modelcontextprotocol/tasks`) for 2026-07-28 clients, in front
//! of servers whose tasks are the 2025-11-25 core protocol's (SEP-1686).
//!
//! The two differ in who decides and in how a task's questions travel. A 2025-11-25 client
//! asks for a task (`params.task`), reads its result with a `tasks/result` call that waits
//! for the end, and is asked its questions (an elicitation while `input_required`) on that
//! call's stream. Under the extension the server decides, the client polls `tasks/get`,
//! which carries the result once there is one, and answers the questions `tasks/get`
//! lists (`inputRequests`) with `tasks/update`.
//!
//! So gantry decides in the server's place: a `tools/call` from a client that declared the
//! extension runs as a task when the tool's `execution.taskSupport` is `required` or
//! `optional` (its author says it may run long), else as a plain call; a client that did
//! not declare it gets -32021 for a tool that only runs as a task. The answer takes the
//! extension's shape (`resultType: "task"`, `ttlMs`, `pollIntervalMs`).
//!
//! `tasks/get` asks the server for the task's status; a finished task's result or error
//! comes from `tasks/result`. When the server waits for input, gantry makes the
//! `tasks/result` call its questions come on and holds them ([`Questions`]), each under a
//! key of its own, until the client's `tasks/update` answers them by that key. A task's
//! questions are held in the process whose upstream session runs the task, where every
//! request naming it is carried ([`super::replica_forward`]). Task ids are sealed as for
//! every caller ([`super::tasks`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::era::Era;
use super::http::{Ctx, no_such_server};
use super::per_caller::{PerCaller, Slot};
use super::relay::{self, Started, finish};
use super::server_requests::{self, Declines, MintedIds, client_can_answer};
use super::session::new_session_id;
use super::tasks::{self, Opened, TaskIds};
use super::{Gateway, client_stream, jsonrpc};
use crate::upstream::{CallEvent, Connection, ListKind, Upstream};

pub const EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// How long `tasks/get` waits for the questions of a task its server says waits for
/// input: they come on the `tasks/result` call gantry makes then.
pub const QUESTIONS_WAIT: Duration = Duration::from_secs(2);
/// Tasks whose questions are held at once; past it, `tasks/get` reports such a task as
/// working, without questions, until room is made.
const MAX_ASKING_TASKS: usize = 10_000;
/// `tasks/result` calls one caller's tasks may have waiting for questions at once: each
/// holds one of its server's concurrency slots while it waits, and one caller must not
/// take them all. Past it, a task waiting for input reads as working (with the questions
/// already held) until another call ends.
const MAX_LISTENING_PER_CALLER: usize = 8;
/// Why a question is declined when those held for its task fill the client's backlog.
const QUESTIONS_FULL: &str =
    "gantry: the questions already waiting for the client's answer fill its backlog";

/// Whether a 2026-07-28 `tools/call` to `upstream` may run as a task: its server runs
/// tool calls as tasks.
pub fn may_run_as_task(ctx: &Ctx, upstream: &Upstream) -> bool {
    ctx.era == Era::Modern && ctx.method == "tools/call" && tasks::runs_tool_tasks(upstream)
}

/// Decides whether a 2026-07-28 `tools/call` runs as a task (see the module's notes), and
/// asks the upstream for one when it does; `Err` refuses a call that only runs as a task
/// from a client that did not declare the extension.
pub async fn augment(
    gw: &Gateway,
    ctx: &mut Ctx,
    upstream: &Upstream,
    id: &Value,
    body: &mut Map<String, Value>,
) -> Result<(), Response> {
    let Some(params) = body.get_mut("params").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    // 2026-07-28 has no client-side `task` parameter: the server decides, here gantry.
    params.remove("task");
    ctx.tasks = None;
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let wait = Duration::from_millis(gw.config.gateway.list_timeout_ms);
    // A list that cannot be read leaves the call plain: the server answers it as it can.
    let tools = upstream.list(ListKind::Tools, wait).await.ok();
    let support = tools
        .as_deref()
        .and_then(|tools| {
            tools
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|tool| tool.pointer("/execution/taskSupport"))
        .and_then(Value::as_str);
    match (support, ctx.caps.tasks) {
        (Some("required" | "optional"), true) => {
            params.insert("task".into(), json!({}));
            ctx.tasks = Some(Box::new(TaskIds::Create));
            Ok(())
        }
        (Some("required"), false) => Err(finish(
            ctx,
            missing_extension(id, "this tool only runs as a task"),
        )),
        _ => Ok(()),
    }
}

/// -32021: the request needs the extension, which the client did not declare (`why`).
pub fn missing_extension(id: &Value, why: &str) -> Value {
    jsonrpc::error_response(
        id,
        jsonrpc::MISSING_CLIENT_CAPABILITY,
        &format!("Missing required client capability: the extension {EXTENSION} ({why})"),
        Some(json!({ "requiredCapabilities": { "extensions": { EXTENSION: {} } } })),
    )
}

/// A server's capabilities as 2026-07-28 clients see them: the extension in place of the
/// 2025-11-25 `tasks` capability, offered when the server runs tool calls as tasks.
pub fn offered(capabilities: Option<&mut Value>) {
    let Some(Value::Object(capabilities)) = capabilities else {
        return;
    };
    let runs_tools = capabilities.remove("tasks").is_some_and(|t| {
        t.pointer("/requests/tools/call")
            .is_some_and(|v| !v.is_null())
    });
    if !runs_tools {
        return;
    }
    let extensions = capabilities
        .entry("extensions")
        .or_insert_with(|| json!({}));
    if let Value::Object(extensions) = extensions {
        extensions.insert(EXTENSION.into(), json!({}));
    }
}

/// A `CreateTaskResult` in the extension's shape: the task's fields in the result itself.
pub fn created(response: &mut Value) {
    let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(Value::Object(task)) = result.remove("task") else {
        return;
    };
    result.extend(modern_task(task));
    result.insert("resultType".into(), json!("task"));
}

/// A 2025-11-25 `Task`'s fields under the extension's names (`ttl` → `ttlMs`, which is
/// required and `null` for unlimited; `pollInterval` → `pollIntervalMs`).
fn modern_task(mut task: Map<String, Value>) -> Map<String, Value> {
    let ttl = task.remove("ttl").unwrap_or(Value::Null);
    task.insert("ttlMs".into(), ttl);
    if let Some(poll) = task.remove("pollInterval") {
        task.insert("pollIntervalMs".into(), poll);
    }
    task
}

/// `tasks/get`, `tasks/update` and `tasks/cancel` from a 2026-07-28 client, on its own
/// task; any other `tasks/…` method is not the extension's.
pub async fn handle(
    gw: Arc<Gateway>,
    ctx: Ctx,
    id: Value,
    method: &str,
    body: Map<String, Value>,
) -> Response {
    if !matches!(method, "tasks/get" | "tasks/update" | "tasks/cancel") {
        let message = format!(
            "Method not found: {} is not a method of the tasks extension (tasks/get, tasks/update, tasks/cancel)",
            jsonrpc::quoted(method)
        );
        let error = jsonrpc::error_response(&id, jsonrpc::METHOD_NOT_FOUND, &message, None);
        return finish(&ctx, error);
    }
    if !ctx.caps.tasks {
        return finish(
            &ctx,
            missing_extension(&id, &format!("{} is its method", jsonrpc::quoted(method))),
        );
    }
    let Some(task) = tasks::open(&gw, &ctx, &body) else {
        return tasks::unknown(&ctx, &id);
    };
    let Some(upstream) = gw.find(ctx.principal.access.as_deref(), &task.server) else {
        return no_such_server(&id, &task.server);
    };
    let answer = match method {
        "tasks/get" => get(&gw, &ctx, &id, &upstream, &task).await,
        "tasks/update" => Ok(update(&gw, &id, &upstream, &task, &body)),
        _ => cancel(&gw, &ctx, &id, &upstream, &task).await,
    };
    match answer {
        Ok(mut answer) => {
            tasks::replace_strings(&mut answer, &task.upstream, &task.caller);
            finish(&ctx, answer)
        }
        Err(response) => response,
    }
}

/// A request to the upstream about its task `upstream_task`.
fn about(method: &str, upstream_task: &str) -> Map<String, Value> {
    jsonrpc::request(method, json!({ "taskId": upstream_task }))
}

/// The task's status as the extension has it: a finished task's result or error in it,
/// the questions it waits on listed.
pub(super) async fn get(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    id: &Value,
    upstream: &Arc<Upstream>,
    task: &Opened,
) -> Result<Value, Response> {
    let status = relay::exchange(gw, ctx, upstream, id, about("tasks/get", &task.upstream)).await?;
    let Some(Value::Object(fields)) = status.get("result") else {
        return Ok(status); // The server's error, for the client as it is.
    };
    let ttl = fields.get("ttl").and_then(Value::as_u64);
    let state = fields
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut detailed = modern_task(fields.clone());
    let questions = &gw.task_questions;
    match state.as_str() {
        "completed" | "failed" => {
            let held = questions.get(upstream, task).and_then(|a| a.outcome());
            let outcome = match held {
                Some(outcome) => outcome,
                None => {
                    relay::exchange(gw, ctx, upstream, id, about("tasks/result", &task.upstream))
                        .await?
                }
            };
            questions.forget(upstream, task);
            // The extension keeps `failed` for JSON-RPC errors: a tool's own error
            // (`isError`), which 2025-11-25 servers may report as failed, is completed.
            if let Some(result) = outcome.get("result") {
                // The result is the request's own, in the client's era.
                let mut result = result.clone();
                if let Value::Object(fields) = &mut result {
                    fields
                        .entry("resultType")
                        .or_insert_with(|| json!("complete"));
                }
                detailed.insert("status".into(), json!("completed"));
                detailed.insert("result".into(), result);
            } else if let Some(error) = outcome.get("error") {
                detailed.insert("status".into(), json!("failed"));
                detailed.insert("error".into(), error.clone());
            }
        }
        "cancelled" => questions.forget(upstream, task),
        _ => {
            let (asking, wait) = if state == "input_required" {
                let asking = questions.listening(gw, ctx, upstream, id, task, ttl);
                (asking, QUESTIONS_WAIT)
            } else {
                (questions.get(upstream, task), Duration::ZERO)
            };
            let open = match asking {
                Some(asking) => asking.open_questions(wait).await,
                None => Map::new(),
            };
            // `input_required` lists what the client is to answer; with nothing to list
            // (yet, or declined), the task is working as far as the client can tell.
            if open.is_empty() {
                detailed.insert("status".into(), json!("working"));
            } else {
                detailed.insert("status".into(), json!("input_required"));
                detailed.insert("inputRequests".into(), Value::Object(open));
            }
        }
    }
    Ok(jsonrpc::result_response(id, Value::Object(detailed)))
}

/// Gives the server the client's answers to the questions `tasks/get` listed; answers to
/// keys that are not open (answered already, never asked) are ignored, as the extension
/// has it.
fn update(
    gw: &Gateway,
    id: &Value,
    upstream: &Upstream,
    task: &Opened,
    body: &Map<String, Value>,
) -> Value {
    let responses = jsonrpc::params(body)
        .and_then(|p| p.get("inputResponses"))
        .and_then(Value::as_object);
    let Some(responses) = responses else {
        return jsonrpc::error_response(
            id,
            jsonrpc::INVALID_PARAMS,
            "Invalid params: params.inputResponses must be an object of answers by key",
            None,
        );
    };
    if let Some(asking) = gw.task_questions.get(upstream, task) {
        asking.answer(responses);
    }
    jsonrpc::result_response(id, json!({}))
}

/// Asks the server to cancel the task; acknowledged with an empty result.
async fn cancel(
    gw: &Arc<Gateway>,
    ctx: &Ctx,
    id: &Value,
    upstream: &Arc<Upstream>,
    task: &Opened,
) -> Result<Value, Response> {
    let answer =
        relay::exchange(gw, ctx, upstream, id, about("tasks/cancel", &task.upstream)).await?;
    if answer.get("result").is_none() {
        return Ok(answer);
    }
    gw.task_questions.forget(upstream, task);
    Ok(jsonrpc::result_response(id, json!({})))
}

/// The questions of tasks whose server waits for input, by upstream (its key) and the
/// upstream's task id.
pub struct Questions {
    asking: Mutex<HashMap<(String, String), Arc<Asking>>>,
    /// The `tasks/result` calls each caller's tasks have waiting for questions.
    listening: Arc<PerCaller>,
}

impl Default for Questions {
    fn default() -> Self {
        Self {
            asking: Mutex::default(),
            listening: PerCaller::new(MAX_LISTENING_PER_CALLER),
        }
    }
}

/// One task's questions.
#[derive(Default)]
struct Asking {
    asked: Mutex<Asked>,
    changed: Notify,
    /// Ends the task's `tasks/result` call when the task is forgotten.
    stop: CancellationToken,
}

#[derive(Default)]
struct Asked {
    /// Open questions by the key the client answers them under.
    open: BTreeMap<String, Question>,
    /// Whether a `tasks/result` call is under way to bring questions.
    listening: bool,
    /// The task's final answer, if that call brought it.
    outcome: Option<Value>,
}

struct Question {
    /// The connection the question came on, where its answer goes.
    conn: Weak<Connection>,
    upstream_id: Value,
    /// `{method, params}`, as `inputRequests` lists it.
    request: Value,
    bytes: usize,
}

impl Questions {
    fn key(upstream: &Upstream, task: &Opened) -> (String, String) {
        (upstream.key(), task.upstream.clone())
    }

    fn get(&self, upstream: &Upstream, task: &Opened) -> Option<Arc<Asking>> {
        self.asking
            .lock()
            .unwrap()
            .get(&Self::key(upstream, task))
            .cloned()
    }

    /// Forgets a task's questions (it ended) and ends its call.
    fn forget(&self, upstream: &Upstream, task: &Opened) {
        let asking = self
            .asking
            .lock()
            .unwrap()
            .remove(&Self::key(upstream, task));
        if let Some(asking) = asking {
            asking.stop.cancel();
        }
    }

    /// Forgets `asking` if it still holds its task's questions.
    fn forget_expired(&self, key: &(String, String), asking: &Arc<Asking>) {
        let mut all = self.asking.lock().unwrap();
        if all.get(key).is_some_and(|held| Arc::ptr_eq(held, asking)) {
            all.remove(key);
            asking.stop.cancel();
        }
    }

    /// The task's questions, with a `tasks/result` call under way to bring them when the
    /// caller may have one more; `None` when too many tasks are asking already.
    fn listening(
        &self,
        gw: &Arc<Gateway>,
        ctx: &Ctx,
        upstream: &Arc<Upstream>,
        id: &Value,
        task: &Opened,
        ttl_ms: Option<u64>,
    ) -> Option<Arc<Asking>> {
        let key = Self::key(upstream, task);
        let asking = {
            let mut all = self.asking.lock().unwrap();
            match all.get(&key) {
                Some(asking) => Arc::clone(asking),
                None if all.len() >= MAX_ASKING_TASKS => {
                    tracing::warn!(
                        server = %task.server,
                        "too many tasks wait for input to hold this one's questions"
                    );
                    return None;
                }
                None => {
                    let asking = Arc::new(Asking::default());
                    all.insert(key.clone(), Arc::clone(&asking));
                    forget_when_expired(gw, key, &asking, ttl_ms);
                    asking
                }
            }
        };
        let Some(slot) = self.listening.take(&ctx.principal.id) else {
            tracing::debug!(
                principal = %ctx.principal.id,
                "a caller's tasks already wait for questions on {MAX_LISTENING_PER_CALLER} calls"
            );
            return Some(asking);
        };
        let idle = {
            let mut asked = asking.asked.lock().unwrap();
            let idle = !asked.listening && asked.outcome.is_none();
            asked.listening |= idle;
            idle
        };
        if !idle {
            return Some(asking);
        }
        let call = about("tasks/result", &task.upstream);
        tokio::spawn(listen(
            Arc::clone(gw),
            ctx.clone(),
            Arc::clone(upstream),
            id.clone(),
            call,
            (Arc::clone(&asking), slot),
        ));
        Some(asking)
    }
}

/// Forgets a task's questions when the task's life is over (its `ttl`, within
/// [`tasks::MAX_TASK_LIFE`]), whoever still waits on them.
fn forget_when_expired(
    gw: &Arc<Gateway>,
    key: (String, String),
    asking: &Arc<Asking>,
    ttl_ms: Option<u64>,
) {
    let life = ttl_ms
        .map_or(tasks::DEFAULT_TASK_LIFE, Duration::from_millis)
        .min(tasks::MAX_TASK_LIFE);
    let (gw, asking) = (Arc::downgrade(gw), Arc::downgrade(asking));
    tokio::spawn(async move {
        tokio::time::sleep(life).await;
        if let (Some(gw), Some(asking)) = (gw.upgrade(), asking.upgrade()) {
            gw.task_questions.forget_expired(&key, &asking);
        }
    });
}

/// Makes the `tasks/result` call a task's questions come on, and holds them; ends with the
/// call (answered, failed, timed out: the next `tasks/get` that finds the task waiting
/// makes another), or when the task is forgotten.
async fn listen(
    gw: Arc<Gateway>,
    ctx: Ctx,
    upstream: Arc<Upstream>,
    id: Value,
    call: Map<String, Value>,
    (asking, _slot): (Arc<Asking>, Slot),
) {
    let mut run = match relay::start(&gw, &ctx, &upstream, &id, call).await {
        Started::Running(run) => run,
        Started::Answered(_) => return asking.ended(None),
    };
    let declines = Declines::new(&upstream, "tasks/result");
    loop {
        let event = tokio::select! {
            biased;
            () = asking.stop.cancelled() => {
                // Dropping the call cancels it upstream.
                return run.settle("cancelled");
            }
            event = run.next_event() => event,
        };
        match event {
            Some(CallEvent::ServerRequest { upstream_id, msg }) => {
                let method = msg
                    .get("method")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if method == "ping" || !client_can_answer(&ctx.caps, method) {
                    run.conn.answer_unrouted(&upstream_id, &msg);
                } else if let Err(why) = asking.ask(&run.conn, upstream_id.clone(), &msg) {
                    declines.decline(&run.conn, &upstream_id, &why);
                }
            }
            // The extension has no progress or logs for tasks.
            Some(CallEvent::Notification(_)) => {}
            Some(CallEvent::Response(response)) => {
                let code = response.error_code();
                run.settle(relay::error_outcome(code));
                // An error may be the call's rather than the task's: not kept, so the next
                // poll that finds the task waiting asks again (and one that finds it
                // ended reads its error afresh).
                return asking.ended(code.is_none().then(|| response.to_value()));
            }
            unanswered => {
                run.unanswered(unanswered);
                return asking.ended(None);
            }
        }
    }
}

impl Asking {
    /// Holds a question for the client, or says why it must be declined.
    fn ask(&self, conn: &Arc<Connection>, upstream_id: Value, msg: &Value) -> Result<(), String> {
        let bytes = jsonrpc::json_len(msg);
        {
            let mut asked = self.asked.lock().unwrap();
            if asked.open.len() >= server_requests::MAX_WAITING {
                return Err(MintedIds::too_many());
            }
            let held: usize = asked.open.values().map(|q| q.bytes).sum();
            if held >= client_stream::BACKLOG_BYTES {
                return Err(QUESTIONS_FULL.to_string());
            }
            let request = json!({
                "method": msg.get("method").cloned().unwrap_or(Value::Null),
                "params": msg.get("params").cloned().unwrap_or_else(|| json!({})),
            });
            let question = Question {
                conn: Arc::downgrade(conn),
                upstream_id,
                request,
                bytes,
            };
            asked.open.insert(new_session_id(), question);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// The call that brought questions ended, with the task's final answer or without.
    fn ended(&self, outcome: Option<Value>) {
        {
            let mut asked = self.asked.lock().unwrap();
            asked.listening = false;
            asked.outcome = outcome;
        }
        self.changed.notify_waiters();
    }

    fn outcome(&self) -> Option<Value> {
        self.asked.lock().unwrap().outcome.clone()
    }

    /// The open questions by key, once there are any or within `wait`.
    async fn open_questions(&self, wait: Duration) -> Map<String, Value> {
        let deadline = Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a question that comes in between wakes it.
            changed.as_mut().enable();
            {
                let asked = self.asked.lock().unwrap();
                let settled = !asked.listening || asked.outcome.is_some();
                if !asked.open.is_empty() || settled {
                    return asked
                        .open
                        .iter()
                        .map(|(key, q)| (key.clone(), q.request.clone()))
                        .collect();
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Map::new();
            }
        }
    }

    /// Sends the server the answers to open questions, each once.
    fn answer(&self, responses: &Map<String, Value>) {
        let mut asked = self.asked.lock().unwrap();
        for (key, response) in responses {
            let Some(question) = asked.open.remove(key) else {
                continue;
            };
            if let Some(conn) = question.conn.upgrade() {
                let mut reply = Map::new();
                reply.insert("jsonrpc".into(), json!("2.0"));
                reply.insert("result".into(), response.clone());
                conn.respond(question.upstream_id, reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_task_takes_the_extensions_shape() {
        let mut answer = json!({"jsonrpc": "2.0", "id": 1, "result": {
            "task": {"taskId": "t", "status": "working", "createdAt": "2026-12-07T00:00:00Z",
                     "lastUpdatedAt": "2026-12-07T00:00:00Z", "ttl": 300000, "pollInterval": 1000},
            "_meta": {"x": 1}}});
        created(&mut answer);
        assert_eq!(
            answer["result"],
            json!({"resultType": "task", "taskId": "t", "status": "working",
                   "createdAt": "2026-12-07T00:00:00Z", "lastUpdatedAt": "2026-12-07T00:00:00Z",
                   "ttlMs": 300000, "pollIntervalMs": 1000, "_meta": {"x": 1}})
        );
    }

    #[test]
    fn an_unlimited_task_says_so_with_null() {
        let task = modern_task(
            json!({"taskId": "t", "status": "working"})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert_eq!(task["ttlMs"], Value::Null);
        assert!(!task.contains_key("pollIntervalMs"));
    }

    #[test]
    fn the_extension_is_offered_in_place_of_the_tasks_capability() {
        let mut runs =
            json!({"tools": {}, "tasks": {"cancel": {}, "requests": {"tools": {"call": {}}}}});
        offered(Some(&mut runs));
        assert_eq!(runs, json!({"tools": {}, "extensions": {EXTENSION: {}}}));
        let mut lists_only = json!({"tools": {}, "tasks": {"list": {}}});
        offered(Some(&mut lists_only));
        assert_eq!(lists_only, json!({"tools": {}}));
    }

    #[tokio::test]
    async fn a_question_is_answered_once_and_unknown_keys_are_ignored() {
        let asking = Asking::default();
        asking.asked.lock().unwrap().listening = true;
        assert!(
            asking
                .open_questions(Duration::from_millis(10))
                .await
                .is_empty()
        );
        let (conn, _inbox) = Connection::new("s");
        let msg = json!({"jsonrpc": "2.0", "id": 7, "method": "elicitation/create", "params": {"message": "?"}});
        asking.ask(&conn, json!(7), &msg).unwrap();
        let open = asking.open_questions(Duration::ZERO).await;
        let (key, request) = open.iter().next().unwrap();
        assert_eq!(
            request,
            &json!({"method": "elicitation/create", "params": {"message": "?"}})
        );
        let answers = json!({key.as_str(): {"action": "accept"}, "never-asked": {}});
        asking.answer(answers.as_object().unwrap());
        asking.answer(answers.as_object().unwrap());
        assert!(asking.asked.lock().unwrap().open.is_empty());
    }
}
