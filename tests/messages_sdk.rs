//! `POST /v1/messages` (the Anthropic Messages API at the edge), end to end: the official
//! Anthropic Python SDK (tests/sdk/test_anthropic_python.py, installed by
//! `bash tests/sdk/setup.sh`) drives the real `loopgate` binary in front of an
//! OpenAI-dialect mock and a Gemini-dialect mock (the answers are translated) and an
//! Anthropic-dialect mock; the trace
//! rows carry the endpoint and the cost. Then, over raw HTTP: the exact cache replays a
//! stored answer in the shape of whichever client asks, and an upstream 429 keeps the
//! Anthropic error shape.

mod common;
#[path = "common/mocks.rs"]
mod mocks;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn python() -> PathBuf {
    Path::new(ROOT).join("target/sdk-venv/bin/python")
}

/// Run the SDK script (bounded in time); panic with its output and the gateway log on failure.
fn run_anthropic_sdk(g: &GatewayProc, model: &str, provider: &str) {
    let hint = "run `bash tests/sdk/setup.sh` to install the official SDKs (Python venv in target/sdk-venv)";
    let py = python();
    assert!(py.exists(), "{} not found: {hint}", py.display());
    let mut child = Command::new(&py)
        .arg(Path::new(ROOT).join("tests/sdk/test_anthropic_python.py"))
        .env("LOOPGATE_BASE_URL", g.url(""))
        .env("LOOPGATE_KEY", MASTER_KEY)
        .env("LG_MODEL", model)
        .env("LG_PROVIDER", provider)
        // Never let a developer's real settings leak into the SDK.
        .sdk_isolated()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e} ({hint})", py.display()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("script output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = g.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        out.status.success(),
        "anthropic SDK against {model} ({provider}) exited with {}:\n{text}\n--- gateway log (tail):\n{}",
        out.status,
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
    print!("{text}");
}

/// The script's served requests show up as trace rows of endpoint `messages` with a cost.
async fn traced_with_cost(g: &GatewayProc) {
    let db = g.db_path();
    let ok = eventually(
        || {
            trace_rows(
                &db,
                "WHERE endpoint = 'messages' AND status = 200 AND cost_usd > 0",
            ) >= 6
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(
        ok,
        "trace rows of endpoint messages with a cost: {}",
        trace_rows(&db, "WHERE endpoint = 'messages'")
    );
    // The 400/404/401 answers are traced (or not) as the chat path does, never as cost.
    assert_eq!(
        trace_rows(
            &db,
            "WHERE endpoint = 'messages' AND status >= 400 AND cost_usd > 0"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sdk_against_an_openai_upstream() {
    let mock = MockUpstream::start(mocks::openai_full()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    run_anthropic_sdk(&g, "gpt-4o-mini", "openai");
    traced_with_cost(&g).await;
    let reqs = mock.requests();
    assert!(reqs.iter().all(|r| r.path == "/v1/chat/completions"));
    // The translated request: system first, the image as a data URL, the user id.
    let first = reqs[0].json();
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert!(first["messages"][1]["content"][1]["image_url"]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("data:image/png;base64,")));
    assert_eq!(first["user"], "user-42");
    // The tool round trip reached the upstream as an assistant tool call and a tool message.
    let round = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["messages"].as_array().is_some_and(|m| m.len() == 3))
        .expect("the follow-up request with the tool result");
    assert_eq!(round["messages"][1]["tool_calls"][0]["id"], "call_abc123");
    assert_eq!(
        round["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_abc123", "content": "Sunny, 21 C"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sdk_against_an_anthropic_upstream() {
    let mock = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("ANTHROPIC_BASE_URL", mock.url()),
        ],
    );
    run_anthropic_sdk(&g, "claude-sonnet-4-5", "anthropic");
    traced_with_cost(&g).await;
    let reqs = mock.requests();
    assert!(reqs.iter().all(|r| r.path == "/v1/messages"));
    // The gateway authenticates upstream with the provider's key, never the client's.
    assert!(reqs
        .iter()
        .all(|r| r.header("x-api-key") == Some("sk-ant-test")));
    let first = reqs[0].json();
    assert!(first["system"].to_string().contains("Be brief."), "{first}");
    assert_eq!(first["metadata"]["user_id"], "user-42");
    let round = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["messages"].as_array().is_some_and(|m| m.len() == 3))
        .expect("the follow-up request with the tool result");
    let result = &round["messages"][2]["content"][0];
    assert_eq!(result["type"], "tool_result", "{round}");
    assert_eq!(result["tool_use_id"], "toolu_01A09q90qw90lq917835lq9");
}

/// A provider with a third wire format (Gemini's `generateContent`): the Messages request is
/// translated to it and its answers and streams back to Messages JSON and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sdk_against_a_gemini_upstream() {
    let mock = MockUpstream::start(mocks::gemini_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("GEMINI_API_KEY", "gm-test".into()),
            ("GEMINI_BASE_URL", mock.url()),
        ],
    );
    run_anthropic_sdk(&g, "gemini-2.5-flash", "gemini");
    traced_with_cost(&g).await;
    let reqs = mock.requests();
    assert!(reqs
        .iter()
        .all(|r| r.path.contains("/models/gemini-2.5-flash:")));
    // The translated request: the system prompt as systemInstruction, the image inline.
    let first = reqs[0].json();
    assert!(
        first["systemInstruction"].to_string().contains("Be brief."),
        "{first}"
    );
    assert_eq!(
        first["contents"][0]["parts"][1]["inlineData"]["mimeType"], "image/png",
        "{first}"
    );
    // The tool round trip reached Gemini as a functionCall and a functionResponse.
    let round = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["contents"].as_array().is_some_and(|m| m.len() == 3))
        .expect("the follow-up request with the tool result");
    assert_eq!(
        round["contents"][1]["parts"][0]["functionCall"]["name"], "get_weather",
        "{round}"
    );
    assert_eq!(
        round["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather",
        "{round}"
    );
}

fn messages_body(text: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream, "temperature": 0,
        "messages": [{"role": "user", "content": text}]})
}

