//! `POST /v1/responses` (the OpenAI Responses API at the edge), end to end: the official
//! OpenAI Python and Node SDKs (tests/sdk/test_responses_python.py and
//! test_responses_node.mjs) and the Vercel AI SDK's default OpenAI provider
//! (tests/sdk/test_ai_sdk_node.mjs: `ai` + `@ai-sdk/openai`), installed by
//! `bash tests/sdk/setup.sh`, drive the real `loopgate` binary in front of an OpenAI,
//! an Anthropic and a Gemini mock (the last two translated): JSON, streams (raw events
//! and the SDK's stream helper), function tools with `function_call_output`,
//! `previous_response_id` and `item_reference` from the trace store, multi-step tool
//! calls (`generateText` / `streamText` with `stopWhen`), and 400s naming unsupported input.

mod common;
#[path = "common/mocks.rs"]
mod mocks;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Bodies are captured so `previous_response_id` can continue a stored exchange.
const STORAGE: &str = "capture_bodies = true\n";

fn python() -> PathBuf {
    Path::new(ROOT).join("target/sdk-venv/bin/python")
}

/// Run both SDK scripts (Python, then Node).
fn run_sdk(g: &GatewayProc, model: &str, provider: &str) {
    let hint = "run `bash tests/sdk/setup.sh` to install the official SDKs (Python venv in target/sdk-venv, npm packages in tests/sdk/node_modules)";
    let py = python();
    assert!(py.exists(), "{} not found: {hint}", py.display());
    run_script(
        g,
        model,
        provider,
        py.as_os_str(),
        "test_responses_python.py",
    );
    let pkg = Path::new(ROOT).join("tests/sdk/node_modules/openai/package.json");
    assert!(pkg.exists(), "{} not found: {hint}", pkg.display());
    run_script(
        g,
        model,
        provider,
        "node".as_ref(),
        "test_responses_node.mjs",
    );
    let ai = Path::new(ROOT).join("tests/sdk/node_modules/@ai-sdk/openai/package.json");
    assert!(ai.exists(), "{} not found: {hint}", ai.display());
    run_script(g, model, provider, "node".as_ref(), "test_ai_sdk_node.mjs");
}

/// The AI SDK's second tool step reached the upstream with the tool result (and, where
/// the first answer had text, that text resolved from its `item_reference`).
fn ai_sdk_tool_result_sent(bodies: &[String], earlier_text: Option<&str>) {
    let result = "Sunny, 21 C in Paris";
    let second = bodies
        .iter()
        .filter(|b| b.contains(result))
        .collect::<Vec<_>>();
    assert!(
        second.len() >= 2,
        "the AI SDK's tool results (generateText and streamText) never reached the upstream"
    );
    if let Some(t) = earlier_text {
        assert!(
            second.iter().all(|b| b.contains(t)),
            "the referenced earlier answer '{t}' is missing: {}",
            second[0]
        );
    }
}

/// Run one SDK script (bounded in time); panic with its output and the gateway log on failure.
fn run_script(g: &GatewayProc, model: &str, provider: &str, prog: &std::ffi::OsStr, script: &str) {
    let hint = "run `bash tests/sdk/setup.sh`";
    let mut child = Command::new(prog)
        .arg(Path::new(ROOT).join("tests/sdk").join(script))
        .env("LOOPGATE_BASE_URL", g.url("/v1"))
        .env("LOOPGATE_KEY", MASTER_KEY)
        .env("LG_MODEL", model)
        .env("LG_PROVIDER", provider)
        .sdk_isolated()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {prog:?}: {e} ({hint})"));
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
        "{script} against {model} ({provider}) exited with {}:\n{text}\n--- gateway log (tail):\n{}",
        out.status,
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
    print!("{text}");
}

