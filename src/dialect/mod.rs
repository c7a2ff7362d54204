//! Provider dialects: pure translation between the OpenAI API and a provider's native API.
//!
//! A dialect is bytes in, bytes out. It never touches sockets, so every translation is
//! testable without a server. The proxy asks a dialect to
//! 1. build the native request ([`Dialect::build_chat`]),
//! 2. translate a whole native response ([`Dialect::translate_chat`]), or
//! 3. translate a native stream incrementally ([`Dialect::chat_stream`]),
//! 4. classify a native error response ([`Dialect::classify_error`]) so the proxy knows
//!    whether falling back to the next candidate is worth it.
//!
//! Authentication is not the dialect's business: the provider layer signs the built
//! request afterwards (bearer, header key, SigV4, OAuth), see `crate::providers`.

pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod common;
pub mod encode;
pub mod fireworks;
pub mod gemini;
pub mod huggingface;
pub mod ingress;
pub mod ollama;
pub mod openai;
pub mod replicate;
pub mod sse;
pub mod vertex;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::providers::{DialectKind, Endpoint, ProviderProfile, ProviderRuntime};
/// Re-exported: every dialect builds one (the type lives with the transport).
pub use crate::upstream::UpstreamRequest;

pub use encode::ChunkEncoder;

/// Errors from translating requests or responses.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DialectError {
    /// The request cannot be expressed in this provider's API (client's fault: 400).
    #[error("{message}")]
    Unsupported {
        message: String,
        param: Option<String>,
    },
    /// The upstream sent something that is not its documented format.
    #[error("malformed upstream response: {0}")]
    Malformed(String),
    /// The upstream reported an error inside a 200 stream or body.
    #[error("upstream error: {0}")]
    Upstream(String),
    /// The upstream stream ended before its terminal event.
    #[error("upstream stream ended early: {0}")]
    Truncated(String),
    /// The upstream accepted the job but had not finished it when it answered (a
    /// Replicate prediction still running after the sync wait): a gateway timeout.
    #[error("{0}")]
    Pending(String),
}

impl DialectError {
    pub fn unsupported(message: impl Into<String>, param: Option<&str>) -> Self {
        DialectError::Unsupported {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
}

/// Token usage as the gateway accounts it (superset of every provider's usage fields).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's cache (subset of `prompt_tokens`).
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic cache creation; subset of
    /// `prompt_tokens`: dialects add cache reads and writes into `prompt_tokens` so it is
    /// always the whole input, as OpenAI reports it).
    pub cache_creation_tokens: u64,
    /// Reasoning / thinking tokens (subset of `completion_tokens`).
    pub reasoning_tokens: u64,
    /// True once the upstream reported usage (false: the numbers are unknown, not zero).
    pub reported: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The OpenAI `usage` object.
    pub fn to_openai(&self) -> Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }

    /// Read an OpenAI-shaped `usage` object (also what most compatible providers send).
    pub fn from_openai(v: &Value) -> Option<Usage> {
        let o = v.as_object()?;
        let n = |x: Option<&Value>| x.and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            prompt_tokens: n(o.get("prompt_tokens")),
            completion_tokens: n(o.get("completion_tokens")),
            cached_tokens: n(o
                .get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens")))
            .max(n(o.get("prompt_cache_hit_tokens"))),
            cache_creation_tokens: 0,
            reasoning_tokens: n(o
                .get("completion_tokens_details")
                .and_then(|d| d.get("reasoning_tokens"))),
            reported: true,
        })
    }
}

/// A parsed and validated OpenAI chat-completions request.
///
/// The body is kept as a JSON map so fields the gateway does not know pass through to
/// OpenAI-compatible providers unchanged.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The client's body bytes, forwarded untouched when no rewrite is needed.
    pub raw: Bytes,
    pub body: Map<String, Value>,
    /// The model the client asked for (after `loopgate-model-override`).
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
}

impl ChatRequest {
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// True when any message carries an `image_url` content part.
    pub fn has_images(&self) -> bool {
        self.messages().iter().any(|m| {
            m.get("content")
                .and_then(Value::as_array)
                .is_some_and(|parts| {
                    parts
                        .iter()
                        .any(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
                })
        })
    }

    pub fn has_tools(&self) -> bool {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty())
    }
}

/// Everything a dialect needs to know about where a request goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub profile: &'a ProviderProfile,
    /// Where the provider lives (the dialect needs its base path).
    pub endpoint: &'a Endpoint,
    /// The provider-native model id (no `provider/` prefix).
    pub model: &'a str,
    pub stream: bool,
    /// Gateway request id; becomes the OpenAI response `id`.
    pub request_id: &'a str,
    /// Unix seconds; the OpenAI `created` field.
    pub created: u64,
    /// Catalog's max output tokens for this model (Anthropic needs a `max_tokens`).
    pub max_output_tokens: Option<u64>,
}

