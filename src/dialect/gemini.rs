//! The Gemini API dialect (`generateContent`, `streamGenerateContent?alt=sse`,
//! `batchEmbedContents`), whose bodies Vertex AI shares (see `super::vertex`).
//!
//! Request: OpenAI messages become `contents` with roles `user`/`model`, system and
//! developer messages `systemInstruction`, images `inlineData` (data URLs) or `fileData`
//! (http URLs), tools `functionDeclarations` with the JSON schema reduced to the OpenAPI
//! subset Gemini accepts, and sampling parameters `generationConfig`.
//!
//! Response: Gemini has no tool-call ids, so ids are minted (`call_<random>`); when a
//! function call carries a Gemini 3 `thoughtSignature`, the signature rides along in the
//! id (`call_<random>__ts__<base64url>`) so it comes back with the tool result, as
//! Gemini 3 requires. Gemini reports `STOP` for function calls; the gateway reports
//! `tool_calls`. Thinking tokens count as completion tokens (that is how Google bills
//! them) and are shown as reasoning tokens.

use std::collections::HashMap;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use super::common::{image_url_of, parse_data_url, requested_max_tokens, stop_list};
use super::encode::{finish_reason_from, ChunkEncoder};
use super::sse::{SseDecoder, SseEvent};
use super::{
    default_classify, ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated,
    UpstreamFailure, UpstreamRequest, Usage,
};

pub struct Gemini;

/// Separator between a minted tool-call id and the thought signature it carries.
const SIG_SEP: &str = "__ts__";
/// Google's documented placeholder for a function call whose signature is unknown
/// (history from another model); accepted by Gemini 3, which otherwise rejects it.
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";
/// More candidates than any Gemini model returns; beyond it the stream is garbage.
const MAX_CANDIDATES: u64 = 16;

fn bad_msg(message: impl Into<String>) -> DialectError {
    DialectError::unsupported(message, Some("messages"))
}

/// Model id without a `models/` prefix, safe inside a URL path.
pub(crate) fn path_model(model: &str) -> String {
    const SEG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'@')
        .remove(b'~');
    let m = model.strip_prefix("models/").unwrap_or(model);
    percent_encoding::utf8_percent_encode(m, SEG).to_string()
}

/// A MIME type for an http(s) file URL, from its extension.
pub(crate) fn guess_mime(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let ext = path.rsplit('.').next().unwrap_or("");
    match ext {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => "image/jpeg",
    }
}

/// Mint an OpenAI-style tool-call id.
fn mint_id(rng: &mut impl Rng, signature: Option<&str>) -> String {
    let mut id = String::with_capacity(29);
    id.push_str("call_");
    id.extend((0..24).map(|_| char::from(rng.sample(rand::distributions::Alphanumeric))));
    if let Some(sig) = signature.filter(|s| !s.is_empty()) {
        // base64url keeps the id within `[A-Za-z0-9_-]` (Anthropic checks that pattern).
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap_or_else(|_| sig.as_bytes().to_vec());
        id.push_str(SIG_SEP);
        id.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    }
    id
}

/// The thought signature carried by a minted id, back in Gemini's base64.
fn signature_of(id: &str) -> Option<String> {
    let (_, enc) = id.split_once(SIG_SEP)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(enc)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

// ---------- JSON schema → Gemini schema ----------

const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// Reduce a JSON Schema to the OpenAPI 3.0 subset Gemini accepts: local `$ref`s are
/// inlined, `oneOf` becomes `anyOf`, `const` a one-value `enum`, `["t","null"]` types
/// `nullable`, and keys Gemini rejects (`additionalProperties`, `$schema`, ...) go.
pub fn clean_schema(schema: &Value) -> Value {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    clean(schema, &defs, 0)
}

fn clean(v: &Value, defs: &Map<String, Value>, depth: u32) -> Value {
    let Some(o) = v.as_object() else {
        return v.clone();
    };
    if depth > 24 {
        return json!({"type": "object"}); // recursive schema: Gemini cannot express it
    }
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("");
        let mut merged = defs
            .get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, val) in o {
            if k != "$ref" {
                merged.insert(k.clone(), val.clone());
            }
        }
        return clean(&Value::Object(merged), defs, depth + 1);
    }
    if let Some(Value::Array(all)) = o.get("allOf") {
        if all.len() == 1 {
            let mut merged = all[0].as_object().cloned().unwrap_or_default();
            for (k, val) in o {
                if k != "allOf" {
                    merged.insert(k.clone(), val.clone());
                }
            }
            return clean(&Value::Object(merged), defs, depth + 1);
        }
    }
    let mut out = Map::new();
    for (k, val) in o {
        match k.as_str() {
            "type" => match val {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types
                        .iter()
                        .filter(|t| t.as_str() != Some("null"))
                        .collect();
                    if non_null.len() < types.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    match non_null.as_slice() {
                        [one] => {
                            out.insert("type".into(), (*one).clone());
                        }
                        [] => {}
                        many => {
                            out.insert(
                                "anyOf".into(),
                                Value::Array(many.iter().map(|t| json!({"type": t})).collect()),
                            );
                        }
                    }
                }
                Value::String(t) if t == "null" => {
                    out.insert("nullable".into(), Value::Bool(true));
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "properties" => {
                if let Some(props) = val.as_object() {
                    let props: Map<String, Value> = props
                        .iter()
                        .map(|(n, s)| (n.clone(), clean(s, defs, depth + 1)))
                        .collect();
                    out.insert("properties".into(), Value::Object(props));
                }
            }
            "items" => {
                let item = match val {
                    Value::Array(a) => a.first().cloned().unwrap_or(json!({})),
                    v => v.clone(),
                };
                out.insert("items".into(), clean(&item, defs, depth + 1));
            }
            "anyOf" | "oneOf" => {
                if let Some(a) = val.as_array() {
                    let variants: Vec<Value> = a
                        .iter()
                        .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
                        .map(|s| clean(s, defs, depth + 1))
                        .collect();
                    if variants.len() < a.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    if variants.len() == 1 {
                        if let Some(one) = variants
                            .into_iter()
                            .next()
                            .and_then(|v| v.as_object().cloned())
                        {
                            for (k2, v2) in one {
                                out.entry(k2).or_insert(v2);
                            }
                        }
                    } else if !variants.is_empty() {
                        out.insert("anyOf".into(), Value::Array(variants));
                    }
                }
            }
            "const" => {
                out.insert("enum".into(), json!([val]));
            }
            k if SCHEMA_KEYS.contains(&k) => {
                out.insert(k.to_string(), val.clone());
            }
            _ => {} // additionalProperties, $schema, $id, strict, exclusiveMinimum, ...
        }
    }
    // `required` may only name properties that exist.
    if let (Some(Value::Array(req)), Some(Value::Object(props))) =
        (out.get("required"), out.get("properties"))
    {
        let kept: Vec<Value> = req
            .iter()
            .filter(|r| r.as_str().is_some_and(|r| props.contains_key(r)))
            .cloned()
            .collect();
        out.insert("required".into(), Value::Array(kept));
    } else if out.get("properties").is_none() {
        out.remove("required");
    }
    Value::Object(out)
}

