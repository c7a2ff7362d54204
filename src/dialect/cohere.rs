//! Cohere v2: `POST /v2/chat` (JSON and SSE) and `POST /v2/embed`.
//!
//! Cohere's messages are close to OpenAI's (roles, `tool_calls`, `tool_call_id`), but
//! parameters are renamed (`p`, `stop_sequences`), `tool_choice` only knows
//! `REQUIRED`/`NONE`, the response carries content blocks, a `tool_plan` and
//! upper-case finish reasons, and the stream is SSE with typed events
//! (`message-start`, `content-delta`, `tool-call-start`, ..., `message-end`).

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::common::{content_text, image_url_of, reject_n, stop_list};
use super::encode::finish_reason_from;
use super::sse::{SseDecoder, SseEvent};
use super::{
    ChatRequest, ChunkEncoder, Dialect, DialectError, StreamTranslator, Target, Translated,
    UpstreamRequest, Usage,
};

pub struct Cohere;

/// Cohere's `/v2/embed` accepts at most this many texts per call.
pub const MAX_EMBED_TEXTS: usize = 96;

fn user_content(content: Option<&Value>) -> Result<Value, DialectError> {
    match content {
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | None => out.push(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(json!(""))})),
                    // Vision models (command-a-vision) take OpenAI-shaped image parts, data or http URLs.
                    Some("image_url") => {
                        let url = image_url_of(p)
                            .ok_or_else(|| DialectError::unsupported("image_url part has no url", Some("messages")))?;
                        let mut iu = json!({"url": url});
                        if let Some(d) = p.pointer("/image_url/detail") {
                            iu["detail"] = d.clone();
                        }
                        out.push(json!({"type": "image_url", "image_url": iu}));
                    }
                    Some(other) => {
                        return Err(DialectError::unsupported(
                            format!("content part type '{other}' is not supported by Cohere"),
                            Some("messages"),
                        ))
                    }
                }
            }
            Ok(Value::Array(out))
        }
        _ => Ok(Value::String(content_text(content))),
    }
}

fn build_messages(req: &ChatRequest) -> Result<Vec<Value>, DialectError> {
    let mut out = Vec::with_capacity(req.messages().len());
    for m in req.messages() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let msg = match role {
            "system" | "developer" => {
                json!({"role": "system", "content": content_text(m.get("content"))})
            }
            "user" => json!({"role": "user", "content": user_content(m.get("content"))?}),
            "assistant" => {
                let mut a = Map::new();
                a.insert("role".into(), json!("assistant"));
                let text = content_text(m.get("content"));
                let calls: Vec<Value> = m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|tc| {
                        let f = tc.get("function");
                        json!({
                            "id": tc.get("id").and_then(Value::as_str).unwrap_or(""),
                            "type": "function",
                            "function": {
                                "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or(""),
                                "arguments": f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("{}"),
                            }
                        })
                    })
                    .collect();
                if calls.is_empty() {
                    a.insert("content".into(), json!(text));
                } else {
                    // Text that precedes tool calls is Cohere's tool plan.
                    if !text.is_empty() {
                        a.insert("tool_plan".into(), json!(text));
                    }
                    a.insert("tool_calls".into(), Value::Array(calls));
                }
                Value::Object(a)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        DialectError::unsupported(
                            "tool message needs tool_call_id",
                            Some("messages"),
                        )
                    })?;
                json!({"role": "tool", "tool_call_id": id, "content": content_text(m.get("content"))})
            }
            other => {
                return Err(DialectError::unsupported(
                    format!("message role '{other}' is not supported"),
                    Some("messages"),
                ))
            }
        };
        out.push(msg);
    }
    Ok(out)
}