/// A translated non-streaming response.
#[derive(Debug, Clone)]
pub struct Translated {
    /// OpenAI-shaped JSON body.
    pub body: Bytes,
    pub usage: Usage,
    /// The model the upstream says served the request, if it said.
    pub model: Option<String>,
}

/// What the proxy should do with a native error response.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamFailure {
    /// Worth trying the next candidate (429, 5xx, overloaded).
    pub retryable: bool,
    /// Provider's message, safe to show (no secrets: providers never echo keys).
    pub message: String,
    /// OpenAI error code to report (`rate_limit_exceeded`, `upstream_error`, ...).
    pub code: &'static str,
}

/// Incremental translation of a native stream into OpenAI `chat.completion.chunk` SSE.
pub trait StreamTranslator: Send {
    /// Feed raw upstream bytes (any split); append OpenAI SSE bytes to `out`.
    /// An upstream error event is written to `out` as an OpenAI error event and also
    /// returned as `Err(DialectError::Upstream)` so the proxy can record it.
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError>;
    /// The upstream ended cleanly: flush, write the usage chunk if the client asked for
    /// it, then `data: [DONE]`. Returns `Truncated` (after writing an error event and
    /// `[DONE]`) when the native terminal event never came.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError>;
    /// The stream broke (reset, timeout): write an OpenAI error event and `[DONE]`.
    fn abort(&mut self, message: &str, out: &mut BytesMut);
    /// Usage seen so far.
    fn usage(&self) -> Usage;
    /// The model the upstream reported, if any.
    fn model(&self) -> Option<&str>;
    /// True once any content or tool-call delta has been written (time to first token).
    fn produced_output(&self) -> bool;
}

/// One provider API family.
pub trait Dialect: Send + Sync {
    fn name(&self) -> &'static str;

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError>;

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        req: &ChatRequest,
    ) -> Result<Translated, DialectError>;

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator>;

    /// Map a non-2xx native response. The default suits most JSON APIs.
    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        default_classify(status, body)
    }

    /// Embeddings (`/v1/embeddings`). Dialects without embeddings keep the default.
    fn build_embeddings(
        &self,
        _body: &Map<String, Value>,
        _t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        Err(DialectError::unsupported(
            format!(
                "provider dialect '{}' does not offer embeddings",
                self.name()
            ),
            Some("model"),
        ))
    }

    fn translate_embeddings(&self, _body: &[u8], _t: &Target) -> Result<Translated, DialectError> {
        Err(DialectError::Malformed("embeddings not supported".into()))
    }

    /// Image generation (`/v1/images/generations`).
    fn build_images(
        &self,
        _body: &Map<String, Value>,
        _t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        Err(DialectError::unsupported(
            format!(
                "provider dialect '{}' does not offer image generation",
                self.name()
            ),
            Some("model"),
        ))
    }

    fn translate_images(&self, _body: &[u8], _t: &Target) -> Result<Translated, DialectError> {
        Err(DialectError::Malformed(
            "image generation not supported".into(),
        ))
    }
}

/// Name of the synthetic tool that carries structured output on providers without a native
/// JSON mode (Anthropic, Vertex-Anthropic, Bedrock Converse): the request forces it, and its
/// input becomes the message content.
pub const JSON_TOOL: &str = "json_response";
pub const JSON_TOOL_DESCRIPTION: &str =
    "Respond with your final answer as this tool's input. The input is the whole response.";

/// The schema to force through [`JSON_TOOL`] when `response_format` asks for JSON
/// (`json_schema`: its schema; `json_object`: any object) and the request declares no tools
/// of its own (then the format is asked for in the prompt instead). Tool input is always an
/// object, as OpenAI's structured outputs require of a schema's root; a schema whose root is
/// something else is left to the prompt too.
pub fn forced_json_schema(b: &Map<String, Value>) -> Option<Value> {
    if b.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        return None;
    }
    let rf = b.get("response_format")?;
    match rf.get("type")?.as_str()? {
        "json_object" => Some(serde_json::json!({"type": "object"})),
        "json_schema" => {
            let s = rf.get("json_schema").and_then(|j| j.get("schema"));
            match s {
                None => Some(serde_json::json!({"type": "object"})),
                Some(s) if s.get("type").and_then(Value::as_str) == Some("object") => {
                    Some(s.clone())
                }
                Some(_) => None,
            }
        }
        _ => None,
    }
}

