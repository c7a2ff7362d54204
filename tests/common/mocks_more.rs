//! Mock upstreams for Hugging Face feature-extraction, Fireworks FLUX text_to_image and
//! Replicate predictions, following their real wire formats and failure modes. Used by
//! `tests/dialects_more.rs` as `#[path = "common/mocks_more.rs"] mod mocks_more;`.
//!
//! Each mock checks the bearer key it is given and answers 401 in the provider's own
//! error shape otherwise. Special model names / prompts trigger failure modes (see the
//! constants).
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::{json, Value};

use crate::common::{openai_like, Received, Reply};

/// A 1x1 transparent PNG, base64.
pub const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// Embedding dimension the HF mock answers with.
pub const HF_DIM: usize = 4;

fn bearer_ok(r: &Received, key: &str) -> bool {
    r.header("authorization") == Some(format!("Bearer {key}").as_str())
}

fn json_reply(status: u16, headers: &[(&str, &str)], body: Value) -> Reply {
    Reply::Json(
        status,
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body.to_string(),
    )
}

// ---------------------------------------------------------------- Hugging Face

/// A unit vector per text, deterministic in its content.
pub fn hf_vector(text: &str) -> Vec<f64> {
    let mut v: Vec<f64> = (0..HF_DIM)
        .map(|i| ((text.len() + i * 7) % 11) as f64 + 1.0)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    for x in &mut v {
        *x /= norm;
    }
    v
}

/// `router.huggingface.co`: the OpenAI-compatible `/v1/chat/completions` and the HF
/// Inference `/hf-inference/models/<repo>/pipeline/feature-extraction`.
///
/// Repo names trigger: `*/loading-*` → 503 `{"error": "... is currently loading",
/// "estimated_time"}`, `*/ratelimited-*` → 429 with retry-after, `*/malformed-*` → 200
/// non-JSON, `bert-base-uncased` → token-level (unpooled) features.
pub fn huggingface(key: &'static str) -> Reply {
    let chat = openai_like();
    Reply::Dynamic(Arc::new(move |r: &Received| {
        if !bearer_ok(r, key) {
            return json_reply(
                401,
                &[],
                json!({"error": "Invalid credentials in Authorization header"}),
            );
        }
        if r.path == "/v1/chat/completions" {
            return chat.clone();
        }
        let Some(repo) = r
            .path
            .strip_prefix("/hf-inference/models/")
            .and_then(|p| p.strip_suffix("/pipeline/feature-extraction"))
        else {
            return json_reply(404, &[], json!({"error": "Not Found"}));
        };
        let name = repo.rsplit('/').next().unwrap_or("");
        if name.starts_with("loading-") {
            return json_reply(
                503,
                &[],
                json!({"error": format!("Model {repo} is currently loading"), "estimated_time": 20.0}),
            );
        }
        if name.starts_with("ratelimited-") {
            return json_reply(
                429,
                &[("retry-after", "12")],
                json!({"error": "Rate limit reached. You reached free usage limit (reset hourly)."}),
            );
        }
        if name.starts_with("malformed-") {
            return Reply::Json(200, vec![], "[[0.1, 0.2".into());
        }
        let b = r.json();
        let inputs: Vec<String> = match &b["inputs"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) if a.iter().all(Value::is_string) => a
                .iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect(),
            _ => {
                return json_reply(
                    400,
                    &[],
                    json!({"error": "Input should be a valid string or list of strings"}),
                )
            }
        };
        if repo == "google-bert/bert-base-uncased" {
            // No pooling: one vector per token.
            let out: Vec<Value> = inputs
                .iter()
                .map(|t| json!([hf_vector(t), hf_vector("tok"), hf_vector(t)]))
                .collect();
            return json_reply(200, &[], Value::Array(out));
        }
        let out: Vec<Value> = inputs.iter().map(|t| json!(hf_vector(t))).collect();
        json_reply(200, &[], Value::Array(out))
    }))
}

// ---------------------------------------------------------------- Fireworks

