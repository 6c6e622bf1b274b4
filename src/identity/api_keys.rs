//! API keys: `gty_` + 256 random bits. Only the SHA-256 is stored (a key has full
//! entropy, so a slow hash adds nothing); the prefix lets people recognise their keys.

pub use crate::gateway::auth::generate_key as generate;

/// Scopes a key may carry. `mcp` uses the MCP endpoint; `api` the control plane.
pub const SCOPES: &[&str] = &["mcp", "api"];

pub fn digest(key: &str) -> String {
    hex::encode(crate::gateway::auth::sha256(key))
}

/// What is shown in listings: enough to tell keys apart, far too little to guess one.
pub fn prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// Whether `token` looks like one of our keys (so other bearer tokens go elsewhere).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with("gty_")
}
