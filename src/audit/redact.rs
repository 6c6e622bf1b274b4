//! Arguments are recorded for investigation, but never secrets: values under keys that
//! look secret are replaced, long strings cut, and deep or wide structures bounded.

use serde_json::{Map, Value};

const REDACTED: &str = "[REDACTED]";
const MAX_STRING: usize = 256;
const MAX_DEPTH: usize = 6;
const MAX_ITEMS: usize = 50;

pub struct Redactor {
    /// Lower-case fragments; a key containing any of them is redacted.
    fragments: Vec<String>,
}

impl Redactor {
    pub fn new(fragments: &[String]) -> Self {
        Self {
            fragments: fragments.iter().map(|f| f.to_lowercase()).collect(),
        }
    }

    /// Runs for every argument key of every audited call, so ASCII keys (nearly all)
    /// are compared in place rather than lower-cased into a new string.
    fn secret_key(&self, key: &str) -> bool {
        if key.is_ascii() {
            let key = key.as_bytes();
            return self.fragments.iter().any(|f| {
                f.is_empty()
                    || key
                        .windows(f.len())
                        .any(|w| w.eq_ignore_ascii_case(f.as_bytes()))
            });
        }
        let key = key.to_lowercase();
        self.fragments.iter().any(|f| key.contains(f.as_str()))
    }

    pub fn redact(&self, value: &Value) -> Value {
        self.walk(value, 0)
    }

    fn walk(&self, value: &Value, depth: usize) -> Value {
        if depth >= MAX_DEPTH {
            return Value::String("[…]".into());
        }
        match value {
            // A string of at most MAX_STRING bytes has at most as many characters.
            Value::String(s) if s.len() > MAX_STRING && s.chars().count() > MAX_STRING => {
                let cut: String = s.chars().take(MAX_STRING).collect();
                Value::String(format!("{cut}…"))
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .take(MAX_ITEMS)
                    .map(|v| self.walk(v, depth + 1))
                    .collect(),
            ),
            Value::Object(map) => {
                let mut out = Map::with_capacity(map.len().min(MAX_ITEMS));
                for (k, v) in map.iter().take(MAX_ITEMS) {
                    let v = if self.secret_key(k) {
                        Value::String(REDACTED.into())
                    } else {
                        self.walk(v, depth + 1)
                    };
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}

pub fn default_fragments() -> Vec<String> {
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "credential",
        "private_key",
        "cookie",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_replaced_at_any_depth_and_long_values_cut() {
        let r = Redactor::new(&default_fragments());
        let out = r.redact(&json!({
            "query": "weather",
            "GitHub_Token": "ghp_abc",
            "nested": {"db": {"Password": "hunter2", "host": "x"}},
            "list": [{"apiKey": "k"}],
            "long": "y".repeat(1000),
        }));
        assert_eq!(out["query"], "weather");
        assert_eq!(out["GitHub_Token"], REDACTED);
        assert_eq!(out["nested"]["db"]["Password"], REDACTED);
        assert_eq!(out["nested"]["db"]["host"], "x");
        assert_eq!(out["list"][0]["apiKey"], REDACTED);
        assert!(out["long"].as_str().unwrap().chars().count() <= MAX_STRING + 1);
        assert!(!out.to_string().contains("hunter2"));
    }

    #[test]
    fn keys_match_fragments_whatever_their_case_or_script() {
        let r = Redactor::new(&default_fragments());
        let out = r.redact(&json!({
            "ÜBER_SECRET": "s",
            "x-AUTHORIZATION-y": "a",
            "tok": "not a token key",
            "é".repeat(200): "é".repeat(200),
        }));
        assert_eq!(out["ÜBER_SECRET"], REDACTED);
        assert_eq!(out["x-AUTHORIZATION-y"], REDACTED);
        assert_eq!(out["tok"], "not a token key");
        // 400 bytes, but 200 characters: within the limit, kept whole.
        assert_eq!(out["é".repeat(200)], "é".repeat(200));
    }

    proptest::proptest! {
        /// The in-place comparison of ASCII keys says what lower-casing would.
        #[test]
        fn ascii_keys_are_judged_as_lower_casing_would(
            before in "[ -~]{0,12}",
            fragment in proptest::sample::select(default_fragments()),
            cut in 0usize..16,
            cases in proptest::prelude::any::<u64>(),
            after in "[ -~]{0,12}",
        ) {
            // A fragment in random case, whole or cut short (then it must not match by itself).
            let inner: String = fragment
                .chars()
                .take(cut)
                .enumerate()
                .map(|(i, c)| if cases >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect();
            let key = format!("{before}{inner}{after}");
            let r = Redactor::new(&default_fragments());
            let lower = key.to_lowercase();
            let expected = default_fragments().iter().any(|f| lower.contains(f.as_str()));
            proptest::prop_assert_eq!(r.secret_key(&key), expected);
        }
    }

    #[test]
    fn depth_and_width_are_bounded() {
        let mut deep = json!("leaf");
        for _ in 0..100 {
            deep = json!({ "a": deep });
        }
        let r = Redactor::new(&[]);
        assert!(r.redact(&deep).to_string().len() < 100);
        let wide = Value::Array((0..1000).map(Value::from).collect());
        assert_eq!(r.redact(&wide).as_array().unwrap().len(), MAX_ITEMS);
    }
}
