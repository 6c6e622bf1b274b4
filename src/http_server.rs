//! Accepts TCP connections and serves the application on each with hyper, until told to
//! stop; then finishes what is in flight.
//!
//! In place of `axum::serve`, which times nothing: there a client that sends its request
//! slowly or never (slowloris), leaves a keep-alive connection idle, or stops reading its
//! answer, holds its connection, a file descriptor and what its answer holds for ever.
//! Here a connection that waits on its client for the read or write timeout is closed
//! ([`idle`]); a request whose answer is awaited from upstream is not timed, however long
//! it takes.
//!
//! HTTP/1.1 only: TLS and HTTP/2 end at the proxy in front (nginx), which speaks HTTP/1.1
//! to its upstreams; and the watchdog relies on HTTP/1.1 answering a connection's
//! requests one at a time.

mod idle;

pub use idle::Timeouts;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::telemetry::metrics as m;

/// The address a request's connection reached this process at (a request extension):
/// where another replica that shares the network reaches it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedAt(pub SocketAddr);

/// Serves `app` on every connection `listener` accepts until `stop` is cancelled; then
/// accepts no more, lets each connection finish the request it is answering (idle ones
/// close at once), and returns when all have closed. A timeout of `None` waits on clients
/// for ever, for a server reachable only through a proxy that times them out itself.
pub async fn serve<L, S>(mut listener: L, app: S, timeouts: Timeouts, stop: CancellationToken)
where
    L: Listener<Io = TcpStream>,
    S: tower::Service<http::Request<Body>, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = http1::Builder::new();
    // hyper times request heads only when given a timer; `idle` does that job instead.
    // Said outright, hyper does not warn that its 30 s default goes unused.
    builder.header_read_timeout(None);
    let connections = GracefulShutdown::new();
    loop {
        // `Listener::accept` retries failed accepts itself (after a pause when out of
        // file descriptors), so a failure here never ends the server.
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let activity = idle::Activity::new();
        let served_at = io.local_addr().ok().map(ServedAt);
        let service = app
            .clone()
            .map_request({
                let activity = Arc::clone(&activity);
                move |mut request: http::Request<Incoming>| {
                    if let Some(served_at) = served_at {
                        request.extensions_mut().insert(served_at);
                    }
                    request.map(|body| activity.request(body))
                }
            })
            .map_response({
                let activity = Arc::clone(&activity);
                move |response: axum::response::Response| response.map(|body| activity.answer(body))
            });
        let connection = builder.serve_connection(
            TokioIo::new(idle::Watched::new(io, &activity)),
            TowerToHyperService::new(service),
        );
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            let stalled = activity.stalled_for(timeouts);
            tokio::select! {
                ended = connection => {
                    // A client that goes away ends its own connection; nothing else is
                    // affected, so this is no more than a debug line.
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                // Dropping the connection closes it, and drops an answer its client stopped
                // taking (which cancels the upstream call, if it still runs).
                stall = stalled => {
                    let timeout = stall.as_str();
                    metrics::counter!(m::CONNECTIONS_TIMED_OUT, "timeout" => timeout).increment(1);
                    tracing::debug!(timeout, "closed a connection that waited on its client for the timeout");
                }
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}
