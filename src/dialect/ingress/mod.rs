//! Ingress APIs: client APIs other than OpenAI chat completions, accepted at the edge and
//! translated to and from the internal contract (OpenAI chat-completions JSON and
//! `chat.completion.chunk` SSE). Whatever provider serves the request, its dialect still
//! speaks that contract; the ingress module only changes what the client sends and sees.
//!
//! Pure: bytes in, bytes out, no sockets.

pub mod messages;
pub mod responses;

/// Which client API a request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Anthropic Messages (`POST /v1/messages`, `/v1/messages/count_tokens`).
    Messages,
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
}

impl Ingress {
    /// The ingress API of a request path, if any.
    pub fn for_path(path: &str) -> Option<Ingress> {
        match path.trim_end_matches('/') {
            "/v1/messages" | "/v1/messages/count_tokens" => Some(Ingress::Messages),
            "/v1/responses" => Some(Ingress::Responses),
            _ => None,
        }
    }

    /// The endpoint label in traces and metrics.
    pub fn endpoint(self) -> &'static str {
        match self {
            Ingress::Messages => "messages",
            Ingress::Responses => "responses",
        }
    }

    /// An error body in this API's own shape.
    pub fn error_body(self, e: &crate::error::GatewayError) -> bytes::Bytes {
        match self {
            Ingress::Messages => messages::error_body(e.status(), &e.to_string()),
            // The Responses API uses OpenAI's error shape (`param` and `code` included).
            Ingress::Responses => e.to_openai(),
        }
    }
}
