//! What a caller of `/mcp` may do: which servers and tools it sees and calls, how many
//! requests per minute, how many at once. A key's policy can only narrow its tenant's.
//!
//! Denied servers and tools are indistinguishable from absent ones: they are left out of
//! lists, and calling them gets the same error as calling something that does not exist.

pub mod concurrency;
pub mod limiter;
mod redis_fallback;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Servers that may be used; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// Tools that may be used, as `server:tool`; either side may be `*` or end in `*`
    /// (e.g. `github:*`, `demo:echo`, `*:read_*`). Absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Requests handled at once, by every replica together (with Redis; else per process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// A server or tool name, or a pattern of them (`*`, `prefix*`), as policies and server
/// tool lists accept them.
pub fn valid_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./*".contains(c))
}

/// `*` matches anything, `prefix*` what starts with the prefix, anything else itself.
pub fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Policy {
    pub fn allows_server(&self, server: &str) -> bool {
        self.servers
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| glob(s, server)))
    }

    pub fn allows_tool(&self, server: &str, tool: &str) -> bool {
        self.tools.as_ref().is_none_or(|list| {
            list.iter().any(|entry| match entry.split_once(':') {
                Some((s, t)) => glob(s, server) && glob(t, tool),
                None => false,
            })
        })
    }

    /// Whether some tools of `server` may be hidden (so its list must be filtered).
    pub fn restricts_tools(&self) -> bool {
        self.tools.is_some()
    }

    /// Checks the values an administrator entered; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(servers) = &self.servers {
            if let Some(bad) = servers.iter().find(|s| !valid_pattern(s)) {
                return Err((
                    "policy.servers".into(),
                    format!("'{bad}' is not a server name or pattern"),
                ));
            }
        }
        if let Some(tools) = &self.tools {
            for entry in tools {
                let ok = entry
                    .split_once(':')
                    .is_some_and(|(s, t)| valid_pattern(s) && valid_pattern(t));
                if !ok {
                    return Err((
                        "policy.tools".into(),
                        format!("'{entry}' is not server:tool (either may be * or end in *)"),
                    ));
                }
            }
        }
        if self.rate_limit_per_minute == Some(0) {
            return Err((
                "policy.rate_limit_per_minute".into(),
                "must be at least 1 (omit it for no limit)".into(),
            ));
        }
        if self.max_concurrency == Some(0) {
            return Err((
                "policy.max_concurrency".into(),
                "must be at least 1 (omit it for no limit)".into(),
            ));
        }
        Ok(())
    }

    /// Stored form: JSON, or NULL when the policy restricts nothing.
    pub fn to_column(&self) -> Option<String> {
        (self != &Policy::default())
            .then(|| serde_json::to_string(self).expect("policies serialize"))
    }

    pub fn from_column(raw: Option<String>) -> Self {
        raw.and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default()
    }
}

/// The policies that apply to one authenticated key: its tenant's and its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub key_id: String,
    pub tenant_id: String,
    pub key: Policy,
    pub tenant: Policy,
}

impl Access {
    pub fn allows_server(&self, server: &str) -> bool {
        self.tenant.allows_server(server) && self.key.allows_server(server)
    }

    pub fn allows_tool(&self, server: &str, tool: &str) -> bool {
        self.allows_server(server)
            && self.tenant.allows_tool(server, tool)
            && self.key.allows_tool(server, tool)
    }

    pub fn restricts_tools(&self) -> bool {
        self.tenant.restricts_tools() || self.key.restricts_tools()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(servers: Option<&[&str]>, tools: Option<&[&str]>) -> Policy {
        Policy {
            servers: servers.map(|s| s.iter().map(|x| x.to_string()).collect()),
            tools: tools.map(|s| s.iter().map(|x| x.to_string()).collect()),
            ..Policy::default()
        }
    }

    #[test]
    fn absent_lists_allow_everything_and_patterns_match() {
        let open = Policy::default();
        assert!(open.allows_server("x") && open.allows_tool("x", "y"));
        let p = policy(
            Some(&["git*", "demo"]),
            Some(&["demo:echo", "github:read_*", "*:ping"]),
        );
        assert!(p.allows_server("github") && p.allows_server("demo") && !p.allows_server("brave"));
        assert!(p.allows_tool("demo", "echo") && !p.allows_tool("demo", "add"));
        assert!(p.allows_tool("github", "read_file") && !p.allows_tool("github", "write_file"));
        assert!(p.allows_tool("anything", "ping"));
    }

    #[test]
    fn a_key_only_narrows_its_tenant() {
        let access = Access {
            tenant: policy(Some(&["demo", "github"]), None),
            key: policy(None, Some(&["demo:*"])),
            ..Access::default()
        };
        assert!(access.allows_tool("demo", "echo"));
        assert!(
            !access.allows_tool("github", "read"),
            "the key allows demo's tools only"
        );
        assert!(
            !access.allows_server("brave"),
            "the tenant does not allow brave"
        );
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            policy(None, Some(&["no-colon"])).validate().unwrap_err().0,
            "policy.tools"
        );
        assert_eq!(
            policy(Some(&["bad name"]), None).validate().unwrap_err().0,
            "policy.servers"
        );
        let zero = Policy {
            rate_limit_per_minute: Some(0),
            ..Policy::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().0,
            "policy.rate_limit_per_minute"
        );
        assert!(Policy::default().to_column().is_none());
        let p = policy(Some(&["a"]), None);
        assert_eq!(Policy::from_column(p.to_column()), p);
    }
}
