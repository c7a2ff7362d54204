//! Custom models in `gateway.toml` through the real binary: a mock OpenAI-compatible upstream
//! serves a custom model under its upstream name, priced from the config; a model id with `/`
//! is routed by its `provider` field; a feedback route named with `/` is addressable in
//! `/v1/routes/...` URLs (percent-encoded); a model without prices is refused by `check` or,
//! declared `cost_unknown`, flagged on its traces; prompt-level routing explains itself.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const MODELS: &str = r#"
[models."acme/llama-3-70b-instruct"]
provider = "openai"
model = "llama-3-70b"
input_cost_per_token = 0.000002
output_cost_per_token = 0.000004
context_window = 8192

[models."acme/free"]
provider = "openai"
model = "free-model"
cost_unknown = true

[routes."team/support"]
baseline = "acme/llama-3-70b-instruct"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routes."team/support".prompt_routing]
mode = "in_process"

[routing]
refresh_ms = 60
"#;

fn cost_of(db: &std::path::Path, id: &str) -> Option<f64> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(
        "SELECT cost_usd FROM traces WHERE request_id = ?1",
        [id],
        |r| r.get(0),
    )
    .ok()
}

fn property(db: &std::path::Path, id: &str, name: &str) -> Option<String> {
    let conn = rusqlite::Connection::open(db).ok()?;
    conn.query_row(
        "SELECT value FROM trace_properties WHERE request_id = ?1 AND name = ?2",
        [id, name],
        |r| r.get(0),
    )
    .ok()
}

#[tokio::test]
async fn custom_models_slash_ids_and_slash_routes_end_to_end() {
    let mock = MockUpstream::start(model_fleet()).await;
    let g = GatewayProc::start(
        MODELS,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    let c = client();

    // 1. A custom model with `/` in its id: sent upstream under its upstream name, priced
    //    from the config (400 prompt and 200 completion tokens from the mock).
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&chat_body("acme/llama-3-70b-instruct"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "answer from llama-3-70b"
    );
    let sent = mock
        .requests()
        .last()
        .map(|r| r.json())
        .unwrap_or(Value::Null);
    assert_eq!(sent["model"], "llama-3-70b");
    let want = 400.0 * 0.000002 + 200.0 * 0.000004;
    assert!(
        eventually(
            || cost_of(&g.db_path(), &id).is_some_and(|c| (c - want).abs() < 1e-12),
            Duration::from_secs(5)
        )
        .await,
        "cost {:?}, want {want}\n{}",
        cost_of(&g.db_path(), &id),
        g.log_text()
    );

    // 2. Declared without prices: served, and its trace says the cost is unknown (not 0).
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&chat_body("acme/free"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["loopgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(
            || property(&g.db_path(), &id, "cost_unknown").as_deref() == Some("true"),
            Duration::from_secs(5)
        )
        .await,
        "{}",
        g.log_text()
    );

    // 3. A feedback route named with `/`: `auto:<name>` serves it, and its operator URL takes the
    //    name percent-encoded.
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&json!({"model": "auto:team/support", "messages": [{"role": "user", "content": "Where is my parcel?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(r.headers()["loopgate-model"], "llama-3-70b");
    // The route uses prompt routing: once its (empty) index is published, the signed decision
    // trace carries the prompt router's section (method, features, per-model estimates).
    let mut prompt = Value::Null;
    for i in 0..100 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&json!({"model": "auto:team/support", "messages": [{"role": "user", "content": format!("Where is parcel {i}?")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["loopgate-decision-id"]
            .to_str()
            .unwrap()
            .to_string();
        for _ in 0..50 {
            let r = c
                .get(g.url(&format!("/v1/decisions/{id}")))
                .header("authorization", auth())
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                let d: Value = r.json().await.unwrap();
                prompt = d["decision"]["prompt"].clone();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !prompt.is_null() {
            break;
        }
    }
    assert_eq!(prompt["method"], "knn", "{prompt}");
    assert_eq!(prompt["source"], "in_process");
    assert_eq!(
        prompt["pick"], "acme/llama-3-70b-instruct",
        "no labels yet: the baseline"
    );
    assert_eq!(
        prompt["models"].as_array().map(Vec::len),
        Some(2),
        "{prompt}"
    );
    assert!(
        prompt["features"]["structural"]["question"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    let r = c
        .post(g.url("/v1/routes/team%2Fsupport/mode"))
        .header("authorization", auth())
        .json(&json!({"mode": "live", "reason": "test"}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    let r = c
        .post(g.url("/v1/routes/team%2Fnope/mode"))
        .header("authorization", auth())
        .json(&json!({"mode": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("team/nope"),
        "{e}"
    );
}

#[tokio::test]
async fn check_refuses_a_custom_model_without_prices() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[models.\"acme/x\"]\nprovider = \"openai\"\ninput_cost_per_token = 0.000001\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"))
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("models.\"acme/x\"") && text.contains("output_cost_per_token"),
        "{text}"
    );
}

/// The router's cost estimate is the custom model's price × its measured token mix, and with
/// `routing.stats_refresh_ms` the traffic stats behind it are re-read that often: 400 prompt
/// and 200 completion tokens from the mock reach `GET /v1/routing` within a second of being
/// served (the fixed 5 s clock before the setting left a replay's whole run on the
/// configured guess of 500 / 250).
#[tokio::test]
async fn stats_refresh_ms_brings_the_measured_token_mix_into_the_cost_estimate() {
    let mock = MockUpstream::start(model_fleet()).await;
    let g = GatewayProc::start(
        r#"
[models."acme/llama-3-70b-instruct"]
provider = "openai"
model = "llama-3-70b"
input_cost_per_token = 0.000002
output_cost_per_token = 0.000004

[routes."team/fast"]
baseline = "acme/llama-3-70b-instruct"
candidates = ["gpt-4o-mini"]
mode = "shadow"

[routing]
refresh_ms = 50
stats_refresh_ms = 50
"#,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    let c = client();
    let table = || async {
        let r = client()
            .get(g.url("/v1/routing?route=team%2Ffast"))
            .header("authorization", auth())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["routes"][0].clone()
    };
    // An operator change makes the aggregator re-read the traffic stats at once (none yet);
    // the next read is `stats_refresh_ms` later.
    let r = c
        .post(g.url("/v1/routes/team%2Ffast/mode"))
        .header("authorization", auth())
        .json(&json!({"mode": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let mut before = Value::Null;
    for _ in 0..200 {
        before = table().await;
        if before["mode"] == "live" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(before["mode"], "live", "{before}");
    // Before any traffic: the configured guess (expected_prompt/completion_tokens).
    assert_eq!(before["token_mix"]["measured"], false, "{before}");
    assert_eq!(before["token_mix"]["prompt_tokens"], 500.0, "{before}");
    for _ in 0..5 {
        let r = c
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body("auto:team/fast"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    let served = std::time::Instant::now();
    let mut last = Value::Null;
    while served.elapsed() < Duration::from_secs(2) {
        last = table().await;
        if last["token_mix"]["measured"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        last["token_mix"]["measured"], true,
        "token mix not measured within 2 s: {last}"
    );
    assert_eq!(last["token_mix"]["prompt_tokens"], 400.0, "{last}");
    assert_eq!(last["token_mix"]["completion_tokens"], 200.0, "{last}");
    let base = last["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["baseline"] == true).cloned())
        .unwrap_or_default();
    // 400 × 2e-6 + 200 × 4e-6 (the custom price × the measured mix).
    let cost = base["cost_per_request"].as_f64().unwrap_or(0.0);
    assert!((cost - 0.0016).abs() < 1e-9, "{base}");
}
