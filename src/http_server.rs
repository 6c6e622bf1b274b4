//! Accepts TCP connections and serves the application on each with hyper, until told to
//! stop; then finishes what is in flight.
//!
//! In place of `axum::serve`, which gives hyper no timer: without one hyper cannot time
//! out the reading of a request head, so a client that sends its head slowly or never
//! (slowloris), or a keep-alive connection left idle, holds its connection and a file
//! descriptor for ever. Here every connection has `header_read_timeout` to deliver
//! each request head, the wait between two requests included; a request being answered
//! is not timed by it, however long it takes.
//!
//! HTTP/1.1 only: TLS and HTTP/2 end at the proxy in front (nginx), which speaks HTTP/1.1
//! to its upstreams. An HTTP/1-or-2 server would first read the connection's opening
//! bytes to tell which, with no timeout, and a silent client would wait there for ever.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `app` on every connection `listener` accepts until `stop` is cancelled; then
/// accepts no more, lets each connection finish the request it is answering (idle ones
/// close at once), and returns when all have closed. `header_read_timeout: None` leaves
/// request heads untimed, for a server reachable only through a proxy that times them.
pub async fn serve<L, S>(
    mut listener: L,
    app: S,
    header_read_timeout: Option<Duration>,
    stop: CancellationToken,
) where
    L: Listener,
    S: tower::Service<http::Request<Body>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = http1::Builder::new();
    if let Some(timeout) = header_read_timeout {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
    } else {
        // Without a timer hyper times nothing; said outright, it does not warn that its
        // 30 s default goes unused.
        builder.header_read_timeout(None);
    }
    let connections = GracefulShutdown::new();
    loop {
        // `Listener::accept` retries failed accepts itself (after a pause when out of
        // file descriptors), so a failure here never ends the server.
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let service = app
            .clone()
            .map_request(|request: http::Request<Incoming>| request.map(Body::new));
        let connection =
            builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out ends its own connection; nothing else
            // is affected, so this is no more than a debug line.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}
