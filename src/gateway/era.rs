//! Protocol eras on one endpoint: the session-based revisions (2024-11-05 … 2025-11-25,
//! `initialize` + `Mcp-Session-Id`) and the stateless 2026-07-28 revision (per-request
//! `_meta`, `Mcp-Method`/`Mcp-Name` headers). This module decides which one a request
//! speaks and validates the modern request metadata.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value, json};

use super::jsonrpc::{HEADER_MISMATCH, INVALID_PARAMS, UNSUPPORTED_PROTOCOL_VERSION, quoted};

pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
pub const LATEST_LEGACY: &str = "2025-11-25";
/// Assumed for a session request without `MCP-Protocol-Version` (the spec allows it for
/// clients older than 2025-06-18).
pub const DEFAULT_UNVERSIONED: &str = "2025-03-26";

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

// Header names as `HeaderName`s: a lookup by `&str` parses and validates the name first,
// on every request (about 400 instructions per lookup, six lookups per call).
pub const HEADER_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub const HEADER_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub const HEADER_METHOD: HeaderName = HeaderName::from_static("mcp-method");
pub const HEADER_NAME: HeaderName = HeaderName::from_static("mcp-name");
pub const HEADER_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn all_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .chain(LEGACY_VERSIONS)
        .copied()
        .collect()
}

/// The version answered to a legacy `initialize`: the client's when we speak it, else
/// the latest session-based revision (a client asking for 2026-07-28 through
/// `initialize` gets 2025-11-25, as the spec requires).
pub fn negotiate_legacy(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| LEGACY_VERSIONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(LATEST_LEGACY)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Era {
    Legacy,
    Modern,
}

pub fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn meta(body: &Map<String, Value>) -> Option<&Map<String, Value>> {
    body.get("params")?.get("_meta")?.as_object()
}

/// Which era a request speaks. A request with modern `_meta` is modern, `initialize`
/// included (2026-07-28 has none: it is refused); any other `initialize` opens a legacy
/// session; a request without a session and with a version header that is not a legacy
/// one is modern.
pub fn detect(method: &str, body: &Map<String, Value>, headers: &HeaderMap) -> Era {
    if meta(body).is_some_and(|m| m.contains_key(META_PROTOCOL_VERSION)) {
        return Era::Modern;
    }
    if method == "initialize" {
        return Era::Legacy;
    }
    let has_session = headers.contains_key(HEADER_SESSION_ID);
    match header_str(headers, HEADER_PROTOCOL_VERSION) {
        Some(v) if !has_session && !LEGACY_VERSIONS.contains(&v) => Era::Modern,
        _ => Era::Legacy,
    }
}

/// Session-era methods 2026-07-28 removed, with what replaces each. Upstreams of the
/// session era still implement them, so passed on they would succeed: a subscription made
/// by a request that has no session would be held on the gateway's shared upstream
/// session with nobody to deliver its updates to, nor to end it, and a level set would
/// be the shared session's.
pub fn replaced_in_modern(method: &str) -> Option<&'static str> {
    match method {
        "initialize" => Some(
            "there is no handshake: each request carries its version and capabilities in _meta, and server/discover describes the server",
        ),
        "ping" => Some("any request, such as server/discover, shows the server is there"),
        "logging/setLevel" => Some(
            "a request asks for the log messages it brings with _meta io.modelcontextprotocol/logLevel",
        ),
        "resources/subscribe" | "resources/unsubscribe" => {
            Some("subscriptions/listen with params.notifications.resourceSubscriptions replaces it")
        }
        _ => None,
    }
}

/// A request refused before it reaches an upstream: HTTP 400 with this JSON-RPC error.
#[derive(Debug, Clone, PartialEq)]
pub struct ModernError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

pub(super) fn mismatch(message: String) -> ModernError {
    ModernError {
        code: HEADER_MISMATCH,
        message: format!("Header mismatch: {message}"),
        data: None,
    }
}

