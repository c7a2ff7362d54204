//! The OpenAI Responses API at the edge (`POST /v1/responses`, the stateless core): a
//! Responses request becomes an OpenAI chat-completions body ([`to_chat`]); the chat
//! answer, whole ([`from_completion`]) or as `chat.completion.chunk` SSE
//! ([`ResponsesEncoder`]), becomes a Responses `response` object or its event stream
//! (`response.created` … `response.completed`, each event with its `sequence_number`).
//! `previous_response_id` is resolved by the proxy from the trace store: [`history`]
//! rebuilds the chat messages of an earlier exchange from its stored bodies.
//!
//! Pure: bytes in, bytes out, no sockets.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::Reencode;
use crate::dialect::sse::{SseDecoder, SseEvent};
use crate::dialect::{DialectError, Usage};
use crate::error::GatewayError;

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid_code(message, Some(param), "invalid_value")
}

fn unsupported(what: &str, param: &str) -> GatewayError {
    GatewayError::invalid_code(
        format!("{param}: {what} is not supported by this gateway's /v1/responses endpoint."),
        Some(param),
        "unsupported_parameter",
    )
}

fn missing(param: &str) -> GatewayError {
    GatewayError::invalid_code(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        "missing_required_parameter",
    )
}

/// The response id for a gateway request id.
pub fn response_id(request_id: &str) -> String {
    format!("resp_{request_id}")
}

/// The gateway request id of a response id (`resp_<request id>`), if it is one.
pub fn request_id_of(response_id: &str) -> Option<&str> {
    let id = response_id.strip_prefix("resp_")?;
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

/// A parsed Responses request: the client's body and its `previous_response_id`.
pub struct Request {
    body: Map<String, Value>,
    pub previous_response_id: Option<String>,
    /// The stored assistant message of each request id an `item_reference` points at
    /// (filled by the proxy from the trace store, see [`Request::references`]).
    pub referenced: std::collections::HashMap<String, Value>,
}

/// At most this many distinct earlier responses may be referenced by `item_reference` items.
pub const MAX_REFERENCED: usize = 32;

/// One `item_reference` of the input: the gateway request id it points at, the referenced id
/// as sent, and the parameter to name in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub request_id: String,
    pub id: String,
    pub param: String,
}

/// The gateway request id of an output message item id (`msg_<request id>` or
/// `msg_<request id>_<n>`, as [`from_completion`] and [`ResponsesEncoder`] name them).
fn message_request_id(item_id: &str) -> Option<&str> {
    let rest = item_id.strip_prefix("msg_")?;
    let rid = match rest.rsplit_once('_') {
        Some((rid, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rid,
        _ => rest,
    };
    request_id_of(&format!("resp_{rid}")).map(|_| rid)
}

/// Top-level fields that need server-side state or tools no provider behind the chat
/// contract has: refused with a 400 naming the field, never silently dropped.
const UNSUPPORTED_FIELDS: &[&str] = &["background", "conversation", "prompt"];

/// Parse a Responses request body (checks that need no translation happen in [`to_chat`]).
pub fn parse(raw: &[u8]) -> Result<Request, GatewayError> {
    let body = match serde_json::from_slice(raw) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(invalid("The request body must be a JSON object.", "body")),
        Err(e) => {
            return Err(invalid(
                format!("The request body is not valid JSON: {e}"),
                "body",
            ))
        }
    };
    let previous_response_id = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                "previous_response_id: expected a string",
                "previous_response_id",
            ))
        }
    };
    Ok(Request {
        body,
        previous_response_id,
        referenced: std::collections::HashMap::new(),
    })
}

impl Request {
    /// The earlier responses the input's `item_reference` items point at, distinct, in input
    /// order. Clients that keep responses stored (the OpenAI default `store: true`, which the
    /// Vercel AI SDK follows) send an earlier assistant message back as
    /// `{"type": "item_reference", "id": "msg_..."}` instead of its text: the proxy resolves
    /// those from the trace store like `previous_response_id`. A reference to anything but
    /// one of this gateway's output messages is a 400 naming it.
    pub fn references(&self) -> Result<Vec<Reference>, GatewayError> {
        let mut out: Vec<Reference> = Vec::new();
        let Some(Value::Array(items)) = self.body.get("input") else {
            return Ok(out);
        };
        for (i, item) in items.iter().enumerate() {
            if item.get("type").and_then(Value::as_str) != Some("item_reference") {
                continue;
            }
            let param = format!("input[{i}].id");
            let Some(id) = item.get("id").and_then(Value::as_str) else {
                return Err(missing(&param));
            };
            let Some(rid) = message_request_id(id) else {
                let what = if id.starts_with("fc_") {
                    "an item_reference to a function call (send the function_call item itself)"
                        .to_string()
                } else {
                    format!(
                        "an item_reference to '{}' (only this gateway's output messages, msg_..., can be referenced; send the item itself)",
                        id.chars().take(80).collect::<String>()
                    )
                };
                return Err(unsupported(&what, &param));
            };
            if out.iter().any(|r| r.request_id == rid) {
                continue;
            }
            if out.len() >= MAX_REFERENCED {
                return Err(invalid(
                    format!("input: at most {MAX_REFERENCED} earlier responses may be referenced by item_reference; send the items themselves"),
                    &param,
                ));
            }
            out.push(Reference {
                request_id: rid.to_string(),
                id: id.to_string(),
                param,
            });
        }
        Ok(out)
    }
}

