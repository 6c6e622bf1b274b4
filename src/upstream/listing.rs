//! Reading one whole list (tools, prompts, resources, templates) from an upstream, page
//! by page, for the aggregate endpoint and the gateway's own checks.
//!
//! The pages are gathered into one list that is cached and relayed as part of one answer,
//! so the list as a whole is bounded like one message: its JSON may total the upstream's
//! `max_message_bytes`. A server whose cursor never ends, or comes back to an earlier
//! page, would otherwise be asked again until the timeout, filling memory with copies.
//! A list that breaks a bound is refused whole, never cut short: a partial list cached as
//! complete would make the gateway answer "Unknown tool" for the tools it left out.

use std::collections::HashSet;

use serde_json::Value;

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
    pub(super) fn changed_notification(self) -> &'static str {
        match self {
            Self::Tools => "notifications/tools/list_changed",
            Self::Prompts => "notifications/prompts/list_changed",
            Self::Resources | Self::ResourceTemplates => "notifications/resources/list_changed",
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