/// The `/v2/chat` request body.
pub fn chat_body(req: &ChatRequest, model: &str, stream: bool) -> Result<Value, DialectError> {
    let b = &req.body;
    reject_n(b, "Cohere")?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(build_messages(req)?));
    body.insert("stream".into(), json!(stream));
    let mut tools = b
        .get("tools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match b.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match s.as_str() {
            "auto" => {}
            "required" => {
                body.insert("tool_choice".into(), json!("REQUIRED"));
            }
            "none" => {
                body.insert("tool_choice".into(), json!("NONE"));
            }
            other => {
                return Err(DialectError::unsupported(
                    format!("tool_choice '{other}' is not supported"),
                    Some("tool_choice"),
                ))
            }
        },
        Some(v) => {
            // A named function: offer only that tool and require a call.
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    DialectError::unsupported(
                        "tool_choice needs function.name",
                        Some("tool_choice"),
                    )
                })?;
            tools.retain(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name));
            if tools.is_empty() {
                return Err(DialectError::unsupported(
                    format!("tool_choice names unknown tool '{name}'"),
                    Some("tool_choice"),
                ));
            }
            body.insert("tool_choice".into(), json!("REQUIRED"));
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    let stops = stop_list(b.get("stop"));
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), Value::Array(stops));
    }
    if let Some(m) = b
        .get("max_completion_tokens")
        .or_else(|| b.get("max_tokens"))
        .filter(|v| v.is_u64())
    {
        body.insert("max_tokens".into(), m.clone());
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ] {
        if let Some(v) = b.get(from).filter(|v| v.is_number()) {
            body.insert(to.into(), v.clone());
        }
    }
    if let Some(rf) = b.get("response_format").filter(|v| v.is_object()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => {
                let schema = rf.pointer("/json_schema/schema").cloned().ok_or_else(|| {
                    DialectError::unsupported(
                        "response_format json_schema needs json_schema.schema",
                        Some("response_format"),
                    )
                })?;
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_object", "json_schema": schema}),
                );
            }
            Some(other) => {
                return Err(DialectError::unsupported(
                    format!("response_format type '{other}' is not supported"),
                    Some("response_format"),
                ))
            }
        }
    }
    Ok(Value::Object(body))
}

/// Cohere usage: billed units are what Cohere charges (and what the catalog prices);
/// `tokens` also counts its prompt template, so it is only the fallback.
fn usage_from(u: &Value) -> Usage {
    let pick = |k: &str| {
        u.pointer(&format!("/billed_units/{k}"))
            .and_then(Value::as_f64)
            .or_else(|| u.pointer(&format!("/tokens/{k}")).and_then(Value::as_f64))
            .map(|x| x as u64)
            .unwrap_or(0)
    };
    Usage {
        prompt_tokens: pick("input_tokens"),
        completion_tokens: pick("output_tokens"),
        reported: true,
        ..Usage::default()
    }
}

fn finish_reason(native: &str) -> Result<&'static str, String> {
    match native {
        "ERROR" | "TIMEOUT" | "ERROR_LIMIT" => {
            Err(format!("Cohere stopped with finish_reason {native}"))
        }
        "ERROR_TOXIC" => Ok("content_filter"),
        other => Ok(finish_reason_from(other)),
    }
}

