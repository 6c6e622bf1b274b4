//! `logging/setLevel` belongs to one client session, but the upstream session behind it is
//! shared by every client of the server. Passed on as it came, one client's `error` would
//! silence the `debug` another asked for, and one client's `debug` would fill every other
//! client's streams with debug messages.
//!
//! So gantry keeps each session's level here and gives its client only log messages at or
//! above it (on its calls' streams and its GET stream), and asks a server for a level only
//! when it is more verbose than any asked of it before: it never makes a server quieter
//! than some session wants it. A server that reconnects (a restart) has forgotten its
//! level: the supervisor asks it again. A session that set no level gets what the server
//! sends. The levels are this process's: a session continued on another replica gets
//! what the server sends there until it sets its level again.
//!
//! 2026-07-28 has no `logging/setLevel`: each request names the level of the log messages
//! it brings in its `_meta`, and one that names none gets none. Its level is asked of the
//! server by the same never-quieter rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use super::era::{Era, META_LOG_LEVEL};
use super::http::Ctx;
use super::session::SessionClaims;
use super::{Gateway, jsonrpc, unix_now};
use crate::upstream::{Connection, Upstream};

/// The levels of RFC 5424 as MCP names them, least severe first.
const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Sessions whose level is kept, at most; past it the expired ones are dropped first.
const MAX_SESSIONS: usize = 100_000;

fn severity(level: &str) -> Option<u8> {
    LEVELS.iter().position(|l| *l == level).map(|i| i as u8)
}

/// A `logging/setLevel` request asking for `severity`.
pub fn set_level_request(severity: u8) -> Map<String, Value> {
    let level = LEVELS[usize::from(severity).min(LEVELS.len() - 1)];
    jsonrpc::request("logging/setLevel", json!({ "level": level }))
}

/// The severity a `logging/setLevel` asks for, or the error for its client.
pub fn requested(body: &Map<String, Value>) -> Result<u8, String> {
    let level = jsonrpc::params(body).and_then(|p| p.get("level"));
    level
        .and_then(Value::as_str)
        .and_then(severity)
        .ok_or_else(|| invalid("params.level"))
}

/// The severity a 2026-07-28 request asks its log messages at (`_meta` logLevel), `None`
/// when it asks for none; or the error for its client.
pub fn of_request(body: &Map<String, Value>) -> Result<Option<u8>, String> {
    let meta = jsonrpc::params(body).and_then(|p| p.get("_meta"));
    match meta.and_then(|m| m.get(META_LOG_LEVEL)) {
        None => Ok(None),
        Some(level) => level
            .as_str()
            .and_then(severity)
            .map(Some)
            .ok_or_else(|| invalid(&format!("_meta {META_LOG_LEVEL}"))),
    }
}

fn invalid(field: &str) -> String {
    format!(
        "Invalid params: {field} must be one of {}",
        LEVELS.join(", ")
    )
}

/// Keeps the level a session's client asked for (a stateless request has none to keep).
pub fn record(gw: &Gateway, ctx: &Ctx, severity: u8) {
    if let Some(claims) = &ctx.session {
        gw.log_levels
            .set(&claims.sid, severity, gw.session_expiry(claims));
    }
}

/// What gantry makes of a `logging/setLevel` to one server: `None` to pass it on, else
/// its own answer and the call's outcome (`held_by_others`: the server already sends at
/// least that much).
pub fn asked(
    gw: &Gateway,
    ctx: &Ctx,
    upstream: &Upstream,
    conn: &Connection,
    id: &Value,
    body: &Map<String, Value>,
) -> Option<(Value, &'static str)> {
    if !offers_logging(conn) {
        return None; // The server's to refuse.
    }
    let severity = match requested(body) {
        Ok(severity) => severity,
        Err(message) => {
            let error = jsonrpc::error_response(id, jsonrpc::INVALID_PARAMS, &message, None);
            return Some((error, "error"));
        }
    };
    record(gw, ctx, severity);
    (!upstream.log_level.lower_to(severity))
        .then(|| (jsonrpc::result_response(id, json!({})), "held_by_others"))
}

