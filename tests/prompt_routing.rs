//! Prompt-level routing through the real binary: an embeddings model that is slow (the mock
//! never answers) or down (nothing listens on its port) never fails the request, is bounded by
//! its timeout, and the decision trace says the router fell back to in-process features; the
//! per-(route, model) p95 latency measured from traces reaches the decision trace and the
//! latency constraint; `check` names a bad prompt-routing setting precisely.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[routes.slow]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routes.slow.prompt_routing]
mode = "embeddings"
embeddings = { model = "text-embedding-3-small", timeout_ms = 100 }

[routes.down]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routes.down.prompt_routing]
mode = "embeddings"
embeddings = { model = "ollama/nomic-embed-text", timeout_ms = 2000 }

[routes.lat]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "live"
[routes.lat.constraints]
max_latency_increase = 0.2
max_exploration_share = 0.5
[routes.lat.exploration]
rate = 0.5

[routing]
refresh_ms = 60
"#;

/// Chat answers at once, except `gpt-4o-mini` which takes 150 ms; `/embeddings` never answers.
fn upstream() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        if r.path.ends_with("/embeddings") {
            return Reply::Stall;
        }
        let model = r.json()["model"].as_str().unwrap_or("m").to_string();
        let body = chat_json(&model, &format!("answer from {model}"), 400, 200);
        if model == "gpt-4o-mini" {
            Reply::Chunks(
                200,
                "application/json".into(),
                vec![(Duration::from_millis(150), body.into_bytes())],
            )
        } else {
            Reply::Json(200, vec![], body)
        }
    }))
}

/// One `auto:<route>` request; its status, elapsed time and decision id.
async fn ask(g: &GatewayProc, route: &str, text: &str) -> (u16, Duration, String) {
    let t = Instant::now();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&json!({"model": format!("auto:{route}"), "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("loopgate-decision-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let _ = r.bytes().await;
    (status, t.elapsed(), id)
}

/// The decision trace of `id`, polled until it is stored (bounded).
async fn decision(g: &GatewayProc, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = client()
            .get(g.url(&format!("/v1/decisions/{id}")))
            .header("authorization", auth())
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let d: Value = r.json().await.unwrap();
            return d["decision"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Value::Null
}

/// Requests on `route` until a decision carries the prompt router's section with an
/// embeddings fallback (the index is published by the first rebuild); every request succeeds.
async fn fallback_section(g: &GatewayProc, route: &str) -> (Value, Duration) {
    for i in 0..60 {
        let (status, took, id) = ask(g, route, &format!("Where is my parcel number {i}?")).await;
        assert_eq!(status, 200, "{}", g.log_text());
        let d = decision(g, &id).await;
        if !d["prompt"]["embedding_fallback"].is_null() {
            return (d["prompt"].clone(), took);
        }
    }
    panic!("no embeddings fallback in the trace\n{}", g.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_slow_or_down_fall_back_and_latency_reaches_the_trace() {
    let mock = MockUpstream::start(upstream()).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let g = GatewayProc::start(
        CONFIG,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
            ("OLLAMA_HOST", closed),
        ],
    );

    // Slow: the call is cut at timeout_ms (100 ms), the request is served, the trace says why.
    let (p, took) = fallback_section(&g, "slow").await;
    assert_eq!(p["source"], "in_process", "{p}");
    let why = p["embedding_fallback"].as_str().unwrap_or_default();
    assert!(why.contains("timed out after 100 ms"), "{why}");
    assert!(why.contains("text-embedding-3-small"), "{why}");
    assert!(
        took < Duration::from_secs(3),
        "bounded by the timeout: {took:?}"
    );
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.path.ends_with("/embeddings")),
        "the embeddings call went through the gateway's embeddings path"
    );

    // Down: connection refused, the request is served, the trace says why.
    let (p, _) = fallback_section(&g, "down").await;
    assert_eq!(p["source"], "in_process", "{p}");
    let why = p["embedding_fallback"].as_str().unwrap_or_default();
    assert!(why.contains("ollama/nomic-embed-text"), "{why}");
    assert!(
        !why.contains("timed out"),
        "a refused connection fails fast: {why}"
    );

    // Latency per (route, model) from traces: both models get a measured p95 in the decision
    // trace, and the slower candidate (+150 ms on a near-instant baseline) fails the
    // `max_latency_increase = 0.2` row instead of passing unchecked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    for i in 0..400 {
        if Instant::now() > deadline {
            break;
        }
        let (status, _, id) = ask(&g, "lat", &format!("question {i}")).await;
        assert_eq!(status, 200);
        // Feedback warms the baseline up, so the candidate gets explored (and timed).
        let f = client()
            .post(g.url("/v1/feedback"))
            .header("authorization", auth())
            .json(&json!({"id": id, "score": 1, "scale": "thumbs"}))
            .send()
            .await
            .unwrap();
        assert_eq!(f.status(), 201);
        if i % 5 != 4 {
            continue;
        }
        last = decision(&g, &id).await;
        let cands = last["candidates"].as_array().cloned().unwrap_or_default();
        let p95 = |m: &str| {
            cands
                .iter()
                .find(|c| c["model"] == m)
                .and_then(|c| c["p95_latency_ms"].as_f64())
        };
        let mini_blocked = cands.iter().any(|c| {
            c["model"] == "gpt-4o-mini"
                && c["filter_reasons"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.contains("latency")))
                })
        });
        if let (Some(b), Some(m)) = (p95("gpt-4o"), p95("gpt-4o-mini")) {
            if mini_blocked {
                assert!(m >= 150.0 && m > b, "mini p95 {m}, baseline p95 {b}");
                return;
            }
        }
    }
    panic!(
        "no measured p95 latency / latency filter in the trace: {}",
        last["candidates"]
    );
}

fn check(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"))
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_names_bad_prompt_routing_settings() {
    let route = |extra: &str| {
        format!("[routes.r]\nbaseline = \"gpt-4o\"\ncandidates = [\"gpt-4o-mini\"]\n[routes.r.prompt_routing]\n{extra}")
    };
    let cases = [
        ("mode = \"embeddings\"\n", "routes.r.prompt_routing: mode = \"embeddings\" needs embeddings.model"),
        ("mode = \"in_process\"\nk = 0\n", "routes.r.prompt_routing: k must be in 1..=16, got 0"),
        (
            "mode = \"embeddings\"\nembeddings = { model = \"text-embedding-3-small\", timeout_ms = 0 }\n",
            "embeddings.timeout_ms must be in 1..=10000, got 0",
        ),
        (
            "mode = \"embeddings\"\nembeddings = { model = \"no-such-embedder\" }\n",
            "routes.r.prompt_routing.embeddings.model: 'no-such-embedder' is served by no active provider",
        ),
        (
            "mode = \"embeddings\"\nembeddings = { model = \"gpt-4o-mini\" }\n",
            "routes.r.prompt_routing.embeddings.model: 'gpt-4o-mini' is not an embeddings model (catalog mode 'chat')",
        ),
        ("mode = \"fast\"\n", "mode"),
    ];
    for (extra, want) in cases {
        let (ok, text) = check(&route(extra));
        assert!(!ok && text.contains(want), "{extra}: {text}");
    }
    let (ok, text) = check(&route(
        "mode = \"embeddings\"\nembeddings = { model = \"text-embedding-3-small\" }\n",
    ));
    assert!(ok, "{text}");
}
