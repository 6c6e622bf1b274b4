//! Resource subscriptions on this process's upstream connections, and who holds each.
//!
//! One upstream session serves every client (gateway/README.md), so a subscription is the
//! upstream's once and its clients' many times. A client's `resources/unsubscribe` reaches
//! the upstream only when no other client still holds that subscription: passed through,
//! it would silence everyone's updates. A subscription's last holder going (a DELETE, an
//! expired session, a listen stream's client leaving) unsubscribes the upstream. And an
//! upstream that restarts has forgotten them all: each is asked of the new connection.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::http::Ctx;
use super::session_feed::SessionFeed;
use super::{Gateway, jsonrpc, unix_now};
use crate::upstream::{Connection, Next, Upstream, UpstreamError};

/// The most subscriptions one session or listen stream holds: each costs memory here and
/// work upstream, and a client has no use for unbounded many.
pub const MAX_PER_HOLDER: usize = 256;

/// Who asked for a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A 2025-era session, until DELETE or its expiry.
    Session(String),
    /// A 2026-07-28 `subscriptions/listen` stream, until its client leaves.
    Listen(u64),
}

/// A subscription: the upstream's key and the resource's URI.
type Key = (String, String);

#[derive(Default)]
pub struct ResourceSubscriptions {
    inner: Mutex<Inner>,
    next_listen: AtomicU64,
}

#[derive(Default)]
struct Inner {
    subscribed: HashMap<Key, Subscribed>,
    held: HashMap<Holder, Held>,
    /// Upstreams whose reconnections are followed (`follow`).
    followed: HashSet<String>,
}

struct Subscribed {
    upstream: Weak<Upstream>,
    by: HashSet<Holder>,
}

struct Held {
    /// Unix seconds after which a session's holds lapse; `None` for a listen stream's.
    expiry: Option<u64>,
    keys: HashSet<Key>,
}

/// A subscription being asked of the upstream: held from now on, so that another holder's
/// unsubscribe meanwhile is not passed on, and let go when dropped unless kept.
pub struct Pending {
    of: Arc<ResourceSubscriptions>,
    holder: Holder,
    key: Key,
    /// Whether the holder did not hold it before: a repeated subscribe that fails leaves
    /// the first one as it was.
    fresh: bool,
    kept: bool,
    /// A session's, told to the other replicas once kept: the session's expiry.
    share: Option<(Arc<SessionFeed>, u64)>,
}

/// Why a subscription was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany;

impl ResourceSubscriptions {
    /// A holder for a new listen stream.
    pub fn listen_holder(&self) -> Holder {
        Holder::Listen(self.next_listen.fetch_add(1, Ordering::Relaxed))
    }

    /// Holds `uri` on `upstream` for `holder` while the upstream is asked for it. Sessions
    /// past their expiry let go of theirs first.
    pub fn begin(
        self: &Arc<Self>,
        holder: Holder,
        expiry: Option<u64>,
        upstream: &Arc<Upstream>,
        uri: &str,
        now: u64,
    ) -> Result<Pending, TooMany> {
        let key = (upstream.key(), uri.to_string());
        let (lapsed, taken) = {
            let mut inner = self.inner.lock().unwrap();
            let lapsed = inner.lapse(now);
            let taken = inner.hold(&holder, expiry, &key, Arc::downgrade(upstream));
            (lapsed, taken)
        };
        self.unsubscribe(lapsed);
        let fresh = taken?;
        Ok(Pending {
            of: Arc::clone(self),
            holder,
            key,
            fresh,
            kept: false,
            share: None,
        })
    }

    /// Lets go of `holder`'s subscription to `uri` on `upstream` (a client's unsubscribe;
    /// `None` for a caller without a session, which holds nothing): whether others still
    /// hold it, so that the upstream must not hear of it.
    pub fn release(&self, holder: Option<&Holder>, upstream: &Upstream, uri: &str) -> bool {
        let key = (upstream.key(), uri.to_string());
        let mut inner = self.inner.lock().unwrap();
        if let Some(holder) = holder {
            inner.drop_hold(holder, &key);
        }
        inner.subscribed.contains_key(&key)
    }

