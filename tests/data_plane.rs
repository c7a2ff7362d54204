//! The data plane over real loopback HTTP: the `loopgate` binary in front of mock
//! OpenAI-compatible upstreams, including their failure modes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn openai_env(mock: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", "sk-test-openai-secret-000".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
    ]
}

/// `GET /v1/logs/{id}` once the trace has been written (bounded wait).
async fn log_entry(g: &GatewayProc, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = client()
            .get(g.url(&format!("/v1/logs/{id}")))
            .header("authorization", auth())
            .send()
            .await
            .unwrap();
        if r.status() == 200 || std::time::Instant::now() > deadline {
            return r.json().await.unwrap();
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(g: &GatewayProc, body: &Value) -> reqwest::Response {
    client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_chat_is_openai_shaped() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let r = post(&g, &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let id = h["loopgate-request-id"].to_str().unwrap().to_string();
    assert_eq!(h["loopgate-provider"], "openai");
    assert_eq!(h["loopgate-model"], "gpt-4o");
    assert_eq!(h["loopgate-fallback-used"], "false");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id.as_str());
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 14);
    // The upstream saw the provider key, the right path, and identity encoding.
    let req = &mock.requests()[0];
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        req.header("authorization"),
        Some("Bearer sk-test-openai-secret-000")
    );
    assert_eq!(req.header("accept-encoding"), Some("identity"));
    // The trace is stored with usage and cost.
    assert!(
        eventually(
            || trace_rows(
                &g.db_path(),
                &format!("WHERE request_id = '{id}' AND prompt_tokens = 11 AND cost_usd > 0")
            ) == 1,
            Duration::from_secs(5)
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_include_usage_follows_the_contract() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&g, &body).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id.as_str());
        assert!(c.get("usage").is_some(), "every chunk carries usage: {c}");
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 3);
    for c in &chunks[..chunks.len() - 1] {
        assert!(c["usage"].is_null());
    }
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_include_usage_hides_usage_but_prices_it() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let r = post(&g, &body).await;
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert!(
            c.get("usage").is_none(),
            "no usage field without include_usage: {c}"
        );
        assert_ne!(c["choices"], json!([]));
    }
    // The gateway asked the upstream for usage anyway, to price the stream.
    assert_eq!(
        mock.requests()[0].json()["stream_options"]["include_usage"],
        true
    );
    assert!(eventually(|| trace_rows(&g.db_path(), &format!("WHERE request_id = '{id}' AND completion_tokens = 3 AND cost_usd > 0 AND stream = 1")) == 1, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_and_images_pass_through() {
    let tool_stream = vec![
        sse(
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}),
        ),
        sse(
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"finish_reason":null}]}),
        ),
        sse(
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"finish_reason":null}]}),
        ),
        sse(
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let mock = MockUpstream::start(Reply::Chunks(
        200,
        "text/event-stream".into(),
        tool_stream
            .into_iter()
            .map(|p| (Duration::ZERO, p))
            .collect(),
    ))
    .await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let body = json!({
        "model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image and what is the weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto"
    });
    let text = post(&g, &body).await.text().await.unwrap();
    let sent = mock.requests()[0].json();
    assert_eq!(
        sent["messages"][0]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    let mut args = String::new();
    let mut finish = None;
    for e in sse_events(&text) {
        if e == "[DONE]" {
            continue;
        }
        let c: Value = serde_json::from_str(&e).unwrap();
        if let Some(tc) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            args.push_str(tc[0]["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_errors() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let c = client();
    let send = |raw: &'static str| {
        c.post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .header("content-type", "application/json")
            .body(raw)
            .send()
    };
    for (raw, status, param) in [
        ("{not json", 400, Value::Null),
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            json!("model"),
        ),
        (r#"{"model":"gpt-4o"}"#, 400, json!("messages")),
        (
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            400,
            json!("temperature"),
        ),
        (
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"n":"2"}"#,
            400,
            json!("n"),
        ),
        (
            r#"{"model":"no-such-model-xyz","messages":[{"role":"user","content":"x"}]}"#,
            404,
            json!("model"),
        ),
    ] {
        let r = send(raw).await.unwrap();
        assert_eq!(r.status(), status, "{raw}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string());
        assert_eq!(v["error"]["param"], param, "{raw}: {v}");
    }
    let v: Value =
        send(r#"{"model":"no-such-model-xyz","messages":[{"role":"user","content":"x"}]}"#)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(mock.count(), 0, "bad input never reaches an upstream");
    // Unknown path and wrong method.
    let r = c
        .get(g.url("/v1/nope"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_and_large_bodies() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    // A 6 MiB valid body (far above Pingora's 64 KiB retry buffer) arrives intact.
    let big = "x".repeat(6 * 1024 * 1024);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": big}]});
    let raw = serde_json::to_vec(&body).unwrap();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("content-type", "application/json")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = &mock.requests()[0];
    assert_eq!(got.body.len(), raw.len());
    assert_eq!(got.body, raw, "forwarded byte for byte");
    drop(g);
    // Over the cap: 413 before any upstream call.
    let g = GatewayProc::start_with_server("max_body_bytes = 1048576\n", "", &openai_env(&mock));
    let before = mock.count();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "y".repeat(2 * 1024 * 1024)}]});
    let r = post(&g, &body).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(mock.count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let body = serde_json::to_vec(&chat_body("gpt-4o")).unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", g.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        auth(),
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(&body).await.unwrap();
    let mut resp = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&resp).contains("chat.completion")
        && std::time::Instant::now() < deadline
    {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.contains("200 OK") && text.contains("chat.completion"),
        "{text}"
    );
    assert!(
        mock.requests()[0].header("expect").is_none(),
        "Expect is not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication() {
    let mock = MockUpstream::start(openai_like()).await;
    let key = "lg-inference-only-key-abc";
    let hash = loopgate::auth::keys::hash_key(key);
    let g = GatewayProc::start(&format!("[[auth.keys]]\nid = \"app\"\nhash = \"{hash}\"\nscopes = [\"inference\"]\nproject = \"checkout\"\n"), &openai_env(&mock));
    let c = client();
    let r = c
        .post(g.url("/v1/chat/completions"))
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = c
        .post(g.url("/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    // Inference keys cannot read traces.
    let r = c
        .get(g.url("/v1/logs"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The key's project is forced on the trace.
    assert!(
        eventually(
            || trace_rows(
                &g.db_path(),
                &format!(
                    "WHERE request_id = '{id}' AND project_id = 'checkout' AND key_id = 'app'"
                )
            ) == 1,
            Duration::from_secs(5)
        )
        .await
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_headers_are_traced() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("loopgate-session-id", "s-1")
        .header("loopgate-session-name", "checkout flow")
        .header("loopgate-session-path", "/cart/pay")
        .header("loopgate-project-id", "shop")
        .header("loopgate-property-env", "staging")
        .header("loopgate-property-tier", "gold")
        .json(&json!({"model": "gpt-4o", "user": "u-42", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(eventually(|| trace_rows(&g.db_path(), &format!(
        "WHERE request_id = '{id}' AND session_id = 's-1' AND session_name = 'checkout flow' AND session_path = '/cart/pay' AND project_id = 'shop' AND user_id = 'u-42'"
    )) == 1, Duration::from_secs(5)).await);
    let text = log_entry(&g, &id).await.to_string();
    assert!(text.contains("staging") && text.contains("gold"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_forcing_and_model_override() {
    let openai = MockUpstream::start(openai_like()).await;
    let groq = MockUpstream::start(openai_like()).await;
    let mut env = openai_env(&openai);
    env.push(("GROQ_API_KEY", "gsk-test".into()));
    env.push(("GROQ_BASE_URL", format!("{}/openai/v1", groq.url())));
    let g = GatewayProc::start("", &env);
    let c = client();
    // provider/model prefix
    let r = post(&g, &chat_body("groq/llama-3.3-70b-versatile")).await;
    assert_eq!(r.headers()["loopgate-provider"], "groq");
    assert_eq!(
        groq.requests()[0].json()["model"],
        "llama-3.3-70b-versatile"
    );
    assert_eq!(groq.requests()[0].path, "/openai/v1/chat/completions");
    // x-provider header
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("x-provider", "groq")
        .json(&chat_body("some-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(groq.requests()[1].json()["model"], "some-model");
    // loopgate-provider alias
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("loopgate-provider", "groq")
        .json(&chat_body("other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["loopgate-provider"], "groq");
    // model override header replaces the body's model
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("loopgate-model-override", "gpt-4o-mini")
        .json(&chat_body("groq/llama-3.3-70b-versatile"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["loopgate-provider"], "openai");
    assert_eq!(openai.requests()[0].json()["model"], "gpt-4o-mini");
    // a known provider without credentials: 404 that names no secret
    let r = post(&g, &chat_body("mistral/mistral-large-latest")).await;
    assert_eq!(r.status(), 404);
    let t = r.text().await.unwrap();
    assert!(t.contains("not configured") && !t.contains("sk-"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_on_5xx_429_connect_and_timeout() {
    let bad = MockUpstream::start(Reply::Json(
        500,
        vec![],
        r#"{"error":{"message":"boom","type":"server_error"}}"#.into(),
    ))
    .await;
    let good = MockUpstream::start(openai_like()).await;
    let dead_port = free_port();
    let stall = MockUpstream::start(Reply::Stall).await;
    let env = vec![
        ("OPENAI_API_KEY", "sk-a".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", bad.url())),
        ("GROQ_API_KEY", "gsk-b".to_string()),
        ("GROQ_BASE_URL", format!("{}/v1", good.url())),
        ("MISTRAL_API_KEY", "m-c".to_string()),
        (
            "MISTRAL_BASE_URL",
            format!("http://127.0.0.1:{dead_port}/v1"),
        ),
        ("DEEPSEEK_API_KEY", "d-d".to_string()),
        ("DEEPSEEK_BASE_URL", format!("{}/v1", stall.url())),
    ];
    let g = GatewayProc::start_with_server(
        "read_timeout_secs = 1\n",
        "[fallbacks]\n\"gpt-4o\" = [\"mistral/mistral-small-latest\", \"deepseek/deepseek-chat\", \"groq/llama-3.3-70b-versatile\"]\n",
        &env,
    );
    let r = post(&g, &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["loopgate-provider"], "groq");
    assert_eq!(r.headers()["loopgate-fallback-used"], "true");
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(bad.count(), 1);
    assert_eq!(good.count(), 1);
    // The trace records every attempt with its outcome.
    let text = log_entry(&g, &id).await.to_string();
    for outcome in ["http_error", "connect_error", "timeout", "ok"] {
        assert!(
            text.contains(outcome),
            "attempt outcome {outcome} missing: {text}"
        );
    }
    let m = g.metrics().await;
    assert!(
        m.contains("loopgate_fallbacks_total{from_provider=\"openai\",to_provider=\"groq\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_candidates_failing_returns_last_status_and_retry_after() {
    let limited = MockUpstream::start(Reply::Json(
        429,
        vec![("retry-after".into(), "7".into())],
        r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#.into(),
    ))
    .await;
    let overloaded = MockUpstream::start(Reply::Json(
        503,
        vec![("retry-after".into(), "3".into())],
        r#"{"error":{"message":"The server is overloaded","type":"server_error"}}"#.into(),
    ))
    .await;
    let env = vec![
        ("OPENAI_API_KEY", "sk-a".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", limited.url())),
        ("GROQ_API_KEY", "gsk-b".to_string()),
        ("GROQ_BASE_URL", format!("{}/v1", overloaded.url())),
    ];
    let g = GatewayProc::start(
        "[fallbacks]\n\"gpt-4o\" = [\"groq/llama-3.3-70b-versatile\"]\n",
        &env,
    );
    let r = post(&g, &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "3");
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("openai") && msg.contains("groq"), "{msg}");
    drop(g);
    // Single candidate, 429: status and retry-after pass through.
    let g = GatewayProc::start("", &env);
    let r = post(&g, &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_faults_end_with_error_event_and_done() {
    // Reset after two chunks.
    let parts = openai_stream_parts("gpt-4o", &["a", "b", "c"], false);
    let reset = MockUpstream::start(Reply::Reset(
        "text/event-stream".into(),
        parts[..2].to_vec(),
    ))
    .await;
    let g = GatewayProc::start("", &openai_env(&reset));
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    let text = post(&g, &body).await.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]", "{text}");
    assert!(events.iter().any(|e| e.contains("\"error\"")), "{text}");
    drop(g);
    // A truncated SSE line then a clean close.
    let mut parts = openai_stream_parts("gpt-4o", &["a"], false);
    parts.truncate(2);
    parts.push(b"data: {\"id\":\"x\",\"cho".to_vec());
    let trunc = MockUpstream::start(Reply::Chunks(
        200,
        "text/event-stream".into(),
        parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
    ))
    .await;
    let g = GatewayProc::start("", &openai_env(&trunc));
    let text = post(&g, &body).await.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]", "{text}");
    assert!(events.iter().any(|e| e.contains("\"error\"")), "{text}");
    // A mid-stream error object from the upstream is relayed as an error event.
    drop(g);
    let mut parts = openai_stream_parts("gpt-4o", &["a"], false);
    parts.truncate(2);
    parts.push(sse(
        json!({"error": {"message": "model crashed", "type": "server_error"}}),
    ));
    let err = MockUpstream::start(Reply::Chunks(
        200,
        "text/event-stream".into(),
        parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
    ))
    .await;
    let g = GatewayProc::start("", &openai_env(&err));
    let text = post(&g, &body).await.text().await.unwrap();
    assert!(
        text.contains("model crashed") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_upstream_and_marks_trace() {
    let mut parts: Vec<(Duration, Vec<u8>)> = Vec::new();
    let p = openai_stream_parts("gpt-4o", &["a"], false);
    parts.push((Duration::ZERO, p[0].clone()));
    parts.push((Duration::ZERO, p[1].clone()));
    for _ in 0..200 {
        parts.push((Duration::from_millis(50), sse(json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"."},"finish_reason":null}]}))));
    }
    let slow = MockUpstream::start(Reply::Chunks(200, "text/event-stream".into(), parts)).await;
    let g = GatewayProc::start("", &openai_env(&slow));
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    let mut r = post(&g, &body).await;
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = r.chunk().await.unwrap();
    drop(r); // client goes away
             // The upstream connection is closed promptly (well before the 10 s the stream would take).
    assert!(
        eventually(
            || *slow.closed_early.lock().unwrap() >= 1,
            Duration::from_secs(3)
        )
        .await,
        "upstream not cancelled"
    );
    assert!(
        eventually(
            || trace_rows(
                &g.db_path(),
                &format!("WHERE request_id = '{id}' AND cancelled = 1")
            ) == 1,
            Duration::from_secs(5)
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_weighted_and_latency() {
    let a = MockUpstream::start(openai_like()).await;
    let b = MockUpstream::start(openai_like()).await;
    let env = vec![
        ("OPENAI_API_KEY", "sk-a".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", a.url())),
        ("GROQ_API_KEY", "gsk-b".to_string()),
        ("GROQ_BASE_URL", format!("{}/v1", b.url())),
    ];
    let g = GatewayProc::start(
        "[routes.split]\nstrategy = \"weighted\"\ntargets = [{ model = \"gpt-4o-mini\", weight = 80 }, { model = \"groq/llama-3.1-8b-instant\", weight = 20 }]\n\n[routes.default]\ntargets = [{ model = \"groq/llama-3.1-8b-instant\" }]\n",
        &env,
    );
    let c = client();
    for _ in 0..200 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .header("loopgate-routing-rule", "split")
            .json(&chat_body("ignored"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, 200);
    assert!((130..=190).contains(&na), "80/20 split gave {na}/{nb}");
    // model "auto" uses the default rule
    let r = post(&g, &chat_body("auto")).await;
    assert_eq!(r.headers()["loopgate-provider"], "groq");
    // an unknown rule is a clear 404
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("loopgate-routing-rule", "nope")
        .json(&chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_strategy_prefers_the_faster_upstream() {
    let slow = MockUpstream::start(Reply::Dynamic(std::sync::Arc::new(|r: &Received| {
        let model = r.json()["model"].as_str().unwrap_or("m").to_string();
        Reply::Chunks(
            200,
            "application/json".into(),
            vec![(
                Duration::from_millis(150),
                chat_json(&model, "slow", 1, 1).into_bytes(),
            )],
        )
    })))
    .await;
    let fast = MockUpstream::start(openai_like()).await;
    let env = vec![
        ("OPENAI_API_KEY", "sk-a".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", slow.url())),
        ("GROQ_API_KEY", "gsk-b".to_string()),
        ("GROQ_BASE_URL", format!("{}/v1", fast.url())),
    ];
    let g = GatewayProc::start("[routes.fast]\nstrategy = \"latency\"\ntargets = [{ model = \"gpt-4o-mini\" }, { model = \"groq/llama-3.1-8b-instant\" }]\n", &env);
    for _ in 0..12 {
        let r = post(&g, &chat_body("auto:fast")).await;
        assert_eq!(r.status(), 200);
    }
    // Each upstream is measured once, then the fast one takes the traffic.
    assert!(slow.count() <= 2, "slow served {}", slow.count());
    assert!(fast.count() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_on_file_change_and_sighup() {
    let a = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&a));
    let c = client();
    // `auto:<rule>` naming no rule: a 400 that says which config to add.
    let r = post(&g, &chat_body("auto:later")).await;
    assert_eq!(r.status(), 400);
    // Add a routing rule: applies without restart.
    g.rewrite_config("[routes.later]\ntargets = [{ model = \"gpt-4o-mini\" }]\n");
    wait_until(
        "the file change is reloaded (auto:later answers 200)",
        Duration::from_secs(10),
        || async { post(&g, &chat_body("auto:later")).await.status() == 200 },
    )
    .await;
    // An invalid file keeps the old config serving and is counted.
    g.rewrite_config("[routes.broken\n");
    wait_until(
        "the invalid file is counted as a failed reload",
        Duration::from_secs(10),
        || async {
            g.metrics()
                .await
                .contains("loopgate_config_reloads_total{result=\"failed\"}")
        },
    )
    .await;
    assert_eq!(post(&g, &chat_body("auto:later")).await.status(), 200);
    // SIGHUP reloads too.
    g.rewrite_config("[routes.viahup]\ntargets = [{ model = \"gpt-4o-mini\" }]\n");
    unsafe { libc::kill(g.child.id() as i32, libc::SIGHUP) };
    wait_until(
        "SIGHUP reloads the config (auto:viahup answers 200)",
        Duration::from_secs(10),
        || async { post(&g, &chat_body("auto:viahup")).await.status() == 200 },
    )
    .await;
    let _ = c;
}

/// A provider key added through `/v1/providers/openai/keys`, and the vault master key.
const RUNTIME_PROVIDER_KEY: &str = "sk-runtime-provider-secret-4242";
const VAULT_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_secrets_never_leak() {
    let mock = MockUpstream::start(openai_like()).await;
    let mut env = openai_env(&mock);
    env.push(("LOOPGATE_VAULT_KEY", VAULT_KEY.to_string()));
    let g = GatewayProc::start("", &env);
    // A provider key added at runtime (stored encrypted) signs the requests below.
    let (s, v) = admin(
        &g,
        "POST",
        "/v1/providers/openai/keys",
        Some(json!({"key": RUNTIME_PROVIDER_KEY, "label": "leak-check"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (_, listed) = admin(&g, "GET", "/v1/providers/openai/keys", None).await;
    let (_, audit) = admin(&g, "GET", "/v1/audit", None).await;
    let mut body = chat_body("gpt-4o");
    post(&g, &body).await.text().await.unwrap();
    body["stream"] = json!(true);
    post(&g, &body).await.text().await.unwrap();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth("lg-wrong-secret-key")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Metrics and traces are recorded after the response: wait for both served requests.
    wait_until(
        "both served requests are traced",
        Duration::from_secs(10),
        || async { trace_rows(&g.db_path(), "WHERE status = 200") >= 2 },
    )
    .await;
    let m = g.metrics().await;
    for name in [
        "loopgate_requests_total",
        "loopgate_upstream_latency_seconds_bucket",
        "loopgate_ttft_seconds_bucket",
        "loopgate_tokens_total",
        "loopgate_cost_usd_total",
        "loopgate_active_streams",
        "loopgate_trace_dropped_total",
        "loopgate_config_version",
    ] {
        assert!(m.contains(name), "missing {name}");
    }
    // Well-formed exposition: every sample line is `name{labels} value`.
    for line in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
    let secrets = [
        "sk-test-openai-secret-000",
        MASTER_KEY,
        "lg-wrong-secret-key",
        RUNTIME_PROVIDER_KEY,
        VAULT_KEY,
    ];
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.header("authorization")
                == Some(&format!("Bearer {RUNTIME_PROVIDER_KEY}")[..])),
        "the runtime key signed the requests"
    );
    let answers = format!("{v}{listed}{audit}");
    // The database and its write-ahead log: recent rows may not be checkpointed yet.
    let mut db = std::fs::read(g.db_path()).unwrap_or_default();
    let mut wal = g.db_path().into_os_string();
    wal.push("-wal");
    db.extend(std::fs::read(&wal).unwrap_or_default());
    assert!(!db.is_empty(), "the trace store was not written");
    let log = g.log_text();
    for s in secrets {
        assert!(!m.contains(s), "secret in metrics");
        assert!(!log.contains(s), "secret in log");
        assert!(!answers.contains(s), "secret in an API answer");
        assert!(
            !String::from_utf8_lossy(&db).contains(s),
            "secret in trace store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_under_concurrent_load() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start("", &openai_env(&mock));
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let c = c.clone();
        let url = g.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let mut body = chat_body("gpt-4o-mini");
            if i % 2 == 0 {
                body["stream"] = json!(true);
            }
            let r = c
                .post(url)
                .header("authorization", auth())
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 200, "{text}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        eventually(
            || trace_rows(&g.db_path(), "WHERE status = 200") == 400,
            Duration::from_secs(10)
        )
        .await,
        "stored {}",
        trace_rows(&g.db_path(), "")
    );
    let m = g.metrics().await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("loopgate_trace_dropped_total{") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoint_lists_active_providers() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "[routes.default]\ntargets = [{ model = \"gpt-4o-mini\" }]\n",
        &openai_env(&mock),
    );
    let v: Value = client()
        .get(g.url("/v1/models"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o"));
    assert!(ids.contains(&"auto"));
    assert!(
        !ids.iter().any(|i| i.starts_with("claude")),
        "inactive providers are not listed"
    );
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
    }
    let one: Value = client()
        .get(g.url("/v1/models/gpt-4o"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "gpt-4o");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openai_compatible_profile_serves_through_its_wire_format() {
    let mock = MockUpstream::start(openai_like()).await;
    let profiles = loopgate::providers::load_profiles(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/filters"
    )))
    .unwrap();
    let compat: Vec<_> = profiles
        .into_iter()
        .filter(|p| p.dialect == loopgate::providers::DialectKind::OpenAi)
        .collect();
    assert!(
        compat.len() >= 16,
        "expected every OpenAI-compatible provider, got {}",
        compat.len()
    );
    let mut env: Vec<(&str, String)> = Vec::new();
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    for p in &compat {
        let key_var = p.api_key_vars().first().copied();
        if let Some(k) = key_var {
            env.push((leak(k.to_string()), format!("key-{}", p.name)));
        }
        for v in p.activation_vars() {
            if Some(v) != key_var {
                env.push((leak(v.to_string()), mock.url()));
            }
        }
        let base = p
            .base_url_env
            .clone()
            .expect("every profile has a base URL override var");
        env.push((leak(base), format!("{}/prefix-{}", mock.url(), p.name)));
    }
    let g = GatewayProc::start("", &env);
    for (i, p) in compat.iter().enumerate() {
        let mut body = chat_body(&format!("{}/test-model", p.name));
        if i % 2 == 1 {
            body["stream"] = json!(true);
        }
        let r = post(&g, &body).await;
        assert_eq!(r.status(), 200, "{}: {}", p.name, r.text().await.unwrap());
        assert_eq!(r.headers()["loopgate-provider"], p.name.as_str());
        let text = r.text().await.unwrap();
        if i % 2 == 1 {
            assert!(text.ends_with("data: [DONE]\n\n"), "{}: {text}", p.name);
        }
        let req = mock.requests().pop().unwrap();
        let expected_path = format!(
            "/prefix-{}{}",
            p.name,
            p.chat_path.replace("{model}", "test-model")
        );
        assert!(
            req.path.starts_with(&expected_path),
            "{}: path {} (expected {expected_path})",
            p.name,
            req.path
        );
        if let Some(q) = &p.query {
            assert!(
                req.path.contains(q.split('=').next().unwrap()),
                "{}: query {q} missing in {}",
                p.name,
                req.path
            );
        }
        let sent = req.json();
        if p.model_in_body {
            assert_eq!(sent["model"], "test-model", "{}", p.name);
        } else {
            assert!(
                sent.get("model").is_none(),
                "{}: model must not be in the body",
                p.name
            );
        }
        match p.auth {
            loopgate::providers::AuthScheme::Bearer => {
                assert_eq!(
                    req.header("authorization"),
                    Some(format!("Bearer key-{}", p.name).as_str()),
                    "{}",
                    p.name
                )
            }
            loopgate::providers::AuthScheme::Header => {
                let h = p.auth_header.as_deref().unwrap();
                assert_eq!(
                    req.header(h),
                    Some(format!("key-{}", p.name).as_str()),
                    "{}",
                    p.name
                );
                assert!(req.header("authorization").is_none());
            }
            loopgate::providers::AuthScheme::None => {
                assert!(req.header("authorization").is_none(), "{}", p.name)
            }
            other => panic!(
                "{}: unexpected auth {other:?} for an OpenAI-compatible profile",
                p.name
            ),
        }
        for dropped in &p.unsupported_params {
            assert!(sent.get(dropped).is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_streams_finish() {
    let mut parts: Vec<(Duration, Vec<u8>)> = Vec::new();
    let p = openai_stream_parts("gpt-4o", &["a"], false);
    parts.push((Duration::ZERO, p[0].clone()));
    for _ in 0..10 {
        parts.push((Duration::from_millis(100), sse(json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"."},"finish_reason":null}]}))));
    }
    for rest in &p[2..] {
        parts.push((Duration::ZERO, rest.clone()));
    }
    let slow = MockUpstream::start(Reply::Chunks(200, "text/event-stream".into(), parts)).await;
    let mut g = GatewayProc::start_with_server("grace_period_secs = 10\n", "", &openai_env(&slow));
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    let r = post(&g, &body).await;
    unsafe { libc::kill(g.child.id() as i32, libc::SIGTERM) };
    let text = r.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut by shutdown: {text}"
    );
    assert_eq!(text.matches("\".\"").count(), 10);
    // Exits soon after the stream ended, not after the whole 10 s grace period.
    let t0 = std::time::Instant::now();
    let status = g.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let id_count = trace_rows(&g.db_path(), "WHERE stream = 1 AND status = 200");
    assert_eq!(id_count, 1, "the stream's trace was flushed before exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_prefix_is_configurable() {
    let mock = MockUpstream::start(openai_like()).await;
    let g =
        GatewayProc::start_with_server("header_prefix = \"Helicone\"\n", "", &openai_env(&mock));
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("Helicone-Session-Id", "sess-h")
        .header("Helicone-Property-Team", "search")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["helicone-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.headers()["helicone-provider"], "openai");
    assert!(r.headers().get("loopgate-request-id").is_none());
    let text = log_entry(&g, &id).await.to_string();
    assert!(text.contains("sess-h") && text.contains("search"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_capture_respects_zero_retention() {
    let mock = MockUpstream::start(openai_like()).await;
    let zr_key = "lg-zero-retention-key";
    let g = GatewayProc::start_full(
        "",
        "capture_bodies = true\nzero_retention_projects = [\"secret-proj\"]\n",
        &format!(
            "[[auth.keys]]\nid = \"zr\"\nhash = \"{}\"\nzero_retention = true\n",
            loopgate::auth::keys::hash_key(zr_key)
        ),
        &openai_env(&mock),
    );
    let c = client();
    let body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "CAPTURE-ME-123"}]});
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for (key, project) in [
            (MASTER_KEY, "open"),
            (zr_key, "open"),
            (MASTER_KEY, "secret-proj"),
        ] {
            let r = c
                .post(g.url("/v1/chat/completions"))
                .bearer_auth(key)
                .header("loopgate-project-id", project)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            v.push(
                r.headers()["loopgate-request-id"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
        v
    };
    let stored = |id: &str| {
        let conn = rusqlite::Connection::open(g.db_path()).unwrap();
        conn.query_row(
            "SELECT request_body FROM traces WHERE request_id = ?1",
            [id],
            |r| r.get::<_, Option<String>>(0),
        )
        .ok()
    };
    assert!(eventually(|| stored(&ids[2]).is_some(), Duration::from_secs(5)).await);
    assert!(
        stored(&ids[0])
            .flatten()
            .is_some_and(|b| b.contains("CAPTURE-ME-123")),
        "capture on stores the prompt"
    );
    assert_eq!(
        stored(&ids[1]).flatten(),
        None,
        "zero-retention key never stores text"
    );
    assert_eq!(
        stored(&ids[2]).flatten(),
        None,
        "zero-retention project never stores text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_backend_none_records_nothing() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start_full("", "backend = \"none\"\n", "", &openai_env(&mock));
    let r = post(&g, &chat_body("gpt-4o")).await;
    assert_eq!(r.status(), 200);
    let r = client()
        .get(g.url("/v1/logs"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Negative check: a fixed wait, to give a (wrongly) started trace writer time to create
    // the file. Nothing to poll for: the condition is that nothing happens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!g.db_path().exists(), "no database with backend = none");
    assert!(g.metrics().await.contains("loopgate_requests_total"));
}

/// A server that closes idle keep-alive connections may close one just as the gateway reuses
/// it: the request never reached the server, so the gateway sends it again on the next
/// connection — past several such connections — instead of failing the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_stale_pooled_connections_are_sent_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Each connection answers its first request (slowly, so concurrent requests open their own
    // connections) and closes without answering on any later one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut answered = false;
                let mut buf = Vec::new();
                loop {
                    // Read one whole request (head + content-length body).
                    let total = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break end + 4 + len;
                            }
                        }
                        let mut tmp = [0u8; 16 * 1024];
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    buf.drain(..total);
                    if answered {
                        return; // closes the connection without an answer
                    }
                    answered = true;
                    // Long enough that the three concurrent requests overlap.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let body = chat_json("gpt-4o-mini", "hi", 3, 1);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    if sock.write_all(head.as_bytes()).await.is_err()
                        || sock.write_all(body.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai-secret-000".to_string()),
            ("OPENAI_BASE_URL", format!("http://{addr}/v1")),
        ],
    );
    // Three connections, each answered once and then pooled.
    let body = chat_body("gpt-4o-mini");
    let first = futures_util::future::join_all((0..3).map(|_| post(&g, &body))).await;
    for r in first {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    // Every pooled connection is now stale: three sends fail, the fourth opens a new one.
    let r = post(&g, &chat_body("gpt-4o-mini")).await;
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    assert_eq!(connections.load(Ordering::SeqCst), 4);
    server.abort();
}
