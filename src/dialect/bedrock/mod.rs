//! AWS Bedrock Converse / ConverseStream.
//!
//! `POST /model/{modelId}/converse` (JSON) and `/converse-stream` (binary
//! `application/vnd.amazon.eventstream` frames, see [`eventstream`]). Model ids contain
//! `:` and may be ARNs with `/`, so they are percent-encoded into one path segment.
//! Signing (SigV4 or Bedrock API key) happens afterwards in [`crate::providers::sigv4`].

pub mod eventstream;

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::common::{content_text, inline_image, parse_arguments, reject_n, stop_list};
use super::encode::finish_reason_from;
use super::{
    ChatRequest, ChunkEncoder, Dialect, DialectError, StreamTranslator, Target, Translated,
    UpstreamRequest, Usage,
};
use eventstream::{EventStreamDecoder, Message};

pub struct Bedrock;

fn image_format(mime: &str) -> Result<&'static str, DialectError> {
    match mime.to_ascii_lowercase().as_str() {
        "image/png" => Ok("png"),
        "image/jpeg" | "image/jpg" => Ok("jpeg"),
        "image/gif" => Ok("gif"),
        "image/webp" => Ok("webp"),
        other => Err(DialectError::unsupported(
            format!("Bedrock does not accept images of type {other} (png, jpeg, gif, webp)"),
            Some("messages"),
        )),
    }
}

fn user_blocks(content: Option<&Value>) -> Result<Vec<Value>, DialectError> {
    let mut blocks = Vec::new();
    match content {
        Some(Value::String(s)) if !s.is_empty() => blocks.push(json!({"text": s})),
        Some(Value::Array(parts)) => {
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | None => {
                        if let Some(t) = p
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            blocks.push(json!({"text": t}));
                        }
                    }
                    Some("image_url") => {
                        let (mime, data) = inline_image(p, "Bedrock")?;
                        blocks.push(json!({"image": {"format": image_format(mime)?, "source": {"bytes": data}}}));
                    }
                    Some(other) => {
                        return Err(DialectError::unsupported(
                            format!("content part type '{other}' is not supported by Bedrock"),
                            Some("messages"),
                        ))
                    }
                }
            }
        }
        _ => {}
    }
    Ok(blocks)
}

fn build_messages(req: &ChatRequest) -> Result<(Vec<Value>, Vec<Value>), DialectError> {
    let mut system = Vec::new();
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for m in req.messages() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, blocks) = match role {
            "system" | "developer" => {
                let text = content_text(m.get("content"));
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            "user" => ("user", user_blocks(m.get("content"))?),
            "assistant" => {
                let mut blocks = Vec::new();
                let text = content_text(m.get("content"));
                if !text.is_empty() {
                    blocks.push(json!({"text": text}));
                }
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let f = tc.get("function");
                    blocks.push(json!({"toolUse": {
                        "toolUseId": tc.get("id").and_then(Value::as_str).unwrap_or(""),
                        "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or(""),
                        "input": parse_arguments(f.and_then(|f| f.get("arguments")))?,
                    }}));
                }
                ("assistant", blocks)
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
                let text = content_text(m.get("content"));
                // No `status`: Bedrock accepts it only for Anthropic models.
                (
                    "user",
                    vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})],
                )
            }
            other => {
                return Err(DialectError::unsupported(
                    format!("message role '{other}' is not supported"),
                    Some("messages"),
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Converse wants alternating roles: tool results and the next user turn merge.
        match out.last_mut() {
            Some((r, b)) if r == role => b.extend(blocks),
            _ => out.push((role.to_string(), blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

fn tool_config(req: &ChatRequest, has_tool_history: bool) -> Result<Option<Value>, DialectError> {
    let tools = match req.body.get("tools").and_then(Value::as_array) {
        Some(t) if !t.is_empty() => t,
        _ => return Ok(None),
    };
    let choice = match req.body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"auto": {}})),
            "required" => Some(json!({"any": {}})),
            // Converse has no "none": drop the tools unless the history needs them declared.
            "none" if !has_tool_history => return Ok(None),
            "none" => None,
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
                        "tool_choice needs function.name",
                        Some("tool_choice"),
                    )
                })?;
            Some(json!({"tool": {"name": name}}))
        }
    };
    let mut specs = Vec::with_capacity(tools.len());
    for t in tools {
        let f = t.get("function").ok_or_else(|| {
            DialectError::unsupported("only function tools are supported", Some("tools"))
        })?;
        let mut spec = Map::new();
        spec.insert(
            "name".into(),
            f.get("name")
                .cloned()
                .unwrap_or(Value::String(String::new())),
        );
        if let Some(d) = f
            .get("description")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
        {
            spec.insert("description".into(), json!(d));
        }
        let schema = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        spec.insert("inputSchema".into(), json!({"json": schema}));
        specs.push(json!({"toolSpec": spec}));
    }
    let mut cfg = json!({"tools": specs});
    if let Some(c) = choice {
        cfg["toolChoice"] = c;
    }
    Ok(Some(cfg))
}

