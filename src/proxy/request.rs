//! Request phase: authenticate, read the body under a cap, parse and validate the
//! OpenAI request, and pick up the context headers for the trace.

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;
use serde_json::{Map, Value};

use crate::auth::keys::KeyEntry;
use crate::auth::Caller;
use crate::dialect::ChatRequest;
use crate::error::GatewayError;
use crate::routing::Runtime;

use super::ctx::RequestCtx;

/// Limits on client-supplied context values (they land in traces and indexes).
const MAX_PROPERTIES: usize = 32;
const MAX_VALUE_LEN: usize = 512;

pub fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Authenticate the gateway key from `Authorization: Bearer <key>` (or `x-api-key: <key>`).
///
/// Dev mode (`open_access`: no key configured, every listener on loopback) accepts any
/// token or none, since every OpenAI SDK always sends one.
pub fn authenticate(
    rt: &Runtime,
    vkeys: &crate::auth::virtual_keys::VirtualKeys,
    session: &Session,
) -> Result<Authenticated, GatewayError> {
    if rt.open_access {
        return Ok((None, None));
    }
    let presented = header(session, "authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    // The Anthropic SDKs send their key as `x-api-key` (`/v1/messages`).
    let presented = presented.or_else(|| header(session, "x-api-key"));
    if rt.keys.is_empty() && vkeys.is_empty() {
        return Err(GatewayError::Unauthorized(
            "No gateway key is configured on this gateway. Create one with `loopgate hash-key` and add it under [[auth.keys]] (or set LOOPGATE_MASTER_KEY), or for local development set `allow_unauthenticated_loopback = true` in [auth] with every listener on 127.0.0.1.".into(),
        ));
    }
    match presented {
        Some(k) => match rt.keys.lookup(k) {
            Some(e) => Ok((Some(e.clone()), None)),
            None => match vkeys.resolve(k, crate::auth::virtual_keys::now_ms())? {
                Some(v) => Ok((Some(v.entry.clone()), Some(v))),
                None => Err(GatewayError::Unauthorized(
                    "Incorrect API key provided. Send a loopgate gateway key as `Authorization: Bearer <key>` (keys are created with `loopgate hash-key` and configured under [[auth.keys]] or LOOPGATE_KEYS / LOOPGATE_MASTER_KEY, or created with `POST /v1/keys`; a revoked key is refused); a provider's own API key is not a gateway key."
                        .into(),
                )),
            },
        },
        None => Err(GatewayError::Unauthorized(
            "You didn't provide an API key. Send a loopgate gateway key as `Authorization: Bearer <key>` (the OpenAI SDKs send their `api_key` this way), or as `x-api-key: <key>` (the Anthropic SDKs' way).".into(),
        )),
    }
}

/// The key entry of an authenticated request, and its virtual key if it used one.
pub type Authenticated = (
    Option<std::sync::Arc<KeyEntry>>,
    Option<std::sync::Arc<crate::auth::virtual_keys::VirtualKey>>,
);

/// The caller for a key, or the open-access caller (every scope, no key id).
pub fn caller_for(key: Option<&KeyEntry>) -> Caller {
    match key {
        Some(k) => k.caller(),
        None => Caller {
            key_id: None,
            scopes: vec![
                crate::auth::Scope::Inference,
                crate::auth::Scope::Read,
                crate::auth::Scope::Admin,
            ],
            project: None,
        },
    }
}

/// Read the whole request body, refusing more than `cap` bytes.
///
/// Answers `Expect: 100-continue` first (Pingora never does), and rejects an
/// oversized declared `Content-Length` before reading anything.
pub async fn read_body(session: &mut Session, cap: usize) -> Result<Bytes, GatewayError> {
    let declared = header(session, "content-length").and_then(|v| v.parse::<usize>().ok());
    let expects_continue =
        header(session, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if declared.is_some_and(|n| n > cap) {
        // Without `Expect`, the client is already sending: drain (bounded) so it reads
        // our 413 instead of a broken pipe.
        if !expects_continue {
            drain(session).await;
        }
        return Err(GatewayError::BodyTooLarge { limit: cap });
    }
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|e| {
                GatewayError::invalid(format!("could not answer Expect: 100-continue: {e}"), None)
            })?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(cap));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    drain(session).await;
                    return Err(GatewayError::BodyTooLarge { limit: cap });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(GatewayError::invalid(
                    format!("could not read the request body: {}", e.etype().as_str()),
                    None,
                ))
            }
        }
    }
    Ok(buf.freeze())
}

