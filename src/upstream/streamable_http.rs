//! Remote Streamable HTTP upstream (2025-03-26 and later): every message is a POST; the
//! answer is JSON or an SSE stream; unsolicited messages arrive on the GET stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sse_stream::SseStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::connection::NotJson;
use super::egress::Egress;
use super::http_client::{self, Endpoint, HttpClient};
use super::message_limit::{self, Bounded};
use super::oauth::OAuth;
use super::sse_resume::Resume;
use super::transport::{self, Inbox, Outbox, TransportHandle};
use crate::config::{UpstreamConfig, resolve_reference};
use crate::gateway::era::{HEADER_PROTOCOL_VERSION, HEADER_SESSION_ID};
use crate::gateway::jsonrpc;

/// Kept as header values, ready to send: every request carries them.
#[derive(Default)]
struct SessionState {
    session_id: Option<HeaderValue>,
    protocol_version: Option<HeaderValue>,
}

const ACCEPT_BOTH: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
const ACCEPT_SSE: HeaderValue = HeaderValue::from_static("text/event-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// How long a POST's event stream is read on after its answer (see `finish_stream`).
const DRAIN_FOR: Duration = Duration::from_secs(2);
/// An event stream from the upstream, each event bounded by `max_message_bytes`.
type Events = SseStream<Bounded<http_client::Body>>;

/// Streams read on at once, per upstream. A server that never ends its streams would
/// otherwise keep a connection open per call for `DRAIN_FOR`: thousands under load.
const MAX_DRAINING: usize = 64;

struct Shared {
    name: String,
    endpoint: Endpoint,
    client: HttpClient,
    /// The configured headers (and the URL's credentials), sent with every request.
    headers: HeaderMap,
    state: Mutex<SessionState>,
    inbox: Inbox,
    stop: CancellationToken,
    /// Room for answered streams being read to their end (`finish_stream`).
    draining: Arc<Semaphore>,
    /// The largest answer or event read (`max_message_bytes`).
    max_message_bytes: usize,
    /// Where access tokens come from, for a server that requires OAuth.
    oauth: Option<OAuth>,
}

/// Why a request got no usable response.
enum SendError {
    /// No response: the server could not be reached.
    Unreachable(String),
    /// The server requires OAuth and no token could be had.
    NoToken(String),
}

struct HttpOutbox(Arc<Shared>);

impl Outbox for HttpOutbox {
    fn exchange(&self, msg: Value) -> BoxFuture<'static, ()> {
        Box::pin(Arc::clone(&self.0).post(msg))
    }
}