/// What the `response` object echoes back from the request, plus its creation time.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub created_at: i64,
    fields: Map<String, Value>,
}

const ECHOED: &[&str] = &[
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "store",
    "user",
];

impl Echo {
    fn of(body: &Map<String, Value>, created_at: i64) -> Echo {
        let mut fields = Map::new();
        for k in ECHOED {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                fields.insert((*k).to_string(), v.clone());
            }
        }
        Echo { created_at, fields }
    }
}

/// Translate a Responses request into an OpenAI chat-completions body. `history`: the chat
/// messages of the `previous_response_id` chain (input and output), placed before this
/// request's input. Returns the body and what the answer echoes.
pub fn to_chat(
    req: &Request,
    history: Vec<Value>,
    created_at: i64,
) -> Result<(Bytes, Echo), GatewayError> {
    let body = &req.body;
    for f in UNSUPPORTED_FIELDS {
        if body
            .get(*f)
            .is_some_and(|v| !v.is_null() && *v != json!(false))
        {
            return Err(unsupported("this field", f));
        }
    }
    let mut out = Map::new();
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => {
            out.insert("model".into(), Value::String(m.clone()));
        }
        _ => return Err(missing("model")),
    }
    let mut messages = Vec::new();
    let instructions = match body.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("instructions: expected a string", "instructions")),
    };
    if let Some(s) = &instructions {
        messages.push(json!({"role": "system", "content": s}));
    }
    // Instructions are not carried over from a previous response (as OpenAI does): the
    // new ones replace the system messages the chain started with.
    let mut history = history.into_iter().peekable();
    if instructions.is_some() {
        while history.peek().is_some_and(|m| m["role"] == "system") {
            history.next();
        }
    }
    messages.extend(history);
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            let mut used = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if item.get("type").and_then(Value::as_str) == Some("item_reference") {
                    referenced_item(req, item, i, &mut used, &mut messages)?;
                    continue;
                }
                input_item(item, i, &mut messages)?;
            }
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(invalid(
                "input: expected a string or a list of input items",
                "input",
            ))
        }
    }
    if messages.is_empty() {
        return Err(missing("input"));
    }
    out.insert("messages".into(), Value::Array(messages));

    match body.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("stream".into(), Value::Bool(true));
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return Err(invalid("stream: expected a boolean", "stream")),
    }
    for k in ["temperature", "top_p"] {
        match body.get(k) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                out.insert(k.into(), v.clone());
            }
            Some(_) => return Err(invalid(format!("{k}: expected a number"), k)),
        }
    }
    match body.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
            out.insert("max_tokens".into(), Value::Number(n.clone()));
        }
        Some(_) => {
            return Err(invalid(
                "max_output_tokens: expected a positive integer",
                "max_output_tokens",
            ))
        }
    }
    if let Some(u) = body
        .get("user")
        .or_else(|| body.get("safety_identifier"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(u.to_string()));
    }
    match body.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(invalid("metadata: expected an object", "metadata")),
    }
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let Value::Array(tools) = tools else {
            return Err(invalid("tools: expected a list", "tools"));
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
        let choice = tool_choice(tc)?;
        // Without tools only `none` means anything (OpenAI refuses a choice without tools).
        if out.contains_key("tools") {
            out.insert("tool_choice".into(), choice);
        }
    }
    if let Some(p) = body.get("parallel_tool_calls").and_then(Value::as_bool) {
        if out.contains_key("tools") {
            out.insert("parallel_tool_calls".into(), Value::Bool(p));
        }
    }
    if let Some(text) = body.get("text").filter(|v| !v.is_null()) {
        if let Some(rf) = response_format(text)? {
            out.insert("response_format".into(), rf);
        }
    }
    let chat = serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok((chat, Echo::of(body, created_at)))
}

/// `text.format` as a chat `response_format` (`None`: plain text).
fn response_format(text: &Value) -> Result<Option<Value>, GatewayError> {
    let Some(f) = text.get("format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                return Err(missing("text.format.name"));
            };
            let Some(schema) = f.get("schema").filter(|s| s.is_object()) else {
                return Err(missing("text.format.schema"));
            };
            let mut js = json!({"name": name, "schema": schema});
            for k in ["strict", "description"] {
                if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                    js[k] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        Some(other) => Err(unsupported(
            &format!("the text format '{other}'"),
            "text.format.type",
        )),
        None => Err(missing("text.format.type")),
    }
}

fn tool(t: &Value, i: usize) -> Result<Value, GatewayError> {
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
        return Err(unsupported(
            &format!("the built-in tool '{kind}'"),
            &format!("tools[{i}].type"),
        ));
    }
    let Some(name) = t.get("name").and_then(Value::as_str) else {
        return Err(missing(&format!("tools[{i}].name")));
    };
    let mut f = json!({"name": name});
    f["parameters"] = match t.get("parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    if let Some(d) = t.get("description").and_then(Value::as_str) {
        f["description"] = Value::String(d.to_string());
    }
    if let Some(s) = t.get("strict").and_then(Value::as_bool) {
        f["strict"] = Value::Bool(s);
    }
    Ok(json!({"type": "function", "function": f}))
}

