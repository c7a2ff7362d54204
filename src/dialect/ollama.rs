//! Ollama's native API: `POST /api/chat` (NDJSON stream) and `POST /api/embed`.
//!
//! An alternative to Ollama's OpenAI-compatible `/v1` path (served by the OpenAI
//! dialect). Differences handled here: Ollama streams unless told otherwise (so
//! `stream` is always sent), sampling parameters live in `options`, images are bare
//! base64 strings in the message's `images`, and tool calls come back as objects
//! without ids, so the gateway mints ids and stringifies the arguments.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::common::{content_text, inline_image, parse_arguments, reject_n, stop_list};
use super::encode::finish_reason_from;
use super::sse::NdjsonDecoder;
use super::{
    ChatRequest, ChunkEncoder, Dialect, DialectError, StreamTranslator, Target, Translated,
    UpstreamRequest, Usage,
};

pub struct Ollama;

/// Deterministic tool-call id for the `i`-th call of a response (Ollama sends none).
fn mint_id(request_id: &str, i: usize) -> String {
    let tail: String = request_id
        .rsplit('-')
        .next()
        .unwrap_or(request_id)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    format!("call_{tail}_{i}")
}

fn build_messages(req: &ChatRequest) -> Result<Vec<Value>, DialectError> {
    // tool_call_id → function name, so tool results can carry Ollama's `tool_name`.
    let mut names: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(req.messages().len());
    for m in req.messages() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let msg = match role {
            "system" | "developer" => {
                json!({"role": "system", "content": content_text(m.get("content"))})
            }
            "user" => {
                let mut images = Vec::new();
                if let Some(parts) = m.get("content").and_then(Value::as_array) {
                    for p in parts {
                        match p.get("type").and_then(Value::as_str) {
                            Some("text") | None => {}
                            Some("image_url") => images.push(json!(inline_image(p, "Ollama")?.1)),
                            Some(other) => {
                                return Err(DialectError::unsupported(
                                    format!(
                                        "content part type '{other}' is not supported by Ollama"
                                    ),
                                    Some("messages"),
                                ))
                            }
                        }
                    }
                }
                let mut u = json!({"role": "user", "content": content_text(m.get("content"))});
                if !images.is_empty() {
                    u["images"] = Value::Array(images);
                }
                u
            }
            "assistant" => {
                let mut a = json!({"role": "assistant", "content": content_text(m.get("content"))});
                let mut calls = Vec::new();
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = tc
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if let Some(id) = tc.get("id").and_then(Value::as_str) {
                        names.push((id.to_string(), name.to_string()));
                    }
                    calls.push(json!({"function": {
                        "name": name,
                        "arguments": parse_arguments(tc.pointer("/function/arguments"))?,
                    }}));
                }
                if !calls.is_empty() {
                    a["tool_calls"] = Value::Array(calls);
                }
                a
            }
            "tool" => {
                let mut t = json!({"role": "tool", "content": content_text(m.get("content"))});
                let id = m.get("tool_call_id").and_then(Value::as_str);
                if let Some(name) = id
                    .and_then(|id| names.iter().find(|(i, _)| i == id))
                    .map(|(_, n)| n.clone())
                {
                    t["tool_name"] = json!(name);
                }
                t
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

/// The `/api/chat` request body.
pub fn chat_body(req: &ChatRequest, model: &str, stream: bool) -> Result<Value, DialectError> {
    let b = &req.body;
    reject_n(b, "Ollama")?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(build_messages(req)?));
    // Ollama streams by default: always say which one we want.
    body.insert("stream".into(), json!(stream));
    if let Some(tools) = b
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        if b.get("tool_choice").and_then(Value::as_str) != Some("none") {
            body.insert("tools".into(), Value::Array(tools.clone()));
        }
    }
    let mut options = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ] {
        if let Some(v) = b.get(from).filter(|v| v.is_number()) {
            options.insert(to.into(), v.clone());
        }
    }
    if let Some(m) = b
        .get("max_completion_tokens")
        .or_else(|| b.get("max_tokens"))
        .filter(|v| v.is_u64())
    {
        options.insert("num_predict".into(), m.clone());
    }
    let stops = stop_list(b.get("stop"));
    if !stops.is_empty() {
        options.insert("stop".into(), Value::Array(stops));
    }
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    // Ollama-only knobs a client may send through the gateway unchanged.
    for k in ["keep_alive", "think"] {
        if let Some(v) = b.get(k) {
            body.insert(k.into(), v.clone());
        }
    }
    if let Some(rf) = b.get("response_format").filter(|v| v.is_object()) {
        match rf.get("type").and_then(Value::as_str) {
            Some("text") | None => {}
            Some("json_object") => {
                body.insert("format".into(), json!("json"));
            }
            Some("json_schema") => {
                let schema = rf.pointer("/json_schema/schema").cloned().ok_or_else(|| {
                    DialectError::unsupported(
                        "response_format json_schema needs json_schema.schema",
                        Some("response_format"),
                    )
                })?;
                body.insert("format".into(), schema);
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

fn usage_from(v: &Value) -> Option<Usage> {
    let p = v.get("prompt_eval_count").and_then(Value::as_u64);
    let c = v.get("eval_count").and_then(Value::as_u64);
    (p.is_some() || c.is_some()).then(|| Usage {
        prompt_tokens: p.unwrap_or(0),
        completion_tokens: c.unwrap_or(0),
        reported: true,
        ..Usage::default()
    })
}

/// Ollama tool call → OpenAI tool call with a minted id (or Ollama's own, if it sent one).
fn tool_call(tc: &Value, request_id: &str, i: usize) -> (String, String, String) {
    let id = tc
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| mint_id(request_id, i));
    let name = tc
        .pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let args = match tc.pointer("/function/arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => "{}".into(),
    };
    (id, name, args)
}

fn error_of(v: &Value) -> Option<String> {
    match v.get("error")? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(
            other
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error")
                .to_string(),
        ),
    }
}

impl Dialect for Ollama {
    fn name(&self) -> &'static str {
        "ollama"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = chat_body(req, t.model, t.stream)?;
        Ok(UpstreamRequest {
            method: "POST",
            path: t
                .profile
                .path_for(t.endpoint, &t.profile.chat_path, t.model),
            headers: vec![("content-type".into(), "application/json".into())],
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
        if let Some(e) = error_of(&v) {
            return Err(DialectError::Upstream(e));
        }
        let msg = v
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| DialectError::Malformed("Ollama response has no message".into()))?;
        let text = msg.get("content").and_then(Value::as_str).unwrap_or("");
        let tool_calls: Vec<Value> = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, tc)| {
                let (id, name, args) = tool_call(tc, t.request_id, i);
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
            })
            .collect();
        let native = v
            .get("done_reason")
            .and_then(Value::as_str)
            .unwrap_or("stop");
        let finish = if tool_calls.is_empty() {
            finish_reason_from(native)
        } else {
            "tool_calls"
        };
        let usage = usage_from(&v).unwrap_or_default();
        let model = v.get("model").and_then(Value::as_str).map(str::to_string);
        let mut message = json!({
            "role": "assistant",
            "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
            "refusal": null,
        });
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        if let Some(th) = msg
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            message["reasoning_content"] = json!(th);
        }
        let out = json!({
            "id": t.request_id,
            "object": "chat.completion",
            "created": t.created,
            "model": model.as_deref().unwrap_or(t.model),
            "system_fingerprint": null,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage.to_openai(),
        });
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage,
            model,
        })
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(OllamaStream::new(
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
        let input = match body.get("input") {
            Some(v @ Value::String(_)) => v.clone(),
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => Value::Array(a.clone()),
            _ => {
                return Err(DialectError::unsupported(
                    "Ollama embeddings take a string or a non-empty array of strings (not token arrays)",
                    Some("input"),
                ))
            }
        };
        let mut out = json!({"model": t.model, "input": input});
        if let Some(d) = body.get("dimensions").filter(|d| d.is_u64()) {
            out["dimensions"] = d.clone();
        }
        let path = t.profile.embeddings_path.as_deref().unwrap_or("/api/embed");
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
        if let Some(e) = error_of(&v) {
            return Err(DialectError::Upstream(e));
        }
        let vectors = v
            .get("embeddings")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                DialectError::Malformed("Ollama embed response has no embeddings".into())
            })?;
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
            .collect();
        let usage = usage_from(&v).unwrap_or_default();
        let model = v.get("model").and_then(Value::as_str).map(str::to_string);
        let out = json!({
            "object": "list",
            "data": data,
            "model": model.as_deref().unwrap_or(t.model),
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        });
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage,
            model,
        })
    }
}

