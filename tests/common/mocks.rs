//! Mock replies for the native provider APIs, following their real wire formats
//! (including their failure modes). Used by `tests/dialects_http.rs` and
//! `tests/sdk_e2e.rs` as `#[path = "common/mocks.rs"] mod mocks;` next to `mod common;`.
//!
//! Every chat mock answers any model: plain text "Hello!" (11 prompt / 3 completion
//! tokens), or, when the request carries tools, one `get_weather({"city":"Paris"})`
//! call (20 prompt / 9 completion tokens). A request whose body contains
//! [`MIDSTREAM_ERROR`] gets a stream that starts fine and then reports an error after
//! the 200, as the real APIs do.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use loopgate::dialect::bedrock::eventstream::{
    encode_frame, event_frame, exception_frame, HeaderValue,
};
use serde_json::{json, Value};

use crate::common::{sse, Received, Reply};

/// Put this text in a prompt to get a stream that fails after the 200.
pub const MIDSTREAM_ERROR: &str = "PLEASE_FAIL_MIDSTREAM";
/// The text every mock answers with, and how it is split in streams.
pub const TEXT: &str = "Hello!";
pub const PIECES: [&str; 3] = ["Hel", "lo", "!"];
pub const TEXT_USAGE: (u64, u64) = (11, 3);
pub const TOOL_USAGE: (u64, u64) = (20, 9);
/// The streamed tool arguments, in fragments that are not JSON on their own.
pub const ARG_PIECES: [&str; 3] = ["{\"ci", "ty\": \"Par", "is\"}"];

fn wants_error(r: &Received) -> bool {
    String::from_utf8_lossy(&r.body).contains(MIDSTREAM_ERROR)
}

fn has_tools(r: &Received) -> bool {
    let b = r.json();
    // OpenAI / Anthropic / Cohere / Ollama `tools`, Bedrock `toolConfig`.
    b["tools"].as_array().is_some_and(|t| !t.is_empty()) || b.get("toolConfig").is_some()
}

fn parts(v: Vec<Vec<u8>>) -> Vec<(Duration, Vec<u8>)> {
    v.into_iter().map(|p| (Duration::ZERO, p)).collect()
}

fn named_sse(event: &str, data: Value) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

// ---------------------------------------------------------------- OpenAI extras

/// OpenAI `/embeddings`: one vector per input, honouring `encoding_format: "base64"`
/// (the default of the official SDKs) and `dimensions`.
pub fn openai_embeddings_json(r: &Received) -> String {
    let b = r.json();
    let inputs: Vec<Value> = match &b["input"] {
        Value::Array(a) => a.clone(),
        v => vec![v.clone()],
    };
    let dims = b["dimensions"].as_u64().unwrap_or(4) as usize;
    let base64 = b["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let v: Vec<f32> = (0..dims)
                .map(|k| (i as f32 + 1.0) * 0.25 + k as f32 * 0.125)
                .collect();
            let emb = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    json!({"object": "list", "data": data, "model": b["model"], "usage": {"prompt_tokens": 5 * inputs.len(), "total_tokens": 5 * inputs.len()}})
        .to_string()
}

/// OpenAI `/images/generations`.
pub fn openai_images_json(r: &Received) -> String {
    let n = r.json()["n"].as_u64().unwrap_or(1);
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"b64_json": "iVBORw0KGgo=", "revised_prompt": format!("image {i}")}))
        .collect();
    let mut v = json!({"created": 1700000000u64, "data": data});
    if r.json()["model"]
        .as_str()
        .is_some_and(|m| m.starts_with("gpt-image"))
    {
        // gpt-image models report token usage.
        v["usage"] = json!({"input_tokens": 12, "output_tokens": 272 * n, "total_tokens": 12 + 272 * n,
            "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}});
    }
    v.to_string()
}

/// OpenAI-compatible tool call, JSON and stream.
fn openai_tool_reply(model: &str, stream: bool, usage: bool) -> Reply {
    if !stream {
        return Reply::Json(
            200,
            vec![],
            json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1700000000u64, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                    "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": TOOL_USAGE.0, "completion_tokens": TOOL_USAGE.1, "total_tokens": TOOL_USAGE.0 + TOOL_USAGE.1}})
            .to_string(),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000u64, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if usage {
            c["usage"] = Value::Null;
        }
        sse(c)
    };
    let mut v = vec![chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        Value::Null,
    )];
    for a in ARG_PIECES {
        v.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
            Value::Null,
        ));
    }
    v.push(chunk(json!({}), json!("tool_calls")));
    if usage {
        v.push(sse(json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000u64, "model": model, "choices": [],
            "usage": {"prompt_tokens": TOOL_USAGE.0, "completion_tokens": TOOL_USAGE.1, "total_tokens": TOOL_USAGE.0 + TOOL_USAGE.1}})));
    }
    v.push(b"data: [DONE]\n\n".to_vec());
    Reply::Chunks(200, "text/event-stream".into(), parts(v))
}

