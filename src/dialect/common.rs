//! Helpers shared by several dialects: reading OpenAI request parts the same way everywhere.
//! Each dialect module imports from here, never from a sibling dialect.

use serde_json::{json, Map, Value};

use super::DialectError;

/// `data:<mime>;base64,<data>` → (mime, data).
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// The URL of an OpenAI `image_url` part (string or `{url}` object).
pub(crate) fn image_url_of(part: &Value) -> Option<&str> {
    match part.get("image_url")? {
        Value::String(s) => Some(s),
        v => v.get("url").and_then(Value::as_str),
    }
}

/// Stop sequences from OpenAI `stop` (string or array).
pub(crate) fn stop_list(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(a)) => a.iter().filter(|s| s.is_string()).cloned().collect(),
        _ => Vec::new(),
    }
}

/// `max_completion_tokens` (current OpenAI name) or `max_tokens` (legacy).
pub(crate) fn requested_max_tokens(b: &Map<String, Value>) -> Option<u64> {
    b.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| b.get("max_tokens").and_then(Value::as_u64))
}

/// Text of an OpenAI `content` (string, or the text parts of an array).
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| {
                p.get("text").and_then(Value::as_str).filter(|_| {
                    p.get("type")
                        .and_then(Value::as_str)
                        .is_none_or(|t| t == "text")
                })
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A base64 data URL's payload, or a clear "unsupported" for remote URLs.
pub(crate) fn inline_image<'a>(
    part: &'a Value,
    provider: &str,
) -> Result<(&'a str, &'a str), DialectError> {
    let url = image_url_of(part)
        .ok_or_else(|| DialectError::unsupported("image_url part has no url", Some("messages")))?;
    parse_data_url(url).ok_or_else(|| {
        DialectError::unsupported(
            format!(
                "{provider} accepts only inline images (base64 data: URLs), not remote image URLs"
            ),
            Some("messages"),
        )
    })
}

/// `n` > 1 cannot be served by providers without candidates.
pub(crate) fn reject_n(body: &Map<String, Value>, provider: &str) -> Result<(), DialectError> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(DialectError::unsupported(
            format!("{provider} does not support n > 1"),
            Some("n"),
        ));
    }
    Ok(())
}

/// Tool-call arguments (a JSON string) as a JSON object (Bedrock, Ollama).
pub(crate) fn parse_arguments(args: Option<&Value>) -> Result<Value, DialectError> {
    match args {
        Some(Value::String(s)) if s.trim().is_empty() => Ok(json!({})),
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|_| {
            DialectError::unsupported(
                "assistant tool_calls arguments are not valid JSON",
                Some("messages"),
            )
        }),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        _ => Ok(json!({})),
    }
}
