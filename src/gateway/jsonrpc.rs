//! JSON-RPC 2.0 messages as the gateway sees them: raw JSON, classified but never
//! re-typed, so fields the gateway does not know pass through unchanged.

use serde_json::{Map, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Used by the MCP SDKs for a request that timed out.
pub const REQUEST_TIMEOUT: i64 = -32001;
/// The client cancelled the request (`notifications/cancelled`); the code LSP uses.
pub const REQUEST_CANCELLED: i64 = -32800;
/// The upstream server is down, crashed mid-call, or refused the connection.
/// (-32002 is MCP's "Resource not found", so this takes a code of its own.)
pub const UPSTREAM_UNAVAILABLE: i64 = -32010;
/// MCP: the resource URI is unknown.
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// 2026-07-28: HTTP headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the request needs a client capability it did not declare.
pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
/// 2026-07-28: the requested protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// Gantry's own: the caller's rate or concurrency limit is reached (sent with HTTP 429
/// and `Retry-After`; `data.retryAfterMs` says when to retry).
pub const RATE_LIMITED: i64 = -32029;

/// One classified JSON-RPC message. The whole object is kept for relaying.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        body: Map<String, Value>,
    },
    Notification {
        method: String,
        body: Map<String, Value>,
    },
    Response {
        id: Value,
        body: Map<String, Value>,
    },
}

/// Why a body is not a JSON-RPC message we accept, with the code to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: i64,
    pub message: String,
    pub id: Value,
}

/// Parses bytes into one JSON-RPC message. Batches are refused: the current protocol
/// revisions removed them.
pub fn parse(bytes: &[u8]) -> Result<Message, Rejection> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Rejection {
        code: PARSE_ERROR,
        message: format!("Parse error: {e}"),
        id: Value::Null,
    })?;
    classify(value)
}

pub fn classify(value: Value) -> Result<Message, Rejection> {
    let invalid = |message: &str, id: Value| Rejection {
        code: INVALID_REQUEST,
        message: format!("Invalid Request: {message}"),
        id,
    };
    let body = match value {
        Value::Object(map) => map,
        Value::Array(_) => return Err(invalid("JSON-RPC batches are not supported", Value::Null)),
        _ => return Err(invalid("expected a JSON object", Value::Null)),
    };
    let id = body.get("id").cloned();
    let id_ok = matches!(&id, None | Some(Value::String(_)) | Some(Value::Number(_)));
    let reply_id = if id_ok {
        id.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    if body.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\"", reply_id));
    }
    if !id_ok {
        return Err(invalid("\"id\" must be a string or a number", Value::Null));
    }
    match (body.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => {
            check_params(&body, &id)?;
            Ok(Message::Request {
                id,
                method: method.clone(),
                body,
            })
        }
        (Some(Value::String(method)), None) => {
            check_params(&body, &Value::Null)?;
            Ok(Message::Notification {
                method: method.clone(),
                body,
            })
        }
        (Some(_), id) => Err(invalid(
            "\"method\" must be a string",
            id.unwrap_or(Value::Null),
        )),
        (None, Some(id)) => {
            let has_result = body.contains_key("result");
            let has_error = body.contains_key("error");
            if has_result == has_error {
                return Err(invalid(
                    "a response has exactly one of \"result\" and \"error\"",
                    id,
                ));
            }
            Ok(Message::Response { id, body })
        }
        (None, None) => Err(invalid(
            "neither a request, a notification nor a response",
            Value::Null,
        )),
    }
}

fn check_params(body: &Map<String, Value>, id: &Value) -> Result<(), Rejection> {
    match body.get("params") {
        None | Some(Value::Object(_)) | Some(Value::Array(_)) => Ok(()),
        Some(_) => Err(Rejection {
            code: INVALID_REQUEST,
            message: "Invalid Request: \"params\" must be an object or an array".into(),
            id: id.clone(),
        }),
    }
}

pub fn error_response(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

pub fn result_response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// How much of a client's value an error message repeats: enough to recognise it, not a
/// request body's worth.
pub const QUOTED_CHARS: usize = 100;

/// `value` as an error message repeats it: its first [`QUOTED_CHARS`] characters.
pub fn quoted(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]).into(),
        None => value.into(),
    }
}

/// A request the gateway sends on its own behalf; the connection gives it its id.
pub fn request(method: &str, params: Value) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("jsonrpc".into(), json!("2.0"));
    body.insert("id".into(), json!(0));
    body.insert("method".into(), json!(method));
    body.insert("params".into(), params);
    body
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

/// The length of `value` as compact JSON, without writing it out.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("JSON values serialize");
    count.0
}

/// `params` of a message as an object, if it is one.
pub fn params(body: &Map<String, Value>) -> Option<&Map<String, Value>> {
    body.get("params").and_then(Value::as_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_three_kinds() {
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Ok(Message::Request { .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Ok(Message::Notification { .. })
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Ok(Message::Response { .. })
        ));
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        assert_eq!(parse(b"{nope").unwrap_err().code, PARSE_ERROR);
    }

    #[test]
    fn invalid_shapes_are_invalid_requests_keeping_a_usable_id() {
        let r = parse(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#).unwrap_err();
        assert_eq!((r.code, r.id), (INVALID_REQUEST, json!(7)));
        let r = parse(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#).unwrap_err();
        assert_eq!((r.code, r.id), (INVALID_REQUEST, Value::Null));
        assert_eq!(parse(b"[]").unwrap_err().code, INVALID_REQUEST);
        assert_eq!(parse(b"3").unwrap_err().code, INVALID_REQUEST);
        let r = parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#).unwrap_err();
        assert_eq!(r.code, INVALID_REQUEST);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("jsonrpc".to_string()),
                        Just("id".to_string()),
                        Just("method".to_string()),
                        Just("params".to_string()),
                        Just("result".to_string()),
                        Just("error".to_string()),
                        ".{0,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn arbitrary_json_is_classified_or_rejected_with_a_jsonrpc_code(value in json_value()) {
            if let Err(r) = classify(value) {
                prop_assert!(r.code == INVALID_REQUEST || r.code == PARSE_ERROR);
            }
        }
    }
}