impl Dialect for Cohere {
    fn name(&self) -> &'static str {
        "cohere"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = chat_body(req, t.model, t.stream)?;
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if t.stream {
            headers.push(("accept".into(), "text/event-stream".into()));
        }
        Ok(UpstreamRequest {
            method: "POST",
            path: t
                .profile
                .path_for(t.endpoint, &t.profile.chat_path, t.model),
            headers,
            body: Bytes::from(
                serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        _req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        let msg = v
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| DialectError::Malformed("Cohere response has no message".into()))?;
        let mut text = String::new();
        let mut thinking = String::new();
        for c in msg
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match c.get("type").and_then(Value::as_str) {
                Some("thinking") => {
                    thinking.push_str(c.get("thinking").and_then(Value::as_str).unwrap_or(""))
                }
                _ => text.push_str(c.get("text").and_then(Value::as_str).unwrap_or("")),
            }
        }
        if let Some(plan) = msg
            .get("tool_plan")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            if !thinking.is_empty() {
                thinking.push('\n');
            }
            thinking.push_str(plan);
        }
        let tool_calls: Vec<Value> = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|tc| {
                let args = match tc.pointer("/function/arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Object(_)) => v.to_string(),
                    _ => "{}".into(),
                };
                json!({"id": tc.get("id").and_then(Value::as_str).unwrap_or(""), "type": "function",
                    "function": {"name": tc.pointer("/function/name").and_then(Value::as_str).unwrap_or(""), "arguments": args}})
            })
            .collect();
        let native = v
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("COMPLETE");
        let finish = if tool_calls.is_empty() {
            finish_reason(native).map_err(DialectError::Upstream)?
        } else {
            "tool_calls"
        };
        let usage = v.get("usage").map(usage_from).unwrap_or_default();
        super::encode::single_choice_completion(t, text, tool_calls, thinking, finish, usage)
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(CohereStream::new(
            t.request_id,
            t.created,
            t.model,
            req.include_usage,
        ))
    }

    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let texts: Vec<Value> = match body.get("input") {
            Some(Value::String(s)) => vec![json!(s)],
            Some(Value::Array(a)) if a.iter().all(Value::is_string) && !a.is_empty() => a.clone(),
            _ => {
                return Err(DialectError::unsupported(
                    "Cohere embeddings take a string or a non-empty array of strings (not token arrays)",
                    Some("input"),
                ))
            }
        };
        if texts.len() > MAX_EMBED_TEXTS {
            return Err(DialectError::unsupported(
                format!("Cohere embeds at most {MAX_EMBED_TEXTS} inputs per request"),
                Some("input"),
            ));
        }
        let input_type = body
            .get("input_type")
            .and_then(Value::as_str)
            .or(t.profile.extra.embed_input_type.as_deref())
            .unwrap_or("search_document");
        let mut out = json!({
            "model": t.model,
            "texts": texts,
            "input_type": input_type,
            "embedding_types": ["float"],
        });
        if let Some(d) = body.get("dimensions").filter(|d| d.is_u64()) {
            out["output_dimension"] = d.clone();
        }
        let path = t.profile.embeddings_path.as_deref().unwrap_or("/v2/embed");
        // The OpenAI encoding_format is applied when translating back.
        Ok(UpstreamRequest {
            method: "POST",
            path: t.profile.path_for(t.endpoint, path, t.model),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        let vectors = v
            .pointer("/embeddings/float")
            .or_else(|| v.get("embeddings").filter(|e| e.is_array()))
            .and_then(Value::as_array)
            .ok_or_else(|| {
                DialectError::Malformed("Cohere embed response has no embeddings.float".into())
            })?;
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
            .collect();
        let input = v
            .pointer("/meta/billed_units/input_tokens")
            .and_then(Value::as_f64)
            .map(|x| x as u64);
        let usage = Usage {
            prompt_tokens: input.unwrap_or(0),
            reported: input.is_some(),
            ..Usage::default()
        };
        let out = json!({
            "object": "list",
            "data": data,
            "model": t.model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        });
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage,
            model: None,
        })
    }
}

/// Cohere SSE → OpenAI chunks.
pub struct CohereStream {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    enc: ChunkEncoder,
    usage: Usage,
    /// OpenAI tool index per Cohere tool-call `index`, in order of appearance.
    tools: Vec<u64>,
    started: bool,
    saw_end: bool,
    produced: bool,
}

impl CohereStream {
    pub fn new(request_id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        CohereStream {
            decoder: SseDecoder::new(),
            events: Vec::with_capacity(4),
            enc: ChunkEncoder::new(request_id, created, model, include_usage),
            usage: Usage::default(),
            tools: Vec::new(),
            started: false,
            saw_end: false,
            produced: false,
        }
    }

