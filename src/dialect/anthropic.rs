//! The Anthropic Messages dialect (`POST /v1/messages`), also used for Claude on Vertex AI
//! (`rawPredict` / `streamRawPredict`, see `super::vertex`).
//!
//! Request: system and developer messages become the top-level `system` blocks, tool
//! results become `tool_result` blocks in a user turn, consecutive turns of one role are
//! merged (Anthropic requires user/assistant alternation) and `max_tokens`, which
//! Anthropic requires, falls back to the catalog's maximum output and then to 4096.
//!
//! Response: text blocks become `content`, `tool_use` blocks `tool_calls` (input object
//! serialised to the OpenAI arguments string), thinking blocks `reasoning_content`.
//! Usage counts cache reads and writes into `prompt_tokens`, so it is the whole input as
//! OpenAI reports it, and keeps them apart for pricing.
//!
//! Stream: Anthropic's named SSE events are turned into `chat.completion.chunk`s through
//! the shared [`ChunkEncoder`]. Tool calls get an OpenAI `index` that counts tool blocks
//! only (Anthropic's block index also counts text and thinking blocks).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::common::{image_url_of, parse_data_url, requested_max_tokens, stop_list};
use super::encode::{finish_reason_from, ChunkEncoder};
use super::sse::{SseDecoder, SseEvent};
use super::{
    default_classify, ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated,
    UpstreamFailure, UpstreamRequest, Usage,
};

/// `anthropic-version` header sent to Anthropic's own API.
pub const API_VERSION: &str = "2023-06-01";
/// `anthropic_version` body field Vertex AI requires for Claude.
pub const VERTEX_API_VERSION: &str = "vertex-2023-10-16";
/// `max_tokens` when neither the request nor the catalog gives one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub struct Anthropic;

/// Where a Messages body is sent: Anthropic's API (model in the body, version header) or
/// Vertex AI (model in the path, version in the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Direct,
    Vertex,
}

fn bad_msg(message: impl Into<String>) -> DialectError {
    DialectError::unsupported(message, Some("messages"))
}

/// Instruction text standing in for `response_format`, which the Messages API has no
/// field for: the model is asked for bare JSON (and the schema, when given).
pub(crate) fn response_format_instruction(rf: Option<&Value>) -> Option<String> {
    let rf = rf?;
    match rf.get("type").and_then(Value::as_str)? {
        "json_object" => Some("Respond with a single valid JSON object and nothing else.".into()),
        "json_schema" => {
            let schema = rf
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".into());
            Some(format!(
                "Respond with a single valid JSON value that conforms to this JSON Schema, and nothing else:\n{schema}"
            ))
        }
        _ => None,
    }
}

/// Text of a message `content` that may be a string or an array of parts.
fn content_text_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| {
                let text = p
                    .get("text")
                    .and_then(Value::as_str)
                    .or_else(|| p.get("refusal").and_then(Value::as_str))?;
                if text.is_empty() {
                    return None;
                }
                let mut b = json!({"type": "text", "text": text});
                if let Some(cc) = p.get("cache_control") {
                    b["cache_control"] = cc.clone();
                }
                Some(b)
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn image_block(url: &str) -> Value {
    match parse_data_url(url) {
        Some((mime, data)) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

/// User (or tool-result) content parts → Anthropic content blocks.
fn user_blocks(content: Option<&Value>) -> Result<Vec<Value>, DialectError> {
    let parts = match content {
        Some(Value::Array(p)) => p,
        other => return Ok(content_text_blocks(other)),
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let mut block = match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => json!({"type": "text", "text": t}),
                _ => continue,
            },
            Some("image_url") => {
                let url = image_url_of(p).ok_or_else(|| bad_msg("image_url part has no url"))?;
                if !(url.starts_with("data:")
                    || url.starts_with("http://")
                    || url.starts_with("https://"))
                {
                    return Err(bad_msg("image_url must be a data: URL or an http(s) URL"));
                }
                image_block(url)
            }
            Some("file") => {
                // PDFs as base64 document blocks (OpenAI `file.file_data` data URL).
                let data = p
                    .get("file")
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                    .and_then(parse_data_url);
                match data {
                    Some((mime, data)) => {
                        json!({"type": "document", "source": {"type": "base64", "media_type": mime, "data": data}})
                    }
                    None => return Err(bad_msg("file parts need inline file_data (file ids are not supported by Anthropic)")),
                }
            }
            Some(other) => {
                return Err(bad_msg(format!(
                    "content part type '{other}' is not supported by Anthropic"
                )))
            }
            None => return Err(bad_msg("content part without a type")),
        };
        if let Some(cc) = p.get("cache_control") {
            block["cache_control"] = cc.clone();
        }
        out.push(block);
    }
    Ok(out)
}

/// OpenAI arguments string → tool input object.
fn parse_arguments(args: Option<&Value>) -> Result<Value, DialectError> {
    match args {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(o)) => Ok(Value::Object(o.clone())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(json!({})),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(bad_msg(
                "assistant tool_call arguments must be a JSON object",
            )),
        },
        Some(_) => Err(bad_msg(
            "assistant tool_call arguments must be a JSON string",
        )),
    }
}

fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return; // Anthropic rejects empty content
    }
    match turns.last_mut() {
        Some((r, b)) if *r == role => b.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// OpenAI messages → (system blocks, Anthropic messages).
fn convert_messages(msgs: &[Value]) -> Result<(Vec<Value>, Vec<Value>), DialectError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(msgs.len());
    for m in msgs {
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.extend(content_text_blocks(m.get("content"))),
            "user" => push_turn(&mut turns, "user", user_blocks(m.get("content"))?),
            "assistant" => {
                let mut blocks = content_text_blocks(m.get("content"));
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let id = c
                            .get("id")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad_msg("tool_call without id"))?;
                        let f = c
                            .get("function")
                            .ok_or_else(|| bad_msg("tool_call without function"))?;
                        let name = f
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad_msg("tool_call without name"))?;
                        blocks.push(json!({"type": "tool_use", "id": id, "name": name,
                            "input": parse_arguments(f.get("arguments"))?}));
                    }
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_msg("tool message without tool_call_id"))?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                match m.get("content") {
                    Some(Value::String(s)) if !s.is_empty() => {
                        block["content"] = Value::String(s.clone())
                    }
                    c @ Some(Value::Array(_)) => block["content"] = Value::Array(user_blocks(c)?),
                    _ => {}
                }
                push_turn(&mut turns, "user", vec![block]);
            }
            other => {
                return Err(bad_msg(format!(
                    "message role '{other}' is not supported by Anthropic"
                )))
            }
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

fn convert_tools(b: &Map<String, Value>) -> Result<Option<Vec<Value>>, DialectError> {
    let Some(tools) = b
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(tools.len());
    for t in tools {
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(DialectError::unsupported(
                "only function tools are supported by Anthropic",
                Some("tools"),
            ));
        }
        let f = t
            .get("function")
            .ok_or_else(|| DialectError::unsupported("tool without function", Some("tools")))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            DialectError::unsupported("tool function without name", Some("tools"))
        })?;
        let mut tool = json!({"name": name});
        if let Some(d) = f.get("description").and_then(Value::as_str) {
            tool["description"] = Value::String(d.to_string());
        }
        tool["input_schema"] = f
            .get("parameters")
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if let Some(cc) = t.get("cache_control") {
            tool["cache_control"] = cc.clone();
        }
        out.push(tool);
    }
    Ok(Some(out))
}

fn convert_tool_choice(b: &Map<String, Value>) -> Result<Option<Value>, DialectError> {
    let no_parallel = b.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let mut choice = match b.get("tool_choice") {
        None | Some(Value::Null) => {
            if !no_parallel {
                return Ok(None);
            }
            json!({"type": "auto"})
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => return Ok(Some(json!({"type": "none"}))),
            other => {
                return Err(DialectError::unsupported(
                    format!("tool_choice '{other}' is not supported"),
                    Some("tool_choice"),
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    DialectError::unsupported(
                        "tool_choice must name a function",
                        Some("tool_choice"),
                    )
                })?;
            json!({"type": "tool", "name": name})
        }
    };
    if no_parallel {
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(choice))
}

/// The Messages request body for an OpenAI chat request.
pub(crate) fn build_body(
    req: &ChatRequest,
    t: &Target,
    flavor: Flavor,
) -> Result<Map<String, Value>, DialectError> {
    let b = &req.body;
    if b.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(DialectError::unsupported(
            "Anthropic returns one choice per request: n > 1 is not supported",
            Some("n"),
        ));
    }
    let mut out = Map::new();
    match flavor {
        Flavor::Direct => {
            out.insert("model".into(), Value::String(t.model.to_string()));
        }
        Flavor::Vertex => {
            let v = t
                .profile
                .extra
                .anthropic_version
                .as_deref()
                .unwrap_or(VERTEX_API_VERSION);
            out.insert("anthropic_version".into(), Value::String(v.to_string()));
        }
    }
    let (mut system, messages) = convert_messages(req.messages())?;
    if messages.is_empty() {
        return Err(bad_msg(
            "at least one user or assistant message is required",
        ));
    }
    // Structured output: a forced tool whose input schema is the requested schema (the
    // Messages API has no JSON mode); with tools of the request's own, the prompt asks.
    let json_tool = super::forced_json_schema(b);
    if json_tool.is_none() {
        if let Some(instr) = response_format_instruction(b.get("response_format")) {
            system.push(json!({"type": "text", "text": instr}));
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let max_tokens = requested_max_tokens(b)
        .or(t.max_output_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), Value::from(max_tokens));
    if let Some(temp) = b.get("temperature").and_then(Value::as_f64) {
        // OpenAI allows 0..2, Anthropic 0..1: clamp rather than fail a fallback.
        out.insert("temperature".into(), json!(temp.clamp(0.0, 1.0)));
    }
    if let Some(p) = b.get("top_p").filter(|v| v.is_number()) {
        out.insert("top_p".into(), p.clone());
    }
    if let Some(k) = b.get("top_k").filter(|v| v.is_u64()) {
        out.insert("top_k".into(), k.clone());
    }
    let stops: Vec<Value> = stop_list(b.get("stop"))
        .into_iter()
        .filter(|s| s.as_str().is_some_and(|s| !s.trim().is_empty()))
        .collect();
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), Value::Array(stops));
    }
    if let Some(user) = b
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(schema) = json_tool {
        out.insert(
            "tools".into(),
            json!([{"name": super::JSON_TOOL, "description": super::JSON_TOOL_DESCRIPTION,
                    "input_schema": schema}]),
        );
        out.insert(
            "tool_choice".into(),
            json!({"type": "tool", "name": super::JSON_TOOL}),
        );
    } else if let Some(tools) = convert_tools(b)? {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = convert_tool_choice(b)? {
            out.insert("tool_choice".into(), choice);
        }
    }
    if t.stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(out)
}

