//! The API's error type: every failure is JSON `{"error": "..."}` with the
//! status that says whose fault it was.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::network::CommandError;

/// An HTTP error answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed JSON (syntax, truncation).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but wrong: types, missing fields, bad values.
    #[error("{0}")]
    Unprocessable(String),
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("missing or wrong bearer token: this cell requires `Authorization: Bearer <token>` for changes")]
    Unauthorized,
    /// The caller may not ask for this (a third-party `/register` without
    /// the token from another machine).
    #[error("{0}")]
    Forbidden(String),
    /// The request is right but the state forbids it.
    #[error("{0}")]
    Conflict(String),
    #[error("no route {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Command(c) => match c {
                CommandError::Stopped | CommandError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                CommandError::Timeout(_) | CommandError::DialTimeout(_) => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                CommandError::Unreachable(_) => StatusCode::BAD_GATEWAY,
                CommandError::BadTarget(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        }
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