/// Validates a 2026-07-28 request's metadata and mirrored headers; returns the version.
pub fn validate_modern(
    method: &str,
    body: &Map<String, Value>,
    headers: &HeaderMap,
) -> Result<String, ModernError> {
    let header_version = header_str(headers, HEADER_PROTOCOL_VERSION);
    let meta = meta(body);
    let body_version = meta
        .and_then(|m| m.get(META_PROTOCOL_VERSION))
        .and_then(Value::as_str);
    let unsupported = |requested: &str| ModernError {
        code: UNSUPPORTED_PROTOCOL_VERSION,
        message: "Unsupported protocol version".into(),
        data: Some(json!({ "supported": all_versions(), "requested": requested })),
    };
    // The headers are checked against the body first, then the version they agree on.
    let requested = match (header_version, body_version) {
        (None, _) => return Err(mismatch("MCP-Protocol-Version header is required".into())),
        (Some(h), Some(b)) if h != b => {
            return Err(mismatch(format!(
                "MCP-Protocol-Version header value '{}' does not match body value '{}'",
                quoted(h),
                quoted(b)
            )));
        }
        (Some(_), Some(b)) => b,
        // A version this gateway does not know may well lay its request out otherwise.
        (Some(h), None) if !MODERN_VERSIONS.contains(&h) => return Err(unsupported(h)),
        (Some(_), None) => {
            return Err(ModernError {
                code: INVALID_PARAMS,
                message: format!("Invalid params: _meta must carry {META_PROTOCOL_VERSION}"),
                data: None,
            });
        }
    };
    if !MODERN_VERSIONS.contains(&requested) {
        return Err(unsupported(requested));
    }
    if !meta.is_some_and(|m| {
        m.get(META_CLIENT_CAPABILITIES)
            .is_some_and(Value::is_object)
    }) {
        return Err(ModernError {
            code: INVALID_PARAMS,
            message: format!("Invalid params: _meta must carry {META_CLIENT_CAPABILITIES}"),
            data: None,
        });
    }
    match header_str(headers, HEADER_METHOD) {
        None => return Err(mismatch("Mcp-Method header is required".into())),
        Some(h) if h != method => {
            return Err(mismatch(format!(
                "Mcp-Method header value '{}' does not match body value '{}'",
                quoted(h),
                quoted(method)
            )));
        }
        _ => {}
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        // The Tasks extension: so that a load balancer can route by task.
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body_name = body
            .get("params")
            .and_then(|p| p.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let raw = headers
            .get(HEADER_NAME)
            .ok_or_else(|| mismatch("Mcp-Name header is required".into()))?;
        let raw = raw
            .to_str()
            .map_err(|_| mismatch("Mcp-Name header has invalid characters".into()))?;
        let header_name = decode_header_value(raw)
            .ok_or_else(|| mismatch("Mcp-Name header has an invalid Base64 value".into()))?;
        if header_name != body_name {
            return Err(mismatch(format!(
                "Mcp-Name header value '{}' does not match body value '{}'",
                quoted(&header_name),
                quoted(body_name)
            )));
        }
    }
    Ok(requested.to_string())
}

/// Decodes the `=?base64?…?=` sentinel form of `Mcp-Name` / `Mcp-Param-*` values.
pub fn decode_header_value(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(STANDARD.decode(encoded).ok()?).ok(),
        None => Some(raw.to_string()),
    }
}

/// Removes the modern envelope keys before a request goes to an upstream session: they
/// describe the client-to-gateway hop, not the gateway-to-upstream one.
pub fn strip_modern_meta(body: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = body.get_mut("params").and_then(|p| p.get_mut("_meta")) {
        meta.remove(META_PROTOCOL_VERSION);
        meta.remove(META_CLIENT_CAPABILITIES);
        meta.remove(META_CLIENT_INFO);
        meta.remove(META_LOG_LEVEL);
        if meta.is_empty() {
            if let Some(Value::Object(params)) = body.get_mut("params") {
                params.remove("_meta");
            }
        }
    }
}

