//! Which of a session's streams a client may resume, and until when (2025-11-25,
//! "Resumability and Redelivery"; `client_stream` keeps what each one sent).
//!
//! A client that loses its connection mid-stream sends a GET with `Last-Event-ID`; the
//! stream that id names continues there with what the client missed. Meanwhile the call
//! goes on (the spec: a disconnect is not a cancellation); a stream nobody resumes within
//! `server.stream_resume_secs` is closed, which cancels its call upstream as a disconnect
//! used to.
//!
//! A stream whose every message was handed to the connection is kept for the window too:
//! the connection may have died with them unread, and a proxy in between (nginx) takes a
//! stream to its end whether or not its own client is still there. Those are kept within
//! [`FINISHED_BYTES`] in all, the oldest going first, so a flood of streamed answers
//! shortens their window rather than growing the gateway's memory.
//!
//! The registry is this process's own. nginx sends a session's requests to one replica
//! (by a hash of `Mcp-Session-Id`), but after a rescale to another: each event id ends
//! in the mark of the replica holding its stream, and a resumption that reaches another
//! replica is carried to it ([`super::replica_forward`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::client_stream::{self, Handle, Receiver, Resumable, Sender};
use super::replica_forward::{self, OwnerMarks};
use super::session::SessionClaims;

/// What a stream carries, told by the first letter of its event ids: a client whose GET
/// stream cannot be resumed still needs a GET stream, while a call's stream that cannot be
/// resumed is lost (the client must hear so, not wait on a stream that never answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A call's answer and what came before it.
    Call,
    /// A session's GET stream.
    Get,
}

/// The SSE event id of message `seq` of `stream`: both are needed to resume it, and only
/// the session that holds the stream can (see [`ResumableStreams::resume`]); then the
/// mark of the replica holding it, if any.
pub fn event_id(kind: StreamKind, stream: u64, seq: u64, mark: Option<&str>) -> String {
    let letter = match kind {
        StreamKind::Call => 'c',
        StreamKind::Get => 'g',
    };
    OwnerMarks::marked(format!("{letter}{stream:016x}-{seq}"), mark)
}

fn parse_event_id(id: &str) -> Option<(StreamKind, u64, u64)> {
    let id = replica_forward::unmarked(id);
    let kind = match id.as_bytes().first()? {
        b'c' => StreamKind::Call,
        b'g' => StreamKind::Get,
        _ => return None,
    };
    let (stream, seq) = id[1..].split_once('-')?;
    if stream.len() != 16 {
        return None;
    }
    Some((
        kind,
        u64::from_str_radix(stream, 16).ok()?,
        seq.parse().ok()?,
    ))
}

/// Why a `Last-Event-ID` resumes nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not an id gantry gives.
    Malformed,
    /// No stream of this session has it: another session's, ended, not resumed in time,
    /// or another gateway process's.
    Unknown(StreamKind),
}

/// How much of finished streams' events is kept for their clients, in all.
pub const FINISHED_BYTES: usize = 64 << 20;

pub struct ResumableStreams {
    registry: Mutex<Registry>,
    /// How long a stream whose client lost its connection waits for it to come back.
    window: Duration,
}

#[derive(Default)]
struct Registry {
    streams: HashMap<u64, Handle>,
    /// Streams delivered to their end, oldest first.
    finished: VecDeque<Finished>,
    /// What those hold, in bytes of events.
    finished_bytes: usize,
}

struct Finished {
    stream: u64,
    /// The receiver that delivered it: a resumption since has the stream now.
    holder: u64,
    at: Instant,
    bytes: usize,
}

impl Registry {
    /// Forgets the finished streams past the window or the budget.
    fn prune(&mut self, window: Duration) {
        let now = Instant::now();
        while let Some(oldest) = self.finished.front() {
            if self.finished_bytes <= FINISHED_BYTES && oldest.at + window > now {
                break;
            }
            let oldest = self.finished.pop_front().expect("just seen");
            self.finished_bytes -= oldest.bytes;
            let held = self.streams.get(&oldest.stream);
            if held.is_some_and(|h| h.held_by(oldest.holder)) {
                self.streams.remove(&oldest.stream);
            }
        }
    }
}

