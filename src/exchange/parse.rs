//! The OpenAI request contract: parse and validate a client's (or a background caller's)
//! chat, embeddings or image request before anything is sent upstream, with the errors
//! OpenAI itself returns (`param`, `code`).

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::dialect::ChatRequest;
use crate::error::GatewayError;

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

fn check_number(v: Option<&Value>, name: &str, min: f64, max: f64) -> Result<(), GatewayError> {
    match v {
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

fn check_int(v: Option<&Value>, name: &str, min: i64, max: i64) -> Result<(), GatewayError> {
    match v {
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
    v: Option<&Value>,
    name: &str,
    ok: fn(&Value) -> bool,
    expected: &str,
) -> Result<(), GatewayError> {
    match v {
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

/// The top-level members `parse_chat` checks, found in one pass over the body: a body has a
/// handful of keys, and one hashed lookup per checked name (~25) cost more than the walk.
#[derive(Default)]
struct ChatFields<'a> {
    messages: Option<&'a Value>,
    stream: Option<&'a Value>,
    stream_options: Option<&'a Value>,
    temperature: Option<&'a Value>,
    top_p: Option<&'a Value>,
    presence_penalty: Option<&'a Value>,
    frequency_penalty: Option<&'a Value>,
    n: Option<&'a Value>,
    max_tokens: Option<&'a Value>,
    max_completion_tokens: Option<&'a Value>,
    seed: Option<&'a Value>,
    top_logprobs: Option<&'a Value>,
    logprobs: Option<&'a Value>,
    user: Option<&'a Value>,
    tools: Option<&'a Value>,
    response_format: Option<&'a Value>,
    tool_choice: Option<&'a Value>,
    stop: Option<&'a Value>,
}

impl<'a> ChatFields<'a> {
    fn of(body: &'a Map<String, Value>) -> Self {
        let mut f = ChatFields::default();
        // Keys are unique in a map, so each slot is what `body.get(name)` returns.
        for (k, v) in body {
            let slot = match k.as_str() {
                "messages" => &mut f.messages,
                "stream" => &mut f.stream,
                "stream_options" => &mut f.stream_options,
                "temperature" => &mut f.temperature,
                "top_p" => &mut f.top_p,
                "presence_penalty" => &mut f.presence_penalty,
                "frequency_penalty" => &mut f.frequency_penalty,
                "n" => &mut f.n,
                "max_tokens" => &mut f.max_tokens,
                "max_completion_tokens" => &mut f.max_completion_tokens,
                "seed" => &mut f.seed,
                "top_logprobs" => &mut f.top_logprobs,
                "logprobs" => &mut f.logprobs,
                "user" => &mut f.user,
                "tools" => &mut f.tools,
                "response_format" => &mut f.response_format,
                "tool_choice" => &mut f.tool_choice,
                "stop" => &mut f.stop,
                _ => continue,
            };
            *slot = Some(v);
        }
        f
    }
}

/// A message's `role` and `content` (what `o.get("role")`, `o.get("content")` return).
fn role_and_content(o: &Map<String, Value>) -> (Option<&Value>, Option<&Value>) {
    let (mut role, mut content) = (None, None);
    for (k, v) in o {
        match k.as_str() {
            "role" => role = Some(v),
            "content" => content = Some(v),
            _ => {}
        }
    }
    (role, content)
}

/// Parse and validate a chat-completions body.
pub fn parse_chat(raw: Bytes, model_override: Option<&str>) -> Result<ChatRequest, GatewayError> {
    let mut body = parse_object(&raw)?;
    // Without an override the model is the body's own (or an error), so `raw` stays valid.
    let same_model = match model_override {
        None => true,
        Some(m) => body.get("model").and_then(Value::as_str) == Some(m),
    };
    let model = take_model(&mut body, model_override)?;
    // `raw` is forwarded as-is when no rewrite is needed, so it must match `body`.
    let raw = if same_model {
        raw
    } else {
        Bytes::from(serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))?)
    };
    let f = ChatFields::of(&body);
    let messages = match f.messages {
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
    // The parameter names are formatted only for an error, not once per valid message.
    for (i, m) in messages.iter().enumerate() {
        let Some(o) = m.as_object() else {
            return Err(wrong_type(&format!("messages[{i}]"), "an object", m));
        };
        let (role, content) = role_and_content(o);
        match role {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => {}
            Some(Value::String(r)) => {
                return Err(out_of_range(
                    &format!("messages[{i}].role"),
                    &format!("'{r}' is not one of {}", ROLES.join(", ")),
                ))
            }
            Some(v) => return Err(wrong_type(&format!("messages[{i}].role"), "a string", v)),
            None => {
                return Err(GatewayError::invalid_code(
                    format!("Missing required parameter: 'messages[{i}].role'."),
                    Some(&format!("messages[{i}].role")),
                    "missing_required_parameter",
                ))
            }
        }
        match content {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(wrong_type(
                    &format!("messages[{i}].content"),
                    "a string or an array",
                    v,
                ))
            }
        }
    }
    let stream = match f.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong_type("stream", "a boolean", v)),
    };
    let include_usage = match f.stream_options {
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
    check_number(f.temperature, "temperature", 0.0, 2.0)?;
    check_number(f.top_p, "top_p", 0.0, 1.0)?;
    check_number(f.presence_penalty, "presence_penalty", -2.0, 2.0)?;
    check_number(f.frequency_penalty, "frequency_penalty", -2.0, 2.0)?;
    check_int(f.n, "n", 1, 128)?;
    check_int(f.max_tokens, "max_tokens", 1, i64::MAX)?;
    check_int(
        f.max_completion_tokens,
        "max_completion_tokens",
        1,
        i64::MAX,
    )?;
    check_int(f.seed, "seed", i64::MIN, i64::MAX)?;
    check_int(f.top_logprobs, "top_logprobs", 0, 20)?;
    check_kind(f.logprobs, "logprobs", Value::is_boolean, "a boolean")?;
    check_kind(f.user, "user", Value::is_string, "a string")?;
    check_kind(f.tools, "tools", Value::is_array, "an array")?;
    check_kind(
        f.response_format,
        "response_format",
        Value::is_object,
        "an object",
    )?;
    check_kind(
        f.tool_choice,
        "tool_choice",
        |v| v.is_string() || v.is_object(),
        "a string or an object",
    )?;
    match f.stop {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            if a.len() > 4 {
                return Err(out_of_range("stop", "at most 4 stop sequences"));
            }
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    }
    if let Some(Value::Array(tools)) = f.tools {
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