    /// Lets go of everything `holder` holds; the upstream is unsubscribed from what nobody
    /// else holds.
    pub fn release_all(self: &Arc<Self>, holder: &Holder) {
        let lasts = {
            let mut inner = self.inner.lock().unwrap();
            inner.drop_holder(holder)
        };
        self.unsubscribe(lasts);
    }

    /// Unsubscribes the upstream from subscriptions nobody held, in the background:
    /// nobody waits for the answer. One taken again meanwhile stays.
    fn unsubscribe(self: &Arc<Self>, lasts: Vec<(Weak<Upstream>, String)>) {
        for (upstream, uri) in lasts {
            let Some(upstream) = upstream.upgrade() else {
                continue;
            };
            let subscriptions = Arc::clone(self);
            tokio::spawn(async move {
                let Ok(conn) = upstream.connection(Duration::ZERO).await else {
                    return; // Down: a restarted server holds no subscriptions anyway.
                };
                let key = (upstream.key(), uri);
                // Checked and sent with nothing between: a subscribe taken meanwhile
                // has gone upstream already, and this must not undo it.
                if subscriptions
                    .inner
                    .lock()
                    .unwrap()
                    .subscribed
                    .contains_key(&key)
                {
                    return;
                }
                let request = jsonrpc::request("resources/unsubscribe", json!({ "uri": key.1 }));
                let mut call = conn.start_call(request, upstream.timeout());
                if let Err(e) = call.answer().await {
                    tracing::debug!(upstream = %upstream.name, uri = %key.1, error = ?e, "unsubscribing from a resource nobody holds failed");
                }
            });
        }
    }

    /// Lets go of `holder`'s subscription to `uri` on the upstream of `key`, unsubscribing
    /// the upstream if nobody else holds it (another replica heard the session let go).
    pub fn let_go(self: &Arc<Self>, holder: &Holder, key: &str, uri: &str) {
        let key = (key.to_string(), uri.to_string());
        let last = self.inner.lock().unwrap().drop_hold(holder, &key);
        if let Some(upstream) = last {
            self.unsubscribe(vec![(upstream, key.1)]);
        }
    }

    /// Takes `uri` on `upstream` for `holder`, asking the upstream, unless it holds it
    /// already: whether it holds it now.
    pub async fn take(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        holder: Holder,
        expiry: Option<u64>,
        uri: &str,
        stop: &CancellationToken,
    ) -> bool {
        match self.begin(holder, expiry, upstream, uri, unix_now()) {
            Ok(pending) => pending.ask(upstream, stop).await,
            Err(TooMany) => false,
        }
    }

    /// Whether session `sid` holds a subscription to `uri`, on any upstream.
    pub fn is_subscribed(&self, sid: &str, uri: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .held
            .get(&Holder::Session(sid.to_string()))
            .is_some_and(|held| held.keys.iter().any(|(_, u)| u == uri))
    }

    /// The URIs held on the upstream of `key`, or `None` (and no longer followed) when
    /// there are none.
    fn held_on(&self, key: &str) -> Option<Vec<String>> {
        let mut inner = self.inner.lock().unwrap();
        let uris: Vec<String> = inner
            .subscribed
            .keys()
            .filter(|(k, _)| k == key)
            .map(|(_, uri)| uri.clone())
            .collect();
        if uris.is_empty() {
            inner.followed.remove(key);
            return None;
        }
        Some(uris)
    }

    /// Whether the caller is the first to see the upstream of `key` need following.
    fn start_following(&self, key: &str) -> bool {
        self.inner.lock().unwrap().followed.insert(key.to_string())
    }

    /// The registry replaced the upstream of `key` by `successor`: what was held on the
    /// old instance is held on it, and let go of there.
    fn retarget(&self, key: &str, successor: &Arc<Upstream>) {
        let mut inner = self.inner.lock().unwrap();
        for ((k, _), subscribed) in &mut inner.subscribed {
            if k == key {
                subscribed.upstream = Arc::downgrade(successor);
            }
        }
    }

    fn stop_following(&self, key: &str) {
        self.inner.lock().unwrap().followed.remove(key);
    }
}

