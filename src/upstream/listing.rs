//! Reading one whole list (tools, prompts, resources, templates) from an upstream, page
//! by page, for the aggregate endpoint and the gateway's own checks, and keeping it
//! ([`Catalog`]) until its TTL passes or the server says it changed.
//!
//! The pages are gathered into one list that is cached and relayed as part of one answer,
//! so the list as a whole is bounded like one message: its JSON may total the upstream's
//! `max_message_bytes`. A server whose cursor never ends, or comes back to an earlier
//! page, would otherwise be asked again until the timeout, filling memory with copies.
//! A list that breaks a bound is refused whole, never cut short: a partial list cached as
//! complete would make the gateway answer "Unknown tool" for the tools it left out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::MutexGuard;

use crate::gateway::jsonrpc::json_len;

/// Most pages read for one list. The byte bound keeps memory in check; this keeps the
/// number of round trips to a server that pages one item at a time in check.
pub const MAX_PAGES: usize = 1_000;

/// The four listable things a server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub const ALL: [ListKind; 4] = [
        Self::Tools,
        Self::Prompts,
        Self::Resources,
        Self::ResourceTemplates,
    ];

    pub fn from_method(method: &str) -> Option<Self> {
        Some(match method {
            "tools/list" => Self::Tools,
            "prompts/list" => Self::Prompts,
            "resources/list" => Self::Resources,
            "resources/templates/list" => Self::ResourceTemplates,
            _ => return None,
        })
    }
    pub fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
        }
    }
    pub fn result_key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }
    /// The server capability that says the list exists.
    pub fn capability(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources | Self::ResourceTemplates => "resources",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
    fn changed_notification(self) -> &'static str {
        match self {
            Self::Tools => "notifications/tools/list_changed",
            Self::Prompts => "notifications/prompts/list_changed",
            Self::Resources | Self::ResourceTemplates => "notifications/resources/list_changed",
        }
    }
}

/// An upstream's lists, kept until `ttl` passes or the server says one changed.
///
/// One fetch per kind runs at a time: when a list expires under load, the calls that need
/// it wait for that fetch and share its result, rather than each reading every page
/// again ([`Catalog::turn`]).
pub struct Catalog {
    ttl: Duration,
    kept: Mutex<Kept>,
    fetching: [tokio::sync::Mutex<()>; 4],
}

#[derive(Default)]
struct Kept {
    lists: [Option<(Instant, Arc<Vec<Value>>)>; 4],
    /// Bumped by every change the server announces, so a fetch that started before
    /// the change does not keep the list as it was.
    generations: [u64; 4],
}

impl Catalog {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            kept: Mutex::new(Kept::default()),
            fetching: Default::default(),
        }
    }

    /// The list of `kind` if it was fetched within the TTL, or (`since`) completed after
    /// the caller asked for it.
    pub fn get(&self, kind: ListKind, since: Option<Instant>) -> Option<Arc<Vec<Value>>> {
        let kept = self.kept.lock().unwrap();
        let (at, items) = kept.lists[kind.index()].as_ref()?;
        (at.elapsed() < self.ttl || since.is_some_and(|since| *at >= since))
            .then(|| Arc::clone(items))
    }

    /// The right to fetch `kind` now, waiting at most `wait` for a fetch in progress.
    pub async fn turn(&self, kind: ListKind, wait: Duration) -> Option<MutexGuard<'_, ()>> {
        tokio::time::timeout(wait, self.fetching[kind.index()].lock())
            .await
            .ok()
    }

    /// What [`Catalog::put`] needs to know that nothing changed during a fetch.
    pub fn generation(&self, kind: ListKind) -> u64 {
        self.kept.lock().unwrap().generations[kind.index()]
    }

    /// Keeps a fetched list, unless the server announced a change since `generation`.
    pub fn put(&self, kind: ListKind, generation: u64, items: &Arc<Vec<Value>>) {
        let mut kept = self.kept.lock().unwrap();
        if kept.generations[kind.index()] == generation {
            kept.lists[kind.index()] = Some((Instant::now(), Arc::clone(items)));
        }
    }

    /// Forgets the lists a `notifications/*/list_changed` method names.
    pub fn changed(&self, method: &str) {
        let mut kept = self.kept.lock().unwrap();
        for kind in ListKind::ALL {
            if kind.changed_notification() == method {
                kept.lists[kind.index()] = None;
                kept.generations[kind.index()] += 1;
            }
        }
    }

    /// Forgets every list: the server was connected again and may offer others.
    pub fn clear(&self) {
        let mut kept = self.kept.lock().unwrap();
        for kind in ListKind::ALL {
            kept.lists[kind.index()] = None;
            kept.generations[kind.index()] += 1;
        }
    }
}

