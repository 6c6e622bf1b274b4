//! The MCP data plane: `/mcp` (every server, aggregated) and `/mcp/{server}` (one server,
//! passed through), speaking the session-based and the stateless protocol eras.
//! See `README.md` beside this file for the protocol decisions.

pub mod aggregate;
pub mod audited;
pub mod auth;
pub mod catalog;
pub mod client_stream;
pub mod era;
pub mod host_policy;
pub mod http;
pub mod jsonrpc;
pub mod limits;
pub mod log_levels;
pub mod mrtr;
pub mod param_headers;
pub mod per_caller;
pub mod policy;
pub mod raw_response;
pub mod registry;
pub mod relay;
pub mod replica_forward;
pub mod resource_subscriptions;
pub mod rest;
pub mod result_cache;
pub mod resumption;
pub mod server_requests;
pub mod session;
pub mod session_feed;
pub mod sse_frames;
pub mod streams;
pub mod task_extension;
pub mod task_notifications;
pub mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::upstream::{Upstream, Upstreams};
use auth::Authenticator;
use host_policy::HostPolicy;
use session::{SessionClaims, SessionCodec};

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Which endpoint a request came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Aggregate,
    Server(String),
}

impl Route {
    pub fn server(&self) -> Option<&str> {
        match self {
            Route::Aggregate => None,
            Route::Server(s) => Some(s),
        }
    }
}

