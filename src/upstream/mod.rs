//! Upstream MCP servers: one supervised connection each, whatever the transport.

pub mod connection;
pub mod egress;
pub mod http_client;
pub mod listing;
pub mod message_limit;
pub mod oauth;
pub mod sse;
pub mod sse_resume;
pub mod stdio;
pub mod streamable_http;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TransportKind, UpstreamConfig};
use crate::gateway::jsonrpc;
pub use connection::{Call, CallEvent, Connection, NoAnswer};
pub use listing::ListKind;

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SHUTTING_DOWN: &str = "gateway shutting down";

#[derive(Clone)]
pub enum State {
    Starting,
    Up(Arc<Connection>),
    Down(Down),
}

/// Why an upstream is down, and whether it is worth waiting for.
#[derive(Clone, Debug)]
pub struct Down {
    pub reason: String,
    /// Attempts that failed in a row, counting the loss of a working connection as one.
    pub failures: u32,
    /// When the supervisor tries again; `None` once it has stopped for good.
    pub next_attempt: Option<Instant>,
}

impl Down {
    fn stopped(reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
            failures: 0,
            next_attempt: None,
        }
    }

    fn retrying(reason: String, failures: u32, delay: Duration) -> Self {
        Self {
            reason,
            failures,
            next_attempt: Some(Instant::now() + delay),
        }
    }

    /// A server that failed again after being restarted: waiting for its next attempt
    /// would most likely end in the same failure, after the caller's whole timeout.
    fn is_crash_looping(&self) -> bool {
        self.failures >= 2
    }

    fn describe(&self) -> String {
        match self.next_attempt {
            Some(at) => format!(
                "{} ({} failed attempts in a row; next attempt in {} s)",
                self.reason,
                self.failures,
                at.saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil()
            ),
            None => self.reason.clone(),
        }
    }
}

impl State {
    pub fn label(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Up(_) => "up",
            State::Down(_) => "down",
        }
    }
}

/// See `Upstream::next`.
pub enum Next {
    Connected(Arc<Connection>),
    /// The registry replaced it (new settings or version) by this instance.
    Replaced(Arc<Upstream>),
    /// The registry removed it, or the gateway stops.
    Ended,
}

/// Why an upstream could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream '{0}' is unavailable: {1}")]
    Unavailable(String, String),
    #[error("upstream '{0}' timed out after {1} ms")]
    Timeout(String, u128),
    #[error("upstream '{0}' returned an error: {1}")]
    Rejected(String, String),
    #[error(
        "upstream '{0}' is failing: circuit open after {1} consecutive failures; next attempt in {2} s"
    )]
    CircuitOpen(String, u32, u64),
    #[error("upstream '{0}' sent an answer gantry will not use: {1}")]
    Invalid(String, String),
}

/// Consecutive failures, and until when calls fail fast.
#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// After the cooldown one call is let through; the others keep failing fast until
    /// its outcome decides.
    trial_out: bool,
}

/// Whether an admitted call is the breaker's trial after a cooldown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    pub trial: bool,
}

pub struct Upstream {
    pub name: String,
    /// The tenant that registered it; `None` for servers of the configuration file.
    pub tenant: Option<String>,
    /// The registry's version of its settings (0 for configured servers).
    pub version: i64,
    pub config: UpstreamConfig,
    /// Where it may connect: restricted for registered servers, `None` for configured ones.
    egress: Option<egress::Egress>,
    state: watch::Sender<State>,
    attempted: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    restarts: AtomicU64,
    catalog: listing::Catalog,
    breaker: Mutex<Breaker>,
    stop: CancellationToken,
    /// The instance the registry started in its place (new settings or version), set
    /// before this one stops: what follows it (a client's stream, its subscriptions) moves on.
    successor: OnceLock<Arc<Upstream>>,
    pub metrics: crate::telemetry::mcp_metrics::CallMetrics,
    /// The most verbose `logging/setLevel` asked of the server (`gateway::log_levels`).
    pub log_level: crate::gateway::log_levels::ServerLevel,
}