/// Anthropic `usage` → gateway usage (cache reads and writes counted into the prompt).
pub(crate) fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let read = n("cache_read_input_tokens");
    let write = n("cache_creation_input_tokens");
    Usage {
        prompt_tokens: n("input_tokens") + read + write,
        completion_tokens: n("output_tokens"),
        cached_tokens: read,
        cache_creation_tokens: write,
        reasoning_tokens: 0,
        reported: true,
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub(crate) fn map_stop_reason(s: Option<&str>) -> &'static str {
    match s {
        Some("model_context_window_exceeded") => "length",
        Some("pause_turn") | None => "stop",
        Some(other) => finish_reason_from(other),
    }
}

/// Anthropic error `type` → (OpenAI error type, gateway code, retryable).
fn error_kind(kind: &str) -> (&'static str, &'static str, bool) {
    match kind {
        "overloaded_error" => ("api_error", "overloaded", true),
        "rate_limit_error" => ("rate_limit_error", "rate_limit_exceeded", true),
        "api_error" => ("api_error", "upstream_error", true),
        "timeout_error" => ("api_error", "upstream_timeout", true),
        "invalid_request_error" | "request_too_large" => {
            ("invalid_request_error", "upstream_rejected", false)
        }
        "authentication_error" | "permission_error" => ("api_error", "upstream_auth_error", false),
        "not_found_error" => ("invalid_request_error", "upstream_rejected", false),
        _ => ("api_error", "upstream_error", false),
    }
}

fn error_parts(v: &Value) -> (String, String) {
    let e = v.get("error").unwrap_or(v);
    let kind = e
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("api_error")
        .to_string();
    let msg = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error")
        .chars()
        .take(2000)
        .collect();
    (kind, msg)
}

/// `json_mode`: the request forced [`super::JSON_TOOL`]; its input is the answer's content.
pub(crate) fn translate_body(
    body: &[u8],
    t: &Target,
    json_mode: bool,
) -> Result<Translated, DialectError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        let (kind, msg) = error_parts(&v);
        return Err(DialectError::Upstream(format!("{kind}: {msg}")));
    }
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| DialectError::Malformed("response has no content array".into()))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut json_answer: Option<String> = None;
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or(""))
            }
            Some("tool_use")
                if json_mode && b.get("name").and_then(Value::as_str) == Some(super::JSON_TOOL) =>
            {
                // The answer is the tool input alone (any preamble text would break the JSON).
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                json_answer = Some(input.to_string());
            }
            Some("tool_use") => {
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": b.get("id").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": b.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": input.to_string(),
                    }
                }));
            }
            _ => {} // redacted thinking, server tool blocks: nothing OpenAI can show
        }
    }
    if let Some(j) = json_answer {
        text = j;
    }
    let usage = v.get("usage").map(usage_from).unwrap_or_default();
    let model = v.get("model").and_then(Value::as_str).map(str::to_string);
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    let forced_only = json_mode && calls.is_empty();
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let out = json!({
        "id": t.request_id,
        "object": "chat.completion",
        "created": t.created,
        "model": model.as_deref().unwrap_or(t.model),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": json_finish(
                forced_only,
                map_stop_reason(v.get("stop_reason").and_then(Value::as_str)),
            ),
        }],
        "usage": usage.to_openai(),
        "system_fingerprint": null,
    });
    Ok(Translated {
        body: Bytes::from(
            serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
        ),
        usage,
        model,
    })
}

/// A forced structured-output tool call ends a normal answer: `stop`, not `tool_calls`.
pub(crate) fn json_finish(json_mode: bool, reason: &'static str) -> &'static str {
    if json_mode && reason == "tool_calls" {
        "stop"
    } else {
        reason
    }
}

/// Anthropic error bodies: `{"type":"error","error":{"type":"overloaded_error",...}}`.
pub(crate) fn classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let mut f = default_classify(status, body);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(kind) = v
            .get("error")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
        {
            let (_, code, retryable) = error_kind(kind);
            if retryable {
                f.retryable = true;
                f.code = code;
            }
        }
    }
    if status == 529 {
        f.retryable = true;
        f.code = "overloaded";
    }
    f
}

/// The profile's `chat_path`, unless it is the OpenAI default (a profile that did not
/// set one): then Anthropic's own `/v1/messages`.
fn chat_path<'a>(t: &Target<'a>) -> &'a str {
    match t.profile.chat_path.as_str() {
        "/chat/completions" => "/v1/messages",
        p => p,
    }
}

