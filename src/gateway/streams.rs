//! Long-lived streams of messages that belong to no request: the 2025-era GET stream of a
//! session, and the 2026-07-28 `subscriptions/listen` stream.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::auth::{AuthError, Principal};
use super::client_stream;
use super::era;
use super::http::{Ctx, rpc_error};
use super::jsonrpc;
use super::resumption::{self, Refused, StreamKind};
use super::server_requests::{self, Answerer, Declines, MintedIds, client_can_answer};
use super::session::SessionClaims;
use super::task_notifications::{self, Listener, Watched};
use super::{Gateway, Route};
use super::{relay, resource_subscriptions, task_extension, tasks};
use crate::policy::Access;
use crate::upstream::{Next, State, Upstream};

const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Decides whether (and as what) an upstream notification reaches a stream: as it came,
/// borrowed from the broadcast every stream shares, or changed for this one.
type Filter = Arc<dyn for<'a> Fn(&'a Value) -> Option<Cow<'a, Value>> + Send + Sync>;

/// Where one client stream's messages go, and which it takes.
#[derive(Clone)]
struct Forwarding {
    out: Arc<client_stream::Sender>,
    keep: Filter,
    /// The session whose client may answer server requests (none on a listen stream).
    session: Option<Arc<SessionClaims>>,
    mark: Option<Arc<str>>,
    /// The aggregate endpoint's: its lists are the servers' together, so a server coming,
    /// going or reconnecting changes them.
    aggregate: bool,
}

/// Who opened a stream, as admitted then: admitted again while the stream lasts.
pub struct Admitted {
    /// The request's headers, whose credentials are checked again.
    pub credentials: HeaderMap,
    pub principal: String,
    pub access: Option<Access>,
}

impl Admitted {
    pub fn new(credentials: HeaderMap, principal: &Principal) -> Self {
        Self {
            credentials,
            principal: principal.id.clone(),
            access: principal.access.as_deref().cloned(),
        }
    }
}

/// The aggregate endpoint's list changes a stream is told of when its servers change.
const LISTS: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
];

/// Subscribes to each upstream's unsolicited messages, following reconnects, and queues
/// the ones `keep` accepts on `out` until the client leaves or the gateway stops. Server
/// requests made outside calls are relayed too when `session` is given: its client may
/// answer them, and nobody else. Nothing here waits on the client: what it has not read
/// is bounded by `out`'s backlog. On the aggregate endpoint the servers the registry adds
/// later are followed too.
fn forward(
    gw: &Arc<Gateway>,
    route: &Route,
    out: Arc<client_stream::Sender>,
    keep: Filter,
    session: Option<Arc<SessionClaims>>,
    admitted: Admitted,
    mark: Option<Arc<str>>,
) {
    let aggregate = *route == Route::Aggregate;
    let stream = Forwarding {
        out,
        keep,
        session,
        mark,
        aggregate,
    };
    let changes = gw.upstreams.changes();
    let upstreams = gw.upstreams_for(route, admitted.access.as_ref());
    for upstream in &upstreams {
        tokio::spawn(forward_from(
            Arc::clone(gw),
            Arc::clone(upstream),
            stream.clone(),
        ));
    }
    if aggregate {
        tokio::spawn(follow_the_registry(
            Arc::clone(gw),
            stream.clone(),
            admitted.access.clone(),
            upstreams,
            changes,
        ));
    }
    tokio::spawn(keep_admitted(
        Arc::clone(gw),
        Arc::downgrade(&stream.out),
        admitted,
        stream.session,
    ));
}

