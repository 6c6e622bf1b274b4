//! Tool arguments mirrored in HTTP headers (2026-07-28, SEP-2243). A tool's `inputSchema`
//! may mark a property `"x-mcp-header": "Region"`; a client calling the tool over HTTP
//! then sends that argument's value as `Mcp-Param-Region` too, so that a load balancer or
//! a firewall can act on it without reading the body. Whatever acts on the body must check
//! the two agree, or a proxy could be shown one region while the server works in another.
//! The session-era servers behind gantry never see these headers: gantry checks them, as
//! the server its 2026-07-28 clients talk to.
//!
//! The rules are the transport specification's: only properties reachable through
//! `properties` alone, of a primitive type, with a header name that is an HTTP token,
//! count; an argument that is absent or null expects no header; one that is present and
//! whose header is missing, undecodable or different is refused with HTTP 400 and
//! `-32020`. `=?base64?…?=` values are decoded (invalid Base64 is refused), others are
//! literal; numbers compare as numbers (`42` and `42.0` agree).

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::{HeaderMap, HeaderName, StatusCode};
use serde_json::{Map, Value};

use super::era::{ModernError, decode_header_value, mismatch};
use super::http::{Ctx, rpc_error};
use super::jsonrpc::{self, quoted};
use crate::upstream::{ListKind, Upstream};

const PREFIX: &str = "mcp-param-";
/// How deep into nested `properties` a declaration is looked for.
const MAX_DEPTH: usize = 8;

/// The `Mcp-Param-*` headers of a 2026-07-28 request.
pub fn of_request(headers: &HeaderMap) -> Box<HeaderMap> {
    let mut found = Box::new(HeaderMap::new());
    for (name, value) in headers {
        if name.as_str().starts_with(PREFIX) {
            found.append(name.clone(), value.clone());
        }
    }
    found
}

/// An argument a tool's schema asks clients to mirror in a header.
#[derive(Debug, PartialEq)]
struct Declared {
    header: HeaderName,
    /// The header's name as the schema spells it, for error messages.
    shown: String,
    /// The argument's place in `arguments`: property names from the top.
    path: Vec<String>,
}

/// Every valid declaration of a tool's input schema.
fn declarations(input_schema: &Value) -> Vec<Declared> {
    let mut found = Vec::new();
    walk(input_schema, &mut Vec::new(), &mut found);
    found
}

fn walk<'a>(schema: &'a Value, path: &mut Vec<&'a str>, found: &mut Vec<Declared>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        path.push(name);
        if let Some(header) = property.get("x-mcp-header").and_then(Value::as_str) {
            let primitive = matches!(
                property.get("type").and_then(Value::as_str),
                Some("string" | "integer" | "number" | "boolean")
            );
            let shown = format!("Mcp-Param-{header}");
            let header = HeaderName::from_bytes(shown.as_bytes());
            let taken = |h: &HeaderName| found.iter().any(|d: &Declared| d.header == *h);
            // An invalid declaration is not enforced: no client could have followed it.
            if let (true, Ok(header)) = (primitive, header)
                && !taken(&header)
            {
                found.push(Declared {
                    header,
                    shown,
                    path: path.iter().map(|p| (*p).to_string()).collect(),
                });
            }
        } else if path.len() < MAX_DEPTH {
            walk(property, path, found);
        }
        path.pop();
    }
}

/// Whether `declared`'s header in `headers` agrees with its argument in `arguments`.
fn agrees(declared: &Declared, arguments: &Value, headers: &HeaderMap) -> Result<(), String> {
    let mut value = arguments;
    for key in &declared.path {
        match value.get(key) {
            Some(v) => value = v,
            None => return Ok(()),
        }
    }
    if value.is_null() {
        return Ok(());
    }
    let name = &declared.shown;
    let Some(raw) = headers.get(&declared.header) else {
        return Err(format!(
            "{name} header is required: the tool's argument '{}' is sent",
            quoted(&declared.path.join("."))
        ));
    };
    let raw = raw
        .to_str()
        .map_err(|_| format!("{name} header has invalid characters"))?;
    let header = decode_header_value(raw)
        .ok_or_else(|| format!("{name} header has an invalid Base64 value"))?;
    let same = match value {
        Value::String(s) => *s == header,
        Value::Bool(b) => header == if *b { "true" } else { "false" },
        Value::Number(n) => same_number(n, &header),
        // Objects and arrays are not primitives: nothing a header could carry.
        _ => true,
    };
    if same {
        Ok(())
    } else {
        let body = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Err(format!(
            "{name} header value '{}' does not match body value '{}'",
            quoted(&header),
            quoted(&body)
        ))
    }
}

/// Integers exactly (past 2^53 a float would call neighbours equal), others as floats.
fn same_number(body: &serde_json::Number, header: &str) -> bool {
    let whole = body
        .as_i64()
        .map(i128::from)
        .or_else(|| body.as_u64().map(i128::from));
    match (whole, header.parse::<i128>()) {
        (Some(body), Ok(header)) => body == header,
        _ => body
            .as_f64()
            .zip(header.parse::<f64>().ok())
            .is_some_and(|(body, header)| body == header),
    }
}

