//! Every native dialect over real loopback HTTP: the `loopgate` binary in front of mock
//! upstreams that speak the providers' own wire formats (tests/common/mocks.rs),
//! failure modes included. Checked from the client's side (OpenAI shape, JSON and
//! streams, tools, images), on the upstream's side (the translated native request), and
//! in the stored trace (usage, cost, fallback).

mod common;
#[path = "common/mocks.rs"]
mod mocks;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

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

/// The trace row of a request (bounded wait for the batched writer).
async fn trace(g: &GatewayProc, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(conn) = rusqlite::Connection::open(g.db_path()) {
            let row = conn.query_row(
                "SELECT provider, served_model, status, stream, fallback_used, prompt_tokens, completion_tokens, cached_tokens, cost_usd, attempts, error, usage_reported, endpoint FROM traces WHERE request_id = ?1",
                [id],
                |r| {
                    Ok(json!({
                        "provider": r.get::<_, Option<String>>(0)?, "served_model": r.get::<_, Option<String>>(1)?,
                        "status": r.get::<_, i64>(2)?, "stream": r.get::<_, i64>(3)?, "fallback_used": r.get::<_, i64>(4)?,
                        "prompt_tokens": r.get::<_, i64>(5)?, "completion_tokens": r.get::<_, i64>(6)?, "cached_tokens": r.get::<_, i64>(7)?,
                        "cost_usd": r.get::<_, f64>(8)?, "attempts": r.get::<_, String>(9)?, "error": r.get::<_, Option<String>>(10)?,
                        "usage_reported": r.get::<_, i64>(11)?, "endpoint": r.get::<_, String>(12)?,
                    }))
                },
            );
            if let Ok(v) = row {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no trace row for {id}");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn cost(tokens: (u64, u64), price: (f64, f64)) -> f64 {
    tokens.0 as f64 * price.0 + tokens.1 as f64 * price.1
}

fn assert_cost(t: &Value, expected: f64) {
    let got = t["cost_usd"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-9,
        "cost {got} != {expected}: {t}"
    );
}

/// A parsed OpenAI stream: its chunks (after checking the framing contract) and the
/// error event, if any. Panics when `[DONE]` is missing or not last.
struct Stream {
    chunks: Vec<Value>,
    error: Option<Value>,
}

impl Stream {
    fn parse(text: &str) -> Stream {
        let events = sse_events(text);
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "stream must end with [DONE]:\n{text}"
        );
        let mut chunks = Vec::new();
        let mut error = None;
        for e in &events[..events.len() - 1] {
            let v: Value = serde_json::from_str(e).unwrap_or_else(|_| panic!("not JSON: {e}"));
            if v.get("error").is_some() {
                assert!(error.is_none(), "two error events:\n{text}");
                error = Some(v);
                continue;
            }
            assert!(error.is_none(), "a chunk after the error event:\n{text}");
            assert_eq!(v["object"], "chat.completion.chunk", "{v}");
            chunks.push(v);
        }
        Stream { chunks, error }
    }

    fn content(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    fn finish(&self) -> Option<String> {
        self.chunks
            .iter()
            .rev()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
            .map(str::to_string)
    }

    fn usage(&self) -> Option<Value> {
        self.chunks
            .iter()
            .rev()
            .find(|c| c["usage"].is_object())
            .map(|c| c["usage"].clone())
    }

    /// Tool calls reassembled per index: (id, name, arguments); checks id and name come first.
    fn tool_calls(&self) -> Vec<(String, String, String)> {
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for c in &self.chunks {
            for tc in c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = tc["index"].as_u64().expect("tool call delta without index") as usize;
                if i == calls.len() {
                    let id = tc["id"]
                        .as_str()
                        .expect("first tool-call delta has an id")
                        .to_string();
                    let name = tc["function"]["name"]
                        .as_str()
                        .expect("first tool-call delta has a name")
                        .to_string();
                    calls.push((id, name, String::new()));
                }
                assert!(i < calls.len(), "tool call index {i} skipped one");
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(id, calls[i].0, "tool call id changed");
                }
                calls[i]
                    .2
                    .push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        calls
    }
}

/// Checks shared by every dialect's text stream with `include_usage`.
fn assert_text_stream(s: &Stream, id: &str, usage: (u64, u64)) {
    assert!(s.error.is_none(), "unexpected error event: {:?}", s.error);
    assert_eq!(s.content(), mocks::TEXT);
    assert_eq!(s.finish().as_deref(), Some("stop"));
    for c in &s.chunks {
        assert_eq!(c["id"], id);
        assert!(
            c.get("usage").is_some(),
            "include_usage: every chunk has usage: {c}"
        );
    }
    let last = s.chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["usage"]["prompt_tokens"], usage.0);
    assert_eq!(last["usage"]["completion_tokens"], usage.1);
    assert_eq!(last["usage"]["total_tokens"], usage.0 + usage.1);
}

fn assert_tool_stream(s: &Stream) {
    assert!(s.error.is_none(), "unexpected error event: {:?}", s.error);
    let calls = s.tool_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(!calls[0].0.is_empty());
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].2).unwrap_or(Value::Null),
        json!({"city": "Paris"}),
        "arguments {:?}",
        calls[0].2
    );
    assert_eq!(s.finish().as_deref(), Some("tool_calls"));
}

