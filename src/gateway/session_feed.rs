//! What one replica must tell the others about sessions: the sessions ended with DELETE,
//! and the calls their clients cancelled.
//!
//! A session id is sealed and carries all a replica needs, so any replica serves it; the
//! end of a session must therefore reach them all, or a request after the DELETE that a
//! load balancer sends to another replica is still served, where the protocol says 404.
//! Each replica keeps the ended sessions it knows in memory, so the check on every request
//! stays a map lookup. With Redis (`cache.url`), ending a session also adds it to a sorted
//! set (scored by the session's expiry, pruned as it is written) and publishes it; every
//! replica subscribes, and loads the set each time its subscription starts, so a replica
//! that starts or reconnects later learns of the sessions ended meanwhile. A replica that
//! hears of an ending closes the session's streams it holds, as the one that took the
//! DELETE does.
//!
//! A call runs on the replica its request reached, and nginx sends a session's requests to
//! one replica only until a rescale moves the session: a `notifications/cancelled` that
//! finds no such call where it lands is published (with Redis) for the replica running it.
//! Nothing is kept: a cancellation nobody hears (no replica runs the call any more, or
//! Redis is down) is as one that came too late.
//!
//! A session's resource subscriptions are kept in a set per session (until the session
//! expires) and each change is published: its updates come on the replica holding the
//! session's GET stream, which may not be the one that took the subscribe after a
//! rescale. That replica subscribes its own upstream connection when it hears of one, and
//! a GET stream opened later (its replica gone) subscribes to the whole set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::unix_now;

const RETRY_START: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct SessionFeed {
    /// Ended sessions by id, with the time (Unix seconds) they would have expired anyway.
    known: Mutex<HashMap<String, u64>>,
    shared: Option<Shared>,
}

/// Where the replicas share what they ended.
struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    /// The sorted set of ended sessions, scored by expiry.
    set: String,
    /// The channel each ending is published on, as "{id} {expiry}".
    channel: String,
    /// The channel cancellations are published on, as "{session id} {request id}" (the
    /// request id as JSON text).
    cancelled: String,
    /// The channel subscription changes are published on, as a JSON array
    /// `[session id, taken, upstream key, uri, session expiry]`.
    subscriptions: String,
    /// The prefix of each session's set of subscriptions (`[upstream key, uri]` as JSON).
    subscriptions_of: String,
}

/// What another replica said.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard<'a> {
    /// The session ended.
    Ended(&'a str),
    /// The session's client cancelled its request `request_id` (JSON text).
    Cancelled { sid: &'a str, request_id: &'a str },
    /// The session took (or let go of) a subscription to `uri` on the upstream of `key`.
    Subscription {
        sid: &'a str,
        taken: bool,
        key: &'a str,
        uri: &'a str,
        expiry: u64,
    },
}

impl SessionFeed {
    /// Ended sessions known to this process alone.
    pub fn local() -> Self {
        Self {
            known: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Ended sessions and cancellations shared through Redis, under `prefix`.
    pub fn shared(client: redis::Client, conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            known: Mutex::new(HashMap::new()),
            shared: Some(Shared {
                client,
                conn,
                set: format!("{prefix}sessions:ended"),
                channel: format!("{prefix}sessions:ended:feed"),
                cancelled: format!("{prefix}calls:cancelled:feed"),
                subscriptions: format!("{prefix}subscriptions:feed"),
                subscriptions_of: format!("{prefix}sessions:subscriptions:"),
            }),
        }
    }

    pub fn contains(&self, sid: &str) -> bool {
        self.known.lock().unwrap().contains_key(sid)
    }

    /// Ends a session here, then for every replica. Without Redis, or if it cannot be
    /// reached, the session is ended on this replica only; that is logged.
    pub async fn end(&self, sid: &str, expiry: u64) {
        self.remember(sid.to_string(), expiry);
        let Some(shared) = &self.shared else {
            return;
        };
        let now = unix_now();
        let written = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&shared.set)
            .arg("-inf")
            .arg(format!("({now}"))
            .ignore()
            .cmd("ZADD")
            .arg(&shared.set)
            .arg(expiry)
            .arg(sid)
            .ignore()
            .cmd("DEL")
            .arg(format!("{}{sid}", shared.subscriptions_of))
            .ignore()
            .cmd("PUBLISH")
            .arg(&shared.channel)
            .arg(format!("{sid} {expiry}"))
            .ignore()
            .query_async::<()>(&mut shared.conn.clone())
            .await;
        if let Err(e) = written {
            tracing::warn!(session = %sid, error = %e, "session ended on this replica only: Redis did not take it");
        }
    }

    /// Tells every replica that the session's client cancelled `request_id` (JSON text),
    /// for the one running it; without Redis there is no other replica to tell.
    pub async fn cancel(&self, sid: &str, request_id: &str) {
        let Some(shared) = &self.shared else {
            return;
        };
        let published = redis::cmd("PUBLISH")
            .arg(&shared.cancelled)
            .arg(format!("{sid} {request_id}"))
            .query_async::<()>(&mut shared.conn.clone())
            .await;
        if let Err(e) = published {
            tracing::warn!(session = %sid, error = %e, "a cancellation did not reach the other replicas: Redis did not take it");
        }
    }

