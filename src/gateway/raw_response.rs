//! A JSON-RPC response relayed as the upstream wrote it.
//!
//! Most of what the gateway relays is answers, and it looks at little of them: the id
//! (replaced), whether it is an error and its code (for metrics and the circuit
//! breaker), whether it has a result. Building a `serde_json::Value` tree of every
//! answer only to write it out again cost about a tenth of a proxied call, and grows
//! with the answer (a large resource or tool result). So the top-level members are
//! located in the upstream's bytes, the few the gateway reads are parsed on demand, and
//! the answer is written out member by member with the caller's id. Members the gateway
//! does not know pass through byte for byte, in their order.

use std::ops::Range;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// (key, value) of a top-level member, as ranges of the message; keys without quotes.
type Member = (Range<usize>, Range<usize>);

#[derive(Clone, Debug)]
pub struct RawResponse {
    bytes: Bytes,
    members: Vec<Member>,
    /// Set by [`RawResponse::set_id`]: written instead of the upstream's id.
    id: Option<Value>,
}

/// What a message is, judged from its top-level members only.
pub enum Shape {
    /// Has an id and exactly one of `result` and `error`, and no `method`.
    Response(RawResponse),
    /// Anything else (requests, notifications, invalid messages, keys with escapes),
    /// handed back for the general path, which parses the whole message.
    Other(Bytes),
}

impl RawResponse {
    /// Locates the members of `bytes` when it is a JSON-RPC response.
    pub fn classify(bytes: Bytes) -> Shape {
        let Ok(members) = top_level_members(&bytes) else {
            return Shape::Other(bytes);
        };
        let key = |i: usize| &bytes[members[i].0.clone()];
        // A repeated key means whatever the last one says to a parser: the general path.
        let repeated = (0..members.len()).any(|i| (0..i).any(|j| key(i) == key(j)));
        let has = |name: &str| (0..members.len()).any(|i| key(i) == name.as_bytes());
        if repeated || has("method") || !has("id") || has("result") == has("error") {
            return Shape::Other(bytes);
        }
        Shape::Response(Self {
            bytes,
            members,
            id: None,
        })
    }

    fn member(&self, name: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(k, _)| &self.bytes[k.clone()] == name.as_bytes())
            .map(|(_, v)| &self.bytes[v.clone()])
    }

    /// The response's id (the caller's once [`set_id`](Self::set_id) was called).
    pub fn id(&self) -> Value {
        if let Some(id) = &self.id {
            return id.clone();
        }
        self.member("id")
            .and_then(|raw| serde_json::from_slice(raw).ok())
            .unwrap_or(Value::Null)
    }

    pub fn set_id(&mut self, id: Value) {
        self.id = Some(id);
    }

    pub fn has_result(&self) -> bool {
        self.member("result").is_some()
    }

    /// `error.code`, when the response is an error with an integer code.
    pub fn error_code(&self) -> Option<i64> {
        let raw = self.member("error")?;
        #[derive(serde::Deserialize)]
        struct Error {
            code: Option<i64>,
        }
        serde_json::from_slice::<Error>(raw).ok()?.code
    }

    /// The whole response as a tree, for the paths that change or keep more than the
    /// id (result caching, the 2026-07-28 result fields, SSE streams). JSON that is
    /// well-formed but not readable as text (a lone surrogate escape) becomes an error
    /// response: relayed as bytes it passes, but no tree can hold it.
    pub fn to_value(&self) -> Value {
        match serde_json::from_slice::<Value>(&self.bytes) {
            Ok(Value::Object(mut map)) => {
                if let Some(id) = &self.id {
                    map.insert("id".into(), id.clone());
                }
                Value::Object(map)
            }
            Ok(_) | Err(_) => super::jsonrpc::error_response(
                &self.id(),
                super::jsonrpc::INTERNAL_ERROR,
                "the upstream's answer is not valid JSON text (e.g. a lone surrogate escape)",
                None,
            ),
        }
    }

    /// The response as JSON text, with the caller's id.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 16);
        out.push(b'{');
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(&self.bytes[key.clone()]);
            out.extend_from_slice(b"\":");
            match (&self.id, &self.bytes[key.clone()] == b"id") {
                (Some(id), true) => {
                    serde_json::to_writer(&mut out, id).expect("JSON values serialize")
                }
                _ => out.extend_from_slice(&self.bytes[value.clone()]),
            }
        }
        out.push(b'}');
        out
    }
}

/// The top-level members of a JSON object, as ranges of `bytes`. Fails for anything
/// that is not an object, and for keys with escapes (left to the general path).
fn top_level_members(bytes: &[u8]) -> Result<Vec<Member>, serde_json::Error> {
    struct Members<'a>(&'a [u8]);

    impl<'de> Visitor<'de> for Members<'de> {
        type Value = Vec<Member>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::with_capacity(4);
            while let Some(key) = map.next_key::<&'de str>()? {
                let value = map.next_value::<&'de RawValue>()?;
                members.push((
                    range_of(self.0, key.as_bytes()),
                    range_of(self.0, value.get().as_bytes()),
                ));
            }
            Ok(members)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let members = (&mut de).deserialize_map(Members(bytes))?;
    de.end()?;
    Ok(members)
}

/// Where `part`, a slice borrowed from `whole`, lies in it.
fn range_of(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(text: &str) -> RawResponse {
        match RawResponse::classify(Bytes::copy_from_slice(text.as_bytes())) {
            Shape::Response(r) => r,
            Shape::Other(_) => panic!("not classified as a response: {text}"),
        }
    }

    #[test]
    fn relays_every_member_with_the_callers_id() {
        let mut r = response(
            r#" {"jsonrpc":"2.0", "id": 7, "result":{"content":[{"type":"text","text":"a \"q\" ü"}]},"x-extra":[1,2]} "#,
        );
        assert_eq!(r.id(), json!(7));
        assert!(r.has_result() && r.error_code().is_none());
        r.set_id(json!("caller-1"));
        let out: Value = serde_json::from_slice(&r.to_vec()).unwrap();
        assert_eq!(
            out,
            json!({"jsonrpc":"2.0","id":"caller-1","result":{"content":[{"type":"text","text":"a \"q\" ü"}]},"x-extra":[1,2]})
        );
        assert_eq!(r.to_value(), out);
        // Members keep their order.
        let text = String::from_utf8(r.to_vec()).unwrap();
        assert!(text.find("\"id\"").unwrap() < text.find("\"x-extra\"").unwrap());
    }

    #[test]
    fn reads_error_codes() {
        let r = response(r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"no"}}"#);
        assert_eq!(r.error_code(), Some(-32601));
        assert!(!r.has_result());
    }

    #[test]
    fn leaves_everything_else_to_the_general_path() {
        for text in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","\u0069d":1,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}} trailing"#,
            "not json",
        ] {
            assert!(
                matches!(
                    RawResponse::classify(Bytes::copy_from_slice(text.as_bytes())),
                    Shape::Other(_)
                ),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Shape::Response(mut r) = RawResponse::classify(Bytes::from(bytes)) {
                r.set_id(json!(1));
                if let Ok(out) = serde_json::from_slice::<Value>(&r.to_vec()) {
                    proptest::prop_assert_eq!(out, r.to_value());
                }
            }
        }
    }
}
