//! Sealed session ids: everything a replica needs to continue a 2025-era session travels
//! inside the id itself, encrypted and authenticated (AES-256-GCM), so any gantry process
//! holding the same key can serve any session without a shared store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// Session ids longer than this are rejected before any decoding work.
const MAX_SESSION_ID_LEN: usize = 2048;
const NONCE_LEN: usize = 12;
/// Session ids opened recently, kept so a session's every request does not pay for
/// base64, AES-GCM and JSON again (about a twentieth of a proxied call). Only ids that
/// opened enter, and the same id always opens to the same claims, so the cache answers
/// exactly what decryption would; expiry and revocation are checked by the caller on
/// every request. Past this many entries it starts over.
const OPENED_CACHE_ENTRIES: usize = 4096;
/// Binds ciphertexts to their purpose, so a sealed value of one kind is never accepted as
/// another (a session id as an MRTR request state, say).
const SESSION_PURPOSE: &[u8] = b"gantry-session-v1";
pub const REQUEST_STATE_PURPOSE: &[u8] = b"gantry-request-state-v1";

/// What a session carries between replicas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionClaims {
    /// Random id of this session, for logs and revocation.
    pub sid: String,
    /// Negotiated protocol version.
    pub ver: String,
    /// The upstream this session is bound to; `None` for the aggregate endpoint.
    pub srv: Option<String>,
    /// The authenticated principal that created the session.
    pub sub: String,
    /// Which server-to-client requests the client can answer.
    #[serde(default)]
    pub caps: ClientCaps,
    /// Unix seconds at creation.
    pub iat: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientCaps {
    #[serde(default)]
    pub sampling: bool,
    #[serde(default)]
    pub elicitation: bool,
    #[serde(default)]
    pub roots: bool,
    /// The Tasks extension (`io.modelcontextprotocol/tasks`), which 2026-07-28 clients
    /// declare per request; sessions never carry it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tasks: bool,
}

#[derive(Clone)]
pub struct SessionCodec {
    cipher: Aes256Gcm,
    opened: Arc<Mutex<HashMap<Box<str>, Arc<SessionClaims>>>>,
}

pub fn decode_key(encoded: &str) -> Result<[u8; 32], &'static str> {
    let bytes = STANDARD
        .decode(encoded.trim())
        .map_err(|_| "must be base64 (e.g. `openssl rand -base64 32`)")?;
    bytes
        .try_into()
        .map_err(|_| "must decode to exactly 32 bytes (e.g. `openssl rand -base64 32`)")
}

impl SessionCodec {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(&key.into()),
            opened: Arc::default(),
        }
    }

    pub fn random() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self::new(key)
    }

    pub fn seal(&self, claims: &SessionClaims) -> String {
        self.seal_value(claims, SESSION_PURPOSE)
    }

    /// Opens a session id; any tampering, truncation or foreign key yields `None`.
    pub fn open(&self, session_id: &str) -> Option<Arc<SessionClaims>> {
        if let Some(claims) = self.opened.lock().unwrap().get(session_id) {
            return Some(Arc::clone(claims));
        }
        let claims = Arc::new(self.open_value::<SessionClaims>(session_id, SESSION_PURPOSE)?);
        let mut opened = self.opened.lock().unwrap();
        if opened.len() >= OPENED_CACHE_ENTRIES {
            opened.clear();
        }
        opened.insert(session_id.into(), Arc::clone(&claims));
        Some(claims)
    }

    /// Seals any value for `purpose` into a URL-safe string.
    pub fn seal_value<T: Serialize>(&self, value: &T, purpose: &[u8]) -> String {
        self.seal_bytes(
            &serde_json::to_vec(value).expect("sealed values serialize"),
            purpose,
        )
    }

    /// Opens a value sealed for `purpose`; anything else yields `None`.
    pub fn open_value<T: serde::de::DeserializeOwned>(
        &self,
        sealed: &str,
        purpose: &[u8],
    ) -> Option<T> {
        serde_json::from_slice(&self.open_bytes(sealed, purpose)?).ok()
    }

    /// Seals `plaintext` for `purpose` into a URL-safe string: for what must stay short.
    pub fn seal_bytes(&self, plaintext: &[u8], purpose: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: plaintext,
                    aad: purpose,
                },
            )
            .expect("AES-GCM encryption cannot fail for small inputs");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens bytes sealed for `purpose`; anything else yields `None`.
    pub fn open_bytes(&self, sealed: &str, purpose: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() > MAX_SESSION_ID_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload {
                    msg: ciphertext,
                    aad: purpose,
                },
            )
            .ok()
    }
}

pub fn new_session_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> SessionClaims {
        SessionClaims {
            sid: new_session_id(),
            ver: "2025-11-25".into(),
            srv: Some("demo".into()),
            sub: "key:default".into(),
            caps: ClientCaps {
                sampling: true,
                ..Default::default()
            },
            iat: 1,
        }
    }

    #[test]
    fn round_trips_with_the_same_key() {
        let key = [7u8; 32];
        let id = SessionCodec::new(key).seal(&claims());
        let other_process = SessionCodec::new(key);
        assert_eq!(
            other_process.open(&id).unwrap().srv.as_deref(),
            Some("demo")
        );
    }

    #[test]
    fn foreign_key_and_tampering_are_rejected() {
        let id = SessionCodec::new([1u8; 32]).seal(&claims());
        assert!(SessionCodec::new([2u8; 32]).open(&id).is_none());
        let codec = SessionCodec::new([1u8; 32]);
        let mut bytes = id.clone().into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(codec.open(std::str::from_utf8(&bytes).unwrap()).is_none());
        assert!(codec.open(&id[..id.len() - 3]).is_none());
        // Opened once (and cached), the id still opens the same; its tampered forms do not.
        assert_eq!(*codec.open(&id).unwrap(), *codec.open(&id).unwrap());
        assert!(codec.open(std::str::from_utf8(&bytes).unwrap()).is_none());
    }

    #[test]
    fn sealed_values_only_open_for_their_purpose() {
        let codec = SessionCodec::new([9u8; 32]);
        let session_id = codec.seal(&claims());
        let as_state: Option<serde_json::Value> =
            codec.open_value(&session_id, REQUEST_STATE_PURPOSE);
        assert!(as_state.is_none());
        let state = codec.seal_value(&serde_json::json!({"sid": "x"}), REQUEST_STATE_PURPOSE);
        assert!(codec.open(&state).is_none());
    }

    #[test]
    fn key_must_be_32_bytes_of_base64() {
        assert!(decode_key("not base64!").is_err());
        assert!(decode_key(&STANDARD.encode([0u8; 16])).is_err());
        assert!(decode_key(&STANDARD.encode([0u8; 32])).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_session_ids_never_panic(s in ".{0,3000}") {
            let codec = SessionCodec::new([3u8; 32]);
            prop_assert!(codec.open(&s).is_none());
        }
    }
}