/// Ends a stream once its caller would no longer be let in as it was: the key revoked,
/// the token expired, the policy changed, the session ended or expired. Checked every
/// `auth.api_key_cache_secs` (at least 5 s), as often as a revoked key's requests can
/// still pass; a store that cannot be asked keeps the stream. The client may open another,
/// under what holds now. It holds the stream weakly: a stream its feeders end (its only
/// server removed) is not kept open by this check.
async fn keep_admitted(
    gw: Arc<Gateway>,
    out: Weak<client_stream::Sender>,
    admitted: Admitted,
    session: Option<Arc<SessionClaims>>,
) {
    let every = Duration::from_secs(gw.config.auth.api_key_cache_secs.max(5));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = gw.shutdown.cancelled() => return,
        }
        if out.strong_count() == 0 {
            return; // Ended: the client left, or nothing feeds it any more.
        }
        let why = match gw.auth.authenticate(&admitted.credentials).await {
            Err(AuthError::Unavailable) => continue,
            Err(_) => "its credentials are no longer accepted",
            Ok(p)
                if p.id != admitted.principal
                    || p.access.as_deref() != admitted.access.as_ref() =>
            {
                "its access changed"
            }
            Ok(_)
                if session
                    .as_ref()
                    .is_some_and(|claims| !gw.session_alive(claims)) =>
            {
                "its session ended"
            }
            Ok(_) => continue,
        };
        if let Some(out) = out.upgrade() {
            tracing::info!(principal = %admitted.principal, why, "an open stream was ended");
            out.close();
        }
        return;
    }
}

