//! The control plane's one error type, rendered in one place as RFC 9457
//! `application/problem+json`. Each kind has a stable `type` URI clients can match on.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than this server accepts")]
    TooLarge,
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    /// Well-formed input that breaks a rule; names the offending field.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("too many attempts; retry in {} seconds", .0.as_secs().max(1))]
    TooManyRequests(Duration),
    #[error("{0}")]
    Unavailable(String),
    /// An upstream MCP server answered with an error the caller cannot fix.
    #[error("{0}")]
    BadGateway(String),
    /// Details go to the log, never to the caller.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Malformed request"),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request too large",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid input",
            ),
            Self::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
            ),
            Self::BadGateway(_) => (StatusCode::BAD_GATEWAY, "upstream-error", "Upstream error"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `type` of a problem kind: stable, documented in the OpenAPI description.
pub fn problem_type(kind: &str) -> String {
    format!("urn:gantry:problem:{kind}")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "internal error in the control plane");
        }
        let mut body = json!({
            "type": problem_type(kind),
            "title": title,
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let Self::Validation { field, .. } = &self {
            body["field"] = json!(field);
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            Self::Unauthenticated(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="gantry-api""#),
                );
            }
            Self::TooManyRequests(wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("resource"),
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::Unavailable(cause) => {
                // The caller learns only that it may retry; the operator needs the cause.
                tracing::warn!(%cause, "database unavailable: answering 503");
                Self::Unavailable("the database is unavailable; retry shortly".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}