/// The Converse request body.
pub fn converse_body(req: &ChatRequest) -> Result<Value, DialectError> {
    let b = &req.body;
    reject_n(b, "Bedrock")?;
    let (mut system, messages) = build_messages(req)?;
    // Structured output: Converse has no JSON mode, so a forced tool carries the schema;
    // with tools of the request's own, the prompt asks for the format.
    let json_tool = super::forced_json_schema(b);
    if json_tool.is_none() {
        if let Some(instr) = super::anthropic::response_format_instruction(b.get("response_format"))
        {
            system.push(json!({"text": instr}));
        }
    }
    if messages.is_empty() {
        return Err(DialectError::unsupported(
            "Bedrock needs at least one user message",
            Some("messages"),
        ));
    }
    let has_tool_history = messages.iter().any(|m| {
        m["content"].as_array().is_some_and(|c| {
            c.iter()
                .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some())
        })
    });
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut inf = Map::new();
    if let Some(m) = b
        .get("max_completion_tokens")
        .or_else(|| b.get("max_tokens"))
        .and_then(Value::as_u64)
    {
        inf.insert("maxTokens".into(), json!(m));
    }
    if let Some(t) = b.get("temperature").filter(|v| v.is_number()) {
        inf.insert("temperature".into(), t.clone());
    }
    if let Some(p) = b.get("top_p").filter(|v| v.is_number()) {
        inf.insert("topP".into(), p.clone());
    }
    let stops = stop_list(b.get("stop"));
    if !stops.is_empty() {
        inf.insert("stopSequences".into(), Value::Array(stops));
    }
    if !inf.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inf));
    }
    if let Some(schema) = json_tool {
        // `any` with one tool forces it, and more Converse models accept `any` than `tool`.
        body.insert(
            "toolConfig".into(),
            json!({"tools": [{"toolSpec": {"name": super::JSON_TOOL,
                "description": super::JSON_TOOL_DESCRIPTION, "inputSchema": {"json": schema}}}],
                "toolChoice": {"any": {}}}),
        );
    } else if let Some(tc) = tool_config(req, has_tool_history)? {
        body.insert("toolConfig".into(), tc);
    }
    Ok(Value::Object(body))
}

/// `/model/{id}/converse[-stream]` with the id as one encoded segment.
pub fn converse_path(t: &Target, stream: bool) -> String {
    let mut id = String::with_capacity(t.model.len() + 8);
    crate::providers::sigv4::uri_encode(t.model, &mut id);
    let template = if stream {
        "/model/{model}/converse-stream"
    } else {
        "/model/{model}/converse"
    };
    t.profile.path_for(t.endpoint, template, &id)
}

fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (input, read, write) = (
        n("inputTokens"),
        n("cacheReadInputTokens"),
        n("cacheWriteInputTokens"),
    );
    Usage {
        // Bedrock's inputTokens excludes cache reads and writes; OpenAI's prompt_tokens is the whole input.
        prompt_tokens: input + read + write,
        completion_tokens: n("outputTokens"),
        cached_tokens: read,
        cache_creation_tokens: write,
        reasoning_tokens: 0,
        reported: true,
    }
}