pub struct Gateway {
    pub config: Arc<Config>,
    pub upstreams: Upstreams,
    pub sessions: SessionCodec,
    pub auth: Arc<dyn Authenticator>,
    pub hosts: HostPolicy,
    /// Server-to-client requests relayed to a client and not answered yet.
    pub server_requests: server_requests::Pending,
    /// Calls in flight, by (session, client request id), so `notifications/cancelled`
    /// from a client reaches the right call.
    pub in_flight: Mutex<HashMap<(String, String), CancellationToken>>,
    /// Sessions ended with DELETE, here or (with Redis) on any replica; cancellations
    /// for calls on other replicas.
    pub session_feed: Arc<session_feed::SessionFeed>,
    /// Session streams a client may resume after losing its connection.
    pub resumable: Arc<resumption::ResumableStreams>,
    /// Marks naming this replica in the ids of what it holds, for the others to carry
    /// requests naming them here.
    pub owner_marks: replica_forward::OwnerMarks,
    /// Whose each task is, for the server requests made for it.
    pub task_owners: tasks::TaskOwners,
    /// Questions of tasks waiting for a 2026-07-28 client's input.
    pub task_questions: task_extension::Questions,
    /// The tasks each caller's listen streams watch.
    pub task_watches: Arc<per_caller::PerCaller>,
    /// Calls waiting for a 2026-07-28 client's input (MRTR), by parking token.
    pub parked: Mutex<HashMap<String, mrtr::Parked>>,
    /// Resource subscriptions on the upstreams, and the sessions and listen streams
    /// holding each: what `notifications/resources/updated` each stream gets.
    pub resource_subscriptions: Arc<resource_subscriptions::ResourceSubscriptions>,
    /// The level each session asked for with `logging/setLevel`.
    pub log_levels: Arc<log_levels::SessionLevels>,
    pub shutdown: CancellationToken,
    /// `gantry bridge`: `/mcp` is this one server's pass-through, not the aggregate.
    pub pinned: Option<String>,
    /// Where audit events go; `None` when auditing is off.
    pub audit: Option<crate::audit::AuditQueue>,
    /// Rate limits and concurrency caps from callers' policies.
    pub limits: limits::Limits,
    /// Tool results servers opted in to caching.
    pub results: result_cache::ResultCache,
    /// Signalled by the in-process API when the server registry changed.
    pub registry_changed: tokio::sync::Notify,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        upstreams: Upstreams,
        sessions: SessionCodec,
        auth: Arc<dyn Authenticator>,
        hosts: HostPolicy,
    ) -> Self {
        let resume_window = Duration::from_secs(config.server.stream_resume_secs);
        Self {
            config,
            upstreams,
            owner_marks: replica_forward::OwnerMarks::new(sessions.clone()),
            sessions,
            auth,
            hosts,
            server_requests: server_requests::Pending::default(),
            in_flight: Mutex::new(HashMap::new()),
            session_feed: Arc::new(session_feed::SessionFeed::local()),
            resumable: Arc::new(resumption::ResumableStreams::new(resume_window)),
            task_owners: tasks::TaskOwners::default(),
            task_questions: task_extension::Questions::default(),
            task_watches: per_caller::PerCaller::new(task_notifications::MAX_WATCHED_PER_CALLER),
            parked: Mutex::new(HashMap::new()),
            resource_subscriptions: Arc::default(),
            log_levels: Arc::default(),
            shutdown: CancellationToken::new(),
            pinned: None,
            audit: None,
            limits: limits::Limits::new(None, ""),
            registry_changed: tokio::sync::Notify::new(),
            results: result_cache::ResultCache::default(),
        }
    }

    /// The upstreams a caller may see, in name order: the configured ones and its
    /// tenant's registered ones, less those its policy denies.
    pub fn visible(&self, access: Option<&crate::policy::Access>) -> Vec<Arc<Upstream>> {
        let tenant = access.map(|a| a.tenant_id.as_str());
        self.upstreams
            .visible_to(tenant)
            .into_iter()
            .filter(|u| access.is_none_or(|a| a.allows_server(&u.name)))
            .collect()
    }

    /// The server a caller means by `name`: its tenant's own, else a configured one;
    /// `None` when there is none or the policy denies it.
    pub fn find(
        &self,
        access: Option<&crate::policy::Access>,
        name: &str,
    ) -> Option<Arc<Upstream>> {
        if access.is_some_and(|a| !a.allows_server(name)) {
            return None;
        }
        access
            .and_then(|a| {
                self.upstreams
                    .get(&crate::upstream::scoped_key(&a.tenant_id, name))
            })
            .or_else(|| self.upstreams.get(name).filter(|u| u.tenant.is_none()))
    }

    /// The upstreams a route reaches for a caller: one server, or all it may see.
    pub fn upstreams_for(
        &self,
        route: &Route,
        access: Option<&crate::policy::Access>,
    ) -> Vec<Arc<Upstream>> {
        match route {
            Route::Server(name) => self.find(access, name).into_iter().collect(),
            Route::Aggregate => self.visible(access),
        }
    }

    /// Unix seconds after which a session is no longer valid.
    pub fn session_expiry(&self, claims: &SessionClaims) -> u64 {
        claims.iat.saturating_add(self.config.auth.session_ttl_secs)
    }

    /// Whether a session is still usable: not expired, not ended with DELETE.
    /// `iat` has whole seconds, so `>=` guarantees at least the configured lifetime.
    pub fn session_alive(&self, claims: &SessionClaims) -> bool {
        self.session_expiry(claims) >= unix_now() && !self.session_feed.contains(&claims.sid)
    }

    /// Ends a session, on every replica when they share Redis.
    pub async fn end_session(&self, claims: &SessionClaims) {
        self.forget_session(&claims.sid);
        self.session_feed
            .end(&claims.sid, self.session_expiry(claims))
            .await;
    }

    /// Lets go of what this replica holds for an ended session: its streams close, which
    /// cancels their calls, and its resource subscriptions go.
    fn forget_session(&self, sid: &str) {
        self.resource_subscriptions
            .release_all(&resource_subscriptions::Holder::Session(sid.to_string()));
        self.log_levels.forget(sid);
        self.resumable.end_session(sid);
    }

    /// Cancels the call a session's client made as `request_id` (JSON text), if it runs
    /// here; whether it did.
    pub fn cancel_call(&self, sid: &str, request_id: &str) -> bool {
        let key = (sid.to_string(), request_id.to_string());
        let token = self.in_flight.lock().unwrap().remove(&key);
        token.inspect(CancellationToken::cancel).is_some()
    }

    /// What another replica said of a session (`session_feed`).
    pub fn heard(&self, heard: session_feed::Heard<'_>) {
        match heard {
            session_feed::Heard::Ended(sid) => self.forget_session(sid),
            session_feed::Heard::Cancelled { sid, request_id } => {
                if self.cancel_call(sid, request_id) {
                    tracing::debug!(session = %sid, request_id, "a call cancelled on another replica ended here");
                }
            }
            session_feed::Heard::Subscription {
                sid,
                taken,
                key,
                uri,
                expiry,
            } => resource_subscriptions::heard(self, sid, taken, key, uri, expiry),
        }
    }
}