// ---------- request ----------

fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((r, p)) if *r == role => p.extend(parts),
        _ => turns.push((role, parts)),
    }
}

fn text_parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            })
            .map(|t| json!({"text": t}))
            .collect(),
        _ => Vec::new(),
    }
}

fn user_parts(content: Option<&Value>) -> Result<Vec<Value>, DialectError> {
    let parts = match content {
        Some(Value::Array(p)) => p,
        other => return Ok(text_parts(other)),
    };
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out.push(json!({"text": t}));
                }
            }
            Some("image_url") => {
                let url = image_url_of(p).ok_or_else(|| bad_msg("image_url part has no url"))?;
                if let Some((mime, data)) = parse_data_url(url) {
                    out.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
                } else if url.starts_with("http://")
                    || url.starts_with("https://")
                    || url.starts_with("gs://")
                {
                    out.push(json!({"fileData": {"mimeType": guess_mime(url), "fileUri": url}}));
                } else {
                    return Err(bad_msg("image_url must be a data: URL or an http(s) URL"));
                }
            }
            Some("input_audio") => {
                let a = p.get("input_audio").unwrap_or(&Value::Null);
                let data = a
                    .get("data")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_msg("input_audio without data"))?;
                let fmt = a.get("format").and_then(Value::as_str).unwrap_or("wav");
                out.push(json!({"inlineData": {"mimeType": format!("audio/{fmt}"), "data": data}}));
            }
            Some("file") => {
                let data = p
                    .get("file")
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                    .and_then(parse_data_url)
                    .ok_or_else(|| bad_msg("file parts need inline file_data (file ids are not supported by Gemini)"))?;
                out.push(json!({"inlineData": {"mimeType": data.0, "data": data.1}}));
            }
            Some(other) => {
                return Err(bad_msg(format!(
                    "content part type '{other}' is not supported by Gemini"
                )))
            }
            None => return Err(bad_msg("content part without a type")),
        }
    }
    Ok(out)
}

/// OpenAI messages → (systemInstruction parts, contents).
fn convert_messages(msgs: &[Value], model: &str) -> Result<(Vec<Value>, Vec<Value>), DialectError> {
    let needs_signature = model
        .strip_prefix("models/")
        .unwrap_or(model)
        .starts_with("gemini-3");
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::with_capacity(msgs.len());
    let mut names: HashMap<&str, &str> = HashMap::new();
    for m in msgs {
        match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => system.extend(text_parts(m.get("content"))),
            "user" => push_turn(&mut turns, "user", user_parts(m.get("content"))?),
            "assistant" => {
                let mut parts = text_parts(m.get("content"));
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (i, c) in calls.iter().enumerate() {
                        let id = c.get("id").and_then(Value::as_str).unwrap_or("");
                        let f = c
                            .get("function")
                            .ok_or_else(|| bad_msg("tool_call without function"))?;
                        let name = f
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad_msg("tool_call without name"))?;
                        names.insert(id, name);
                        let args = match f.get("arguments") {
                            Some(Value::String(s)) if !s.trim().is_empty() => {
                                serde_json::from_str::<Value>(s)
                                    .ok()
                                    .filter(Value::is_object)
                                    .ok_or_else(|| {
                                        bad_msg(
                                            "assistant tool_call arguments must be a JSON object",
                                        )
                                    })?
                            }
                            Some(v @ Value::Object(_)) => v.clone(),
                            _ => json!({}),
                        };
                        let mut part = json!({"functionCall": {"name": name, "args": args}});
                        match signature_of(id) {
                            Some(sig) => part["thoughtSignature"] = Value::String(sig),
                            // Gemini 3 wants a signature on the first call of each turn.
                            None if needs_signature && i == 0 => {
                                part["thoughtSignature"] = Value::String(SKIP_SIGNATURE.into())
                            }
                            None => {}
                        }
                        parts.push(part);
                    }
                }
                push_turn(&mut turns, "model", parts);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_msg("tool message without tool_call_id"))?;
                let name = names
                    .get(id)
                    .copied()
                    .or_else(|| m.get("name").and_then(Value::as_str))
                    .ok_or_else(|| {
                        bad_msg(format!(
                            "tool message refers to unknown tool_call_id '{id}'"
                        ))
                    })?;
                let text = match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => String::new(),
                };
                // Gemini wants an object; a JSON object result is passed as is.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                push_turn(
                    &mut turns,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => {
                return Err(bad_msg(format!(
                    "message role '{other}' is not supported by Gemini"
                )))
            }
        }
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    Ok((system, contents))
}

