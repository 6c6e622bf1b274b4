//! The HTTP client of remote upstreams (Streamable HTTP and HTTP+SSE): hyper's connections
//! with rustls, pooled per upstream.
//!
//! reqwest runs on this same client but wraps every request in layers the gateway has no
//! use for — the URL parsed again, redirect and retry policies, proxy matching — which
//! cost about a sixth of a proxied call's CPU. The gateway never follows a redirect (it
//! would carry the request to a URL nobody checked) and retries nothing itself.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{AUTHORIZATION, HOST, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::egress::Egress;

pub type Request = http::Request<Full<Bytes>>;
pub type Response = http::Response<Incoming>;

/// An upstream's URL, parsed once: `url` for display, joins and origin checks, `uri` for
/// requests. Credentials in the URL (`https://user:pass@host/`) become a Basic
/// `Authorization` header, as browsers and reqwest do, and are never part of `uri`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: url::Url,
    pub uri: http::Uri,
    pub basic_auth: Option<HeaderValue>,
    /// The `Host` header, written once rather than by the client on every request.
    pub host: HeaderValue,
}

impl Endpoint {
    pub fn parse(url: url::Url) -> Result<Self, String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "unsupported URL scheme '{}' (http or https)",
                url.scheme()
            ));
        }
        let basic_auth = (!url.username().is_empty() || url.password().is_some()).then(|| {
            let user = percent_decoded(url.username());
            let password = url.password().map(percent_decoded).unwrap_or_default();
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                .expect("base64 is a valid header value");
            value.set_sensitive(true);
            value
        });
        let mut bare = url.clone();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        bare.set_fragment(None);
        let uri = http::Uri::try_from(bare.as_str()).map_err(|e| e.to_string())?;
        let host_name = url.host_str().ok_or("the URL has no host")?;
        let host = match url.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        let host = HeaderValue::try_from(host).map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            uri,
            basic_auth,
            host,
        })
    }

    /// Adds `Host` and the URL's credentials to `headers`, unless configured: the
    /// configured ones win.
    pub fn add_defaults(&self, headers: &mut http::HeaderMap) {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, self.host.clone());
        }
        if let Some(auth) = &self.basic_auth {
            if !headers.contains_key(AUTHORIZATION) {
                headers.insert(AUTHORIZATION, auth.clone());
            }
        }
    }
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Resolves upstream host names; for a registered server, through its egress rule, so
/// a name that resolves to a refused address is refused on every connection (DNS
/// rebinding). Addresses written in a URL do not reach a resolver: they are checked
/// before connecting ([`Egress::address_refusal`]).
#[derive(Clone)]
pub struct Resolver {
    egress: Option<Egress>,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let egress = self.egress.clone();
        Box::pin(async move {
            let host = name.as_str();
            // The port is the connector's; resolution only needs the name.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            if let Some(refusal) = egress.and_then(|e| e.resolved_refusal(host, &addrs)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    refusal,
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// The TLS settings every upstream client shares: the platform's trust store (loaded
/// once), HTTP/2 and HTTP/1.1 offered by ALPN.
fn https_connector(http: HttpConnector<Resolver>) -> HttpsConnector<HttpConnector<Resolver>> {
    static TLS: OnceLock<rustls::ClientConfig> = OnceLock::new();
    let tls = TLS.get_or_init(|| {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            use hyper_rustls::ConfigBuilderExt;
            b.try_with_platform_verifier()
        })
        .expect("the platform's TLS trust store loads")
        .with_no_client_auth()
    });
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// One remote upstream's client: its own pool of connections to that one origin.
///
/// hyper-util's pooled client keys its pool by scheme and authority (hashed per request,
/// the authority byte by byte), spawns a task per HTTP/1.1 request to put the connection
/// back, and moves its large futures around: about 9k instructions of a proxied call's
/// ~135k on the request thread. Every upstream talks to a single origin, so the pool is a
/// plain list of hyper connections.
#[derive(Clone)]
pub struct HttpClient {
    connector: HttpsConnector<HttpConnector<Resolver>>,
    pool: Arc<Mutex<Pool>>,
}

/// Connections to the upstream's origin.
#[derive(Default)]
struct Pool {
    /// HTTP/1.1 connections, idle or busy: a busy one is not ready and is passed over.
    http1: Vec<Http1>,
    /// The HTTP/2 connection, when the server chose HTTP/2 (ALPN): one carries every request.
    http2: Option<http2::SendRequest<Full<Bytes>>>,
}

struct Http1 {
    sender: http1::SendRequest<Full<Bytes>>,
    last_used: Instant,
}

/// HTTP/1.1 connections idle for this long are closed when the pool is next used (servers
/// close idle connections sooner: Node after 5 s, nginx after 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Open HTTP/1.1 connections kept for reuse; more are made under load and closed after use.
const MAX_HTTP1: usize = 512;

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// Why a request got no response: `NotSent` gives the request back (the connection closed
/// before it was written), so it can go to a new connection. Not boxed: it is returned
/// once per request, and a box would be an allocation on every call's path.
#[allow(clippy::large_enum_variant)]
enum Failure {
    NotSent(Request),
    Failed(String),
}

impl HttpClient {
    /// `egress` restricts a registered server's addresses (see [`Egress`]).
    pub fn new(egress: Option<&Egress>) -> Self {
        let mut http = HttpConnector::new_with_resolver(Resolver {
            egress: egress.cloned(),
        });
        // The TLS connector wraps this one, so https URLs must pass through it.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        Self {
            connector: https_connector(http),
            pool: Arc::default(),
        }
    }

    /// Sends `request` on a pooled connection, or on a new one when none is ready or the
    /// pooled one turned out closed before the request was written.
    pub async fn send(&self, mut request: Request) -> Result<Response, String> {
        if let Some(sender) = self.checkout() {
            match self.send_on(sender, request).await {
                Err(Failure::NotSent(unsent)) => request = unsent,
                Err(Failure::Failed(e)) => return Err(e),
                Ok(response) => return Ok(response),
            }
        }
        let sender = self.connect(request.uri().clone()).await?;
        match self.send_on(sender, request).await {
            Ok(response) => Ok(response),
            Err(Failure::NotSent(_)) => Err("the new connection closed at once".into()),
            Err(Failure::Failed(e)) => Err(e),
        }
    }

    /// A ready connection from the pool; closed and long-idle ones are dropped on the way.
    fn checkout(&self) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap();
        if let Some(h2) = &pool.http2 {
            if !h2.is_closed() {
                return Some(Sender::Http2(h2.clone()));
            }
            pool.http2 = None;
        }
        let now = Instant::now();
        pool.http1.retain_mut(|c| {
            if c.sender.is_closed() {
                return false;
            }
            // A busy connection (a response still being read, an SSE stream) is in use:
            // its idle time starts when it is next seen ready, not when its request began.
            if !c.sender.is_ready() {
                c.last_used = now;
                return true;
            }
            now.duration_since(c.last_used) < IDLE_TIMEOUT
        });
        let ready = pool.http1.iter().rposition(|c| c.sender.is_ready())?;
        Some(Sender::Http1(pool.http1.swap_remove(ready).sender))
    }