/// A list being read: what the pages so far held, and what they cost.
pub struct Pages {
    kind: ListKind,
    limit: usize,
    items: Vec<Value>,
    bytes: usize,
    cursors: HashSet<String>,
}

/// What to do after a page.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Ask for the page at this cursor.
    Page(Value),
    /// The list is whole.
    Done,
}

impl Pages {
    /// A list of `kind` whose JSON may total `limit` bytes.
    pub fn new(kind: ListKind, limit: usize) -> Self {
        Self {
            kind,
            limit,
            items: Vec::new(),
            bytes: 0,
            cursors: HashSet::new(),
        }
    }

    /// Takes one page's `result`; says what comes next, or why the list is refused.
    pub fn take(&mut self, mut result: Value) -> Result<Next, String> {
        let method = self.kind.method();
        let cursor = result
            .get_mut("nextCursor")
            .map(Value::take)
            .filter(|c| !c.is_null());
        let page = result.get_mut(self.kind.result_key()).map(Value::take);
        self.bytes += page.as_ref().map_or(0, json_len) + cursor.as_ref().map_or(0, json_len);
        if self.bytes > self.limit {
            return Err(format!(
                "its {method} is larger than {} bytes, the upstream's max_message_bytes \
                 (after {} pages)",
                self.limit,
                self.cursors.len() + 1
            ));
        }
        if let Some(Value::Array(page)) = page {
            self.items.extend(page);
        }
        let Some(cursor) = cursor else {
            return Ok(Next::Done);
        };
        if self.cursors.len() + 1 >= MAX_PAGES {
            return Err(format!("its {method} has more than {MAX_PAGES} pages"));
        }
        if !self.cursors.insert(cursor.to_string()) {
            return Err(format!(
                "its {method} came back to the cursor of an earlier page (page {}): \
                 it would never end",
                self.cursors.len() + 1
            ));
        }
        Ok(Next::Page(cursor))
    }

    /// The whole list, once [`Pages::take`] has said `Done`.
    pub fn into_items(self) -> Vec<Value> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(names: &[&str], cursor: Option<&str>) -> Value {
        let tools: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
        match cursor {
            Some(c) => json!({"tools": tools, "nextCursor": c}),
            None => json!({"tools": tools}),
        }
    }

    fn list(name: &str) -> Arc<Vec<Value>> {
        Arc::new(vec![json!({"name": name})])
    }

    #[test]
    fn a_kept_list_is_given_within_its_ttl_or_to_a_caller_that_asked_before_it_was_fetched() {
        let catalog = Catalog::new(Duration::ZERO);
        let asked = Instant::now();
        let generation = catalog.generation(ListKind::Tools);
        catalog.put(ListKind::Tools, generation, &list("a"));
        assert!(
            catalog.get(ListKind::Tools, None).is_none(),
            "a zero TTL keeps nothing fresh"
        );
        assert_eq!(
            catalog.get(ListKind::Tools, Some(asked)),
            Some(list("a")),
            "fetched after it asked"
        );
        assert!(catalog.get(ListKind::Tools, Some(Instant::now())).is_none());
        assert!(
            catalog.get(ListKind::Prompts, Some(asked)).is_none(),
            "kinds are kept apart"
        );

        let catalog = Catalog::new(Duration::from_secs(60));
        catalog.put(ListKind::Prompts, 0, &list("p"));
        assert_eq!(catalog.get(ListKind::Prompts, None), Some(list("p")));
    }

    #[test]
    fn a_change_announced_during_a_fetch_keeps_the_fetched_list_out() {
        let catalog = Catalog::new(Duration::from_secs(60));
        catalog.put(ListKind::Tools, 0, &list("old"));
        let generation = catalog.generation(ListKind::Tools);
        catalog.changed("notifications/tools/list_changed");
        assert!(
            catalog.get(ListKind::Tools, None).is_none(),
            "forgotten at the change"
        );
        catalog.put(
            ListKind::Tools,
            generation,
            &list("fetched before the change"),
        );
        assert!(catalog.get(ListKind::Tools, None).is_none());
        catalog.put(
            ListKind::Tools,
            catalog.generation(ListKind::Tools),
            &list("new"),
        );
        assert_eq!(catalog.get(ListKind::Tools, None), Some(list("new")));
        // Resources and templates change together; tools are left alone.
        catalog.put(ListKind::Resources, 0, &list("r"));
        catalog.put(ListKind::ResourceTemplates, 0, &list("t"));
        catalog.changed("notifications/resources/list_changed");
        assert!(catalog.get(ListKind::Resources, None).is_none());
        assert!(catalog.get(ListKind::ResourceTemplates, None).is_none());
        assert_eq!(catalog.get(ListKind::Tools, None), Some(list("new")));
        catalog.clear();
        assert!(catalog.get(ListKind::Tools, None).is_none());
    }