impl Dialect for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = build_body(req, t, Flavor::Direct)?;
        let version = t
            .profile
            .extra
            .anthropic_version
            .as_deref()
            .unwrap_or(API_VERSION);
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("anthropic-version".to_string(), version.to_string()),
        ];
        if let Some(beta) = t.profile.extra.anthropic_beta.as_deref() {
            headers.push(("anthropic-beta".into(), beta.to_string()));
        }
        if t.stream {
            headers.push(("accept".into(), "text/event-stream".into()));
        }
        Ok(UpstreamRequest {
            method: "POST",
            path: t.profile.path_for(t.endpoint, chat_path(t), t.model),
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
        req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        translate_body(body, t, super::forced_json_schema(&req.body).is_some())
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(AnthropicStream::new(t, req))
    }

    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        classify(status, body)
    }
}

/// Incremental Anthropic SSE → OpenAI chunks.
pub struct AnthropicStream {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    enc: ChunkEncoder,
    usage: Usage,
    model: Option<String>,
    /// Anthropic block index → OpenAI tool-call index.
    tool_index: HashMap<u64, u32>,
    next_tool: u32,
    stop_reason: Option<String>,
    started: bool,
    stopped: bool,
    produced: bool,
    /// The request forced the structured-output tool: its input streams as content.
    json_mode: bool,
    /// Block index of that tool's call.
    json_block: Option<u64>,
}

impl AnthropicStream {
    pub fn new(t: &Target, req: &ChatRequest) -> Self {
        AnthropicStream {
            decoder: SseDecoder::new(),
            events: Vec::with_capacity(8),
            enc: ChunkEncoder::new(t.request_id, t.created, t.model, req.include_usage),
            usage: Usage::default(),
            model: None,
            tool_index: HashMap::new(),
            next_tool: 0,
            stop_reason: None,
            started: false,
            stopped: false,
            produced: false,
            json_mode: super::forced_json_schema(&req.body).is_some(),
            json_block: None,
        }
    }

    fn ensure_started(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            self.enc.start(0, out);
        }
    }

    fn fail(&mut self, err: DialectError, out: &mut BytesMut) -> DialectError {
        let (kind, code) = match &err {
            DialectError::Malformed(_) => ("api_error", "upstream_malformed"),
            _ => ("api_error", "upstream_error"),
        };
        self.enc.error(&err.to_string(), kind, code, out);
        err
    }

    fn merge_usage(&mut self, u: &Value) {
        // message_delta usage is cumulative; newer API versions repeat the input counts.
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(o) = n("output_tokens") {
            self.usage.completion_tokens = o;
        }
        if n("input_tokens").is_some()
            || n("cache_read_input_tokens").is_some()
            || n("cache_creation_input_tokens").is_some()
        {
            let fresh = usage_from(u);
            if fresh.prompt_tokens > 0 {
                self.usage.prompt_tokens = fresh.prompt_tokens;
                self.usage.cached_tokens = fresh.cached_tokens;
                self.usage.cache_creation_tokens = fresh.cache_creation_tokens;
            }
        }
        self.usage.reported = true;
    }

    fn handle(&mut self, ev: &SseEvent, out: &mut BytesMut) -> Result<(), DialectError> {
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| DialectError::Malformed(format!("stream event is not JSON: {e}")))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ev.event.as_str());
        match kind {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                if let Some(model) = m.get("model").and_then(Value::as_str) {
                    self.model = Some(model.to_string());
                    self.enc.set_model(model);
                }
                if let Some(u) = m.get("usage") {
                    self.usage = usage_from(u);
                }
                self.ensure_started(out);
            }
            "content_block_start" => {
                self.ensure_started(out);
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            self.produced = true;
                            self.enc.content(0, text, out);
                        }
                    }
                    Some("tool_use")
                        if self.json_mode
                            && block.get("name").and_then(Value::as_str)
                                == Some(super::JSON_TOOL) =>
                    {
                        self.json_block = Some(idx);
                        self.produced = true;
                        if let Some(input) = block
                            .get("input")
                            .and_then(Value::as_object)
                            .filter(|o| !o.is_empty())
                        {
                            self.enc
                                .content(0, &Value::Object(input.clone()).to_string(), out);
                        }
                    }
                    Some("tool_use") => {
                        let ti = self.next_tool;
                        self.next_tool += 1;
                        self.tool_index.insert(idx, ti);
                        let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                        let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                        self.produced = true;
                        self.enc.tool_call_start(0, ti, id, name, out);
                        // Non-empty initial input (rare) goes out as the first fragment.
                        if let Some(input) = block
                            .get("input")
                            .and_then(Value::as_object)
                            .filter(|o| !o.is_empty())
                        {
                            self.enc.tool_call_args(
                                0,
                                ti,
                                &Value::Object(input.clone()).to_string(),
                                out,
                            );
                        }
                    }
                    _ => {} // thinking (its deltas carry the text), server tools
                }
            }
            "content_block_delta" => {
                self.ensure_started(out);
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = d.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            self.produced = true;
                            self.enc.content(0, text, out);
                        }
                    }
                    Some("input_json_delta") => {
                        let frag = d.get("partial_json").and_then(Value::as_str).unwrap_or("");
                        // Deltas of blocks OpenAI cannot show (server tools) are skipped.
                        if self.json_block == Some(idx) {
                            if !frag.is_empty() {
                                self.enc.content(0, frag, out);
                            }
                        } else if let Some(&ti) = self.tool_index.get(&idx) {
                            self.enc.tool_call_args(0, ti, frag, out);
                        }
                    }
                    Some("thinking_delta") => {
                        let text = d.get("thinking").and_then(Value::as_str).unwrap_or("");
                        if !text.is_empty() {
                            self.produced = true;
                            self.enc.reasoning(0, text, out);
                        }
                    }
                    _ => {} // signature_delta, citations_delta
                }
            }
            "message_delta" => {
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(u) = v.get("usage") {
                    self.merge_usage(u);
                }
            }
            "message_stop" if !self.stopped => {
                self.ensure_started(out);
                self.stopped = true;
                let reason = json_finish(
                    self.json_block.is_some() && self.next_tool == 0,
                    map_stop_reason(self.stop_reason.as_deref()),
                );
                self.enc.finish_reason(0, reason, out);
            }
            "error" => {
                let (kind, msg) = error_parts(&v);
                let (otype, code, _) = error_kind(&kind);
                self.enc.error(&msg, otype, code, out);
                return Err(DialectError::Upstream(format!("{kind}: {msg}")));
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
        Ok(())
    }
}

