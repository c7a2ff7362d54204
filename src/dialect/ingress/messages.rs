//! The Anthropic Messages API at the edge (`POST /v1/messages`,
//! `/v1/messages/count_tokens`): a Messages request becomes an OpenAI chat-completions
//! body ([`to_chat`]); the OpenAI answer, whole ([`from_completion`]) or as
//! `chat.completion.chunk` SSE ([`MessagesEncoder`]), becomes a Messages answer. The
//! internal contract stays OpenAI-shaped, so the firewall, the exact cache, the judge and
//! the trace work on the same bytes for every ingress; only the client sees Messages.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::Reencode;
use crate::dialect::sse::{SseDecoder, SseEvent};
use crate::dialect::{DialectError, Usage};
use crate::error::GatewayError;

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_code(message, Some(param), "invalid_request_error")
}

fn unsupported(what: &str, param: &str) -> GatewayError {
    GatewayError::invalid_code(
        format!("{param}: {what} is not supported by this gateway's /v1/messages endpoint."),
        Some(param),
        "unsupported_parameter",
    )
}

/// The Anthropic error `type` for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type":...,"message":...}}`.
pub fn error_body(status: u16, message: &str) -> Bytes {
    let v = json!({"type": "error", "error": {"type": error_type(status), "message": message}});
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid("The request body must be a JSON object.", "body")),
        Err(e) => Err(invalid(
            format!("The request body is not valid JSON: {e}"),
            "body",
        )),
    }
}

/// Translate a Messages request body into an OpenAI chat-completions body.
pub fn to_chat(raw: &[u8]) -> Result<Bytes, GatewayError> {
    let out = chat_body(&parse_object(raw)?, true)?;
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// Top-level fields that change what the model does and that no provider behind the
/// OpenAI contract can honour: refused, never silently dropped.
const UNSUPPORTED_FIELDS: &[&str] = &["container", "mcp_servers", "context_management"];

fn chat_body(body: &Map<String, Value>, strict: bool) -> Result<Map<String, Value>, GatewayError> {
    for f in UNSUPPORTED_FIELDS {
        if body.get(*f).is_some_and(|v| !v.is_null()) {
            return Err(unsupported("this field", f));
        }
    }
    if let Some(t) = body.get("thinking").filter(|v| !v.is_null()) {
        if t.get("type").and_then(Value::as_str) != Some("disabled") {
            return Err(unsupported("extended thinking", "thinking"));
        }
    }
    let mut out = Map::new();
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {
            out.insert("model".into(), Value::String(m.clone()));
        }
        _ => return Err(invalid("model: Field required", "model")),
    }
    match body.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            out.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        None if !strict => {}
        None => return Err(invalid("max_tokens: Field required", "max_tokens")),
        Some(_) => {
            return Err(invalid(
                "max_tokens: Input should be a positive integer",
                "max_tokens",
            ))
        }
    }
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = text_of(blocks, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => {
            return Err(invalid(
                "system: Input should be a string or a list of text blocks",
                "system",
            ))
        }
    }
    let msgs = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "messages: at least one message is required",
                "messages",
            ))
        }
        _ => return Err(invalid("messages: Field required", "messages")),
    };
    for (i, m) in msgs.iter().enumerate() {
        convert_message(m, i, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    match body.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return Err(invalid("stream: Input should be a boolean", "stream")),
    }
    for k in ["temperature", "top_p"] {
        match body.get(k) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                out.insert(k.into(), v.clone());
            }
            Some(_) => return Err(invalid(format!("{k}: Input should be a number"), k)),
        }
    }
    // `top_k` is dropped: the OpenAI contract has no such field and OpenAI-compatible
    // providers refuse unknown sampling fields (documented in docs/anthropic-messages.md).
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(s)) if s.iter().all(Value::is_string) => {
            if !s.is_empty() {
                out.insert("stop".into(), Value::Array(s.clone()));
            }
        }
        Some(_) => {
            return Err(invalid(
                "stop_sequences: Input should be a list of strings",
                "stop_sequences",
            ))
        }
    }
    if let Some(u) = body
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(u.to_string()));
    }
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let Value::Array(tools) = tools else {
            return Err(invalid("tools: Input should be a list", "tools"));
        };
        let mut list = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            list.push(tool(t, i)?);
        }
        if !list.is_empty() {
            out.insert("tools".into(), Value::Array(list));
        }
    }
    if let Some(tc) = body.get("tool_choice").filter(|v| !v.is_null()) {
        tool_choice(tc, &mut out)?;
    }
    Ok(out)
}

