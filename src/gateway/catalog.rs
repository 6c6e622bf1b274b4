//! Aggregation on `/mcp`: the lists of every upstream merged under `{server}{sep}{name}`
//! (or unprefixed, by prefix mode) in a deterministic order — servers by name, each
//! server's items in its own order — and names routed back to their server.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::PrefixMode;
use crate::upstream::ListKind;

#[derive(Debug, Default)]
pub struct Merged {
    pub items: Vec<Value>,
    /// Exposed name → (server, the server's own name).
    pub names: HashMap<String, (String, String)>,
    /// Names two servers both use, under prefix mode `never`: (name, kept, dropped).
    pub conflicts: Vec<(String, String, String)>,
}

pub fn merge(
    kind: ListKind,
    lists: &[(String, Arc<Vec<Value>>)],
    mode: PrefixMode,
    separator: &str,
) -> Merged {
    let name_of = |item: &Value| item.get("name").and_then(Value::as_str).map(str::to_string);
    let mut counts: HashMap<String, usize> = HashMap::new();
    if mode == PrefixMode::OnConflict {
        for (_, items) in lists {
            for name in items.iter().filter_map(name_of) {
                *counts.entry(name).or_default() += 1;
            }
        }
    }
    let mut merged = Merged::default();
    for (server, items) in lists {
        for item in items.iter() {
            let Some(name) = name_of(item) else { continue };
            let prefixed = match mode {
                PrefixMode::Always => true,
                PrefixMode::OnConflict => counts.get(&name).copied().unwrap_or(0) > 1,
                PrefixMode::Never => false,
            };
            let exposed = if prefixed {
                format!("{server}{separator}{name}")
            } else {
                name.clone()
            };
            if let Some((kept, _)) = merged.names.get(&exposed) {
                // Resources are routed by URI, so a shared display name is harmless for them.
                if kind == ListKind::Tools || kind == ListKind::Prompts {
                    merged
                        .conflicts
                        .push((exposed, kept.clone(), server.clone()));
                    continue;
                }
            }
            let mut item = item.clone();
            if prefixed {
                item["name"] = Value::String(exposed.clone());
            }
            merged
                .names
                .entry(exposed)
                .or_insert_with(|| (server.clone(), name));
            merged.items.push(item);
        }
    }
    merged
}

/// For prefix mode `always`: the server and original name, without any catalogue.
pub fn split_prefixed<'a>(
    exposed: &'a str,
    separator: &str,
    servers: impl Iterator<Item = &'a str>,
) -> Option<(&'a str, &'a str)> {
    servers
        .filter_map(|s| {
            let rest = exposed.strip_prefix(s)?.strip_prefix(separator)?;
            Some((s, rest))
        })
        .max_by_key(|(s, _)| s.len())
}

/// Which server serves a resource URI: an exact resource, else the template whose
/// literal prefix matches longest.
pub fn server_for_uri(
    uri: &str,
    resources: &[(String, Arc<Vec<Value>>)],
    templates: &[(String, Arc<Vec<Value>>)],
) -> Option<String> {
    for (server, items) in resources {
        if items
            .iter()
            .any(|r| r.get("uri").and_then(Value::as_str) == Some(uri))
        {
            return Some(server.clone());
        }
    }
    templates
        .iter()
        .flat_map(|(server, items)| {
            items.iter().filter_map(move |t| {
                let template = t.get("uriTemplate")?.as_str()?;
                let prefix = template.split('{').next().unwrap_or(template);
                (!prefix.is_empty() && uri.starts_with(prefix))
                    .then(|| (prefix.len(), server.clone()))
            })
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, server)| server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lists() -> Vec<(String, Arc<Vec<Value>>)> {
        vec![
            (
                "alpha".into(),
                Arc::new(vec![
                    json!({"name": "echo", "x": 1}),
                    json!({"name": "only_a"}),
                ]),
            ),
            (
                "beta".into(),
                Arc::new(vec![json!({"name": "echo", "x": 2})]),
            ),
        ]
    }

    fn names(m: &Merged) -> Vec<&str> {
        m.items
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn always_prefixes_in_server_order_and_keeps_unknown_fields() {
        let m = merge(ListKind::Tools, &lists(), PrefixMode::Always, "__");
        assert_eq!(names(&m), ["alpha__echo", "alpha__only_a", "beta__echo"]);
        assert_eq!(m.items[2]["x"], 2);
        assert_eq!(
            m.names["beta__echo"],
            ("beta".to_string(), "echo".to_string())
        );
    }

    #[test]
    fn on_conflict_prefixes_only_shared_names() {
        let m = merge(ListKind::Tools, &lists(), PrefixMode::OnConflict, "__");
        assert_eq!(names(&m), ["alpha__echo", "only_a", "beta__echo"]);
    }

    #[test]
    fn never_reports_conflicts_and_keeps_the_first() {
        let m = merge(ListKind::Tools, &lists(), PrefixMode::Never, "__");
        assert_eq!(names(&m), ["echo", "only_a"]);
        assert_eq!(
            m.conflicts,
            vec![("echo".to_string(), "alpha".to_string(), "beta".to_string())]
        );
    }

    #[test]
    fn splits_on_the_longest_matching_server() {
        let servers = ["a", "a__b"];
        assert_eq!(
            split_prefixed("a__b__tool", "__", servers.into_iter()),
            Some(("a__b", "tool"))
        );
        assert_eq!(split_prefixed("zzz__tool", "__", servers.into_iter()), None);
    }

    #[test]
    fn routes_uris_by_resource_then_template() {
        let res = vec![("r".to_string(), Arc::new(vec![json!({"uri": "file:///x"})]))];
        let tpl = vec![
            (
                "t1".to_string(),
                Arc::new(vec![json!({"uriTemplate": "demo://{id}"})]),
            ),
            (
                "t2".to_string(),
                Arc::new(vec![json!({"uriTemplate": "demo://kv/{key}"})]),
            ),
        ];
        assert_eq!(
            server_for_uri("file:///x", &res, &tpl).as_deref(),
            Some("r")
        );
        assert_eq!(
            server_for_uri("demo://kv/a", &res, &tpl).as_deref(),
            Some("t2")
        );
        assert_eq!(server_for_uri("other://", &res, &tpl), None);
    }
}