/// One upstream's messages for one client stream; a replaced upstream's successor's after it.
async fn forward_from(gw: Arc<Gateway>, mut upstream: Arc<Upstream>, stream: Forwarding) {
    let Forwarding {
        out,
        keep,
        session,
        mark,
        aggregate,
    } = stream;
    let shutdown = gw.shutdown.clone();
    // A connection made after the stream opened may serve other lists than the client saw.
    let mut news = !upstream.is_up();
    loop {
        let next = tokio::select! {
            next = upstream.next() => next,
            () = out.gone() => return,
            () = shutdown.cancelled() => return,
        };
        let conn = match next {
            Next::Connected(conn) => conn,
            // The stream goes on with the instance that took its place.
            Next::Replaced(successor) => {
                upstream = successor;
                news = true;
                continue;
            }
            // Removed: nothing more comes.
            Next::Ended => return,
        };
        if aggregate && news {
            lists_changed(&out, &keep, &upstream);
        }
        news = true;
        let mut events = conn.subscribe();
        // Server requests made outside any call come here when this client can answer.
        // As many may queue here as may wait for the client's answers: a burst
        // of them all gets in, and past that the client has its hands full.
        let (req_tx, mut req_rx) = mpsc::channel::<(Value, Value)>(server_requests::MAX_WAITING);
        let declines = Arc::new(Declines::new(&upstream, "GET"));
        let _listener = session.as_ref().map(|claims| {
            let caps = claims.caps;
            let full = Arc::clone(&declines);
            let (gw, server, principal) =
                (Arc::clone(&gw), Arc::clone(&upstream), claims.sub.clone());
            conn.listen_for_requests(
                move |msg| {
                    client_can_answer(&caps, method_of(msg))
                        && tasks::may_see(&gw, &server, &principal, msg)
                },
                req_tx,
                Arc::new(move |conn, id| full.decline(conn, id, &MintedIds::too_many())),
            )
        });
        let mut minted = session
            .as_deref()
            .map(|claims| MintedIds::new(&gw, Answerer::of_session(claims), mark.clone()));
        loop {
            tokio::select! {
                () = out.gone() => return,
                () = shutdown.cancelled() => return,
                () = conn.closed().cancelled() => break,
                _ = upstream.stopped() => break,
                Some((upstream_id, mut msg)) = req_rx.recv() => {
                    let principal = session.as_ref().map(|c| c.sub.as_str()).unwrap_or_default();
                    if !tasks::for_caller(&gw, &upstream, principal, &mut msg) {
                        conn.answer_unrouted(&upstream_id, &msg);
                    } else if let Some(minted) = minted.as_mut() {
                        server_requests::relay(&out, minted, &declines, &conn, &upstream_id, msg);
                    }
                }
                event = events.recv() => match event {
                    // Every caller's tasks' statuses come here: not this client's to see.
                    Ok(event) if method_of(&event) == tasks::STATUS_NOTIFICATION => {}
                    Ok(event) => {
                        if let Some(message) = keep(&event) {
                            out.notify(&message, upstream.metrics.notifications_dropped());
                        }
                    }
                    // Passed by while this task was not scheduled: lost to this
                    // stream as if its backlog were full, and counted with those.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        out.missed(n, upstream.metrics.notifications_dropped());
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

/// An aggregate stream follows the servers its caller may see as the registry changes
/// them: one added is forwarded from as well, and its client is told its lists changed
/// when a server comes or goes (a replaced one tells of itself once it connects).
async fn follow_the_registry(
    gw: Arc<Gateway>,
    stream: Forwarding,
    access: Option<Access>,
    upstreams: Vec<Arc<Upstream>>,
    mut changes: watch::Receiver<u64>,
) {
    let mut known: HashMap<String, Arc<Upstream>> =
        upstreams.into_iter().map(|u| (u.key(), u)).collect();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = stream.out.gone() => return,
            () = gw.shutdown.cancelled() => return,
        }
        let now: HashMap<String, Arc<Upstream>> = gw
            .upstreams_for(&Route::Aggregate, access.as_ref())
            .into_iter()
            .map(|u| (u.key(), u))
            .collect();
        let mut told = None;
        for (key, upstream) in &now {
            // The forwarder of a replaced instance moves on to its successor by itself.
            if known.get(key).is_some_and(|was| leads_to(was, upstream)) {
                continue;
            }
            tokio::spawn(forward_from(
                Arc::clone(&gw),
                Arc::clone(upstream),
                stream.clone(),
            ));
            told = Some(upstream);
        }
        let gone = known.iter().find(|(key, _)| !now.contains_key(*key));
        if let Some(upstream) = told.or(gone.map(|(_, u)| u)) {
            lists_changed(&stream.out, &stream.keep, upstream);
        }
        known = now;
    }
}

/// Whether `to` is `from`, or replaced it (through any number of replacements).
fn leads_to(from: &Arc<Upstream>, to: &Arc<Upstream>) -> bool {
    let mut at = Arc::clone(from);
    loop {
        if Arc::ptr_eq(&at, to) {
            return true;
        }
        match at.successor() {
            Some(next) => at = next,
            None => return false,
        }
    }
}

/// Tells an aggregate stream's client that its lists may have changed because of
/// `upstream`, as far as the stream asked for such news.
fn lists_changed(out: &client_stream::Sender, keep: &Filter, upstream: &Upstream) {
    for method in LISTS {
        let notification = json!({ "jsonrpc": "2.0", "method": method });
        if let Some(message) = keep(&notification) {
            out.notify(&message, upstream.metrics.notifications_dropped());
        }
    }
}

fn method_of(v: &Value) -> &str {
    v.get("method").and_then(Value::as_str).unwrap_or_default()
}

/// GET on a 2025-era session: list changes, resource updates for subscribed URIs, and
/// log messages of the session's server(s). `served_at`: the address the GET reached this
/// replica at, which its event ids and relayed requests' ids name.
pub fn session_stream(
    gw: Arc<Gateway>,
    route: Route,
    claims: Arc<SessionClaims>,
    admitted: Admitted,
    served_at: Option<SocketAddr>,
) -> Response {
    let server = route.server().unwrap_or("*");
    let kind = StreamKind::Get;
    let mark = gw.owner_marks.mark(served_at);
    let (out, stream) =
        gw.resumable
            .channel(server, "GET", &claims, kind, Some(KEEP_ALIVE), mark.clone());
    let sid = claims.sid.clone();
    let filter_gw = Arc::clone(&gw);
    let keep: Filter = Arc::new(move |event| {
        if method_of(event) == "notifications/resources/updated" {
            let uri = event.pointer("/params/uri").and_then(Value::as_str)?;
            return filter_gw
                .resource_subscriptions
                .is_subscribed(&sid, uri)
                .then_some(Cow::Borrowed(event));
        }
        filter_gw
            .log_levels
            .wants(&sid, event)
            .then_some(Cow::Borrowed(event))
    });
    forward(
        &gw,
        &route,
        Arc::new(out),
        keep,
        Some(claims.clone()),
        admitted,
        mark,
    );
    take_shared_subscriptions(gw, claims);
    stream.into_response(Some(KEEP_ALIVE))
}

/// Subscribes this replica's upstreams to what the session subscribed to on other
/// replicas (with Redis): their updates come on this GET stream.
fn take_shared_subscriptions(gw: Arc<Gateway>, claims: Arc<SessionClaims>) {
    tokio::spawn(async move {
        let holder = resource_subscriptions::Holder::Session(claims.sid.clone());
        let expiry = Some(gw.session_expiry(&claims));
        for (key, uri) in gw.session_feed.subscriptions_of(&claims.sid).await {
            let Some(upstream) = gw.upstreams.get(&key) else {
                continue;
            };
            let subscriptions = &gw.resource_subscriptions;
            subscriptions
                .take(&upstream, holder.clone(), expiry, &uri, &gw.shutdown)
                .await;
        }
    });
}

/// A GET naming the last event a client got (`Last-Event-ID`): the stream it lost
/// continues with what it missed, whichever connection held it. A GET stream that cannot be
/// resumed (its window passed, or the gateway process that held it is gone) is opened anew, what
/// it carried meanwhile lost: refusing it would leave the client with none, as the SDKs
/// give up after a few refusals.
pub fn resume(
    gw: Arc<Gateway>,
    route: Route,
    claims: Arc<SessionClaims>,
    admitted: Admitted,
    last_event_id: &str,
    served_at: Option<SocketAddr>,
) -> Response {
    let refused = match gw.resumable.resume(&claims.sid, last_event_id) {
        Ok(stream) => {
            resumption::counted("resumed");
            tracing::info!(session = %claims.sid, last_event_id, "client resumed its stream");
            // A resumed stream keeps the keep-alive it was made with (a GET's, or none).
            return stream.into_response(None);
        }
        Err(Refused::Unknown(StreamKind::Get)) => {
            resumption::counted("restarted");
            tracing::info!(session = %claims.sid, last_event_id, "client's GET stream could not be resumed: a new one is opened, what the old one missed is lost");
            return session_stream(gw, route, claims, admitted, served_at);
        }
        Err(refused) => refused,
    };
    resumption::counted("refused");
    let why = match refused {
        Refused::Malformed => "it is not an event id this gateway gave",
        Refused::Unknown(_) => {
            "no stream of this session has it: the stream ended, was not resumed in time, or the gateway replica holding it is gone"
        }
    };
    let message = format!("Bad Request: cannot resume from Last-Event-ID: {why}");
    rpc_error(
        StatusCode::BAD_REQUEST,
        &Value::Null,
        jsonrpc::INVALID_REQUEST,
        &message,
        None,
    )
}

/// 2026-07-28 `subscriptions/listen`: acknowledge what is honored, then deliver the
/// chosen change notifications tagged with the subscription id.
pub async fn listen(
    gw: Arc<Gateway>,
    ctx: Ctx,
    id: Value,
    body: Map<String, Value>,
    listener: Listener,
) -> Response {
    let requested = jsonrpc::params(&body)
        .and_then(|p| p.get("notifications"))
        .cloned()
        .unwrap_or(json!({}));
    let invalid = |message| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            &id,
            jsonrpc::INVALID_PARAMS,
            message,
            None,
        )
    };
    if !requested.is_object() {
        return invalid("params.notifications must be an object");
    }
    // Task status notifications belong to the Tasks extension.
    let task_ids = match requested.get("taskIds") {
        None => &[][..],
        Some(_) if !ctx.caps.tasks => {
            let why = "task status notifications are its own";
            return relay::finish(&ctx, task_extension::missing_extension(&id, why));
        }
        Some(Value::Array(ids)) if ids.len() <= task_notifications::MAX_NAMED => ids.as_slice(),
        Some(Value::Array(_)) => {
            return invalid(&format!(
                "params.notifications.taskIds names more than {} tasks",
                task_notifications::MAX_NAMED
            ));
        }
        Some(_) => return invalid("params.notifications.taskIds must be an array of task ids"),
    };
    let watched = task_notifications::watchable(&gw, &ctx, task_ids);
    let flag = |k: &str| requested.get(k).and_then(Value::as_bool).unwrap_or(false);
    let upstreams = gw.upstreams_for(&ctx.route, ctx.principal.access.as_deref());
    let any_capability = |cap: &str, sub: &str| {
        ctx.route == Route::Aggregate
            || upstreams.iter().any(|u| match u.state() {
                State::Up(c) => c.init().is_some_and(|i| {
                    i.capabilities()
                        .pointer(&format!("/{cap}/{sub}"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                }),
                _ => false,
            })
    };
    let tools = flag("toolsListChanged") && any_capability("tools", "listChanged");
    let prompts = flag("promptsListChanged") && any_capability("prompts", "listChanged");
    let resources = flag("resourcesListChanged") && any_capability("resources", "listChanged");
    let wanted_uris = match requested.get("resourceSubscriptions") {
        None => &[][..],
        Some(Value::Array(uris)) if uris.len() <= resource_subscriptions::MAX_PER_HOLDER => {
            uris.as_slice()
        }
        Some(Value::Array(_)) => {
            return invalid(&format!(
                "params.notifications.resourceSubscriptions names more than {} resources",
                resource_subscriptions::MAX_PER_HOLDER
            ));
        }
        Some(_) => {
            return invalid("params.notifications.resourceSubscriptions must be an array of URIs");
        }
    };
    // Ask the upstream(s) to send updates for the URIs; keep those that were accepted,
    // held by this stream until its client leaves.
    let holder = gw.resource_subscriptions.listen_holder();
    let mut honored_uris = Vec::new();
    for uri in wanted_uris.iter().filter_map(Value::as_str) {
        for upstream in &upstreams {
            let subscribable = upstream.connection(Duration::ZERO).await.is_ok_and(|conn| {
                conn.init().is_some_and(|i| {
                    i.capabilities()
                        .pointer("/resources/subscribe")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                })
            });
            let subscriptions = &gw.resource_subscriptions;
            if subscribable
                && subscriptions
                    .take(upstream, holder.clone(), None, uri, &gw.shutdown)
                    .await
            {
                honored_uris.push(uri.to_string());
                break;
            }
        }
    }
    let mut honored = Map::new();
    for (key, on) in [
        ("toolsListChanged", tools),
        ("promptsListChanged", prompts),
        ("resourcesListChanged", resources),
    ] {
        if on {
            honored.insert(key.into(), json!(true));
        }
    }
    if !honored_uris.is_empty() {
        honored.insert("resourceSubscriptions".into(), json!(honored_uris));
    }
    if !watched.is_empty() {
        let ids: Vec<&str> = watched.iter().map(Watched::id).collect();
        honored.insert("taskIds".into(), json!(ids));
    }
    let ack = jsonrpc::notification(
        "notifications/subscriptions/acknowledged",
        json!({ "_meta": { era::META_SUBSCRIPTION_ID: id }, "notifications": honored }),
    );
    let (out, stream) =
        client_stream::channel(ctx.route.server().unwrap_or("*"), "subscriptions/listen");
    out.send(&ack);
    let out = Arc::new(out);
    if !honored_uris.is_empty() {
        let (out, subscriptions) = (Arc::clone(&out), Arc::clone(&gw.resource_subscriptions));
        tokio::spawn(async move {
            out.gone().await;
            subscriptions.release_all(&holder);
        });
    }
    for task in watched {
        task_notifications::watch(&gw, &ctx, &listener, &id, task, &out);
    }
    let uris: HashSet<String> = honored_uris.into_iter().collect();
    let keep: Filter = Arc::new(move |event| {
        let wanted = match method_of(event) {
            "notifications/tools/list_changed" => tools,
            "notifications/prompts/list_changed" => prompts,
            "notifications/resources/list_changed" => resources,
            "notifications/resources/updated" => event
                .pointer("/params/uri")
                .and_then(Value::as_str)
                .is_some_and(|u| uris.contains(u)),
            _ => false,
        };
        if !wanted {
            return None;
        }
        let mut out = event.clone();
        if !out.get("params").is_some_and(Value::is_object) {
            out["params"] = json!({});
        }
        let params = out["params"].as_object_mut().expect("object");
        let meta = params.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(era::META_SUBSCRIPTION_ID.into(), id.clone());
        }
        Some(Cow::Owned(out))
    });
    // 2026-07-28 forbids server requests on streams; they use MRTR instead.
    forward(
        &gw,
        &ctx.route,
        out,
        keep,
        None,
        Admitted::new(listener.headers, &ctx.principal),
        None,
    );
    stream.into_response(Some(KEEP_ALIVE))
}