impl Inner {
    fn hold(
        &mut self,
        holder: &Holder,
        expiry: Option<u64>,
        key: &Key,
        upstream: Weak<Upstream>,
    ) -> Result<bool, TooMany> {
        let held = self.held.entry(holder.clone()).or_insert_with(|| Held {
            expiry,
            keys: HashSet::new(),
        });
        if !held.keys.contains(key) && held.keys.len() >= MAX_PER_HOLDER {
            return Err(TooMany);
        }
        let fresh = held.keys.insert(key.clone());
        self.subscribed
            .entry(key.clone())
            .or_insert_with(|| Subscribed {
                upstream,
                by: HashSet::new(),
            })
            .by
            .insert(holder.clone());
        Ok(fresh)
    }

    /// Drops `holder`'s hold on `key`; the upstream when that was the last hold on it.
    fn drop_hold(&mut self, holder: &Holder, key: &Key) -> Option<Weak<Upstream>> {
        if let Some(held) = self.held.get_mut(holder) {
            held.keys.remove(key);
            if held.keys.is_empty() {
                self.held.remove(holder);
            }
        }
        self.unhold(holder, key)
    }

    /// Drops everything `holder` holds; the subscriptions nobody holds any more.
    fn drop_holder(&mut self, holder: &Holder) -> Vec<(Weak<Upstream>, String)> {
        let Some(held) = self.held.remove(holder) else {
            return Vec::new();
        };
        held.keys
            .into_iter()
            .filter_map(|key| Some((self.unhold(holder, &key)?, key.1)))
            .collect()
    }

    /// Takes `holder` off the holders of `key`; the upstream when it was the last.
    fn unhold(&mut self, holder: &Holder, key: &Key) -> Option<Weak<Upstream>> {
        let subscribed = self.subscribed.get_mut(key)?;
        if !subscribed.by.remove(holder) || !subscribed.by.is_empty() {
            return None;
        }
        self.subscribed.remove(key).map(|s| s.upstream)
    }

    /// Drops the holds of sessions past their expiry.
    fn lapse(&mut self, now: u64) -> Vec<(Weak<Upstream>, String)> {
        let lapsed: Vec<Holder> = self
            .held
            .iter()
            .filter(|(_, held)| held.expiry.is_some_and(|e| e < now))
            .map(|(holder, _)| holder.clone())
            .collect();
        lapsed.iter().flat_map(|h| self.drop_holder(h)).collect()
    }
}

impl Pending {
    /// Asks the upstream for it, unless the holder held it already: whether it holds it
    /// now. A let-go meanwhile finds it held, and wins.
    pub async fn ask(self, upstream: &Arc<Upstream>, stop: &CancellationToken) -> bool {
        if !self.fresh {
            return true;
        }
        let Ok(conn) = upstream.connection(Duration::ZERO).await else {
            return false;
        };
        let uri = self.key.1.clone();
        match subscribe(upstream, &conn, &uri).await {
            Ok(()) => {
                self.keep(upstream, &conn, stop.clone());
                true
            }
            Err(e) => {
                tracing::debug!(upstream = %upstream.name, %uri, error = %e, "the server did not take a resource subscription");
                false
            }
        }
    }