fn convert_tools(b: &Map<String, Value>) -> Result<Option<Value>, DialectError> {
    let Some(tools) = b
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let mut decls = Vec::with_capacity(tools.len());
    for t in tools {
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(DialectError::unsupported(
                "only function tools are supported by Gemini",
                Some("tools"),
            ));
        }
        let f = t
            .get("function")
            .ok_or_else(|| DialectError::unsupported("tool without function", Some("tools")))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            DialectError::unsupported("tool function without name", Some("tools"))
        })?;
        let mut d = json!({"name": name});
        if let Some(desc) = f.get("description").and_then(Value::as_str) {
            d["description"] = Value::String(desc.to_string());
        }
        if let Some(params) = f.get("parameters").filter(|p| p.is_object()) {
            let cleaned = clean_schema(params);
            // Gemini rejects an OBJECT without properties: a no-argument function has none.
            if cleaned
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| !p.is_empty())
            {
                d["parameters"] = cleaned;
            }
        }
        decls.push(d);
    }
    Ok(Some(json!([{"functionDeclarations": decls}])))
}

fn convert_tool_choice(b: &Map<String, Value>) -> Result<Option<Value>, DialectError> {
    let cfg = match b.get("tool_choice") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "required" => json!({"mode": "ANY"}),
            "none" => json!({"mode": "NONE"}),
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
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
    };
    Ok(Some(json!({"functionCallingConfig": cfg})))
}

/// The `GenerateContentRequest` body (Gemini API and Vertex AI alike).
pub(crate) fn build_body(
    req: &ChatRequest,
    t: &Target,
) -> Result<Map<String, Value>, DialectError> {
    let b = &req.body;
    let (system, contents) = convert_messages(req.messages(), t.model)?;
    if contents.is_empty() {
        return Err(bad_msg(
            "at least one user or assistant message is required",
        ));
    }
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    if let Some(tools) = convert_tools(b)? {
        out.insert("tools".into(), tools);
        if let Some(tc) = convert_tool_choice(b)? {
            out.insert("toolConfig".into(), tc);
        }
    }
    let mut g = Map::new();
    let mut copy = |from: &str, to: &str| {
        if let Some(v) = b.get(from).filter(|v| v.is_number()) {
            g.insert(to.into(), v.clone());
        }
    };
    copy("temperature", "temperature");
    copy("top_p", "topP");
    copy("top_k", "topK");
    copy("seed", "seed");
    copy("presence_penalty", "presencePenalty");
    copy("frequency_penalty", "frequencyPenalty");
    if let Some(n) = requested_max_tokens(b) {
        g.insert("maxOutputTokens".into(), Value::from(n));
    }
    let stops = stop_list(b.get("stop"));
    if !stops.is_empty() {
        g.insert("stopSequences".into(), Value::Array(stops));
    }
    if let Some(n) = b.get("n").and_then(Value::as_u64).filter(|&n| n > 1) {
        g.insert("candidateCount".into(), Value::from(n));
    }
    if let Some(rf) = b.get("response_format") {
        match rf.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                g.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                g.insert("responseMimeType".into(), json!("application/json"));
                if let Some(s) = rf.get("json_schema").and_then(|j| j.get("schema")) {
                    if takes_json_schema(t.model) {
                        // Full JSON Schema ($ref, additionalProperties, ...), enforced as sent.
                        g.insert("responseJsonSchema".into(), s.clone());
                    } else {
                        g.insert("responseSchema".into(), clean_schema(s));
                    }
                }
            }
            _ => {}
        }
    }
    if !g.is_empty() {
        out.insert("generationConfig".into(), Value::Object(g));
    }
    Ok(out)
}

/// Whether a model takes `responseJsonSchema` (Gemini 2.5 and later); older models take
/// only `responseSchema`, the OpenAPI subset ([`clean_schema`]).
pub(crate) fn takes_json_schema(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    let Some(v) = m.strip_prefix("gemini-") else {
        return false;
    };
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (2, 5)
}

// ---------- response ----------

/// `usageMetadata` → gateway usage. Thoughts are billed as output, so they are counted in
/// `completion_tokens`; tool-use prompt tokens are billed as input.
pub(crate) fn usage_from(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Usage {
        prompt_tokens: n("promptTokenCount") + n("toolUsePromptTokenCount"),
        completion_tokens: n("candidatesTokenCount") + thoughts,
        cached_tokens: n("cachedContentTokenCount"),
        cache_creation_tokens: 0,
        reasoning_tokens: thoughts,
        reported: true,
    }
}

/// Gemini `finishReason` → OpenAI (before the tool-call override).
pub(crate) fn map_finish(native: &str) -> &'static str {
    match native {
        "IMAGE_SAFETY" | "IMAGE_PROHIBITED_CONTENT" => "content_filter",
        other => finish_reason_from(other),
    }
}

fn error_of(v: &Value) -> Option<(String, String)> {
    let e = v.get("error").filter(|e| e.is_object())?;
    let status = e
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN")
        .to_string();
    let msg = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error")
        .chars()
        .take(2000)
        .collect();
    Some((status, msg))
}

