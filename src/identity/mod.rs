//! Who a caller is: password hashing, access and refresh tokens, API keys, and login
//! throttling. Storage lives in [`crate::store`]; HTTP in [`crate::api`].

pub mod api_keys;
pub mod key_auth;
pub mod oidc;
pub mod passwords;
pub mod throttle;
pub mod tokens;