/// Fireworks: the OpenAI-compatible chat path under `/inference/v1`, and the FLUX
/// workflow `/inference/v1/workflows/accounts/fireworks/models/<id>/text_to_image`.
/// With `Accept: application/json` the workflow answers `{"id", "base64": [data URL],
/// "finishReason", "seed"}`; with `image/*` it answers raw bytes (not used by the
/// gateway). A prompt containing `UNSAFE` with `safety_check: true` is filtered; model
/// `flux-ratelimited` → 429 with retry-after; `flux-broken` → 500; `flux-garbage` →
/// 200 non-JSON.
pub fn fireworks(key: &'static str) -> Reply {
    let chat = openai_like();
    Reply::Dynamic(Arc::new(move |r: &Received| {
        if !bearer_ok(r, key) {
            return json_reply(
                401,
                &[],
                json!({"error": {"object": "error", "type": "invalid_request_error", "code": "UNAUTHORIZED", "message": "The API key you provided is invalid."}}),
            );
        }
        if r.path == "/inference/v1/chat/completions" {
            return chat.clone();
        }
        let Some(model) = r
            .path
            .strip_prefix("/inference/v1/workflows/accounts/fireworks/models/")
            .and_then(|p| p.strip_suffix("/text_to_image"))
        else {
            return json_reply(
                404,
                &[],
                json!({"error": {"object": "error", "type": "not_found_error", "message": "Model not found"}}),
            );
        };
        match model {
            "flux-ratelimited" => {
                return json_reply(
                    429,
                    &[("retry-after", "7")],
                    json!({"error": {"object": "error", "type": "rate_limit_error", "message": "Request rate limit exceeded"}}),
                )
            }
            "flux-broken" => {
                return json_reply(
                    500,
                    &[],
                    json!({"error": {"object": "error", "type": "internal_server_error", "message": "Internal server error"}}),
                )
            }
            "flux-garbage" => return Reply::Json(200, vec![], "<html>oops</html>".into()),
            _ => {}
        }
        let b = r.json();
        let Some(prompt) = b["prompt"].as_str() else {
            return json_reply(
                400,
                &[],
                json!({"error": {"object": "error", "type": "invalid_request_error", "message": "prompt: field required"}}),
            );
        };
        if let Some(ar) = b.get("aspect_ratio") {
            let ok = ar.as_str().is_some_and(|a| {
                [
                    "1:1", "21:9", "16:9", "3:2", "5:4", "4:5", "2:3", "9:16", "9:21", "4:3", "3:4",
                ]
                .contains(&a)
            });
            if !ok {
                return json_reply(
                    400,
                    &[],
                    json!({"error": {"object": "error", "type": "invalid_request_error", "message": "invalid aspect_ratio"}}),
                );
            }
        }
        if r.header("accept") != Some("application/json") {
            // Binary image answer; the gateway must never ask for it.
            return Reply::Json(200, vec![], "\u{89}PNG...".into());
        }
        let filtered = prompt.contains("UNSAFE") && b["safety_check"] == json!(true);
        json_reply(
            200,
            &[],
            json!({
                "id": "c5a0b4e7-7c62-4bb8-8f59-0f3f6b5b1a11",
                "base64": if filtered { json!([]) } else { json!([format!("data:image/png;base64,{PNG_B64}")]) },
                "finishReason": if filtered { "CONTENT_FILTERED" } else { "SUCCESS" },
                "seed": b["seed"].as_u64().unwrap_or(1_234_567_890),
            }),
        )
    }))
}

// ---------------------------------------------------------------- Replicate

fn problem(status: u16, title: &str, detail: &str, headers: &[(&str, &str)]) -> Reply {
    json_reply(
        status,
        headers,
        json!({"title": title, "detail": detail, "status": status}),
    )
}

/// A prediction object as the create endpoint returns it.
pub fn prediction(
    model: &str,
    input: &Value,
    status: &str,
    output: Value,
    error: Value,
    tokens: Option<(u64, u64)>,
) -> Value {
    let id = "rrr4f1yqxsrm80ckmgbt9v1cwm";
    let mut metrics = json!({"predict_time": 0.41, "total_time": 0.52});
    if let Some((i, o)) = tokens {
        metrics["input_token_count"] = json!(i);
        metrics["output_token_count"] = json!(o);
        metrics["tokens_per_second"] = json!(42.0);
        metrics["time_to_first_token"] = json!(0.05);
    }
    let done = matches!(status, "succeeded" | "failed" | "canceled");
    json!({
        "id": id, "model": model, "version": "hidden", "input": input, "logs": "",
        "output": output, "data_removed": false, "error": error, "status": status,
        "source": "api", "created_at": "2026-11-23T01:00:00.000Z",
        "started_at": "2026-11-23T01:00:00.100Z",
        "completed_at": if done { json!("2026-11-23T01:00:00.600Z") } else { Value::Null },
        "urls": {
            "cancel": format!("https://api.replicate.com/v1/predictions/{id}/cancel"),
            "get": format!("https://api.replicate.com/v1/predictions/{id}"),
            "stream": format!("https://stream.replicate.com/v1/files/{id}"),
            "web": format!("https://replicate.com/p/{id}"),
        },
        "metrics": if done { metrics } else { json!({}) },
    })
}