impl StreamTranslator for AnthropicStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        // Events decoded before a bad line are still translated (chunking must not matter).
        let decoded = self.decoder.feed(input, &mut self.events);
        let events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for ev in &events {
            if let Err(e) = self.handle(ev, out) {
                result = Err(if self.enc.is_done() {
                    e
                } else {
                    self.fail(e, out)
                });
                break;
            }
        }
        self.events = events;
        self.events.clear();
        match decoded {
            Err(e) if result.is_ok() && !self.enc.is_done() => Err(self.fail(e, out)),
            _ => result,
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        // A last event without its blank line still counts.
        let mut tail = Vec::new();
        if self.decoder.finish(&mut tail).is_ok() {
            for ev in &tail {
                if let Err(e) = self.handle(ev, out) {
                    return Err(if self.enc.is_done() {
                        e
                    } else {
                        self.fail(e, out)
                    });
                }
            }
        }
        if !self.stopped {
            let msg = "upstream stream ended before message_stop";
            self.enc.error(msg, "api_error", "upstream_truncated", out);
            return Err(DialectError::Truncated(msg.into()));
        }
        self.enc.end(&self.usage, out);
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

/// Test helpers shared by this crate's dialect tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    pub fn profile(toml: &str) -> ProviderProfile {
        ProviderProfile::parse(toml, "test.toml").unwrap()
    }

    pub fn request(body: Value) -> ChatRequest {
        let raw = Bytes::from(serde_json::to_vec(&body).unwrap());
        let map = body.as_object().unwrap().clone();
        ChatRequest {
            raw,
            model: map
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("m")
                .to_string(),
            stream: map.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: map
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            body: map,
        }
    }

    pub fn target<'a>(
        p: &'a ProviderProfile,
        e: &'a Endpoint,
        model: &'a str,
        stream: bool,
    ) -> Target<'a> {
        Target {
            profile: p,
            endpoint: e,
            model,
            stream,
            request_id: "chatcmpl-test",
            created: 1_700_000_000,
            max_output_tokens: Some(8192),
        }
    }

    /// Parse OpenAI SSE output into its `data:` payloads.
    pub fn events(out: &[u8]) -> Vec<String> {
        let s = std::str::from_utf8(out).unwrap();
        assert!(
            s.is_empty() || s.ends_with("\n\n"),
            "output must end on an event boundary"
        );
        s.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .expect("every event is a data line")
                    .to_string()
            })
            .collect()
    }

    /// Run a stream translator over chunks; returns (output, results of finish).
    pub fn run(
        mut s: Box<dyn StreamTranslator>,
        chunks: &[&[u8]],
    ) -> (Vec<u8>, Vec<Result<(), DialectError>>, Usage) {
        let mut out = BytesMut::new();
        let mut results = Vec::new();
        for c in chunks {
            results.push(s.feed(c, &mut out));
        }
        results.push(s.finish(&mut out));
        (out.to_vec(), results, s.usage())
    }

    /// Cut `input` at the given (unsorted, out-of-range) positions.
    pub fn split<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&input[last..c]);
            last = c;
        }
        chunks.push(&input[last..]);
        chunks
    }

    /// Reassemble tool calls (index → (id, name, arguments)) and content from OpenAI chunks.
    pub fn reassemble(events: &[String]) -> (String, Vec<(String, String, String)>, Vec<String>) {
        let mut content = String::new();
        let mut tools: Vec<(String, String, String)> = Vec::new();
        let mut finishes = Vec::new();
        for e in events {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(e).unwrap();
            if v.get("error").is_some() {
                continue;
            }
            assert_eq!(v["object"], "chat.completion.chunk");
            for c in v["choices"].as_array().unwrap() {
                if let Some(f) = c["finish_reason"].as_str() {
                    finishes.push(f.to_string());
                }
                if let Some(t) = c["delta"]["content"].as_str() {
                    content.push_str(t);
                }
                if let Some(calls) = c["delta"]["tool_calls"].as_array() {
                    for tc in calls {
                        let i = tc["index"].as_u64().unwrap() as usize;
                        if tools.len() <= i {
                            assert_eq!(tools.len(), i, "tool indices are dense");
                            assert!(
                                tc["id"].is_string() && tc["function"]["name"].is_string(),
                                "id and name first"
                            );
                            tools.push((
                                tc["id"].as_str().unwrap().into(),
                                tc["function"]["name"].as_str().unwrap().into(),
                                String::new(),
                            ));
                        }
                        if let Some(a) = tc["function"]["arguments"].as_str() {
                            tools[i].2.push_str(a);
                        }
                    }
                }
            }
        }
        (content, tools, finishes)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::providers::Endpoint;
    use proptest::prelude::*;

    const PROFILE: &str = r#"
name = "anthropic"
dialect = "anthropic"
base_url = "https://api.anthropic.com"
chat_path = "/v1/messages"
api_key_env = "ANTHROPIC_API_KEY"
auth = "header"
auth_header = "x-api-key"
"#;

    fn build(body: Value, stream: bool) -> (UpstreamRequest, Value) {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let req = request(body);
        let up = Anthropic
            .build_chat(&req, &target(&p, &e, "claude-sonnet-4-5", stream))
            .unwrap();
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        (up, v)
    }

    fn build_err(body: Value) -> DialectError {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        Anthropic
            .build_chat(&request(body), &target(&p, &e, "claude-sonnet-4-5", false))
            .unwrap_err()
    }

    #[test]
    fn request_text_system_params() {
        let (up, v) = build(
            json!({"model": "claude-sonnet-4-5", "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Cite sources."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": "there"}],
              "temperature": 1.7, "top_p": 0.9, "stop": "END", "user": "u-42", "max_tokens": 100}),
            false,
        );
        assert_eq!(up.path, "/v1/messages");
        assert!(up
            .headers
            .contains(&("anthropic-version".into(), API_VERSION.into())));
        assert_eq!(v["model"], "claude-sonnet-4-5");
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Cite sources."}])
        );
        assert_eq!(
            v["messages"],
            json!([{"role": "user", "content": [
            {"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}])
        );
        assert_eq!(v["max_tokens"], 100);
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["top_p"], 0.9);
        assert_eq!(v["stop_sequences"], json!(["END"]));
        assert_eq!(v["metadata"]["user_id"], "u-42");
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn default_chat_path_is_messages() {
        let p = profile(&PROFILE.replace("chat_path = \"/v1/messages\"\n", ""));
        assert_eq!(p.chat_path, "/chat/completions");
        let e = Endpoint::parse("https://proxy.example.com/anthropic").unwrap();
        let req = request(json!({"messages": [{"role": "user", "content": "x"}]}));
        let up = Anthropic
            .build_chat(&req, &target(&p, &e, "claude", false))
            .unwrap();
        assert_eq!(up.path, "/anthropic/v1/messages");
    }

    #[test]
    fn max_tokens_defaults() {
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 77}),
            true,
        );
        assert_eq!(v["max_tokens"], 77);
        assert_eq!(v["stream"], true);
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"}]}),
            false,
        );
        assert_eq!(v["max_tokens"], 8192); // catalog
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let mut t = target(&p, &e, "claude", false);
        t.max_output_tokens = None;
        let up = Anthropic
            .build_chat(
                &request(json!({"messages": [{"role": "user", "content": "x"}]})),
                &t,
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn request_images_tools_and_results() {
        let (_, v) = build(
            json!({"messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "12:00"}]},
                {"role": "user", "content": "Thanks"}],
              "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}],
              "tool_choice": "required", "parallel_tool_calls": false}),
            false,
        );
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(
            msgs.len(),
            3,
            "tool results and the next user message merge: {msgs:?}"
        );
        assert_eq!(
            msgs[0]["content"][1],
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
        );
        assert_eq!(
            msgs[0]["content"][2],
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}})
        );
        assert_eq!(msgs[1]["role"], "assistant");
        assert_eq!(
            msgs[1]["content"],
            json!([
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}])
        );
        assert_eq!(msgs[2]["role"], "user");
        assert_eq!(
            msgs[2]["content"],
            json!([
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "12:00"}]},
            {"type": "text", "text": "Thanks"}])
        );
        assert_eq!(v["tools"][0]["input_schema"]["required"], json!(["city"]));
        assert_eq!(
            v["tools"][1]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn tool_choice_mapping() {
        let base = |tc: Value| {
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": tc,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
        };
        assert_eq!(
            build(base(json!("auto")), false).1["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            build(base(json!("none")), false).1["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            build(
                base(json!({"type": "function", "function": {"name": "f"}})),
                false
            )
            .1["tool_choice"],
            json!({"type": "tool", "name": "f"})
        );
        // No tools: no tool_choice.
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}),
            false,
        );
        assert!(v.get("tool_choice").is_none());
    }

    #[test]
    fn unsupported_inputs() {
        let e = build_err(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}));
        assert_eq!(
            e,
            DialectError::unsupported(
                "Anthropic returns one choice per request: n > 1 is not supported",
                Some("n")
            )
        );
        let e = build_err(
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
        );
        assert!(
            matches!(e, DialectError::Unsupported { param: Some(ref p), .. } if p == "messages")
        );
        let e = build_err(json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}));
        assert!(matches!(e, DialectError::Unsupported { .. }));
    }

    const SCHEMA_REQ: &str = r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
        "json_schema": {"name": "r", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}}"#;

    #[test]
    fn json_schema_is_enforced_through_a_forced_tool() {
        let (_, v) = build(serde_json::from_str(SCHEMA_REQ).unwrap(), false);
        assert_eq!(
            v["tools"],
            json!([{"name": "json_response", "description": crate::dialect::JSON_TOOL_DESCRIPTION,
                "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": "json_response"})
        );
        assert!(v.get("system").is_none(), "{v}");
        // json_object: any object.
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
            false,
        );
        assert_eq!(v["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(v["tool_choice"]["name"], "json_response");
    }

    #[test]
    fn response_format_with_own_tools_goes_to_system() {
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
            false,
        );
        let text = v["system"][0]["text"].as_str().unwrap();
        assert!(text.contains("JSON Schema") && text.contains("\"a\""));
        assert_eq!(v["tools"][0]["name"], "f");
    }

    #[test]
    fn forced_tool_input_becomes_the_content() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude-sonnet-4-5", false);
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",
          "content":[{"type":"tool_use","id":"toolu_1","name":"json_response","input":{"a":7}}],
          "stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":5}}"#;
        let req = request(serde_json::from_str(SCHEMA_REQ).unwrap());
        let tr = Anthropic.translate_chat(body.as_bytes(), &t, &req).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], r#"{"a":7}"#);
        assert!(m.get("tool_calls").is_none(), "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        // The same response for a request that did not force the tool stays a tool call.
        let tr = Anthropic
            .translate_chat(body.as_bytes(), &t, &request(json!({"messages": []})))
            .unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn forced_tool_stream_becomes_content_deltas() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"json_response\",\"input\":{}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\": \"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"7}\"}}\n\n",
            "event: content_block_stop\n",
            "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":6}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude-sonnet-4-5", true);
        let mut body: Value = serde_json::from_str(SCHEMA_REQ).unwrap();
        body["stream"] = json!(true);
        let (out, results, _) = run(
            Anthropic.chat_stream(&t, &request(body)),
            &[stream.as_bytes()],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let ev = events(&out);
        let (content, tools, finishes) = reassemble(&ev);
        assert_eq!(content, r#"{"a": 7}"#);
        assert!(tools.is_empty());
        assert_eq!(finishes, vec!["stop"]);
    }

    const RESPONSE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929",
      "content":[{"type":"text","text":"Let me check the weather."},
        {"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"location":"San Francisco, CA","unit":"celsius"}}],
      "stop_reason":"tool_use","stop_sequence":null,
      "usage":{"input_tokens":472,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":89}}"#;

    #[test]
    fn translate_json_with_tools_and_cache_usage() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude-sonnet-4-5", false);
        let tr = Anthropic
            .translate_chat(RESPONSE.as_bytes(), &t, &request(json!({"messages": []})))
            .unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["id"], "chatcmpl-test");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "claude-sonnet-4-5-20250929");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls");
        assert_eq!(c["message"]["content"], "Let me check the weather.");
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["unit"], "celsius");
        assert_eq!(
            tr.usage,
            Usage {
                prompt_tokens: 2572,
                completion_tokens: 89,
                cached_tokens: 2000,
                cache_creation_tokens: 100,
                reasoning_tokens: 0,
                reported: true
            }
        );
        assert_eq!(v["usage"]["prompt_tokens"], 2572);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2000);
        assert_eq!(v["usage"]["total_tokens"], 2661);
    }

    #[test]
    fn cache_tokens_are_priced_from_the_catalog() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude-sonnet-4-5", false);
        let tr = Anthropic
            .translate_chat(RESPONSE.as_bytes(), &t, &request(json!({"messages": []})))
            .unwrap();
        let cat = crate::catalog::Catalog::embedded().unwrap();
        let m = cat
            .get(&["anthropic".to_string()], "claude-sonnet-4-5")
            .unwrap();
        // 472 fresh input, 2000 cache reads, 100 cache writes, 89 output tokens.
        let expect = 472.0 * m.input.unwrap()
            + 2000.0 * m.cache_read.unwrap()
            + 100.0 * m.cache_creation.unwrap()
            + 89.0 * m.output.unwrap();
        assert!(
            (m.cost(&tr.usage) - expect).abs() < 1e-12,
            "{} vs {expect}",
            m.cost(&tr.usage)
        );
    }

    #[test]
    fn translate_stop_reasons_and_errors() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude", false);
        let req = request(json!({"messages": []}));
        for (native, openai) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
        ] {
            let body = json!({"type": "message", "content": [{"type": "text", "text": "x"}], "stop_reason": native,
                "usage": {"input_tokens": 1, "output_tokens": 1}});
            let tr = Anthropic
                .translate_chat(body.to_string().as_bytes(), &t, &req)
                .unwrap();
            let v: Value = serde_json::from_slice(&tr.body).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], openai);
        }
        let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            Anthropic.translate_chat(err, &t, &req),
            Err(DialectError::Upstream(_))
        ));
        assert!(matches!(
            Anthropic.translate_chat(b"<html>", &t, &req),
            Err(DialectError::Malformed(_))
        ));
    }

    #[test]
    fn classify_errors() {
        let f = Anthropic.classify_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(f.retryable);
        assert_eq!(f.code, "overloaded");
        assert_eq!(f.message, "Overloaded");
        let f = Anthropic.classify_error(429, br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#);
        assert!(f.retryable);
        assert_eq!(f.code, "rate_limit_exceeded");
        let f = Anthropic.classify_error(400, br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#);
        assert!(!f.retryable);
    }

    /// Recorded-format stream (shape per Anthropic's streaming docs): text, then a tool call.
    pub(crate) const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1024,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"'s check – \u{e9}t\u{e9}.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\":\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\" \\\"San Francisco, CA\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"tz\\\": \\\"PST\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    fn stream_target_run(
        chunks: &[&[u8]],
        include_usage: bool,
    ) -> (Vec<u8>, Vec<Result<(), DialectError>>, Usage) {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude-sonnet-4-5", true);
        let req = request(
            json!({"messages": [], "stream": true, "stream_options": {"include_usage": include_usage}}),
        );
        run(Anthropic.chat_stream(&t, &req), chunks)
    }

    #[test]
    fn stream_text_and_tools() {
        let (out, results, usage) = stream_target_run(&[STREAM.as_bytes()], true);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let ev = events(&out);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let first: Value = serde_json::from_str(&ev[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["model"], "claude-sonnet-4-5-20250929");
        assert_eq!(first["id"], "chatcmpl-test");
        let (content, tools, finishes) = reassemble(&ev);
        assert_eq!(content, "Okay, let's check – été.");
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[0].0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
        assert_eq!(tools[0].1, "get_weather");
        let args: Value = serde_json::from_str(&tools[0].2).unwrap();
        assert_eq!(args["location"], "San Francisco, CA");
        let args: Value = serde_json::from_str(&tools[1].2).unwrap();
        assert_eq!(args["tz"], "PST");
        assert_eq!(finishes, vec!["tool_calls"]);
        let usage_chunk: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 1496);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 89);
        assert_eq!(
            usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
            1024
        );
        assert_eq!(usage.cached_tokens, 1024);
        // Without include_usage: no usage field at all, no usage chunk.
        let (out, _, _) = stream_target_run(&[STREAM.as_bytes()], false);
        let ev = events(&out);
        for e in &ev[..ev.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap();
            assert!(v.get("usage").is_none());
            assert!(!v["choices"].as_array().unwrap().is_empty());
        }
    }

    #[test]
    fn stream_error_event_after_200() {
        let input = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let (out, results, _) = stream_target_run(&[input.as_bytes()], true);
        assert!(matches!(results[0], Err(DialectError::Upstream(_))));
        assert!(results[1].is_ok(), "finish after an error event is a no-op");
        let ev = events(&out);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let err: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(err["error"]["message"], "Overloaded");
        assert_eq!(err["error"]["code"], "overloaded");
        assert_eq!(ev.iter().filter(|e| *e == "[DONE]").count(), 1);
    }

    #[test]
    fn truncated_stream() {
        let cut = &STREAM[..STREAM.find("event: message_delta").unwrap()];
        let (out, results, _) = stream_target_run(&[cut.as_bytes()], true);
        assert!(matches!(
            results.last().unwrap(),
            Err(DialectError::Truncated(_))
        ));
        let ev = events(&out);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        assert!(ev[ev.len() - 2].contains("\"error\""));
    }

    #[test]
    fn final_event_without_blank_line_counts() {
        let s = STREAM.trim_end();
        let (out, results, _) = stream_target_run(&[s.as_bytes()], false);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(events(&out).contains(&"[DONE]".to_string()));
    }

    #[test]
    fn vertex_style_thinking_stream() {
        let input = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-7-sonnet\",\"usage\":{\"input_tokens\":5,\"output_tokens\":0}}}\n\n",
            "event: content_block_start\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hmm.\"}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, results, usage) = stream_target_run(&[input.as_bytes()], false);
        assert!(results.iter().all(Result::is_ok));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"reasoning_content\":\"Hmm.\""));
        assert!(text.contains("\"finish_reason\":\"length\""));
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 3));
    }

    proptest! {
        #[test]
        fn any_split_same_output(cuts in proptest::collection::vec(0usize..4000, 0..12)) {
            let (whole, _, _) = stream_target_run(&[STREAM.as_bytes()], true);
            let chunks = split(STREAM.as_bytes(), &cuts);
            let (parts, results, _) = stream_target_run(&chunks, true);
            prop_assert!(results.iter().all(Result::is_ok));
            prop_assert_eq!(parts, whole);
        }

        #[test]
        fn garbage_errors_without_panic(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let chunks = split(&data, &[cut]);
            let (out, results, _) = stream_target_run(&chunks, true);
            prop_assert!(results.iter().any(Result::is_err));
            let ev = events(&out);
            prop_assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
        }
    }
}