fn tool_choice(tc: &Value) -> Result<Value, GatewayError> {
    match tc {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(tc.clone()),
        Value::String(s) => Err(invalid(
            format!("tool_choice: expected 'auto', 'none', 'required' or a function, got '{s}'"),
            "tool_choice",
        )),
        _ => match tc.get("type").and_then(Value::as_str) {
            Some("function") => match tc.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(missing("tool_choice.name")),
            },
            Some(other) => Err(unsupported(
                &format!("the tool choice '{other}'"),
                "tool_choice.type",
            )),
            None => Err(missing("tool_choice.type")),
        },
    }
}

/// One content part of a message item as a chat content part.
fn content_part(p: &Value, param: &str) -> Result<Value, GatewayError> {
    let text = || p.get("text").and_then(Value::as_str).unwrap_or("");
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => Ok(json!({"type": "text", "text": text()})),
        Some("refusal") => Ok(json!({"type": "text",
            "text": p.get("refusal").and_then(Value::as_str).unwrap_or("")})),
        Some("input_image") => {
            let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                if p.get("file_id").is_some_and(|f| !f.is_null()) {
                    return Err(unsupported(
                        "an image by file_id (use image_url)",
                        &format!("{param}.file_id"),
                    ));
                }
                return Err(missing(&format!("{param}.image_url")));
            };
            let mut img = json!({"url": url});
            if let Some(d) = p
                .get("detail")
                .and_then(Value::as_str)
                .filter(|d| *d != "auto")
            {
                img["detail"] = Value::String(d.to_string());
            }
            Ok(json!({"type": "image_url", "image_url": img}))
        }
        Some(other) => Err(unsupported(
            &format!("the content type '{other}'"),
            &format!("{param}.type"),
        )),
        None => Err(missing(&format!("{param}.type"))),
    }
}

/// The content of a message item as chat content: a string when it is all text.
fn message_content(c: &Value, param: &str, role: &str) -> Result<Value, GatewayError> {
    match c {
        Value::String(s) => Ok(Value::String(s.clone())),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                out.push(content_part(p, &format!("{param}[{j}]"))?);
            }
            let all_text = out.iter().all(|p| p["type"] == "text");
            if all_text || role != "user" {
                if !all_text {
                    return Err(unsupported(&format!("an image in a {role} message"), param));
                }
                let sep = if role == "assistant" { "" } else { "\n" };
                let text: Vec<&str> = out.iter().filter_map(|p| p["text"].as_str()).collect();
                return Ok(Value::String(text.join(sep)));
            }
            Ok(Value::Array(out))
        }
        _ => Err(invalid(
            format!("{param}: expected a string or a list of content parts"),
            param,
        )),
    }
}

/// An `item_reference` to an earlier output message: the text of that stored answer, as an
/// assistant message (once per referenced response; its tool calls come as their own
/// `function_call` items and join it).
fn referenced_item(
    req: &Request,
    item: &Value,
    i: usize,
    used: &mut Vec<String>,
    out: &mut Vec<Value>,
) -> Result<(), GatewayError> {
    let param = format!("input[{i}].id");
    let id = item
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| missing(&param))?;
    let rid = message_request_id(id).ok_or_else(|| {
        unsupported(
            "an item_reference to anything but an output message of this gateway",
            &param,
        )
    })?;
    let Some(stored) = req.referenced.get(rid) else {
        return Err(GatewayError::NotFound {
            message: format!(
                "Item with id '{}' not found.",
                id.chars().take(140).collect::<String>()
            ),
            code: "item_not_found",
            param: Some(param),
        });
    };
    if used.iter().any(|u| u == rid) {
        return Ok(());
    }
    used.push(rid.to_string());
    let text = match stored.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        out.push(json!({"role": "assistant", "content": text}));
    }
    Ok(())
}