/// A full OpenAI-compatible API: chat (text, tools, streams), `/embeddings`,
/// `/images/generations`, `/models`.
pub fn openai_full() -> Reply {
    let chat = crate::common::openai_like();
    Reply::Dynamic(Arc::new(move |r: &Received| {
        if r.path.ends_with("/embeddings") {
            return Reply::Json(200, vec![], openai_embeddings_json(r));
        }
        if r.path.ends_with("/images/generations") {
            return Reply::Json(200, vec![], openai_images_json(r));
        }
        if has_tools(r) {
            let b = r.json();
            let model = b["model"].as_str().unwrap_or("m").to_string();
            let usage = b["stream_options"]["include_usage"].as_bool() == Some(true);
            return openai_tool_reply(&model, b["stream"].as_bool() == Some(true), usage);
        }
        chat.clone()
    }))
}

// ---------------------------------------------------------------- Anthropic

fn anthropic_message(model: &str, content: Value, stop: &str, usage: (u64, u64)) -> Value {
    json!({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": usage.0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": usage.1}})
}

/// Anthropic's SSE stream for a text or tool answer, `ping` included; with `error`,
/// an `overloaded_error` event arrives after the first delta (as the API does).
pub fn anthropic_stream(model: &str, tools: bool, error: bool) -> Vec<Vec<u8>> {
    let usage = if tools { TOOL_USAGE } else { TEXT_USAGE };
    let mut start = anthropic_message(model, json!([]), "", (usage.0, 1));
    start["stop_reason"] = Value::Null;
    let mut v = vec![named_sse(
        "message_start",
        json!({"type": "message_start", "message": start}),
    )];
    // Index of the last content block (tool answers start with a text block, as Claude does).
    let mut last_block = 0;
    if tools {
        v.push(named_sse("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        v.push(named_sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}})));
        v.push(named_sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        v.push(named_sse("content_block_start", json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {}}})));
        v.push(named_sse("ping", json!({"type": "ping"})));
        v.push(named_sse("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}})));
        for a in ARG_PIECES {
            v.push(named_sse("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": a}})));
        }
        last_block = 1;
    } else {
        v.push(named_sse("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
        v.push(named_sse("ping", json!({"type": "ping"})));
        for (i, p) in PIECES.iter().enumerate() {
            v.push(named_sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
            if error && i == 0 {
                v.push(named_sse("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
                return v;
            }
        }
    }
    v.push(named_sse(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": last_block}),
    ));
    v.push(named_sse("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null},
        "usage": {"output_tokens": usage.1}})));
    v.push(named_sse("message_stop", json!({"type": "message_stop"})));
    v
}

/// The stream of a forced tool call: the tool_use block only, arguments in fragments.
pub fn anthropic_forced_stream(model: &str, name: &str) -> Vec<Vec<u8>> {
    let mut start = anthropic_message(model, json!([]), "", (TOOL_USAGE.0, 1));
    start["stop_reason"] = Value::Null;
    let mut v = vec![named_sse(
        "message_start",
        json!({"type": "message_start", "message": start}),
    )];
    v.push(named_sse(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "tool_use", "id": "toolu_forced01", "name": name, "input": {}}}),
    ));
    v.push(named_sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}})));
    for a in ARG_PIECES {
        v.push(named_sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": a}})));
    }
    v.push(named_sse(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    v.push(named_sse("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": TOOL_USAGE.1}})));
    v.push(named_sse("message_stop", json!({"type": "message_stop"})));
    v
}