pub fn configured_headers(config: &UpstreamConfig) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (key, value) in &config.headers {
        let value = resolve_reference(value).map_err(|e| format!("header {key}: {e}"))?;
        let name = HeaderName::try_from(key.as_str()).map_err(|e| format!("header {key}: {e}"))?;
        let mut value =
            HeaderValue::try_from(value).map_err(|_| format!("header {key}: invalid value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The upstream's URL, refused before any connection when it names a forbidden address
/// itself (a name is checked by the client's resolver on every connection).
pub fn upstream_url(config: &UpstreamConfig, egress: Option<&Egress>) -> Result<Endpoint, String> {
    let url =
        url::Url::parse(config.url.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;
    match egress.and_then(|e| e.address_refusal(&url)) {
        Some(refusal) => Err(refusal),
        None => Endpoint::parse(url),
    }
}

/// The headers every request to `endpoint` starts from: the configured ones, then
/// `Host` and the URL's credentials where none are configured.
pub fn base_headers(config: &UpstreamConfig, endpoint: &Endpoint) -> Result<HeaderMap, String> {
    let mut headers = configured_headers(config)?;
    endpoint.add_defaults(&mut headers);
    Ok(headers)
}

/// Why a non-success answer failed the request, for the caller's error.
pub fn status_failure(status: StatusCode) -> String {
    if status.is_redirection() {
        format!(
            "upstream answered HTTP {status}, a redirect; gantry does not follow redirects: configure the URL the server moved to"
        )
    } else if status == StatusCode::UNAUTHORIZED {
        format!(
            "upstream answered HTTP {status}: it requires authorization (configure its headers, or its oauth client credentials)"
        )
    } else {
        format!("upstream answered HTTP {status}")
    }
}

pub async fn connect(
    name: &str,
    config: &UpstreamConfig,
    egress: Option<&Egress>,
    inbox: Inbox,
) -> Result<TransportHandle, String> {
    let endpoint = upstream_url(config, egress)?;
    let oauth = config
        .oauth
        .clone()
        .map(|client| OAuth::new(client, endpoint.url.clone(), egress));
    let shared = Arc::new(Shared {
        name: name.to_string(),
        headers: base_headers(config, &endpoint)?,
        endpoint,
        client: HttpClient::new(egress),
        state: Mutex::new(SessionState::default()),
        inbox,
        stop: CancellationToken::new(),
        draining: Arc::new(Semaphore::new(MAX_DRAINING)),
        max_message_bytes: config.max_message_bytes,
        oauth,
    });
    let closer = Arc::clone(&shared);
    Ok(TransportHandle {
        outbox: Arc::new(HttpOutbox(shared)),
        shutdown: Box::new(move || Box::pin(async move { closer.terminate().await })),
    })
}

impl Shared {
    fn request(&self, method: Method, accept: HeaderValue, body: Bytes) -> http_client::Request {
        let mut headers = self.headers.clone();
        {
            let state = self.state.lock().unwrap();
            if let Some(sid) = &state.session_id {
                headers.insert(HEADER_SESSION_ID, sid.clone());
            }
            if let Some(version) = &state.protocol_version {
                headers.insert(HEADER_PROTOCOL_VERSION, version.clone());
            }
        }
        headers.insert(ACCEPT, accept);
        if let Some(bearer) = self.oauth.as_ref().and_then(OAuth::bearer) {
            headers.insert(AUTHORIZATION, bearer);
        }
        if !body.is_empty() {
            headers.insert(CONTENT_TYPE, JSON);
        }
        http_client::request(method, &self.endpoint, headers, body)
    }

    async fn post(self: Arc<Self>, msg: Value) {
        let id = msg
            .get("id")
            .filter(|_| msg.get("method").is_some())
            .cloned();
        let method = msg
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Its answer carries the protocol version every later request must name.
        let initialize = method == "initialize";
        let related = id.as_ref().and_then(Value::as_u64);
        let body = Bytes::from(serde_json::to_vec(&msg).expect("JSON values serialize"));
        let response = self
            .send(|| self.request(Method::POST, ACCEPT_BOTH, body.clone()))
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let url = display_url(&self.endpoint.url);
                let reason = match e {
                    SendError::Unreachable(e) => format!("cannot reach {url}: {e}"),
                    SendError::NoToken(e) => {
                        format!("{url} requires OAuth and gantry got no access token: {e}")
                    }
                };
                self.fail(id.as_ref(), &reason);
                self.inbox.close(reason);
                return;
            }
        };
        if let Some(sid) = response.headers().get(HEADER_SESSION_ID) {
            self.state.lock().unwrap().session_id = Some(sid.clone());
        }
        let status = response.status();
        if status == StatusCode::NOT_FOUND && self.state.lock().unwrap().session_id.is_some() {
            self.fail(id.as_ref(), "upstream session expired");
            self.inbox.close("upstream session expired (404)".into());
            return;
        }
        if !status.is_success() {
            self.fail(id.as_ref(), &status_failure(status));
            return;
        }
        if method == "notifications/initialized" {
            self.clone().spawn_get_stream();
        }
        if status == StatusCode::ACCEPTED || id.is_none() {
            return;
        }
        let is_sse = is_event_stream(response.headers());
        let body = response.into_body();
        let answered = if is_sse {
            let mut events = self.events(body);
            let mut resume = Resume::default();
            let answered = self
                .read_sse(&mut events, &mut resume, related, id.as_ref(), initialize)
                .await;
            if answered {
                self.finish_stream(events);
                true
            } else {
                Box::pin(self.resume_call(resume, related, id.as_ref(), initialize)).await
            }
        } else {
            let delivered = match http_client::read_body(body, self.max_message_bytes).await {
                Ok(bytes) => self
                    .deliver(bytes, related, id.as_ref(), initialize)
                    .map_err(|e| e.error.to_string()),
                Err(e) => match message_limit::too_large(&e) {
                    Some(too_large) => {
                        self.refuse(id.as_ref(), too_large);
                        return;
                    }
                    None => Err(http_client::error_chain(&e)),
                },
            };
            match delivered {
                Ok(answers) => answers,
                Err(e) => {
                    self.fail(id.as_ref(), &format!("unreadable upstream response: {e}"));
                    true
                }
            }
        };
        if !answered && !self.stop.is_cancelled() {
            self.fail(id.as_ref(), "the response stream ended before the answer");
        }
    }

    /// Sends what `build` makes; a server that requires OAuth and answers 401 gets it
    /// once more, with a new token. Little is held across the send: this future is part
    /// of every message's, which is allocated and copied per message.
    async fn send(
        &self,
        build: impl Fn() -> http_client::Request,
    ) -> Result<http_client::Response, SendError> {
        let sent_with = self.oauth.as_ref().map_or(0, OAuth::generation);
        let response = self
            .client
            .send(build())
            .await
            .map_err(SendError::Unreachable)?;
        match &self.oauth {
            // Boxed, like every path a request seldom takes.
            Some(oauth) if response.status() == StatusCode::UNAUTHORIZED => {
                Box::pin(self.send_with_new_token(oauth, response, sent_with, build)).await
            }
            _ => Ok(response),
        }
    }

    async fn send_with_new_token(
        &self,
        oauth: &OAuth,
        refusal: http_client::Response,
        sent_with: u64,
        build: impl Fn() -> http_client::Request,
    ) -> Result<http_client::Response, SendError> {
        let challenge = refusal.headers().get(WWW_AUTHENTICATE).cloned();
        drop(refusal);
        oauth
            .renew(sent_with, challenge.as_ref())
            .await
            .map_err(SendError::NoToken)?;
        self.client
            .send(build())
            .await
            .map_err(SendError::Unreachable)
    }

    fn events(&self, body: http_client::Body) -> Events {
        SseStream::new(Bounded::events(body, self.max_message_bytes))
    }

    /// Delivers every message of an SSE stream; true once `request_id` is answered, by
    /// the upstream (the rest of the stream is then `finish_stream`'s) or with the error
    /// that broke the stream; false if the stream ended without an answer.
    async fn read_sse(
        &self,
        events: &mut Events,
        resume: &mut Resume,
        related: Option<u64>,
        request_id: Option<&Value>,
        initialize: bool,
    ) -> bool {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                event = events.next() => {
                    if let Some(answered) = self.on_event(event, resume, related, request_id, initialize) {
                        return answered;
                    }
                    transport::delivered().await;
                }
            }
        }
    }

    /// Handles what an event stream yielded: `Some(answered)` when the stream is done
    /// with (its answer came, or it ended or broke), `None` to read on. A stream that
    /// broke answers `request_id` with why.
    fn on_event(
        &self,
        event: Option<Result<sse_stream::Sse, sse_stream::Error>>,
        resume: &mut Resume,
        related: Option<u64>,
        request_id: Option<&Value>,
        initialize: bool,
    ) -> Option<bool> {
        match event {
            Some(Ok(event)) => {
                resume.saw(&event);
                let data = event.data.filter(|d| !d.trim().is_empty())?;
                match self.deliver(data.into(), related, request_id, initialize) {
                    Ok(true) => Some(true),
                    Ok(false) => None,
                    Err(_) => {
                        tracing::warn!(upstream = %self.name, "upstream sent a non-JSON SSE event");
                        None
                    }
                }
            }
            Some(Err(e)) => {
                if let Some(too_large) = message_limit::too_large(&e) {
                    self.refuse(request_id, too_large);
                } else {
                    tracing::warn!(upstream = %self.name, error = %e, "upstream SSE stream broke");
                    self.fail(request_id, &format!("its event stream broke: {e}"));
                }
                Some(request_id.is_some())
            }
            None => Some(false),
        }
    }

    /// Reads a POST's event stream to its end after the answer, off the caller's path: an
    /// HTTP/1.1 connection whose response body is dropped unread is closed, and the next
    /// request pays for a new connection (and TLS handshake). The end usually arrives with
    /// the answer, or just after it (behind a proxy); a server that keeps the stream open
    /// after answering gets its connection closed after `DRAIN_FOR`, as before (at once
    /// when `MAX_DRAINING` streams are being read on already).
    fn finish_stream(self: &Arc<Self>, mut events: Events) {
        // What has arrived already is read here; only a stream still open needs a task.
        let mut resume = Resume::default();
        while let Some(event) = events.next().now_or_never() {
            if self
                .on_event(event, &mut resume, None, None, false)
                .is_some()
            {
                return;
            }
        }
        let Ok(permit) = Arc::clone(&self.draining).try_acquire_owned() else {
            return;
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let rest = this.read_sse(&mut events, &mut resume, None, None, false);
            let _ = tokio::time::timeout(DRAIN_FOR, rest).await;
            drop(permit);
        });
    }

    /// Delivers one message read from the upstream; true when it is the answer to
    /// `request_id`. For the `initialize` request, the answer's protocol version is
    /// kept first.
    fn deliver(
        &self,
        bytes: Bytes,
        related: Option<u64>,
        request_id: Option<&Value>,
        initialize: bool,
    ) -> Result<bool, NotJson> {
        if initialize {
            if let Ok(msg) = serde_json::from_slice::<Value>(&bytes) {
                if request_id.is_some() && msg.get("id") == request_id {
                    self.state.lock().unwrap().protocol_version = msg
                        .pointer("/result/protocolVersion")
                        .and_then(Value::as_str)
                        .and_then(|v| HeaderValue::from_str(v).ok());
                }
            }
        }
        let answered = self.inbox.deliver_bytes(bytes, related)?;
        Ok(request_id.is_some() && answered.as_ref() == request_id)
    }

    /// Answers a request the upstream failed at the HTTP level, so the caller is not left
    /// waiting for its timeout.
    fn fail(&self, id: Option<&Value>, reason: &str) {
        self.answer_error(
            id,
            jsonrpc::UPSTREAM_UNAVAILABLE,
            &format!("upstream '{}': {reason}", self.name),
            json!({ "server": self.name }),
        );
    }

    /// Answers a request whose answer, or an event of its stream, was over
    /// `max_message_bytes`. The server did answer: an error of the call, not a failure
    /// of the server, so the circuit breaker does not count it.
    fn refuse(&self, id: Option<&Value>, too_large: message_limit::TooLarge) {
        tracing::warn!(upstream = %self.name, limit = too_large.limit, "upstream sent {too_large}; refused");
        self.answer_error(
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!("upstream '{}' sent {too_large}", self.name),
            json!({ "server": self.name, "maxMessageBytes": too_large.limit }),
        );
    }

    /// Delivers a JSON-RPC error as the answer to `id` (nothing when it is not a request).
    fn answer_error(&self, id: Option<&Value>, code: i64, message: &str, data: Value) {
        if let Some(id) = id {
            let msg = jsonrpc::error_response(id, code, message, Some(data));
            self.inbox.deliver(msg, None);
        }
    }

    /// The GET stream carries messages unrelated to any request; servers without one
    /// answer 405, which is fine.
    fn spawn_get_stream(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut failures = 0u32;
            // Reconnections name the last event seen, so nothing sent meanwhile is lost
            // by a server that keeps its events.
            let mut resume = Resume::default();
            while !self.stop.is_cancelled() && failures < 5 {
                let response = self.send(|| self.resuming_get(&resume)).await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        failures = 0;
                        let mut events = self.events(r.into_body());
                        self.read_sse(&mut events, &mut resume, None, None, false)
                            .await;
                    }
                    Ok(r) if r.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                    // A server that names events but cannot resume from them still
                    // serves a fresh stream: what it sent meanwhile is lost, not the rest.
                    Ok(r) if r.status().is_client_error() && resume.last_event_id().is_some() => {
                        failures += 1;
                        resume.forget_position();
                    }
                    _ => failures += 1,
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(resume.delay()) => {}
                }
            }
        });
    }

    /// A GET for an event stream, naming the last event seen on the stream it resumes.
    fn resuming_get(&self, resume: &Resume) -> http_client::Request {
        let mut request = self.request(Method::GET, ACCEPT_SSE, Bytes::new());
        if let Some(id) = resume.last_event_id() {
            request.headers_mut().insert(LAST_EVENT_ID, id.clone());
        }
        request
    }

    /// A POST's event stream ended before its answer. A server that sent an event id may
    /// do so (SEP-1699): the call goes on, on a GET stream resumed after that event, as
    /// often as the server ends it, while the call still waits for its answer. True once
    /// the answer came (or nobody waits for it any more); false when the stream cannot
    /// be resumed, which fails the call.
    async fn resume_call(
        self: &Arc<Self>,
        mut resume: Resume,
        related: Option<u64>,
        request_id: Option<&Value>,
        initialize: bool,
    ) -> bool {
        const ATTEMPTS: u32 = 3;
        let mut failures = 0;
        while resume.last_event_id().is_some() {
            if related.is_some_and(|r| !self.inbox.awaits(r)) {
                return true;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return true,
                _ = tokio::time::sleep(resume.delay()) => {}
            }
            match self.send(|| self.resuming_get(&resume)).await {
                Ok(r) if r.status().is_success() && is_event_stream(r.headers()) => {
                    failures = 0;
                    let mut events = self.events(r.into_body());
                    if self
                        .read_sse(&mut events, &mut resume, related, request_id, initialize)
                        .await
                    {
                        self.finish_stream(events);
                        return true;
                    }
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    self.fail(
                        request_id,
                        &format!("its event stream ended before the answer and could not be resumed (HTTP {status})"),
                    );
                    return true;
                }
                Ok(_) | Err(_) if failures + 1 < ATTEMPTS => failures += 1,
                Ok(_) | Err(_) => break,
            }
        }
        false
    }

    async fn terminate(&self) {
        self.stop.cancel();
        let has_session = self.state.lock().unwrap().session_id.is_some();
        if has_session {
            let request = || self.request(Method::DELETE, ACCEPT_BOTH, Bytes::new());
            let _ = tokio::time::timeout(Duration::from_secs(2), self.send(request)).await;
        }
    }
}

pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// The URL as it may appear in logs and errors: without credentials or query (API keys
/// are often passed there).
pub fn display_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::connection::{CallEvent, Connection};
    use base64::Engine;
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that answers each POST on an event stream and ends the stream
    /// `end_after` later (as servers behind a proxy appear to).
    struct SlowEndingUpstream {
        url: String,
        /// The client port of every request: one port per connection.
        ports: tokio::sync::mpsc::UnboundedReceiver<u16>,
        /// Streams not yet ended or dropped by the client.
        open: Arc<AtomicUsize>,
    }

    /// Counts a stream as open for as long as it lives.
    struct OpenStream(Arc<AtomicUsize>);

    impl Drop for OpenStream {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn slow_ending_upstream(end_after: Duration) -> SlowEndingUpstream {
        use axum::extract::ConnectInfo;
        let (seen, ports) = tokio::sync::mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&open);
        let answer = move |ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes| {
            let _ = seen.send(peer.port());
            counter.fetch_add(1, Ordering::SeqCst);
            let guard = OpenStream(Arc::clone(&counter));
            async move {
                let msg: Value = serde_json::from_slice(&body).unwrap();
                let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "result": {}});
                let event = Bytes::from(format!("event: message\ndata: {answer}\n\n"));
                let stream = futures::stream::unfold(
                    (Some(event), guard),
                    move |(next, guard)| async move {
                        match next {
                            Some(event) => Some((Ok::<_, std::io::Error>(event), (None, guard))),
                            None => {
                                tokio::time::sleep(end_after).await;
                                None
                            }
                        }
                    },
                );
                axum::response::Response::builder()
                    .header(CONTENT_TYPE, "text/event-stream")
                    .body(axum::body::Body::from_stream(stream))
                    .unwrap()
            }
        };
        let app = axum::Router::new().route("/mcp", axum::routing::post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });
        SlowEndingUpstream { url, ports, open }
    }

    async fn connected(url: &str) -> Arc<Connection> {
        connected_with(json!({"transport": "streamable-http", "url": url})).await
    }

    async fn connected_with(config: Value) -> Arc<Connection> {
        let config: UpstreamConfig = serde_json::from_value(config).unwrap();
        let (conn, inbox) = Connection::new("slow-end");
        let handle = connect("slow-end", &config, None, inbox).await.unwrap();
        conn.attach(handle.outbox);
        conn
    }

    async fn ping(conn: &Arc<Connection>, id: u64) {
        let Value::Object(body) = json!({"jsonrpc": "2.0", "id": id, "method": "ping"}) else {
            unreachable!()
        };
        let mut call = conn.start_call(body, Duration::from_secs(5));
        assert!(matches!(call.next().await, Some(CallEvent::Response(_))));
    }

    #[tokio::test]
    async fn a_connection_is_reused_when_the_answer_comes_before_the_stream_ends() {
        let mut upstream = slow_ending_upstream(Duration::from_millis(20)).await;
        let conn = connected(&upstream.url).await;
        for i in 0..3 {
            ping(&conn, i).await;
            // The client's pace: its next call comes after the stream has ended.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut used = BTreeSet::new();
        while let Ok(port) = upstream.ports.try_recv() {
            used.insert(port);
        }
        assert_eq!(used.len(), 1, "client ports of the three calls: {used:?}");
    }

    #[tokio::test]
    async fn streams_left_open_after_the_answer_are_read_on_only_up_to_a_bound() {
        let upstream = slow_ending_upstream(Duration::from_secs(3600)).await;
        let conn = connected(&upstream.url).await;
        let calls = MAX_DRAINING + 36;
        for i in 0..calls {
            ping(&conn, i as u64).await;
        }
        // Beyond the bound, a stream is dropped (its connection closed) once answered.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while upstream.open.load(Ordering::SeqCst) > MAX_DRAINING {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {calls} streams still open",
                upstream.open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(upstream.open.load(Ordering::SeqCst), MAX_DRAINING);
    }

    /// An upstream that ends every POST's event stream after one priming event (an id,
    /// `retry: 50`, no data), as SEP-1699 allows, or after nothing when `prime` is false;
    /// a GET gets `resumed` (or an event stream carrying the answer when `None`). The
    /// `Last-Event-ID` of each GET is sent on `resumed_after`.
    async fn disconnecting_upstream(
        prime: bool,
        resumed: Option<StatusCode>,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<Option<String>>) {
        let pending = Arc::new(Mutex::new(Value::Null));
        let asked = Arc::clone(&pending);
        let post = move |body: Bytes| {
            let msg: Value = serde_json::from_slice(&body).unwrap();
            *asked.lock().unwrap() = msg["id"].clone();
            let event = if prime {
                "id: p-1\nretry: 50\ndata: \n\n"
            } else {
                ": nothing\n\n"
            };
            async move { ([(CONTENT_TYPE, "text/event-stream")], event) }
        };
        let (seen, resumed_after) = tokio::sync::mpsc::unbounded_channel();
        let get = move |headers: HeaderMap| {
            let _ = seen.send(
                headers
                    .get("last-event-id")
                    .map(|v| v.to_str().unwrap().to_string()),
            );
            let answer = json!({"jsonrpc": "2.0", "id": *pending.lock().unwrap(), "result": {"resumed": true}});
            async move {
                match resumed {
                    Some(status) => (status, [(CONTENT_TYPE, "text/plain")], String::new()),
                    None => (
                        StatusCode::OK,
                        [(CONTENT_TYPE, "text/event-stream")],
                        format!("id: p-2\ndata: {answer}\n\n"),
                    ),
                }
            }
        };
        let app = axum::Router::new().route("/mcp", axum::routing::post(post).get(get));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, resumed_after)
    }

    async fn answer(conn: &Arc<Connection>) -> Value {
        let Value::Object(body) = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}) else {
            unreachable!()
        };
        let mut call = conn.start_call(body, Duration::from_secs(10));
        loop {
            match call.next().await {
                Some(CallEvent::Response(answer)) => return answer.to_value(),
                Some(_) => continue,
                None => panic!("the call ended without an answer"),
            }
        }
    }

    #[tokio::test]
    async fn a_stream_ended_after_an_event_id_is_resumed_from_that_event() {
        let (url, mut resumed_after) = disconnecting_upstream(true, None).await;
        let conn = connected(&url).await;
        let answer = answer(&conn).await;
        assert_eq!(answer["result"]["resumed"], true, "{answer}");
        assert_eq!(resumed_after.recv().await.unwrap().as_deref(), Some("p-1"));
    }

    #[tokio::test]
    async fn a_stream_the_server_will_not_resume_fails_its_call_with_why() {
        let (url, _) = disconnecting_upstream(true, Some(StatusCode::METHOD_NOT_ALLOWED)).await;
        let conn = connected(&url).await;
        let answer = answer(&conn).await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("could not be resumed (HTTP 405"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_stream_ended_before_any_event_id_fails_its_call_at_once() {
        let (url, mut resumed_after) = disconnecting_upstream(false, None).await;
        let conn = connected(&url).await;
        let answer = answer(&conn).await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("ended before the answer"), "{answer}");
        assert!(resumed_after.try_recv().is_err(), "nothing to resume from");
    }

    #[tokio::test]
    async fn a_get_stream_the_server_cannot_resume_is_opened_afresh() {
        // The first stream names an event and ends; resuming from it is refused; a fresh
        // stream carries the next notification.
        let gets = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
        let seen = Arc::clone(&gets);
        let get = move |headers: HeaderMap| {
            let after = headers
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_string());
            let n = {
                let mut gets = seen.lock().unwrap();
                gets.push(after.clone());
                gets.len()
            };
            async move {
                let note = |n: usize| json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}});
                match (n, after) {
                    (_, Some(_)) => (StatusCode::BAD_REQUEST, String::new()),
                    (1, None) => (
                        StatusCode::OK,
                        format!("retry: 20\nid: g-1\ndata: {}\n\n", note(1)),
                    ),
                    (_, None) => (StatusCode::OK, format!("data: {}\n\n", note(2))),
                }
            }
        };
        let post = || async { StatusCode::ACCEPTED };
        let app = axum::Router::new().route("/mcp", axum::routing::post(post).get(get));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let conn = connected(&url).await;
        let mut events = conn.subscribe();
        let Value::Object(initialized) =
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        else {
            unreachable!()
        };
        conn.notify(initialized);
        for n in [1, 2] {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("a notification in time")
                .unwrap();
            assert_eq!(event["params"]["n"], n);
        }
        let gets = gets.lock().unwrap().clone();
        assert_eq!(gets, [None, Some("g-1".to_string()), None]);
    }

    /// A server requiring OAuth and its authorization server, on one origin: the token
    /// endpoint issues `tok-1`, `tok-2` … to `gantry:s3cret` (or refuses every client when
    /// `refuse`), and the server takes only the latest token.
    struct OAuthWorld {
        url: String,
        /// Each token request's form.
        token_requests: Arc<Mutex<Vec<String>>>,
        /// The token the server takes; replacing it revokes the one gantry has.
        valid: Arc<Mutex<String>>,
    }

    async fn oauth_world(refuse: bool) -> OAuthWorld {
        use axum::routing::{get, post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let url = format!("{base}/mcp");
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let valid = Arc::new(Mutex::new(String::from("none yet")));
        let mcp = {
            let (valid, base) = (Arc::clone(&valid), base.clone());
            move |headers: HeaderMap, body: Bytes| {
                let sent = headers
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_string());
                let ok = sent == Some(format!("Bearer {}", valid.lock().unwrap()));
                let challenge = format!(
                    r#"Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp""#
                );
                async move {
                    if !ok {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(WWW_AUTHENTICATE, challenge)],
                            String::new(),
                        );
                    }
                    let msg: Value = serde_json::from_slice(&body).unwrap();
                    let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "result": {}});
                    (
                        StatusCode::OK,
                        [(CONTENT_TYPE, "application/json".to_string())],
                        answer.to_string(),
                    )
                }
            }
        };
        let prm = {
            let (url, base) = (url.clone(), base.clone());
            move || async move { axum::Json(json!({"resource": url, "authorization_servers": [base]})) }
        };
        let metadata = {
            let base = base.clone();
            move || async move {
                axum::Json(json!({"issuer": base, "token_endpoint": format!("{base}/token")}))
            }
        };
        let token = {
            let (requests, valid) = (Arc::clone(&token_requests), Arc::clone(&valid));
            move |headers: HeaderMap, form: String| {
                let n = {
                    let mut requests = requests.lock().unwrap();
                    requests.push(form);
                    requests.len()
                };
                let basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("gantry:s3cret")
                );
                let known = headers.get(AUTHORIZATION).is_some_and(|v| *v == basic);
                let issued = format!("tok-{n}");
                if known && !refuse {
                    *valid.lock().unwrap() = issued.clone();
                }
                async move {
                    if !known || refuse {
                        let refusal = json!({"error": "invalid_client", "error_description": "unknown client"});
                        return (StatusCode::UNAUTHORIZED, axum::Json(refusal));
                    }
                    let token =
                        json!({"access_token": issued, "token_type": "Bearer", "expires_in": 3600});
                    (StatusCode::OK, axum::Json(token))
                }
            }
        };
        let app = axum::Router::new()
            .route("/mcp", post(mcp))
            .route("/.well-known/oauth-protected-resource/mcp", get(prm))
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/token", post(token));
        tokio::spawn(async move { axum::serve(listener, app).await });
        OAuthWorld {
            url,
            token_requests,
            valid,
        }
    }

    fn oauth_config(url: &str) -> Value {
        json!({"transport": "streamable-http", "url": url,
               "oauth": {"client_id": "gantry", "client_secret": "s3cret"}})
    }

    #[tokio::test]
    async fn a_token_is_obtained_on_the_first_401_and_renewed_when_refused() {
        let world = oauth_world(false).await;
        let conn = connected_with(oauth_config(&world.url)).await;
        assert!(answer(&conn).await.get("result").is_some());
        assert!(
            answer(&conn).await.get("result").is_some(),
            "the token is kept"
        );
        assert_eq!(world.token_requests.lock().unwrap().len(), 1);

        *world.valid.lock().unwrap() = "revoked".into();
        assert!(
            answer(&conn).await.get("result").is_some(),
            "renewed on the 401"
        );
        let requests = world.token_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 2);
        let form: Vec<(String, String)> = form_urlencoded::parse(requests[0].as_bytes())
            .into_owned()
            .collect();
        assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
        assert!(form.contains(&("resource".into(), world.url.clone())));
        assert!(
            !requests[0].contains("s3cret"),
            "the secret goes in the header"
        );
    }

    #[tokio::test]
    async fn a_refused_client_fails_the_call_with_the_token_endpoints_words_not_the_secret() {
        let world = oauth_world(true).await;
        let conn = connected_with(oauth_config(&world.url)).await;
        let answer = answer(&conn).await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("requires OAuth"), "{message}");
        assert!(
            message.contains("401") && message.contains("invalid_client"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn urls_in_errors_carry_no_credentials() {
        let url =
            url::Url::parse("https://user:pa55@mcp.example.com/v1/mcp?api_key=s3cret").unwrap();
        let shown = display_url(&url);
        assert_eq!(shown, "https://mcp.example.com/v1/mcp?…");
        let plain = url::Url::parse("http://10.0.0.1:8080/mcp").unwrap();
        assert_eq!(display_url(&plain), "http://10.0.0.1:8080/mcp");
    }
}
