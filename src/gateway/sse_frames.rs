//! The bytes of the event streams gantry serves its clients.
//!
//! Written here rather than with axum's `Sse` because a resumable stream starts with a
//! priming event, an id with an empty `data:` line (2025-11-25), which axum cannot write
//! (it leaves the `data:` line out when the data is empty, and clients built on
//! `eventsource-parser`, the TypeScript SDK's, then never see the event nor its id).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::{Stream, StreamExt};
use http::{HeaderValue, header};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// One `message` event: `id` when the stream is resumable, `data` a JSON-RPC message's
/// compact JSON (never a line break) or empty for the priming event.
pub fn event(id: Option<&str>, data: &str) -> Bytes {
    debug_assert!(
        !data.contains(['\n', '\r']),
        "compact JSON has no line breaks"
    );
    let mut out = Vec::with_capacity(data.len() + id.map_or(0, str::len) + 32);
    out.extend_from_slice(b"event: message\n");
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A comment line: keeps idle proxies and clients from closing a quiet stream.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

/// The `text/event-stream` response carrying `events`, with a keep-alive comment every
/// `keep_alive` when given.
pub fn response<S>(events: S, keep_alive: Option<Duration>) -> Response
where
    S: Stream<Item = Bytes> + Unpin + Send + 'static,
{
    let tick = keep_alive.map(|period| {
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick
    });
    let body = WithKeepAlive { events, tick }.map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx (and similar proxies) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct WithKeepAlive<S> {
    events: S,
    tick: Option<Interval>,
}

impl<S: Stream<Item = Bytes> + Unpin> Stream for WithKeepAlive<S> {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Poll::Ready(item) = self.events.poll_next_unpin(cx) {
            if let Some(tick) = &mut self.tick {
                tick.reset();
            }
            return Poll::Ready(item);
        }
        match self.tick.as_mut().map(|tick| tick.poll_tick(cx)) {
            Some(Poll::Ready(_)) => Poll::Ready(Some(KEEP_ALIVE)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use http_body_util::BodyExt;

    #[test]
    fn events_are_what_sse_parsers_read() {
        assert_eq!(
            event(Some("a-1"), r#"{"x":1}"#),
            "event: message\nid: a-1\ndata: {\"x\":1}\n\n"
        );
        assert_eq!(event(None, "{}"), "event: message\ndata: {}\n\n");
        // The priming event keeps its (empty) data line.
        assert_eq!(
            event(Some("a-0"), ""),
            "event: message\nid: a-0\ndata: \n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_keep_alives_and_ends_with_its_events() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let response = response(rx, Some(Duration::from_secs(15)));
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, KEEP_ALIVE, "after 15 s of nothing");
        tx.unbounded_send(event(None, "{}")).unwrap();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, event(None, "{}"));
        drop(tx);
        assert!(body.frame().await.is_none(), "ends when the events end");
    }

    #[tokio::test]
    async fn without_keep_alive_only_the_events_are_sent() {
        let events = stream::iter([event(None, "1"), event(None, "2")]);
        let body = response(events, None).into_body().collect().await.unwrap();
        assert_eq!(
            body.to_bytes(),
            "event: message\ndata: 1\n\nevent: message\ndata: 2\n\n"
        );
    }
}