/// Whether `conn`'s server takes `logging/setLevel` at all.
pub fn offers_logging(conn: &Connection) -> bool {
    conn.init()
        .is_some_and(|init| init.has_capability("logging"))
}

/// Whether a server must be asked for log messages down to `severity`: it offers logging
/// and nobody asked it for as many before (a server is never made quieter than some
/// client wants it). Recorded as asked.
pub fn must_ask(upstream: &Upstream, conn: &Connection, severity: u8) -> bool {
    offers_logging(conn) && upstream.log_level.lower_to(severity)
}

/// Asks `conn`'s server for log messages down to `severity`. Outside its concurrency cap:
/// a call asks holding its slot already (a second would wait on its own under a cap of
/// one), and a reconnected server is asked before it serves the calls waiting with theirs.
pub async fn tell(upstream: &Upstream, conn: &Arc<Connection>, severity: u8) {
    let wait = upstream.timeout().min(std::time::Duration::from_secs(5));
    let request = set_level_request(severity);
    if let Err(e) = upstream.request_holding_slot(conn, request, wait).await {
        tracing::warn!(upstream = %upstream.name, tenant = upstream.tenant.as_deref(), error = %e, "the server could not be asked for the log level its clients want");
    }
}

/// Which of a call's log messages its client gets.
pub enum LogFilter {
    /// A session's: those at or above the level the session set, all if it set none.
    Session {
        levels: Arc<SessionLevels>,
        session: Arc<SessionClaims>,
    },
    /// A 2026-07-28 request's: those at or above the level in its `_meta`, none if it
    /// named none.
    Request(Option<u8>),
}

impl LogFilter {
    pub fn of(gw: &Gateway, ctx: &Ctx) -> Option<Self> {
        match (&ctx.era, &ctx.session) {
            (Era::Modern, _) => Some(Self::Request(ctx.log_level)),
            (Era::Legacy, Some(session)) => Some(Self::Session {
                levels: Arc::clone(&gw.log_levels),
                session: Arc::clone(session),
            }),
            (Era::Legacy, None) => None,
        }
    }

    pub fn wants(&self, message: &Value) -> bool {
        let Some(level) = log_level_of(message) else {
            return true; // Only log messages are filtered.
        };
        match self {
            Self::Session { levels, session } => levels.admits(&session.sid, level),
            Self::Request(None) => false,
            // A level not of the spec's is the client's to judge.
            Self::Request(Some(floor)) => severity(level).is_none_or(|s| s >= *floor),
        }
    }
}

