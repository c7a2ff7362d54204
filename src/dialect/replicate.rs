//! Replicate predictions API, in sync mode (`Prefer: wait=N`): image generation and
//! language models.
//!
//! * `POST /models/{owner}/{name}/predictions` with `{"input": {...}}`
//!   (`owner/name:version` goes to `POST /predictions` with `{"version", "input"}`).
//! * The answer is a prediction object: `status` (`starting`, `processing`, `succeeded`,
//!   `failed`, `canceled`, `aborted`), `output`, `error`, `metrics`
//!   (`input_token_count`/`output_token_count` for language models), `urls.get`.
//!
//! The dialect is pure, so it cannot poll: a prediction still running when the
//! synchronous wait ends is a `Pending` error (504) that names it (with its `urls.get`).
//! Streaming (the prediction's `urls.stream` SSE) is not implemented: `stream: true` is
//! refused with a 400 before any upstream call.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::fireworks::{aspect_ratio_for, FLUX_ASPECT_RATIOS};
use super::openai::OpenAiStream;
use super::{
    default_classify, ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated,
    UpstreamFailure, UpstreamRequest, Usage,
};

pub struct Replicate;

/// Replicate holds a sync request open at most 60 s.
const MAX_WAIT_SECS: u64 = 60;

fn unsupported(message: impl Into<String>, param: &str) -> DialectError {
    DialectError::unsupported(message, Some(param))
}

/// `owner/name` or `owner/name:version`, each part `[A-Za-z0-9._-]`.
fn check_model(model: &str) -> Result<(), DialectError> {
    let (name, version) = match model.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (model, None),
    };
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let ok = matches!(name.split_once('/'), Some((o, n)) if part_ok(o) && part_ok(n))
        && version.is_none_or(part_ok);
    if ok {
        Ok(())
    } else {
        Err(unsupported(
            format!("'{model}' is not a Replicate model (owner/name or owner/name:version)"),
            "model",
        ))
    }
}

/// The create-prediction request for `input`.
fn prediction(t: &Target, input: Value) -> Result<UpstreamRequest, DialectError> {
    check_model(t.model)?;
    let (path, body) = if t.model.contains(':') {
        (
            t.profile.path_for(t.endpoint, "/predictions", t.model),
            json!({"version": t.model, "input": input}),
        )
    } else {
        (
            t.profile
                .path_for(t.endpoint, "/models/{model}/predictions", t.model),
            json!({"input": input}),
        )
    };
    let wait = t
        .profile
        .extra
        .wait_secs
        .unwrap_or(MAX_WAIT_SECS)
        .clamp(1, MAX_WAIT_SECS);
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("prefer".to_string(), format!("wait={wait}")),
    ];
    // Optional deadline so a prediction the gateway stopped waiting for is not left running.
    if let Some(c) = t.profile.extra.cancel_after.as_deref() {
        headers.push(("cancel-after".to_string(), c.to_string()));
    }
    Ok(UpstreamRequest {
        method: "POST",
        path,
        headers,
        body: Bytes::from(
            serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
        ),
    })
}

/// A finished prediction's `output`, or the error that explains why there is none.
fn succeeded(body: &[u8]) -> Result<Value, DialectError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| DialectError::Malformed(format!("prediction is not JSON: {e}")))?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let status = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| DialectError::Malformed("prediction has no status".into()))?;
    match status {
        "succeeded" => {}
        "failed" | "canceled" | "aborted" => {
            let err = match v.get("error") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "no error message".to_string(),
                Some(other) => other.to_string(),
            };
            return Err(DialectError::Upstream(format!(
                "Replicate prediction {id} {status}: {}",
                err.chars().take(2000).collect::<String>()
            )));
        }
        "starting" | "processing" => {
            let get = v.pointer("/urls/get").and_then(Value::as_str).unwrap_or("");
            return Err(DialectError::Pending(format!(
                "Replicate prediction {id} is still {status} after the synchronous wait; the gateway does not poll (the prediction can be fetched at {get})"
            )));
        }
        other => {
            return Err(DialectError::Malformed(format!(
                "prediction {id} has unknown status '{other}'"
            )))
        }
    }
    Ok(v.get_mut("output").map(Value::take).unwrap_or(Value::Null))
}