/// The served requests are trace rows of endpoint `responses` with a cost.
async fn traced_with_cost(g: &GatewayProc) {
    let db = g.db_path();
    let ok = eventually(
        || {
            trace_rows(
                &db,
                "WHERE endpoint = 'responses' AND status = 200 AND cost_usd > 0",
            ) >= 12
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(
        ok,
        "trace rows of endpoint responses with a cost: {}",
        trace_rows(&db, "WHERE endpoint = 'responses'")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_sdk_against_an_openai_upstream() {
    let mock = MockUpstream::start(mocks::openai_full()).await;
    let g = GatewayProc::start_full(
        "",
        STORAGE,
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    run_sdk(&g, "gpt-4o-mini", "openai");
    traced_with_cost(&g).await;
    let reqs: Vec<Value> = mock.requests().iter().map(|r| r.json()).collect();
    let first = &reqs[0];
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert!(first["messages"][1]["content"][1]["image_url"]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("data:image/png;base64,")));
    // previous_response_id: the stored exchange came first, then the new input.
    let cont = &reqs[1]["messages"];
    assert_eq!(cont[1]["content"][0]["text"], "Say hello", "{cont}");
    assert_eq!(cont[2], json!({"role": "assistant", "content": "Hello!"}));
    assert_eq!(cont[3], json!({"role": "user", "content": "And again"}));
    // The tool round trip reached the upstream as a tool call and a tool message.
    let round = reqs
        .iter()
        .find(|b| b["messages"].as_array().is_some_and(|m| m.len() == 3))
        .expect("the follow-up request with the tool output");
    assert_eq!(round["messages"][1]["tool_calls"][0]["id"], "call_abc123");
    assert_eq!(
        round["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_abc123", "content": "Sunny, 21 C"})
    );
    let bodies: Vec<String> = reqs.iter().map(Value::to_string).collect();
    ai_sdk_tool_result_sent(&bodies, None);
    // The AI SDK's second turn: its earlier answer came back as an item_reference and
    // reached the upstream as the assistant's text.
    let turn2 = json!([{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And again"}]);
    assert!(
        reqs.iter().any(|b| b["messages"] == turn2),
        "no request carried the resolved item_reference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_sdk_against_an_anthropic_upstream() {
    let mock = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start_full(
        "",
        STORAGE,
        "",
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("ANTHROPIC_BASE_URL", mock.url()),
        ],
    );
    run_sdk(&g, "claude-sonnet-4-5", "anthropic");
    traced_with_cost(&g).await;
    assert!(mock.requests().iter().all(|r| r.path == "/v1/messages"));
    // Claude's tool answers start with text: the AI SDK sends it back as an item_reference.
    let bodies: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.json().to_string())
        .collect();
    ai_sdk_tool_result_sent(&bodies, Some("Let me check."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_sdk_against_a_gemini_upstream() {
    let mock = MockUpstream::start(mocks::gemini_like()).await;
    let g = GatewayProc::start_full(
        "",
        STORAGE,
        "",
        &[
            ("GEMINI_API_KEY", "gm-test".into()),
            ("GEMINI_BASE_URL", mock.url()),
        ],
    );
    run_sdk(&g, "gemini-2.5-flash", "gemini");
    traced_with_cost(&g).await;
    let bodies: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.json().to_string())
        .collect();
    ai_sdk_tool_result_sent(&bodies, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_errors_keep_the_openai_shape_and_other_projects_cannot_continue() {
    let mock = MockUpstream::start(mocks::openai_full()).await;
    let g = GatewayProc::start_full(
        "",
        STORAGE,
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let post = |body: Value, project: &'static str| {
        client()
            .post(g.url("/v1/responses"))
            .header("authorization", auth())
            .header("loopgate-project-id", project)
            .json(&body)
            .send()
    };
    let r = post(json!({"model": "gpt-4o-mini", "input": "hi"}), "a")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Another project's response id answers like an unknown one.
    let r = post(
        json!({"model": "gpt-4o-mini", "input": "more", "previous_response_id": id}),
        "b",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "previous_response_id", "{e}");
    assert_eq!(e["error"]["code"], "previous_response_not_found", "{e}");
    // Its own project continues it.
    let r = post(
        json!({"model": "gpt-4o-mini", "input": "more", "previous_response_id": id}),
        "a",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // A file input: 400 naming it, in OpenAI's error shape.
    let r = post(
        json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
        "a",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert_eq!(e["error"]["param"], "input[0].content[0].type", "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("input_file"));
    // An item_reference to an unknown answer: 404 naming it; to a function call: 400.
    let r = post(
        json!({"model": "gpt-4o-mini", "input": [{"type": "item_reference", "id": "msg_chatcmpl-nope"}]}),
        "a",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input[0].id", "{e}");
    assert_eq!(e["error"]["code"], "item_not_found", "{e}");
    let r = post(
        json!({"model": "gpt-4o-mini", "input": [{"role": "user", "content": "x"}, {"type": "item_reference", "id": "fc_chatcmpl-x_0"}]}),
        "a",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "input[1].id", "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("function call"));
    // Another project's answer cannot be referenced.
    let r = post(
        json!({"model": "gpt-4o-mini", "input": [{"type": "item_reference", "id": format!("msg_{}", id.trim_start_matches("resp_"))}]}),
        "b",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    // A wrong method: 405 in OpenAI's shape.
    let r = client()
        .get(g.url("/v1/responses"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].is_string(), "{e}");
    assert_eq!(mock.count(), 2);
}

/// `previous_response_id` continues only within the trace retention: a stored response past
/// its project's retention answers the clear 404 at once, before the hourly purge deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_previous_response_id_past_retention_is_a_clear_404() {
    let mock = MockUpstream::start(mocks::openai_full()).await;
    let g = GatewayProc::start_full(
        "",
        "capture_bodies = true\nretention_days = 30\npurge_interval_secs = 86400\n\
         [storage.project_retention_days]\nshort = 1\n",
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let post = |body: Value| {
        client()
            .post(g.url("/v1/responses"))
            .header("authorization", auth())
            .header("loopgate-project-id", "short")
            .json(&body)
            .send()
    };
    let r = post(json!({"model": "gpt-4o-mini", "input": "hi"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rid = id.trim_start_matches("resp_").to_string();
    let db = g.db_path();
    let row = format!("WHERE request_id = '{rid}'");
    assert!(
        eventually(|| trace_rows(&db, &row) == 1, Duration::from_secs(10)).await,
        "the response was never stored"
    );
    // Within retention it continues.
    let more = json!({"model": "gpt-4o-mini", "input": "more", "previous_response_id": id});
    assert_eq!(post(more.clone()).await.unwrap().status(), 200);
    // Two days old, with the project's retention of one day: gone, though not purged yet.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE traces SET ts_ms = ts_ms - 2 * 86400000 WHERE request_id = ?1",
        [&rid],
    )
    .unwrap();
    drop(conn);
    let r = post(more).await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert_eq!(e["error"]["param"], "previous_response_id", "{e}");
    assert_eq!(e["error"]["code"], "previous_response_not_found", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("past the trace retention"),
        "{e}"
    );
    assert_eq!(
        trace_rows(&db, &row),
        1,
        "the purge ran: the check was not exercised"
    );
    // Only the first two calls reached the upstream.
    assert_eq!(mock.count(), 2);
}

/// A feedback route (`auto:<route>`) served through `/v1/responses`: the decision is recorded
/// and the `resp_` id scores the request; an upstream failure falls back to a provider of
/// another wire format, in JSON and in a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_auto_routes_fallback_and_feedback_ids() {
    let Reply::Dynamic(inner) = mocks::openai_full() else {
        unreachable!()
    };
    let openai = MockUpstream::start(Reply::Dynamic(std::sync::Arc::new(move |r: &Received| {
        let failing = r.json()["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x["content"] == "FAIL_OVER"));
        if failing {
            let e = json!({"error": {"message": "boom", "type": "server_error"}});
            return Reply::Json(500, vec![], e.to_string());
        }
        inner(r)
    })))
    .await;
    let claude = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start_full(
        "",
        STORAGE,
        r#"
[fallbacks]
"gpt-4o" = ["claude-sonnet-4-5"]
"gpt-4o-mini" = ["claude-sonnet-4-5"]

[routes.fb]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "live"
"#,
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", openai.url())),
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("ANTHROPIC_BASE_URL", claude.url()),
        ],
    );
    let post = |body: Value| {
        client()
            .post(g.url("/v1/responses"))
            .header("authorization", auth())
            .json(&body)
            .send()
    };
    // The feedback route decides; the decision is stored under the request id.
    let r = post(json!({"model": "auto:fb", "input": "hi"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["loopgate-provider"], "openai");
    let rid = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(r.headers().contains_key("loopgate-decision-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response", "{v}");
    assert_eq!(v["id"], format!("resp_{rid}"), "{v}");
    assert!(
        v["output_text"].is_string() || v["output"].is_array(),
        "{v}"
    );
    let admin_get = |path: String| {
        client()
            .get(g.url(&path))
            .header("authorization", auth())
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let decision = loop {
        let r = admin_get(format!("/v1/decisions/{rid}")).await.unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "decision {rid} never stored");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(decision["route"], "fb", "{decision}");
    assert_eq!(decision["baseline"], "gpt-4o", "{decision}");
    // The response id scores the request it names.
    let r = client()
        .post(g.url("/v1/feedback"))
        .header("authorization", auth())
        .json(&json!({"id": v["id"], "score": 1}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let fb: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status} {fb}");
    assert_eq!(fb["request_id"], rid.as_str(), "{fb}");

    // The OpenAI upstream fails: the fallback (Anthropic, translated) serves, JSON and stream.
    let r = post(json!({"model": "gpt-4o-mini", "input": "FAIL_OVER"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["loopgate-fallback-used"], "true");
    assert_eq!(r.headers()["loopgate-provider"], "anthropic");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "completed", "{v}");
    let r = post(json!({"model": "gpt-4o-mini", "input": "FAIL_OVER", "stream": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["loopgate-fallback-used"], "true");
    let text = r.text().await.unwrap();
    assert!(text.contains("event: response.completed"), "{text}");
    assert!(!text.contains("response.failed"), "{text}");
    // Traced as responses, with the cost of what served.
    let db = g.db_path();
    assert!(
        eventually(
            || trace_rows(
                &db,
                "WHERE endpoint = 'responses' AND status = 200 AND cost_usd > 0"
            ) >= 3,
            Duration::from_secs(10)
        )
        .await,
        "{}",
        trace_rows(&db, "WHERE endpoint = 'responses'")
    );
    assert!(claude.count() >= 2);
}
