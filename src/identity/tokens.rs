//! Short-lived access tokens (JWT, HS256, signed with `auth.jwt_secret`) and opaque
//! refresh tokens (256 random bits, stored as SHA-256, rotated on every use).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::store::identity::Role;

const ISSUER: &str = "gantry";
const AUDIENCE: &str = "gantry-api";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The tenant this token acts in.
    pub tid: String,
    pub role: Role,
    /// Platform administrator: may manage every tenant and register stdio servers.
    #[serde(default)]
    pub pa: bool,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl TokenIssuer {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn issue(
        &self,
        user_id: &str,
        tenant_id: &str,
        role: Role,
        platform_admin: bool,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            tid: tenant_id.to_string(),
            role,
            pa: platform_admin,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_secs as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Validates signature, algorithm (HS256 only: `none` and every other algorithm are
    /// refused), issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims)
    }
}

/// A fresh opaque refresh token.
pub fn refresh_token() -> String {
    crate::gateway::auth::random_token("gtr_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let issuer = TokenIssuer::new(&[7u8; 32], 60);
        let token = issuer.issue("u1", "t1", Role::Admin, false);
        let claims = issuer.verify(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.tid.as_str(), claims.role),
            ("u1", "t1", Role::Admin)
        );
        let other = TokenIssuer::new(&[8u8; 32], 60);
        assert!(other.verify(&token).is_err(), "another key must not verify");
        let mut parts: Vec<&str> = token.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        parts[0] = none_header;
        assert!(
            issuer
                .verify(&format!("{}.{}.", parts[0], parts[1]))
                .is_err()
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let issuer = TokenIssuer::new(&[7u8; 32], 0);
        let mut claims = issuer
            .verify(&issuer.issue("u", "t", Role::Viewer, false))
            .unwrap();
        claims.exp = chrono::Utc::now().timestamp() - 60;
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        assert!(issuer.verify(&token).is_err());
    }
}