fn input_item(item: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let param = format!("input[{i}]");
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        Some("message") | None if item.get("role").is_some() => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("developer" | "system") => "system",
                Some(r @ ("user" | "assistant")) => r,
                Some(other) => {
                    return Err(invalid(
                        format!("{param}.role: expected 'user', 'assistant', 'system' or 'developer', got '{other}'"),
                        &format!("{param}.role"),
                    ))
                }
                None => return Err(missing(&format!("{param}.role"))),
            };
            let Some(c) = item.get("content") else {
                return Err(missing(&format!("{param}.content")));
            };
            let content = message_content(c, &format!("{param}.content"), role)?;
            out.push(json!({"role": role, "content": content}));
        }
        Some("function_call") => {
            let s = |k: &str| item.get(k).and_then(Value::as_str);
            let (Some(call_id), Some(name)) = (s("call_id"), s("name")) else {
                return Err(missing(&format!(
                    "{param}.{}",
                    if s("call_id").is_none() {
                        "call_id"
                    } else {
                        "name"
                    }
                )));
            };
            let call = json!({"id": call_id, "type": "function",
                "function": {"name": name, "arguments": s("arguments").unwrap_or("{}")}});
            // Consecutive calls (and the text before them) are one assistant turn.
            if let Some(last) = out.last_mut().filter(|m| m["role"] == "assistant") {
                if let Some(calls) = last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    calls.push(call);
                } else {
                    last["tool_calls"] = json!([call]);
                }
            } else {
                out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
        }
        Some("function_call_output") => {
            let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                return Err(missing(&format!("{param}.call_id")));
            };
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Array(_)) => {
                    match message_content(v, &format!("{param}.output"), "tool")? {
                        Value::String(s) => s,
                        _ => String::new(),
                    }
                }
                _ => return Err(missing(&format!("{param}.output"))),
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Earlier reasoning of a model: it cannot be replayed to another provider.
        Some("reasoning") => {}
        Some(other) => {
            return Err(unsupported(
                &format!("the input item type '{other}'"),
                &format!("{param}.type"),
            ))
        }
        None => return Err(missing(&format!("{param}.type"))),
    }
    Ok(())
}

/// The chat messages of a stored exchange: its chat request's messages and the assistant
/// message of its answer (a chat completion, or the internal chunk stream when streamed).
pub fn history(request_body: &str, response_body: &str) -> Result<Vec<Value>, DialectError> {
    let req: Value = serde_json::from_str(request_body)
        .map_err(|e| DialectError::Malformed(format!("stored request: {e}")))?;
    let mut messages = match req.get("messages") {
        Some(Value::Array(m)) => m.clone(),
        _ => {
            return Err(DialectError::Malformed(
                "stored request has no messages".into(),
            ))
        }
    };
    let answer = if response_body.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(response_body)
            .map_err(|e| DialectError::Malformed(format!("stored response: {e}")))?;
        let m = v
            .pointer("/choices/0/message")
            .ok_or_else(|| DialectError::Malformed("stored response has no message".into()))?;
        let mut a = json!({"role": "assistant", "content": m.get("content").cloned().unwrap_or(Value::Null)});
        if let Some(tc) = m.get("tool_calls").filter(|t| t.is_array()) {
            a["tool_calls"] = tc.clone();
        }
        a
    } else {
        streamed_message(response_body.as_bytes())?
    };
    messages.push(answer);
    Ok(messages)
}

/// The assistant message of an internal chunk stream.
fn streamed_message(sse: &[u8]) -> Result<Value, DialectError> {
    let mut dec = SseDecoder::new();
    let mut events = Vec::new();
    dec.feed(sse, &mut events)?;
    dec.finish(&mut events)?;
    let mut text = String::new();
    let mut calls: Vec<Value> = Vec::new();
    for ev in events {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        let Some(delta) = v.pointer("/choices/0/delta") else {
            continue;
        };
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            text.push_str(t);
        }
        for tc in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let idx = tc.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if idx >= calls.len() {
                if idx > 1024 {
                    continue;
                }
                calls.resize(
                    idx + 1,
                    json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}),
                );
            }
            let c = &mut calls[idx];
            if let Some(id) = tc.get("id").and_then(Value::as_str) {
                c["id"] = Value::String(id.to_string());
            }
            let f = tc.get("function");
            if let Some(n) = f.and_then(|f| f.get("name")).and_then(Value::as_str) {
                c["function"]["name"] = Value::String(n.to_string());
            }
            if let Some(a) = f.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
                let mut args = c["function"]["arguments"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                args.push_str(a);
                c["function"]["arguments"] = Value::String(args);
            }
        }
    }
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    let mut m = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total(),
    })
}

/// The status and `incomplete_details` for a chat `finish_reason`.
fn status_of(finish: &str) -> (&'static str, Value) {
    match finish {
        "length" => ("incomplete", json!({"reason": "max_output_tokens"})),
        "content_filter" => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// A whole `response` object.
#[allow(clippy::too_many_arguments)]
fn response_json(
    id: &str,
    echo: &Echo,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Option<&Usage>,
    incomplete: Value,
    error: Value,
) -> Value {
    let f = |k: &str, d: Value| echo.fields.get(k).cloned().unwrap_or(d);
    json!({
        "id": id,
        "object": "response",
        "created_at": echo.created_at,
        "status": status,
        "background": false,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": f("instructions", Value::Null),
        "max_output_tokens": f("max_output_tokens", Value::Null),
        "metadata": f("metadata", json!({})),
        "model": model,
        "output": output,
        "parallel_tool_calls": f("parallel_tool_calls", Value::Bool(true)),
        "previous_response_id": f("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "store": f("store", Value::Bool(true)),
        "temperature": f("temperature", json!(1.0)),
        "text": f("text", json!({"format": {"type": "text"}})),
        "tool_choice": f("tool_choice", json!("auto")),
        "tools": f("tools", json!([])),
        "top_p": f("top_p", json!(1.0)),
        "truncation": f("truncation", json!("disabled")),
        "usage": usage.map_or(Value::Null, usage_json),
        "user": f("user", Value::Null),
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, args: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": args, "status": status})
}

/// An OpenAI chat completion (whatever provider answered) as a Responses `response`.
pub fn from_completion(
    body: &[u8],
    usage: &Usage,
    request_id: &str,
    echo: &Echo,
) -> Result<Bytes, DialectError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| DialectError::Malformed(e.to_string()))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| DialectError::Malformed("completion without choices".into()))?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let (status, incomplete) = status_of(finish);
    let mut output = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| {
            msg.get("refusal")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
        })
    {
        output.push(message_item(&format!("msg_{request_id}"), t, status));
    }
    for (i, tc) in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = tc.get("function").unwrap_or(&Value::Null);
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        output.push(call_item(
            &format!("fc_{request_id}_{i}"),
            &s(tc, "id"),
            &s(f, "name"),
            &s(f, "arguments"),
            "completed",
        ));
    }
    let model = v.get("model").and_then(Value::as_str).unwrap_or("");
    let out = response_json(
        &response_id(request_id),
        echo,
        model,
        status,
        output,
        Some(usage),
        incomplete,
        Value::Null,
    );
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|e| DialectError::Malformed(e.to_string()))
}