async fn post(g: &GatewayProc, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(g.url(path))
        .header("x-api-key", MASTER_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Messages SSE: the `event:` names in order.
fn event_names(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("event: ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cache_replays_in_the_asking_clients_shape_and_errors_keep_the_anthropic_shape() {
    let chat = mocks::openai_full();
    let Reply::Dynamic(inner) = chat else {
        unreachable!()
    };
    let mock = MockUpstream::start(Reply::Dynamic(Arc::new(move |r: &Received| {
        if String::from_utf8_lossy(&r.body).contains("RATE_LIMIT_ME") {
            return Reply::Json(
                429,
                vec![("retry-after".into(), "7".into())],
                json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}).to_string(),
            );
        }
        if String::from_utf8_lossy(&r.body).contains("SERVER_ERROR_ME") {
            return Reply::Json(
                500,
                vec![],
                json!({"error": {"message": "The server had an error", "type": "server_error"}}).to_string(),
            );
        }
        inner(r)
    })))
    .await;
    let g = GatewayProc::start(
        "[cache]\nenabled = true\nttl_secs = 600\n",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );

    // A streamed Messages request, twice: the second is a hit, replayed as Messages SSE.
    let mut bodies = Vec::new();
    for want in ["miss", "hit"] {
        let r = post(&g, "/v1/messages", &messages_body("cache me", true)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get("loopgate-cache")
                .and_then(|v| v.to_str().ok()),
            Some(want)
        );
        let rid = r.headers()["loopgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let text = r.text().await.unwrap();
        let names = event_names(&text);
        assert_eq!(
            names.first().map(String::as_str),
            Some("message_start"),
            "{text}"
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("message_stop"),
            "{text}"
        );
        assert!(text.contains(&format!("\"msg_{rid}\"")), "{text}");
        assert!(!text.contains("chat.completion.chunk"), "{text}");
        bodies.push(text);
    }
    assert!(bodies[1].contains("\"text\":\"lo\""), "{}", bodies[1]);
    assert_eq!(mock.count(), 1);

    // The same internal request from an OpenAI client: the stored entry, OpenAI-shaped.
    let internal = json!({"model": "gpt-4o-mini", "max_tokens": 50, "temperature": 0,
        "messages": [{"role": "user", "content": "cache me"}],
        "stream": true, "stream_options": {"include_usage": true}});
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&internal)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["loopgate-cache"], "hit");
    let text = r.text().await.unwrap();
    assert!(
        text.contains("chat.completion.chunk") && text.contains("data: [DONE]"),
        "{text}"
    );
    assert!(!text.contains("message_start"), "{text}");

    // A whole JSON answer: a miss then a hit, both Messages JSON.
    for want in ["miss", "hit"] {
        let r = post(&g, "/v1/messages", &messages_body("cache me", false)).await;
        assert_eq!(r.headers()["loopgate-cache"], want);
        let m: Value = r.json().await.unwrap();
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["content"][0]["text"], "Hello!", "{m}");
    }
    assert_eq!(mock.count(), 2);

    // count_tokens answers without calling the upstream.
    let r = post(
        &g,
        "/v1/messages/count_tokens",
        &json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(400)}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let n: Value = r.json().await.unwrap();
    assert!(n["input_tokens"].as_u64().is_some_and(|n| n >= 100), "{n}");
    assert_eq!(mock.count(), 2);

    // An upstream 429 (no fallback): Anthropic's shape, retry-after passed on.
    let r = post(&g, "/v1/messages", &messages_body("RATE_LIMIT_ME", false)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    // Streamed, the same (nothing was sent before the failure).
    let r = post(&g, "/v1/messages", &messages_body("RATE_LIMIT_ME", true)).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");

    // An upstream 5xx (no fallback): a 5xx in Anthropic's shape, never cached.
    let before = mock.count();
    for _ in 0..2 {
        let r = post(&g, "/v1/messages", &messages_body("SERVER_ERROR_ME", false)).await;
        assert!(r.status().is_server_error(), "{}", r.status());
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["error"]["type"], "api_error", "{e}");
    }
    assert_eq!(mock.count(), before + 2);

    // Missing key and a wrong method: Anthropic's shape too.
    let r = client()
        .post(g.url("/v1/messages"))
        .json(&messages_body("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error", "{e}");
    let r = client()
        .get(g.url("/v1/messages"))
        .header("x-api-key", MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error", "{e}");
}

const SECRET: &str = "sk-proj-Q7fZk2LmN8pR4tV6xY0bC3dE5gH9jK1w";

const GUARDED: &str = r#"
[fallbacks]
"gpt-4o-mini" = ["claude-sonnet-4-5"]

[routes.msgs]
targets = [{ model = "gpt-4o-mini" }]

[firewall]
default_policy = "std"
projects = { out = "outbound" }
stream_window_bytes = 64

[firewall.policies.std]
packs = ["secrets"]
rules = ["codename"]

# Responses only: the prompt passes as sent, the answer is checked.
[firewall.policies.outbound]
packs = ["secrets"]
requests = false

[firewall.rules.codename]
pattern = "(?i)project\\s+falcon"
action = "block"
"#;

/// OpenAI-like: `say-secret:<s>` answers with `s` (streamed in 7-byte pieces, so the
/// secret is split across chunks), `FAIL_OVER` is a 500, anything else `openai_full`.
fn guarded_openai() -> Reply {
    let Reply::Dynamic(inner) = mocks::openai_full() else {
        unreachable!()
    };
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("m").to_string();
        let prompt = body["messages"][0]["content"].as_str().unwrap_or("");
        if prompt == "FAIL_OVER" {
            return Reply::Json(
                500,
                vec![],
                json!({"error": {"message": "boom", "type": "server_error"}}).to_string(),
            );
        }
        let Some(s) = prompt.strip_prefix("say-secret:") else {
            return inner(r);
        };
        let answer = format!("Your key is {s} keep it safe.");
        if body["stream"].as_bool() == Some(true) {
            let pieces: Vec<String> = answer
                .as_bytes()
                .chunks(7)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let parts = openai_stream_parts(&model, &refs, true);
            return Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
            );
        }
        Reply::Json(200, vec![], chat_json(&model, &answer, 11, 3))
    }))
}

