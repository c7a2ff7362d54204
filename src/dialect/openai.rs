//! The OpenAI dialect, shared by every OpenAI-compatible provider (OpenAI, Azure OpenAI,
//! Groq, Mistral, DeepSeek, xAI, Perplexity, Together, Fireworks, Cerebras, SambaNova,
//! DeepInfra, Nebius, Novita, AI21, Ollama's `/v1`).
//!
//! Requests pass through with the profile's quirks applied (model id, dropped and
//! renamed parameters). Responses keep the provider's fields but take the gateway's
//! request id as `id`, and streams are normalised to the usage contract: the gateway
//! always asks for usage (to price the request) and shows the usage chunk only to
//! clients that asked for it.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use super::encode::{write_data, write_done, write_error_event};
use super::sse::{SseDecoder, SseEvent};
use super::{
    ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated, UpstreamRequest,
    Usage,
};

pub struct OpenAi;

const JSON: (&str, &str) = ("content-type", "application/json");

impl OpenAi {
    /// Apply a profile's parameter quirks to a body; returns true if anything changed.
    fn apply_quirks(body: &mut Map<String, Value>, t: &Target) -> bool {
        let mut changed = false;
        for p in &t.profile.unsupported_params {
            changed |= body.remove(p).is_some();
        }
        for (from, to) in &t.profile.rename_params {
            if let Some(v) = body.remove(from) {
                // An explicit value under the new name wins.
                if !body.contains_key(to) {
                    body.insert(to.clone(), v);
                }
                changed = true;
            }
        }
        changed
    }

    /// True when the body needs more than the usage request (model, dropped or renamed
    /// parameters), i.e. a full re-serialisation.
    fn needs_rewrite(req: &ChatRequest, t: &Target) -> bool {
        let b = &req.body;
        let model_ok = if t.profile.model_in_body {
            b.get("model").and_then(Value::as_str) == Some(t.model)
        } else {
            !b.contains_key("model")
        };
        !model_ok
            || t.profile
                .unsupported_params
                .iter()
                .any(|p| b.contains_key(p))
            || t.profile.rename_params.keys().any(|p| b.contains_key(p))
    }

    /// The stream needs `stream_options.include_usage` added so it can be priced.
    fn needs_usage(req: &ChatRequest, t: &Target) -> bool {
        req.stream && t.profile.stream_usage && !req.include_usage
    }

    /// Add `"stream_options":{"include_usage":true}` to the client's bytes without
    /// re-serialising them (a large agent body costs hundreds of µs to clone and write).
    /// Only when the body has no `stream_options` at all; `None` otherwise.
    fn splice_usage(req: &ChatRequest) -> Option<Bytes> {
        if req.body.contains_key("stream_options") {
            return None;
        }
        let raw = &req.raw[..];
        let end = raw.iter().rposition(|&b| b == b'}')?;
        let mut out = Vec::with_capacity(raw.len() + 40);
        out.extend_from_slice(&raw[..end]);
        // The body is a non-empty object (it has `model` and `messages`), so a comma is right.
        out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        out.extend_from_slice(&raw[end..]);
        Some(Bytes::from(out))
    }
}