/// Default error classification: 408/409/429/5xx and "overloaded" bodies are retryable.
pub fn default_classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let message =
        extract_error_message(body).unwrap_or_else(|| format!("upstream returned HTTP {status}"));
    let overloaded = {
        let lower = message.to_ascii_lowercase();
        lower.contains("overloaded") || lower.contains("capacity")
    };
    let retryable = matches!(status, 408 | 409 | 429) || status >= 500 || overloaded;
    let code = match status {
        429 => "rate_limit_exceeded",
        529 => "overloaded",
        _ if overloaded => "overloaded",
        s if s >= 500 => "upstream_error",
        _ => "upstream_rejected",
    };
    UpstreamFailure {
        retryable,
        message,
        code,
    }
}

/// Pull a human message out of the common error body shapes:
/// `{"error":{"message":..}}`, `{"error":"..."}`, `{"message":..}`, `{"detail":..}`.
pub fn extract_error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let pick = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    };
    let v = if let Value::Array(a) = &v {
        a.first()?.clone()
    } else {
        v
    };
    v.get("error")
        .and_then(pick)
        .or_else(|| v.get("message").and_then(Value::as_str).map(str::to_string))
        .or_else(|| v.get("detail").and_then(pick))
        .map(|m| m.chars().take(2000).collect())
}

/// The implementation of a dialect.
pub fn dialect_for(kind: DialectKind) -> &'static dyn Dialect {
    match kind {
        DialectKind::OpenAi => &openai::OpenAi,
        DialectKind::Anthropic => &anthropic::Anthropic,
        DialectKind::Gemini => &gemini::Gemini,
        DialectKind::Vertex => &vertex::Vertex,
        DialectKind::VertexAnthropic => &vertex::VertexAnthropic,
        DialectKind::Bedrock => &bedrock::Bedrock,
        DialectKind::Cohere => &cohere::Cohere,
        DialectKind::Ollama => &ollama::Ollama,
        DialectKind::Fireworks => &fireworks::Fireworks,
        DialectKind::HuggingFace => &huggingface::HuggingFace,
        DialectKind::Replicate => &replicate::Replicate,
    }
}

// Defined here rather than in `providers` so that providers (signing) never import the
// translation layer above them.
impl ProviderRuntime {
    /// The dialect that translates for this provider.
    pub fn dialect(&self) -> &'static dyn Dialect {
        dialect_for(self.profile.dialect)
    }
}

/// Milliseconds-free unix time in seconds, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod chunking_tests {
    use super::*;

    /// Found by fuzz/dialect_stream: events that arrived in the same read as an
    /// undecodable line were dropped, so the client's stream depended on where the
    /// upstream's chunks happened to end.
    #[test]
    fn events_before_a_bad_line_survive_any_split() {
        let cases: &[(&str, &str)] = &[
            (
                "openai",
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            ),
            (
                "anthropic",
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n\
                 event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
                 event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            ),
            (
                "gemini",
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
            ),
            (
                "cohere",
                "event: message-start\ndata: {\"id\":\"c1\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n\
                 event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hi\"}}}}\n\n",
            ),
        ];
        let profiles = crate::routing::table::embedded_profiles().unwrap();
        for (name, good) in cases {
            let p = profiles
                .iter()
                .find(|p| p.dialect.as_str() == *name)
                .unwrap();
            let e = crate::providers::Endpoint::parse("https://upstream.example.com/v1").unwrap();
            let t = Target {
                profile: p,
                endpoint: &e,
                model: "m",
                stream: true,
                request_id: "chatcmpl-test",
                created: 1,
                max_output_tokens: Some(1024),
            };
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true});
            let req = ChatRequest {
                raw: Bytes::from(body.to_string()),
                body: body.as_object().unwrap().clone(),
                model: "m".into(),
                stream: true,
                include_usage: false,
            };
            let mut input = good.as_bytes().to_vec();
            input.extend_from_slice(b"data: \xff\n\n");
            // Driven as the proxy drives it: stop at the first error, abort unless the
            // translator reported an upstream error itself.
            let run = |cuts: &[usize]| {
                let mut s = dialect_for(p.dialect).chat_stream(&t, &req);
                let mut out = BytesMut::new();
                let mut last = 0;
                for &c in cuts.iter().chain(std::iter::once(&input.len())) {
                    if let Err(e) = s.feed(&input[last..c], &mut out) {
                        assert!(matches!(e, DialectError::Malformed(_)), "{name}: {e:?}");
                        s.abort(&e.to_string(), &mut out);
                        return String::from_utf8(out.to_vec()).unwrap();
                    }
                    last = c;
                }
                panic!("{name}: a non-UTF-8 line was accepted");
            };
            let whole = run(&[]);
            assert_eq!(whole, run(&[good.len()]), "{name}");
            assert!(whole.contains("\"content\":\"Hi\""), "{name}: {whole}");
            assert!(whole.ends_with("data: [DONE]\n\n"), "{name}: {whole}");
            assert_eq!(whole.matches("[DONE]").count(), 1, "{name}: {whole}");
        }
    }
}