    fn ensure_started(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.enc.start(0, out);
            self.started = true;
        }
    }

    fn tool_index(&mut self, native: u64) -> u32 {
        match self.tools.iter().position(|&n| n == native) {
            Some(i) => i as u32,
            None => {
                self.tools.push(native);
                (self.tools.len() - 1) as u32
            }
        }
    }

    fn upstream_error(&mut self, msg: String, out: &mut BytesMut) -> DialectError {
        self.enc.error(&msg, "api_error", "upstream_error", out);
        DialectError::Upstream(msg)
    }

    fn handle(&mut self, ev: &SseEvent, out: &mut BytesMut) -> Result<(), DialectError> {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                let err = DialectError::Malformed(format!("Cohere stream event is not JSON: {e}"));
                self.enc
                    .error(&err.to_string(), "api_error", "upstream_error", out);
                return Err(err);
            }
        };
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str())
            .to_string();
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let dm = v.pointer("/delta/message");
        match ty.as_str() {
            "message-start" | "content-start" => self.ensure_started(out),
            "content-delta" => {
                self.ensure_started(out);
                let c = dm.and_then(|m| m.get("content"));
                if let Some(s) = c.and_then(|c| c.get("text")).and_then(Value::as_str) {
                    self.produced |= !s.is_empty();
                    self.enc.content(0, s, out);
                } else if let Some(s) = c.and_then(|c| c.get("thinking")).and_then(Value::as_str) {
                    self.produced |= !s.is_empty();
                    self.enc.reasoning(0, s, out);
                }
            }
            "tool-plan-delta" => {
                self.ensure_started(out);
                if let Some(s) = dm.and_then(|m| m.get("tool_plan")).and_then(Value::as_str) {
                    self.produced |= !s.is_empty();
                    self.enc.reasoning(0, s, out);
                }
            }
            "tool-call-start" => {
                self.ensure_started(out);
                let tc = dm.and_then(|m| m.get("tool_calls")).unwrap_or(&Value::Null);
                let ti = self.tool_index(index);
                let id = tc.get("id").and_then(Value::as_str).unwrap_or("");
                let name = tc
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.enc.tool_call_start(0, ti, id, name, out);
                self.produced = true;
                if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                    self.enc.tool_call_args(0, ti, a, out);
                }
            }
            "tool-call-delta" => {
                if !self.tools.contains(&index) {
                    let e =
                        DialectError::Malformed("tool-call-delta before tool-call-start".into());
                    self.enc
                        .error(&e.to_string(), "api_error", "upstream_error", out);
                    return Err(e);
                }
                let ti = self.tool_index(index);
                if let Some(a) = dm
                    .and_then(|m| m.pointer("/tool_calls/function/arguments"))
                    .and_then(Value::as_str)
                {
                    self.enc.tool_call_args(0, ti, a, out);
                }
            }
            "message-end" => {
                self.ensure_started(out);
                let d = v.get("delta").unwrap_or(&Value::Null);
                if let Some(u) = d.get("usage") {
                    self.usage = usage_from(u);
                }
                let native = d
                    .get("finish_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("COMPLETE");
                let reason = if self.tools.is_empty() {
                    match finish_reason(native) {
                        Ok(r) => r,
                        Err(m) => return Err(self.upstream_error(m, out)),
                    }
                } else {
                    "tool_calls"
                };
                self.enc.finish_reason(0, reason, out);
                self.saw_end = true;
            }
            "error" => {
                let m = v
                    .get("message")
                    .or_else(|| v.pointer("/error/message"))
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_string();
                return Err(self.upstream_error(format!("Cohere: {m}"), out));
            }
            _ => {} // content-end, tool-call-end, citation-start/end carry nothing we need
        }
        Ok(())
    }
}

