//! Errors as OpenAI clients expect them: a status code and
//! `{"error": {"message", "type", "param", "code"}}`, for every failure,
//! including a body that does not parse.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

/// A failed request.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
    /// Seconds to wait before retrying (503).
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            ..Self::bad_request(message)
        }
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            ..Self::bad_request("missing or wrong API key (send `Authorization: Bearer <key>`)")
        }
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..Self::bad_request(format!(
                "the request body is over the limit of {limit} bytes"
            ))
        }
    }

    pub(crate) fn busy(waiting: usize) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_busy",
            retry_after: Some(1),
            ..Self::bad_request(format!(
                "{waiting} requests are already waiting; try again shortly"
            ))
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..Self::bad_request(message)
        }
    }
}

/// The crate's errors as HTTP: what the request got wrong is a 400, what
/// failed on our side a 500.
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = chain(&error);
        match error {
            Error::PromptTooLong { .. } | Error::EmptyPrompt | Error::BudgetTooSmall { .. } => {
                ApiError::bad_request(message).with_param("messages")
            }
            Error::Constraint { .. } => {
                ApiError::bad_request(message).with_param("response_format")
            }
            Error::ChatTemplate { .. }
            | Error::InvalidSignature { .. }
            | Error::InvalidConfig { .. } => ApiError::bad_request(message),
            _ => ApiError::internal(message),
        }
    }
}

/// An error's message followed by its sources'.
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status.as_u16().to_string(),
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