/// Anthropic Messages (`/v1/messages`), also Claude on Vertex (`:rawPredict`,
/// `:streamRawPredict`, where the body has no `model`).
pub fn anthropic_like() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let b = r.json();
        let model = b["model"]
            .as_str()
            .unwrap_or("claude-sonnet-4-5")
            .to_string();
        let tools = has_tools(r);
        let stream = b["stream"].as_bool() == Some(true) || r.path.contains(":streamRawPredict");
        // `tool_choice: {"type": "tool"}`: Claude answers with that tool's call alone.
        if let Some(name) = b["tool_choice"]["name"]
            .as_str()
            .filter(|_| b["tool_choice"]["type"] == "tool")
        {
            if stream {
                return Reply::Chunks(
                    200,
                    "text/event-stream; charset=utf-8".into(),
                    parts(anthropic_forced_stream(&model, name)),
                );
            }
            let msg = anthropic_message(
                &model,
                json!([{"type": "tool_use", "id": "toolu_forced01", "name": name, "input": {"city": "Paris"}}]),
                "tool_use",
                TOOL_USAGE,
            );
            return Reply::Json(200, vec![], msg.to_string());
        }
        if stream {
            return Reply::Chunks(
                200,
                "text/event-stream; charset=utf-8".into(),
                parts(anthropic_stream(&model, tools, wants_error(r))),
            );
        }
        let msg = if tools {
            anthropic_message(
                &model,
                json!([{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}}]),
                "tool_use",
                TOOL_USAGE,
            )
        } else {
            anthropic_message(
                &model,
                json!([{"type": "text", "text": TEXT}]),
                "end_turn",
                TEXT_USAGE,
            )
        };
        Reply::Json(
            200,
            vec![("request-id".into(), "req_018EeWyXxfu5pfWkrYcMdjWG".into())],
            msg.to_string(),
        )
    }))
}

/// Anthropic's 529 (overloaded).
pub fn anthropic_overloaded() -> Reply {
    Reply::Json(
        529,
        vec![],
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
            .to_string(),
    )
}

/// Anthropic's 429 with `retry-after`.
pub fn anthropic_rate_limited(retry_after: &str) -> Reply {
    Reply::Json(
        429,
        vec![("retry-after".into(), retry_after.into()), ("anthropic-ratelimit-requests-remaining".into(), "0".into())],
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}).to_string(),
    )
}

// ---------------------------------------------------------------- Gemini / Vertex Gemini

fn gemini_usage(u: (u64, u64)) -> Value {
    json!({"promptTokenCount": u.0, "candidatesTokenCount": u.1, "totalTokenCount": u.0 + u.1,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.0}]})
}

fn gemini_response(model: &str, parts: Value, finish: Option<&str>, usage: Value) -> Value {
    let mut cand = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(f) = finish {
        cand["finishReason"] = json!(f);
    }
    json!({"candidates": [cand], "usageMetadata": usage, "modelVersion": model, "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"})
}