/// Read and discard the rest of an oversized body, bounded in time and size; the
/// connection is not reused afterwards.
async fn drain(session: &mut Session) {
    const DRAIN_LIMIT: usize = 256 * 1024 * 1024;
    session.set_keepalive(None);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut seen = 0usize;
        while let Ok(Some(c)) = session.read_request_body().await {
            seen += c.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> GatewayError {
    GatewayError::invalid_code(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        Some(param),
        "invalid_type",
    )
}

fn out_of_range(param: &str, what: &str) -> GatewayError {
    GatewayError::invalid_code(
        format!("Invalid value for '{param}': {what}."),
        Some(param),
        "invalid_value",
    )
}

/// Parse a JSON body into an object or a 400 that says why.
pub fn parse_object(raw: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(GatewayError::invalid(
            format!("The request body must be a JSON object, got {}.", type_name(&other)),
            None,
        )),
        Err(e) => Err(GatewayError::invalid_code(
            format!("We could not parse the JSON body of your request: {e}. The body must be valid JSON."),
            None,
            "invalid_json",
        )),
    }
}

fn check_number(
    body: &Map<String, Value>,
    name: &str,
    min: f64,
    max: f64,
) -> Result<(), GatewayError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x >= min && x <= max {
                Ok(())
            } else {
                Err(out_of_range(
                    name,
                    &format!("must be between {min} and {max}"),
                ))
            }
        }
        Some(v) => Err(wrong_type(name, "a number", v)),
    }
}

fn check_int(
    body: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<(), GatewayError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if x >= min && x <= max => Ok(()),
            Some(_) => Err(out_of_range(
                name,
                &format!("must be an integer between {min} and {max}"),
            )),
            None => Err(wrong_type(name, "an integer", &Value::Number(n.clone()))),
        },
        Some(v) => Err(wrong_type(name, "an integer", v)),
    }
}

fn check_kind(
    body: &Map<String, Value>,
    name: &str,
    ok: fn(&Value) -> bool,
    expected: &str,
) -> Result<(), GatewayError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if ok(v) => Ok(()),
        Some(v) => Err(wrong_type(name, expected, v)),
    }
}

/// The model field (after `<prefix>-model-override`), required and a string.
pub fn take_model(
    body: &mut Map<String, Value>,
    model_override: Option<&str>,
) -> Result<String, GatewayError> {
    if let Some(m) = model_override {
        body.insert("model".into(), Value::String(m.to_string()));
        return Ok(m.to_string());
    }
    match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.clone()),
        Some(Value::String(_)) => Err(GatewayError::invalid_code(
            "'model' must not be empty.",
            Some("model"),
            "invalid_value",
        )),
        Some(v) => Err(wrong_type("model", "a string", v)),
        None => Err(GatewayError::invalid_code(
            "you must provide a model parameter",
            Some("model"),
            "missing_required_parameter",
        )),
    }
}

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// Parse and validate a chat-completions body.
pub fn parse_chat(raw: Bytes, model_override: Option<&str>) -> Result<ChatRequest, GatewayError> {
    let mut body = parse_object(&raw)?;
    let original = body.get("model").cloned();
    let model = take_model(&mut body, model_override)?;
    // `raw` is forwarded as-is when no rewrite is needed, so it must match `body`.
    let raw = if original.as_ref().and_then(Value::as_str) == Some(model.as_str()) {
        raw
    } else {
        Bytes::from(serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))?)
    };
    let messages = match body.get("messages") {
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type("messages", "an array", v)),
        None => {
            return Err(GatewayError::invalid_code(
                "Missing required parameter: 'messages'.",
                Some("messages"),
                "missing_required_parameter",
            ))
        }
    };
    if messages.is_empty() {
        return Err(GatewayError::invalid_code(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            Some("messages"),
            "empty_array",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(o) = m.as_object() else {
            return Err(wrong_type(&param, "an object", m));
        };
        match o.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {}
            Some(Value::String(r)) => {
                return Err(out_of_range(
                    &format!("{param}.role"),
                    &format!("'{r}' is not one of {}", ROLES.join(", ")),
                ))
            }
            Some(v) => return Err(wrong_type(&format!("{param}.role"), "a string", v)),
            None => {
                return Err(GatewayError::invalid_code(
                    format!("Missing required parameter: '{param}.role'."),
                    Some(&format!("{param}.role")),
                    "missing_required_parameter",
                ))
            }
        }
        match o.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(wrong_type(
                    &format!("{param}.content"),
                    "a string or an array",
                    v,
                ))
            }
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong_type("stream", "a boolean", v)),
    };
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(GatewayError::invalid_code(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    Some("stream_options"),
                    "invalid_value",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(wrong_type("stream_options.include_usage", "a boolean", v)),
            }
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    check_number(&body, "temperature", 0.0, 2.0)?;
    check_number(&body, "top_p", 0.0, 1.0)?;
    check_number(&body, "presence_penalty", -2.0, 2.0)?;
    check_number(&body, "frequency_penalty", -2.0, 2.0)?;
    check_int(&body, "n", 1, 128)?;
    check_int(&body, "max_tokens", 1, i64::MAX)?;
    check_int(&body, "max_completion_tokens", 1, i64::MAX)?;
    check_int(&body, "seed", i64::MIN, i64::MAX)?;
    check_int(&body, "top_logprobs", 0, 20)?;
    check_kind(&body, "logprobs", Value::is_boolean, "a boolean")?;
    check_kind(&body, "user", Value::is_string, "a string")?;
    check_kind(&body, "tools", Value::is_array, "an array")?;
    check_kind(&body, "response_format", Value::is_object, "an object")?;
    check_kind(
        &body,
        "tool_choice",
        |v| v.is_string() || v.is_object(),
        "a string or an object",
    )?;
    match body.get("stop") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            if a.len() > 4 {
                return Err(out_of_range("stop", "at most 4 stop sequences"));
            }
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        for (i, t) in tools.iter().enumerate() {
            let name = t
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            if name.is_none() {
                return Err(GatewayError::invalid_code(
                    format!("Missing required parameter: 'tools[{i}].function.name'."),
                    Some(&format!("tools[{i}].function.name")),
                    "missing_required_parameter",
                ));
            }
        }
    }
    Ok(ChatRequest {
        raw,
        body,
        model,
        stream,
        include_usage,
    })
}