impl Upstream {
    /// Its key among every upstream: the name, under its tenant for a registered server
    /// (two tenants may each have a server of one name).
    pub fn key(&self) -> String {
        match &self.tenant {
            Some(tenant) => scoped_key(tenant, &self.name),
            None => self.name.clone(),
        }
    }

    fn new(
        name: String,
        tenant: Option<String>,
        config: UpstreamConfig,
        egress: Option<egress::Egress>,
        catalog_ttl: Duration,
        version: i64,
    ) -> Arc<Self> {
        Arc::new(Self {
            metrics: crate::telemetry::mcp_metrics::CallMetrics::new(&name, tenant.as_deref()),
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            name,
            tenant,
            version,
            config,
            egress,
            state: watch::Sender::new(State::Starting),
            attempted: watch::Sender::new(false),
            restarts: AtomicU64::new(0),
            catalog: listing::Catalog::new(catalog_ttl),
            breaker: Mutex::new(Breaker::default()),
            stop: CancellationToken::new(),
            successor: OnceLock::new(),
            log_level: Default::default(),
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Resolves once this upstream is stopped for good: with the instance the registry
    /// replaced it by, or `None` when the registry removed it or the gateway shuts down.
    pub async fn stopped(&self) -> Option<Arc<Upstream>> {
        self.stop.cancelled().await;
        self.successor()
    }

    /// The instance the registry replaced this one by, if it did.
    pub fn successor(&self) -> Option<Arc<Upstream>> {
        self.successor.get().cloned()
    }

    /// What comes next for whatever follows this upstream for good (a client's stream,
    /// its subscriptions): its next live connection, however long that takes; the
    /// instance the registry replaced it by; or its end.
    pub async fn next(&self) -> Next {
        loop {
            tokio::select! {
                conn = self.connection_eventually(Duration::from_secs(3600)) => {
                    if let Ok(conn) = conn {
                        return Next::Connected(conn);
                    }
                }
                successor = self.stopped() => return successor.map_or(Next::Ended, Next::Replaced),
            }
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.state.borrow(), State::Up(_))
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// What `/metrics` shows of it now (`telemetry::upstream_state`).
    pub fn metrics_state(&self) -> crate::telemetry::upstream_state::UpstreamState<'_> {
        crate::telemetry::upstream_state::UpstreamState {
            server: &self.name,
            tenant: self.tenant.as_deref(),
            up: self.is_up(),
            circuit_open: self.breaker.lock().unwrap().open_until.is_some(),
            restarts: self.restarts(),
        }
    }

    /// The live connection, waiting up to `wait` while the upstream is starting or
    /// restarting after losing its connection. A server that keeps failing to start is
    /// reported at once, with its last failure: the caller learns why now rather than
    /// after its whole timeout.
    pub async fn connection(&self, wait: Duration) -> Result<Arc<Connection>, UpstreamError> {
        self.connection_within(wait, true).await
    }

    /// The live connection, waiting up to `wait` whatever happens meanwhile: for what
    /// outlives failures, such as a client's stream of notifications.
    pub async fn connection_eventually(
        &self,
        wait: Duration,
    ) -> Result<Arc<Connection>, UpstreamError> {
        self.connection_within(wait, false).await
    }

    async fn connection_within(
        &self,
        wait: Duration,
        fail_fast: bool,
    ) -> Result<Arc<Connection>, UpstreamError> {
        let mut rx = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let last_error = match &*rx.borrow_and_update() {
                State::Up(conn) if !conn.closed().is_cancelled() => return Ok(Arc::clone(conn)),
                State::Up(conn) => conn.close_reason(),
                State::Starting => "starting".to_string(),
                State::Down(down) if fail_fast && down.is_crash_looping() => {
                    return Err(UpstreamError::Unavailable(
                        self.name.clone(),
                        down.describe(),
                    ));
                }
                State::Down(down) => down.describe(),
            };
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(UpstreamError::Unavailable(self.name.clone(), last_error)),
            }
        }
    }

    /// Refuses a call at once while the circuit is open; after the cooldown the next
    /// call goes through (half-open) and one more failure opens it again.
    pub fn admit(&self) -> Result<Admission, UpstreamError> {
        if self.config.circuit_breaker_failures == 0 {
            return Ok(Admission::default());
        }
        let mut breaker = self.breaker.lock().unwrap();
        let Some(until) = breaker.open_until else {
            return Ok(Admission::default());
        };
        let now = Instant::now();
        if now < until || breaker.trial_out {
            let wait = until.saturating_duration_since(now).as_secs_f64().ceil() as u64;
            return Err(UpstreamError::CircuitOpen(
                self.name.clone(),
                breaker.failures,
                wait,
            ));
        }
        breaker.trial_out = true;
        Ok(Admission { trial: true })
    }

    /// Feeds a call's outcome to the breaker: unavailable and timed-out calls are
    /// failures; any answer from the server, error or not, shows it is working. The
    /// trial's outcome closes the circuit or opens it for another cooldown; a trial that
    /// ends undecided (cancelled, say) lets the next call try.
    pub fn record_outcome(&self, outcome: &str, admission: Admission) {
        let threshold = self.config.circuit_breaker_failures;
        if threshold == 0 {
            return;
        }
        let mut breaker = self.breaker.lock().unwrap();
        match outcome {
            "ok" | "error" => {
                breaker.failures = 0;
                if admission.trial {
                    breaker.trial_out = false;
                    breaker.open_until = None;
                    tracing::info!(upstream = %self.name, tenant = self.tenant.as_deref(), "circuit closed: the trial call succeeded");
                }
            }
            "unavailable" | "timeout" => {
                breaker.failures = breaker.failures.saturating_add(1);
                let opens = (breaker.failures >= threshold && breaker.open_until.is_none())
                    || admission.trial;
                if opens {
                    breaker.trial_out = false;
                    let cooldown = Duration::from_secs(self.config.circuit_breaker_cooldown_secs);
                    breaker.open_until = Some(Instant::now() + cooldown);
                    tracing::warn!(upstream = %self.name, tenant = self.tenant.as_deref(), failures = breaker.failures, cooldown_secs = cooldown.as_secs(), "circuit open: calls fail fast until the cooldown ends");
                }
            }
            _ if admission.trial => breaker.trial_out = false,
            _ => {}
        }
    }

    /// A concurrency slot, waiting at most until `deadline`.
    pub async fn permit(&self, wait: Duration) -> Result<OwnedSemaphorePermit, UpstreamError> {
        match tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(UpstreamError::Timeout(self.name.clone(), wait.as_millis())),
        }
    }