/// A Gemini stream: whole `GenerateContentResponse` objects as SSE, separated by
/// `\r\n\r\n` as Google sends them; `finishReason: STOP` even for function calls.
pub fn gemini_stream(model: &str, tools: bool, error: bool) -> Vec<Vec<u8>> {
    let ev = |v: Value| format!("data: {v}\r\n\r\n").into_bytes();
    if tools {
        return vec![ev(gemini_response(
            model,
            json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]),
            Some("STOP"),
            gemini_usage(TOOL_USAGE),
        ))];
    }
    let mut v = Vec::new();
    for (i, p) in PIECES.iter().enumerate() {
        let last = i == PIECES.len() - 1;
        // Intermediate chunks carry prompt tokens only; the last the totals.
        let usage = if last {
            gemini_usage(TEXT_USAGE)
        } else {
            json!({"promptTokenCount": TEXT_USAGE.0, "totalTokenCount": TEXT_USAGE.0})
        };
        v.push(ev(gemini_response(
            model,
            json!([{"text": p}]),
            last.then_some("STOP"),
            usage,
        )));
        if error && i == 0 {
            // Google reports a failure inside the stream as an error object.
            v.push(ev(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
            return v;
        }
    }
    v
}

/// Gemini API and Vertex Gemini: `:generateContent`, `:streamGenerateContent?alt=sse`,
/// `:batchEmbedContents` (Gemini API) and `:predict` (Vertex embeddings).
pub fn gemini_like() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let b = r.json();
        let model = r
            .path
            .split("/models/")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .unwrap_or("gemini")
            .to_string();
        if r.path.contains(":batchEmbedContents") {
            let n = b["requests"].as_array().map_or(0, Vec::len);
            let embs: Vec<Value> = (0..n)
                .map(|i| json!({"values": [0.5 + i as f64, -0.25, 0.125]}))
                .collect();
            return Reply::Json(200, vec![], json!({"embeddings": embs}).to_string());
        }
        if r.path.contains(":predict") {
            let n = b["instances"].as_array().map_or(0, Vec::len);
            let preds: Vec<Value> = (0..n)
                .map(|i| json!({"embeddings": {"values": [0.5 + i as f64, -0.25, 0.125], "statistics": {"token_count": 4, "truncated": false}}}))
                .collect();
            return Reply::Json(
                200,
                vec![],
                json!({"predictions": preds, "metadata": {"billableCharacterCount": 20}})
                    .to_string(),
            );
        }
        let tools = b["tools"].as_array().is_some_and(|t| !t.is_empty());
        if r.path.contains(":streamGenerateContent") {
            let events = gemini_stream(&model, tools, wants_error(r));
            if !r.path.contains("alt=sse") {
                // Without alt=sse Google streams one JSON array.
                let objs: Vec<Value> = events
                    .iter()
                    .filter_map(|e| {
                        serde_json::from_slice(
                            String::from_utf8_lossy(e)
                                .trim()
                                .trim_start_matches("data: ")
                                .as_bytes(),
                        )
                        .ok()
                    })
                    .collect();
                return Reply::Json(200, vec![], Value::Array(objs).to_string());
            }
            return Reply::Chunks(200, "text/event-stream".into(), parts(events));
        }
        let resp = if b["generationConfig"]["responseMimeType"] == "application/json" {
            // JSON mode: the answer is the JSON text.
            gemini_response(
                &model,
                json!([{"text": "{\"city\": \"Paris\"}"}]),
                Some("STOP"),
                gemini_usage(TEXT_USAGE),
            )
        } else if tools {
            gemini_response(
                &model,
                json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]),
                Some("STOP"),
                gemini_usage(TOOL_USAGE),
            )
        } else {
            gemini_response(
                &model,
                json!([{"text": TEXT}]),
                Some("STOP"),
                gemini_usage(TEXT_USAGE),
            )
        };
        Reply::Json(200, vec![], resp.to_string())
    }))
}

/// Gemini's 429 (quota), with the RetryInfo detail Google sends.
pub fn gemini_exhausted() -> Reply {
    Reply::Json(
        429,
        vec![],
        json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]}})
        .to_string(),
    )
}

/// Google's OAuth2 token endpoint (jwt-bearer grant).
pub fn google_token_endpoint() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let form = String::from_utf8_lossy(&r.body).to_string();
        if r.method != "POST"
            || !form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            || !form.contains("assertion=")
        {
            return Reply::Json(
                400,
                vec![],
                json!({"error": "invalid_grant", "error_description": "bad request"}).to_string(),
            );
        }
        Reply::Json(200, vec![], json!({"access_token": "ya29.test-access-token", "expires_in": 3599, "token_type": "Bearer"}).to_string())
    }))
}

// ---------------------------------------------------------------- Bedrock

/// Real Bedrock pads event payloads with a random `p` field.
fn bedrock_event(kind: &str, mut payload: Value) -> Vec<u8> {
    payload["p"] = json!("abcdefghijklmnopqrstu");
    event_frame(kind, payload.to_string().as_bytes())
}

fn bedrock_usage(u: (u64, u64)) -> Value {
    json!({"inputTokens": u.0, "outputTokens": u.1, "totalTokens": u.0 + u.1})
}

/// How a Bedrock stream should go wrong.
#[derive(Clone, Copy, PartialEq)]
pub enum BedrockFault {
    None,
    /// A `modelStreamErrorException` frame after the first delta.
    Exception,
    /// A frame whose message CRC is wrong after the first delta.
    BadCrc,
}