impl Dialect for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let rewrite = Self::needs_rewrite(req, t);
        let usage = Self::needs_usage(req, t);
        let spliced = if !rewrite && usage {
            Self::splice_usage(req)
        } else {
            None
        };
        let body = if let Some(b) = spliced {
            b
        } else if rewrite || usage {
            let mut body = req.body.clone();
            if t.profile.model_in_body {
                body.insert("model".into(), Value::String(t.model.to_string()));
            } else {
                body.remove("model");
            }
            Self::apply_quirks(&mut body, t);
            if req.stream && t.profile.stream_usage {
                // Always ask for usage so streamed requests can be priced.
                let opts = body
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(o) = opts {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
            }
            Bytes::from(
                serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
            )
        } else {
            req.raw.clone()
        };
        Ok(UpstreamRequest {
            method: "POST",
            path: t
                .profile
                .path_for(t.endpoint, &t.profile.chat_path, t.model),
            headers: vec![(JSON.0.into(), JSON.1.into())],
            body,
        })
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        _req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        let mut v: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(DialectError::Upstream(
                super::extract_error_message(
                    &serde_json::to_vec(&serde_json::json!({"error": err})).unwrap_or_default(),
                )
                .unwrap_or_else(|| "upstream error".into()),
            ));
        }
        if !v.get("choices").is_some_and(Value::is_array) {
            return Err(DialectError::Malformed(
                "response has no choices array".into(),
            ));
        }
        let usage = v
            .get("usage")
            .and_then(Usage::from_openai)
            .unwrap_or_default();
        let model = v.get("model").and_then(Value::as_str).map(str::to_string);
        v.insert("id".into(), Value::String(t.request_id.to_string()));
        v.insert("object".into(), Value::String("chat.completion".into()));
        if !v.get("created").is_some_and(Value::is_u64) {
            v.insert("created".into(), Value::from(t.created));
        }
        if model.is_none() {
            v.insert("model".into(), Value::String(t.model.to_string()));
        }
        let mut out = Vec::with_capacity(body.len() + 64);
        serde_json::to_writer(&mut out, &v).map_err(|e| DialectError::Malformed(e.to_string()))?;
        Ok(Translated {
            body: Bytes::from(out),
            usage,
            model,
        })
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(OpenAiStream::new(
            t.request_id,
            req.include_usage,
            t.created,
        ))
    }

    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let path = t.profile.embeddings_path.as_deref().ok_or_else(|| {
            DialectError::unsupported(
                format!("provider {} does not offer embeddings", t.profile.name),
                Some("model"),
            )
        })?;
        let mut body = body.clone();
        if t.profile.model_in_body {
            body.insert("model".into(), Value::String(t.model.to_string()));
        } else {
            body.remove("model");
        }
        Self::apply_quirks(&mut body, t);
        Ok(UpstreamRequest {
            method: "POST",
            path: t.profile.path_for(t.endpoint, path, t.model),
            headers: vec![(JSON.0.into(), JSON.1.into())],
            body: Bytes::from(
                serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let mut v: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if !v.get("data").is_some_and(Value::is_array) {
            return Err(DialectError::Malformed(
                "embeddings response has no data array".into(),
            ));
        }
        let usage = v
            .get("usage")
            .and_then(Usage::from_openai)
            .unwrap_or_default();
        let model = v.get("model").and_then(Value::as_str).map(str::to_string);
        v.insert("object".into(), Value::String("list".into()));
        if model.is_none() {
            v.insert("model".into(), Value::String(t.model.to_string()));
        }
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&v).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage,
            model,
        })
    }

    fn build_images(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let path = t.profile.images_path.as_deref().ok_or_else(|| {
            DialectError::unsupported(
                format!(
                    "provider {} does not offer image generation",
                    t.profile.name
                ),
                Some("model"),
            )
        })?;
        let mut body = body.clone();
        body.insert("model".into(), Value::String(t.model.to_string()));
        Self::apply_quirks(&mut body, t);
        Ok(UpstreamRequest {
            method: "POST",
            path: t.profile.path_for(t.endpoint, path, t.model),
            headers: vec![(JSON.0.into(), JSON.1.into())],
            body: Bytes::from(
                serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_images(&self, body: &[u8], _t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if !v.get("data").is_some_and(Value::is_array) {
            return Err(DialectError::Malformed(
                "images response has no data array".into(),
            ));
        }
        let usage = v
            .get("usage")
            .and_then(Usage::from_openai)
            .unwrap_or_default();
        Ok(Translated {
            body: Bytes::copy_from_slice(body),
            usage,
            model: None,
        })
    }
}

/// Add to `into` the members of `from` it lacks (one level into nested objects): the
/// upstream's usage stays as sent, and the standard members are there even when the
/// upstream named them differently (e.g. DeepSeek's `prompt_cache_hit_tokens`).
fn fill_missing(into: &mut Value, from: Value) {
    let (Value::Object(a), Value::Object(b)) = (into, from) else {
        return;
    };
    for (k, v) in b {
        match a.get_mut(&k) {
            None | Some(Value::Null) => {
                a.insert(k, v);
            }
            Some(existing @ Value::Object(_)) => fill_missing(existing, v),
            Some(_) => {}
        }
    }
}

/// Chunk fields copied onto a usage chunk the gateway builds itself.
const USAGE_CHUNK_FIELDS: &[&str] = &["system_fingerprint", "service_tier"];

/// Normalises an OpenAI-compatible SSE stream.
pub struct OpenAiStream {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    id: Value,
    created: u64,
    include_usage: bool,
    usage: Usage,
    /// The upstream's usage object as sent (details, unknown members), shown to the client.
    usage_raw: Option<Value>,
    /// The upstream's own usage-only chunk (fingerprint, service tier, unknown fields).
    usage_chunk: Option<Map<String, Value>>,
    /// Chunk-level fields clients bill or branch on, for a usage chunk the gateway builds.
    extras: Map<String, Value>,
    model: Option<String>,
    saw_done: bool,
    saw_finish: bool,
    produced: bool,
    ended: bool,
}

impl OpenAiStream {
    pub fn new(request_id: &str, include_usage: bool, created: u64) -> Self {
        OpenAiStream {
            decoder: SseDecoder::new(),
            events: Vec::with_capacity(4),
            id: Value::String(request_id.to_string()),
            created,
            include_usage,
            usage: Usage::default(),
            usage_raw: None,
            usage_chunk: None,
            extras: Map::new(),
            model: None,
            saw_done: false,
            saw_finish: false,
            produced: false,
            ended: false,
        }
    }

    fn handle(&mut self, data: &str, out: &mut BytesMut) -> Result<(), DialectError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.saw_done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut chunk: Map<String, Value> = serde_json::from_str(data)
            .map_err(|e| DialectError::Malformed(format!("stream chunk is not JSON: {e}")))?;
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| err.as_str())
                .unwrap_or("upstream error")
                .to_string();
            if !self.ended {
                write_error_event(&msg, "api_error", "upstream_error", out);
                write_done(out);
                self.ended = true;
            }
            return Err(DialectError::Upstream(msg));
        }
        // Usage may come in its own chunk, in the last content chunk, or (Groq) in x_groq.
        let usage = chunk.remove("usage").filter(|u| !u.is_null()).or_else(|| {
            chunk
                .get_mut("x_groq")
                .and_then(|x| x.as_object_mut())
                .and_then(|x| x.remove("usage"))
        });
        if let Some(u) = usage {
            if let Some(parsed) = Usage::from_openai(&u) {
                self.usage = parsed;
            }
            if u.is_object() {
                self.usage_raw = Some(u);
            }
        }
        for k in USAGE_CHUNK_FIELDS {
            if !self.extras.contains_key(*k) {
                if let Some(v) = chunk.get(*k).filter(|v| !v.is_null()) {
                    self.extras.insert((*k).to_string(), v.clone());
                }
            }
        }
        if self.model.is_none() {
            self.model = chunk
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string);
            // The final usage chunk must carry the same `created` as the others.
            if let Some(c) = chunk.get("created").and_then(Value::as_u64) {
                self.created = c;
            }
        }
        let choices_empty = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(|c| c.is_empty());
        if choices_empty {
            // The usage-only chunk: re-emitted by `finish` for clients that asked, with every
            // field the upstream sent.
            if self.usage_raw.is_some() {
                self.usage_chunk = Some(chunk);
            }
            return Ok(());
        }
        if let Some(choices) = chunk.get("choices").and_then(Value::as_array) {
            for c in choices {
                if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    self.saw_finish = true;
                }
                if let Some(d) = c.get("delta") {
                    if d.get("content")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                        || d.get("tool_calls").is_some()
                        || d.get("reasoning_content")
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                    {
                        self.produced = true;
                    }
                }
            }
        }
        chunk.insert("id".into(), self.id.clone());
        chunk.insert(
            "object".into(),
            Value::String("chat.completion.chunk".into()),
        );
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        write_data(&Value::Object(chunk), out);
        Ok(())
    }

    fn drain(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        let events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for ev in &events {
            if self.ended {
                break;
            }
            if let Err(e) = self.handle(&ev.data, out) {
                result = Err(e);
                break;
            }
        }
        self.events = events;
        self.events.clear();
        result
    }

    fn write_usage_and_done(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        if self.include_usage {
            // The upstream's usage chunk edited in place (unknown keys and their order kept),
            // or one built from the stream's fields when usage came inside a content chunk.
            let mut c = self.usage_chunk.take().unwrap_or_default();
            c.insert("id".into(), self.id.clone());
            c.insert(
                "object".into(),
                Value::String("chat.completion.chunk".into()),
            );
            c.entry("created").or_insert(Value::from(self.created));
            c.entry("model")
                .or_insert_with(|| Value::String(self.model.clone().unwrap_or_default()));
            for (k, v) in std::mem::take(&mut self.extras) {
                c.entry(k).or_insert(v);
            }
            c.insert("choices".into(), Value::Array(Vec::new()));
            let norm = self.usage.to_openai();
            let usage = match self.usage_raw.take() {
                Some(mut raw) => {
                    fill_missing(&mut raw, norm);
                    raw
                }
                None => norm,
            };
            c.insert("usage".into(), usage);
            write_data(&Value::Object(c), out);
        }
        write_done(out);
        self.ended = true;
    }
}