/// `api.replicate.com/v1`: `POST /models/{owner}/{name}/predictions` and
/// `POST /predictions` (`version`), sync mode (answers 201 with the finished prediction
/// when `Prefer: wait...` is sent, else 201 `starting`).
///
/// Language models (owner `meta`) answer `["Hel","lo","!"]` with 11/3 tokens; image models
/// answer `num_outputs` delivery URLs. Prompts trigger failures: `FAILME` → `failed`
/// prediction, `SLOWLY` → still `processing` after the wait; models: `acme/ratelimited`
/// → 429 problem+json with retry-after, `acme/broken` → 502, `acme/garbage` → 201
/// non-JSON; missing `input.prompt` → 422.
pub fn replicate(key: &'static str) -> Reply {
    Reply::Dynamic(Arc::new(move |r: &Received| {
        if !bearer_ok(r, key) {
            return problem(
                401,
                "Unauthenticated",
                "You did not pass a valid authentication token",
                &[],
            );
        }
        let b = r.json();
        let model = if let Some(m) = r
            .path
            .strip_prefix("/v1/models/")
            .and_then(|p| p.strip_suffix("/predictions"))
        {
            m.to_string()
        } else if r.path == "/v1/predictions" {
            let v = b["version"].as_str().unwrap_or("");
            v.split(':').next().unwrap_or("").to_string()
        } else {
            return problem(
                404,
                "Not found",
                "The requested resource could not be found.",
                &[],
            );
        };
        match model.as_str() {
            "acme/ratelimited" => {
                return problem(
                    429,
                    "Request was throttled.",
                    "Request was throttled. Your rate limit resets in ~30s.",
                    &[("retry-after", "30")],
                )
            }
            "acme/broken" => {
                return problem(502, "Bad Gateway", "upstream connect error", &[]);
            }
            "acme/garbage" => return Reply::Json(201, vec![], "{\"id\": \"x\", \"status\"".into()),
            _ => {}
        }
        let input = b["input"].clone();
        let Some(prompt) = input["prompt"].as_str() else {
            return json_reply(
                422,
                &[],
                json!({"title": "Input validation failed", "detail": "- input: prompt is required\n", "status": 422,
                    "invalid_fields": [{"type": "required", "field": "input", "description": "prompt is required"}]}),
            );
        };
        let waited = r.header("prefer").is_some_and(|p| p.starts_with("wait"));
        if !waited || prompt.contains("SLOWLY") {
            let status = if waited { "processing" } else { "starting" };
            return json_reply(
                201,
                &[],
                prediction(&model, &input, status, Value::Null, Value::Null, None),
            );
        }
        if prompt.contains("FAILME") {
            return json_reply(
                201,
                &[],
                prediction(
                    &model,
                    &input,
                    "failed",
                    Value::Null,
                    json!("CUDA error: out of memory"),
                    None,
                ),
            );
        }
        if model.starts_with("meta/") {
            return json_reply(
                201,
                &[],
                prediction(
                    &model,
                    &input,
                    "succeeded",
                    json!(["Hel", "lo", "!"]),
                    Value::Null,
                    Some((11, 3)),
                ),
            );
        }
        let n = input["num_outputs"].as_u64().unwrap_or(1);
        let ext = input["output_format"]
            .as_str()
            .unwrap_or("webp")
            .to_string();
        let urls: Vec<Value> = (0..n)
            .map(|i| {
                json!(format!(
                    "https://replicate.delivery/xezq/kT3b9/out-{i}.{ext}"
                ))
            })
            .collect();
        json_reply(
            201,
            &[],
            prediction(
                &model,
                &input,
                "succeeded",
                Value::Array(urls),
                Value::Null,
                None,
            ),
        )
    }))
}