impl Dialect for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = converse_body(req)?;
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.push((
            "accept".into(),
            if t.stream {
                "application/vnd.amazon.eventstream"
            } else {
                "application/json"
            }
            .into(),
        ));
        Ok(UpstreamRequest {
            method: "POST",
            path: converse_path(t, t.stream),
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
        let json_mode = super::forced_json_schema(&req.body).is_some();
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        let content = v
            .pointer("/output/message/content")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                DialectError::Malformed("Converse response has no output.message.content".into())
            })?;
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut tool_calls = Vec::new();
        let mut json_answer: Option<String> = None;
        for block in content {
            if let Some(s) = block.get("text").and_then(Value::as_str) {
                text.push_str(s);
            } else if let Some(tu) = block.get("toolUse").filter(|tu| {
                json_mode && tu.get("name").and_then(Value::as_str) == Some(super::JSON_TOOL)
            }) {
                // The forced structured-output tool: its input alone is the answer.
                let args = tu.get("input").cloned().unwrap_or_else(|| json!({}));
                json_answer = Some(args.to_string());
            } else if let Some(tu) = block.get("toolUse") {
                let args = tu.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": tu.get("toolUseId").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": tu.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": serde_json::to_string(&args).unwrap_or_else(|_| "{}".into()),
                    }
                }));
            } else if let Some(s) = block
                .pointer("/reasoningContent/reasoningText/text")
                .and_then(Value::as_str)
            {
                reasoning.push_str(s);
            }
        }
        if let Some(j) = json_answer {
            text = j;
        }
        let stop = v
            .get("stopReason")
            .and_then(Value::as_str)
            .unwrap_or("end_turn");
        let finish = if tool_calls.is_empty() {
            super::anthropic::json_finish(json_mode, finish_reason_from(stop))
        } else {
            "tool_calls"
        };
        let usage = v.get("usage").map(usage_from).unwrap_or_default();
        super::encode::single_choice_completion(t, text, tool_calls, reasoning, finish, usage)
    }

    /// Bedrock error bodies are `{"message": ...}`; 424 (ModelErrorException: the model
    /// failed to process) is worth another candidate, unlike other 4xx.
    fn classify_error(&self, status: u16, body: &[u8]) -> super::UpstreamFailure {
        let mut f = super::default_classify(status, body);
        if status == 424 {
            f.retryable = true;
            f.code = "upstream_error";
        }
        f
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        let mut s = BedrockStream::new(t.request_id, t.created, t.model, req.include_usage);
        s.json_mode = super::forced_json_schema(&req.body).is_some();
        Box::new(s)
    }
}

/// ConverseStream (event-stream frames) → OpenAI chunks.
pub struct BedrockStream {
    decoder: EventStreamDecoder,
    messages: Vec<Message>,
    enc: ChunkEncoder,
    usage: Usage,
    /// Bedrock contentBlockIndex → OpenAI tool_calls index.
    tools: HashMap<u64, u32>,
    started: bool,
    saw_stop: bool,
    produced: bool,
    /// The request forced the structured-output tool: its input streams as content.
    pub json_mode: bool,
    json_block: Option<u64>,
}

impl BedrockStream {
    pub fn new(request_id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        BedrockStream {
            decoder: EventStreamDecoder::new(),
            messages: Vec::with_capacity(4),
            enc: ChunkEncoder::new(request_id, created, model, include_usage),
            usage: Usage::default(),
            tools: HashMap::new(),
            started: false,
            saw_stop: false,
            produced: false,
            json_mode: false,
            json_block: None,
        }
    }