fn tool(t: &Value, i: usize) -> Result<Value, GatewayError> {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("custom");
    if kind != "custom" {
        return Err(unsupported(
            &format!("the server tool '{kind}'"),
            &format!("tools.{i}.type"),
        ));
    }
    let Some(name) = t.get("name").and_then(Value::as_str) else {
        return Err(invalid(
            format!("tools.{i}.name: Field required"),
            &format!("tools.{i}.name"),
        ));
    };
    let schema = match t.get("input_schema") {
        Some(s @ Value::Object(_)) => s.clone(),
        _ => {
            return Err(invalid(
                format!("tools.{i}.input_schema: Field required"),
                &format!("tools.{i}.input_schema"),
            ))
        }
    };
    let mut f = json!({"name": name, "parameters": schema});
    if let Some(d) = t.get("description").and_then(Value::as_str) {
        f["description"] = Value::String(d.to_string());
    }
    Ok(json!({"type": "function", "function": f}))
}

fn tool_choice(tc: &Value, out: &mut Map<String, Value>) -> Result<(), GatewayError> {
    let kind = tc.get("type").and_then(Value::as_str).unwrap_or("");
    let choice = match kind {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => match tc.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(invalid(
                    "tool_choice.name: Field required",
                    "tool_choice.name",
                ))
            }
        },
        other => {
            return Err(invalid(
                format!(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', got '{other}'"
            ),
                "tool_choice.type",
            ))
        }
    };
    // Without tools only `none` means anything (OpenAI refuses a choice without tools).
    if out.contains_key("tools") {
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    Ok(())
}

/// The text of a list of text blocks, joined with newlines.
fn text_of(blocks: &[Value], param: &str) -> Result<String, GatewayError> {
    let mut s = String::new();
    for (i, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if !s.is_empty() {
                    s.push('\n');
                }
                s.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some(other) => {
                return Err(unsupported(
                    &format!("a '{other}' block"),
                    &format!("{param}.{i}.type"),
                ))
            }
            None => {
                return Err(invalid(
                    format!("{param}.{i}.type: Field required"),
                    &format!("{param}.{i}.type"),
                ))
            }
        }
    }
    Ok(s)
}