    /// Tells every replica that session `sid` took (or let go of) a subscription to `uri`
    /// on the upstream of `key`, and keeps the session's set for a GET stream opened
    /// later; without Redis there is no other replica to tell.
    pub async fn subscription(&self, sid: &str, expiry: u64, taken: bool, key: &str, uri: &str) {
        let Some(shared) = &self.shared else {
            return;
        };
        let set = format!("{}{sid}", shared.subscriptions_of);
        let member = serde_json::json!([key, uri]).to_string();
        let message = serde_json::json!([sid, taken, key, uri, expiry]).to_string();
        let written = redis::pipe()
            .cmd(if taken { "SADD" } else { "SREM" })
            .arg(&set)
            .arg(member)
            .ignore()
            .cmd("EXPIREAT")
            .arg(&set)
            .arg(expiry)
            .ignore()
            .cmd("PUBLISH")
            .arg(&shared.subscriptions)
            .arg(message)
            .ignore()
            .query_async::<()>(&mut shared.conn.clone())
            .await;
        if let Err(e) = written {
            tracing::warn!(session = %sid, error = %e, "a resource subscription is known to this replica only: Redis did not take it");
        }
    }

    /// The subscriptions session `sid` holds, as `(upstream key, uri)`, wherever it took
    /// them; none without Redis.
    pub async fn subscriptions_of(&self, sid: &str) -> Vec<(String, String)> {
        let Some(shared) = &self.shared else {
            return Vec::new();
        };
        let members: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(format!("{}{sid}", shared.subscriptions_of))
            .query_async(&mut shared.conn.clone())
            .await
        {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(session = %sid, error = %e, "the session's resource subscriptions on other replicas are unknown: Redis did not answer");
                return Vec::new();
            }
        };
        members
            .iter()
            .filter_map(|m| serde_json::from_str(m).ok())
            .collect()
    }

    fn remember(&self, sid: String, expiry: u64) {
        let now = unix_now();
        let mut known = self.known.lock().unwrap();
        known.retain(|_, until| *until >= now);
        known.insert(sid, expiry);
    }

    /// Follows what other replicas say, until `shutdown`, telling `heard`; with Redis
    /// only.
    pub fn follow<F>(self: &Arc<Self>, shutdown: CancellationToken, heard: F)
    where
        F: Fn(Heard<'_>) + Send + Sync + 'static,
    {
        if self.shared.is_none() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut wait = RETRY_START;
            loop {
                let followed = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    followed = this.follow_once(&mut wait, &heard) => followed,
                };
                if let Err(e) = followed {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "not following the sessions other replicas end: Redis unreachable");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        });
    }

    /// One subscription, until its connection ends. Subscribed first, then the set
    /// loaded: a session ended in between arrives both ways, none falls between them.
    async fn follow_once<F>(&self, wait: &mut Duration, heard: &F) -> redis::RedisResult<()>
    where
        F: Fn(Heard<'_>),
    {
        let shared = self.shared.as_ref().expect("follow runs with Redis only");
        let mut pubsub = shared.client.get_async_pubsub().await?;
        pubsub
            .subscribe(&[
                shared.channel.as_str(),
                shared.cancelled.as_str(),
                shared.subscriptions.as_str(),
            ])
            .await?;
        // ZRANGEBYSCORE rather than ZRANGE … BYSCORE, which Redis before 6.2 lacks.
        let ended: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&shared.set)
            .arg(unix_now())
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut shared.conn.clone())
            .await?;
        let loaded = ended.len();
        // In one go: `remember` prunes the whole map each time.
        self.known
            .lock()
            .unwrap()
            .extend(ended.into_iter().map(|(sid, expiry)| (sid, expiry as u64)));
        tracing::info!(
            loaded,
            "following the sessions other replicas end and the calls they cancel"
        );
        *wait = RETRY_START;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let payload = message.get_payload::<String>().unwrap_or_default();
            if message.get_channel_name() == shared.subscriptions {
                match serde_json::from_str::<(String, bool, String, String, u64)>(&payload) {
                    Ok((sid, taken, key, uri, expiry)) => heard(Heard::Subscription {
                        sid: &sid,
                        taken,
                        key: &key,
                        uri: &uri,
                        expiry,
                    }),
                    Err(_) => {
                        tracing::warn!(%payload, "ignored a malformed subscription change from Redis")
                    }
                }
                continue;
            }
            if message.get_channel_name() == shared.cancelled {
                match payload.split_once(' ') {
                    Some((sid, request_id)) => heard(Heard::Cancelled { sid, request_id }),
                    None => tracing::warn!(%payload, "ignored a malformed cancellation from Redis"),
                }
                continue;
            }
            match payload.split_once(' ').map(|(s, e)| (s, e.parse::<u64>())) {
                Some((sid, Ok(expiry))) => {
                    self.remember(sid.to_string(), expiry);
                    heard(Heard::Ended(sid));
                }
                _ => tracing::warn!(%payload, "ignored a malformed session ending from Redis"),
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "subscription connection closed",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ended_session_is_known_until_it_would_have_expired() {
        let ended = SessionFeed::local();
        let now = unix_now();
        ended.end("gone", now + 60).await;
        ended.end("old", now - 1).await;
        assert!(ended.contains("gone"));
        // Bookkeeping for sessions past their expiry is dropped with the next ending.
        ended.end("next", now + 60).await;
        assert!(!ended.contains("old"));
        assert!(!ended.contains("other"));
    }
}