    fn ensure_started(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.enc.start(0, out);
            self.started = true;
        }
    }

    fn tool_index(&mut self, block: u64) -> u32 {
        let next = self.tools.len() as u32;
        *self.tools.entry(block).or_insert(next)
    }

    fn fail(
        &mut self,
        err: DialectError,
        kind: &str,
        code: &str,
        out: &mut BytesMut,
    ) -> DialectError {
        self.enc.error(&err.to_string(), kind, code, out);
        err
    }

    fn handle(&mut self, msg: &Message, out: &mut BytesMut) -> Result<(), DialectError> {
        match msg.header_str(":message-type") {
            Some("event") => {}
            Some("exception") => {
                let ty = msg
                    .header_str(":exception-type")
                    .unwrap_or("exception")
                    .to_string();
                let text = serde_json::from_slice::<Value>(&msg.payload)
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .or_else(|| v.get("Message"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&msg.payload)
                            .chars()
                            .take(500)
                            .collect()
                    });
                let (kind, code) = match ty.as_str() {
                    "throttlingException" => ("rate_limit_error", "rate_limit_exceeded"),
                    "validationException" => ("invalid_request_error", "upstream_rejected"),
                    "serviceUnavailableException" => ("api_error", "overloaded"),
                    _ => ("api_error", "upstream_error"),
                };
                let err = DialectError::Upstream(format!("Bedrock {ty}: {text}"));
                self.enc
                    .error(&format!("Bedrock {ty}: {text}"), kind, code, out);
                return Err(err);
            }
            Some("error") => {
                let code = msg.header_str(":error-code").unwrap_or("error").to_string();
                let text = msg.header_str(":error-message").unwrap_or("").to_string();
                let m = format!("Bedrock {code}: {text}");
                self.enc.error(&m, "api_error", "upstream_error", out);
                return Err(DialectError::Upstream(m));
            }
            _ => {
                let e = DialectError::Malformed(
                    "event-stream message without a known :message-type".into(),
                );
                return Err(self.fail(e, "api_error", "upstream_error", out));
            }
        }
        let event = msg.header_str(":event-type").unwrap_or("");
        let v: Value = match serde_json::from_slice(&msg.payload) {
            Ok(v) => v,
            Err(e) => {
                let e = DialectError::Malformed(format!("{event} payload is not JSON: {e}"));
                return Err(self.fail(e, "api_error", "upstream_error", out));
            }
        };
        match event {
            "messageStart" => self.ensure_started(out),
            "contentBlockStart" => {
                if let Some(tu) = v.pointer("/start/toolUse") {
                    self.ensure_started(out);
                    let block = v
                        .get("contentBlockIndex")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if self.json_mode
                        && tu.get("name").and_then(Value::as_str) == Some(super::JSON_TOOL)
                    {
                        self.json_block = Some(block);
                        self.produced = true;
                        return Ok(());
                    }
                    let ti = self.tool_index(block);
                    let id = tu.get("toolUseId").and_then(Value::as_str).unwrap_or("");
                    let name = tu.get("name").and_then(Value::as_str).unwrap_or("");
                    self.enc.tool_call_start(0, ti, id, name, out);
                    self.produced = true;
                }
            }
            "contentBlockDelta" => {
                self.ensure_started(out);
                let block = v
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let d = v.get("delta").unwrap_or(&Value::Null);
                if let Some(s) = d.get("text").and_then(Value::as_str) {
                    self.produced |= !s.is_empty();
                    self.enc.content(0, s, out);
                } else if let (Some(s), true) = (
                    d.pointer("/toolUse/input").and_then(Value::as_str),
                    self.json_block == Some(block),
                ) {
                    if !s.is_empty() {
                        self.enc.content(0, s, out);
                    }
                } else if let Some(s) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    if !self.tools.contains_key(&block) {
                        return Err(self.fail(
                            DialectError::Malformed(
                                "toolUse delta before its contentBlockStart".into(),
                            ),
                            "api_error",
                            "upstream_error",
                            out,
                        ));
                    }
                    let ti = self.tool_index(block);
                    self.enc.tool_call_args(0, ti, s, out);
                } else if let Some(s) = d.pointer("/reasoningContent/text").and_then(Value::as_str)
                {
                    self.produced |= !s.is_empty();
                    self.enc.reasoning(0, s, out);
                }
            }
            "messageStop" => {
                self.ensure_started(out);
                let stop = v
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                let reason = if self.tools.is_empty() {
                    super::anthropic::json_finish(
                        self.json_block.is_some(),
                        finish_reason_from(stop),
                    )
                } else {
                    "tool_calls"
                };
                self.enc.finish_reason(0, reason, out);
                self.saw_stop = true;
            }
            "metadata" => {
                if let Some(u) = v.get("usage") {
                    self.usage = usage_from(u);
                }
            }
            _ => {} // contentBlockStop and future event types carry nothing we need
        }
        Ok(())
    }
}

impl StreamTranslator for BedrockStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        // Frames decoded before a corrupt one are still translated, so the output does
        // not depend on where the upstream's chunks happened to end.
        let decoded = self.decoder.feed(input, &mut self.messages);
        let msgs = std::mem::take(&mut self.messages);
        let mut result = Ok(());
        for m in &msgs {
            if self.enc.is_done() {
                break;
            }
            if let Err(e) = self.handle(m, out) {
                result = Err(e);
                break;
            }
        }
        self.messages = msgs;
        self.messages.clear();
        match decoded {
            Err(e) if result.is_ok() && !self.enc.is_done() => {
                Err(self.fail(e, "api_error", "upstream_error", out))
            }
            _ => result,
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        if self.enc.is_done() {
            return Ok(());
        }
        if self.decoder.has_partial() || !self.saw_stop {
            let msg = if self.decoder.has_partial() {
                "Bedrock stream ended inside an event-stream frame"
            } else {
                "Bedrock stream ended before messageStop"
            };
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
pub(crate) mod tests;
