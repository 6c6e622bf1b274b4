//! `mcp_upstream_up`, `mcp_upstream_circuit_open` and `mcp_upstream_restarts_total`,
//! written at scrape time from the upstreams that exist now.
//!
//! Kept in the recorder, a series outlives its server: the recorder cannot forget one, so a
//! registered server an administrator removed would read `mcp_upstream_up 0` (and fire the
//! down alert) until the process restarts, and a replaced instance stopping after its
//! successor connected would set the shared series back to 0. Reading the live upstreams
//! on each scrape shows exactly the servers there are, in the state they are in.

use std::fmt::Write;

/// One upstream's state, as the scrape finds it.
pub struct UpstreamState<'a> {
    pub server: &'a str,
    /// The tenant that registered it; `None` for servers of the configuration file.
    pub tenant: Option<&'a str>,
    pub up: bool,
    pub circuit_open: bool,
    pub restarts: u64,
}

/// Each family: name, type, help, and its value for one upstream.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&UpstreamState<'_>) -> u64,
);

const FAMILIES: [Family; 3] = [
    (
        super::metrics::UPSTREAM_UP,
        "gauge",
        "1 when the upstream MCP server is connected",
        |s| u64::from(s.up),
    ),
    (
        super::metrics::UPSTREAM_CIRCUIT_OPEN,
        "gauge",
        "1 while calls to the upstream fail fast after repeated failures",
        |s| u64::from(s.circuit_open),
    ),
    (
        super::metrics::UPSTREAM_RESTARTS,
        "counter",
        "Upstream restarts after a crash or disconnect, since this instance of it started",
        |s| s.restarts,
    ),
];

/// Appends the three families (Prometheus text format) to `out`; nothing when there are
/// no upstreams (the control plane alone).
pub fn render(states: &[UpstreamState<'_>], out: &mut String) {
    if states.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for (name, kind, help, value_of) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for state in states {
            let value = value_of(state);
            out.push_str(name);
            out.push_str("{server=\"");
            escape_into(state.server, out);
            if let Some(tenant) = state.tenant {
                out.push_str("\",tenant=\"");
                escape_into(tenant, out);
            }
            let _ = writeln!(out, "\"}} {value}");
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state<'a>(server: &'a str, tenant: Option<&'a str>, up: bool) -> UpstreamState<'a> {
        UpstreamState {
            server,
            tenant,
            up,
            circuit_open: !up,
            restarts: 3,
        }
    }

    #[test]
    fn each_upstream_gets_its_own_series_in_every_family() {
        let mut out = String::from("http_requests_total 1");
        render(
            &[
                state("demo", None, true),
                state("tools", Some("t1"), true),
                state("tools", Some("t2"), false),
            ],
            &mut out,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "http_requests_total 1");
        assert!(lines.contains(&"mcp_upstream_up{server=\"demo\"} 1"));
        assert!(lines.contains(&"mcp_upstream_up{server=\"tools\",tenant=\"t1\"} 1"));
        assert!(lines.contains(&"mcp_upstream_up{server=\"tools\",tenant=\"t2\"} 0"));
        assert!(lines.contains(&"mcp_upstream_circuit_open{server=\"tools\",tenant=\"t2\"} 1"));
        assert!(lines.contains(&"mcp_upstream_restarts_total{server=\"demo\"} 3"));
        assert!(lines.contains(&"# TYPE mcp_upstream_restarts_total counter"));
        // Each family's samples follow its own TYPE line, as the format requires.
        let type_at = |name: &str| {
            lines
                .iter()
                .position(|l| *l == format!("# TYPE {name} gauge"))
                .unwrap()
        };
        let up = type_at("mcp_upstream_up");
        let circuit = type_at("mcp_upstream_circuit_open");
        assert!(
            lines[up + 1..circuit]
                .iter()
                .all(|l| l.starts_with("mcp_upstream_up{") || l.starts_with('#'))
        );
    }

    #[test]
    fn no_upstreams_add_nothing() {
        let mut out = String::from("x 1\n");
        render(&[], &mut out);
        assert_eq!(out, "x 1\n");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        render(&[state("a\"b\\c\nd", Some("t"), true)], &mut out);
        assert!(out.contains("mcp_upstream_up{server=\"a\\\"b\\\\c\\nd\",tenant=\"t\"} 1\n"));
    }
}
