//! Carries a request to the replica that holds what it names: a 2026-07-28 MRTR retry to
//! the one that parked its call, a `tasks/…` request to the one whose upstream session
//! runs its task.
//!
//! A parked call lives in the memory of the replica that parked it ([`super::mrtr`]), and
//! a task on the upstream session of the replica that created it ([`super::tasks`]); the
//! requests that follow carry no session id a load balancer could route by (or one it
//! routes elsewhere after a rescale), so behind nginx they land on any replica. The
//! retry's `requestState` and the task's id seal the address the first request reached
//! its replica at; a replica that receives one sealed with another address passes the
//! request on unchanged, as a reverse proxy would, and streams the answer back.
//!
//! The forwarding replica adds no trust: the one that holds the call checks the request as
//! it checks any client's (host, key, the state's binding to principal and request), and
//! only a process holding the session key can seal an address. A forwarded request is
//! marked, and a marked request is never forwarded again, so a misrouted address cannot
//! loop.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpStream;

use super::auth::Principal;
use super::http::json_response;
use super::{Gateway, jsonrpc, mrtr, tasks};
use crate::telemetry::metrics as m;

/// Marks a request one replica carried to another.
pub const FORWARDED: HeaderName = HeaderName::from_static("gantry-forwarded");

/// A replica on the same network answers a connection at once; one that does not is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past its own bound on the work the holding replica's answer may take to begin.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// Headers of one connection, not of the request or answer they travel with (RFC 9110
/// §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What a carried request names, held by another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A call parked for an MRTR retry.
    ParkedCall,
    /// A task.
    Task,
}

impl Held {
    fn label(self) -> &'static str {
        match self {
            Self::ParkedCall => "retry",
            Self::Task => "task",
        }
    }

    /// What the client is told when the holding replica cannot be reached.
    fn unreachable(self) -> &'static str {
        match self {
            Self::ParkedCall => {
                "Invalid params: requestState was issued by another gateway replica, which could not be reached; send the request again without it"
            }
            Self::Task => {
                "Invalid params: the task is held by another gateway replica, which could not be reached; its server session went with it"
            }
        }
    }
}

/// The replica holding what a request names.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub addr: SocketAddr,
    pub held: Held,
    /// How long the holding replica may work on the request at most before it answers
    /// (with the result, or its own timeout).
    pub works_within: Duration,
}

/// The replica holding what a request names (a call parked for its retry, a task), when
/// that is not this process; a request another replica carried here already is answered
/// here, whatever it names.
pub fn held_elsewhere(
    gw: &Gateway,
    principal: &Principal,
    method: &str,
    body: &Map<String, Value>,
    headers: &HeaderMap,
    served_at: Option<SocketAddr>,
) -> Option<Owner> {
    let owner = mrtr::held_elsewhere(gw, principal, method, body, headers, served_at)
        .or_else(|| tasks::held_elsewhere(gw, principal, method, body, served_at))?;
    // Looked for last: most requests name nothing held anywhere.
    (!headers.contains_key(FORWARDED)).then_some(owner)
}

/// Sends the request (`uri`, `headers`, `body` as the client sent them) to `owner` and
/// returns its answer; if `owner` cannot be reached, the error that tells the client why.
pub async fn forward(
    owner: Owner,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
    id: &Value,
) -> Response {
    let held = owner.held.label();
    match send(owner, uri, headers, body).await {
        Ok(response) => {
            metrics::counter!(m::REQUESTS_FORWARDED, "held" => held, "outcome" => "forwarded")
                .increment(1);
            tracing::debug!(replica = %owner.addr, held, "carried a request to the replica holding what it names");
            response
        }
        Err(error) => {
            metrics::counter!(m::REQUESTS_FORWARDED, "held" => held, "outcome" => "unreachable")
                .increment(1);
            tracing::warn!(replica = %owner.addr, held, %error, "could not carry a request to the replica holding what it names");
            json_response(
                StatusCode::OK,
                &jsonrpc::error_response(
                    id,
                    jsonrpc::INVALID_PARAMS,
                    owner.held.unreachable(),
                    None,
                ),
            )
        }
    }
}

async fn send(
    owner: Owner,
    uri: &Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Response, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(owner.addr))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    // Without it every small event of a streamed answer waits on a delayed ACK.
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // Ends when the answer has been read, or dropped with a client that went away (which
    // closes the connection, and the holding replica cancels the call as for any client).
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to another replica ended with an error");
        }
    });
    strip_hop_by_hop(&mut headers);
    // hyper writes the body's length itself.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(FORWARDED, HeaderValue::from_static("1"));
    let path = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<Uri>()
        .map_err(|e| e.to_string())?;
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = path;
    *request.headers_mut() = headers;
    let wait = owner.works_within + ANSWER_GRACE;
    let answer = tokio::time::timeout(wait, sender.send_request(request))
        .await
        .map_err(|_| format!("no answer within {wait:?}"))?
        .map_err(|e| e.to_string())?;
    let (mut parts, incoming) = answer.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(incoming)))
}

/// Drops the headers of one connection: the standard ones, and those its `Connection`
/// header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Trace-Hop"),
        );
        headers.insert("x-trace-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        headers.insert("mcp-method", HeaderValue::from_static("tools/call"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "mcp-method"]);
    }
}