    async fn connect(&self, uri: http::Uri) -> Result<Sender, String> {
        use tower::ServiceExt;
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|e| format!("connect: {}", error_chain(&*e)))?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| error_chain(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %error_chain(&e), "upstream HTTP/2 connection ended");
                }
            });
            self.pool.lock().unwrap().http2 = Some(sender.clone());
            return Ok(Sender::Http2(sender));
        }
        let (sender, connection) = http1::handshake(io).await.map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %error_chain(&e), "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Sender::Http1(sender))
    }

    async fn send_on(&self, sender: Sender, mut request: Request) -> Result<Response, Failure> {
        match sender {
            Sender::Http1(mut sender) => {
                // HTTP/1.1 names the target by path; the origin is the connection's.
                let target = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .expect("a path of a parsed URI parses");
                let absolute = std::mem::replace(request.uri_mut(), target);
                if sender.ready().await.is_err() {
                    *request.uri_mut() = absolute;
                    return Err(Failure::NotSent(request));
                }
                let sent = sender.try_send_request(request).await;
                // Back in the pool at once: it is busy (not ready) until the response's body
                // has been read, and connections that are not ready are passed over.
                let mut pool = self.pool.lock().unwrap();
                if pool.http1.len() < MAX_HTTP1 {
                    pool.http1.push(Http1 {
                        sender,
                        last_used: Instant::now(),
                    });
                }
                drop(pool);
                sent.map_err(|mut e| match e.take_message() {
                    Some(mut unsent) => {
                        *unsent.uri_mut() = absolute;
                        Failure::NotSent(unsent)
                    }
                    None => Failure::Failed(error_chain(&e.into_error())),
                })
            }
            Sender::Http2(mut sender) => {
                // HTTP/2 carries the origin in `:authority` (RFC 9113 8.3.1); with a `Host`
                // header as well, nginx 1.22 left the request unanswered in our tests. Put
                // back if the request goes to a new connection instead.
                let host = request.headers_mut().remove(HOST);
                let unsent = |mut request: Request| {
                    if let Some(host) = host.clone() {
                        request.headers_mut().insert(HOST, host);
                    }
                    Failure::NotSent(request)
                };
                if sender.ready().await.is_err() {
                    return Err(unsent(request));
                }
                sender
                    .try_send_request(request)
                    .await
                    .map_err(|mut e| match e.take_message() {
                        Some(request) => unsent(request),
                        None => Failure::Failed(error_chain(&e.into_error())),
                    })
            }
        }
    }
}

/// A request to `endpoint` with `body` (empty for GET and DELETE).
pub fn request(
    method: http::Method,
    endpoint: &Endpoint,
    headers: http::HeaderMap,
    body: Bytes,
) -> Request {
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = endpoint.uri.clone();
    *request.headers_mut() = headers;
    request
}

/// The whole body of a response.
pub async fn read_body(body: Incoming) -> Result<Bytes, String> {
    body.collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| error_chain(&e))
}

/// An error with its causes: "client error (Connect)" alone does not say that the
/// connection was refused, or which address the egress rule refused.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_become_basic_auth_and_leave_the_uri() {
        let url = url::Url::parse("https://us%40er:p%3Ass@mcp.example.com/v1/mcp?x=1").unwrap();
        let endpoint = Endpoint::parse(url).unwrap();
        assert_eq!(
            endpoint.uri.to_string(),
            "https://mcp.example.com/v1/mcp?x=1"
        );
        assert_eq!(endpoint.host, "mcp.example.com");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("us@er:p:ss")
        );
        assert_eq!(endpoint.basic_auth.unwrap(), expected.as_str());
        assert!(Endpoint::parse(url::Url::parse("ftp://example.com/").unwrap()).is_err());
        let v6 = Endpoint::parse(url::Url::parse("http://[::1]:8080/mcp").unwrap()).unwrap();
        assert_eq!(v6.host, "[::1]:8080");
    }
}