/// An output item of a streamed response.
enum Item {
    Message {
        text: String,
        done: bool,
    },
    Call {
        /// The chat tool-call index.
        index: u64,
        call_id: String,
        name: String,
        args: String,
        done: bool,
    },
}

/// Re-encodes the internal `chat.completion.chunk` SSE stream (live or replayed from the
/// exact cache, after the firewall's guard) as the Responses event stream.
pub struct ResponsesEncoder {
    dec: SseDecoder,
    events: Vec<SseEvent>,
    request_id: String,
    echo: Echo,
    model: String,
    seq: u64,
    started: bool,
    finished: bool,
    items: Vec<Item>,
    finish: String,
    usage: Option<Usage>,
}

impl Reencode for ResponsesEncoder {
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
        self.fail(message, out);
    }
}

impl ResponsesEncoder {
    pub fn new(request_id: &str, model: &str, echo: Echo) -> Self {
        ResponsesEncoder {
            dec: SseDecoder::new(),
            events: Vec::new(),
            request_id: request_id.to_string(),
            echo,
            model: model.to_string(),
            seq: 0,
            started: false,
            finished: false,
            items: Vec::new(),
            finish: "stop".into(),
            usage: None,
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

    fn emit(&mut self, name: &str, mut data: Value, out: &mut BytesMut) {
        data["type"] = Value::String(name.to_string());
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(serde_json::to_string(&data).unwrap_or_default().as_bytes());
        out.put_slice(b"\n\n");
    }

    fn item_id(&self, i: usize) -> String {
        match &self.items[i] {
            Item::Message { .. } if i == 0 => format!("msg_{}", self.request_id),
            Item::Message { .. } => format!("msg_{}_{i}", self.request_id),
            Item::Call { .. } => format!("fc_{}_{i}", self.request_id),
        }
    }

    fn item_json(&self, i: usize, status: &str) -> Value {
        let id = self.item_id(i);
        match &self.items[i] {
            Item::Message { text, .. } => message_item(&id, text, status),
            Item::Call {
                call_id,
                name,
                args,
                ..
            } => call_item(&id, call_id, name, args, status),
        }
    }

    fn snapshot(&self, status: &str, incomplete: Value, error: Value) -> Value {
        let final_status = if status == "in_progress" {
            "in_progress"
        } else {
            "completed"
        };
        let output = (0..self.items.len())
            .map(|i| self.item_json(i, final_status))
            .collect();
        response_json(
            &response_id(&self.request_id),
            &self.echo,
            &self.model,
            status,
            output,
            self.usage.as_ref(),
            incomplete,
            error,
        )
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.snapshot("in_progress", Value::Null, Value::Null);
        self.emit("response.created", json!({"response": r}), out);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    fn close_item(&mut self, i: usize, out: &mut BytesMut) {
        let id = self.item_id(i);
        match &mut self.items[i] {
            Item::Message { done: true, .. } | Item::Call { done: true, .. } => return,
            Item::Message { text, done } => {
                *done = true;
                let text = std::mem::take(text);
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0,
                        "text": text, "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
                    out,
                );
                if let Item::Message { text: t, .. } = &mut self.items[i] {
                    *t = text;
                }
            }
            Item::Call {
                name, args, done, ..
            } => {
                *done = true;
                let data =
                    json!({"item_id": id, "output_index": i, "name": name, "arguments": args});
                self.emit("response.function_call_arguments.done", data, out);
            }
        }
        let item = self.item_json(i, "completed");
        self.emit(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
            out,
        );
    }

    fn close_all(&mut self, out: &mut BytesMut) {
        for i in 0..self.items.len() {
            self.close_item(i, out);
        }
    }

    fn fail(&mut self, message: &str, out: &mut BytesMut) {
        self.start(out);
        let r = self.snapshot(
            "failed",
            Value::Null,
            json!({"code": "server_error", "message": message}),
        );
        self.emit("response.failed", json!({"response": r}), out);
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
            self.usage = Some(u);
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return; // the usage-only chunk
        };
        self.start(out);
        let delta = choice.get("delta");
        let text = delta
            .and_then(|d| d.get("content").filter(|c| c.is_string()))
            .or_else(|| delta.and_then(|d| d.get("refusal")))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        if let Some(t) = text {
            self.text_delta(t, out);
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
            self.finish = f.to_string();
        }
    }

    fn text_delta(&mut self, t: &str, out: &mut BytesMut) {
        let open = self
            .items
            .iter()
            .rposition(|it| matches!(it, Item::Message { done: false, .. }));
        let i = match open {
            Some(i) => i,
            None => {
                self.close_all(out);
                self.items.push(Item::Message {
                    text: String::new(),
                    done: false,
                });
                let i = self.items.len() - 1;
                let id = self.item_id(i);
                let item = self.item_json(i, "in_progress");
                let mut item = item;
                item["content"] = json!([]);
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                    out,
                );
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": i, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                    out,
                );
                i
            }
        };
        if let Item::Message { text, .. } = &mut self.items[i] {
            text.push_str(t);
        }
        let id = self.item_id(i);
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": i, "content_index": 0, "delta": t, "logprobs": []}),
            out,
        );
    }

    fn tool_delta(&mut self, tc: &Value, out: &mut BytesMut) {
        let idx = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = tc.get("function");
        let found = self
            .items
            .iter()
            .position(|it| matches!(it, Item::Call { index, .. } if *index == idx));
        let i = match found {
            Some(i) => i,
            None => {
                // A message before the calls is finished; earlier calls stay open (some
                // providers interleave the arguments of parallel calls).
                let msgs: Vec<usize> = (0..self.items.len())
                    .filter(|&i| matches!(self.items[i], Item::Message { done: false, .. }))
                    .collect();
                for m in msgs {
                    self.close_item(m, out);
                }
                self.items.push(Item::Call {
                    index: idx,
                    call_id: tc
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    name: f
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    args: String::new(),
                    done: false,
                });
                let i = self.items.len() - 1;
                let item = self.item_json(i, "in_progress");
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": i, "item": item}),
                    out,
                );
                i
            }
        };
        let Some(a) = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        let open = match &mut self.items[i] {
            Item::Call { args, done, .. } => {
                args.push_str(a);
                !*done
            }
            Item::Message { .. } => false,
        };
        if open {
            let id = self.item_id(i);
            self.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": i, "delta": a}),
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
        self.close_all(out);
        let (status, incomplete) = status_of(&self.finish);
        let r = self.snapshot(status, incomplete, Value::Null);
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(name, json!({"response": r}), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::encode::ChunkEncoder;

    fn chat(v: Value) -> Value {
        let req = parse(v.to_string().as_bytes()).unwrap();
        let (b, _) = to_chat(&req, Vec::new(), 1).unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    fn err(v: Value) -> GatewayError {
        let req = parse(v.to_string().as_bytes()).unwrap();
        to_chat(&req, Vec::new(), 1).unwrap_err()
    }

    #[test]
    fn request_maps_input_items_tools_and_format() {
        let c = chat(json!({
            "model": "gpt-x", "instructions": "be brief", "stream": true, "temperature": 0.2,
            "max_output_tokens": 64, "metadata": {"k": "v"}, "user": "u-1",
            "text": {"format": {"type": "json_schema", "name": "w", "strict": true,
                "schema": {"type": "object"}}},
            "tools": [{"type": "function", "name": "get_weather", "description": "w",
                "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "developer", "content": "sys2"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "hi"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]}
            ]
        }));
        let m = &c["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[1], json!({"role": "system", "content": "sys2"}));
        assert_eq!(m[2]["content"][0], json!({"type": "text", "text": "hi"}));
        assert_eq!(
            m[2]["content"][1]["image_url"],
            json!({"url": "data:image/png;base64,AAA", "detail": "low"})
        );
        assert_eq!(m[3]["content"], "checking");
        assert_eq!(m[3]["tool_calls"][0]["id"], "call_1");
        assert_eq!(m[3]["tool_calls"][1]["id"], "call_2");
        assert_eq!(
            m[4],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
        );
        assert_eq!(m[5]["content"], "rain");
        assert_eq!(m.as_array().unwrap().len(), 6);
        assert_eq!(c["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(c["tools"][0]["function"]["strict"], true);
        assert_eq!(
            c["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(c["response_format"]["type"], "json_schema");
        assert_eq!(c["response_format"]["json_schema"]["name"], "w");
        assert_eq!(c["max_tokens"], 64);
        assert_eq!(c["user"], "u-1");
        assert_eq!(c["stream_options"]["include_usage"], true);
        assert!(c.get("metadata").is_none());
        let s = chat(
            json!({"model": "m", "input": "hello", "text": {"format": {"type": "json_object"}}}),
        );
        assert_eq!(s["messages"], json!([{"role": "user", "content": "hello"}]));
        assert_eq!(s["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn item_references_name_earlier_answers_and_resolve_to_their_text() {
        let rid = "chatcmpl-AbC123";
        let body = json!({"model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "item_reference", "id": format!("msg_{rid}")},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "item_reference", "id": format!("msg_{rid}_3")},
            {"role": "user", "content": "thanks"}
        ]});
        let mut req = parse(body.to_string().as_bytes()).unwrap();
        let refs = req.references().unwrap();
        assert_eq!(
            refs,
            vec![Reference {
                request_id: rid.into(),
                id: format!("msg_{rid}"),
                param: "input[1].id".into()
            }]
        );
        // Unresolved: 404 naming the item.
        let e = to_chat(&req, vec![], 0).unwrap_err();
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains(&format!("msg_{rid}")), "{e}");
        req.referenced.insert(
            rid.into(),
            json!({"role": "assistant", "content": "Let me check.", "tool_calls": []}),
        );
        let (c, _) = to_chat(&req, vec![], 0).unwrap();
        let c: Value = serde_json::from_slice(&c).unwrap();
        let m = &c["messages"];
        assert_eq!(m[1]["content"], "Let me check.");
        assert_eq!(m[1]["tool_calls"][0]["id"], "call_1");
        assert_eq!(m[2]["role"], "tool");
        // The second reference to the same answer adds nothing.
        assert_eq!(m[3], json!({"role": "user", "content": "thanks"}));
        assert_eq!(m.as_array().unwrap().len(), 4);
        // Anything but one of our output messages: 400 naming it.
        for (id, what) in [("fc_chatcmpl-x_1", "function call"), ("rs_1", "rs_1")] {
            let b = json!({"model": "m", "input": [{"type": "item_reference", "id": id}]});
            let e = parse(b.to_string().as_bytes())
                .unwrap()
                .references()
                .unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn unsupported_and_bad_input_are_400_naming_it() {
        let e = err(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}));
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("web_search"), "{e}");
        assert_eq!(e.param(), Some("tools[0].type"));
        let e = err(json!({"model": "m", "input": "x",
            "tools": [{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": []}]}));
        assert_eq!(e.param(), Some("tools[1].type"));
        assert!(e.to_string().contains("file_search"), "{e}");
        // An item_reference to anything but one of this gateway's output messages.
        let e = err(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}));
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some("input[0].id"));
        assert!(e.to_string().contains("item_reference"), "{e}");
        let e = err(
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
        );
        assert_eq!(e.param(), Some("input[0].content[0].type"));
        let e = err(json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}));
        assert_eq!(e.param(), Some("input[0].role"));
        let e =
            err(json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}));
        assert_eq!(e.param(), Some("input[0].call_id"));
        let e = err(json!({"input": "x"}));
        assert_eq!(e.param(), Some("model"));
        let e = err(json!({"model": "m", "input": "x", "background": true}));
        assert_eq!(e.param(), Some("background"));
        let e = err(json!({"model": "m", "input": 5}));
        assert_eq!(e.param(), Some("input"));
        let b: Value = serde_json::from_slice(&e.to_openai()).unwrap();
        assert_eq!(b["error"]["param"], "input");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(parse(b"[1]").is_err());
        assert_eq!(request_id_of("resp_abc-1"), Some("abc-1"));
        assert_eq!(request_id_of("resp_"), None);
        assert_eq!(request_id_of("resp_a/b"), None);
        assert_eq!(request_id_of("msg_1"), None);
    }

    #[test]
    fn history_is_prepended_and_new_instructions_replace_old() {
        let h = history(
            r#"{"model":"m","messages":[{"role":"system","content":"old"},{"role":"user","content":"q1"}]}"#,
            r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(h.len(), 3);
        let req = parse(
            br#"{"model":"m","instructions":"new","previous_response_id":"resp_x","input":[{"type":"function_call_output","call_id":"call_1","output":"ok"}]}"#,
        )
        .unwrap();
        assert_eq!(req.previous_response_id.as_deref(), Some("resp_x"));
        let (b, echo) = to_chat(&req, h, 7).unwrap();
        let c: Value = serde_json::from_slice(&b).unwrap();
        let roles: Vec<&str> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!(c["messages"][0]["content"], "new");
        assert_eq!(echo.created_at, 7);
        // A streamed answer is rebuilt from the stored chunks.
        let mut sse = BytesMut::new();
        let mut enc = ChunkEncoder::new("c", 1, "m", true);
        enc.content(0, "Hel", &mut sse);
        enc.content(0, "lo", &mut sse);
        enc.tool_call_start(0, 0, "call_9", "g", &mut sse);
        enc.tool_call_args(0, 0, "{\"a\":", &mut sse);
        enc.tool_call_args(0, 0, "1}", &mut sse);
        enc.finish_reason(0, "tool_calls", &mut sse);
        enc.end(&Usage::default(), &mut sse);
        let h = history(
            r#"{"messages":[{"role":"user","content":"q"}]}"#,
            std::str::from_utf8(&sse).unwrap(),
        )
        .unwrap();
        assert_eq!(h[1]["content"], "Hello");
        assert_eq!(h[1]["tool_calls"][0]["id"], "call_9");
        assert_eq!(h[1]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
    }

    #[test]
    fn completion_becomes_response() {
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
        let req =
            parse(br#"{"model":"m","input":"x","metadata":{"k":"v"},"temperature":0.5}"#).unwrap();
        let (_, echo) = to_chat(&req, Vec::new(), 99).unwrap();
        let r: Value = serde_json::from_slice(
            &from_completion(body.to_string().as_bytes(), &u, "r1", &echo).unwrap(),
        )
        .unwrap();
        assert_eq!(r["id"], "resp_r1");
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["created_at"], 99);
        assert_eq!(r["model"], "gpt-x");
        assert_eq!(r["metadata"], json!({"k": "v"}));
        assert_eq!(r["temperature"], 0.5);
        assert_eq!(r["output"][0]["type"], "message");
        assert_eq!(r["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(r["output"][0]["content"][0]["text"], "let me see");
        assert_eq!(
            r["output"][1],
            json!({"type": "function_call", "id": "fc_r1_0", "call_id": "call_1", "name": "f",
                "arguments": "{\"a\":1}", "status": "completed"})
        );
        assert_eq!(r["usage"]["input_tokens"], 10);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 4);
        assert_eq!(r["usage"]["output_tokens"], 3);
        assert_eq!(r["usage"]["total_tokens"], 13);
        let len = json!({"model": "g", "choices": [{"finish_reason": "length", "message": {"content": "ab"}}]});
        let r: Value = serde_json::from_slice(
            &from_completion(len.to_string().as_bytes(), &u, "r", &echo).unwrap(),
        )
        .unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }

    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut d = SseDecoder::new();
        let mut ev = Vec::new();
        d.feed(bytes, &mut ev).unwrap();
        assert!(!d.has_partial());
        ev.into_iter()
            .enumerate()
            .map(|(i, e)| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(v["type"], e.event.as_str(), "event name matches data.type");
                assert_eq!(v["sequence_number"], i, "sequence numbers count up from 0");
                (e.event, v)
            })
            .collect()
    }

    #[test]
    fn stream_of_text_and_tool_calls_becomes_response_events() {
        let mut enc = ChunkEncoder::new("chatcmpl-9", 1, "gpt-x", true);
        let mut openai = BytesMut::new();
        enc.content(0, "Let me ", &mut openai);
        enc.content(0, "check.", &mut openai);
        enc.tool_call_start(0, 0, "call_a", "get_weather", &mut openai);
        enc.tool_call_args(0, 0, "{\"ci", &mut openai);
        enc.tool_call_args(0, 0, "ty\":\"Paris\"}", &mut openai);
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
        let mut r = ResponsesEncoder::new("req1", "asked", Echo::default());
        let mut out = BytesMut::new();
        for b in openai.chunks(5) {
            r.feed(b, &mut out);
        }
        r.finish(&mut out);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(ev[0].1["response"]["id"], "resp_req1");
        assert_eq!(ev[0].1["response"]["status"], "in_progress");
        assert_eq!(ev[0].1["response"]["model"], "gpt-x");
        assert_eq!(ev[6].1["text"], "Let me check.");
        assert_eq!(ev[9].1["item"]["call_id"], "call_a");
        assert_eq!(ev[9].1["output_index"], 1);
        assert_eq!(ev[12].1["output_index"], 2);
        assert_eq!(ev[14].1["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(ev[14].1["output_index"], 1);
        let done = &ev[18].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"].as_array().unwrap().len(), 3);
        assert_eq!(done["output"][0]["content"][0]["text"], "Let me check.");
        assert_eq!(done["output"][2]["name"], "get_time");
        assert_eq!(done["usage"]["input_tokens"], 20);
        assert_eq!(done["usage"]["total_tokens"], 27);
        let before = out.len();
        r.finish(&mut out);
        assert_eq!(out.len(), before);
    }

    #[test]
    fn length_stop_is_incomplete_and_errors_fail_the_response() {
        let mut enc = ChunkEncoder::new("c", 1, "m", true);
        let mut openai = BytesMut::new();
        enc.content(0, "ab", &mut openai);
        enc.finish_reason(0, "length", &mut openai);
        enc.end(&Usage::default(), &mut openai);
        let mut r = ResponsesEncoder::new("r", "m", Echo::default());
        let mut out = BytesMut::new();
        r.feed(&openai, &mut out);
        r.finish(&mut out);
        let ev = events(&out);
        let last = &ev[ev.len() - 1];
        assert_eq!(last.0, "response.incomplete");
        assert_eq!(
            last.1["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );

        let mut openai = BytesMut::new();
        let mut enc = ChunkEncoder::new("c", 1, "m", false);
        enc.content(0, "par", &mut openai);
        enc.error(
            "upstream fell over",
            "server_error",
            "upstream_error",
            &mut openai,
        );
        let mut r = ResponsesEncoder::new("r", "m", Echo::default());
        let mut out = BytesMut::new();
        r.feed(&openai, &mut out);
        r.feed(b"data: [DONE]\n\n", &mut out);
        r.finish(&mut out);
        let ev = events(&out);
        let last = &ev[ev.len() - 1];
        assert_eq!(last.0, "response.failed");
        assert_eq!(last.1["response"]["error"]["message"], "upstream fell over");
        assert!(ev.iter().all(|(n, _)| n != "response.completed"));
    }
}