/// Results that carry caching directives in 2026-07-28 (both fields required).
const CACHEABLE: &[&str] = &[
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// Completes a result for a modern client: `resultType`, and for cacheable results the
/// caching directives. The defaults (immediately stale, private) are the safe ones: what
/// a caller sees depends on who the caller is.
pub fn mark_complete(response: &mut Value, method: &str) {
    if let Some(Value::Object(result)) = response.get_mut("result") {
        result
            .entry("resultType")
            .or_insert_with(|| Value::String("complete".into()));
        if CACHEABLE.contains(&method) {
            result.entry("ttlMs").or_insert_with(|| json!(0));
            result
                .entry("cacheScope")
                .or_insert_with(|| json!("private"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn modern_body(method: &str, name: Option<&str>) -> Map<String, Value> {
        let mut params = json!({ "_meta": {
            META_PROTOCOL_VERSION: "2026-07-28",
            META_CLIENT_CAPABILITIES: {},
        }});
        if let Some(n) = name {
            params["name"] = json!(n);
        }
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
            .as_object()
            .unwrap()
            .clone()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn detects_eras() {
        let body = modern_body("tools/list", None);
        assert_eq!(detect("tools/list", &body, &HeaderMap::new()), Era::Modern);
        let handshake = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}}});
        let handshake = handshake.as_object().unwrap();
        assert_eq!(
            detect("initialize", handshake, &HeaderMap::new()),
            Era::Legacy
        );
        let modern_header = headers(&[("mcp-protocol-version", "2026-07-28")]);
        assert_eq!(
            detect("initialize", handshake, &modern_header),
            Era::Legacy,
            "a handshake without modern _meta opens a session"
        );
        assert_eq!(
            detect(
                "initialize",
                &modern_body("initialize", None),
                &modern_header
            ),
            Era::Modern,
            "one with modern _meta is refused as 2026-07-28 has none"
        );
        let plain = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})
            .as_object()
            .unwrap()
            .clone();
        let h = headers(&[
            ("mcp-protocol-version", "2025-06-18"),
            ("mcp-session-id", "x"),
        ]);
        assert_eq!(detect("tools/list", &plain, &h), Era::Legacy);
    }

    #[test]
    fn accepts_matching_headers_including_base64_names() {
        let body = modern_body("tools/call", Some("héllo"));
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            (
                "mcp-name",
                &format!("=?base64?{}?=", STANDARD.encode("héllo")),
            ),
        ]);
        assert_eq!(
            validate_modern("tools/call", &body, &h).unwrap(),
            "2026-07-28"
        );
    }

    #[test]
    fn rejects_mismatches_and_missing_headers() {
        let body = modern_body("tools/call", Some("echo"));
        let cases = [
            headers(&[("mcp-method", "tools/call"), ("mcp-name", "echo")]),
            headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-name", "echo")]),
            headers(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "echo"),
            ]),
            headers(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ]),
            headers(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "add"),
            ]),
        ];
        for h in cases {
            assert_eq!(
                validate_modern("tools/call", &body, &h).unwrap_err().code,
                HEADER_MISMATCH,
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_request_without_its_version_in_meta_is_invalid_params() {
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ]);
        let mut body = modern_body("tools/list", None);
        body["params"]["_meta"]
            .as_object_mut()
            .unwrap()
            .remove(META_PROTOCOL_VERSION);
        let no_meta = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        for body in [body, no_meta.as_object().unwrap().clone()] {
            let err = validate_modern("tools/list", &body, &h).unwrap_err();
            assert_eq!(err.code, INVALID_PARAMS, "{err:?}");
            assert!(err.message.contains(META_PROTOCOL_VERSION), "{err:?}");
        }
        // Of a version this gateway does not know, the layout is unknown too.
        let future = headers(&[("mcp-protocol-version", "2099-01-01")]);
        let no_meta = no_meta.as_object().unwrap();
        assert_eq!(
            validate_modern("tools/list", no_meta, &future)
                .unwrap_err()
                .code,
            UNSUPPORTED_PROTOCOL_VERSION
        );
    }

    #[test]
    fn headers_disagreeing_with_the_body_are_a_mismatch_before_the_version_is_judged() {
        let mut body = modern_body("tools/list", None);
        body["params"]["_meta"][META_PROTOCOL_VERSION] = json!("v999.0.0");
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ]);
        let err = validate_modern("tools/list", &body, &h).unwrap_err();
        assert_eq!(err.code, HEADER_MISMATCH, "{err:?}");
    }

    #[test]
    fn a_mismatch_repeats_only_the_start_of_a_long_value() {
        let long = "é".repeat(10_000);
        let body = modern_body("tools/call", Some(&long));
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        let message = validate_modern("tools/call", &body, &h)
            .unwrap_err()
            .message;
        let quoted = "é".repeat(crate::gateway::jsonrpc::QUOTED_CHARS);
        assert!(message.contains(&quoted), "{message}");
        assert!(message.len() < 400, "{} bytes", message.len());
    }

    #[test]
    fn a_task_request_names_its_task_in_mcp_name() {
        let mut body = modern_body("tasks/get", None);
        body["params"]["taskId"] = json!("t-1");
        let with = |name: Option<&str>| {
            let mut h = headers(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tasks/get"),
            ]);
            if let Some(name) = name {
                h.insert("mcp-name", name.parse().unwrap());
            }
            validate_modern("tasks/get", &body, &h).map_err(|e| e.code)
        };
        assert_eq!(with(Some("t-1")), Ok("2026-07-28".to_string()));
        assert_eq!(with(Some("t-2")), Err(HEADER_MISMATCH));
        assert_eq!(with(None), Err(HEADER_MISMATCH));
    }

    #[test]
    fn the_methods_2026_07_28_removed_are_not_modern_ones() {
        for method in ["resources/subscribe", "resources/unsubscribe"] {
            assert!(
                replaced_in_modern(method)
                    .is_some_and(|hint| hint.contains("subscriptions/listen"))
            );
        }
        assert!(
            replaced_in_modern("logging/setLevel")
                .is_some_and(|hint| hint.contains(META_LOG_LEVEL))
        );
        assert!(
            replaced_in_modern("initialize").is_some_and(|hint| hint.contains("server/discover"))
        );
        assert!(replaced_in_modern("ping").is_some());
        for method in [
            "resources/read",
            "subscriptions/listen",
            "tools/call",
            "server/discover",
        ] {
            assert_eq!(replaced_in_modern(method), None, "{method}");
        }
    }

    #[test]
    fn unknown_version_lists_supported_ones() {
        let mut body = modern_body("tools/list", None);
        body["params"]["_meta"][META_PROTOCOL_VERSION] = json!("1900-01-01");
        let h = headers(&[
            ("mcp-protocol-version", "1900-01-01"),
            ("mcp-method", "tools/list"),
        ]);
        let err = validate_modern("tools/list", &body, &h).unwrap_err();
        assert_eq!(err.code, UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(err.data.unwrap()["requested"], "1900-01-01");
    }

    #[test]
    fn negotiates_legacy_versions() {
        assert_eq!(negotiate_legacy(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate_legacy(Some("2026-07-28")), LATEST_LEGACY);
        assert_eq!(negotiate_legacy(None), LATEST_LEGACY);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_headers_and_meta_never_panic(
            method in ".{0,30}",
            version in ".{0,20}",
            header_version in proptest::option::of("[ -~]{0,20}"),
            header_method in proptest::option::of("[ -~]{0,30}"),
            header_name in proptest::option::of("[ -~]{0,40}"),
            name in ".{0,20}",
        ) {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {
                "name": name, "uri": name,
                "_meta": { META_PROTOCOL_VERSION: version, META_CLIENT_CAPABILITIES: {} }
            }}).as_object().unwrap().clone();
            let mut headers = HeaderMap::new();
            for (k, v) in [(HEADER_PROTOCOL_VERSION, header_version), (HEADER_METHOD, header_method), (HEADER_NAME, header_name)] {
                if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    headers.insert(k, v);
                }
            }
            let _ = detect(&method, &body, &headers);
            let _ = validate_modern(&method, &body, &headers);
            let _ = decode_header_value(header_name_or_empty(&headers));
        }
    }

    fn header_name_or_empty(h: &HeaderMap) -> &str {
        header_str(h, HEADER_NAME).unwrap_or("=?base64?!!?=")
    }
}