    /// One complete list (every page), cached until the server says it changed.
    pub async fn list(
        &self,
        kind: ListKind,
        wait: Duration,
    ) -> Result<Arc<Vec<Value>>, UpstreamError> {
        if let Some(items) = self.catalog.get(kind, None) {
            return Ok(items);
        }
        // Read only when the list must be fetched, or waited for: not on a cache hit.
        let asked = Instant::now();
        let conn = self.connection(wait).await?;
        if !conn
            .init()
            .is_some_and(|i| i.has_capability(kind.capability()))
        {
            return Ok(Arc::new(Vec::new()));
        }
        let Some(_turn) = self.catalog.turn(kind, wait).await else {
            return Err(UpstreamError::Timeout(self.name.clone(), wait.as_millis()));
        };
        // The fetch this call waited for may have brought the list.
        if let Some(items) = self.catalog.get(kind, Some(asked)) {
            return Ok(items);
        }
        let generation = self.catalog.generation(kind);
        let mut pages = listing::Pages::new(kind, self.config.max_message_bytes);
        let mut cursor: Option<Value> = None;
        loop {
            let mut params = Map::new();
            if let Some(c) = cursor.take() {
                params.insert("cursor".into(), c);
            }
            let body = jsonrpc::request(kind.method(), Value::Object(params));
            let mut response = self.request(&conn, body, wait).await?;
            let result = response.get_mut("result").map_or(Value::Null, Value::take);
            match pages.take(result) {
                Ok(listing::Next::Page(next)) => cursor = Some(next),
                Ok(listing::Next::Done) => break,
                Err(why) => return Err(UpstreamError::Invalid(self.name.clone(), why)),
            }
        }
        let items = Arc::new(pages.into_items());
        self.catalog.put(kind, generation, &items);
        Ok(items)
    }