impl StreamTranslator for OpenAiStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        if self.ended {
            return Ok(());
        }
        // Events decoded before a bad line are still translated (chunking must not matter).
        let decoded = self.decoder.feed(input, &mut self.events);
        self.drain(out)?;
        if self.ended {
            return Ok(());
        }
        decoded
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        if self.ended {
            return Ok(());
        }
        let drained = self
            .decoder
            .finish(&mut self.events)
            .and_then(|_| self.drain(out));
        if let Err(e) = drained {
            if self.ended {
                return Err(e);
            }
            let msg = "upstream stream ended with an incomplete event";
            self.abort(msg, out);
            return Err(DialectError::Truncated(msg.into()));
        }
        if self.ended {
            return Ok(());
        }
        if !self.saw_done && !self.saw_finish {
            let msg = "upstream stream ended before completion";
            self.abort(msg, out);
            return Err(DialectError::Truncated(msg.into()));
        }
        self.write_usage_and_done(out);
        Ok(())
    }

    fn abort(&mut self, message: &str, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        write_error_event(message, "api_error", "upstream_error", out);
        write_done(out);
        self.ended = true;
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn produced_output(&self) -> bool {
        self.produced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_contract_and_id_rewrite() {
        let up = concat!(
            "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n"
        );
        for include in [true, false] {
            let mut s = OpenAiStream::new("chatcmpl-lg", include, 9);
            let mut out = BytesMut::new();
            for b in up.as_bytes().chunks(7) {
                s.feed(b, &mut out).unwrap();
            }
            s.finish(&mut out).unwrap();
            let text = String::from_utf8(out.to_vec()).unwrap();
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(*events.last().unwrap(), "data: [DONE]");
            assert_eq!(events.len(), if include { 4 } else { 3 });
            for e in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(&e[6..]).unwrap();
                assert_eq!(v["id"], "chatcmpl-lg");
                if include {
                    assert!(v.get("usage").is_some());
                } else {
                    assert!(v.get("usage").is_none());
                }
            }
            assert_eq!(s.usage().total(), 7);
            assert!(s.produced_output());
        }
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut s = OpenAiStream::new("x", false, 1);
        let mut out = BytesMut::new();
        s.feed(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"cho",
            &mut out,
        )
        .unwrap();
        assert!(matches!(
            s.finish(&mut out),
            Err(DialectError::Truncated(_))
        ));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("\"error\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}

#[cfg(test)]
mod splice_tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    #[test]
    fn usage_request_is_spliced_into_the_clients_bytes() {
        let profile = ProviderProfile::parse(
            "name = \"p\"\ndialect = \"openai\"\nbase_url = \"http://h/v1\"\napi_key_env = \"X\"\n",
            "p.toml",
        )
        .unwrap();
        let ep = Endpoint::parse("http://h/v1").unwrap();
        let raw = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"}"}]}  "#;
        let body: Map<String, Value> = serde_json::from_slice(raw).unwrap();
        let req = ChatRequest {
            raw: Bytes::from_static(raw),
            body,
            model: "m".into(),
            stream: true,
            include_usage: false,
        };
        let t = Target {
            profile: &profile,
            endpoint: &ep,
            model: "m",
            stream: true,
            request_id: "r",
            created: 1,
            max_output_tokens: None,
        };
        let out = OpenAi.build_chat(&req, &t).unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "}");
        assert_eq!(out.path, "/v1/chat/completions");
    }
}