/// Parse and validate an embeddings (`endpoint == "embeddings"`) or image-generation body;
/// returns the body (model overridden if asked) and the model.
pub fn parse_model_call(
    raw: &[u8],
    model_override: Option<&str>,
    endpoint: &str,
) -> Result<(Map<String, Value>, String), GatewayError> {
    let mut body = parse_object(raw)?;
    let model = take_model(&mut body, model_override)?;
    if endpoint == "embeddings" {
        match body.get("input") {
            Some(Value::String(_)) => {}
            Some(Value::Array(a)) if !a.is_empty() => {}
            Some(Value::Array(_)) => {
                return Err(GatewayError::invalid_code(
                    "'input' must not be empty.",
                    Some("input"),
                    "invalid_value",
                ))
            }
            Some(_) => {
                return Err(GatewayError::invalid_code(
                    "Invalid type for 'input': expected a string or an array.",
                    Some("input"),
                    "invalid_type",
                ))
            }
            None => {
                return Err(GatewayError::invalid_code(
                    "Missing required parameter: 'input'.",
                    Some("input"),
                    "missing_required_parameter",
                ))
            }
        }
    } else if !body.get("prompt").is_some_and(Value::is_string) {
        return Err(GatewayError::invalid_code(
            "Missing required parameter: 'prompt' (a string).",
            Some("prompt"),
            "missing_required_parameter",
        ));
    }
    Ok((body, model))
}

fn clip(v: &str) -> String {
    let mut end = v.len().min(MAX_VALUE_LEN);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// Session, project, user and custom properties from the request headers.
pub fn context_headers(
    rt: &Runtime,
    session: &Session,
    ctx: &mut RequestCtx,
    key: Option<&KeyEntry>,
) {
    let h = &rt.headers;
    ctx.session_id = header(session, &h.session_id).map(clip);
    ctx.session_name = header(session, &h.session_name).map(clip);
    ctx.session_path = header(session, &h.session_path).map(clip);
    // A key locked to a project always wins over the header.
    ctx.project_id = key
        .and_then(|k| k.project.clone())
        .or_else(|| header(session, &h.project_id).map(clip));
    ctx.user_id = header(session, &h.user_id).map(clip);
    let mut props = Vec::new();
    for (name, value) in session.req_header().headers.iter() {
        if let Some(p) = name.as_str().strip_prefix(h.property_prefix.as_str()) {
            if props.len() >= MAX_PROPERTIES || p.is_empty() {
                continue;
            }
            if let Ok(v) = value.to_str() {
                props.push((clip(p), clip(v.trim())));
            }
        }
    }
    props.sort();
    ctx.properties = props;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChatRequest, GatewayError> {
        parse_chat(Bytes::from(s.to_string()), None)
    }

    fn param_of(r: Result<ChatRequest, GatewayError>) -> (u16, Option<String>) {
        let e = r.err().unwrap();
        (e.status(), e.param().map(str::to_string))
    }

    #[test]
    fn validation_names_the_param() {
        assert_eq!(param_of(parse("{")), (400, None));
        assert_eq!(param_of(parse("[]")), (400, None));
        assert_eq!(
            param_of(parse(r#"{"messages":[{"role":"user","content":"x"}]}"#)),
            (400, Some("model".into()))
        );
        assert_eq!(
            param_of(parse(r#"{"model":"m"}"#)),
            (400, Some("messages".into()))
        );
        assert_eq!(
            param_of(parse(r#"{"model":3,"messages":[]}"#)),
            (400, Some("model".into()))
        );
        assert_eq!(
            param_of(parse(r#"{"model":"m","messages":"hi"}"#)),
            (400, Some("messages".into()))
        );
        assert_eq!(
            param_of(parse(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#
            )),
            (400, Some("temperature".into()))
        );
        assert_eq!(
            param_of(parse(
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#
            )),
            (400, Some("messages[0].role".into()))
        );
        assert_eq!(
            param_of(parse(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#
            )),
            (400, Some("stream_options".into()))
        );
    }

    #[test]
    fn valid_request_and_override() {
        let r = parse_chat(
            Bytes::from_static(br#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#),
            Some("b"),
        )
        .unwrap();
        assert_eq!(r.model, "b");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.body["model"], "b");
    }
}
