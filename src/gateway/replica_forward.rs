//! Carries a request to the replica that holds what it names: a 2026-07-28 MRTR retry to
//! the one that parked its call, a `tasks/…` request to the one whose upstream session
//! runs its task, a stream resumption (`Last-Event-ID`) to the one holding the stream, a
//! client's answer to a server request to the one whose upstream waits for it.
//!
//! A parked call lives in the memory of the replica that parked it ([`super::mrtr`]), a
//! task on the upstream session of the replica that created it ([`super::tasks`]), a
//! session's streams and the server requests relayed on them in the memory of the replica
//! that made them. The requests that follow carry no session id a load balancer could
//! route by, or one it routes elsewhere after a rescale (nginx hashes the session id over
//! the replicas there are), so behind nginx they land on any replica. The retry's
//! `requestState` and the task's id seal the address the first request reached its
//! replica at; event ids and the ids of relayed server requests end in a mark
//! ([`OwnerMarks`]) sealing it. A replica that receives one sealed with another address
//! passes the request on unchanged, as a reverse proxy would, and streams the answer back.
//!
//! The forwarding replica adds no trust: the one that holds the call checks the request as
//! it checks any client's (host, key, the state's binding to principal and request), and
//! only a process holding the session key can seal an address. A forwarded request is
//! marked, and a marked request is never forwarded again, so a misrouted address cannot
//! loop.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
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
use super::session::SessionCodec;
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
    /// A session's stream, for its client to resume.
    Stream,
    /// A server request relayed to a client, waiting for its answer.
    ServerRequest,
}