/// The text of a Messages SSE body (all `text_delta`s).
fn streamed_text(text: &str) -> String {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["delta"]["type"] == "text_delta")
        .map(|v| v["delta"]["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_firewall_fallback_routes_and_midstream_errors() {
    let openai = MockUpstream::start(guarded_openai()).await;
    let claude = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start(
        GUARDED,
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", openai.url())),
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("ANTHROPIC_BASE_URL", claude.url()),
        ],
    );
    let redacted = "Your key is [REDACTED:secrets.openai_key] keep it safe.";
    let say = |stream: bool| {
        json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": format!("say-secret:{SECRET}")}]})
    };
    let send = |body: Value| {
        client()
            .post(g.url("/v1/messages"))
            .header("x-api-key", MASTER_KEY)
            .header("loopgate-project-id", "out")
            .json(&body)
            .send()
    };

    // The firewall redacts the answer before it is re-encoded: stream and JSON.
    let r = send(say(true)).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&SECRET[..16]), "{text}");
    assert_eq!(streamed_text(&text), redacted, "{text}");
    assert_eq!(
        event_names(&text).last().map(String::as_str),
        Some("message_stop")
    );
    let r = send(say(false)).await.unwrap();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["content"][0]["text"], redacted, "{m}");

    // A block rule on the request: 400 in Anthropic's shape.
    let r = post(
        &g,
        "/v1/messages",
        &messages_body("tell me about Project Falcon", false),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("codename"),
        "{e}"
    );

    // The OpenAI upstream fails: the fallback (Anthropic) serves the stream.
    let r = post(&g, "/v1/messages", &messages_body("FAIL_OVER", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["loopgate-fallback-used"], "true");
    assert_eq!(r.headers()["loopgate-provider"], "anthropic");
    let text = r.text().await.unwrap();
    assert_eq!(streamed_text(&text), "Hello!", "{text}");

    // A routing rule (`auto:<rule>`).
    let mut body = messages_body("hi", false);
    body["model"] = json!("auto:msgs");
    let r = post(&g, "/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["loopgate-provider"], "openai");
    let rid = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["content"][0]["text"], "Hello!", "{m}");
    // The message id scores the request it names.
    let r = client()
        .post(g.url("/v1/feedback"))
        .header("x-api-key", MASTER_KEY)
        .json(&json!({"id": m["id"], "score": 1}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let fb: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status} {fb}");
    assert_eq!(fb["request_id"], rid.as_str(), "{fb}");
    assert_eq!(fb["model"], "gpt-4o-mini", "{fb}");

    // An upstream error after the stream started: an `error` event, no message_stop.
    let mut body = messages_body(mocks::MIDSTREAM_ERROR, true);
    body["model"] = json!("claude-sonnet-4-5");
    let r = post(&g, "/v1/messages", &body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let names = event_names(&text);
    assert_eq!(names.last().map(String::as_str), Some("error"), "{text}");
    assert!(!names.iter().any(|n| n == "message_stop"), "{text}");
    assert!(text.contains("Overloaded"), "{text}");
}
