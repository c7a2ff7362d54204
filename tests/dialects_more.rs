//! Hugging Face embeddings, Fireworks FLUX image generation and Replicate predictions
//! through the real `loopgate` binary in front of mock upstreams that speak the
//! providers' wire formats (tests/common/mocks_more.rs), failure modes included.

mod common;
#[path = "common/mocks_more.rs"]
mod mocks_more;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const HF_KEY: &str = "hf_test_secret_token";
const FW_KEY: &str = "fw_test_secret_key";
const RP_KEY: &str = "r8_test_secret_token";

async fn post(g: &GatewayProc, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(g.url(path))
        .header("authorization", auth())
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Status and JSON body of a response.
async fn answer(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The trace row of a request (bounded wait for the batched writer).
async fn trace(g: &GatewayProc, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(conn) = rusqlite::Connection::open(g.db_path()) {
            let row = conn.query_row(
                "SELECT provider, status, prompt_tokens, completion_tokens, cost_usd, usage_reported, endpoint, error FROM traces WHERE request_id = ?1",
                [id],
                |r| {
                    Ok(json!({
                        "provider": r.get::<_, Option<String>>(0)?, "status": r.get::<_, i64>(1)?,
                        "prompt_tokens": r.get::<_, i64>(2)?, "completion_tokens": r.get::<_, i64>(3)?,
                        "cost_usd": r.get::<_, f64>(4)?, "usage_reported": r.get::<_, i64>(5)?,
                        "endpoint": r.get::<_, String>(6)?, "error": r.get::<_, Option<String>>(7)?,
                    }))
                },
            );
            if let Ok(v) = row {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no trace row for {id}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn assert_error(v: &Value, needle: &str, secret: &str) {
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "expected '{needle}' in: {v}");
    assert!(!v.to_string().contains(secret), "secret leaked: {v}");
}

// ---------------------------------------------------------------- Hugging Face

fn hf_env(m: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("HF_TOKEN", HF_KEY.into()),
        ("HF_BASE_URL", format!("{}/v1", m.url())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_embeddings_and_chat() {
    use base64::Engine;
    let mock = MockUpstream::start(mocks_more::huggingface(HF_KEY)).await;
    let g = GatewayProc::start("", &hf_env(&mock));

    // Batch input → one OpenAI embedding per input, in order.
    let r = post(
        &g,
        "/v1/embeddings",
        &json!({"model": "huggingface/BAAI/bge-small-en-v1.5", "input": ["first text", "second"]}),
    )
    .await;
    assert_eq!(header(&r, "loopgate-provider"), "huggingface");
    let id = header(&r, "loopgate-request-id");
    let (s, v) = answer(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "BAAI/bge-small-en-v1.5");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, text) in ["first text", "second"].iter().enumerate() {
        assert_eq!(data[i]["object"], "embedding");
        assert_eq!(data[i]["index"], i);
        assert_eq!(data[i]["embedding"], json!(mocks_more::hf_vector(text)));
    }
    assert_eq!(v["usage"], json!({"prompt_tokens": 0, "total_tokens": 0}));
    let reqs = mock.requests();
    let sent = &reqs[0];
    assert_eq!(
        sent.path,
        "/hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction"
    );
    assert_eq!(
        sent.header("authorization"),
        Some(&*format!("Bearer {HF_KEY}"))
    );
    assert_eq!(
        sent.json(),
        json!({"inputs": ["first text", "second"], "normalize": true})
    );
    let t = trace(&g, &id).await;
    assert_eq!(t["endpoint"], "embeddings");
    assert_eq!(t["usage_reported"], 0, "HF reports no token counts: {t}");
    assert_eq!(t["cost_usd"], 0.0);

    // A bare Hub id resolves to Hugging Face (the "*/*" pattern); base64 as the SDKs ask.
    let (s, v) = answer(
        post(
            &g,
            "/v1/embeddings",
            &json!({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "x", "encoding_format": "base64"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want: Vec<f32> = mocks_more::hf_vector("x")
        .iter()
        .map(|x| *x as f32)
        .collect();
    assert_eq!(floats, want);

    // dimensions and token arrays: 400 naming the parameter, before any upstream call.
    let before = mock.count();
    for (body, param) in [
        (
            json!({"model": "huggingface/BAAI/bge-small-en-v1.5", "input": "x", "dimensions": 2}),
            "dimensions",
        ),
        (
            json!({"model": "huggingface/BAAI/bge-small-en-v1.5", "input": [[1, 2]]}),
            "input",
        ),
    ] {
        let (s, v) = answer(post(&g, "/v1/embeddings", &body).await).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    assert_eq!(
        mock.count(),
        before,
        "no upstream call for refused requests"
    );

    // An unpooled model: a clear error, not made-up vectors.
    let (s, v) = answer(
        post(
            &g,
            "/v1/embeddings",
            &json!({"model": "huggingface/google-bert/bert-base-uncased", "input": ["a"]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502, "{v}");
    assert_error(&v, "token-level", HF_KEY);

    // Failure modes: loading (503), rate limit (429 + retry-after), malformed body.
    let r = post(
        &g,
        "/v1/embeddings",
        &json!({"model": "huggingface/acme/loading-model", "input": "a"}),
    )
    .await;
    let (s, v) = answer(r).await;
    assert_eq!(s, 503, "{v}");
    assert_error(&v, "currently loading", HF_KEY);
    let r = post(
        &g,
        "/v1/embeddings",
        &json!({"model": "huggingface/acme/ratelimited-model", "input": "a"}),
    )
    .await;
    assert_eq!(header(&r, "retry-after"), "12");
    let (s, v) = answer(r).await;
    assert_eq!(s, 429, "{v}");
    let (s, v) = answer(
        post(
            &g,
            "/v1/embeddings",
            &json!({"model": "huggingface/acme/malformed-model", "input": "a"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502, "{v}");

    // Chat still goes to the OpenAI-compatible router.
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("huggingface/meta-llama/Llama-3.3-70B-Instruct"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert!(mock
        .requests()
        .iter()
        .any(|r| r.path == "/v1/chat/completions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_bad_token_is_401_without_the_token() {
    let mock = MockUpstream::start(mocks_more::huggingface("the-right-token")).await;
    let g = GatewayProc::start("", &hf_env(&mock));
    let (s, v) = answer(
        post(
            &g,
            "/v1/embeddings",
            &json!({"model": "huggingface/BAAI/bge-small-en-v1.5", "input": "a"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert_error(&v, "Invalid credentials", HF_KEY);
}

// ---------------------------------------------------------------- Fireworks

fn fw_env(m: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("FIREWORKS_API_KEY", FW_KEY.into()),
        ("FIREWORKS_BASE_URL", format!("{}/inference/v1", m.url())),
    ]
}

const FLUX: &str = "accounts/fireworks/models/flux-1-schnell-fp8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fireworks_flux_images() {
    use base64::Engine;
    let mock = MockUpstream::start(mocks_more::fireworks(FW_KEY)).await;
    let g = GatewayProc::start("", &fw_env(&mock));

    let r = post(
        &g,
        "/v1/images/generations",
        &json!({"model": FLUX, "prompt": "a lighthouse at dusk", "size": "1792x1024", "response_format": "b64_json", "seed": 5}),
    )
    .await;
    assert_eq!(header(&r, "loopgate-provider"), "fireworks");
    let id = header(&r, "loopgate-request-id");
    let (s, v) = answer(r).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["created"].is_u64(), "{v}");
    let b64 = v["data"][0]["b64_json"].as_str().unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "a PNG, data-URL prefix stripped"
    );
    let reqs = mock.requests();
    let sent = &reqs[0];
    assert_eq!(
        sent.path,
        "/inference/v1/workflows/accounts/fireworks/models/flux-1-schnell-fp8/text_to_image"
    );
    assert_eq!(sent.header("accept"), Some("application/json"));
    assert_eq!(
        sent.header("authorization"),
        Some(&*format!("Bearer {FW_KEY}"))
    );
    assert_eq!(
        sent.json(),
        json!({"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9", "seed": 5})
    );
    // Fireworks reports no usage and the catalog has no per-image price: cost 0.
    let t = trace(&g, &id).await;
    assert_eq!(t["endpoint"], "images.generations");
    assert_eq!(t["cost_usd"], 0.0, "{t}");

    // What the workflow cannot do: 400 naming the parameter, no upstream call.
    let before = mock.count();
    for (extra, param) in [
        (json!({"response_format": "url"}), "response_format"),
        (json!({"n": 2}), "n"),
        (json!({"size": "256x2048"}), "size"),
    ] {
        let mut body = json!({"model": FLUX, "prompt": "x"});
        for (k, val) in extra.as_object().unwrap() {
            body[k] = val.clone();
        }
        let (s, v) = answer(post(&g, "/v1/images/generations", &body).await).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    assert_eq!(mock.count(), before);

    // Safety filter, 429 with retry-after, 5xx, malformed body.
    let (s, v) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": FLUX, "prompt": "UNSAFE thing", "safety_check": true}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502, "{v}");
    assert_error(&v, "CONTENT_FILTERED", FW_KEY);
    let r = post(
        &g,
        "/v1/images/generations",
        &json!({"model": "accounts/fireworks/models/flux-ratelimited", "prompt": "x"}),
    )
    .await;
    assert_eq!(header(&r, "retry-after"), "7");
    let (s, v) = answer(r).await;
    assert_eq!(s, 429, "{v}");
    assert_error(&v, "rate limit", FW_KEY);
    let (s, _) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": "accounts/fireworks/models/flux-broken", "prompt": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 500);
    let (s, _) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": "accounts/fireworks/models/flux-garbage", "prompt": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502);

    // Chat is still OpenAI-compatible on the same profile.
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("accounts/fireworks/models/llama-v3p3-70b-instruct"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fireworks_bad_key_is_401() {
    let mock = MockUpstream::start(mocks_more::fireworks("another-key")).await;
    let g = GatewayProc::start("", &fw_env(&mock));
    let (s, v) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": FLUX, "prompt": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert_error(&v, "API key you provided is invalid", FW_KEY);
}

// ---------------------------------------------------------------- Replicate

fn rp_env(m: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("REPLICATE_API_TOKEN", RP_KEY.into()),
        ("REPLICATE_BASE_URL", format!("{}/v1", m.url())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_images() {
    let mock = MockUpstream::start(mocks_more::replicate(RP_KEY)).await;
    let g = GatewayProc::start("", &rp_env(&mock));

    // A bare owner/name of an image-model owner routes to Replicate.
    let r = post(
        &g,
        "/v1/images/generations",
        &json!({"model": "black-forest-labs/flux-schnell", "prompt": "a fox", "n": 2, "size": "1024x1024"}),
    )
    .await;
    assert_eq!(header(&r, "loopgate-provider"), "replicate");
    let (s, v) = answer(r).await;
    assert_eq!(s, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{v}");
    assert_eq!(
        data[1]["url"],
        "https://replicate.delivery/xezq/kT3b9/out-1.webp"
    );
    let reqs = mock.requests();
    let sent = &reqs[0];
    assert_eq!(
        sent.path,
        "/v1/models/black-forest-labs/flux-schnell/predictions"
    );
    assert_eq!(sent.header("prefer"), Some("wait=60"));
    assert_eq!(
        sent.header("authorization"),
        Some(&*format!("Bearer {RP_KEY}"))
    );
    assert_eq!(
        sent.json(),
        json!({"input": {"prompt": "a fox", "num_outputs": 2, "aspect_ratio": "1:1"}})
    );

    // b64_json cannot be served (Replicate returns URLs): 400 before any call.
    let before = mock.count();
    let (s, v) = answer(
        post(&g, "/v1/images/generations", &json!({"model": "replicate/black-forest-labs/flux-schnell", "prompt": "x", "response_format": "b64_json"})).await,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "response_format");
    assert_eq!(mock.count(), before);

    // A failed prediction and one still processing after the wait: clear errors.
    let (s, v) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": "replicate/black-forest-labs/flux-schnell", "prompt": "FAILME"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502, "{v}");
    assert_error(&v, "CUDA error: out of memory", RP_KEY);
    let (s, v) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": "replicate/black-forest-labs/flux-schnell", "prompt": "draw SLOWLY"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        s, 504,
        "a prediction still running is a gateway timeout: {v}"
    );
    assert_error(&v, "still processing", RP_KEY);
    assert_error(&v, "/v1/predictions/rrr4f1yqxsrm80ckmgbt9v1cwm", RP_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_language_models() {
    let mock = MockUpstream::start(mocks_more::replicate(RP_KEY)).await;
    let g = GatewayProc::start("", &rp_env(&mock));

    // The catalog lists meta/llama-3-8b-instruct under Replicate: routed and priced.
    let body = json!({"model": "meta/llama-3-8b-instruct", "max_tokens": 100, "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]});
    let r = post(&g, "/v1/chat/completions", &body).await;
    assert_eq!(header(&r, "loopgate-provider"), "replicate");
    let id = header(&r, "loopgate-request-id");
    let (s, v) = answer(r).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 11);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let reqs = mock.requests();
    let sent = &reqs[0];
    assert_eq!(sent.path, "/v1/models/meta/llama-3-8b-instruct/predictions");
    assert_eq!(
        sent.json(),
        json!({"input": {"prompt": "Say hello", "system_prompt": "You are terse.", "max_tokens": 100}})
    );
    let t = trace(&g, &id).await;
    assert_eq!(
        (t["prompt_tokens"].as_i64(), t["completion_tokens"].as_i64()),
        (Some(11), Some(3))
    );
    assert_eq!(t["usage_reported"], 1);
    let want = 11.0 * 5e-8 + 3.0 * 2.5e-7;
    assert!(
        (t["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{t}"
    );

    // A pinned version goes to /predictions with `version`.
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("replicate/meta/meta-llama-3-8b-instruct:5a6809ca"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let sent = mock.requests().last().unwrap().clone();
    assert_eq!(sent.path, "/v1/predictions");
    assert_eq!(
        sent.json()["version"],
        "meta/meta-llama-3-8b-instruct:5a6809ca"
    );

    // stream=true and tools: 400 naming the capability, before any call.
    let before = mock.count();
    let mut streamed = chat_body("replicate/meta/meta-llama-3-8b-instruct");
    streamed["stream"] = json!(true);
    let (s, v) = answer(post(&g, "/v1/chat/completions", &streamed).await).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "stream");
    assert_error(&v, "streaming", RP_KEY);
    let mut tools = chat_body("replicate/meta/meta-llama-3-8b-instruct");
    tools["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let (s, v) = answer(post(&g, "/v1/chat/completions", &tools).await).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "tools");
    assert_eq!(mock.count(), before);

    // Failure modes: 429 + retry-after, 422 validation, 5xx, malformed body.
    let r = post(
        &g,
        "/v1/chat/completions",
        &chat_body("replicate/acme/ratelimited"),
    )
    .await;
    assert_eq!(header(&r, "retry-after"), "30");
    let (s, v) = answer(r).await;
    assert_eq!(s, 429, "{v}");
    assert_error(&v, "throttled", RP_KEY);
    let (s, v) = answer(
        post(
            &g,
            "/v1/images/generations",
            &json!({"model": "replicate/acme/ratelimited", "prompt": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 429, "{v}");
    let (s, _) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("replicate/acme/broken"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502);
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("replicate/acme/garbage"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502, "{v}");
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &json!({"model": "replicate/meta/meta-llama-3-8b-instruct",
            "messages": [{"role": "user", "content": "FAILME"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 502, "{v}");
    assert_error(&v, "failed", RP_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_validation_and_auth_errors_pass_through() {
    // A model whose input has no prompt field: Replicate answers 422 problem+json.
    let reply = Reply::Json(
        422,
        vec![],
        json!({"title": "Input validation failed", "detail": "- input.prompt: Invalid type. Expected: string", "status": 422}).to_string(),
    );
    let mock = MockUpstream::start(reply).await;
    let g = GatewayProc::start("", &rp_env(&mock));
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("replicate/meta/meta-llama-3-8b-instruct"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_error(&v, "Input validation failed: - input.prompt", RP_KEY);
    drop(g);
    let mock = MockUpstream::start(mocks_more::replicate("other-token")).await;
    let g = GatewayProc::start("", &rp_env(&mock));
    let (s, v) = answer(
        post(
            &g,
            "/v1/chat/completions",
            &chat_body("replicate/meta/meta-llama-3-8b-instruct"),
        )
        .await,
    )
    .await;
    assert_eq!(s, 401, "{v}");
    assert_error(&v, "Unauthenticated", RP_KEY);
}