fn status_kind(status: &str) -> (&'static str, &'static str, bool) {
    match status {
        "RESOURCE_EXHAUSTED" => ("rate_limit_error", "rate_limit_exceeded", true),
        "UNAVAILABLE" => ("api_error", "overloaded", true),
        "DEADLINE_EXCEEDED" => ("api_error", "upstream_timeout", true),
        "INTERNAL" => ("api_error", "upstream_error", true),
        _ => ("api_error", "upstream_error", false),
    }
}

pub(crate) fn translate_body(body: &[u8], t: &Target) -> Result<Translated, DialectError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
    if let Some((status, msg)) = error_of(&v) {
        return Err(DialectError::Upstream(format!("{status}: {msg}")));
    }
    let mut rng = rand::thread_rng();
    let mut choices = Vec::new();
    if let Some(cands) = v.get("candidates").and_then(Value::as_array) {
        for (pos, c) in cands.iter().enumerate() {
            let mut text = String::new();
            let mut reasoning = String::new();
            let mut calls = Vec::new();
            for p in c
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(fc) = p.get("functionCall") {
                    let sig = p.get("thoughtSignature").and_then(Value::as_str);
                    let id = fc
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| mint_id(&mut rng, sig));
                    calls.push(json!({"id": id, "type": "function", "function": {
                        "name": fc.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": fc.get("args").cloned().unwrap_or_else(|| json!({})).to_string()}}));
                } else if let Some(s) = p.get("text").and_then(Value::as_str) {
                    if p.get("thought").and_then(Value::as_bool) == Some(true) {
                        reasoning.push_str(s);
                    } else {
                        text.push_str(s);
                    }
                }
            }
            let finish = if !calls.is_empty() {
                "tool_calls"
            } else {
                map_finish(
                    c.get("finishReason")
                        .and_then(Value::as_str)
                        .unwrap_or("STOP"),
                )
            };
            let mut message = json!({"role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
                "refusal": null});
            if !reasoning.is_empty() {
                message["reasoning_content"] = Value::String(reasoning);
            }
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            choices.push(json!({"index": index, "message": message, "logprobs": null, "finish_reason": finish}));
        }
    }
    if choices.is_empty() {
        // The prompt itself was blocked: no candidates, a promptFeedback.blockReason.
        if v.get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .is_some()
        {
            choices.push(json!({"index": 0, "message": {"role": "assistant", "content": null, "refusal": null},
                "logprobs": null, "finish_reason": "content_filter"}));
        } else {
            return Err(DialectError::Malformed("response has no candidates".into()));
        }
    }
    let usage = v.get("usageMetadata").map(usage_from).unwrap_or_default();
    let model = v
        .get("modelVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut out = json!({
        "id": t.request_id,
        "object": "chat.completion",
        "created": t.created,
        "model": model.as_deref().unwrap_or(t.model),
        "choices": choices,
        "system_fingerprint": null,
    });
    out["usage"] = usage.to_openai();
    Ok(Translated {
        body: Bytes::from(
            serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
        ),
        usage,
        model,
    })
}

/// Google error bodies: `{"error":{"code":429,"message":..,"status":"RESOURCE_EXHAUSTED"}}`
/// (the stream endpoint may wrap it in an array).
pub(crate) fn classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let mut f = default_classify(status, body);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let v = if let Value::Array(a) = v {
            a.into_iter().next().unwrap_or(Value::Null)
        } else {
            v
        };
        if let Some((st, _)) = error_of(&v) {
            let (_, code, retryable) = status_kind(&st);
            if retryable {
                f.retryable = true;
                f.code = code;
            }
        }
    }
    f
}

impl Dialect for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = build_body(req, t)?;
        let ver = t.profile.extra.api_version.as_deref().unwrap_or("v1beta");
        let method = if t.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        let path = t.profile.path_for(
            t.endpoint,
            &format!("/{ver}/models/{}:{method}", path_model(t.model)),
            t.model,
        );
        Ok(UpstreamRequest {
            method: "POST",
            path,
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
        translate_body(body, t)
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream::new(t, req, None))
    }

    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        classify(status, body)
    }

    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let inputs = embedding_inputs(body)?;
        let model_name = format!(
            "models/{}",
            t.model.strip_prefix("models/").unwrap_or(t.model)
        );
        let dims = body.get("dimensions").and_then(Value::as_u64);
        let requests: Vec<Value> = inputs
            .iter()
            .map(|s| {
                let mut r = json!({"model": model_name, "content": {"parts": [{"text": s}]}});
                if let Some(d) = dims {
                    r["outputDimensionality"] = Value::from(d);
                }
                if let Some(task) = t.profile.extra.embedding_task_type.as_deref() {
                    r["taskType"] = Value::String(task.to_string());
                }
                r
            })
            .collect();
        let ver = t.profile.extra.api_version.as_deref().unwrap_or("v1beta");
        let path = t.profile.path_for(
            t.endpoint,
            &format!("/{ver}/models/{}:batchEmbedContents", path_model(t.model)),
            t.model,
        );
        Ok(UpstreamRequest {
            method: "POST",
            path,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(
                serde_json::to_vec(&json!({"requests": requests}))
                    .map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    /// Gemini reports no token counts for embeddings: usage is 0 with `reported = false`.
    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if let Some((status, msg)) = error_of(&v) {
            return Err(DialectError::Upstream(format!("{status}: {msg}")));
        }
        let embs = v
            .get("embeddings")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                DialectError::Malformed("embeddings response has no embeddings array".into())
            })?;
        let vectors: Vec<&Value> = embs
            .iter()
            .map(|e| e.get("values").unwrap_or(&Value::Null))
            .collect();
        embeddings_response(&vectors, t.model, Usage::default())
    }
}

