//! Typed errors inside the gateway, mapped to OpenAI-shaped error bodies at the edge.
//!
//! Every error that reaches a client goes through [`GatewayError::to_openai`], so the
//! status, `type`, `code` and `param` are decided in exactly one place.

use bytes::Bytes;
use serde_json::json;

/// An error that ends a request with an OpenAI-shaped body.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// An upstream's 400 with its OpenAI-shaped `param` and `code` kept for the client.
    #[error("{message}")]
    UpstreamInvalid {
        message: String,
        param: Option<String>,
        code: Option<String>,
    },
    #[error("Request body is larger than the configured limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    NotFound {
        message: String,
        code: &'static str,
        param: Option<String>,
    },
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with stored state (e.g. feedback already recorded): 409.
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    /// Every upstream candidate failed; carries the last upstream status.
    #[error("{message}")]
    Upstream {
        status: u16,
        message: String,
        retry_after: Option<String>,
        code: &'static str,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn invalid_code(
        message: impl Into<String>,
        param: Option<&str>,
        code: &'static str,
    ) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code: Some(code),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        GatewayError::NotFound {
            message: message.into(),
            code: "not_found",
            param: None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest { .. } | GatewayError::UpstreamInvalid { .. } => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::Conflict { .. } => 409,
            GatewayError::Upstream { status, .. } => *status,
            GatewayError::Unavailable(_) => 503,
            GatewayError::Internal(_) => 500,
        }
    }

    /// OpenAI error `type` for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::UpstreamInvalid { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::NotFound { .. }
            | GatewayError::MethodNotAllowed(_)
            | GatewayError::Conflict { .. } => "invalid_request_error",
            GatewayError::Unauthorized(_) => "authentication_error",
            GatewayError::Forbidden(_) => "permission_error",
            GatewayError::Upstream { status, .. } if *status == 429 => "rate_limit_error",
            GatewayError::Upstream { .. } | GatewayError::Unavailable(_) => "api_error",
            GatewayError::Internal(_) => "server_error",
        }
    }

    pub fn code(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidRequest { code, .. } => *code,
            GatewayError::UpstreamInvalid { .. } => Some("upstream_rejected"),
            GatewayError::BodyTooLarge { .. } => Some("request_too_large"),
            GatewayError::Unauthorized(_) => Some("invalid_api_key"),
            GatewayError::Forbidden(_) => Some("insufficient_scope"),
            GatewayError::NotFound { code, .. } => Some(code),
            GatewayError::MethodNotAllowed(_) => Some("method_not_allowed"),
            GatewayError::Conflict { code, .. } => Some(code),
            GatewayError::Upstream { code, .. } => Some(code),
            GatewayError::Unavailable(_) => Some("service_unavailable"),
            GatewayError::Internal(_) => Some("internal_error"),
        }
    }

    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. }
            | GatewayError::NotFound { param, .. }
            | GatewayError::UpstreamInvalid { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<&str> {
        match self {
            GatewayError::Upstream { retry_after, .. } => retry_after.as_deref(),
            _ => None,
        }
    }

    /// The OpenAI-shaped JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn to_openai(&self) -> Bytes {
        let code = match self {
            // The upstream's own code (e.g. `context_length_exceeded`): clients branch on it.
            GatewayError::UpstreamInvalid { code: Some(c), .. } => Some(c.as_str()),
            _ => self.code(),
        };
        openai_error_body(&self.to_string(), self.kind(), self.param(), code)
    }
}

/// Build an OpenAI error body. Used for edge errors and for in-stream error events.
pub fn openai_error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Bytes {
    let v = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

pub type GwResult<T> = std::result::Result<T, GatewayError>;
