//! The HTTP client of remote upstreams (Streamable HTTP and HTTP+SSE): hyper's connections
//! with rustls, pooled per upstream.
//!
//! reqwest runs on this same client but wraps every request in layers the gateway has no
//! use for — the URL parsed again, redirect and retry policies, proxy matching — which
//! cost about a sixth of a proxied call's CPU. The gateway never follows a redirect (it
//! would carry the request to a URL nobody checked) and retries nothing itself.

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{AUTHORIZATION, HOST, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::egress::Egress;
use super::message_limit::{Bounded, BoundedError};

pub type Request = http::Request<Full<Bytes>>;
pub type Response = http::Response<Body>;

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
///
/// An HTTP/1.1 connection is not given a task of its own either: whoever holds it drives
/// it — the request until its response's head arrives, then the response's [`Body`] —
/// so a call's upstream I/O runs in the caller's task, with no wake-ups between tasks.
/// An HTTP/2 connection carries many requests at once and runs in its own task.
#[derive(Clone)]
pub struct HttpClient {
    connector: HttpsConnector<HttpConnector<Resolver>>,
    pool: Arc<Mutex<Pool>>,
}

/// Connections to the upstream's origin.
#[derive(Default)]
struct Pool {
    /// Idle HTTP/1.1 connections; one in use is held by its request or response body.
    /// Boxed: a connection's state is large (1.8 kB) and moves in and out of the pool,
    /// into its request and response body, on every request.
    #[allow(clippy::vec_box)]
    http1: Vec<Box<Http1>>,
    /// The HTTP/2 connection, when the server chose HTTP/2 (ALPN): one carries every request.
    http2: Option<http2::SendRequest<Full<Bytes>>>,
}

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// An HTTP/1.1 connection: the handle requests are sent through, and the future that
/// does its reading and writing, polled by whoever holds it.
struct Http1 {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    last_used: Instant,
}

struct Driver {
    conn: http1::Connection<Io, Full<Bytes>>,
    /// The connection has finished: closed, or broken.
    ended: bool,
}

impl Driver {
    /// Polls `half` — what waits on the connection: readiness for a request, the
    /// response's head, its body — and when it is pending, polls the connection's reading
    /// and writing and then `half` again, so what the connection has just read is taken
    /// at once. Once the connection has ended, `half` reports how.
    fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut half: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if let Poll::Ready(value) = half(cx) {
            return Poll::Ready(value);
        }
        if !self.ended {
            if let Poll::Ready(result) = Pin::new(&mut self.conn).poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %error_chain(&e), "upstream HTTP/1.1 connection ended");
                }
                self.ended = true;
            }
        }
        half(cx)
    }
}

impl Http1 {
    /// Ready for a request, or false when the connection has closed.
    async fn ready(&mut self) -> bool {
        // Driven, the connection finishes its previous exchange and becomes ready.
        poll_fn(
            |cx| match self.driver.poll_with(cx, |cx| self.sender.poll_ready(cx)) {
                Poll::Ready(result) => Poll::Ready(result.is_ok()),
                Poll::Pending if self.driver.ended => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            },
        )
        .await
    }
}

/// HTTP/1.1 connections idle for this long are closed when the pool is next used (servers
/// close idle connections sooner: Node after 5 s, nginx after 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept for reuse; more are made under load and closed after use.
const MAX_HTTP1: usize = 512;

enum Sender {
    Http1(Box<Http1>),
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