/// A log message's level (`""` when it names none); `None` for any other message.
fn log_level_of(message: &Value) -> Option<&str> {
    if message.get("method").and_then(Value::as_str) != Some("notifications/message") {
        return None;
    }
    Some(
        message
            .pointer("/params/level")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

/// The most verbose level asked of one server (`u8::MAX`: none yet).
#[derive(Debug)]
pub struct ServerLevel(AtomicU8);

impl Default for ServerLevel {
    fn default() -> Self {
        Self(AtomicU8::new(u8::MAX))
    }
}

impl ServerLevel {
    /// Records that `severity` is wanted; true when it is more verbose than any asked
    /// before, so the server must be told.
    pub fn lower_to(&self, severity: u8) -> bool {
        self.0.fetch_min(severity, Ordering::AcqRel) > severity
    }

    /// The level to ask a new connection of the server for, if any was asked.
    pub fn asked(&self) -> Option<u8> {
        let severity = self.0.load(Ordering::Acquire);
        (severity != u8::MAX).then_some(severity)
    }
}

/// Each session's level: the severity below which its client gets no log message.
#[derive(Default)]
pub struct SessionLevels {
    by_session: Mutex<HashMap<String, (u8, u64)>>,
}

impl SessionLevels {
    /// Keeps `sid`'s level until `expiry` (the session's, Unix seconds).
    pub fn set(&self, sid: &str, severity: u8, expiry: u64) {
        let mut levels = self.by_session.lock().expect("levels lock");
        if levels.len() >= MAX_SESSIONS && !levels.contains_key(sid) {
            let now = unix_now();
            levels.retain(|_, (_, until)| *until >= now);
            if levels.len() >= MAX_SESSIONS {
                return; // Every one is live: this session gets what the server sends.
            }
        }
        levels.insert(sid.to_string(), (severity, expiry));
    }

    pub fn forget(&self, sid: &str) {
        self.by_session.lock().expect("levels lock").remove(sid);
    }

    /// Whether `sid`'s client is to get `message`: anything but a log message below the
    /// level it set.
    pub fn wants(&self, sid: &str, message: &Value) -> bool {
        log_level_of(message).is_none_or(|level| self.admits(sid, level))
    }

    /// Whether a log message at `level` is at or above `sid`'s level. A level not of the
    /// spec's is the client's to judge.
    fn admits(&self, sid: &str, level: &str) -> bool {
        let Some(severity) = severity(level) else {
            return true;
        };
        let levels = self.by_session.lock().expect("levels lock");
        levels.get(sid).is_none_or(|(floor, _)| severity >= *floor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn log(level: &str) -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": level, "data": "x"}})
    }

    #[test]
    fn a_session_gets_only_messages_at_or_above_its_level() {
        let levels = SessionLevels::default();
        levels.set("a", severity("warning").unwrap(), u64::MAX);
        assert!(!levels.wants("a", &log("debug")));
        assert!(!levels.wants("a", &log("info")));
        assert!(levels.wants("a", &log("warning")));
        assert!(levels.wants("a", &log("emergency")));
        assert!(
            levels.wants("b", &log("debug")),
            "a session that set none gets all"
        );
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}});
        assert!(
            levels.wants("a", &progress),
            "only log messages are filtered"
        );
        assert!(
            levels.wants("a", &log("chatty")),
            "an unknown level is passed on"
        );
        levels.forget("a");
        assert!(levels.wants("a", &log("debug")));
    }

    #[test]
    fn a_2026_07_28_request_gets_log_messages_only_at_the_level_it_named() {
        let silent = LogFilter::Request(None);
        let warning = LogFilter::Request(severity("warning"));
        for level in ["debug", "warning", "emergency", "chatty"] {
            assert!(!silent.wants(&log(level)), "none without a level: {level}");
        }
        assert!(!silent.wants(&json!({"method": "notifications/message", "params": {}})));
        assert!(!warning.wants(&log("info")));
        assert!(warning.wants(&log("warning")));
        assert!(warning.wants(&log("critical")));
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}});
        assert!(silent.wants(&progress), "only log messages are filtered");
    }

    #[test]
    fn a_request_names_its_level_in_meta() {
        let body = |meta: Value| {
            json!({"params": {"_meta": meta}})
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(of_request(&body(json!({}))), Ok(None));
        assert_eq!(of_request(&Map::new()), Ok(None));
        assert_eq!(
            of_request(&body(json!({ META_LOG_LEVEL: "error" }))),
            Ok(severity("error"))
        );
        for bad in [json!("loud"), json!(4), json!(null)] {
            let err = of_request(&body(json!({ META_LOG_LEVEL: bad }))).unwrap_err();
            assert!(
                err.contains(META_LOG_LEVEL) && err.contains("debug, info"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_server_is_only_ever_asked_for_more_verbose_levels() {
        let level = ServerLevel::default();
        assert_eq!(level.asked(), None);
        assert!(level.lower_to(severity("error").unwrap()));
        assert!(!level.lower_to(severity("error").unwrap()), "asked already");
        assert!(
            !level.lower_to(severity("emergency").unwrap()),
            "quieter: not asked"
        );
        assert!(level.lower_to(severity("debug").unwrap()));
        assert_eq!(level.asked(), severity("debug"));
        assert_eq!(set_level_request(0)["params"], json!({ "level": "debug" }));
    }

    #[test]
    fn only_the_specs_levels_are_accepted() {
        let body = |level: Value| {
            json!({"params": {"level": level}})
                .as_object()
                .unwrap()
                .clone()
        };
        assert_eq!(requested(&body(json!("notice"))), Ok(2));
        for bad in [json!("verbose"), json!(3), json!(null)] {
            assert!(requested(&body(bad)).unwrap_err().contains("debug, info"));
        }
    }
}