fn assert_text_json(v: &Value, usage: (u64, u64)) {
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], mocks::TEXT, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], usage.0, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], usage.1);
}

fn assert_tool_json(v: &Value) {
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert!(call["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(
        call["function"]["arguments"]
            .as_str()
            .expect("arguments are a string"),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(v["usage"]["prompt_tokens"], mocks::TOOL_USAGE.0);
    assert_eq!(v["usage"]["completion_tokens"], mocks::TOOL_USAGE.1);
}

/// A mid-stream failure: some content, then one OpenAI error event, then `[DONE]`.
fn assert_midstream_error(text: &str) {
    let s = Stream::parse(text);
    let e = s
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("no error event:\n{text}"));
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{e}"
    );
    assert!(e["error"]["type"].is_string(), "{e}");
    assert_eq!(
        s.content(),
        mocks::PIECES[0],
        "the content before the failure reaches the client"
    );
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello"}]})
}

fn streamed(mut body: Value, usage: bool) -> Value {
    body["stream"] = json!(true);
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn tool_chat(model: &str) -> Value {
    json!({"model": model,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "required"})
}

const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

fn image_chat(model: &str, url: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}}]}]})
}

fn data_url() -> String {
    format!("data:image/png;base64,{PNG_B64}")
}

fn midstream(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": format!("Say hello {}", mocks::MIDSTREAM_ERROR)}]})
}

/// Run the common chat checks (JSON, stream with and without include_usage, tools both
/// ways, mid-stream error) against `model`; returns the request ids of the text JSON
/// and text stream requests for trace checks.
async fn common_chat_checks(g: &GatewayProc, model: &str, provider: &str) -> (String, String) {
    let r = post(g, "/v1/chat/completions", &chat(model)).await;
    assert_eq!(r.status(), 200, "{model}: {}", r.text().await.unwrap());
    assert_eq!(header(&r, "loopgate-provider"), provider);
    assert_eq!(header(&r, "loopgate-fallback-used"), "false");
    let json_id = header(&r, "loopgate-request-id");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], json_id.as_str());
    assert_text_json(&v, mocks::TEXT_USAGE);

    let r = post(g, "/v1/chat/completions", &streamed(chat(model), true)).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/event-stream"));
    let stream_id = header(&r, "loopgate-request-id");
    let s = Stream::parse(&r.text().await.unwrap());
    assert_text_stream(&s, &stream_id, mocks::TEXT_USAGE);

    let r = post(g, "/v1/chat/completions", &streamed(chat(model), false)).await;
    let hidden_id = header(&r, "loopgate-request-id");
    let s = Stream::parse(&r.text().await.unwrap());
    assert_eq!(s.content(), mocks::TEXT);
    assert!(
        s.chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"] != json!([])),
        "no usage without include_usage"
    );
    // Usage is still counted when the client did not ask to see it.
    let t = trace(g, &hidden_id).await;
    assert_eq!(
        (t["prompt_tokens"].as_u64(), t["completion_tokens"].as_u64()),
        (Some(mocks::TEXT_USAGE.0), Some(mocks::TEXT_USAGE.1)),
        "{model}: {t}"
    );

    let v: Value = post(g, "/v1/chat/completions", &tool_chat(model))
        .await
        .json()
        .await
        .unwrap();
    assert_tool_json(&v);
    let r = post(g, "/v1/chat/completions", &streamed(tool_chat(model), true)).await;
    let s = Stream::parse(&r.text().await.unwrap());
    assert_tool_stream(&s);
    let u = s.usage().expect("tool stream usage");
    assert_eq!(u["completion_tokens"], mocks::TOOL_USAGE.1);

    let r = post(g, "/v1/chat/completions", &midstream(model)).await;
    assert_eq!(r.status(), 200, "the error came after the 200");
    let err_id = header(&r, "loopgate-request-id");
    assert_midstream_error(&r.text().await.unwrap());
    let t = trace(g, &err_id).await;
    assert!(
        t["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{model}: the trace records the mid-stream error: {t}"
    );
    (json_id, stream_id)
}

// ---------------------------------------------------------------- Anthropic

fn anthropic_env(m: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("ANTHROPIC_API_KEY", "sk-ant-test-secret".into()),
        ("ANTHROPIC_BASE_URL", m.url()),
    ]
}