/// Ollama NDJSON → OpenAI chunks.
pub struct OllamaStream {
    decoder: NdjsonDecoder,
    lines: Vec<Vec<u8>>,
    enc: ChunkEncoder,
    request_id: String,
    usage: Usage,
    model: Option<String>,
    tools: usize,
    started: bool,
    saw_done: bool,
    produced: bool,
}

impl OllamaStream {
    pub fn new(request_id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        OllamaStream {
            decoder: NdjsonDecoder::new(),
            lines: Vec::with_capacity(4),
            enc: ChunkEncoder::new(request_id, created, model, include_usage),
            request_id: request_id.to_string(),
            usage: Usage::default(),
            model: None,
            tools: 0,
            started: false,
            saw_done: false,
            produced: false,
        }
    }

    fn handle(&mut self, line: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                let err = DialectError::Malformed(format!("Ollama stream line is not JSON: {e}"));
                self.enc
                    .error(&err.to_string(), "api_error", "upstream_error", out);
                return Err(err);
            }
        };
        if let Some(e) = error_of(&v) {
            self.enc.error(&e, "api_error", "upstream_error", out);
            return Err(DialectError::Upstream(e));
        }
        if self.model.is_none() {
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                self.model = Some(m.to_string());
                self.enc.set_model(m);
            }
        }
        if !self.started {
            self.enc.start(0, out);
            self.started = true;
        }
        if let Some(msg) = v.get("message") {
            if let Some(s) = msg
                .get("thinking")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                self.produced = true;
                self.enc.reasoning(0, s, out);
            }
            if let Some(s) = msg
                .get("content")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                self.produced = true;
                self.enc.content(0, s, out);
            }
            // Ollama sends each tool call whole, in one line.
            for tc in msg
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (id, name, args) = tool_call(tc, &self.request_id, self.tools);
                let ti = self.tools as u32;
                self.enc.tool_call_start(0, ti, &id, &name, out);
                self.enc.tool_call_args(0, ti, &args, out);
                self.tools += 1;
                self.produced = true;
            }
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            if let Some(u) = usage_from(&v) {
                self.usage = u;
            }
            let native = v
                .get("done_reason")
                .and_then(Value::as_str)
                .unwrap_or("stop");
            let reason = if self.tools > 0 {
                "tool_calls"
            } else {
                finish_reason_from(native)
            };
            self.enc.finish_reason(0, reason, out);
            self.saw_done = true;
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        let lines = std::mem::take(&mut self.lines);
        let mut result = Ok(());
        for l in &lines {
            if self.enc.is_done() || self.saw_done {
                break;
            }
            if let Err(e) = self.handle(l, out) {
                result = Err(e);
                break;
            }
        }
        self.lines = lines;
        self.lines.clear();
        result
    }
}