fn image_part(b: &Value, param: &str) -> Result<Value, GatewayError> {
    let Some(src) = b.get("source") else {
        return Err(invalid(
            format!("{param}.source: Field required"),
            &format!("{param}.source"),
        ));
    };
    let s = |k: &str| src.get(k).and_then(Value::as_str);
    let url = match s("type") {
        Some("base64") => match (s("media_type"), s("data")) {
            (Some(mt), Some(data)) => format!("data:{mt};base64,{data}"),
            _ => {
                return Err(invalid(
                    format!("{param}.source: media_type and data are required"),
                    &format!("{param}.source"),
                ))
            }
        },
        Some("url") => match s("url") {
            Some(u) => u.to_string(),
            None => {
                return Err(invalid(
                    format!("{param}.source.url: Field required"),
                    &format!("{param}.source.url"),
                ))
            }
        },
        other => {
            return Err(unsupported(
                &format!("the image source type '{}'", other.unwrap_or("")),
                &format!("{param}.source.type"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result` block as an OpenAI `tool` message. OpenAI tool messages hold text only:
/// images in the result are returned in `images`, for the user message that follows the
/// tool messages (with a note in the tool message pointing at them).
fn tool_result(b: &Value, param: &str, images: &mut Vec<Value>) -> Result<Value, GatewayError> {
    let content = match b.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(inner)) => {
            let mut text = Vec::with_capacity(inner.len());
            for (k, block) in inner.iter().enumerate() {
                let p = format!("{param}.content.{k}");
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push(block.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("image") => {
                        images.push(image_part(block, &p)?);
                        text.push("[image: attached in the next user message]");
                    }
                    Some(other) => {
                        return Err(unsupported(
                            &format!("a '{other}' block in a tool result"),
                            &format!("{p}.type"),
                        ))
                    }
                    None => {
                        return Err(invalid(
                            format!("{p}.type: Field required"),
                            &format!("{p}.type"),
                        ))
                    }
                }
            }
            text.join("\n")
        }
        Some(_) => {
            return Err(invalid(
                format!("{param}.content: Input should be a string or a list of blocks"),
                &format!("{param}.content"),
            ))
        }
    };
    let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
        return Err(invalid(
            format!("{param}.tool_use_id: Field required"),
            &format!("{param}.tool_use_id"),
        ));
    };
    let content = if b.get("is_error").and_then(Value::as_bool) == Some(true) {
        format!("Error: {content}")
    } else {
        content
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn convert_message(m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        Some(other) => {
            return Err(invalid(
                format!("messages.{i}.role: Input should be 'user' or 'assistant', got '{other}'"),
                &format!("messages.{i}.role"),
            ))
        }
        None => {
            return Err(invalid(
                format!("messages.{i}.role: Field required"),
                &format!("messages.{i}.role"),
            ))
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => {
            return Err(invalid(
                format!("messages.{i}.content: Input should be a string or a list of blocks"),
                &format!("messages.{i}.content"),
            ))
        }
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    let mut images = false;
    let mut tool_images = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let param = format!("messages.{i}.content.{j}");
        match (role, b.get("type").and_then(Value::as_str)) {
            (_, Some("text")) => parts.push(json!({"type": "text",
                "text": b.get("text").and_then(Value::as_str).unwrap_or("")})),
            ("user", Some("image")) => {
                images = true;
                parts.push(image_part(b, &param)?);
            }
            ("assistant", Some("tool_use")) => {
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return Err(invalid(
                        format!("{param}: tool_use needs an id and a name"),
                        &param,
                    ));
                };
                let args = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}
                }));
            }
            // OpenAI wants tool answers right after the assistant's calls, before any text.
            ("user", Some("tool_result")) => {
                let mut found = Vec::new();
                out.push(tool_result(b, &param, &mut found)?);
                if !found.is_empty() {
                    images = true;
                    tool_images.extend(found);
                }
            }
            // Earlier reasoning of the assistant: it cannot be replayed to another provider.
            ("assistant", Some("thinking" | "redacted_thinking")) => {}
            (_, Some(other)) => {
                return Err(unsupported(
                    &format!("a '{other}' block in a {role} message"),
                    &format!("{param}.type"),
                ))
            }
            (_, None) => {
                return Err(invalid(
                    format!("{param}.type: Field required"),
                    &format!("{param}.type"),
                ))
            }
        }
    }
    let joined = |sep: &str| {
        parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(sep)
    };
    if role == "assistant" {
        let text = joined("");
        if text.is_empty() && tool_calls.is_empty() {
            return Ok(()); // only earlier reasoning: nothing to replay
        }
        let content = if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        };
        let mut msg = json!({"role": "assistant", "content": content});
        if !tool_calls.is_empty() {
            msg["tool_calls"] = Value::Array(tool_calls);
        }
        out.push(msg);
    } else if images {
        // Images returned by tools come first, then the user's own blocks.
        tool_images.extend(parts);
        out.push(json!({"role": "user", "content": tool_images}));
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": joined("\n")}));
    }
    Ok(())
}

/// `POST /v1/messages/count_tokens`: an estimate of the prompt's input tokens, the same for
/// every provider: about four characters of text per token (system, messages, tool calls
/// and results, tool definitions) and a flat 1 600 per image.
pub fn count_tokens(raw: &[u8]) -> Result<u64, GatewayError> {
    let chat = chat_body(&parse_object(raw)?, false)?;
    let mut chars = 0usize;
    let mut images = 0u64;
    for m in chat
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        chars += 16; // role and framing
        match m.get("content") {
            Some(Value::String(s)) => chars += s.len(),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("text").and_then(Value::as_str) {
                        Some(t) => chars += t.len(),
                        None => images += 1,
                    }
                }
            }
            _ => {}
        }
        if let Some(tc) = m.get("tool_calls") {
            chars += tc.to_string().len();
        }
    }
    if let Some(t) = chat.get("tools") {
        chars += t.to_string().len();
    }
    Ok((chars as u64).div_ceil(4) + images * 1600)
}

/// The Messages `stop_reason` for an OpenAI `finish_reason`. A stop sequence is reported as
/// `end_turn`: the OpenAI contract does not say which stop ended the answer.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Messages usage: `input_tokens` excludes cache reads and writes (OpenAI's
/// `prompt_tokens` includes them).
fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens + u.cache_creation_tokens),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": u.cache_creation_tokens,
    })
}

/// The message id for a gateway request id.
pub fn message_id(request_id: &str) -> String {
    format!("msg_{request_id}")
}

fn tool_input(args: &str) -> Value {
    if args.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        // A model that wrote something other than an object: keep it visible.
        _ => json!({"_raw_arguments": args}),
    }
}

/// An OpenAI chat completion (whatever provider answered) as a Messages response.
pub fn from_completion(
    body: &[u8],
    usage: &Usage,
    request_id: &str,
) -> Result<Bytes, DialectError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| DialectError::Malformed(e.to_string()))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| DialectError::Malformed("completion without choices".into()))?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    // An OpenAI refusal (structured outputs) is the answer's text, stop reason `refusal`.
    let refusal = msg
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .or(refusal)
    {
        content.push(json!({"type": "text", "text": t}));
    }
    for tc in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = tc.get("function").unwrap_or(&Value::Null);
        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
        content.push(json!({"type": "tool_use",
            "id": tc.get("id").and_then(Value::as_str).unwrap_or(""),
            "name": f.get("name").and_then(Value::as_str).unwrap_or(""),
            "input": tool_input(args)}));
    }
    let finish = match choice.get("finish_reason").and_then(Value::as_str) {
        _ if refusal.is_some() => "content_filter",
        Some(f) => f,
        None => "stop",
    };
    let out = json!({
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage_json(usage),
    });
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| DialectError::Malformed(e.to_string()))
}

fn write_event(name: &str, data: &Value, out: &mut BytesMut) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(serde_json::to_string(data).unwrap_or_default().as_bytes());
    out.put_slice(b"\n\n");
}

/// The content block being written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    None,
    Text,
    /// The OpenAI tool-call index.
    Tool(u64),
}

/// Re-encodes an OpenAI `chat.completion.chunk` SSE stream (the gateway's internal stream
/// contract, after the firewall's guard, live or replayed from the exact cache) as the
/// Messages event stream: `message_start`, `ping`, `content_block_start` / `_delta` /
/// `_stop` (text with `text_delta`, tool calls with `input_json_delta`, a block per
/// tool call even when its arguments come in many pieces), `message_delta` with the stop
/// reason and usage, `message_stop`. An OpenAI error event becomes an `error` event.
pub struct MessagesEncoder {
    dec: SseDecoder,
    events: Vec<SseEvent>,
    id: String,
    model: String,
    started: bool,
    finished: bool,
    /// The index of the next content block.
    next: u64,
    open: Open,
    /// OpenAI tool-call index → Messages block index (bounded by the upstream's tool calls).
    tools: Vec<(u64, u64)>,
    stop: &'static str,
    /// An OpenAI `refusal` delta was seen: the stop reason is `refusal`.
    refused: bool,
    usage: Usage,
}

impl Reencode for MessagesEncoder {
    fn source(&mut self) -> (&mut SseDecoder, &mut Vec<SseEvent>) {
        (&mut self.dec, &mut self.events)
    }
    fn is_closed(&self) -> bool {
        self.finished
    }
    fn on_chunk(&mut self, chunk: &Value, out: &mut BytesMut) {
        self.chunk(chunk, out);
    }
    fn on_done(&mut self, out: &mut BytesMut) {
        self.done(out);
    }
    fn on_error(&mut self, message: &str, out: &mut BytesMut) {
        self.error(message, out);
    }
}

impl MessagesEncoder {
    pub fn new(request_id: &str, model: &str) -> Self {
        MessagesEncoder {
            dec: SseDecoder::new(),
            events: Vec::new(),
            id: message_id(request_id),
            model: model.to_string(),
            started: false,
            finished: false,
            next: 0,
            open: Open::None,
            tools: Vec::new(),
            stop: "end_turn",
            refused: false,
            usage: Usage::default(),
        }
    }

    /// Feed internal SSE bytes (any split); this API's SSE bytes are appended to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) {
        self.feed_chunks(input, out);
    }

    /// The stream ended: close it properly if `[DONE]` never came.
    pub fn finish(&mut self, out: &mut BytesMut) {
        self.finish_chunks(out);
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        write_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            out,
        );
        write_event("ping", &json!({"type": "ping"}), out);
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        let index = match self.open {
            Open::None => return,
            Open::Text => self.next - 1,
            Open::Tool(i) => self.block_of(i).unwrap_or(0),
        };
        write_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
            out,
        );
        self.open = Open::None;
    }

    fn block_of(&self, tool: u64) -> Option<u64> {
        self.tools.iter().find(|(t, _)| *t == tool).map(|(_, b)| *b)
    }

    fn error(&mut self, message: &str, out: &mut BytesMut) {
        self.start(out);
        write_event(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            out,
        );
        self.finished = true;
    }

    /// One chunk that is not an error event ([`Reencode`] routes those to the error path).
    fn chunk(&mut self, v: &Value, out: &mut BytesMut) {
        if !self.started {
            if let Some(m) = v
                .get("model")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
            {
                self.model = m.to_string();
            }
        }
        if let Some(u) = v.get("usage").and_then(Usage::from_openai) {
            self.usage = u;
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return; // the usage-only chunk
        };
        self.start(out);
        let delta = choice.get("delta");
        let refusal = delta
            .and_then(|d| d.get("refusal"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        if refusal.is_some() {
            self.refused = true;
        }
        if let Some(t) = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .or(refusal)
        {
            if self.open != Open::Text {
                self.close_block(out);
                write_event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": self.next,
                        "content_block": {"type": "text", "text": ""}}),
                    out,
                );
                self.next += 1;
                self.open = Open::Text;
            }
            write_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": self.next - 1,
                    "delta": {"type": "text_delta", "text": t}}),
                out,
            );
        }
        for tc in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.tool_delta(tc, out);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = if self.refused {
                "refusal"
            } else {
                stop_reason(f)
            };
        }
    }

    fn tool_delta(&mut self, tc: &Value, out: &mut BytesMut) {
        let idx = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = tc.get("function");
        let index = match self.block_of(idx) {
            Some(b) => b,
            None => {
                self.close_block(out);
                let b = self.next;
                self.next += 1;
                self.tools.push((idx, b));
                write_event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": b,
                        "content_block": {"type": "tool_use",
                            "id": tc.get("id").and_then(Value::as_str).unwrap_or(""),
                            "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or(""),
                            "input": {}}}),
                    out,
                );
                self.open = Open::Tool(idx);
                b
            }
        };
        if let Some(a) = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            write_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": a}}),
                out,
            );
        }
    }

    fn done(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.start(out);
        self.close_block(out);
        write_event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop, "stop_sequence": null},
                "usage": usage_json(&self.usage)}),
            out,
        );
        write_event("message_stop", &json!({"type": "message_stop"}), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::encode::ChunkEncoder;

    fn chat(v: Value) -> Value {
        serde_json::from_slice(&to_chat(v.to_string().as_bytes()).unwrap()).unwrap()
    }

    fn err(v: Value) -> GatewayError {
        to_chat(v.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn request_maps_system_tools_images_and_tool_results() {
        let c = chat(json!({
            "model": "claude-x", "max_tokens": 100, "stream": true, "temperature": 0.2,
            "top_k": 5, "metadata": {"user_id": "u-1"},
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "stop_sequences": ["END"],
            "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                    {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "and now?"}]}
            ]
        }));
        assert_eq!(
            c["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            c["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAA"
        );
        assert_eq!(
            c["messages"][1]["content"][2]["image_url"]["url"],
            "https://x.test/a.png"
        );
        assert_eq!(c["messages"][2]["content"], "checking");
        assert_eq!(
            c["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(
            c["messages"][3],
            json!({"role": "tool", "tool_call_id": "tu_1", "content": "sunny"})
        );
        assert_eq!(
            c["messages"][4],
            json!({"role": "user", "content": "and now?"})
        );
        assert_eq!(
            c["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(c["tool_choice"], "required");
        assert_eq!(c["parallel_tool_calls"], false);
        assert_eq!(c["stop"], json!(["END"]));
        assert_eq!(c["user"], "u-1");
        assert_eq!(c["temperature"], 0.2);
        assert!(c.get("top_k").is_none());
        assert_eq!(c["stream_options"]["include_usage"], true);
    }

    #[test]
    fn images_in_tool_results_follow_the_tool_messages() {
        let c = chat(json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "screen:"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}]},
                {"type": "text", "text": "what do you see?"}]}
        ]}));
        assert_eq!(c["messages"][1]["role"], "tool");
        assert_eq!(
            c["messages"][1]["content"],
            "screen:\n[image: attached in the next user message]"
        );
        assert_eq!(c["messages"][2]["role"], "user");
        assert_eq!(
            c["messages"][2]["content"][0]["image_url"]["url"],
            "data:image/png;base64,QUJD"
        );
        assert_eq!(c["messages"][2]["content"][1]["text"], "what do you see?");
        let e = err(json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                "content": [{"type": "document", "source": {}}]}]}]}));
        assert_eq!(e.param(), Some("messages.0.content.0.content.0.type"));
    }

    #[test]
    fn unsupported_features_are_400_naming_the_field() {
        let base = |extra: Value| {
            let mut b = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let e = err(base(
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ));
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("web_search_20250305"), "{e}");
        assert_eq!(e.param(), Some("tools.0.type"));
        let e = err(base(
            json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}),
        ));
        assert_eq!(e.param(), Some("thinking"));
        let e = err(base(json!({"mcp_servers": [{"type": "url"}]})));
        assert_eq!(e.param(), Some("mcp_servers"));
        let e = err(base(
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        ));
        assert!(e.to_string().contains("document"), "{e}");
        assert_eq!(e.param(), Some("messages.0.content.0.type"));
        let e = err(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.param(), Some("max_tokens"));
        let e = err(base(
            json!({"tool_choice": {"type": "tool"}, "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
        ));
        assert_eq!(e.param(), Some("tool_choice.name"));
        let b: Value = serde_json::from_slice(&error_body(429, "slow down")).unwrap();
        assert_eq!(
            b,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        );
    }

    #[test]
    fn completion_becomes_message() {
        let body = json!({"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "let me see", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]});
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_tokens: 4,
            reported: true,
            ..Default::default()
        };
        let m: Value = serde_json::from_slice(
            &from_completion(body.to_string().as_bytes(), &u, "r1").unwrap(),
        )
        .unwrap();
        assert_eq!(m["id"], "msg_r1");
        assert_eq!(m["type"], "message");
        assert_eq!(m["model"], "gpt-x");
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"][0],
            json!({"type": "text", "text": "let me see"})
        );
        assert_eq!(
            m["content"][1],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}})
        );
        assert_eq!(m["usage"]["input_tokens"], 6);
        assert_eq!(m["usage"]["output_tokens"], 3);
        assert_eq!(m["usage"]["cache_read_input_tokens"], 4);
        let len = json!({"model": "g", "choices": [{"finish_reason": "length", "message": {"content": "ab"}}]});
        let m: Value =
            serde_json::from_slice(&from_completion(len.to_string().as_bytes(), &u, "r").unwrap())
                .unwrap();
        assert_eq!(m["stop_reason"], "max_tokens");
        let refused = json!({"model": "g", "choices": [{"finish_reason": "stop",
            "message": {"content": null, "refusal": "I can't help with that."}}]});
        let m: Value = serde_json::from_slice(
            &from_completion(refused.to_string().as_bytes(), &u, "r").unwrap(),
        )
        .unwrap();
        assert_eq!(m["stop_reason"], "refusal");
        assert_eq!(m["content"][0]["text"], "I can't help with that.");
    }

    /// Decode a Messages SSE byte stream into (event, data) pairs.
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut d = SseDecoder::new();
        let mut ev = Vec::new();
        d.feed(bytes, &mut ev).unwrap();
        assert!(!d.has_partial());
        ev.into_iter()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(v["type"], e.event.as_str(), "event name matches data.type");
                (e.event, v)
            })
            .collect()
    }

    #[test]
    fn streamed_tool_call_in_pieces_becomes_input_json_deltas() {
        // The internal stream as a dialect writes it, fed to the encoder byte by byte.
        let mut enc = ChunkEncoder::new("chatcmpl-9", 1, "gpt-x", true);
        let mut openai = BytesMut::new();
        enc.content(0, "Let me check.", &mut openai);
        enc.tool_call_start(0, 0, "call_a", "get_weather", &mut openai);
        enc.tool_call_args(0, 0, "{\"ci", &mut openai);
        enc.tool_call_args(0, 0, "ty\":\"Par", &mut openai);
        enc.tool_call_args(0, 0, "is\"}", &mut openai);
        enc.tool_call_start(0, 1, "call_b", "get_time", &mut openai);
        enc.tool_call_args(0, 1, "{}", &mut openai);
        enc.finish_reason(0, "tool_calls", &mut openai);
        let u = Usage {
            prompt_tokens: 20,
            completion_tokens: 7,
            reported: true,
            ..Default::default()
        };
        enc.end(&u, &mut openai);

        let mut m = MessagesEncoder::new("req1", "asked");
        let mut out = BytesMut::new();
        for b in openai.chunks(3) {
            m.feed(b, &mut out);
        }
        m.finish(&mut out);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[0].1["message"]["id"], "msg_req1");
        assert_eq!(ev[0].1["message"]["model"], "gpt-x");
        assert_eq!(
            ev[3].1["delta"],
            json!({"type": "text_delta", "text": "Let me check."})
        );
        assert_eq!(
            ev[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}})
        );
        assert_eq!(ev[5].1["index"], 1);
        let args: String = ev[6..9]
            .iter()
            .map(|(_, v)| {
                assert_eq!(v["index"], 1);
                v["delta"]["partial_json"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(ev[10].1["index"], 2);
        assert_eq!(ev[10].1["content_block"]["name"], "get_time");
        assert_eq!(ev[13].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(ev[13].1["usage"]["input_tokens"], 20);
        assert_eq!(ev[13].1["usage"]["output_tokens"], 7);
        // Nothing after message_stop, even when more bytes come.
        let before = out.len();
        m.finish(&mut out);
        assert_eq!(out.len(), before);
    }

    #[test]
    fn stream_error_becomes_error_event() {
        let mut openai = BytesMut::new();
        let mut enc = ChunkEncoder::new("c", 1, "m", false);
        enc.content(0, "par", &mut openai);
        enc.error(
            "upstream fell over",
            "server_error",
            "upstream_error",
            &mut openai,
        );
        let mut m = MessagesEncoder::new("r", "m");
        let mut out = BytesMut::new();
        m.feed(&openai, &mut out);
        m.feed(b"data: [DONE]\n\n", &mut out);
        m.finish(&mut out);
        let ev = events(&out);
        let last = &ev[ev.len() - 1];
        assert_eq!(last.0, "error");
        assert_eq!(last.1["error"]["message"], "upstream fell over");
        assert!(ev.iter().all(|(n, _)| n != "message_stop"));
    }

    #[test]
    fn count_tokens_grows_with_the_prompt() {
        let small =
            count_tokens(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let big = count_tokens(
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
                "x".repeat(400)
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(small >= 1 && big >= small + 99, "{small} {big}");
        assert!(count_tokens(br#"{"model":"m"}"#).is_err());
    }
}