const SONNET_PRICE: (f64, f64) = (3e-6, 1.5e-5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_translation() {
    let mock = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start("", &anthropic_env(&mock));
    let (json_id, stream_id) = common_chat_checks(&g, "claude-sonnet-4-5", "anthropic").await;

    // The native request: path, auth headers, top-level system, required max_tokens.
    let reqs = mock.requests();
    let first = &reqs[0];
    assert_eq!(first.path, "/v1/messages");
    assert_eq!(first.header("x-api-key"), Some("sk-ant-test-secret"));
    assert!(first.header("anthropic-version").is_some());
    assert!(first.header("authorization").is_none());
    let b = first.json();
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert!(b["system"].to_string().contains("You are terse."), "{b}");
    assert!(b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["role"] != "system"));
    assert!(b["max_tokens"].as_u64().is_some_and(|n| n > 0), "{b}");
    // Tools: input_schema, and tool_choice "required" → {"type":"any"}.
    let tb = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["tools"].is_array())
        .unwrap();
    assert_eq!(tb["tools"][0]["name"], "get_weather");
    assert_eq!(
        tb["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(tb["tool_choice"]["type"], "any");

    // Images: data URL → base64 source, http URL → url source.
    for (url, want) in [
        (
            data_url(),
            json!({"type": "base64", "media_type": "image/png", "data": PNG_B64}),
        ),
        (
            "https://example.com/cat.png".to_string(),
            json!({"type": "url", "url": "https://example.com/cat.png"}),
        ),
    ] {
        let before = mock.count();
        let r = post(
            &g,
            "/v1/chat/completions",
            &image_chat("claude-sonnet-4-5", &url),
        )
        .await;
        assert_eq!(r.status(), 200);
        let sent = mock.requests()[before].json();
        let parts = sent["messages"][0]["content"].as_array().unwrap().clone();
        let img = parts
            .iter()
            .find(|p| p["type"] == "image")
            .unwrap_or_else(|| panic!("no image block: {sent}"));
        assert_eq!(img["source"], want);
    }

    // Usage and cost in the traces, JSON and stream.
    let t = trace(&g, &json_id).await;
    assert_eq!(t["provider"], "anthropic");
    assert_eq!(
        (t["prompt_tokens"].as_u64(), t["completion_tokens"].as_u64()),
        (Some(11), Some(3))
    );
    assert_cost(&t, cost(mocks::TEXT_USAGE, SONNET_PRICE));
    // n > 1 cannot be expressed in the Messages API: 400 naming the parameter, no upstream call.
    let before = mock.count();
    let mut body = chat("claude-sonnet-4-5");
    body["n"] = json!(2);
    let r = post(&g, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "n", "{v}");
    assert_eq!(mock.count(), before);

    let t = trace(&g, &stream_id).await;
    assert_eq!(t["stream"], 1);
    assert_eq!(
        (t["prompt_tokens"].as_u64(), t["completion_tokens"].as_u64()),
        (Some(11), Some(3))
    );
    assert_cost(&t, cost(mocks::TEXT_USAGE, SONNET_PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_cache_tokens_are_reported_and_priced() {
    let body = json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 3}});
    let mock = MockUpstream::start(Reply::Json(200, vec![], body.to_string())).await;
    let g = GatewayProc::start("", &anthropic_env(&mock));
    let r = post(&g, "/v1/chat/completions", &chat("claude-sonnet-4-5")).await;
    let id = header(&r, "loopgate-request-id");
    let v: Value = r.json().await.unwrap();
    // OpenAI counts the whole input in prompt_tokens, cache reads in cached_tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 1110, "{v}");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1000);
    let t = trace(&g, &id).await;
    assert_eq!(t["cached_tokens"], 1000);
    // 10 fresh input + 100 cache writes + 1000 cache reads + 3 output.
    assert_cost(
        &t,
        10.0 * 3e-6 + 100.0 * 3.75e-6 + 1000.0 * 3e-7 + 3.0 * 1.5e-5,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_429_forwards_retry_after_and_529_is_overloaded() {
    let mock = MockUpstream::start(mocks::anthropic_rate_limited("17")).await;
    let g = GatewayProc::start("", &anthropic_env(&mock));
    let r = post(&g, "/v1/chat/completions", &chat("claude-sonnet-4-5")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "17");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic"),
        "names the provider tried: {v}"
    );
    assert!(!v.to_string().contains("sk-ant-test-secret"));
    drop(g);
    let mock = MockUpstream::start(mocks::anthropic_overloaded()).await;
    let g = GatewayProc::start("", &anthropic_env(&mock));
    let r = post(
        &g,
        "/v1/chat/completions",
        &streamed(chat("claude-sonnet-4-5"), false),
    )
    .await;
    assert_eq!(r.status(), 529, "the last upstream's status");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
}

// ---------------------------------------------------------------- fallback across dialects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_across_dialects() {
    let anthropic = MockUpstream::start(mocks::anthropic_overloaded()).await;
    let openai = MockUpstream::start(mocks::openai_full()).await;
    let gemini = MockUpstream::start(mocks::gemini_exhausted()).await;
    let claude_ok = MockUpstream::start(mocks::anthropic_like()).await;
    let mut env = anthropic_env(&anthropic);
    env.push(("OPENAI_API_KEY", "sk-test-openai".into()));
    env.push(("OPENAI_BASE_URL", format!("{}/v1", openai.url())));
    env.push(("GEMINI_API_KEY", "gm-test".into()));
    env.push(("GEMINI_BASE_URL", gemini.url()));
    let g = GatewayProc::start("[fallbacks]\n\"claude-sonnet-4-5\" = [\"openai/gpt-4o-mini\"]\n\"gemini-2.5-flash\" = [\"anthropic/claude-3-5-haiku-20241022\"]\n", &env);

    // Anthropic 529 → OpenAI serves, JSON and stream.
    let r = post(&g, "/v1/chat/completions", &chat("claude-sonnet-4-5")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "loopgate-provider"), "openai");
    assert_eq!(header(&r, "loopgate-model"), "gpt-4o-mini");
    assert_eq!(header(&r, "loopgate-fallback-used"), "true");
    let id = header(&r, "loopgate-request-id");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(anthropic.count(), 1);
    // The OpenAI upstream got an OpenAI body, not the Anthropic one.
    let sent = openai.requests()[0].json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["role"], "system");
    let t = trace(&g, &id).await;
    assert_eq!(t["fallback_used"], 1);
    assert_eq!(t["provider"], "openai");
    assert!(t["attempts"].as_str().unwrap().contains("anthropic"), "{t}");

    let r = post(
        &g,
        "/v1/chat/completions",
        &streamed(chat("claude-sonnet-4-5"), true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "loopgate-fallback-used"), "true");
    let id = header(&r, "loopgate-request-id");
    let s = Stream::parse(&r.text().await.unwrap());
    assert_text_stream(&s, &id, (11, 3));

    // Gemini 429 → Anthropic serves (a healthy Anthropic this time).
    drop(g);
    let mut env2 = anthropic_env(&claude_ok);
    env2.push(("GEMINI_API_KEY", "gm-test".into()));
    env2.push(("GEMINI_BASE_URL", gemini.url()));
    let g = GatewayProc::start(
        "[fallbacks]\n\"gemini-2.5-flash\" = [\"anthropic/claude-3-5-haiku-20241022\"]\n",
        &env2,
    );
    let r = post(
        &g,
        "/v1/chat/completions",
        &streamed(tool_chat("gemini-2.5-flash"), true),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "loopgate-provider"), "anthropic");
    assert_eq!(header(&r, "loopgate-fallback-used"), "true");
    assert_tool_stream(&Stream::parse(&r.text().await.unwrap()));
    assert!(gemini.count() >= 1);
    let sent = claude_ok.requests()[0].json();
    assert_eq!(sent["model"], "claude-3-5-haiku-20241022");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
}

