//! One small set of error codes, shared by HTTP and the wire. Every crate maps its own typed
//! errors onto an [`ErrorCode`]; the HTTP layer turns the code into a status and the JSON body
//! `{"error": {"code", "message", "item"?, "field"?}}` documented in API.md.

use serde::{Deserialize, Serialize};

/// The stable error codes. Their snake_case names are part of the API contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not well-formed JSON / NDJSON, or not UTF-8.
    InvalidJson,
    /// A field has the wrong type, is missing, or its value is out of range.
    InvalidField,
    /// The body, a batch or a string is larger than the configured limit.
    TooLarge,
    /// The Content-Type is not one this endpoint accepts.
    UnsupportedMediaType,
    /// An annotation id already exists with different content.
    Conflict,
    /// The asset or resource does not exist.
    NotFound,
    /// The endpoint exists but not with this HTTP method.
    MethodNotAllowed,
    /// A queue is full; retry after the advertised delay.
    Overloaded,
    /// No leader, no quorum, or the node is starting or stopping; retry later.
    Unavailable,
    /// The request did not complete in time; it is safe to retry (ids are idempotent).
    Timeout,
    /// A bug or an I/O failure on the node.
    Internal,
    /// No valid credentials (an API key, or a peer's certificate).
    Unauthenticated,
    /// Valid credentials without the right to do this.
    Forbidden,
}

impl ErrorCode {
    /// Every code, in declaration order (for documents and tests that must name them all).
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidField,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Conflict,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Overloaded,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
    ];

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson => 400,
            ErrorCode::InvalidField => 422,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Conflict => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Overloaded => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 503,
            ErrorCode::Internal => 500,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
        }
    }

    /// Whether a client may retry the same request unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::Unavailable | ErrorCode::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// An error as it crosses the HTTP API or the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Index of the offending item in a batch.
    pub item: Option<usize>,
    /// Name of the offending field (dotted path for nested fields).
    pub field: Option<String>,
    /// For retryable errors: how long the client should wait.
    pub retry_after_s: Option<u32>,
    /// A batch stored in part (one shard's part failed after others committed): the positions
    /// of the annotations that are stored. Only in HTTP replies (skipped on the wire, so peers
    /// of every version read this struct alike).
    #[serde(skip)]
    pub committed_items: Option<Vec<usize>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), item: None, field: None, retry_after_s: None, committed_items: None }
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidField, message).with_field(field)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_item(mut self, item: usize) -> Self {
        self.item = Some(item);
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Internal, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unavailable, message).with_retry_after(1)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Overloaded, message).with_retry_after(1)
    }

    /// The JSON body documented in API.md.
    pub fn to_body(&self) -> serde_json::Value {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                item: self.item,
                field: self.field.clone(),
                retry_after_s: self.retry_after_s,
                committed_items: self.committed_items.clone(),
            },
        };
        serde_json::to_value(body)
            .unwrap_or_else(|_| serde_json::json!({ "error": { "code": "internal", "message": "unserializable error" } }))
    }
}

/// Every HTTP error reply: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_field", "message": "filters.to_ms must be greater than filters.from_ms", "field": "filters.to_ms"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, where, and whether and when to retry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// In words for people: what went wrong and how to fix it.
    pub message: String,
    /// Index of the offending annotation in a batch (for NDJSON, among non-empty lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// The offending field, as a dotted path (`clauses[0].vector`, `filters.to_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For retryable errors: seconds to wait (also the `Retry-After` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u32>,
    /// A batch stored in part: the positions of the annotations that are stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed_items: Option<Vec<usize>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_documented_snake_case() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn body_carries_item_and_field() {
        let body = ApiError::field("end_ms", "must be greater than start_ms").with_item(3).to_body();
        assert_eq!(body["error"]["code"], "invalid_field");
        assert_eq!(body["error"]["item"], 3);
        assert_eq!(body["error"]["field"], "end_ms");
    }
}
