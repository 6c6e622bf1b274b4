//! Remote HTTP+SSE upstream (2024-11-05, deprecated but still deployed): a GET opens an
//! event stream whose first `endpoint` event names the URL to POST messages to; every
//! answer arrives on the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::Method;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sse_stream::SseStream;
use tokio_util::sync::CancellationToken;

use super::egress::Egress;
use super::http_client::{self, Endpoint, HttpClient};
use super::message_limit::{self, Bounded};
use super::streamable_http::{base_headers, display_url, status_failure, upstream_url};
use super::transport::{self, Inbox, Outbox, TransportHandle};
use crate::config::UpstreamConfig;
use crate::gateway::jsonrpc;

/// Messages are POSTed to the endpoint the stream named; answers arrive on the stream.
struct PostOutbox {
    client: HttpClient,
    endpoint: Endpoint,
    /// The configured headers with `Content-Type: application/json`.
    headers: HeaderMap,
    name: Arc<str>,
    inbox: Inbox,
}

impl PostOutbox {
    fn post(&self, msg: Value) -> BoxFuture<'static, ()> {
        let body = Bytes::from(serde_json::to_vec(&msg).expect("JSON values serialize"));
        let request =
            http_client::request(Method::POST, &self.endpoint, self.headers.clone(), body);
        let client = self.client.clone();
        let (name, inbox) = (Arc::clone(&self.name), self.inbox.clone());
        Box::pin(async move {
            let failure = match client.send(request).await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(status_failure(r.status())),
                Err(e) => Some(e),
            };
            let id = msg.get("id").filter(|_| msg.get("method").is_some());
            if let (Some(reason), Some(id)) = (failure, id) {
                let error = jsonrpc::error_response(
                    id,
                    jsonrpc::UPSTREAM_UNAVAILABLE,
                    &format!("upstream '{name}': {reason}"),
                    Some(json!({ "server": &*name })),
                );
                inbox.deliver(error, None);
            }
        })
    }
}

impl Outbox for PostOutbox {
    fn exchange(&self, msg: Value) -> BoxFuture<'static, ()> {
        self.post(msg)
    }
}

pub async fn connect(
    name: &str,
    config: &UpstreamConfig,
    egress: Option<&Egress>,
    inbox: Inbox,
) -> Result<TransportHandle, String> {
    let stream_endpoint = upstream_url(config, egress)?;
    let url = stream_endpoint.url.clone();
    let client = HttpClient::new(egress);
    let mut headers = base_headers(config, &stream_endpoint)?;
    let mut get_headers = headers.clone();
    get_headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let response = client
        .send(http_client::request(
            Method::GET,
            &stream_endpoint,
            get_headers,
            Bytes::new(),
        ))
        .await
        .map_err(|e| format!("cannot reach {}: {e}", display_url(&url)))?;
    if !response.status().is_success() {
        return Err(format!(
            "SSE endpoint: {}",
            status_failure(response.status())
        ));
    }
    let mut events = SseStream::new(Bounded::events(
        response.into_body(),
        config.max_message_bytes,
    ));
    let endpoint = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| e.to_string())?;
            if event.event.as_deref() == Some("endpoint") {
                let data = event.data.unwrap_or_default();
                return url
                    .join(data.trim())
                    .map_err(|e| format!("bad endpoint event: {e}"));
            }
        }
        Err("stream ended before the endpoint event".to_string())
    })
    .await
    .map_err(|_| "no endpoint event within 10 s".to_string())??;
    if endpoint.origin() != url.origin() {
        return Err(format!(
            "endpoint {} is not on the server's origin",
            display_url(&endpoint)
        ));
    }
    // `headers` carries the stream URL's credentials; they hold for its origin.
    let endpoint = Endpoint::parse(endpoint)?;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

    let stop = CancellationToken::new();
    let name = Arc::<str>::from(name);

    let reader_inbox = inbox.clone();
    let reader_stop = stop.clone();
    let reader_name = Arc::clone(&name);
    tokio::spawn(async move {
        let reason = loop {
            tokio::select! {
                _ = reader_stop.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
                        if reader_inbox.deliver_bytes(data.into(), None).is_err() {
                            tracing::warn!(upstream = %reader_name, "upstream sent a non-JSON SSE event");
                        }
                        transport::delivered().await;
                    }
                    Some(Err(e)) => break match message_limit::too_large(&e) {
                        Some(too_large) => format!("SSE stream sent {too_large}"),
                        None => format!("SSE stream broke: {e}"),
                    },
                    None => break "SSE stream ended".to_string(),
                }
            }
        };
        reader_inbox.close(reason);
    });

    Ok(TransportHandle {
        outbox: Arc::new(PostOutbox {
            client,
            endpoint,
            headers,
            name,
            inbox,
        }),
        shutdown: Box::new(move || Box::pin(async move { stop.cancel() })),
    })
}