// ---------------------------------------------------------------- Gemini

fn gemini_env(m: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("GEMINI_API_KEY", "gm-test-secret".into()),
        ("GEMINI_BASE_URL", m.url()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_translation() {
    let mock = MockUpstream::start(mocks::gemini_like()).await;
    let g = GatewayProc::start("", &gemini_env(&mock));
    let (json_id, stream_id) = common_chat_checks(&g, "gemini-2.5-flash", "gemini").await;
    let reqs = mock.requests();
    assert_eq!(
        reqs[0].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(reqs[0].header("x-goog-api-key"), Some("gm-test-secret"));
    assert_eq!(
        reqs[1].path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    let b = reqs[0].json();
    assert!(
        b["systemInstruction"]
            .to_string()
            .contains("You are terse."),
        "{b}"
    );
    assert_eq!(b["contents"][0]["role"], "user");
    let tb = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["tools"].is_array())
        .unwrap();
    assert_eq!(
        tb["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(tb["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    // Inline image.
    let before = mock.count();
    let r = post(
        &g,
        "/v1/chat/completions",
        &image_chat("gemini-2.5-flash", &data_url()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = mock.requests()[before].json();
    let parts = sent["contents"][0]["parts"].as_array().unwrap().clone();
    let img = parts
        .iter()
        .find(|p| p.get("inlineData").is_some())
        .unwrap_or_else(|| panic!("no inlineData: {sent}"));
    assert_eq!(img["inlineData"]["mimeType"], "image/png");
    assert_eq!(img["inlineData"]["data"], PNG_B64);
    let price = (3e-7, 2.5e-6);
    assert_cost(&trace(&g, &json_id).await, cost(mocks::TEXT_USAGE, price));
    assert_cost(&trace(&g, &stream_id).await, cost(mocks::TEXT_USAGE, price));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_429_is_forwarded() {
    let mock = MockUpstream::start(mocks::gemini_exhausted()).await;
    let g = GatewayProc::start("", &gemini_env(&mock));
    let r = post(&g, "/v1/chat/completions", &chat("gemini-2.5-flash")).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(!v.to_string().contains("gm-test-secret"));
}

// ---------------------------------------------------------------- Vertex (Gemini and Claude)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_translation() {
    let gem = MockUpstream::start(mocks::gemini_like()).await;
    let claude = MockUpstream::start(mocks::anthropic_like()).await;
    let token = MockUpstream::start(mocks::google_token_endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let sa = service_account(dir.path(), &format!("{}/token", token.url()));
    let env = vec![
        ("GOOGLE_APPLICATION_CREDENTIALS", sa),
        ("VERTEX_PROJECT", "test-proj".to_string()),
        ("VERTEX_TOKEN_URI", format!("{}/token", token.url())),
        ("VERTEX_BASE_URL", gem.url()),
        ("VERTEX_ANTHROPIC_BASE_URL", claude.url()),
    ];
    let g = GatewayProc::start("", &env);
    assert!(
        eventually(|| token.count() > 0, Duration::from_secs(10)).await,
        "token endpoint never called"
    );
    // The JWT assertion is RS256 over the service account's claims.
    let form = String::from_utf8_lossy(&token.requests()[0].body).to_string();
    let assertion = form.split("assertion=").nth(1).unwrap();
    assert_eq!(assertion.split('.').count(), 3);
    // No wait for the token to be stored: a request signed before the background fetch
    // finished waits for that fetch (`exchange::sign`).

    let (json_id, _) = common_chat_checks(&g, "vertex/gemini-2.5-flash", "vertex").await;
    assert_eq!(gem.requests()[0].path, "/v1/projects/test-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent");
    assert_cost(
        &trace(&g, &json_id).await,
        cost(mocks::TEXT_USAGE, (3e-7, 2.5e-6)),
    );

    let (json_id, stream_id) = common_chat_checks(
        &g,
        "vertex-anthropic/claude-sonnet-4-5@20250929",
        "vertex-anthropic",
    )
    .await;
    let reqs = claude.requests();
    assert_eq!(reqs[0].path, "/v1/projects/test-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict");
    assert!(reqs[1].path.ends_with(":streamRawPredict"));
    for r in reqs.iter().chain(gem.requests().iter()) {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer ya29.test-access-token")
        );
    }
    assert_eq!(reqs[0].json()["anthropic_version"], "vertex-2023-10-16");
    assert!(reqs[0].json().get("model").is_none());
    assert_cost(
        &trace(&g, &json_id).await,
        cost(mocks::TEXT_USAGE, SONNET_PRICE),
    );
    assert_cost(
        &trace(&g, &stream_id).await,
        cost(mocks::TEXT_USAGE, SONNET_PRICE),
    );
}

fn service_account(dir: &std::path::Path, token_uri: &str) -> String {
    let pem_path = dir.join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem_path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok);
    let key = json!({"type": "service_account", "project_id": "test-proj", "private_key_id": "kid",
        "private_key": std::fs::read_to_string(&pem_path).unwrap(), "client_email": "t@test-proj.iam.gserviceaccount.com", "token_uri": token_uri});
    let p = dir.join("sa.json");
    std::fs::write(&p, key.to_string()).unwrap();
    p.display().to_string()
}

// ---------------------------------------------------------------- Bedrock

fn bedrock_env(m: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", m.url()),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        ),
        ("AWS_SESSION_TOKEN", "session-token-example".into()),
    ]
}

const BEDROCK_MODEL: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_translation_and_event_stream_faults() {
    let mock = MockUpstream::start(mocks::bedrock_like()).await;
    let g = GatewayProc::start("", &bedrock_env(&mock));
    let (json_id, stream_id) = common_chat_checks(&g, BEDROCK_MODEL, "bedrock").await;
    let reqs = mock.requests();
    // The model id is one percent-encoded path segment; SigV4 with the session token.
    assert_eq!(
        reqs[0].path,
        "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    );
    assert_eq!(
        reqs[1].path,
        "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
    );
    let a = reqs[0].header("authorization").unwrap();
    assert!(
        a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
            && a.contains("/us-east-1/bedrock/aws4_request"),
        "{a}"
    );
    assert_eq!(
        reqs[0].header("x-amz-security-token"),
        Some("session-token-example")
    );
    assert!(reqs[0].header("x-amz-date").is_some());
    let b = reqs[0].json();
    assert_eq!(b["system"][0]["text"], "You are terse.", "{b}");
    assert_eq!(b["messages"][0]["content"][0]["text"], "Say hello");
    let tb = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b.get("toolConfig").is_some())
        .unwrap();
    assert_eq!(
        tb["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "get_weather"
    );
    assert_eq!(
        tb["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"],
        "object"
    );
    assert!(tb["toolConfig"]["toolChoice"].get("any").is_some(), "{tb}");
    // Image bytes.
    let before = mock.count();
    let r = post(
        &g,
        "/v1/chat/completions",
        &image_chat(BEDROCK_MODEL, &data_url()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = mock.requests()[before].json();
    let img = sent["messages"][0]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p.get("image").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("no image: {sent}"));
    assert_eq!(img["image"]["format"], "png");
    assert_eq!(img["image"]["source"]["bytes"], PNG_B64);
    // A frame with a bad CRC ends the stream with an error event, never a hang.
    let body = json!({"model": BEDROCK_MODEL, "stream": true, "messages": [{"role": "user", "content": "PLEASE_BAD_CRC"}]});
    let r = post(&g, "/v1/chat/completions", &body).await;
    assert_eq!(r.status(), 200);
    assert_midstream_error(&r.text().await.unwrap());
    let price = (3e-6, 1.5e-5);
    assert_cost(&trace(&g, &json_id).await, cost(mocks::TEXT_USAGE, price));
    assert_cost(&trace(&g, &stream_id).await, cost(mocks::TEXT_USAGE, price));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_throttling_is_forwarded() {
    let mock = MockUpstream::start(mocks::bedrock_throttled()).await;
    let g = GatewayProc::start("", &bedrock_env(&mock));
    let r = post(&g, "/v1/chat/completions", &chat(BEDROCK_MODEL)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(!v.to_string().contains("wJalrXUtnFEMI"));
}

// ---------------------------------------------------------------- Cohere

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_translation() {
    let mock = MockUpstream::start(mocks::cohere_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("CO_API_KEY", "co-test-secret".into()),
            ("COHERE_BASE_URL", mock.url()),
        ],
    );
    let (json_id, stream_id) = common_chat_checks(&g, "command-a-03-2025", "cohere").await;
    let reqs = mock.requests();
    assert_eq!(reqs[0].path, "/v2/chat");
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer co-test-secret")
    );
    let tb = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["tools"].is_array())
        .unwrap();
    assert_eq!(tb["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(tb["tool_choice"], "REQUIRED");
    let price = (2.5e-6, 1e-5);
    assert_cost(&trace(&g, &json_id).await, cost(mocks::TEXT_USAGE, price));
    assert_cost(&trace(&g, &stream_id).await, cost(mocks::TEXT_USAGE, price));
}

// ---------------------------------------------------------------- Ollama native

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_native_translation() {
    let mock = MockUpstream::start(mocks::ollama_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OLLAMA_HOST", mock.url()),
            ("OLLAMA_NATIVE_BASE_URL", mock.url()),
        ],
    );
    let (json_id, _) = common_chat_checks(&g, "ollama-native/llama3.2", "ollama-native").await;
    let reqs = mock.requests();
    assert_eq!(reqs[0].path, "/api/chat");
    assert_eq!(reqs[0].json()["stream"], false);
    assert_eq!(reqs[1].json()["stream"], true);
    // Images go as a base64 list on the message.
    let before = mock.count();
    let r = post(
        &g,
        "/v1/chat/completions",
        &image_chat("ollama-native/llava", &data_url()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sent = mock.requests()[before].json();
    assert_eq!(sent["messages"][0]["images"][0], PNG_B64, "{sent}");
    let t = trace(&g, &json_id).await;
    assert_eq!(
        (t["prompt_tokens"].as_u64(), t["completion_tokens"].as_u64()),
        (Some(11), Some(3))
    );
}

// ---------------------------------------------------------------- capabilities, embeddings, images

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_embeddings_and_images() {
    let openai = MockUpstream::start(mocks::openai_full()).await;
    let cohere = MockUpstream::start(mocks::cohere_like()).await;
    let gemini = MockUpstream::start(mocks::gemini_like()).await;
    let env = vec![
        ("OPENAI_API_KEY", "sk-test-openai".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", openai.url())),
        ("CO_API_KEY", "co-test".to_string()),
        ("COHERE_BASE_URL", cohere.url()),
        ("GEMINI_API_KEY", "gm-test".to_string()),
        ("GEMINI_BASE_URL", gemini.url()),
    ];
    let g = GatewayProc::start("", &env);

    // Vision on a text-only catalog model: 400 naming the capability, no upstream call.
    let r = post(
        &g,
        "/v1/chat/completions",
        &image_chat("gpt-3.5-turbo", &data_url()),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap().to_ascii_lowercase();
    assert!(msg.contains("vision") || msg.contains("image"), "{v}");
    assert_eq!(v["error"]["code"], "model_not_vision_capable");
    assert_eq!(openai.count(), 0, "no upstream call");

    // Embeddings: OpenAI (passthrough), Cohere and Gemini (translated), batch inputs.
    let input = json!(["first text", "second text"]);
    for (model, provider, priced) in [
        ("text-embedding-3-small", "openai", true),
        ("embed-english-v3.0", "cohere", true),
        ("gemini-embedding-001", "gemini", false),
    ] {
        let r = post(
            &g,
            "/v1/embeddings",
            &json!({"model": model, "input": input}),
        )
        .await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(header(&r, "loopgate-provider"), provider);
        let id = header(&r, "loopgate-request-id");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "list", "{v}");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "{v}");
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            assert!(
                d["embedding"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_f64)),
                "{v}"
            );
        }
        assert!(v["usage"]["prompt_tokens"].is_u64(), "{v}");
        let t = trace(&g, &id).await;
        assert_eq!(t["endpoint"], "embeddings");
        if priced {
            assert!(t["cost_usd"].as_f64().unwrap() > 0.0, "{model}: {t}");
        }
    }
    let sent = cohere
        .requests()
        .into_iter()
        .find(|r| r.path == "/v2/embed")
        .unwrap()
        .json();
    assert_eq!(sent["texts"], input);
    assert!(
        sent["input_type"].is_string() && sent["embedding_types"].is_array(),
        "{sent}"
    );
    let sent = gemini
        .requests()
        .into_iter()
        .find(|r| r.path.contains(":batchEmbedContents"))
        .unwrap();
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(
        sent.json()["requests"][1]["content"]["parts"][0]["text"],
        "second text"
    );

    // Images: OpenAI gpt-image-1, cost in the trace.
    let r = post(&g, "/v1/images/generations", &json!({"model": "gpt-image-1", "prompt": "a cat", "n": 1, "size": "1024x1024", "quality": "low"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "loopgate-provider"), "openai");
    let id = header(&r, "loopgate-request-id");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["b64_json"], "iVBORw0KGgo=", "{v}");
    assert!(openai
        .requests()
        .iter()
        .any(|r| r.path == "/v1/images/generations"));
    let t = trace(&g, &id).await;
    assert!(t["cost_usd"].as_f64().unwrap() > 0.0, "{t}");
}

/// `encoding_format: "base64"` (what the official SDKs ask for by default) must come back
/// as base64 little-endian float32 from translated providers too, as OpenAI answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_base64_for_translated_providers() {
    use base64::Engine;
    let cohere = MockUpstream::start(mocks::cohere_like()).await;
    let gemini = MockUpstream::start(mocks::gemini_like()).await;
    let env = vec![
        ("CO_API_KEY", "co-test".to_string()),
        ("COHERE_BASE_URL", cohere.url()),
        ("GEMINI_API_KEY", "gm-test".to_string()),
        ("GEMINI_BASE_URL", gemini.url()),
    ];
    let g = GatewayProc::start("", &env);
    for model in ["embed-english-v3.0", "gemini-embedding-001"] {
        let v: Value = post(
            &g,
            "/v1/embeddings",
            &json!({"model": model, "input": "x", "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
        let b64 = v["data"][0]["embedding"]
            .as_str()
            .unwrap_or_else(|| panic!("{model}: embedding is not a base64 string: {v}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, vec![0.5, -0.25, 0.125], "{model}");
    }
}

/// Every native stream decoded with event and frame boundaries at arbitrary bytes, and
/// streams that stop before their terminal event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_streams_split_anywhere_or_truncated() {
    let anthropic = MockUpstream::start(mocks::rechunk(mocks::anthropic_like(), 7)).await;
    let gemini = MockUpstream::start(mocks::rechunk(mocks::gemini_like(), 5)).await;
    let bedrock = MockUpstream::start(mocks::rechunk(mocks::bedrock_like(), 3)).await;
    let cohere = MockUpstream::start(mocks::rechunk(mocks::cohere_like(), 11)).await;
    let ollama = MockUpstream::start(mocks::rechunk(mocks::ollama_like(), 4)).await;
    let mut env = anthropic_env(&anthropic);
    env.extend(gemini_env(&gemini));
    env.extend(bedrock_env(&bedrock));
    env.push(("CO_API_KEY", "co-test".into()));
    env.push(("COHERE_BASE_URL", cohere.url()));
    env.push(("OLLAMA_HOST", ollama.url()));
    env.push(("OLLAMA_NATIVE_BASE_URL", ollama.url()));
    let g = GatewayProc::start("", &env);
    for model in [
        "claude-sonnet-4-5",
        "gemini-2.5-flash",
        BEDROCK_MODEL,
        "command-a-03-2025",
        "ollama-native/llama3.2",
    ] {
        let r = post(&g, "/v1/chat/completions", &streamed(chat(model), true)).await;
        let id = header(&r, "loopgate-request-id");
        let s = Stream::parse(&r.text().await.unwrap());
        assert_text_stream(&s, &id, mocks::TEXT_USAGE);
        let r = post(
            &g,
            "/v1/chat/completions",
            &streamed(tool_chat(model), true),
        )
        .await;
        assert_tool_stream(&Stream::parse(&r.text().await.unwrap()));
    }
    drop(g);

    // Streams cut before their terminal event end with an error event, then [DONE].
    let anthropic = MockUpstream::start(mocks::truncate(mocks::anthropic_like(), 3)).await;
    let bedrock = MockUpstream::start(mocks::truncate(mocks::bedrock_like(), 3)).await;
    let cohere = MockUpstream::start(mocks::truncate(mocks::cohere_like(), 2)).await;
    let ollama = MockUpstream::start(mocks::truncate(mocks::ollama_like(), 1)).await;
    let mut env = anthropic_env(&anthropic);
    env.extend(bedrock_env(&bedrock));
    env.push(("CO_API_KEY", "co-test".into()));
    env.push(("COHERE_BASE_URL", cohere.url()));
    env.push(("OLLAMA_HOST", ollama.url()));
    env.push(("OLLAMA_NATIVE_BASE_URL", ollama.url()));
    let g = GatewayProc::start("", &env);
    for model in [
        "claude-sonnet-4-5",
        BEDROCK_MODEL,
        "command-a-03-2025",
        "ollama-native/llama3.2",
    ] {
        let r = post(&g, "/v1/chat/completions", &streamed(chat(model), true)).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let s = Stream::parse(&text);
        assert!(
            s.error.is_some(),
            "{model}: a truncated stream must end with an error event:\n{text}"
        );
    }
}

/// Parallel tool calls in native streams get OpenAI indexes 0, 1 (whatever the native
/// block indexes are), each with its own id and name first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tool_calls_in_native_streams() {
    let ev = |e: &str, d: Value| format!("event: {e}\ndata: {d}\n\n").into_bytes();
    let anthropic = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking both."}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Par"}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_B", "name": "get_time", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"tz\": \"CET\"}"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 2}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ];
    let gemini = vec![format!("data: {}\r\n\r\n", json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_time", "args": {"tz": "CET"}}}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 30, "totalTokenCount": 50}})).into_bytes()];
    let be = |k: &str, d: Value| {
        loopgate::dialect::bedrock::eventstream::event_frame(k, d.to_string().as_bytes())
    };
    let bedrock = vec![
        be("messageStart", json!({"role": "assistant"})),
        be(
            "contentBlockStart",
            json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_A", "name": "get_weather"}}}),
        ),
        be(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"city\": \"Paris\"}"}}}),
        ),
        be("contentBlockStop", json!({"contentBlockIndex": 0})),
        be(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_B", "name": "get_time"}}}),
        ),
        be(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"tz\": \"CET\"}"}}}),
        ),
        be("contentBlockStop", json!({"contentBlockIndex": 1})),
        be("messageStop", json!({"stopReason": "tool_use"})),
        be(
            "metadata",
            json!({"usage": {"inputTokens": 20, "outputTokens": 30, "totalTokens": 50}, "metrics": {"latencyMs": 100}}),
        ),
    ];
    let chunks = |v: Vec<Vec<u8>>, ct: &str| {
        Reply::Chunks(
            200,
            ct.into(),
            v.into_iter().map(|p| (Duration::ZERO, p)).collect(),
        )
    };
    let a = MockUpstream::start(chunks(anthropic, "text/event-stream")).await;
    let gm = MockUpstream::start(chunks(gemini, "text/event-stream")).await;
    let b = MockUpstream::start(chunks(bedrock, "application/vnd.amazon.eventstream")).await;
    let mut env = anthropic_env(&a);
    env.extend(gemini_env(&gm));
    env.extend(bedrock_env(&b));
    let g = GatewayProc::start("", &env);
    for model in ["claude-sonnet-4-5", "gemini-2.5-flash", BEDROCK_MODEL] {
        let r = post(
            &g,
            "/v1/chat/completions",
            &streamed(tool_chat(model), true),
        )
        .await;
        let text = r.text().await.unwrap();
        let s = Stream::parse(&text);
        assert!(s.error.is_none(), "{model}: {text}");
        let calls = s.tool_calls();
        assert_eq!(calls.len(), 2, "{model}: {calls:?}");
        assert_ne!(calls[0].0, calls[1].0, "{model}: distinct ids");
        assert_eq!(
            (calls[0].1.as_str(), calls[1].1.as_str()),
            ("get_weather", "get_time"),
            "{model}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].2).unwrap(),
            json!({"city": "Paris"}),
            "{model}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&calls[1].2).unwrap(),
            json!({"tz": "CET"}),
            "{model}"
        );
        assert_eq!(s.finish().as_deref(), Some("tool_calls"), "{model}");
        assert_eq!(s.usage().unwrap()["completion_tokens"], 30, "{model}");
    }
}