/// OpenAI `input` (string or array of strings) → texts.
pub(crate) fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, DialectError> {
    let bad = |m: &str| DialectError::unsupported(m, Some("input"));
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad("input must be a string or an array of strings (token arrays are not supported by this provider)")))
            .collect(),
        _ => Err(bad("input must be a non-empty string or array of strings")),
    }
}

/// The OpenAI embeddings list for a set of vectors.
pub(crate) fn embeddings_response(
    vectors: &[&Value],
    model: &str,
    usage: Usage,
) -> Result<Translated, DialectError> {
    let mut data = Vec::with_capacity(vectors.len());
    for (i, vals) in vectors.iter().enumerate() {
        if !vals.is_array() {
            return Err(DialectError::Malformed("embedding without values".into()));
        }
        data.push(json!({"object": "embedding", "index": i, "embedding": vals}));
    }
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
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

// ---------- stream ----------

#[derive(Debug, Default, Clone)]
struct Candidate {
    started: bool,
    tools: u32,
    finished: bool,
}

/// Incremental Gemini SSE (whole `GenerateContentResponse` per event) → OpenAI chunks.
pub struct GeminiStream {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    enc: ChunkEncoder,
    usage: Usage,
    model: Option<String>,
    cands: Vec<Candidate>,
    rng: StdRng,
    produced: bool,
}

impl GeminiStream {
    /// `seed` fixes the minted tool-call ids (tests); `None` draws from the OS.
    pub fn new(t: &Target, req: &ChatRequest, seed: Option<u64>) -> Self {
        GeminiStream {
            decoder: SseDecoder::new(),
            events: Vec::with_capacity(4),
            enc: ChunkEncoder::new(t.request_id, t.created, t.model, req.include_usage),
            usage: Usage::default(),
            model: None,
            cands: Vec::new(),
            rng: match seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => StdRng::from_entropy(),
            },
            produced: false,
        }
    }

    fn cand(&mut self, i: u32, out: &mut BytesMut) -> &mut Candidate {
        let idx = i as usize;
        if self.cands.len() <= idx {
            self.cands.resize(idx + 1, Candidate::default());
        }
        if !self.cands[idx].started {
            self.cands[idx].started = true;
            self.enc.start(i, out);
        }
        &mut self.cands[idx]
    }

    fn fail(&mut self, err: DialectError, out: &mut BytesMut) -> DialectError {
        self.enc
            .error(&err.to_string(), "api_error", "upstream_malformed", out);
        err
    }

    fn handle(&mut self, ev: &SseEvent, out: &mut BytesMut) -> Result<(), DialectError> {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| DialectError::Malformed(format!("stream event is not JSON: {e}")))?;
        if let Some((status, msg)) = error_of(&v) {
            let (otype, code, _) = status_kind(&status);
            self.enc.error(&msg, otype, code, out);
            return Err(DialectError::Upstream(format!("{status}: {msg}")));
        }
        if !v.is_object() {
            return Err(DialectError::Malformed(
                "stream event is not a JSON object".into(),
            ));
        }
        if self.model.is_none() {
            if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
                self.model = Some(m.to_string());
                self.enc.set_model(m);
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = usage_from(u);
        }
        let empty = Vec::new();
        let cands = v
            .get("candidates")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for (pos, c) in cands.iter().enumerate() {
            let i = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            if i >= MAX_CANDIDATES {
                return Err(DialectError::Malformed(format!(
                    "candidate index {i} out of range"
                )));
            }
            let i = i as u32;
            self.cand(i, out);
            let parts = c
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array);
            for p in parts.into_iter().flatten() {
                if let Some(fc) = p.get("functionCall") {
                    let sig = p.get("thoughtSignature").and_then(Value::as_str);
                    let id = match fc.get("id").and_then(Value::as_str) {
                        Some(id) => id.to_string(),
                        None => mint_id(&mut self.rng, sig),
                    };
                    let name = fc.get("name").and_then(Value::as_str).unwrap_or("");
                    let args = fc
                        .get("args")
                        .cloned()
                        .unwrap_or_else(|| json!({}))
                        .to_string();
                    let ti = {
                        let c = self.cand(i, out);
                        c.tools += 1;
                        c.tools - 1
                    };
                    self.produced = true;
                    self.enc.tool_call_start(i, ti, &id, name, out);
                    self.enc.tool_call_args(i, ti, &args, out);
                } else if let Some(s) = p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    self.produced = true;
                    if p.get("thought").and_then(Value::as_bool) == Some(true) {
                        self.enc.reasoning(i, s, out);
                    } else {
                        self.enc.content(i, s, out);
                    }
                }
            }
            if let Some(fr) = c.get("finishReason").and_then(Value::as_str) {
                let st = self.cand(i, out);
                if !st.finished {
                    st.finished = true;
                    let reason = if st.tools > 0 {
                        "tool_calls"
                    } else {
                        map_finish(fr)
                    };
                    self.enc.finish_reason(i, reason, out);
                }
            }
        }
        if cands.is_empty()
            && v.get("promptFeedback")
                .and_then(|f| f.get("blockReason"))
                .is_some()
        {
            let st = self.cand(0, out);
            if !st.finished {
                st.finished = true;
                self.enc.finish_reason(0, "content_filter", out);
            }
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        !self.cands.is_empty() && self.cands.iter().all(|c| !c.started || c.finished)
    }
}