    #[tokio::test]
    async fn one_fetch_per_kind_at_a_time_and_a_waiter_gives_up_at_its_wait() {
        let catalog = Catalog::new(Duration::from_secs(60));
        let first = catalog
            .turn(ListKind::Tools, Duration::from_millis(10))
            .await;
        assert!(first.is_some());
        assert!(
            catalog
                .turn(ListKind::Tools, Duration::from_millis(10))
                .await
                .is_none()
        );
        assert!(
            catalog
                .turn(ListKind::Prompts, Duration::from_millis(10))
                .await
                .is_some()
        );
        drop(first);
        assert!(
            catalog
                .turn(ListKind::Tools, Duration::from_millis(10))
                .await
                .is_some()
        );
    }

    #[test]
    fn pages_are_joined_in_order_until_a_page_has_no_cursor() {
        let mut pages = Pages::new(ListKind::Tools, 1 << 20);
        assert_eq!(
            pages.take(page(&["a", "b"], Some("2"))),
            Ok(Next::Page(json!("2")))
        );
        assert_eq!(
            pages.take(page(&["c"], Some("3"))),
            Ok(Next::Page(json!("3")))
        );
        // A null cursor ends the list like a missing one.
        assert_eq!(
            pages.take(json!({"tools": [{"name": "d"}], "nextCursor": null})),
            Ok(Next::Done)
        );
        let names: Vec<Value> = pages
            .into_items()
            .into_iter()
            .map(|t| t["name"].clone())
            .collect();
        assert_eq!(names, [json!("a"), json!("b"), json!("c"), json!("d")]);
    }

    #[test]
    fn a_list_may_fill_the_limit_exactly_but_not_pass_it() {
        let one = page(&["abcdefgh"], None);
        let size = json_len(&one["tools"]);
        assert_eq!(size, serde_json::to_string(&one["tools"]).unwrap().len());
        let mut pages = Pages::new(ListKind::Tools, 2 * size);
        assert_eq!(
            pages.take(page(&["abcdefgh"], Some("x"))).map(|_| ()),
            Ok(())
        );
        let mut at_limit = Pages::new(ListKind::Tools, 2 * size + json_len(&json!("x")));
        at_limit.take(page(&["abcdefgh"], Some("x"))).unwrap();
        assert_eq!(at_limit.take(one.clone()), Ok(Next::Done));
        let err = pages.take(one).unwrap_err();
        assert!(
            err.contains("tools/list is larger than") && err.contains("max_message_bytes"),
            "{err}"
        );
        assert!(err.contains("after 2 pages"), "{err}");
    }

    #[test]
    fn a_cursor_that_comes_back_refuses_the_list() {
        let mut pages = Pages::new(ListKind::Prompts, 1 << 20);
        let p = |c| json!({"prompts": [{"name": "p"}], "nextCursor": c});
        assert!(matches!(pages.take(p("a")), Ok(Next::Page(_))));
        assert!(matches!(pages.take(p("b")), Ok(Next::Page(_))));
        let err = pages.take(p("a")).unwrap_err();
        assert!(
            err.contains("prompts/list came back to the cursor of an earlier page"),
            "{err}"
        );
    }

    #[test]
    fn a_list_with_too_many_pages_is_refused_not_cut_short() {
        let mut pages = Pages::new(ListKind::Resources, 1 << 30);
        let p = |i: usize| json!({"resources": [], "nextCursor": i.to_string()});
        for i in 1..MAX_PAGES {
            assert_eq!(pages.take(p(i)), Ok(Next::Page(json!(i.to_string()))));
        }
        let err = pages.take(p(MAX_PAGES)).unwrap_err();
        assert!(
            err.contains(&format!("more than {MAX_PAGES} pages")),
            "{err}"
        );
    }

    #[test]
    fn a_page_without_its_array_adds_nothing() {
        let mut pages = Pages::new(ListKind::ResourceTemplates, 1 << 20);
        assert_eq!(
            pages.take(json!({"tools": [{"name": "wrong key"}]})),
            Ok(Next::Done)
        );
        assert!(pages.into_items().is_empty());
    }
}