    /// The upstream accepted it on `conn`: held until let go, and asked again of each
    /// connection that replaces `conn`.
    pub fn keep(
        mut self,
        upstream: &Arc<Upstream>,
        conn: &Arc<Connection>,
        stop: CancellationToken,
    ) {
        self.kept = true;
        if let (Some((feed, expiry)), Holder::Session(sid)) = (self.share.take(), &self.holder) {
            let (sid, (key, uri)) = (sid.clone(), self.key.clone());
            tokio::spawn(async move { feed.subscription(&sid, expiry, true, &key, &uri).await });
        }
        if self.of.start_following(&self.key.0) {
            tokio::spawn(follow(
                Arc::clone(&self.of),
                Arc::clone(upstream),
                Arc::clone(conn),
                stop,
            ));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.fresh && !self.kept {
            // Refused, or never answered: the upstream holds it for nobody, or not at all.
            self.of
                .inner
                .lock()
                .unwrap()
                .drop_hold(&self.holder, &self.key);
        }
    }
}

/// Asks each connection that replaces `conn` for the subscriptions held on `upstream`,
/// for as long as any are. An upstream the registry replaces (new settings or version)
/// is followed to the instance that took its place: its clients' subscriptions go on.
async fn follow(
    subscriptions: Arc<ResourceSubscriptions>,
    mut upstream: Arc<Upstream>,
    mut conn: Arc<Connection>,
    stop: CancellationToken,
) {
    let key = upstream.key();
    let mut after = "the server reconnected";
    loop {
        tokio::select! {
            () = conn.closed().cancelled() => {}
            _ = upstream.stopped() => {}
            () = stop.cancelled() => return,
        }
        // The next connection: this upstream's, or its successor's.
        conn = loop {
            let next = tokio::select! {
                next = upstream.next() => next,
                () = stop.cancelled() => return,
            };
            match next {
                Next::Connected(conn) => break conn,
                Next::Replaced(successor) => {
                    subscriptions.retarget(&key, &successor);
                    upstream = successor;
                    after = "the registry replaced the server";
                }
                // Removed from the registry, or the gateway stops: nothing to restore.
                Next::Ended => return subscriptions.stop_following(&key),
            }
        };
        let Some(uris) = subscriptions.held_on(&key) else {
            return;
        };
        let mut restored = 0;
        for uri in &uris {
            match subscribe(&upstream, &conn, uri).await {
                Ok(()) => restored += 1,
                Err(e) => {
                    tracing::warn!(upstream = %upstream.name, tenant = upstream.tenant.as_deref(), %uri, error = %e, after, "a resource subscription could not be restored")
                }
            }
        }
        tracing::info!(upstream = %upstream.name, tenant = upstream.tenant.as_deref(), restored, held = uris.len(), after, "resource subscriptions restored");
        after = "the server reconnected";
    }
}

/// Asks the upstream on `conn` for updates of `uri`.
async fn subscribe(
    upstream: &Upstream,
    conn: &Arc<Connection>,
    uri: &str,
) -> Result<(), UpstreamError> {
    let request = jsonrpc::request("resources/subscribe", json!({ "uri": uri }));
    upstream
        .request(conn, request, upstream.timeout())
        .await
        .map(drop)
}

/// Another replica says session `sid` took (or let go of) a subscription to `uri` on the
/// upstream of `key`. Its updates come on the session's GET stream: taken where that is.
pub fn heard(gw: &Gateway, sid: &str, taken: bool, key: &str, uri: &str, expiry: u64) {
    let holder = Holder::Session(sid.to_string());
    let subscriptions = &gw.resource_subscriptions;
    if !taken {
        subscriptions.let_go(&holder, key, uri);
        return;
    }
    let Some(upstream) = gw.upstreams.get(key) else {
        return;
    };
    if !gw.resumable.holds_get_stream(sid) {
        return;
    }
    // Held before anything is awaited: a let-go heard next finds it.
    let Ok(pending) = subscriptions.begin(holder, Some(expiry), &upstream, uri, unix_now()) else {
        return;
    };
    let stop = gw.shutdown.clone();
    tokio::spawn(async move { pending.ask(&upstream, &stop).await });
}

/// What a request does to the subscriptions held here, decided just before it goes
/// upstream: nothing else runs between the two, so a subscribe and another holder's
/// unsubscribe cannot pass each other on the way.
pub enum Asked {
    /// Not a subscription request, or a subscribe by a caller without a session (which
    /// holds nothing): passed on as it is.
    Other,
    /// A session's subscribe: passed on, and held once the upstream accepts it.
    Subscribe(Pending),
    /// An unsubscribe from what others still hold: answered here, the upstream keeps
    /// sending their updates.
    HeldByOthers,
    /// A subscribe past `MAX_PER_HOLDER`.
    TooMany,
}

/// What the subscriptions held here make of a request `method` to `upstream`.
pub fn asked(
    gw: &Gateway,
    ctx: &Ctx,
    upstream: &Arc<Upstream>,
    method: &str,
    body: &Map<String, Value>,
) -> Asked {
    let subscribe = match method {
        "resources/subscribe" => true,
        "resources/unsubscribe" => false,
        _ => return Asked::Other,
    };
    // A URI that is not a string is the upstream's to refuse.
    let Some(uri) = jsonrpc::params(body)
        .and_then(|p| p.get("uri"))
        .and_then(Value::as_str)
    else {
        return Asked::Other;
    };
    let holder = ctx
        .session
        .as_ref()
        .map(|claims| Holder::Session(claims.sid.clone()));
    let subscriptions = &gw.resource_subscriptions;
    if !subscribe {
        if let Some(claims) = &ctx.session {
            // Other replicas holding it for this session let go too.
            let (feed, expiry) = (Arc::clone(&gw.session_feed), gw.session_expiry(claims));
            let (sid, key, uri) = (claims.sid.clone(), upstream.key(), uri.to_string());
            tokio::spawn(async move { feed.subscription(&sid, expiry, false, &key, &uri).await });
        }
        return if subscriptions.release(holder.as_ref(), upstream, uri) {
            Asked::HeldByOthers
        } else {
            Asked::Other
        };
    }
    let (Some(holder), Some(claims)) = (holder, &ctx.session) else {
        return Asked::Other;
    };
    let expiry = gw.session_expiry(claims);
    match subscriptions.begin(holder, Some(expiry), upstream, uri, unix_now()) {
        Ok(mut pending) => {
            pending.share = Some((Arc::clone(&gw.session_feed), expiry));
            Asked::Subscribe(pending)
        }
        Err(TooMany) => Asked::TooMany,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> Key {
        ("s".to_string(), uri.to_string())
    }

    fn session(sid: &str) -> Holder {
        Holder::Session(sid.to_string())
    }

    fn held(inner: &mut Inner, holder: &Holder, expiry: Option<u64>, uri: &str) -> bool {
        inner.hold(holder, expiry, &key(uri), Weak::new()).unwrap()
    }

    #[test]
    fn the_last_holder_letting_go_is_the_one_the_upstream_hears_of() {
        let mut inner = Inner::default();
        let (a, b) = (session("a"), session("b"));
        held(&mut inner, &a, None, "file:///x");
        held(&mut inner, &b, None, "file:///x");
        assert!(
            inner.drop_hold(&a, &key("file:///x")).is_none(),
            "b still holds it"
        );
        assert!(inner.subscribed.contains_key(&key("file:///x")));
        assert!(
            inner.drop_hold(&b, &key("file:///x")).is_some(),
            "nobody holds it"
        );
        assert!(inner.subscribed.is_empty() && inner.held.is_empty());
    }

    #[test]
    fn a_stranger_letting_go_of_what_it_never_held_changes_nothing() {
        let mut inner = Inner::default();
        held(&mut inner, &session("a"), None, "file:///x");
        assert!(inner.drop_hold(&session("b"), &key("file:///x")).is_none());
        assert!(
            inner.subscribed[&key("file:///x")]
                .by
                .contains(&session("a"))
        );
    }

    #[test]
    fn a_holder_going_lets_go_of_all_it_held_and_only_that() {
        let mut inner = Inner::default();
        let (a, b) = (session("a"), Holder::Listen(7));
        held(&mut inner, &a, None, "file:///x");
        held(&mut inner, &a, None, "file:///y");
        held(&mut inner, &b, None, "file:///y");
        let lasts: Vec<String> = inner.drop_holder(&a).into_iter().map(|(_, u)| u).collect();
        assert_eq!(lasts, ["file:///x"]);
        assert_eq!(
            inner.subscribed.keys().collect::<Vec<_>>(),
            [&key("file:///y")]
        );
    }

    #[test]
    fn sessions_past_their_expiry_lapse_and_listen_streams_do_not() {
        let mut inner = Inner::default();
        held(&mut inner, &session("old"), Some(100), "file:///x");
        held(&mut inner, &session("new"), Some(300), "file:///y");
        held(&mut inner, &Holder::Listen(1), None, "file:///z");
        let lapsed: Vec<String> = inner.lapse(200).into_iter().map(|(_, u)| u).collect();
        assert_eq!(lapsed, ["file:///x"]);
        assert!(!inner.held.contains_key(&session("old")));
        assert_eq!(inner.subscribed.len(), 2);
    }

    #[test]
    fn a_holder_takes_a_bounded_number_and_repeats_are_not_fresh() {
        let mut inner = Inner::default();
        let a = session("a");
        for n in 0..MAX_PER_HOLDER {
            assert!(held(&mut inner, &a, None, &format!("file:///{n}")));
        }
        assert!(!held(&mut inner, &a, None, "file:///0"), "held already");
        let more = inner.hold(&a, None, &key("file:///more"), Weak::new());
        assert_eq!(more, Err(TooMany));
        assert!(
            held(&mut inner, &session("b"), None, "file:///more"),
            "another holder's own bound"
        );
    }
}