pub fn bedrock_stream(tools: bool, fault: BedrockFault) -> Vec<Vec<u8>> {
    let usage = if tools { TOOL_USAGE } else { TEXT_USAGE };
    let mut v = vec![bedrock_event("messageStart", json!({"role": "assistant"}))];
    // Index of the last content block (tool answers start with a text block).
    let mut last_block = 0;
    if tools {
        v.push(bedrock_event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Let me check."}}),
        ));
        v.push(bedrock_event(
            "contentBlockStop",
            json!({"contentBlockIndex": 0}),
        ));
        v.push(bedrock_event("contentBlockStart", json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather"}}})));
        for a in ARG_PIECES {
            v.push(bedrock_event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": a}}}),
            ));
        }
        last_block = 1;
    } else {
        for (i, p) in PIECES.iter().enumerate() {
            v.push(bedrock_event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": p}}),
            ));
            if i == 0 {
                match fault {
                    BedrockFault::None => {}
                    BedrockFault::Exception => {
                        v.push(exception_frame(
                            "modelStreamErrorException",
                            "The model stream failed: internal error",
                        ));
                        return v;
                    }
                    BedrockFault::BadCrc => {
                        let mut f = bedrock_event(
                            "contentBlockDelta",
                            json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
                        );
                        let n = f.len();
                        f[n - 1] ^= 0xff;
                        v.push(f);
                        return v;
                    }
                }
            }
        }
    }
    v.push(bedrock_event(
        "contentBlockStop",
        json!({"contentBlockIndex": last_block}),
    ));
    v.push(bedrock_event(
        "messageStop",
        json!({"stopReason": if tools { "tool_use" } else { "end_turn" }}),
    ));
    v.push(bedrock_event(
        "metadata",
        json!({"usage": bedrock_usage(usage), "metrics": {"latencyMs": 312}}),
    ));
    v
}

