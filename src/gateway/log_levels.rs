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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

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
    let level = jsonrpc::params(body)
        .and_then(|p| p.get("level"))
        .and_then(Value::as_str);
    level.and_then(severity).ok_or_else(|| {
        format!(
            "Invalid params: params.level must be one of {}",
            LEVELS.join(", ")
        )
    })
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
    if !conn
        .init()
        .is_some_and(|init| init.has_capability("logging"))
    {
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

/// A call's log messages for its session's client, at the level the session set.
pub struct LogFilter {
    levels: Arc<SessionLevels>,
    session: Arc<SessionClaims>,
}

impl LogFilter {
    pub fn of(gw: &Gateway, ctx: &Ctx) -> Option<Self> {
        ctx.session.as_ref().map(|session| Self {
            levels: Arc::clone(&gw.log_levels),
            session: Arc::clone(session),
        })
    }

    pub fn wants(&self, message: &Value) -> bool {
        self.levels.wants(&self.session.sid, message)
    }
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
        if message.get("method").and_then(Value::as_str) != Some("notifications/message") {
            return true;
        }
        let Some(severity) = message
            .pointer("/params/level")
            .and_then(Value::as_str)
            .and_then(severity)
        else {
            return true; // Not a level of the spec's: the client's to judge.
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