// ---------------------------------------------------------------- structured output

fn schema_chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Weather city?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true,
            "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}}}})
}

/// The client's view of a structured answer: JSON content, no tool calls, `stop`.
async fn assert_structured(g: &GatewayProc, model: &str) {
    let r = post(g, "/v1/chat/completions", &schema_chat(model, false)).await;
    assert_eq!(r.status(), 200, "{model}");
    let v: Value = r.json().await.unwrap();
    let m = &v["choices"][0]["message"];
    let content: Value =
        serde_json::from_str(m["content"].as_str().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(content, json!({"city": "Paris"}), "{v}");
    assert!(m.get("tool_calls").is_none_or(Value::is_null), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let r = post(g, "/v1/chat/completions", &schema_chat(model, true)).await;
    assert_eq!(r.status(), 200);
    let s = Stream::parse(&r.text().await.unwrap());
    assert!(s.error.is_none(), "{:?}", s.error);
    assert!(s.tool_calls().is_empty());
    let content: Value = serde_json::from_str(&s.content()).unwrap_or(Value::Null);
    assert_eq!(content, json!({"city": "Paris"}), "{}", s.content());
    assert_eq!(s.finish().as_deref(), Some("stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_is_enforced_per_provider() {
    // Anthropic: a forced tool whose input schema is the requested schema.
    let mock = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start("", &anthropic_env(&mock));
    assert_structured(&g, "claude-sonnet-4-5").await;
    let b = mock.requests()[0].json();
    assert_eq!(b["tools"][0]["name"], "json_response", "{b}");
    assert_eq!(
        b["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(
        b["tool_choice"],
        json!({"type": "tool", "name": "json_response"})
    );
    drop(g);

    // Bedrock Converse: the same through toolConfig (JSON mode used to be a 400).
    let mock = MockUpstream::start(mocks::bedrock_like()).await;
    let g = GatewayProc::start("", &bedrock_env(&mock));
    assert_structured(&g, BEDROCK_MODEL).await;
    let b = mock.requests()[0].json();
    let spec = &b["toolConfig"]["tools"][0]["toolSpec"];
    assert_eq!(spec["name"], "json_response", "{b}");
    assert_eq!(spec["inputSchema"]["json"]["required"], json!(["city"]));
    assert!(b["toolConfig"]["toolChoice"].get("any").is_some(), "{b}");
    drop(g);

    // Gemini 2.5: native JSON mode with the full JSON Schema.
    let mock = MockUpstream::start(mocks::gemini_like()).await;
    let g = GatewayProc::start("", &gemini_env(&mock));
    let r = post(
        &g,
        "/v1/chat/completions",
        &schema_chat("gemini-2.5-flash", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"city": "Paris"}));
    let gc = &mock.requests()[0].json()["generationConfig"];
    assert_eq!(gc["responseMimeType"], "application/json");
    assert_eq!(
        gc["responseJsonSchema"]["additionalProperties"], false,
        "{gc}"
    );
    assert!(gc.get("responseSchema").is_none());
}