/// Bedrock Converse (`/model/{id}/converse`) and ConverseStream (`/converse-stream`, binary
/// event stream). The body containing [`MIDSTREAM_ERROR`] gets an exception frame;
/// `PLEASE_BAD_CRC` a corrupt frame.
pub fn bedrock_like() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let tools = has_tools(r);
        // One declared tool (other than the shared `get_weather`) with `toolChoice` any/tool:
        // the model answers with that tool's call alone.
        let b = r.json();
        let specs = b["toolConfig"]["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let forced = (specs.len() == 1
            && (b["toolConfig"]["toolChoice"].get("any").is_some()
                || b["toolConfig"]["toolChoice"].get("tool").is_some()))
        .then(|| {
            specs[0]["toolSpec"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .filter(|n| n != "get_weather");
        if let Some(name) = forced {
            if r.path.ends_with("/converse-stream") {
                let mut v = vec![bedrock_event("messageStart", json!({"role": "assistant"}))];
                v.push(bedrock_event("contentBlockStart", json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_forced01", "name": name}}})));
                for a in ARG_PIECES {
                    v.push(bedrock_event(
                        "contentBlockDelta",
                        json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": a}}}),
                    ));
                }
                v.push(bedrock_event(
                    "contentBlockStop",
                    json!({"contentBlockIndex": 0}),
                ));
                v.push(bedrock_event(
                    "messageStop",
                    json!({"stopReason": "tool_use"}),
                ));
                v.push(bedrock_event(
                    "metadata",
                    json!({"usage": bedrock_usage(TOOL_USAGE), "metrics": {"latencyMs": 312}}),
                ));
                return Reply::Chunks(200, "application/vnd.amazon.eventstream".into(), parts(v));
            }
            return Reply::Json(
                200,
                vec![],
                json!({"output": {"message": {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "tooluse_forced01", "name": name, "input": {"city": "Paris"}}}]}},
                    "stopReason": "tool_use", "usage": bedrock_usage(TOOL_USAGE), "metrics": {"latencyMs": 312}})
                .to_string(),
            );
        }
        if r.path.ends_with("/converse-stream") {
            let fault = if wants_error(r) {
                BedrockFault::Exception
            } else if String::from_utf8_lossy(&r.body).contains("PLEASE_BAD_CRC") {
                BedrockFault::BadCrc
            } else {
                BedrockFault::None
            };
            return Reply::Chunks(
                200,
                "application/vnd.amazon.eventstream".into(),
                parts(bedrock_stream(tools, fault)),
            );
        }
        let (content, stop, usage) = if tools {
            (
                json!([{"text": "Let me check."}, {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather", "input": {"city": "Paris"}}}]),
                "tool_use",
                TOOL_USAGE,
            )
        } else {
            (json!([{"text": TEXT}]), "end_turn", TEXT_USAGE)
        };
        Reply::Json(
            200,
            vec![("x-amzn-requestid".into(), "7b1a6e5e-2a4b-4e0e-9a3f-1d2c3b4a5f6e".into())],
            json!({"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                "usage": bedrock_usage(usage), "metrics": {"latencyMs": 312}})
            .to_string(),
        )
    }))
}

/// Bedrock's throttling error.
pub fn bedrock_throttled() -> Reply {
    Reply::Json(
        429,
        vec![(
            "x-amzn-errortype".into(),
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/".into(),
        )],
        json!({"message": "Too many requests, please wait before trying again."}).to_string(),
    )
}

/// Headers of an encoded frame, for a hand-made frame in a test.
pub fn raw_frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let h: Vec<(&str, HeaderValue)> = headers
        .iter()
        .map(|(k, v)| (*k, HeaderValue::String((*v).to_string())))
        .collect();
    encode_frame(&h, payload)
}

// ---------------------------------------------------------------- Cohere v2

fn cohere_usage(u: (u64, u64)) -> Value {
    json!({"billed_units": {"input_tokens": u.0, "output_tokens": u.1}, "tokens": {"input_tokens": u.0 + 200, "output_tokens": u.1}})
}

pub fn cohere_stream(tools: bool, error: bool) -> Vec<Vec<u8>> {
    let id = "c14c80c3-18eb-4519-9460-6c92edd8cfb4";
    let mut v = vec![named_sse(
        "message-start",
        json!({"id": id, "type": "message-start",
        "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}),
    )];
    if tools {
        for p in ["I will look", " up the weather."] {
            v.push(named_sse(
                "tool-plan-delta",
                json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": p}}}),
            ));
        }
        v.push(named_sse("tool-call-start", json!({"type": "tool-call-start", "index": 0,
            "delta": {"message": {"tool_calls": {"id": "get_weather_4fq0jxmc1ktb", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}})));
        for a in ARG_PIECES {
            v.push(named_sse("tool-call-delta", json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": a}}}}})));
        }
        v.push(named_sse(
            "tool-call-end",
            json!({"type": "tool-call-end", "index": 0}),
        ));
    } else {
        v.push(named_sse("content-start", json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})));
        for (i, p) in PIECES.iter().enumerate() {
            v.push(named_sse("content-delta", json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}})));
            if error && i == 0 {
                // Cohere ends a failed generation with finish_reason ERROR.
                v.push(named_sse("message-end", json!({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal server error, this has been reported to our developers"}})));
                return v;
            }
        }
        v.push(named_sse(
            "content-end",
            json!({"type": "content-end", "index": 0}),
        ));
    }
    v.push(named_sse("message-end", json!({"type": "message-end",
        "delta": {"finish_reason": if tools { "TOOL_CALL" } else { "COMPLETE" }, "usage": cohere_usage(if tools { TOOL_USAGE } else { TEXT_USAGE })}})));
    v
}

/// Cohere v2 `/v2/chat` (JSON and SSE) and `/v2/embed`.
pub fn cohere_like() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let b = r.json();
        if r.path.ends_with("/v2/embed") {
            let texts = b["texts"].as_array().cloned().unwrap_or_default();
            let vecs: Vec<Value> = (0..texts.len())
                .map(|i| json!([0.5 + i as f64, -0.25, 0.125]))
                .collect();
            return Reply::Json(
                200,
                vec![],
                json!({"id": "da6e531f-54c6-4a73-bf92-f60566d8d753", "embeddings": {"float": vecs}, "texts": texts,
                    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4 * texts.len()}}, "response_type": "embeddings_by_type"})
                .to_string(),
            );
        }
        let tools = has_tools(r);
        if b["stream"].as_bool() == Some(true) {
            return Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts(cohere_stream(tools, wants_error(r))),
            );
        }
        let (message, finish, usage) = if tools {
            (
                json!({"role": "assistant", "tool_plan": "I will look up the weather.",
                "tool_calls": [{"id": "get_weather_4fq0jxmc1ktb", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
                "TOOL_CALL",
                TOOL_USAGE,
            )
        } else {
            (
                json!({"role": "assistant", "content": [{"type": "text", "text": TEXT}]}),
                "COMPLETE",
                TEXT_USAGE,
            )
        };
        Reply::Json(200, vec![], json!({"id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4", "finish_reason": finish, "message": message, "usage": cohere_usage(usage)}).to_string())
    }))
}

// ---------------------------------------------------------------- Ollama native

fn ollama_line(model: &str, message: Value, done: bool, usage: (u64, u64)) -> Vec<u8> {
    let mut v = json!({"model": model, "created_at": "2025-01-01T00:00:00.000000Z", "message": message, "done": done});
    if done {
        for (k, val) in [
            ("done_reason", json!("stop")),
            ("total_duration", json!(4883583458u64)),
            ("load_duration", json!(1334875u64)),
            ("prompt_eval_count", json!(usage.0)),
            ("prompt_eval_duration", json!(342546000u64)),
            ("eval_count", json!(usage.1)),
            ("eval_duration", json!(4535599000u64)),
        ] {
            v[k] = val;
        }
    }
    format!("{v}\n").into_bytes()
}

/// Ollama `/api/chat` (NDJSON; streams unless `"stream": false`) and `/api/embed`.
pub fn ollama_like() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let b = r.json();
        let model = b["model"].as_str().unwrap_or("llama3.2").to_string();
        if r.path.ends_with("/api/embed") {
            let n = match &b["input"] {
                Value::Array(a) => a.len(),
                _ => 1,
            };
            let embs: Vec<Value> = (0..n)
                .map(|i| json!([0.5 + i as f64, -0.25, 0.125]))
                .collect();
            return Reply::Json(200, vec![], json!({"model": model, "embeddings": embs, "total_duration": 14143917u64, "load_duration": 1019500u64, "prompt_eval_count": 3 * n}).to_string());
        }
        let tools = has_tools(r);
        let call = json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]});
        let stream = b["stream"].as_bool() != Some(false);
        if !stream {
            let (msg, usage) = if tools {
                (call, TOOL_USAGE)
            } else {
                (json!({"role": "assistant", "content": TEXT}), TEXT_USAGE)
            };
            let line = ollama_line(&model, msg, true, usage);
            return Reply::Json(
                200,
                vec![],
                String::from_utf8_lossy(&line).trim().to_string(),
            );
        }
        let mut v = Vec::new();
        if tools {
            // Ollama sends a whole tool call in one line, arguments as an object.
            v.push(ollama_line(&model, call, false, TOOL_USAGE));
            v.push(ollama_line(
                &model,
                json!({"role": "assistant", "content": ""}),
                true,
                TOOL_USAGE,
            ));
        } else {
            for (i, p) in PIECES.iter().enumerate() {
                v.push(ollama_line(
                    &model,
                    json!({"role": "assistant", "content": p}),
                    false,
                    TEXT_USAGE,
                ));
                if wants_error(r) && i == 0 {
                    v.push(format!("{}\n", json!({"error": "an error was encountered while running the model: unexpected EOF"})).into_bytes());
                    return Reply::Chunks(200, "application/x-ndjson".into(), parts(v));
                }
            }
            v.push(ollama_line(
                &model,
                json!({"role": "assistant", "content": ""}),
                true,
                TEXT_USAGE,
            ));
        }
        Reply::Chunks(200, "application/x-ndjson".into(), parts(v))
    }))
}