fn prediction_usage(body: &[u8]) -> (Usage, Option<String>) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let n = |k: &str| v.pointer(&format!("/metrics/{k}")).and_then(Value::as_f64);
    let (i, o) = (n("input_token_count"), n("output_token_count"));
    let usage = Usage {
        prompt_tokens: i.unwrap_or(0.0) as u64,
        completion_tokens: o.unwrap_or(0.0) as u64,
        reported: i.is_some() || o.is_some(),
        ..Usage::default()
    };
    let model = v.get("model").and_then(Value::as_str).map(str::to_string);
    (usage, model)
}

/// Text of an OpenAI message content (string or text parts).
fn text_of(m: &Value) -> Result<String, DialectError> {
    match m.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Ok(String::new()),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => s.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    _ => {
                        return Err(unsupported(
                            "Replicate language models take text only through the gateway (no image or audio parts)",
                            "messages",
                        ))
                    }
                }
            }
            Ok(s)
        }
        Some(_) => Err(unsupported(
            "message content must be a string or parts",
            "messages",
        )),
    }
}

/// OpenAI messages → (`system_prompt`, `prompt`). One user turn is the prompt as is; a
/// conversation becomes a plain `User:`/`Assistant:` transcript ending with `Assistant:`.
fn prompts(messages: &[Value]) -> Result<(Option<String>, String), DialectError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&str, String)> = Vec::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" => system.push(text_of(m)?),
            "user" => turns.push(("User", text_of(m)?)),
            "assistant" => {
                if m.get("tool_calls").is_some_and(|t| !t.is_null()) {
                    return Err(unsupported(
                        "Replicate language models have no tool calls",
                        "messages",
                    ));
                }
                turns.push(("Assistant", text_of(m)?));
            }
            other => {
                return Err(unsupported(
                    format!("message role '{other}' is not supported by Replicate language models"),
                    "messages",
                ))
            }
        }
    }
    let prompt = match turns.as_slice() {
        [] => {
            return Err(unsupported(
                "at least one user message is required",
                "messages",
            ))
        }
        [("User", text)] => text.clone(),
        _ => {
            let mut s = String::new();
            for (who, text) in &turns {
                s.push_str(who);
                s.push_str(": ");
                s.push_str(text);
                s.push_str("\n\n");
            }
            s.push_str("Assistant:");
            s
        }
    };
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, prompt))
}