    /// A gateway-originated request (lists, fan-out), answered whole.
    pub async fn request(
        &self,
        conn: &Arc<Connection>,
        body: Map<String, Value>,
        wait: Duration,
    ) -> Result<Value, UpstreamError> {
        let _permit = self.permit(wait).await?;
        self.request_holding_slot(conn, body, wait).await
    }

    /// `request` outside the concurrency cap: on behalf of a call that holds a slot already
    /// (a second would wait on its own call's under a cap of one), or before a reconnected
    /// server serves the calls waiting for it with theirs.
    pub async fn request_holding_slot(
        &self,
        conn: &Arc<Connection>,
        body: Map<String, Value>,
        wait: Duration,
    ) -> Result<Value, UpstreamError> {
        let mut call = conn.start_call(body, wait);
        let outcome = match call.answer().await {
            Ok(response) => response,
            Err(NoAnswer::Failed(e)) => {
                return Err(UpstreamError::Unavailable(self.name.clone(), e));
            }
            Err(NoAnswer::TimedOut) => {
                return Err(UpstreamError::Timeout(self.name.clone(), wait.as_millis()));
            }
        };
        if let Some(error) = outcome.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string();
            return Err(UpstreamError::Rejected(self.name.clone(), message));
        }
        Ok(outcome)
    }

    fn invalidate(&self, notification: &Value) {
        let method = notification
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.catalog.changed(method);
    }

    /// A server that restarted has forgotten the log level its clients asked for: asked
    /// again before the connection serves anyone.
    async fn ask_log_level_again(&self, conn: &Arc<Connection>) {
        use crate::gateway::log_levels;
        if let Some(severity) = self.log_level.asked()
            && log_levels::offers_logging(conn)
        {
            log_levels::tell(self, conn, severity).await;
        }
    }

    /// Keeps the upstream connected: connect, initialize, watch, and after a failure
    /// restart with exponential backoff and jitter.
    async fn supervise(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            self.state.send_replace(State::Starting);
            let (reason, started) = match self.connect_once().await {
                Ok((conn, shutdown)) => {
                    failures = 0;
                    self.catalog.clear();
                    tracing::info!(upstream = %self.name, tenant = self.tenant.as_deref(), protocol = conn.init().map(|i| i.protocol_version.as_str()).unwrap_or("?"), "upstream connected");
                    self.ask_log_level_again(&conn).await;
                    self.state.send_replace(State::Up(Arc::clone(&conn)));
                    self.attempted.send_replace(true);
                    let mut events = conn.subscribe();
                    let pinger = self.spawn_pinger(&conn);
                    let stopped = loop {
                        tokio::select! {
                            _ = self.stop.cancelled() => break true,
                            _ = conn.closed().cancelled() => break false,
                            event = events.recv() => if let Ok(event) = event { self.invalidate(&event) },
                        }
                    };
                    if let Some(pinger) = pinger {
                        pinger.abort();
                    }
                    if stopped {
                        // Calls still waiting learn why, rather than the child's exit signal.
                        conn.close("the gateway is shutting down".into());
                    }
                    shutdown().await;
                    if stopped {
                        self.state
                            .send_replace(State::Down(Down::stopped(SHUTTING_DOWN)));
                        return;
                    }
                    let reason = conn.close_reason();
                    tracing::warn!(upstream = %self.name, tenant = self.tenant.as_deref(), %reason, "upstream went away; restarting");
                    self.restarts.fetch_add(1, Ordering::Relaxed);
                    (reason, true)
                }
                Err(reason) => (reason, false),
            };
            failures = failures.saturating_add(1);
            let delay = backoff(failures);
            if !started {
                tracing::warn!(upstream = %self.name, tenant = self.tenant.as_deref(), %reason, failures, retry_in_ms = delay.as_millis() as u64, "upstream failed to start");
            }
            self.state
                .send_replace(State::Down(Down::retrying(reason, failures, delay)));
            // A failed attempt counts as one too (a connection set it already).
            self.attempted.send_replace(true);
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.state.send_replace(State::Down(Down::stopped(SHUTTING_DOWN)));
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Pings the upstream while it is up; three unanswered pings in a row close the
    /// connection, and the supervisor restarts it. Pings bypass the concurrency cap so a
    /// busy upstream is not mistaken for a dead one.
    fn spawn_pinger(&self, conn: &Arc<Connection>) -> Option<tokio::task::JoinHandle<()>> {
        const MISSES_ALLOWED: u32 = 3;
        let interval = Duration::from_secs(self.config.ping_interval_secs);
        if interval.is_zero() {
            return None;
        }
        let wait = self.timeout().min(Duration::from_secs(10));
        let conn = Arc::clone(conn);
        let name = self.name.clone();
        let tenant = self.tenant.clone();
        Some(tokio::spawn(async move {
            let mut misses = 0;
            loop {
                tokio::time::sleep(interval).await;
                let mut call = conn.start_call(jsonrpc::request("ping", json!({})), wait);
                // Any answer, even an error, shows the server is alive.
                let answered = call.answer().await.is_ok();
                misses = if answered { 0 } else { misses + 1 };
                if misses >= MISSES_ALLOWED {
                    tracing::warn!(upstream = %name, tenant = tenant.as_deref(), "no answer to {MISSES_ALLOWED} pings in a row");
                    conn.close(format!("no answer to {MISSES_ALLOWED} pings in a row"));
                    return;
                }
            }
        }))
    }

    async fn connect_once(
        &self,
    ) -> Result<
        (
            Arc<Connection>,
            Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>,
        ),
        String,
    > {
        let (conn, inbox) = Connection::new(&self.name);
        let handle = match self.config.transport {
            TransportKind::Stdio => stdio::connect(&self.name, &self.config, inbox).await?,
            TransportKind::StreamableHttp => {
                streamable_http::connect(&self.name, &self.config, self.egress.as_ref(), inbox)
                    .await?
            }
            TransportKind::Sse => {
                sse::connect(&self.name, &self.config, self.egress.as_ref(), inbox).await?
            }
        };
        let transport::TransportHandle {
            outbox, shutdown, ..
        } = handle;
        conn.attach(outbox);
        let init = tokio::time::timeout(self.timeout(), conn.initialize("gantry")).await;
        match init {
            Ok(Ok(())) => Ok((conn, shutdown)),
            Ok(Err(e)) => {
                shutdown().await;
                Err(e)
            }
            Err(_) => {
                shutdown().await;
                Err(format!(
                    "no initialize answer within {} s",
                    self.config.timeout_secs
                ))
            }
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_START.saturating_mul(1u32 << failures.min(8).saturating_sub(1));
    let base = exp.min(BACKOFF_MAX);
    // Jitter spreads restarts of many gateways after a shared outage.
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Every running upstream, by key: its name for servers of the configuration file
/// (visible to every caller), `{tenant_id}/{name}` for servers a tenant registered through
/// the control plane (visible to that tenant only). The map is replaced, never mutated,
/// so a request works on a consistent snapshot while the registry changes it.
pub struct Upstreams {
    map: RwLock<Arc<BTreeMap<String, Arc<Upstream>>>>,
    catalog_ttl: Duration,
    /// The egress rule given to every registered server.
    egress: egress::Egress,
    /// Counts the registry's changes to the map: what follows the servers a caller sees
    /// looks again.
    changes: watch::Sender<u64>,
}

/// A server the control plane's registry wants running.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    pub tenant_id: String,
    pub name: String,
    pub config: UpstreamConfig,
    /// Bumped by every change and restart request, so an unchanged config can restart.
    pub version: i64,
}

impl Registered {
    pub fn key(&self) -> String {
        scoped_key(&self.tenant_id, &self.name)
    }
}

pub fn scoped_key(tenant_id: &str, name: &str) -> String {
    format!("{tenant_id}/{name}")
}

fn start_one(upstream: &Arc<Upstream>) {
    tokio::spawn(Arc::clone(upstream).supervise());
}

impl Upstreams {
    pub fn start(config: &Config) -> Self {
        let ttl = Duration::from_secs(config.gateway.catalog_ttl_secs);
        let map: BTreeMap<_, _> = config
            .upstreams
            .iter()
            .filter(|(_, u)| u.enabled)
            .map(|(name, u)| {
                (
                    name.clone(),
                    Upstream::new(name.clone(), None, u.clone(), None, ttl, 0),
                )
            })
            .collect();
        for upstream in map.values() {
            start_one(upstream);
        }
        Self {
            map: RwLock::new(Arc::new(map)),
            catalog_ttl: ttl,
            egress: egress::Egress::new(&config.registry.allowed_hosts),
            changes: watch::Sender::new(0),
        }
    }

    /// Tells of each change the registry makes to the servers (one started, stopped or
    /// replaced); subscribe before reading the servers, so that none is missed between.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Upstream>>> {
        Arc::clone(&self.map.read().expect("upstreams lock"))
    }

    /// The upstream under `key` (a configured name, or `{tenant}/{name}`).
    pub fn get(&self, key: &str) -> Option<Arc<Upstream>> {
        self.snapshot().get(key).cloned()
    }

    /// Every upstream, configured ones and every tenant's, in key order.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        self.snapshot().values().cloned().collect()
    }

    /// What a caller of `tenant` sees: the configured servers and its own, by name.
    pub fn visible_to(&self, tenant: Option<&str>) -> Vec<Arc<Upstream>> {
        let mut out: Vec<Arc<Upstream>> = self
            .snapshot()
            .values()
            .filter(|u| u.tenant.is_none() || u.tenant.as_deref() == tenant && tenant.is_some())
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Makes the registered servers exactly `desired`: starts new ones, stops removed
    /// ones, and restarts those whose settings or version changed. Configured servers
    /// are never touched.
    pub fn sync(&self, desired: &[Registered]) {
        let mut stop = Vec::new();
        let mut started = false;
        {
            let mut guard = self.map.write().expect("upstreams lock");
            let mut next: BTreeMap<String, Arc<Upstream>> = (**guard).clone();
            let wanted: BTreeMap<String, &Registered> =
                desired.iter().map(|r| (r.key(), r)).collect();
            next.retain(|key, upstream| {
                if upstream.tenant.is_none() {
                    return true;
                }
                let keep = wanted.get(key).is_some_and(|r| {
                    r.config.enabled && r.config == upstream.config && r.version == upstream.version
                });
                if !keep {
                    stop.push(Arc::clone(upstream));
                }
                keep
            });
            for (key, r) in wanted {
                if r.config.enabled && !next.contains_key(&key) {
                    let upstream = Upstream::new(
                        r.name.clone(),
                        Some(r.tenant_id.clone()),
                        r.config.clone(),
                        Some(self.egress.clone()),
                        self.catalog_ttl,
                        r.version,
                    );
                    start_one(&upstream);
                    if let Some(old) = stop.iter().find(|old| old.key() == key) {
                        let _ = old.successor.set(Arc::clone(&upstream));
                    }
                    tracing::info!(upstream = %r.name, tenant = %r.tenant_id, "registered server started");
                    next.insert(key, upstream);
                    started = true;
                }
            }
            *guard = Arc::new(next);
        }
        if started || !stop.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
        for upstream in stop {
            let replaced = upstream.successor().is_some();
            tracing::info!(upstream = %upstream.name, tenant = upstream.tenant.as_deref(), replaced, "registered server stopped");
            upstream.stop.cancel();
        }
    }

    /// True once every upstream has had its first connection attempt.
    pub fn all_attempted(&self) -> bool {
        self.snapshot().values().all(|u| *u.attempted.borrow())
    }

    pub async fn wait_attempted(&self, wait: Duration) {
        for upstream in self.all() {
            let mut rx = upstream.attempted.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|a| *a)).await;
        }
    }

    /// Stops supervision and ends every upstream (process groups included).
    pub async fn shutdown(&self) {
        let all = self.all();
        for upstream in &all {
            upstream.stop.cancel();
        }
        for upstream in &all {
            let mut rx = upstream.state.subscribe();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                rx.wait_for(|s| matches!(s, State::Down(d) if d.reason == SHUTTING_DOWN)),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..50 {
            let first = backoff(1);
            assert!(first >= BACKOFF_START.mul_f64(0.5) && first <= BACKOFF_START.mul_f64(1.5));
            assert!(backoff(30) <= BACKOFF_MAX.mul_f64(1.5));
        }
        assert!(backoff(6) > backoff(1).mul_f64(3.0) || backoff(6) > BACKOFF_START * 4);
    }

    /// An upstream nobody supervises, whose state the test sets.
    fn unsupervised() -> Arc<Upstream> {
        let config: UpstreamConfig =
            serde_json::from_value(json!({ "transport": "stdio", "command": "true" })).unwrap();
        Upstream::new("s".into(), None, config, None, Duration::ZERO, 0)
    }

    fn down(failures: u32) -> State {
        State::Down(Down::retrying(
            "exit status: 3".into(),
            failures,
            Duration::from_secs(4),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_looping_server_is_reported_at_once_with_its_last_failure() {
        let upstream = unsupervised();
        upstream.state.send_replace(down(2));
        let asked = tokio::time::Instant::now();
        let Err(UpstreamError::Unavailable(_, why)) =
            upstream.connection(Duration::from_secs(3600)).await
        else {
            panic!("a crash-looping server gives no connection");
        };
        assert_eq!(asked.elapsed(), Duration::ZERO, "nothing waited for");
        assert!(why.starts_with("exit status: 3 (2 failed attempts in a row; next attempt in "));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_failed_once_is_waited_for() {
        let upstream = unsupervised();
        upstream.state.send_replace(down(1));
        let restart = {
            let upstream = Arc::clone(&upstream);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                upstream.state.send_replace(State::Starting);
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (conn, _inbox) = Connection::new("s");
                upstream.state.send_replace(State::Up(conn));
            })
        };
        let conn = upstream.connection(Duration::from_secs(10)).await;
        assert!(conn.is_ok(), "the restarted connection is given");
        restart.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waits_through_a_crash_loop() {
        let upstream = unsupervised();
        upstream.state.send_replace(down(5));
        let recover = {
            let upstream = Arc::clone(&upstream);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let (conn, _inbox) = Connection::new("s");
                upstream.state.send_replace(State::Up(conn));
            })
        };
        assert!(
            upstream
                .connection_eventually(Duration::from_secs(60))
                .await
                .is_ok()
        );
        recover.await.unwrap();
    }
}