impl ResumableStreams {
    pub fn new(window: Duration) -> Self {
        Self {
            registry: Mutex::default(),
            window,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap()
    }

    /// A new stream of `claims`' session: resumable, unless the window is 0; its event
    /// ids end in `mark` (this replica's, see [`OwnerMarks`]).
    pub fn channel(
        self: &Arc<Self>,
        server: &str,
        method: &str,
        claims: &SessionClaims,
        kind: StreamKind,
        keep_alive: Option<Duration>,
        mark: Option<Arc<str>>,
    ) -> (Sender, Receiver) {
        if self.window.is_zero() {
            return client_stream::channel(server, method);
        }
        let how = Resumable {
            streams: self,
            sid: &claims.sid,
            kind,
            keep_alive,
            mark,
            // Priming events came with 2025-11-25: earlier clients parse every event's data.
            prime: claims.ver.as_str() >= "2025-11-25",
        };
        client_stream::resumable(server, method, how)
    }

    pub(super) fn register(&self, stream: Handle) {
        self.lock().streams.insert(stream.stream(), stream);
    }

    /// `stream` was delivered to its end by `holder`; kept `bytes` of events for a client
    /// that did not get them all after all.
    pub(super) fn finished(self: &Arc<Self>, stream: u64, holder: u64, bytes: usize) {
        let mut registry = self.lock();
        let first = registry.finished.is_empty();
        registry.finished.push_back(Finished {
            stream,
            holder,
            at: Instant::now(),
            bytes,
        });
        registry.finished_bytes += bytes;
        registry.prune(self.window);
        // One sweeper runs while any finished stream is kept, so that none outlives the
        // window when no new stream comes to prune it.
        if first {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(Arc::clone(self).sweep());
            }
        }
    }

