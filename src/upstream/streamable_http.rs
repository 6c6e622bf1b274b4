//! Remote Streamable HTTP upstream (2025-03-26 and later): every message is a POST; the
//! answer is JSON or an SSE stream; unsolicited messages arrive on the GET stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sse_stream::SseStream;
use tokio_util::sync::CancellationToken;

use super::transport::{Inbox, Outbox, TransportHandle};
use crate::config::{UpstreamConfig, resolve_reference};
use crate::gateway::era::{HEADER_PROTOCOL_VERSION, HEADER_SESSION_ID};
use crate::gateway::jsonrpc;

#[derive(Default)]
struct SessionState {
    session_id: Option<String>,
    protocol_version: Option<String>,
    initialize_id: Option<Value>,
}

struct Shared {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    state: Mutex<SessionState>,
    inbox: Inbox,
    stop: CancellationToken,
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

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        // Proxy matching per request costs more than the rest of the client work; an
        // upstream behind an egress proxy is configured with its full URL instead.
        .no_proxy()
        .build()
        .expect("HTTP client builds")
}

pub async fn connect(
    name: &str,
    config: &UpstreamConfig,
    inbox: Inbox,
) -> Result<TransportHandle, String> {
    let url = reqwest::Url::parse(config.url.as_deref().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        name: name.to_string(),
        url,
        client: http_client(),
        headers: configured_headers(config)?,
        state: Mutex::new(SessionState::default()),
        inbox,
        stop: CancellationToken::new(),
    });
    let closer = Arc::clone(&shared);
    Ok(TransportHandle {
        outbox: Arc::new(HttpOutbox(shared)),
        shutdown: Box::new(move || Box::pin(async move { closer.terminate().await })),
    })
}

impl Shared {
    fn request_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        let state = self.state.lock().unwrap();
        if let Some(sid) = state
            .session_id
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            headers.insert(HEADER_SESSION_ID, sid);
        }
        if let Some(v) = state
            .protocol_version
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            headers.insert(HEADER_PROTOCOL_VERSION, v);
        }
        headers
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
        if method == "initialize" {
            self.state.lock().unwrap().initialize_id = id.clone();
        }
        let related = id.as_ref().and_then(Value::as_u64);
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.request_headers())
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .json(&msg)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("cannot reach {}: {}", self.url, without_url(&e));
                self.fail(id.as_ref(), &reason);
                self.inbox.close(reason);
                return;
            }
        };
        if let Some(sid) = response
            .headers()
            .get(HEADER_SESSION_ID)
            .and_then(|v| v.to_str().ok())
        {
            self.state.lock().unwrap().session_id = Some(sid.to_string());
        }
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND
            && self.state.lock().unwrap().session_id.is_some()
        {
            self.fail(id.as_ref(), "upstream session expired");
            self.inbox.close("upstream session expired (404)".into());
            return;
        }
        if !status.is_success() {
            self.fail(id.as_ref(), &format!("upstream answered HTTP {status}"));
            return;
        }
        if method == "notifications/initialized" {
            self.clone().spawn_get_stream();
        }
        if status == reqwest::StatusCode::ACCEPTED || id.is_none() {
            return;
        }
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let answered = if is_sse {
            self.read_sse(response, related, id.as_ref()).await
        } else {
            match response.json::<Value>().await {
                Ok(body) => {
                    let answers = answers(&body, id.as_ref());
                    self.deliver(body, related);
                    answers
                }
                Err(e) => {
                    let reason = format!("unreadable upstream response: {}", without_url(&e));
                    self.fail(id.as_ref(), &reason);
                    true
                }
            }
        };
        if !answered && !self.stop.is_cancelled() {
            self.fail(id.as_ref(), "the response stream ended before the answer");
        }
    }

    /// Delivers every message of an SSE stream; true once the answer to `request_id` came
    /// (the stream is then done with), false if the stream ended without it.
    async fn read_sse(
        &self,
        response: reqwest::Response,
        related: Option<u64>,
        request_id: Option<&Value>,
    ) -> bool {
        let mut events = SseStream::from_bytes_stream(response.bytes_stream());
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
                        match serde_json::from_str::<Value>(&data) {
                            Ok(msg) => {
                                let done = answers(&msg, request_id);
                                self.deliver(msg, related);
                                if done {
                                    return true;
                                }
                            }
                            Err(_) => tracing::warn!(upstream = %self.name, "upstream sent a non-JSON SSE event"),
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(upstream = %self.name, error = %e, "upstream SSE stream broke");
                        return false;
                    }
                    None => return false,
                }
            }
        }
    }

    fn deliver(&self, msg: Value, related: Option<u64>) {
        {
            let mut state = self.state.lock().unwrap();
            if state.initialize_id.is_some() && msg.get("id") == state.initialize_id.as_ref() {
                state.protocol_version = msg
                    .pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                    .map(String::from);
                state.initialize_id = None;
            }
        }
        self.inbox.deliver(msg, related);
    }

    /// Answers a request the upstream failed at the HTTP level, so the caller is not left
    /// waiting for its timeout.
    fn fail(&self, id: Option<&Value>, reason: &str) {
        if let Some(id) = id {
            let msg = jsonrpc::error_response(
                id,
                jsonrpc::UPSTREAM_UNAVAILABLE,
                &format!("upstream '{}': {reason}", self.name),
                Some(json!({ "server": self.name })),
            );
            self.inbox.deliver(msg, None);
        }
    }

    /// The GET stream carries messages unrelated to any request; servers without one
    /// answer 405, which is fine.
    fn spawn_get_stream(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut failures = 0u32;
            while !self.stop.is_cancelled() && failures < 5 {
                let response = self
                    .client
                    .get(self.url.clone())
                    .headers(self.request_headers())
                    .header(ACCEPT, "text/event-stream")
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        failures = 0;
                        self.read_sse(r, None, None).await;
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
                    _ => failures += 1,
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    async fn terminate(&self) {
        self.stop.cancel();
        let has_session = self.state.lock().unwrap().session_id.is_some();
        if has_session {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.client
                    .delete(self.url.clone())
                    .headers(self.request_headers())
                    .send(),
            )
            .await;
        }
    }
}

/// Whether `msg` is the response to the request with `id`.
fn answers(msg: &Value, id: Option<&Value>) -> bool {
    id.is_some() && msg.get("id") == id && msg.get("method").is_none()
}

/// reqwest errors embed the URL, which can carry credentials in its query.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(pos) = e.find(" for url (") {
        e.truncate(pos);
    }
    e
}
