//! Ingress APIs: client APIs other than OpenAI chat completions, accepted at the edge and
//! translated to and from the internal contract (OpenAI chat-completions JSON and
//! `chat.completion.chunk` SSE). Whatever provider serves the request, its dialect still
//! speaks that contract; the ingress module only changes what the client sends and sees.
//!
//! Pure: bytes in, bytes out, no sockets.

use bytes::BytesMut;
use serde_json::Value;

use crate::dialect::sse::{SseDecoder, SseEvent};

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

/// The part of every ingress stream re-encoder that does not depend on the client API: decode
/// the internal `chat.completion.chunk` SSE stream incrementally (any split) and hand each
/// chunk, `[DONE]` or a decode failure to the API's encoder.
pub(crate) trait Reencode {
    /// The decoder and the events it has produced and not yet handed on.
    fn source(&mut self) -> (&mut SseDecoder, &mut Vec<SseEvent>);
    /// The client stream is closed: later events are ignored.
    fn is_closed(&self) -> bool;
    /// One internal chunk (not an error event).
    fn on_chunk(&mut self, chunk: &Value, out: &mut BytesMut);
    /// `[DONE]`, or the end of the bytes: close the client stream (idempotent).
    fn on_done(&mut self, out: &mut BytesMut);
    /// An error event in the internal stream (the upstream failed mid-stream), or bytes that
    /// could not be decoded (a line over the decoder's bound; our own well-formed SSE never has
    /// one): close the client stream with this API's error event.
    fn on_error(&mut self, message: &str, out: &mut BytesMut);

    /// Feed internal SSE bytes; the client API's SSE bytes are appended to `out`.
    fn feed_chunks(&mut self, input: &[u8], out: &mut BytesMut) {
        let (dec, events) = self.source();
        if dec.feed(input, events).is_err() {
            self.on_error("the stream could not be re-encoded", out);
        }
        self.drain_chunks(out);
    }

    /// The internal stream ended: close the client stream properly if `[DONE]` never came.
    fn finish_chunks(&mut self, out: &mut BytesMut) {
        let (dec, events) = self.source();
        let _ = dec.finish(events);
        self.drain_chunks(out);
        self.on_done(out);
    }

    fn drain_chunks(&mut self, out: &mut BytesMut) {
        let mut events = std::mem::take(self.source().1);
        for ev in events.drain(..) {
            if self.is_closed() {
                continue;
            }
            if ev.data == "[DONE]" {
                self.on_done(out);
            } else if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                match v.get("error") {
                    Some(e) => self.on_error(
                        e.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("upstream error"),
                        out,
                    ),
                    None => self.on_chunk(&v, out),
                }
            }
        }
        // Keep the (now empty) buffer's capacity for the next feed.
        *self.source().1 = events;
    }
}