impl StreamTranslator for GeminiStream {
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
        if !self.complete() {
            let msg = "upstream stream ended before a finishReason";
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

#[cfg(test)]
mod tests {
    use super::super::anthropic::test_support::*;
    use super::*;
    use crate::providers::Endpoint;
    use proptest::prelude::*;

    const PROFILE: &str = r#"
name = "gemini"
dialect = "gemini"
base_url = "https://generativelanguage.googleapis.com"
api_key_env = "GEMINI_API_KEY"
auth = "header"
auth_header = "x-goog-api-key"
"#;

    fn build(body: Value, model: &str, stream: bool) -> (UpstreamRequest, Value) {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let up = Gemini
            .build_chat(&request(body), &target(&p, &e, model, stream))
            .unwrap();
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        (up, v)
    }

    #[test]
    fn paths_follow_stream_flag() {
        let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
        let (up, _) = build(body.clone(), "gemini-2.5-flash", false);
        assert_eq!(up.path, "/v1beta/models/gemini-2.5-flash:generateContent");
        let (up, _) = build(body, "models/gemini-2.5-flash", true);
        assert_eq!(
            up.path,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn request_mapping() {
        let (_, v) = build(
            json!({"messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.webp?x=1"}}]},
                {"role": "assistant", "content": "Calling.", "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "{\"temp\":18}"},
                {"role": "tool", "tool_call_id": "call_abc", "content": "plain"}],
              "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                  "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                    "additionalProperties": false,
                    "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f"]}},
                    "required": ["city", "ghost"]}}},
                {"type": "function", "function": {"name": "noargs", "parameters": {"type": "object", "properties": {}}}}],
              "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
              "temperature": 0.2, "top_p": 0.8, "max_tokens": 64, "stop": ["X"], "n": 2,
              "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true,
                  "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false}}}}),
            "gemini-2.5-flash",
            false,
        );
        assert_eq!(
            v["systemInstruction"],
            json!({"parts": [{"text": "Be terse."}]})
        );
        let c = v["contents"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["role"], "user");
        assert_eq!(
            c[0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
        );
        assert_eq!(
            c[0]["parts"][2],
            json!({"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a.webp?x=1"}})
        );
        assert_eq!(
            c[1],
            json!({"role": "model", "parts": [{"text": "Calling."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]})
        );
        assert_eq!(c[2]["role"], "user");
        assert_eq!(
            c[2]["parts"][0],
            json!({"functionResponse": {"name": "get_weather", "response": {"temp": 18}}})
        );
        assert_eq!(
            c[2]["parts"][1],
            json!({"functionResponse": {"name": "get_weather", "response": {"result": "plain"}}})
        );
        let decl = &v["tools"][0]["functionDeclarations"];
        assert_eq!(
            decl[0]["parameters"],
            json!({"type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"nullable": true, "type": "string", "enum": ["c", "f"]}},
            "required": ["city"]})
        );
        assert!(decl[1].get("parameters").is_none());
        assert_eq!(
            v["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
        let g = &v["generationConfig"];
        assert_eq!(g["temperature"], 0.2);
        assert_eq!(g["topP"], 0.8);
        assert_eq!(g["maxOutputTokens"], 64);
        assert_eq!(g["stopSequences"], json!(["X"]));
        assert_eq!(g["candidateCount"], 2);
        assert_eq!(g["responseMimeType"], "application/json");
        // Gemini 2.5 takes the schema as sent (full JSON Schema, enforced).
        assert_eq!(
            g["responseJsonSchema"],
            json!({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false})
        );
        assert!(g.get("responseSchema").is_none());
    }

    #[test]
    fn older_models_get_the_openapi_schema_subset() {
        let body = json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r",
                "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false}}}});
        let (_, v) = build(body.clone(), "gemini-2.0-flash", false);
        let g = &v["generationConfig"];
        assert_eq!(g["responseMimeType"], "application/json");
        assert_eq!(
            g["responseSchema"],
            json!({"type": "object", "properties": {"a": {"type": "integer"}}})
        );
        assert!(g.get("responseJsonSchema").is_none());
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
            "gemini-2.5-pro",
            false,
        );
        assert_eq!(
            v["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
        for (m, yes) in [
            ("gemini-2.5-flash", true),
            ("gemini-3-pro-preview", true),
            ("models/gemini-2.5-pro", true),
            ("gemini-2.0-flash", false),
            ("gemini-1.5-pro-002", false),
            ("gemma-3-27b-it", false),
        ] {
            assert_eq!(takes_json_schema(m), yes, "{m}");
        }
    }

    #[test]
    fn tool_choice_modes_and_unknown_tool_ids() {
        let body = |tc: Value| {
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": tc,
            "tools": [{"type": "function", "function": {"name": "f"}}]})
        };
        assert_eq!(
            build(body(json!("auto")), "gemini-2.0-flash", false).1["toolConfig"]
                ["functionCallingConfig"]["mode"],
            "AUTO"
        );
        assert_eq!(
            build(body(json!("required")), "gemini-2.0-flash", false).1["toolConfig"]
                ["functionCallingConfig"]["mode"],
            "ANY"
        );
        assert_eq!(
            build(body(json!("none")), "gemini-2.0-flash", false).1["toolConfig"]
                ["functionCallingConfig"]["mode"],
            "NONE"
        );
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let err = Gemini
            .build_chat(
                &request(
                    json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
                ),
                &target(&p, &e, "gemini-2.0-flash", false),
            )
            .unwrap_err();
        assert!(matches!(err, DialectError::Unsupported { .. }));
    }

    #[test]
    fn schema_refs_and_unions() {
        let s = json!({"type": "object", "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string", "const": "x"}}}},
            "properties": {"pet": {"$ref": "#/$defs/Pet"}, "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
              "tags": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "number"}]}}}});
        let c = clean_schema(&s);
        assert_eq!(
            c["properties"]["pet"],
            json!({"type": "object", "properties": {"name": {"type": "string", "enum": ["x"]}}})
        );
        assert_eq!(
            c["properties"]["n"],
            json!({"nullable": true, "type": "integer"})
        );
        assert_eq!(
            c["properties"]["tags"]["items"]["anyOf"],
            json!([{"type": "string"}, {"type": "number"}])
        );
        assert!(c.get("$defs").is_none());
        // A self-referential schema terminates.
        let r = json!({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"});
        let _ = clean_schema(&r);
    }

    #[test]
    fn thought_signatures_round_trip_in_ids() {
        let mut rng = StdRng::seed_from_u64(1);
        let id = mint_id(&mut rng, Some("CiQB+/9zAA=="));
        assert!(id.starts_with("call_"));
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{id}"
        );
        assert_eq!(signature_of(&id).as_deref(), Some("CiQB+/9zAA=="));
        let (_, v) = build(
            json!({"messages": [{"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": id, "content": "ok"}]}),
            "gemini-3-pro-preview",
            false,
        );
        assert_eq!(
            v["contents"][1]["parts"][0]["thoughtSignature"],
            "CiQB+/9zAA=="
        );
        // Foreign ids on Gemini 3 get Google's documented placeholder; older models none.
        let msgs = json!({"messages": [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]});
        let (_, v) = build(msgs.clone(), "gemini-3-pro-preview", false);
        assert_eq!(
            v["contents"][1]["parts"][0]["thoughtSignature"],
            SKIP_SIGNATURE
        );
        let (_, v) = build(msgs, "gemini-2.5-pro", false);
        assert!(v["contents"][1]["parts"][0]
            .get("thoughtSignature")
            .is_none());
    }

    const RESPONSE: &str = r#"{
      "candidates": [{"content": {"parts": [{"text": "I should call it.", "thought": true},
          {"functionCall": {"name": "get_weather", "args": {"location": "Boston", "unit": "celsius"}}, "thoughtSignature": "CiQBVKhc"}],
          "role": "model"}, "finishReason": "STOP", "index": 0,
          "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]}],
      "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 20, "totalTokenCount": 190,
          "thoughtsTokenCount": 50, "cachedContentTokenCount": 100, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]},
      "modelVersion": "gemini-2.5-flash", "responseId": "abc"}"#;

    fn t_json<'a>(p: &'a crate::providers::ProviderProfile, e: &'a Endpoint) -> Target<'a> {
        target(p, e, "gemini-2.5-flash", false)
    }

    #[test]
    fn translate_json_tools_usage() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let tr = Gemini
            .translate_chat(
                RESPONSE.as_bytes(),
                &t_json(&p, &e),
                &request(json!({"messages": []})),
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-test");
        assert_eq!(v["model"], "gemini-2.5-flash");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls");
        assert!(c["message"]["content"].is_null());
        assert_eq!(c["message"]["reasoning_content"], "I should call it.");
        let call = &c["message"]["tool_calls"][0];
        let id = call["id"].as_str().unwrap();
        assert!(id.starts_with("call_"));
        assert_eq!(signature_of(id).as_deref(), Some("CiQBVKhc"));
        assert_eq!(
            serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap()
                ["location"],
            "Boston"
        );
        assert_eq!(
            tr.usage,
            Usage {
                prompt_tokens: 120,
                completion_tokens: 70,
                cached_tokens: 100,
                cache_creation_tokens: 0,
                reasoning_tokens: 50,
                reported: true
            }
        );
        assert_eq!(v["usage"]["total_tokens"], 190);
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"],
            50
        );
    }

    #[test]
    fn thinking_and_cache_are_priced_from_the_catalog() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let tr = Gemini
            .translate_chat(
                RESPONSE.as_bytes(),
                &t_json(&p, &e),
                &request(json!({"messages": []})),
            )
            .unwrap();
        let cat = crate::catalog::Catalog::embedded().unwrap();
        let m = cat
            .get(&["gemini".to_string()], "gemini-2.5-flash")
            .unwrap();
        // 20 fresh + 100 cached prompt tokens; 20 answer + 50 thinking tokens billed as output.
        let expect = 20.0 * m.input.unwrap()
            + 100.0 * m.cache_read.unwrap_or(m.input.unwrap())
            + 70.0 * m.output.unwrap();
        assert!((m.cost(&tr.usage) - expect).abs() < 1e-12);
    }

    #[test]
    fn translate_json_safety_blocked_and_errors() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = t_json(&p, &e);
        let req = request(json!({"messages": []}));
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"a"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0},
            {"finishReason":"SAFETY","index":1}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1}}"#;
        let v: Value =
            serde_json::from_slice(&Gemini.translate_chat(body, &t, &req).unwrap().body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["choices"][1]["finish_reason"], "content_filter");
        let blocked = br#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":9}}"#;
        let v: Value =
            serde_json::from_slice(&Gemini.translate_chat(blocked, &t, &req).unwrap().body)
                .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        let err = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        assert!(matches!(
            Gemini.translate_chat(err, &t, &req),
            Err(DialectError::Upstream(_))
        ));
        let f = Gemini.classify_error(429, err);
        assert!(f.retryable);
        assert_eq!(f.code, "rate_limit_exceeded");
        let f = Gemini.classify_error(503, br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#);
        assert!(f.retryable);
        let f = Gemini.classify_error(400, br#"[{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}]"#);
        assert!(!f.retryable);
        assert_eq!(f.message, "Invalid JSON payload");
    }

    #[test]
    fn embeddings_both_ways() {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "gemini-embedding-001", false);
        let body = json!({"model": "gemini-embedding-001", "input": ["a", "b"], "dimensions": 768});
        let up = Gemini
            .build_embeddings(body.as_object().unwrap(), &t)
            .unwrap();
        assert_eq!(
            up.path,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            v["requests"][1],
            json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]},
            "outputDimensionality": 768})
        );
        let resp = br#"{"embeddings":[{"values":[0.1,0.2]},{"values":[0.3,0.4]}]}"#;
        let tr = Gemini.translate_embeddings(resp, &t).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(
            v["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [0.3, 0.4]})
        );
        assert!(!tr.usage.reported);
        let bad = json!({"input": [[1, 2, 3]]});
        assert!(Gemini
            .build_embeddings(bad.as_object().unwrap(), &t)
            .is_err());
    }

    /// Recorded-format stream (per the Gemini API docs): text, then a function call with
    /// usage in the last event, as `streamGenerateContent?alt=sse` sends it.
    pub(crate) const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Let me \"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 30,\"totalTokenCount\": 30},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"check – été.\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 30,\"candidatesTokenCount\": 4,\"totalTokenCount\": 34},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"location\": \"Boston, MA\"}}},{\"functionCall\": {\"name\": \"get_time\",\"args\": {}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 30,\"candidatesTokenCount\": 24,\"totalTokenCount\": 66,\"thoughtsTokenCount\": 12},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n",
    );

    fn run_stream(
        chunks: &[&[u8]],
        include_usage: bool,
    ) -> (Vec<u8>, Vec<Result<(), DialectError>>, Usage) {
        let p = profile(PROFILE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "gemini-2.5-flash", true);
        let req = request(
            json!({"messages": [], "stream": true, "stream_options": {"include_usage": include_usage}}),
        );
        run(Box::new(GeminiStream::new(&t, &req, Some(42))), chunks)
    }

    #[test]
    fn stream_text_then_tools() {
        let (out, results, usage) = run_stream(&[STREAM.as_bytes()], true);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let ev = events(&out);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let (content, tools, finishes) = reassemble(&ev);
        assert_eq!(content, "Let me check – été.");
        assert_eq!(tools.len(), 2);
        assert!(tools[0].0.starts_with("call_") && tools[0].0 != tools[1].0);
        assert_eq!(tools[0].1, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&tools[0].2).unwrap()["location"],
            "Boston, MA"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&tools[1].2).unwrap(),
            json!({})
        );
        assert_eq!(finishes, vec!["tool_calls"]);
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.reasoning_tokens
            ),
            (30, 36, 12)
        );
        let u: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(u["usage"]["total_tokens"], 66);
        let first: Value = serde_json::from_str(&ev[0]).unwrap();
        assert_eq!(first["model"], "gemini-2.5-flash");
    }

    #[test]
    fn stream_multiple_candidates() {
        let input = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A\"}],\"role\":\"model\"},\"index\":0},{\"content\":{\"parts\":[{\"text\":\"B\"}],\"role\":\"model\"},\"index\":1}]}\n\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0},{\"content\":{\"parts\":[{\"text\":\"b\"}],\"role\":\"model\"},\"finishReason\":\"MAX_TOKENS\",\"index\":1}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":4}}\n\n",
        );
        let (out, results, _) = run_stream(&[input.as_bytes()], false);
        assert!(results.iter().all(Result::is_ok));
        let mut texts = [String::new(), String::new()];
        let mut fins = [None, None];
        for e in events(&out) {
            if e == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&e).unwrap();
            let c = &v["choices"][0];
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                fins[i] = Some(f.to_string());
            }
        }
        assert_eq!(texts, ["Aa".to_string(), "Bb".to_string()]);
        assert_eq!(fins, [Some("stop".into()), Some("length".into())]);
    }

    #[test]
    fn stream_error_and_truncation() {
        let input = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A\"}],\"role\":\"model\"},\"index\":0}]}\n\n",
            "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}\n\n",
        );
        let (out, results, _) = run_stream(&[input.as_bytes()], true);
        assert!(matches!(results[0], Err(DialectError::Upstream(_))));
        let ev = events(&out);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        let err: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(err["error"]["code"], "overloaded");

        let cut = &STREAM[..STREAM.rfind("data:").unwrap()];
        let (out, results, _) = run_stream(&[cut.as_bytes()], true);
        assert!(matches!(
            results.last().unwrap(),
            Err(DialectError::Truncated(_))
        ));
        let ev = events(&out);
        assert_eq!(ev.last().unwrap(), "[DONE]");
        assert!(ev[ev.len() - 2].contains("\"error\""));
        // Empty body: truncated too.
        let (_, results, _) = run_stream(&[], false);
        assert!(matches!(
            results.last().unwrap(),
            Err(DialectError::Truncated(_))
        ));
    }

    proptest! {
        #[test]
        fn any_split_same_output(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let (whole, _, _) = run_stream(&[STREAM.as_bytes()], true);
            let chunks = split(STREAM.as_bytes(), &cuts);
            let (parts, results, _) = run_stream(&chunks, true);
            prop_assert!(results.iter().all(Result::is_ok));
            prop_assert_eq!(parts, whole);
        }

        #[test]
        fn garbage_errors_without_panic(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let chunks = split(&data, &[cut]);
            let (out, results, _) = run_stream(&chunks, true);
            prop_assert!(results.iter().any(Result::is_err));
            let ev = events(&out);
            prop_assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
        }
    }
}