    /// The HTTP/2 connection, or the most recently used idle HTTP/1.1 one; closed and
    /// long-idle ones are dropped on the way.
    fn checkout(&self) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap();
        if let Some(h2) = &pool.http2 {
            if !h2.is_closed() {
                return Some(Sender::Http2(h2.clone()));
            }
            pool.http2 = None;
        }
        let now = Instant::now();
        // Idle connections are not driven: a server's close is seen when one is next used.
        pool.http1
            .retain(|c| now.duration_since(c.last_used) < IDLE_TIMEOUT);
        pool.http1.pop().map(Sender::Http1)
    }

    /// Takes an HTTP/1.1 connection back once its response has been read to the end.
    fn checkin(pool: &Mutex<Pool>, mut conn: Box<Http1>) {
        if conn.driver.ended {
            return;
        }
        conn.last_used = Instant::now();
        let mut pool = pool.lock().unwrap();
        if pool.http1.len() < MAX_HTTP1 {
            pool.http1.push(conn);
        }
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
        let (sender, conn) = http1::handshake(io).await.map_err(|e| error_chain(&e))?;
        Ok(Sender::Http1(Box::new(Http1 {
            sender,
            driver: Driver { conn, ended: false },
            last_used: Instant::now(),
        })))
    }

    async fn send_on(&self, sender: Sender, mut request: Request) -> Result<Response, Failure> {
        match sender {
            Sender::Http1(mut conn) => {
                // HTTP/1.1 names the target by path; the origin is the connection's.
                let target = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .expect("a path of a parsed URI parses");
                let absolute = std::mem::replace(request.uri_mut(), target);
                if !conn.ready().await {
                    *request.uri_mut() = absolute;
                    return Err(Failure::NotSent(request));
                }
                let mut sent = std::pin::pin!(conn.sender.try_send_request(request));
                let sent =
                    poll_fn(|cx| conn.driver.poll_with(cx, |cx| sent.as_mut().poll(cx))).await;
                match sent {
                    Ok(response) => Ok(response.map(|incoming| Body {
                        incoming,
                        held: Some((conn, Arc::clone(&self.pool))),
                    })),
                    Err(mut e) => Err(match e.take_message() {
                        Some(mut unsent) => {
                            *unsent.uri_mut() = absolute;
                            Failure::NotSent(unsent)
                        }
                        None => Failure::Failed(error_chain(&e.into_error())),
                    }),
                }
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
                    .map(|response| response.map(Body::from))
                    .map_err(|mut e| match e.take_message() {
                        Some(request) => unsent(request),
                        None => Failure::Failed(error_chain(&e.into_error())),
                    })
            }
        }
    }
}

/// A response's body. Over HTTP/1.1 it holds its connection and drives it while it is
/// read; read to its end, it puts the connection back in the pool (dropped before its
/// end, see its `Drop`).
pub struct Body {
    incoming: Incoming,
    /// The HTTP/1.1 connection and the pool it goes back to.
    held: Option<(Box<Http1>, Arc<Mutex<Pool>>)>,
}

impl From<Incoming> for Body {
    fn from(incoming: Incoming) -> Self {
        Self {
            incoming,
            held: None,
        }
    }
}