    async fn sweep(self: Arc<Self>) {
        loop {
            let next = {
                let mut registry = self.lock();
                registry.prune(self.window);
                registry
                    .finished
                    .front()
                    .map(|oldest| oldest.at + self.window)
            };
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => return,
            }
        }
    }

    /// The connection holding `stream` is gone: close it unless a client resumes it in
    /// time. Outside a runtime (only at shutdown) there is nobody to wait: close at once.
    pub(super) fn park(self: &Arc<Self>, stream: u64, holder: u64) {
        tracing::debug!(stream = %format!("{stream:016x}"), "client connection lost mid-stream; kept for resumption");
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.expire(stream, holder);
            return;
        };
        let streams = Arc::clone(self);
        let window = self.window;
        runtime.spawn(async move {
            tokio::time::sleep(window).await;
            streams.expire(stream, holder);
        });
    }

    fn expire(&self, stream: u64, holder: u64) {
        let mut registry = self.lock();
        if let Some(handle) = registry.streams.get(&stream).filter(|h| h.held_by(holder)) {
            handle.close();
            registry.streams.remove(&stream);
            counted("expired");
            tracing::info!(stream = %format!("{stream:016x}"), "a stream's client did not come back in time: its call is cancelled");
        }
    }

    /// The stream `last_event_id` names, for session `sid`, from the message after it.
    pub fn resume(&self, sid: &str, last_event_id: &str) -> Result<Receiver, Refused> {
        let (kind, stream, last) = parse_event_id(last_event_id).ok_or(Refused::Malformed)?;
        let handle = self
            .lock()
            .streams
            .get(&stream)
            .filter(|h| h.sid() == sid)
            .cloned()
            .ok_or(Refused::Unknown(kind))?;
        handle.resume(last).ok_or(Refused::Unknown(kind))
    }

    /// Whether session `sid` has its GET stream here.
    pub fn holds_get_stream(&self, sid: &str) -> bool {
        self.lock()
            .streams
            .values()
            .any(|handle| handle.sid() == sid && handle.kind() == StreamKind::Get)
    }

    /// The session ended (DELETE): its streams end too, resumable no more.
    pub fn end_session(&self, sid: &str) {
        self.lock().streams.retain(|_, handle| {
            let keep = handle.sid() != sid;
            if !keep {
                handle.close();
            }
            keep
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().streams.len()
    }
}

/// Counts what became of a stream whose client lost it (`mcp_stream_resumptions_total`).
pub fn counted(outcome: &'static str) {
    metrics::counter!(crate::telemetry::metrics::STREAM_RESUMPTIONS, "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::client_stream::{self, BACKLOG_BYTES, Outgoing, REPLAY_BYTES, Resumable};
    use futures::{FutureExt, StreamExt};
    use metrics::Counter;
    use serde_json::json;

    const WINDOW: Duration = Duration::from_secs(60);

    fn progress(i: u64) -> serde_json::Value {
        json!({"jsonrpc": "2.0", "method": "notifications/progress",
               "params": {"progressToken": 1, "progress": i}})
    }

    fn stream(
        streams: &Arc<ResumableStreams>,
        sid: &str,
        prime: bool,
    ) -> (client_stream::Sender, Receiver) {
        let how = Resumable {
            streams,
            sid,
            kind: StreamKind::Call,
            keep_alive: None,
            mark: None,
            prime,
        };
        client_stream::resumable("test", "tools/call", how)
    }

    /// A stream of `sid` whose client read one notification, then lost its connection.
    fn lost_after_one(streams: &Arc<ResumableStreams>, sid: &str) -> client_stream::Sender {
        let (tx, mut rx) = stream(streams, sid, false);
        tx.notify(&progress(0), &Counter::noop());
        ready(&mut rx);
        drop(rx);
        tx
    }

    fn id_of(streams: &ResumableStreams, seq: u64) -> String {
        let stream = *streams.lock().streams.keys().next().unwrap();
        event_id(StreamKind::Call, stream, seq, Some("mark"))
    }

    fn ready(rx: &mut Receiver) -> Vec<Outgoing> {
        let mut got = Vec::new();
        while let Some(Some(out)) = rx.next().now_or_never() {
            got.push(out);
        }
        got
    }

    #[test]
    fn event_ids_name_their_stream_and_message() {
        let id = event_id(StreamKind::Get, 0xdead_beef, 42, None);
        assert_eq!(
            parse_event_id(&id),
            Some((StreamKind::Get, 0xdead_beef, 42))
        );
        let id = event_id(StreamKind::Call, 7, 0, None);
        assert_eq!(parse_event_id(&id), Some((StreamKind::Call, 7, 0)));
        // The holding replica's mark after it changes nothing.
        let id = event_id(StreamKind::Call, 7, 3, Some("bWFyaw"));
        assert_eq!(id, "c0000000000000007-3.bWFyaw");
        assert_eq!(parse_event_id(&id), Some((StreamKind::Call, 7, 3)));
        for bad in [
            "",
            "42",
            "xyz-1",
            "c00000000deadbeef-",
            "c00000000deadbeef-x",
            "cbeef-1",
            "00000000deadbeef-1",
            "x00000000deadbeef-1",
            ".c00000000deadbeef-1",
            "é",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_client_that_lost_its_connection_gets_what_it_missed_then_the_rest() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let (tx, mut rx) = stream(&streams, "s1", true);
        for i in 0..3 {
            tx.notify(&progress(i), &Counter::noop());
        }
        let first = ready(&mut rx);
        let seqs: Vec<_> = first.iter().map(|o| o.seq.unwrap()).collect();
        assert_eq!(seqs, [0, 1, 2, 3], "the priming event, then each message");
        assert_eq!(first[0].text, "", "the priming event has no data");
        // The client read up to the first notification; the connection dies.
        drop(rx);
        tx.notify(&progress(3), &Counter::noop());
        let mut again = streams.resume("s1", &id_of(&streams, 1)).unwrap();
        let texts: Vec<_> = ready(&mut again).into_iter().map(|o| o.text).collect();
        let want: Vec<_> = (1..4).map(|i| to_json(&progress(i))).collect();
        assert_eq!(
            texts, want,
            "what it missed and what came meanwhile, in order"
        );
        assert!(tx.gone().now_or_never().is_none(), "the call goes on");
        drop(tx);
        assert_eq!(again.next().await, None, "the stream ends with the call");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_delivered_to_its_end_is_kept_for_the_window() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let (tx, mut rx) = stream(&streams, "s", false);
        tx.notify(&progress(0), &Counter::noop());
        tx.send(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        drop(tx);
        assert_eq!(ready(&mut rx).len(), 2);
        assert_eq!(rx.next().await, None);
        drop(rx);
        // The answer may have died with the connection (or in a proxy): still there.
        let mut again = streams.resume("s", &id_of(&streams, 1)).unwrap();
        let texts: Vec<_> = ready(&mut again).into_iter().map(|o| o.text).collect();
        assert_eq!(
            texts,
            [to_json(&json!({"jsonrpc": "2.0", "id": 1, "result": {}}))]
        );
        assert_eq!(again.next().await, None);
        drop(again);
        tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
        assert_eq!(streams.len(), 0, "forgotten after the window");
    }

    #[tokio::test]
    async fn finished_streams_are_kept_within_a_budget_the_oldest_going_first() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let big =
            json!({"jsonrpc": "2.0", "id": 1, "result": {"pad": "x".repeat(BACKLOG_BYTES / 2)}});
        let fit = FINISHED_BYTES / to_json(&big).len();
        let mut finished = Vec::new();
        for _ in 0..fit + 2 {
            let (tx, mut rx) = stream(&streams, "s", false);
            tx.send(&big);
            drop(tx);
            assert_eq!(ready(&mut rx).len(), 1);
            drop(rx);
            finished.push(streams.lock().finished.back().unwrap().stream);
        }
        let registry = streams.lock();
        assert!(registry.finished_bytes <= FINISHED_BYTES);
        assert_eq!(registry.streams.len(), fit);
        assert!(
            !registry.streams.contains_key(&finished[0]),
            "the oldest went first"
        );
        assert!(!registry.streams.contains_key(&finished[1]));
        assert!(registry.streams.contains_key(&finished[fit + 1]));
    }

    #[tokio::test]
    async fn only_the_latest_of_what_was_sent_is_kept() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let (tx, mut rx) = stream(&streams, "s", false);
        let sent = 2 * REPLAY_BYTES / to_json(&progress(0)).len();
        for i in 0..sent {
            tx.notify(&progress(i as u64), &Counter::noop());
            ready(&mut rx);
        }
        drop(rx);
        let mut again = streams.resume("s", &id_of(&streams, 0)).unwrap();
        let replayed = ready(&mut again);
        let bytes: usize = replayed.iter().map(|o| o.text.len()).sum();
        assert!(
            bytes <= REPLAY_BYTES && bytes > REPLAY_BYTES - 200,
            "{bytes} bytes kept"
        );
        assert_eq!(
            replayed.last().unwrap().text,
            to_json(&progress(sent as u64 - 1))
        );
        assert!(replayed[0].seq.unwrap() > 1, "the oldest are gone");
    }

    #[tokio::test]
    async fn only_the_streams_own_session_may_resume_it() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let _tx = lost_after_one(&streams, "mine");
        let id = id_of(&streams, 1);
        assert_eq!(
            streams.resume("theirs", &id).err(),
            Some(Refused::Unknown(StreamKind::Call))
        );
        assert_eq!(
            streams.resume("mine", "garbage").err(),
            Some(Refused::Malformed)
        );
        let unsent = id_of(&streams, 2);
        assert_eq!(
            streams.resume("mine", &unsent).err(),
            Some(Refused::Unknown(StreamKind::Call))
        );
        assert!(streams.resume("mine", &id).is_ok());
    }

    #[tokio::test]
    async fn a_resumption_takes_the_stream_from_a_connection_that_seems_alive() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let (tx, mut old) = stream(&streams, "s", false);
        tx.notify(&progress(0), &Counter::noop());
        ready(&mut old);
        // A half-open connection: the server has not noticed it died.
        let mut new = streams.resume("s", &id_of(&streams, 0)).unwrap();
        assert_eq!(old.next().await, None, "the old connection's stream ends");
        drop(old);
        tx.notify(&progress(1), &Counter::noop());
        let texts: Vec<_> = ready(&mut new).into_iter().map(|o| o.text).collect();
        assert_eq!(texts, [to_json(&progress(0)), to_json(&progress(1))]);
        assert!(
            tx.gone().now_or_never().is_none(),
            "the old holder's end parks nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_nobody_resumes_in_time_is_closed_and_forgotten() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let tx = lost_after_one(&streams, "s");
        tokio::time::sleep(WINDOW - Duration::from_secs(1)).await;
        assert!(
            tx.gone().now_or_never().is_none(),
            "still waiting for the client"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.gone().await;
        assert_eq!(streams.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_stream_is_not_closed_by_its_first_connections_timer() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let tx = lost_after_one(&streams, "s");
        let _again = streams.resume("s", &id_of(&streams, 1)).unwrap();
        tokio::time::sleep(WINDOW * 2).await;
        assert!(tx.gone().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_window_of_zero_turns_resumption_off() {
        let streams = Arc::new(ResumableStreams::new(Duration::ZERO));
        let claims = SessionClaims {
            sid: "s".into(),
            ver: "2025-11-25".into(),
            srv: None,
            sub: "k".into(),
            caps: Default::default(),
            iat: 0,
        };
        let (tx, mut rx) =
            streams.channel("test", "tools/call", &claims, StreamKind::Call, None, None);
        tx.notify(&progress(0), &Counter::noop());
        let got = ready(&mut rx);
        assert_eq!(got.len(), 1, "no priming event");
        assert_eq!(got[0].seq, None, "no event id");
        assert_eq!(streams.len(), 0);
        drop(rx);
        tx.gone().await;
    }

    #[tokio::test]
    async fn ending_the_session_ends_its_streams() {
        let streams = Arc::new(ResumableStreams::new(WINDOW));
        let (tx, rx) = stream(&streams, "s", false);
        let (other, _other_rx) = stream(&streams, "t", false);
        drop(rx);
        streams.end_session("s");
        tx.gone().await;
        assert!(other.gone().now_or_never().is_none());
        assert_eq!(streams.len(), 1);
    }

    fn to_json(v: &serde_json::Value) -> String {
        serde_json::to_string(v).unwrap()
    }
}