impl Held {
    fn label(self) -> &'static str {
        match self {
            Self::ParkedCall => "retry",
            Self::Task => "task",
            Self::Stream => "stream",
            Self::ServerRequest => "server_request",
        }
    }

    /// What the client is told when the holding replica cannot be reached.
    pub fn unreachable(self) -> &'static str {
        match self {
            Self::ParkedCall => {
                "Invalid params: requestState was issued by another gateway replica, which could not be reached; send the request again without it"
            }
            Self::Task => {
                "Invalid params: the task is held by another gateway replica, which could not be reached; its server session went with it"
            }
            Self::Stream => {
                "the gateway replica holding the stream could not be reached; what it held went with it"
            }
            Self::ServerRequest => {
                "Bad Request: the server request is held by another gateway replica, which could not be reached; the call waiting for this answer went with it"
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

/// The replica holding what `marked_id` (an event id, a relayed server request's id)
/// names, when its mark names one other than this; a request another replica carried here
/// already is answered here.
pub fn marked_elsewhere(
    gw: &Gateway,
    marked_id: &str,
    held: Held,
    headers: &HeaderMap,
    served_at: Option<SocketAddr>,
) -> Option<Owner> {
    if headers.contains_key(FORWARDED) {
        return None;
    }
    let addr = gw.owner_marks.elsewhere(marked_id, served_at)?;
    // What it holds is answered at once: a stream resumed, an answer taken.
    let works_within = Duration::ZERO;
    Some(Owner {
        addr,
        held,
        works_within,
    })
}

/// Sends the JSON-RPC request (`uri`, `headers`, `body` as the client sent them) to
/// `owner` and returns its answer; if `owner` cannot be reached, the error that tells the
/// client why.
pub async fn forward(
    owner: Owner,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
    id: &Value,
) -> Response {
    match carry(owner, Method::POST, uri, headers, body).await {
        Some(response) => response,
        None => json_response(
            StatusCode::OK,
            &jsonrpc::error_response(id, jsonrpc::INVALID_PARAMS, owner.held.unreachable(), None),
        ),
    }
}

/// Sends the request to `owner` and returns its answer; `None` (counted and logged) when
/// `owner` cannot be reached, for the caller to say so or to do without.
pub async fn carry(
    owner: Owner,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Option<Response> {
    let held = owner.held.label();
    match send(owner, method, uri, headers, body).await {
        Ok(response) => {
            metrics::counter!(m::REQUESTS_FORWARDED, "held" => held, "outcome" => "forwarded")
                .increment(1);
            tracing::debug!(replica = %owner.addr, held, "carried a request to the replica holding what it names");
            Some(response)
        }
        Err(error) => {
            metrics::counter!(m::REQUESTS_FORWARDED, "held" => held, "outcome" => "unreachable")
                .increment(1);
            tracing::warn!(replica = %owner.addr, held, %error, "could not carry a request to the replica holding what it names");
            None
        }
    }
}

async fn send(
    owner: Owner,
    method: Method,
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
    *request.method_mut() = method;
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

/// What an owner mark seals, and nothing else: a mark opens for no other purpose, nor
/// another sealed value as a mark.
const MARK_PURPOSE: &[u8] = b"gantry-replica-mark-v1";

/// Separates an id from the mark of the replica that gave it: not a character of the
/// mark (base64url), so the last one found is the mark's.
pub const MARK_SEPARATOR: char = '.';

/// Addresses a process may be reached at whose marks are kept; past that (a process
/// reached at many addresses) they are sealed again.
const MAX_MARKED_ADDRESSES: usize = 16;

/// The marks that end the ids this replica hands out for what it holds in memory (event
/// ids, relayed server requests' ids), naming it by the address a client's request
/// reached it at. Sealed, so the address stays the gateway's (an internal address is not
/// the client's to know), and so that only a gateway holding the session key makes one
/// (a replica carries requests to the address a mark names: a forged one must not make
/// it connect anywhere). One mark per address: it says which replica, no more.
pub struct OwnerMarks {
    codec: SessionCodec,
    sealed: Mutex<Vec<(SocketAddr, Arc<str>)>>,
}

impl OwnerMarks {
    pub fn new(codec: SessionCodec) -> Self {
        Self {
            codec,
            sealed: Mutex::default(),
        }
    }

    /// The mark for what a request that reached this replica at `served_at` leaves here;
    /// `None` where a request has no address (the REST bridge's calls).
    pub fn mark(&self, served_at: Option<SocketAddr>) -> Option<Arc<str>> {
        let addr = served_at?;
        let mut sealed = self.sealed.lock().unwrap();
        if let Some((_, mark)) = sealed.iter().find(|(a, _)| *a == addr) {
            return Some(Arc::clone(mark));
        }
        if sealed.len() >= MAX_MARKED_ADDRESSES {
            sealed.clear();
        }
        let mark: Arc<str> = self
            .codec
            .seal_bytes(&addr_bytes(addr), MARK_PURPOSE)
            .into();
        sealed.push((addr, Arc::clone(&mark)));
        Some(mark)
    }

    /// `id` with `mark` after it.
    pub fn marked(mut id: String, mark: Option<&str>) -> String {
        if let Some(mark) = mark {
            id.push(MARK_SEPARATOR);
            id.push_str(mark);
        }
        id
    }

    /// The replica that gave `id`, when its mark names one other than this replica at
    /// `served_at`; `None` for an id without a mark, or one this gateway did not seal.
    pub fn elsewhere(&self, id: &str, served_at: Option<SocketAddr>) -> Option<SocketAddr> {
        let (_, mark) = id.rsplit_once(MARK_SEPARATOR)?;
        let addr = addr_of(&self.codec.open_bytes(mark, MARK_PURPOSE)?)?;
        (Some(addr) != served_at).then_some(addr)
    }
}

/// An address as few bytes as it takes (IP, then port): a mark ends every event id, and
/// sealing adds 28 bytes of its own.
fn addr_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut bytes = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    bytes
}

fn addr_of(bytes: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = bytes.split_at_checked(bytes.len().checked_sub(2)?)?;
    let ip = match ip.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(ip).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(ip).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

/// `id` without the mark of the replica that gave it.
pub fn unmarked(id: &str) -> &str {
    id.rsplit_once(MARK_SEPARATOR).map_or(id, |(id, _)| id)
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

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_mark_names_the_replica_that_gave_the_id_to_every_replica_but_itself() {
        let codec = SessionCodec::random();
        let (here, there) = (OwnerMarks::new(codec.clone()), OwnerMarks::new(codec));
        let mark = here.mark(addr("10.0.0.5:8080"));
        assert_eq!(
            mark,
            here.mark(addr("10.0.0.5:8080")),
            "one mark per address"
        );
        let id = OwnerMarks::marked("c00ff-3".into(), mark.as_deref());
        assert!(!id.contains("10.0.0.5"), "the address is sealed: {id}");
        assert_eq!(unmarked(&id), "c00ff-3");
        assert_eq!(
            there.elsewhere(&id, addr("10.0.0.6:8080")),
            addr("10.0.0.5:8080")
        );
        assert_eq!(here.elsewhere(&id, addr("10.0.0.5:8080")), None, "its own");
        assert_eq!(here.mark(None), None, "no address, no mark");
        assert_eq!(OwnerMarks::marked("c00ff-3".into(), None), "c00ff-3");
    }

    #[test]
    fn only_a_mark_sealed_with_the_session_key_names_a_replica() {
        let ours = OwnerMarks::new(SessionCodec::random());
        let theirs = OwnerMarks::new(SessionCodec::random());
        let foreign =
            OwnerMarks::marked("g1-1".into(), theirs.mark(addr("10.0.0.9:80")).as_deref());
        assert_eq!(ours.elsewhere(&foreign, addr("10.0.0.5:8080")), None);
        let mark = ours.mark(addr("10.0.0.9:80")).unwrap();
        let mut tampered = mark.to_string();
        tampered.replace_range(..1, if tampered.starts_with('A') { "B" } else { "A" });
        for id in ["g1-1", "g1-1.", "g1-1.garbage", &format!("g1-1.{tampered}")] {
            assert_eq!(ours.elsewhere(id, addr("10.0.0.5:8080")), None, "{id}");
        }
        // Another purpose's sealed value is no mark, though sealed with the same key.
        let codec = SessionCodec::random();
        let marks = OwnerMarks::new(codec.clone());
        let addr = "10.0.0.9:80".parse::<SocketAddr>().unwrap();
        let other = codec.seal_bytes(&addr_bytes(addr), b"other");
        assert_eq!(marks.elsewhere(&format!("g1-1.{other}"), None), None);
    }

    #[test]
    fn addresses_travel_in_few_bytes_and_nothing_else_reads_as_one() {
        for addr in ["10.0.0.5:8080", "[fd00::1:2]:443", "127.0.0.1:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(addr_of(&addr_bytes(addr)), Some(addr));
        }
        assert_eq!(addr_bytes("10.0.0.5:8080".parse().unwrap()).len(), 6);
        for bad in [&[][..], &[1], &[1, 2], &[1, 2, 3, 4, 5], &[0; 19]] {
            assert_eq!(addr_of(bad), None, "{bad:?}");
        }
        let mark = OwnerMarks::new(SessionCodec::random()).mark(addr("10.0.0.5:8080"));
        assert_eq!(
            mark.unwrap().len(),
            46,
            "12 bytes of nonce, 6 of address, 16 of tag"
        );
    }
}
