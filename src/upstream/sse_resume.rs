//! Where an upstream's event stream left off, to resume it (SEP-1699, 2025-11-25): once a
//! server has sent an event id it may end the stream before the answer, and the client
//! reconnects with a GET naming that id in `Last-Event-ID`, after the `retry` delay the
//! server asked for. The standalone GET stream resumes the same way after it drops.

use std::time::Duration;

use http::HeaderValue;
use sse_stream::Sse;

/// The delay before reconnecting when the server named none (the reference SDK's first).
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// A server's `retry` beyond this is taken as this: the caller's timeout runs meanwhile.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Nor less than this: a server asking for `retry: 0` and ending every stream at once
/// would otherwise be sent GETs as fast as they go until the call's timeout.
const MIN_RETRY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default)]
pub struct Resume {
    last_event_id: Option<HeaderValue>,
    retry: Option<Duration>,
}

impl Resume {
    /// Notes an event's id and `retry` field, whatever its data.
    pub fn saw(&mut self, event: &Sse) {
        if let Some(id) = &event.id {
            // An empty id resets it, as in the EventSource standard; one that cannot be a
            // header value cannot be sent back, so the stream is no longer resumable.
            self.last_event_id = HeaderValue::from_str(id).ok().filter(|_| !id.is_empty());
        }
        if let Some(ms) = event.retry {
            self.retry = Some(Duration::from_millis(ms).clamp(MIN_RETRY, MAX_RETRY));
        }
    }

    /// The id to send as `Last-Event-ID`; `None` when the server gave none, so the stream
    /// cannot be resumed.
    pub fn last_event_id(&self) -> Option<&HeaderValue> {
        self.last_event_id.as_ref()
    }

    /// Gives up resuming: the next stream starts afresh.
    pub fn forget_position(&mut self) {
        self.last_event_id = None;
    }

    /// How long to wait before reconnecting.
    pub fn delay(&self) -> Duration {
        self.retry.unwrap_or(DEFAULT_RETRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, retry: Option<u64>) -> Sse {
        Sse {
            event: None,
            data: Some(String::new()),
            id: id.map(String::from),
            retry,
        }
    }

    #[test]
    fn the_last_id_and_the_servers_delay_are_kept() {
        let mut resume = Resume::default();
        assert!(resume.last_event_id().is_none(), "nothing to resume yet");
        assert_eq!(resume.delay(), DEFAULT_RETRY);
        resume.saw(&event(Some("e-1"), Some(500)));
        resume.saw(&event(None, None));
        resume.saw(&event(Some("e-2"), None));
        assert_eq!(resume.last_event_id().unwrap(), "e-2");
        assert_eq!(resume.delay(), Duration::from_millis(500));
    }

    #[test]
    fn an_empty_or_unsendable_id_ends_resumability_and_long_delays_are_capped() {
        let mut resume = Resume::default();
        resume.saw(&event(Some("e-1"), Some(u64::MAX)));
        assert_eq!(resume.delay(), MAX_RETRY);
        resume.saw(&event(None, Some(0)));
        assert_eq!(resume.delay(), MIN_RETRY);
        resume.saw(&event(Some(""), None));
        assert!(resume.last_event_id().is_none());
        resume.saw(&event(Some("e-2"), None));
        resume.saw(&event(Some("bad\nid"), None));
        assert!(resume.last_event_id().is_none());
        resume.saw(&event(Some("e-3"), Some(200)));
        resume.forget_position();
        assert!(resume.last_event_id().is_none());
        assert_eq!(
            resume.delay(),
            Duration::from_millis(200),
            "the delay stays"
        );
    }
}