impl StreamTranslator for CohereStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        // Events decoded before a bad line are still translated (chunking must not matter).
        let decoded = self.decoder.feed(input, &mut self.events);
        let events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for ev in &events {
            if self.enc.is_done() {
                break;
            }
            if let Err(e) = self.handle(ev, out) {
                result = Err(e);
                break;
            }
        }
        self.events = events;
        self.events.clear();
        match decoded {
            Err(e) if result.is_ok() && !self.enc.is_done() => {
                self.enc
                    .error(&e.to_string(), "api_error", "upstream_error", out);
                Err(e)
            }
            _ => result,
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        // A final event without its blank line still counts if it is whole JSON; a cut
        // one means the stream was truncated.
        let mut tail = Vec::new();
        let _ = self.decoder.finish(&mut tail);
        for ev in &tail {
            if self.enc.is_done() {
                break;
            }
            let d = ev.data.trim();
            if d.is_empty() || d == "[DONE]" {
                continue;
            }
            if serde_json::from_str::<Value>(d).is_err() {
                let msg = "Cohere stream ended inside an event";
                self.abort(msg, out);
                return Err(DialectError::Truncated(msg.into()));
            }
            self.handle(ev, out)?;
        }
        if self.enc.is_done() {
            return Ok(());
        }
        if !self.saw_end {
            let msg = "Cohere stream ended before message-end";
            self.abort(msg, out);
            return Err(DialectError::Truncated(msg.into()));
        }
        let usage = self.usage;
        self.enc.end(&usage, out);
        Ok(())
    }

    fn abort(&mut self, message: &str, out: &mut BytesMut) {
        self.enc.error(message, "api_error", "upstream_error", out);
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn model(&self) -> Option<&str> {
        None
    }

    fn produced_output(&self) -> bool {
        self.produced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::bedrock::tests::{chat, drive, events};
    use crate::providers::{Endpoint, ProviderProfile};
    use proptest::prelude::*;

    fn with_target<R>(stream: bool, f: impl FnOnce(&Target) -> R) -> R {
        let p = ProviderProfile::parse(
            "name = \"cohere\"\ndialect = \"cohere\"\nbase_url = \"https://api.cohere.com\"\napi_key_env = \"CO_API_KEY\"\nchat_path = \"/v2/chat\"\nembeddings_path = \"/v2/embed\"\n",
            "test",
        )
        .unwrap();
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = Target {
            profile: &p,
            endpoint: &e,
            model: "command-a-03-2025",
            stream,
            request_id: "chatcmpl-test",
            created: 1_700_000_000,
            max_output_tokens: None,
        };
        f(&t)
    }

    #[test]
    fn builds_chat_request() {
        let req = chat(json!({
            "model": "cohere/command-a-03-2025",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Madrid?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]},
                {"role": "assistant", "content": "I will look it up.", "tool_calls": [
                    {"id": "get_weather_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Madrid\"}"}}]},
                {"role": "tool", "tool_call_id": "get_weather_1", "content": "{\"temperature\":24}"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
                      {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "stop": ["\n\n"], "max_tokens": 100, "temperature": 0.3, "top_p": 0.8, "seed": 7,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
        }));
        let up = with_target(true, |t| Cohere.build_chat(&req, t)).unwrap();
        assert_eq!(up.path, "/v2/chat");
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(b["model"], "command-a-03-2025");
        assert_eq!(b["stream"], true);
        assert_eq!(b["tool_choice"], "REQUIRED");
        assert_eq!(b["stop_sequences"], json!(["\n\n"]));
        assert_eq!(
            (
                b["max_tokens"].as_u64(),
                b["p"].as_f64(),
                b["seed"].as_u64()
            ),
            (Some(100), Some(0.8), Some(7))
        );
        assert!(b.get("top_p").is_none() && b.get("stop").is_none());
        assert_eq!(
            b["response_format"],
            json!({"type": "json_object", "json_schema": {"type": "object"}})
        );
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "You are terse."})
        );
        assert_eq!(
            b["messages"][1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}})
        );
        assert_eq!(b["messages"][2]["tool_plan"], "I will look it up.");
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"location\":\"Madrid\"}"
        );
        assert_eq!(
            b["messages"][3],
            json!({"role": "tool", "tool_call_id": "get_weather_1", "content": "{\"temperature\":24}"})
        );

        let named = chat(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": b["tools"].clone(),
            "tool_choice": {"type": "function", "function": {"name": "other"}}}),
        );
        let nb = chat_body(&named, "m", false).unwrap();
        assert_eq!(nb["tool_choice"], "REQUIRED");
        assert_eq!(nb["tools"].as_array().unwrap().len(), 1);
        let none =
            chat(json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "none"}));
        assert_eq!(chat_body(&none, "m", false).unwrap()["tool_choice"], "NONE");
        assert!(chat_body(&chat(json!({"n": 3, "messages": []})), "m", false).is_err());
    }

    #[test]
    fn translates_chat_response() {
        let body = br#"{"id":"c14c80c3-18eb-4519-9460-6c92edd8cfb4","finish_reason":"COMPLETE",
            "message":{"role":"assistant","content":[{"type":"text","text":"LLMs are neural networks."}]},
            "usage":{"billed_units":{"input_tokens":5,"output_tokens":418},"tokens":{"input_tokens":71,"output_tokens":418}}}"#;
        let req = chat(json!({"messages": []}));
        let tr = with_target(false, |t| Cohere.translate_chat(body, t, &req)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "LLMs are neural networks."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["usage"]["total_tokens"], 423);

        let tools = br#"{"id":"x","finish_reason":"TOOL_CALL","message":{"role":"assistant",
            "tool_plan":"I will find the weather in Madrid.",
            "tool_calls":[{"id":"get_weather_1byjy32y4hvq","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Madrid\"}"}}]},
            "usage":{"billed_units":{"input_tokens":37,"output_tokens":28},"tokens":{"input_tokens":913,"output_tokens":83}}}"#;
        let tr = with_target(false, |t| Cohere.translate_chat(tools, t, &req)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert!(m["content"].is_null());
        assert_eq!(m["reasoning_content"], "I will find the weather in Madrid.");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"location\":\"Madrid\"}"
        );

        for (fr, want) in [("MAX_TOKENS", "length"), ("STOP_SEQUENCE", "stop")] {
            let b = format!(
                r#"{{"finish_reason":"{fr}","message":{{"role":"assistant","content":[{{"type":"text","text":"x"}}]}}}}"#
            );
            let tr = with_target(false, |t| Cohere.translate_chat(b.as_bytes(), t, &req)).unwrap();
            assert_eq!(
                serde_json::from_slice::<Value>(&tr.body).unwrap()["choices"][0]["finish_reason"],
                want
            );
        }
        let err = br#"{"finish_reason":"ERROR","message":{"role":"assistant","content":[]}}"#;
        assert!(matches!(
            with_target(false, |t| Cohere.translate_chat(err, t, &req)),
            Err(DialectError::Upstream(_))
        ));
    }

    #[test]
    fn embeddings_both_ways() {
        let body = json!({"model": "embed-v4.0", "input": ["hello", "world"], "dimensions": 256});
        let up = with_target(false, |t| {
            Cohere.build_embeddings(body.as_object().unwrap(), t)
        })
        .unwrap();
        assert_eq!(up.path, "/v2/embed");
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(b["texts"], json!(["hello", "world"]));
        assert_eq!(b["input_type"], "search_document");
        assert_eq!(b["embedding_types"], json!(["float"]));
        assert_eq!(b["output_dimension"], 256);
        let resp = br#"{"id":"da6e531f","embeddings":{"float":[[0.1,-0.2],[0.3,0.4]]},"texts":["hello","world"],
            "meta":{"api_version":{"version":"2"},"billed_units":{"input_tokens":2}},"response_type":"embeddings_by_type"}"#;
        let tr = with_target(false, |t| Cohere.translate_embeddings(resp, t)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(
            v["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [0.3, 0.4]})
        );
        assert_eq!(v["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));
        assert_eq!(tr.usage.prompt_tokens, 2);
        let tokens = json!({"input": [[1, 2, 3]]});
        assert!(with_target(false, |t| Cohere
            .build_embeddings(tokens.as_object().unwrap(), t))
        .is_err());
    }

    fn sse(events: &[(&str, Value)]) -> Vec<u8> {
        let mut s = String::new();
        for (name, data) in events {
            s.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        }
        s.into_bytes()
    }

    fn text_stream() -> Vec<u8> {
        sse(&[
            (
                "message-start",
                json!({"id": "29f14a5a", "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
            ),
            (
                "content-start",
                json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
            ),
            (
                "content-delta",
                json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "A large"}}}}),
            ),
            (
                "content-delta",
                json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": " language model ü"}}}}),
            ),
            ("content-end", json!({"type": "content-end", "index": 0})),
            (
                "message-end",
                json!({"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 4}, "tokens": {"input_tokens": 71, "output_tokens": 4}}}}),
            ),
        ])
    }

    fn tool_stream() -> Vec<u8> {
        sse(&[
            (
                "message-start",
                json!({"id": "fba98ad3", "type": "message-start", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
            ),
            (
                "tool-plan-delta",
                json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will"}}}),
            ),
            (
                "tool-plan-delta",
                json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": " check."}}}),
            ),
            (
                "tool-call-start",
                json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "get_weather_nsz5zm3w56q3", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}}),
            ),
            (
                "tool-call-delta",
                json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\n    \"location\": \""}}}}}),
            ),
            (
                "tool-call-delta",
                json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "Madrid\"\n}"}}}}}),
            ),
            (
                "tool-call-end",
                json!({"type": "tool-call-end", "index": 0}),
            ),
            (
                "tool-call-start",
                json!({"type": "tool-call-start", "index": 1, "delta": {"message": {"tool_calls": {"id": "get_weather_c9ds9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}}),
            ),
            (
                "tool-call-delta",
                json!({"type": "tool-call-delta", "index": 1, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"location\":\"Brasilia\"}"}}}}}),
            ),
            (
                "tool-call-end",
                json!({"type": "tool-call-end", "index": 1}),
            ),
            (
                "message-end",
                json!({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {"billed_units": {"input_tokens": 37, "output_tokens": 28}, "tokens": {"input_tokens": 913, "output_tokens": 83}}}}),
            ),
        ])
    }

    fn run(
        input: &[u8],
        cuts: &[usize],
        include_usage: bool,
    ) -> (Result<(), DialectError>, Vec<u8>, Usage) {
        drive(
            &mut CohereStream::new("chatcmpl-test", 1, "command-a-03-2025", include_usage),
            input,
            cuts,
        )
    }

    #[test]
    fn streams_text() {
        let (res, out, usage) = run(&text_stream(), &[], true);
        res.unwrap();
        let ev = events(&out);
        let text: String = ev
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "A large language model ü");
        assert_eq!(ev[ev.len() - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev.last().unwrap()["usage"]["total_tokens"], 9);
        assert_eq!(usage.prompt_tokens, 5);
        assert!(ev
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk" && e["id"] == "chatcmpl-test"));
    }

    #[test]
    fn streams_tool_calls() {
        let (res, out, _) = run(&tool_stream(), &[], false);
        res.unwrap();
        let ev = events(&out);
        let mut args = vec![String::new(); 2];
        let mut ids = Vec::new();
        let mut plan = String::new();
        for e in &ev {
            let d = &e["choices"][0]["delta"];
            plan.push_str(d["reasoning_content"].as_str().unwrap_or(""));
            for tc in d["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    ids.push(id.to_string());
                }
                args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(plan, "I will check.");
        assert_eq!(ids, vec!["get_weather_nsz5zm3w56q3", "get_weather_c9ds9"]);
        assert_eq!(
            serde_json::from_str::<Value>(&args[0]).unwrap(),
            json!({"location": "Madrid"})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&args[1]).unwrap(),
            json!({"location": "Brasilia"})
        );
        assert_eq!(
            ev.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn errors_and_truncation() {
        let mut s = text_stream();
        let cut = s.len() - 60;
        s.truncate(cut);
        let (res, out, _) = run(&s, &[], false);
        assert!(matches!(res, Err(DialectError::Truncated(_))), "{res:?}");
        assert!(events(&out).last().unwrap().get("error").is_some());

        let err = sse(&[
            (
                "message-start",
                json!({"type": "message-start", "delta": {"message": {"role": "assistant"}}}),
            ),
            (
                "message-end",
                json!({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal"}}),
            ),
        ]);
        let (res, out, _) = run(&err, &[], false);
        assert!(matches!(res, Err(DialectError::Upstream(_))));
        assert!(events(&out).last().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ERROR"));

        let (res, out, _) = run(b"event: content-delta\ndata: {not json\n\n", &[], false);
        assert!(matches!(res, Err(DialectError::Malformed(_))));
        assert!(events(&out).last().unwrap().get("error").is_some());
    }

    proptest! {
        #[test]
        fn any_split_gives_same_output(cuts in proptest::collection::vec(0usize..5000, 0..12), tools in any::<bool>()) {
            let input = if tools { tool_stream() } else { text_stream() };
            let (r1, whole, u1) = run(&input, &[], true);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort();
            let (r2, split, u2) = run(&input, &cuts, true);
            prop_assert!(r1.is_ok() && r2.is_ok());
            prop_assert_eq!(whole, split);
            prop_assert_eq!(u1, u2);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1024), cut in 0usize..1024) {
            let cut = cut.min(data.len());
            let (res, out, _) = run(&data, &[cut], false);
            // No message-end in random bytes: always an error, and the stream is terminated.
            prop_assert!(res.is_err());
            prop_assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        }
    }
}
