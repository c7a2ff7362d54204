//! What an OpenAI-compatible upstream sends reaches the client untouched except for the
//! documented rewrites (`id` becomes the gateway's request id; a stream's `usage: null` only
//! for clients that asked for usage), plus the wire gaps: `x-request-id` on every response,
//! the upstream's request id passed on, fallback keys matching `provider/model`, and an
//! upstream 400's `param` and `code`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn rich_json() -> Value {
    json!({
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000u64,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": null, "annotations": [],
                        "x_message_extra": {"k": [1, 2.5, "s"]}},
            "logprobs": null, "finish_reason": "stop", "x_choice_extra": true}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 1, "audio_tokens": 4,
                "accepted_prediction_tokens": 3, "rejected_prediction_tokens": 1},
            "x_usage_extra": "u"},
        "service_tier": "default", "system_fingerprint": "fp_abc123",
        "x_top_extra": {"nested": {"deep": null}}
    })
}

fn rich_chunks() -> Vec<Value> {
    let c = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000u64,
            "model": "gpt-4o-2024-08-06", "service_tier": "priority", "system_fingerprint": "fp_abc123",
            "x_chunk_extra": 7,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null})
    };
    vec![
        c(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        c(json!({"content": "Hel", "x_delta_extra": 1}), Value::Null),
        c(json!({"content": "lo"}), Value::Null),
        c(json!({}), json!("stop")),
        json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000u64,
            "model": "gpt-4o-2024-08-06", "service_tier": "priority", "system_fingerprint": "fp_abc123",
            "x_chunk_extra": 7, "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 3},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 5,
                    "accepted_prediction_tokens": 2, "rejected_prediction_tokens": 6},
                "x_usage_extra": {"a": 1}}}),
    ]
}

fn rich_mock() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        if r.json()["stream"] == json!(true) {
            let mut parts: Vec<(Duration, Vec<u8>)> = rich_chunks()
                .into_iter()
                .map(|c| (Duration::ZERO, sse(c)))
                .collect();
            parts.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
            Reply::Chunks(200, "text/event-stream".into(), parts)
        } else {
            Reply::Json(
                200,
                vec![("x-request-id".into(), "req_upstream_1".into())],
                rich_json().to_string(),
            )
        }
    }))
}

fn with_id(mut v: Value, id: &str) -> Value {
    v["id"] = json!(id);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_field_reaches_the_client() {
    let mock = MockUpstream::start(rich_mock()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let c = client();
    // JSON: identical but for the id.
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["loopgate-request-id"], id.as_str());
    assert_eq!(
        r.headers()["loopgate-upstream-request-id"],
        "req_upstream_1"
    );
    let got: Value = r.json().await.unwrap();
    assert_eq!(got, with_id(rich_json(), &id));

    // Stream, usage asked for: every chunk identical but for the id, the usage chunk too.
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let got: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let want: Vec<Value> = rich_chunks().into_iter().map(|c| with_id(c, &id)).collect();
    assert_eq!(got, want);

    // Stream without usage asked: the same chunks minus the usage chunk and `usage: null`
    // (the gateway asked the upstream for usage to price the request).
    body.as_object_mut().unwrap().remove("stream_options");
    let r = c
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let events = sse_events(&r.text().await.unwrap());
    let got: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let chunks = rich_chunks();
    let want: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| {
            let mut c = with_id(c.clone(), &id);
            c.as_object_mut().unwrap().remove("usage");
            c
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_fallback_keys_and_upstream_400_fields() {
    let down = MockUpstream::start(Reply::Json(
        503,
        vec![("x-request-id".into(), "req_down".into())],
        r#"{"error":{"message":"busy","type":"server_error"}}"#.into(),
    ))
    .await;
    let groq = MockUpstream::start(Reply::Json(
        200,
        vec![("x-request-id".into(), "req_groq".into())],
        chat_json("llama-3.3-70b-versatile", "from groq", 3, 2),
    ))
    .await;
    let env = vec![
        ("OPENAI_API_KEY", "sk-a".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", down.url())),
        ("GROQ_API_KEY", "gsk-b".to_string()),
        ("GROQ_BASE_URL", format!("{}/v1", groq.url())),
    ];
    let c = client();
    let post = |g: &GatewayProc, model: &str| {
        c.post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body(model))
            .send()
    };
    // A chain keyed by the bare name serves `openai/gpt-4o`, and one keyed `openai/gpt-4o`
    // serves `gpt-4o`.
    for (key, asked) in [("gpt-4o", "openai/gpt-4o"), ("openai/gpt-4o", "gpt-4o")] {
        let g = GatewayProc::start(
            &format!("[fallbacks]\n\"{key}\" = [\"groq/llama-3.3-70b-versatile\"]\n"),
            &env,
        );
        let r = post(&g, asked).await.unwrap();
        assert_eq!(r.status(), 200, "{key} / {asked}");
        assert_eq!(r.headers()["loopgate-provider"], "groq");
        assert_eq!(r.headers()["loopgate-fallback-used"], "true");
        // The serving upstream's id, not the failed one's.
        assert_eq!(r.headers()["loopgate-upstream-request-id"], "req_groq");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], id);
    }

    // An upstream 400 keeps its param and code; errors and admin answers carry x-request-id.
    let bad = MockUpstream::start(Reply::Json(
        400,
        vec![("x-request-id".into(), "req_bad".into())],
        r#"{"error":{"message":"Invalid 'messages[0].content': string too long.","type":"invalid_request_error","param":"messages[0].content","code":"string_above_max_length"}}"#.into(),
    ))
    .await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-a".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", bad.url())),
        ],
    );
    let r = post(&g, "gpt-4o").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.headers()["loopgate-upstream-request-id"], "req_bad");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages[0].content", "{v}");
    assert_eq!(v["error"]["code"], "string_above_max_length", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    for path in ["/v1/models", "/v1/logs", "/health", "/v1/nope"] {
        let r = c
            .get(g.url(path))
            .header("authorization", auth())
            .send()
            .await
            .unwrap();
        let id = r
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(id.is_some_and(|i| i.starts_with("chatcmpl-")), "{path}");
    }
    let r = c
        .post(g.url("/v1/chat/completions"))
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("x-request-id"));
}