// ---------------------------------------------------------------- transport variations

/// The same reply with its streamed body re-cut into `size`-byte chunks, so event and
/// frame boundaries fall anywhere (as TCP and proxies deliver them).
pub fn rechunk(inner: Reply, size: usize) -> Reply {
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let mut reply = inner.clone();
        while let Reply::Dynamic(f) = reply {
            reply = f(r);
        }
        match reply {
            Reply::Chunks(status, ctype, ps) => {
                let all: Vec<u8> = ps.into_iter().flat_map(|(_, p)| p).collect();
                Reply::Chunks(
                    status,
                    ctype,
                    all.chunks(size.max(1))
                        .map(|c| (Duration::ZERO, c.to_vec()))
                        .collect(),
                )
            }
            other => other,
        }
    }))
}

/// The same reply with the last `drop_parts` stream parts cut off: a stream that ends
/// cleanly at the HTTP level but before the provider's terminal event.
pub fn truncate(inner: Reply, drop_parts: usize) -> Reply {
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let mut reply = inner.clone();
        while let Reply::Dynamic(f) = reply {
            reply = f(r);
        }
        match reply {
            Reply::Chunks(status, ctype, mut ps) => {
                let keep = ps.len().saturating_sub(drop_parts);
                ps.truncate(keep);
                Reply::Chunks(status, ctype, ps)
            }
            other => other,
        }
    }))
}