impl StreamTranslator for OllamaStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        // Lines decoded before an oversized one are still translated.
        let decoded = self.decoder.feed(input, &mut self.lines);
        self.drain(out)?;
        match decoded {
            Err(e) if !self.enc.is_done() => {
                self.enc
                    .error(&e.to_string(), "api_error", "upstream_error", out);
                Err(e)
            }
            _ => Ok(()),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        self.decoder.finish(&mut self.lines);
        // A last line without its newline is fine if whole; a cut one is a truncation.
        if !self.saw_done {
            if let Some(last) = self.lines.last() {
                if serde_json::from_slice::<Value>(last).is_err() {
                    self.lines.pop();
                    let _ = self.drain(out);
                    let msg = "Ollama stream ended inside a line";
                    self.abort(msg, out);
                    return Err(DialectError::Truncated(msg.into()));
                }
            }
        }
        self.drain(out)?;
        if self.enc.is_done() {
            return Ok(());
        }
        if !self.saw_done {
            let msg = "Ollama stream ended before done";
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
        self.model.as_deref()
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
            "name = \"ollama-native\"\ndialect = \"ollama\"\nbase_url = \"http://127.0.0.1:11434\"\nauth = \"none\"\nactivate_env = \"OLLAMA_HOST\"\nchat_path = \"/api/chat\"\nembeddings_path = \"/api/embed\"\n",
            "test",
        )
        .unwrap();
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = Target {
            profile: &p,
            endpoint: &e,
            model: "llama3.2",
            stream,
            request_id: "chatcmpl-abc123",
            created: 1_700_000_000,
            max_output_tokens: None,
        };
        f(&t)
    }

    #[test]
    fn builds_chat_request() {
        let req = chat(json!({
            "model": "ollama-native/llama3.2",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Tokyo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "11 degrees"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "temperature": 0.1, "top_p": 0.5, "max_tokens": 64, "stop": "###", "seed": 42,
            "response_format": {"type": "json_object"}
        }));
        for stream in [false, true] {
            let up = with_target(stream, |t| Ollama.build_chat(&req, t)).unwrap();
            assert_eq!(up.path, "/api/chat");
            let b: Value = serde_json::from_slice(&up.body).unwrap();
            assert_eq!(b["stream"], stream, "stream is always explicit");
            assert_eq!(b["model"], "llama3.2");
            assert_eq!(
                b["options"],
                json!({"temperature": 0.1, "top_p": 0.5, "seed": 42, "num_predict": 64, "stop": ["###"]})
            );
            assert_eq!(b["format"], "json");
            assert_eq!(
                b["messages"][1],
                json!({"role": "user", "content": "What is this?", "images": ["/9j/4AAQ"]})
            );
            assert_eq!(
                b["messages"][2]["tool_calls"][0],
                json!({"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}})
            );
            assert_eq!(
                b["messages"][3],
                json!({"role": "tool", "content": "11 degrees", "tool_name": "get_weather"})
            );
            assert_eq!(b["tools"][0]["function"]["name"], "get_weather");
        }
        let schema = chat(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}}));
        assert_eq!(
            chat_body(&schema, "m", false).unwrap()["format"],
            json!({"type": "object"})
        );
        let remote = chat(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
        );
        assert!(matches!(
            chat_body(&remote, "m", false),
            Err(DialectError::Unsupported { .. })
        ));
    }

    #[test]
    fn translates_chat_responses() {
        let req = chat(json!({"messages": []}));
        let body = br#"{"model":"llama3.2","created_at":"2023-12-12T14:13:43.416799Z","message":{"role":"assistant","content":"Hello! How are you today?"},
            "done":true,"done_reason":"stop","total_duration":5191566416,"load_duration":2154458,"prompt_eval_count":26,"prompt_eval_duration":383809000,"eval_count":298,"eval_duration":4799921000}"#;
        let tr = with_target(false, |t| Ollama.translate_chat(body, t, &req)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hello! How are you today?"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 324);
        assert_eq!(v["id"], "chatcmpl-abc123");

        let tools = br#"{"model":"llama3.2","created_at":"2024-07-22T20:33:28.123648Z","message":{"role":"assistant","content":"",
            "tool_calls":[{"function":{"name":"get_current_weather","arguments":{"format":"celsius","location":"Paris, FR"}}},
                          {"function":{"name":"get_time","arguments":{}}}]},
            "done_reason":"stop","done":true,"prompt_eval_count":124,"eval_count":30}"#;
        let tr = with_target(false, |t| Ollama.translate_chat(tools, t, &req)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls");
        assert!(c["message"]["content"].is_null());
        assert_eq!(c["message"]["tool_calls"][0]["id"], "call_abc123_0");
        assert_eq!(c["message"]["tool_calls"][1]["id"], "call_abc123_1");
        let args: Value = serde_json::from_str(
            c["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"format": "celsius", "location": "Paris, FR"}));
        let len = br#"{"model":"m","message":{"role":"assistant","content":"x"},"done":true,"done_reason":"length","prompt_eval_count":1,"eval_count":2}"#;
        let tr = with_target(false, |t| Ollama.translate_chat(len, t, &req)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&tr.body).unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        let err = br#"{"error":"model \"nope\" not found, try pulling it first"}"#;
        assert!(matches!(
            with_target(false, |t| Ollama.translate_chat(err, t, &req)),
            Err(DialectError::Upstream(_))
        ));
    }

    #[test]
    fn embeddings_both_ways() {
        let body = json!({"model": "ollama-native/all-minilm", "input": ["a", "b"]});
        let up = with_target(false, |t| {
            Ollama.build_embeddings(body.as_object().unwrap(), t)
        })
        .unwrap();
        assert_eq!(up.path, "/api/embed");
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(b, json!({"model": "llama3.2", "input": ["a", "b"]}));
        let resp = br#"{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862],[-0.0098027075,0.06042469]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}"#;
        let tr = with_target(false, |t| Ollama.translate_embeddings(resp, t)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["usage"]["prompt_tokens"], 8);
    }

    fn ndjson(lines: &[Value]) -> Vec<u8> {
        let mut s = Vec::new();
        for l in lines {
            s.extend(serde_json::to_vec(l).unwrap());
            s.push(b'\n');
        }
        s
    }

    fn text_stream() -> Vec<u8> {
        ndjson(&[
            json!({"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00", "message": {"role": "assistant", "content": "The"}, "done": false}),
            json!({"model": "llama3.2", "created_at": "2023-08-04T08:52:19.4Z", "message": {"role": "assistant", "content": " sky ☀"}, "done": false}),
            json!({"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "message": {"role": "assistant", "content": ""}, "done": true,
                "done_reason": "stop", "total_duration": 8113331500u64, "load_duration": 6396458, "prompt_eval_count": 61, "prompt_eval_duration": 398801000, "eval_count": 468, "eval_duration": 7701267000u64}),
        ])
    }

    fn tool_stream() -> Vec<u8> {
        ndjson(&[
            json!({"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "", "thinking": "Need weather."}, "done": false}),
            json!({"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}, {"function": {"name": "get_time", "arguments": {"tz": "JST"}}}]}, "done": false}),
            json!({"model": "qwen3", "created_at": "t", "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop", "prompt_eval_count": 20, "eval_count": 10}),
        ])
    }

    fn run(
        input: &[u8],
        cuts: &[usize],
        include_usage: bool,
    ) -> (Result<(), DialectError>, Vec<u8>, Usage) {
        drive(
            &mut OllamaStream::new("chatcmpl-abc123", 1, "llama3.2", include_usage),
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
        assert_eq!(text, "The sky ☀");
        assert_eq!(ev[ev.len() - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(ev.last().unwrap()["usage"]["total_tokens"], 529);
        assert_eq!(usage.prompt_tokens, 61);
        assert!(ev
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk" && e["model"] == "llama3.2"));
        // Last line without a trailing newline is still whole.
        let mut no_nl = text_stream();
        no_nl.pop();
        assert!(run(&no_nl, &[], false).0.is_ok());
    }

    #[test]
    fn streams_tool_calls_with_minted_ids() {
        let (res, out, _) = run(&tool_stream(), &[], false);
        res.unwrap();
        let ev = events(&out);
        let calls: Vec<&Value> = ev
            .iter()
            .flat_map(|e| {
                e["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .collect();
        assert_eq!(calls[0]["id"], "call_abc123_0");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Tokyo\"}");
        assert_eq!(calls[2]["id"], "call_abc123_1");
        assert_eq!(calls[2]["index"], 1);
        assert!(ev
            .iter()
            .any(|e| e["choices"][0]["delta"]["reasoning_content"] == "Need weather."));
        assert_eq!(
            ev.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn errors_and_truncation() {
        let mut input = ndjson(&[
            json!({"model": "m", "message": {"role": "assistant", "content": "a"}, "done": false}),
        ]);
        input.extend(
            b"{\"error\":\"an error was encountered while running the model: unexpected EOF\"}\n",
        );
        let (res, out, _) = run(&input, &[], false);
        assert!(matches!(res, Err(DialectError::Upstream(_))));
        assert!(events(&out).last().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected EOF"));

        let full = text_stream();
        let (res, out, _) = run(&full[..full.len() - 30], &[], false);
        assert!(matches!(res, Err(DialectError::Truncated(_))), "{res:?}");
        assert!(events(&out).last().unwrap().get("error").is_some());
        let first_line = full.iter().position(|&b| b == b'\n').unwrap() + 1;
        let (res, _, _) = run(&full[..first_line], &[], false);
        assert!(matches!(res, Err(DialectError::Truncated(_))));
    }

    proptest! {
        #[test]
        fn any_split_gives_same_output(cuts in proptest::collection::vec(0usize..3000, 0..12), tools in any::<bool>()) {
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
            prop_assert!(res.is_err());
            prop_assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        }
    }
}