/// Checks a 2026-07-28 `tools/call`'s `Mcp-Param-*` headers against its arguments, by the
/// schema of the tool in the server's list (fetched when not cached). A list that cannot
/// be had leaves the call unchecked: the call will meet the same failing server.
pub async fn verify(
    ctx: &Ctx,
    upstream: &Arc<Upstream>,
    id: &Value,
    body: &Map<String, Value>,
) -> Result<(), Response> {
    let params = jsonrpc::params(body);
    let Some(tool) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Ok(());
    };
    let Some(headers) = ctx.mirrored_params.as_deref() else {
        return Ok(());
    };
    let wait = upstream.timeout().min(Duration::from_secs(5));
    let Ok(tools) = upstream.list(ListKind::Tools, wait).await else {
        return Ok(());
    };
    let Some(schema) = tools
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(tool))
        .and_then(|t| t.get("inputSchema"))
    else {
        return Ok(());
    };
    let arguments = params
        .and_then(|p| p.get("arguments"))
        .unwrap_or(&Value::Null);
    for declared in declarations(schema) {
        if let Err(message) = agrees(&declared, arguments, headers) {
            let ModernError {
                code,
                message,
                data,
            } = mismatch(message);
            return Err(rpc_error(StatusCode::BAD_REQUEST, id, code, &message, data));
        }
    }
    Ok(())
}

/// Whether a request is one whose headers `verify` checks: a 2026-07-28 `tools/call` that
/// came over MCP's HTTP transport.
pub fn applies(ctx: &Ctx, method: &str) -> bool {
    ctx.over_mcp_http() && method == "tools/call"
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "replicas": {"type": "integer", "x-mcp-header": "Replicas"},
            "dry": {"type": "boolean", "x-mcp-header": "Dry"},
            "target": {"type": "object", "properties": {
                "zone": {"type": "string", "x-mcp-header": "Zone"}}},
            "tags": {"type": "array", "x-mcp-header": "Tags"},
            "bad name": {"type": "string", "x-mcp-header": "Not A Token"},
            "list": {"type": "array", "items": {"type": "object", "properties": {
                "hidden": {"type": "string", "x-mcp-header": "Hidden"}}}},
            "again": {"type": "string", "x-mcp-header": "region"},
        }})
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn check(arguments: Value, pairs: &[(&str, &str)]) -> Result<(), String> {
        let h = headers(pairs);
        declarations(&schema())
            .iter()
            .try_for_each(|d| agrees(d, &arguments, &h))
    }

    #[test]
    fn only_primitives_reached_through_properties_with_token_names_count() {
        let mut found: Vec<(String, String)> = declarations(&schema())
            .into_iter()
            .map(|d| (d.header.to_string(), d.path.join(".")))
            .collect();
        found.sort();
        let expected = [
            ("mcp-param-dry", "dry"),
            ("mcp-param-region", "again"),
            ("mcp-param-replicas", "replicas"),
            ("mcp-param-zone", "target.zone"),
        ];
        // `again` and `region` name one header: the first met is kept (map order).
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for (header, _) in &expected {
            assert!(found.iter().any(|(h, _)| h == header), "{found:?}");
        }
    }

    #[test]
    fn headers_that_agree_pass_and_absent_arguments_expect_none() {
        let encoded = format!("=?base64?{}?=", STANDARD.encode("Zürich"));
        let args = json!({"region": "eu", "again": "eu", "replicas": 3, "dry": false, "target": {"zone": "Zürich"}});
        let pairs = [
            ("mcp-param-region", "eu"),
            ("mcp-param-replicas", "3.0"),
            ("mcp-param-dry", "false"),
            ("mcp-param-zone", encoded.as_str()),
        ];
        assert_eq!(check(args, &pairs), Ok(()));
        assert_eq!(check(json!({}), &[]), Ok(()));
        assert_eq!(check(json!({"region": null, "again": null}), &[]), Ok(()));
    }

    #[test]
    fn a_missing_different_or_undecodable_header_is_refused() {
        let args = json!({"replicas": 3});
        assert!(check(args.clone(), &[]).unwrap_err().contains("required"));
        let differs = check(args.clone(), &[("mcp-param-replicas", "4")]).unwrap_err();
        assert!(
            differs.contains("'4'") && differs.contains("'3'"),
            "{differs}"
        );
        let bad = check(
            json!({"region": "Hello", "again": "Hello"}),
            &[("mcp-param-region", "=?base64?SGVs!!!bG8=?=")],
        );
        assert!(bad.unwrap_err().contains("Base64"));
        // Without the exact wrapper a value is literal.
        let literal = format!("=?base64?{}", STANDARD.encode("Hello"));
        let args = json!({"region": literal, "again": literal});
        assert_eq!(
            check(args, &[("mcp-param-region", literal.as_str())]),
            Ok(())
        );
        assert!(check(json!({"dry": true}), &[("mcp-param-dry", "1")]).is_err());
        let big = json!({"replicas": 9_007_199_254_740_993_u64});
        assert!(check(big.clone(), &[("mcp-param-replicas", "9007199254740992")]).is_err());
        assert_eq!(
            check(big, &[("mcp-param-replicas", "9007199254740993")]),
            Ok(())
        );
    }
}