impl Body {
    fn release(&mut self) {
        if let Some((conn, pool)) = self.held.take() {
            HttpClient::checkin(&pool, conn);
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let incoming = &mut this.incoming;
        let frame = ready!(match &mut this.held {
            Some((conn, _)) => conn
                .driver
                .poll_with(cx, |cx| Pin::new(&mut *incoming).poll_frame(cx)),
            None => Pin::new(incoming).poll_frame(cx),
        });
        if frame.is_none() || this.incoming.is_end_stream() {
            this.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// What a body dropped before its end may still read in the dropping task (see `Drop`).
const READ_ON_DROP: usize = 16 * 1024;
/// How long a connection whose body was dropped is driven for hyper to read or refuse
/// the rest.
const DISCARD_FOR: Duration = Duration::from_secs(1);

impl Drop for Body {
    /// A body dropped before its end would take its connection with it. What has arrived
    /// already (the "Accepted" of a 202, the end of an answered stream) is read here, and
    /// the connection goes back to the pool. Otherwise hyper, driven off the caller's
    /// path, reads a rest that is already there or closes the connection.
    fn drop(&mut self) {
        if self.held.is_none() {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read = 0;
        while self.held.is_some() && read <= READ_ON_DROP {
            match Pin::new(&mut *self).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, Bytes::len);
                }
                Poll::Ready(_) => return,
                Poll::Pending => break,
            }
        }
        let Some((mut conn, pool)) = self.held.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // By the time the task runs, the body's half of the connection is gone: hyper
        // then drains what has arrived or closes.
        runtime.spawn(async move {
            if let Ok(true) = tokio::time::timeout(DISCARD_FOR, conn.ready()).await {
                HttpClient::checkin(&pool, conn);
            }
        });
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

/// The whole body of a response, if it is at most `limit` bytes (see `message_limit`).
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BoundedError> {
    Ok(Bounded::body(body, limit).collect().await?.to_bytes())
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A plain HTTP/1.1 server: answers each request with `response`, keeps a connection
    /// open for `per_connection` requests and then closes it (without announcing it, as
    /// servers closing idle connections do). Reports each connection's number of answers
    /// when it closes.
    async fn server(
        response: &'static str,
        per_connection: usize,
    ) -> (String, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let (closed, report) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let closed = closed.clone();
                tokio::spawn(async move {
                    let answered = answer(socket, response, per_connection).await;
                    let _ = closed.send(answered);
                });
            }
        });
        (url, report)
    }

    async fn answer(mut socket: TcpStream, response: &str, per_connection: usize) -> usize {
        let mut buf = Vec::new();
        let mut answered = 0;
        while answered < per_connection {
            let head_end = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return answered,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            buf.drain(..head_end);
            socket.write_all(response.as_bytes()).await.unwrap();
            answered += 1;
        }
        answered
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn get(url: &str) -> Request {
        let endpoint = Endpoint::parse(url::Url::parse(url).unwrap()).unwrap();
        let mut headers = http::HeaderMap::new();
        endpoint.add_defaults(&mut headers);
        request(http::Method::GET, &endpoint, headers, Bytes::new())
    }

    async fn get_text(client: &HttpClient, url: &str) -> String {
        let response = client.send(get(url)).await.unwrap();
        let body = read_body(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        let (url, mut closed) = server(OK, usize::MAX).await;
        let client = HttpClient::new(None);
        for _ in 0..5 {
            assert_eq!(get_text(&client, &url).await, "ok");
        }
        drop(client);
        assert_eq!(closed.recv().await, Some(5), "all five on one connection");
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_replaced_unseen() {
        let (url, mut closed) = server(OK, 1).await;
        let client = HttpClient::new(None);
        assert_eq!(get_text(&client, &url).await, "ok");
        // The server has closed the pooled connection before the next request.
        assert_eq!(closed.recv().await, Some(1));
        assert_eq!(get_text(&client, &url).await, "ok");
        assert_eq!(closed.recv().await, Some(1));
    }

    #[tokio::test]
    async fn a_body_dropped_after_it_arrived_leaves_its_connection_reusable() {
        let (url, mut closed) = server(OK, usize::MAX).await;
        let client = HttpClient::new(None);
        for _ in 0..3 {
            // The head alone, as for a 202 whose body nobody needs.
            let response = client.send(get(&url)).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        assert_eq!(get_text(&client, &url).await, "ok");
        drop(client);
        assert_eq!(closed.recv().await, Some(4), "all four on one connection");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        // Twelve bytes promised, two sent: the rest never comes.
        let (url, mut closed) = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nok",
            usize::MAX,
        )
        .await;
        let client = HttpClient::new(None);
        let response = client.send(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        assert_eq!(closed.recv().await, Some(1));
        assert!(client.pool.lock().unwrap().http1.is_empty());
        // The next request gets a new connection.
        let response = client.send(get(&url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_leave_them_pooled() {
        let (url, mut closed) = server(OK, usize::MAX).await;
        let client = HttpClient::new(None);
        let calls = (0..8).map(|_| get_text(&client, &url));
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|a| a == "ok"));
        let pooled = client.pool.lock().unwrap().http1.len();
        assert!((1..=8).contains(&pooled), "{pooled} pooled");
        // Later requests reuse them: no new connection is made.
        for _ in 0..8 {
            assert_eq!(get_text(&client, &url).await, "ok");
        }
        assert_eq!(client.pool.lock().unwrap().http1.len(), pooled);
        drop(client);
        let mut answered = 0;
        for _ in 0..pooled {
            answered += closed.recv().await.unwrap();
        }
        assert_eq!(
            answered, 16,
            "every answer came over the {pooled} pooled connections"
        );
    }

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