impl Dialect for Replicate {
    fn name(&self) -> &'static str {
        "replicate"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let b = &req.body;
        if req.stream {
            return Err(unsupported(
                "streaming is not supported for Replicate models through this gateway; send stream=false",
                "stream",
            ));
        }
        if req.has_tools() {
            return Err(unsupported(
                "Replicate language models have no tool calling",
                "tools",
            ));
        }
        if b.get("n")
            .is_some_and(|n| !n.is_null() && n.as_u64() != Some(1))
        {
            return Err(unsupported(
                "Replicate generates one choice per request (n=1)",
                "n",
            ));
        }
        if let Some(rf) = b
            .get("response_format")
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
        {
            if rf != "text" {
                return Err(unsupported(
                    format!("response_format '{rf}' is not supported by Replicate language models"),
                    "response_format",
                ));
            }
        }
        let (system, prompt) = prompts(req.messages())?;
        let mut input = Map::new();
        input.insert("prompt".into(), Value::String(prompt));
        if let Some(s) = system {
            input.insert("system_prompt".into(), Value::String(s));
        }
        let max_key = t
            .profile
            .extra
            .max_tokens_param
            .as_deref()
            .unwrap_or("max_tokens");
        if let Some(m) = b
            .get("max_completion_tokens")
            .or_else(|| b.get("max_tokens"))
            .filter(|v| v.is_u64())
        {
            input.insert(max_key.into(), m.clone());
        }
        for k in [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "seed",
        ] {
            if let Some(v) = b.get(k).filter(|v| v.is_number()) {
                input.insert(k.into(), v.clone());
            }
        }
        // Replicate's language models take stop sequences as one comma-separated string.
        match b.get("stop") {
            Some(Value::String(s)) => {
                input.insert("stop_sequences".into(), Value::String(s.clone()));
            }
            Some(Value::Array(a)) if !a.is_empty() => {
                let s: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                input.insert("stop_sequences".into(), Value::String(s.join(",")));
            }
            _ => {}
        }
        prediction(t, Value::Object(input))
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        let output = succeeded(body)?;
        let text = match output {
            Value::Array(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        Value::String(x) => s.push_str(&x),
                        Value::Null => {}
                        _ => {
                            return Err(DialectError::Malformed(
                                "language model output is not text".into(),
                            ))
                        }
                    }
                }
                s
            }
            Value::String(s) => s,
            Value::Null => String::new(),
            _ => {
                return Err(DialectError::Malformed(
                    "language model output is not text".into(),
                ))
            }
        };
        let (usage, served) = prediction_usage(body);
        let max = req
            .body
            .get("max_completion_tokens")
            .or_else(|| req.body.get("max_tokens"))
            .and_then(Value::as_u64);
        // Replicate gives no stop reason; hitting the requested limit exactly means "length".
        let finish = match max {
            Some(m) if usage.reported && usage.completion_tokens >= m => "length",
            _ => "stop",
        };
        let out = json!({
            "id": t.request_id,
            "object": "chat.completion",
            "created": t.created,
            "model": t.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish}],
            "usage": usage.to_openai(),
        });
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage,
            model: served,
        })
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        // Never used: build_chat refuses stream=true. An OpenAI translator fed a
        // prediction object ends with a clean "truncated" error rather than a panic.
        Box::new(OpenAiStream::new(
            t.request_id,
            req.include_usage,
            t.created,
        ))
    }

    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        // Replicate errors are problem+json: {"title", "detail", "status"}.
        let mut f = default_classify(status, body);
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            if let (Some(title), Some(detail)) = (
                v.get("title").and_then(Value::as_str),
                v.get("detail").and_then(Value::as_str),
            ) {
                if !detail.starts_with(title) {
                    f.message = format!("{title}: {detail}").chars().take(2000).collect();
                }
            }
        }
        f
    }

    fn build_images(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let prompt = body
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| unsupported("'prompt' must be a string", "prompt"))?;
        match body.get("response_format").and_then(Value::as_str) {
            None | Some("url") => {}
            Some(other) => {
                return Err(unsupported(
                    format!("Replicate returns image URLs: response_format '{other}' is not available, use 'url'"),
                    "response_format",
                ))
            }
        }
        let mut input = json!({"prompt": prompt});
        match body.get("n") {
            None | Some(Value::Null) => {}
            Some(n) => match n.as_u64() {
                Some(1) => {}
                // Sent only when asked for: not every image model has `num_outputs`.
                Some(k) if (2..=4).contains(&k) => input["num_outputs"] = json!(k),
                _ => {
                    return Err(unsupported(
                        "Replicate image models generate 1 to 4 images (n)",
                        "n",
                    ))
                }
            },
        }
        if let Some(ar) =
            aspect_ratio_for(body.get("size").and_then(Value::as_str), FLUX_ASPECT_RATIOS)?
        {
            input["aspect_ratio"] = Value::String(ar);
        }
        if let Some(f) = body.get("output_format").and_then(Value::as_str) {
            input["output_format"] =
                Value::String(if f == "jpeg" { "jpg".into() } else { f.into() });
        }
        for k in ["seed", "aspect_ratio"] {
            if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
                input[k] = v.clone();
            }
        }
        prediction(t, input)
    }

    fn translate_images(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let urls: Vec<String> = match succeeded(body)? {
            Value::String(s) => vec![s],
            Value::Array(a) => a
                .into_iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s),
                    _ => Err(DialectError::Malformed("image output is not a URL".into())),
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        if urls.is_empty() {
            return Err(DialectError::Malformed(
                "prediction produced no image".into(),
            ));
        }
        let data: Vec<Value> = urls.iter().map(|u| json!({"url": u})).collect();
        let (_, served) = prediction_usage(body);
        let out = json!({"created": t.created, "data": data});
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage: Usage::default(),
            model: served,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    fn with_target<R>(model: &str, f: impl FnOnce(&Target) -> R) -> R {
        let p = ProviderProfile::parse(
            "name = \"replicate\"\ndialect = \"replicate\"\nbase_url = \"https://api.replicate.com/v1\"\napi_key_env = \"REPLICATE_API_TOKEN\"\n[extra]\ncancel_after = \"2m\"\n",
            "test",
        )
        .unwrap();
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = Target {
            profile: &p,
            endpoint: &e,
            model,
            stream: false,
            request_id: "req-1",
            created: 1_700_000_000,
            max_output_tokens: None,
        };
        f(&t)
    }

    fn chat(v: Value) -> ChatRequest {
        let raw = Bytes::from(serde_json::to_vec(&v).unwrap());
        let body = v.as_object().unwrap().clone();
        ChatRequest {
            raw,
            model: body["model"].as_str().unwrap().to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: false,
            body,
        }
    }

    fn prediction_json(status: &str, output: Value, error: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "id": "gm3qorzdhgbfurvjtvhg6dckhu", "model": "meta/meta-llama-3-8b-instruct",
            "version": "dp-4d2a",
            "input": {"prompt": "hi"}, "logs": "", "output": output, "data_removed": false,
            "error": error, "status": status, "created_at": "2025-01-01T00:00:00.000Z",
            "urls": {"cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
                     "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
                     "stream": "https://stream.replicate.com/v1/files/abc",
                     "web": "https://replicate.com/p/gm3qorzdhgbfurvjtvhg6dckhu"},
            "metrics": {"predict_time": 0.2, "input_token_count": 11, "output_token_count": 3}
        }))
        .unwrap()
    }

    #[test]
    fn builds_chat_prediction() {
        let req = chat(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
            "max_tokens": 64, "temperature": 0.2, "stop": ["\n\n", "END"]}));
        let up = with_target("meta/meta-llama-3-8b-instruct", |t| {
            Replicate.build_chat(&req, t)
        })
        .unwrap();
        assert_eq!(
            up.path,
            "/v1/models/meta/meta-llama-3-8b-instruct/predictions"
        );
        assert!(up.headers.contains(&("prefer".into(), "wait=60".into())));
        assert!(up.headers.contains(&("cancel-after".into(), "2m".into())));
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            b,
            json!({"input": {"prompt": "Say hello", "system_prompt": "Be terse.", "max_tokens": 64,
                "temperature": 0.2, "stop_sequences": "\n\n,END"}})
        );
        // A conversation becomes a transcript; a pinned version uses /predictions.
        let req = chat(json!({"model": "m", "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]}));
        let up = with_target("meta/llama:5a6809ca", |t| Replicate.build_chat(&req, t)).unwrap();
        assert_eq!(up.path, "/v1/predictions");
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(b["version"], "meta/llama:5a6809ca");
        assert_eq!(
            b["input"]["prompt"],
            "User: Hi\n\nAssistant: Hello\n\nUser: Bye\n\nAssistant:"
        );
    }

    #[test]
    fn refuses_chat_features_it_lacks() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            chat(b)
        };
        for (req, param) in [
            (with("stream", json!(true)), "stream"),
            (
                with(
                    "tools",
                    json!([{"type": "function", "function": {"name": "f"}}]),
                ),
                "tools",
            ),
            (with("n", json!(2)), "n"),
            (
                with("response_format", json!({"type": "json_object"})),
                "response_format",
            ),
            (
                with("messages", json!([{"role": "tool", "content": "x"}])),
                "messages",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
                ),
                "messages",
            ),
        ] {
            match with_target("a/b", |t| Replicate.build_chat(&req, t)) {
                Err(DialectError::Unsupported { param: p, .. }) => {
                    assert_eq!(p.as_deref(), Some(param))
                }
                other => panic!("{param}: {other:?}"),
            }
        }
        let req = chat(base);
        assert!(with_target("not-a-model", |t| Replicate.build_chat(&req, t)).is_err());
    }

    #[test]
    fn translates_chat_prediction() {
        let req = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}),
        );
        let body = prediction_json("succeeded", json!(["Hel", "lo", "!"]), Value::Null);
        let tr = with_target("a/b", |t| Replicate.translate_chat(&body, t, &req)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["id"], "req-1");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], 11);
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert!(tr.usage.reported);
        assert_eq!(tr.model.as_deref(), Some("meta/meta-llama-3-8b-instruct"));
    }

    #[test]
    fn failed_running_and_malformed_predictions() {
        let req = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        let failed = prediction_json("failed", Value::Null, json!("CUDA out of memory"));
        assert!(matches!(
            with_target("a/b", |t| Replicate.translate_chat(&failed, t, &req)),
            Err(DialectError::Upstream(m)) if m.contains("failed: CUDA out of memory")
        ));
        let running = prediction_json("processing", Value::Null, Value::Null);
        assert!(matches!(
            with_target("a/b", |t| Replicate.translate_images(&running, t)),
            Err(DialectError::Pending(m)) if m.contains("still processing") && m.contains("/v1/predictions/gm3q")
        ));
        for bad in [&b"{"[..], br#"{"id":"x"}"#, br#"{"status":"weird"}"#] {
            assert!(matches!(
                with_target("a/b", |t| Replicate.translate_chat(bad, t, &req)),
                Err(DialectError::Malformed(_))
            ));
        }
        let numbers = prediction_json("succeeded", json!([1, 2]), Value::Null);
        assert!(with_target("a/b", |t| Replicate.translate_chat(&numbers, t, &req)).is_err());
    }

    #[test]
    fn images_both_ways() {
        let body = json!({"prompt": "a cat", "n": 2, "size": "1024x1792", "output_format": "jpeg"});
        let up = with_target("black-forest-labs/flux-schnell", |t| {
            Replicate.build_images(body.as_object().unwrap(), t)
        })
        .unwrap();
        assert_eq!(
            up.path,
            "/v1/models/black-forest-labs/flux-schnell/predictions"
        );
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            b,
            json!({"input": {"prompt": "a cat", "num_outputs": 2, "aspect_ratio": "9:16", "output_format": "jpg"}})
        );
        for (body, param) in [
            (
                json!({"prompt": "a", "response_format": "b64_json"}),
                "response_format",
            ),
            (json!({"prompt": "a", "n": 9}), "n"),
            (json!({"prompt": "a", "size": "10x1000"}), "size"),
        ] {
            match with_target("a/b", |t| {
                Replicate.build_images(body.as_object().unwrap(), t)
            }) {
                Err(DialectError::Unsupported { param: p, .. }) => {
                    assert_eq!(p.as_deref(), Some(param))
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        let resp = prediction_json(
            "succeeded",
            json!([
                "https://replicate.delivery/xezq/a/out-0.webp",
                "https://replicate.delivery/xezq/a/out-1.webp"
            ]),
            Value::Null,
        );
        let tr = with_target("a/b", |t| Replicate.translate_images(&resp, t)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(
            v["data"][1]["url"],
            "https://replicate.delivery/xezq/a/out-1.webp"
        );
        // Single-output models answer with one string.
        let one = prediction_json(
            "succeeded",
            json!("https://replicate.delivery/x.png"),
            Value::Null,
        );
        let tr = with_target("a/b", |t| Replicate.translate_images(&one, t)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn problem_json_errors() {
        let f = Replicate.classify_error(
            422,
            br#"{"title":"Input validation failed","detail":"- input.prompt: Invalid type. Expected: string, given: integer","status":422}"#,
        );
        assert!(!f.retryable);
        assert!(
            f.message
                .starts_with("Input validation failed: - input.prompt"),
            "{}",
            f.message
        );
        let f = Replicate.classify_error(
            429,
            br#"{"title":"Request was throttled.","detail":"Request was throttled. Your rate limit resets in ~30s.","status":429}"#,
        );
        assert!(f.retryable);
        assert_eq!(f.code, "rate_limit_exceeded");
        assert_eq!(
            f.message,
            "Request was throttled. Your rate limit resets in ~30s."
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let req = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
            let _ = with_target("a/b", |t| Replicate.translate_chat(&data, t, &req));
            let _ = with_target("a/b", |t| Replicate.translate_images(&data, t));
        }
    }
}
